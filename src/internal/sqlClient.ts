/**
 * `SqlClient` served from the pool engine.
 *
 * - An autocommit statement without a tenant shares a connection with other
 *   callers' statements, pipelined by the driver, when its text is a plain
 *   query or DML; any other statement gets a connection of its own.
 * - Under a tenant, SQL runs in a transaction whose first statement after
 *   `BEGIN` is `set_config(<tenantSetting>, $1, true)`. A lone statement is
 *   sent as `BEGIN`, the set, the statement and `COMMIT` in one write;
 *   `withTransaction` has the set sent with its `BEGIN`; a stream runs in a
 *   transaction of its own.
 * - A connection lent to one caller is cancelled on the server when that
 *   caller is interrupted mid-statement.
 * - Every lease comes back clean or not at all: inside a transaction it is
 *   closed; after a statement that may have set session state it is checked on
 *   the server, and closed if it did.
 *
 * @internal
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import type * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import type { Reactivity } from "effect/reactivity/Reactivity"
import * as Result from "effect/Result"
import type * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import type { Connection } from "effect/sql/SqlConnection"
import { SqlError, UnknownError } from "effect/sql/SqlError"
import * as Statement from "effect/sql/Statement"
import * as Stream from "effect/Stream"
import * as Tracer from "effect/Tracer"
import type * as PoolConfig from "../PoolConfig.ts"
import { tenantAttribute } from "../Metrics.ts"
import * as PoolError from "../PoolError.ts"
import * as Priority from "../Priority.ts"
import * as Tenant from "../Tenant.ts"
import type { Engine } from "./engine.ts"
import type { Entry } from "./entry.ts"
import * as SessionState from "./sessionState.ts"
import { sqlStateOf } from "./sqlState.ts"
import type { Recorder } from "./telemetry.ts"

type Rows = <A extends object>(rows: ReadonlyArray<A>) => ReadonlyArray<A>
type PgEntry = Entry<PgConnection.PgConnection>
type Values = ReadonlyArray<ReadonlyArray<unknown>>

const setTenantSql = "SELECT set_config($1, $2, true)"
const beginText = /^\s*(?:begin|start\s+transaction)\b/i
const unwindText = /^\s*(?:rollback|release)\b/i
const transactionControl: ReadonlySet<string> = new Set(["BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"])
const unwoundResult: PgConnection.Result = { command: "ROLLBACK", rowCount: 0, oid: null, rows: [], fields: [] }

/** What a lease needs from the pool. */
interface LeaseSettings {
  readonly tenantSetting: string
  readonly queryTimeout: number
  /** Cancels what a connection's server session runs. */
  readonly cancel: (connection: PgConnection.PgConnection) => Effect.Effect<void>
  /** Why a statement must not be sent at all (behind a pooler, session state), if it must not. */
  readonly refuse: (sql: string) => SqlError | undefined
  /** Telemetry around a statement its caller sent (see `observe` in `make`). */
  readonly observe: <A>(sql: string, scope: Tenant.Scope, effect: Effect.Effect<A, SqlError>) => Effect.Effect<A, SqlError>
}

const queryTimedOut = (timeoutMillis: number) =>
  PoolError.toSqlError(new PoolError.QueryTimeoutError({ timeoutMillis }))

const isBegin = (result: PgConnection.Result) => result.command === "BEGIN" || result.command === "START"

/**
 * Runs statements for one connection together: each starts at once, in order,
 * so the driver puts them in one write; each is answered on its own, none cut
 * short by another's failure.
 */
const together = <A>(
  statements: ReadonlyArray<Effect.Effect<A, SqlError>>
): Effect.Effect<Array<Result.Result<A, SqlError>>> =>
  Effect.flatMap(
    Effect.forEach(statements, (statement) => Effect.forkChild(Effect.result(statement), { startImmediately: true })),
    Fiber.joinAll
  )

/** The first failure among results, in submission order. */
const firstFailure = (results: ReadonlyArray<Result.Result<unknown, SqlError>>): SqlError | undefined => {
  for (const result of results) if (Result.isFailure(result)) return result.failure
  return undefined
}

/** PostgreSQL answers `COMMIT` of an aborted transaction with `ROLLBACK`: that is a failure. */
const commitRolledBack = () =>
  new SqlError({
    reason: new UnknownError({
      cause: new Error("COMMIT rolled back an aborted transaction"),
      message: "COMMIT rolled back an aborted transaction",
      operation: "commit"
    })
  })

const commit = (connection: Connection): Effect.Effect<void, SqlError> =>
  Effect.flatMap(
    connection.executeRaw("COMMIT", []) as Effect.Effect<PgConnection.Result, SqlError>,
    (result) => result.command === "ROLLBACK" ? Effect.fail(commitRolledBack()) : Effect.void
  )

/**
 * A connection lent to one caller alone, as `SqlClient` sees it.
 *
 * It follows the transaction state from the command tags the server returns,
 * sets the tenant with every `BEGIN`, notes statements that may have set
 * session state, and cancels the statement on the server when its caller is
 * interrupted. A lease that outlives one statement (a transaction, stream or
 * reservation) also checks that each statement asks for the tenant scope it
 * was taken under.
 */
class Lease implements Connection {
  readonly entry: PgEntry
  readonly scope: Tenant.Scope
  readonly settings: LeaseSettings
  readonly checkScope: boolean
  inTransaction = false
  /** A statement may have set session state. */
  suspect = false
  /** A statement got no answer in time: the connection's state is unknown. */
  timedOut = false

  constructor(entry: PgEntry, scope: Tenant.Scope, settings: LeaseSettings, checkScope: boolean) {
    this.entry = entry
    this.scope = scope
    this.settings = settings
    this.checkScope = checkScope
  }

  /** Follows the transaction state; `sql` is judged for session state unless the pool wrote it. */
  private note(result: PgConnection.Result, sql: string | undefined): PgConnection.Result {
    switch (result.command) {
      case "BEGIN":
      case "START":
        this.inTransaction = true
        break
      case "COMMIT":
      case "ROLLBACK":
        this.inTransaction = false
    }
    if (sql !== undefined && !this.suspect && SessionState.isSuspect(result.command, sql)) this.suspect = true
    return result
  }

  /**
   * A statement on the wire: cancelled on the server if its caller is
   * interrupted, and given up after `queryTimeout`, which condemns the lease.
   */
  private readonly onWire = <A>(effect: Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> => {
    const cancellable = Effect.onInterrupt(effect, () => this.settings.cancel(this.entry.connection))
    return this.settings.queryTimeout === Infinity ? cancellable : Effect.timeoutOrElse(cancellable, {
      duration: this.settings.queryTimeout,
      orElse: () =>
        Effect.suspend(() => {
          this.timedOut = true
          return Effect.fail(queryTimedOut(this.settings.queryTimeout))
        })
    })
  }

  /** One statement on the wire, noted, cancelled on the server if its caller is interrupted. */
  submit(sql: string, params: ReadonlyArray<unknown>, prepare = true): Effect.Effect<PgConnection.Result, SqlError> {
    return this.onWire(Effect.map(this.entry.connection.query(sql, params, prepare), (result) => this.note(result, sql)))
  }

  /** As `submit`, for the pool's own statements (transaction control, the tenant's set). */
  private control(sql: string, params: ReadonlyArray<unknown> = []): Effect.Effect<PgConnection.Result, SqlError> {
    return this.onWire(Effect.map(this.entry.connection.query(sql, params), (result) => this.note(result, undefined)))
  }


  private get setTenant(): Effect.Effect<PgConnection.Result, SqlError> | undefined {
    return this.scope._tag === "Tenant" ? this.control(setTenantSql, [this.settings.tenantSetting, this.scope.id]) : undefined
  }

  /** Refuses a statement whose fiber asks for another tenant than this lease serves. */
  private guard<A>(effect: Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> {
    if (!this.checkScope) return effect
    return Effect.withFiber((fiber) => {
      const asked = fiber.getRef(Tenant.CurrentTenant)
      return Tenant.sameScope(asked, this.scope)
        ? effect
        : Effect.fail(PoolError.toSqlError(
          new PoolError.TenantMismatchError({
            transaction: Tenant.describe(this.scope),
            statement: Tenant.describe(asked)
          })
        ))
    })
  }

  /**
   * A statement; a `BEGIN` under a tenant goes out together with the
   * tenant's set. Unwinding (`ROLLBACK`, `RELEASE`) on a lost connection
   * succeeds: the server drops the transaction with the connection, and
   * `effect/sql` would otherwise turn the failure into a defect that no
   * retry can see. The lease stays in its transaction, so it is closed.
   * Lost means a socket failure, or the driver retired the connection: a
   * backend terminated while the transaction was idle sends its FATAL error
   * (57P01) before any statement, and the driver fails every later one
   * with it.
   */
  private query(sql: string, params: ReadonlyArray<unknown>, prepare = true) {
    const refused = this.settings.refuse(sql)
    if (refused !== undefined) return Effect.fail(refused)
    if (unwindText.test(sql)) {
      return Effect.catchIf(
        this.submit(sql, params, prepare),
        (error) => error.reason._tag === "ConnectionError" || this.entry.broken,
        () => Effect.succeed(unwoundResult)
      )
    }
    const setTenant = this.setTenant
    if (setTenant === undefined) return this.guard(this.submit(sql, params, prepare))
    if (beginText.test(sql)) {
      return this.guard(Effect.flatMap(together([this.submit(sql, params, prepare), setTenant]), (results) => {
        const failure = firstFailure(results)
        return failure === undefined ? Effect.succeed(Result.getOrThrow(results[0])) : Effect.fail(failure)
      }))
    }
    // A transaction opened some other way still gets its tenant.
    return this.guard(
      Effect.tap(this.submit(sql, params, prepare), (result) => isBegin(result) ? setTenant : Effect.void)
    )
  }

  /** As `submit`, for positional rows; the driver returns no command tag for them, so only the text is judged. */
  submitValues(sql: string, params: ReadonlyArray<unknown>, prepare: boolean): Effect.Effect<Values, SqlError> {
    const refused = this.settings.refuse(sql)
    if (refused !== undefined) return Effect.fail(refused)
    if (!this.suspect && SessionState.isSuspectText(sql)) this.suspect = true
    return this.onWire(this.entry.connection.queryValues(sql, params, prepare))
  }

  private rows(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined, prepare: boolean) {
    return Effect.map(this.observed(sql, this.query(sql, params, prepare)), (result) => transformed(result.rows, transformRows))
  }

  private observed<A>(sql: string, effect: Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> {
    return this.settings.observe(sql, this.scope, effect)
  }

  execute(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    return this.rows(sql, params, transformRows, true)
  }
  executeUnprepared(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    return this.rows(sql, params, transformRows, false)
  }
  executeRaw(sql: string, params: ReadonlyArray<unknown>) {
    return this.observed(sql, this.query(sql, params))
  }
  executeValues(sql: string, params: ReadonlyArray<unknown>) {
    return this.observed(sql, this.guard(this.submitValues(sql, params, true)))
  }
  executeValuesUnprepared(sql: string, params: ReadonlyArray<unknown>) {
    return this.observed(sql, this.guard(this.submitValues(sql, params, false)))
  }
  executeStream(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    const refused = this.settings.refuse(sql)
    if (refused !== undefined) return Stream.fail(refused)
    if (!this.suspect && SessionState.isSuspectText(sql)) this.suspect = true
    const stream = Stream.unwrap(this.guard(Effect.succeed(this.entry.connection.stream(sql, params))))
    return transformRows === undefined
      ? stream
      : Stream.mapArray(stream, (rows) => transformRows(rows) as typeof rows)
  }

  readonly begin = Effect.suspend(() => this.execute("BEGIN", [], undefined))
  readonly rollback = Effect.suspend(() => this.execute("ROLLBACK", [], undefined))

  /**
   * One statement in a transaction of its own under the lease's tenant:
   * `BEGIN`, the set, the statement and `COMMIT` in one write. The first
   * failure is the caller's; a `COMMIT` that reports `ROLLBACK` is one.
   */
  tenantStatement<A>(statement: Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> {
    return Effect.flatMap(
      together<unknown>([this.control("BEGIN"), this.setTenant!, statement, this.control("COMMIT")]),
      ([begin, set, result, committed]) => {
        const failure = firstFailure([begin, set, result, committed])
        if (failure !== undefined) return Effect.fail(failure)
        return (Result.getOrThrow(committed) as PgConnection.Result).command === "ROLLBACK"
          ? Effect.fail(commitRolledBack())
          : Effect.succeed(Result.getOrThrow(result) as A)
      }
    )
  }
}

const transformed = <A extends object>(rows: ReadonlyArray<A>, transformRows: Rows | undefined) =>
  transformRows === undefined ? rows : transformRows(rows)

/** @internal */
export const make = (
  engine: Engine<PgConnection.PgConnection>,
  options: PoolConfig.Resolved,
  recorder: Recorder,
  cancel: (connection: PgConnection.PgConnection) => Effect.Effect<void>
): Effect.Effect<SqlClient.SqlClient, never, Reactivity> => {
  /**
   * Telemetry for one statement as its caller sees it: `db.operation.name`
   * and the tenant (as `tenantTelemetry` says) on the statement's span, and
   * `db.client.operation.duration`; on failure the SQLSTATE and error type.
   */
  const observe = <A>(sql: string, scope: Tenant.Scope, effect: Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> => {
    const operation = SessionState.operationName(sql)
    // Transaction control runs in the transaction's span, not a statement's of its own.
    if (transactionControl.has(operation)) return effect
    const tenant = scope._tag === "Tenant" ? recorder.tenantLabel(scope.id) : undefined
    return Effect.withFiber((fiber) => {
      // `effect/sql` makes the statement's span, and hands it down as the parent
      // span when span propagation is on (the pool's layer turns it on).
      const parent = fiber.getRef(Statement.SpanPropagationEnabled)
        ? Context.getOrUndefined(fiber.context, Tracer.ParentSpan)
        : undefined
      // An unsampled span is never exported: skip its attributes.
      const span = parent?._tag === "Span" && parent.sampled ? parent : undefined
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

  /** Behind a transaction-mode pooler, session state would reach the pooler's next client: refused. */
  const refuse = options.behindPooler === "transaction"
    ? (sql: string): SqlError | undefined => {
      const reason = SessionState.sessionStateIn(sql)
      return reason === undefined ? undefined : PoolError.toSqlError(
        // The command, not the text: a SET carries its value in the text, and errors reach logs and spans.
        new PoolError.SessionStateNotAllowedError({ statement: SessionState.operationName(sql), reason })
      )
    }
    : () => undefined

  const leaseSettings: LeaseSettings = {
    tenantSetting: options.tenantSetting,
    queryTimeout: options.queryTimeout,
    cancel,
    refuse,
    observe
  }

  const checkSession = (lease: Lease): Effect.Effect<void> =>
    lease.entry.connection.query(SessionState.checkQuery, [options.username, options.tenantSetting]).pipe(
      Effect.map((result) => SessionState.findings(result.rows[0])),
      Effect.timeoutOption(options.connectTimeout),
      Effect.matchEffect({
        onFailure: () => Effect.sync(() => engine.invalidate(lease.entry)),
        onSuccess: (found) => {
          if (found._tag === "None") return Effect.sync(() => engine.invalidate(lease.entry))
          if (found.value === undefined) return Effect.sync(() => engine.release(lease.entry))
          engine.invalidate(lease.entry)
          return Effect.logWarning(
            `A lease left session state on its connection (${found.value}); the connection was closed. ` +
              "Use SET LOCAL / set_config(..., true) inside a transaction instead."
          ).pipe(Effect.annotateLogs({ pool: options.name }))
        }
      })
    )

  /** Takes the lease back: closed if inside a transaction or timed out, checked if it may carry session state. */
  const giveBack = (lease: Lease): Effect.Effect<void> | undefined => {
    if (lease.inTransaction || lease.timedOut) {
      engine.invalidate(lease.entry)
      return undefined
    }
    // Behind a pooler the check would look at whichever server connection it got: meaningless.
    if (options.behindPooler === "none" && (lease.suspect || options.sessionCheck === "always")) return checkSession(lease)
    engine.release(lease.entry)
    return undefined
  }

  /** The caller's tenant scope, refused before any connection is taken if it breaks the rules. */
  const callerScope: Effect.Effect<Tenant.Scope, SqlError> = Effect.withFiber(
    (fiber): Effect.Effect<Tenant.Scope, SqlError> => {
      const scope = fiber.getRef(Tenant.CurrentTenant)
      switch (scope._tag) {
        case "Tenant": {
          const problem = options.checkTenant(scope.id)
          if (problem === undefined) return Effect.succeed(scope)
          const preview = JSON.stringify(String(scope.id).slice(0, 80))
          return Effect.fail(PoolError.toSqlError(new PoolError.InvalidTenantError({ preview, reason: problem })))
        }
        case "None":
          return options.requireTenant
            ? Effect.fail(PoolError.toSqlError(new PoolError.TenantRequiredError()))
            : Effect.succeed(scope)
        case "Unscoped":
          return Effect.as(Effect.annotateCurrentSpan("meshhook.tenant.unscoped", scope.reason), scope)
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

  /** Takes a connection (or a share) for the caller, in its tenant's turn and its fiber's priority. */
  const acquire = (scope: Tenant.Scope, shared: boolean): Effect.Effect<PgEntry, SqlError> =>
    Effect.withFiber((fiber) =>
      Effect.mapError(
        engine.acquire({
          flow: scope._tag === "Tenant" ? scope.id : "",
          priority: fiber.getRef(Priority.CurrentPriority),
          shared,
          origin: detectLeaks && !shared ? originOf(fiber) : undefined
        }),
        PoolError.toSqlError
      )
    )

  /** Runs `f` on a connection lent to this caller alone, and takes it back on any exit. */
  const withLease = <A, E, R>(
    scope: Tenant.Scope,
    f: (lease: Lease) => Effect.Effect<A, E, R>
  ): Effect.Effect<A, E | SqlError, R> =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(restore(acquire(scope, false)), (entry) => {
        const lease = new Lease(entry, scope, leaseSettings, false)
        return Effect.onExitPrimitive(restore(f(lease)), () => giveBack(lease), true)
      })
    )

  /**
   * Runs one autocommit statement on a share of a connection. A statement
   * whose caller leaves, or that gets no answer within `queryTimeout`, is
   * abandoned: the engine cancels it once nobody else's statement shares the
   * connection, then closes the connection.
   */
  const onShare = <A>(run: (connection: PgConnection.PgConnection) => Effect.Effect<A, SqlError>) =>
    Effect.uninterruptibleMask((restore) => {
      const timed = (connection: PgConnection.PgConnection) =>
        options.queryTimeout === Infinity
          ? Effect.map(run(connection), Option.some)
          : Effect.timeoutOption(run(connection), options.queryTimeout)
      const runOn = (entry: PgEntry) =>
        Effect.onExitPrimitive(restore(timed(entry.connection)), (exit) => {
          if (Exit.hasInterrupts(exit) || (Exit.isSuccess(exit) && exit.value._tag === "None")) engine.abandon(entry)
          else engine.release(entry)
          return undefined
        }, true).pipe(
          Effect.flatMap((answer) =>
            answer._tag === "Some" ? Effect.succeed(answer.value) : Effect.fail(queryTimedOut(options.queryTimeout))
          )
        )
      // Most statements find a share free: no waiting, no extra steps.
      const entry = engine.shareNow()
      return entry !== undefined ? runOn(entry) : Effect.flatMap(restore(acquire(Tenant.none, true)), runOn)
    })

  /**
   * One statement from `borrow`: under a tenant, in a pipelined transaction
   * of its own; without one, on a share when the text allows, else on a
   * connection of its own. `viaShare` and `viaLease` run it either way.
   */
  const statement = <A>(
    scope: Tenant.Scope,
    sql: string,
    viaShare: (connection: PgConnection.PgConnection) => Effect.Effect<A, SqlError>,
    viaLease: (lease: Lease) => Effect.Effect<A, SqlError>
  ): Effect.Effect<A, SqlError> => {
    const refused = refuse(sql)
    return observe(
      sql,
      scope,
      refused !== undefined
        ? Effect.fail(refused)
        : scope._tag === "Tenant"
        ? withLease(scope, (lease) => lease.tenantStatement(viaLease(lease)))
        : options.pipelineDepth > 1 && SessionState.isShareable(sql)
        ? onShare(viaShare)
        : withLease(scope, viaLease)
    )
  }

  const rows = (scope: Tenant.Scope, sql: string, params: ReadonlyArray<unknown>, prepare: boolean) =>
    statement(
      scope,
      sql,
      (connection) => connection.query(sql, params, prepare),
      (lease) => lease.submit(sql, params, prepare)
    )

  const values = (scope: Tenant.Scope, sql: string, params: ReadonlyArray<unknown>, prepare: boolean) =>
    statement(
      scope,
      sql,
      (connection) => connection.queryValues(sql, params, prepare),
      (lease) => lease.submitValues(sql, params, prepare)
    )

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
  const makeStatementConnection = (scope: Tenant.Scope): Connection => ({
    execute: (sql, params, transformRows) =>
      Effect.map(rows(scope, sql, params, true), (result) => transformed(result.rows, transformRows)),
    executeUnprepared: (sql, params, transformRows) =>
      Effect.map(rows(scope, sql, params, false), (result) => transformed(result.rows, transformRows)),
    executeRaw: (sql, params) => rows(scope, sql, params, true),
    executeValues: (sql, params) => values(scope, sql, params, true),
    executeValuesUnprepared: (sql, params) => values(scope, sql, params, false),
    executeStream: (sql, params, transformRows) =>
      Stream.unwrap(Effect.map(lease(true), (connection) => connection.executeStream(sql, params, transformRows)))
  })

  const borrow = <A, E, R>(f: (connection: Connection) => Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> =>
    Effect.flatMap(callerScope, (scope) => f(statementConnection(scope)))

  /**
   * A connection for the life of the current scope. `openTransaction`: under a
   * tenant, it runs in a transaction of its own until the scope closes
   * (streams); otherwise the caller sends `BEGIN` (transactions, `reserve`).
   */
  function lease(openTransaction: boolean): Effect.Effect<Connection, SqlError, Scope.Scope> {
    return Effect.flatMap(callerScope, (scope) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(restore(acquire(scope, false)), (entry) => {
          const leased = new Lease(entry, scope, leaseSettings, true)
          const giveBackOnClose = Effect.addFinalizer(() => giveBack(leased) ?? Effect.void)
          if (!openTransaction || scope._tag !== "Tenant") return Effect.as(giveBackOnClose, leased)
          return giveBackOnClose.pipe(
            Effect.andThen(leased.begin),
            Effect.andThen(Effect.addFinalizer((exit) =>
              Effect.ignore(exit._tag === "Success" ? commit(leased) : leased.rollback)
            )),
            Effect.as(leased)
          )
        })
      ))
  }

  const transformRows = options.transformResultNames
    ? Statement.defaultTransforms(options.transformResultNames, options.transformJson).array
    : undefined

  return SqlClient.make({
    acquirer: lease(true),
    borrower: borrow,
    transactionAcquirer: lease(false),
    compiler: PgClient.makeCompiler(options.transformQueryNames, options.transformJson),
    driver: "pg",
    // Transaction control never changes, so the server may keep it prepared.
    prepareTransactionControls: options.prepare,
    commit,
    releaseSavepoint: (name) => `RELEASE SAVEPOINT ${name}`,
    spanAttributes: [
      ["db.system.name", "postgresql"],
      ["db.namespace", options.database],
      ["server.address", options.host],
      ["server.port", options.port],
      ["db.client.connection.pool.name", options.name]
    ],
    transformRows
  })
}
