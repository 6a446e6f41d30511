/**
 * The connection lifecycle: opening connections (retried while still
 * wanted), admitting them to the pool, retiring the ones the driver gives up
 * on, proving idle ones, closing, and the circuit breaker's probe while the
 * database looks unreachable. It acts on the pool's state (./poolState.ts)
 * and reads nothing of a driver's errors: the connector classifies them
 * (./connector.ts).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import type { SqlError } from "effect/sql/SqlError"
import type * as PoolConfig from "../../PoolConfig.ts"
import { DatabaseUnavailableError } from "../../PoolError.ts"
import { Circuit } from "./circuit.ts"
import type { Connector } from "./connector.ts"
import { Entry, expiryFor } from "./entry.ts"
import type { PoolState, Waiting } from "./poolState.ts"

/**
 * The lifecycle's settings: the pool's limits (durations in milliseconds),
 * the retry schedules, and a jitter source tests can fix.
 *
 * @internal
 */
export interface Options extends
  Pick<
    PoolConfig.Resolved,
    | "maxConnecting"
    | "maxLifetime"
    | "maxLifetimeJitter"
    | "keepaliveInterval"
    | "validationTimeout"
    | "initializationTimeout"
    | "circuitBreakerThreshold"
  >
{
  /** Spacing of the attempts after a failed connection attempt. */
  readonly connectRetry: Schedule.Schedule<unknown, SqlError>
  /** Spacing of the probe's attempts while the circuit is open. */
  readonly probeRetry: Schedule.Schedule<unknown, SqlError>
  /** Source of the lifetime and keepalive jitter; `Math.random` unless a test fixes it. */
  readonly random: () => number
}

/**
 * What the lifecycle needs of the engine that drives it.
 *
 * @internal
 */
export interface Driver {
  /** Runs a background task (an opening, a probe, a ping); shutdown interrupts them. */
  readonly fork: (effect: Effect.Effect<unknown>) => void
  /** Runs a closing; shutdown waits for these to finish. */
  readonly forkClose: (effect: Effect.Effect<unknown>) => void
  /** Fails every caller in line with `error`. */
  readonly failWaiters: (error: DatabaseUnavailableError) => void
  readonly now: () => number
}

/**
 * The lifecycle of a pool's connections. Its methods are bound: the engine
 * passes some of them on as callbacks.
 *
 * @internal
 */
export class Lifecycle<C, W extends Waiting> {
  /** Whether the database looks reachable; while it is open, callers who would wait fail fast. */
  readonly circuit: Circuit
  /** The last failed attempt's reason, for timeouts' errors. */
  lastConnectError: string | undefined = undefined
  private attempts = 0
  /** Set once the first connection is in: from then on failures may open the circuit. */
  private started = false
  private readonly state: PoolState<C, W>
  private readonly connector: Connector<C>
  private readonly options: Options
  private readonly driver: Driver

  constructor(state: PoolState<C, W>, connector: Connector<C>, options: Options, driver: Driver) {
    this.state = state
    this.connector = connector
    this.options = options
    this.driver = driver
    this.circuit = new Circuit(options.circuitBreakerThreshold)
  }

  /** Rule 4: starts the openings the waiters or `min` want. */
  readonly fill = (): void => {
    if (this.circuit.isOpen) return
    for (let n = this.state.openings(this.options.maxConnecting); n > 0; n--) this.driver.fork(this.create)
  }

  /** Closes the physical connection of an entry the state removed: after what it carries, or cancelling it. */
  readonly close = (entry: Entry<C>): void => {
    const closed = Scope.close(entry.scope, Exit.void)
    if (entry.abandoned) return this.driver.forkClose(Effect.andThen(this.connector.cancel(entry.connection), closed))
    // A healthy connection finishes what it carries (a COMMIT handed on), within validationTimeout.
    const settled = this.connector.settled
    this.driver.forkClose(
      settled === undefined || entry.broken
        ? closed
        : Effect.andThen(Effect.timeoutOption(settled(entry.connection), this.options.validationTimeout), closed)
    )
  }

  /** A cheap round trip within `validationTimeout`: whether the connection answered. */
  prove(entry: Entry<C>): Effect.Effect<boolean> {
    return this.connector.validate(entry.connection).pipe(
      Effect.timeoutOption(this.options.validationTimeout),
      Effect.map((answered) => answered._tag === "Some"),
      Effect.catch(() => Effect.succeed(false))
    )
  }

  /** Pings an idle connection taken out of the idle stack: it comes back if it answers, else closes. */
  keepAlive(entry: Entry<C>): void {
    const state = this.state
    state.lendToHousekeeper(entry)
    this.driver.fork(this.prove(entry).pipe(
      Effect.flatMap((alive) =>
        Effect.sync(() =>
          alive && !state.closed && !state.isSpent(entry, this.driver.now()) ? state.offer(entry) : state.remove(entry)
        )
      ),
      // Shutdown interrupts the ping: the connection must still close, or the drain waits for it.
      Effect.onInterrupt(() => Effect.sync(() => state.remove(entry)))
    ))
  }

  /**
   * Opens the first connection, proving the database is there: retried for
   * `initializationTimeout`, but given up at once on what waiting won't cure.
   */
  get start(): Effect.Effect<void, DatabaseUnavailableError> {
    const { connectRetry, initializationTimeout } = this.options
    return this.connectOnce.pipe(
      Effect.retry({ schedule: connectRetry, while: (error) => !this.connector.classify(error).fatal }),
      Effect.mapError((error) => this.unavailable(this.connector.classify(error).reason, error)),
      Effect.timeoutOrElse({
        duration: initializationTimeout,
        orElse: () =>
          Effect.fail(this.unavailable(
            `no connection within initializationTimeout (${initializationTimeout} ms)` +
              (this.lastConnectError === undefined ? "" : `; last attempt: ${this.lastConnectError}`)
          ))
      }),
      Effect.map((first) => {
        this.admit(first)
        this.started = true
        this.fill()
      })
    )
  }

  /** The error for a caller who would wait for a connection while the circuit is open. */
  circuitOpenError(): DatabaseUnavailableError {
    const last = this.lastConnectError === undefined ? "" : `; last: ${this.lastConnectError}`
    return this.unavailable(`the database is unreachable (circuit open)${last}`)
  }

  private unavailable(reason: string, cause?: SqlError): DatabaseUnavailableError {
    const attempts = this.attempts
    return new DatabaseUnavailableError(cause === undefined ? { reason, attempts } : { reason, attempts, cause })
  }

  /** One connection attempt, its connection owned by a scope of its own. */
  private readonly connectOnce: Effect.Effect<readonly [C, Scope.Closeable], SqlError> = Effect.uninterruptibleMask(
    (restore) =>
      Effect.flatMap(Scope.make(), (scope) => {
        const attemptedAt = this.driver.now()
        return restore(Scope.provide(this.connector.connect, scope)).pipe(
          Effect.map((connection) => [connection, scope] as const),
          Effect.onError((cause) => Scope.close(scope, Exit.failCause(cause))),
          Effect.tapError((error) => Effect.sync(() => this.attemptFailed(error))),
          Effect.tap(() => Effect.sync(() => this.attemptSucceeded(attemptedAt)))
        )
      })
  )

  /** Counts a failed attempt; a running pool may open its circuit on it. */
  private attemptFailed(error: SqlError): void {
    this.attempts++
    const failure = this.connector.classify(error)
    this.lastConnectError = failure.reason
    if (failure.outOfSlots) this.state.meter.outOfSlots()
    // Start-up has its own deadline; the circuit guards a running pool.
    if (this.started && this.circuit.failed(this.state.entries.size, this.driver.now())) this.openCircuit()
  }

  private attemptSucceeded(attemptedAt: number): void {
    const events = this.state.meter.events
    events.created?.(this.driver.now() - attemptedAt)
    if (this.circuit.succeeded()) events.circuitClosed?.(this.driver.now() - this.circuit.openedAt)
  }

  /** A new connection's entry, with its lifetime and keepalive jittered so that peers do not expire together. */
  private admit([connection, scope]: readonly [C, Scope.Closeable]): void {
    const { maxLifetime, maxLifetimeJitter, keepaliveInterval, random } = this.options
    const createdAt = this.driver.now()
    const entry = new Entry(connection, scope, createdAt, expiryFor(createdAt, maxLifetime, maxLifetimeJitter, random))
    // Up to a tenth earlier, so that connections opened together are not all pinged together.
    if (keepaliveInterval !== Infinity) entry.keepaliveAfter = keepaliveInterval * (1 - 0.1 * random())
    this.connector.onRetire(connection, () => this.retire(entry))
    this.state.admit(entry)
  }

  /** Rule 6, from the driver: an idle connection goes now, a lent one on return. */
  private retire(entry: Entry<C>): void {
    if (entry.state === "idle") this.state.remove(entry)
    else if (entry.state !== "closed") entry.broken = true
  }

  /** A connection opened when the pool no longer wants it (closed, or full after the circuit's probe). */
  private discard(scope: Scope.Closeable): void {
    this.driver.forkClose(Scope.close(scope, Exit.void))
  }

  /**
   * The database looks unreachable: callers waiting for a new connection
   * fail now, and one probe tries on until a connection succeeds.
   */
  private openCircuit(): void {
    const last = this.lastConnectError === undefined ? ")" : `; last: ${this.lastConnectError})`
    const reason = `the database is unreachable (circuit open after ${this.circuit.failures} failed connection attempts${last}`
    this.state.meter.events.circuitOpened?.(reason)
    this.driver.failWaiters(this.unavailable(reason))
    this.driver.fork(this.probe)
  }

  private readonly probe: Effect.Effect<void> = Effect.suspend(() =>
    this.connectOnce.pipe(
      Effect.retry({ schedule: this.options.probeRetry, while: () => !this.state.closed }),
      Effect.matchEffect({ onFailure: () => Effect.void, onSuccess: (opened) => Effect.sync(() => this.probed(opened)) })
    )
  )

  private probed(opened: readonly [C, Scope.Closeable]): void {
    const state = this.state
    // An opening that was already under way when the circuit opened may have filled the limit.
    if (state.closed || state.entries.size + state.creating >= state.limit) return this.discard(opened[1])
    this.admit(opened)
    this.fill()
  }

  /**
   * One background opening. It retries while it is still wanted; a failure
   * that waiting will not cure fails the current waiters at once, though the
   * retries go on if `min` still wants a connection.
   */
  private readonly create: Effect.Effect<void> = Effect.uninterruptibleMask((restore) =>
    restore(this.connectOnce.pipe(
      Effect.tapError((error) => Effect.sync(() => this.failFastOn(error))),
      Effect.retry({ schedule: this.options.connectRetry, while: () => !this.circuit.isOpen && this.state.stillWanted() })
    )).pipe(
      Effect.onExit((exit) => Effect.sync(() => this.opened(exit))),
      Effect.ignore
    )
  )

  private failFastOn(error: SqlError): void {
    const failure = this.connector.classify(error)
    if (failure.fatal) this.driver.failWaiters(this.unavailable(failure.reason, error))
  }

  private opened(exit: Exit.Exit<readonly [C, Scope.Closeable], SqlError>): void {
    this.state.creating--
    if (Exit.isSuccess(exit)) {
      if (this.state.closed) return this.discard(exit.value[1])
      this.admit(exit.value)
    }
    this.fill()
  }
}
