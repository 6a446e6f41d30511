/**
 * What the live view shows, from two readings of the pool an interval apart:
 * rates from the growth of counters, percentiles from the growth of
 * histogram buckets, so each figure is about that interval alone and not the
 * pool's whole life. Pure (no Effects, no clock): the server reads, this
 * computes.
 *
 * @internal
 */
import type * as Metric from "effect/Metric"
import { metrics, poolNameAttribute } from "../../Metrics.ts"
import type { Stats } from "../engine/engine.ts"
import type { TenantTelemetry } from "../telemetry.ts"

/**
 * A histogram's state as Effect keeps it: each upper bound with the count of
 * values at or below it (cumulative), and the count of all values, those
 * above the last bound included.
 *
 * @internal
 */
export interface Distribution {
  readonly buckets: ReadonlyArray<readonly [bound: number, cumulative: number]>
  readonly count: number
}

/** @internal */
export const emptyDistribution: Distribution = { buckets: [], count: 0 }

/**
 * The pool at one moment: its counts, and its metrics' totals since it
 * started (statements, failed statements, rejections by reason, the caller's
 * jobs, the wait and statement time histograms).
 *
 * @internal
 */
export interface Reading {
  /** When, in ms since the epoch. */
  readonly at: number
  readonly stats: Stats
  readonly statements: number
  readonly statementErrors: number
  readonly rejections: Readonly<Record<string, number>>
  /** `undefined` when the caller counts no jobs. */
  readonly jobs: number | undefined
  readonly wait: Distribution
  readonly statement: Distribution
}

/** The series the view reads, by the names Metrics.ts gives them. */
const names = {
  wait: metrics.waitTime({}).id,
  operation: metrics.operationDuration({}).id,
  rejections: metrics.rejections({}).id
}

/**
 * Reads one pool's series out of a snapshot of the metric registry: those
 * whose pool attribute is `poolName`. A statement's series are one per
 * operation name and error type: their buckets are added up.
 *
 * @internal
 */
export const read = (input: {
  readonly at: number
  readonly stats: Stats
  readonly snapshots: ReadonlyArray<Metric.Metric.Snapshot>
  readonly poolName: string
  readonly jobs: number | undefined
}): Reading => {
  let wait = emptyDistribution
  let statement = emptyDistribution
  let statementErrors = 0
  const rejections: Record<string, number> = {}
  for (const snapshot of input.snapshots) {
    const attributes = snapshot.attributes ?? {}
    if (attributes[poolNameAttribute] !== input.poolName) continue
    if (snapshot.type === "Histogram" && snapshot.id === names.wait) wait = snapshot.state
    if (snapshot.type === "Histogram" && snapshot.id === names.operation) {
      statement = add(statement, snapshot.state)
      if (attributes["error.type"] !== undefined) statementErrors += snapshot.state.count
    }
    if (snapshot.type === "Counter" && snapshot.id === names.rejections) {
      const reason = attributes["meshhook.pool.rejection.reason"] ?? "other"
      rejections[reason] = (rejections[reason] ?? 0) + Number(snapshot.state.count)
    }
  }
  const { at, stats, jobs } = input
  return { at, stats, statements: statement.count, statementErrors, rejections, jobs, wait, statement }
}

/** Two histograms of the same bounds as one (the pool's all share them). */
const add = (a: Distribution, b: Distribution): Distribution => ({
  buckets: b.buckets.map(([bound, cumulative], i) => [bound, cumulative + (a.buckets[i]?.[1] ?? 0)] as const),
  count: a.count + b.count
})

/**
 * What was recorded between two states of a histogram: the growth of each
 * bucket. A series that appeared in between counts from zero.
 *
 * @internal
 */
export const since = (before: Distribution, after: Distribution): Distribution => ({
  buckets: after.buckets.map(([bound, cumulative], i) => [bound, cumulative - (before.buckets[i]?.[1] ?? 0)] as const),
  count: after.count - before.count
})

/**
 * The `q` quantile (0 < q ≤ 1) of a distribution, interpolated linearly
 * within its bucket as Prometheus' `histogram_quantile` does: values are
 * taken to be spread evenly between a bucket's bounds (the first from 0). A
 * quantile above the last bound is that bound, the most a histogram can
 * say. `undefined` when nothing was recorded.
 *
 * @internal
 */
export const quantile = (distribution: Distribution, q: number): number | undefined => {
  if (distribution.count <= 0) return undefined
  const rank = q * distribution.count
  let lower = 0
  let below = 0
  for (const [bound, cumulative] of distribution.buckets) {
    if (cumulative >= rank) {
      const inBucket = cumulative - below
      return lower + (bound - lower) * (inBucket === 0 ? 1 : (rank - below) / inBucket)
    }
    lower = bound
    below = cumulative
  }
  return lower
}

/** The median, 95th and 99th percentiles, in milliseconds. @internal */
export interface Percentiles {
  readonly p50: number
  readonly p95: number
  readonly p99: number
}

/** The percentiles of what was recorded between two states of a histogram (in seconds), or `null` if nothing was. */
const percentiles = (before: Distribution, after: Distribution): Percentiles | null => {
  const recent = since(before, after)
  const at = (q: number) => round((quantile(recent, q) ?? 0) * 1_000)
  return recent.count <= 0 ? null : { p50: at(0.5), p95: at(0.95), p99: at(0.99) }
}

/** Growth per second of a total that only grows; a total that went back (a series removed) counts from zero. */
export const perSecond = (before: number, after: number, seconds: number): number =>
  seconds <= 0 ? 0 : round((after - (after < before ? 0 : before)) / seconds)

/** Three decimals are all the page shows, and keep each event short. */
const round = (value: number): number => Math.round(value * 1_000) / 1_000

/**
 * What the page shows for one interval: the pool's counts now, what happened
 * per second since the previous reading, and the latency percentiles of the
 * waits and statements in between.
 *
 * @internal
 */
export interface Frame {
  readonly pool: string
  /** When the interval ended, in ms since the epoch. */
  readonly at: number
  readonly seconds: number
  readonly circuit: "closed" | "open"
  readonly sizing: "fixed" | "adaptive"
  readonly connections: {
    readonly idle: number
    readonly used: number
    readonly opening: number
    readonly limit: number
    readonly min: number
    readonly max: number
  }
  /** Callers waiting for a connection, and checkouts since the pool started. */
  readonly waiting: number
  readonly checkouts: number
  /** The tenants with the most waiters, as `Pool.stats` names them (hashed by default). */
  readonly tenantsWaiting: ReadonlyArray<{ readonly tenant: string; readonly waiting: number }>
  readonly tenantNames: TenantTelemetry
  readonly perSecond: {
    /** `null` when the caller counts no jobs. */
    readonly jobs: number | null
    readonly statements: number
    readonly statementErrors: number
    readonly checkouts: number
    readonly rejections: Readonly<Record<string, number>>
  }
  /** `null` when nobody waited (or ran a statement) in the interval. */
  readonly waitMillis: Percentiles | null
  readonly statementMillis: Percentiles | null
}

/** What the frames say of the pool itself, fixed for its life. @internal */
export interface Setting {
  readonly pool: string
  readonly sizing: "fixed" | "adaptive"
  readonly tenantNames: TenantTelemetry
  readonly topTenants: number
}

/**
 * The frame for the interval between two readings.
 *
 * @internal
 */
export const frame = (before: Reading, after: Reading, setting: Setting): Frame => {
  const seconds = (after.at - before.at) / 1_000
  const rate = (from: number, to: number) => perSecond(from, to, seconds)
  const { stats } = after
  return {
    pool: setting.pool,
    at: after.at,
    seconds: round(seconds),
    circuit: stats.circuit,
    sizing: setting.sizing,
    connections: { idle: stats.idle, used: stats.used, opening: stats.creating, limit: stats.limit, min: stats.min, max: stats.max },
    waiting: stats.pending,
    checkouts: stats.checkouts,
    tenantsWaiting: stats.tenantsWaiting.slice(0, setting.topTenants),
    tenantNames: setting.tenantNames,
    perSecond: {
      jobs: after.jobs === undefined ? null : rate(before.jobs ?? 0, after.jobs),
      statements: rate(before.statements, after.statements),
      statementErrors: rate(before.statementErrors, after.statementErrors),
      checkouts: rate(before.stats.checkouts, stats.checkouts),
      rejections: Object.fromEntries(
        Object.entries(after.rejections).map(([reason, total]) => [reason, rate(before.rejections[reason] ?? 0, total)])
      )
    },
    waitMillis: percentiles(before.wait, after.wait),
    statementMillis: percentiles(before.statement, after.statement)
  }
}
