/**
 * This pool against an earlier version of itself, in one run, alternating:
 * what a change costs or gains on the workloads the issues name.
 *
 *   git worktree add .tmp/before <commit> && ln -s "$PWD/node_modules" .tmp/before/node_modules
 *   node bench/beforeAfter.ts --baseline .tmp/before [--rounds 5] [--seconds 5] [--only tenant,key,job,jobNatural]
 *
 * Workloads (bench/meshhook.ts: MeshHook's schema with RLS, 100 tenants,
 * durable commits; 8 connections): select-by-key on `workflow_runs` under
 * the row's tenant as the worker role (64 callers), the same without a
 * tenant as the owner (64 callers), and the MeshHook job with each
 * transaction's statements sent together (`job`) or one after another
 * (`jobNatural`), 200 workers.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Path from "node:path"
import { parseArgs } from "node:util"
import * as Database from "../examples/meshhook/database.ts"
import * as Clients from "./clients.ts"
import { closedLoop, compare, type Contender, machine, plural } from "./harness.ts"
import * as MeshHook from "./meshhook.ts"
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
const versions: ReadonlyArray<readonly [string, Clients.PoolModules]> = [
  ["after (this checkout)", { Pool: await import("../src/Pool.ts"), Tenant: await import("../src/Tenant.ts") }],
  ["before (baseline)", {
    Pool: await import(Path.join(baselineDir, "src/Pool.ts")),
    Tenant: await import(Path.join(baselineDir, "src/Tenant.ts"))
  }]
]
const settings = { rounds: Number(values.rounds), roundMillis: Number(values.seconds) * 1_000, warmupMillis: 2_000 }
const only = values.only?.split(",")
const log = (line: string) => console.error(line)

const scope = Effect.runSync(Scope.make())
const setup = await Effect.runPromise(Scope.provide(MeshHook.setup(), scope))
const workloads = [
  { name: "tenant", title: "select-by-key under the row's tenant (RLS), 64 callers", url: setup.db.workerUrl, callers: 64, op: MeshHook.selectByKeyInTenant(setup) },
  { name: "key", title: "select-by-key without a tenant (table owner), 64 callers", url: setup.db.adminUrl, callers: 64, op: MeshHook.selectByKey(setup) },
  { name: "job", title: "MeshHook job, each transaction's statements sent together, 200 workers", url: setup.db.workerUrl, callers: 200, op: MeshHook.job(false) },
  { name: "jobNatural", title: "MeshHook job, statements one after another (the natural way), 200 workers", url: setup.db.workerUrl, callers: 200, op: MeshHook.job(true) }
]

try {
  console.log(`Machine: ${machine()}\nBaseline: ${baselineDir}\n`)
  for (const workload of workloads) {
    if (only !== undefined && !only.includes(workload.name)) continue
    log(`\n${workload.title}: ${plural(settings.rounds, "round")} of ${settings.roundMillis / 1000} s`)
    const contenders = versions.map(([name, modules]): Contender => ({
      name,
      applicationName: name,
      setup: async () => {
        const client = await Clients.meshhookPool(
          { url: workload.url, connections: 8, applicationName: name, tenantSetting: Database.tenantSetting, warm: true },
          undefined,
          {},
          modules
        )
        const op = workload.op(client)
        return { round: (millis) => closedLoop(op, workload.callers, millis), close: client.close }
      }
    }))
    const summaries = await compare(contenders, { ...settings, backendsOf: MeshHook.backendsOf(setup), log })
    console.log(`\n${workload.title}\n${table(summaries)}`)
  }
} finally {
  await Effect.runPromise(Scope.close(scope, Exit.void))
}
