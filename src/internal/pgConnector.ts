/**
 * Physical connections from `@effect/sql-pg`'s native driver.
 *
 * Connections are opened in the driver's multiplex mode, so that statements
 * submitted together travel in one write (pipelining); the pool decides who
 * may submit to a connection, so sharing never crosses a transaction.
 *
 * Two things the pool needs are internal to the driver, and this module is the
 * one place that reaches them; the pinned driver version is tested for both
 * (test/pgConnector.test.ts):
 * - the hooks by which a connection says it must not be reused: its socket
 *   closed, or a cancel it sent was not confirmed, so a late cancel could hit
 *   the next statement;
 * - `cancel`, which sends a `CancelRequest` for whatever the backend runs.
 *   The driver only cancels on interruption for pinned connections; a
 *   connection the pool lends to one caller alone is safe to cancel too.
 *
 * @internal
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Effect from "effect/Effect"
import type { Connector } from "./engine.ts"

/** The property under which the driver keeps a connection's internals (`src/internal/connection.ts`). */
const internalsKey = "~@effect/sql-pg/PgConnection/internals"

interface DriverInternals {
  readonly retireHooks: Set<() => void>
}

const missing = (what: string): Error =>
  new Error(`@meshhook/pool: this @effect/sql-pg has no ${what}; use the version this package was built for`)

const driverInternals = (connection: PgConnection.PgConnection): DriverInternals => {
  const internals = (connection as unknown as Record<string, DriverInternals | undefined>)[internalsKey]
  if (internals === undefined || !(internals.retireHooks instanceof Set)) throw missing("connection retire hooks")
  return internals
}

/**
 * Cancels whatever the connection's backend is running. Only for a connection
 * lent to one caller alone: on a shared one it could hit another's statement.
 *
 * @internal
 */
export const cancel = (connection: PgConnection.PgConnection): Effect.Effect<void> => {
  const effect = (connection as unknown as { readonly cancel?: Effect.Effect<void> }).cancel
  if (effect === undefined) throw missing("connection cancel")
  return effect
}

/** @internal */
export const make = (config: PgConnection.Config): Connector<PgConnection.PgConnection> => ({
  connect: PgConnection.make({ ...config, multiplex: true }),
  onRetire: (connection, retire) => {
    driverInternals(connection).retireHooks.add(retire)
  },
  cancel,
  validate: (connection) => Effect.asVoid(connection.query("SELECT 1"))
})
