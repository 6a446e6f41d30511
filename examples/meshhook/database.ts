/**
 * A MeshHook-shaped database for the examples, tests and benchmarks: a fresh
 * database with MeshHook's tables under FORCE ROW LEVEL SECURITY, the
 * non-owner worker role `mh_worker`, and seeded tenants (projects) with runs
 * and one queued job per run.
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import type { SqlError } from "effect/sql/SqlError"
import * as PgTest from "../../src/testing/PgTest.ts"

/** The setting MeshHook's policies read the tenant from. */
export const tenantSetting = "app.project_id"

export interface MeshHookDatabase {
  readonly database: string
  /** The superuser, for set-up and checks from the side. */
  readonly adminUrl: Redacted.Redacted<string>
  /** The worker role: not the owner, subject to row-level security. */
  readonly workerUrl: Redacted.Redacted<string>
  /** The seeded tenants' ids. */
  readonly projects: ReadonlyArray<string>
}

export interface Options {
  /** Projects to seed. Default 100. */
  readonly tenants?: number
  /** Runs (and queued jobs) per project. Default 10. */
  readonly runsPerTenant?: number
  /** Database name; a fresh random one by default. */
  readonly database?: string
  /**
   * `server` (the default): the worker role is created once per server and
   * kept, for throwaway servers. `database`: it must not exist, and is
   * dropped with the database, for a real server that must be left as it
   * was (an existing `mh_worker` is refused, never altered).
   */
  readonly roleLifetime?: "server" | "database"
}

/**
 * Creates and seeds a MeshHook database on the server behind `adminUrl` (a
 * superuser URL), with the test kit's `PgTest.createDatabase`: the database
 * (and, with `roleLifetime: "database"`, the worker role) is dropped when the
 * scope closes.
 */
export const create = (
  adminUrl: Redacted.Redacted<string>,
  options: Options = {}
): Effect.Effect<MeshHookDatabase, SqlError | PgTest.PgTestError, Scope.Scope> =>
  Effect.gen(function*() {
    const database = yield* PgTest.createDatabase(adminUrl, {
      migrations: new URL("./migrations", import.meta.url),
      role: "mh_worker",
      roleLifetime: options.roleLifetime,
      name: options.database
    })
    const owner = yield* PgConnection.make({ url: database.adminUrl, applicationName: "meshhook-setup" })
    const tenants = options.tenants ?? 100
    const runs = options.runsPerTenant ?? 10
    yield* owner.query(
      `INSERT INTO projects (owner, name) SELECT gen_random_uuid(), 'project-' || g FROM generate_series(1, $1::int) g`,
      [tenants]
    )
    yield* owner.query(`INSERT INTO workflow_definitions (project_id, slug, definition)
      SELECT id, 'hook-' || name, '{"nodes":[{"id":"mapLead","type":"transform"},{"id":"createContact","type":"http_call"}]}'
      FROM projects`)
    yield* owner.query(
      `INSERT INTO workflow_runs (project_id, workflow_id, status)
       SELECT d.project_id, d.id, 'running' FROM workflow_definitions d, generate_series(1, $1::int)`,
      [runs]
    )
    yield* owner.query(`INSERT INTO workflow_events (project_id, run_id, type, payload)
      SELECT r.project_id, r.id, 'run_created', jsonb_build_object(
        'headers', jsonb_build_object('content-type', 'application/json'),
        'body', (SELECT string_agg(md5(random()::text || g::text || r.id::text), '') FROM generate_series(1, 40) g))
      FROM workflow_runs r`)
    yield* owner.query(`INSERT INTO job_queue (project_id, message)
      SELECT project_id, jsonb_build_object('run_id', id, 'workflow_id', workflow_id, 'step', 1)
      FROM workflow_runs ORDER BY random()`)
    yield* owner.query("ANALYZE")
    const projects = yield* owner.query("SELECT id::text AS id FROM projects ORDER BY name")
    return {
      database: database.name,
      adminUrl: database.adminUrl,
      workerUrl: database.url,
      projects: projects.rows.map((row) => row.id as string)
    }
  })
