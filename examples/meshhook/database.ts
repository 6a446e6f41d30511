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
import { createHash, randomBytes } from "node:crypto"
import * as Fs from "node:fs"

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
}

/**
 * Splits a SQL script into statements for the extended protocol, which takes
 * one at a time. It knows quotes, dollar quotes and line comments, which is
 * all the project's scripts use.
 */
export const splitStatements = (script: string): Array<string> => {
  const statements: Array<string> = []
  let current = ""
  let i = 0
  while (i < script.length) {
    const rest = script.slice(i)
    const dollar = /^\$[A-Za-z_]*\$/.exec(rest)
    if (dollar !== null) {
      const end = script.indexOf(dollar[0], i + dollar[0].length)
      const stop = end < 0 ? script.length : end + dollar[0].length
      current += script.slice(i, stop)
      i = stop
    } else if (rest.startsWith("--")) {
      const end = script.indexOf("\n", i)
      i = end < 0 ? script.length : end + 1
    } else if (script[i] === "'" || script[i] === "\"") {
      const end = script.indexOf(script[i], i + 1)
      const stop = end < 0 ? script.length : end + 1
      current += script.slice(i, stop)
      i = stop
    } else if (script[i] === ";") {
      if (current.trim() !== "") statements.push(current.trim())
      current = ""
      i++
    } else {
      current += script[i++]
    }
  }
  if (current.trim() !== "") statements.push(current.trim())
  return statements
}

const withDatabase = (url: string, database: string): string => {
  const parsed = new URL(url)
  parsed.pathname = `/${database}`
  return parsed.toString()
}

const withUser = (url: string, user: string, password: string): string => {
  const parsed = new URL(url)
  parsed.username = user
  parsed.password = password
  return parsed.toString()
}

const run = (connection: PgConnection.PgConnection, script: string) =>
  Effect.forEach(splitStatements(script), (statement) => connection.query(statement, [], false), { discard: true })

/**
 * Creates and seeds a MeshHook database on the server behind `adminUrl` (a
 * superuser URL). The worker role is created once per server, with a
 * password of its own; the database is dropped when the scope closes.
 */
export const create = (
  adminUrl: Redacted.Redacted<string>,
  options: Options = {}
): Effect.Effect<MeshHookDatabase, SqlError, Scope.Scope> =>
  Effect.gen(function*() {
    const database = options.database ?? `meshhook_${randomBytes(4).toString("hex")}`
    // The role is shared by every database on the server, so its password is
    // derived from the superuser's: the same for concurrent set-ups, secret alike.
    const workerPassword = createHash("sha256").update(`${Redacted.value(adminUrl)}:mh_worker`).digest("base64url")
    const server = yield* Effect.acquireRelease(
      PgConnection.make({ url: adminUrl, applicationName: "meshhook-setup" }),
      () => Effect.void
    )
    yield* server.query(`CREATE DATABASE "${database}"`, [], false)
    yield* Effect.addFinalizer(() =>
      Effect.ignore(server.query(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`, [], false))
    )
    yield* server.query(
      `DO $$ BEGIN
         CREATE ROLE mh_worker LOGIN NOBYPASSRLS PASSWORD '${workerPassword}';
       EXCEPTION WHEN duplicate_object OR unique_violation THEN
         ALTER ROLE mh_worker PASSWORD '${workerPassword}';
       END $$`,
      [],
      false
    )
    const databaseAdminUrl = withDatabase(Redacted.value(adminUrl), database)
    const owner = yield* PgConnection.make({ url: Redacted.make(databaseAdminUrl), applicationName: "meshhook-setup" })
    yield* run(owner, Fs.readFileSync(new URL("./schema.sql", import.meta.url), "utf8"))
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
      database,
      adminUrl: Redacted.make(databaseAdminUrl),
      workerUrl: Redacted.make(withUser(databaseAdminUrl, "mh_worker", workerPassword)),
      projects: projects.rows.map((row) => row.id as string)
    }
  })
