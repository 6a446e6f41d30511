/**
 * `GET /api/runs/:id`: one run, if the tenant can see it. Another tenant's
 * run is not found: row-level security hides it.
 */
import { json } from "@sveltejs/kit"
import type { RequestHandler } from "@sveltejs/kit"
import { problem } from "../../../../lib/server/problem.ts"
import * as Runs from "../../../../lib/server/runs.ts"

export const GET: RequestHandler<{ id: string }> = async ({ locals, params, request }) => {
  try {
    const run = await locals.db.run(Runs.find(params.id), { signal: request.signal })
    return run === undefined ? json({ error: "NotFound" }, { status: 404 }) : json(run)
  } catch (error) {
    return problem(error)
  }
}
