/**
 * What `pipelineDepth` trades: throughput against tail latency at
 * saturation. Select-by-key on `workflow_runs`, as the owner and under the
 * row's tenant, through this pool at several depths, alternating in one run.
 *
 *   node bench/depth.ts [--rounds 3] [--seconds 3] [--depths 1,2,4,8,16] [--concurrency 64] [--max 8]
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { parseArgs } from "node:util"
import * as Database from "../examples/meshhook/database.ts"
import * as Clients from "./clients.ts"
import { closedLoop, compare, type Contender, machine } from "./harness.ts"
import * as MeshHook from "./meshhook.ts"
import { table } from "./report.ts"

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    seconds: { type: "string", default: "3" },
    depths: { type: "string", default: "1,2,4,8,16" },
    concurrency: { type: "string", default: "64" },
    max: { type: "string", default: "8" }
  }
})
const depths = values.depths.split(",").map(Number)
const concurrency = Number(values.concurrency)

const scope = Effect.runSync(Scope.make())
const setup = await Effect.runPromise(Scope.provide(MeshHook.setup(), scope))

const workloads = [
  { title: "select-by-key as the table's owner", url: setup.db.adminUrl, op: MeshHook.selectByKey(setup) },
  { title: "select-by-key under the row's tenant", url: setup.db.workerUrl, op: MeshHook.selectByKeyInTenant(setup) }
]

console.log(`Machine: ${machine()}. ${concurrency} callers, ${values.max} connections; \`npx node bench/depth.ts ${process.argv.slice(2).join(" ")}\`\n`)
try {
  for (const workload of workloads) {
    const contenders: Array<Contender> = depths.map((depth) => ({
      name: `pipelineDepth ${depth}`,
      applicationName: `bench-depth-${depth}`,
      setup: async () => {
        const client = await Clients.meshhookPool({
          url: workload.url,
          connections: Number(values.max),
          applicationName: `bench-depth-${depth}`,
          tenantSetting: Database.tenantSetting,
          warm: true
        }, undefined, { pipelineDepth: depth })
        const op = workload.op(client)
        return { round: (millis) => closedLoop(op, concurrency, millis), close: client.close }
      }
    }))
    const summaries = await compare(contenders, {
      rounds: Number(values.rounds),
      roundMillis: Number(values.seconds) * 1_000,
      warmupMillis: 1_000,
      backendsOf: MeshHook.backendsOf(setup)
    })
    console.log(`### ${workload.title}\n\n${table(summaries)}\n`)
  }
} finally {
  await Effect.runPromise(Scope.close(scope, Exit.void))
}
