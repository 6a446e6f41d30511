/**
 * The pool engine's rules, on scripted connections and the test clock.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import { TestClock } from "effect/testing"
import type * as Engine from "../src/internal/engine/engine.ts"
import type { Entry } from "../src/internal/engine/entry.ts"
import {
  alone,
  authenticationFailed,
  tooManyClients,
  connectionRefused,
  type FakeConnection,
  lease,
  makeEngine,
  asTenant,
  makeScript,
  share
} from "./support/scripted.ts"

type Pool = Engine.Engine<FakeConnection>

/** Lets forked fibers and queued hand-offs run. */
const settle = Effect.gen(function*() {
  for (let i = 0; i < 5; i++) yield* Effect.yieldNow
})

/** Forks a caller that takes a connection, notes it, holds it for `holdMillis`, and gives it back. */
const caller = (pool: Pool, log: Array<string>, name: string, holdMillis = 0) =>
  Effect.forkChild(
    Effect.scoped(
      Effect.gen(function*() {
        const entry = yield* lease(pool)
        log.push(`${name}:${entry.connection.id}`)
        if (holdMillis > 0) yield* Effect.sleep(holdMillis)
        return entry.connection
      })
    )
  )

/** Forks `count` callers that each hold a connection for `holdMillis`. */
const callers = (pool: Pool, log: Array<string>, count: number, holdMillis: number) =>
  Effect.forEach(Array.from({ length: count }, (_, i) => `c${i}`), (name) => caller(pool, log, name, holdMillis))

/** An engine in a scope of its own, for the shutdown tests to close. */
const closableEngine = (overrides: Partial<Engine.EngineOptions>) =>
  Effect.gen(function*() {
    const script = makeScript()
    const scope = yield* Scope.make()
    const pool = yield* Scope.provide(makeEngine(script, overrides), scope)
    return { script, scope, pool }
  })

describe("engine", () => {
  describe("limits", () => {
    it.effect("never has more than max connections open or opening", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 3, maxConnecting: 3 })
        script.connectDelay = 10
        const log: Array<string> = []
        const fibers = yield* callers(pool, log, 20, 5)
        yield* settle
        assert.isAtMost(pool.stats().total + pool.stats().creating, 3)
        yield* TestClock.adjust(1_000)
        yield* Fiber.joinAll(fibers)
        assert.strictEqual(log.length, 20)
        assert.strictEqual(script.peakOpen(), 3)
        assert.strictEqual(script.opened.length, 3)
      }))

    it.effect("opens connections at most maxConnecting at a time, so a spike is served by few", () =>
      Effect.gen(function*() {
        // HikariCP's spike test: 50 callers, 150 ms to connect, 2 ms of work each.
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 50, maxConnecting: 2 })
        script.connectDelay = 150
        const log: Array<string> = []
        const fibers = yield* callers(pool, log, 50, 2)
        yield* settle
        assert.strictEqual(pool.stats().creating, 2)
        yield* TestClock.adjust(1_000)
        yield* Fiber.joinAll(fibers)
        assert.strictEqual(log.length, 50)
        // The first connection predates the spike; the spike itself opened at most two rounds of two.
        assert.isAtMost(script.opened.length, 5)
      }))

    it.effect("fails fast with PoolSaturatedError once maxWaiting callers wait", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1, maxWaiting: 2 })
        yield* lease(pool)
        const log: Array<string> = []
        yield* caller(pool, log, "a")
        yield* caller(pool, log, "b")
        yield* settle
        const error = yield* Effect.flip(pool.acquire(alone))
        assert.strictEqual(error._tag, "PoolSaturatedError")
        if (error._tag === "PoolSaturatedError") {
          assert.strictEqual(error.maxWaiting, 2)
          assert.strictEqual(error.poolSize, 1)
        }
        assert.strictEqual(pool.stats().pending, 2)
      }))
  })

  describe("order of service", () => {
    it.effect("serves waiters first come, first served, and a releaser that re-acquires queues behind them", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1 })
        const held = yield* pool.acquire(alone)
        const log: Array<string> = []
        const fibers = []
        for (const name of ["a", "b", "c"]) {
          fibers.push(yield* caller(pool, log, name))
          yield* settle
        }
        assert.strictEqual(pool.stats().pending, 3)
        pool.release(held)
        // The releaser comes straight back: the idle connection is not its to take.
        const again = yield* caller(pool, log, "releaser")
        yield* Fiber.joinAll([...fibers, again])
        assert.deepStrictEqual(log, ["a:1", "b:1", "c:1", "releaser:1"])
      }))

    it.effect("an interrupted waiter leaves the queue at once and the next one is served", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1 })
        const held = yield* pool.acquire(alone)
        const log: Array<string> = []
        const a = yield* caller(pool, log, "a")
        const b = yield* caller(pool, log, "b")
        const c = yield* Effect.forkChild(Effect.timeout(Effect.scoped(lease(pool)), 100))
        yield* settle
        assert.strictEqual(pool.stats().pending, 3)
        yield* Fiber.interrupt(a)
        assert.strictEqual(pool.stats().pending, 2)
        yield* TestClock.adjust(100)
        const timedOut = yield* Fiber.await(c)
        assert.isTrue(Exit.isFailure(timedOut))
        assert.strictEqual(pool.stats().pending, 1)
        pool.release(held)
        yield* Fiber.join(b)
        assert.deepStrictEqual(log, ["b:1"])
        assert.strictEqual(pool.stats().idle, 1)
      }))

    it.effect("a connection handed to a waiter interrupted before it runs goes to the next waiter", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1 })
        const held = yield* pool.acquire(alone)
        const log: Array<string> = []
        const a = yield* caller(pool, log, "a")
        const b = yield* caller(pool, log, "b")
        yield* settle
        // The hand-off to `a` is queued; `a` is interrupted before it resumes.
        pool.release(held)
        yield* Fiber.interrupt(a)
        yield* Fiber.join(b)
        assert.deepStrictEqual(log, ["b:1"])
        assert.strictEqual(pool.stats().used, 0)
      }))
  })

  describe("timeouts", () => {
    it.effect("stats count the checkouts and the time they waited in line", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1 })
        const held = yield* pool.acquire(alone)
        const waiting = yield* Effect.forkChild(pool.acquire(alone))
        yield* TestClock.adjust(300)
        pool.release(held)
        pool.release(yield* Fiber.join(waiting))
        // The first was served at once, the second after 300 ms.
        assert.deepInclude(pool.stats(), { checkouts: 2, checkoutWaitMillis: 300 })
      }))

    it.effect("fails a waiter after acquireTimeout with PoolTimeoutError carrying the wait, size and queue", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1, acquireTimeout: 1_000 })
        yield* lease(pool)
        const first = yield* Effect.forkChild(pool.acquire(alone))
        yield* TestClock.adjust(400)
        const second = yield* Effect.forkChild(pool.acquire(alone))
        yield* TestClock.adjust(600)
        const error = yield* Effect.flip(Fiber.join(first))
        assert.strictEqual(error._tag, "PoolTimeoutError")
        if (error._tag === "PoolTimeoutError") {
          assert.strictEqual(error.waitedMillis, 1_000)
          assert.strictEqual(error.poolSize, 1)
          assert.strictEqual(error.maxSize, 1)
          assert.strictEqual(error.queueLength, 1)
        }
        assert.strictEqual(pool.stats().pending, 1)
        yield* TestClock.adjust(400)
        const later = yield* Effect.flip(Fiber.join(second))
        assert.strictEqual(later._tag, "PoolTimeoutError")
        if (later._tag === "PoolTimeoutError") assert.strictEqual(later.queueLength, 0)
        assert.strictEqual(pool.stats().pending, 0)
      }))

    it.effect("a timed-out waiter is never handed a connection", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1, acquireTimeout: 1_000 })
        const held = yield* pool.acquire(alone)
        const waiter = yield* Effect.forkChild(pool.acquire(alone))
        yield* TestClock.adjust(1_000)
        pool.release(held)
        const exit = yield* Fiber.await(waiter)
        const error = Exit.findErrorOption(exit)
        assert.strictEqual(error._tag === "Some" ? error.value._tag : undefined, "PoolTimeoutError")
        assert.deepStrictEqual(pool.stats().idle, 1)
      }))

    it.effect("the timeout names the last connection failure when the database is unreachable", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 2, acquireTimeout: 1_000 })
        yield* lease(pool)
        script.failAll = connectionRefused()
        const error = yield* Effect.flip(Effect.forkChild(pool.acquire(alone)).pipe(
          Effect.tap(() => TestClock.adjust(1_000)),
          Effect.flatMap(Fiber.join)
        ))
        assert.strictEqual(error._tag, "PoolTimeoutError")
        assert.include(error.message, "ECONNREFUSED")
        // It kept trying, spaced by the retry schedule, while someone waited.
        assert.isAbove(script.attempts(), 5)
      }))
  })

  describe("connection life", () => {
    it.effect("fills min at start and keeps it filled", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { min: 2, max: 4 })
        yield* settle
        assert.strictEqual(pool.stats().idle, 2)
        script.kill(script.opened[0])
        yield* settle
        assert.strictEqual(pool.stats().total, 2)
        assert.isTrue(script.opened[0].closed)
        assert.strictEqual(script.opened.length, 3)
      }))

    it.effect("closes idle connections above min after idleTimeout", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { min: 1, max: 4, idleTimeout: 10_000, housekeepingInterval: 1_000 })
        const fibers = yield* callers(pool, [], 4, 10)
        yield* TestClock.adjust(10)
        yield* Fiber.joinAll(fibers)
        assert.strictEqual(pool.stats().idle, 4)
        yield* TestClock.adjust(9_000)
        assert.strictEqual(pool.stats().idle, 4)
        yield* TestClock.adjust(2_000)
        assert.strictEqual(pool.stats().total, 1)
        assert.strictEqual(script.openNow(), 1)
      }))

    it.effect("spreads connection lifetimes by the jitter and retires each at its own deadline", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const draws = [0, 0.5, 1]
        const pool = yield* makeEngine(script, {
          min: 3,
          max: 3,
          maxLifetime: 100_000,
          maxLifetimeJitter: 0.2,
          housekeepingInterval: 1_000,
          random: () => draws.shift() ?? 0
        })
        yield* settle
        assert.strictEqual(script.opened.length, 3)
        // Lifetimes 100 s, 90 s and 80 s: none outlives maxLifetime, none expires with another.
        const closed = () => script.opened.slice(0, 3).map((c) => c.closed)
        yield* TestClock.adjust(81_000)
        assert.deepStrictEqual(closed(), [false, false, true])
        yield* TestClock.adjust(10_000)
        assert.deepStrictEqual(closed(), [false, true, true])
        yield* TestClock.adjust(10_000)
        assert.isTrue(script.opened[0].closed)
        assert.strictEqual(pool.stats().total, 3)
      }))

    it.effect("closes a connection past its lifetime or uses when it comes back, instead of lending it", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1, maxLifetime: 5_000, maxUses: 3 })
        const held = yield* pool.acquire(alone)
        yield* TestClock.adjust(6_000)
        pool.release(held)
        assert.isTrue(held.connection.closed || script.opened[0].closed)
        const ids: Array<number> = []
        for (let i = 0; i < 4; i++) {
          const entry: Entry<FakeConnection> = yield* pool.acquire(alone)
          ids.push(entry.connection.id)
          pool.release(entry)
          yield* settle
        }
        // Connection 2 served three checkouts, then 3 took over.
        assert.deepStrictEqual(ids, [2, 2, 2, 3])
      }))

    it.effect("replaces a connection that dies, and never lends a dead one", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { min: 1, max: 1 })
        const used = yield* pool.acquire(alone)
        script.kill(used.connection)
        pool.release(used)
        assert.isTrue(used.connection.closed)
        yield* settle
        const next = yield* pool.acquire(alone)
        assert.notStrictEqual(next.connection.id, used.connection.id)
        pool.release(next)
        // Dying while idle: dropped at once, replaced for min.
        script.kill(next.connection)
        yield* settle
        const third = yield* lease(pool)
        assert.isFalse(third.connection.closed)
        assert.strictEqual(third.connection.id, 3)
      }))

    it.effect("a waiter is not stranded when the connection it waits for dies", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1 })
        script.connectDelay = 50
        const held = yield* pool.acquire(alone)
        const log: Array<string> = []
        const waiter = yield* caller(pool, log, "w")
        yield* settle
        script.kill(held.connection)
        pool.release(held)
        yield* TestClock.adjust(50)
        yield* Fiber.join(waiter)
        assert.deepStrictEqual(log, ["w:2"])
      }))
  })

  describe("start-up", () => {
    it.effect("retries a refused connection until the database answers", () =>
      Effect.gen(function*() {
        const script = makeScript()
        script.failures.push(connectionRefused(), connectionRefused(), connectionRefused())
        const starting = yield* Effect.forkChild(Effect.scoped(Effect.flatMap(makeEngine(script), (p) => Effect.sync(p.stats))))
        yield* TestClock.adjust(1_000)
        const stats = yield* Fiber.join(starting)
        assert.strictEqual(stats.total, 1)
        assert.strictEqual(script.attempts(), 4)
      }))

    it.effect("fails with DatabaseUnavailableError after initializationTimeout", () =>
      Effect.gen(function*() {
        const script = makeScript()
        script.failAll = connectionRefused()
        const starting = yield* Effect.forkChild(Effect.scoped(makeEngine(script, { initializationTimeout: 2_000 })))
        yield* TestClock.adjust(2_000)
        const error = yield* Effect.flip(Fiber.join(starting))
        assert.strictEqual((error as { _tag: string })._tag, "DatabaseUnavailableError")
        assert.include(String((error as Error).message), "ECONNREFUSED")
      }))

    it.effect("fails at once on bad credentials instead of retrying", () =>
      Effect.gen(function*() {
        const script = makeScript()
        script.failAll = authenticationFailed()
        const error = yield* Effect.flip(Effect.scoped(makeEngine(script)))
        assert.strictEqual((error as { _tag: string })._tag, "DatabaseUnavailableError")
        assert.strictEqual(script.attempts(), 1)
      }))

    it.effect("fails waiting callers at once when a new connection is refused for good", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 2 })
        yield* lease(pool)
        script.failAll = authenticationFailed()
        const error = yield* Effect.flip(pool.acquire(alone))
        assert.strictEqual(error._tag, "DatabaseUnavailableError")
        assert.strictEqual(pool.stats().pending, 0)
      }))
  })

  describe("shared connections (pipelining)", () => {
    it.effect("reports use time for a connection lent alone, not for shares, whose borrowers overlap", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const used: Array<number> = []
        const pool = yield* makeEngine(script, { max: 1, pipelineDepth: 2, events: { released: (millis) => used.push(millis) } })
        yield* TestClock.adjust(5_000)
        const a = yield* pool.acquire(share)
        const b = yield* pool.acquire(share)
        yield* TestClock.adjust(30)
        pool.release(a)
        pool.release(b)
        assert.deepStrictEqual(used, [])
        const held = yield* pool.acquire(alone)
        yield* TestClock.adjust(40)
        pool.release(held)
        assert.deepStrictEqual(used, [40])
      }))

    it.effect("puts up to pipelineDepth statements on one connection before using the next", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 3, pipelineDepth: 3 })
        const shares: Array<Entry<FakeConnection>> = []
        for (let i = 0; i < 5; i++) shares.push(yield* pool.acquire(share))
        assert.deepStrictEqual(shares.map((e) => e.connection.id), [1, 1, 1, 2, 2])
        assert.strictEqual(shares[0].borrowers, 3)
        for (const share of shares) pool.release(share)
        assert.strictEqual(pool.stats().idle, 2)
      }))

    it.effect("opens one connection per pipelineDepth waiting statements", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 10, maxConnecting: 10, pipelineDepth: 4 })
        const held = yield* pool.acquire(alone)
        script.connectDelay = 10
        const waiting = yield* Effect.forEach(Array.from({ length: 9 }), () => Effect.forkChild(pool.acquire(share)))
        yield* settle
        // Nine shares of depth four need three connections.
        assert.strictEqual(pool.stats().creating, 3)
        yield* TestClock.adjust(10)
        const served = yield* Fiber.joinAll(waiting)
        assert.strictEqual(new Set(served.map((e) => e.connection.id)).size, 3)
        for (const share of served) pool.release(share)
        pool.release(held)
      }))

    it.effect("a caller waiting for a connection alone is not overtaken by later shares", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1, pipelineDepth: 4 })
        const first = yield* pool.acquire(share)
        const whole = yield* Effect.forkChild(pool.acquire(alone))
        yield* settle
        const later = yield* Effect.forkChild(pool.acquire(share))
        yield* settle
        // The shared connection has room, but the caller ahead waits for it whole.
        assert.strictEqual(first.borrowers, 1)
        assert.strictEqual(pool.stats().pending, 2)
        pool.release(first)
        const mine = yield* Fiber.join(whole)
        assert.strictEqual(mine.state, "used")
        assert.isUndefined(later.pollUnsafe())
        pool.release(mine)
        pool.release(yield* Fiber.join(later))
      }))

    it.effect("an abandoned statement is cancelled once no one else's shares the connection, which then closes", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 2, pipelineDepth: 4 })
        const other = yield* pool.acquire(share)
        const mine = yield* pool.acquire(share)
        pool.abandon(mine)
        // Someone else's statement still shares the connection: no cancel, no newcomers.
        assert.deepStrictEqual(script.cancelled, [])
        const newcomer = yield* pool.acquire(share)
        assert.notStrictEqual(newcomer.connection.id, other.connection.id)
        pool.release(other)
        yield* settle
        assert.deepStrictEqual(script.cancelled, [other.connection.id])
        assert.isTrue(other.connection.closed)
        pool.release(newcomer)
      }))
  })

  describe("tenant-fair scheduling", () => {
    const fairness = (overrides: Partial<Engine.EngineOptions["fairness"]> = {}): Engine.EngineOptions["fairness"] => ({
      mode: "tenant",
      priorityWeights: { high: 4, normal: 2, low: 1 },
      tenantWeight: () => 1,
      tenantMaxInUse: Infinity,
      ...overrides
    })

    it.effect("serves waiting tenants in turn, a noisy tenant's backlog notwithstanding", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1, fairness: fairness() })
        const held = yield* pool.acquire(alone)
        const log: Array<string> = []
        const fibers = []
        for (let i = 0; i < 4; i++) {
          fibers.push(yield* Effect.forkChild(Effect.scoped(Effect.tap(lease(pool, asTenant("noisy")), () => Effect.sync(() => log.push("noisy"))))))
          yield* settle
        }
        for (const quiet of ["q1", "q2"]) {
          fibers.push(yield* Effect.forkChild(Effect.scoped(Effect.tap(lease(pool, asTenant(quiet)), () => Effect.sync(() => log.push(quiet))))))
          yield* settle
        }
        pool.release(held)
        yield* Fiber.joinAll(fibers)
        // FIFO would serve noisy four times first; turns put the quiet tenants second and third.
        assert.deepStrictEqual(log, ["noisy", "q1", "q2", "noisy", "noisy", "noisy"])
      }))

    it.effect("turns away a tenant past tenantMaxQueued with TenantQuotaExceededError, others unaffected", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1, fairness: fairness(), tenantMaxQueued: 2 })
        const held = yield* pool.acquire(alone)
        const waiting = [
          yield* Effect.forkChild(pool.acquire(asTenant("a"))),
          yield* Effect.forkChild(pool.acquire(asTenant("a")))
        ]
        yield* settle
        const error = yield* Effect.flip(pool.acquire(asTenant("a")))
        assert.strictEqual(error._tag, "TenantQuotaExceededError")
        if (error._tag === "TenantQuotaExceededError") {
          assert.strictEqual(error.max, 2)
          assert.strictEqual(error.tenant, "a")
        }
        const other = yield* Effect.forkChild(pool.acquire(asTenant("b")))
        yield* settle
        assert.isUndefined(other.pollUnsafe())
        assert.strictEqual(pool.stats().pending, 3)
        yield* Fiber.interruptAll([...waiting, other])
        pool.release(held)
      }))

    it.effect("stats name the tenants most backed up as telemetry names them", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1, fairness: fairness(), tenantName: (tenant) => `#${tenant.length}` })
        const held = yield* pool.acquire(alone)
        const waiting = []
        for (const tenant of ["noisy", "noisy", "q", "noisy"]) waiting.push(yield* Effect.forkChild(pool.acquire(asTenant(tenant))))
        yield* settle
        assert.deepStrictEqual(pool.stats().tenantsWaiting, [{ tenant: "#5", waiting: 3 }, { tenant: "#1", waiting: 1 }])
        yield* Fiber.interruptAll(waiting)
        assert.deepStrictEqual(pool.stats().tenantsWaiting, [])
        pool.release(held)
      }))

    it.effect("a tenant at tenantMaxInUse waits while others take the idle connections", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { min: 3, max: 3, fairness: fairness({ tenantMaxInUse: 2 }) })
        yield* settle
        const a1 = yield* pool.acquire(asTenant("a"))
        const a2 = yield* pool.acquire(asTenant("a"))
        const a3 = yield* Effect.forkChild(pool.acquire(asTenant("a")))
        yield* settle
        assert.isUndefined(a3.pollUnsafe())
        assert.strictEqual(pool.stats().idle, 1)
        const b = yield* pool.acquire(asTenant("b"))
        assert.strictEqual(b.state, "used")
        pool.release(a1)
        const third = yield* Fiber.join(a3)
        assert.strictEqual(third.holder, "a")
        for (const entry of [a2, b, third]) pool.release(entry)
      }))

    it.effect("an interrupted or timed-out tenant waiter leaves its tenant's queue, and the next is served", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 1, acquireTimeout: 1_000, fairness: fairness() })
        const held = yield* pool.acquire(alone)
        const first = yield* Effect.forkChild(pool.acquire(asTenant("a")))
        const second = yield* Effect.forkChild(pool.acquire(asTenant("b")))
        yield* TestClock.adjust(500)
        const third = yield* Effect.forkChild(pool.acquire(asTenant("c")))
        yield* settle
        yield* Fiber.interrupt(second)
        yield* TestClock.adjust(500)
        assert.strictEqual((yield* Effect.flip(Fiber.join(first)))._tag, "PoolTimeoutError")
        assert.strictEqual(pool.stats().pending, 1)
        pool.release(held)
        const served = yield* Fiber.join(third)
        assert.strictEqual(served.holder, "c")
        pool.release(served)
      }))

    it.effect("costs nothing when nobody waits: a tenant takes an idle connection at once", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { min: 1, max: 1, fairness: fairness() })
        yield* settle
        for (let i = 0; i < 100; i++) {
          const entry = yield* pool.acquire(asTenant(`tenant-${i}`))
          pool.release(entry)
        }
        assert.strictEqual(script.opened.length, 1)
        assert.strictEqual(pool.stats().pending, 0)
      }))
  })

  describe("health", () => {
    it.effect("opens the circuit when the database is gone: waiters and newcomers fail fast, a probe closes it", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const events: Array<string> = []
        const pool = yield* makeEngine(script, {
          max: 2,
          circuitBreakerThreshold: 3,
          events: { circuitOpened: () => events.push("open"), circuitClosed: () => events.push("closed") }
        })
        const held = yield* pool.acquire(alone)
        script.failAll = connectionRefused()
        script.kill(held.connection)
        pool.release(held)
        // The pool tries to replace it for the waiter; three failures with nothing left open the circuit.
        const waiter = yield* Effect.forkChild(pool.acquire(alone))
        yield* TestClock.adjust(300)
        assert.deepStrictEqual(events, ["open"])
        assert.strictEqual((yield* Effect.flip(Fiber.join(waiter)))._tag, "DatabaseUnavailableError")
        assert.strictEqual(pool.stats().circuit, "open")
        const fast = yield* Effect.flip(pool.acquire(alone))
        assert.strictEqual(fast._tag, "DatabaseUnavailableError")
        // The database comes back; the next probe succeeds and closes it.
        script.failAll = undefined
        yield* TestClock.adjust(1_000)
        assert.deepStrictEqual(events, ["open", "closed"])
        const entry = yield* pool.acquire(alone)
        assert.isFalse(entry.connection.closed)
        pool.release(entry)
      }))

    it.effect("when the database is back, the probe and the openers for min together stay within max", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { min: 1, max: 1, circuitBreakerThreshold: 3 })
        yield* settle
        script.failAll = connectionRefused()
        script.kill(script.opened[0])
        yield* TestClock.adjust(2_000)
        assert.strictEqual(pool.stats().circuit, "open")
        script.failAll = undefined
        let most = 0
        for (let i = 0; i < 40; i++) {
          yield* TestClock.adjust(100)
          most = Math.max(most, script.openNow())
        }
        assert.strictEqual(most, 1)
        assert.strictEqual(pool.stats().total, 1)
        assert.strictEqual(pool.stats().circuit, "closed")
      }))

    it.effect("proves a connection idle past validationThreshold before lending it, and replaces a dead one", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 2, validationThreshold: 1_000 })
        const first = yield* pool.acquire(alone)
        pool.release(first)
        const again = yield* pool.acquire(alone)
        assert.deepStrictEqual(script.validated, [])
        pool.release(again)
        yield* TestClock.adjust(1_001)
        script.deadOnValidation.add(first.connection.id)
        const proved = yield* pool.acquire(alone)
        assert.deepStrictEqual(script.validated, [1])
        assert.strictEqual(proved.connection.id, 2)
        assert.isTrue(first.connection.closed)
        pool.release(proved)
      }))

    it.effect("a connection whose proof times out costs the caller one more wait of acquireTimeout, counted once", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const rejected: Array<string> = []
        const pool = yield* makeEngine(script, {
          max: 1,
          validationThreshold: 1_000,
          validationTimeout: 1_000,
          acquireTimeout: 5_000,
          events: { rejected: (reason) => rejected.push(reason) }
        })
        const first = yield* pool.acquire(alone)
        pool.release(first)
        yield* TestClock.adjust(1_001)
        script.hangOnValidation.add(first.connection.id)
        // Its replacement never comes.
        script.connectDelay = 3_600_000
        const caller = yield* Effect.forkChild(Effect.flip(pool.acquire(alone)))
        yield* TestClock.adjust(1_000 + 5_000)
        const exit = caller.pollUnsafe()
        assert.isDefined(exit, "still waiting after acquireTimeout: the failed wait was retried")
        assert.strictEqual(exit?._tag === "Success" ? exit.value._tag : undefined, "PoolTimeoutError")
        assert.deepStrictEqual(rejected, ["timeout"])
      }))

    it.effect("pings idle connections every keepaliveInterval and replaces the dead ones", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { min: 2, max: 2, keepaliveInterval: 10_000, housekeepingInterval: 1_000 })
        yield* settle
        script.deadOnValidation.add(1)
        yield* TestClock.adjust(11_000)
        assert.includeMembers(script.validated, [1, 2])
        assert.isTrue(script.opened[0].closed)
        assert.isFalse(script.opened[1].closed)
        assert.strictEqual(pool.stats().total, 2)
      }))

    it.effect("reports a connection held past leakDetectionThreshold once, with where it was taken, and not others", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const leaks: Array<[number, string | undefined]> = []
        const pool = yield* makeEngine(script, {
          max: 2,
          leakDetectionThreshold: 5_000,
          housekeepingInterval: 1_000,
          events: { leaked: (held, origin) => leaks.push([held, origin]) }
        })
        const leaked = yield* pool.acquire({ ...alone, origin: () => "the leaky handler" })
        const returned = yield* pool.acquire(alone)
        yield* TestClock.adjust(1_000)
        pool.release(returned)
        yield* TestClock.adjust(10_000)
        assert.deepStrictEqual(leaks, [[5_000, "the leaky handler"]])
        pool.release(leaked)
      }))
  })

  describe("adaptive limit", () => {
    it.effect("a lower limit closes idle connections now and lent ones as they come back; a higher one lets waiters in", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 4 })
        const log: Array<string> = []
        // Four busy, then two of them back: two lent, two idle.
        const long = yield* callers(pool, log, 2, 1_000)
        const short = yield* callers(pool, log, 2, 10)
        yield* TestClock.adjust(10)
        yield* Fiber.joinAll(short)
        assert.deepStrictEqual([pool.stats().used, pool.stats().idle], [2, 2])
        pool.setLimit(1)
        assert.deepStrictEqual([pool.stats().total, pool.stats().limit], [2, 1])
        // Waiters queue behind the limit; no connection is opened for them.
        const waiting = yield* callers(pool, log, 2, 10)
        yield* settle
        assert.strictEqual(pool.stats().pending, 2)
        assert.strictEqual(script.opened.length, 4)
        yield* TestClock.adjust(990)
        yield* settle
        // One of the two lent connections closed on its return, the other serves the waiters.
        assert.strictEqual(script.openNow(), 1)
        yield* Fiber.joinAll(long)
        pool.setLimit(3)
        yield* TestClock.adjust(10)
        yield* settle
        yield* TestClock.adjust(10)
        yield* Fiber.joinAll(waiting)
        assert.isAtMost(script.peakOpen(), 4)
        pool.setLimit(0)
        assert.strictEqual(pool.stats().limit, 0 + pool.stats().min)
      }))

    it.effect("samples what happened since the last sample: completions, waits, peak use, refusals", () =>
      Effect.gen(function*() {
        const script = makeScript()
        const pool = yield* makeEngine(script, { max: 4 })
        pool.setLimit(2)
        pool.sample()
        const fibers = yield* callers(pool, [], 4, 100)
        yield* TestClock.adjust(100)
        yield* settle
        yield* TestClock.adjust(100)
        yield* Fiber.joinAll(fibers)
        const sample = pool.sample()
        assert.strictEqual(sample.completions, 4)
        assert.strictEqual(sample.peakUsed, 2)
        assert.strictEqual(sample.pending, 0)
        // Two served at once, two after 100 ms: 50 ms on average; each held for 100 ms.
        assert.strictEqual(sample.waitMillis, 50)
        assert.strictEqual(sample.serviceMillis, 100)
        assert.strictEqual(sample.refused, 0)
        assert.strictEqual(pool.sample().completions, 0)
        // The server has no slots left: the attempts it refuses are counted, and nobody is failed for it.
        pool.setLimit(4)
        script.failures.push(tooManyClients(), tooManyClients())
        const more = yield* callers(pool, [], 3, 10)
        yield* TestClock.adjust(10)
        yield* settle
        yield* TestClock.adjust(300)
        yield* Fiber.joinAll(more)
        assert.isAtLeast(pool.sample().refused, 1)
      }))
  })

  describe("shutdown", () => {
    it.effect("drains: idle connections close at once, newcomers fail, a lent one closes when it comes back", () =>
      Effect.gen(function*() {
        const { pool, scope, script } = yield* closableEngine({ min: 2, max: 2, shutdownTimeout: 5_000 })
        yield* settle
        const held = yield* pool.acquire(alone)
        assert.strictEqual(pool.stats().idle, 1)
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
        yield* settle
        assert.strictEqual(script.openNow(), 1)
        assert.strictEqual((yield* Effect.flip(pool.acquire(alone)))._tag, "PoolClosedError")
        yield* TestClock.adjust(1_000)
        assert.isUndefined(closing.pollUnsafe())
        pool.release(held)
        yield* Fiber.join(closing)
        assert.strictEqual(script.openNow(), 0)
      }))

    it.effect("fails the callers waiting when it closes", () =>
      Effect.gen(function*() {
        const { pool, scope, script } = yield* closableEngine({ max: 1 })
        const held = yield* pool.acquire(alone)
        const waiter = yield* Effect.forkChild(pool.acquire(alone))
        yield* settle
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
        assert.strictEqual((yield* Effect.flip(Fiber.join(waiter)))._tag, "PoolClosedError")
        pool.release(held)
        yield* Fiber.join(closing)
        assert.strictEqual(script.openNow(), 0)
      }))

    it.effect("closes a connection whose keepalive ping is in flight at once, not after shutdownTimeout", () =>
      Effect.gen(function*() {
        const { scope, script } = yield* closableEngine({
          min: 1,
          max: 1,
          keepaliveInterval: 10_000,
          housekeepingInterval: 1_000,
          validationTimeout: 60_000,
          shutdownTimeout: 5_000
        })
        yield* settle
        script.hangOnValidation.add(1)
        yield* TestClock.adjust(11_000)
        assert.deepStrictEqual(script.validated, [1])
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
        yield* settle
        assert.isDefined(closing.pollUnsafe(), "the drain did not wait for the ping")
        assert.strictEqual(script.openNow(), 0)
      }))

    it.effect("closes connections not given back within shutdownTimeout", () =>
      Effect.gen(function*() {
        const { pool, scope, script } = yield* closableEngine({ max: 1, shutdownTimeout: 5_000 })
        const held = yield* pool.acquire(alone)
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
        yield* TestClock.adjust(4_999)
        assert.isFalse(held.connection.closed)
        yield* TestClock.adjust(1)
        yield* Fiber.join(closing)
        assert.isTrue(held.connection.closed)
        assert.strictEqual(script.openNow(), 0)
        // Giving it back afterwards is harmless.
        pool.release(held)
        assert.strictEqual(pool.stats().total, 0)
      }))
  })
})
