/**
 * `behindPooler: "transaction"` without a server: what the pool refuses to
 * send, what it lets through, its defaults, and how it reads a pooler's
 * refusals. The same behaviour through a real PgBouncer is in
 * test/pgbouncer.pg.test.ts.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as SqlClient from "effect/sql/SqlClient"
import { SqlError, UnknownError } from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import * as SqlText from "../src/internal/postgres/sqlText.ts"
import { isFatalConnectError, isOutOfSlots } from "../src/internal/postgres/sqlState.ts"
import * as PoolConfig from "../src/PoolConfig.ts"
import * as PoolError from "../src/PoolError.ts"
import * as Tenant from "../src/Tenant.ts"
import { PoolTest } from "../src/testing/index.ts"

const tenant = "7b1d0c3e-0000-4000-8000-000000000001"

/** Statements that would leave state on a pooler's server connection. */
const refused = [
  "SET search_path = tenant_a",
  "set session authorization other",
  "SET ROLE app_admin",
  "RESET app.project_id",
  "SELECT set_config('app.project_id', $1, false)",
  "SELECT set_config('app.project_id', $1, $2)",
  "SELECT pg_advisory_lock(42)",
  "SELECT pg_try_advisory_lock_shared(1)",
  "LISTEN jobs",
  "PREPARE claim AS SELECT 1",
  "DEALLOCATE ALL",
  "CREATE TEMP TABLE scratch (id int)",
  "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
  "DISCARD ALL",
  "LOAD 'auto_explain'"
]

/** Statements that only touch the transaction, or nothing. */
const allowed = [
  "SELECT * FROM workflow_runs WHERE id = $1",
  "SET LOCAL statement_timeout = '5s'",
  "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
  "SET CONSTRAINTS ALL DEFERRED",
  "SELECT set_config('app.trace', $1, true)",
  "SELECT pg_advisory_xact_lock(42)",
  "INSERT INTO settings (name) VALUES ('reset')"
]

const reasonOf = (error: SqlError) => PoolError.fromSqlError(error)

describe("behindPooler: transaction", () => {
  it("recognizes what leaves session state, and what does not", () => {
    for (const sql of refused) assert.isDefined(SqlText.read(sql).sessionState, sql)
    for (const sql of allowed) assert.isUndefined(SqlText.read(sql).sessionState, sql)
  })

  it.effect("refuses session state before it is sent, on every path, with SessionStateNotAllowedError", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const attempts: ReadonlyArray<Effect.Effect<unknown, SqlError>> = [
        sql`SET search_path = tenant_a`,
        Tenant.with(sql`SELECT set_config('app.project_id', ${tenant}, false)`, tenant),
        Tenant.with(sql.withTransaction(sql`SELECT pg_advisory_lock(1)`), tenant),
        sql.unsafe("LISTEN jobs").values,
        Stream.runCollect(sql`DECLARE c CURSOR WITH HOLD FOR SELECT 1`.stream)
      ]
      for (const attempt of attempts) {
        const error = yield* Effect.flip(attempt)
        const cause = reasonOf(error)
        assert.instanceOf(cause, PoolError.SessionStateNotAllowedError)
        assert.strictEqual(error.reason._tag, "AuthorizationError")
      }
      for (const text of ["search_path", "set_config", "advisory_lock", "LISTEN", "WITH HOLD"]) {
        yield* PoolTest.assertNotRan(text)
      }
      // The transaction-local forms go through, inside the tenant's transaction.
      yield* Tenant.with(sql.withTransaction(Effect.andThen(
        sql`SET LOCAL statement_timeout = '5s'`,
        sql`SELECT pg_advisory_xact_lock(1)`
      )), tenant)
      yield* PoolTest.assertRan("pg_advisory_xact_lock", { tenant })
    }).pipe(Effect.provide(PoolTest.layer({ unmatched: "empty", pool: { behindPooler: "transaction" } }))))

  it.effect("without it, the same statements are sent (and the session check cleans up after them)", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`SET search_path = tenant_a`
      yield* PoolTest.assertRan("search_path")
    }).pipe(Effect.provide(PoolTest.layer({ unmatched: "empty" }))))

  it.effect("turns named prepared statements off unless asked for; the option is checked", () =>
    Effect.gen(function*() {
      const url = "postgres://u:p@h/d"
      assert.isFalse((yield* PoolConfig.resolve({ url, behindPooler: "transaction" })).prepare)
      assert.isTrue((yield* PoolConfig.resolve({ url, behindPooler: "transaction", prepare: true })).prepare)
      assert.isTrue((yield* PoolConfig.resolve({ url })).prepare)
      const error = yield* Effect.flip(PoolConfig.resolve({ url, behindPooler: "session" as "none" }))
      assert.strictEqual(error.field, "behindPooler")
    }))
})

describe("a pooler's refusals", () => {
  const pgbouncer = (message: string) =>
    new SqlError({
      reason: new UnknownError({
        cause: Object.assign(new Error(message), { code: "08P01" }),
        message: "PgConnection: Failed to connect",
        operation: "connect"
      })
    })

  it("no more connections: out of slots, to wait for, not to fail callers over", () => {
    const full = pgbouncer("no more connections allowed (max_client_conn)")
    assert.isTrue(isOutOfSlots(full))
    assert.isFalse(isFatalConnectError(full))
  })

  it("bad credentials or an unknown database: fatal at once, as from PostgreSQL itself", () => {
    for (const message of ["SASL authentication failed", "no such user", "database \"x\" does not exist"]) {
      assert.isTrue(isFatalConnectError(pgbouncer(message)), message)
      assert.isFalse(isOutOfSlots(pgbouncer(message)), message)
    }
  })

  it("a login that keeps failing upstream, or a wait timeout: transient", () => {
    for (const message of ["server login has been failing, try again later (server_login_retry)", "query_wait_timeout"]) {
      assert.isFalse(isFatalConnectError(pgbouncer(message)), message)
      assert.isFalse(isOutOfSlots(pgbouncer(message)), message)
    }
  })
})
