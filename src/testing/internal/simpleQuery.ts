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

interface Pending {
  readonly resolve: (rows: Array<Row>) => void
  readonly reject: (error: Error) => void
}

/**
 * Connects and authenticates (SCRAM-SHA-256, MD5 or clear text). Fails with
 * the server's `ServerError` when it refuses the login.
 *
 * @internal
 */
export const connect = (target: Target, timeoutMillis = 5_000): Promise<Session> =>
  new Promise((resolveLogin, rejectLogin) => {
    const socket = Net.connect({ host: target.host, port: target.port })
    const parser = PgProtocol.makeParser()
    const decoder = new TextDecoder()
    let scram: PgAuth.ScramState | undefined
    let columns: Array<string> = []
    let rows: Array<Row> = []
    let error: ServerError | undefined
    let loggedIn = false
    let closed: Error | undefined
    let pending: Pending | undefined

    const fail = (cause: Error) => {
      closed ??= cause
      clearTimeout(loginTimer)
      socket.destroy()
      const waiting = pending
      pending = undefined
      if (!loggedIn) rejectLogin(cause)
      waiting?.reject(cause)
    }
    const loginTimer = setTimeout(() => fail(new Error(`No login within ${timeoutMillis} ms`)), timeoutMillis)

    const session: Session = {
      query: (command, queryTimeout = 5_000) =>
        new Promise((resolve, reject) => {
          if (closed !== undefined) return reject(closed)
          if (pending !== undefined) return reject(new Error("One command at a time"))
          const timer = setTimeout(() => fail(new Error(`No answer to ${JSON.stringify(command)} within ${queryTimeout} ms`)), queryTimeout)
          pending = {
            resolve: (value) => {
              clearTimeout(timer)
              resolve(value)
            },
            reject: (cause) => {
              clearTimeout(timer)
              reject(cause)
            }
          }
          columns = []
          rows = []
          error = undefined
          socket.write(encodeQuery(command))
        }),
      close: () => {
        if (closed !== undefined) return
        closed = new Error("The session is closed")
        if (socket.writable) socket.end(PgProtocol.encodeTerminate())
        else socket.destroy()
      }
    }

    const onMessage = (message: PgProtocol.BackendMessage) => {
      switch (message._tag) {
        case "AuthenticationCleartextPassword":
          socket.write(PgProtocol.encodePasswordMessage({ password: target.password }))
          return
        case "AuthenticationMD5Password":
          socket.write(PgProtocol.encodePasswordMessage({
            password: orThrow(PgAuth.md5Password({ user: target.user, password: target.password, salt: message.salt }))
          }))
          return
        case "AuthenticationSASL": {
          const init = orThrow(PgAuth.scramInit({ password: target.password, nonce: randomBytes(18).toString("base64") }))
          scram = init.state
          socket.write(PgProtocol.encodeSASLInitialResponse({ mechanism: PgAuth.SCRAM_SHA_256, initialResponse: init.response }))
          return
        }
        case "AuthenticationSASLContinue": {
          if (scram?._tag !== "ScramFirst") throw new Error("Unexpected SCRAM challenge")
          const next = orThrow(PgAuth.scramContinue(scram, message.data))
          scram = next.state
          socket.write(PgProtocol.encodeSASLResponse({ data: next.response }))
          return
        }
        case "AuthenticationSASLFinal":
          if (scram?._tag !== "ScramFinal") throw new Error("Unexpected SCRAM final message")
          orThrow(PgAuth.scramFinish(scram, message.data))
          return
        case "RowDescription":
          columns = message.fields.map((field) => field.name)
          rows = []
          return
        case "DataRow":
          rows.push(Object.fromEntries(
            message.values.map((value, i) => [columns[i], value === null ? null : decoder.decode(value)])
          ))
          return
        case "ErrorResponse":
          error = serverError(message.fields)
          // A FATAL error, or any error before the login completed, ends the connection.
          if (!loggedIn || error.severity === "FATAL") fail(error)
          return
        case "ReadyForQuery": {
          if (!loggedIn) {
            loggedIn = true
            clearTimeout(loginTimer)
            resolveLogin(session)
            return
          }
          const waiting = pending
          pending = undefined
          if (error !== undefined) waiting?.reject(error)
          else waiting?.resolve(rows)
          return
        }
        default:
          return
      }
    }
    socket.once("connect", () => socket.write(PgProtocol.encodeStartupMessage({ user: target.user, database: target.database })))
    socket.on("data", (chunk) => {
      try {
        parser.pushEach(chunk, onMessage)
      } catch (cause) {
        fail(cause instanceof Error ? cause : new Error(String(cause)))
      }
    })
    socket.once("error", (cause) => fail(cause))
    socket.once("close", () => fail(new Error("The connection closed")))
  })

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
