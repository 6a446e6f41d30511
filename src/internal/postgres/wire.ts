/**
 * The pool's protocol session on one physical connection: statements go out
 * in cycles, and the server's own reports come back with them.
 *
 * A cycle is statements sent together and closed by one `Sync`. PostgreSQL
 * runs the statements of a cycle in one implicit transaction, unless one of
 * them opens or ends a transaction block, and answers the cycle with one
 * `ReadyForQuery` carrying the transaction status (idle, in a transaction,
 * failed). So the pool puts its transaction prologue and a lone statement in
 * one cycle (no `BEGIN` / `COMMIT`), and reads the transaction state from the
 * server rather than from command tags.
 *
 * Cycles submitted in the same tick share one write, and any number may be
 * on the wire at once (pipelining); the server answers them in order. A
 * failed statement skips the rest of its cycle only.
 *
 * The session also keeps the connection's named prepared statements (with
 * their result columns, so a repeated statement is one `Bind` / `Execute`),
 * and collects the names of reported settings (`ParameterStatus`) that the
 * server says changed: facts about session state that no statement text can
 * hide.
 *
 * The physical connection (socket, authentication, TLS, cancel requests)
 * comes from `@effect/sql-pg`; ./pgConnector.ts hands its session over as a
 * {@link DriverSession}. The names of its prepared statements are kept by
 * ./preparedStatements.ts.
 *
 * Why this module is over 300 lines: it is one connection's protocol
 * driver, a class over that connection's state (the cycles waiting and on
 * the wire, the statement being answered, the status and reports), which
 * writing cycles and reading every message the server sends both use. Split
 * across modules, that state would be passed around for every message of
 * every statement.
 *
 * @internal
 */
import * as PgProtocol from "@effect/sql-pg/PgProtocol"
import * as PgTypes from "@effect/sql-pg/PgTypes"
import * as Effect from "effect/Effect"
import * as Result from "effect/Result"
import { SqlError } from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import { Buffer } from "node:buffer"
import * as Parameters from "./parameters.ts"
import * as PreparedStatements from "./preparedStatements.ts"
import { connectionError, queryError, serverError } from "./sqlState.ts"

/** The transaction status the server reports with every `ReadyForQuery`. @internal */
export type Status = "I" | "T" | "E"

/** One statement of a cycle. @internal */
export interface Query {
  readonly sql: string
  readonly params: ReadonlyArray<unknown>
  /** Keep it as a named prepared statement on this connection. */
  readonly prepare: boolean
  /** Rows as objects keyed by column name, or as arrays of values. */
  readonly shape: "objects" | "values"
}

/** A column of a result. @internal */
export interface Field {
  readonly name: string
  readonly dataTypeId: number
}

/** What a statement returned: the driver's `Result`, so `sql.raw` looks the same. @internal */
export interface Answer {
  readonly command: string
  readonly rowCount: number
  readonly oid: number | null
  readonly rows: ReadonlyArray<any>
  readonly fields: ReadonlyArray<Field>
}

/** A cycle's outcome. @internal */
export interface Reply {
  /**
   * Per statement, in order: its answer, its error, or `undefined` when an
   * earlier statement of the cycle failed and the server skipped it.
   */
  readonly answers: ReadonlyArray<Answer | SqlError | undefined>
  /** The status before the cycle ran, and after. */
  readonly statusBefore: Status
  readonly status: Status
  /** A statement failed because this connection's prepared statement no longer matched the server's. */
  readonly stale: boolean
  /** A defect the connection raised instead of answering (the test kit's in-memory database, for a statement nobody scripted). */
  readonly defect?: unknown
}

/**
 * What the pool needs from the driver's connection: its socket, the message
 * parser it feeds, and its slot for whoever consumes the messages.
 *
 * @internal
 */
export interface DriverSession {
  readonly write: (bytes: Uint8Array) => void
  /** Where the parser reads `DataRow` fields with; set before the rows arrive. */
  readonly setFieldReader: (reader: PgProtocol.FieldReader<unknown> | undefined) => void
  /** Routes the server's messages to `consumer` (or, with `undefined`, treats any as unexpected). */
  readonly setConsumer: (consumer: Consumer | undefined) => void
  /** The error the connection died with, if it did. */
  readonly deadWith: () => SqlError | undefined
  /** Kills the connection with `error`. */
  readonly fatal: (error: SqlError) => void
  /** Calls `observe` with every message before the driver handles it. */
  readonly observe: (observe: (message: PgProtocol.BackendMessage<unknown>) => void) => void
  /** Streams a statement's rows through the driver; it takes the consumer slot meanwhile. */
  readonly stream: (sql: string, params: ReadonlyArray<unknown>) => Stream.Stream<any, SqlError>
  readonly registry: PgTypes.Registry | undefined
  readonly processId: number
}

/** The receiving side of a driver session. @internal */
export interface Consumer {
  readonly onMessage: (message: PgProtocol.BackendMessage<unknown>) => void
  readonly onBatchEnd?: (() => void) | undefined
  readonly onFatal: (error: SqlError) => void
}

/** The pool's session on one connection. @internal */
export interface Wire {
  readonly processId: number
  /**
   * Queues the queries as one cycle; `reply` is called once, with its reply.
   * Returns why the cycle could not be queued (a parameter that cannot be
   * encoded, a dead connection), in which case nothing was sent and `reply`
   * is never called.
   */
  readonly submit: (queries: ReadonlyArray<Query>, reply: (reply: Reply) => void) => SqlError | undefined
  /** Whether the connection is lost: nothing more can be sent on it, and what was in flight failed. */
  readonly dead: () => boolean
  /** The transaction status of the last cycle the server answered. */
  readonly status: () => Status
  /** Cycles sent (or waiting to be) and not answered yet. */
  readonly inFlight: () => number
  /** Resolves once no cycle is in flight. */
  readonly idle: Effect.Effect<void>
  /** Reported settings the server said changed since the last call (`ParameterStatus`), by name. */
  readonly takeReports: () => ReadonlyArray<string>
  /** Streams a statement's rows; nothing else goes on the wire meanwhile. */
  readonly stream: (sql: string, params: ReadonlyArray<unknown>) => Stream.Stream<any, SqlError>
  /** Forgets the named prepared statements: the server no longer holds them (after `DISCARD ALL`). */
  readonly forgetPrepared: () => void
}

/** @internal */
export interface Options {
  /** How many named statements the connection keeps prepared. */
  readonly preparedStatements: number
}

/** The columns of a result, and how to read and assemble its rows. */
interface Description {
  readonly fields: ReadonlyArray<Field>
  readonly readField: PgProtocol.FieldReader<unknown>
  readonly build: (values: ReadonlyArray<unknown>) => object
}

/** A statement that returns no rows (`NoData`). */
const noRows: Description = { fields: [], readField: () => null, build: () => ({}) }

/** One statement of a cycle on the wire. */
interface Step {
  readonly query: Query
  readonly prepared: PreparedStatements.Prepared<Description> | undefined
  /** Whether its frame carries a `Parse` of `prepared`. */
  readonly parses: boolean
  parseCompleted: boolean
  description: Description | undefined
  readonly rows: Array<unknown>
  outcome: Answer | SqlError | undefined
}

interface Cycle {
  readonly steps: ReadonlyArray<Step>
  readonly frame: Uint8Array
  /** `CloseComplete`s due before the first statement (evicted statements closed on the way). */
  closes: number
  /** The statement being answered. */
  at: number
  failed: boolean
  stale: boolean
  readonly reply: (reply: Reply) => void
}

/** Most cycles on the wire at once; more wait for answers. */
const maxInFlight = 256

const describeExecute = Buffer.concat([
  PgProtocol.encodeDescribe({ target: "portal", name: "" }),
  PgProtocol.encodeExecute({ portal: "", maxRows: 0 })
])
const execute = PgProtocol.encodeExecute({ portal: "", maxRows: 0 })
const sync = PgProtocol.encodeSync()

/** SQLSTATEs that say a named statement no longer matches the server's. */
const lostStatement = "26000"
const changedResult = "0A000"

/** Builds the row object for a result's columns. */
const rowBuilder = (names: ReadonlyArray<string>): (values: ReadonlyArray<unknown>) => object => {
  if (names.includes("__proto__")) {
    // Assignment would set the prototype instead of a column.
    return (values) => {
      const row: Record<string, unknown> = {}
      for (let i = 0; i < names.length; i++) {
        Object.defineProperty(row, names[i], { value: values[i], enumerable: true, configurable: true, writable: true })
      }
      return row
    }
  }
  return (values) => {
    const row: Record<string, unknown> = {}
    for (let i = 0; i < names.length; i++) row[names[i]] = values[i]
    return row
  }
}

/** A command tag (`SELECT 3`, `INSERT 0 1`, `CREATE TABLE`) as the driver reports it: the first word, the count. */
const parseTag = (tag: string): { command: string; rowCount: number; oid: number | null } => {
  const parts = tag.split(" ")
  const last = parts[parts.length - 1]
  return {
    command: parts[0],
    rowCount: parts.length > 1 && /^[0-9]+$/.test(last) ? Number(last) : 0,
    oid: parts[0] === "INSERT" && parts.length === 3 ? Number(parts[1]) : null
  }
}

/** Encodes a `Bind`, writing each parameter as the connection's types say. */
const bindEncoder = (registry: PgTypes.Registry | undefined) =>
  PgProtocol.makeBindEncoder(
    (sink: PgProtocol.ValueSink, parameter: PgTypes.Parameter) => PgTypes.writeParameter(sink, parameter, registry),
    PgTypes.isTextFormat
  )

/**
 * The pool's session on a driver connection.
 *
 * @internal
 */
export const make = (driver: DriverSession, options: Options): Wire => new Session(driver, options)

/**
 * One connection's protocol session: its state as fields, a method per job
 * (writing cycles, routing the server's answers to them, lending the
 * connection to a stream, the server's reports). It is also the driver's
 * consumer while a cycle of ours is on the wire, so every message reaches it
 * as a method call, with nothing allocated on the way.
 */
class Session implements Wire, Consumer {
  readonly processId: number
  readonly idle: Effect.Effect<void>
  private readonly driver: DriverSession
  private readonly bind: ReturnType<typeof bindEncoder>
  private readonly prepared: PreparedStatements.PreparedStatements<Description>
  private readonly prepares: boolean
  /** Cycles waiting to be written (oldest first). */
  private readonly pending: Array<Cycle> = []
  /** Cycles written and not yet answered (oldest first): the server answers them in order. */
  private readonly onWire: Array<Cycle> = []
  private flushScheduled = false
  /** The driver has the connection for a stream: nothing of ours goes on the wire. */
  private lent = false
  private lastStatus: Status = "I"
  private readonly reports = new Set<string>()
  private readonly idleWaiters = new Set<() => void>()
  /** `flush` as the microtask that writes a tick's cycles together. */
  private readonly flushTask = () => this.flush()
  /** Waits until nothing of ours is on the wire, then lets the driver have it. */
  private readonly lend: Effect.Effect<void>
  private readonly takeBack: Effect.Effect<void>

  constructor(driver: DriverSession, options: Options) {
    this.driver = driver
    this.processId = driver.processId
    this.bind = bindEncoder(driver.registry)
    this.prepared = PreparedStatements.make<Description>(options.preparedStatements)
    this.prepares = options.preparedStatements > 0
    this.idle = Effect.callback<void>((resume) => {
      if (this.onWire.length === 0 && this.pending.length === 0) return resume(Effect.void)
      const waiter = () => resume(Effect.void)
      this.idleWaiters.add(waiter)
      return Effect.sync(() => this.idleWaiters.delete(waiter))
    })
    this.lend = Effect.andThen(this.idle, Effect.sync(() => {
      this.lent = true
    }))
    this.takeBack = Effect.sync(() => {
      this.lent = false
      this.scheduleFlush()
    })
    driver.observe((message) => this.observe(message))
  }

  // The state, as the pool reads it.

  dead(): boolean {
    return this.driver.deadWith() !== undefined
  }

  status(): Status {
    return this.lastStatus
  }

  inFlight(): number {
    return this.onWire.length + this.pending.length
  }

  forgetPrepared(): void {
    PreparedStatements.forget(this.prepared)
  }

  // Writing cycles.

  submit(queries: ReadonlyArray<Query>, reply: (reply: Reply) => void): SqlError | undefined {
    const dead = this.driver.deadWith()
    if (dead !== undefined) return dead
    const parts: Array<Uint8Array> = []
    const steps: Array<Step> = []
    try {
      for (const query of queries) steps.push(this.encode(query, parts))
    } catch (cause) {
      for (const step of steps) if (step.parses && step.prepared !== undefined) step.prepared.parsing = false
      return queryError(cause, "PgConnection: Failed to encode query")
    }
    parts.push(sync)
    const closing = PreparedStatements.takeCloses(this.prepared)
    this.pending.push({
      steps,
      frame: Buffer.concat(closing.length === 0 ? parts : [...closing, ...parts]),
      closes: closing.length,
      at: 0,
      failed: false,
      stale: false,
      reply
    })
    this.scheduleFlush()
    return undefined
  }

  /** One statement's bytes; throws a `CodecError` for parameters that cannot be bound. */
  private encode(query: Query, parts: Array<Uint8Array>): Step {
    const registry = this.driver.registry
    const parameters = query.params.map((value) => Parameters.infer(value, registry))
    const types = parameters.map((parameter) => parameter.oid)
    // A statement whose `Parse` is on the wire already goes unnamed: naming it twice would collide.
    const entry = query.prepare && this.prepares ? PreparedStatements.named(this.prepared, query.sql, types) : undefined
    const usable = entry !== undefined && (entry.parsed || !entry.parsing) ? entry : undefined
    const parses = usable === undefined || !usable.parsed
    if (parses) {
      parts.push(Result.getOrThrow(PgProtocol.encodeParse({ name: usable?.name ?? "", query: query.sql, parameterTypes: types })))
      if (usable !== undefined) usable.parsing = true
    }
    parts.push(Result.getOrThrow(this.bind({ portal: "", statement: usable?.name ?? "", parameters })))
    const known = usable?.description
    parts.push(known === undefined ? describeExecute : execute)
    return { query, prepared: usable, parses, parseCompleted: false, description: known, rows: [], outcome: undefined }
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.lent) return
    this.flushScheduled = true
    // Cycles submitted in the same tick share a write.
    queueMicrotask(this.flushTask)
  }

  private flush(): void {
    this.flushScheduled = false
    if (this.lent || this.pending.length === 0) return
    const dead = this.driver.deadWith()
    if (dead !== undefined) return this.onFatal(dead)
    const room = Math.min(this.pending.length, maxInFlight - this.onWire.length)
    if (room <= 0) return
    const batch = this.pending.splice(0, room)
    if (this.onWire.length === 0) this.driver.setConsumer(this)
    this.onWire.push(...batch)
    this.driver.write(batch.length === 1 ? batch[0].frame : Buffer.concat(batch.map((cycle) => cycle.frame)))
  }

  // Routing the server's answers: the driver calls these while a cycle of ours is on the wire.

  onMessage(message: PgProtocol.BackendMessage<unknown>): void {
    const cycle = this.onWire[0]
    if (cycle === undefined) return this.desync(`Unexpected ${message._tag} with no statement on the wire`)
    if (message._tag === "ReadyForQuery") return this.finishCycle(cycle, message.status)
    if (cycle.failed) return this.desync(`Unexpected ${message._tag} after ErrorResponse`)
    if (message._tag === "CloseComplete") {
      if (cycle.closes === 0) return this.desync("Unexpected CloseComplete")
      cycle.closes--
      return
    }
    const step = cycle.steps[cycle.at]
    if (message._tag === "ErrorResponse") return this.failStep(cycle, step, message.fields)
    if (step === undefined) return this.desync(`Unexpected ${message._tag} after the last statement`)
    this.answerStep(cycle, step, message)
  }

  onBatchEnd(): void {
    // Cycles that waited for room on the wire go out as soon as answers make it.
    if (this.pending.length > 0 && !this.flushScheduled) this.flush()
  }

  /** The connection died: every cycle in flight or waiting fails with `error`. */
  onFatal(error: SqlError): void {
    const cycles = [...this.onWire, ...this.pending]
    this.onWire.length = 0
    this.pending.length = 0
    for (const cycle of cycles) {
      for (const step of cycle.steps) if (step.prepared !== undefined) step.prepared.parsing = false
      cycle.reply({ answers: cycle.steps.map(() => error), statusBefore: this.lastStatus, status: "E", stale: false })
    }
    this.notifyIdle()
  }

  /** A message about the statement being answered. */
  private answerStep(cycle: Cycle, step: Step, message: PgProtocol.BackendMessage<unknown>): void {
    switch (message._tag) {
      case "ParseComplete":
        step.parseCompleted = true
        return
      case "BindComplete":
        // A statement described before has no `RowDescription` coming: its reader goes in now.
        if (step.description !== undefined) this.driver.setFieldReader(step.description.readField)
        return
      case "RowDescription":
        return this.describeStep(step, message.fields)
      case "NoData":
        step.description = noRows
        if (step.prepared !== undefined) step.prepared.description = noRows
        return
      case "DataRow":
        if (step.description === undefined || step.description === noRows) return this.desync("DataRow without columns")
        step.rows.push(step.query.shape === "objects" ? step.description.build(message.values) : message.values)
        return
      case "CommandComplete":
        return this.finishStep(cycle, step, message.commandTag)
      case "EmptyQueryResponse":
        return this.finishStep(cycle, step, "")
      default:
        return this.desync(`Unexpected ${message._tag}${message._tag.startsWith("Copy") ? "; COPY is not supported" : ""}`)
    }
  }

  /** A statement's columns: how the parser reads its rows, kept with its prepared statement for next time. */
  private describeStep(step: Step, fields: ReadonlyArray<PgProtocol.FieldDescription>): void {
    let description: Description
    try {
      description = this.describe(fields)
    } catch (cause) {
      return this.driver.fatal(queryError(cause, "PgConnection: Failed to decode row"))
    }
    step.description = description
    if (step.prepared !== undefined) step.prepared.description = description
    this.driver.setFieldReader(description.readField)
  }

  /** Throws when a column's type has no reader. */
  private describe(fields: ReadonlyArray<PgProtocol.FieldDescription>): Description {
    const reader = PgTypes.makeFieldReader(fields, this.driver.registry)
    if (Result.isFailure(reader)) throw reader.failure
    return {
      fields: fields.map((field) => ({ name: field.name, dataTypeId: field.dataTypeOid })),
      readField: reader.success,
      build: rowBuilder(fields.map((field) => field.name))
    }
  }

  private finishStep(cycle: Cycle, step: Step, tag: string): void {
    const { command, rowCount, oid } = parseTag(tag)
    // The server dropped prepared statements: this connection's names may be among them.
    if (command === "DEALLOCATE" || tag === "DISCARD ALL") PreparedStatements.forget(this.prepared)
    step.outcome = { command, rowCount, oid, rows: step.rows, fields: step.description?.fields ?? [] }
    cycle.at++
  }

  private failStep(cycle: Cycle, step: Step | undefined, fields: PgProtocol.ErrorFields): void {
    cycle.failed = true
    const error = serverError(fields)
    if (step === undefined) return this.desync("ErrorResponse before any statement")
    step.outcome = error
    const entry = step.prepared
    if (entry !== undefined && !step.parses && fields.code === lostStatement) {
      // Someone dropped this connection's statements (DEALLOCATE ALL, DISCARD ALL): none of the names hold.
      cycle.stale = true
      PreparedStatements.forget(this.prepared)
    } else if (entry !== undefined && fields.code === changedResult) {
      cycle.stale = true
      PreparedStatements.evict(this.prepared, entry)
    }
  }

  /** The server is done with a cycle: every statement's outcome and the status after it. */
  private finishCycle(cycle: Cycle, after: Status): void {
    this.onWire.shift()
    for (const step of cycle.steps) {
      const entry = step.prepared
      if (entry === undefined) continue
      if (step.parses) {
        entry.parsing = false
        entry.parsed = step.parseCompleted
      }
    }
    const answers = cycle.steps.map((step) => step.outcome)
    const reply: Reply = { answers, statusBefore: this.lastStatus, status: after, stale: cycle.stale }
    this.lastStatus = after
    if (this.onWire.length === 0) {
      this.driver.setConsumer(undefined)
      this.driver.setFieldReader(undefined)
    }
    cycle.reply(reply)
    this.notifyIdle()
  }

  private notifyIdle(): void {
    if (this.onWire.length > 0 || this.pending.length > 0) return
    const waiters = Array.from(this.idleWaiters)
    this.idleWaiters.clear()
    for (const waiter of waiters) waiter()
  }

  private desync(what: string): void {
    this.driver.fatal(connectionError(new Error(what), `PgConnection: ${what}`))
  }

  // Lending the connection to a stream.

  stream(sql: string, params: ReadonlyArray<unknown>): Stream.Stream<any, SqlError> {
    return Stream.unwrap(Effect.as(Effect.acquireRelease(this.lend, () => this.takeBack), this.driver.stream(sql, params)))
  }

  // The server's reports.

  /** Every message the driver dispatches, ours or its own (streams), after the driver and the consumer saw it. */
  private observe(message: PgProtocol.BackendMessage<unknown>): void {
    if (message._tag === "ReadyForQuery") this.lastStatus = message.status
    else if (message._tag === "ParameterStatus") this.reports.add(message.name)
  }

  takeReports(): ReadonlyArray<string> {
    if (this.reports.size === 0) return []
    const names = Array.from(this.reports)
    this.reports.clear()
    return names
  }
}

/**
 * Sends the queries as one cycle and waits for its reply; a cycle that could
 * not be queued fails. Interrupting the wait leaves the cycle running.
 *
 * @internal
 */
export const run = (wire: Wire, queries: ReadonlyArray<Query>): Effect.Effect<Reply, SqlError> =>
  Effect.callback<Reply, SqlError>((resume) => {
    const refused = wire.submit(queries, (reply) => resume(Effect.succeed(reply)))
    if (refused !== undefined) resume(Effect.fail(refused))
  })

/**
 * The error for a statement its cycle's reply has no answer for (an earlier
 * one failed, and the server skipped it).
 *
 * @internal
 */
export const noAnswer = (): SqlError => queryError(new Error("no answer"), "PgConnection: The statement got no answer")

/**
 * One query alone, for the pool's own statements: its answer, or its error.
 *
 * @internal
 */
export const expect = (wire: Wire, query: Query): Effect.Effect<Answer, SqlError> =>
  Effect.flatMap(run(wire, [query]), (reply) => {
    const answer = reply.answers[0]
    return answer === undefined
      ? Effect.fail(noAnswer())
      : answer instanceof SqlError
      ? Effect.fail(answer)
      : Effect.succeed(answer)
  })
