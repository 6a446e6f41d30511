/**
 * The pool state alone, without Effects: its hand-out rules hold under any
 * sequence of arrivals, departures, releases, failures and limit changes, and
 * the housekeeper's round acts on what it finds.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Scope from "effect/Scope"
import fc from "fast-check"
import { Entry } from "../src/internal/engine/entry.ts"
import * as Housekeeper from "../src/internal/engine/housekeeper.ts"
import type { Lifecycle } from "../src/internal/engine/lifecycle.ts"
import { Link } from "../src/internal/engine/linkedQueue.ts"
import { type Events, Meter } from "../src/internal/engine/meter.ts"
import { type Limits, PoolState, type Waiting } from "../src/internal/engine/poolState.ts"
import type * as Scheduler from "../src/internal/engine/scheduler.ts"

interface TestWaiter extends Waiting {
  readonly id: number
}

/** A state over plain numbered connections, recording what it asks of its driver. */
const harness = (limits: Partial<Limits> = {}, events: Events = {}) => {
  let clock = 0
  let ids = 0
  const served: Array<readonly [TestWaiter, Entry<number>]> = []
  const removed: Array<Entry<number>> = []
  const state = new PoolState<number, TestWaiter>(
    {
      min: 0,
      max: 4,
      pipelineDepth: 3,
      maxUses: Infinity,
      validationThreshold: Infinity,
      fairness: { mode: "fifo", priorityWeights: { high: 4, normal: 2, low: 1 }, tenantWeight: () => 1, tenantMaxInUse: Infinity },
      ...limits
    },
    new Meter(() => clock, events),
    { served: (waiter, entry) => void served.push([waiter, entry]), removed: (entry) => void removed.push(entry) },
    () => clock
  )
  const open = (expiresAt = Infinity) => {
    const entry = new Entry(ids++, Scope.makeUnsafe(), clock, expiresAt)
    state.admit(entry)
    return entry
  }
  const waiter = (request: Scheduler.Request): TestWaiter => ({
    id: ids++,
    request,
    arrival: new Link(),
    inLane: new Link(),
    enqueuedAt: clock,
    deadline: Infinity
  })
  return { state, served, removed, open, waiter, advance: (millis: number) => void (clock += millis) }
}

const alone: Scheduler.Request = { tenant: "", priority: "normal", shared: false }
const share: Scheduler.Request = { tenant: "", priority: "normal", shared: true }

describe("PoolState", () => {
  it("lends the warmest idle connection, and nobody takes one while others wait", () => {
    const { state, open, waiter } = harness()
    const cold = open()
    const warm = open()
    assert.strictEqual(state.take(alone), warm)
    state.enqueue(waiter(alone))
    // The waiter took the cold one on arrival; a newcomer does not barge past the line.
    assert.strictEqual(cold.state, "used")
    state.enqueue(waiter(alone))
    state.release(warm)
    assert.strictEqual(state.take(alone), undefined, "the released connection went to the waiter, not to a newcomer")
  })

  it("fills the busiest shared connection first, up to pipelineDepth", () => {
    const { state, open } = harness({ pipelineDepth: 2 })
    open()
    open()
    const first = state.take(share)!
    assert.strictEqual(state.take(share), first)
    const second = state.take(share)!
    assert.notStrictEqual(second, first, "the first is full at pipelineDepth")
    state.release(first)
    assert.strictEqual(state.take(share), second, "of two with room, the busier")
  })

  it("closes a spent connection instead of lending it, and wants a replacement only for a waiter", () => {
    const { state, open, removed, waiter, advance } = harness()
    const entry = open(10)
    assert.strictEqual(state.take(alone), entry)
    advance(10)
    state.release(entry)
    assert.deepStrictEqual(removed, [entry])
    assert.strictEqual(state.openings(2), 0, "nobody waits and min is 0")
    state.enqueue(waiter(alone))
    assert.strictEqual(state.openings(2), 1)
  })

  it("an abandoned share takes no new borrower and is closed when its last borrower leaves", () => {
    const { state, open, removed } = harness()
    const entry = open()
    state.take(share)
    state.take(share)
    state.abandon(entry)
    assert.notStrictEqual(state.take(share), entry)
    assert.deepStrictEqual(removed, [])
    state.release(entry)
    assert.deepStrictEqual(removed, [entry])
  })

  it("names the tenants with the most callers in line, most first", () => {
    const { state, waiter } = harness()
    const asTenant = (tenant: string): Scheduler.Request => ({ tenant, priority: "normal", shared: false })
    for (const tenant of ["a", "b", "b", "", "c", "b", "a", ""]) state.enqueue(waiter(asTenant(tenant)))
    assert.deepStrictEqual(state.mostWaiting(2), [["b", 3], ["a", 2]])
    assert.deepStrictEqual(state.mostWaiting(10).map(([tenant]) => tenant), ["b", "a", "c"], "work without a tenant is no tenant")
  })

  it("keeps its rules under any sequence of operations", () => {
    const operation = fc.oneof(
      fc.record({ op: fc.constant("fill" as const) }),
      fc.record({ op: fc.constant("opened" as const) }),
      fc.record({ op: fc.constant("openFailed" as const) }),
      fc.record({ op: fc.constant("request" as const), shared: fc.boolean() }),
      fc.record({ op: fc.constant("release" as const), pick: fc.nat() }),
      fc.record({ op: fc.constant("invalidate" as const), pick: fc.nat() }),
      fc.record({ op: fc.constant("abandon" as const), pick: fc.nat() }),
      fc.record({ op: fc.constant("leave" as const), pick: fc.nat() }),
      fc.record({ op: fc.constant("limit" as const), to: fc.integer({ min: 1, max: 4 }) })
    )
    fc.assert(fc.property(fc.array(operation, { minLength: 20, maxLength: 150, size: "max" }), (operations) => {
      const { state, served, removed, open, waiter } = harness()
      /** Checkouts held, by whom: a connection alone or a share of one. */
      const held: Array<readonly [TestWaiter | undefined, Entry<number>]> = []
      const inLine = new Set<TestWaiter>()
      const gone = new Set<TestWaiter>()
      let servedSeen = 0
      const collect = () => {
        for (; servedSeen < served.length; servedSeen++) {
          const [w, entry] = served[servedSeen]
          assert.isFalse(gone.has(w), "a waiter that left is never served")
          assert.isTrue(inLine.delete(w), "each waiter is served once, from the line")
          assert.isFalse(entry.broken, "a connection given back broken is never lent again")
          held.push([w, entry])
        }
      }
      const pick = (n: number) => held.splice(n % held.length, 1)[0][1]
      for (const step of operations) {
        if (step.op === "fill") {
          state.openings(2)
        } else if (step.op === "opened" || step.op === "openFailed") {
          // An opening under way ends, as the lifecycle ends it.
          if (state.creating > 0) {
            state.creating--
            if (step.op === "opened") open()
          }
        } else if (step.op === "request") {
          const request = step.shared ? share : alone
          const entry = state.take(request)
          if (entry !== undefined) held.push([undefined, entry])
          else {
            const w = waiter(request)
            inLine.add(w)
            state.enqueue(w)
          }
        } else if (step.op === "leave") {
          const w = Array.from(inLine)[step.pick % Math.max(1, inLine.size)]
          if (w !== undefined && state.leave(w)) {
            inLine.delete(w)
            gone.add(w)
          }
        } else if (step.op === "limit") {
          state.setLimit(step.to)
        } else if (held.length > 0) {
          const entry = pick(step.pick)
          if (step.op === "release") state.release(entry)
          else if (step.op === "invalidate") state.invalidate(entry)
          else state.abandon(entry)
        }
        collect()
        // Rule 1.
        assert.isAtMost(state.entries.size + state.creating, state.limits.max)
        // Rule 2 (first come, first served, no in-use limits): nothing idles while someone waits.
        if (state.waiters.size > 0) assert.strictEqual(state.idle.length, 0)
        assert.strictEqual(state.waiters.size, inLine.size)
        for (const entry of state.entries) {
          const holders = held.filter(([, e]) => e === entry).length
          // Rule 3.
          if (entry.state === "used") assert.isAtMost(holders, 1, "a connection lent alone has one holder")
          if (entry.state === "shared") assert.strictEqual(entry.borrowers, holders)
          if (entry.state === "shared") assert.isAtMost(holders, state.limits.pipelineDepth)
          if (entry.state === "idle") assert.strictEqual(holders, 0)
          // Rule 6.
          if (entry.state === "idle") assert.isFalse(entry.broken, "a broken connection never idles")
        }
        for (const entry of removed) assert.isFalse(state.entries.has(entry), "a closed connection is out of the pool")
        for (const [, entry] of held) assert.notStrictEqual(entry.state, "closed", "a connection someone holds stays open")
      }
    }), { numRuns: 300 })
  })
})

describe("Housekeeper", () => {
  const options = { min: 0, idleTimeout: 1_000, leakDetectionThreshold: 100, housekeepingInterval: 50 }
  const lifecycle = (state: PoolState<number, TestWaiter>, pinged: Array<Entry<number>>) =>
    ({
      fill: () => {},
      keepAlive: (entry: Entry<number>) => {
        state.lendToHousekeeper(entry)
        pinged.push(entry)
      }
    }) as unknown as Lifecycle<number, TestWaiter>

  it("reports a connection held past leakDetectionThreshold, and not one it took out to ping", () => {
    const leaks: Array<number> = []
    const { state, open, advance } = harness({}, { leaked: (millis) => void leaks.push(millis) })
    const pinged: Array<Entry<number>> = []
    const idleOne = open()
    idleOne.keepaliveAfter = 150
    const heldOne = open()
    // Both were lent once; the first came back at once.
    assert.strictEqual(state.take(alone), heldOne)
    assert.strictEqual(state.take(alone), idleOne)
    state.release(idleOne)
    advance(200)
    Housekeeper.round(state, lifecycle(state, pinged), options, 200)
    assert.deepStrictEqual(pinged, [idleOne])
    assert.deepStrictEqual(leaks, [200], "only the connection someone holds")
  })

  it("evicts connections idle past idleTimeout down to min, coldest first", () => {
    const { state, open, removed, advance } = harness({ min: 1 })
    const coldest = open()
    advance(500)
    const colder = open()
    advance(500)
    open()
    Housekeeper.round(state, lifecycle(state, []), { ...options, min: 1 }, 1_100)
    assert.deepStrictEqual(removed, [coldest])
    Housekeeper.round(state, lifecycle(state, []), { ...options, min: 1 }, 1_600)
    assert.deepStrictEqual(removed, [coldest, colder])
  })
})
