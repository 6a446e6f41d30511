/**
 * The cost of tenant isolation: select-by-key on `workflow_runs` (RLS on),
 * through @meshhook/pool, with and without a tenant, in one run, alternating.
 *
 *   node bench/tenant.ts [--rounds 5] [--seconds 3] [--concurrency 64] [--max 8]
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import { parseArgs } from "node:util"
import * as Database from "../examples/meshhook/database.ts"
import * as Pool from "../src/Pool.ts"
import * as PoolConfig from "../src/PoolConfig.ts"
import * as Tenant from "../src/Tenant.ts"
import * as PgServer from "../src/testing/PgServer.ts"
import { closedLoop, compare, type Contender, machine, plural } from "./harness.ts"
import { table } from "./report.ts"

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "5" },
    seconds: { type: "string", default: "3" },
    concurrency: { type: "string", default: "64" },
    max: { type: "string", default: "8" }
  }
})
const rounds = Number(values.rounds)
const roundMillis = Number(values.seconds) * 1_000
const concurrency = Number(values.concurrency)
const max = Number(values.max)

const scope = Effect.runSync(Scope.make())
const server = await Effect.runPromise(Scope.provide(PgServer.make({ durable: true }), scope))
const db = await Effect.runPromise(Scope.provide(Database.create(server.url(), { tenants: 100, runsPerTenant: 10 }), scope))
const runs = await withSql({ url: db.adminUrl, max: 1 }, (sql) =>
  sql<{ id: string; project: string }>`SELECT id::text, project_id::text AS project FROM workflow_runs`)

/** Runs one effect against a pool of its own. */
async function withSql<A>(options: PoolConfig.Options, f: (sql: SqlClient.SqlClient) => Effect.Effect<A, unknown>) {
  const runtime = ManagedRuntime.make(Pool.layer(options))
  try {
    return await runtime.runPromise(Effect.flatMap(Effect.service(SqlClient.SqlClient), f))
  } finally {
    await runtime.dispose()
  }
}

const pick = () => runs[Math.floor(Math.random() * runs.length)]

const contender = (
  name: string,
  options: PoolConfig.Options,
  op: (sql: SqlClient.SqlClient) => Effect.Effect<unknown, unknown>
): Contender => ({
  name,
  applicationName: name,
  setup: async () => {
    const runtime = ManagedRuntime.make(Pool.layer({ max, applicationName: name.slice(0, 60), ...options }))
    const sql = await runtime.runPromise(Effect.service(SqlClient.SqlClient))
    const effect = op(sql)
    return { round: (millis) => closedLoop(() => runtime.runPromise(effect), concurrency, millis), close: () => runtime.dispose() }
  }
})

const byKey = (sql: SqlClient.SqlClient, id: string) =>
  sql`SELECT id, status, step, updated_at FROM workflow_runs WHERE id = ${id}`

const contenders: Array<Contender> = [
  contender("owner role, no tenant (RLS bypassed)", { url: db.adminUrl }, (sql) =>
    Effect.suspend(() => byKey(sql, pick().id))),
  contender("worker role, Tenant.with, lone statement", { url: db.workerUrl, tenantSetting: Database.tenantSetting }, (sql) =>
    Effect.suspend(() => {
      const run = pick()
      return Tenant.with(byKey(sql, run.id), run.project)
    })),
  contender("same, sessionCheck: always", {
    url: db.workerUrl,
    tenantSetting: Database.tenantSetting,
    sessionCheck: "always"
  }, (sql) =>
    Effect.suspend(() => {
      const run = pick()
      return Tenant.with(byKey(sql, run.id), run.project)
    })),
  contender("worker role, Tenant.with, 3 statements in withTransaction", {
    url: db.workerUrl,
    tenantSetting: Database.tenantSetting
  }, (sql) =>
    Effect.suspend(() => {
      const run = pick()
      return Tenant.with(sql.withTransaction(Effect.all([byKey(sql, run.id), byKey(sql, run.id), byKey(sql, run.id)])), run.project)
    }))
]

console.error(`tenant overhead: ${plural(rounds, "round")} of ${roundMillis / 1000} s, ${concurrency} callers, pool max ${max}`)
console.error(machine())
const backendsOf = (applicationName: string) =>
  withSql({ url: db.adminUrl, max: 1 }, (sql) =>
    Effect.map(sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${applicationName.slice(0, 60)}`, ([r]) => r.n))
const summaries = await compare(contenders, { rounds, roundMillis, warmupMillis: 1_000, backendsOf })
console.log(table(summaries))
await Effect.runPromise(Scope.close(scope, Exit.void))
