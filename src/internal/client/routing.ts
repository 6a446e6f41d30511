/**
 * Which path a caller's statement takes, decided before any connection is
 * taken. The caller's tenant scope is checked first (./callerScope.ts);
 * then the statement's text is read (../postgres/sqlText.ts): refused behind a pooler
 * if it names session state, nothing sent; a query or DML naming none takes
 * a share of a connection (./shared.ts); anything else a connection alone,
 * for that one statement (./lease.ts). Transactions, streams and `reserve`
 * always get a connection alone, for the life of their scope.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type * as SqlConnection from "effect/sql/SqlConnection"
import type { SqlError } from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import type * as Tenant from "../../Tenant.ts"
import * as Connection from "./connection.ts"
import * as Lease from "./lease.ts"
import * as LeaseTransaction from "./leaseTransaction.ts"
import type { Serving } from "./serving.ts"
import * as Shared from "./shared.ts"
import * as SqlText from "../postgres/sqlText.ts"
import type * as Wire from "../postgres/wire.ts"

/** How `effect/sql` gets the pool's connections. @internal */
export interface Routing {
  /** The borrower: a connection for one statement, which takes a share or a lease only when the statement runs. */
  readonly borrow: <A, E, R>(
    f: (connection: SqlConnection.Connection) => Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | SqlError, R>
  /** The acquirer: a connection alone for the life of the current scope. */
  readonly lease: Effect.Effect<SqlConnection.Connection, SqlError, Scope.Scope>
}

/** The routes of one pool's statements; `callerScope` reads and checks the caller's tenant scope. @internal */
export const make = (serving: Serving, callerScope: Effect.Effect<Tenant.Scope, SqlError>): Routing => {
  const lease = Effect.flatMap(callerScope, (scope) => Lease.scoped(serving, scope))
  // One per tenant scope, made once: a scope is a reference the fiber keeps.
  const connections = new WeakMap<Tenant.Scope, StatementConnection>()
  const connectionFor = (scope: Tenant.Scope): StatementConnection => {
    let connection = connections.get(scope)
    if (connection === undefined) connections.set(scope, connection = new StatementConnection(serving, scope, lease))
    return connection
  }
  return {
    borrow: (f) => Effect.flatMap(callerScope, (scope) => f(connectionFor(scope))),
    lease
  }
}

/** Whether a lone statement may take a share: it runs alone in an implicit transaction and names no session state. */
const shareable = (serving: Serving, reading: SqlText.Reading): boolean =>
  serving.sharing && reading.effect === "neutral" && reading.sessionState === undefined

/** One statement of the caller's: on a share when it may, else on a connection of its own. */
const statement = (serving: Serving, scope: Tenant.Scope, query: Wire.Query): Effect.Effect<Wire.Answer, SqlError> => {
  const reading = SqlText.read(query.sql)
  const refused = serving.refuse(reading)
  return serving.observe(
    reading,
    scope,
    refused !== undefined
      ? Effect.fail(refused)
      : shareable(serving, reading)
      ? Shared.statement(serving, scope, query)
      : Lease.withLease(serving, scope, (lease) => LeaseTransaction.statement(lease, query, reading))
  )
}

/** The connection `borrow` hands to a statement: it takes a connection only when the statement runs, once the text tells how it may run. */
class StatementConnection extends Connection.Base {
  readonly serving: Serving
  readonly scope: Tenant.Scope
  /** A connection alone for the caller's scope, for a stream. */
  readonly lease: Effect.Effect<SqlConnection.Connection, SqlError, Scope.Scope>

  constructor(serving: Serving, scope: Tenant.Scope, lease: Effect.Effect<SqlConnection.Connection, SqlError, Scope.Scope>) {
    super()
    this.serving = serving
    this.scope = scope
    this.lease = lease
  }

  run(query: Wire.Query): Effect.Effect<Wire.Answer, SqlError> {
    return statement(this.serving, this.scope, query)
  }

  executeStream(sql: string, params: ReadonlyArray<unknown>, transformRows: Connection.Rows | undefined) {
    return Stream.unwrap(Effect.map(this.lease, (connection) => connection.executeStream(sql, params, transformRows)))
  }
}
