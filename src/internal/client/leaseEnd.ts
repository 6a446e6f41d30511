/**
 * The end of a lease (rules 1, 5 and 6 of ./lease.ts): its `COMMIT`, which
 * revokes it and may hand the connection on at once, and its giving back,
 * which leaves the session as the pool lent it (rolled back, reset) or
 * closes the connection.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import { SqlError } from "effect/sql/SqlError"
import * as PoolError from "../../PoolError.ts"
import type { Lease } from "./lease.ts"
import * as LeaseCycles from "./leaseCycles.ts"
import * as Prologue from "../postgres/prologue.ts"
import { fail } from "./serving.ts"
import * as Wire from "../postgres/wire.ts"

/**
 * A `COMMIT`'s answer as its caller sees it: one that found an aborted
 * transaction answers `ROLLBACK`, and that is a failure.
 *
 * @internal
 */
export const committed = (answer: Wire.Answer | SqlError | undefined): Effect.Effect<void, SqlError> =>
  answer instanceof SqlError
    ? Effect.fail(answer)
    : answer === undefined || answer.command === "ROLLBACK"
    ? Effect.fail(PoolError.toSqlError(new PoolError.IsolationError({ reason: "COMMIT rolled back an aborted transaction" })))
    : Effect.void

/**
 * `effect/sql`'s `COMMIT`. The lease is revoked as it is sent; rule 5:
 * when nothing else of it is in flight and the session needs nothing, the
 * connection goes back to the engine at once, the caller still waiting for
 * the answer.
 *
 * @internal
 */
export const commit = (lease: Lease): Effect.Effect<void, SqlError> =>
  Effect.suspend(() => {
    if (lease.revoked) return fail(new PoolError.ConnectionReleasedError())
    if (lease.begin !== undefined && lease.inFlight === 0 && lease.serializing === 0) {
      // Nothing of the transaction reached the server.
      lease.begin = undefined
      lease.revoked = true
      return Effect.void
    }
    const sendCommit = Effect.callback<void, SqlError>((resume) => {
      lease.revoked = true
      lease.predicted = "I"
      lease.pinned = false
      const refused = LeaseCycles.submit(lease, [LeaseCycles.control("COMMIT")], (reply) => {
        if (reply.status !== "I") lease.entry.broken = true
        if (lease.returned && lease.wire.takeReports().length > 0) lease.entry.broken = true
        resume(committed(reply.answers[0]))
      })
      if (refused !== undefined) return resume(Effect.fail(refused))
      if (lease.inFlight === 1 && mayHandOff(lease)) lease.returned = lease.serving.engine.handOff(lease.entry)
    })
    return lease.serializing === 0 && lease.inFlight === 0 ? sendCommit : LeaseCycles.serialized(lease, sendCommit)
  })

/** Directly only: behind a pooler the next borrower's transaction would be pipelined behind this one's end. */
const mayHandOff = (lease: Lease): boolean =>
  lease.serving.direct && lease.suspect === undefined && lease.leftState === undefined && lease.condemned === undefined &&
  !lease.interrupted && !lease.entry.broken && lease.serving.sessionCheck !== "always"

/** Whether the session must be reset before the connection is lent again (directly: behind a pooler, it is not the pool's). */
const needsReset = (lease: Lease): boolean =>
  lease.serving.direct &&
  (lease.suspect !== undefined || lease.leftState !== undefined || lease.serving.sessionCheck === "always")

/**
 * Takes the connection back when the caller's scope closes (unless `commit`
 * already did): revokes the lease, and gives the connection back at once
 * when nothing of the lease is in flight and the session needs nothing;
 * closes it when the lease condemned it; else returns the work that settles
 * the session first.
 *
 * @internal
 */
export const giveBack = (lease: Lease): Effect.Effect<void> | undefined => {
  lease.revoked = true
  if (lease.returned) return undefined
  lease.returned = true
  const { engine } = lease.serving
  if (lease.condemned !== undefined || (lease.interrupted && lease.inFlight > 0)) {
    engine.invalidate(lease.entry)
    return undefined
  }
  if (lease.inFlight === 0) {
    LeaseCycles.noteReports(lease)
    if (lease.wire.status() === "I" && !needsReset(lease)) {
      engine.release(lease.entry)
      return undefined
    }
  }
  return settleSession(lease)
}

/**
 * Waits for the lease's statements still on the wire (a fiber that
 * outlived its transaction may have some), rolls back what the server says
 * is still open and resets a session that may have changed; a connection
 * where any of that fails is closed.
 */
const settleSession = (lease: Lease): Effect.Effect<void> =>
  Effect.gen(function*() {
    const { engine } = lease.serving
    yield* lease.idle
    LeaseCycles.noteReports(lease)
    if (lease.wire.status() !== "I") {
      const reply = yield* Effect.option(Wire.run(lease.wire, [LeaseCycles.control("ROLLBACK")]))
      if (reply._tag === "None" || reply.value.status !== "I") return engine.invalidate(lease.entry)
    }
    if (!needsReset(lease)) return engine.release(lease.entry)
    const reset = yield* Effect.option(Wire.run(lease.wire, Prologue.reset(lease.serving.pins())))
    lease.wire.takeReports()
    const problem = reset._tag === "None" ? "the reset failed" : Prologue.resetProblem(reset.value)
    if (problem === undefined) engine.release(lease.entry)
    else engine.invalidate(lease.entry)
    const left = lease.leftState ?? (problem === undefined ? undefined : lease.suspect ?? "sessionCheck: always")
    if (left === undefined) return
    yield* lease.serving.warn(
      `A lease left session state (${left}); ` +
        (problem === undefined
          ? "the session was reset before it was lent again."
          : `it could not be reset (${problem}), so the connection was closed.`) +
        " Use SET LOCAL / set_config(..., true) inside a transaction instead."
    )
  })
