/**
 * What the pool tells about the statements it serves: each statement's span
 * (named and attributed as OpenTelemetry's database conventions say) and
 * duration metric, warnings about sessions, and where a connection held too
 * long was taken. Nothing here decides anything.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import type { SqlError } from "effect/sql/SqlError"
import * as Statement from "effect/sql/Statement"
import * as Tracer from "effect/Tracer"
import { tenantAttribute } from "../../Metrics.ts"
import type * as PoolConfig from "../../PoolConfig.ts"
import * as PoolError from "../../PoolError.ts"
import * as Tenant from "../../Tenant.ts"
import { sqlStateOf } from "../postgres/sqlState.ts"
import type * as SqlText from "../postgres/sqlText.ts"
import type { Recorder } from "../telemetry.ts"

/** What one pool tells about its statements. @internal */
export interface Observation {
  /**
   * Telemetry for one statement as its caller sees it: `db.operation.name`
   * and the tenant (as `tenantTelemetry` says) on the statement's span, and
   * `db.client.operation.duration`; on failure the SQLSTATE and error type.
   */
  readonly observe: <A>(reading: SqlText.Reading, scope: Tenant.Scope, effect: Effect.Effect<A, SqlError>) => Effect.Effect<A, SqlError>
  /** A tenant scope in words for errors, as `tenantTelemetry` allows. */
  readonly describe: (scope: Tenant.Scope) => string
  /** Logs a warning about a connection's session. */
  readonly warn: (message: string) => Effect.Effect<void>
  /**
   * Warns (at most once a minute) that a prologue found `what` left on a
   * session by an earlier borrower, and whether the work was `refused` there
   * (always, directly on PostgreSQL) or the values overridden.
   */
  readonly leftover: (what: string, refused?: boolean) => Effect.Effect<void>
  /**
   * With leak detection on, where the caller running in `fiber` is, read
   * when a leak is reported: the stack is taken at once (the connection may
   * be handed over later, from another fiber's stack).
   */
  readonly origin: ((fiber: Fiber.Fiber<unknown, unknown>) => () => string) | undefined
}

/** One pool's telemetry and warnings for its statements, through its metrics `recorder`. @internal */
export const make = (options: PoolConfig.Resolved, recorder: Recorder): Observation => {
  const warn = (message: string): Effect.Effect<void> =>
    Effect.logWarning(message).pipe(Effect.annotateLogs({ pool: options.name }))
  return {
    observe: observer(recorder, spanNamer(options.database)),
    describe: (scope) => scope._tag === "Tenant" ? `tenant ${recorder.tenantName(scope.id)}` : Tenant.describe(scope),
    warn,
    leftover: leftoverWarnings(warn, options.behindPooler === "none"),
    origin: options.leakDetectionThreshold === Infinity ? undefined : originOf
  }
}

const observer = (recorder: Recorder, spanName: (operation: string) => string) =>
<A>(reading: SqlText.Reading, scope: Tenant.Scope, effect: Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> => {
  // Transaction control runs in the transaction's span, not in one of its own.
  if (reading.transaction !== undefined) return effect
  const operation = reading.operation
  const tenant = scope._tag === "Tenant" ? recorder.tenantLabel(scope.id) : undefined
  return Effect.withFiber((fiber) => {
    // `effect/sql` makes the statement's span, and hands it down as the parent
    // span when span propagation is on (the pool's layer turns it on).
    const parent = fiber.getRef(Statement.SpanPropagationEnabled)
      ? Context.getOrUndefined(fiber.context, Tracer.ParentSpan)
      : undefined
    // An unsampled span is never exported: skip its attributes.
    const span = parent?._tag === "Span" && parent.sampled ? parent : undefined
    if (span !== undefined) {
      rename(span, spanName(operation))
      span.attribute("db.operation.name", operation)
      if (tenant !== undefined) span.attribute(tenantAttribute, tenant)
    }
    const started = performance.now()
    return Effect.onExitPrimitive(effect, (exit) => {
      record(recorder, operation, (performance.now() - started) / 1_000, exit, span, fiber)
      return undefined
    }, true)
  })
}

/**
 * A statement's duration metric; on failure, what failed on its span, and the pool's own refusals as events.
 *
 * The error type is the pool's error when the pool failed the statement itself (`PoolTimeoutError`,
 * `DatabaseUnavailableError`, ...), else the SQLSTATE, else the `SqlError`'s reason: the pool wraps its
 * refusals in a `ConnectionError` reason, which would make them look like lost connections.
 */
const record = (
  recorder: Recorder,
  operation: string,
  seconds: number,
  exit: Exit.Exit<unknown, SqlError>,
  span: Tracer.Span | undefined,
  fiber: Fiber.Fiber<unknown, unknown>
): void => {
  if (exit._tag === "Success") return recorder.operation(operation, seconds, undefined)
  const error = Exit.findErrorOption(exit)
  const refusal = error._tag === "Some" ? PoolError.fromSqlError(error.value) : undefined
  const state = error._tag === "Some" ? sqlStateOf(error.value) : undefined
  const errorType = refusal?._tag ?? state ?? (error._tag === "Some" ? error.value.reason._tag : "interrupted")
  recorder.operation(operation, seconds, errorType)
  if (span === undefined) return
  span.attribute("error.type", errorType)
  if (state !== undefined) span.attribute("db.response.status_code", state)
  // The pool's own refusals (circuit open, timeout, saturation, tenant rules) are events on the span.
  if (refusal !== undefined) {
    span.event("meshhook.pool.refused", fiber.getRef(Clock.Clock).currentTimeNanosUnsafe(), { reason: refusal._tag })
  }
}

/**
 * Names statement spans as OpenTelemetry's database conventions do,
 * `{db.operation.name} {target}` (`SELECT meshhook`): `effect/sql` names
 * them before the statement is read, after the database alone. A name is
 * built once per operation (first keywords are few), not per statement.
 */
const spanNamer = (database: string) => {
  const names = new Map<string, string>()
  return (operation: string): string => {
    const known = names.get(operation)
    if (known !== undefined) return known
    const name = `${operation} ${database}`
    if (names.size < 256) names.set(operation, name)
    return name
  }
}

/** Renames a span; an exported span (`@effect/opentelemetry`'s) carries the OpenTelemetry span it renames. */
const rename = (span: Tracer.Span, name: string): void => {
  ;(span as { name: string }).name = name
  ;(span as { readonly span?: { readonly updateName?: (name: string) => unknown } }).span?.updateName?.(name)
}

/**
 * An earlier borrower's leftovers are worth knowing about, but behind a
 * pooler they come from its other clients with every transaction: at most
 * one warning a minute, counting the rest.
 */
const leftoverWarnings = (warn: (message: string) => Effect.Effect<void>, direct: boolean) => {
  let last = -Infinity
  let since = 0
  return (what: string, refused = direct): Effect.Effect<void> =>
    Effect.suspend(() => {
      const now = Date.now()
      if (now - last < 60_000) {
        since++
        return Effect.void
      }
      const more = since === 0 ? "" : ` (and ${since} more since the last warning)`
      last = now
      since = 0
      return warn(
        direct
          ? `The transaction prologue found ${what} left on a session by an earlier borrower${more}: the work did ` +
            "not run on it and its connection was retired. A function or trigger that sets session state is the " +
            "likely cause (docs/security.md)."
          : `The transaction prologue found ${what} on a server connection of the pooler${more}: ` +
            (refused ? "the work did not run there. " : "it was overridden for the transaction. ") +
            "The pooler's other clients leave such state: see docs/scaling.md (server_reset_query_always)."
      )
    })
}

/** Where a caller is, for leak reports: its span (name, trace) when the report is made, and the stack now. */
const originOf = (fiber: Fiber.Fiber<unknown, unknown>): () => string => {
  const stack = new Error("taken here").stack?.split("\n").slice(2, 14).join("\n") ?? ""
  return () => {
    const span = Context.getOrUndefined(fiber.context, Tracer.ParentSpan)
    const where = span === undefined
      ? "no span"
      : `span ${span._tag === "Span" ? `"${span.name}" ` : ""}trace ${span.traceId} span ${span.spanId}`
    return `${where}\n${stack}`
  }
}
