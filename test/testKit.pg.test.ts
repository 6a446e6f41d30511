/**
 * The test kit against a real server: PgTest's fresh databases, migrations,
 * role and teardown; and PoolTest's simulated server errors compared with the
 * real ones.
 */
import { assert, describe, it, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import * as Tenant from "../src/Tenant.ts"
import { PgTest, PoolTest } from "../src/testing/index.ts"
import { admin, databaseUrl, uniqueName } from "./support/pg.ts"

const migrations = new URL("./fixtures/migrations", import.meta.url)
const kit = PgTest.layer({ migrations, role: "pgtest_app", pool: { tenantSetting: "app.tenant_id", max: 2 } })

const databaseExists = (name: string) =>
  Effect.scoped(Effect.flatMap(admin, (conn) =>
    Effect.map(conn.query("SELECT count(*)::int AS n FROM pg_database WHERE datname = $1", [name]), (r) => r.rows[0].n === 1)))

layer(kit)("PgTest.layer", (it) => {
  it.effect("applies the migrations in order, and the pool's role is subject to row-level security", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const db = yield* PgTest.Database
      const bodies = (tenant: string) =>
        Tenant.with(sql<{ body: string }>`SELECT body FROM notes ORDER BY id`, tenant).pipe(
          Effect.map((rows) => rows.map((r) => r.body))
        )
      assert.deepStrictEqual(yield* bodies("tenant-a"), ["a; from the seed", "from a DO block; still one statement"])
      assert.deepStrictEqual(yield* bodies("tenant-b"), ["it's b's"])
      yield* Tenant.with(sql`INSERT INTO notes (body) VALUES ('new')`, "tenant-c")
      assert.deepStrictEqual(yield* bodies("tenant-c"), ["new"])
      // Without a tenant the policy shows nothing; the owner, from the side, sees everything.
      assert.deepStrictEqual(yield* Tenant.unscoped(sql`SELECT * FROM notes`, "check fail-closed"), [])
      const all = yield* db.admin("SELECT count(*)::int AS n FROM notes")
      assert.strictEqual(all[0].n, 4)
      const [who] = yield* Tenant.unscoped(sql<{ role: string; superuser: boolean }>`
        SELECT current_user AS role, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser`, "who")
      assert.deepStrictEqual(who, { role: "pgtest_app", superuser: false })
    }))

  it.effect("the database is this file's own", () =>
    Effect.gen(function*() {
      const db = yield* PgTest.Database
      assert.match(db.name, /^test_[0-9a-f]{12}$/)
      const [current] = yield* db.admin("SELECT current_database() AS name")
      assert.strictEqual(current.name, db.name)
    }))
})

describe("PgTest isolation and teardown", () => {
  it.live("two set-ups get two databases that share nothing, each dropped when its scope closes", () =>
    Effect.gen(function*() {
      const first = yield* Scope.make()
      const second = yield* Scope.make()
      const one = yield* Layer.buildWithScope(kit, first)
      const two = yield* Layer.buildWithScope(kit, second)
      const nameOf = (context: typeof one) => Effect.map(Effect.provide(Effect.service(PgTest.Database), context), (db) => db.name)
      const [nameOne, nameTwo] = [yield* nameOf(one), yield* nameOf(two)]
      assert.notStrictEqual(nameOne, nameTwo)
      const insert = Effect.flatMap(Effect.service(SqlClient.SqlClient), (sql) =>
        Tenant.with(sql`INSERT INTO notes (body) VALUES ('only in one')`, "tenant-a"))
      yield* Effect.provide(insert, one)
      const countIn = (context: typeof one) =>
        Effect.provide(
          Effect.flatMap(Effect.service(PgTest.Database), (db) => db.admin("SELECT count(*)::int AS n FROM notes")),
          context
        ).pipe(Effect.map((rows) => rows[0].n))
      assert.strictEqual(yield* countIn(one), 4)
      assert.strictEqual(yield* countIn(two), 3)
      yield* Scope.close(first, Exit.void)
      assert.isFalse(yield* databaseExists(nameOne))
      assert.isTrue(yield* databaseExists(nameTwo))
      yield* Scope.close(second, Exit.void)
      assert.isFalse(yield* databaseExists(nameTwo))
    }))

  it.live("a failing migration names its file, and leaves no database behind", () =>
    Effect.gen(function*() {
      const name = uniqueName("test_broken")
      const error = yield* Effect.flip(Effect.scoped(PgTest.createDatabase(
        Redacted.make(databaseUrl()),
        { name, migrations: new URL("./fixtures/broken-migrations", import.meta.url) }
      )))
      assert.strictEqual(error._tag, "PgTestError")
      assert.strictEqual(error.file?.endsWith("0002_broken.sql"), true)
      assert.include(error.message, "no_such_table")
      assert.include(error.message, "42P01")
      assert.isFalse(yield* databaseExists(name))
    }))

  it.effect("bad names are refused before touching the server", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(PgTest.createDatabase(Redacted.make(databaseUrl()), { role: "x; DROP ROLE postgres" })))
      assert.include(error.message, "not a lower-case SQL identifier")
    }))
})

describe("PoolTest's simulated server errors", () => {
  it.live("have the type, SQLSTATE and constraint the real driver gives", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const real = (statement: Effect.Effect<unknown, SqlError>) => Effect.flip(Tenant.with(statement, "tenant-a"))
      const unique = yield* real(sql`INSERT INTO notes (id, body) VALUES (1, 'dup')`)
      const serialization = yield* real(sql`DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$`)
      const missing = yield* real(sql`SELECT * FROM no_such_table`)
      const simulated = yield* Effect.gen(function*() {
        const mock = yield* SqlClient.SqlClient
        const run = (text: string) => Effect.flip(Tenant.with(mock.unsafe(text), "tenant-a"))
        return [yield* run("unique"), yield* run("serialization"), yield* run("missing")]
      }).pipe(Effect.provide(PoolTest.layer({
        replies: [
          PoolTest.sqlState("unique", "23505", { constraint: "notes_pkey" }),
          PoolTest.sqlState("serialization", "40001"),
          PoolTest.sqlState("missing", "42P01")
        ]
      })))
      const shape = (error: SqlError) => ({
        reason: error.reason._tag,
        message: error.reason.message,
        code: (error.reason.cause as { code?: string }).code,
        constraint: (error.reason as { constraint?: string }).constraint
      })
      assert.deepStrictEqual(simulated.map(shape), [unique, serialization, missing].map(shape))
    }).pipe(Effect.provide(kit)))
})
