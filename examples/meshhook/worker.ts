/**
 * One MeshHook worker job through @meshhook/pool (the statements are in
 * ./job.ts): the claim runs without a tenant, and says so; the rest runs as
 * the job's tenant, in two transactions around the external HTTP call, which
 * holds no connection.
 */
import * as Effect from "effect/Effect"
import type * as Schedule from "effect/Schedule"
import * as SqlClient from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import { randomBytes } from "node:crypto"
import * as PoolError from "../../src/PoolError.ts"
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
 * What a worker does with each step (the claim, each transaction) before it
 * counts as failed: nothing, or wait for the pool and try again
 * ({@link whileBackpressure}).
 */
export type StepPolicy = <A, R>(step: Effect.Effect<A, SqlError, R>) => Effect.Effect<A, SqlError, R>

/** Whether the pool turned the step away (shedding load, or no connection in time): then nothing of it ran. */
export const isBackpressure = (error: SqlError): boolean => {
  const tag = PoolError.fromSqlError(error)?._tag
  return tag === "PoolSaturatedError" || tag === "PoolTimeoutError"
}

/**
 * Retries a step the pool turned away, on `schedule` (a backoff): safe, since
 * nothing of it ran, and it keeps a claimed job from being dropped halfway
 * (it would stay invisible until its visibility timeout).
 */
export const whileBackpressure = (schedule: Schedule.Schedule<unknown, SqlError>): StepPolicy => (step) =>
  Effect.retry(step, { schedule, while: isBackpressure })

/**
 * Runs one job end to end; `httpCall` stands for the external request, and
 * `policy` applies to each database step. Returns `false` when the queue was
 * empty.
 */
export const runJob = <E, R>(httpCall: Effect.Effect<void, E, R>, policy: StepPolicy = (step) => step) =>
  Effect.gen(function*() {
    const job = yield* policy(claim)
    if (job === undefined) return false
    yield* policy(asTenant(job, Job.startStep(job)))
    yield* httpCall
    // Random content: real payloads do not compress like repeat() does.
    yield* policy(asTenant(job, Job.finishStep(job, randomBytes(1024).toString("hex"))))
    return true
  })

/** Cross-tenant rows in the database (run as the owner): must be zero. */
export const crossTenantRows: Effect.Effect<number, SqlError, SqlClient.SqlClient> = Effect.map(
  run(Job.crossTenantRows),
  (rows) => Number(rows[0].n)
)
