/**
 * The SvelteKit example end to end: built with `vite build` and
 * adapter-node once for the file, started as `node build/index.js` against
 * MeshHook's database on the test server (the pool connecting as the
 * non-owner worker role, so row-level security applies), and called over
 * HTTP as a client would. Its pool is sized to one connection, so that a
 * held connection makes the next request wait and time out.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import { databaseUrl, eventually, uniqueName } from "../../test/support/pg.ts"
import * as Database from "../meshhook/database.ts"

const app = import.meta.dirname
const root = Path.resolve(app, "..", "..")
const scope = Effect.runSync(Scope.make())
const work = Fs.mkdtempSync(Path.join(Os.tmpdir(), "meshhook-sveltekit-"))
const applicationName = uniqueName("sveltekit_example")

let db: Database.MeshHookDatabase
let side: PgConnection.PgConnection
/** A second connection, for a transaction of its own (the first keeps reading fresh statistics). */
let locker: PgConnection.PgConnection
let server: ChildProcess
let serverExit: Promise<number | null>
let serverOutput = ""
let origin = ""

/** Runs a command to its end; rejects with its output if it fails. */
const runToEnd = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv) =>
  new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: app, env: { ...process.env, ...env } })
    let output = ""
    child.stdout.on("data", (chunk) => output += chunk)
    child.stderr.on("data", (chunk) => output += chunk)
    child.once("exit", (code) => code === 0 ? resolve() : reject(new Error(`${args.join(" ")} exited ${code}:\n${output}`)))
  })

const query = (sql: string, params: ReadonlyArray<unknown> = [], connection = side) =>
  Effect.runPromise(Effect.map(connection.query(sql, params), (result) => result.rows))

const until = (condition: () => Promise<boolean>, millis = 10_000) =>
  Effect.runPromise(eventually(Effect.promise(condition), millis))

/** The example server's backends on the database. */
const backends = async (where = "true") =>
  (await query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND ${where}`, [applicationName]))[0]
    .n as number

const call = (path: string, project: string | undefined, init: RequestInit = {}) =>
  fetch(`${origin}${path}`, {
    ...init,
    headers: { "content-type": "application/json", ...(project === undefined ? {} : { "x-project-id": project }) }
  })

beforeAll(async () => {
  db = await Effect.runPromise(Scope.provide(Database.create(Redacted.make(databaseUrl()), { tenants: 2, runsPerTenant: 2 }), scope))
  const owner = PgConnection.make({ url: db.adminUrl, applicationName: "sveltekit-example-test" })
  side = await Effect.runPromise(Scope.provide(owner, scope))
  locker = await Effect.runPromise(Scope.provide(owner, scope))
  // Built where the work tree is not touched, as a deployment would build it.
  await runToEnd([Path.join(root, "node_modules", "vite", "bin", "vite.js"), "build"], {
    MESHHOOK_SVELTEKIT_OUT: Path.join(work, "build"),
    MESHHOOK_SVELTEKIT_WORK: Path.join(work, "svelte-kit")
  })
  server = spawn(process.execPath, [Path.join(work, "build", "index.js")], {
    cwd: work,
    env: {
      ...process.env,
      HOST: "127.0.0.1",
      PORT: "0",
      DATABASE_URL: Redacted.value(db.workerUrl),
      PGAPPNAME: applicationName,
      PGPOOL_MAX: "1",
      PGPOOL_ACQUIRE_TIMEOUT: "300ms"
    }
  })
  serverExit = new Promise((resolve) => server.once("exit", (code) => resolve(code)))
  origin = await new Promise<string>((resolve, reject) => {
    const read = (chunk: Buffer) => {
      serverOutput += chunk
      const listening = /Listening on (http:\/\/\S+)/.exec(serverOutput)
      if (listening !== null) resolve(listening[1])
    }
    server.stdout!.on("data", read)
    server.stderr!.on("data", read)
    void serverExit.then((code) => reject(new Error(`The server exited ${code}:\n${serverOutput}`)))
  })
}, 180_000)

afterAll(async () => {
  if (server !== undefined && server.exitCode === null && server.signalCode === null) server.kill("SIGKILL")
  await Effect.runPromise(Scope.close(scope, Exit.void))
  Fs.rmSync(work, { recursive: true, force: true })
})

describe("the SvelteKit example, built and served by adapter-node", () => {
  it("the pool was built as the server started (the init hook)", async () => {
    expect(await backends()).toBe(1)
  })

  it("each tenant's request sees that tenant's runs only", async () => {
    for (const project of db.projects) {
      const response = await call("/api/runs", project)
      expect(response.status).toBe(200)
      const runs = await response.json() as Array<{ id: string }>
      const own = await query("SELECT id::text AS id FROM workflow_runs WHERE project_id = $1", [project])
      expect(runs.map((run) => run.id).sort()).toEqual(own.map((run) => run.id).sort())
      expect(runs).toHaveLength(2)
    }
  })

  it("a run one tenant starts is not found by the other, whose own workflows are the only ones it can start", async () => {
    const [a, b] = db.projects
    const [workflowOfA] = await query("SELECT slug FROM workflow_definitions WHERE project_id = $1", [a])
    const started = await call("/api/runs", a, { method: "POST", body: JSON.stringify({ workflow: workflowOfA.slug }) })
    expect(started.status).toBe(201)
    const run = await started.json() as { id: string; status: string }
    expect(run.status).toBe("running")
    expect((await call(`/api/runs/${run.id}`, a)).status).toBe(200)
    expect((await call(`/api/runs/${run.id}`, b)).status).toBe(404)
    const [written] = await query("SELECT project_id::text AS project FROM workflow_runs WHERE id = $1", [run.id])
    expect(written.project).toBe(a)
    const refused = await call("/api/runs", b, { method: "POST", body: JSON.stringify({ workflow: workflowOfA.slug }) })
    expect(refused.status).toBe(404)
    expect(await refused.json()).toMatchObject({ error: "WorkflowNotFound" })
  })

  it("a request without a tenant is refused with 401, a malformed one with 400, before any SQL", async () => {
    const missing = await call("/api/runs", undefined)
    expect(missing.status).toBe(401)
    expect(await missing.json()).toMatchObject({ error: "TenantRequiredError" })
    const malformed = await call("/api/runs", "project-1")
    expect(malformed.status).toBe(400)
    expect(await malformed.json()).toMatchObject({ error: "InvalidTenantError" })
  })

  it("a full pool answers 503 with Retry-After; on SIGTERM the request in flight finishes, the pool drains and the process exits 0", async () => {
    const [a, b] = db.projects
    const [workflowOfA] = await query("SELECT slug FROM workflow_definitions WHERE project_id = $1", [a])
    // Held from the side, the lock stops a transaction that writes a run with the pool's only connection in hand.
    await query("BEGIN", [], locker)
    await query("LOCK TABLE workflow_runs IN ACCESS EXCLUSIVE MODE", [], locker)
    let inFlight: Promise<Response> | undefined
    try {
      inFlight = call("/api/runs", a, { method: "POST", body: JSON.stringify({ workflow: workflowOfA.slug }) })
      expect(await until(async () => (await backends("wait_event_type = 'Lock'")) === 1)).toBe(true)

      const busy = await call("/api/runs", b)
      expect(busy.status).toBe(503)
      expect(busy.headers.get("retry-after")).toBe("1")
      expect(await busy.json()).toMatchObject({ error: "PoolTimeoutError" })

      server.kill("SIGTERM")
      // adapter-node waits for the request in flight; the pool is still open for it.
      await new Promise((resolve) => setTimeout(resolve, 300))
      expect(server.exitCode).toBe(null)
    } finally {
      await query("ROLLBACK", [], locker)
    }
    const finished = await inFlight!
    expect(finished.status).toBe(201)
    expect(await serverExit, serverOutput).toBe(0)
    expect(await until(async () => (await backends()) === 0)).toBe(true)
  })
})
