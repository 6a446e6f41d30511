/**
 * Programs written for `PgClient.layer` on the pool's layer, unchanged: what
 * `@effect/sql-pg` builds on `PgClient` (its migrator), the statement
 * compiler's helpers and transforms, and `reserve`, against a real server.
 */
import { assert, describe, it } from "@effect/vitest"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as PgMigrator from "@effect/sql-pg/PgMigrator"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FileSystem from "effect/FileSystem"
import * as Layer from "effect/Layer"
import * as Path from "effect/Path"
import * as KeyValueStore from "effect/persistence/KeyValueStore"
import * as PersistedQueue from "effect/persistence/PersistedQueue"
import * as ChildProcessSpawner from "effect/process/ChildProcessSpawner"
import * as SqlClient from "effect/sql/SqlClient"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as String from "effect/String"
import { poolLayer, uniqueName } from "./support/pg.ts"

/** What `PgMigrator.run` asks for to dump a schema; nothing here dumps one. */
const noSchemaDump = Layer.mergeAll(
  FileSystem.layerNoop({}),
  Path.layer,
  Layer.succeed(ChildProcessSpawner.ChildProcessSpawner, ChildProcessSpawner.make(() => Effect.die("no schema dump in this test")))
)

describe("PgClient programs on the pool's layer", () => {
  it.live("PgMigrator runs each migration once when two runs race", () => {
    const table = uniqueName("migrations")
    const jobs = uniqueName("jobs")
    return Effect.gen(function*() {
      const sql = yield* PgClient.PgClient
      const loader = PgMigrator.fromRecord({
        "1_create": sql`CREATE TABLE ${sql(jobs)} (id serial PRIMARY KEY)`,
        "2_column": sql`ALTER TABLE ${sql(jobs)} ADD COLUMN payload jsonb`
      })
      const runs = yield* Effect.all(
        [PgMigrator.run({ loader, table }), PgMigrator.run({ loader, table })],
        { concurrency: 2 }
      ).pipe(Effect.provide(noSchemaDump))
      // Between them, both migrations ran, each once.
      assert.deepStrictEqual(runs.flat().map(([id]) => id).sort(), [1, 2])
      const applied = yield* sql<{ migrationId: number }>`SELECT migration_id FROM ${sql(table)} ORDER BY 1`
      assert.deepStrictEqual(applied.map((row) => row.migrationId), [1, 2])
      const [row] = yield* sql<{ payload: unknown }>`INSERT INTO ${sql(jobs)} (payload) VALUES (${sql.json({ a: 1 })}) RETURNING payload`
      assert.deepStrictEqual(row.payload, { a: 1 })
    }).pipe(Effect.provide(poolLayer({ transformResultNames: String.snakeToCamel })))
  })

  it.live("compiles helpers with the pg dialect, and transforms names both ways", () => {
    const table = uniqueName("compat")
    return Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      assert.strictEqual(sql.onDialectOrElse({ pg: () => "pg", orElse: () => "other" }), "pg")
      yield* sql`CREATE TABLE ${sql(table)} (id int PRIMARY KEY, created_by text, run_count int)`
      yield* sql`INSERT INTO ${sql(table)} ${sql.insert([{ id: 1, createdBy: "a", runCount: 1 }, { id: 2, createdBy: "b", runCount: 5 }])}`
      yield* sql`UPDATE ${sql(table)} SET ${sql.update({ runCount: 2 })} WHERE id = ${1}`
      const rows = yield* sql<{ id: number; createdBy: string; runCount: number }>`
        SELECT * FROM ${sql(table)} WHERE ${sql.in("id", [1, 2])} AND ${sql.and([sql`run_count > ${0}`])} ORDER BY id`
      assert.deepStrictEqual(rows, [{ id: 1, createdBy: "a", runCount: 2 }, { id: 2, createdBy: "b", runCount: 5 }])
      const unprepared = yield* sql<{ n: number }>`SELECT ${7}::int AS n`.unprepared
      assert.deepStrictEqual(unprepared, [{ n: 7 }])
      const values = yield* sql`SELECT 1 AS a, 2 AS b`.values
      assert.deepStrictEqual(values, [[1, 2]])
      const raw = yield* sql`SELECT 1 AS created_by`.withoutTransform
      assert.deepStrictEqual(raw, [{ created_by: 1 }])
    }).pipe(Effect.provide(poolLayer({ transformResultNames: String.snakeToCamel, transformQueryNames: String.camelToSnake })))
  })

  it.live("reserve lends one session for the scope", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const pids = yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* sql.reserve
        const first = yield* connection.executeValues("SELECT pg_backend_pid()", [])
        const second = yield* connection.executeValues("SELECT pg_backend_pid()", [])
        return [first[0][0], second[0][0]]
      }))
      assert.strictEqual(pids[0], pids[1])
    }).pipe(Effect.provide(poolLayer({ max: 4 }))))

  it.live("the SQL-backed KeyValueStore keeps strings and bytes", () => {
    const table = uniqueName("kv")
    return Effect.gen(function*() {
      const store = yield* KeyValueStore.KeyValueStore
      yield* store.set("job:1", "claimed")
      yield* store.set("blob", Uint8Array.of(0, 1, 254, 255))
      assert.strictEqual(yield* store.get("job:1"), "claimed")
      assert.deepStrictEqual(yield* store.getUint8Array("blob"), Uint8Array.of(0, 1, 254, 255))
      assert.strictEqual(yield* store.size, 2)
      yield* store.remove("job:1")
      assert.isFalse(yield* store.has("job:1"))
      assert.isUndefined(yield* store.get("missing"))
    }).pipe(Effect.provide(KeyValueStore.layerSql({ table }).pipe(Layer.provideMerge(poolLayer()))))
  })

  it.live("the SQL-backed PersistedQueue delivers each element once, and again after a failed attempt", () => {
    const tableName = uniqueName("queue")
    return Effect.gen(function*() {
      const queue = yield* PersistedQueue.make({ name: "jobs", schema: Schema.Struct({ step: Schema.Number }), retrySchedule: Schedule.spaced(0) })
      yield* queue.offer({ step: 1 }, { id: "a" })
      yield* queue.offer({ step: 1 }, { id: "a" }) // a duplicate id is not queued again
      yield* queue.offer({ step: 2 }, { id: "b" })
      const first = yield* Effect.exit(queue.take((value, meta) => Effect.fail(`attempt ${meta.attempts} of step ${value.step}`)))
      assert.isTrue(Exit.isFailure(first))
      const taken: Array<string> = []
      for (let i = 0; i < 2; i++) {
        yield* queue.take((value, meta) => Effect.sync(() => taken.push(`${meta.id}:${value.step}:${meta.attempts}`)))
      }
      assert.sameMembers(taken, ["a:1:2", "b:2:1"])
    }).pipe(Effect.provide(
      PersistedQueue.layer.pipe(
        Layer.provide(PersistedQueue.layerStoreSql({ tableName, pollInterval: 50 })),
        Layer.provideMerge(poolLayer())
      )
    ))
  })
})
