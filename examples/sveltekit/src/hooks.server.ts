/**
 * The server's hooks: the pool is built as the server starts, and each
 * request gets it as its tenant.
 */
import type { Handle, ServerInit } from "@sveltejs/kit/hooks"
import { db } from "./lib/server/db.ts"

/**
 * Builds the pool before the first request, proving the database is
 * reachable: if it is not (within `initializationTimeout`), the server does
 * not start, rather than answering every request with the same failure.
 */
export const init: ServerInit = () => db.ready()

/**
 * The request's tenant. Here it is the `x-project-id` header, standing for
 * what an authenticating proxy would set; in MeshHook it is the project of
 * the signed-in session, never a value the client chose. A request with none
 * gets the pool without a tenant, and its SQL fails closed.
 */
export const handle: Handle = ({ event, resolve }) => {
  const project = event.request.headers.get("x-project-id")
  event.locals.db = project === null ? db : db.forTenant(project)
  return resolve(event)
}
