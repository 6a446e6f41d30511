/**
 * The circuit breaker: whether the database looks reachable.
 *
 * It opens when `threshold` connection attempts in a row have failed and the
 * pool has no connection left: then callers that would have to wait for a new
 * connection fail at once with `DatabaseUnavailableError` instead of piling up
 * until `acquireTimeout`, and one probe keeps trying in the background. The
 * first connection that succeeds closes it.
 *
 * @internal
 */

/** @internal */
export type State = "closed" | "open"

/** @internal */
export class Circuit {
  readonly threshold: number
  state: State = "closed"
  /** Failed connection attempts in a row. */
  failures = 0
  /** When it last opened, for the recovery time. */
  openedAt = 0

  constructor(threshold: number) {
    this.threshold = threshold
  }

  get isOpen(): boolean {
    return this.state === "open"
  }

  /** Counts a failed attempt; returns whether the circuit opened on it. */
  failed(connectionsLeft: number, at: number): boolean {
    this.failures++
    if (this.state === "open" || this.failures < this.threshold || connectionsLeft > 0) return false
    this.state = "open"
    this.openedAt = at
    return true
  }

  /** Counts a successful attempt; returns whether the circuit closed on it. */
  succeeded(): boolean {
    this.failures = 0
    if (this.state === "closed") return false
    this.state = "closed"
    return true
  }
}
