/**
 * Records one pool's metrics, and names tenants in telemetry.
 *
 * Updates are synchronous (`updateUnsafe` on the pool's own series, built once
 * with their attributes), so recording costs a map lookup and no Effect. The
 * counts (connections by state, pending requests) are not updated on every
 * checkout: a sampler applies the difference since its last look, off the
 * hot path.
 *
 * @internal
 */
import type * as Context from "effect/Context"
import type * as Metric from "effect/Metric"
import { createHash } from "node:crypto"
import { metrics, poolNameAttribute, tenantAttribute } from "../Metrics.ts"
import type { Stats } from "./engine/engine.ts"

/** How tenant ids appear in spans and metrics. @internal */
export type TenantTelemetry = "plain" | "hashed" | "off"

/** Why a request was turned away. @internal */
export type Rejection = "saturated" | "tenant_quota" | "circuit_open" | "timeout"

/** @internal */
export interface Recorder {
  readonly acquired: (tenant: string, waitMillis: number) => void
  readonly released: (useMillis: number) => void
  readonly created: (millis: number) => void
  readonly rejected: (reason: Rejection, tenant: string) => void
  readonly leaked: () => void
  readonly circuit: (open: boolean) => void
  /** The connection limit is now `limit`, after a change of `kind` (none at start). */
  readonly limit: (limit: number, kind: string | undefined) => void
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

/** @internal */
export const make = (options: {
  readonly poolName: string
  readonly tenantTelemetry: TenantTelemetry
  readonly tenantMetricsLimit: number
  readonly context: Context.Context<never>
  readonly operationAttributes: Readonly<Record<string, string>>
}): Recorder => {
  const { context } = options
  const pool = { [poolNameAttribute]: options.poolName }
  const idle = metrics.connectionCount({ ...pool, "db.client.connection.state": "idle" })
  const used = metrics.connectionCount({ ...pool, "db.client.connection.state": "used" })
  const pending = metrics.pendingRequests(pool)
  const waitTime = metrics.waitTime(pool)
  const useTime = metrics.useTime(pool)
  const createTime = metrics.createTime(pool)
  const timeouts = metrics.timeouts(pool)
  const leaks = metrics.leaks(pool)
  const circuitOpen = metrics.circuitOpen(pool)
  const connectionLimit = metrics.connectionLimit(pool)
  const limitChanges = new Map<string, Metric.Metric<number, unknown>>()
  const rejections = new Map<string, Metric.Metric<number, unknown>>()
  const operations = new Map<string, Metric.Metric<number, unknown>>()
  const tenantWaits = new Map<string, Metric.Metric<number, unknown>>()
  const tenantRejections = new Map<string, Metric.Metric<number, unknown>>()

  const hash = (tenant: string) => createHash("sha256").update(tenant).digest("hex").slice(0, 16)
  const labels = new Map<string, string>()
  const tenantLabel = (tenant: string): string | undefined => {
    if (options.tenantTelemetry === "off" || tenant === "") return undefined
    const known = labels.get(tenant)
    if (known !== undefined) return known
    // Telemetry names at most a bounded number of tenants; a flood of ids shares one label, unhashed.
    if (labels.size >= options.tenantMetricsLimit) return "other"
    const label = options.tenantTelemetry === "plain" ? tenant : hash(tenant)
    labels.set(tenant, label)
    return label
  }

  const series = (
    cache: Map<string, Metric.Metric<number, unknown>>,
    key: string,
    make: () => Metric.Metric<number, unknown>
  ) => {
    let metric = cache.get(key)
    if (metric === undefined) cache.set(key, metric = make())
    return metric
  }

  const maxSeries = metrics.max(pool)
  const idleMaxSeries = metrics.idleMax(pool)
  const idleMinSeries = metrics.idleMin(pool)
  let last = { idle: 0, used: 0, pending: 0, max: 0, min: 0 }

  return {
    acquired: (tenant, waitMillis) => {
      waitTime.updateUnsafe(waitMillis / 1_000, context)
      const label = tenantLabel(tenant)
      if (label !== undefined) {
        series(tenantWaits, label, () => metrics.tenantWaitTime({ ...pool, [tenantAttribute]: label }))
          .updateUnsafe(waitMillis / 1_000, context)
      }
    },
    released: (useMillis) => useTime.updateUnsafe(useMillis / 1_000, context),
    created: (millis) => createTime.updateUnsafe(millis / 1_000, context),
    rejected: (reason, tenant) => {
      if (reason === "timeout") timeouts.updateUnsafe(1, context)
      series(rejections, reason, () => metrics.rejections({ ...pool, "meshhook.pool.rejection.reason": reason }))
        .updateUnsafe(1, context)
      const label = tenantLabel(tenant)
      if (label !== undefined) {
        series(
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
      if (kind !== undefined) {
        series(limitChanges, kind, () => metrics.limitChanges({ ...pool, "meshhook.pool.limit.change": kind }))
          .updateUnsafe(1, context)
      }
    },
    operation: (operationName, seconds, errorType) =>
      series(
        operations,
        `${operationName}\u0000${errorType ?? ""}`,
        () =>
          metrics.operationDuration({
            ...pool,
            ...options.operationAttributes,
            "db.operation.name": operationName,
            ...(errorType === undefined ? {} : { "error.type": errorType })
          })
      ).updateUnsafe(seconds, context),
    sample: (stats) => {
      const now = { idle: stats.idle, used: stats.used, pending: stats.pending, max: stats.max, min: stats.min }
      idle.updateUnsafe(now.idle - last.idle, context)
      used.updateUnsafe(now.used - last.used, context)
      pending.updateUnsafe(now.pending - last.pending, context)
      maxSeries.updateUnsafe(now.max - last.max, context)
      idleMaxSeries.updateUnsafe(now.max - last.max, context)
      idleMinSeries.updateUnsafe(now.min - last.min, context)
      last = now
    },
    tenantLabel,
    tenantName: (tenant) =>
      options.tenantTelemetry === "plain"
        ? JSON.stringify(tenant.slice(0, 80))
        : options.tenantTelemetry === "hashed"
        ? `#${hash(tenant)}`
        : "(hidden)"
  }
}
