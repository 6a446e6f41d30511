/**
 * PoolRuntime as Promise code uses it, on MeshHook's schema under the
 * non-owner worker role (row-level security applies): the tenant per call,
 * typed rejections and results, aborts, closing, and SIGTERM in a process of
 * its own.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as Path from "node:path"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import { isSqlError } from "effect/sql/SqlError"
import * as Database from "../examples/meshhook/database.ts"
import * as Pool from "../src/Pool.ts"
import type * as PoolConfig from "../src/PoolConfig.ts"
import * as PoolError from "../src/PoolError.ts"
import * as PoolRuntime from "../src/PoolRuntime.ts"
import * as Tenant from "../src/Tenant.ts"
import { admin, databaseUrl, eventually, uniqueName } from "./support/pg.ts"

const runsPerTenant = 3
const scope = Effect.runSync(Scope.make())
let db: Database.MeshHookDatabase

beforeAll(async () => {
  db = await Effect.runPromise(Scope.provide(Database.create(Redacted.make(databaseUrl()), { tenants: 3, runsPerTenant }), scope))
})
afterAll(() => Effect.runPromise(Scope.close(scope, Exit.void)))

/** A runtime on the worker role, as a MeshHook server would configure it, under a name of its own. */
const runtimeWith = (options: PoolConfig.Options = {}) => {
  const applicationName = uniqueName("pool_runtime")
  const runtime = PoolRuntime.make(Pool.layer({
    url: db.workerUrl,
    tenantSetting: Database.tenantSetting,
    tenantFormat: "uuid",
    requireTenant: true,
    applicationName,
    ...options
  }))
  return { runtime, applicationName }
}

/** The server's backends under `applicationName`, seen from the side. */
const backends = (applicationName: string, state?: string) =>
  Effect.runPromise(Effect.scoped(Effect.flatMap(admin, (side) =>
    Effect.map(
      side.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND ($2::text IS NULL OR state = $2)",
        [applicationName, state ?? null]
      ),
      (result) => result.rows[0].n as number
    ))))

const until = (condition: () => Promise<boolean>, millis = 5_000) =>
  Effect.runPromise(eventually(Effect.promise(condition), millis))

const statsOf = (runtime: PoolRuntime.PoolRuntime<Pool.Services, unknown>) =>
  runtime.run(Effect.flatMap(Effect.service(Pool.Pool), (pool) => pool.stats))

/** What a tenant's statement sees: the tenant setting and the projects of the rows RLS lets through. */
const seen = Effect.flatMap(Effect.service(SqlClient.SqlClient), (sql) =>
  sql.withTransaction(Effect.gen(function*() {
    const [setting] = yield* sql<{ tenant: string }>`SELECT current_setting('app.project_id', true) AS tenant`
    // A pause inside the transaction, so that calls for other tenants overlap this one.
    yield* sql`SELECT pg_sleep(random() * 0.01)`
    const rows = yield* sql<{ project_id: string }>`SELECT project_id::text FROM workflow_runs`
    return { setting: setting.tenant, projects: rows.map((row) => row.project_id) }
  })))

describe("PoolRuntime", () => {
  it("a call for a tenant sees that tenant's rows only; a call without one is refused before any SQL", async () => {
    const { runtime } = runtimeWith()
    try {
      for (const project of db.projects) {
        const rows = await runtime.forTenant(project).sql<{ project_id: string }>`SELECT project_id::text FROM workflow_runs`
        expect(rows.map((row) => row.project_id)).toEqual(Array(runsPerTenant).fill(project))
      }
      const refused = await runtime.sql`SELECT count(*) FROM workflow_runs`.catch((error: unknown) => error)
      // The pool's error itself, not the SqlError that carried it through SqlClient.
      expect(refused).toBeInstanceOf(PoolError.TenantRequiredError)
      expect(isSqlError(refused)).toBe(false)
      // Explicitly unscoped passes requireTenant, and RLS still shows no tenant's rows.
      const [unscoped] = await runtime.unscoped("count across projects").sql<{ n: number }>`SELECT count(*)::int AS n FROM workflow_runs`
      expect(unscoped.n).toBe(0)
    } finally {
      await runtime.dispose()
    }
  })

  it("concurrent calls for different tenants never see each other's rows or setting", async () => {
    const { runtime } = runtimeWith({ max: 2 })
    try {
      const calls = Array.from({ length: 60 }, (_, i) => db.projects[i % db.projects.length])
      const results = await Promise.all(calls.map((project) => runtime.forTenant(project).run(seen)))
      results.forEach((result, i) => {
        expect(result.setting).toBe(calls[i])
        expect(result.projects).toEqual(Array(runsPerTenant).fill(calls[i]))
      })
    } finally {
      await runtime.dispose()
    }
  })

  it("rejections can be told apart: a pool error, a malformed tenant, the server's SqlError", async () => {
    const { runtime } = runtimeWith({ max: 1, acquireTimeout: 200 })
    const [project] = db.projects
    try {
      let release!: () => void
      const released = new Promise<void>((resolve) => release = resolve)
      const holder = runtime.unscoped("hold the only connection").run(
        Effect.flatMap(Effect.service(SqlClient.SqlClient), (sql) =>
          Effect.scoped(Effect.andThen(sql.reserve, Effect.promise(() => released))))
      )
      expect(await until(async () => (await statsOf(runtime)).used === 1)).toBe(true)

      const timedOut = await runtime.forTenant(project).sql`SELECT 1`.catch((error: unknown) => error)
      expect(timedOut).toBeInstanceOf(PoolError.PoolTimeoutError)
      expect((timedOut as PoolError.PoolTimeoutError).waitedMillis).toBeGreaterThanOrEqual(200)
      const asValue = await runtime.forTenant(project).runResult(seen)
      expect(Result.isFailure(asValue) && asValue.failure._tag).toBe("PoolTimeoutError")
      release()
      await holder

      await expect(runtime.forTenant("not-a-uuid").sql`SELECT 1`).rejects.toBeInstanceOf(PoolError.InvalidTenantError)
      const fromServer = await runtime.forTenant(project).sql`SELECT * FROM no_such_table`.catch((error: unknown) => error)
      expect(isSqlError(fromServer)).toBe(true)
      expect(PoolError.isPoolError(fromServer)).toBe(false)
    } finally {
      await runtime.dispose()
    }
  })

  it("runResult gives the value or the typed error as a value; a defect still rejects", async () => {
    const { runtime } = runtimeWith()
    const [project] = db.projects
    try {
      const ok = await runtime.forTenant(project).runResult(seen)
      expect(Result.isSuccess(ok) && ok.success.setting).toBe(project)
      const refused = await runtime.runResult(seen)
      expect(Result.isFailure(refused) && refused.failure).toBeInstanceOf(PoolError.TenantRequiredError)
      const own = await runtime.forTenant(project).runResult(Effect.fail({ _tag: "NotFound" as const }))
      expect(own).toEqual(Result.fail({ _tag: "NotFound" }))
      const boom = new Error("boom")
      await expect(runtime.forTenant(project).runResult(Effect.die(boom))).rejects.toBe(boom)
    } finally {
      await runtime.dispose()
    }
  })

  it("an aborted signal interrupts the run, rejects with its reason and gives the connection back", async () => {
    const { runtime, applicationName } = runtimeWith({ max: 1 })
    const [project] = db.projects
    try {
      const controller = new AbortController()
      const sleeping = runtime.forTenant(project).run(
        Effect.flatMap(Effect.service(SqlClient.SqlClient), (sql) => sql`SELECT pg_sleep(30)`),
        { signal: controller.signal }
      ).catch((error: unknown) => error)
      expect(await until(async () => (await backends(applicationName, "active")) === 1)).toBe(true)
      controller.abort()
      expect(await sleeping).toBe(controller.signal.reason)
      // The only connection serves the next call long before the 30 s sleep would have ended.
      const [row] = await runtime.forTenant(project).sql<{ one: number }>`SELECT 1 AS one`
      expect(row.one).toBe(1)
    } finally {
      await runtime.dispose()
    }
  })

  it("Promise callers and Effect workers in the runtime share one pool", async () => {
    const { runtime } = runtimeWith()
    const [a, b] = db.projects
    try {
      const before = (await statsOf(runtime)).checkouts
      const worker = runtime.managed.runFork(Effect.forEach([1, 2, 3, 4, 5], () => Tenant.with(b)(seen)))
      const fromPromise = await runtime.forTenant(a).run(seen)
      const fromWorker = await runtime.managed.runPromise(Fiber.join(worker))
      expect(fromPromise.setting).toBe(a)
      expect(fromWorker.map((seen) => seen.setting)).toEqual(Array(5).fill(b))
      // One pool served both: the worker's five transactions and the call's one.
      expect((await statsOf(runtime)).checkouts - before).toBe(6)
      expect(await runtime.run(Effect.service(Pool.Pool))).toBe(await runtime.managed.runPromise(Effect.service(Pool.Pool)))
    } finally {
      await runtime.dispose()
    }
  })

  it("dispose drains the pool: a run in flight and every later run fail with PoolClosedError, no connection is left", async () => {
    const { runtime, applicationName } = runtimeWith({ min: 2 })
    const [project] = db.projects
    await runtime.ready()
    expect(runtime.closed).toBe(false)
    expect(await until(async () => (await backends(applicationName)) === 2)).toBe(true)
    const inFlight = runtime.forTenant(project).runResult(
      Effect.flatMap(Effect.service(SqlClient.SqlClient), (sql) => sql`SELECT pg_sleep(30)`)
    )
    expect(await until(async () => (await backends(applicationName, "active")) === 1)).toBe(true)
    await runtime.dispose()
    expect(runtime.closed).toBe(true)
    const interrupted = await inFlight
    expect(Result.isFailure(interrupted) && interrupted.failure).toBeInstanceOf(PoolError.PoolClosedError)
    expect(await until(async () => (await backends(applicationName)) === 0)).toBe(true)
    await expect(runtime.forTenant(project).sql`SELECT 1`).rejects.toBeInstanceOf(PoolError.PoolClosedError)
    const later = await runtime.forTenant(project).runResult(seen)
    expect(Result.isFailure(later) && later.failure).toBeInstanceOf(PoolError.PoolClosedError)
    // Closed, it listens for nothing: a listener would swallow the first signal of a process going down.
    const listening = process.listenerCount("SIGUSR2")
    runtime.closeOn(["SIGUSR2"])
    expect(process.listenerCount("SIGUSR2")).toBe(listening)
    await runtime.dispose()
  })

  it("a pool that cannot be built rejects ready() and every run with the layer's error", async () => {
    const runtime = PoolRuntime.make(Pool.layer({ url: "postgres://nobody@127.0.0.1:1/none", initializationTimeout: 200 }))
    try {
      await expect(runtime.ready()).rejects.toBeInstanceOf(PoolError.DatabaseUnavailableError)
      const later = await runtime.unscoped("try again").runResult(Effect.void)
      expect(Result.isFailure(later) && later.failure).toBeInstanceOf(PoolError.DatabaseUnavailableError)
    } finally {
      await runtime.dispose()
    }
  })

  it("singleton: one runtime per key however often the module runs again; a disposed one is replaced", async () => {
    const key = uniqueName("singleton")
    let made = 0
    const get = () =>
      PoolRuntime.singleton(key, () => {
        made++
        return PoolRuntime.make(Pool.layer({ url: db.workerUrl }))
      })
    const first = get()
    expect(get()).toBe(first)
    expect(made).toBe(1)
    await first.dispose()
    const second = get()
    expect(second).not.toBe(first)
    expect(made).toBe(2)
    await second.dispose()
  })
})

describe("PoolRuntime.closeOn, in a process of its own", () => {
  const root = Path.resolve(import.meta.dirname, "..")
  /** A process that keeps itself alive (as a server would) until closeOn's `before` lets it go. */
  const script = `
    import * as Pool from ${JSON.stringify(Path.join(root, "src/Pool.ts"))}
    import * as PoolRuntime from ${JSON.stringify(Path.join(root, "src/PoolRuntime.ts"))}
    const keepAlive = setInterval(() => {}, 1_000)
    const runtime = PoolRuntime.make(Pool.layer({ url: process.env.URL, applicationName: process.env.APP, min: 2 }))
      .closeOn(["SIGTERM"], {
        before: () => {
          clearInterval(keepAlive)
          console.log("before")
          if (process.env.FAIL_BEFORE) throw new Error("the server would not close")
        }
      })
    await runtime.ready()
    console.log("ready")
  `

  const started = new Set<ChildProcess>()
  // A process that did not exit (the failure these tests look for) is not left behind.
  afterEach(() => {
    for (const child of started) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
    started.clear()
  })

  const start = (env: Record<string, string>) => {
    const applicationName = uniqueName("pool_runtime_sigterm")
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      cwd: root,
      env: { ...process.env, URL: Redacted.value(db.workerUrl), APP: applicationName, ...env }
    })
    started.add(child)
    let output = ""
    const ready = new Promise<void>((resolve) => {
      const read = (chunk: Buffer) => {
        output += chunk
        if (output.includes("ready")) resolve()
      }
      child.stdout.on("data", read)
      child.stderr.on("data", read)
    })
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
    return { child, applicationName, ready, exited, output: () => output }
  }

  it("SIGTERM runs `before`, drains the pool, and the process exits 0 with no connection left", async () => {
    const { child, applicationName, ready, exited, output } = start({})
    await ready
    expect(await until(async () => (await backends(applicationName)) === 2)).toBe(true)
    child.kill("SIGTERM")
    expect(await exited, output()).toBe(0)
    expect(output()).toMatch(/before/)
    expect(await until(async () => (await backends(applicationName)) === 0)).toBe(true)
  }, 30_000)

  it("a `before` that fails still closes the pool, and the exit code says it failed", async () => {
    const { child, applicationName, ready, exited, output } = start({ FAIL_BEFORE: "1" })
    await ready
    child.kill("SIGTERM")
    expect(await exited, output()).toBe(1)
    expect(output()).toMatch(/the server would not close/)
    expect(await until(async () => (await backends(applicationName)) === 0)).toBe(true)
  }, 30_000)
})
