/**
 * The server's errors as `SqlError`s, built as `@effect/sql-pg` builds them
 * (so code that matches on them sees the same reasons through the pool); the
 * SQLSTATE behind a `SqlError`; and whether a failed connection attempt is
 * worth repeating.
 *
 * @internal
 */
import type * as PgProtocol from "@effect/sql-pg/PgProtocol"
import {
  AuthenticationError,
  AuthorizationError,
  ConnectionError,
  ConstraintError,
  DeadlockError,
  LockTimeoutError,
  SerializationError,
  SqlError,
  type SqlErrorReason,
  SqlSyntaxError,
  StatementTimeoutError,
  UniqueViolation,
  UnknownError
} from "effect/sql/SqlError"
import type { ConnectFailure } from "../engine/connector.ts"

interface ErrorProps {
  readonly cause: unknown
  readonly message: string
  readonly operation: string
}

/** The reason for a SQLSTATE, as the driver classifies it. @internal */
export const reasonFor = (code: string | undefined, constraint: string | undefined, props: ErrorProps): SqlErrorReason => {
  if (code === undefined) return new UnknownError(props)
  switch (code) {
    case "42501":
      return new AuthorizationError(props)
    case "23505":
      return new UniqueViolation({ ...props, constraint: constraint?.trim() || "unknown" })
    case "40P01":
      return new DeadlockError(props)
    case "40001":
      return new SerializationError(props)
    case "55P03":
      return new LockTimeoutError(props)
    case "57014":
      return new StatementTimeoutError(props)
  }
  switch (code.slice(0, 2)) {
    case "08":
      return new ConnectionError(props)
    case "28":
      return new AuthenticationError(props)
    case "42":
      return new SqlSyntaxError(props)
    case "23":
      return new ConstraintError(props)
  }
  return new UnknownError(props)
}

/** A server `ErrorResponse` as a `SqlError`: the fields ride on the cause, as the driver's do. @internal */
export const serverError = (fields: PgProtocol.ErrorFields): SqlError => {
  const cause = Object.assign(new Error(fields.message ?? "Unknown PostgreSQL error"), fields)
  return new SqlError({
    reason: reasonFor(fields.code, fields.constraint, { cause, message: "PgConnection: Query failed", operation: "query" })
  })
}

/** The connection failed or fell out of step with the server. @internal */
export const connectionError = (cause: unknown, message: string): SqlError =>
  new SqlError({ reason: new ConnectionError({ cause, message, operation: "query" }) })

/** A statement could not be encoded, or its rows decoded. @internal */
export const queryError = (cause: unknown, message: string): SqlError =>
  new SqlError({ reason: new UnknownError({ cause, message, operation: "query" }) })

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

/**
 * What a failed connection attempt means to the pool, read from the server's
 * SQLSTATE and words: the classification every connector shares.
 *
 * @internal
 */
export const connectFailure = (error: SqlError): ConnectFailure => ({
  reason: describe(error),
  fatal: isFatalConnectError(error),
  outOfSlots: isOutOfSlots(error)
})
