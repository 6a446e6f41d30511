/**
 * The pool's protocol session on a real server: cycles, the transaction
 * status and setting changes the server reports, prepared statements, and
 * the driver internals it relies on (the pinned driver is checked here).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Redacted from "effect/Redacted"
import { SqlError } from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import * as PgConnector from "../src/internal/postgres/pgConnector.ts"
import * as Wire from "../src/internal/postgres/wire.ts"
import { admin, eventually, serverUrl } from "./support/pg.ts"

/** A wire on a fresh connection, with a counter of the retire reports it made. */
const watched = Effect.gen(function*() {
  const connector = PgConnector.make({ url: Redacted.make(serverUrl()) }, { preparedStatements: 4, init: () => Effect.void })
  const wire = yield* connector.connect
  const reports = { retired: 0 }
  connector.onRetire(wire, () => reports.retired++)
  return { wire, reports }
})

const query = (sql: string, params: ReadonlyArray<unknown> = [], shape: Wire.Query["shape"] = "objects"): Wire.Query => ({
  sql,
  params,
  prepare: true,
  shape
})

const rowsOf = (answer: Wire.Answer | SqlError | undefined) => {
  if (answer === undefined || answer instanceof SqlError) throw new Error(`expected rows, got ${String(answer)}`)
  return answer.rows
}

const stateOf = (answer: Wire.Answer | SqlError | undefined) =>
  answer instanceof SqlError ? (answer.reason.cause as { code?: string }).code : answer === undefined ? "skipped" : "ok"

describe("Wire", () => {
  it.live("a cycle is one implicit transaction: a local setting lasts to its Sync and no further", () =>
    Effect.gen(function*() {
      const { wire } = yield* watched
      const inside = yield* Wire.run(wire, [
        query("SELECT set_config('app.wire_test', 'x', true)"),
        query("SELECT current_setting('app.wire_test', true) AS v")
      ])
      assert.deepStrictEqual(rowsOf(inside.answers[1]), [{ v: "x" }])
      assert.strictEqual(inside.status, "I")
      const after = yield* Wire.run(wire, [query("SELECT coalesce(current_setting('app.wire_test', true), '') AS v")])
      assert.deepStrictEqual(rowsOf(after.answers[0]), [{ v: "" }])
    }))

  it.live("reports the server's transaction status, whatever the command tags say", () =>
    Effect.gen(function*() {
      const { wire } = yield* watched
      const begun = yield* Wire.run(wire, [query("BEGIN")])
      assert.strictEqual(begun.status, "T")
      // COMMIT AND CHAIN reports COMMIT, and leaves a transaction open.
      const chained = yield* Wire.run(wire, [query("COMMIT AND CHAIN")])
      assert.strictEqual((chained.answers[0] as Wire.Answer).command, "COMMIT")
      assert.strictEqual(chained.status, "T")
      const failed = yield* Wire.run(wire, [query("SELECT 1/0")])
      assert.strictEqual(failed.status, "E")
      assert.strictEqual(failed.statusBefore, "T")
      const rolledBack = yield* Wire.run(wire, [query("ROLLBACK")])
      assert.strictEqual(rolledBack.status, "I")
      assert.strictEqual(wire.status(), "I")
    }))

  it.live("a failed statement skips the rest of its cycle only; pipelined cycles each get their own answers", () =>
    Effect.gen(function*() {
      const { wire } = yield* watched
      const replies = yield* Effect.all(
        Array.from({ length: 20 }, (_, i) =>
          Wire.run(wire, [query(i % 3 === 1 ? "SELECT 1/0 AS n" : "SELECT $1::int AS n", i % 3 === 1 ? [] : [i]), query("SELECT 2 AS m")])
        ),
        { concurrency: "unbounded" }
      )
      replies.forEach((reply, i) => {
        if (i % 3 === 1) assert.deepStrictEqual(reply.answers.map(stateOf), ["22012", "skipped"])
        else {
          assert.deepStrictEqual(rowsOf(reply.answers[0]), [{ n: i }])
          assert.deepStrictEqual(rowsOf(reply.answers[1]), [{ m: 2 }])
        }
      })
    }))

  it.live("collects the settings the server reports changed, from any statement", () =>
    Effect.gen(function*() {
      const { wire } = yield* watched
      wire.takeReports()
      yield* Wire.run(wire, [query("SELECT set_config('TimeZone', 'Pacific/Auckland', false)")])
      assert.deepStrictEqual(wire.takeReports(), ["TimeZone"])
      assert.deepStrictEqual(wire.takeReports(), [])
      // A transaction-local change that ends with its transaction is not a change of the session.
      yield* Wire.run(wire, [query("SELECT set_config('TimeZone', 'UTC', true)")])
      assert.deepStrictEqual(wire.takeReports(), [])
    }))

  it.live("reuses named statements, and survives the server dropping them (DEALLOCATE ALL)", () =>
    Effect.gen(function*() {
      const { wire } = yield* watched
      const statement = query("SELECT $1::int * 2 AS n", [21])
      for (let i = 0; i < 3; i++) assert.deepStrictEqual(rowsOf((yield* Wire.run(wire, [statement])).answers[0]), [{ n: 42 }])
      const names = yield* Wire.run(wire, [query("SELECT count(*)::int AS n FROM pg_prepared_statements WHERE NOT from_sql")])
      assert.isAtLeast((rowsOf(names.answers[0])[0] as { n: number }).n, 1)
      // Its command tag says the names are gone: the next use prepares afresh.
      yield* Wire.run(wire, [query("DEALLOCATE ALL")])
      const fresh = yield* Wire.run(wire, [statement])
      assert.isFalse(fresh.stale)
      assert.deepStrictEqual(rowsOf(fresh.answers[0]), [{ n: 42 }])
      // Done where no tag shows it (inside a DO block), the next use finds the name stale, and the one after works.
      yield* Wire.run(wire, [query("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$")])
      const stale = yield* Wire.run(wire, [statement])
      assert.isTrue(stale.stale, "the dropped name is reported stale")
      assert.strictEqual(stateOf(stale.answers[0]), "26000")
      assert.deepStrictEqual(rowsOf((yield* Wire.run(wire, [statement])).answers[0]), [{ n: 42 }])
    }))

  it.live("keeps at most its bound of named statements, closing the least recently used", () =>
    Effect.gen(function*() {
      const { wire } = yield* watched
      for (let i = 0; i < 10; i++) yield* Wire.run(wire, [query(`SELECT ${i} AS n`)])
      const held = yield* Wire.run(wire, [query("SELECT count(*)::int AS n FROM pg_prepared_statements WHERE NOT from_sql")])
      assert.isAtMost((rowsOf(held.answers[0])[0] as { n: number }).n, 5)
    }))

  it.live("streams through the driver, and takes the wire back afterwards", () =>
    Effect.gen(function*() {
      const { wire } = yield* watched
      const rows = yield* Stream.runCollect(wire.stream("SELECT g FROM generate_series(1, 2000) g", []))
      assert.strictEqual(rows.length, 2000)
      assert.deepStrictEqual(rowsOf((yield* Wire.run(wire, [query("SELECT 7 AS n")])).answers[0]), [{ n: 7 }])
    }))

  it.live("a parameter that cannot be encoded fails before anything is sent", () =>
    Effect.gen(function*() {
      const { wire } = yield* watched
      const error = yield* Effect.flip(Wire.run(wire, [query("SELECT 1"), query("SELECT $1", [Symbol("x")])]))
      assert.include(error.message, "encode")
      assert.strictEqual(wire.inFlight(), 0)
    }))

  it.live("reports a connection whose backend was terminated, and fails what was in flight", () =>
    Effect.gen(function*() {
      const { wire, reports } = yield* watched
      const fiber = yield* Effect.forkChild(Wire.run(wire, [query("SELECT pg_sleep(30)")]))
      yield* Effect.sleep(50)
      const side = yield* admin
      yield* side.query("SELECT pg_terminate_backend($1)", [wire.processId])
      assert.isTrue(yield* eventually(Effect.sync(() => reports.retired === 1), 2_000))
      const reply = yield* Fiber.join(fiber)
      assert.instanceOf(reply.answers[0], SqlError)
    }))

  it.live("keeps a connection whose statement the server confirmed cancelled", () =>
    Effect.gen(function*() {
      const { wire, reports } = yield* watched
      const fiber = yield* Effect.forkChild(Wire.run(wire, [query("SELECT pg_sleep(30)")]))
      yield* Effect.sleep(50)
      yield* PgConnector.cancel(wire)
      const reply = yield* Fiber.join(fiber)
      assert.strictEqual(stateOf(reply.answers[0]), "57014")
      assert.deepStrictEqual(rowsOf((yield* Wire.run(wire, [query("SELECT 1 AS one")])).answers[0]), [{ one: 1 }])
      assert.strictEqual(reports.retired, 0)
    }))
})
