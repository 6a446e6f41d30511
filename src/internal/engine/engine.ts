/**
 * The pool engine: who gets which connection, when connections are made and
 * when they are closed. It knows nothing of SQL. It is four parts, each with
 * one job, driven from here:
 *
 * - ./poolState.ts: the state and the rules of hand-out, synchronous;
 * - ./lifecycle.ts: opening, admitting, retiring, proving and closing
 *   connections, and the circuit breaker, through a {@link Connector};
 * - ./housekeeper.ts: the periodic round over idle and held connections;
 * - ./meter.ts: the counts behind `stats`, adaptive sizing and the metrics.
 *
 * This module holds the callers' side: taking a connection or waiting in line
 * for one (with its deadline, quota and span), proving a stale one, and the
 * drain. Of the pool's rules (docs/architecture.md), ./poolState.ts keeps 1
 * to 6; this module keeps these two:
 * 5. A waiter leaves the line when it times out, is interrupted or the pool
 *    closes, and is never handed a connection afterwards.
 * 8. Closing drains: waiters fail, idle connections close, lent ones close as
 *    they come back or when `shutdownTimeout` is up.
 *
 * It is over 300 lines because it also states the engine's
 * contract with the SQL client: {@link Engine}, {@link EngineOptions} and
 * {@link Stats} are a third of it.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import type * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type { SqlError } from "effect/sql/SqlError"
import type * as PoolConfig from "../../PoolConfig.ts"
import {
  type DatabaseUnavailableError,
  PoolClosedError,
  type PoolError,
  PoolSaturatedError,
  PoolTimeoutError,
  TenantQuotaExceededError
} from "../../PoolError.ts"
import type { Connector } from "./connector.ts"
import type { Entry } from "./entry.ts"
import * as Housekeeper from "./housekeeper.ts"
import { Lifecycle } from "./lifecycle.ts"
import { Link } from "./linkedQueue.ts"
import { type Events, Meter } from "./meter.ts"
import { PoolState, type Waiting } from "./poolState.ts"
import type * as Scheduler from "./scheduler.ts"
import type * as Sizing from "./sizing.ts"
import { stackless } from "../stackless.ts"

/**
 * What the engine reports as it happens, for logs and metrics.
 *
 * @internal
 */
export type EngineEvents = Events

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
  /**
   * The tenants with the most callers waiting, most first (at most ten), each
   * named as telemetry names tenants (`tenantTelemetry`: hashed by default).
   */
  readonly tenantsWaiting: ReadonlyArray<{ readonly tenant: string; readonly waiting: number }>
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
  /** Drains and closes the pool; see rule 8. */
  readonly shutdown: Effect.Effect<void>
}


interface Waiter<C> extends Waiting {
  readonly resume: (effect: Effect.Effect<Entry<C>, PoolError>) => void
  /** The connection handed over, until the waiter's fiber has taken it. */
  entry: Entry<C> | undefined
}

/** Where the engine runs its fibers: openings, probes and pings are interrupted at shutdown; closings are waited for. */
interface Fibers {
  readonly background: FiberSet.FiberSet<unknown, unknown>
  readonly closings: FiberSet.FiberSet<unknown, unknown>
  readonly fork: (effect: Effect.Effect<unknown>) => void
  readonly forkClose: (effect: Effect.Effect<unknown>) => void
}

/**
 * Starts an engine: connects once to prove the database is there, then keeps
 * `min` connections open in the background; closing the scope drains it.
 *
 * @internal
 */
export const make = <C>(
  connector: Connector<C>,
  options: EngineOptions
): Effect.Effect<Engine<C>, DatabaseUnavailableError, Scope.Scope> =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    const background = yield* FiberSet.make()
    const closings = yield* FiberSet.make()
    const forkBackground = yield* FiberSet.runtime(background)()
    const forkClosing = yield* FiberSet.runtime(closings)()
    const fibers: Fibers = {
      background,
      closings,
      fork: (effect) => void forkBackground(effect),
      forkClose: (effect) => void forkClosing(effect)
    }
    const engine = new PoolEngine(connector, options, () => clock.currentTimeMillisUnsafe(), fibers)
    // Added after the fiber sets, so it runs before they interrupt what is left.
    yield* Effect.addFinalizer(() => engine.shutdown)
    yield* engine.start
    return engine
  })

/** The engine: the callers' side of the pool, over its state and its connections' lifecycle. */
class PoolEngine<C> implements Engine<C> {
  private readonly state: PoolState<C, Waiter<C>>
  private readonly lifecycle: Lifecycle<C, Waiter<C>>
  private readonly options: EngineOptions
  private readonly events: EngineEvents
  private readonly now: () => number
  private readonly fibers: Fibers
  private readonly drained = Deferred.makeUnsafe<void>()
  private sweeping = false

  constructor(connector: Connector<C>, options: EngineOptions, now: () => number, fibers: Fibers) {
    this.options = options
    this.events = options.events ?? {}
    this.now = now
    this.fibers = fibers
    this.state = new PoolState(options, new Meter(now, this.events), {
      served: (waiter, entry) => {
        waiter.entry = entry
        this.settle(waiter, Effect.succeed(entry))
      },
      removed: (entry) => this.removed(entry)
    }, now)
    this.lifecycle = new Lifecycle(this.state, connector, { ...options, random: options.random ?? Math.random }, {
      fork: fibers.fork,
      forkClose: fibers.forkClose,
      failWaiters: (error) => this.failWaiters(error),
      now
    })
  }

  /** The first connection, then `min` in the background, and the housekeeper. */
  get start(): Effect.Effect<void, DatabaseUnavailableError> {
    return Effect.map(this.lifecycle.start, () => {
      this.fibers.fork(Housekeeper.run(this.state, this.lifecycle, this.options, this.now))
    })
  }

  readonly acquire = (request: Scheduler.Request): Effect.Effect<Entry<C>, PoolError> =>
    Effect.suspend(() => {
      if (this.state.closed) return Effect.fail(new PoolClosedError())
      const at = this.now()
      const entry = this.state.take(request)
      if (entry !== undefined) {
        // Only a connection just taken from the idle stack may be stale: a share of a busy one is in use.
        const fromIdle = entry.state === "used" || entry.borrowers === 1
        return fromIdle && this.state.isStale(entry, at) ? this.validated(entry, request) : Effect.succeed(entry)
      }
      const refused = this.refusal(request)
      if (refused !== undefined) return Effect.fail(refused)
      return Effect.withSpan(this.wait(request), "db.client.connection.wait", {
        // The call site is always this line: a stack trace per wait would only cost CPU.
        captureStackTrace: false,
        kind: "internal",
        attributes: {
          "db.client.connection.pool.name": this.options.name,
          "meshhook.pool.queue_position": this.state.waiters.size + 1
        }
      })
    })

  readonly shareNow = (tenant: string): Entry<C> | undefined => this.state.shareNow(tenant)
  readonly release = (entry: Entry<C>): void => this.state.release(entry)
  readonly handOff = (entry: Entry<C>): boolean => this.state.handOff(entry)
  readonly invalidate = (entry: Entry<C>): void => this.state.invalidate(entry)
  readonly abandon = (entry: Entry<C>): void => this.state.abandon(entry)

  readonly stats = (): Stats => {
    const { state, options } = this
    return {
      total: state.entries.size,
      idle: state.idle.length,
      used: state.used,
      pending: state.waiters.size,
      creating: state.creating,
      min: options.min,
      max: options.max,
      limit: state.limit,
      circuit: this.lifecycle.circuit.state,
      checkouts: state.meter.checkouts,
      checkoutWaitMillis: state.meter.checkoutWaitMillis,
      tenantsWaiting: state.waiters.size === 0 ? [] : state.mostWaiting(10).map(([tenant, waiting]) => ({
        tenant: options.tenantName?.(tenant) ?? tenant,
        waiting
      }))
    }
  }

  readonly sample = (): Sizing.Sample =>
    this.state.meter.sample({ open: this.state.entries.size, used: this.state.used, pending: this.state.waiters.size })

  readonly setLimit = (to: number): void => {
    this.state.setLimit(to)
    this.lifecycle.fill()
  }

  readonly shutdown: Effect.Effect<void> = Effect.suspend(() => {
    const { state, fibers, drained, options } = this
    if (state.closed) return Effect.void
    state.closed = true
    this.failWaiters(new PoolClosedError())
    return Effect.gen(function*() {
      yield* FiberSet.clear(fibers.background)
      for (const entry of state.idle.slice()) state.remove(entry)
      if (state.entries.size > 0) {
        yield* Effect.timeoutOption(Deferred.await(drained), options.shutdownTimeout)
        for (const entry of Array.from(state.entries)) state.remove(entry)
      }
      yield* FiberSet.awaitEmpty(fibers.closings)
    })
  })

  /** A connection left the pool: close it, and refill, or count the drain. */
  private removed(entry: Entry<C>): void {
    this.lifecycle.close(entry)
    if (!this.state.closed) this.lifecycle.fill()
    else if (this.state.entries.size === 0) Deferred.doneUnsafe(this.drained, Effect.void)
  }

  /**
   * Resumes a waiter's fiber. On a fresh stack: a chain of hand-offs must not
   * nest one fiber inside another.
   */
  private settle(waiter: Waiter<C>, effect: Effect.Effect<Entry<C>, PoolError>): void {
    queueMicrotask(() => waiter.resume(effect))
  }

  private failWaiters(error: PoolError): void {
    for (const waiter of this.state.leaveAll()) this.settle(waiter, Effect.fail(error))
  }

  private wait(request: Scheduler.Request): Effect.Effect<Entry<C>, PoolError> {
    return Effect.callback<Entry<C>, PoolError>((resume) => {
      const at = this.now()
      const waiter: Waiter<C> = {
        request,
        arrival: new Link(),
        inLane: new Link(),
        resume,
        enqueuedAt: at,
        deadline: at + this.options.acquireTimeout,
        entry: undefined
      }
      this.state.enqueue(waiter)
      if (!this.sweeping) {
        this.sweeping = true
        this.fibers.fork(this.sweepTimeouts)
      }
      this.lifecycle.fill()
      return Effect.sync(() => this.interrupted(waiter))
    })
  }

  /** Rule 5 for an interrupted waiter: it leaves the line, or gives back what was already handed over. */
  private interrupted(waiter: Waiter<C>): void {
    if (this.state.leave(waiter)) return
    const entry = waiter.entry
    waiter.entry = undefined
    if (entry !== undefined) this.state.release(entry)
  }

  /** Rule 5 for timeouts: one fiber sleeps until the oldest waiter's deadline. */
  private readonly sweepTimeouts: Effect.Effect<void> = Effect.suspend(() => {
    const head = this.state.waiters.peek()
    if (head === undefined) {
      this.sweeping = false
      return Effect.void
    }
    const at = this.now()
    if (head.deadline > at) return Effect.andThen(Effect.sleep(head.deadline - at), this.sweepTimeouts)
    this.state.leave(head)
    this.events.rejected?.("timeout", head.request.tenant)
    this.settle(head, Effect.fail(this.timedOut(head, at)))
    return this.sweepTimeouts
  })

  private timedOut(waiter: Waiter<C>, at: number): PoolTimeoutError {
    return new PoolTimeoutError({
      waitedMillis: at - waiter.enqueuedAt,
      poolSize: this.state.entries.size,
      maxSize: this.options.max,
      queueLength: this.state.waiters.size,
      lastConnectError: this.lifecycle.lastConnectError
    })
  }

  /**
   * Proves a connection that sat idle too long before lending it; a dead one
   * (its proof failed or took longer than `validationTimeout`) is closed and
   * the caller waits once more, as a newcomer: at most `validationTimeout`
   * plus `acquireTimeout` in all. Only the proof's failure leads there, never
   * that second wait's own.
   */
  private validated(entry: Entry<C>, request: Scheduler.Request): Effect.Effect<Entry<C>, PoolError> {
    return this.lifecycle.prove(entry).pipe(
      Effect.onInterrupt(() => Effect.sync(() => this.state.invalidate(entry))),
      Effect.flatMap((alive) => {
        if (alive) return Effect.succeed(entry)
        this.state.invalidate(entry)
        return this.acquire(request)
      })
    )
  }

  /** Why a caller may not join the line, if it may not: the circuit, `maxWaiting`, its tenant's quota. */
  private refusal(request: Scheduler.Request): PoolError | undefined {
    const { events, options, state } = this
    if (this.lifecycle.circuit.isOpen) {
      events.rejected?.("circuit_open", request.tenant)
      return this.lifecycle.circuitOpenError()
    }
    if (state.waiters.size >= options.maxWaiting) {
      events.rejected?.("saturated", request.tenant)
      return stackless(() => new PoolSaturatedError({ maxWaiting: options.maxWaiting, poolSize: state.entries.size }))
    }
    if (request.tenant === "" || state.queued(request.tenant) < options.tenantMaxQueued) return undefined
    events.rejected?.("tenant_quota", request.tenant)
    return new TenantQuotaExceededError({
      limit: "tenantMaxQueued",
      max: options.tenantMaxQueued,
      tenant: options.tenantName?.(request.tenant) ?? request.tenant
    })
  }
}
