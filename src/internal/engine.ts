/**
 * The pool engine: who gets which connection, when connections are made and
 * when they are closed. It knows nothing of SQL; a {@link Connector} makes
 * the physical connections, so tests can script them.
 *
 * The rules (docs/architecture.md states them for users):
 * 1. Never more than `max` connections, open or being opened.
 * 2. Nobody barges: a released connection goes straight to the waiter the
 *    scheduler picks (./scheduler.ts), and nobody takes an idle connection
 *    while others wait.
 * 3. A connection is lent to one caller alone, or shared by up to
 *    `pipelineDepth` autocommit statements; the busiest shared connection with
 *    room is filled first, and one takes no new borrower while a caller waits
 *    for a connection alone.
 * 4. A connection is opened only when the waiters need more than are being
 *    opened, or to keep `min` open, at most `maxConnecting` at a time.
 * 5. A waiter leaves the queue when it times out, is interrupted or the pool
 *    closes, and is never handed a connection afterwards.
 * 6. A connection the driver retires, or that is past its lifetime or uses,
 *    is closed instead of lent, and replaced if anyone needs it.
 * 7. Closing drains: waiters fail, idle connections close, lent ones close as
 *    they come back or when `shutdownTimeout` is up.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import type * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import type { SqlError } from "effect/sql/SqlError"
import type * as PoolConfig from "../PoolConfig.ts"
import {
  DatabaseUnavailableError,
  PoolClosedError,
  type PoolError,
  PoolSaturatedError,
  PoolTimeoutError,
  TenantQuotaExceededError
} from "../PoolError.ts"
import { Circuit } from "./circuit.ts"
import type { Connector } from "./connector.ts"
import { stackless } from "./stackless.ts"
import { Entry, expiryFor } from "./entry.ts"
import type * as Sizing from "./sizing.ts"
import { Link, LinkedQueue } from "./linkedQueue.ts"
import * as Scheduler from "./scheduler.ts"

/**
 * What the engine reports as it happens, for logs and metrics.
 *
 * @internal
 */
export interface EngineEvents {
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

/**
 * The engine's settings: the pool's validated limits (durations in
 * milliseconds), the connect retry schedule, and a jitter source tests can fix.
 *
 * @internal
 */
export interface EngineOptions extends
  Pick<
    PoolConfig.Resolved,
    | "min"
    | "max"
    | "maxConnecting"
    | "pipelineDepth"
    | "maxWaiting"
    | "acquireTimeout"
    | "idleTimeout"
    | "maxLifetime"
    | "maxLifetimeJitter"
    | "maxUses"
    | "housekeepingInterval"
    | "shutdownTimeout"
    | "initializationTimeout"
    | "tenantMaxQueued"
    | "validationThreshold"
    | "validationTimeout"
    | "keepaliveInterval"
    | "leakDetectionThreshold"
    | "circuitBreakerThreshold"
    | "circuitProbeInterval"
    | "name"
  >
{
  readonly events?: EngineEvents | undefined
  /** Who is served first when callers wait. */
  readonly fairness: Scheduler.FairnessOptions
  /** Spacing of the attempts after a failed connection attempt. */
  readonly connectRetry: Schedule.Schedule<unknown, SqlError>
  /** Spacing of the probe's attempts while the circuit is open. */
  readonly probeRetry: Schedule.Schedule<unknown, SqlError>
  /** Source of the lifetime jitter; `Math.random` unless a test fixes it. */
  readonly random?: (() => number) | undefined
  /** A tenant as errors name it (`tenantTelemetry`); the id itself unless given. */
  readonly tenantName?: ((tenant: string) => string) | undefined
}

/**
 * A snapshot of the pool's counts.
 *
 * @since 0.1.0
 * @category models
 */
export interface Stats {
  /** Open connections: idle plus used. */
  readonly total: number
  readonly idle: number
  readonly used: number
  /** Callers waiting for a connection. */
  readonly pending: number
  /** Connections being opened. */
  readonly creating: number
  readonly min: number
  readonly max: number
  /** Connections the pool may open now: `max`, or less when adaptive sizing found that more do not help. */
  readonly limit: number
  /** `open` while the database looks unreachable and callers fail fast. */
  readonly circuit: "closed" | "open"
  /** Connections (or shares of one) handed out since the pool started. */
  readonly checkouts: number
  /** Time those checkouts waited in line, in all, in ms: over an interval, its growth divided by that of `checkouts` is the mean wait. */
  readonly checkoutWaitMillis: number
}

/** @internal */
export interface Engine<C> {
  /**
   * Takes a connection for the caller alone, or a share of one for an
   * autocommit statement (`request.shared`), waiting in line if none is free.
   * The caller must hand it back with `release`, `invalidate` or `abandon`;
   * run it where interruption cannot come between the two.
   */
  readonly acquire: (request: Scheduler.Request) => Effect.Effect<Entry<C>, PoolError>
  /** A share for an autocommit statement of tenant `tenant` (`""` for none) when one is free and nobody waits: the fast path. */
  readonly shareNow: (tenant: string) => Entry<C> | undefined
  /** Gives a connection (or a share of one) back; it goes to the next waiter, or idles. */
  readonly release: (entry: Entry<C>) => void
  /**
   * Gives a connection held alone back while its last statement (a
   * `COMMIT`) is still in flight, if it stays in service: the next borrower's
   * statements queue behind it. `false`, and nothing done, when it would be
   * closed instead: the caller gives it back once answered.
   */
  readonly handOff: (entry: Entry<C>) => boolean
  /** Gives it back to be closed: its state is unknown. A shared one closes when its last borrower leaves. */
  readonly invalidate: (entry: Entry<C>) => void
  /**
   * Gives back a share whose statement's caller left while it ran. The
   * connection takes no new borrowers; when the others have their answers,
   * only abandoned statements can be running, so they are cancelled on the
   * server and the connection closed (a late cancel must not hit a stranger).
   */
  readonly abandon: (entry: Entry<C>) => void
  readonly stats: () => Stats
  /** What happened since the last call, for adaptive sizing; starts a new interval. */
  readonly sample: () => Sizing.Sample
  /** Sets how many connections may be open; idle ones above it close now, used ones when they come back. */
  readonly setLimit: (limit: number) => void
  /** Drains and closes the pool; see rule 7. */
  readonly shutdown: Effect.Effect<void>
}

interface Waiter<C> extends Scheduler.Waiting {
  /** Its place in the pool-wide arrival order, for timeouts. */
  readonly arrival: Link<Waiter<C>>
  readonly inLane: Link<Waiter<C>>
  readonly resume: (effect: Effect.Effect<Entry<C>, PoolError>) => void
  readonly enqueuedAt: number
  readonly deadline: number
  /** The connection handed over, until the waiter's fiber has taken it. */
  entry: Entry<C> | undefined
}

/** A share request of a tenant's, made once per tenant while it is the last one asked for. */
let lastShare: Scheduler.Request = { tenant: "", priority: "normal", shared: true }
const shareRequest = (tenant: string): Scheduler.Request =>
  lastShare.tenant === tenant ? lastShare : (lastShare = { tenant, priority: "normal", shared: true })

/**
 * Starts an engine: connects once to prove the database is there, then keeps
 * `min` connections open in the background.
 *
 * @internal
 */
export const make = <C>(
  connector: Connector<C>,
  options: EngineOptions
): Effect.Effect<Engine<C>, DatabaseUnavailableError, Scope.Scope> =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    const runFork = Effect.runForkWith(yield* Effect.context<never>())
    const random = options.random ?? Math.random
    const now = () => clock.currentTimeMillisUnsafe()

    const entries = new Set<Entry<C>>()
    /** Idle connections, most recently used last: reuse takes the warmest, eviction the coldest. */
    const idle: Array<Entry<C>> = []
    /** Every waiter in arrival order: the oldest has the earliest deadline. */
    const waiters = new LinkedQueue<Waiter<C>>((w) => w.arrival)
    /** The same waiters in the order they are to be served. */
    const scheduler = Scheduler.make<Waiter<C>>(options.fairness)
    const background = new Set<Fiber.Fiber<unknown, unknown>>()
    const closing = new Set<Fiber.Fiber<unknown, unknown>>()
    const drained = Deferred.makeUnsafe<void>()
    let creating = 0
    let closed = false
    const circuit = new Circuit(options.circuitBreakerThreshold)
    let started = false
    const events = options.events ?? {}
    let timeoutSweepRunning = false
    let lastConnectError: string | undefined
    let limit = options.max

    // Checkouts since the pool started, and the time they waited in line: for `stats`, and by difference
    // for adaptive sizing.
    let checkouts = 0
    let checkoutWaitMillis = 0
    // Measurements for adaptive sizing, since the last sample.
    let intervalStart = now()
    let sampled = { checkouts: 0, checkoutWaitMillis: 0 }
    let completions = 0
    let refused = 0
    let peakUsed = 0
    /** Checkouts held right now (a connection alone, or one share), and their time-weighted sum. */
    let busy = 0
    let busyArea = 0
    let busySince = intervalStart
    const busyChanged = (delta: number): void => {
      const at = now()
      busyArea += busy * (at - busySince)
      busySince = at
      busy += delta
    }

    const fork = (effect: Effect.Effect<unknown>, into: Set<Fiber.Fiber<unknown, unknown>>): void => {
      const fiber = runFork(effect)
      into.add(fiber)
      fiber.addObserver(() => into.delete(fiber))
    }

    // Resuming a waiter runs its fiber; doing that on a fresh stack keeps a
    // chain of hand-offs from nesting one fiber inside another.
    const settle = (waiter: Waiter<C>, effect: Effect.Effect<Entry<C>, PoolError>): void =>
      queueMicrotask(() => waiter.resume(effect))

    const checkout = (entry: Entry<C>, request: Scheduler.Request): Entry<C> => {
      entry.uses++
      busyChanged(1)
      const used = entries.size - idle.length
      if (used > peakUsed) peakUsed = used
      if (request.shared) {
        entry.state = "shared"
        entry.borrowers++
      } else {
        entry.state = "used"
        entry.holder = request.tenant
        entry.takenAt = now()
        entry.origin = request.origin?.()
        entry.leakReported = false
        scheduler.acquired(request.tenant)
      }
      return entry
    }

    /** Takes a waiter the scheduler chose out of the arrival order too. */
    const chosen = (waiter: Waiter<C> | undefined): Waiter<C> | undefined => {
      if (waiter !== undefined) waiters.remove(waiter)
      return waiter
    }

    const leave = (waiter: Waiter<C>): boolean => {
      if (!waiters.remove(waiter)) return false
      scheduler.remove(waiter)
      return true
    }

    /** A checkout made, after `waited` ms in line: for sizing, `stats` and the metrics. */
    const counted = (tenant: string, waited: number): void => {
      checkouts++
      checkoutWaitMillis += waited
      events.acquired?.(tenant, waited)
    }

    const serve = (waiter: Waiter<C>, entry: Entry<C>): void => {
      waiter.entry = checkout(entry, waiter.request)
      const waited = now() - waiter.enqueuedAt
      counted(waiter.request.tenant, waited)
      settle(waiter, Effect.succeed(entry))
    }

    /** Hands spare capacity of a shared connection to waiters that want a share. */
    const serveShares = (entry: Entry<C>): void => {
      while (!entry.abandoned && entry.borrowers < options.pipelineDepth) {
        const waiter = chosen(scheduler.nextShare())
        if (waiter === undefined) return
        serve(waiter, entry)
      }
    }

    const makeIdle = (entry: Entry<C>, at: number): void => {
      entry.state = "idle"
      entry.idleSince = at
      idle.push(entry)
    }

    /** Hands idle connections to eligible waiters, while there are both. */
    const dispatchIdle = (): void => {
      const at = now()
      while (idle.length > 0 && waiters.size > 0) {
        const entry = idle.pop()!
        if (entry.isSpent(at, options.maxUses)) {
          entry.state = "used"
          destroy(entry)
          continue
        }
        const waiter = chosen(scheduler.next())
        if (waiter === undefined) {
          idle.push(entry)
          return
        }
        serve(waiter, entry)
        if (waiter.request.shared) serveShares(entry)
      }
    }

    /** A free connection goes to the next waiter (and the shares after it), else to the idle stack. */
    const offer = (entry: Entry<C>): void => {
      const waiter = chosen(scheduler.next())
      if (waiter === undefined) return makeIdle(entry, now())
      serve(waiter, entry)
      if (waiter.request.shared) serveShares(entry)
    }

    const destroy = (entry: Entry<C>): void => {
      if (entry.state === "closed") return
      if (entry.state === "idle") {
        const index = idle.indexOf(entry)
        if (index >= 0) idle.splice(index, 1)
      }
      entry.state = "closed"
      entries.delete(entry)
      const close = Scope.close(entry.scope, Exit.void)
      // A healthy connection finishes what it carries (a COMMIT handed on), within validationTimeout.
      const settled = connector.settled === undefined || entry.broken
        ? close
        : Effect.andThen(Effect.timeoutOption(connector.settled(entry.connection), options.validationTimeout), close)
      fork(entry.abandoned ? Effect.andThen(connector.cancel(entry.connection), close) : settled, closing)
      if (closed) {
        if (entries.size === 0) Deferred.doneUnsafe(drained, Effect.void)
      } else {
        fill()
      }
    }

    /** Connections the waiters need: one each, or one per `pipelineDepth` shares. */
    const demand = (): number => {
      const shared = scheduler.sharedWaiting()
      return waiters.size - shared + Math.ceil(shared / options.pipelineDepth)
    }

    /** Rule 4: open connections while the waiters need more than are being opened, or below `min`. */
    const fill = (): void => {
      while (
        !closed && !circuit.isOpen && entries.size + creating < limit && creating < options.maxConnecting &&
        (demand() > creating || entries.size + creating < options.min)
      ) {
        creating++
        fork(create, background)
      }
    }

    /**
     * Whether a failed opening should try again: `fill` would start it now (it is still wanted), and no
     * probe has taken over (circuit open).
     */
    const stillNeeded = (): boolean =>
      !closed && !circuit.isOpen && (demand() > creating - 1 || entries.size + creating - 1 < options.min)

    const failWaiters = (error: PoolError): void => {
      for (let waiter = waiters.peek(); waiter !== undefined; waiter = waiters.peek()) {
        leave(waiter)
        settle(waiter, Effect.fail(error))
      }
    }

    let attempts = 0
    /** One connection attempt, its connection owned by a scope of its own. */
    const connectOnce: Effect.Effect<readonly [C, Scope.Closeable], SqlError> = Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(Scope.make(), (scope) => {
        const attemptedAt = now()
        return restore(Scope.provide(connector.connect, scope)).pipe(
          Effect.map((connection) => [connection, scope] as const),
          Effect.onError((cause) => Scope.close(scope, Exit.failCause(cause))),
          Effect.tapError((error) =>
            Effect.sync(() => {
              attempts++
              const failure = connector.classify(error)
              lastConnectError = failure.reason
              if (failure.outOfSlots) refused++
              // Start-up has its own deadline; the circuit guards a running pool.
              if (started && circuit.failed(entries.size, now())) openCircuit()
            })
          ),
          Effect.tap(() =>
            Effect.sync(() => {
              events.created?.(now() - attemptedAt)
              if (circuit.succeeded()) events.circuitClosed?.(now() - circuit.openedAt)
            })
          )
        )
      })
    )

    /**
     * The database looks unreachable: callers waiting for a new connection
     * fail now, and one probe tries on until a connection succeeds.
     */
    const openCircuit = (): void => {
      const reason = `the database is unreachable (circuit open after ${circuit.failures} failed connection attempts` +
        (lastConnectError === undefined ? ")" : `; last: ${lastConnectError})`)
      events.circuitOpened?.(reason)
      failWaiters(new DatabaseUnavailableError({ reason, attempts }))
      fork(probe, background)
    }

    const probe: Effect.Effect<void> = connectOnce.pipe(
      Effect.retry({ schedule: options.probeRetry, while: () => !closed }),
      Effect.matchEffect({
        onFailure: () => Effect.void,
        onSuccess: (opened) =>
          Effect.sync(() => {
            // An opening that was already under way when the circuit opened may have filled the limit.
            if (closed || entries.size + creating >= limit) return fork(Scope.close(opened[1], Exit.void), closing)
            offer(admit(opened))
            fill()
          })
      })
    )

    const admit = ([connection, scope]: readonly [C, Scope.Closeable]): Entry<C> => {
      const createdAt = now()
      const entry = new Entry(connection, scope, createdAt, expiryFor(createdAt, options.maxLifetime, options.maxLifetimeJitter, random))
      // Up to a tenth earlier, so that connections opened together are not all pinged together.
      if (options.keepaliveInterval !== Infinity) entry.keepaliveAfter = options.keepaliveInterval * (1 - 0.1 * random())
      entries.add(entry)
      connector.onRetire(connection, () => retire(entry))
      return entry
    }

    /** Rule 6, from the driver: an idle connection goes now, a lent one on return. */
    const retire = (entry: Entry<C>): void => {
      if (entry.state === "idle") destroy(entry)
      else if (entry.state !== "closed") entry.broken = true
    }

    /**
     * One background opening. It retries while it is still wanted; a failure
     * that waiting will not cure fails the current waiters at once, though the
     * retries go on if `min` still wants a connection.
     */
    const create: Effect.Effect<void> = Effect.uninterruptibleMask((restore) =>
      restore(connectOnce.pipe(
        Effect.tapError((error) =>
          connector.classify(error).fatal
            ? Effect.sync(() =>
              failWaiters(new DatabaseUnavailableError({ reason: connector.classify(error).reason, attempts, cause: error }))
            )
            : Effect.void
        ),
        Effect.retry({ schedule: options.connectRetry, while: stillNeeded })
      )).pipe(
        Effect.onExit((exit) =>
          Effect.sync(() => {
            creating--
            if (Exit.isSuccess(exit)) {
              if (closed) return fork(Scope.close(exit.value[1], Exit.void), closing)
              offer(admit(exit.value))
            }
            fill()
          })
        ),
        Effect.ignore
      )
    )

    /** Rule 5 for timeouts: one fiber sleeps until the oldest waiter's deadline. */
    const sweepTimeouts: Effect.Effect<void> = Effect.suspend(() => {
      const head = waiters.peek()
      if (head === undefined) {
        timeoutSweepRunning = false
        return Effect.void
      }
      const at = now()
      if (head.deadline > at) return Effect.andThen(Effect.sleep(head.deadline - at), sweepTimeouts)
      leave(head)
      events.rejected?.("timeout", head.request.tenant)
      settle(
        head,
        Effect.fail(
          new PoolTimeoutError({
            waitedMillis: at - head.enqueuedAt,
            poolSize: entries.size,
            maxSize: options.max,
            queueLength: waiters.size,
            lastConnectError
          })
        )
      )
      return sweepTimeouts
    })

    const takeIdle = (request: Scheduler.Request): Entry<C> | undefined => {
      const at = now()
      for (let entry = idle.pop(); entry !== undefined; entry = idle.pop()) {
        if (!entry.isSpent(at, options.maxUses)) return checkout(entry, request)
        // Out of the idle stack already; `destroy` must not look for it there.
        entry.state = "used"
        destroy(entry)
      }
      return undefined
    }

    /**
     * A share of the busiest shared connection that has room. Filling one
     * connection before the next puts more statements in each write, and
     * writes (system calls) are what a pipelining client spends its time on;
     * it also keeps whole connections free for callers that need one alone.
     */
    const takeShare = (request: Scheduler.Request): Entry<C> | undefined => {
      const at = now()
      let best: Entry<C> | undefined
      for (const entry of entries) {
        if (
          entry.state === "shared" && !entry.abandoned && entry.borrowers < options.pipelineDepth &&
          !entry.isSpent(at, options.maxUses) &&
          (best === undefined || entry.borrowers > best.borrowers)
        ) best = entry
      }
      return best === undefined ? undefined : checkout(best, request)
    }

    const wait = (request: Scheduler.Request) =>
      Effect.callback<Entry<C>, PoolError>((resume) => {
        const at = now()
        const waiter: Waiter<C> = {
          request,
          arrival: new Link(),
          inLane: new Link(),
          resume,
          enqueuedAt: at,
          deadline: at + options.acquireTimeout,
          entry: undefined
        }
        waiters.push(waiter)
        scheduler.push(waiter)
        // Idle connections while others wait: the waiters ahead are at their
        // tenant's in-use limit, and this one may be served now.
        if (idle.length > 0) dispatchIdle()
        if (!timeoutSweepRunning) {
          timeoutSweepRunning = true
          fork(sweepTimeouts, background)
        }
        fill()
        return Effect.sync(() => {
          // Interrupted: leave the line, or give back what was already handed over.
          if (leave(waiter)) return
          const entry = waiter.entry
          waiter.entry = undefined
          if (entry !== undefined) release(entry)
        })
      })

    const saturated = (request: Scheduler.Request) => {
      events.rejected?.("saturated", request.tenant)
      return Effect.fail(stackless(() => new PoolSaturatedError({ maxWaiting: options.maxWaiting, poolSize: entries.size })))
    }

    /**
     * A share right now for a statement without a tenant, when one is free,
     * nobody waits and no idle connection would need proving first.
     */
    const shareNow = (tenant: string): Entry<C> | undefined => {
      if (closed || waiters.size > 0) return undefined
      const request = shareRequest(tenant)
      let share = takeShare(request)
      if (share === undefined) {
        // A spent top would be closed and the one under it lent unproven: the slow path validates.
        const top = idle[idle.length - 1]
        const at = now()
        if (top === undefined || staleSince(top, at) || top.isSpent(at, options.maxUses)) return undefined
        share = takeIdle(request)
      }
      if (share !== undefined) counted(tenant, 0)
      return share
    }

    /** Whether a connection idle this long must prove itself before it is lent. */
    const staleSince = (entry: Entry<C>, at: number) => at - entry.idleSince > options.validationThreshold

    /**
     * Proves a connection that sat idle too long before lending it; a dead one
     * (its proof failed or took longer than `validationTimeout`) is closed and
     * the caller waits once more, as a newcomer: at most `validationTimeout`
     * plus `acquireTimeout` in all. Only the proof's failure leads there, never
     * that second wait's own.
     */
    const validated = (entry: Entry<C>, request: Scheduler.Request): Effect.Effect<Entry<C>, PoolError> =>
      connector.validate(entry.connection).pipe(
        Effect.timeoutOption(options.validationTimeout),
        Effect.map((proved) => proved._tag === "Some"),
        Effect.catch(() => Effect.succeed(false)),
        Effect.onInterrupt(() => Effect.sync(() => invalidate(entry))),
        Effect.flatMap((alive) => {
          if (alive) return Effect.succeed(entry)
          invalidate(entry)
          return acquire(request)
        })
      )

    const circuitOpenError = (request: Scheduler.Request) => {
      events.rejected?.("circuit_open", request.tenant)
      return new DatabaseUnavailableError({
        reason: `the database is unreachable (circuit open)${lastConnectError === undefined ? "" : `; last: ${lastConnectError}`}`,
        attempts
      })
    }

    const acquire = (request: Scheduler.Request): Effect.Effect<Entry<C>, PoolError> =>
      Effect.suspend(() => {
        if (closed) return Effect.fail(new PoolClosedError())
        if (waiters.size === 0 && scheduler.mayTake(request.tenant)) {
          const at = now()
          const entry = request.shared ? takeShare(request) ?? takeIdle(request) : takeIdle(request)
          if (entry !== undefined) {
            counted(request.tenant, 0)
            return entry.state === "used" || entry.borrowers === 1
              ? staleSince(entry, at) ? validated(entry, request) : Effect.succeed(entry)
              : Effect.succeed(entry)
          }
        }
        if (circuit.isOpen) return Effect.fail(circuitOpenError(request))
        if (waiters.size >= options.maxWaiting) return saturated(request)
        if (request.tenant !== "" && options.tenantMaxQueued !== Infinity) {
          const queued = scheduler.queued(request.tenant)
          if (queued >= options.tenantMaxQueued) {
            events.rejected?.("tenant_quota", request.tenant)
            return Effect.fail(
              new TenantQuotaExceededError({
                limit: "tenantMaxQueued",
                max: options.tenantMaxQueued,
                tenant: options.tenantName?.(request.tenant) ?? request.tenant
              })
            )
          }
        }
        return Effect.withSpan(wait(request), "db.client.connection.wait", {
          // The call site is always this line: a stack trace per wait would only cost CPU.
          captureStackTrace: false,
          kind: "internal",
          attributes: {
            "db.client.connection.pool.name": options.name,
            "meshhook.pool.queue_position": waiters.size + 1
          }
        })
      })

    const release = (entry: Entry<C>): void => {
      if (entry.state === "shared" || entry.state === "used") {
        completions++
        busyChanged(-1)
      }
      if (entry.state === "shared") {
        entry.borrowers--
        if (entry.borrowers > 0) {
          if (!closed && !entry.isSpent(now(), options.maxUses)) serveShares(entry)
          return
        }
        entry.state = "used"
        if (entry.abandoned) return destroy(entry)
      }
      if (entry.state !== "used") return
      const holder = entry.holder
      if (holder !== undefined) {
        scheduler.released(holder)
        entry.holder = undefined
        // Use time is a lease's: a shared connection's borrowers overlap, and `takenAt` is not theirs.
        events.released?.(now() - entry.takenAt)
      }
      if (closed || entry.isSpent(now(), options.maxUses) || entries.size > limit) destroy(entry)
      else offer(entry)
      // The tenant under its limit again may be served from other idle connections.
      if (holder !== undefined && idle.length > 0 && waiters.size > 0) dispatchIdle()
    }

    const handOff = (entry: Entry<C>): boolean => {
      if (entry.state !== "used" || closed || entry.isSpent(now(), options.maxUses) || entries.size > limit) return false
      release(entry)
      return true
    }

    const abandon = (entry: Entry<C>): void => {
      if (entry.state !== "shared") return invalidate(entry)
      entry.abandoned = true
      release(entry)
    }

    const invalidate = (entry: Entry<C>): void => {
      if (entry.state === "used" || entry.state === "shared") {
        entry.broken = true
        release(entry)
      }
    }

    /** The housekeeper's round: retire expired idle connections, evict idle ones above `min`, refill. */
    const housekeep = Effect.sync(() => {
      const at = now()
      for (const entry of idle.filter((e) => e.isSpent(at, options.maxUses))) destroy(entry)
      // Oldest idle first: they sit at the bottom of the stack.
      for (const entry of idle.filter((e) => at - e.idleSince >= options.idleTimeout)) {
        if (entries.size <= options.min) break
        destroy(entry)
      }
      for (const entry of idle.filter((e) => at - e.idleSince >= e.keepaliveAfter)) keepAlive(entry)
      for (const entry of entries) {
        if (entry.state === "used" && !entry.leakReported && at - entry.takenAt >= options.leakDetectionThreshold) {
          entry.leakReported = true
          events.leaked?.(at - entry.takenAt, entry.origin)
        }
      }
      fill()
    })

    /**
     * Pings a connection idle for its keepalive interval, so that servers,
     * poolers and firewalls do not drop it unseen; a dead one is replaced.
     */
    const keepAlive = (entry: Entry<C>): void => {
      idle.splice(idle.indexOf(entry), 1)
      entry.state = "used"
      fork(
        connector.validate(entry.connection).pipe(
          Effect.timeoutOption(options.validationTimeout),
          Effect.matchEffect({
            onFailure: () => Effect.sync(() => destroy(entry)),
            onSuccess: (ok) =>
              Effect.sync(() => ok._tag === "Some" && !closed && !entry.isSpent(now(), options.maxUses) ? offer(entry) : destroy(entry))
          }),
          // Shutdown interrupts the ping: the connection must still close, or the drain waits for it.
          Effect.onInterrupt(() => Effect.sync(() => destroy(entry)))
        ),
        background
      )
    }

    const stats = (): Stats => ({
      total: entries.size,
      idle: idle.length,
      used: entries.size - idle.length,
      pending: waiters.size,
      creating,
      min: options.min,
      max: options.max,
      limit,
      circuit: circuit.state,
      checkouts,
      checkoutWaitMillis
    })

    const sample = (): Sizing.Sample => {
      const at = now()
      busyChanged(0)
      const acquisitions = checkouts - sampled.checkouts
      const taken: Sizing.Sample = {
        completions,
        serviceMillis: completions === 0 ? 0 : busyArea / completions,
        waitMillis: acquisitions === 0 ? 0 : (checkoutWaitMillis - sampled.checkoutWaitMillis) / acquisitions,
        pending: waiters.size,
        peakUsed: Math.max(peakUsed, entries.size - idle.length),
        open: entries.size,
        refused,
        intervalMillis: at - intervalStart
      }
      intervalStart = at
      sampled = { checkouts, checkoutWaitMillis }
      completions = refused = busyArea = 0
      peakUsed = entries.size - idle.length
      return taken
    }

    const setLimit = (to: number): void => {
      limit = Math.max(options.min, Math.min(options.max, to))
      // The coldest idle connections go first; lent ones close when they come back.
      while (entries.size > limit && idle.length > 0) {
        const coldest = idle.shift()!
        coldest.state = "used"
        destroy(coldest)
      }
      fill()
    }

    const shutdown = Effect.gen(function*() {
      if (closed) return
      closed = true
      failWaiters(new PoolClosedError())
      yield* Fiber.interruptAll(background)
      for (const entry of idle.slice()) destroy(entry)
      if (entries.size > 0) {
        yield* Effect.timeoutOption(Deferred.await(drained), options.shutdownTimeout)
        for (const entry of Array.from(entries)) destroy(entry)
      }
      while (closing.size > 0) yield* Fiber.awaitAll(Array.from(closing))
    })

    yield* Effect.addFinalizer(() => shutdown)
    // Prove the database is there before anyone relies on the pool: retry for
    // `initializationTimeout`, but give up at once on what waiting won't cure.
    const first = yield* connectOnce.pipe(
      Effect.retry({ schedule: options.connectRetry, while: (error) => !connector.classify(error).fatal }),
      Effect.mapError((error) => new DatabaseUnavailableError({ reason: connector.classify(error).reason, attempts, cause: error })),
      Effect.timeoutOrElse({
        duration: options.initializationTimeout,
        orElse: () =>
          Effect.fail(
            new DatabaseUnavailableError({
              reason: `no connection within initializationTimeout (${options.initializationTimeout} ms)` +
                (lastConnectError === undefined ? "" : `; last attempt: ${lastConnectError}`),
              attempts
            })
          )
      })
    )
    offer(admit(first))
    started = true
    fill()
    fork(Effect.forever(Effect.andThen(Effect.sleep(options.housekeepingInterval), housekeep)), background)
    return { acquire, shareNow, release, handOff, invalidate, abandon, stats, sample, setLimit, shutdown } satisfies Engine<C>
  })
