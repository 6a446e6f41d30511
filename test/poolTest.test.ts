/**
 * The test kit's mock layer: scripted replies, recorded statements and
 * tenants, simulated failures with the real pool's error types, latency on
 * the TestClock, and assertions that explain themselves.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as SqlClient from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import { TestClock } from "effect/testing"
import * as PoolError from "../src/PoolError.ts"
import * as Tenant from "../src/Tenant.ts"
import { PoolTest } from "../src/testing/index.ts"

const tenantA = "2d7c6a1e-0000-4000-8000-00000000000a"
const tenantB = "2d7c6a1e-0000-4000-8000-00000000000b"

/** The defect an effect died with, or fails the test. */
const defectOf = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.map(Effect.exit(effect), (exit) => {
    assert.isTrue(Exit.isFailure(exit), "expected a defect")
    const defect = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
    return defect as Error
  })

const poolErrorOf = (error: SqlError) => PoolError.fromSqlError(error)?._tag

describe("PoolTest.layer", () => {
  it.effect("scripted replies answer in order, each as often as scripted", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const next = sql<{ id: number }>`SELECT id FROM job_queue ORDER BY msg_id LIMIT 1`
      assert.deepStrictEqual(yield* next, [{ id: 1 }])
      assert.deepStrictEqual(yield* next, [{ id: 2 }])
      assert.deepStrictEqual(yield* next, [{ id: 2 }])
      assert.deepStrictEqual(yield* next, [])
      const echoed = yield* sql`INSERT INTO workflow_events (run_id, type) VALUES (${"r1"}, ${"step_started"}) RETURNING type`
      assert.deepStrictEqual(echoed, [{ type: "step_started" }])
      yield* PoolTest.assertAllReplied
    }).pipe(Effect.provide(PoolTest.layer({
      replies: [
        PoolTest.rows("from job_queue", [{ id: 1 }]),
        PoolTest.rows("FROM   job_queue", [{ id: 2 }], { times: 2 }),
        PoolTest.rows(/job_queue/, []),
        PoolTest.rows("INSERT INTO workflow_events", (statement) => [{ type: statement.params[1] }])
      ]
    }))))

  it.effect("one script serves many layers: each spends its own counts", () => {
    const script = [PoolTest.rows("FROM runs", [{ id: 1 }])]
    const once = Effect.flatMap(Effect.service(SqlClient.SqlClient), (sql) => sql`SELECT id FROM runs`).pipe(
      Effect.provide(PoolTest.layer({ replies: script }))
    )
    return Effect.map(Effect.all([once, once]), (results) => assert.deepStrictEqual(results, [[{ id: 1 }], [{ id: 1 }]]))
  })

  it.effect("a statement nobody scripted is a defect that names it", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const defect = yield* defectOf(sql`DELETE FROM job_queue WHERE msg_id = ${7}`)
      assert.strictEqual((defect as { _tag?: string })._tag, "UnscriptedStatementError")
      assert.include(defect.message, "DELETE FROM job_queue WHERE msg_id = $1")
      assert.include(defect.message, "\"SELECT\"")
    }).pipe(Effect.provide(PoolTest.layer({ replies: [PoolTest.rows("SELECT", [])] }))))

  it.effect("with unmatched: empty, an unscripted statement gets no rows", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      assert.deepStrictEqual(yield* sql`UPDATE workflow_runs SET step = step + 1`, [])
    }).pipe(Effect.provide(PoolTest.layer({ unmatched: "empty" }))))

  it.effect("records the tenant the pool set for each statement, and whether it ran in a transaction", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* Tenant.unscoped(sql`SELECT msg_id FROM job_queue`, "claim")
      yield* Tenant.with(sql`SELECT type FROM workflow_events WHERE run_id = ${"r1"}`, tenantA)
      yield* Tenant.with(
        sql.withTransaction(Effect.all([
          sql`INSERT INTO workflow_events (type) VALUES ('a')`,
          // A forked fiber inherits the tenant.
          Effect.flatMap(Effect.forkChild(sql`INSERT INTO workflow_events (type) VALUES ('b')`), Fiber.join)
        ])),
        tenantB
      )
      const all = yield* PoolTest.statements
      // A lone statement runs in an implicit transaction of its own: not a transaction block.
      assert.deepStrictEqual(all.map((s) => [s.tenant, s.transaction]), [
        [undefined, false],
        [tenantA, false],
        [tenantB, true],
        [tenantB, true]
      ])
      yield* PoolTest.assertRan("FROM job_queue", { tenant: null, transaction: false })
      yield* PoolTest.assertRan("FROM workflow_events", { tenant: tenantA, params: ["r1"], times: 1 })
      yield* PoolTest.assertRan("INSERT INTO workflow_events", { tenant: tenantB, times: 2 })
    }).pipe(Effect.provide(PoolTest.layer({ unmatched: "empty" }))))

  it.effect("the pool's tenant rules apply: with requireTenant, SQL without a tenant never reaches the database", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const error = yield* Effect.flip(sql`SELECT * FROM workflow_runs`)
      assert.strictEqual(poolErrorOf(error), "TenantRequiredError")
      const invalid = yield* Effect.flip(Tenant.with(sql`SELECT 1`, "not-a-uuid'; DROP TABLE x; --"))
      assert.strictEqual(poolErrorOf(invalid), "InvalidTenantError")
      yield* PoolTest.assertNotRan("workflow_runs")
    }).pipe(Effect.provide(PoolTest.layer({ unmatched: "empty", pool: { requireTenant: true, tenantFormat: "uuid" } }))))

  it.effect("simulated pool errors arrive as the real pool delivers them", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const timeout = yield* Effect.flip(sql`SELECT 1 AS busy`)
      assert.strictEqual(timeout.reason._tag, "ConnectionError")
      const cause = PoolError.fromSqlError(timeout)
      assert.instanceOf(cause, PoolError.PoolTimeoutError)
      assert.strictEqual((cause as PoolError.PoolTimeoutError).queueLength, 3)
      const saturated = yield* Effect.flip(sql`SELECT 2 AS full`)
      assert.strictEqual(poolErrorOf(saturated), "PoolSaturatedError")
      // The pool's own retry policy sees them as the real ones.
      const retried = yield* Effect.flip(sql`SELECT 3 AS down`)
      assert.strictEqual(poolErrorOf(retried), "DatabaseUnavailableError")
    }).pipe(Effect.provide(PoolTest.layer({
      replies: [
        PoolTest.fail(
          "busy",
          new PoolError.PoolTimeoutError({ waitedMillis: 10_000, poolSize: 10, maxSize: 10, queueLength: 3 })
        ),
        PoolTest.fail("full", new PoolError.PoolSaturatedError({ maxWaiting: 100, poolSize: 10 })),
        PoolTest.fail("down", new PoolError.DatabaseUnavailableError({ reason: "connect ECONNREFUSED", attempts: 5 }))
      ]
    }))))

  it.effect("a SQLSTATE error has the driver's type, aborts its transaction, and the transaction rolls back", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const error = yield* Effect.flip(Tenant.with(
        sql.withTransaction(Effect.andThen(
          sql`INSERT INTO workflow_events (type) VALUES ('a')`,
          sql`INSERT INTO workflow_runs (id) VALUES (${"r1"})`
        )),
        tenantA
      ))
      assert.strictEqual(error.reason._tag, "UniqueViolation")
      assert.strictEqual((error.reason as { constraint?: string }).constraint, "workflow_runs_pkey")
      assert.strictEqual((error.reason.cause as { code?: string }).code, "23505")
      const serialization = yield* Effect.flip(Tenant.with(sql`UPDATE workflow_runs SET step = 2`, tenantA))
      assert.strictEqual(serialization.reason._tag, "SerializationError")
      // The lone statement's COMMIT answered ROLLBACK: nothing half-done is reported as done.
      const after = yield* Tenant.with(sql`SELECT count(*) FROM workflow_runs`, tenantA)
      assert.deepStrictEqual(after, [])
    }).pipe(Effect.provide(PoolTest.layer({
      unmatched: "empty",
      replies: [
        PoolTest.sqlState("INSERT INTO workflow_runs", "23505", { constraint: "workflow_runs_pkey" }),
        PoolTest.sqlState("UPDATE workflow_runs", "40001")
      ]
    }))))

  it.effect("answers the pool's session reset as a clean session does: the connection is kept", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const mock = yield* PoolTest.MockDatabase
      // A command that may leave session state: the lease's session is reset before it is lent again.
      yield* sql.withTransaction(sql`CREATE TABLE notes (a int)`)
      yield* sql`SELECT 1`
      assert.deepStrictEqual(yield* mock.connections, { opened: 1, open: 1 })
    }).pipe(Effect.provide(PoolTest.layer({ unmatched: "empty", pool: { max: 1 } }))))

  it.effect("reads transaction control as the server does, however it is spelled", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* Tenant.with(
        sql.withTransaction(Effect.gen(function*() {
          yield* sql`/* mark */ SAVEPOINT a`
          yield* Effect.flip(sql`UPDATE workflow_runs SET step = 2`)
          // Rolled back to the savepoint, the transaction goes on.
          yield* sql`ROLLBACK WORK TO a`
          yield* sql`SELECT 1 AS after`
        })),
        tenantA
      )
      yield* PoolTest.assertRan("AS after", { tenant: tenantA, transaction: true })
    }).pipe(Effect.provide(PoolTest.layer({
      unmatched: "empty",
      replies: [PoolTest.sqlState("UPDATE workflow_runs", "40001")]
    }))))

  it.effect("latency runs on the TestClock, and a real pool timeout follows from it", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      // A transaction holds its connection alone (lone statements would share it, pipelined).
      const slow = yield* Effect.forkChild(Tenant.with(sql.withTransaction(sql`SELECT * FROM slow_report`), tenantA))
      const waiting = yield* Effect.forkChild(Tenant.with(sql`SELECT 1 AS quick`, tenantB))
      yield* TestClock.adjust("999 millis")
      assert.isUndefined(slow.pollUnsafe())
      yield* TestClock.adjust("1 millis")
      // The only connection was busy for the whole acquireTimeout.
      const timedOut = yield* Effect.flip(Fiber.join(waiting))
      assert.strictEqual(poolErrorOf(timedOut), "PoolTimeoutError")
      yield* TestClock.adjust("4 seconds")
      assert.deepStrictEqual(yield* Fiber.join(slow), [{ n: 1 }])
    }).pipe(Effect.provide(PoolTest.layer({
      replies: [PoolTest.rows("slow_report", [{ n: 1 }], { delay: "5 seconds" })],
      unmatched: "empty",
      pool: { max: 1, acquireTimeout: "1 second" }
    }))))

  it.effect("a lost connection fails its statement with a ConnectionError, and the next gets a new connection", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const lost = yield* Effect.flip(sql`SELECT * FROM job_queue`)
      assert.strictEqual(lost.reason._tag, "ConnectionError")
      yield* sql`SELECT * FROM job_queue`
      const [first, second] = yield* PoolTest.statements
      assert.notStrictEqual(first.connection, second.connection)
    }).pipe(Effect.provide(PoolTest.layer({
      replies: [PoolTest.connectionLost("job_queue"), PoolTest.rows("job_queue", [])],
      pool: { max: 1 }
    }))))

  it.effect("a database that goes down: callers get the pool's errors; back up, work resumes", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const mock = yield* PoolTest.MockDatabase
      yield* sql`SELECT 1 AS before`
      yield* PoolTest.setDatabaseDown(true)
      assert.strictEqual((yield* mock.connections).open, 0)
      const failing = yield* Effect.forkChild(Effect.flip(sql`SELECT 1 AS during`))
      yield* TestClock.adjust("3 seconds")
      const error = yield* Fiber.join(failing)
      assert.include(["PoolTimeoutError", "DatabaseUnavailableError"], poolErrorOf(error))
      // While the circuit is open, callers fail at once instead of queueing.
      const fast = yield* Effect.flip(sql`SELECT 1 AS during`)
      assert.strictEqual(poolErrorOf(fast), "DatabaseUnavailableError")
      yield* PoolTest.setDatabaseDown(false)
      // The next probe (circuitProbeInterval, jittered) finds it back and closes the circuit.
      yield* TestClock.adjust("2 seconds")
      yield* sql`SELECT 1 AS after`
      yield* PoolTest.assertRan("after", { times: 1 })
      yield* PoolTest.assertNotRan("during")
    }).pipe(Effect.provide(PoolTest.layer({ unmatched: "empty", pool: { acquireTimeout: "2 seconds" } }))))
})

describe("PoolTest assertions", () => {
  it.effect("assertRan lists what ran when nothing matched, and says what differed", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* Tenant.with(sql`SELECT * FROM workflow_runs WHERE id = ${"r1"}`, tenantA)
      const missing = yield* defectOf(PoolTest.assertRan("job_queue"))
      assert.include(missing.message, `[tenant ${tenantA}] SELECT * FROM workflow_runs WHERE id = $1`)
      const wrongTenant = yield* defectOf(PoolTest.assertRan("workflow_runs", { tenant: tenantB }))
      assert.include(wrongTenant.message, `ran under tenant ${tenantA}, expected ${tenantB}`)
      const wrongParams = yield* defectOf(PoolTest.assertRan("workflow_runs", { params: ["r2"] }))
      assert.include(wrongParams.message, "other parameters")
      const wrongCount = yield* defectOf(PoolTest.assertRan("workflow_runs", { times: 2 }))
      assert.include(wrongCount.message, "expected 2")
      const ran = yield* defectOf(PoolTest.assertNotRan("workflow_runs"))
      assert.include(ran.message, "1 statement(s)")
    }).pipe(Effect.provide(PoolTest.layer({ unmatched: "empty" }))))

  it.effect("assertAllReplied names the replies left", () =>
    Effect.gen(function*() {
      const defect = yield* defectOf(PoolTest.assertAllReplied)
      assert.include(defect.message, "\"job_queue\" (2 left)")
    }).pipe(Effect.provide(PoolTest.layer({ replies: [PoolTest.rows("job_queue", [], { times: 2 })] }))))

  it("bad scripts are refused when written", () => {
    assert.throws(() => PoolTest.sqlState("x", "oops"), /not a SQLSTATE/)
    assert.throws(() => PoolTest.rows("x", [], { times: 0 }), /at least 1/)
  })
})
