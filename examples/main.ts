/**
 * The main job: MeshHook workers on @meshhook/pool.
 *
 * Starts a throwaway PostgreSQL server (or uses DATABASE_URL, a superuser URL
 * on which it creates a fresh database), creates MeshHook's schema with
 * row-level security and the non-owner `mh_worker` role, seeds tenants, and
 * runs worker fibers that claim jobs across tenants and work each one as its
 * tenant. Prints a live line every second and a summary at the end; with
 * `--dashboard`, serves the pool's live view (src/Dashboard.ts) on 127.0.0.1
 * too, and with `--noisy N` one tenant floods the pool.
 *
 *   npm start -- --help
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as Semaphore from "effect/Semaphore"
import * as SqlClient from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import { parseArgs } from "node:util"
import * as Dashboard from "../src/Dashboard.ts"
import { Observability } from "../src/otel/index.ts"
import * as Pool from "../src/Pool.ts"
import * as PoolConfig from "../src/PoolConfig.ts"
import * as PoolError from "../src/PoolError.ts"
import * as Tenant from "../src/Tenant.ts"
import * as PgServer from "../src/testing/PgServer.ts"
import * as Database from "./meshhook/database.ts"
import * as Worker from "./meshhook/worker.ts"

const defaultDashboardPort = 9465

const usage = `Usage: npm start -- [options]

  --tenants N     projects to seed (default 100)
  --workers N     worker fibers (default 200)
  --duration S    seconds to run (default 15; with --dashboard, until Ctrl-C)
  --max N         pool size (default: PGPOOL_MAX, else 8)
  --http-ms N     duration of the simulated external HTTP call (default 20)
  --noisy N       a noisy tenant: N more callers as one tenant, each holding a connection
                  for 20 ms at a time, over and over (default 0)
  --dashboard[=PORT]
                  serve the pool's live view on http://127.0.0.1:PORT/ while the job runs
                  (port ${defaultDashboardPort} by default; 0 takes a free one): docs/live-view.md
  --otlp          export traces and metrics over OTLP/HTTP (to Jaeger: examples/jaeger/)
  --help          this text

Environment: DATABASE_URL, a superuser URL of an existing PostgreSQL on which a
fresh database and the role mh_worker are created, and dropped afterwards (a
server that has an mh_worker role already is refused, not changed); without
it a throwaway server is started. PGPOOL_* variables tune the workers' pool (docs/configuration.md);
the flags win over them.
OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318) is where --otlp sends.`

interface Flags {
  readonly tenants: number
  readonly workers: number
  /** Seconds; undefined: until Ctrl-C. */
  readonly duration: number | undefined
  /** Undefined: PGPOOL_MAX, else 8. */
  readonly max: number | undefined
  readonly httpMillis: number
  readonly noisy: number
  /** The live view's port, if it is wanted. */
  readonly dashboard: number | undefined
  readonly otlp: boolean
}

const readFlags = (argv: ReadonlyArray<string>): Flags | string => {
  let values
  try {
    values = parseArgs({
      // A bare --dashboard takes the default port (parseArgs has no optional values).
      args: argv.map((arg) => arg === "--dashboard" ? `--dashboard=${defaultDashboardPort}` : arg),
      options: {
        tenants: { type: "string", default: "100" },
        workers: { type: "string", default: "200" },
        duration: { type: "string" },
        max: { type: "string" },
        "http-ms": { type: "string", default: "20" },
        noisy: { type: "string", default: "0" },
        dashboard: { type: "string" },
        otlp: { type: "boolean", default: false },
        help: { type: "boolean", default: false }
      },
      strict: true,
      allowPositionals: false
    }).values
  } catch (error) {
    return (error as Error).message
  }
  if (values.help) return ""
  const flags: Record<string, number> = {}
  for (const [flag, key, min, max] of [
    ["tenants", "tenants", 1, 100_000],
    ["workers", "workers", 1, 100_000],
    ["duration", "duration", 1, 86_400],
    ["max", "max", 1, 10_000],
    ["http-ms", "httpMillis", 0, 60_000],
    ["noisy", "noisy", 0, 100_000],
    ["dashboard", "dashboard", 0, 65_535]
  ] as const) {
    const text = values[flag] as string | undefined
    if (text === undefined) continue
    const value = Number(text)
    if (!/^\d+$/.test(text) || value < min || value > max) {
      return `--${flag} must be a whole number from ${min} to ${max.toLocaleString("en-US")}, not "${text}"`
    }
    flags[key] = value
  }
  // With the live view open, the run goes on until Ctrl-C unless a duration is given.
  const duration = flags.duration ?? (flags.dashboard === undefined ? 15 : undefined)
  return { ...flags, duration, otlp: values.otlp } as unknown as Flags
}

const percentile = (sorted: ReadonlyArray<number>, p: number): number =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]

/** A failure's name for the summary: the pool's error behind a SqlError, the SQL reason, or the tag. */
const errorName = (exit: Exit.Exit<unknown, SqlError>): string => {
  const error = Exit.findErrorOption(exit)
  if (error._tag === "None") return "defect"
  const poolError = PoolError.fromSqlError(error.value)
  return poolError?._tag ?? `SqlError/${error.value.reason._tag}`
}

const applicationName = "meshhook-worker"

/**
 * The pool settings the environment gives (`PGPOOL_*` only: the connection is the demo's own database and
 * role, whatever `PGHOST` or `PGUSER` say).
 */
const tuning = Effect.map(PoolConfig.config(), (options) =>
  Object.fromEntries(
    Object.entries(options).filter(([option]) =>
      PoolConfig.environment[option as keyof typeof PoolConfig.environment]?.startsWith("PGPOOL_")
    )
  ) as PoolConfig.Options)

/**
 * Backpressure from the pool (shedding load, or no connection in time): a worker waits before trying the step
 * again, longer each time in a row, from 200 ms to 10 s, jittered so that shed workers do not come back
 * together.
 */
const backpressure = Worker.whileBackpressure(Pool.backoff(200, 10_000))

/** Jobs the workers finished: the live view shows them per second. */
const jobsDone = Metric.counter("meshhook.worker.jobs", { description: "MeshHook jobs the workers finished", incremental: true })

/**
 * A noisy tenant's caller: as `project`, a transaction that reads the
 * tenant's event log and holds its connection for 20 ms, over and over.
 * Turned away, it waits and comes back, as the workers do (`policy`).
 */
const noisyCaller = (sql: SqlClient.SqlClient, project: string, policy: Worker.StepPolicy) =>
  sql.withTransaction(Effect.andThen(sql`SELECT count(*) FROM workflow_events`, sql`SELECT pg_sleep(0.02)`)).pipe(
    Tenant.with(project),
    policy,
    // Counted by the policy; the caller goes on.
    Effect.ignore,
    Effect.forever
  )

/**
 * The live view, served for the rest of the run, and the noisy tenant's callers (to be run), as asked for.
 */
const liveViewAndNoise = (flags: Flags, project: string, policy: Worker.StepPolicy) =>
  Effect.gen(function*() {
    if (flags.dashboard !== undefined) {
      // It logs its address.
      yield* Dashboard.make({ port: flags.dashboard, jobs: jobsDone })
    }
    if (flags.noisy > 0) console.log(`Noisy tenant: ${flags.noisy} more callers as project ${project}`)
    const sql = yield* SqlClient.SqlClient
    return Array.from({ length: flags.noisy }, () => noisyCaller(sql, project, policy))
  })

/** Completed by the first Ctrl-C: the run stops early and still prints its summary. */
const stopRequested = Deferred.makeUnsafe<void>()

const run = (flags: Flags, databaseUrl: Redacted.Redacted<string>) =>
  Effect.gen(function*() {
    console.log(`Creating MeshHook's schema and ${flags.tenants} tenants...`)
    // Nothing outside the demo's database is changed or left behind: its worker role is its own, dropped with it.
    const db = yield* Database.create(databaseUrl, { tenants: flags.tenants, runsPerTenant: 10, roleLifetime: "database" })
    const workerPool = Pool.layer({
      max: 8,
      ...(yield* tuning),
      url: db.workerUrl,
      name: "worker",
      applicationName,
      tenantSetting: Database.tenantSetting,
      requireTenant: true,
      tenantFormat: "uuid",
      ...(flags.max === undefined ? {} : { max: flags.max })
    })
    // The owner sees every tenant: for the live backend count and the isolation check.
    const adminPool = Pool.layer({ url: db.adminUrl, name: "monitor", max: 1 })
    const admin = yield* Layer.build(adminPool)
    const adminSql = yield* Effect.provide(Effect.service(SqlClient.SqlClient), admin)
    const workers = yield* Layer.build(workerPool)
    const pool = yield* Effect.provide(Effect.service(Pool.Pool), workers)

    const latencies: Array<number> = []
    const errors = new Map<string, number>()
    let done = 0
    let peakBackends = 0
    const httpCall = Effect.sleep(flags.httpMillis)
    let turnedAway = 0
    const count = (error: SqlError) =>
      Effect.sync(() => {
        if (Worker.isBackpressure(error)) return void turnedAway++
        const name = errorName(Exit.fail(error))
        errors.set(name, (errors.get(name) ?? 0) + 1)
      })
    // No more jobs in progress than the pool can serve and queue: the workers beyond wait here, in line, for a
    // job to finish, instead of being turned away and coming back (with 20,000 workers that churn starved the
    // event loop). A whole job, not each step: a claimed job must not queue behind others' claims.
    const inProgress = Semaphore.makeUnsafe(Math.min(Number.MAX_SAFE_INTEGER, pool.options.max + pool.options.maxWaiting))
    // Each turn away is counted, then waited out; other failures end the job.
    const counted: Worker.StepPolicy = (step) => backpressure(Effect.tapError(step, count))
    const job = inProgress.withPermit(Worker.runJob(httpCall, counted)).pipe(Effect.withSpan("meshhook.job"))
    const worker = Effect.gen(function*() {
      while (true) {
        const started = performance.now()
        const exit = yield* Effect.exit(job)
        if (Exit.isSuccess(exit)) {
          if (!exit.value) return yield* Effect.sleep(50)
          done++
          yield* Metric.update(jobsDone, 1)
          latencies.push(performance.now() - started)
        } else if (!Exit.hasFails(exit)) {
          const name = errorName(exit)
          errors.set(name, (errors.get(name) ?? 0) + 1)
        }
      }
    }).pipe(Effect.forever, Effect.provide(workers))

    const max = pool.options.max
    const noisy = yield* Effect.provide(liveViewAndNoise(flags, db.projects[0], counted), workers)
    const until = flags.duration === undefined ? "until Ctrl-C" : `for ${flags.duration} s`
    console.log(`Running ${flags.workers} workers ${until} on a pool of ${max}`)
    const started = performance.now()
    const fibers = yield* Effect.forkChild(
      Effect.all([...Array.from({ length: flags.workers }, () => worker), ...noisy], { concurrency: "unbounded", discard: true })
    )
    const backendsNow = Effect.map(
      adminSql<{ n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${applicationName}`,
      ([row]) => {
        peakBackends = Math.max(peakBackends, row.n)
        return row.n
      }
    )
    let last = { at: started, done: 0, checkouts: 0, waited: 0 }
    const progress = yield* Effect.forkChild(Effect.forever(Effect.gen(function*() {
      yield* Effect.sleep(1_000)
      const backends = yield* backendsNow
      const stats = yield* pool.stats
      const now = performance.now()
      const seconds = (now - started) / 1_000
      const failed = [...errors.values()].reduce((a, b) => a + b, 0)
      const lastSecond = (done - last.done) * 1_000 / (now - last.at)
      const checkouts = stats.checkouts - last.checkouts
      const meanWait = checkouts === 0 ? 0 : (stats.checkoutWaitMillis - last.waited) / checkouts
      last = { at: now, done, checkouts: stats.checkouts, waited: stats.checkoutWaitMillis }
      process.stdout.write(
        `  ${seconds.toFixed(0).padStart(3)} s  jobs ${String(done).padStart(7)}  ${lastSecond.toFixed(0).padStart(5)} jobs/s now` +
          ` (${(done / seconds).toFixed(0)} since the start)  pool used ${stats.used}/${stats.max} idle ${stats.idle} waiting ${String(stats.pending).padStart(3)}` +
          ` (${meanWait.toFixed(1)} ms per checkout)  backends ${backends}  turned away ${turnedAway}  errors ${failed}\n`
      )
    })))
    const duration = flags.duration === undefined ? Effect.never : Effect.sleep(flags.duration * 1_000)
    yield* Effect.raceFirst(duration, Deferred.await(stopRequested)).pipe(
      Effect.ensuring(Fiber.interrupt(progress)),
      // A run shorter than the progress line's second is sampled once before it ends.
      Effect.ensuring(Effect.ignore(backendsNow)),
      Effect.ensuring(Fiber.interrupt(fibers))
    )
    const seconds = (performance.now() - started) / 1_000

    const sorted = latencies.sort((a, b) => a - b)
    const crossTenant = yield* Effect.provide(Worker.crossTenantRows, admin)
    console.log(`\n${done} jobs in ${seconds.toFixed(1)} s: ${(done / seconds).toFixed(0)} jobs/s`)
    console.log(
      `job latency ms: p50 ${percentile(sorted, 0.5).toFixed(1)}  p95 ${percentile(sorted, 0.95).toFixed(1)}` +
        `  p99 ${percentile(sorted, 0.99).toFixed(1)}  max ${(sorted.at(-1) ?? 0).toFixed(1)}`
    )
    const { checkouts, checkoutWaitMillis } = yield* pool.stats
    const jobMillis = latencies.reduce((sum, millis) => sum + millis, 0)
    const waitShare = jobMillis === 0 ? 0 : Math.min(1, checkoutWaitMillis / jobMillis)
    console.log(
      `waiting for a connection: ${(checkouts === 0 ? 0 : checkoutWaitMillis / checkouts).toFixed(1)} ms per checkout, ` +
        (jobMillis === 0 ? "no job finished" : `${(waitShare * 100).toFixed(0)}% of the jobs' time`) +
        (waitShare > 0.5 ? ` (mostly waiting: the pool's ${max} connections, or the database behind them, are the limit)` : "")
    )
    console.log(`PostgreSQL connections used by the workers: at most ${peakBackends} (pool max ${max})`)
    if (turnedAway > 0) console.log(`turned away by the pool (backpressure), waited out and tried again: ${turnedAway} times`)
    console.log(`errors: ${errors.size === 0 ? "none" : [...errors].map(([name, n]) => `${name} ${n}`).join(", ")}`)
    console.log(`isolation check: ${crossTenant} cross-tenant rows ${crossTenant === 0 ? "(ok)" : "(VIOLATION)"}`)
    if (crossTenant !== 0) return yield* Effect.die(new Error("cross-tenant rows found"))
  })

const program = (flags: Flags) =>
  Effect.gen(function*() {
    const external = process.env.DATABASE_URL
    if (external !== undefined && external !== "") return yield* run(flags, Redacted.make(external))
    console.log("No DATABASE_URL: starting a throwaway PostgreSQL server...")
    const server = yield* PgServer.make({ durable: true })
    yield* run(flags, server.url())
  }).pipe(
    Effect.scoped,
    flags.otlp
      ? Effect.provide(Observability.layerConfig({ serviceName: "meshhook-worker", metricsIntervalMillis: 5_000 }))
      : (effect) => effect
  )

const flags = readFlags(process.argv.slice(2))
if (typeof flags === "string") {
  if (flags !== "") console.error(`${flags}\n`)
  console.error(usage)
  process.exit(flags === "" ? 0 : 2)
}
const fiber = Effect.runFork(program(flags))
let signals = 0
const stop = () => {
  // The first Ctrl-C ends the run early, with its summary; a second one stops at once.
  if (signals++ === 0 && Deferred.doneUnsafe(stopRequested, Effect.void)) {
    console.log("\nStopping early: finishing the summary, then draining the pool and stopping the server...")
    return
  }
  console.log("\nStopping now: draining the pool and stopping the server...")
  Effect.runFork(Fiber.interrupt(fiber))
}
process.on("SIGINT", stop)
process.on("SIGTERM", stop)
fiber.addObserver((exit) => {
  if (Exit.isSuccess(exit)) return
  if (Exit.hasInterrupts(exit)) {
    console.log("Stopped cleanly.")
    return
  }
  const error = Exit.findErrorOption(exit)
  console.error(`Failed: ${error._tag === "Some" ? (error.value as Error).message : String(exit.cause)}`)
  process.exitCode = 1
})
