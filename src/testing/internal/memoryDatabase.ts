/**
 * The database behind `PoolTest`: connections that speak the pool's wire
 * protocol (cycles of statements, each answered with the transaction status
 * after it), answer the pool's own statements (transaction control, the
 * transaction prologue, the session reset) as PostgreSQL would, and every
 * other statement from a script.
 *
 * It follows what the pool relies on: the statements of a cycle run in one
 * implicit transaction unless a `BEGIN` opens a block, which stays open until
 * `COMMIT`/`ROLLBACK`; a failed statement skips the rest of its cycle and
 * aborts an open block, whose `COMMIT` then answers `ROLLBACK`; the tenant
 * the prologue sets lasts until the transaction ends. Cycles run one after
 * another in submission order, as the server reads a pipeline.
 *
 * It reads statements as the pool does (../../internal/postgres/sqlText.ts) and
 * answers the pool's own as the pool says a clean session does
 * (../../internal/postgres/prologue.ts), so it knows nothing of their text.
 *
 * Why this module is over 300 lines: it is one stand-in for the server, the
 * script and the connections answering from it sharing one record of
 * statements, and `PoolTest` exposes its types as its own.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import * as Exit from "effect/Exit"
import type * as Scope from "effect/Scope"
import { ConnectionError, SqlError } from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import type { Connector } from "../../internal/engine/connector.ts"
import * as Prologue from "../../internal/postgres/prologue.ts"
import { connectFailure, reasonFor } from "../../internal/postgres/sqlState.ts"
import * as SqlText from "../../internal/postgres/sqlText.ts"
import * as Wire from "../../internal/postgres/wire.ts"

/** A statement the code under test sent, as the database saw it. @internal */
export interface Statement {
  /** The text with `$n` placeholders, as compiled by `effect/sql`. */
  readonly sql: string
  readonly params: ReadonlyArray<unknown>
  /** The tenant the pool had set in the statement's transaction; `undefined` when none was. */
  readonly tenant: string | undefined
  /** Whether it ran inside a transaction block (`sql.withTransaction`, or a `BEGIN` of the caller's). */
  readonly transaction: boolean
  /** Which connection it ran on, counting from 1. */
  readonly connection: number
}

/** What a script says a statement gets. @internal */
export type Answer =
  | { readonly _tag: "Rows"; readonly rows: (statement: Statement) => ReadonlyArray<Record<string, unknown>> }
  | { readonly _tag: "Fail"; readonly error: () => SqlError }
  | { readonly _tag: "ConnectionLost" }

/** One scripted reply. @internal */
export interface Reply {
  readonly match: Match
  readonly answer: Answer
  /** How many statements it answers. */
  readonly times: number
  /** How long each answer takes, on Effect's clock. */
  readonly delay: Duration.Duration
}

/** Which statements a reply answers: text it contains (spacing aside), a pattern, or a predicate. @internal */
export type Match = string | RegExp | ((statement: Statement) => boolean)

/** A driver error for a server `ErrorResponse`, built as `@effect/sql-pg` builds it. @internal */
export const serverError = (code: string, message: string, constraint?: string): SqlError => {
  const cause = Object.assign(new Error(message), { severity: "ERROR", code, message, constraint })
  return new SqlError({
    reason: reasonFor(code, constraint, { cause, message: "PgConnection: Query failed", operation: "query" })
  })
}

/** The error the driver reports for a connection that went away. @internal */
export const connectionLost = (operation: "connect" | "query"): SqlError =>
  new SqlError({
    reason: new ConnectionError({
      cause: new Error(operation === "connect" ? "connect ECONNREFUSED" : "Connection terminated unexpectedly"),
      message: operation === "connect" ? "PgConnection: Failed to connect" : "PgConnection: Connection closed",
      operation
    })
  })

const inFailedTransaction = () =>
  serverError("25P02", "current transaction is aborted, commands ignored until end of transaction block")

const squeeze = (text: string) => text.replace(/\s+/g, " ").trim()

/** Whether `match` takes `statement`. @internal */
export const matches = (match: Match, statement: Statement): boolean =>
  typeof match === "string"
    ? squeeze(statement.sql).toLowerCase().includes(squeeze(match).toLowerCase())
    : match instanceof RegExp
    ? match.test(statement.sql)
    : match(statement)

/** A reply's matcher, for messages. @internal */
export const describeMatch = (match: Match): string =>
  typeof match === "string" ? JSON.stringify(match) : match instanceof RegExp ? String(match) : "<predicate>"

/** A statement nobody scripted an answer for: a mistake in the test, so a defect. @internal */
export class UnscriptedStatementError extends Schema.TaggedError<UnscriptedStatementError>()("UnscriptedStatementError", {
  message: Schema.String,
  /** The statement, as the pool sent it. */
  statement: Schema.Unknown
}) {}

/** The defect for `statement`, naming the replies still scripted. */
const unscripted = (statement: Statement, scripted: ReadonlyArray<Reply>): UnscriptedStatementError => {
  const left = scripted.filter((reply) => reply.times > 0).map((reply) => describeMatch(reply.match))
  return new UnscriptedStatementError({
    statement,
    message: `PoolTest: no scripted reply for ${JSON.stringify(squeeze(statement.sql))}` +
      ` (tenant ${statement.tenant ?? "none"}); replies left: ${left.length === 0 ? "none" : left.join(", ")}`
  })
}

const answer = (command: string, rows: ReadonlyArray<unknown> = []): Wire.Answer => ({
  command,
  rowCount: rows.length,
  oid: null,
  rows,
  fields: []
})

/** The in-memory session's search_path, as a server's default would read. */
const defaultSearchPath = "\"$user\", public"

/** The shared state of one in-memory database. @internal */
export interface Database {
  readonly replies: Array<Reply>
  readonly statements: Array<Statement>
  readonly unmatched: "die" | "empty"
  /** Connections opened so far, and open now. */
  opened: number
  readonly open: Set<MemoryConnection>
  down: boolean
  connectDelay: Duration.Duration
}

/** @internal */
export const makeDatabase = (options: {
  readonly replies: ReadonlyArray<Reply>
  readonly unmatched: "die" | "empty"
  readonly connectDelay: Duration.Duration
}): Database => ({
  // Copies: a reply's count is spent per database, so one script can serve many tests.
  replies: options.replies.map((reply) => ({ ...reply })),
  statements: [],
  unmatched: options.unmatched,
  opened: 0,
  open: new Set(),
  down: false,
  connectDelay: options.connectDelay
})

interface Cycle {
  readonly queries: ReadonlyArray<Wire.Query>
  readonly reply: (reply: Wire.Reply) => void
}

/** One connection to the in-memory database. @internal */
export class MemoryConnection {
  closed = false
  /** Inside a transaction block, and whether a failure aborted it. */
  inBlock = false
  aborted = false
  /** The tenant the prologue set for the current transaction. */
  tenant: string | undefined = undefined
  retire: (() => void) | undefined = undefined

  readonly database: Database
  readonly id: number
  private readonly cycles: Array<Cycle> = []
  private running = false
  private readonly idleWaiters: Array<() => void> = []

  constructor(database: Database, id: number) {
    this.database = database
    this.id = id
  }

  get status(): Wire.Status {
    return this.inBlock ? (this.aborted ? "E" : "T") : "I"
  }

  /** The connection dies, as a killed backend does. */
  kill(): void {
    this.closed = true
    this.database.open.delete(this)
    this.retire?.()
  }

  private endTransaction(command: string): Wire.Answer {
    this.inBlock = false
    this.aborted = false
    this.tenant = undefined
    return answer(command)
  }

  /** Transaction control, and the pool's own statements (as a clean session answers them); `undefined` for the rest. */
  private control(query: Wire.Query): Effect.Effect<Wire.Answer, SqlError> | undefined {
    const reading = SqlText.read(query.sql)
    switch (reading.transaction) {
      case "begin":
        this.inBlock = true
        return Effect.succeed(answer("BEGIN"))
      case "commit":
        return Effect.succeed(this.endTransaction(this.aborted ? "ROLLBACK" : "COMMIT"))
      case "rollback":
        return Effect.succeed(this.endTransaction("ROLLBACK"))
      case "rollbackTo":
        this.aborted = false
        return Effect.succeed(answer("ROLLBACK"))
    }
    if (this.aborted) return Effect.fail(inFailedTransaction())
    if (reading.transaction !== undefined) return Effect.succeed(answer(reading.operation))
    const own = Prologue.onCleanSession(query, defaultSearchPath)
    if (own === undefined) return undefined
    if (own.tenant !== undefined) this.tenant = own.tenant === "" ? undefined : own.tenant
    return Effect.succeed(answer(SqlText.command(query.sql), own.rows))
  }

  /** Runs one statement: the pool's own, or the script's answer. */
  private run(query: Wire.Query): Effect.Effect<Wire.Answer, SqlError> {
    return Effect.suspend(() => {
      if (this.closed) return Effect.fail(connectionLost("query"))
      const control = this.control(query)
      if (control !== undefined) return control
      const statement: Statement = {
        sql: query.sql,
        params: query.params,
        tenant: this.tenant,
        transaction: this.inBlock,
        connection: this.id
      }
      this.database.statements.push(statement)
      const reply = this.database.replies.find((r) => r.times > 0 && matches(r.match, statement))
      if (reply === undefined) {
        if (this.database.unmatched === "empty") return Effect.succeed(answer(SqlText.command(query.sql)))
        return Effect.die(unscripted(statement, this.database.replies))
      }
      ;(reply as { times: number }).times--
      const scripted = reply.answer
      let outcome: Effect.Effect<Wire.Answer, SqlError>
      switch (scripted._tag) {
        case "Rows":
          outcome = Effect.sync(() => {
            const rows = scripted.rows(statement)
            return answer(SqlText.command(query.sql), query.shape === "values" ? rows.map((row) => Object.values(row)) : rows)
          })
          break
        case "Fail":
          outcome = Effect.fail(scripted.error())
          break
        case "ConnectionLost":
          this.kill()
          outcome = Effect.fail(connectionLost("query"))
      }
      return Duration.isZero(reply.delay) ? outcome : Effect.delay(outcome, reply.delay)
    })
  }

  /** One cycle: its statements in order, the rest skipped after a failure; an implicit transaction ends with it. */
  private runCycle(cycle: Cycle): Effect.Effect<void> {
    const connection = this
    return Effect.gen(function*() {
      const statusBefore = connection.status
      const answers: Array<Wire.Answer | SqlError | undefined> = []
      let failed = false
      let defect: unknown = undefined
      for (const query of cycle.queries) {
        if (failed) {
          answers.push(undefined)
          continue
        }
        const exit = yield* Effect.exit(connection.run(query))
        if (exit._tag === "Success") {
          answers.push(exit.value)
          continue
        }
        const error = Exit.findErrorOption(exit)
        if (error._tag === "None") defect = Cause.squash(exit.cause)
        answers.push(error._tag === "Some" ? error.value : undefined)
        failed = true
        if (connection.inBlock) connection.aborted = true
      }
      if (!connection.inBlock) connection.tenant = undefined
      const status = connection.closed ? "E" : connection.status
      cycle.reply(defect === undefined ? { answers, statusBefore, status, stale: false } : { answers, statusBefore, status, stale: false, defect })
    })
  }

  /** As the pool's wire, for the pool; `runFork` runs its cycles on the test's services (its clock). */
  asWire(runFork: (effect: Effect.Effect<void>) => void): Wire.Wire {
    const drain = (): Effect.Effect<void> =>
      Effect.suspend(() => {
        const cycle = this.cycles.shift()
        if (cycle === undefined) {
          this.running = false
          for (const waiter of this.idleWaiters.splice(0)) waiter()
          return Effect.void
        }
        return Effect.andThen(this.runCycle(cycle), drain())
      })
    const wire: Wire.Wire = {
      processId: this.id,
      submit: (queries, reply) => {
        if (this.closed) return connectionLost("query")
        this.cycles.push({ queries, reply })
        if (!this.running) {
          this.running = true
          runFork(drain())
        }
        return undefined
      },
      dead: () => this.closed,
      status: () => this.status,
      inFlight: () => this.cycles.length + (this.running ? 1 : 0),
      idle: Effect.callback<void>((resume) => {
        if (!this.running) return resume(Effect.void)
        this.idleWaiters.push(() => resume(Effect.void))
      }),
      takeReports: () => [],
      stream: (sql, params) =>
        Stream.unwrap(
          Effect.map(
            Wire.expect(wire, { sql, params, prepare: false, shape: "objects" }),
            (result) => Stream.fromIterable(result.rows)
          )
        ),
      forgetPrepared: () => {}
    }
    wires.set(wire, this)
    return wire
  }
}

const wires = new WeakMap<Wire.Wire, MemoryConnection>()
const memoryOf = (wire: Wire.Wire): MemoryConnection => wires.get(wire)!

/** The pool's connector on `database`; `init` prepares each new session, as the pool asks. @internal */
export const connector = (
  database: Database,
  init: (wire: Wire.Wire) => Effect.Effect<void, SqlError>
): Connector<Wire.Wire> => ({
  connect: Effect.gen(function*() {
    if (!Duration.isZero(database.connectDelay)) yield* Effect.sleep(database.connectDelay)
    if (database.down) return yield* Effect.fail(connectionLost("connect"))
    const runFork = Effect.runForkWith(yield* Effect.context<never>())
    const connection = new MemoryConnection(database, ++database.opened)
    database.open.add(connection)
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        connection.closed = true
        database.open.delete(connection)
      })
    )
    const wire = connection.asWire((effect) => void runFork(effect))
    yield* init(wire)
    return wire
  }) as Effect.Effect<Wire.Wire, SqlError, Scope.Scope>,
  classify: connectFailure,
  onRetire: (wire, retire) => {
    memoryOf(wire).retire = retire
  },
  cancel: () => Effect.void,
  settled: (wire) => wire.idle,
  validate: (wire) => memoryOf(wire).closed ? Effect.fail(connectionLost("query")) : Effect.void
})
