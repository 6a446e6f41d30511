/**
 * A lease's cycles on its connection: counted while they are on the wire,
 * sent one at a time when they must be (a statement that can begin or end
 * a transaction waits until everything before it is answered, and what
 * follows waits for it), and given up on after `queryTimeout`.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Semaphore from "effect/Semaphore"
import type { SqlError } from "effect/sql/SqlError"
import * as PoolError from "../../PoolError.ts"
import type { Lease } from "./lease.ts"
import { fail } from "./serving.ts"
import type * as Wire from "../postgres/wire.ts"

/**
 * The pool's own transaction control, unnamed: a name the server no longer
 * holds (dropped by `DEALLOCATE` in a function, or a pooler's other server
 * connection) must never keep a transaction from ending.
 *
 * @internal
 */
export const control = (sql: string): Wire.Query => ({ sql, params: [], prepare: false, shape: "values" })

/**
 * Queues a cycle of the lease's; `reply` gets its reply. Returns why it
 * could not be queued, if it could not.
 *
 * @internal
 */
export const submit = (lease: Lease, queries: ReadonlyArray<Wire.Query>, reply: (reply: Wire.Reply) => void): SqlError | undefined => {
  // Counted before it is queued: a reply may come at once.
  lease.inFlight++
  lease.sent++
  const refused = lease.wire.submit(queries, (answer) => {
    lease.inFlight--
    if (lease.inFlight === 0 && lease.idleWaiters.length > 0) for (const waiter of lease.idleWaiters.splice(0)) waiter()
    reply(answer)
  })
  if (refused !== undefined) lease.inFlight--
  return refused
}

/** Resolves once none of the lease's cycles is on the wire. @internal */
export const whenIdle = (lease: Lease): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    if (lease.inFlight === 0) return resume(Effect.void)
    lease.idleWaiters.push(() => resume(Effect.void))
  })

/**
 * Runs `effect` once everything the lease sent before it is answered, and
 * holds what follows until it is.
 *
 * @internal
 */
export const serialized = <A>(lease: Lease, effect: Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> =>
  Effect.suspend(() => {
    lease.serializing++
    lease.gate ??= Semaphore.makeUnsafe(1)
    return lease.gate.withPermit(Effect.andThen(lease.idle, effect)).pipe(
      Effect.ensuring(Effect.sync(() => {
        lease.serializing--
      }))
    )
  })

/**
 * Whether a cycle may go out behind the lease's others still in flight.
 * Directly, always (neutral statements cannot end a transaction). Behind a
 * transaction-mode pooler only inside a transaction: between two, the
 * pooler may move the client to another server connection, and PgBouncer
 * garbles a transaction pipelined behind one that ended.
 *
 * @internal
 */
export const mayPipeline = (lease: Lease): boolean =>
  lease.serving.direct || lease.inFlight === 0 || lease.predicted === "T"

/**
 * Gives up on an answer after `queryTimeout`: the connection's state is
 * unknown, so it is closed.
 *
 * @internal
 */
export const timed = <A>(lease: Lease, effect: Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> => {
  const timeout = lease.serving.queryTimeout
  if (timeout === Infinity) return effect
  return Effect.timeoutOrElse(effect, {
    duration: timeout,
    orElse: () =>
      Effect.suspend(() => {
        lease.condemned ??= "a statement got no answer within queryTimeout"
        return fail(new PoolError.QueryTimeoutError({ timeoutMillis: timeout }))
      })
  })
}

/**
 * Reported settings the server says changed on the lease's session: it must
 * be reset before it is lent again.
 *
 * @internal
 */
export const noteReports = (lease: Lease): void => {
  const reports = lease.wire.takeReports()
  if (reports.length > 0) lease.leftState ??= `the server reported ${reports.join(", ")} changed`
}
