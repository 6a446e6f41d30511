/**
 * MeshHook's workloads for the comparison scripts: a throwaway server with
 * MeshHook's schema (RLS, 100 tenants, the worker role), select-by-key on
 * `workflow_runs` under the row's tenant, and the worker job with its
 * transactions' statements sent together or one after another.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { randomBytes } from "node:crypto"
import * as Database from "../examples/meshhook/database.ts"
import * as Job from "../examples/meshhook/job.ts"
import * as PgServer from "../src/testing/PgServer.ts"
import * as Clients from "./clients.ts"

/** A server with MeshHook's schema, and the runs to pick keys from. */
export interface Setup {
  readonly server: PgServer.PgServer
  readonly db: Database.MeshHookDatabase
  readonly runs: ReadonlyArray<{ readonly id: string; readonly project: string }>
  /** A superuser client on the database, for counting backends. */
  readonly admin: Clients.Client
}

export const setup = (options: PgServer.Options = { durable: true }): Effect.Effect<Setup, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const server = yield* PgServer.make(options)
    const db = yield* Database.create(server.url(), { tenants: 100, runsPerTenant: 10 })
    const admin = yield* Effect.acquireRelease(
      Effect.promise(() =>
        Clients.nodePostgres({
          url: db.adminUrl,
          connections: 1,
          applicationName: "bench-admin",
          tenantSetting: Database.tenantSetting,
          warm: false
        }, false)
      ),
      (client) => Effect.promise(client.close)
    )
    const runs = (yield* Effect.promise(() =>
      admin.query({ text: "SELECT id::text AS id, project_id::text AS project FROM workflow_runs", params: [] })
    )) as ReadonlyArray<{ readonly id: string; readonly project: string }>
    return { server, db, runs, admin }
  })

/** Counts a contender's server backends, by application name. */
export const backendsOf = (setup: Setup) => async (applicationName: string): Promise<number> =>
  ((await setup.admin.query({
    text: "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1",
    params: [applicationName]
  }))[0] as { n: number }).n

const byKey = (id: string): Clients.Sql => ({ text: "SELECT status, step FROM workflow_runs WHERE id = $1", params: [id] })

/** Select-by-key under the row's tenant (RLS decides what is seen). */
export const selectByKeyInTenant = (setup: Setup) => (client: Clients.Client) => () => {
  const run = setup.runs[Math.floor(Math.random() * setup.runs.length)]
  return client.inTenantTransaction(run.project, [byKey(run.id)])
}

/** Select-by-key without a tenant (as the owner, who sees every row). */
export const selectByKey = (setup: Setup) => (client: Clients.Client) => () =>
  client.query(byKey(setup.runs[Math.floor(Math.random() * setup.runs.length)].id))

/** The simulated HTTP call between a job's two transactions, which holds no connection. */
export const httpMillis = 20
const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

/**
 * One worker job: claim, a tenant transaction, the HTTP call, a tenant
 * transaction; `sequential` sends each transaction's statements one after
 * another, as code that awaits each one does.
 */
export const job = (sequential: boolean) => (client: Clients.Client) => async () => {
  const claimed = Job.claimed(await client.query(Job.claim))
  if (claimed === undefined) {
    // 1,000 jobs and at most one claimed per worker: an empty queue means jobs were claimed and never
    // finished (a contender whose transactions did nothing), and would make the rest of the run cheap
    // empty claims. It counts as an error, so every table shows it.
    await sleep(httpMillis)
    throw new Error("no job to claim: the queue was drained by jobs that never finished")
  }
  await client.inTenantTransaction(claimed.projectId, Job.startStep(claimed), sequential)
  await sleep(httpMillis)
  await client.inTenantTransaction(claimed.projectId, Job.finishStep(claimed, randomBytes(1024).toString("hex")), sequential)
}
