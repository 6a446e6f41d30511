/**
 * The meter: what the pool counts as it works, for `Pool.stats`, for
 * adaptive sizing (./sizing.ts) and for the metrics and logs a caller hooks
 * in through {@link Events}. Synchronous bookkeeping only: it decides nothing.
 *
 * @internal
 */
import type * as Sizing from "./sizing.ts"

/**
 * What the engine reports as it happens, for logs and metrics.
 *
 * @internal
 */
export interface Events {
  /** A caller got a connection or a share, after waiting so long (0 when one was free). */
  readonly acquired?: (tenant: string, waitMillis: number) => void
  /** A connection held alone came back after so long. */
  readonly released?: (useMillis: number) => void
  /** A connection was opened, in so long. */
  readonly created?: (millis: number) => void
  readonly rejected?: (reason: "saturated" | "tenant_quota" | "circuit_open" | "timeout", tenant: string) => void
  /** A connection was held longer than `leakDetectionThreshold`; reported once per checkout. */
  readonly leaked?: (heldMillis: number, origin: string | undefined) => void
  readonly circuitOpened?: (reason: string) => void
  readonly circuitClosed?: (downMillis: number) => void
}

/** How many connections there are and are used, as the meter's caller sees them at a sample. @internal */
export interface Occupancy {
  readonly open: number
  readonly used: number
  readonly pending: number
}

/**
 * Lifetime counters, and the measurements of the current sizing interval.
 * The interval's checkouts and wait are differences of the lifetime ones,
 * so that the two can never disagree.
 *
 * @internal
 */
export class Meter {
  /** Connections (or shares of one) handed out since the pool started. */
  checkouts = 0
  /** Time those checkouts waited in line, in all, in ms. */
  checkoutWaitMillis = 0
  private readonly now: () => number
  readonly events: Events
  private intervalStart: number
  private sampled = { checkouts: 0, checkoutWaitMillis: 0 }
  private completions = 0
  private refused = 0
  private peakUsed = 0
  /** Checkouts held right now (a connection alone, or one share), and their time-weighted sum. */
  private busy = 0
  private busyArea = 0
  private busySince: number

  constructor(now: () => number, events: Events) {
    this.now = now
    this.events = events
    this.intervalStart = this.busySince = now()
  }

  /** A checkout made, after `waitedMillis` in line; `used` connections are now in use. */
  checkedOut(tenant: string, waitedMillis: number, used: number): void {
    this.checkouts++
    this.checkoutWaitMillis += waitedMillis
    this.busyChanged(1)
    if (used > this.peakUsed) this.peakUsed = used
    this.events.acquired?.(tenant, waitedMillis)
  }

  /** A checkout given back; `heldAloneMillis` when it was a connection held alone. */
  returned(heldAloneMillis: number | undefined): void {
    this.completions++
    this.busyChanged(-1)
    if (heldAloneMillis !== undefined) this.events.released?.(heldAloneMillis)
  }

  /** The server refused a connection for lack of slots: a limit for sizing to respect. */
  outOfSlots(): void {
    this.refused++
  }

  /** What happened since the last sample; starts a new interval. */
  sample(now: Occupancy): Sizing.Sample {
    const at = this.now()
    this.busyChanged(0)
    const acquisitions = this.checkouts - this.sampled.checkouts
    const taken: Sizing.Sample = {
      completions: this.completions,
      serviceMillis: this.completions === 0 ? 0 : this.busyArea / this.completions,
      waitMillis: acquisitions === 0 ? 0 : (this.checkoutWaitMillis - this.sampled.checkoutWaitMillis) / acquisitions,
      pending: now.pending,
      peakUsed: Math.max(this.peakUsed, now.used),
      open: now.open,
      refused: this.refused,
      intervalMillis: at - this.intervalStart
    }
    this.intervalStart = at
    this.sampled = { checkouts: this.checkouts, checkoutWaitMillis: this.checkoutWaitMillis }
    this.completions = this.refused = this.busyArea = 0
    this.peakUsed = now.used
    return taken
  }

  private busyChanged(delta: number): void {
    const at = this.now()
    this.busyArea += this.busy * (at - this.busySince)
    this.busySince = at
    this.busy += delta
  }
}
