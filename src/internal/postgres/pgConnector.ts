/**
 * Physical connections from `@effect/sql-pg`'s native driver, each carrying
 * the pool's own protocol session (./wire.ts).
 *
 * The driver connects, authenticates, negotiates TLS, parses the server's
 * messages and sends cancel requests; the pool writes its own statement
 * cycles and consumes the answers. What that needs is internal to the
 * driver, and this module is the one place that reaches it; the pinned
 * driver version is tested for all of it (test/pgConnector.test.ts):
 * - the connection's socket, message parser, consumer slot and fatal path;
 * - its message dispatch, which the pool observes for every
 *   `ReadyForQuery` (transaction status) and `ParameterStatus` (reported
 *   setting changes), both of which the driver drops;
 * - the hooks by which a connection says it must not be reused (its socket
 *   closed, or a cancel it sent was not confirmed);
 * - `cancel`, which sends a `CancelRequest` for whatever the backend runs.
 *
 * @internal
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import type * as PgProtocol from "@effect/sql-pg/PgProtocol"
import type * as PgTypes from "@effect/sql-pg/PgTypes"
import * as Effect from "effect/Effect"
import type { SqlError } from "effect/sql/SqlError"
import type { Connector } from "../engine/connector.ts"
import { connectFailure } from "./sqlState.ts"
import * as Wire from "./wire.ts"

/** The property under which the driver keeps a connection's internals (`src/internal/connection.ts`). */
const internalsKey = "~@effect/sql-pg/PgConnection/internals"

/** What the pool uses of the driver's connection object (`PgConnectionImpl`). */
interface DriverConnection {
  readonly session: {
    readonly socket: { readonly write: (bytes: Uint8Array) => unknown }
    readonly parser: { readField: PgProtocol.FieldReader<unknown> | undefined }
  }
  consumer: Wire.Consumer | undefined
  readonly deadWith: SqlError | undefined
  readonly fatal: (error: SqlError) => void
  dispatch: (message: PgProtocol.BackendMessage<unknown>) => void
  readonly registry: PgTypes.Registry | undefined
  readonly cancel: Effect.Effect<void>
}

interface DriverInternals {
  readonly base: DriverConnection
  readonly retireHooks: Set<() => void>
}

const missing = (what: string): Error =>
  new Error(`@meshhook/pool: this @effect/sql-pg has no ${what}; use the version this package was built for`)

const driverInternals = (connection: PgConnection.PgConnection): DriverInternals => {
  const internals = (connection as unknown as Record<string, DriverInternals | undefined>)[internalsKey]
  if (internals === undefined || !(internals.retireHooks instanceof Set)) throw missing("connection retire hooks")
  const base = internals.base
  if (typeof base?.dispatch !== "function" || typeof base.fatal !== "function") throw missing("message dispatch")
  if (typeof base.session?.socket?.write !== "function" || base.session.parser === undefined) throw missing("session")
  if (!Effect.isEffect(base.cancel)) throw missing("connection cancel")
  return internals
}

/** The driver connection behind each wire, for its hooks and cancel requests. */
const drivers = new WeakMap<Wire.Wire, DriverInternals>()

/** The driver's connection as a session the pool's wire can run on. */
const sessionOf = (connection: PgConnection.PgConnection, internals: DriverInternals): Wire.DriverSession => {
  const base = internals.base
  return {
    write: (bytes) => void base.session.socket.write(bytes),
    setFieldReader: (reader) => {
      base.session.parser.readField = reader
    },
    setConsumer: (consumer) => {
      base.consumer = consumer
    },
    deadWith: () => base.deadWith,
    fatal: (error) => base.fatal(error),
    observe: (observe) => {
      // The driver reads `dispatch` from the connection for every chunk it parses.
      const dispatch = base.dispatch
      base.dispatch = (message) => {
        dispatch(message)
        observe(message)
      }
    },
    stream: (sql, params) => connection.stream(sql, params),
    registry: base.registry,
    processId: connection.processId
  }
}

/**
 * Cancels whatever the connection's backend is running. Only for a
 * connection lent to one caller alone: on a shared one it could hit
 * another's statement.
 *
 * @internal
 */
export const cancel = (wire: Wire.Wire): Effect.Effect<void> => drivers.get(wire)?.base.cancel ?? Effect.void

/** @internal */
export interface Options {
  /** How many named statements each connection keeps prepared. */
  readonly preparedStatements: number
  /** Prepares a new connection's session before anyone uses it. */
  readonly init: (wire: Wire.Wire) => Effect.Effect<void, SqlError>
}

/** @internal */
export const make = (config: PgConnection.Config, options: Options): Connector<Wire.Wire> => ({
  connect: Effect.gen(function*() {
    const connection = yield* PgConnection.make({ ...config, multiplex: false })
    const internals = driverInternals(connection)
    const wire = Wire.make(sessionOf(connection, internals), { preparedStatements: options.preparedStatements })
    drivers.set(wire, internals)
    yield* options.init(wire)
    return wire
  }),
  classify: connectFailure,
  onRetire: (wire, retire) => {
    drivers.get(wire)?.retireHooks.add(retire)
  },
  cancel,
  settled: (wire) => wire.idle,
  validate: (wire) => Effect.asVoid(Wire.expect(wire, { sql: "SELECT 1", params: [], prepare: false, shape: "values" }))
})
