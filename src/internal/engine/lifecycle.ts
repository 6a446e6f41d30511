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
 * The lifecycle of a pool's connections.
 *
 * @internal
 */
export interface Lifecycle<C> {
  /** Rule 4: starts the openings the waiters or `min` want. */
  readonly fill: () => void
  /** Closes the physical connection of an entry the state removed: after what it carries, or cancelling it. */
  readonly close: (entry: Entry<C>) => void
  /** A cheap round trip within `validationTimeout`: whether the connection answered. */
  readonly prove: (entry: Entry<C>) => Effect.Effect<boolean>
  /** Pings an idle connection taken out of the idle stack: it comes back if it answers, else closes. */
  readonly keepAlive: (entry: Entry<C>) => void
  /** Opens the first connection, proving the database is there; after it, failures may open the circuit. */
  readonly start: Effect.Effect<void, DatabaseUnavailableError>
  /** Whether the database looks reachable; while it is open, callers who would wait fail fast. */
  readonly circuit: Circuit
  /** The error for a caller who would wait for a connection while the circuit is open. */
  readonly circuitOpenError: () => DatabaseUnavailableError
  /** The last failed attempt's reason, for timeouts' errors. */
  readonly lastConnectError: () => string | undefined
}

/** @internal */
export const make = <C, W extends Waiting>(
  state: PoolState<C, W>,
  connector: Connector<C>,
  options: Options,
  driver: Driver
): Lifecycle<C> => {
  const { now } = driver
  const events = state.meter.events
  const circuit = new Circuit(options.circuitBreakerThreshold)
  let started = false
  let attempts = 0
  let lastConnectError: string | undefined

  const fill = (): void => {
    if (circuit.isOpen) return
    for (let n = state.openings(options.maxConnecting); n > 0; n--) driver.fork(create)
  }

  const unavailable = (reason: string, cause?: SqlError) =>
    new DatabaseUnavailableError(cause === undefined ? { reason, attempts } : { reason, attempts, cause })

  /** Counts a failed attempt; a running pool may open its circuit on it. */
  const attemptFailed = (error: SqlError): void => {
    attempts++
    const failure = connector.classify(error)
    lastConnectError = failure.reason
    if (failure.outOfSlots) state.meter.outOfSlots()
    // Start-up has its own deadline; the circuit guards a running pool.
    if (started && circuit.failed(state.entries.size, now())) openCircuit()
  }

  /** One connection attempt, its connection owned by a scope of its own. */
  const connectOnce: Effect.Effect<readonly [C, Scope.Closeable], SqlError> = Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(Scope.make(), (scope) => {
      const attemptedAt = now()
      return restore(Scope.provide(connector.connect, scope)).pipe(
        Effect.map((connection) => [connection, scope] as const),
        Effect.onError((cause) => Scope.close(scope, Exit.failCause(cause))),
        Effect.tapError((error) => Effect.sync(() => attemptFailed(error))),
        Effect.tap(() =>
          Effect.sync(() => {
            events.created?.(now() - attemptedAt)
            if (circuit.succeeded()) events.circuitClosed?.(now() - circuit.openedAt)
          })
        )
      )
    })
  )

  /** A new connection's entry, with its lifetime and keepalive jittered so that peers do not expire together. */
  const admit = ([connection, scope]: readonly [C, Scope.Closeable]): void => {
    const createdAt = now()
    const expiresAt = expiryFor(createdAt, options.maxLifetime, options.maxLifetimeJitter, options.random)
    const entry = new Entry(connection, scope, createdAt, expiresAt)
    // Up to a tenth earlier, so that connections opened together are not all pinged together.
    if (options.keepaliveInterval !== Infinity) entry.keepaliveAfter = options.keepaliveInterval * (1 - 0.1 * options.random())
    connector.onRetire(connection, () => retire(entry))
    state.admit(entry)
  }

  /** Rule 6, from the driver: an idle connection goes now, a lent one on return. */
  const retire = (entry: Entry<C>): void => {
    if (entry.state === "idle") state.remove(entry)
    else if (entry.state !== "closed") entry.broken = true
  }

  /** A connection opened when the pool no longer wants it (closed, or full after the circuit's probe). */
  const discard = (scope: Scope.Closeable): void => driver.forkClose(Scope.close(scope, Exit.void))

  /**
   * The database looks unreachable: callers waiting for a new connection
   * fail now, and one probe tries on until a connection succeeds.
   */
  const openCircuit = (): void => {
    const reason = `the database is unreachable (circuit open after ${circuit.failures} failed connection attempts` +
      (lastConnectError === undefined ? ")" : `; last: ${lastConnectError})`)
    events.circuitOpened?.(reason)
    driver.failWaiters(unavailable(reason))
    driver.fork(probe)
  }

  const probe: Effect.Effect<void> = connectOnce.pipe(
    Effect.retry({ schedule: options.probeRetry, while: () => !state.closed }),
    Effect.matchEffect({
      onFailure: () => Effect.void,
      onSuccess: (opened) =>
        Effect.sync(() => {
          // An opening that was already under way when the circuit opened may have filled the limit.
          if (state.closed || state.entries.size + state.creating >= state.limit) return discard(opened[1])
          admit(opened)
          fill()
        })
    })
  )

  /**
   * One background opening. It retries while it is still wanted; a failure
   * that waiting will not cure fails the current waiters at once, though the
   * retries go on if `min` still wants a connection.
   */
  const create: Effect.Effect<void> = Effect.uninterruptibleMask((restore) =>
    restore(connectOnce.pipe(
      Effect.tapError((error) => {
        const failure = connector.classify(error)
        return failure.fatal ? Effect.sync(() => driver.failWaiters(unavailable(failure.reason, error))) : Effect.void
      }),
      Effect.retry({ schedule: options.connectRetry, while: () => !circuit.isOpen && state.stillWanted() })
    )).pipe(
      Effect.onExit((exit) =>
        Effect.sync(() => {
          state.creating--
          if (Exit.isSuccess(exit)) {
            if (state.closed) return discard(exit.value[1])
            admit(exit.value)
          }
          fill()
        })
      ),
      Effect.ignore
    )
  )

  const close = (entry: Entry<C>): void => {
    const closed = Scope.close(entry.scope, Exit.void)
    if (entry.abandoned) return driver.forkClose(Effect.andThen(connector.cancel(entry.connection), closed))
    // A healthy connection finishes what it carries (a COMMIT handed on), within validationTimeout.
    driver.forkClose(
      connector.settled === undefined || entry.broken
        ? closed
        : Effect.andThen(Effect.timeoutOption(connector.settled(entry.connection), options.validationTimeout), closed)
    )
  }

  const prove = (entry: Entry<C>): Effect.Effect<boolean> =>
    connector.validate(entry.connection).pipe(
      Effect.timeoutOption(options.validationTimeout),
      Effect.map((answered) => answered._tag === "Some"),
      Effect.catch(() => Effect.succeed(false))
    )

  const keepAlive = (entry: Entry<C>): void => {
    state.lendToHousekeeper(entry)
    driver.fork(prove(entry).pipe(
      Effect.flatMap((alive) =>
        Effect.sync(() => alive && !state.closed && !state.isSpent(entry, now()) ? state.offer(entry) : state.remove(entry))
      ),
      // Shutdown interrupts the ping: the connection must still close, or the drain waits for it.
      Effect.onInterrupt(() => Effect.sync(() => state.remove(entry)))
    ))
  }

  // Retry for `initializationTimeout`, but give up at once on what waiting won't cure.
  const start = connectOnce.pipe(
    Effect.retry({ schedule: options.connectRetry, while: (error) => !connector.classify(error).fatal }),
    Effect.mapError((error) => unavailable(connector.classify(error).reason, error)),
    Effect.timeoutOrElse({
      duration: options.initializationTimeout,
      orElse: () =>
        Effect.fail(unavailable(
          `no connection within initializationTimeout (${options.initializationTimeout} ms)` +
            (lastConnectError === undefined ? "" : `; last attempt: ${lastConnectError}`)
        ))
    }),
    Effect.map((first) => {
      admit(first)
      started = true
      fill()
    })
  )

  const circuitOpenError = () =>
    unavailable(`the database is unreachable (circuit open)${lastConnectError === undefined ? "" : `; last: ${lastConnectError}`}`)

  return { fill, close, prove, keepAlive, start, circuit, circuitOpenError, lastConnectError: () => lastConnectError }
}
