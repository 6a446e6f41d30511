/**
 * The pool through `SqlClient`, against a real PostgreSQL server.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SqlClient from "effect/sql/SqlClient"
import * as Pool from "../src/Pool.ts"
import { admin, backends, behindPooler, eventually, poolLayer, sqlStateOfExit, uniqueName } from "./support/pg.ts"

describe("Pool through SqlClient", () => {
  it.live("runs queries with parameters", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const [row] = yield* sql<{ sum: number; greeting: string }>`
        SELECT ${20}::int + ${22}::int AS sum, ${"hello"}::text AS greeting`
      assert.deepStrictEqual(row, { sum: 42, greeting: "hello" })
      const injected = "'; DROP TABLE pg_class; --"
      const [echo] = yield* sql<{ text: string }>`SELECT ${injected}::text AS text`
      assert.strictEqual(echo.text, injected)
    }).pipe(Effect.provide(poolLayer())))

  // Behind a transaction-mode pooler a pipelineDepth above 1 is refused (test/config.pg.test.ts): PgBouncer may
  // switch server connections between pipelined transactions and misframe them.
  it.live.skipIf(behindPooler() !== "none")("pipelines concurrent statements on shared connections, each caller getting its own answer", () => {
    const app = uniqueName("pipelined")
    return Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const side = yield* admin
      const results = yield* Effect.all(
        Array.from({ length: 300 }, (_, i) =>
          Effect.exit(
            i % 7 === 3
              ? sql<{ n: number }>`SELECT ${i}::int / 0 AS n`
              : sql<{ n: number }>`SELECT ${i}::int AS n, pg_backend_pid() AS pid`
          )),
        { concurrency: "unbounded" }
      )
      results.forEach((exit, i) => {
        const got = Exit.isSuccess(exit) ? JSON.stringify(exit.value) : Cause.pretty(exit.cause)
        if (i % 7 === 3) assert.strictEqual(sqlStateOfExit(exit), "22012", `statement ${i} should fail: division by zero; got ${got}`)
        else assert.strictEqual(Exit.isSuccess(exit) ? exit.value[0].n : undefined, i, `statement ${i}; got ${got}`)
      })
      assert.isAtMost(yield* backends(side, app), 2)
    }).pipe(Effect.provide(poolLayer({ applicationName: app, max: 2, pipelineDepth: 16 })))
  })

  it.live("commits and rolls back transactions, nested ones as savepoints", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const table = uniqueName("tx")
      yield* sql`CREATE TABLE ${sql(table)} (n int)`
      const count = Effect.map(sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`, ([r]) => r.n)

      yield* sql.withTransaction(sql`INSERT INTO ${sql(table)} VALUES (1)`)
      assert.strictEqual(yield* count, 1)

      const failed = yield* Effect.exit(sql.withTransaction(
        Effect.andThen(sql`INSERT INTO ${sql(table)} VALUES (2)`, Effect.fail("boom"))
      ))
      assert.isTrue(Exit.isFailure(failed))
      assert.strictEqual(yield* count, 1)

      yield* sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO ${sql(table)} VALUES (3)`
        yield* Effect.exit(sql.withTransaction(
          Effect.andThen(sql`INSERT INTO ${sql(table)} VALUES (4)`, Effect.fail("inner"))
        ))
      }))
      const rows = yield* sql<{ n: number }>`SELECT n FROM ${sql(table)} ORDER BY n`
      assert.deepStrictEqual(rows.map((r) => r.n), [1, 3])
      yield* sql`DROP TABLE ${sql(table)}`
    }).pipe(Effect.provide(poolLayer())))

  it.live("streams rows", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const total = yield* sql<{ n: number }>`SELECT generate_series(1, 5000) AS n`.stream.pipe(
        Stream.runFold(() => 0, (sum, row) => sum + row.n)
      )
      assert.strictEqual(total, 5000 * 5001 / 2)
    }).pipe(Effect.provide(poolLayer({ max: 1 }))))

  it.live("interrupting a query cancels it on the server", () => {
    const app = uniqueName("cancel")
    return Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const side = yield* admin
      const sleeping = side.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
        [app]
      )
      const fiber = yield* Effect.forkChild(sql`SELECT pg_sleep(30)`)
      assert.isTrue(yield* eventually(Effect.map(sleeping, (r) => r.rows[0].n === 1)))
      yield* Fiber.interrupt(fiber)
      assert.isTrue(yield* eventually(Effect.map(sleeping, (r) => r.rows[0].n === 0), 2_000))
      const [row] = yield* sql<{ ok: number }>`SELECT 1 AS ok`
      assert.strictEqual(row.ok, 1)
    }).pipe(Effect.provide(poolLayer({ applicationName: app, max: 1 })))
  })

  it.live("an interrupted transaction is rolled back before its connection serves anyone else", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const table = uniqueName("rollback")
      yield* sql`CREATE TABLE ${sql(table)} (n int)`
      const fiber = yield* Effect.forkChild(sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO ${sql(table)} VALUES (1)`
        yield* sql`SELECT pg_sleep(30)`
      })))
      yield* Effect.sleep(200)
      yield* Fiber.interrupt(fiber)
      // One connection only: the next statement runs where the transaction ran.
      const [state] = yield* sql<{ xid: string | null; n: number }>`
        SELECT pg_current_xact_id_if_assigned()::text AS xid, (SELECT count(*)::int FROM ${sql(table)}) AS n`
      assert.strictEqual(state.xid, null)
      assert.strictEqual(state.n, 0)
      yield* sql`DROP TABLE ${sql(table)}`
    }).pipe(Effect.provide(poolLayer({ max: 1 }))))

  it.live("a lease that ends inside a transaction it opened itself is rolled back before it is lent again", () => {
    const app = uniqueName("dangling")
    return Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const pool = yield* Pool.Pool
      const table = uniqueName("dangling")
      yield* sql`CREATE TABLE ${sql(table)} (n int)`
      yield* Effect.scoped(Effect.flatMap(sql.reserve, (conn) =>
        Effect.andThen(conn.executeRaw("BEGIN", []), conn.executeRaw(`INSERT INTO ${table} VALUES (1)`, []))))
      const [after] = yield* sql<{ xid: string | null; n: number }>`
        SELECT pg_current_xact_id_if_assigned()::text AS xid, (SELECT count(*)::int FROM ${sql(table)}) AS n`
      assert.strictEqual(after.xid, null)
      assert.strictEqual(after.n, 0, "the open transaction's insert was rolled back")
      assert.strictEqual((yield* pool.stats).total, 1)
      yield* sql`DROP TABLE ${sql(table)}`
    }).pipe(Effect.provide(poolLayer({ applicationName: app, max: 1 })))
  })

  // Behind a pooler the server's backends are the pooler's: these two count ours (test/pgbouncer.pg.test.ts counts its).
  const direct = behindPooler() === "none"

  it.live.skipIf(!direct)("replaces backends killed with pg_terminate_backend", () => {
    const app = uniqueName("killed")
    return Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const pool = yield* Pool.Pool
      const side = yield* admin
      yield* Effect.all(Array.from({ length: 8 }, () => sql`SELECT pg_sleep(0.05)`), { concurrency: "unbounded" })
      assert.strictEqual(yield* backends(side, app), 4)
      const killed = yield* side.query(
        "SELECT pid, pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = $1",
        [app]
      )
      const pids = killed.rows.map((r) => r.pid as number)
      assert.strictEqual(pids.length, 4)
      // The pool notices the deaths by itself and refills `min` with new backends.
      const replaced = side.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND NOT (pid = ANY($2::int[]))",
        [app, pids]
      )
      assert.isTrue(yield* eventually(Effect.map(replaced, (r) => r.rows[0].n === 4)))
      const results = yield* Effect.all(
        Array.from({ length: 20 }, (_, i) => Effect.map(sql<{ i: number }>`SELECT ${i}::int AS i`, ([r]) => r.i)),
        { concurrency: "unbounded" }
      )
      assert.deepStrictEqual(results, Array.from({ length: 20 }, (_, i) => i))
      assert.strictEqual((yield* pool.stats).total, 4)
      const [fresh] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
      assert.notInclude(pids, fresh.pid)
    }).pipe(Effect.provide(poolLayer({ applicationName: app, min: 4, max: 4 })))
  })

  it.live("never opens more than max backends", () => {
    const app = uniqueName("bounded")
    return Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const side = yield* admin
      let peak = 0
      const watch = yield* Effect.forkChild(Effect.forever(
        Effect.andThen(
          Effect.tap(backends(side, app), (n) => Effect.sync(() => peak = Math.max(peak, n))),
          Effect.sleep(5)
        )
      ))
      yield* Effect.all(Array.from({ length: 60 }, () => sql`SELECT pg_sleep(0.02)`), { concurrency: "unbounded" })
      yield* Fiber.interrupt(watch)
      assert.isAtMost(peak, 5)
      assert.isAtLeast(peak, 2)
    }).pipe(Effect.provide(poolLayer({ applicationName: app, max: 5, maxConnecting: 5 })))
  })

  it.live.skipIf(!direct)("closing the layer's scope leaves no backend behind", () =>
    Effect.gen(function*() {
      const app = uniqueName("drain")
      const side = yield* admin
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(poolLayer({ applicationName: app, min: 3, max: 3 }), scope)
      const sql = Context.get(context, SqlClient.SqlClient)
      yield* Effect.all(Array.from({ length: 6 }, () => sql`SELECT pg_sleep(0.02)`), { concurrency: "unbounded" })
      assert.strictEqual(yield* backends(side, app), 3)
      yield* Scope.close(scope, Exit.void)
      assert.isTrue(yield* eventually(Effect.map(backends(side, app), (n) => n === 0), 2_000))
    }))
})
