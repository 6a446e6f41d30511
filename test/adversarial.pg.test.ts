/**
 * Tenant isolation attacked as an adversary would, against a real server
 * with MeshHook's schema, row-level security, and a worker role that is
 * neither the owner nor BYPASSRLS but is a member of a BYPASSRLS role (the
 * worst case: a role change would show every tenant's rows).
 *
 * Each attack runs as tenant A (or without a tenant) on a pool of one
 * connection, so that the next borrowers get the connection it used; then
 * the victims run: work without a tenant, unscoped work, tenant B alone and
 * in a transaction. Each case ends with: no row of another tenant read or
 * written, and nothing of the attacker's session visible to the next
 * borrower (settings, role, search_path, cursors, temporary objects,
 * prepared statements, LISTEN, advisory locks, an open transaction or its
 * locks).
 *
 * Statements whose text shows the attack, and everything PostgreSQL
 * reports (command tags, transaction status, changed settings), are caught
 * with the default `sessionCheck: "suspect"`. Functions that leave session
 * state without a sign are run with `sessionCheck: "always"` too, and the
 * suite shows what the default still guarantees for them: the pinned
 * settings and refused session objects, never another tenant's rows.
 *
 * In the `pgbouncer` project the file runs behind a PgBouncer of its own
 * (one server connection, so every client lands on the attacked one):
 * session statements are refused before they are sent, and function-made
 * state stays on the server connection for the pooler's other clients,
 * but never reaches the pool's own transactions.
 */
import { assert, layer } from "@effect/vitest"
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import { SqlError } from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import type * as PoolConfig from "../src/PoolConfig.ts"
import * as PoolError from "../src/PoolError.ts"
import * as Tenant from "../src/Tenant.ts"
import * as PgBouncer from "../src/testing/PgBouncer.ts"
import { MeshHookDb } from "./support/meshhook.ts"
import { behindPooler, loginOf, serverUrl, sqlStateOfExit, upstreamOf, withPool } from "./support/pg.ts"

const pooled = behindPooler() === "transaction"
const runsPerTenant = 3
/** The server's `search_path`, and as the pool pins it: `pg_temp` last. */
const serverPath = "\"$user\", public"
const pinnedPath = `${serverPath}, pg_temp`

/** What an attack is given: the pool's client, tenants A and B, and a superuser connection from the side. */
interface Arena {
  readonly sql: SqlClient.SqlClient
  readonly a: string
  readonly b: string
  readonly side: PgConnection.PgConnection
}

interface Attack {
  readonly name: string
  /** What PostgreSQL itself shows of it (text, tags, reported settings): caught with the default sessionCheck. */
  readonly visible: boolean
  /** The SQLSTATE the server answers it with, directly; by default it succeeds. */
  readonly failsWith?: string
  /** A path the default sessionCheck leaves open directly on PostgreSQL (docs/security.md): tried with `always` only. */
  readonly onlyAlways?: boolean
  readonly run: (arena: Arena) => Effect.Effect<unknown, unknown, Scope.Scope>
}

/**
 * A `DO` block that replaces the pool's named statements on its session
 * with look-alikes (`DEALLOCATE`, then `PREPARE` under the same name): the
 * prologue answers the tenant it is given and sets nothing, the reset does
 * nothing and reports a clean session. Then it leaves tenant `tenant` and a
 * BYPASSRLS role on the session.
 */
const replacePrepared = (tenant: string) => `DO $attack$ DECLARE s record; BEGIN
  FOR s IN SELECT name, statement FROM pg_prepared_statements WHERE NOT from_sql LOOP
    IF s.statement LIKE '%isolation not in force%' THEN
      EXECUTE format('DEALLOCATE %I', s.name);
      EXECUTE format('PREPARE %I(text, text, text, text) AS SELECT $2::text', s.name);
    ELSIF s.statement LIKE '%pg_prepared_statements%' THEN
      EXECUTE format('DEALLOCATE %I', s.name);
      EXECUTE format('PREPARE %I AS SELECT ''''::text, ''0''::text, ''t''::text', s.name);
    ELSIF s.statement LIKE '%''search_path'', $1, false%' THEN
      EXECUTE format('DEALLOCATE %I', s.name);
      EXECUTE format('PREPARE %I(text) AS SELECT $1', s.name);
    ELSIF s.statement IN ('SET SESSION AUTHORIZATION DEFAULT', 'RESET ALL', 'CLOSE ALL', 'UNLISTEN *', 'DISCARD TEMP',
      'DISCARD SEQUENCES') THEN
      EXECUTE format('DEALLOCATE %I', s.name);
      -- Answers as a utility statement does: no rows and no row description.
      EXECUTE format('PREPARE %I AS UPDATE workflow_runs SET step = step WHERE false', s.name);
    END IF;
  END LOOP;
  PERFORM set_config('app.project_id', '${tenant}', false);
  SET ROLE mh_admin;
END $attack$`

/** Runs `statement` on a connection of its own, as a reserved connection would. */
const reserved = (sql: SqlClient.SqlClient, ...statements: ReadonlyArray<string>) =>
  Effect.scoped(Effect.flatMap(sql.reserve, (conn) =>
    Effect.forEach(statements, (statement) => conn.executeUnprepared(statement, [], undefined))))

const as = (tenant: string) => Tenant.with(tenant)
const unscoped = Tenant.unscoped("adversarial test")

const attacks: ReadonlyArray<Attack> = [
  // Spellings of set_config that patterns over the text missed.
  ...[
    "SELECT \"set_config\"('app.project_id', $1, false)",
    "SELECT pg_catalog.\"set_config\"('app.project_id', $1, false)",
    "SELECT set_config /* a comment */ ('app.project_id', $1, false)",
    "SELECT U&\"\\0073et_config\"('app.project_id', $1, false)"
  ].map((text): Attack => ({
    name: `a session-level tenant through ${text.slice(7, 40)}`,
    visible: true,
    run: ({ a, sql }) => as(a)(sql.unsafe(text, [a]))
  })),
  {
    name: "a role with BYPASSRLS through set_config",
    visible: true,
    run: ({ a, sql }) => as(a)(sql`SELECT set_config('role', 'mh_admin', false)`)
  },
  {
    name: "a search_path through set_config",
    visible: true,
    run: ({ a, sql }) => as(a)(sql`SELECT set_config('search_path', 'evil, public', false)`)
  },
  { name: "SET ROLE", visible: true, run: ({ sql }) => unscoped(reserved(sql, "SET ROLE mh_admin")) },
  { name: "SET row_security = off", visible: true, run: ({ sql }) => unscoped(reserved(sql, "SET row_security = off")) },
  {
    name: "EXECUTE inside a dollar-quoted DO block",
    visible: true,
    run: ({ a, sql }) =>
      as(a)(sql.unsafe(`DO $body$ BEGIN
        EXECUTE 'SET ROLE mh_admin';
        PERFORM set_config('app.project_id', '${a}', false);
        EXECUTE 'SET search_path = evil, public';
      END $body$`))
  },
  {
    name: "a PREPAREd statement that sets state, then EXECUTE",
    visible: true,
    run: ({ a, sql }) =>
      unscoped(reserved(sql, "PREPARE leak(text) AS SELECT set_config('app.project_id', $1, false)", `EXECUTE leak('${a}')`))
  },
  {
    name: "SET LOCAL outside a transaction",
    visible: true,
    run: ({ a, sql }) => unscoped(sql.unsafe(`SET LOCAL app.project_id = '${a}'`))
  },
  {
    name: "RESET ROLE and RESET ALL inside a tenant's transaction",
    visible: true,
    run: ({ a, sql }) => as(a)(sql.withTransaction(Effect.andThen(sql`RESET ROLE`, sql`RESET ALL`)))
  },
  {
    name: "DISCARD ALL, which also drops the pool's prepared statements",
    visible: true,
    run: ({ sql }) => unscoped(sql`DISCARD ALL`)
  },
  {
    name: "a savepoint rolled back, the transaction left open",
    visible: true,
    run: ({ a, sql }) =>
      as(a)(reserved(sql, "BEGIN", "SAVEPOINT s", `UPDATE workflow_runs SET step = step + 100`, "ROLLBACK TO SAVEPOINT s"))
  },
  {
    name: "COMMIT AND CHAIN, then an ACCESS EXCLUSIVE lock, left open",
    visible: true,
    run: ({ a, sql }) => as(a)(reserved(sql, "BEGIN", "COMMIT AND CHAIN", "LOCK TABLE workflow_runs IN ACCESS EXCLUSIVE MODE"))
  },
  {
    name: "COMMIT AND CHAIN inside a tenant's transaction: the chained one still sees that tenant alone",
    visible: true,
    run: ({ a, sql }) =>
      as(a)(sql.withTransaction(Effect.gen(function*() {
        yield* sql`COMMIT AND CHAIN`
        const seen = yield* sql<{ project_id: string }>`SELECT project_id::text FROM workflow_runs`
        assert.strictEqual(seen.length, runsPerTenant, JSON.stringify(seen))
        assert.isTrue(seen.every((row) => row.project_id === a))
      })))
  },
  {
    name: "PREPARE TRANSACTION",
    visible: true,
    failsWith: "55000",
    run: ({ a, sql }) => as(a)(reserved(sql, "BEGIN", "UPDATE workflow_runs SET step = step + 100", "PREPARE TRANSACTION 'leak'"))
  },
  {
    name: "a holdable cursor over the tenant's rows",
    visible: true,
    run: ({ a, sql }) =>
      as(a)(reserved(sql, "BEGIN", "DECLARE leak CURSOR WITH HOLD FOR SELECT project_id FROM workflow_runs", "COMMIT"))
  },
  { name: "a session advisory lock", visible: true, run: ({ sql }) => unscoped(sql`SELECT pg_advisory_lock(77)`) },
  { name: "LISTEN", visible: true, run: ({ sql }) => unscoped(reserved(sql, "LISTEN leak")) },
  {
    name: "a temporary table that shadows workflow_runs, holding the tenant's rows",
    visible: true,
    run: ({ a, sql }) => as(a)(sql`CREATE TEMP TABLE workflow_runs AS SELECT * FROM public.workflow_runs`)
  },
  {
    name: "CREATE TABLE pg_temp.workflow_runs",
    visible: true,
    run: ({ a, sql }) => as(a)(sql`CREATE TABLE pg_temp.workflow_runs AS SELECT * FROM public.workflow_runs`)
  },
  {
    name: "SELECT ... INTO pg_temp",
    visible: true,
    run: ({ a, sql }) => as(a)(sql`SELECT * INTO pg_temp.leak FROM workflow_runs`)
  },
  // Through functions: nothing in the text, nothing in the command tag.
  {
    name: "a SECURITY DEFINER function that sets the tenant for the session",
    visible: false,
    run: ({ a, sql }) => as(a)(sql`SELECT evil_set('app.project_id', ${a})`)
  },
  {
    name: "a function that switches to a BYPASSRLS role",
    visible: false,
    run: ({ a, sql }) => as(a)(sql`SELECT evil_role()`)
  },
  { name: "a function that sets the search_path", visible: false, run: ({ sql }) => unscoped(sql`SELECT evil_path()`) },
  {
    name: "a function that copies the tenant's rows into a temporary table shadowing workflow_runs",
    visible: false,
    run: ({ a, sql }) => as(a)(sql`SELECT evil_temp()`)
  },
  {
    name: "a function that opens a holdable cursor over the tenant's rows",
    visible: false,
    run: ({ a, sql }) => as(a)(sql`SELECT evil_cursor()`)
  },
  {
    name: "a function that sets another custom setting for the session",
    visible: false,
    run: ({ a, sql }) => as(a)(sql`SELECT evil_set('app.user_email', ${`owner@${a}`})`)
  },
  { name: "a function that takes a session advisory lock", visible: false, run: ({ sql }) => unscoped(sql`SELECT evil_lock()`) },
  {
    name: "a function that puts a schema before pg_catalog whose functions and operators fake the prologue's checks, as a BYPASSRLS role with a tenant",
    visible: false,
    run: ({ a, sql }) => as(a)(sql`SELECT evil_shadow(${a})`)
  },
  {
    name: "a DO block that replaces the pool's prepared statements (prologue and reset) with look-alikes, as a BYPASSRLS role with a tenant",
    visible: true,
    run: ({ a, sql }) =>
      Effect.andThen(
        // A visible SET first, so that the reset's statements have run on this connection.
        as(a)(reserved(sql, "SET statement_timeout = '5s'")),
        as(a)(sql.unsafe(replacePrepared(a)))
      )
  },
  {
    name: "a function that runs the SQL it is given, replacing the pool's prepared statements",
    visible: false,
    onlyAlways: true,
    run: ({ a, sql }) => as(a)(sql`SELECT evil_exec(${replacePrepared(a)})`)
  },
  // Fibers that outlive what they borrowed.
  {
    name: "a fiber forked in a tenant's transaction that writes after it ended",
    visible: true,
    run: ({ a, sql }) =>
      Effect.gen(function*() {
        let late: Fiber.Fiber<unknown, unknown> | undefined
        yield* as(a)(sql.withTransaction(Effect.gen(function*() {
          yield* sql`SELECT 1`
          late = yield* Effect.forkDetach(Effect.andThen(
            Effect.sleep(30),
            sql`UPDATE workflow_runs SET status = 'canceled' RETURNING project_id`
          ))
        })))
        // Meanwhile the next borrower has the connection.
        yield* as(a)(sql`SELECT 1`)
        const exit = yield* Fiber.await(late!)
        assert.instanceOf(PoolError.fromSqlError(Cause.squash((exit as Exit.Failure<unknown, SqlError>).cause) as SqlError), PoolError.ConnectionReleasedError)
      })
  },
  {
    name: "a reserved connection used after its scope closed",
    visible: true,
    run: ({ a, sql }) =>
      Effect.gen(function*() {
        const kept = yield* as(a)(Effect.scoped(Effect.map(sql.reserve, (conn) => conn)))
        const exit = yield* Effect.exit(as(a)(kept.executeUnprepared("SELECT project_id FROM workflow_runs", [], undefined)))
        assert.instanceOf(PoolError.fromSqlError(Cause.squash((exit as Exit.Failure<unknown, SqlError>).cause) as SqlError), PoolError.ConnectionReleasedError)
      })
  }
]

/** What the session looks like to a borrower without a tenant: nothing of anyone before it. */
const probeSql = `SELECT coalesce(current_setting('app.project_id', true), '') AS tenant,
  coalesce(current_setting('app.user_email', true), '') AS user_email,
  current_user::text AS role,
  current_setting('search_path') AS search_path,
  current_setting('row_security') AS row_security,
  (SELECT count(*)::int FROM pg_cursors WHERE is_holdable) AS cursors,
  pg_my_temp_schema() <> 0 AS temp_schema,
  (SELECT count(*)::int FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temp_relations,
  (SELECT count(*)::int FROM pg_prepared_statements WHERE from_sql) AS prepared,
  (SELECT count(*)::int FROM pg_listening_channels()) AS listens,
  (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks,
  (SELECT count(*)::int FROM workflow_runs) AS runs`

const cleanProbe = {
  tenant: "",
  user_email: "",
  role: "mh_worker",
  search_path: pinnedPath,
  row_security: "on",
  cursors: 0,
  temp_schema: false,
  temp_relations: 0,
  prepared: 0,
  listens: 0,
  advisory_locks: 0,
  runs: 0
}

/**
 * The victims, after an attack: what each sees and writes. Behind a pooler,
 * a statement may also be refused (the server connection still carries
 * what a function left there): never answered with another tenant's rows.
 */
const victims = ({ b, sql, side }: Arena, strict: boolean) =>
  Effect.gen(function*() {
    const refusedOr = <A>(effect: Effect.Effect<A, SqlError>) =>
      Effect.map(Effect.exit(effect), (exit) => {
        if (Exit.isSuccess(exit)) return exit.value
        const error = PoolError.fromSqlError(Cause.squash(exit.cause) as SqlError)
        assert.isTrue(!strict && error?._tag === "IsolationError", `refused otherwise than by the prologue: ${Cause.pretty(exit.cause)}`)
        return undefined
      })
    // Without a tenant: no tenant's rows, nothing of the attacker's session.
    const probe = yield* refusedOr(unscoped(sql.unsafe(probeSql)))
    if (probe !== undefined) {
      const seen = probe[0] as typeof cleanProbe
      // Without a temporary schema, pg_temp searched first finds nothing: the server's own path is as good as the pinned one.
      const searchPath = seen.temp_schema ? pinnedPath : seen.search_path === serverPath ? serverPath : pinnedPath
      assert.deepStrictEqual(seen, strict ? cleanProbe : { ...seen, tenant: "", role: "mh_worker", search_path: searchPath, row_security: "on", runs: 0 })
    }
    const untenanted = yield* refusedOr(sql<{ n: number }>`SELECT count(*)::int AS n FROM workflow_events`)
    if (untenanted !== undefined) assert.strictEqual(untenanted[0].n, 0)
    // Tenant B: its own rows only, alone and in a transaction, and its writes touch only its rows.
    const seen = yield* refusedOr(as(b)(sql<{ project_id: string }>`SELECT project_id::text FROM workflow_runs`))
    if (seen !== undefined) assert.deepStrictEqual(seen.map((row) => row.project_id), Array(runsPerTenant).fill(b))
    const written = yield* refusedOr(as(b)(sql.withTransaction(
      sql<{ project_id: string }>`UPDATE workflow_runs SET updated_at = now() RETURNING project_id::text`
    )))
    if (written !== undefined) assert.deepStrictEqual(written.map((row) => row.project_id), Array(runsPerTenant).fill(b))
    // The attacker's cursor is gone, and no transaction of it holds locks or stays open.
    const fetched = yield* Effect.exit(as(b)(reserved(sql, "FETCH ALL FROM leak")))
    assert.isTrue(Exit.isFailure(fetched))
    if (strict) assert.strictEqual(sqlStateOfExit(fetched), "34000", "cursor \"leak\" does not exist")
    const [open] = (yield* side.query(`SELECT
      (SELECT count(*)::int FROM pg_stat_activity WHERE usename = 'mh_worker' AND state LIKE 'idle in transaction%') AS open,
      (SELECT count(*)::int FROM pg_prepared_xacts) AS prepared,
      (SELECT count(*)::int FROM workflow_runs WHERE project_id <> $1::uuid AND (status = 'canceled' OR step >= 100)) AS tampered`, [b])).rows
    assert.deepStrictEqual(open, { open: 0, prepared: 0, tampered: 0 })
    // A session advisory lock taken by a function without a sign outlives the lease under the default (it carries no rows).
    if (strict) assert.strictEqual((yield* side.query("SELECT pg_try_advisory_lock(77) AS free")).rows[0].free, true)
    yield* side.query("SELECT pg_advisory_unlock_all()")
  })

layer(MeshHookDb.layer({ tenants: 3, runsPerTenant }), { excludeTestServices: true, timeout: 60_000 })("adversarial isolation", (it) => {
  it.effect("set-up: a BYPASSRLS role the worker is a member of, and functions that leave session state", () =>
    Effect.gen(function*() {
      const db = yield* MeshHookDb
      const owner = yield* PgConnection.make({ url: db.adminUrl })
      yield* owner.query(`DO $$ BEGIN CREATE ROLE mh_admin NOLOGIN BYPASSRLS;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$`)
      yield* owner.query("GRANT mh_admin TO mh_worker")
      yield* owner.query("GRANT SELECT, UPDATE ON workflow_runs, workflow_events TO mh_admin")
      const setUp = [
        "CREATE SCHEMA IF NOT EXISTS evil",
        "GRANT USAGE ON SCHEMA evil TO mh_worker, mh_admin",
        `CREATE OR REPLACE FUNCTION evil_set(name text, value text) RETURNS text LANGUAGE plpgsql SECURITY DEFINER
          AS $f$ BEGIN RETURN set_config(name, value, false); END $f$`,
        `CREATE OR REPLACE FUNCTION evil_role() RETURNS text LANGUAGE plpgsql
          AS $f$ BEGIN EXECUTE 'SET ROLE mh_admin'; RETURN current_user; END $f$`,
        `CREATE OR REPLACE FUNCTION evil_path() RETURNS text LANGUAGE plpgsql
          AS $f$ BEGIN EXECUTE 'SET search_path = evil, public'; RETURN 'ok'; END $f$`,
        `CREATE OR REPLACE FUNCTION evil_temp() RETURNS text LANGUAGE plpgsql
          AS $f$ BEGIN EXECUTE 'CREATE TEMP TABLE workflow_runs AS SELECT * FROM public.workflow_runs'; RETURN 'ok'; END $f$`,
        `CREATE OR REPLACE FUNCTION evil_cursor() RETURNS text LANGUAGE plpgsql
          AS $f$ BEGIN EXECUTE 'DECLARE leak CURSOR WITH HOLD FOR SELECT project_id FROM workflow_runs'; RETURN 'ok'; END $f$`,
        `CREATE OR REPLACE FUNCTION evil_lock() RETURNS text LANGUAGE plpgsql
          AS $f$ BEGIN PERFORM pg_advisory_lock(77); RETURN 'ok'; END $f$`,
        `CREATE OR REPLACE FUNCTION evil_exec(command text) RETURNS text LANGUAGE plpgsql
          AS $f$ BEGIN EXECUTE command; RETURN 'ok'; END $f$`,
        // Look-alikes of what a prologue calls: unqualified, they win once `evil` comes before pg_catalog in the path.
        `CREATE OR REPLACE FUNCTION evil.current_setting(text) RETURNS text LANGUAGE sql SET search_path = pg_catalog
          AS $f$ SELECT CASE WHEN $1 = 'search_path' THEN '"$user", public, pg_temp' ELSE current_setting($1) END $f$`,
        `CREATE OR REPLACE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE sql SET search_path = pg_catalog
          AS $f$ SELECT CASE WHEN $1 = 'app.project_id' THEN '' ELSE current_setting($1, $2) END $f$`,
        `CREATE OR REPLACE FUNCTION evil.set_config(text, text, boolean) RETURNS text LANGUAGE sql AS $f$ SELECT $2 $f$`,
        `CREATE OR REPLACE FUNCTION evil.pg_my_temp_schema() RETURNS oid LANGUAGE sql AS $f$ SELECT 0::oid $f$`,
        `CREATE OR REPLACE FUNCTION evil.always(name, name) RETURNS boolean LANGUAGE sql AS $f$ SELECT true $f$`,
        `DO $$ BEGIN CREATE OPERATOR evil.= (LEFTARG = name, RIGHTARG = name, FUNCTION = evil.always);
          EXCEPTION WHEN duplicate_function OR duplicate_object THEN NULL; END $$`,
        `CREATE OR REPLACE FUNCTION evil_shadow(tenant text) RETURNS text LANGUAGE plpgsql AS $f$ BEGIN
          PERFORM set_config('app.project_id', tenant, false);
          EXECUTE 'SET ROLE mh_admin';
          EXECUTE 'SET search_path = evil, pg_catalog, public';
          RETURN 'ok'; END $f$`,
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public, evil TO mh_worker"
      ]
      for (const statement of setUp) yield* owner.query(statement)
    }))

  /**
   * The worker role's URL, directly or behind a PgBouncer of this test's own
   * (one server connection), and a superuser connection to the database
   * from the side.
   */
  const arena = Effect.gen(function*() {
    const db = yield* MeshHookDb
    const url = pooled
      ? (yield* PgBouncer.make({ upstream: upstreamOf(serverUrl()), defaultPoolSize: 1 })).url(loginOf(db.workerUrl))
      : db.workerUrl
    const sideUrl = new URL(serverUrl())
    sideUrl.pathname = `/${db.database}`
    const side = yield* PgConnection.make({ url: Redacted.make(sideUrl.toString()) })
    return { url, db, side }
  })

  const poolOptions = (url: string | Redacted.Redacted<string>, sessionCheck: PoolConfig.SessionCheck = "suspect") => ({
    url,
    max: 1,
    tenantSetting: "app.project_id",
    behindPooler: behindPooler(),
    sessionCheck
  })

  for (const sessionCheck of ["suspect", "always"] as const) {
    for (const attack of attacks.filter((attack) => sessionCheck === "always" || pooled || !attack.onlyAlways)) {
      // Under the default, functions without a sign may leave what carries no rows; `always` resets after every lease.
      const strict = !pooled && (attack.visible || sessionCheck === "always")
      it.effect(`${attack.name} (sessionCheck: ${sessionCheck})`, () =>
        Effect.gen(function*() {
          const { url, db, side } = yield* arena
          const [a, b] = db.projects
          yield* withPool(
            poolOptions(url, sessionCheck),
            ({ sql }) =>
              Effect.gen(function*() {
                const arena = { sql, a, b, side }
                const attempt = yield* Effect.exit(attack.run(arena))
                if (pooled) {
                  // Behind a pooler, session state is refused before it is sent; transaction control goes through.
                  if (Exit.isFailure(attempt)) {
                    const error = Cause.squash(attempt.cause)
                    assert.instanceOf(error, SqlError, Cause.pretty(attempt.cause))
                    const refusal = PoolError.fromSqlError(error as SqlError)
                    assert.include(["SessionStateNotAllowedError", undefined], refusal?._tag, Cause.pretty(attempt.cause))
                  }
                } else {
                  // Directly, the attack itself runs (or fails as the server says): it is what comes after that is tested.
                  assert.strictEqual(sqlStateOfExit(attempt), attack.failsWith, Exit.isFailure(attempt) ? Cause.pretty(attempt.cause) : "")
                }
                yield* victims(arena, strict)
              })
          )
          yield* side.query("ROLLBACK PREPARED 'leak'").pipe(Effect.ignore)
          yield* side.query("UPDATE workflow_runs SET status = 'running', step = step % 100")
        }))
    }
  }

  it.effect("a statement's parameters and tenant ids never reach the SQL text", () =>
    Effect.gen(function*() {
      const { url, db } = yield* arena
      const attack = `${db.projects[0]}', true); SELECT set_config('role', 'mh_admin', false); --`
      const exit = yield* withPool(poolOptions(url), ({ sql }) =>
        Effect.exit(as(attack)(sql`SELECT count(*) FROM workflow_runs`)))
      assert.strictEqual(sqlStateOfExit(exit), "22P02", "invalid input syntax for type uuid: the id is a parameter")
    }))

  it.effect("streams run in a pinned transaction of their own, with or without a tenant", () =>
    Effect.gen(function*() {
      const { url, db } = yield* arena
      const [a] = db.projects
      yield* withPool(poolOptions(url), ({ sql }) =>
        Effect.gen(function*() {
          yield* Effect.exit(as(a)(sql`SELECT evil_set('app.project_id', ${a})`))
          const untenanted = yield* unscoped(Stream.runCollect(sql`SELECT project_id FROM workflow_runs`.stream))
          assert.strictEqual(untenanted.length, 0)
        }))
    }))
})
