/**
 * Tenant isolation through the pool, on MeshHook's schema under a non-owner
 * role with FORCE ROW LEVEL SECURITY.
 */
import { assert, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import * as SqlClient from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import * as Pool from "../src/Pool.ts"
import * as PoolError from "../src/PoolError.ts"
import * as Tenant from "../src/Tenant.ts"
import { MeshHookDb, workerPool } from "./support/meshhook.ts"
import { admin, behindPooler, eventually, sqlStateOfExit } from "./support/pg.ts"

const runsPerTenant = 4

/** The pool error behind a failed statement, if it failed for want of a connection or a tenant. */
const poolErrorOf = <A>(exit: Exit.Exit<A, SqlError>) => {
  const error = Exit.findErrorOption(exit)
  return error._tag === "Some" ? PoolError.fromSqlError(error.value) : undefined
}

/**
 * Runs `effect` while the pool's only connection is held elsewhere, so that a
 * statement that asked for a connection would wait for it and time out.
 */
const withOnlyConnectionHeld = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const pool = yield* Pool.Pool
    const holder = yield* Effect.forkChild(
      Tenant.unscoped("hold")(Effect.scoped(Effect.andThen(sql.reserve, Effect.never)))
    )
    yield* eventually(Effect.map(pool.stats, (s) => s.used === 1))
    return yield* Effect.ensuring(effect, Fiber.interrupt(holder))
  })

/** What the previous lessee left on the session, seen from the next statement on the same connection. */
const sessionProbe = (sql: SqlClient.SqlClient) =>
  Effect.map(
    sql<{ pid: number; tenant: string; role: string; listens: number; locks: number; prepared: number; temps: number }>`
      SELECT pg_backend_pid() AS pid,
             coalesce(current_setting('app.project_id', true), '') AS tenant,
             current_user::text AS role,
             (SELECT count(*)::int FROM pg_listening_channels()) AS listens,
             (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks,
             (SELECT count(*)::int FROM pg_prepared_statements WHERE from_sql) AS prepared,
             (SELECT count(*)::int FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temps`,
    ([row]) => row
  )

layer(MeshHookDb.layer({ tenants: 6, runsPerTenant }), { excludeTestServices: true })("tenant isolation", (it) => {
  it.effect("set-up: a second role the worker may switch to", () =>
    Effect.gen(function*() {
      const side = yield* admin
      yield* side.query(`DO $$ BEGIN CREATE ROLE mh_observer NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$`)
      yield* side.query("GRANT mh_observer TO mh_worker")
    }))

  it.effect("a statement under a tenant sees that tenant's rows only", () =>
    Effect.gen(function*() {
      const db = yield* MeshHookDb
      const sql = yield* SqlClient.SqlClient
      for (const project of db.projects.slice(0, 3)) {
        const rows = yield* Tenant.with(project)(sql<{ project_id: string }>`SELECT project_id::text FROM workflow_runs`)
        assert.strictEqual(rows.length, runsPerTenant)
        assert.isTrue(rows.every((row) => row.project_id === project))
      }
    }).pipe(Effect.provide(workerPool())))

  it.effect("a transaction under a tenant writes as that tenant, and no other tenant can see or forge it", () =>
    Effect.gen(function*() {
      const db = yield* MeshHookDb
      const sql = yield* SqlClient.SqlClient
      const [a, b] = db.projects
      const [run] = yield* Tenant.with(a)(sql<{ id: string }>`SELECT id::text FROM workflow_runs LIMIT 1`)
      yield* Tenant.with(a)(sql.withTransaction(
        sql`INSERT INTO workflow_events (project_id, run_id, type, payload)
            VALUES (${a}, ${run.id}, 'step_started', '{}')`
      ))
      const own = yield* Tenant.with(a)(sql`SELECT 1 FROM workflow_events WHERE run_id = ${run.id} AND type = 'step_started'`)
      const other = yield* Tenant.with(b)(sql`SELECT 1 FROM workflow_events WHERE run_id = ${run.id}`)
      assert.strictEqual(own.length, 1)
      assert.strictEqual(other.length, 0)
      // Tenant b cannot write a row for tenant a: the policy's WITH CHECK refuses it.
      const forged = yield* Effect.exit(Tenant.with(b)(
        sql`INSERT INTO workflow_events (project_id, run_id, type, payload) VALUES (${a}, ${run.id}, 'forged', '{}')`
      ))
      assert.strictEqual(sqlStateOfExit(forged), "42501", "new row violates row-level security policy")
      const forgedRows = yield* Tenant.with(a)(sql`SELECT 1 FROM workflow_events WHERE type = 'forged'`)
      assert.strictEqual(forgedRows.length, 0)
    }).pipe(Effect.provide(workerPool())))

  it.effect("forked fibers and streams keep the tenant", () =>
    Effect.gen(function*() {
      const db = yield* MeshHookDb
      const sql = yield* SqlClient.SqlClient
      const project = db.projects[2]
      const fiber = yield* Tenant.with(project)(
        Effect.forkChild(sql<{ project_id: string }>`SELECT project_id::text FROM workflow_runs`)
      )
      const forked = yield* Fiber.join(fiber)
      assert.strictEqual(forked.length, runsPerTenant)
      assert.isTrue(forked.every((row) => row.project_id === project))
      const streamed = yield* Tenant.with(project)(
        Stream.runCollect(sql<{ project_id: string }>`SELECT project_id::text FROM workflow_events`.stream)
      )
      assert.strictEqual(streamed.length, runsPerTenant)
      assert.isTrue(streamed.every((row) => row.project_id === project))
    }).pipe(Effect.provide(workerPool())))

  it.effect("without a tenant, tenant tables show no rows (fail-closed), and the job queue is reachable unscoped", () =>
    Effect.gen(function*() {
      const db = yield* MeshHookDb
      const sql = yield* SqlClient.SqlClient
      assert.strictEqual((yield* sql`SELECT 1 FROM workflow_runs`).length, 0)
      const claimed = yield* Tenant.unscoped("claim a job across projects")(sql<{ project_id: string }>`
        SELECT project_id::text FROM job_queue ORDER BY msg_id LIMIT 1 FOR UPDATE SKIP LOCKED`)
      assert.include(db.projects, claimed[0].project_id)
      assert.strictEqual((yield* Tenant.unscoped("audit")(sql`SELECT 1 FROM workflow_runs`)).length, 0)
    }).pipe(Effect.provide(workerPool())))

  it.effect("requireTenant refuses SQL without a tenant before it takes a connection", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const [refused, inTransaction] = yield* withOnlyConnectionHeld(Effect.all([
        Effect.exit(sql`SELECT 1 FROM job_queue`),
        Effect.exit(sql.withTransaction(sql`SELECT 1`))
      ]))
      assert.strictEqual(poolErrorOf(refused)?._tag, "TenantRequiredError")
      assert.strictEqual(poolErrorOf(inTransaction)?._tag, "TenantRequiredError")
    }).pipe(Effect.provide(workerPool({ requireTenant: true, max: 1, acquireTimeout: 2_000 }))))

  it.effect("invalid tenant ids are refused before any SQL, with InvalidTenantError", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const attempts = ["", "x".repeat(200), "a\nb", "tab\there", "'; DROP TABLE projects; --", "not-a-uuid"]
      const exits = yield* withOnlyConnectionHeld(
        Effect.forEach(attempts, (id) => Effect.exit(Tenant.with(id)(sql`SELECT 1 FROM workflow_runs`)))
      )
      exits.forEach((exit, i) => assert.strictEqual(poolErrorOf(exit)?._tag, "InvalidTenantError", JSON.stringify(attempts[i])))
    }).pipe(Effect.provide(workerPool({ tenantFormat: "uuid", max: 1, acquireTimeout: 2_000 }))))

  it.effect("an injection attempt in a tenant id is only ever a parameter", () =>
    Effect.gen(function*() {
      const db = yield* MeshHookDb
      const sql = yield* SqlClient.SqlClient
      const attack = `${db.projects[0]}', false); DROP TABLE projects; --`
      const exit = yield* Effect.exit(Tenant.with(attack)(sql`SELECT 1 FROM projects`))
      // The policy casts the setting to uuid: the statement fails, nothing runs.
      assert.strictEqual(sqlStateOfExit(exit), "22P02", "invalid input syntax for type uuid")
      const projects = yield* Tenant.with(db.projects[0])(sql`SELECT 1 FROM projects`)
      assert.strictEqual(projects.length, 1)
    }).pipe(Effect.provide(workerPool())))

  it.effect("a statement for another tenant inside a transaction fails with TenantMismatchError", () =>
    Effect.gen(function*() {
      const db = yield* MeshHookDb
      const sql = yield* SqlClient.SqlClient
      const [a, b] = db.projects
      const exit = yield* Effect.exit(Tenant.with(a)(sql.withTransaction(
        Effect.andThen(sql`SELECT 1 FROM workflow_runs`, Tenant.with(b)(sql`SELECT 1 FROM workflow_runs`))
      )))
      assert.strictEqual(poolErrorOf(exit)?._tag, "TenantMismatchError")
      const unscopedInside = yield* Effect.exit(Tenant.with(a)(sql.withTransaction(
        Tenant.unscoped("sneak")(sql`SELECT 1 FROM job_queue`)
      )))
      assert.strictEqual(poolErrorOf(unscopedInside)?._tag, "TenantMismatchError")
    }).pipe(Effect.provide(workerPool())))

  it.effect("plain tenant work leaves nothing behind and keeps its connection", () =>
    Effect.gen(function*() {
      const db = yield* MeshHookDb
      const sql = yield* SqlClient.SqlClient
      const first = yield* sessionProbe(sql)
      for (const project of db.projects) {
        yield* Tenant.with(project)(sql`SELECT count(*) FROM workflow_events`)
        yield* Tenant.with(project)(sql.withTransaction(sql`UPDATE workflow_runs SET updated_at = now() WHERE false`))
        yield* Effect.exit(Tenant.with(project)(sql.withTransaction(Effect.andThen(sql`SELECT 1`, Effect.fail("x")))))
        yield* Effect.exit(Tenant.with(project)(sql`SELECT 1/0`))
      }
      const after = yield* sessionProbe(sql)
      assert.deepStrictEqual(after, first)
      assert.strictEqual(after.tenant, "")
    }).pipe(Effect.provide(workerPool({ max: 1 }))))

  const sessionStateAttempts: ReadonlyArray<readonly [string, string]> = [
    ["a session-level set_config of the tenant", "SELECT set_config('app.project_id', $1, false)"],
    ["SET of a setting", "SET statement_timeout = 1234"],
    ["SET ROLE", "SET ROLE mh_observer"],
    ["LISTEN", "LISTEN some_channel"],
    ["SQL PREPARE", "PREPARE leftover AS SELECT 1"],
    ["a session advisory lock", "SELECT pg_advisory_lock(42)"],
    ["a temporary table", "CREATE TEMP TABLE leftover (x int)"]
  ]
  for (const [what, statement] of sessionStateAttempts) {
    it.effect(`no ${what} survives into the next checkout`, () =>
      Effect.gen(function*() {
        const db = yield* MeshHookDb
        const sql = yield* SqlClient.SqlClient
        const before = yield* sessionProbe(sql)
        const params = statement.includes("$1") ? [db.projects[0]] : []
        const attempt = yield* Effect.exit(Tenant.unscoped("test")(
          Effect.scoped(Effect.flatMap(sql.reserve, (conn) => conn.executeUnprepared(statement, params, undefined)))
        ))
        const after = yield* sessionProbe(sql)
        assert.deepStrictEqual({ ...after, pid: 0 }, { ...before, pid: 0 })
        if (behindPooler() === "transaction") {
          // Behind a pooler the next client could get the server connection: refused before it is sent.
          const error = Exit.isFailure(attempt) ? Cause.squash(attempt.cause) : undefined
          assert.instanceOf(PoolError.fromSqlError(error as SqlError), PoolError.SessionStateNotAllowedError)
        } else {
          assert.isTrue(Exit.isSuccess(attempt))
          // The session is reset in place; one holding SQL-prepared statements (which cannot be dropped
          // without their names) or that made a temporary schema (which stays) is closed instead.
          if (what === "SQL PREPARE" || what === "a temporary table") assert.notStrictEqual(after.pid, before.pid)
          else assert.strictEqual(after.pid, before.pid)
        }
      }).pipe(Effect.provide(workerPool({ max: 1 }))))
  }

  it.effect("a session-level tenant cannot leak into unscoped work", () =>
    Effect.gen(function*() {
      const db = yield* MeshHookDb
      const sql = yield* SqlClient.SqlClient
      yield* Effect.exit(Tenant.unscoped("attack")(sql`SELECT set_config('app.project_id', ${db.projects[0]}, false)`))
      const seen = yield* Tenant.unscoped("claim")(sql`SELECT 1 FROM workflow_runs`)
      assert.strictEqual(seen.length, 0)
    }).pipe(Effect.provide(workerPool({ max: 1 }))))
})
