/**
 * A connection lent to one caller alone, as `effect/sql` sees it: a
 * transaction, a stream, `sql.reserve`, or a statement that cannot share.
 *
 * The lease's rules:
 * 1. It is revocable. Once its caller is done (`COMMIT` sent, or its scope
 *    closed), every statement through it fails with `ConnectionReleasedError`
 *    and nothing reaches the wire, whatever fiber sends it: a fiber forked
 *    inside a transaction that outlives it cannot reach the next borrower.
 * 2. Every transaction it starts begins with the prologue (../postgres/prologue.ts), in
 *    the same cycle: a lone statement's implicit transaction, the one a
 *    `BEGIN` opens, and one the server says started without it (after
 *    `COMMIT AND CHAIN`, `ROLLBACK TO SAVEPOINT`). Work whose prologue did not
 *    take effect fails with `IsolationError`, and the connection is closed.
 * 3. The transaction state is the server's: the status in each
 *    `ReadyForQuery`, not command tags. A statement that can begin or end a
 *    transaction waits until everything before it is answered, and what
 *    follows waits for it. A connection that comes back inside a
 *    transaction is rolled back, or closed.
 * 4. A caller's `BEGIN` waits for the transaction's first statement and
 *    travels with it and the prologue, one round trip for all three; a
 *    transaction that sends nothing sends no `BEGIN` either.
 * 5. At `COMMIT`, when nothing else of the lease is in flight and nothing
 *    says the session changed, the connection goes to the next borrower at
 *    once: its statements queue behind the `COMMIT` on the same connection
 *    (every transaction begins with its own prologue, so nothing of this one
 *    carries over).
 * 6. When the lease may have left session state (its statements' text or
 *    command tags, the server's `ParameterStatus` reports, or the prologue
 *    finding leftovers say so; or `sessionCheck: "always"`), the session is
 *    reset before anyone else gets it, or the connection is closed.
 *
 * The rules are kept by ./leaseTransaction.ts (2 to 4: how statements go
 * out and what their replies mean), ./leaseCycles.ts (the order of the
 * cycles) and ./leaseEnd.ts (1, 5 and 6: `COMMIT` and giving back); this
 * module holds the lease's state and its face as `effect/sql`'s connection.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type * as Semaphore from "effect/Semaphore"
import type { SqlError } from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import * as PoolError from "../../PoolError.ts"
import * as Tenant from "../../Tenant.ts"
import * as Connection from "./connection.ts"
import type { Entry } from "../engine/entry.ts"
import * as LeaseCycles from "./leaseCycles.ts"
import * as LeaseEnd from "./leaseEnd.ts"
import * as LeaseTransaction from "./leaseTransaction.ts"
import { fail, type Serving, tenantOf } from "./serving.ts"
import * as SqlText from "../postgres/sqlText.ts"
import type * as Wire from "../postgres/wire.ts"

/** A connection lent to one caller alone: its state, shared with the modules that keep its rules. @internal */
export class Lease extends Connection.Base {
  /** The connection, and its session: another one if the first had been left unclean (rule 2). */
  entry: Entry<Wire.Wire>
  wire: Wire.Wire
  readonly scope: Tenant.Scope
  readonly serving: Serving
  /** Check that each statement's fiber asks for this lease's tenant scope (a lease that outlives one statement). */
  readonly checkScope: boolean
  /** The tenant setting's value in this lease's transactions. */
  readonly tenant: string
  /** No statement may be sent any more. */
  revoked = false
  /** The engine has the connection back. */
  returned = false
  /** A `BEGIN` the caller sent that waits for the transaction's first statement. */
  begin: Wire.Query | undefined = undefined
  /** The status once everything sent is answered (barring failures), as the server last said it. */
  predicted: Wire.Status = "I"
  /** The open transaction began with the prologue, and nothing since has ended or partly undone it. */
  pinned = false
  /** This lease's cycles on the wire, not yet answered (a predecessor's `COMMIT` may still be ahead of them). */
  inFlight = 0
  /** Cycles this lease has sent on its connection. */
  sent = 0
  /** Statements waiting for, or in, the serialized path. */
  serializing = 0
  /** Why the session must be reset before the connection is lent again, from text or an earlier borrower's leftovers. */
  suspect: string | undefined = undefined
  /** What the server says this lease left on the session (command tags, reported settings): reset, and worth a warning. */
  leftState: string | undefined = undefined
  /** Why the connection must be closed. */
  condemned: string | undefined = undefined
  /** A statement's caller was interrupted while it was on the wire. */
  interrupted = false
  /** One serialized statement at a time; made by the first. */
  gate: Semaphore.Semaphore | undefined = undefined
  /** Who waits for none of the lease's cycles to be on the wire. */
  readonly idleWaiters: Array<() => void> = []
  /** Resolves once none of the lease's cycles is on the wire. */
  readonly idle: Effect.Effect<void> = LeaseCycles.whenIdle(this)

  constructor(entry: Entry<Wire.Wire>, scope: Tenant.Scope, serving: Serving, checkScope: boolean) {
    super()
    this.entry = entry
    this.wire = entry.connection
    this.scope = scope
    this.serving = serving
    this.checkScope = checkScope
    this.tenant = tenantOf(scope)
  }

  run(query: Wire.Query): Effect.Effect<Wire.Answer, SqlError> {
    return Effect.suspend(() => {
      // A fiber that outlived the lease learns that first, whatever scope it asks for.
      if (this.revoked) return fail(new PoolError.ConnectionReleasedError())
      const reading = SqlText.read(query.sql)
      return this.serving.observe(reading, this.scope, this.guard(LeaseTransaction.statement(this, query, reading)))
    })
  }

  executeStream(sql: string, params: ReadonlyArray<unknown>, transformRows: Connection.Rows | undefined) {
    const stream = Stream.unwrap(this.guard(Effect.suspend(() => {
      const refused = LeaseTransaction.admit(this, SqlText.read(sql))
      if (refused !== undefined) return Effect.fail(refused)
      return Effect.map(LeaseTransaction.streamTransaction(this), (opened) => {
        const rows = this.wire.stream(sql, params)
        // A transaction opened for the stream alone ends with it: the statement behaves as in autocommit.
        return opened ? Stream.concat(rows, Stream.drain(Stream.fromEffect(LeaseTransaction.endStreamTransaction(this)))) : rows
      })
    })))
    return transformRows === undefined ? stream : Stream.mapArray(stream, (rows) => transformRows(rows) as typeof rows)
  }

  /** `effect/sql`'s `COMMIT` (./leaseEnd.ts). */
  commit(): Effect.Effect<void, SqlError> {
    return LeaseEnd.commit(this)
  }

  /** Refuses a statement whose fiber asks for another tenant than this lease serves. */
  private guard<A, R>(effect: Effect.Effect<A, SqlError, R>): Effect.Effect<A, SqlError, R> {
    if (!this.checkScope) return effect
    return Effect.withFiber((fiber) => {
      const asked = fiber.getRef(Tenant.CurrentTenant)
      return Tenant.sameScope(asked, this.scope) ? effect : fail(
        new PoolError.TenantMismatchError({
          transaction: this.serving.describe(this.scope),
          statement: this.serving.describe(asked)
        })
      )
    })
  }
}

/**
 * Runs `f` on a connection lent to the caller alone, and takes it back on
 * any exit: for one statement that cannot share.
 *
 * @internal
 */
export const withLease = <A, E, R>(
  serving: Serving,
  scope: Tenant.Scope,
  f: (lease: Lease) => Effect.Effect<A, E, R>
): Effect.Effect<A, E | SqlError, R> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(restore(serving.acquire(scope, false)), (entry) => {
      const lease = new Lease(entry, scope, serving, false)
      return Effect.onExitPrimitive(restore(f(lease)), () => LeaseEnd.giveBack(lease), true)
    })
  )

/**
 * A connection lent to the caller alone for the life of the current scope
 * (transactions, streams, `reserve`); its statements must ask for the same
 * tenant scope.
 *
 * @internal
 */
export const scoped = (serving: Serving, scope: Tenant.Scope): Effect.Effect<Lease, SqlError, Scope.Scope> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(restore(serving.acquire(scope, false)), (entry) => {
      const lease = new Lease(entry, scope, serving, true)
      return Effect.as(Effect.addFinalizer(() => LeaseEnd.giveBack(lease) ?? Effect.void), lease)
    })
  )
