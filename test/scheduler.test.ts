/**
 * The order of service: deficit round-robin across tenants and priority
 * classes, FIFO within a tenant, in-use limits, and bounded state.
 */
import { assert, describe, it } from "@effect/vitest"
import fc from "fast-check"
import { Link } from "../src/internal/engine/linkedQueue.ts"
import * as Scheduler from "../src/internal/engine/scheduler.ts"

interface TestWaiter extends Scheduler.Waiting {
  readonly id: number
  readonly inLane: Link<TestWaiter>
}

let ids = 0
const waiter = (tenant: string, priority: Scheduler.Priority = "normal", shared = false): TestWaiter => ({
  id: ids++,
  request: { tenant, priority, shared },
  inLane: new Link()
})

const fair = (options: Partial<Scheduler.FairnessOptions> = {}) =>
  Scheduler.make<TestWaiter>({
    mode: "tenant",
    priorityWeights: { high: 4, normal: 2, low: 1 },
    tenantWeight: () => 1,
    tenantMaxInUse: Infinity,
    ...options
  })

const drain = (scheduler: Scheduler.Scheduler<TestWaiter>, picks: number) => {
  const served: Array<TestWaiter> = []
  for (let i = 0; i < picks; i++) {
    const next = scheduler.next()
    if (next === undefined) break
    served.push(next)
  }
  return served
}

describe("Scheduler", () => {
  it("fifo serves in arrival order, whatever the tenant", () => {
    const scheduler = Scheduler.make<TestWaiter>({
      mode: "fifo",
      priorityWeights: { high: 4, normal: 2, low: 1 },
      tenantWeight: () => 1,
      tenantMaxInUse: Infinity
    })
    const waiters = ["a", "a", "b", "a", "c"].map((tenant) => waiter(tenant))
    for (const w of waiters) scheduler.push(w)
    assert.deepStrictEqual(drain(scheduler, 10), waiters)
  })

  it("serves tenants in proportion to their weights, first come first served within each", () => {
    const weights: Record<string, number> = { a: 1, b: 2, c: 3 }
    const scheduler = fair({ tenantWeight: (tenant) => weights[tenant] })
    const byTenant: Record<string, Array<TestWaiter>> = { a: [], b: [], c: [] }
    for (let i = 0; i < 40; i++) {
      for (const tenant of ["a", "b", "c"]) {
        const w = waiter(tenant)
        byTenant[tenant].push(w)
        scheduler.push(w)
      }
    }
    const served = drain(scheduler, 60)
    const count = (tenant: string) => served.filter((w) => w.request.tenant === tenant).length
    assert.deepStrictEqual([count("a"), count("b"), count("c")], [10, 20, 30])
    for (const tenant of ["a", "b", "c"]) {
      const order = served.filter((w) => w.request.tenant === tenant)
      assert.deepStrictEqual(order, byTenant[tenant].slice(0, order.length))
    }
  })

  it("a noisy tenant's backlog does not delay a quiet tenant by more than a turn", () => {
    const scheduler = fair()
    for (let i = 0; i < 100; i++) scheduler.push(waiter("noisy"))
    drain(scheduler, 3)
    const quiet = waiter("quiet")
    scheduler.push(quiet)
    const served = drain(scheduler, 2)
    assert.include(served, quiet)
  })

  it("priority classes take turns by weight, and the lowest is never starved", () => {
    const scheduler = fair()
    for (let i = 0; i < 100; i++) {
      scheduler.push(waiter(`h${i % 3}`, "high"))
      scheduler.push(waiter(`l${i % 3}`, "low"))
    }
    const served = drain(scheduler, 50)
    assert.strictEqual(served.filter((w) => w.request.priority === "high").length, 40)
    assert.strictEqual(served.filter((w) => w.request.priority === "low").length, 10)
  })

  it("passes over a tenant at its in-use limit until it gives a connection back", () => {
    const scheduler = fair({ tenantMaxInUse: 2 })
    scheduler.acquired("a")
    scheduler.acquired("a")
    const a = waiter("a")
    const b = waiter("b")
    scheduler.push(a)
    scheduler.push(b)
    assert.isFalse(scheduler.mayTake("a"))
    assert.strictEqual(scheduler.next(), b)
    assert.isUndefined(scheduler.next())
    scheduler.released("a")
    assert.isTrue(scheduler.mayTake("a"))
    assert.strictEqual(scheduler.next(), a)
  })

  it("gives spare shared capacity only to shares, and only when nobody waits for a connection alone", () => {
    const scheduler = fair()
    const tenant = waiter("t")
    const shared = waiter("", "normal", true)
    scheduler.push(tenant)
    scheduler.push(shared)
    assert.isUndefined(scheduler.nextShare())
    scheduler.remove(tenant)
    assert.strictEqual(scheduler.nextShare(), shared)
  })

  it("keeps no state for tenants that have stopped waiting", () => {
    const scheduler = fair({ tenantMaxInUse: 5 })
    const waiters = Array.from({ length: 10_000 }, (_, i) => waiter(`tenant-${i}`))
    for (const w of waiters) scheduler.push(w)
    assert.strictEqual(scheduler.lanes(), 10_000)
    for (const w of waiters.slice(0, 5_000)) scheduler.remove(w)
    drain(scheduler, 5_000)
    assert.strictEqual(scheduler.lanes(), 0)
    assert.strictEqual(scheduler.size(), 0)
  })

  it("a tenant's next waiter waits one round, however many new tenants keep arriving", () => {
    // Saturation with many tenants: one new tenant arrives per connection served, as when each caller
    // picks a tenant at random. New tenants join at the end of the current round, so they cannot keep
    // the round from coming back to a tenant that is still waiting.
    const scheduler = fair()
    const ahead = Array.from({ length: 10 }, (_, i) => waiter(`t${i}`))
    for (const w of ahead) scheduler.push(w)
    const second = waiter("t0")
    scheduler.push(second)
    let servedAt = -1
    for (let pick = 0; pick < 1_000 && servedAt < 0; pick++) {
      scheduler.push(waiter(`new${pick}`))
      if (scheduler.next() === second) servedAt = pick
    }
    // Its first waiter goes first; then the ten tenants of that round and the ones that came meanwhile
    // (as many as were served) at most once each.
    assert.isAtLeast(servedAt, 0, "the tenant's second waiter was never served")
    assert.isAtMost(servedAt, 2 * ahead.length + 1)
  })

  it("serves every waiter within a bound, whatever the arrivals (property)", () => {
    const arrival = fc.record({
      tenant: fc.constantFrom("a", "b", "c", "d", "e"),
      priority: fc.constantFrom<Scheduler.Priority>("high", "normal", "low"),
      picksBefore: fc.nat(3)
    })
    const weights: Record<string, number> = { a: 1, b: 2, c: 3, d: 1, e: 5 }
    fc.assert(
      fc.property(fc.array(arrival, { minLength: 1, maxLength: 300 }), (arrivals) => {
        const scheduler = fair({ tenantWeight: (tenant) => weights[tenant] })
        const arrivedAt = new Map<TestWaiter, number>()
        const queuedAhead = new Map<TestWaiter, number>()
        let picks = 0
        let violations = 0
        // A full round of the lowest class takes at most 7 class turns x 12 tenant weight picks;
        // a waiter needs at most one round per waiter ahead of it in its tenant, plus one.
        const bound = (w: TestWaiter) => (queuedAhead.get(w)! + 2) * 7 * 12
        const pick = () => {
          const served = scheduler.next()
          if (served === undefined) return
          picks++
          if (picks - arrivedAt.get(served)! > bound(served)) violations++
        }
        for (const a of arrivals) {
          for (let i = 0; i < a.picksBefore; i++) pick()
          const w = waiter(a.tenant, a.priority)
          queuedAhead.set(w, scheduler.queued(a.tenant))
          arrivedAt.set(w, picks)
          scheduler.push(w)
        }
        while (scheduler.size() > 0) pick()
        return violations === 0 && picks === arrivals.length
      }),
      { seed: 20261127, numRuns: 300 }
    )
  })
})
