/**
 * The tenant transaction protocol on a lease (rules 2 to 4 of ./lease.ts):
 * how a caller's statement goes out, and what its reply means.
 *
 * - A statement is admitted only while the lease is not revoked, and not
 *   behind a pooler if it names session state.
 * - A caller's `BEGIN` waits for the transaction's first statement and
 *   goes out with it and the prologue, in one cycle; a transaction that
 *   never reached the server ends without a cycle.
 * - Every transaction the lease starts carries the prologue in its first
 *   cycle: a lone statement's implicit one, a `BEGIN`'s, and one the server
 *   says began without it. A prologue that refuses the session sends the
 *   work to another connection while nothing of it can have run, and
 *   fails it with `IsolationError` otherwise.
 * - The server's transaction status and reports, not command tags, say
 *   where the lease is and whether its session may need a reset.
 *
 * Just over 300 lines: the protocol's steps (admit, send, settle, the
 * outcome, the retry on another connection) read each other's results, and
 * are kept in one file to be read in order.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import { SqlError } from "effect/sql/SqlError"
import * as PoolError from "../../PoolError.ts"
import type { Lease } from "./lease.ts"
import * as LeaseCycles from "./leaseCycles.ts"
import * as LeaseEnd from "./leaseEnd.ts"
import * as Prologue from "../postgres/prologue.ts"
import { fail } from "./serving.ts"
import { sqlStateOf } from "../postgres/sqlState.ts"
import * as SqlText from "../postgres/sqlText.ts"
import * as Wire from "../postgres/wire.ts"

/** One cycle of a lease's, as it was sent. */
interface Sent {
  /** The caller's pending `BEGIN`, when the cycle carries it. */
  readonly begin: Wire.Query | undefined
  /** Whether the cycle carries the prologue. */
  readonly pinned: boolean
  /** The caller's statement; none when the cycle only opens a transaction (for a stream). */
  readonly query: Wire.Query | undefined
  readonly reading: SqlText.Reading | undefined
  /** The cycle is the statement's second attempt. */
  readonly retried: boolean
}

/** An answer for a statement that was not sent. */
const answered = (command: string): Wire.Answer => ({ command, rowCount: 0, oid: null, rows: [], fields: [] })

/**
 * Why a statement must not go out on the lease, if it must not; one that
 * may names the session state it leaves, for the reset.
 *
 * @internal
 */
export const admit = (lease: Lease, reading: SqlText.Reading): SqlError | undefined => {
  if (lease.revoked) return PoolError.toSqlError(new PoolError.ConnectionReleasedError())
  const refused = lease.serving.refuse(reading)
  if (refused === undefined && reading.sessionState !== undefined) lease.suspect ??= reading.sessionState
  return refused
}

/** One statement of the caller's. @internal */
export const statement = (lease: Lease, query: Wire.Query, reading: SqlText.Reading): Effect.Effect<Wire.Answer, SqlError> =>
  Effect.suspend(() => {
    const refused = admit(lease, reading)
    if (refused !== undefined) return Effect.fail(refused)
    const quiet = lease.serializing === 0 && lease.inFlight === 0
    // Rule 4: a BEGIN waits for the transaction's first statement.
    if (reading.transaction === "begin" && lease.predicted === "I" && lease.begin === undefined && quiet) {
      lease.begin = query
      return Effect.succeed(answered("BEGIN"))
    }
    // A transaction that never reached the server has nothing to end (`AND CHAIN` would start one: it goes out).
    if (lease.begin !== undefined && reading.plainEnd && quiet) {
      lease.begin = undefined
      return Effect.succeed(answered(reading.transaction === "commit" ? "COMMIT" : "ROLLBACK"))
    }
    // Unwinding after an interrupted statement: the connection will be closed, which rolls back on the server.
    if (lease.interrupted && SqlText.unwinds(reading) && lease.inFlight > 0) {
      lease.condemned ??= "a statement was interrupted mid-transaction"
      return Effect.succeed(answered("ROLLBACK"))
    }
    return reading.effect === "neutral" && lease.serializing === 0 && LeaseCycles.mayPipeline(lease)
      ? send(lease, query, reading)
      : LeaseCycles.serialized(lease, send(lease, query, reading))
  })

/**
 * Sends a statement (or, with none, only a pending `BEGIN` and the
 * prologue) in one cycle, preceded by the prologue when it starts a
 * transaction (unless it must run `alone`), and by the caller's pending
 * `BEGIN`.
 */
const send = (
  lease: Lease,
  query: Wire.Query | undefined,
  reading: SqlText.Reading | undefined,
  retried = false,
  alone = false
): Effect.Effect<Wire.Answer, SqlError> =>
  LeaseCycles.timed(
    lease,
    Effect.callback<Wire.Answer, SqlError>((resume) => {
      if (lease.revoked) return resume(fail(new PoolError.ConnectionReleasedError()))
      const { begin, predicted, pinned } = lease
      const pin = !alone && (begin !== undefined || predicted === "I" || (predicted === "T" && !pinned))
      const queries: Array<Wire.Query> = []
      if (begin !== undefined) queries.push(begin)
      if (pin) queries.push(Prologue.query(lease.serving.pins(), lease.tenant))
      if (query !== undefined) queries.push(query)
      // What the cycle will do, barring failures; set before it is queued, as a reply may come at once.
      if (begin !== undefined) {
        lease.begin = undefined
        lease.predicted = "T"
      }
      if (pin && lease.predicted === "T") lease.pinned = true
      const sent: Sent = { begin, pinned: pin, query, reading, retried }
      const refused = LeaseCycles.submit(lease, queries, (reply) => resume(settle(lease, reply, sent)))
      if (refused !== undefined) {
        lease.begin = begin
        lease.predicted = predicted
        lease.pinned = pinned
        // Lost before the lease's first cycle went out (a backend killed while the connection sat idle): nothing ran.
        if (replaceable(lease, retried)) return resume(onAnotherConnection(lease, sent))
        return resume(unwound(lease, reading, refused) ?? Effect.fail(refused))
      }
      return Effect.suspend(() => {
        lease.interrupted = true
        // The statement is ours alone until the connection goes back: cancel it on the server.
        return lease.returned ? Effect.void : lease.serving.cancel(lease.wire)
      })
    })
  )

/** Reads a cycle's reply: the server's reports, the prologue's verdict, then the outcome. */
const settle = (lease: Lease, reply: Wire.Reply, sent: Sent): Effect.Effect<Wire.Answer, SqlError> => {
  if (reply.defect !== undefined) return Effect.die(reply.defect)
  LeaseCycles.noteReports(lease)
  const prologue = sent.pinned ? reply.answers[sent.begin !== undefined ? 1 : 0] : undefined
  let problem: string | undefined
  let warning: Effect.Effect<void> = Effect.void
  if (prologue instanceof SqlError) {
    problem = Prologue.isUnconfirmed(prologue)
  } else if (prologue !== undefined) {
    const verdict = Prologue.verdict(prologue, lease.serving.pins(), lease.tenant)
    problem = verdict.problem
    if (verdict.leftover !== undefined) {
      lease.suspect ??= `an earlier borrower left ${verdict.leftover}`
      warning = lease.serving.leftover(verdict.leftover)
    }
  }
  return Effect.andThen(warning, outcome(lease, reply, sent, prologue, problem))
}

/** What a cycle's reply means for the lease and its caller. */
const outcome = (
  lease: Lease,
  reply: Wire.Reply,
  sent: Sent,
  prologue: Wire.Answer | SqlError | undefined,
  problem: string | undefined
): Effect.Effect<Wire.Answer, SqlError> => {
  // Lost under the lease's first cycle, which opened its transaction: nothing of it can have committed, and
  // nothing else of the lease went out. (Without a BEGIN of its own, the statement may have committed.)
  if (sent.begin !== undefined && replaceable(lease, sent.retried)) return onAnotherConnection(lease, sent)
  track(lease, reply, sent.reading, prologue !== undefined && !(prologue instanceof SqlError) && problem === undefined)
  if (problem !== undefined) {
    // Nothing of the caller's ran or is open on this session: on another connection.
    if (lease.sent === 1 && lease.inFlight === 0 && reply.statusBefore === "I" && !sent.retried) {
      return Effect.andThen(lease.serving.leftover(problem, true), onAnotherConnection(lease, sent))
    }
    lease.condemned ??= problem
    return fail(new PoolError.IsolationError({ reason: problem }))
  }
  if (sent.query === undefined) return Effect.as(firstFailure(reply.answers), answered("BEGIN"))
  return answerOf(lease, reply, sent, sent.query, prologue !== undefined)
}

/**
 * Rule 3: the transaction status is the server's once nothing else of the
 * lease is in flight; the transaction stays pinned while it stays whole,
 * and is pinned once a prologue took effect in it.
 */
const track = (lease: Lease, reply: Wire.Reply, reading: SqlText.Reading | undefined, pinnedNow: boolean): void => {
  if (lease.inFlight === 0) lease.predicted = reply.status
  if (reply.status !== "T") lease.pinned = false
  else if (reading !== undefined && !SqlText.keepsTransaction(reading)) lease.pinned = false
  else if (pinnedNow) lease.pinned = true
}

/** The caller's answer from its cycle: its statement's, or its failure; some failures send it once more. */
const answerOf = (
  lease: Lease,
  reply: Wire.Reply,
  sent: Sent,
  query: Wire.Query,
  withPrologue: boolean
): Effect.Effect<Wire.Answer, SqlError> => {
  const { begin, reading, retried } = sent
  const answers = reply.answers
  const answer = answers[answers.length - 1]
  // A first attempt, in a cycle that found no transaction and left none: failed, it committed nothing.
  const mayRetry = !retried && reply.status === "I" && reply.statusBefore === "I" && begin === undefined
  // A statement the server no longer knew by name: once more, named afresh.
  if (reply.stale && mayRetry && reading?.effect !== "control") return send(lease, query, reading, true)
  if (answer !== undefined && !(answer instanceof SqlError)) {
    if (!plainCommands.has(answer.command)) lease.leftState ??= `${answer.command} ran on the session`
    return Effect.succeed(answer)
  }
  // PostgreSQL refuses some statements after another in the same cycle (VACUUM, DISCARD ALL, ... CONCURRENTLY):
  // they cannot run in a transaction, and run alone, without a prologue to pin.
  if (withPrologue && mayRetry && answer instanceof SqlError && sqlStateOf(answer) === "25001") {
    return send(lease, query, reading, true, true)
  }
  return unwound(lease, reading, answer) ?? Effect.andThen(firstFailure(answers), Effect.fail(Wire.noAnswer()))
}

/**
 * Unwinding (`ROLLBACK`, `RELEASE`) on a lost connection succeeds: the
 * server dropped the transaction with it, and `effect/sql` would otherwise
 * turn the failure into a defect no retry can see. The connection is
 * closed. Lost means a socket failure, or the driver retired the
 * connection: a backend terminated while the transaction was idle sends
 * its FATAL error (57P01) before any statement, and every later one fails
 * with it.
 */
const unwound = (
  lease: Lease,
  reading: SqlText.Reading | undefined,
  failure: Wire.Answer | SqlError | undefined
): Effect.Effect<Wire.Answer> | undefined => {
  if (reading === undefined || !SqlText.unwinds(reading) || !(lease.entry.broken || isConnectionLoss(failure))) {
    return undefined
  }
  lease.condemned ??= "the connection was lost mid-transaction"
  return Effect.succeed(answered("ROLLBACK"))
}

/**
 * Whether the lease may go on on another connection: this one is lost, the
 * cycle that found it so is the lease's first and only one, and it is not
 * already a second attempt.
 */
const replaceable = (lease: Lease, retried: boolean): boolean =>
  !retried && lease.sent === 1 && lease.inFlight === 0 && lease.wire.dead()

/**
 * Retires the connection whose session the prologue refused (or that was
 * found lost) and sends the cycle again on another (with its `BEGIN`, if it
 * carried the caller's).
 */
const onAnotherConnection = (lease: Lease, sent: Sent): Effect.Effect<Wire.Answer, SqlError> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.suspend(() => {
      const { engine } = lease.serving
      engine.invalidate(lease.entry)
      return Effect.flatMap(restore(lease.serving.acquire(lease.scope, false)), (entry) => {
        // Given back meanwhile (a fiber that outlived its transaction): the new connection is not the lease's.
        if (lease.returned) {
          engine.release(entry)
          return fail(new PoolError.ConnectionReleasedError())
        }
        lease.entry = entry
        lease.wire = entry.connection
        lease.sent = 0
        lease.predicted = "I"
        lease.pinned = false
        lease.begin = sent.begin
        return restore(send(lease, sent.query, sent.reading, true))
      })
    })
  )

const firstFailure = (answers: ReadonlyArray<Wire.Answer | SqlError | undefined>): Effect.Effect<void, SqlError> => {
  for (const answer of answers) if (answer instanceof SqlError) return Effect.fail(answer)
  return Effect.void
}

/**
 * Makes sure the lease is inside a transaction that carries the prologue,
 * for a stream (which the driver runs): sends a pending `BEGIN` with it,
 * or opens one for the stream alone. Whether it opened one.
 *
 * @internal
 */
export const streamTransaction = (lease: Lease): Effect.Effect<boolean, SqlError> =>
  LeaseCycles.serialized(
    lease,
    Effect.suspend(() => {
      const opens = lease.begin === undefined && lease.predicted === "I"
      if (opens) lease.begin = LeaseCycles.control("BEGIN")
      if (lease.begin === undefined && lease.pinned) return Effect.succeed(false)
      return Effect.as(send(lease, undefined, undefined), opens)
    })
  )

/** Commits the transaction a stream opened for itself. @internal */
export const endStreamTransaction = (lease: Lease): Effect.Effect<void, SqlError> =>
  LeaseCycles.serialized(
    lease,
    Effect.flatMap(send(lease, LeaseCycles.control("COMMIT"), SqlText.read("COMMIT")), LeaseEnd.committed)
  )

/** Command tags of statements that cannot leave session state (functions they call aside: the prologue covers those). */
const plainCommands: ReadonlySet<string> = new Set([
  "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "FETCH", "MOVE", "SHOW", "EXPLAIN", "VALUES", "TRUNCATE", "LOCK",
  "BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "CLOSE", "",
  "NOTIFY", "ANALYZE", "VACUUM", "REFRESH", "COMMENT", "GRANT", "REVOKE"
])

const isConnectionLoss = (answer: Wire.Answer | SqlError | undefined): boolean =>
  answer instanceof SqlError && answer.reason._tag === "ConnectionError"
