/**
 * Physical connections from `@effect/sql-pg`'s native driver.
 *
 * The driver tells its own pool, through hooks it keeps on each connection,
 * when a connection must not be reused: its socket closed, or a cancel it sent
 * after an interrupted query was not confirmed, so a late cancel could still
 * hit the next statement. Those hooks are internal to the driver; this module
 * is the one place that reaches them, and the pinned driver version is tested
 * for them (test/pgConnector.test.ts).
 *
 * @internal
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import type { Connector } from "./engine.ts"

/** The property under which the driver keeps a connection's internals (`src/internal/connection.ts`). */
const internalsKey = "~@effect/sql-pg/PgConnection/internals"

interface DriverInternals {
  readonly retireHooks: Set<() => void>
}

const driverInternals = (connection: PgConnection.PgConnection): DriverInternals => {
  const internals = (connection as unknown as Record<string, DriverInternals | undefined>)[internalsKey]
  if (internals === undefined || !(internals.retireHooks instanceof Set)) {
    throw new Error(
      "@meshhook/pool: this @effect/sql-pg has no connection retire hooks; use the version this package was built for"
    )
  }
  return internals
}

/** @internal */
export const make = (config: PgConnection.Config): Connector<PgConnection.PgConnection> => ({
  connect: PgConnection.make(config),
  onRetire: (connection, retire) => {
    driverInternals(connection).retireHooks.add(retire)
  }
})
