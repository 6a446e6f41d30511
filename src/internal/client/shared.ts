/**
 * A lone statement on a share of a connection: one cycle, the transaction
 * prologue (with the caller's tenant, or none) followed by the statement,
 * pipelined behind other callers' cycles. PostgreSQL runs the cycle in an
 * implicit transaction of its own: no `BEGIN`, no `COMMIT`, one round trip.
 *
 * The prologue fails on a session that is not as the pool left it, and the
 * statement with it: the connection is retired, and the statement runs once
 * more on another.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import { SqlError } from "effect/sql/SqlError"
import * as PoolError from "../../PoolError.ts"
import type * as Tenant from "../../Tenant.ts"
import type { Entry } from "../engine/entry.ts"
import * as Prologue from "../postgres/prologue.ts"
import { fail, type Serving, tenantOf } from "./serving.ts"
import * as Wire from "../postgres/wire.ts"

/** What a shared cycle's prologue reported: values it could not confirm, or an earlier borrower's leftovers. */
type Verdict = Partial<Prologue.Verdict>

/**
 * One autocommit statement on a share of a connection, in one cycle with
 * the prologue. A statement whose caller leaves, or that gets no answer
 * within `queryTimeout`, is abandoned: the engine cancels it once nobody
 * else's statement shares the connection, then closes the connection.
 *
 * @internal
 */
export const statement = (
  serving: Serving,
  scope: Tenant.Scope,
  query: Wire.Query,
  retried = false
): Effect.Effect<Wire.Answer, SqlError> =>
  Effect.uninterruptibleMask((restore) => {
    const { engine, queryTimeout } = serving
    const tenant = tenantOf(scope)
    let verdict: Verdict = {}
    const runOn = (entry: Entry<Wire.Wire>) => {
      const cycle = Effect.map(Wire.run(entry.connection, [Prologue.query(serving.pins(), tenant, true), query]), (reply) => {
        verdict = inspect(serving, entry, reply, tenant)
        return reply
      })
      const timed = queryTimeout === Infinity ? Effect.map(cycle, Option.some) : Effect.timeoutOption(cycle, queryTimeout)
      return Effect.onExitPrimitive(restore(timed), (exit) => {
        if (Exit.hasInterrupts(exit) || (Exit.isSuccess(exit) && exit.value._tag === "None")) engine.abandon(entry)
        else engine.release(entry)
        return undefined
      }, true).pipe(
        Effect.flatMap((reply) =>
          reply._tag === "None"
            ? fail(new PoolError.QueryTimeoutError({ timeoutMillis: queryTimeout }))
            : answerOf(serving, reply.value, verdict, () => statement(serving, scope, query, true), retried)
        )
      )
    }
    // Most statements find a share free: no waiting, no extra steps.
    const entry = engine.shareNow(tenant)
    return entry !== undefined ? runOn(entry) : Effect.flatMap(restore(serving.acquire(scope, true)), runOn)
  })

/**
 * What a shared cycle's prologue says: a prologue that could not confirm
 * the pinned values (the statement did not run), or, directly on
 * PostgreSQL, found an earlier borrower's leftovers retires the
 * connection once its other borrowers are answered, as do settings the
 * server reported changed.
 */
const inspect = (serving: Serving, entry: Entry<Wire.Wire>, reply: Wire.Reply, tenant: string): Verdict => {
  if (entry.connection.takeReports().length > 0) entry.broken = true
  const prologue = reply.answers[0]
  if (prologue === undefined) return {}
  const verdict = prologue instanceof SqlError
    ? { leftover: undefined, problem: Prologue.isUnconfirmed(prologue) }
    : Prologue.verdict(prologue, serving.pins(), tenant)
  // Behind a pooler, closing the pool's connection would not clean the server's.
  if (verdict.problem !== undefined || (verdict.leftover !== undefined && serving.direct)) entry.broken = true
  return verdict
}

/** The caller's answer from a shared cycle's reply; `again` runs the statement once more, on another connection. */
const answerOf = (
  serving: Serving,
  reply: Wire.Reply,
  verdict: Verdict,
  again: () => Effect.Effect<Wire.Answer, SqlError>,
  retried: boolean
): Effect.Effect<Wire.Answer, SqlError> => {
  if (reply.defect !== undefined) return Effect.die(reply.defect)
  const [prologue, answer] = reply.answers
  // The prologue failed before the statement ran, and its connection is retired: once more, on another.
  if (verdict.problem !== undefined) {
    return retried
      ? fail(new PoolError.IsolationError({ reason: verdict.problem }))
      : Effect.andThen(serving.leftover(verdict.problem, true), again())
  }
  if (prologue instanceof SqlError && !reply.stale) return Effect.fail(prologue)
  const warning = verdict.leftover === undefined ? Effect.void : serving.leftover(verdict.leftover)
  // A statement the server no longer knew by name: once more, named afresh (nothing of it committed).
  if (reply.stale && !retried && reply.status === "I") return Effect.andThen(warning, again())
  if (answer instanceof SqlError) return Effect.andThen(warning, Effect.fail(answer))
  if (answer === undefined) return Effect.fail(Wire.noAnswer())
  return Effect.as(warning, answer)
}
