/**
 * One MeshHook worker job through @meshhook/pool (the statements are in
 * ./job.ts): the claim runs without a tenant, and says so; the rest runs as
 * the job's tenant, in two transactions around the external HTTP call, which
 * holds no connection.
 */
import * as Effect from "effect/Effect"
import * as SqlClient from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import { randomBytes } from "node:crypto"
import * as Tenant from "../../src/Tenant.ts"
import * as Job from "./job.ts"

const run = (statement: Job.Sql) =>
  Effect.flatMap(
    Effect.service(SqlClient.SqlClient),
    (sql) => sql.unsafe<Readonly<Record<string, unknown>>>(statement.text, statement.params)
  )

/**
 * The statements in one transaction, as the job's tenant. They do not depend
 * on each other's results, so they run concurrently: the pool sends them in
 * one write on the transaction's connection, in order, one round trip for all.
 */
const asTenant = (job: Job.Job, statements: ReadonlyArray<Job.Sql>) =>
  Effect.flatMap(Effect.service(SqlClient.SqlClient), (sql) =>
    sql.withTransaction(Effect.forEach(statements, run, { concurrency: "unbounded", discard: true }))).pipe(
      Tenant.with(job.projectId)
    )

/** Claims the oldest visible job of any tenant. */
export const claim: Effect.Effect<Job.Job | undefined, SqlError, SqlClient.SqlClient> = run(Job.claim).pipe(
  Effect.map(Job.claimed),
  Tenant.unscoped("claim a job across projects")
)

/**
 * Runs one job end to end; `httpCall` stands for the external request.
 * Returns `false` when the queue was empty.
 */
export const runJob = <E, R>(httpCall: Effect.Effect<void, E, R>) =>
  Effect.gen(function*() {
    const job = yield* claim
    if (job === undefined) return false
    yield* asTenant(job, Job.startStep(job))
    yield* httpCall
    // Random content: real payloads do not compress like repeat() does.
    yield* asTenant(job, Job.finishStep(job, randomBytes(1024).toString("hex")))
    return true
  })

/** Cross-tenant rows in the database (run as the owner): must be zero. */
export const crossTenantRows: Effect.Effect<number, SqlError, SqlClient.SqlClient> = Effect.map(
  run(Job.crossTenantRows),
  (rows) => Number(rows[0].n)
)
