/**
 * A small MeshHook worker, written the way an application uses the pool:
 * `SqlClient` statements, the tenant from `Tenant.with`, and the webhook as a
 * service so that tests can stand in for it. Its tests are beside it:
 * Worker.test.ts (the mock layer, no database) and Worker.pg.test.ts (a real
 * database with MeshHook's migrations).
 *
 * One job: claim it across tenants; as the job's tenant, replay the run's
 * events and append `step_started`; call the webhook with no connection held;
 * as the tenant again, append the outcome and either advance the run (or
 * finish it) and acknowledge the job, or leave the job for a retry.
 *
 * Between jobs, `listening` waits on `LISTEN` for a producer's notification
 * rather than polling an empty queue (docs/compatibility.md says when that
 * pays and what it costs the database).
 */
import type * as PgClient from "@effect/sql-pg/PgClient"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Queue from "effect/Queue"
import * as SqlClient from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import * as Notifications from "../../src/Notifications.ts"
import * as Tenant from "../../src/Tenant.ts"

/** A claimed job. */
export interface Job {
  readonly msgId: string
  readonly projectId: string
  readonly runId: string
  readonly step: number
}

/** The webhook refused or could not be reached. */
export class WebhookError extends Data.TaggedError("WebhookError")<{ readonly status: number }> {}

/** The outbound HTTP call a step makes. */
export class Webhook extends Context.Service<Webhook, {
  readonly send: (request: {
    readonly runId: string
    readonly step: number
    readonly events: number
  }) => Effect.Effect<{ readonly status: number }, WebhookError>
}>()("examples/worker/Webhook") {}

/** Steps in a run; the last one finishes it. */
export const stepsPerRun = 3

/** How long a failed step waits before its job is visible again. */
export const retryDelaySeconds = 30

/** What one turn of the worker did. */
export type Outcome = "idle" | "advanced" | "finished" | "retrying"

/** Claims the oldest visible job of any tenant: the one statement that runs without a tenant. */
export const claim: Effect.Effect<Job | undefined, SqlError, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [row] = yield* sql<{ msg_id: string; project_id: string; run_id: string; step: number }>`
    WITH next AS (
      SELECT msg_id FROM job_queue WHERE vt <= clock_timestamp()
      ORDER BY msg_id LIMIT 1 FOR UPDATE SKIP LOCKED
    )
    UPDATE job_queue q SET vt = clock_timestamp() + interval '5 minutes', read_ct = q.read_ct + 1
    FROM next WHERE q.msg_id = next.msg_id
    RETURNING q.msg_id::text AS msg_id, q.project_id::text AS project_id,
              q.message->>'run_id' AS run_id, (q.message->>'step')::int AS step`
  return row === undefined
    ? undefined
    : { msgId: row.msg_id, projectId: row.project_id, runId: row.run_id, step: Number(row.step) }
}).pipe(Tenant.unscoped("claim a job across projects"))

/** Replays the run's events and records that the step started; returns how many events there were. */
const startStep = (sql: SqlClient.SqlClient, job: Job) =>
  sql.withTransaction(Effect.gen(function*() {
    const events = yield* sql`SELECT type FROM workflow_events WHERE run_id = ${job.runId} ORDER BY ts, id`
    yield* sql`INSERT INTO workflow_events (project_id, run_id, type, payload)
      VALUES (${job.projectId}, ${job.runId}, 'step_started', ${JSON.stringify({ step: job.step })})`
    return events.length
  }))

/** Records a successful call, moves the run on (or finishes it) and acknowledges the job. */
const finishStep = (sql: SqlClient.SqlClient, job: Job, status: number) =>
  sql.withTransaction(Effect.gen(function*() {
    yield* sql`INSERT INTO workflow_events (project_id, run_id, type, payload)
      VALUES (${job.projectId}, ${job.runId}, 'step_succeeded', ${JSON.stringify({ step: job.step, status })})`
    const last = job.step >= stepsPerRun
    if (last) {
      yield* sql`UPDATE workflow_runs SET status = 'succeeded', finished_at = now(), updated_at = now()
        WHERE id = ${job.runId}`
    } else {
      yield* sql`UPDATE workflow_runs SET step = ${job.step + 1}, updated_at = now() WHERE id = ${job.runId}`
      yield* sql`INSERT INTO job_queue (project_id, message)
        VALUES (${job.projectId}, ${JSON.stringify({ run_id: job.runId, step: job.step + 1 })})`
    }
    yield* sql`DELETE FROM job_queue WHERE msg_id = ${job.msgId}`
    return last ? "finished" as const : "advanced" as const
  }))

/** Records a failed call and makes the job visible again after the retry delay. */
const failStep = (sql: SqlClient.SqlClient, job: Job, status: number) =>
  sql.withTransaction(Effect.gen(function*() {
    yield* sql`INSERT INTO workflow_events (project_id, run_id, type, payload)
      VALUES (${job.projectId}, ${job.runId}, 'step_failed', ${JSON.stringify({ step: job.step, status })})`
    yield* sql`UPDATE job_queue SET vt = clock_timestamp() + make_interval(secs => ${retryDelaySeconds})
      WHERE msg_id = ${job.msgId}`
    return "retrying" as const
  }))

/** Runs one job, if one is waiting. */
export const processNext: Effect.Effect<Outcome, SqlError, SqlClient.SqlClient | Webhook> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const webhook = yield* Webhook
  const job = yield* claim
  if (job === undefined) return "idle"
  const asTenant = Tenant.with(job.projectId)
  const events = yield* asTenant(startStep(sql, job))
  // Outside any transaction: no connection is held while the remote end takes its time.
  const response = yield* Effect.result(webhook.send({ runId: job.runId, step: job.step, events }))
  return yield* asTenant(
    response._tag === "Success"
      ? finishStep(sql, job, response.success.status)
      : failStep(sql, job, response.failure.status)
  )
})

/** The channel producers notify when they queue a job; the payload says nothing (a hint to look, not the job). */
export const jobsChannel = "job_queue"

/**
 * The worker's turns as a stream of their outcomes. After an idle turn it
 * waits for a notification on {@link jobsChannel}, or `pollInterval` at the
 * latest (a notification sent while the listening connection was being
 * replaced is lost; the poll bounds how long that can delay a job). It looks
 * at the queue first once listening has started, so nothing queued before
 * is left waiting.
 */
export const listening = (options: { readonly pollInterval: Duration.Input }): Stream.Stream<
  Outcome,
  SqlError,
  SqlClient.SqlClient | PgClient.PgClient | Webhook
> =>
  Stream.unwrap(Effect.gen(function*() {
    // One pending wake-up is enough: however many notifications came, the next turn looks at the whole queue.
    const wake = yield* Queue.sliding<void>(1)
    yield* Notifications.stream(jobsChannel).pipe(
      Stream.runForEach(() => Queue.offer(wake, undefined)),
      Effect.tapCause((cause) => Effect.logWarning("Not listening for jobs; polling only", cause)),
      Effect.forkScoped
    )
    yield* Queue.take(wake)
    let idle = false
    const nap = Effect.raceFirst(Queue.take(wake), Effect.sleep(options.pollInterval))
    return Stream.fromEffectRepeat(Effect.andThen(
      Effect.suspend(() => idle ? nap : Effect.void),
      Effect.tap(processNext, (outcome) => Effect.sync(() => idle = outcome === "idle"))
    ))
  }))
