/**
 * `SqlClient` served from the pool engine.
 *
 * - A statement borrows a connection for itself; a transaction, stream or
 *   `reserve` leases one until its scope closes.
 * - Under a tenant, SQL runs in a transaction whose first statement is
 *   `set_config(<tenantSetting>, $1, true)`: a lone statement gets a
 *   transaction of its own, a stream or reservation one for its scope, and
 *   `withTransaction` has the tenant set right after its `BEGIN`.
 * - Every lease comes back clean or not at all: inside a transaction it is
 *   closed; after a statement that may have set session state it is checked
 *   on the server, and closed if it did.
 *
 * @internal
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import type * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Effect from "effect/Effect"
import type { Reactivity } from "effect/reactivity/Reactivity"
import type * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import type { Connection } from "effect/sql/SqlConnection"
import { SqlError, UnknownError } from "effect/sql/SqlError"
import * as Statement from "effect/sql/Statement"
import * as Stream from "effect/Stream"
import type * as PoolConfig from "../PoolConfig.ts"
import * as PoolError from "../PoolError.ts"
import * as Tenant from "../Tenant.ts"
import type { Engine } from "./engine.ts"
import type { Entry } from "./entry.ts"
import * as SessionState from "./sessionState.ts"

type Rows = <A extends object>(rows: ReadonlyArray<A>) => ReadonlyArray<A>
type PgEntry = Entry<PgConnection.PgConnection>

const setTenantSql = "SELECT set_config($1, $2, true)"

/**
 * One lease of a connection as `SqlClient` sees it.
 *
 * It follows the transaction state from the command tags the server returns,
 * sets the tenant after every `BEGIN`, and notes statements that may have set
 * session state. A lease that outlives the statement that took it (a
 * transaction, stream or reservation) also checks that each statement asks
 * for the tenant scope it was taken under.
 */
class Lease implements Connection {
  readonly entry: PgEntry
  readonly scope: Tenant.Scope
  readonly tenantSetting: string
  readonly checkScope: boolean
  inTransaction = false
  /** A statement may have set session state. */
  suspect = false

  constructor(entry: PgEntry, scope: Tenant.Scope, tenantSetting: string, checkScope: boolean) {
    this.entry = entry
    this.scope = scope
    this.tenantSetting = tenantSetting
    this.checkScope = checkScope
  }

  private note(result: PgConnection.Result, sql: string): void {
    switch (result.command) {
      case "BEGIN":
      case "START":
        this.inTransaction = true
        break
      case "COMMIT":
      case "ROLLBACK":
        this.inTransaction = false
    }
    if (!this.suspect && SessionState.isSuspect(result.command, sql)) this.suspect = true
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

  private query(sql: string, params: ReadonlyArray<unknown>, prepare = true) {
    const connection = this.entry.connection
    const run = Effect.map(connection.query(sql, params, prepare), (result) => {
      this.note(result, sql)
      return result
    })
    const scope = this.scope
    const withTenant = scope._tag !== "Tenant" ? run : Effect.tap(run, (result) =>
      result.command === "BEGIN" || result.command === "START"
        ? connection.query(setTenantSql, [this.tenantSetting, scope.id])
        : Effect.void)
    return this.guard(withTenant)
  }

  private values(sql: string, params: ReadonlyArray<unknown>, prepare: boolean) {
    if (!this.suspect && SessionState.isSuspectText(sql)) this.suspect = true
    return this.guard(this.entry.connection.queryValues(sql, params, prepare))
  }

  private rows(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined, prepare: boolean) {
    return Effect.map(
      this.query(sql, params, prepare),
      transformRows === undefined ? (result) => result.rows : (result) => transformRows(result.rows)
    )
  }

  execute(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    return this.rows(sql, params, transformRows, true)
  }
  executeUnprepared(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    return this.rows(sql, params, transformRows, false)
  }
  executeRaw(sql: string, params: ReadonlyArray<unknown>) {
    return this.query(sql, params)
  }
  executeValues(sql: string, params: ReadonlyArray<unknown>) {
    return this.values(sql, params, true)
  }
  executeValuesUnprepared(sql: string, params: ReadonlyArray<unknown>) {
    return this.values(sql, params, false)
  }
  executeStream(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    if (!this.suspect && SessionState.isSuspectText(sql)) this.suspect = true
    const stream = Stream.unwrap(this.guard(Effect.succeed(this.entry.connection.stream(sql, params))))
    return transformRows === undefined
      ? stream
      : Stream.mapArray(stream, (rows) => transformRows(rows) as typeof rows)
  }

  readonly begin = Effect.suspend(() => this.execute("BEGIN", [], undefined))
  readonly rollback = Effect.suspend(() => this.execute("ROLLBACK", [], undefined))
}

/** PostgreSQL answers `COMMIT` of an aborted transaction with `ROLLBACK`: that is a failure. */
const commit = (connection: Connection): Effect.Effect<void, SqlError> =>
  Effect.flatMap(connection.executeRaw("COMMIT", []) as Effect.Effect<PgConnection.Result, SqlError>, (result) =>
    result.command === "ROLLBACK"
      ? Effect.fail(
        new SqlError({
          reason: new UnknownError({
            cause: new Error("COMMIT rolled back an aborted transaction"),
            message: "COMMIT rolled back an aborted transaction",
            operation: "commit"
          })
        })
      )
      : Effect.void)

/**
 * Runs `effect` in a transaction of its own on `lease`: `BEGIN` (which sets
 * the tenant), the work, `COMMIT`. On failure or interruption, `ROLLBACK`,
 * even when `BEGIN` itself was cut short and may or may not have run. A lease
 * whose transaction could not be ended stays `inTransaction` and is closed.
 */
const inTransaction = <A, E, R>(lease: Lease, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> =>
  Effect.andThen(lease.begin, effect).pipe(
    Effect.onExit((exit) => exit._tag === "Success" ? Effect.void : Effect.ignore(lease.rollback)),
    Effect.tap(() => commit(lease))
  )

/** @internal */
export const make = (
  engine: Engine<PgConnection.PgConnection>,
  options: PoolConfig.Resolved
): Effect.Effect<SqlClient.SqlClient, never, Reactivity> => {
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

  /** Takes the lease back: closed if inside a transaction, checked if it may carry session state. */
  const giveBack = (lease: Lease): Effect.Effect<void> | undefined => {
    if (lease.inTransaction) {
      engine.invalidate(lease.entry)
      return undefined
    }
    if (lease.suspect || options.sessionCheck === "always") return checkSession(lease)
    engine.release(lease.entry)
    return undefined
  }

  /** The caller's tenant scope, refused before any connection is taken if it breaks the rules. */
  const callerScope: Effect.Effect<Tenant.Scope, SqlError> = Effect.withFiber((fiber): Effect.Effect<Tenant.Scope, SqlError> => {
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
  })

  const acquire = Effect.mapError(engine.acquire, PoolError.toSqlError)

  /**
   * A lease for the life of the current scope. `openTransaction`: under a
   * tenant, the lease runs in a transaction of its own until the scope closes
   * (streams); otherwise the caller sends `BEGIN` (transactions, `reserve`).
   */
  const lease = (openTransaction: boolean): Effect.Effect<Connection, SqlError, Scope.Scope> =>
    Effect.flatMap(callerScope, (scope) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(restore(acquire), (entry) => {
          const leased = new Lease(entry, scope, options.tenantSetting, true)
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

  const borrow = <A, E, R>(f: (connection: Connection) => Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> =>
    Effect.flatMap(callerScope, (scope) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(restore(acquire), (entry) => {
          const leased = new Lease(entry, scope, options.tenantSetting, false)
          const work = restore(scope._tag === "Tenant" ? inTransaction(leased, f(leased)) : f(leased))
          return Effect.onExitPrimitive(work, () => giveBack(leased), true)
        })
      ))

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
