/**
 * The SQL of one MeshHook worker job, as data: the worker example runs it
 * through @meshhook/pool, and the benchmark runs the same statements through
 * every other client.
 *
 * 1. claim a job across tenants (pgmq-style: `FOR UPDATE SKIP LOCKED` and a
 *    visibility timeout);
 * 2. as the job's tenant, in one transaction: replay the run's events and
 *    append `step_started`;
 * 3. (the external HTTP call, with no connection held);
 * 4. as the job's tenant, in one transaction: record the attempt and result,
 *    advance the run (or finish it and start the next), enqueue the next step
 *    and delete the job.
 */

/** A statement with `$n` placeholders and its parameters. */
export interface Sql {
  readonly text: string
  readonly params: ReadonlyArray<unknown>
}

/** Steps per run before it finishes and a new run starts. */
export const stepsPerRun = 4

export interface Job {
  readonly msgId: string
  readonly projectId: string
  readonly runId: string
  readonly workflowId: string
  readonly step: number
}

export const claim: Sql = {
  text: `WITH next AS (
      SELECT msg_id FROM job_queue WHERE vt <= clock_timestamp()
      ORDER BY msg_id LIMIT 1 FOR UPDATE SKIP LOCKED
    )
    UPDATE job_queue q SET vt = clock_timestamp() + interval '30 seconds', read_ct = q.read_ct + 1
    FROM next WHERE q.msg_id = next.msg_id
    RETURNING q.msg_id::text AS msg_id, q.project_id::text AS project_id, q.message->>'run_id' AS run_id,
              q.message->>'workflow_id' AS workflow_id, (q.message->>'step')::int AS step`,
  params: []
}

/** The claimed job from the claim's rows, if there was one. */
export const claimed = (rows: ReadonlyArray<Readonly<Record<string, unknown>>>): Job | undefined => {
  const row = rows[0]
  return row === undefined ? undefined : {
    msgId: row.msg_id as string,
    projectId: row.project_id as string,
    runId: row.run_id as string,
    workflowId: row.workflow_id as string,
    step: Number(row.step)
  }
}

/** Replay the run's events; record that the step started. */
export const startStep = (job: Job): ReadonlyArray<Sql> => [
  { text: "SELECT type, payload FROM workflow_events WHERE run_id = $1 ORDER BY ts, id", params: [job.runId] },
  {
    text: `INSERT INTO workflow_events (project_id, run_id, type, payload)
      VALUES ($1, $2, 'step_started', jsonb_build_object('node', jsonb_build_object('id', 'n:' || $3::text, 'type', 'http_call')))`,
    params: [job.projectId, job.runId, job.step]
  }
]

/** Record the call and its result, move the run on, acknowledge the job. */
export const finishStep = (job: Job, response: string): ReadonlyArray<Sql> => [
  {
    text: `INSERT INTO workflow_events (project_id, run_id, type, payload) VALUES
      ($1, $2, 'http_attempted', jsonb_build_object('node', 'n:' || $3::text, 'status', 200)),
      ($1, $2, 'step_succeeded', jsonb_build_object('node', 'n:' || $3::text, 'response', $4::text))`,
    params: [job.projectId, job.runId, job.step, response]
  },
  job.step >= stepsPerRun
    ? {
      // Finish the run and start the next one, with its first event and job, in one statement.
      text: `WITH finished AS (
          UPDATE workflow_runs SET status = 'succeeded', finished_at = now(), updated_at = now()
          WHERE id = $1 RETURNING project_id, workflow_id
        ), next_run AS (
          INSERT INTO workflow_runs (project_id, workflow_id, status)
          SELECT project_id, workflow_id, 'running' FROM finished RETURNING id, project_id, workflow_id
        ), created AS (
          INSERT INTO workflow_events (project_id, run_id, type, payload)
          SELECT project_id, id, 'run_created', jsonb_build_object('body', left($2::text, 1500)) FROM next_run
        )
        INSERT INTO job_queue (project_id, message)
        SELECT project_id, jsonb_build_object('run_id', id, 'workflow_id', workflow_id, 'step', 1) FROM next_run`,
      params: [job.runId, response]
    }
    : {
      text: `WITH advanced AS (
          UPDATE workflow_runs SET step = $2, updated_at = now() WHERE id = $1 RETURNING id, project_id, workflow_id
        )
        INSERT INTO job_queue (project_id, message)
        SELECT project_id, jsonb_build_object('run_id', id, 'workflow_id', workflow_id, 'step', $2::int) FROM advanced`,
      params: [job.runId, job.step + 1]
    },
  { text: "DELETE FROM job_queue WHERE msg_id = $1", params: [job.msgId] }
]

/**
 * Rows one tenant wrote that point at another tenant's run: must be zero.
 * Run it as the table owner, who sees every tenant.
 */
export const crossTenantRows: Sql = {
  text: `SELECT (SELECT count(*) FROM workflow_events e JOIN workflow_runs r ON r.id = e.run_id
                 WHERE e.project_id <> r.project_id)::int
              + (SELECT count(*) FROM job_queue j JOIN workflow_runs r ON r.id = (j.message->>'run_id')::uuid
                 WHERE j.project_id <> r.project_id)::int AS n`,
  params: []
}
