/**
 * This pool against an earlier version of itself, in one run, alternating:
 * what a change costs or gains on the workloads the issues name.
 *
 *   git worktree add .tmp/before <commit> && ln -s "$PWD/node_modules" .tmp/before/node_modules
 *   node bench/beforeAfter.ts --baseline .tmp/before [--rounds 5] [--seconds 5] [--only tenant,job,jobNatural,key]
 *
 * Workloads (MeshHook's schema with RLS, 100 tenants, the worker role, 8
 * connections, durable commits): select-by-key on `workflow_runs` under the
 * row's tenant (64 callers); the same without a tenant as the owner (64
 * callers); the MeshHook job with each transaction's statements sent
 * together (`job`) and one after another (`jobNatural`), 200 workers.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import { randomBytes } from "node:crypto"
import * as Path from "node:path"
import { parseArgs } from "node:util"
import * as Database from "../examples/meshhook/database.ts"
import * as Job from "../examples/meshhook/job.ts"
import * as PgServer from "../src/testing/PgServer.ts"
import * as Clients from "./clients.ts"
import { closedLoop, compare, type Contender, machine } from "./harness.ts"
import { table } from "./report.ts"

const { values } = parseArgs({
  options: {
    baseline: { type: "string" },
    rounds: { type: "string", default: "5" },
    seconds: { type: "string", default: "5" },
    only: { type: "string" }
  }
})
if (values.baseline === undefined) {
  console.error("Usage: node bench/beforeAfter.ts --baseline DIR [--rounds 5] [--seconds 5] [--only tenant,key,job,jobNatural]")
  process.exit(2)
}
const baselineDir = Path.resolve(values.baseline)
const before: Clients.PoolModules = {
  Pool: await import(Path.join(baselineDir, "src/Pool.ts")),
  Tenant: await import(Path.join(baselineDir, "src/Tenant.ts"))
}
const settings = { rounds: Number(values.rounds), roundMillis: Number(values.seconds) * 1_000, warmupMillis: 2_000 }
const only = values.only?.split(",")
const connections = 8
const log = (line: string) => console.error(line)

const scope = Effect.runSync(Scope.make())
const server = await Effect.runPromise(Scope.provide(PgServer.make({ durable: true }), scope))
const db = await Effect.runPromise(Scope.provide(Database.create(server.url(), { tenants: 100, runsPerTenant: 10 }), scope))
const admin = await Clients.nodePostgres({
  url: db.adminUrl,
  connections: 1,
  applicationName: "bench-admin",
  tenantSetting: Database.tenantSetting,
  warm: false
}, false)
const runs = (await admin.query({ text: "SELECT id::text AS id, project_id::text AS project FROM workflow_runs", params: [] })) as
  ReadonlyArray<{ readonly id: string; readonly project: string }>
const pick = () => runs[Math.floor(Math.random() * runs.length)]
const byKey = (id: string): Clients.Sql => ({ text: "SELECT status, step FROM workflow_runs WHERE id = $1", params: [id] })

const httpMillis = 20
const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))
const job = (client: Clients.Client, sequential: boolean) => async () => {
  const claimed = Job.claimed(await client.query(Job.claim))
  if (claimed === undefined) return sleep(httpMillis)
  await client.inTenantTransaction(claimed.projectId, Job.startStep(claimed), sequential)
  await sleep(httpMillis)
  await client.inTenantTransaction(claimed.projectId, Job.finishStep(claimed, randomBytes(1024).toString("hex")), sequential)
}

interface Workload {
  readonly name: string
  readonly title: string
  readonly url: Redacted.Redacted<string>
  readonly callers: number
  readonly op: (client: Clients.Client) => () => Promise<unknown>
}

const workloads: ReadonlyArray<Workload> = [
  {
    name: "tenant",
    title: "select-by-key under the row's tenant (RLS), 64 callers",
    url: db.workerUrl,
    callers: 64,
    op: (client) => () => {
      const run = pick()
      return client.inTenantTransaction(run.project, [byKey(run.id)])
    }
  },
  {
    name: "key",
    title: "select-by-key without a tenant (table owner), 64 callers",
    url: db.adminUrl,
    callers: 64,
    op: (client) => () => client.query(byKey(pick().id))
  },
  {
    name: "job",
    title: "MeshHook job, each transaction's statements sent together, 200 workers",
    url: db.workerUrl,
    callers: 200,
    op: (client) => job(client, false)
  },
  {
    name: "jobNatural",
    title: "MeshHook job, statements one after another (the natural way), 200 workers",
    url: db.workerUrl,
    callers: 200,
    op: (client) => job(client, true)
  }
]

const contender = (workload: Workload, name: string, modules: Clients.PoolModules): Contender => ({
  name,
  applicationName: name,
  setup: async () => {
    const client = await Clients.meshhookPool(
      { url: workload.url, connections, applicationName: name, tenantSetting: Database.tenantSetting, warm: true },
      undefined,
      {},
      modules
    )
    const op = workload.op(client)
    return { round: (millis) => closedLoop(op, workload.callers, millis), close: client.close }
  }
})

const backendsOf = async (applicationName: string) =>
  ((await admin.query({
    text: "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1",
    params: [applicationName]
  }))[0] as { n: number }).n

try {
  console.log(`Machine: ${JSON.stringify(machine())}\nBaseline: ${baselineDir}\n`)
  for (const workload of workloads) {
    if (only !== undefined && !only.includes(workload.name)) continue
    log(`\n${workload.title}: ${settings.rounds} rounds of ${settings.roundMillis / 1000} s`)
    const summaries = await compare(
      [contender(workload, "after (this checkout)", { Pool: await import("../src/Pool.ts"), Tenant: await import("../src/Tenant.ts") }), contender(workload, "before (baseline)", before)],
      { ...settings, backendsOf, log }
    )
    console.log(`\n${workload.title}\n${table(summaries)}`)
  }
} finally {
  await admin.close()
  await Effect.runPromise(Scope.close(scope, Exit.void))
}
