/**
 * `GET /api/runs`: the tenant's runs. `POST /api/runs` with `{ "workflow": slug }`:
 * starts a run of one of the tenant's workflows.
 */
import { json } from "@sveltejs/kit"
import type { RequestHandler } from "@sveltejs/kit"
import * as Result from "effect/Result"
import { problem } from "../../../lib/server/problem.ts"
import * as Runs from "../../../lib/server/runs.ts"

/** Promise style: the call rejects with the pool's typed error, which becomes the response. */
export const GET: RequestHandler = async ({ locals, request }) => {
  try {
    // The request's signal: a client that goes away stops the query and frees its connection.
    return json(await locals.db.run(Runs.list, { signal: request.signal }))
  } catch (error) {
    return problem(error)
  }
}

/** Value style: the result says success or which error, the application's own included. */
export const POST: RequestHandler = async ({ locals, request }) => {
  const { workflow } = await request.json() as { workflow?: unknown }
  if (typeof workflow !== "string") return json({ error: "BadRequest", message: "workflow: a slug" }, { status: 400 })
  const result = await locals.db.runResult(Runs.start(workflow), { signal: request.signal })
  if (Result.isSuccess(result)) return json(result.success, { status: 201 })
  return result.failure._tag === "WorkflowNotFound"
    ? json({ error: "WorkflowNotFound", message: `No workflow ${JSON.stringify(workflow)}` }, { status: 404 })
    : problem(result.failure)
}
