/**
 * What closing a transaction-mode pooler's gap costs: this pool behind
 * PgBouncer (`behindPooler: "transaction"`), with PgBouncer's defaults and
 * with `server_reset_query_always = 1` (DISCARD ALL after every
 * transaction, so nothing one client leaves on a server connection reaches
 * the next), in one run, alternating.
 *
 *   node bench/pooler.ts [--rounds 5] [--seconds 5] [--pool-size 8]
 *
 * Workloads (bench/meshhook.ts): select-by-key under the row's tenant (64
 * callers) and the MeshHook job written the natural way (200 workers).
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import { parseArgs } from "node:util"
import * as Database from "../examples/meshhook/database.ts"
import * as PgBouncer from "../src/testing/PgBouncer.ts"
import * as Clients from "./clients.ts"
import { closedLoop, compare, type Contender, machine, plural } from "./harness.ts"
import * as MeshHook from "./meshhook.ts"
import { table } from "./report.ts"

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "5" },
    seconds: { type: "string", default: "5" },
    "pool-size": { type: "string", default: "8" }
  }
})
const settings = { rounds: Number(values.rounds), roundMillis: Number(values.seconds) * 1_000, warmupMillis: 2_000 }
const poolSize = Number(values["pool-size"])
const log = (line: string) => console.error(line)

const scope = Effect.runSync(Scope.make())
const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.provide(effect, scope))
const setup = await run(MeshHook.setup())
const { server } = setup
const upstream = { host: server.host, port: server.port, user: server.user, password: server.password }
const worker = new URL(Redacted.value(setup.db.workerUrl))
const login = { user: worker.username, password: decodeURIComponent(worker.password), database: worker.pathname.slice(1) }
const bouncers = [
  ["PgBouncer defaults", await run(PgBouncer.make({ upstream, defaultPoolSize: poolSize, maxClientConn: 200 }))],
  ["PgBouncer server_reset_query_always = 1", await run(PgBouncer.make({
    upstream,
    defaultPoolSize: poolSize,
    maxClientConn: 200,
    settings: { server_reset_query_always: 1 }
  }))]
] as const

const workloads = [
  { title: "select-by-key under the row's tenant, 64 callers", callers: 64, op: MeshHook.selectByKeyInTenant(setup) },
  { title: "MeshHook job, statements one after another, 200 workers", callers: 200, op: MeshHook.job(true) }
]

try {
  console.log(`Machine: ${machine()}; PgBouncer ${PgBouncer.findBinary() ?? "?"}, default_pool_size ${poolSize}\n`)
  for (const workload of workloads) {
    log(`\n${workload.title}: ${plural(settings.rounds, "round")} of ${settings.roundMillis / 1000} s`)
    const contenders = bouncers.map(([name, bouncer]): Contender => ({
      name,
      applicationName: `bench-${name.length}`,
      setup: async () => {
        const client = await Clients.meshhookPool(
          { url: bouncer.url(login), connections: poolSize, applicationName: "bench-pooler", tenantSetting: Database.tenantSetting, warm: true },
          undefined,
          { behindPooler: "transaction" }
        )
        const op = workload.op(client)
        return { round: (millis) => closedLoop(op, workload.callers, millis), close: client.close }
      }
    }))
    const summaries = await compare(contenders, { ...settings, backendsOf: async () => NaN, log })
    console.log(`\n${workload.title}\n${table(summaries)}`)
  }
} finally {
  await Effect.runPromise(Scope.close(scope, Exit.void))
}
