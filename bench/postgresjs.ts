/**
 * Why postgres.js measures far below its reputation in the suite: its
 * throughput, second by second, over the life of one client instance, with
 * more callers than connections (as in every workload of the suite), beside
 * node-postgres' `pg.Pool` on the same server.
 *
 * postgres.js 3.4.x keeps its busy connections in a queue whose `shift`
 * leaves a hole at the front and whose `remove` scans from the first slot
 * ever used (src/queue.js). While callers outnumber connections the busy
 * queue never empties, so it grows by a slot per query, and every
 * connection that finishes its pipeline is removed from it by a scan over
 * all of them: the cost of a query grows with the queries the instance has
 * served. A falling throughput and a rising CPU per query, where `pg.Pool`
 * stays flat, is that.
 *
 *   node bench/postgresjs.ts [--seconds 8] [--concurrency 64] [--connections 8]
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { parseArgs } from "node:util"
import * as Database from "../examples/meshhook/database.ts"
import * as Clients from "./clients.ts"
import { closedLoop, machine } from "./harness.ts"
import * as MeshHook from "./meshhook.ts"

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "8" },
    concurrency: { type: "string", default: "64" },
    connections: { type: "string", default: "8" }
  }
})
const seconds = Number(values.seconds)
const concurrency = Number(values.concurrency)

const scope = Effect.runSync(Scope.make())
const setup = await Effect.runPromise(Scope.provide(MeshHook.setup(), scope))
const target = (applicationName: string): Clients.Target => ({
  url: setup.db.adminUrl,
  connections: Number(values.connections),
  applicationName,
  tenantSetting: Database.tenantSetting,
  warm: true
})
const select1: Clients.Sql = { text: "SELECT 1", params: [] }

/** One line per second of a fresh client's life: throughput and CPU per query. */
const timeline = async (name: string, client: Clients.Client) => {
  const lines = [`| ${name} | ${Array.from({ length: seconds }, (_, i) => `${i + 1} s`).join(" | ")} |`]
  const rates: Array<string> = []
  const cpus: Array<string> = []
  try {
    for (let second = 0; second < seconds; second++) {
      const round = await closedLoop(() => client.query(select1), concurrency, 1_000)
      rates.push(Math.round(round.opsPerSecond).toLocaleString("en-US"))
      // Percent of a core over queries per second: µs of CPU per query.
      cpus.push(`${(round.cpuPercent * 10_000 / round.opsPerSecond).toFixed(0)} µs`)
    }
  } finally {
    await client.close()
  }
  lines.push(`| ops/s | ${rates.join(" | ")} |`, `| Node CPU per query | ${cpus.join(" | ")} |`)
  return lines
}

console.log(`Machine: ${machine()}. SELECT 1, ${concurrency} callers, ${values.connections} connections, a fresh client each.\n`)
try {
  for (const [name, make] of [
    ["postgres.js", () => Clients.postgresJs(target("pgjs-timeline"))],
    ["pg.Pool (tuned)", () => Clients.nodePostgres(target("pg-timeline"), true)]
  ] as const) {
    const [header, ...rows] = await timeline(name, await make())
    console.log([header, `|---|${"---:|".repeat(seconds)}`, ...rows].join("\n") + "\n")
  }
} finally {
  await Effect.runPromise(Scope.close(scope, Exit.void))
}
