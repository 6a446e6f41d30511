/**
 * One MeshHook worker job through @meshhook/pool, as in MeshHook's workers:
 *
 * 1. claim a job across tenants (no tenant: `Tenant.unscoped`), pgmq-style
 *    with `FOR UPDATE SKIP LOCKED` and a visibility timeout;
 * 2. as the job's tenant, in one transaction: replay the run's events and
 *    append `step_started`;
 * 3. call the external HTTP endpoint with no connection and no transaction held;
 * 4. as the job's tenant, in one transaction: record the attempt and its
 *    result, advance the run (or finish it and start a new one), enqueue the
 *    next step and delete the job.
 */
import * as Effect from "effect/Effect"
import * as SqlClient from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import { randomBytes } from "node:crypto"
import * as Tenant from "../../src/Tenant.ts"

/** Steps per run before it finishes and a new run starts. */
export const stepsPerRun = 4

export interface Job {
  readonly msgId: string
  readonly projectId: string
  readonly runId: string
  readonly workflowId: string
  readonly step: number
}

/** Claims the oldest visible job of any tenant, hiding it from other workers for 30 s. */
export const claim: Effect.Effect<Job | undefined, SqlError, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql<{ msg_id: string; project_id: string; run_id: string; workflow_id: string; step: number }>`
    WITH next AS (
      SELECT msg_id FROM job_queue WHERE vt <= clock_timestamp()
      ORDER BY msg_id LIMIT 1 FOR UPDATE SKIP LOCKED
    )
    UPDATE job_queue q SET vt = clock_timestamp() + interval '30 seconds', read_ct = q.read_ct + 1
    FROM next WHERE q.msg_id = next.msg_id
    RETURNING q.msg_id::text, q.project_id::text, q.message->>'run_id' AS run_id,
              q.message->>'workflow_id' AS workflow_id, (q.message->>'step')::int AS step`
  if (rows.length === 0) return undefined
  const [row] = rows
  return { msgId: row.msg_id, projectId: row.project_id, runId: row.run_id, workflowId: row.workflow_id, step: row.step }
}).pipe(Tenant.unscoped("claim a job across projects"))

/** Replays the run's events and records that the step started. */
const startStep = (job: Job) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    return yield* sql.withTransaction(Effect.gen(function*() {
      const events = yield* sql`SELECT type, payload FROM workflow_events WHERE run_id = ${job.runId} ORDER BY ts, id`
      yield* sql`INSERT INTO workflow_events (project_id, run_id, type, payload)
        VALUES (${job.projectId}, ${job.runId}, 'step_started',
                jsonb_build_object('node', jsonb_build_object('id', 'n:' || ${job.step}::text, 'type', 'http_call')))`
      return events.length
    }))
  })

/** Records the call's outcome and moves the run on. */
const finishStep = (job: Job, response: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.withTransaction(Effect.gen(function*() {
      yield* sql`INSERT INTO workflow_events (project_id, run_id, type, payload) VALUES
        (${job.projectId}, ${job.runId}, 'http_attempted', jsonb_build_object('node', 'n:' || ${job.step}::text, 'status', 200)),
        (${job.projectId}, ${job.runId}, 'step_succeeded', jsonb_build_object('node', 'n:' || ${job.step}::text, 'response', ${response}::text))`
      if (job.step >= stepsPerRun) {
        yield* sql`UPDATE workflow_runs SET status = 'succeeded', finished_at = now(), updated_at = now() WHERE id = ${job.runId}`
        const [run] = yield* sql<{ id: string }>`
          INSERT INTO workflow_runs (project_id, workflow_id, status)
          VALUES (${job.projectId}, ${job.workflowId}, 'running') RETURNING id::text`
        yield* sql`INSERT INTO workflow_events (project_id, run_id, type, payload)
          VALUES (${job.projectId}, ${run.id}, 'run_created', jsonb_build_object('body', ${response.slice(0, 1500)}::text))`
        yield* sql`INSERT INTO job_queue (project_id, message)
          VALUES (${job.projectId}, jsonb_build_object('run_id', ${run.id}::text, 'workflow_id', ${job.workflowId}::text, 'step', 1))`
      } else {
        yield* sql`UPDATE workflow_runs SET step = ${job.step + 1}, updated_at = now() WHERE id = ${job.runId}`
        yield* sql`INSERT INTO job_queue (project_id, message)
          VALUES (${job.projectId}, jsonb_build_object('run_id', ${job.runId}::text, 'workflow_id', ${job.workflowId}::text, 'step', ${job.step + 1}::int))`
      }
      yield* sql`DELETE FROM job_queue WHERE msg_id = ${job.msgId}`
    }))
  })

/**
 * Runs one job end to end; `httpCall` stands for the external request (it
 * runs with no connection held). Returns `false` when the queue was empty.
 */
export const runJob = <E, R>(httpCall: Effect.Effect<void, E, R>) =>
  Effect.gen(function*() {
    const job = yield* claim
    if (job === undefined) return false
    yield* Tenant.with(startStep(job), job.projectId)
    yield* httpCall
    // Random content: real payloads do not compress like repeat() does.
    yield* Tenant.with(finishStep(job, randomBytes(1024).toString("hex")), job.projectId)
    return true
  })

/**
 * Rows one tenant wrote that point at another tenant's run: must be zero.
 * Run it as the table owner, who sees every tenant.
 */
export const crossTenantRows: Effect.Effect<number, SqlError, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [row] = yield* sql<{ n: number }>`
    SELECT (SELECT count(*) FROM workflow_events e JOIN workflow_runs r ON r.id = e.run_id
            WHERE e.project_id <> r.project_id)::int
         + (SELECT count(*) FROM job_queue j JOIN workflow_runs r ON r.id = (j.message->>'run_id')::uuid
            WHERE j.project_id <> r.project_id)::int AS n`
  return row.n
})
