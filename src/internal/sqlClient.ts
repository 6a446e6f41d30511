/**
 * `SqlClient` served from the pool engine.
 *
 * - A lone statement that can run alone in its own implicit transaction (a
 *   query or DML whose text names no session state) takes a share of a
 *   connection: it is sent as one cycle, the transaction prologue (with the
 *   caller's tenant, or none) followed by the statement, pipelined behind
 *   other callers' cycles. No `BEGIN`, no `COMMIT`, one round trip.
 * - Any other statement, a transaction, a stream or `sql.reserve` gets a
 *   connection alone, as a revocable lease (./lease.ts).
 * - The caller's tenant scope is checked before any connection is taken.
 *
 * @internal
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import type { Reactivity } from "effect/reactivity/Reactivity"
import type * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import type { Connection } from "effect/sql/SqlConnection"
import { SqlError } from "effect/sql/SqlError"
import * as Statement from "effect/sql/Statement"
import * as Stream from "effect/Stream"
import * as Tracer from "effect/Tracer"
import { tenantAttribute } from "../Metrics.ts"
import type * as PoolConfig from "../PoolConfig.ts"
import * as PoolError from "../PoolError.ts"
import * as Priority from "../Priority.ts"
import * as Tenant from "../Tenant.ts"
import type { Engine } from "./engine.ts"
import type { Entry } from "./entry.ts"
import { Lease, type Context as LeaseContext } from "./lease.ts"
import * as Prologue from "./prologue.ts"
import { queryError, sqlStateOf } from "./sqlState.ts"
import * as SqlText from "./sqlText.ts"
import type { Recorder } from "./telemetry.ts"
import * as Wire from "./wire.ts"

type Rows = <A extends object>(rows: ReadonlyArray<A>) => ReadonlyArray<A>
type WireEntry = Entry<Wire.Wire>

/** What a shared cycle's prologue reported: values it could not confirm, or an earlier borrower's leftovers. */
type ShareVerdict = Partial<Prologue.Verdict>

/** Lone surrogates: a string that is not well-formed UTF-16 cannot be one tenant's id. */
const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/** @internal */
export const make = (
  engine: Engine<Wire.Wire>,
  options: PoolConfig.Resolved,
  recorder: Recorder,
  cancel: (wire: Wire.Wire) => Effect.Effect<void>,
  pins: () => Prologue.Pins
): Effect.Effect<SqlClient.SqlClient, never, Reactivity> => {
  const fail = (error: PoolError.PoolError) => Effect.fail(PoolError.toSqlError(error))

  /** A scope in words for errors: tenant ids as `tenantTelemetry` allows them in telemetry. */
  const describe = (scope: Tenant.Scope): string =>
    scope._tag === "Tenant" ? `tenant ${recorder.tenantName(scope.id)}` : Tenant.describe(scope)

  /**
   * Telemetry for one statement as its caller sees it: `db.operation.name`
   * and the tenant (as `tenantTelemetry` says) on the statement's span, and
   * `db.client.operation.duration`; on failure the SQLSTATE and error type.
   */
  const observe = <A>(reading: SqlText.Reading, scope: Tenant.Scope, effect: Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> => {
    const operation = reading.operation
    // Transaction control runs in the transaction's span, not in one of its own.
    if (reading.transaction !== undefined) return effect
    const tenant = scope._tag === "Tenant" ? recorder.tenantLabel(scope.id) : undefined
    return Effect.withFiber((fiber) => {
      // `effect/sql` makes the statement's span, and hands it down as the parent
      // span when span propagation is on (the pool's layer turns it on).
      const parent = fiber.getRef(Statement.SpanPropagationEnabled)
        ? Context.getOrUndefined(fiber.context, Tracer.ParentSpan)
        : undefined
      // An unsampled span is never exported: skip its attributes.
      const span = parent?._tag === "Span" && parent.sampled ? parent : undefined
      if (span !== undefined) rename(span, spanName(operation))
      span?.attribute("db.operation.name", operation)
      if (tenant !== undefined) span?.attribute(tenantAttribute, tenant)
      const started = performance.now()
      return Effect.onExitPrimitive(effect, (exit) => {
        const seconds = (performance.now() - started) / 1_000
        if (exit._tag === "Success") {
          recorder.operation(operation, seconds, undefined)
          return undefined
        }
        const error = Exit.findErrorOption(exit)
        const state = error._tag === "Some" ? sqlStateOf(error.value) : undefined
        const errorType = state ?? (error._tag === "Some" ? error.value.reason._tag : "interrupted")
        recorder.operation(operation, seconds, errorType)
        span?.attribute("error.type", errorType)
        if (state !== undefined) span?.attribute("db.response.status_code", state)
        // The pool's own refusals (circuit open, timeout, saturation, tenant rules) are events on the span.
        const refusal = error._tag === "Some" ? PoolError.fromSqlError(error.value) : undefined
        if (refusal !== undefined) {
          span?.event("meshhook.pool.refused", fiber.getRef(Clock.Clock).currentTimeNanosUnsafe(), { reason: refusal._tag })
        }
        return undefined
      }, true)
    })
  }

  /**
   * Names a statement's span as OpenTelemetry's database conventions do,
   * `{db.operation.name} {target}` (`SELECT meshhook`): `effect/sql` names it
   * before the statement is read, after the database alone. An exported span
   * (`@effect/opentelemetry`'s) carries the OpenTelemetry span it renames.
   */
  const spanNames = new Map<string, string>()
  /** `{operation} {database}`, built once per operation (first keywords are few) rather than per statement. */
  const spanName = (operation: string): string => {
    const known = spanNames.get(operation)
    if (known !== undefined) return known
    const name = `${operation} ${options.database}`
    if (spanNames.size < 256) spanNames.set(operation, name)
    return name
  }
  const rename = (span: Tracer.Span, name: string): void => {
    ;(span as { name: string }).name = name
    ;(span as { readonly span?: { readonly updateName?: (name: string) => unknown } }).span?.updateName?.(name)
  }

  /** Behind a transaction-mode pooler, session state would reach the pooler's next client: refused. */
  const refuse = options.behindPooler === "transaction"
    ? (reading: SqlText.Reading): SqlError | undefined =>
      reading.sessionState === undefined ? undefined : PoolError.toSqlError(
        // The command, not the text: a SET carries its value in the text, and errors reach logs and spans.
        new PoolError.SessionStateNotAllowedError({ statement: reading.operation, reason: reading.sessionState })
      )
    : () => undefined

  const warn = (message: string): Effect.Effect<void> =>
    Effect.logWarning(message).pipe(Effect.annotateLogs({ pool: options.name }))

  const direct = options.behindPooler === "none"
  let lastLeftover = -Infinity
  let leftoversSince = 0
  /**
   * An earlier borrower's leftovers are worth knowing about, but behind a
   * pooler they come from its other clients with every transaction: at most
   * one warning a minute, counting the rest.
   */
  const leftover = (what: string, refused = direct): Effect.Effect<void> =>
    Effect.suspend(() => {
      const now = Date.now()
      if (now - lastLeftover < 60_000) {
        leftoversSince++
        return Effect.void
      }
      const more = leftoversSince === 0 ? "" : ` (and ${leftoversSince} more since the last warning)`
      lastLeftover = now
      leftoversSince = 0
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

  const leaseContext: LeaseContext = {
    engine,
    pins,
    direct,
    sessionCheck: options.sessionCheck,
    queryTimeout: options.queryTimeout,
    cancel,
    refuse,
    observe,
    describe,
    warn,
    leftover,
    acquire: (scope) => acquire(scope, false)
  }

  const invalidTenant = (preview: string, reason: string) => fail(new PoolError.InvalidTenantError({ preview, reason }))

  /**
   * The caller's tenant scope, refused before any connection is taken if it
   * breaks the rules or is not a scope at all (a malformed `CurrentTenant`).
   */
  const callerScope: Effect.Effect<Tenant.Scope, SqlError> = Effect.withFiber(
    (fiber): Effect.Effect<Tenant.Scope, SqlError> => {
      const scope = fiber.getRef(Tenant.CurrentTenant) as Tenant.Scope | null | undefined
      switch (typeof scope === "object" && scope !== null ? scope._tag : undefined) {
        case "Tenant": {
          const id: unknown = (scope as { readonly id: unknown }).id
          if (typeof id !== "string") return invalidTenant(`(${id === null ? "null" : typeof id})`, "must be a string")
          const problem = loneSurrogate.test(id) ? "is not well-formed Unicode (a lone surrogate)" : options.checkTenant(id)
          if (problem === undefined) return Effect.succeed(scope!)
          return invalidTenant(recorder.tenantName(id), problem)
        }
        case "None":
          return options.requireTenant ? fail(new PoolError.TenantRequiredError()) : Effect.succeed(scope!)
        case "Unscoped": {
          const reason: unknown = (scope as { readonly reason: unknown }).reason
          if (typeof reason !== "string") return invalidTenant("(unscoped)", "Tenant.unscoped needs a reason")
          return Effect.as(Effect.annotateCurrentSpan("meshhook.tenant.unscoped", reason), scope!)
        }
        default:
          return invalidTenant("(malformed)", "the fiber's CurrentTenant is not a tenant scope")
      }
    }
  )

  const detectLeaks = options.leakDetectionThreshold !== Infinity

  /**
   * Where a caller is, for leak reports: its span (name, trace) and the
   * JavaScript stack, taken when it asks (the connection may be handed over
   * later, from another fiber's stack).
   */
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

  const tenantOf = (scope: Tenant.Scope): string => scope._tag === "Tenant" ? scope.id : ""

  /** Takes a connection (or a share) for the caller, in its tenant's turn and its fiber's priority. */
  const acquire = (scope: Tenant.Scope, shared: boolean): Effect.Effect<WireEntry, SqlError> =>
    Effect.withFiber((fiber) =>
      Effect.mapError(
        engine.acquire({
          tenant: tenantOf(scope),
          priority: fiber.getRef(Priority.CurrentPriority),
          shared,
          origin: detectLeaks && !shared ? originOf(fiber) : undefined
        }),
        PoolError.toSqlError
      )
    )

  /** Runs `f` on a connection lent to this caller alone, and takes it back on any exit. */
  const withLease = <A, E, R>(scope: Tenant.Scope, f: (lease: Lease) => Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(restore(acquire(scope, false)), (entry) => {
        const lease = new Lease(entry, scope, leaseContext, false)
        return Effect.onExitPrimitive(restore(f(lease)), () => lease.giveBack(), true)
      })
    )

  /**
   * What a shared cycle's prologue says: a prologue that could not confirm
   * the pinned values (the statement did not run), or, directly on
   * PostgreSQL, found an earlier borrower's leftovers retires the
   * connection once its other borrowers are answered, as do settings the
   * server reported changed.
   */
  const inspectShare = (entry: WireEntry, reply: Wire.Reply, tenant: string): ShareVerdict => {
    if (entry.connection.takeReports().length > 0) entry.broken = true
    const prologue = reply.answers[0]
    if (prologue === undefined) return {}
    const verdict = prologue instanceof SqlError
      ? { leftover: undefined, problem: Prologue.isUnconfirmed(prologue) }
      : Prologue.verdict(prologue, pins(), tenant)
    // Behind a pooler, closing the pool's connection would not clean the server's.
    if (verdict.problem !== undefined || (verdict.leftover !== undefined && direct)) entry.broken = true
    return verdict
  }

  /**
   * One autocommit statement on a share of a connection, in one cycle with
   * the prologue. A statement whose caller leaves, or that gets no answer
   * within `queryTimeout`, is abandoned: the engine cancels it once nobody
   * else's statement shares the connection, then closes the connection.
   */
  const share = (scope: Tenant.Scope, query: Wire.Query, retried = false): Effect.Effect<Wire.Answer, SqlError> =>
    Effect.uninterruptibleMask((restore) => {
      const tenant = tenantOf(scope)
      let verdict: ShareVerdict = {}
      const runOn = (entry: WireEntry) => {
        const cycle = Effect.map(Wire.run(entry.connection, [Prologue.query(pins(), tenant, true), query]), (reply) => {
          verdict = inspectShare(entry, reply, tenant)
          return reply
        })
        const timed = options.queryTimeout === Infinity
          ? Effect.map(cycle, Option.some)
          : Effect.timeoutOption(cycle, options.queryTimeout)
        return Effect.onExitPrimitive(restore(timed), (exit) => {
          if (Exit.hasInterrupts(exit) || (Exit.isSuccess(exit) && exit.value._tag === "None")) engine.abandon(entry)
          else engine.release(entry)
          return undefined
        }, true).pipe(
          Effect.flatMap((reply) =>
            reply._tag === "None"
              ? fail(new PoolError.QueryTimeoutError({ timeoutMillis: options.queryTimeout }))
              : answerOf(reply.value, verdict, () => share(scope, query, true), retried)
          )
        )
      }
      // Most statements find a share free: no waiting, no extra steps.
      const entry = engine.shareNow(tenant)
      return entry !== undefined ? runOn(entry) : Effect.flatMap(restore(acquire(scope, true)), runOn)
    })

  /** The caller's answer from a shared cycle's reply. */
  const answerOf = (
    reply: Wire.Reply,
    verdict: ShareVerdict,
    again: () => Effect.Effect<Wire.Answer, SqlError>,
    retried: boolean
  ): Effect.Effect<Wire.Answer, SqlError> => {
    if (reply.defect !== undefined) return Effect.die(reply.defect)
    const [prologue, answer] = reply.answers
    // The prologue failed before the statement ran, and its connection is retired: once more, on another.
    if (verdict.problem !== undefined) {
      return retried
        ? fail(new PoolError.IsolationError({ reason: verdict.problem }))
        : Effect.andThen(leftover(verdict.problem, true), again())
    }
    if (prologue instanceof SqlError && !reply.stale) return Effect.fail(prologue)
    const warning = verdict.leftover === undefined ? Effect.void : leftover(verdict.leftover)
    // A statement the server no longer knew by name: once more, named afresh (nothing of it committed).
    if (reply.stale && !retried && reply.status === "I") return Effect.andThen(warning, again())
    if (answer instanceof SqlError) return Effect.andThen(warning, Effect.fail(answer))
    if (answer === undefined) return Effect.fail(queryError(new Error("no answer"), "PgConnection: The statement got no answer"))
    return Effect.as(warning, answer)
  }

  /** Whether a lone statement may take a share: it runs alone in an implicit transaction and names no session state. */
  const shareable = (reading: SqlText.Reading): boolean =>
    options.pipelineDepth > 1 && options.sessionCheck !== "always" && reading.effect === "neutral" &&
    reading.sessionState === undefined

  /** One statement from `borrow`: on a share when it may, else on a connection of its own. */
  const statement = (scope: Tenant.Scope, query: Wire.Query): Effect.Effect<Wire.Answer, SqlError> => {
    const reading = SqlText.read(query.sql)
    const refused = refuse(reading)
    return observe(
      reading,
      scope,
      refused !== undefined
        ? Effect.fail(refused)
        : shareable(reading)
        ? share(scope, query)
        : withLease(scope, (lease) => lease.statement(query, reading))
    )
  }

  const transformed = (answer: Wire.Answer, transformRows: Rows | undefined) =>
    transformRows === undefined ? answer.rows : transformRows(answer.rows)

  /**
   * The connection `borrow` hands to a statement: it takes a connection only
   * when the statement runs, once the text tells how it may run. One per
   * tenant scope, made once.
   */
  const statementConnections = new WeakMap<Tenant.Scope, Connection>()
  const statementConnection = (scope: Tenant.Scope): Connection => {
    let connection = statementConnections.get(scope)
    if (connection === undefined) statementConnections.set(scope, connection = makeStatementConnection(scope))
    return connection
  }
  const makeStatementConnection = (scope: Tenant.Scope): Connection => {
    const run = (sql: string, params: ReadonlyArray<unknown>, prepare: boolean, shape: Wire.Query["shape"]) =>
      statement(scope, { sql, params, prepare, shape })
    return {
      execute: (sql, params, transformRows) => Effect.map(run(sql, params, true, "objects"), (a) => transformed(a, transformRows)),
      executeUnprepared: (sql, params, transformRows) =>
        Effect.map(run(sql, params, false, "objects"), (a) => transformed(a, transformRows)),
      executeRaw: (sql, params) => run(sql, params, true, "objects"),
      executeValues: (sql, params) => Effect.map(run(sql, params, true, "values"), (a) => a.rows as Array<Array<unknown>>),
      executeValuesUnprepared: (sql, params) =>
        Effect.map(run(sql, params, false, "values"), (a) => a.rows as Array<Array<unknown>>),
      executeStream: (sql, params, transformRows) =>
        Stream.unwrap(Effect.map(lease, (connection) => connection.executeStream(sql, params, transformRows)))
    }
  }

  const borrow = <A, E, R>(f: (connection: Connection) => Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> =>
    Effect.flatMap(callerScope, (scope) => f(statementConnection(scope)))

  /** A connection for the life of the current scope: transactions, streams, `reserve`. */
  const lease: Effect.Effect<Connection, SqlError, Scope.Scope> = Effect.flatMap(callerScope, (scope) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(restore(acquire(scope, false)), (entry) => {
        const leased = new Lease(entry, scope, leaseContext, true)
        return Effect.as(Effect.addFinalizer(() => leased.giveBack() ?? Effect.void), leased)
      })
    ))

  const transformRows = options.transformResultNames
    ? Statement.defaultTransforms(options.transformResultNames, options.transformJson).array
    : undefined

  return SqlClient.make({
    acquirer: lease,
    borrower: borrow,
    transactionAcquirer: lease,
    compiler: PgClient.makeCompiler(options.transformQueryNames, options.transformJson),
    driver: "pg",
    // Unnamed, as the pool's own: a stale name must never keep a transaction from ending.
    prepareTransactionControls: false,
    commit: (connection) => (connection as Lease).commit,
    releaseSavepoint: (name) => `RELEASE SAVEPOINT ${name}`,
    spanAttributes: [
      ...Object.entries(options.spanAttributes),
      ["db.system.name", "postgresql"],
      ["db.namespace", options.database],
      ["server.address", options.host],
      ["server.port", options.port],
      ["db.client.connection.pool.name", options.name]
    ],
    transformRows
  })
}
