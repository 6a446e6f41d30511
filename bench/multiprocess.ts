/**
 * The multi-process check: several worker processes share one PostgreSQL,
 * directly (each pool opens its own connections: `max` each, or the
 * PgBouncer budget split between them) and through one PgBouncer in
 * transaction mode (the pools share its server connections). It measures
 * jobs/s, counts the server connections the workers held at peak, and checks
 * that no row crossed tenants.
 *
 *   node bench/multiprocess.ts [--processes 4] [--max 8] [--budget 8] [--seconds 10] [--rounds 2]
 *
 * Modes alternate, round by round; medians are reported.
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import { parseArgs } from "node:util"
import * as Database from "../examples/meshhook/database.ts"
import * as Job from "../examples/meshhook/job.ts"
import * as PgBouncer from "../src/testing/PgBouncer.ts"
import * as PgServer from "../src/testing/PgServer.ts"

const { values } = parseArgs({
  options: {
    processes: { type: "string", default: "4" },
    max: { type: "string", default: "8" },
    budget: { type: "string", default: "8" },
    workers: { type: "string", default: "50" },
    seconds: { type: "string", default: "10" },
    rounds: { type: "string", default: "2" },
    out: { type: "string" }
  }
})
const processes = Number(values.processes)
const poolMax = Number(values.max)
const budget = Number(values.budget)
const workersPerProcess = Number(values.workers)
const durationMillis = Number(values.seconds) * 1_000
const rounds = Number(values.rounds)
const httpMillis = 20
const log = (line: string) => console.error(line)

const scope = Effect.runSync(Scope.make())
const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.provide(effect, scope))

const server = await run(PgServer.make({ durable: true }))
log("Creating MeshHook's schema...")
const db = await run(Database.create(server.url(), { tenants: 100, runsPerTenant: 10 }))
const bouncer = await run(PgBouncer.make({
  upstream: { host: server.host, port: server.port, user: server.user, password: server.password },
  defaultPoolSize: budget,
  maxClientConn: processes * poolMax * 2
}))
const admin = await run(PgConnection.make({ url: db.adminUrl }))
const worker = new URL(Redacted.value(db.workerUrl))
/**
 * How the processes reach the server: directly with `max` each, directly with the PgBouncer budget split
 * between them (the same server connections as through PgBouncer, without it), and through PgBouncer.
 */
const modes = {
  direct: { url: worker.toString(), behindPooler: "none", max: poolMax },
  directBudget: { url: worker.toString(), behindPooler: "none", max: Math.max(1, Math.floor(budget / processes)) },
  pgbouncer: {
    url: Redacted.value(bouncer.url({ user: worker.username, password: decodeURIComponent(worker.password), database: db.database })),
    behindPooler: "transaction",
    max: poolMax
  }
} as const
type Mode = keyof typeof modes
const modeNames = Object.keys(modes) as Array<Mode>

/** Server connections of the worker role, now. */
const serverConnections = () =>
  Effect.runPromise(Effect.map(
    admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND usename = 'mh_worker'", [db.database]),
    (result) => result.rows[0].n as number
  ))

interface Outcome {
  readonly jobs: number
  readonly errors: Record<string, number>
}

const child = (mode: Mode) =>
  new Promise<Outcome>((resolve, reject) => {
    const proc = spawn(process.execPath, [new URL("./multiprocess-worker.ts", import.meta.url).pathname], {
      env: {
        ...process.env,
        WORKER_URL: modes[mode].url,
        BEHIND_POOLER: modes[mode].behindPooler,
        POOL_MAX: String(modes[mode].max),
        WORKERS: String(workersPerProcess),
        DURATION_MS: String(durationMillis),
        HTTP_MS: String(httpMillis)
      },
      stdio: ["ignore", "pipe", "inherit"]
    })
    let out = ""
    proc.stdout.on("data", (chunk) => out += chunk)
    proc.on("exit", (code) => code === 0 ? resolve(JSON.parse(out.trim().split("\n").pop()!)) : reject(new Error(`worker exited with ${code}`)))
  })

interface Round {
  readonly jobsPerSecond: number
  readonly peakServerConnections: number
  readonly errors: Record<string, number>
}

/**
 * Closes PgBouncer's server connections left from a previous round, so that a round counts only its own
 * (KILL drops them and makes new clients wait; RESUME lets them in again).
 */
const dropPooledConnections = async () => {
  await Effect.runPromise(Effect.andThen(bouncer.admin(`KILL ${db.database}`), bouncer.admin(`RESUME ${db.database}`)))
  while (await serverConnections() > 0) await new Promise((resolve) => setTimeout(resolve, 50))
}

const round = async (mode: Mode): Promise<Round> => {
  await dropPooledConnections()
  let peak = 0
  let sampling = true
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, await serverConnections())
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  })()
  const outcomes = await Promise.all(Array.from({ length: processes }, () => child(mode)))
  // Each process works for the round's duration once it has started.
  const seconds = durationMillis / 1_000
  sampling = false
  await sampler
  const errors: Record<string, number> = {}
  for (const outcome of outcomes) for (const [name, n] of Object.entries(outcome.errors)) errors[name] = (errors[name] ?? 0) + n
  return { jobsPerSecond: outcomes.reduce((sum, o) => sum + o.jobs, 0) / seconds, peakServerConnections: peak, errors }
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const results = Object.fromEntries(modeNames.map((mode) => [mode, [] as Array<Round>])) as Record<Mode, Array<Round>>
try {
  for (let i = 0; i < rounds; i++) {
    // Each round starts with the next mode, so that none always runs first.
    for (const mode of modeNames.map((_, k) => modeNames[(i + k) % modeNames.length])) {
      const r = await round(mode)
      results[mode].push(r)
      log(`  ${i + 1}/${rounds} ${mode.padEnd(12)} ${r.jobsPerSecond.toFixed(0).padStart(6)} jobs/s  peak server connections ${r.peakServerConnections}  errors ${JSON.stringify(r.errors)}`)
    }
  }
  const crossTenant = await Effect.runPromise(admin.query(Job.crossTenantRows.text, []))
  const summary = {
    machine: `${Os.cpus().length} × ${Os.cpus()[0]?.model ?? "cpu"}, ${Math.round(Os.totalmem() / 2 ** 30)} GiB, Node ${process.version}`,
    date: new Date().toISOString(),
    processes,
    poolMaxPerProcess: poolMax,
    pgbouncerServerBudget: budget,
    workersPerProcess,
    secondsPerRound: durationMillis / 1_000,
    crossTenantRows: crossTenant.rows[0].n,
    modes: Object.fromEntries(Object.entries(results).map(([mode, rs]) => [mode, {
      jobsPerSecond: Math.round(median(rs.map((r) => r.jobsPerSecond))),
      peakServerConnections: Math.max(...rs.map((r) => r.peakServerConnections)),
      errors: rs.map((r) => r.errors)
    }]))
  }
  console.log(JSON.stringify(summary, null, 2))
  if (values.out !== undefined) Fs.writeFileSync(values.out, JSON.stringify(summary, null, 2) + "\n")
  if (summary.crossTenantRows !== 0) process.exitCode = 1
} finally {
  await Effect.runPromise(Scope.close(scope, Exit.void))
}
