/**
 * The tenant reference: scoping, inheritance, nesting and the escape hatch.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Tenant from "../src/Tenant.ts"

const scope = Effect.service(Tenant.CurrentTenant)

describe("Tenant", () => {
  it.effect("has no tenant unless told", () =>
    Effect.gen(function*() {
      assert.deepStrictEqual(yield* scope, { _tag: "None" })
      assert.isTrue(Option.isNone(yield* Tenant.current))
    }))

  it.effect("scopes an effect to a tenant, data-last and data-first", () =>
    Effect.gen(function*() {
      assert.deepStrictEqual(yield* Tenant.with("p1")(Tenant.current), Option.some("p1"))
      assert.deepStrictEqual(yield* Tenant.with(Tenant.current, "p2"), Option.some("p2"))
      assert.isTrue(Option.isNone(yield* Tenant.current))
    }))

  it.effect("is inherited by forked fibers, including ones that outlive the scope's code", () =>
    Effect.gen(function*() {
      const fiber = yield* Tenant.with("p1")(Effect.forkChild(Effect.andThen(Effect.yieldNow, Tenant.current)))
      assert.isTrue(Option.isNone(yield* Tenant.current))
      assert.deepStrictEqual(yield* Fiber.join(fiber), Option.some("p1"))
      const all = yield* Tenant.with("p2")(Effect.all([Tenant.current, Tenant.current], { concurrency: 2 }))
      assert.deepStrictEqual(all, [Option.some("p2"), Option.some("p2")])
    }))

  it.effect("nests: the innermost scope wins, and the outer one comes back after it", () =>
    Effect.gen(function*() {
      const seen = yield* Tenant.with("outer")(Effect.gen(function*() {
        const before = yield* Tenant.current
        const inner = yield* Tenant.with("inner")(Tenant.current)
        const unscoped = yield* Tenant.unscoped("claim")(scope)
        const after = yield* Tenant.current
        return { before, inner, unscoped, after }
      }))
      assert.deepStrictEqual(seen.before, Option.some("outer"))
      assert.deepStrictEqual(seen.inner, Option.some("inner"))
      assert.deepStrictEqual(seen.unscoped, { _tag: "Unscoped", reason: "claim" })
      assert.deepStrictEqual(seen.after, Option.some("outer"))
    }))

  it.effect("the escape hatch says why, and has no tenant id", () =>
    Effect.gen(function*() {
      const inside = yield* Tenant.unscoped("claim jobs across projects")(scope)
      assert.deepStrictEqual(inside, { _tag: "Unscoped", reason: "claim jobs across projects" })
      assert.isTrue(Option.isNone(yield* Tenant.unscoped("x")(Tenant.current)))
      assert.strictEqual(Tenant.describe(inside), "unscoped (claim jobs across projects)")
    }))

  it("compares scopes", () => {
    assert.isTrue(Tenant.sameScope({ _tag: "Tenant", id: "a" }, { _tag: "Tenant", id: "a" }))
    assert.isFalse(Tenant.sameScope({ _tag: "Tenant", id: "a" }, { _tag: "Tenant", id: "b" }))
    assert.isFalse(Tenant.sameScope({ _tag: "Tenant", id: "a" }, { _tag: "None" }))
    assert.isTrue(Tenant.sameScope({ _tag: "Unscoped", reason: "x" }, { _tag: "Unscoped", reason: "y" }))
  })
})
