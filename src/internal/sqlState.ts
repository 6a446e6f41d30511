/**
 * Reading the driver's errors: the SQLSTATE behind a `SqlError`, and whether
 * a failed connection attempt is worth repeating.
 *
 * @internal
 */
import type { SqlError } from "effect/sql/SqlError"

/** The server's SQLSTATE, when the error came from the server. @internal */
export const sqlStateOf = (error: SqlError): string | undefined => {
  const cause = error.reason.cause as { readonly code?: unknown } | undefined
  return typeof cause?.code === "string" && /^[0-9A-Z]{5}$/.test(cause.code) ? cause.code : undefined
}

/**
 * SQLSTATEs that waiting will not cure, besides class 28 (bad credentials): a
 * missing database (3D000) or a role without `LOGIN`/`CONNECT` rights (42501).
 * PgBouncer sends the same refusals as 08P01 (`poolerRefusal`).
 */
const fatalConnectStates = new Set(["3D000", "42501"])

/**
 * Whether a failed connection attempt should fail the callers waiting on it
 * at once, rather than be retried until they time out.
 *
 * @internal
 */
export const isFatalConnectError = (error: SqlError): boolean => {
  if (error.reason._tag === "AuthenticationError" || error.reason._tag === "AuthorizationError") return true
  const state = sqlStateOf(error)
  if (state === "08P01") return poolerRefusal.test(serverMessage(error))
  return state !== undefined && (state.startsWith("28") || fatalConnectStates.has(state))
}

/** PgBouncer's words for bad credentials or an unknown database, all under 08P01. */
const poolerRefusal = /authentication failed|no such user|does not exist|not allowed to connect/i

/**
 * A one-line description of a driver error for logs and other errors. It
 * holds the server's message and SQLSTATE; the driver puts no passwords in
 * either.
 *
 * @internal
 */
export const describe = (error: SqlError): string => {
  const state = sqlStateOf(error)
  const cause = error.reason.cause
  const detail = cause instanceof Error && cause.message !== "" && !error.message.includes(cause.message)
    ? `: ${cause.message}`
    : ""
  return `${error.message}${detail}${state === undefined ? "" : ` (SQLSTATE ${state})`}`
}

/**
 * Whether the server turned a connection attempt away for lack of
 * connection slots (`too_many_connections`, 53300): a limit to respect, not
 * an outage.
 *
 * @internal
 */
export const isOutOfSlots = (error: SqlError): boolean => {
  const state = sqlStateOf(error)
  // PgBouncer says it with a protocol violation code and its own words.
  return state === "53300" || (state === "08P01" && /no more connections allowed/i.test(serverMessage(error)))
}

/** The server's own message behind a driver error. */
const serverMessage = (error: SqlError): string => {
  const cause = error.reason.cause
  return cause instanceof Error ? cause.message : ""
}
