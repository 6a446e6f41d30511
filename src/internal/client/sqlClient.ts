/**
 * The pool as `effect/sql`'s `SqlClient`: statements reach the pool's
 * connections through ./routing.ts (a share of a connection, or one alone),
 * compiled as `@effect/sql-pg` compiles them, in spans with the database's
 * attributes.
 *
 * @internal
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import type * as Effect from "effect/Effect"
import type { Reactivity } from "effect/reactivity/Reactivity"
import * as SqlClient from "effect/sql/SqlClient"
import * as Statement from "effect/sql/Statement"
import type * as PoolConfig from "../../PoolConfig.ts"
import * as CallerScope from "./callerScope.ts"
import type { Engine } from "../engine/engine.ts"
import type * as Lease from "./lease.ts"
import type * as Prologue from "../postgres/prologue.ts"
import * as Routing from "./routing.ts"
import * as Serving from "./serving.ts"
import type { Recorder } from "../telemetry.ts"
import type * as Wire from "../postgres/wire.ts"

/** The pool's `SqlClient`, over its engine. @internal */
export const make = (
  engine: Engine<Wire.Wire>,
  options: PoolConfig.Resolved,
  recorder: Recorder,
  cancel: (wire: Wire.Wire) => Effect.Effect<void>,
  pins: () => Prologue.Pins
): Effect.Effect<SqlClient.SqlClient, never, Reactivity> => {
  const serving = Serving.make({ engine, options, recorder, cancel, pins })
  const routing = Routing.make(serving, CallerScope.make(options, recorder))
  return SqlClient.make({
    acquirer: routing.lease,
    borrower: routing.borrow,
    transactionAcquirer: routing.lease,
    compiler: PgClient.makeCompiler(options.transformQueryNames, options.transformJson),
    driver: "pg",
    // Unnamed, as the pool's own: a stale name must never keep a transaction from ending.
    prepareTransactionControls: false,
    commit: (connection) => (connection as Lease.Lease).commit(),
    releaseSavepoint: (name) => `RELEASE SAVEPOINT ${name}`,
    spanAttributes: [
      ...Object.entries(options.spanAttributes),
      ["db.system.name", "postgresql"],
      ["db.namespace", options.database],
      ["server.address", options.host],
      ["server.port", options.port],
      ["db.client.connection.pool.name", options.name]
    ],
    transformRows: options.transformResultNames
      ? Statement.defaultTransforms(options.transformResultNames, options.transformJson).array
      : undefined
  })
}
