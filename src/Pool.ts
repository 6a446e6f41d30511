/**
 * The pool as an Effect service and a scoped Layer.
 *
 * `Pool.layer(options)` provides {@link Pool}, `SqlClient` from
 * `effect/sql` and `@effect/sql-pg`'s `PgClient` (`json`, `listen`,
 * `notify`, `config`), so code written against either runs on it unchanged.
 * Closing the layer's scope drains the pool: no new acquisitions, lent
 * connections come back or are closed after `shutdownTimeout`, and no socket
 * is left open.
 *
 * ```ts
 * import { Effect } from "effect"
 * import { SqlClient } from "effect/sql"
 * import { Pool } from "@meshhook/pool"
 *
 * const program = Effect.gen(function*() {
 *   const sql = yield* SqlClient.SqlClient
 *   return yield* sql`SELECT 1 AS one`
 * })
 *
 * program.pipe(Effect.provide(Pool.layer({ url: process.env.DATABASE_URL, max: 8 })))
 * ```
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Reactivity from "effect/reactivity/Reactivity"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Config from "effect/Config"
import * as SqlClient from "effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Statement from "effect/sql/Statement"
import type { SqlError } from "effect/sql/SqlError"
import * as Engine from "./internal/engine/engine.ts"
import * as Listener from "./internal/client/listener.ts"
import * as PgClientService from "./internal/client/pgClient.ts"
import type { Connector } from "./internal/engine/connector.ts"
import * as Prologue from "./internal/postgres/prologue.ts"
import * as Wire from "./internal/postgres/wire.ts"
import * as Sizing from "./internal/engine/sizing.ts"
import * as Telemetry from "./internal/telemetry.ts"
import * as PgConnector from "./internal/postgres/pgConnector.ts"
import * as SqlClientImpl from "./internal/client/sqlClient.ts"
import * as PoolConfig from "./PoolConfig.ts"
import * as Retry from "./Retry.ts"
import type { DatabaseUnavailableError, PoolConfigError } from "./PoolError.ts"
import * as Metrics from "./Metrics.ts"

/**
 * A snapshot of the pool's counts: connections by state, callers waiting
 * (and the tenants most backed up), the limit, the circuit, and checkouts
 * since the start; each field says what it counts.
 *
 * @since 0.1.0
 * @category models
 */
export type Stats = Engine.Stats

/**
 * The pool itself, beside the `SqlClient` it serves.
 *
 * @since 0.1.0
 * @category services
 */
export class Pool extends Context.Service<Pool, {
  /** The validated options, without the credentials. */
  readonly options: Omit<PoolConfig.Resolved, "connection">
  /** The counts right now. */
  readonly stats: Effect.Effect<Stats>
}>()("@meshhook/pool/Pool") {}

/**
 * Exponential backoff with jitter: `base`, doubling, at most `max` apart.
 *
 * @since 0.1.0
 * @category schedules
 */
export const backoff = (base: number, max: number): Schedule.Schedule<Duration.Duration> =>
  Schedule.exponential(Duration.millis(base)).pipe(
    Schedule.jittered,
    Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.millis(max))))
  )

/**
 * Builds the pool and its `SqlClient` for the life of the scope: validates
 * the options, proves the database is reachable, then keeps `min`
 * connections open.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: PoolConfig.Options) =>
  makeWithConnector(options, (resolved, init) =>
    PgConnector.make(resolved.connection, {
      preparedStatements: resolved.prepare ? resolved.connection.preparedStatementCacheSize ?? 0 : 0,
      init
    }))

/**
 * {@link make} on connections from `connectorFor` instead of the driver: the
 * test kit's in-memory database plugs in here.
 *
 * @internal
 */
export const makeWithConnector = Effect.fnUntraced(function*(
  options: PoolConfig.Options,
  connectorFor: (
    resolved: PoolConfig.Resolved,
    init: (wire: Wire.Wire) => Effect.Effect<void, SqlError>
  ) => Connector<Wire.Wire>
): Effect.fn.Return<
  { readonly pool: Pool["Service"]; readonly sql: PgClient.PgClient },
  PoolConfigError | DatabaseUnavailableError,
  Scope.Scope | Reactivity.Reactivity
> {
  const resolved = yield* PoolConfig.resolve(options)
  const context = yield* Effect.context<never>()
  const recorder = recorderFor(resolved, context)
  const session = sessionPins(resolved)
  const connector = connectorFor(resolved, session.init)
  const engine = yield* Engine.make(connector, {
    ...resolved,
    tenantName: recorder.tenantName,
    connectRetry: backoff(resolved.connectRetryBase, resolved.connectRetryMax),
    probeRetry: Schedule.spaced(Duration.millis(resolved.circuitProbeInterval)).pipe(Schedule.jittered),
    events: engineEvents(recorder, resolved.name, context)
  })
  yield* connectionLimit(resolved, engine, recorder)
  yield* followCounts(engine, recorder)
  const sql = yield* SqlClientImpl.make(engine, resolved, recorder, connector.cancel, session.pins)
  const listener = yield* Listener.make(resolved.connection)
  const { connection: _, ...visible } = resolved
  const pool = Pool.of({ options: visible, stats: Effect.sync(engine.stats) })
  return { pool, sql: PgClientService.make(sql, resolved, listener) }
})

/** The pool's metrics recorder; operations carry the attributes that say which database they ran on. */
const recorderFor = (resolved: PoolConfig.Resolved, context: Context.Context<never>): Telemetry.Recorder =>
  Telemetry.make({
    poolName: resolved.name,
    tenantTelemetry: resolved.tenantTelemetry,
    tenantMetricsLimit: resolved.tenantMetricsLimit,
    context,
    operationAttributes: {
      "db.system.name": "postgresql",
      "db.namespace": resolved.database,
      "server.address": resolved.host,
      "server.port": String(resolved.port)
    }
  })

/** What the engine reports: every event as metrics, and those an operator must hear of as log lines too. */
const engineEvents = (
  recorder: Telemetry.Recorder,
  poolName: string,
  context: Context.Context<never>
): Engine.EngineEvents => {
  // The engine reports from plain callbacks, not from a fiber: each log line runs in a fiber of its own.
  const runFork = Effect.runForkWith(context)
  const log = (effect: Effect.Effect<void>) => void runFork(Effect.annotateLogs(effect, { pool: poolName }))
  return {
    acquired: recorder.acquired,
    released: recorder.released,
    created: recorder.created,
    rejected: recorder.rejected,
    leaked: (heldMillis, origin) => {
      recorder.leaked()
      log(Effect.logWarning(`A connection has been held for ${heldMillis} ms (leakDetectionThreshold); taken at: ${origin ?? "unknown"}`))
    },
    circuitOpened: (reason) => {
      recorder.circuit(true)
      log(Effect.logWarning(`Circuit opened: ${reason}; callers now fail fast`))
    },
    circuitClosed: (downMillis) => {
      recorder.circuit(false)
      log(Effect.logInfo(`Circuit closed: the database answers again after ${downMillis} ms`))
    }
  }
}

/**
 * The connection limit: `max`, or with adaptive sizing whatever the
 * controller sets every `sizingInterval` from the engine's sample (each
 * change recorded and logged).
 */
const connectionLimit = (
  resolved: PoolConfig.Resolved,
  engine: Engine.Engine<Wire.Wire>,
  recorder: Telemetry.Recorder
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.suspend(() => {
    recorder.limit(resolved.max, undefined)
    if (resolved.sizing !== "adaptive") return Effect.void
    const controller = Sizing.make({ min: resolved.min, max: resolved.max })
    const adjust = Effect.suspend(() => {
      const change = controller.next(engine.sample())
      if (change === undefined) return Effect.void
      engine.setLimit(change.to)
      recorder.limit(change.to, change.kind)
      return Effect.logInfo(`Connection limit ${change.from} → ${change.to}: ${change.reason}`).pipe(
        Effect.annotateLogs({ pool: resolved.name })
      )
    })
    return Effect.asVoid(Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(resolved.sizingInterval), adjust))))
  })

/** The count series follow the pool's counts once a second, and drop to zero when it closes. */
const followCounts = (engine: Engine.Engine<Wire.Wire>, recorder: Telemetry.Recorder): Effect.Effect<void, never, Scope.Scope> =>
  Effect.andThen(
    Effect.addFinalizer(() => Effect.sync(() => recorder.sample({ idle: 0, used: 0, pending: 0, max: 0, min: 0 }))),
    Effect.asVoid(Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sync(() => recorder.sample(engine.stats())), Effect.sleep(1_000)))))
  )

/**
 * What every transaction pins (./internal/postgres/prologue.ts), and the session each
 * new connection starts with. The `search_path` is the configured one, or
 * the server's default read on the first connection; directly on
 * PostgreSQL each session also gets it as its own default, so the prologue
 * finds it in place and sets nothing.
 */
const sessionPins = (resolved: PoolConfig.Resolved) => {
  const direct = resolved.behindPooler === "none"
  let pins: Prologue.Pins | undefined = resolved.searchPath === undefined ? undefined : pinsFor(resolved, resolved.searchPath)
  const init = (wire: Wire.Wire): Effect.Effect<void, SqlError> =>
    Effect.gen(function*() {
      if (pins === undefined) {
        const current = yield* Wire.expect(wire, Prologue.searchPathQuery)
        pins ??= pinsFor(resolved, Prologue.pinnedSearchPath(String((current.rows[0] as Array<unknown>)[0])))
      }
      if (direct) yield* Wire.expect(wire, Prologue.baseline(pins))
    })
  // The first connection runs `init` before any statement can.
  return { init, pins: () => pins! }
}

const pinsFor = (resolved: PoolConfig.Resolved, searchPath: string): Prologue.Pins => ({
  tenantSetting: resolved.tenantSetting,
  searchPath,
  baseline: resolved.behindPooler === "none"
})

/**
 * What the pool's layers provide.
 *
 * @since 0.1.0
 * @category layers
 */
export type Services = Pool | SqlClient.SqlClient | PgClient.PgClient

/**
 * The pool's services, built by `build` from the options `options` gives.
 *
 * @internal
 */
export const layerFrom = <E, R>(
  options: Effect.Effect<PoolConfig.Options, E, R>,
  build: typeof make = make
): Layer.Layer<Services, E | PoolConfigError | DatabaseUnavailableError, Exclude<R, Scope.Scope>> =>
  Layer.effectContext(
    Effect.gen(function*() {
      const { pool, sql } = yield* build(yield* options)
      const { retryAttempts, retryBase, retryMax } = pool.options
      return Context.make(Pool, pool).pipe(
        Context.add(SqlClient.SqlClient, sql),
        Context.add(PgClient.PgClient, sql),
        Context.add(Retry.CurrentPolicy, { attempts: retryAttempts, base: retryBase, max: retryMax }),
        Context.add(Metrics.CurrentPoolName, pool.options.name),
        // Statement spans become the parents of the pool's spans (connection waits) and get its attributes.
        Context.add(Statement.SpanPropagationEnabled, true)
      )
    })
  ).pipe(Layer.provide(Reactivity.layer))

/**
 * Provides {@link Pool}, `SqlClient` and `PgClient` from the given options.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: PoolConfig.Options
): Layer.Layer<Services, PoolConfigError | DatabaseUnavailableError> =>
  layerFrom(Effect.succeed(options))

/**
 * Provides {@link Pool}, `SqlClient` and `PgClient` from Effect `Config` (the environment
 * by default; see `PoolConfig.environment` for the variable names), with
 * `overrides` winning over what is read.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  overrides: PoolConfig.Options = {}
): Layer.Layer<Services, Config.ConfigError | PoolConfigError | DatabaseUnavailableError> =>
  layerFrom(PoolConfig.config(overrides))
