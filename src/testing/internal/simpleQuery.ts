/**
 * A minimal client for PostgreSQL's simple query protocol. PgBouncer's admin
 * console speaks nothing else, while `PgConnection` speaks only the extended
 * protocol; tests also use it to see exactly what a server (or PgBouncer)
 * sends before it closes a connection. The message codec and the SCRAM client
 * are the driver's.
 *
 * @internal
 */
import * as PgAuth from "@effect/sql-pg/PgAuth"
import * as PgProtocol from "@effect/sql-pg/PgProtocol"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import { randomBytes } from "node:crypto"
import * as Net from "node:net"

/** @internal */
export interface Target {
  readonly host: string
  readonly port: number
  readonly user: string
  readonly password: string
  readonly database: string
}

/** @internal */
export type Row = Readonly<Record<string, string | null>>

/**
 * An `ErrorResponse` from the server: its SQLSTATE in `code`, its severity
 * (`ERROR`, `FATAL`) in `severity`.
 *
 * @internal
 */
export class ServerError extends Schema.TaggedError<ServerError>()("ServerError", {
  message: Schema.String,
  code: Schema.optional(Schema.String),
  severity: Schema.optional(Schema.String)
}) {}

/** The {@link ServerError} an `ErrorResponse`'s fields describe. */
const serverError = (fields: PgProtocol.ErrorFields): ServerError =>
  new ServerError({
    message: fields.message ?? "unknown server error",
    ...(fields.code === undefined ? {} : { code: fields.code }),
    ...((fields.severityUnlocalized ?? fields.severity) === undefined ? {} : { severity: fields.severityUnlocalized ?? fields.severity })
  })

/**
 * A logged-in session; one command at a time.
 *
 * @internal
 */
export interface Session {
  /** Runs a command and returns the rows of its last result, as text. */
  readonly query: (command: string, timeoutMillis?: number) => Promise<Array<Row>>
  readonly close: () => void
}

const encodeQuery = (command: string): Uint8Array => {
  const text = Buffer.from(`${command}\0`, "utf8")
  const message = Buffer.alloc(5 + text.length)
  message[0] = 0x51 // Q
  message.writeInt32BE(4 + text.length, 1)
  text.copy(message, 5)
  return message
}

const orThrow = <A>(result: Result.Result<A, { readonly message: string }>): A => {
  if (Result.isFailure(result)) throw new Error(result.failure.message)
  return result.success
}

/** Who waits for the server: the caller of `connect` until the login completes, then of each `query`. */
interface Waiting<A> {
  readonly resolve: (value: A) => void
  readonly reject: (error: Error) => void
}

/**
 * Connects and authenticates (SCRAM-SHA-256, MD5 or clear text). Fails with
 * the server's `ServerError` when it refuses the login.
 *
 * @internal
 */
export const connect = (target: Target, timeoutMillis = 5_000): Promise<Session> =>
  new Promise((resolve, reject) => void new Connection(target, timeoutMillis, { resolve, reject }))

/** One connection: the login, then one command at a time, and the messages that answer them. */
class Connection implements Session {
  private readonly socket: Net.Socket
  private readonly parser = PgProtocol.makeParser()
  private readonly decoder = new TextDecoder()
  private readonly target: Target
  private readonly login: Waiting<Session>
  private readonly loginTimer: ReturnType<typeof setTimeout>
  private loggedIn = false
  private scram: PgAuth.ScramState | undefined
  /** The command running, and what its answer has brought so far. */
  private pending: Waiting<Array<Row>> | undefined
  private columns: Array<string> = []
  private rows: Array<Row> = []
  private error: ServerError | undefined
  /** Why nothing more can be sent, once the connection failed or was closed. */
  private closed: Error | undefined

  constructor(target: Target, timeoutMillis: number, login: Waiting<Session>) {
    this.target = target
    this.login = login
    const socket = this.socket = Net.connect({ host: target.host, port: target.port })
    this.loginTimer = setTimeout(() => this.fail(new Error(`No login within ${timeoutMillis} ms`)), timeoutMillis)
    socket.once("connect", () => socket.write(PgProtocol.encodeStartupMessage({ user: target.user, database: target.database })))
    socket.on("data", (chunk) => {
      try {
        this.parser.pushEach(chunk, (message) => this.onMessage(message))
      } catch (cause) {
        this.fail(cause instanceof Error ? cause : new Error(String(cause)))
      }
    })
    socket.once("error", (cause) => this.fail(cause))
    socket.once("close", () => this.fail(new Error("The connection closed")))
  }

  query(command: string, timeoutMillis = 5_000): Promise<Array<Row>> {
    return new Promise((resolve, reject) => {
      if (this.closed !== undefined) return reject(this.closed)
      if (this.pending !== undefined) return reject(new Error("One command at a time"))
      const timer = setTimeout(
        () => this.fail(new Error(`No answer to ${JSON.stringify(command)} within ${timeoutMillis} ms`)),
        timeoutMillis
      )
      this.pending = {
        resolve: (value) => {
          clearTimeout(timer)
          resolve(value)
        },
        reject: (cause) => {
          clearTimeout(timer)
          reject(cause)
        }
      }
      this.columns = []
      this.rows = []
      this.error = undefined
      this.socket.write(encodeQuery(command))
    })
  }

  close(): void {
    if (this.closed !== undefined) return
    this.closed = new Error("The session is closed")
    if (this.socket.writable) this.socket.end(PgProtocol.encodeTerminate())
    else this.socket.destroy()
  }

  /** Ends the connection: the login, or the command waiting, fails with `cause`. */
  private fail(cause: Error): void {
    this.closed ??= cause
    clearTimeout(this.loginTimer)
    this.socket.destroy()
    const waiting = this.pending
    this.pending = undefined
    if (!this.loggedIn) this.login.reject(cause)
    waiting?.reject(cause)
  }

  private onMessage(message: PgProtocol.BackendMessage): void {
    switch (message._tag) {
      case "RowDescription":
        this.columns = message.fields.map((field) => field.name)
        this.rows = []
        return
      case "DataRow":
        this.rows.push(Object.fromEntries(
          message.values.map((value, i) => [this.columns[i], value === null ? null : this.decoder.decode(value)])
        ))
        return
      case "ErrorResponse":
        this.error = serverError(message.fields)
        // A FATAL error, or any error before the login completed, ends the connection.
        if (!this.loggedIn || this.error.severity === "FATAL") this.fail(this.error)
        return
      case "ReadyForQuery":
        return this.ready()
      default:
        return this.authenticate(message)
    }
  }

  /** The server is ready: the login is done, or the command is answered. */
  private ready(): void {
    if (!this.loggedIn) {
      this.loggedIn = true
      clearTimeout(this.loginTimer)
      return this.login.resolve(this)
    }
    const waiting = this.pending
    this.pending = undefined
    if (this.error !== undefined) waiting?.reject(this.error)
    else waiting?.resolve(this.rows)
  }

  /** Answers the server's authentication requests; other messages are of no interest here. */
  private authenticate(message: PgProtocol.BackendMessage): void {
    const { password, user } = this.target
    switch (message._tag) {
      case "AuthenticationCleartextPassword":
        return this.send(PgProtocol.encodePasswordMessage({ password }))
      case "AuthenticationMD5Password":
        return this.send(PgProtocol.encodePasswordMessage({
          password: orThrow(PgAuth.md5Password({ user, password, salt: message.salt }))
        }))
      case "AuthenticationSASL": {
        const init = orThrow(PgAuth.scramInit({ password, nonce: randomBytes(18).toString("base64") }))
        this.scram = init.state
        return this.send(PgProtocol.encodeSASLInitialResponse({ mechanism: PgAuth.SCRAM_SHA_256, initialResponse: init.response }))
      }
      case "AuthenticationSASLContinue": {
        if (this.scram?._tag !== "ScramFirst") throw new Error("Unexpected SCRAM challenge")
        const next = orThrow(PgAuth.scramContinue(this.scram, message.data))
        this.scram = next.state
        return this.send(PgProtocol.encodeSASLResponse({ data: next.response }))
      }
      case "AuthenticationSASLFinal":
        if (this.scram?._tag !== "ScramFinal") throw new Error("Unexpected SCRAM final message")
        orThrow(PgAuth.scramFinish(this.scram, message.data))
        return
    }
  }

  private send(bytes: Uint8Array): void {
    this.socket.write(bytes)
  }
}

/**
 * Connects, runs one command, and disconnects.
 *
 * @internal
 */
export const simpleQuery = async (target: Target, command: string, timeoutMillis = 5_000): Promise<Array<Row>> => {
  const session = await connect(target, timeoutMillis)
  try {
    return await session.query(command, timeoutMillis)
  } finally {
    session.close()
  }
}
