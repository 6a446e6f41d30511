/**
 * `SqlClient` served from the pool engine: a statement borrows a connection
 * for itself, a transaction, stream or `reserve` leases one until its scope
 * closes, and every lease comes back clean or not at all.
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
import type { Engine } from "./engine.ts"
import type { Entry } from "./entry.ts"

type Rows = <A extends object>(rows: ReadonlyArray<A>) => ReadonlyArray<A>

/**
 * One lease of a connection as `SqlClient` sees it. It follows the
 * transaction state from the command tags the server returns, so a lease
 * that ends inside a transaction (a `BEGIN` with no `COMMIT`, or a failed
 * `ROLLBACK`) is closed rather than lent to the next caller.
 */
class Lease implements Connection {
  readonly entry: Entry<PgConnection.PgConnection>
  inTransaction = false

  constructor(entry: Entry<PgConnection.PgConnection>) {
    this.entry = entry
  }

  private readonly track = (result: PgConnection.Result): PgConnection.Result => {
    switch (result.command) {
      case "BEGIN":
      case "START":
        this.inTransaction = true
        break
      case "COMMIT":
      case "ROLLBACK":
        this.inTransaction = false
    }
    return result
  }

  private query(sql: string, params: ReadonlyArray<unknown>, prepare = true) {
    return Effect.map(this.entry.connection.query(sql, params, prepare), this.track)
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
    return this.entry.connection.queryValues(sql, params)
  }
  executeValuesUnprepared(sql: string, params: ReadonlyArray<unknown>) {
    return this.entry.connection.queryValues(sql, params, false)
  }
  executeStream(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    const stream = this.entry.connection.stream(sql, params)
    return transformRows === undefined
      ? stream
      : Stream.mapArray(stream, (rows) => transformRows(rows) as typeof rows)
  }
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

/** @internal */
export const make = (
  engine: Engine<PgConnection.PgConnection>,
  options: PoolConfig.Resolved
): Effect.Effect<SqlClient.SqlClient, never, Reactivity> => {
  const giveBack = (lease: Lease): void => {
    if (lease.inTransaction) engine.invalidate(lease.entry)
    else engine.release(lease.entry)
  }
  const acquire = Effect.mapError(engine.acquire, PoolError.toSqlError)

  const lease: Effect.Effect<Connection, SqlError, Scope.Scope> = Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(restore(acquire), (entry) => {
      const leased = new Lease(entry)
      return Effect.as(Effect.addFinalizer(() => Effect.sync(() => giveBack(leased))), leased)
    })
  )

  const borrow = <A, E, R>(f: (connection: Connection) => Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(restore(acquire), (entry) => {
        const leased = new Lease(entry)
        return Effect.onExitPrimitive(restore(f(leased)), () => {
          giveBack(leased)
          return undefined
        }, true)
      })
    )

  const transformRows = options.transformResultNames
    ? Statement.defaultTransforms(options.transformResultNames, options.transformJson).array
    : undefined

  return SqlClient.make({
    acquirer: lease,
    borrower: borrow,
    transactionAcquirer: lease,
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
