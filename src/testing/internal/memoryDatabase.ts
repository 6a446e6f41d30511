/**
 * The database behind `PoolTest`: connections that answer the pool's own
 * statements (transaction control, the tenant's `set_config`, the session
 * check) as PostgreSQL would, and every other statement from a script.
 *
 * It follows what the pool relies on: a transaction is open from `BEGIN` to
 * `COMMIT`/`ROLLBACK`; a failed statement aborts it, so its `COMMIT` answers
 * `ROLLBACK`; the tenant's setting lasts until the transaction ends. Each
 * statement is judged when it is submitted, in submission order, as the
 * server reads a pipeline.
 *
 * @internal
 */
import type * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import {
  AuthenticationError,
  AuthorizationError,
  ConnectionError,
  ConstraintError,
  DeadlockError,
  LockTimeoutError,
  SerializationError,
  SqlError,
  type SqlErrorReason,
  SqlSyntaxError,
  StatementTimeoutError,
  UniqueViolation,
  UnknownError
} from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import type { Connector } from "../../internal/engine.ts"
import * as SessionState from "../../internal/sessionState.ts"

/** A statement the code under test sent, as the database saw it. @internal */
export interface Statement {
  /** The text with `$n` placeholders, as compiled by `effect/sql`. */
  readonly sql: string
  readonly params: ReadonlyArray<unknown>
  /** The tenant the pool had set in the statement's transaction; `undefined` when none was. */
  readonly tenant: string | undefined
  /** Whether it ran inside a transaction (a tenant's lone statement gets one of its own). */
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
  const props = { cause, message: "PgConnection: Query failed", operation: "query" }
  return new SqlError({ reason: reasonFor(code, constraint, props) })
}

const reasonFor = (
  code: string,
  constraint: string | undefined,
  props: { readonly cause: unknown; readonly message: string; readonly operation: string }
): SqlErrorReason => {
  switch (code) {
    case "42501":
      return new AuthorizationError(props)
    case "23505":
      return new UniqueViolation({ ...props, constraint: constraint?.trim() || "unknown" })
    case "40P01":
      return new DeadlockError(props)
    case "40001":
      return new SerializationError(props)
    case "55P03":
      return new LockTimeoutError(props)
    case "57014":
      return new StatementTimeoutError(props)
  }
  switch (code.slice(0, 2)) {
    case "08":
      return new ConnectionError(props)
    case "28":
      return new AuthenticationError(props)
    case "42":
      return new SqlSyntaxError(props)
    case "23":
      return new ConstraintError(props)
  }
  return new UnknownError(props)
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
export class UnscriptedStatementError extends Error {
  readonly _tag = "UnscriptedStatementError"
  readonly statement: Statement
  constructor(statement: Statement, scripted: ReadonlyArray<Reply>) {
    const left = scripted.filter((reply) => reply.times > 0).map((reply) => describeMatch(reply.match))
    super(
      `PoolTest: no scripted reply for ${JSON.stringify(squeeze(statement.sql))}` +
        ` (tenant ${statement.tenant ?? "none"}); replies left: ${left.length === 0 ? "none" : left.join(", ")}`
    )
    this.name = "UnscriptedStatementError"
    this.statement = statement
  }
}

const result = (command: string, rows: ReadonlyArray<Record<string, unknown>> = []): PgConnection.Result => ({
  command,
  rowCount: rows.length,
  oid: null,
  rows,
  fields: []
})

const commandOf = (sql: string): string => {
  const word = /^\s*\(?\s*([A-Za-z]+)/.exec(sql)?.[1]?.toUpperCase() ?? "SELECT"
  if (word !== "WITH") return word
  return /\b(insert|update|delete|merge)\b/i.exec(sql)?.[1]?.toUpperCase() ?? "SELECT"
}

const cleanSession = { tenant_set: false, settings: 0, role_changed: false, listens: 0, advisory_locks: 0, prepared: 0, cursors: 0, temp_tables: 0 }

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

/** One connection to the in-memory database. @internal */
export class MemoryConnection {
  closed = false
  inTransaction = false
  aborted = false
  tenant: string | undefined = undefined
  retire: (() => void) | undefined = undefined

  readonly database: Database
  readonly id: number

  constructor(database: Database, id: number) {
    this.database = database
    this.id = id
  }

  /** The connection dies, as a killed backend does. */
  kill(): void {
    this.closed = true
    this.database.open.delete(this)
    this.retire?.()
  }

  private endTransaction(command: string): PgConnection.Result {
    this.inTransaction = false
    this.aborted = false
    this.tenant = undefined
    return result(command)
  }

  /** The pool's own statements; `undefined` for the rest. */
  private control(sql: string, params: ReadonlyArray<unknown>): Effect.Effect<PgConnection.Result, SqlError> | undefined {
    if (/^\s*(begin|start\s+transaction)\b/i.test(sql)) {
      this.inTransaction = true
      this.aborted = false
      this.tenant = undefined
      return Effect.succeed(result("BEGIN"))
    }
    if (/^\s*(commit|end)\b/i.test(sql)) return Effect.succeed(this.endTransaction(this.aborted ? "ROLLBACK" : "COMMIT"))
    if (/^\s*rollback\s+to\b/i.test(sql)) {
      this.aborted = false
      return Effect.succeed(result("ROLLBACK"))
    }
    if (/^\s*(rollback|abort)\b/i.test(sql)) return Effect.succeed(this.endTransaction("ROLLBACK"))
    if (/^\s*(savepoint|release)\b/i.test(sql)) {
      return this.aborted ? Effect.fail(inFailedTransaction()) : Effect.succeed(result(commandOf(sql)))
    }
    if (sql === "SELECT set_config($1, $2, true)") {
      if (this.aborted) return Effect.fail(inFailedTransaction())
      // Transaction-local: outside a transaction it would end with the statement.
      if (this.inTransaction) this.tenant = String(params[1])
      return Effect.succeed(result("SELECT", [{ set_config: params[1] }]))
    }
    if (sql === SessionState.checkQuery) return Effect.succeed(result("SELECT", [cleanSession]))
    return undefined
  }

  /** Runs one statement: the pool's own, or the script's answer. */
  query(sql: string, params: ReadonlyArray<unknown> = []): Effect.Effect<PgConnection.Result, SqlError> {
    return Effect.suspend(() => {
      if (this.closed) return Effect.fail(connectionLost("query"))
      const control = this.control(sql, params)
      if (control !== undefined) return control
      if (this.aborted) return Effect.fail(inFailedTransaction())
      const statement: Statement = {
        sql,
        params,
        tenant: this.inTransaction ? this.tenant : undefined,
        transaction: this.inTransaction,
        connection: this.id
      }
      this.database.statements.push(statement)
      const reply = this.database.replies.find((r) => r.times > 0 && matches(r.match, statement))
      if (reply === undefined) {
        if (this.database.unmatched === "empty") return Effect.succeed(result(commandOf(sql)))
        return Effect.die(new UnscriptedStatementError(statement, this.database.replies))
      }
      ;(reply as { times: number }).times--
      const answer = reply.answer
      let outcome: Effect.Effect<PgConnection.Result, SqlError>
      switch (answer._tag) {
        case "Rows":
          outcome = Effect.sync(() => result(commandOf(sql), answer.rows(statement)))
          break
        case "Fail":
          if (this.inTransaction) this.aborted = true
          outcome = Effect.fail(answer.error())
          break
        case "ConnectionLost":
          this.kill()
          outcome = Effect.fail(connectionLost("query"))
      }
      return Duration.isZero(reply.delay) ? outcome : Effect.delay(outcome, reply.delay)
    })
  }

  /** As the driver's `PgConnection`, for the pool. */
  asPgConnection(): PgConnection.PgConnection {
    const connection = {
      processId: this.id,
      query: (sql: string, params?: ReadonlyArray<unknown>) => this.query(sql, params),
      queryValues: (sql: string, params?: ReadonlyArray<unknown>) =>
        Effect.map(this.query(sql, params), (r) => r.rows.map((row) => Object.values(row))),
      stream: (sql: string, params?: ReadonlyArray<unknown>) =>
        Stream.unwrap(Effect.map(this.query(sql, params), (r) => Stream.fromIterable(r.rows)))
    }
    connections.set(connection, this)
    return connection as unknown as PgConnection.PgConnection
  }
}

const connections = new WeakMap<object, MemoryConnection>()
const memoryOf = (connection: PgConnection.PgConnection): MemoryConnection => connections.get(connection)!

/** The pool's connector on `database`. @internal */
export const connector = (database: Database): Connector<PgConnection.PgConnection> => ({
  connect: Effect.gen(function*() {
    if (!Duration.isZero(database.connectDelay)) yield* Effect.sleep(database.connectDelay)
    if (database.down) return yield* Effect.fail(connectionLost("connect"))
    const connection = new MemoryConnection(database, ++database.opened)
    database.open.add(connection)
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        connection.closed = true
        database.open.delete(connection)
      })
    )
    return connection.asPgConnection()
  }) as Effect.Effect<PgConnection.PgConnection, SqlError, Scope.Scope>,
  onRetire: (connection, retire) => {
    memoryOf(connection).retire = retire
  },
  cancel: () => Effect.void,
  validate: (connection) => memoryOf(connection).closed ? Effect.fail(connectionLost("query")) : Effect.void
})
