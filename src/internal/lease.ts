/**
 * A connection lent to one caller alone, as `effect/sql` sees it: a
 * transaction, a stream, `sql.reserve`, or a statement that cannot share.
 *
 * The lease's rules:
 * 1. It is revocable. Once its caller is done (`COMMIT` sent, or its scope
 *    closed), every statement through it fails with `ConnectionReleasedError`
 *    and nothing reaches the wire, whatever fiber sends it: a fiber forked
 *    inside a transaction that outlives it cannot reach the next borrower.
 * 2. Every transaction it starts begins with the prologue (./prologue.ts), in
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
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Semaphore from "effect/Semaphore"
import type { Connection } from "effect/sql/SqlConnection"
import { SqlError } from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import * as PoolError from "../PoolError.ts"
import * as Tenant from "../Tenant.ts"
import type { Engine } from "./engine.ts"
import type { Entry } from "./entry.ts"
import * as Prologue from "./prologue.ts"
import { queryError, sqlStateOf } from "./sqlState.ts"
import * as SqlText from "./sqlText.ts"
import * as Wire from "./wire.ts"

type Rows = <A extends object>(rows: ReadonlyArray<A>) => ReadonlyArray<A>

/** What every lease needs from the pool. @internal */
export interface Context {
  readonly engine: Engine<Wire.Wire>
  readonly pins: () => Prologue.Pins
  /** Whether the pool talks to PostgreSQL itself (not through a transaction-mode pooler). */
  readonly direct: boolean
  readonly sessionCheck: "suspect" | "always"
  readonly queryTimeout: number
  readonly cancel: (wire: Wire.Wire) => Effect.Effect<void>
  /** Why a statement must not be sent at all (behind a pooler, session state), if it must not. */
  readonly refuse: (reading: SqlText.Reading) => SqlError | undefined
  /** Telemetry around a statement its caller sent. */
  readonly observe: <A>(reading: SqlText.Reading, scope: Tenant.Scope, effect: Effect.Effect<A, SqlError>) => Effect.Effect<A, SqlError>
  /** A tenant scope in words for errors, as `tenantTelemetry` allows. */
  readonly describe: (scope: Tenant.Scope) => string
  /** Logs a warning about a connection's session. */
  readonly warn: (message: string) => Effect.Effect<void>
  /**
   * Warns (at most once a minute) that a prologue found `what` left on a
   * session by an earlier borrower, and whether the work was `refused` there
   * (always, directly on PostgreSQL) or the values overridden.
   */
  readonly leftover: (what: string, refused?: boolean) => Effect.Effect<void>
  /** Takes another connection for the caller (in its turn, with its priority). */
  readonly acquire: (scope: Tenant.Scope) => Effect.Effect<Entry<Wire.Wire>, SqlError>
}

/** What a statement returned, as the driver's `Result`. */
type Answer = Wire.Answer

const answered = (command: string): Answer => ({ command, rowCount: 0, oid: null, rows: [], fields: [] })

const fail = (error: PoolError.PoolError) => Effect.fail(PoolError.toSqlError(error))

const commitRolledBack = () =>
  PoolError.toSqlError(new PoolError.IsolationError({ reason: "COMMIT rolled back an aborted transaction" }))

/** A `COMMIT` that found an aborted transaction answers `ROLLBACK`: that is a failure. */
const committed = (answer: Answer): Effect.Effect<void, SqlError> =>
  answer.command === "ROLLBACK" ? Effect.fail(commitRolledBack()) : Effect.void

/**
 * The pool's own transaction control, unnamed: a name the server no longer
 * holds (dropped by `DEALLOCATE` in a function, or a pooler's other server
 * connection) must never keep a transaction from ending.
 */
const control = (sql: string): Wire.Query => ({ sql, params: [], prepare: false, shape: "values" })

/** @internal */
export class Lease implements Connection {
  /** The connection, and its session: another one if the first had been left unclean (rule 2). */
  entry: Entry<Wire.Wire>
  wire: Wire.Wire
  readonly scope: Tenant.Scope
  readonly context: Context
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
  private gate: Semaphore.Semaphore | undefined = undefined
  private readonly idleWaiters: Array<() => void> = []

  constructor(entry: Entry<Wire.Wire>, scope: Tenant.Scope, context: Context, checkScope: boolean) {
    this.entry = entry
    this.wire = entry.connection
    this.scope = scope
    this.context = context
    this.checkScope = checkScope
    this.tenant = scope._tag === "Tenant" ? scope.id : ""
  }

  // --- `Connection`, as `effect/sql` calls it ---

  execute(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    return this.rows(sql, params, true, transformRows)
  }
  executeUnprepared(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    return this.rows(sql, params, false, transformRows)
  }
  executeRaw(sql: string, params: ReadonlyArray<unknown>) {
    return this.observed(sql, { sql, params, prepare: true, shape: "objects" })
  }
  executeValues(sql: string, params: ReadonlyArray<unknown>) {
    return Effect.map(this.observed(sql, { sql, params, prepare: true, shape: "values" }), (a) => a.rows as Array<Array<unknown>>)
  }
  executeValuesUnprepared(sql: string, params: ReadonlyArray<unknown>) {
    return Effect.map(this.observed(sql, { sql, params, prepare: false, shape: "values" }), (a) => a.rows as Array<Array<unknown>>)
  }
  executeStream(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    const stream = Stream.unwrap(this.guard(Effect.suspend(() => {
      const reading = SqlText.read(sql)
      const refused = this.refusal(reading)
      if (refused !== undefined) return Effect.fail(refused)
      if (reading.sessionState !== undefined) this.suspect ??= reading.sessionState
      return Effect.map(this.streamTransaction, (opened) => {
        const rows = this.wire.stream(sql, params)
        // A transaction opened for the stream alone ends with it: the statement behaves as in autocommit.
        return opened ? Stream.concat(rows, Stream.drain(Stream.fromEffect(this.endStreamTransaction))) : rows
      })
    })))
    return transformRows === undefined ? stream : Stream.mapArray(stream, (rows) => transformRows(rows) as typeof rows)
  }

  private rows(sql: string, params: ReadonlyArray<unknown>, prepare: boolean, transformRows: Rows | undefined) {
    return Effect.map(
      this.observed(sql, { sql, params, prepare, shape: "objects" }),
      (answer) => transformRows === undefined ? answer.rows : transformRows(answer.rows)
    )
  }

  private observed(sql: string, query: Wire.Query): Effect.Effect<Answer, SqlError> {
    return Effect.suspend(() => {
      // A fiber that outlived the lease learns that first, whatever scope it asks for.
      if (this.revoked) return fail(new PoolError.ConnectionReleasedError())
      const reading = SqlText.read(sql)
      return this.context.observe(reading, this.scope, this.guard(this.statement(query, reading)))
    })
  }

  // --- statements ---

  /** Why a statement must not go out on this lease, if it must not. */
  private refusal(reading: SqlText.Reading): SqlError | undefined {
    if (this.revoked) return PoolError.toSqlError(new PoolError.ConnectionReleasedError())
    return this.context.refuse(reading)
  }

  /** Refuses a statement whose fiber asks for another tenant than this lease serves. */
  private guard<A, R>(effect: Effect.Effect<A, SqlError, R>): Effect.Effect<A, SqlError, R> {
    if (!this.checkScope) return effect
    return Effect.withFiber((fiber) => {
      const asked = fiber.getRef(Tenant.CurrentTenant)
      return Tenant.sameScope(asked, this.scope) ? effect : fail(
        new PoolError.TenantMismatchError({
          transaction: this.context.describe(this.scope),
          statement: this.context.describe(asked)
        })
      )
    })
  }

  /** One statement of the caller's. */
  statement(query: Wire.Query, reading: SqlText.Reading): Effect.Effect<Answer, SqlError> {
    return Effect.suspend(() => {
      const refused = this.refusal(reading)
      if (refused !== undefined) return Effect.fail(refused)
      if (reading.sessionState !== undefined) this.suspect ??= reading.sessionState
      const quiet = this.serializing === 0 && this.inFlight === 0
      // Rule 4: a BEGIN waits for the transaction's first statement.
      if (reading.transaction === "begin" && this.predicted === "I" && this.begin === undefined && quiet) {
        this.begin = query
        return Effect.succeed(answered("BEGIN"))
      }
      // A transaction that never reached the server has nothing to end (`AND CHAIN` would start one: it goes out).
      if (this.begin !== undefined && reading.plainEnd && quiet) {
        this.begin = undefined
        return Effect.succeed(answered(reading.transaction === "commit" ? "COMMIT" : "ROLLBACK"))
      }
      // Unwinding after an interrupted statement: the connection will be closed, which rolls back on the server.
      if (this.interrupted && SqlText.unwinds(reading) && this.inFlight > 0) {
        this.condemned ??= "a statement was interrupted mid-transaction"
        return Effect.succeed(answered("ROLLBACK"))
      }
      return reading.effect === "neutral" && this.serializing === 0 && this.mayPipeline()
        ? this.send(query, reading)
        : this.serialized(this.send(query, reading))
    })
  }

  /**
   * Whether a cycle may go out behind this lease's others still in flight.
   * Directly, always (neutral statements cannot end a transaction). Behind a
   * transaction-mode pooler only inside a transaction: between two, the
   * pooler may move the client to another server connection, and PgBouncer
   * garbles a transaction pipelined behind one that ended.
   */
  private mayPipeline(): boolean {
    return this.context.direct || this.inFlight === 0 || this.predicted === "T"
  }

  /** Runs `effect` once everything sent before it is answered, and holds what follows until it is. */
  private serialized<A>(effect: Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> {
    return Effect.suspend(() => {
      this.serializing++
      this.gate ??= Semaphore.makeUnsafe(1)
      return this.gate.withPermit(Effect.andThen(this.idle, effect)).pipe(
        Effect.ensuring(Effect.sync(() => {
          this.serializing--
        }))
      )
    })
  }

  /** Resolves once none of this lease's cycles is on the wire. */
  private readonly idle: Effect.Effect<void> = Effect.callback<void>((resume) => {
    if (this.inFlight === 0) return resume(Effect.void)
    this.idleWaiters.push(() => resume(Effect.void))
  })

  /** Queues a cycle of this lease's; `reply` gets its reply. Returns why it could not be queued, if it could not. */
  private submit(queries: ReadonlyArray<Wire.Query>, reply: (reply: Wire.Reply) => void): SqlError | undefined {
    // Counted before it is queued: a reply may come at once.
    this.inFlight++
    this.sent++
    const refused = this.wire.submit(queries, (answer) => {
      this.inFlight--
      if (this.inFlight === 0) for (const waiter of this.idleWaiters.splice(0)) waiter()
      reply(answer)
    })
    if (refused !== undefined) this.inFlight--
    return refused
  }

  /**
   * Sends a statement (or, with none, only a pending `BEGIN` and the
   * prologue) in one cycle, preceded by the prologue when it starts a
   * transaction, and by the caller's pending `BEGIN`.
   */
  private send(
    query: Wire.Query | undefined,
    reading: SqlText.Reading | undefined,
    retried = false,
    alone = false
  ): Effect.Effect<Answer, SqlError> {
    const sent = Effect.callback<Answer, SqlError>((resume) => {
      if (this.revoked) return resume(fail(new PoolError.ConnectionReleasedError()))
      const begin = this.begin
      const before = { predicted: this.predicted, pinned: this.pinned }
      const pin = !alone && (begin !== undefined || this.predicted === "I" || (this.predicted === "T" && !this.pinned))
      const queries: Array<Wire.Query> = []
      if (begin !== undefined) queries.push(begin)
      if (pin) queries.push(Prologue.query(this.context.pins(), this.tenant))
      if (query !== undefined) queries.push(query)
      // What the cycle will do, barring failures; set before it is queued, as a reply may come at once.
      if (begin !== undefined) {
        this.begin = undefined
        this.predicted = "T"
      }
      if (pin && this.predicted === "T") this.pinned = true
      const refused = this.submit(
        queries,
        (reply) => resume(this.settle(reply, begin, pin, query, reading, retried))
      )
      if (refused !== undefined) {
        this.begin = begin
        this.predicted = before.predicted
        this.pinned = before.pinned
        // Lost before the lease's first cycle went out (a backend killed while the connection sat idle): nothing ran.
        if (this.replaceable(retried)) return resume(this.onAnotherConnection(query, reading, begin))
        return resume(this.unwound(reading, refused) ?? Effect.fail(refused))
      }
      return Effect.suspend(() => {
        this.interrupted = true
        // The statement is ours alone until the connection goes back: cancel it on the server.
        return this.returned ? Effect.void : this.context.cancel(this.wire)
      })
    })
    return this.timed(sent)
  }

  /** Gives up on an answer after `queryTimeout`: the connection's state is unknown, so it is closed. */
  private timed<A>(effect: Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> {
    const timeout = this.context.queryTimeout
    if (timeout === Infinity) return effect
    return Effect.timeoutOrElse(effect, {
      duration: timeout,
      orElse: () =>
        Effect.suspend(() => {
          this.condemned ??= "a statement got no answer within queryTimeout"
          return fail(new PoolError.QueryTimeoutError({ timeoutMillis: timeout }))
        })
    })
  }

  /** Reads a cycle's reply: the server's transaction status, its reports, the prologue's verdict, the caller's answer. */
  private settle(
    reply: Wire.Reply,
    begin: Wire.Query | undefined,
    pinned: boolean,
    query: Wire.Query | undefined,
    reading: SqlText.Reading | undefined,
    retried: boolean
  ): Effect.Effect<Answer, SqlError> {
    if (reply.defect !== undefined) return Effect.die(reply.defect)
    this.noteReports()
    const answers = reply.answers
    const prologue = pinned ? answers[begin !== undefined ? 1 : 0] : undefined
    let problem: string | undefined
    let warning: Effect.Effect<void> = Effect.void
    if (prologue instanceof SqlError) {
      problem = Prologue.isUnconfirmed(prologue)
    } else if (prologue !== undefined) {
      const verdict = Prologue.verdict(prologue, this.context.pins(), this.tenant)
      problem = verdict.problem
      if (verdict.leftover !== undefined) {
        this.suspect ??= `an earlier borrower left ${verdict.leftover}`
        warning = this.context.leftover(verdict.leftover)
      }
    }
    return Effect.andThen(warning, this.outcome(reply, begin, problem, prologue, query, reading, retried))
  }

  private outcome(
    reply: Wire.Reply,
    begin: Wire.Query | undefined,
    problem: string | undefined,
    prologue: Answer | SqlError | undefined,
    query: Wire.Query | undefined,
    reading: SqlText.Reading | undefined,
    retried: boolean
  ): Effect.Effect<Answer, SqlError> {
    const answers = reply.answers
    // Lost under the lease's first cycle, which opened its transaction: nothing of it can have committed, and
    // nothing else of the lease went out. (Without a BEGIN of its own, the statement may have committed.)
    if (begin !== undefined && this.replaceable(retried)) return this.onAnotherConnection(query, reading, begin)
    // Rule 3: the status is the server's once nothing else of the lease is in flight.
    if (this.inFlight === 0) this.predicted = reply.status
    if (reply.status !== "T") this.pinned = false
    // A statement that ended or undid part of the transaction, after the prologue or not: the next one pins again.
    else if (reading !== undefined && !SqlText.keepsTransaction(reading)) this.pinned = false
    else if (prologue !== undefined && !(prologue instanceof SqlError) && problem === undefined) this.pinned = true
    if (problem !== undefined) {
      // Nothing of the caller's ran or is open on this session: on another connection.
      if (this.sent === 1 && this.inFlight === 0 && reply.statusBefore === "I" && !retried) {
        return Effect.andThen(this.context.leftover(problem, true), this.onAnotherConnection(query, reading, begin))
      }
      this.condemned ??= problem
      return fail(new PoolError.IsolationError({ reason: problem }))
    }
    if (query === undefined) return Effect.as(this.firstFailure(answers), answered("BEGIN"))
    const answer = answers[answers.length - 1]
    // A statement the server no longer knew by name, in a cycle that committed nothing: once more, named afresh.
    if (reply.stale && !retried && reply.status === "I" && reply.statusBefore === "I" && begin === undefined && reading?.effect !== "control") {
      return this.send(query, reading, true)
    }
    if (answer !== undefined && !(answer instanceof SqlError)) {
      if (!plainCommands.has(answer.command)) this.leftState ??= `${answer.command} ran on the session`
      return Effect.succeed(answer)
    }
    // PostgreSQL refuses some statements after another in the same cycle (VACUUM, DISCARD ALL, ... CONCURRENTLY):
    // they cannot run in a transaction, and run alone, without a prologue to pin.
    if (
      prologue !== undefined && begin === undefined && !retried && answer instanceof SqlError && sqlStateOf(answer) === "25001" &&
      reply.statusBefore === "I" && reply.status === "I"
    ) return this.send(query, reading, true, true)
    const failure = this.firstFailure(answers)
    return this.unwound(reading, answer) ??
      Effect.andThen(failure, Effect.fail(queryError(new Error("no answer"), "PgConnection: The statement got no answer")))
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
  private unwound(reading: SqlText.Reading | undefined, failure: Answer | SqlError | undefined): Effect.Effect<Answer> | undefined {
    if (reading === undefined || !SqlText.unwinds(reading) || !(this.entry.broken || isConnectionLoss(failure))) {
      return undefined
    }
    this.condemned ??= "the connection was lost mid-transaction"
    return Effect.succeed(answered("ROLLBACK"))
  }

  /**
   * Whether the lease may go on on another connection: this one is lost, the
   * cycle that found it so is the lease's first and only one, and it is not
   * already a second attempt.
   */
  private replaceable(retried: boolean): boolean {
    return !retried && this.sent === 1 && this.inFlight === 0 && this.wire.dead()
  }

  /**
   * Retires the connection whose session the prologue refused (or that was
   * found lost) and sends the cycle again on another (with its `BEGIN`, if it
   * carried the caller's).
   */
  private onAnotherConnection(
    query: Wire.Query | undefined,
    reading: SqlText.Reading | undefined,
    begin: Wire.Query | undefined
  ): Effect.Effect<Answer, SqlError> {
    return Effect.uninterruptibleMask((restore) =>
      Effect.suspend(() => {
        this.context.engine.invalidate(this.entry)
        return Effect.flatMap(restore(this.context.acquire(this.scope)), (entry) => {
          // Given back meanwhile (a fiber that outlived its transaction): the new connection is not the lease's.
          if (this.returned) {
            this.context.engine.release(entry)
            return fail(new PoolError.ConnectionReleasedError())
          }
          this.entry = entry
          this.wire = entry.connection
          this.sent = 0
          this.predicted = "I"
          this.pinned = false
          this.begin = begin
          return restore(this.send(query, reading, true))
        })
      })
    )
  }

  private firstFailure(answers: ReadonlyArray<Answer | SqlError | undefined>): Effect.Effect<void, SqlError> {
    for (const answer of answers) if (answer instanceof SqlError) return Effect.fail(answer)
    return Effect.void
  }

  /** Reported settings the server says changed on this session: it must be reset before it is lent again. */
  private noteReports(): void {
    const reports = this.wire.takeReports()
    if (reports.length > 0) this.leftState ??= `the server reported ${reports.join(", ")} changed`
  }

  /**
   * Makes sure the lease is inside a transaction that carries the prologue,
   * for a stream (which the driver runs): sends a pending `BEGIN` with it,
   * or opens one for the stream alone. Whether it opened one.
   */
  private get streamTransaction(): Effect.Effect<boolean, SqlError> {
    return this.serialized(Effect.suspend(() => {
      const opens = this.begin === undefined && this.predicted === "I"
      if (opens) this.begin = control("BEGIN")
      if (this.begin === undefined && this.pinned) return Effect.succeed(false)
      return Effect.as(this.send(undefined, undefined), opens)
    }))
  }

  /** Commits the transaction a stream opened for itself. */
  private get endStreamTransaction(): Effect.Effect<void, SqlError> {
    return this.serialized(Effect.flatMap(this.send(control("COMMIT"), SqlText.read("COMMIT")), committed))
  }

  // --- the end of the lease ---

  /**
   * `effect/sql`'s `COMMIT`. The lease is revoked as it is sent; rule 5:
   * when nothing else of it is in flight and the session needs nothing, the
   * connection goes back to the engine at once, the caller still waiting for
   * the answer.
   */
  readonly commit: Effect.Effect<void, SqlError> = Effect.suspend(() => {
    if (this.revoked) return fail(new PoolError.ConnectionReleasedError())
    if (this.begin !== undefined && this.inFlight === 0 && this.serializing === 0) {
      // Nothing of the transaction reached the server.
      this.begin = undefined
      this.revoked = true
      return Effect.void
    }
    const commit = Effect.callback<void, SqlError>((resume) => {
      this.revoked = true
      this.predicted = "I"
      this.pinned = false
      const refused = this.submit([control("COMMIT")], (reply) => {
        const answer = reply.answers[0]
        if (reply.status !== "I") this.entry.broken = true
        if (this.returned && this.wire.takeReports().length > 0) this.entry.broken = true
        resume(
          answer === undefined
            ? Effect.fail(commitRolledBack())
            : answer instanceof SqlError
            ? Effect.fail(answer)
            : committed(answer)
        )
      })
      if (refused !== undefined) return resume(Effect.fail(refused))
      if (this.inFlight === 1 && this.mayHandOff()) this.returned = this.context.engine.handOff(this.entry)
    })
    return this.serializing === 0 && this.inFlight === 0 ? commit : this.serialized(commit)
  })

  /** Directly only: behind a pooler the next borrower's transaction would be pipelined behind this one's end. */
  private mayHandOff(): boolean {
    return this.context.direct && this.suspect === undefined && this.leftState === undefined && this.condemned === undefined &&
      !this.interrupted && !this.entry.broken &&
      this.context.sessionCheck !== "always"
  }

  /**
   * Takes the connection back when the caller's scope closes (unless `commit`
   * already did): revokes the lease, waits for its statements still on the
   * wire (a fiber that outlived its transaction may have some), then rolls
   * back what the server says is still open and resets a session that may
   * have changed; a connection where any of that fails is closed.
   */
  giveBack(): Effect.Effect<void> | undefined {
    this.revoked = true
    if (this.returned) return undefined
    this.returned = true
    const { engine } = this.context
    if (this.condemned !== undefined || (this.interrupted && this.inFlight > 0)) {
      engine.invalidate(this.entry)
      return undefined
    }
    const needsReset = () =>
      this.context.direct &&
      (this.suspect !== undefined || this.leftState !== undefined || this.context.sessionCheck === "always")
    if (this.inFlight === 0) {
      this.noteReports()
      if (this.wire.status() === "I" && !needsReset()) {
        engine.release(this.entry)
        return undefined
      }
    }
    const lease = this
    return Effect.gen(function*() {
      yield* lease.idle
      lease.noteReports()
      if (lease.wire.status() !== "I") {
        const reply = yield* Effect.option(Wire.run(lease.wire, [control("ROLLBACK")]))
        if (reply._tag === "None" || reply.value.status !== "I") return engine.invalidate(lease.entry)
      }
      if (!needsReset()) return engine.release(lease.entry)
      const reset = yield* Effect.option(Wire.run(lease.wire, Prologue.reset(lease.context.pins())))
      lease.wire.takeReports()
      const problem = reset._tag === "None" ? "the reset failed" : Prologue.resetProblem(reset.value)
      if (problem === undefined) engine.release(lease.entry)
      else engine.invalidate(lease.entry)
      const left = lease.leftState ?? (problem === undefined ? undefined : lease.suspect ?? "sessionCheck: always")
      if (left === undefined) return
      yield* lease.context.warn(
        `A lease left session state (${left}); ` +
          (problem === undefined
            ? "the session was reset before it was lent again."
            : `it could not be reset (${problem}), so the connection was closed.`) +
          " Use SET LOCAL / set_config(..., true) inside a transaction instead."
      )
    })
  }
}

/** Command tags of statements that cannot leave session state (functions they call aside: the prologue covers those). */
const plainCommands: ReadonlySet<string> = new Set([
  "SELECT",
  "INSERT",
  "UPDATE",
  "DELETE",
  "MERGE",
  "FETCH",
  "MOVE",
  "BEGIN",
  "START",
  "COMMIT",
  "ROLLBACK",
  "SAVEPOINT",
  "RELEASE",
  "SHOW",
  "EXPLAIN",
  "VALUES",
  "TRUNCATE",
  "LOCK",
  "NOTIFY",
  "ANALYZE",
  "VACUUM",
  "REFRESH",
  "COMMENT",
  "GRANT",
  "REVOKE",
  "CLOSE",
  ""
])

const isConnectionLoss = (answer: Answer | SqlError | undefined): boolean =>
  answer instanceof SqlError && answer.reason._tag === "ConnectionError"
