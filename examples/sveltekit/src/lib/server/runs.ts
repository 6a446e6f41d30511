/**
 * The example's database work, written as Effect code against `SqlClient`
 * (as MeshHook's workers are): the routes run it through the request's
 * tenant, and a worker could run the same programs with `Tenant.with`.
 * Row-level security decides what a tenant sees; nothing here filters by
 * project.
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as SqlClient from "effect/sql/SqlClient"

/** A run, as the API shows it. */
export interface Run {
  readonly id: string
  readonly workflow: string
  readonly status: string
}

/** No workflow of that slug that the tenant can see. */
export class WorkflowNotFound extends Data.TaggedError("WorkflowNotFound")<{ readonly slug: string }> {}

/** The tenant's runs, newest first. */
export const list = Effect.flatMap(Effect.service(SqlClient.SqlClient), (sql) =>
  sql<Run>`SELECT r.id::text AS id, d.slug AS workflow, r.status
    FROM workflow_runs r JOIN workflow_definitions d ON d.id = r.workflow_id
    ORDER BY r.started_at DESC, r.id`)

/** One run, if the tenant can see it. */
export const find = (id: string) =>
  Effect.flatMap(Effect.service(SqlClient.SqlClient), (sql) =>
    Effect.map(
      sql<Run>`SELECT r.id::text AS id, d.slug AS workflow, r.status
        FROM workflow_runs r JOIN workflow_definitions d ON d.id = r.workflow_id
        WHERE r.id::text = ${id}`,
      ([run]) => run
    ))

/** Starts a run of the tenant's workflow `slug`: the run, its first event and its first job, in one transaction. */
export const start = (slug: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    return yield* sql.withTransaction(Effect.gen(function*() {
      const [workflow] = yield* sql<{ id: string; project_id: string }>`
        SELECT id::text, project_id::text FROM workflow_definitions WHERE slug = ${slug} ORDER BY version DESC LIMIT 1`
      if (workflow === undefined) return yield* new WorkflowNotFound({ slug })
      const [run] = yield* sql<{ id: string }>`
        INSERT INTO workflow_runs (project_id, workflow_id, status)
        VALUES (${workflow.project_id}, ${workflow.id}, 'running') RETURNING id::text`
      yield* sql`INSERT INTO workflow_events (project_id, run_id, type, payload)
        VALUES (${workflow.project_id}, ${run.id}, 'run_created', '{}')`
      yield* sql`INSERT INTO job_queue (project_id, message)
        VALUES (${workflow.project_id}, jsonb_build_object('run_id', ${run.id}::text, 'step', 1))`
      return { id: run.id, workflow: slug, status: "running" } satisfies Run
    }))
  })
