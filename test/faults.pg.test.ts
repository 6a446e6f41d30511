/**
 * The fault suite: the pool under killed backends, a database restart, a
 * network blackhole, slow connects, interruptions and statement timeouts, and
 * leaked connections, each against a real server. Recovery times are printed
 * and checked against generous bounds only.
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import { assert, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import { SqlError } from "effect/sql/SqlError"
import * as Pool from "../src/Pool.ts"
import type * as PoolConfig from "../src/PoolConfig.ts"
import * as PoolError from "../src/PoolError.ts"
import * as Retry from "../src/Retry.ts"
import * as FaultProxy from "../src/testing/FaultProxy.ts"
import * as PgServer from "../src/testing/PgServer.ts"
import * as PgBouncer from "../src/testing/PgBouncer.ts"
import { admin, behindPooler, databaseUrl, eventually, serverUrl, sqlStateOfExit, uniqueName } from "./support/pg.ts"

/** The name of a failure, for the tally of what callers saw: the pool's error or the SQL reason. */
const failureName = (exit: Exit.Exit<unknown, unknown>): string => {
  const error = Exit.findErrorOption(exit)
  if (error._tag === "None") return Exit.hasInterrupts(exit) ? "interrupted" : "defect"
  if (!(error.value instanceof SqlError)) return "untyped"
  return PoolError.fromSqlError(error.value)?._tag ?? error.value.reason._tag
}

const tally = (names: ReadonlyArray<string>) =>
  names.reduce((counts, name) => ({ ...counts, [name]: (counts[name] ?? 0) + 1 }), {} as Record<string, number>)

/** Builds a pool for the duration of `use`, on its own scope; behind PgBouncer in the `pgbouncer` project. */
const withPool = <A, E>(
  options: PoolConfig.Options,
  use: (
    services: { readonly sql: SqlClient.SqlClient; readonly pool: Pool.Pool["Service"] }
  ) => Effect.Effect<A, E, Scope.Scope>
) =>
  Effect.scoped(Effect.gen(function*() {
    const context = yield* Layer.build(Pool.layer({ behindPooler: behindPooler(), ...options }))
    return yield* use({ sql: Context.get(context, SqlClient.SqlClient), pool: Context.get(context, Pool.Pool) })
  }))

/** Where a destructive test's pool connects, and how the test finds the server backends that serve it. */
interface Target {
  readonly url: Redacted.Redacted<string>
  /** The pids of the server backends serving the test's pool (named `applicationName`). */
  readonly backends: (side: PgConnection.PgConnection, applicationName: string) => Effect.Effect<ReadonlyArray<number>, unknown>
}

/**
 * The server at `url` itself, or in the `pgbouncer` project a PgBouncer of the test's own in front of it:
 * its server connections serve only this test, so that killing them or stopping the server behind it
 * disturbs no other test file, and they are found by PgBouncer's `SHOW SERVERS`.
 */
const target = (url: Redacted.Redacted<string>): Effect.Effect<Target, unknown, Scope.Scope> => {
  if (behindPooler() === "none") {
    return Effect.succeed({
      url,
      backends: (side, applicationName) =>
        Effect.map(
          side.query("SELECT pid FROM pg_stat_activity WHERE application_name = $1", [applicationName]),
          (result) => result.rows.map((row) => row.pid as number)
        )
    })
  }
  const server = new URL(Redacted.value(url))
  const user = decodeURIComponent(server.username)
  const password = decodeURIComponent(server.password)
  return Effect.map(
    // A query waits for a server connection at most 1 s, as docs/scaling.md advises (a few seconds), not 120.
    PgBouncer.make({ upstream: { host: server.hostname, port: Number(server.port), user, password }, queryWaitTimeout: "1 second" }),
    (bouncer) => ({
      url: bouncer.url({ user, password, database: server.pathname.slice(1) }),
      backends: () =>
        Effect.map(bouncer.admin("SHOW SERVERS"), (rows) => rows.map((row) => Number(row.remote_pid)).filter((pid) => pid > 0))
    })
  )
}

describe("faults", () => {
  it.live("backend-kill storm: acknowledged writes survive, nobody hangs, errors are typed, health returns", () => {
    const app = uniqueName("storm")
    const table = uniqueName("storm")
    return Effect.gen(function*() {
      const { backends, url } = yield* target(Redacted.make(serverUrl()))
      yield* withPool({ url, applicationName: app, min: 4, max: 4, acquireTimeout: 3_000 }, ({ pool, sql }) =>
        Effect.gen(function*() {
          const side = yield* PgConnection.make({ url: Redacted.make(serverUrl()) })
          yield* sql`CREATE TABLE ${sql(table)} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int)`
          const acknowledged: Array<string> = []
          const failures: Array<string> = []
          let running = true
          const writer = Effect.gen(function*() {
            while (running) {
              const exit = yield* Effect.exit(sql<{ id: string }>`INSERT INTO ${sql(table)} (v) VALUES (1) RETURNING id::text`)
              if (Exit.isSuccess(exit)) acknowledged.push(exit.value[0].id)
              else failures.push(failureName(exit))
            }
          })
          const writers = yield* Effect.forkChild(Effect.all(Array.from({ length: 16 }, () => writer), {
            concurrency: "unbounded",
            discard: true
          }))
          const killedPerRound: Array<number> = []
          for (let round = 0; round < 15; round++) {
            yield* Effect.sleep(200)
            const pids = yield* backends(side, app)
            const killed = yield* side.query(
              "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n FROM unnest($1::int[]) AS pid",
              [pids]
            )
            killedPerRound.push(killed.rows[0].n as number)
          }
          const kills = killedPerRound.reduce((sum, n) => sum + n, 0)
          const stormOver = Date.now()
          running = false
          const finished = yield* Effect.timeoutOption(Fiber.await(writers), 10_000)
          assert.isTrue(finished._tag === "Some", "every writer finished")
          const healthy = yield* eventually(
            Effect.map(Effect.exit(Effect.andThen(sql`SELECT 1`, pool.stats)), (exit) => Exit.isSuccess(exit) && exit.value.total === 4),
            5_000
          )
          const recoveryMillis = Date.now() - stormOver
          console.log(`kill storm: ${kills} backends killed, ${acknowledged.length} writes acknowledged, failures ${JSON.stringify(tally(failures))}, healthy again ${recoveryMillis} ms after`)
          assert.isTrue(healthy)
          // A backend killed in every round; directly, several (behind PgBouncer one or two server connections
          // serve all four pool connections).
          assert.isTrue(killedPerRound.every((n) => n > 0), killedPerRound.join())
          if (behindPooler() === "none") assert.isAbove(kills, 15)
          assert.isAbove(acknowledged.length, 100)
          const missing = yield* side.query(
            `SELECT count(*)::int AS n FROM unnest($1::bigint[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM ${table} t WHERE t.id = a.id)`,
            [acknowledged]
          )
          assert.strictEqual(missing.rows[0].n, 0, "every acknowledged write is in the database")
          assert.deepStrictEqual(failures.filter((name) => name === "untyped" || name === "defect"), [])
          yield* sql`DROP TABLE ${sql(table)}`
        }))
    })
  }, 60_000)

  it.live("database restart under load: typed errors while down (directly, from an open circuit), and the first requests after it is back succeed", () =>
    Effect.gen(function*() {
      const server = yield* PgServer.make()
      const { url } = yield* target(server.url())
      const direct = behindPooler() === "none"
      yield* withPool({
        url,
        min: 2,
        max: 4,
        acquireTimeout: 2_000,
        circuitProbeInterval: 200,
        connectTimeout: 1_000
      }, ({ pool, sql }) =>
        Effect.gen(function*() {
          const seen: Array<string> = []
          let running = true
          const loop = Effect.gen(function*() {
            while (running) {
              const exit = yield* Effect.exit(sql`SELECT 1`)
              seen.push(Exit.isSuccess(exit) ? "ok" : failureName(exit))
              if (Exit.isFailure(exit)) yield* Effect.sleep(20)
            }
          })
          const loops = yield* Effect.forkChild(Effect.all(Array.from({ length: 8 }, () => loop), {
            concurrency: "unbounded",
            discard: true
          }))
          yield* Effect.sleep(300)
          yield* server.stop
          const stopped = Date.now()
          let failFastMillis = NaN
          if (direct) {
            assert.isTrue(yield* eventually(Effect.map(pool.stats, (s) => s.circuit === "open"), 10_000), "the circuit opened")
            // While it is open, a caller fails at once instead of waiting out acquireTimeout.
            const started = Date.now()
            const fast = yield* Effect.exit(sql`SELECT 1`)
            failFastMillis = Date.now() - started
            assert.strictEqual(failureName(fast), "DatabaseUnavailableError")
            assert.isBelow(failFastMillis, 1_000)
          } else {
            // Behind PgBouncer the pool's connections to it stay up: callers get its refusals, which must keep
            // coming (nobody waits for the server to come back).
            const failed = seen.length
            yield* Effect.sleep(2_000)
            assert.isAbove(seen.slice(failed).filter((name) => name !== "ok").length, 8, JSON.stringify(tally(seen.slice(failed))))
          }
          const downFailures = seen.filter((name) => name !== "ok")
          yield* server.start
          const back = Date.now()
          const recovered = yield* eventually(Effect.map(Effect.exit(sql`SELECT 1`), Exit.isSuccess), 10_000)
          const recoveryMillis = Date.now() - back
          running = false
          yield* Fiber.join(loops)
          const where = direct ? `failing fast in ${failFastMillis} ms` : "behind PgBouncer"
          console.log(`restart: failures while down ${JSON.stringify(tally(downFailures))} (${Date.now() - stopped} ms, ${where}); first success ${recoveryMillis} ms after the server was back`)
          assert.isTrue(recovered)
          assert.isBelow(recoveryMillis, 5_000)
          assert.deepStrictEqual(downFailures.filter((name) => name === "untyped" || name === "defect"), [])
          if (direct) assert.isTrue(downFailures.includes("DatabaseUnavailableError"))
          assert.strictEqual((yield* pool.stats).circuit, "closed")
        }))
    }), 60_000)

  it.live("network blackhole: acquisitions fail in time with typed errors; recovery when traffic flows", () =>
    Effect.gen(function*() {
      const url = new URL(databaseUrl())
      const proxy = yield* FaultProxy.make({ host: url.hostname, port: Number(url.port) })
      yield* withPool({
        url: databaseUrl(),
        port: proxy.port,
        min: 2,
        max: 2,
        acquireTimeout: 1_000,
        connectTimeout: 500,
        queryTimeout: 1_000,
        validationThreshold: 100,
        validationTimeout: 300,
        circuitProbeInterval: 200
      }, ({ pool, sql }) =>
        Effect.gen(function*() {
          yield* sql`SELECT 1`
          yield* Effect.sleep(200)
          proxy.set({ blackhole: true })
          const started = Date.now()
          const exits = yield* Effect.all(Array.from({ length: 4 }, () => Effect.exit(sql`SELECT 1`)), {
            concurrency: "unbounded"
          })
          const tookMillis = Date.now() - started
          const names = exits.map(failureName)
          console.log(`blackhole: callers saw ${JSON.stringify(tally(names))} within ${tookMillis} ms`)
          assert.isTrue(
            names.every((name) => ["PoolTimeoutError", "DatabaseUnavailableError", "QueryTimeoutError"].includes(name)),
            names.join()
          )
          assert.isBelow(tookMillis, 4_000)
          proxy.set({ blackhole: false })
          const back = Date.now()
          assert.isTrue(yield* eventually(Effect.map(Effect.exit(sql`SELECT 1`), Exit.isSuccess), 10_000))
          console.log(`blackhole: first success ${Date.now() - back} ms after traffic flowed again`)
          assert.strictEqual((yield* pool.stats).circuit, "closed")
        }))
    }), 30_000)

  it.live("slow connects and a spike of 50 callers: far fewer connections than callers, nobody past the deadline", () =>
    Effect.gen(function*() {
      const url = new URL(databaseUrl())
      const proxy = yield* FaultProxy.make({ host: url.hostname, port: Number(url.port) })
      yield* withPool({ url: databaseUrl(), port: proxy.port, min: 0, max: 50, acquireTimeout: 5_000 }, ({ sql }) =>
        Effect.gen(function*() {
          proxy.set({ connectDelay: 150 })
          const opened = proxy.accepted()
          const exits = yield* Effect.all(
            Array.from({ length: 50 }, () => Effect.exit(sql`SELECT pg_sleep(0.002)`)),
            { concurrency: "unbounded" }
          )
          const connections = proxy.accepted() - opened
          console.log(`slow connect spike: 50 callers served with ${connections} new connections`)
          assert.isTrue(exits.every(Exit.isSuccess))
          assert.isAtMost(connections, 10)
        }))
    }), 30_000)

  it.live("interrupts and statement timeouts mid-query and mid-transaction leave no dirty connection", () =>
    withPool({ url: databaseUrl(), max: 1 }, ({ sql }) =>
      Effect.gen(function*() {
        const state = Effect.map(
          sql<{ xid: string | null; timeout: string }>`
            SELECT pg_current_xact_id_if_assigned()::text AS xid, current_setting('statement_timeout') AS timeout`,
          ([row]) => row
        )
        const clean = { xid: null, timeout: "0" }
        const timedOut = yield* Effect.exit(sql.withTransaction(Effect.gen(function*() {
          yield* sql`SET LOCAL statement_timeout = 50`
          yield* sql`SELECT pg_sleep(1)`
        })))
        assert.strictEqual(sqlStateOfExit(timedOut), "57014", "canceling statement due to statement timeout")
        assert.deepStrictEqual(yield* state, clean)
        const interruptedTx = yield* Effect.forkChild(sql.withTransaction(
          Effect.andThen(sql`SELECT txid_current()`, sql`SELECT pg_sleep(5)`)
        ))
        yield* Effect.sleep(100)
        yield* Fiber.interrupt(interruptedTx)
        assert.deepStrictEqual(yield* state, clean)
        yield* Effect.exit(Effect.timeout(sql`SELECT pg_sleep(5)`, 100))
        assert.deepStrictEqual(yield* state, clean)
        const sessionTimeout = yield* Effect.exit(Effect.scoped(Effect.flatMap(sql.reserve, (conn) =>
          Effect.andThen(conn.executeRaw("SET statement_timeout = 50", []), conn.executeRaw("SELECT pg_sleep(1)", [])))))
        // Directly the session's timeout cancels the statement; behind a pooler the session-level SET is refused.
        if (behindPooler() === "none") assert.strictEqual(sqlStateOfExit(sessionTimeout), "57014")
        else assert.strictEqual(failureName(sessionTimeout), "SessionStateNotAllowedError")
        assert.deepStrictEqual(yield* state, clean)
      })), 30_000)

  it.live("leak detection reports a connection held too long, once, and not a normal one", () => {
    const warnings: Array<string> = []
    const capture = Logger.layer([Logger.make((options) => void warnings.push(String(options.message)))])
    return withPool({ url: databaseUrl(), leakDetectionThreshold: 300, housekeepingInterval: 100 }, ({ sql }) =>
      Effect.gen(function*() {
        for (let i = 0; i < 20; i++) yield* sql`SELECT 1`
        yield* Effect.sleep(500)
        assert.deepStrictEqual(warnings.filter((w) => w.includes("held for")), [])
        yield* Effect.scoped(Effect.andThen(sql.reserve, Effect.sleep(800)))
        const leaks = warnings.filter((w) => w.includes("held for"))
        assert.strictEqual(leaks.length, 1)
        assert.include(leaks[0], "taken at")
      })).pipe(Effect.provide(capture))
  }, 30_000)

  it.live("a backend terminated while its transaction is idle: a typed, retryable failure, not a defect", () =>
    withPool({ url: databaseUrl(), max: 1 }, ({ sql }) =>
      Effect.gen(function*() {
        const side = yield* admin
        const exit = yield* Effect.exit(sql.withTransaction(Effect.gen(function*() {
          const [row] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
          yield* side.query("SELECT pg_terminate_backend($1)", [row.pid])
          // The server's FATAL error arrives while the transaction is idle, before the next statement.
          yield* Effect.sleep(200)
          yield* sql`SELECT 1`
        })))
        const failure = Exit.findErrorOption(exit)
        assert.strictEqual(failure._tag, "Some", `a failure, not a defect: ${String(Exit.isFailure(exit) ? exit.cause : "")}`)
        if (failure._tag === "Some") assert.isTrue(Retry.isTransient(failure.value), String(failure.value))
        // The ROLLBACK on the dead connection did not stick: the pool replaced it.
        assert.deepStrictEqual(yield* sql`SELECT 1 AS one`, [{ one: 1 }])
      })), 30_000)

  it.live("a backend killed while its connection sits idle costs the next transaction nothing: it runs on another, once", () => {
    const table = uniqueName("killed_idle")
    return withPool({ url: databaseUrl(), max: 1 }, ({ sql }) =>
      Effect.gen(function*() {
        // The server itself: through PgBouncer, the kill could run on the very server connection it kills.
        const side = yield* PgConnection.make({ url: Redacted.make(serverUrl()), applicationName: "meshhook-test-killer" })
        yield* sql`CREATE TABLE ${sql(table)} (n int)`
        for (let n = 1; n <= 10; n++) {
          const [row] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
          yield* side.query("SELECT pg_terminate_backend($1)", [row.pid])
          // At once: the pool has not heard of the loss yet, and the transaction's first cycle meets it.
          yield* sql.withTransaction(Effect.gen(function*() {
            yield* sql`INSERT INTO ${sql(table)} VALUES (${n})`
            yield* sql`SELECT 1`
          }))
        }
        const rows = yield* sql<{ n: number }>`SELECT n FROM ${sql(table)} ORDER BY n`
        assert.deepStrictEqual(rows.map((row) => row.n), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        yield* sql`DROP TABLE ${sql(table)}`
      }))
  }, 30_000)

  it.live("Retry.idempotent rides over a killed backend; Retry.transaction re-runs a serialization failure", () => {
    const table = uniqueName("retry")
    return withPool({ url: databaseUrl(), max: 2 }, ({ sql }) =>
      Effect.gen(function*() {
        const side = yield* admin
        yield* sql`CREATE TABLE ${sql(table)} (k int PRIMARY KEY, v int)`
        yield* sql`INSERT INTO ${sql(table)} VALUES (1, 0)`
        // A statement whose backend dies under it: retried on a fresh connection.
        let attempts = 0
        const result = yield* Retry.idempotent(Effect.gen(function*() {
          attempts++
          return yield* sql.withTransaction(Effect.gen(function*() {
            const [row] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
            if (attempts === 1) yield* side.query("SELECT pg_terminate_backend($1)", [row.pid])
            return yield* sql<{ v: number }>`SELECT v FROM ${sql(table)} WHERE k = 1`
          }))
        }))
        assert.strictEqual(attempts, 2)
        assert.deepStrictEqual(result, [{ v: 0 }])
        // Two serializable transactions that conflict: the loser is re-run and wins next time.
        const increment = Retry.transaction(sql.withTransaction(Effect.gen(function*() {
          const [row] = yield* sql<{ v: number }>`SELECT v FROM ${sql(table)} WHERE k = 1`
          yield* Effect.sleep(50)
          yield* sql`UPDATE ${sql(table)} SET v = ${row.v + 1} WHERE k = 1`
        })).pipe(Effect.provideService(SqlClient.BeginTransaction, "BEGIN ISOLATION LEVEL SERIALIZABLE")))
        yield* Effect.all([increment, increment], { concurrency: 2 })
        const [final] = yield* sql<{ v: number }>`SELECT v FROM ${sql(table)} WHERE k = 1`
        assert.strictEqual(final.v, 2)
        yield* sql`DROP TABLE ${sql(table)}`
      }))
  }, 30_000)
})

