/**
 * Records one pool's metrics, and names tenants in telemetry.
 *
 * Updates are synchronous (`updateUnsafe` on the pool's own series, built once
 * with their attributes), so recording costs a map lookup and no Effect. The
 * counts (connections by state, pending requests) are not updated on every
 * checkout: a sampler applies the difference since its last look, off the
 * hot path.
 *
 * Every counter and gauge of the pool is recorded when the recorder is made
 * (the pool's start), at 0 for every reason and kind: Effect registers a
 * series at its first update, and a series that starts with its first event
 * hides that event from Prometheus' `increase()`.
 *
 * @internal
 */
import type * as Context from "effect/Context"
import type * as Metric from "effect/Metric"
import { createHash } from "node:crypto"
import { metrics, poolNameAttribute, tenantAttribute } from "../Metrics.ts"
import type { Stats } from "./engine/engine.ts"
import type { Change } from "./engine/sizing.ts"

/** How tenant ids appear in spans and metrics. @internal */
export type TenantTelemetry = "plain" | "hashed" | "off"

const rejections = ["saturated", "tenant_quota", "circuit_open", "timeout"] as const

/** Why a request was turned away. @internal */
export type Rejection = typeof rejections[number]

const retryKinds = ["idempotent", "transaction"] as const

/** What `Retry` re-ran: `Retry.idempotent`'s work or `Retry.transaction`'s. @internal */
export type RetryKind = typeof retryKinds[number]

/** The kinds of change of the connection limit (./engine/sizing.ts), each counted from 0 at the start. */
const limitChanges: ReadonlyArray<Change["kind"]> = ["trial_down", "trial_up", "revert", "refused"]

/** What the engine and the client record, each a synchronous update of the pool's series. @internal */
export interface Recorder {
  readonly acquired: (tenant: string, waitMillis: number) => void
  readonly released: (useMillis: number) => void
  readonly created: (millis: number) => void
  readonly rejected: (reason: Rejection, tenant: string) => void
  readonly leaked: () => void
  readonly circuit: (open: boolean) => void
  /** The connection limit is now `limit`, after a change of `kind` (none at start). */
  readonly limit: (limit: number, kind: Change["kind"] | undefined) => void
  readonly operation: (operationName: string, seconds: number, errorType: string | undefined) => void
  /** Brings the count series up to date with the pool's counts (all zero once it is closed). */
  readonly sample: (stats: Pick<Stats, "idle" | "used" | "pending" | "max" | "min">) => void
  /** The tenant as telemetry shows it, or `undefined` when it is kept out. */
  readonly tenantLabel: (tenant: string) => string | undefined
  /**
   * The tenant as errors and logs name it, which reach spans as exception
   * events: quoted (`plain`), as its hash (`hashed`), or not at all (`off`).
   */
  readonly tenantName: (tenant: string) => string
}

/**
 * One pool's recorder: its series are made here, once (those named by a
 * tenant or an operation when it first occurs), with the pool's name among
 * their attributes.
 *
 * @internal
 */
export const make = (options: {
  readonly poolName: string
  readonly tenantTelemetry: TenantTelemetry
  readonly tenantMetricsLimit: number
  readonly context: Context.Context<never>
  readonly operationAttributes: Readonly<Record<string, string>>
}): Recorder => {
  const pool: Attributes = { [poolNameAttribute]: options.poolName }
  const tenants = tenantNames(options.tenantTelemetry, options.tenantMetricsLimit)
  countedElsewhere(pool, options.context)
  return {
    ...durations(pool, options.context, options.operationAttributes, tenants.tenantLabel),
    ...events(pool, options.context, tenants.tenantLabel),
    sample: sampler(pool, options.context),
    ...tenants
  }
}

/** The attributes of a series. */
type Attributes = Readonly<Record<string, string>>

type Series = Metric.Metric<number, unknown>

/** The series under `key`, made on first use: those named by a tenant or an operation exist only once it occurs. */
const cached = (cache: Map<string, Series>, key: string, make: () => Series): Series => {
  let series = cache.get(key)
  if (series === undefined) cache.set(key, series = make())
  return series
}

/** How tenants are named: as labels of series (a bounded number of them), and in errors and logs. */
const tenantNames = (telemetry: TenantTelemetry, limit: number): Pick<Recorder, "tenantLabel" | "tenantName"> => {
  const hash = (tenant: string) => createHash("sha256").update(tenant).digest("hex").slice(0, 16)
  const labels = new Map<string, string>()
  return {
    tenantLabel: (tenant) => {
      if (telemetry === "off" || tenant === "") return undefined
      const known = labels.get(tenant)
      if (known !== undefined) return known
      // Telemetry names at most a bounded number of tenants; a flood of ids shares one label, unhashed.
      if (labels.size >= limit) return "other"
      const label = telemetry === "plain" ? tenant : hash(tenant)
      labels.set(tenant, label)
      return label
    },
    tenantName: (tenant) =>
      telemetry === "plain" ? JSON.stringify(tenant.slice(0, 80)) : telemetry === "hashed" ? `#${hash(tenant)}` : "(hidden)"
  }
}

/** The histograms: how long callers waited, held a connection, an opening took, an operation ran. */
const durations = (
  pool: Attributes,
  context: Context.Context<never>,
  operationAttributes: Attributes,
  tenantLabel: Recorder["tenantLabel"]
): Pick<Recorder, "acquired" | "released" | "created" | "operation"> => {
  const waitTime = metrics.waitTime(pool)
  const useTime = metrics.useTime(pool)
  const createTime = metrics.createTime(pool)
  const tenantWaits = new Map<string, Series>()
  const operations = new Map<string, Series>()
  return {
    acquired: (tenant, waitMillis) => {
      waitTime.updateUnsafe(waitMillis / 1_000, context)
      const label = tenantLabel(tenant)
      if (label !== undefined) {
        cached(tenantWaits, label, () => metrics.tenantWaitTime({ ...pool, [tenantAttribute]: label }))
          .updateUnsafe(waitMillis / 1_000, context)
      }
    },
    released: (useMillis) => useTime.updateUnsafe(useMillis / 1_000, context),
    created: (millis) => createTime.updateUnsafe(millis / 1_000, context),
    operation: (operationName, seconds, errorType) =>
      cached(
        operations,
        `${operationName}\u0000${errorType ?? ""}`,
        () =>
          metrics.operationDuration({
            ...pool,
            ...operationAttributes,
            "db.operation.name": operationName,
            ...(errorType === undefined ? {} : { "error.type": errorType })
          })
      ).updateUnsafe(seconds, context)
  }
}

/**
 * The counters and gauges of what happened: rejections, leaks, the circuit, the connection limit. All but
 * the tenants' start at 0 (the circuit closed); the limit is set by the pool as it starts.
 */
const events = (
  pool: Attributes,
  context: Context.Context<never>,
  tenantLabel: Recorder["tenantLabel"]
): Pick<Recorder, "rejected" | "leaked" | "circuit" | "limit"> => {
  const timeouts = metrics.timeouts(pool)
  const leaks = metrics.leaks(pool)
  const circuitOpen = metrics.circuitOpen(pool)
  const connectionLimit = metrics.connectionLimit(pool)
  const byReason = new Map<string, Series>()
  const tenantRejections = new Map<string, Series>()
  const byChange = new Map<string, Series>()
  const rejection = (reason: Rejection) =>
    cached(byReason, reason, () => metrics.rejections({ ...pool, "meshhook.pool.rejection.reason": reason }))
  const limitChange = (kind: Change["kind"]) =>
    cached(byChange, kind, () => metrics.limitChanges({ ...pool, "meshhook.pool.limit.change": kind }))
  for (const series of [timeouts, leaks, circuitOpen, ...rejections.map(rejection), ...limitChanges.map(limitChange)]) {
    series.updateUnsafe(0, context)
  }
  return {
    rejected: (reason, tenant) => {
      if (reason === "timeout") timeouts.updateUnsafe(1, context)
      rejection(reason).updateUnsafe(1, context)
      const label = tenantLabel(tenant)
      if (label !== undefined) {
        cached(
          tenantRejections,
          `${label}\u0000${reason}`,
          () => metrics.tenantRejections({ ...pool, [tenantAttribute]: label, "meshhook.pool.rejection.reason": reason })
        ).updateUnsafe(1, context)
      }
    },
    leaked: () => leaks.updateUnsafe(1, context),
    circuit: (open) => circuitOpen.updateUnsafe(open ? 1 : 0, context),
    limit: (limit, kind) => {
      connectionLimit.updateUnsafe(limit, context)
      if (kind !== undefined) limitChange(kind).updateUnsafe(1, context)
    }
  }
}

/**
 * The pool's series that Retry and Notifications update, in their callers' fibers (under the pool's name
 * when they run on its layer): made at 0 here, so that they too exist from the pool's start.
 */
const countedElsewhere = (pool: Attributes, context: Context.Context<never>): void => {
  for (const kind of retryKinds) metrics.retries({ ...pool, "meshhook.pool.retry.kind": kind }).updateUnsafe(0, context)
  metrics.notificationGaps(pool).updateUnsafe(0, context)
}

/**
 * The count series (connections by state, pending requests, the bounds),
 * brought up to date with the pool's counts by adding the difference since
 * the last sample.
 */
const sampler = (pool: Attributes, context: Context.Context<never>): Recorder["sample"] => {
  const idle = metrics.connectionCount({ ...pool, "db.client.connection.state": "idle" })
  const used = metrics.connectionCount({ ...pool, "db.client.connection.state": "used" })
  const pending = metrics.pendingRequests(pool)
  const maxSeries = metrics.max(pool)
  const idleMaxSeries = metrics.idleMax(pool)
  const idleMinSeries = metrics.idleMin(pool)
  let last = { idle: 0, used: 0, pending: 0, max: 0, min: 0 }
  return (stats) => {
    const now = { idle: stats.idle, used: stats.used, pending: stats.pending, max: stats.max, min: stats.min }
    idle.updateUnsafe(now.idle - last.idle, context)
    used.updateUnsafe(now.used - last.used, context)
    pending.updateUnsafe(now.pending - last.pending, context)
    maxSeries.updateUnsafe(now.max - last.max, context)
    idleMaxSeries.updateUnsafe(now.max - last.max, context)
    idleMinSeries.updateUnsafe(now.min - last.min, context)
    last = now
  }
}
