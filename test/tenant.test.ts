/**
 * The tenant reference: scoping, inheritance, nesting and the escape hatch.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as SqlClient from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import * as PoolError from "../src/PoolError.ts"
import * as Tenant from "../src/Tenant.ts"
import { PoolTest } from "../src/testing/index.ts"

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

describe("tenant values the pool refuses, before any connection is taken", () => {
  const poolErrorOf = (error: SqlError) => PoolError.fromSqlError(error)

  it.effect("a tenant id that is not well-formed Unicode, not a string, or a scope that is not one", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const attempts: ReadonlyArray<readonly [string, Tenant.Scope]> = [
        ["a lone high surrogate", { _tag: "Tenant", id: "tenant-\uD800" }],
        ["a lone low surrogate", { _tag: "Tenant", id: "\uDC00tenant" }],
        ["a number", { _tag: "Tenant", id: 42 as unknown as string }],
        ["an object whose toString throws", {
          _tag: "Tenant",
          id: { toString: () => { throw new Error("boom") } } as unknown as string
        }],
        ["null", null as unknown as Tenant.Scope],
        ["an unknown tag", { _tag: "Everyone" } as unknown as Tenant.Scope],
        ["an unscoped scope without a reason", { _tag: "Unscoped" } as unknown as Tenant.Scope]
      ]
      for (const [what, value] of attempts) {
        const error = yield* Effect.flip(Effect.provideService(sql`SELECT 1`, Tenant.CurrentTenant, value))
        assert.instanceOf(poolErrorOf(error), PoolError.InvalidTenantError, what)
      }
      // Well-formed ids with surrogate pairs are fine.
      yield* Tenant.with("tenant-\uD83D\uDE00")(sql`SELECT 1`)
      yield* PoolTest.assertRan("SELECT 1", { tenant: "tenant-\uD83D\uDE00", times: 1 })
    }).pipe(Effect.provide(PoolTest.layer({ unmatched: "empty" }))))

  it.effect("with hashed tenant telemetry, error messages (and so span exception events) name no tenant id", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const id = "acme-secret-tenant"
      const mismatch = yield* Effect.flip(Tenant.with(id)(sql.withTransaction(Tenant.with("other-tenant")(sql`SELECT 1`))))
      assert.instanceOf(poolErrorOf(mismatch), PoolError.TenantMismatchError)
      const invalid = yield* Effect.flip(Tenant.with(`${id}\u0000`)(sql`SELECT 1`))
      assert.instanceOf(poolErrorOf(invalid), PoolError.InvalidTenantError)
      for (const error of [mismatch, invalid]) {
        assert.notInclude(`${error.message} ${poolErrorOf(error)!.message} ${JSON.stringify(poolErrorOf(error))}`, id)
        assert.match(poolErrorOf(error)!.message, /#[0-9a-f]{16}/)
      }
    }).pipe(Effect.provide(PoolTest.layer({ unmatched: "empty", pool: { tenantTelemetry: "hashed" } }))))

  it.effect("with plain tenant telemetry the id is shown, quoted", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const mismatch = yield* Effect.flip(Tenant.with("acme")(sql.withTransaction(Tenant.with("other")(sql`SELECT 1`))))
      assert.include(poolErrorOf(mismatch)!.message, "\"acme\"")
    }).pipe(Effect.provide(PoolTest.layer({ unmatched: "empty", pool: { tenantTelemetry: "plain" } }))))
})
