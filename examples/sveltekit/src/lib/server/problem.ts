/**
 * A failed call's error as an HTTP response. The pool's errors say whose
 * fault it was: the request's (it named no tenant, or a malformed one), the
 * moment's (the pool is full or closing, the database is down: try again),
 * or the application's (a bug: 500). docs/integration.md has the table.
 */
import { json } from "@sveltejs/kit"
import { isSqlError } from "effect/sql/SqlError"
// In an application: import { PoolError } from "@meshhook/pool"
import { PoolError } from "../../../../../src/index.ts"

/** An HTTP answer to an error: the status, how many seconds to wait before retrying, and a body safe to show. */
export interface Problem {
  readonly status: number
  readonly retryAfter?: number
  readonly body: { readonly error: string; readonly message?: string }
}

/** The answer to `error`: a pool error by its tag; anything else is a 500 that shows nothing of the error. */
export const problemOf = (error: unknown): Problem => {
  if (!PoolError.isPoolError(error)) {
    // A SqlError's text may carry the server's details (values, names): it is logged, not shown.
    console.error(isSqlError(error) ? "SQL failed" : "Request failed", error)
    return { status: 500, body: { error: "InternalError" } }
  }
  // Pool errors carry no secrets: their messages may be shown.
  const shown = { error: error._tag, message: error.message }
  switch (error._tag) {
    case "TenantRequiredError":
      return { status: 401, body: shown }
    case "InvalidTenantError":
      return { status: 400, body: shown }
    case "TenantQuotaExceededError":
      return { status: 429, retryAfter: 1, body: shown }
    case "PoolTimeoutError":
    case "PoolSaturatedError":
    case "PoolClosedError":
      return { status: 503, retryAfter: 1, body: shown }
    case "DatabaseUnavailableError":
      return { status: 503, retryAfter: 5, body: shown }
    case "QueryTimeoutError":
      return { status: 504, body: shown }
    default:
      // TenantMismatchError, SessionStateNotAllowedError, ConnectionReleasedError, IsolationError,
      // PoolConfigError: the application's code or set-up is wrong, and retrying will not help.
      console.error("Request failed", error)
      return { status: 500, body: { error: "InternalError" } }
  }
}

/** {@link problemOf} as SvelteKit's JSON response, with `Retry-After` when waiting may help. */
export const problem = (error: unknown): Response => {
  const { status, retryAfter, body } = problemOf(error)
  return json(body, { status, headers: retryAfter === undefined ? {} : { "retry-after": String(retryAfter) } })
}
