/**
 * A scripted connection factory for deterministic engine tests: connections
 * are plain objects, connecting takes `connectDelay` of (test) clock time,
 * attempts can be made to fail, and a connection can be "killed" the way the
 * driver reports a dead backend.
 */
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { AuthenticationError, ConnectionError, SqlError, UnknownError } from "effect/sql/SqlError"
import * as Engine from "../../src/internal/engine/engine.ts"
import type { Connector } from "../../src/internal/engine/connector.ts"
import type { Entry } from "../../src/internal/engine/entry.ts"
import type { Request } from "../../src/internal/engine/scheduler.ts"
import { connectFailure } from "../../src/internal/postgres/sqlState.ts"
import type { PoolError } from "../../src/PoolError.ts"

export interface FakeConnection {
  readonly id: number
  closed: boolean
  retire: (() => void) | undefined
}

export interface Script {
  readonly connector: Connector<FakeConnection>
  /** Every connection ever opened, in order. */
  readonly opened: Array<FakeConnection>
  /** Connections open right now. */
  readonly openNow: () => number
  /** The most connections open at once. */
  readonly peakOpen: () => number
  readonly attempts: () => number
  /** Clock time one connection attempt takes. */
  connectDelay: number
  /** Failures for the next attempts, used first to last. */
  readonly failures: Array<SqlError>
  /** Every further attempt fails with this, once set. */
  failAll: SqlError | undefined
  /** Connections the engine cancelled, by id. */
  readonly cancelled: Array<number>
  /** Connections the engine validated (checkout after idling, keepalive), by id. */
  readonly validated: Array<number>
  /** Connections that fail validation, by id: dead without the driver having noticed. */
  readonly deadOnValidation: Set<number>
  /** Connections whose validation never answers, by id. */
  readonly hangOnValidation: Set<number>
  /** Reports the connection dead, as the driver does for a killed backend. */
  readonly kill: (connection: FakeConnection) => void
}

export const connectionRefused = (): SqlError =>
  new SqlError({
    reason: new ConnectionError({ cause: new Error("ECONNREFUSED"), message: "connect ECONNREFUSED", operation: "connect" })
  })

/** The server is out of connection slots (53300), as PostgreSQL says it. */
export const tooManyClients = (): SqlError =>
  new SqlError({
    reason: new UnknownError({
      cause: Object.assign(new Error("sorry, too many clients already"), { code: "53300" }),
      message: "sorry, too many clients already",
      operation: "connect"
    })
  })

export const authenticationFailed = (): SqlError =>
  new SqlError({
    reason: new AuthenticationError({
      cause: Object.assign(new Error("password authentication failed for user \"app\""), { code: "28P01" }),
      message: "password authentication failed for user \"app\"",
      operation: "connect"
    })
  })

export const makeScript = (): Script => {
  const opened: Array<FakeConnection> = []
  let open = 0
  let peak = 0
  let attempts = 0
  const script: Script = {
    opened,
    openNow: () => open,
    peakOpen: () => peak,
    attempts: () => attempts,
    connectDelay: 0,
    failures: [],
    failAll: undefined,
    cancelled: [],
    validated: [],
    deadOnValidation: new Set(),
    hangOnValidation: new Set(),
    kill: (connection) => connection.retire?.(),
    connector: {
      connect: Effect.gen(function*() {
        attempts++
        if (script.connectDelay > 0) yield* Effect.sleep(script.connectDelay)
        const failure = script.failures.shift() ?? script.failAll
        if (failure !== undefined) return yield* Effect.fail(failure)
        const connection: FakeConnection = { id: opened.length + 1, closed: false, retire: undefined }
        opened.push(connection)
        open++
        peak = Math.max(peak, open)
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            connection.closed = true
            open--
          })
        )
        return connection
      }),
      classify: connectFailure,
      onRetire: (connection, retire) => {
        connection.retire = retire
      },
      cancel: (connection) => Effect.sync(() => void script.cancelled.push(connection.id)),
      validate: (connection) =>
        Effect.suspend(() => {
          script.validated.push(connection.id)
          if (script.hangOnValidation.has(connection.id)) return Effect.never
          return connection.closed || script.deadOnValidation.has(connection.id)
            ? Effect.fail(connectionRefused())
            : Effect.void
        })
    }
  }
  return script
}

/** Engine settings for tests: small, explicit numbers. */
export const testOptions = (overrides: Partial<Engine.EngineOptions> = {}): Engine.EngineOptions => ({
  min: 0,
  max: 2,
  maxConnecting: 2,
  pipelineDepth: 1,
  maxWaiting: Infinity,
  acquireTimeout: 10_000,
  idleTimeout: 60_000,
  maxLifetime: Infinity,
  maxLifetimeJitter: 0,
  maxUses: Infinity,
  housekeepingInterval: 1_000,
  shutdownTimeout: 5_000,
  initializationTimeout: 30_000,
  connectRetry: Schedule.spaced(100),
  probeRetry: Schedule.spaced(1_000),
  validationThreshold: Infinity,
  validationTimeout: 2_000,
  keepaliveInterval: Infinity,
  leakDetectionThreshold: Infinity,
  circuitBreakerThreshold: 3,
  circuitProbeInterval: 1_000,
  fairness: { mode: "fifo", priorityWeights: { high: 4, normal: 2, low: 1 }, tenantWeight: () => 1, tenantMaxInUse: Infinity },
  tenantMaxQueued: Infinity,
  name: "test",
  ...overrides
})

/** A request for a connection alone, without a tenant. */
export const alone: Request = { tenant: "", priority: "normal", shared: false }
/** A request for a share of a connection. */
export const share: Request = { tenant: "", priority: "normal", shared: true }
/** A request for a connection alone, as a tenant. */
export const asTenant = (tenant: string, priority: Request["priority"] = "normal"): Request => ({
  tenant,
  priority,
  shared: false
})

export const makeEngine = (
  script: Script,
  overrides: Partial<Engine.EngineOptions> = {}
): Effect.Effect<Engine.Engine<FakeConnection>, unknown, Scope.Scope> =>
  Engine.make(script.connector, testOptions(overrides))

/** Holds a connection until the scope closes; the wait for it stays interruptible. */
export const lease = (
  engine: Engine.Engine<FakeConnection>,
  request: Request = alone
): Effect.Effect<Entry<FakeConnection>, PoolError, Scope.Scope> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(
      restore(engine.acquire(request)),
      (entry) => Effect.as(Effect.addFinalizer(() => Effect.sync(() => engine.release(entry))), entry)
    )
  )
