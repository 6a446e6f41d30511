/**
 * MeshHook's workloads across a network: every contender reaches PostgreSQL
 * through a latency proxy (bench/latencyProxy.ts) adding a round trip of 0,
 * 0.5 and 2 ms, with a connection budget small enough that connections, not
 * this machine's CPU, are the limit. Contenders alternate round by round, the
 * starting one rotating; figures are medians over rounds.
 *
 * Per operation (a job, or a statement): client writes, round trips (writes
 * that found nothing unanswered on their connection) and Sync points,
 * connection-ms held (the proxy's view: from a borrower's first message to
 * the answer that leaves the connection idle) and the share of the
 * connections' time that is (near 100%: connections are the limit), Node CPU
 * and PostgreSQL CPU (its backends' utime + stime).
 *
 *   node bench/network.ts [--rounds 3] [--seconds 3] [--connections 2] [--workers 50]
 *                         [--rtt 0,0.5,2] [--only job,jobNatural,tenant] [--contenders meshhook,pg-tuned]
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import { parseArgs } from "node:util"
import * as Database from "../examples/meshhook/database.ts"
import * as Clients from "./clients.ts"
import { closedLoop, machine, median, plural } from "./harness.ts"
import * as LatencyProxy from "./latencyProxy.ts"
import * as MeshHook from "./meshhook.ts"

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    seconds: { type: "string", default: "3" },
    connections: { type: "string", default: "2" },
    workers: { type: "string", default: "50" },
    rtt: { type: "string", default: "0,0.5,2" },
    only: { type: "string", default: "job,jobNatural,tenant" },
    contenders: { type: "string" }
  }
})
const rounds = Number(values.rounds)
const roundMillis = Number(values.seconds) * 1_000
const connections = Number(values.connections)
const workers = Number(values.workers)
const rtts = values.rtt.split(",").map(Number)

interface Workload {
  readonly name: string
  readonly title: string
  readonly callers: number
  readonly op: (client: Clients.Client) => () => Promise<unknown>
}

interface ContenderKind {
  readonly name: string
  readonly applicationName: string
  readonly make: (target: Clients.Target) => Promise<Clients.Client>
}

const allKinds: ReadonlyArray<ContenderKind> = [
  { name: "@meshhook/pool", applicationName: "net-meshhook", make: (t) => Clients.meshhookPool(t) },
  { name: "@effect/sql-pg PgClient", applicationName: "net-pgclient", make: (t) => Clients.effectPgClient(t, false) },
  { name: "pg.Pool (defaults)", applicationName: "net-pg", make: (t) => Clients.nodePostgres(t, false) },
  { name: "pg.Pool (tuned)", applicationName: "net-pg-tuned", make: (t) => Clients.nodePostgres(t, true) },
  { name: "postgres.js", applicationName: "net-postgresjs", make: Clients.postgresJs }
]
/** `--contenders` picks by application name without its `net-` prefix. */
const kinds = values.contenders === undefined
  ? allKinds
  : allKinds.filter((kind) => values.contenders!.split(",").includes(kind.applicationName.slice(4)))

/** One round of one contender, per operation where it says so. */
interface Round {
  readonly opsPerSecond: number
  readonly p50Millis: number
  readonly p99Millis: number
  readonly errors: number
  readonly writesPerOp: number
  readonly roundTripsPerOp: number
  readonly syncsPerOp: number
  readonly heldMillisPerOp: number
  readonly turnaroundMillis: number
  readonly nodeCpuMillisPerOp: number
  readonly pgCpuMillisPerOp: number
  readonly nodeCpuPercent: number
  readonly pgCpuPercent: number
  readonly proxyCpuPercent: number
  readonly lateMillis: number
}

const scope = Effect.runSync(Scope.make())
const setup = await Effect.runPromise(Scope.provide(MeshHook.setup(), scope))
const workloads: ReadonlyArray<Workload> = [
  { name: "job", title: "MeshHook job, each transaction's statements sent together", callers: workers, op: MeshHook.job(false) },
  { name: "jobNatural", title: "MeshHook job, statements one after another (the natural way)", callers: workers, op: MeshHook.job(true) },
  { name: "tenant", title: "select-by-key under the row's tenant", callers: workers, op: MeshHook.selectByKeyInTenant(setup) }
].filter((w) => values.only.split(",").includes(w.name))

const ticksPerSecond = 100

/** CPU time of a contender's backends so far, in ms (pids found by application name). */
const pgCpuMillis = async (applicationName: string): Promise<number> => {
  const rows = await setup.admin.query({
    text: "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
    params: [applicationName]
  })
  let ticks = 0
  for (const row of rows) {
    try {
      const fields = Fs.readFileSync(`/proc/${row.pid}/stat`, "utf8").split(") ")[1].split(" ")
      ticks += Number(fields[11]) + Number(fields[12])
    } catch {
      // The backend ended in between.
    }
  }
  return ticks * 1_000 / ticksPerSecond
}

const proxied = (url: Redacted.Redacted<string>, port: number): Redacted.Redacted<string> => {
  const parsed = new URL(Redacted.value(url))
  parsed.hostname = "127.0.0.1"
  parsed.port = String(port)
  return Redacted.make(parsed.toString())
}

const measure = async (
  kind: ContenderKind,
  client: Clients.Client,
  workload: Workload,
  proxy: LatencyProxy.LatencyProxy,
  millis: number
): Promise<Round> => {
  await proxy.reset()
  const pgBefore = await pgCpuMillis(kind.applicationName)
  const result = await closedLoop(workload.op(client), workload.callers, millis)
  const counts = await proxy.counts()
  const pgCpu = await pgCpuMillis(kind.applicationName) - pgBefore
  const ops = Math.max(1, result.opsPerSecond * counts.wallMillis / 1_000)
  const nodeCpu = result.cpuPercent / 100 * counts.wallMillis
  return {
    opsPerSecond: result.opsPerSecond,
    p50Millis: result.p50Millis,
    p99Millis: result.p99Millis,
    errors: result.errors,
    writesPerOp: counts.clientWrites / ops,
    roundTripsPerOp: counts.roundTrips / ops,
    syncsPerOp: counts.syncs / ops,
    heldMillisPerOp: counts.heldMillis / ops,
    turnaroundMillis: counts.turnarounds === 0 ? Number.NaN : counts.turnaroundMillis / counts.turnarounds,
    nodeCpuMillisPerOp: nodeCpu / ops,
    pgCpuMillisPerOp: pgCpu / ops,
    nodeCpuPercent: result.cpuPercent,
    pgCpuPercent: pgCpu / counts.wallMillis * 100,
    proxyCpuPercent: counts.proxyCpuMillis / counts.wallMillis * 100,
    lateMillis: counts.lateMillis
  }
}

const fixed = (n: number, digits: number) => Number.isFinite(n) ? n.toFixed(digits) : "–"

const table = (results: ReadonlyArray<{ readonly name: string; readonly rounds: ReadonlyArray<Round> }>): string => {
  const pick = (rounds: ReadonlyArray<Round>, f: (r: Round) => number) => median(rounds.map(f))
  const base = pick(results[0].rounds, (r) => r.opsPerSecond)
  const lines = [
    "| contender | ops/s | vs first | p50 ms | p99 ms | p99/p50 | writes/op | round trips/op | syncs/op | held ms/op | client turnaround ms | connections busy | Node CPU ms/op | PG CPU ms/op | Node / PG / proxy CPU | errors |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  ]
  for (const { name, rounds } of results) {
    const m = (f: (r: Round) => number) => pick(rounds, f)
    const ops = m((r) => r.opsPerSecond)
    lines.push(
      `| ${name} | ${Math.round(ops).toLocaleString("en-US")} | ${fixed(ops / base, 2)}× | ${fixed(m((r) => r.p50Millis), 1)} | ` +
        `${fixed(m((r) => r.p99Millis), 1)} | ${fixed(m((r) => r.p99Millis / r.p50Millis), 1)} | ${fixed(m((r) => r.writesPerOp), 1)} | ` +
        `${fixed(m((r) => r.roundTripsPerOp), 1)} | ${fixed(m((r) => r.syncsPerOp), 1)} | ${fixed(m((r) => r.heldMillisPerOp), 2)} | ` +
        `${fixed(m((r) => r.turnaroundMillis), 3)} | ${fixed(m((r) => r.heldMillisPerOp * r.opsPerSecond / 10 / connections), 0)}% | ${fixed(m((r) => r.nodeCpuMillisPerOp), 3)} | ` +
        `${fixed(m((r) => r.pgCpuMillisPerOp), 3)} | ${fixed(m((r) => r.nodeCpuPercent), 0)}% / ${fixed(m((r) => r.pgCpuPercent), 0)}% / ` +
        `${fixed(m((r) => r.proxyCpuPercent), 0)}% | ${rounds.reduce((sum, r) => sum + r.errors, 0)} |`
    )
  }
  return lines.join("\n")
}

const log = (line: string) => console.error(line)
console.log(`Machine: ${machine()}. PostgreSQL 15 on the same machine, durable settings; ${connections} connections per contender, ` +
  `${workers} callers; ${plural(rounds, "round")} of ${roundMillis / 1000} s, alternating. \`npx node bench/network.ts ${process.argv.slice(2).join(" ")}\`\n`)
const proxies = new Map<number, LatencyProxy.LatencyProxy>()
try {
  for (const rtt of rtts) proxies.set(rtt, await LatencyProxy.start({ host: setup.server.host, port: setup.server.port }, rtt))
  for (const workload of workloads) {
    for (const rtt of rtts) {
      const proxy = proxies.get(rtt)!
      const target = (kind: ContenderKind): Clients.Target => ({
        url: proxied(setup.db.workerUrl, proxy.port),
        connections,
        applicationName: kind.applicationName,
        tenantSetting: Database.tenantSetting,
        warm: true
      })
      log(`${workload.title}, added round trip ${rtt} ms`)
      const clients = await Promise.all(kinds.map((kind) => kind.make(target(kind))))
      const results = kinds.map((kind) => ({ name: kind.name, rounds: [] as Array<Round> }))
      try {
        for (let i = 0; i < kinds.length; i++) await measure(kinds[i], clients[i], workload, proxy, 1_000)
        for (let round = 0; round < rounds; round++) {
          for (let j = 0; j < kinds.length; j++) {
            const i = (j + round) % kinds.length
            const r = await measure(kinds[i], clients[i], workload, proxy, roundMillis)
            results[i].rounds.push(r)
            log(`  ${round + 1}/${rounds} ${kinds[i].name.padEnd(26)} ${r.opsPerSecond.toFixed(0).padStart(6)}/s` +
              ` writes/op ${r.writesPerOp.toFixed(1)} round trips/op ${r.roundTripsPerOp.toFixed(1)} held ${r.heldMillisPerOp.toFixed(2)} ms/op turnaround ${r.turnaroundMillis.toFixed(3)} ms late ${r.lateMillis.toFixed(3)} ms` +
              ` cpu node ${r.nodeCpuPercent.toFixed(0)}% pg ${r.pgCpuPercent.toFixed(0)}% proxy ${r.proxyCpuPercent.toFixed(0)}%`)
          }
        }
      } finally {
        await Promise.all(clients.map((client) => client.close()))
      }
      const late = median(results.flatMap((r) => r.rounds.map((x) => x.lateMillis)))
      console.log(`### ${workload.title}: added round trip ${rtt} ms (the proxy was ${late.toFixed(3)} ms late per chunk, median)\n`)
      console.log(table(results) + "\n")
    }
  }
} finally {
  for (const proxy of proxies.values()) proxy.close()
  await Effect.runPromise(Scope.close(scope, Exit.void))
}
