/**
 * The pool's typed errors.
 *
 * Each error says which of the pool's promises was hit:
 *
 * - when: the wait was too long (`PoolTimeoutError`), the queue was full
 *   (`PoolSaturatedError`), one tenant's queue was full
 *   (`TenantQuotaExceededError`), the database could not be reached
 *   (`DatabaseUnavailableError`), the pool was shutting down
 *   (`PoolClosedError`);
 * - what: the tenant rules were broken (`TenantRequiredError`,
 *   `InvalidTenantError`, `TenantMismatchError`), or, behind a
 *   transaction-mode pooler, a statement would leave session state
 *   (`SessionStateNotAllowedError`); none of these reaches the database;
 * - the statement: no answer within `queryTimeout` (`QueryTimeoutError`), a
 *   statement sent through a lease already given back
 *   (`ConnectionReleasedError`), a session whose isolation could not be
 *   confirmed (`IsolationError`);
 * - the configuration was wrong (`PoolConfigError`, from the layer only).
 *
 * Through `SqlClient`, whose statements can only fail with `SqlError`, a pool
 * error arrives as the `cause` of a `SqlError` whose reason is a
 * `ConnectionError` (an `AuthorizationError` for the refusals of what was
 * asked, a `StatementTimeoutError` for `QueryTimeoutError`);
 * {@link fromSqlError} finds it again.
 *
 * Over 300 lines: every error of the pool is here, one class each, so that
 * they are documented in one place.
 *
 * @since 0.1.0
 */
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"
import { AuthorizationError, ConnectionError, SqlError, StatementTimeoutError } from "effect/sql/SqlError"
import { stackless } from "./internal/stackless.ts"

const TypeId = "~@meshhook/pool/PoolError" as const

/**
 * A caller waited `acquireTimeout` for a connection and got none.
 *
 * @since 0.1.0
 * @category errors
 */
export class PoolTimeoutError extends Schema.TaggedError<PoolTimeoutError>()("PoolTimeoutError", {
  /** How long the caller waited, in milliseconds. */
  waitedMillis: Schema.Number,
  /** Open connections when the wait ended. */
  poolSize: Schema.Number,
  /** The pool's `max`. */
  maxSize: Schema.Number,
  /** Callers still waiting when the wait ended. */
  queueLength: Schema.Number,
  /** Why the last connection attempt failed, when one had failed. */
  lastConnectError: Schema.optional(Schema.String)
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    const base = `Timed out after ${this.waitedMillis} ms waiting for a connection ` +
      `(${this.poolSize}/${this.maxSize} open, ${this.queueLength} waiting)`
    return this.lastConnectError === undefined ? base : `${base}; last connection attempt: ${this.lastConnectError}`
  }
}

/**
 * The wait queue held `maxWaiting` callers already, so this one was turned
 * away at once (load shedding).
 *
 * @since 0.1.0
 * @category errors
 */
export class PoolSaturatedError extends Schema.TaggedError<PoolSaturatedError>()("PoolSaturatedError", {
  /** The pool's `maxWaiting`. */
  maxWaiting: Schema.Number,
  /** Open connections, all in use. */
  poolSize: Schema.Number
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `Pool saturated: ${this.maxWaiting} callers already waiting for ${this.poolSize} connections`
  }
}

/**
 * The pool is closing or closed and takes no new work.
 *
 * @since 0.1.0
 * @category errors
 */
export class PoolClosedError extends Schema.TaggedError<PoolClosedError>()("PoolClosedError", {}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return "The pool is closed"
  }
}

/**
 * The database could not be reached: at start-up within
 * `initializationTimeout`, or with an error that waiting will not cure
 * (authentication, unknown database).
 *
 * @since 0.1.0
 * @category errors
 */
export class DatabaseUnavailableError extends Schema.TaggedError<DatabaseUnavailableError>()(
  "DatabaseUnavailableError",
  {
    /** What went wrong, without credentials. */
    reason: Schema.String,
    /** Connection attempts made. */
    attempts: Schema.Number,
    /** The driver's error. */
    cause: Schema.optional(Schema.Defect())
  }
) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `Database unavailable after ${this.attempts} connection attempt(s): ${this.reason}`
  }
}

/**
 * An option is invalid. `value` is shown as given, except for secrets, which
 * are never shown.
 *
 * @since 0.1.0
 * @category errors
 */
export class PoolConfigError extends Schema.TaggedError<PoolConfigError>()("PoolConfigError", {
  /** The option's name, as in `Pool.Options`. */
  field: Schema.String,
  /** The value given, rendered for humans; `<redacted>` for secrets. */
  value: Schema.String,
  /** What is wrong with it. */
  reason: Schema.String,
  /** The other options found wrong in the same check, so that one run shows them all. */
  others: Schema.optional(Schema.Array(Schema.Struct({ field: Schema.String, value: Schema.String, reason: Schema.String })))
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    const others = this.others ?? []
    return `Invalid pool option ${this.field} = ${this.value}: ${this.reason}` +
      (others.length === 0 ? "" : `; and ${others.map((o) => `${o.field} = ${o.value}: ${o.reason}`).join("; ")}`)
  }
}

/**
 * SQL ran with no tenant in a pool with `requireTenant`, and outside
 * `Tenant.unscoped`. It was stopped before taking a connection.
 *
 * @since 0.1.0
 * @category errors
 */
export class TenantRequiredError extends Schema.TaggedError<TenantRequiredError>()("TenantRequiredError", {}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return "SQL without a tenant: run it under Tenant.with(id), or Tenant.unscoped(reason) for cross-tenant work"
  }
}

/**
 * A tenant id was refused (not a string, empty, too long, control characters,
 * not well-formed Unicode, or not in the configured format), or the fiber's
 * tenant scope was malformed. It was stopped before taking a connection.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidTenantError extends Schema.TaggedError<InvalidTenantError>()("InvalidTenantError", {
  /** The id as `tenantTelemetry` names it: JSON-quoted and cut to 80 characters, hashed (`#...`), or hidden. */
  preview: Schema.String,
  /** What is wrong with it. */
  reason: Schema.String
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `Invalid tenant id ${this.preview}: ${this.reason}`
  }
}

/**
 * A statement asked for another tenant (or none) than the transaction it
 * runs in: one transaction serves one tenant.
 *
 * @since 0.1.0
 * @category errors
 */
export class TenantMismatchError extends Schema.TaggedError<TenantMismatchError>()("TenantMismatchError", {
  /** The tenant scope the transaction was opened under. */
  transaction: Schema.String,
  /** The tenant scope of the statement. */
  statement: Schema.String
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `A statement under ${this.statement} ran inside a transaction of ${this.transaction}`
  }
}

/**
 * Behind a transaction-mode pooler (`behindPooler: "transaction"`), a
 * statement that could leave session state on the server connection, where
 * the pooler's next client would find it (a tenant setting, a role, a lock),
 * was refused before it was sent. Use transaction-local forms instead:
 * `SET LOCAL`, `set_config(..., true)`, `pg_advisory_xact_lock`.
 *
 * @since 0.1.0
 * @category errors
 */
export class SessionStateNotAllowedError extends Schema.TaggedError<SessionStateNotAllowedError>()(
  "SessionStateNotAllowedError",
  {
    /** The statement's command (`SET`, `SELECT`, ...); not its text, which may carry values. */
    statement: Schema.String,
    /** What in it could leave session state. */
    reason: Schema.String
  }
) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `Refused behind a transaction-mode pooler: ${this.reason} would outlive the transaction (${this.statement})`
  }
}

/**
 * A tenant asked for more than its share: it already had `tenantMaxQueued`
 * requests waiting. Other tenants are unaffected.
 *
 * @since 0.1.0
 * @category errors
 */
export class TenantQuotaExceededError extends Schema.TaggedError<TenantQuotaExceededError>()(
  "TenantQuotaExceededError",
  {
    /** The option that was reached. */
    limit: Schema.Literal("tenantMaxQueued"),
    /** Its value. */
    max: Schema.Number,
    /** The tenant, as `tenantTelemetry` names it: quoted, hashed (`#...`) or hidden. */
    tenant: Schema.String
  }
) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `Tenant ${this.tenant} already has ${this.max} requests waiting (${this.limit})`
  }
}

/**
 * A statement got no answer within `queryTimeout`: the network may be gone
 * (a partition swallows bytes without closing anything). The statement was
 * cancelled where possible and its connection closed; whether it ran on the
 * server is unknown.
 *
 * @since 0.1.0
 * @category errors
 */
export class QueryTimeoutError extends Schema.TaggedError<QueryTimeoutError>()("QueryTimeoutError", {
  /** The pool's `queryTimeout`. */
  timeoutMillis: Schema.Number
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `No answer within queryTimeout (${this.timeoutMillis} ms); the connection was closed`
  }
}

/**
 * A statement used a connection after its lease had ended: a fiber forked
 * inside a transaction, stream or `sql.reserve` scope that outlived it. The
 * connection may be serving someone else by now; nothing was sent.
 *
 * @since 0.2.0
 * @category errors
 */
export class ConnectionReleasedError extends Schema.TaggedError<ConnectionReleasedError>()("ConnectionReleasedError", {}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return "The connection was already given back to the pool (a fiber outlived its transaction or reserve scope); nothing was sent"
  }
}

/**
 * The server did not confirm what tenant isolation depends on for a
 * transaction (the tenant setting, role or search_path the pool pinned,
 * or a session free of temporary objects and holdable cursors), or a
 * transaction ended otherwise than it should. The work
 * does not count, and the connection was closed.
 *
 * @since 0.2.0
 * @category errors
 */
export class IsolationError extends Schema.TaggedError<IsolationError>()("IsolationError", {
  /** What the server reported. */
  reason: Schema.String
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `Isolation not confirmed: ${this.reason}`
  }
}

/**
 * Any error the pool raises on its own behalf.
 *
 * @since 0.1.0
 * @category models
 */
export type PoolError =
  | PoolTimeoutError
  | PoolSaturatedError
  | PoolClosedError
  | DatabaseUnavailableError
  | TenantRequiredError
  | InvalidTenantError
  | TenantMismatchError
  | TenantQuotaExceededError
  | SessionStateNotAllowedError
  | QueryTimeoutError
  | ConnectionReleasedError
  | IsolationError

/**
 * Whether `u` is one of the pool's errors.
 *
 * @since 0.1.0
 * @category guards
 */
export const isPoolError = (u: unknown): u is PoolError | PoolConfigError => Predicate.hasProperty(u, TypeId)

/**
 * Wraps a pool error as the `SqlError` that `SqlClient` statements fail with.
 *
 * @since 0.1.0
 * @category conversions
 */
export const toSqlError = (error: PoolError): SqlError => {
  const props = { cause: error, message: error.message, operation: "acquire" }
  // The wrapper's stack would only show the pool's insides, and under overload refusals come by the thousand.
  return stackless(() =>
    new SqlError({
      reason: refusesWhatWasAsked(error)
        ? new AuthorizationError(props)
        : error._tag === "QueryTimeoutError"
        ? new StatementTimeoutError({ ...props, operation: "query" })
        : new ConnectionError(props)
    })
  )
}


/** Refusals of what the caller asked, rather than of when: they come back as authorization errors. */
const refusesWhatWasAsked = (error: PoolError): boolean =>
  error._tag === "TenantRequiredError" || error._tag === "InvalidTenantError" || error._tag === "TenantMismatchError" ||
  error._tag === "SessionStateNotAllowedError"

/**
 * The pool error behind a `SqlError` from a `SqlClient` statement, if the
 * statement failed because it got no connection.
 *
 * @since 0.1.0
 * @category conversions
 */
export const fromSqlError = (error: SqlError): PoolError | undefined => {
  const cause = error.reason.cause
  return isPoolError(cause) && cause._tag !== "PoolConfigError" ? cause : undefined
}
