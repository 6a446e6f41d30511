/**
 * The benchmark suite: `npm run bench` (full) or `npm run bench -- --quick`.
 *
 * Starts a throwaway PostgreSQL server with durable settings, loads pgbench's
 * tables and MeshHook's schema, and runs each workload with every contender
 * in alternation. A full run writes bench/results/full.json, docs/benchmarks.md
 * and the charts in docs/bench/; a quick or smoke run writes the same to a
 * temporary directory unless given `--publish` (or `--out`).
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as References from "effect/References"
import * as Scope from "effect/Scope"
import { spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { parseArgs } from "node:util"
import pg from "pg"
import { Observability } from "../src/otel/index.ts"
import * as PgServer from "../src/testing/PgServer.ts"
import * as Clients from "./clients.ts"
import * as Database from "../examples/meshhook/database.ts"
import { burst, closedLoop, compare, type Contender, machine, plural, type Summary } from "./harness.ts"
import * as MeshHook from "./meshhook.ts"
import * as Noisy from "./noisy.ts"
import { pgbench, pgbenchPath, runPgbench } from "./pgbench.ts"
import * as Report from "./report.ts"

const usage = `Usage: npm run bench [-- options]

  --quick          3 rounds of 2 s (a few minutes) instead of 5 rounds of 5 s
  --smoke          1 short round: checks that everything runs (CI)
  --only a,b       only these workloads: select1, selectByKey, selectByKeyTenant, meshhookJob, meshhookJobNatural, telemetry,
                   sizingTenant, sizingJob, spike, noisy
  --out DIR        write results/ and the report there
  --publish        write them into the tree (bench/results/, docs/benchmarks.md, docs/bench/): the default
                   for a full run; a quick or smoke run writes to a temporary directory unless given this
  --pin            PostgreSQL on the first core, this process (and pgbench) on the others, as on separate
                   machines (needs taskset)`

let flags
try {
  flags = parseArgs({
    options: {
      quick: { type: "boolean", default: false },
      smoke: { type: "boolean", default: false },
      only: { type: "string" },
      out: { type: "string" },
      publish: { type: "boolean", default: false },
      pin: { type: "boolean", default: false },
      help: { type: "boolean", default: false }
    }
  }).values
} catch (error) {
  console.error(`${(error as Error).message}\n\n${usage}`)
  process.exit(2)
}
if (flags.help) {
  console.error(usage)
  process.exit(0)
}
const mode = flags.smoke ? "smoke" : flags.quick ? "quick" : "full"
const settings = {
  smoke: { rounds: 1, roundMillis: 300, warmupMillis: 200, scale: 1 },
  quick: { rounds: 3, roundMillis: 2_000, warmupMillis: 1_000, scale: 2 },
  full: { rounds: 5, roundMillis: 5_000, warmupMillis: 2_000, scale: 10 }
}[mode]
const connections = 8
const callers = 64
const tenantSetting = "app.tenant_id"
const only = flags.only?.split(",")

const log = (line: string) => console.error(line)
const scope = Effect.runSync(Scope.make())
const server = await Effect.runPromise(Scope.provide(PgServer.make({ durable: true }), scope))
const superUrl = Redacted.value(server.url({ database: "bench" }))
const tenantRolePassword = "bench-tenant"
const tenantUrl = Redacted.value(server.url({ database: "bench", user: "bench_tenant", password: tenantRolePassword }))

const admin = new pg.Client({ connectionString: Redacted.value(server.url()) })
await admin.connect()
await admin.query("CREATE DATABASE bench")
await admin.end()
const bench = new pg.Client({ connectionString: superUrl })
await bench.connect()
if (flags.pin) {
  // Backends are forked by the postmaster and take its affinity; pgbench is forked by this process.
  const backend = (await bench.query("SELECT pg_backend_pid() AS pid")).rows[0].pid as number
  const postmaster = Number(Fs.readFileSync(`/proc/${backend}/stat`, "utf8").split(") ")[1].split(" ")[1])
  const parentOf = (pid: string) => {
    try {
      return Number(Fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")[1])
    } catch {
      return -1
    }
  }
  // Its children forked before now (background writers, this connection's backend) are pinned one by one.
  const children = Fs.readdirSync("/proc").filter((pid) => /^[0-9]+$/.test(pid) && parentOf(pid) === postmaster)
  const others = `1-${Os.cpus().length - 1}`
  const pins: Array<[cpus: string, pid: number]> = [
    ["0", postmaster],
    ...children.map((pid): [string, number] => ["0", Number(pid)]),
    [others, process.pid]
  ]
  for (const [cpus, pid] of pins) {
    const pinned = spawnSync("taskset", ["-a", "-p", "-c", cpus, String(pid)], { encoding: "utf8" })
    if (pinned.status !== 0) throw new Error(`taskset failed: ${pinned.stderr}`)
  }
  log(`Pinned: PostgreSQL on CPU 0, this process on CPUs ${others}`)
}

log(`Loading pgbench tables (scale ${settings.scale})...`)
const pgbenchAvailable = pgbenchPath() !== undefined
if (pgbenchAvailable) {
  const parsed = new URL(superUrl)
  await runPgbench(["-i", "-q", "-s", String(settings.scale)], {
    PATH: process.env.PATH,
    PGHOST: parsed.hostname,
    PGPORT: parsed.port,
    PGUSER: "postgres",
    PGPASSWORD: decodeURIComponent(parsed.password),
    PGDATABASE: "bench"
  })
} else {
  log("pgbench is not installed: loading its tables with SQL, and leaving it out of the comparison")
  await bench.query(`CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))`)
  await bench.query(`INSERT INTO pgbench_accounts SELECT g, (g - 1) / 100000 + 1, 0, '' FROM generate_series(1, ${settings.scale * 100000}) g`)
}
// A tenant per branch: the tenant role sees its branch's accounts only.
await bench.query(`CREATE ROLE bench_tenant LOGIN NOBYPASSRLS PASSWORD '${tenantRolePassword}'`)
await bench.query("GRANT SELECT ON pgbench_accounts TO bench_tenant")
await bench.query("ALTER TABLE pgbench_accounts ENABLE ROW LEVEL SECURITY")
await bench.query("ALTER TABLE pgbench_accounts FORCE ROW LEVEL SECURITY")
await bench.query(`CREATE POLICY tenant ON pgbench_accounts
  USING (bid = nullif(current_setting('${tenantSetting}', true), '')::int)`)
await bench.query("VACUUM ANALYZE pgbench_accounts")

const backendsOf = async (applicationName: string): Promise<number> =>
  (await bench.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1", [applicationName]))
    .rows[0].n

/** An OTLP/HTTP sink on loopback for the telemetry workload: it takes the exports and drops them. */
const sink = await new Promise<{ readonly url: string; readonly server: Http.Server }>((resolve) => {
  const server = Http.createServer((request, response) => {
    request.resume()
    request.on("end", () => response.writeHead(200, { "content-type": "application/json" }).end("{}"))
  })
  server.listen(0, "127.0.0.1", () => resolve({ url: `http://127.0.0.1:${(server.address() as Net.AddressInfo).port}`, server }))
})

log("Creating MeshHook's schema for the job workload...")
const meshhook = await Effect.runPromise(
  Scope.provide(Database.create(server.url(), { tenants: 100, runsPerTenant: 10 }), scope)
)

const accounts = settings.scale * 100_000
const randomAid = () => 1 + Math.floor(Math.random() * accounts)

const selectByKey = (aid: number): Clients.Sql => ({
  text: "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
  params: [aid]
})
/** Select-by-key as the tenant (pgbench branch) the account belongs to. */
const selectByKeyInTenant = (client: Clients.Client) => () => {
  const aid = randomAid()
  return client.inTenantTransaction(String(Math.floor((aid - 1) / 100_000) + 1), [selectByKey(aid)])
}
const { httpMillis } = MeshHook

/** The MeshHook job, its transactions' statements sent together (the pipelined way). */
const meshhookJob = MeshHook.job(false)

/** The fixed sizes the sizing workloads sweep, and the adaptive pool's `max`. */
const sweepSizes = [2, 4, 8, 16, 32, 64]
const sweepMax = 64

interface Workload {
  readonly name: string
  readonly title: string
  readonly url: string
  readonly tenantSetting: string
  readonly callers: number
  readonly op: (client: Clients.Client) => () => Promise<unknown>
  readonly pgbenchScript?: string
  /** A spike: each round starts a cold client, sends `callers` operations at once, and closes it. */
  readonly spike?: boolean
  /** Compare this pool with and without exporting telemetry, instead of the usual contenders. */
  readonly telemetry?: boolean
  /** Compare this pool at fixed sizes with the adaptive pool, instead of the usual contenders. */
  readonly sizing?: boolean
}

const workloads: ReadonlyArray<Workload> = [
  {
    name: "select1",
    title: "SELECT 1",
    url: superUrl,
    tenantSetting,
    callers,
    op: (client) => () => client.query({ text: "SELECT 1", params: [] }),
    pgbenchScript: "SELECT 1;\n"
  },
  {
    name: "selectByKey",
    title: "select-by-key (pgbench_accounts)",
    url: superUrl,
    tenantSetting,
    callers,
    op: (client) => () => client.query(selectByKey(randomAid())),
    pgbenchScript: `\\set aid random(1, ${accounts})\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n`
  },
  {
    name: "selectByKeyTenant",
    title: "select-by-key under a tenant (set per statement, RLS on)",
    url: tenantUrl,
    tenantSetting,
    callers,
    op: selectByKeyInTenant,
    pgbenchScript: `\\set aid random(1, ${accounts})
\\set bid (:aid - 1) / 100000 + 1
BEGIN;
SELECT set_config('${tenantSetting}', :bid::text, true);
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
END;
`
  },
  {
    name: "meshhookJob",
    title: `MeshHook job (claim, 2 tenant transactions around a ${httpMillis} ms HTTP call; 200 workers)`,
    url: Redacted.value(meshhook.workerUrl),
    tenantSetting: Database.tenantSetting,
    callers: 200,
    op: meshhookJob,
    pgbenchScript: Fs.readFileSync(new URL("./meshhook-job.pgbench", import.meta.url), "utf8")
  },
  {
    name: "meshhookJobNatural",
    title: `MeshHook job written the natural way (each statement awaited in turn); 200 workers; pgbench without the HTTP call: the database's limit`,
    url: Redacted.value(meshhook.workerUrl),
    tenantSetting: Database.tenantSetting,
    callers: 200,
    op: MeshHook.job(true),
    pgbenchScript: Fs.readFileSync(new URL("./meshhook-job.pgbench", import.meta.url), "utf8").replace(/^\\sleep .*\n/m, "")
  },
  {
    name: "telemetry",
    title: "select-by-key with telemetry: no exporter, Effect's tracing disabled, OTLP export of 10% of traces, of every trace",
    url: superUrl,
    tenantSetting,
    callers,
    op: (client) => () => client.query(selectByKey(randomAid())),
    telemetry: true
  },
  {
    name: "sizingTenant",
    title: `sizing: select-by-key under a tenant at fixed sizes ${sweepSizes.join(", ")} and adaptive (max ${sweepMax})`,
    url: tenantUrl,
    tenantSetting,
    callers,
    op: selectByKeyInTenant,
    sizing: true
  },
  {
    name: "sizingJob",
    title: `sizing: MeshHook job at fixed sizes ${sweepSizes.join(", ")} and adaptive (max ${sweepMax}); 200 workers`,
    url: Redacted.value(meshhook.workerUrl),
    tenantSetting: Database.tenantSetting,
    callers: 200,
    op: meshhookJob,
    sizing: true
  },
  {
    name: "spike",
    title: "spike: 500 callers at once on a cold pool, 2 ms of server work each",
    url: superUrl,
    tenantSetting,
    callers: 500,
    op: (client) => () => client.query({ text: "SELECT pg_sleep(0.002)", params: [] }),
    spike: true
  }
]

/**
 * The adaptive pool learns its size under steady load, and the rounds of a
 * comparison are short and interleaved: it gets a learning period of its own
 * before them (fixed sizes have nothing to learn).
 */
const learningMillis = { smoke: 0, quick: 20_000, full: 40_000 }[mode]
const learning = (contender: Contender, millis: number): Contender => ({
  ...contender,
  setup: async () => {
    const prepared = await contender.setup()
    if (millis > 0) await prepared.round(millis)
    return prepared
  }
})

const clientContenders = (workload: Workload): Array<Contender> => {
  const target = (applicationName: string): Clients.Target => ({
    url: Redacted.make(workload.url),
    connections,
    applicationName,
    tenantSetting: workload.tenantSetting,
    warm: !workload.spike
  })
  const inProcess = (name: string, applicationName: string, make: (t: Clients.Target) => Promise<Clients.Client>): Contender => ({
    name,
    applicationName,
    setup: async () => {
      if (workload.spike) {
        // Each round is a cold start: a new client, every caller at once.
        return {
          round: async () => {
            const client = await make(target(applicationName))
            try {
              return await burst(workload.op(client), workload.callers)
            } finally {
              await client.close()
            }
          },
          close: async () => {}
        }
      }
      const client = await make(target(applicationName))
      const op = workload.op(client)
      return { round: (millis) => closedLoop(op, workload.callers, millis), close: client.close }
    }
  })
  if (workload.telemetry) {
    const exporting = (ratio: number) =>
      Observability.layer({ endpoint: sink.url, serviceName: "bench", traceSampleRatio: ratio, metricsIntervalMillis: 5_000 })
    return [
      inProcess("@meshhook/pool, no exporter", "bench-otel-off", (t) => Clients.meshhookPool(t)),
      inProcess("@meshhook/pool, tracing disabled", "bench-otel-none", (t) =>
        Clients.meshhookPool(t, Layer.succeed(References.TracerEnabled, false))),
      inProcess("@meshhook/pool, OTLP, 10% of traces", "bench-otel-10", (t) => Clients.meshhookPool(t, exporting(0.1))),
      inProcess("@meshhook/pool, OTLP, every trace", "bench-otel-all", (t) => Clients.meshhookPool(t, exporting(1)))
    ]
  }
  if (workload.sizing) {
    return [
      ...sweepSizes.map((size) =>
        inProcess(`@meshhook/pool, fixed ${size}`, `bench-fixed-${size}`, (t) => Clients.meshhookPool({ ...t, connections: size }))
      ),
      learning(
        inProcess("@meshhook/pool, adaptive", "bench-adaptive", (t) =>
          Clients.meshhookPool(t, Layer.empty, { sizing: "adaptive", min: 1, max: sweepMax })),
        learningMillis
      )
    ]
  }
  const list: Array<Contender> = [
    inProcess("@meshhook/pool", "bench-meshhook", Clients.meshhookPool),
    inProcess("@effect/sql-pg PgClient", "bench-pgclient", (t) => Clients.effectPgClient(t, false)),
    inProcess("PgClient multiplex", "bench-pgclient-mx", (t) => Clients.effectPgClient(t, true)),
    inProcess("pg.Pool (defaults)", "bench-pg", (t) => Clients.nodePostgres(t, false)),
    inProcess("pg.Pool (tuned)", "bench-pg-tuned", (t) => Clients.nodePostgres(t, true)),
    inProcess("postgres.js", "bench-postgresjs", Clients.postgresJs)
  ]
  if (pgbenchAvailable && workload.pgbenchScript !== undefined) {
    list.push(pgbench(`pgbench -c ${connections}`, {
      url: workload.url,
      connections,
      applicationName: "bench-pgbench"
    }, workload.pgbenchScript))
  }
  return list
}

const results: Record<string, { readonly title: string; readonly summaries: ReadonlyArray<Summary> }> = {}
let noisy: Array<Noisy.NoisySummary> | undefined
try {
  for (const workload of workloads) {
    if (only !== undefined && !only.includes(workload.name)) continue
    log(`\n${workload.title}: ${plural(settings.rounds, "round")} of ${workload.spike ? "one burst" : `${settings.roundMillis / 1000} s`}, ${workload.callers} callers, ${connections} connections`)
    const summaries = await compare(clientContenders(workload), { ...settings, backendsOf, log })
    results[workload.name] = { title: workload.title, summaries }
    console.log(`\n${workload.title}\n${Report.table(summaries)}`)
  }
  if (only === undefined || only.includes("noisy")) {
    log(`\nnoisy neighbour: ${plural(settings.rounds, "round")}, phases of ${settings.roundMillis / 1000} s`)
    noisy = await Noisy.run(Redacted.make(superUrl), settings.rounds, settings.roundMillis, log)
    console.log(`\nnoisy neighbour\n${Noisy.table(noisy)}`)
  }
} finally {
  sink.server.close()
  await bench.end()
  await Effect.runPromise(Scope.close(scope, Exit.void))
}

const record: Report.Record = {
  mode,
  date: new Date().toISOString(),
  machine: machine(),
  settings: { ...settings, connections, callers },
  workloads: results,
  ...(noisy === undefined ? {} : { noisy })
}
// Only a full run (or an explicit --publish) rewrites the published page and charts.
const publish = flags.out === undefined && (flags.publish || mode === "full")
const outDir = flags.out ?? (publish ? undefined : Fs.mkdtempSync(Path.join(Os.tmpdir(), `meshhook-bench-${mode}-`)))
const benchDir = outDir ?? import.meta.dirname
const docsDir = outDir ?? Path.join(import.meta.dirname, "..", "docs")
Fs.mkdirSync(Path.join(benchDir, "results"), { recursive: true })
Fs.writeFileSync(Path.join(benchDir, "results", `${mode}.json`), JSON.stringify(record, null, 2))
Report.write(record, docsDir, benchDir)
log(`\nWrote ${Path.join(benchDir, "results", `${mode}.json`)} and ${Path.join(docsDir, "benchmarks.md")}`)
