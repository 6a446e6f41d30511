/**
 * What serving a caller's statements needs from the pool, gathered once per
 * pool for every path a statement may take (./routing.ts): the engine and
 * how to take a connection in the caller's turn, the values every
 * transaction pins, the options that shape a statement's path, and what the
 * pool tells about it (./observation.ts).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type { SqlError } from "effect/sql/SqlError"
import type * as PoolConfig from "../../PoolConfig.ts"
import * as PoolError from "../../PoolError.ts"
import * as Priority from "../../Priority.ts"
import type * as Tenant from "../../Tenant.ts"
import type { Engine } from "../engine/engine.ts"
import type { Entry } from "../engine/entry.ts"
import * as Observation from "./observation.ts"
import type * as Prologue from "../postgres/prologue.ts"
import type * as SqlText from "../postgres/sqlText.ts"
import type { Recorder } from "../telemetry.ts"
import type * as Wire from "../postgres/wire.ts"

/** What every path of a statement uses of the pool. @internal */
export interface Serving extends Observation.Observation {
  readonly engine: Engine<Wire.Wire>
  /** What every transaction pins. */
  readonly pins: () => Prologue.Pins
  /** Whether the pool talks to PostgreSQL itself (not through a transaction-mode pooler). */
  readonly direct: boolean
  readonly sessionCheck: "suspect" | "always"
  readonly queryTimeout: number
  /** Whether lone statements may share connections at all: `pipelineDepth` above 1, and sessions not checked after each. */
  readonly sharing: boolean
  /** Cancels what runs on a connection, on the server. */
  readonly cancel: (wire: Wire.Wire) => Effect.Effect<void>
  /** Why a statement must not be sent at all (behind a pooler, session state), if it must not. */
  readonly refuse: (reading: SqlText.Reading) => SqlError | undefined
  /** Takes a connection for the caller, alone or a share of one, in its tenant's turn and its fiber's priority. */
  readonly acquire: (scope: Tenant.Scope, shared: boolean) => Effect.Effect<Entry<Wire.Wire>, SqlError>
}

/** What a pool's statements are served with, made once per pool. @internal */
export const make = ({ cancel, engine, options, pins, recorder }: {
  readonly engine: Engine<Wire.Wire>
  readonly options: PoolConfig.Resolved
  readonly recorder: Recorder
  readonly cancel: (wire: Wire.Wire) => Effect.Effect<void>
  readonly pins: () => Prologue.Pins
}): Serving => {
  const observation = Observation.make(options, recorder)
  return {
    ...observation,
    engine,
    pins,
    direct: options.behindPooler === "none",
    sessionCheck: options.sessionCheck,
    queryTimeout: options.queryTimeout,
    sharing: options.pipelineDepth > 1 && options.sessionCheck !== "always",
    cancel,
    refuse: options.behindPooler === "transaction" ? refuseSessionState : () => undefined,
    acquire: acquirer(engine, observation.origin)
  }
}

/** A pool error as `SqlClient`'s callers get it. @internal */
export const fail = (error: PoolError.PoolError): Effect.Effect<never, SqlError> =>
  Effect.fail(PoolError.toSqlError(error))

/** The tenant setting's value for a scope: its tenant's id, `""` for none. @internal */
export const tenantOf = (scope: Tenant.Scope): string => scope._tag === "Tenant" ? scope.id : ""

/** Behind a transaction-mode pooler, session state would reach the pooler's next client: refused. */
const refuseSessionState = (reading: SqlText.Reading): SqlError | undefined =>
  reading.sessionState === undefined ? undefined : PoolError.toSqlError(
    // The command, not the text: a SET carries its value in the text, and errors reach logs and spans.
    new PoolError.SessionStateNotAllowedError({ statement: reading.operation, reason: reading.sessionState })
  )

const acquirer = (engine: Engine<Wire.Wire>, origin: Observation.Observation["origin"]) =>
(scope: Tenant.Scope, shared: boolean): Effect.Effect<Entry<Wire.Wire>, SqlError> =>
  Effect.withFiber((fiber) =>
    Effect.mapError(
      engine.acquire({
        tenant: tenantOf(scope),
        priority: fiber.getRef(Priority.CurrentPriority),
        shared,
        origin: origin !== undefined && !shared ? origin(fiber) : undefined
      }),
      PoolError.toSqlError
    )
  )
