/**
 * The pool's layer as `@effect/sql-pg`'s `PgClient`: the service under its
 * own tag, `json`, `config`, `notify`, and `listen` on one dedicated
 * connection, against a real PostgreSQL server.
 */
import { assert, describe, it } from "@effect/vitest"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as PgTypes from "@effect/sql-pg/PgTypes"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Queue from "effect/Queue"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import { SqlError } from "effect/sql/SqlError"
import * as Pool from "../src/Pool.ts"
import * as Retry from "../src/Retry.ts"
import * as Tenant from "../src/Tenant.ts"
import { admin, backends, behindPooler, databaseUrl, eventually, loginOf, poolLayer, uniqueName } from "./support/pg.ts"

const direct = behindPooler() === "none"

describe("Pool as PgClient", () => {
  it.live("provides PgClient under @effect/sql-pg's own tag, the same client as SqlClient, with its config", () =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      const sql = yield* SqlClient.SqlClient
      assert.strictEqual(pg, sql)
      assert.strictEqual(pg[PgClient.TypeId], PgClient.TypeId)
      const [row] = yield* pg<{ n: number }>`SELECT ${41}::int + 1 AS n`
      assert.strictEqual(row.n, 42)
      assert.strictEqual((pg.config as { maxConnections?: number }).maxConnections, 3)
      assert.strictEqual(pg.config.applicationName, "pgclient-config")
      // The password is there for a program that connects by itself, but never as plain text.
      assert.isTrue(Redacted.isRedacted(pg.config.password))
      assert.notInclude(JSON.stringify(pg.config), loginOf(databaseUrl()).password)
    }).pipe(Effect.provide(poolLayer({ max: 3, applicationName: "pgclient-config" }))))

  it.live("binds sql.json as jsonb, in and out", () =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      const value = { job: "n:1", tags: ["a", "b"], nested: { ok: true, n: 3 } }
      const [row] = yield* pg<{ doc: unknown; kind: string }>`
        SELECT ${pg.json(value)} AS doc, pg_typeof(${pg.json(value)})::text AS kind`
      assert.deepStrictEqual(row.doc, value)
      assert.strictEqual(row.kind, "jsonb")
    }).pipe(Effect.provide(poolLayer())))

  it.live("refuses a channel name PostgreSQL would truncate, for listen and notify", () =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      const long = "c".repeat(64)
      const listened = yield* Effect.exit(Effect.scoped(pg.listen(long)))
      const notified = yield* Effect.exit(pg.notify(long, "x"))
      for (const exit of [listened, notified] as ReadonlyArray<Exit.Exit<unknown, SqlError>>) {
        assert.isTrue(Exit.isFailure(exit))
        const error = Exit.findErrorOption(exit)
        assert.isTrue(error._tag === "Some" && error.value instanceof SqlError && /63 UTF-8 bytes/.test(error.value.message))
      }
    }).pipe(Effect.provide(poolLayer())))

  it.live.skipIf(direct)("refuses listen behind a transaction-mode pooler, where no session would keep it", () =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      const exit = yield* Effect.exit(Effect.scoped(pg.listen("jobs")))
      const error = Exit.findErrorOption(exit)
      assert.isTrue(error._tag === "Some" && error.value instanceof SqlError && /LISTEN/.test(error.value.message))
    }).pipe(Effect.provide(poolLayer())))

  it.live.skipIf(!direct)("delivers notifications to every subscriber of a channel, on one connection beyond max", () => {
    const app = uniqueName("listen")
    const jobs = uniqueName("jobs")
    const runs = uniqueName("runs")
    return Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      const side = yield* admin
      const before = yield* backends(side, app)
      const scope = yield* Scope.make()
      const first = yield* Scope.provide(pg.listen(jobs), scope)
      const second = yield* Scope.provide(pg.listen(jobs), scope)
      const other = yield* Scope.provide(pg.listen(runs), scope)
      // Three subscriptions, two channels: one connection more than the pool's own.
      assert.strictEqual(yield* backends(side, app), before + 1)

      yield* pg.notify(jobs, "job 1")
      // A notification sent inside a tenant's transaction arrives when it commits.
      yield* Tenant.with(pg.withTransaction(pg.notify(runs, "run 7")), "tenant-a")
      const a = yield* Queue.take(first)
      const b = yield* Queue.take(second)
      const c = yield* Queue.take(other)
      assert.deepStrictEqual([a.channel, a.payload], [jobs, "job 1"])
      assert.deepStrictEqual([b.channel, b.payload], [jobs, "job 1"])
      assert.deepStrictEqual([c.channel, c.payload], [runs, "run 7"])
      // Nothing from the other channel reached the first queue.
      assert.strictEqual(yield* Queue.size(first), 0)

      yield* Scope.close(scope, Exit.void)
      assert.isTrue(yield* eventually(Effect.map(backends(side, app), (n) => n === before)), "the listening connection closes with its last subscriber")
    }).pipe(Effect.provide(poolLayer({ applicationName: app, min: 1, max: 1 })))
  })

  it.live.skipIf(!direct)("fails the queues of a lost connection with the loss's SqlError, and listens again on a new one", () => {
    const app = uniqueName("listen_lost")
    const channel = uniqueName("jobs")
    return Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      const side = yield* admin
      const lost = yield* Effect.scoped(Effect.gen(function*() {
        const queue = yield* pg.listen(channel)
        // The listener's backend, and the pool's idle one from its start-up check.
        yield* side.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", [app])
        return yield* Effect.exit(Queue.take(queue))
      }))
      const error = Exit.findErrorOption(lost)
      assert.isTrue(error._tag === "Some" && error.value instanceof SqlError, `got ${String(lost)}`)

      const payload = yield* Effect.scoped(Effect.gen(function*() {
        const queue = yield* pg.listen(channel)
        // A lone statement may meet the pool's killed connection first: it is retried, as Retry.idempotent does.
        yield* Retry.idempotent(pg.notify(channel, "after the loss"))
        return (yield* Queue.take(queue)).payload
      }))
      assert.strictEqual(payload, "after the loss")
    }).pipe(Effect.provide(poolLayer({ applicationName: app, min: 0, max: 2 })))
  })

  it.live("takes PgClient's options: startup parameters reach every session, custom type parsers read the rows", () => {
    const types = PgTypes.makeRegistry()
    types.register(PgTypes.OID.bool, {
      encode: (value: string) => Result.succeed(Uint8Array.of(value === "yes" ? 1 : 0)),
      decode: (bytes) => Result.succeed(bytes[0] === 1 ? "yes" : "no")
    })
    return Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      // A lone statement (on a shared connection), and one in a tenant's transaction.
      const [lone] = yield* pg<{ timeout: string; flag: string }>`SELECT current_setting('statement_timeout') AS timeout, true AS flag`
      const [inTransaction] = yield* Tenant.with(
        pg.withTransaction(pg<{ timeout: string; flag: string }>`SELECT current_setting('statement_timeout') AS timeout, false AS flag`),
        "tenant-a"
      )
      // PgBouncer refuses startup parameters it does not know (ignore_startup_parameters): directly only.
      const timeout = direct ? "1234ms" : "0"
      assert.deepStrictEqual(lone, { timeout, flag: "yes" })
      assert.deepStrictEqual(inTransaction, { timeout, flag: "no" })
    }).pipe(Effect.provide(poolLayer({
      maxConnections: 2,
      ...(direct ? { startupParameters: { statement_timeout: "1234" } } : {}),
      types
    })))
  })

  it.live.skipIf(!direct)("starts without a password, and fails typed, naming it, when the server asks for one", () =>
    Effect.gen(function*() {
      const url = new URL(databaseUrl())
      url.password = ""
      const exit = yield* Effect.exit(Layer.build(Pool.layer({ url: url.toString(), initializationTimeout: 500 })).pipe(Effect.scoped))
      const error = Exit.findErrorOption(exit)
      assert.isTrue(error._tag === "Some" && error.value._tag === "DatabaseUnavailableError", `got ${String(exit)}`)
      const message = error._tag === "Some" ? error.value.message : ""
      assert.match(message, /password/i)
    }))
})
