/**
 * A small job worker on @meshhook/pool: the README's first command.
 *
 * Without DATABASE_URL it starts a throwaway PostgreSQL server (the same one
 * the tests use), creates a job table, and runs worker fibers that claim a
 * job, make a simulated 20 ms HTTP call outside any transaction, and record
 * the result in a transaction. It prints progress every second and a summary
 * at the end. Ctrl-C stops it cleanly.
 *
 *   npm start -- --workers 100 --duration 10 --max 8
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as SqlClient from "effect/sql/SqlClient"
import { parseArgs } from "node:util"
import * as Pool from "../src/Pool.ts"
import * as PoolError from "../src/PoolError.ts"
import * as PgServer from "../src/testing/PgServer.ts"

const usage = `Usage: npm start -- [--workers N] [--duration SECONDS] [--max N] [--jobs N]

  --workers   worker fibers (default 100)
  --duration  seconds to run (default 10)
  --max       pool size (default 8)
  --jobs      jobs queued at start (default 100000)

Set DATABASE_URL to use an existing PostgreSQL instead of a throwaway one.`

interface Flags {
  readonly workers: number
  readonly duration: number
  readonly max: number
  readonly jobs: number
}

const readFlags = (argv: ReadonlyArray<string>): Flags => {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      workers: { type: "string", default: "100" },
      duration: { type: "string", default: "10" },
      max: { type: "string", default: "8" },
      jobs: { type: "string", default: "100000" },
      help: { type: "boolean", default: false }
    },
    strict: true
  })
  if (values.help) {
    console.log(usage)
    process.exit(0)
  }
  const positive = (name: keyof Flags): number => {
    const value = Number(values[name])
    if (!Number.isInteger(value) || value <= 0) throw new Error(`--${name} must be a positive whole number, not "${values[name]}"`)
    return value
  }
  return { workers: positive("workers"), duration: positive("duration"), max: positive("max"), jobs: positive("jobs") }
}

const schema = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`DROP TABLE IF EXISTS example_jobs, example_events`
  yield* sql`CREATE TABLE example_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status text NOT NULL DEFAULT 'queued',
    payload jsonb NOT NULL
  )`
  yield* sql`CREATE INDEX ON example_jobs (id) WHERE status = 'queued'`
  yield* sql`CREATE TABLE example_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id bigint NOT NULL,
    type text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
  )`
})

const seed = (jobs: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql`INSERT INTO example_jobs (payload)
      SELECT jsonb_build_object('n', g, 'body', md5(g::text)) FROM generate_series(1, ${jobs}) g`
  })

/** One job: claim, call out with no connection held, record the result. */
const runJob = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const claimed = yield* sql<{ id: string }>`
    UPDATE example_jobs SET status = 'running'
    WHERE id = (SELECT id FROM example_jobs WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING id`
  if (claimed.length === 0) return false
  const id = claimed[0].id
  yield* Effect.sleep(20) // the external HTTP call: no connection, no transaction
  yield* sql.withTransaction(Effect.gen(function*() {
    yield* sql`INSERT INTO example_events (job_id, type) VALUES (${id}, 'http_succeeded')`
    yield* sql`UPDATE example_jobs SET status = 'done' WHERE id = ${id}`
  }))
  return true
})

const percentile = (sorted: ReadonlyArray<number>, p: number): number =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]

const main = (flags: Flags) =>
  Effect.gen(function*() {
    const pool = yield* Pool.Pool
    yield* schema
    yield* seed(flags.jobs)
    const latencies: Array<number> = []
    const errors = new Map<string, number>()
    let done = 0
    const worker = Effect.gen(function*() {
      while (true) {
        const started = performance.now()
        const exit = yield* Effect.exit(runJob)
        if (Exit.isSuccess(exit)) {
          if (!exit.value) return
          done++
          latencies.push(performance.now() - started)
        } else {
          const error = Exit.findErrorOption(exit)
          const tag = error._tag === "Some"
            ? (PoolError.fromSqlError(error.value as never)?._tag ?? (error.value as { _tag?: string })._tag ?? "Error")
            : "Defect"
          errors.set(tag, (errors.get(tag) ?? 0) + 1)
        }
      }
    })
    const started = performance.now()
    const workers = yield* Effect.forkChild(Effect.all(Array.from({ length: flags.workers }, () => worker), {
      concurrency: "unbounded",
      discard: true
    }))
    const progress = yield* Effect.forkChild(Effect.forever(Effect.gen(function*() {
      yield* Effect.sleep(1_000)
      const stats = yield* pool.stats
      const seconds = (performance.now() - started) / 1_000
      process.stdout.write(
        `  ${seconds.toFixed(0).padStart(3)} s  jobs ${String(done).padStart(7)}  ${(done / seconds).toFixed(0).padStart(6)} jobs/s` +
          `  pool used ${stats.used}/${stats.max} idle ${stats.idle} waiting ${stats.pending}\n`
      )
    })))
    yield* Effect.raceFirst(Fiber.join(workers), Effect.sleep(flags.duration * 1_000))
    yield* Fiber.interruptAll([workers, progress])
    const seconds = (performance.now() - started) / 1_000
    const sorted = latencies.sort((a, b) => a - b)
    const sql = yield* SqlClient.SqlClient
    const [check] = yield* sql<{ done: number; events: number }>`
      SELECT (SELECT count(*)::int FROM example_jobs WHERE status = 'done') AS done,
             (SELECT count(*)::int FROM example_events) AS events`
    console.log(`\n${done} jobs in ${seconds.toFixed(1)} s: ${(done / seconds).toFixed(0)} jobs/s`)
    console.log(
      `job latency ms: p50 ${percentile(sorted, 0.5).toFixed(1)}  p99 ${percentile(sorted, 0.99).toFixed(1)}  max ${
        (sorted.at(-1) ?? 0).toFixed(1)
      }`
    )
    console.log(`errors: ${errors.size === 0 ? "none" : [...errors].map(([tag, n]) => `${tag} ${n}`).join(", ")}`)
    console.log(`database: ${check.done} jobs done, ${check.events} events recorded`)
  })

const program = (flags: Flags) =>
  Effect.gen(function*() {
    const external = process.env.DATABASE_URL
    let url: Redacted.Redacted<string>
    if (external !== undefined && external !== "") {
      url = Redacted.make(external)
    } else {
      console.log("No DATABASE_URL: starting a throwaway PostgreSQL server...")
      url = (yield* PgServer.make()).url()
    }
    console.log(`Running ${flags.workers} workers for ${flags.duration} s on a pool of ${flags.max}`)
    yield* main(flags).pipe(Effect.provide(Pool.layer({ url, max: flags.max, name: "example-worker" }).pipe(Layer.orDie)))
  }).pipe(Effect.scoped)

let flags: Flags
try {
  flags = readFlags(process.argv.slice(2))
} catch (error) {
  console.error(`${(error as Error).message}\n\n${usage}`)
  process.exit(2)
}
const fiber = Effect.runFork(program(flags))
const stop = () => Effect.runFork(Fiber.interrupt(fiber))
process.once("SIGINT", stop)
process.once("SIGTERM", stop)
fiber.addObserver((exit) => {
  if (Exit.isFailure(exit) && !Exit.hasInterrupts(exit)) {
    console.error(String(Exit.findErrorOption(exit)._tag === "Some" ? Exit.findErrorOption(exit) : exit.cause))
    process.exitCode = 1
  } else if (Exit.isFailure(exit)) {
    console.log("\nStopped; the pool is drained and the server stopped.")
  }
})
