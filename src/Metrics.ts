/**
 * The pool's metrics, as Effect `Metric`s named and typed as the
 * OpenTelemetry database conventions say; `@effect/opentelemetry` (or the
 * ready layer in `@meshhook/pool/otel`) exports them. Every series of a pool
 * carries `db.client.connection.pool.name`; retries and notification gaps
 * carry it when the work runs on the pool's layer (they are counted in the
 * caller's fiber, where the layer's `Pool` service names the pool), and
 * have no pool outside one.
 *
 * | metric | Effect type (OpenTelemetry instrument) | unit |
 * |---|---|---|
 * | `db.client.connection.count` (`db.client.connection.state` = idle / used) | counter (UpDownCounter) | {connection} |
 * | `db.client.connection.idle.max`, `.idle.min`, `.max` | counter (UpDownCounter) | {connection} |
 * | `db.client.connection.pending_requests` | counter (UpDownCounter) | {request} |
 * | `db.client.connection.timeouts` | incremental counter (Counter) | {timeout} |
 * | `db.client.connection.create_time`, `.wait_time`, `.use_time` | histogram | s |
 * | `db.client.operation.duration` (`db.operation.name`, `error.type`) | histogram | s |
 * | `meshhook.pool.rejections` (`meshhook.pool.rejection.reason`) | incremental counter | {request} |
 * | `meshhook.pool.retries` (`meshhook.pool.retry.kind`) | incremental counter | {retry} |
 * | `meshhook.pool.leaks` | incremental counter | {connection} |
 * | `meshhook.pool.circuit.open` | gauge | 1 |
 * | `meshhook.pool.connection.limit` | gauge | {connection} |
 * | `meshhook.pool.limit.changes` (`meshhook.pool.limit.change`: trial_down / trial_up / revert / refused) | incremental counter | {change} |
 * | `meshhook.pool.tenant.wait_time` (`meshhook.tenant`) | histogram | s |
 * | `meshhook.pool.tenant.rejections` (`meshhook.tenant`, reason) | incremental counter | {request} |
 * | `meshhook.pool.notifications.gaps` (`Notifications.gaps`) | incremental counter | {gap} |
 *
 * The counters and gauges exist from the pool's start, at 0 (the circuit
 * closed, the limit at `max`), for every reason and kind: a series that
 * appeared at its first event would hide that event from Prometheus'
 * `increase()`, and be absent on a pool where nothing happened. The series
 * named by what the pool cannot know at its start appear at their first
 * update: the tenant series and those of an operation (`db.operation.name`,
 * `error.type`); and a histogram, at its first observation.
 *
 * The tenant series have at most `tenantMetricsLimit` tenant values; the
 * rest are folded into `other`.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Metric from "effect/Metric"

/** Wait and use times: from 50 µs to 10 s, finer where connection waits live. */
const secondsBoundaries = [
  0.00005,
  0.0001,
  0.00025,
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10
]

/** Attributes every series of one pool carries. */
type Attributes = Readonly<Record<string, string>>

const upDown = (name: string, description: string, unit: string) => (attributes: Attributes) =>
  Metric.counter(name, { description, attributes: { ...attributes, unit } })

const counter = (name: string, description: string, unit: string) => (attributes: Attributes) =>
  Metric.counter(name, { description, attributes: { ...attributes, unit }, incremental: true })

const seconds = (name: string, description: string) => (attributes: Attributes) =>
  Metric.histogram(name, { description, attributes: { ...attributes, unit: "s" }, boundaries: secondsBoundaries })

/**
 * The metrics, each as a function from a series' attributes to the Effect
 * `Metric` that records it.
 *
 * @since 0.1.0
 * @category metrics
 */
export const metrics = {
  connectionCount: upDown(
    "db.client.connection.count",
    "The number of connections that are currently in state described by the state attribute",
    "{connection}"
  ),
  idleMax: upDown("db.client.connection.idle.max", "The maximum number of idle open connections allowed", "{connection}"),
  idleMin: upDown("db.client.connection.idle.min", "The minimum number of idle open connections allowed", "{connection}"),
  max: upDown("db.client.connection.max", "The maximum number of open connections allowed", "{connection}"),
  pendingRequests: upDown(
    "db.client.connection.pending_requests",
    "The number of current pending requests for an open connection",
    "{request}"
  ),
  timeouts: counter(
    "db.client.connection.timeouts",
    "The number of connection timeouts that have occurred trying to obtain a connection from the pool",
    "{timeout}"
  ),
  createTime: seconds("db.client.connection.create_time", "The time it took to create a new connection"),
  waitTime: seconds("db.client.connection.wait_time", "The time it took to obtain an open connection from the pool"),
  useTime: seconds("db.client.connection.use_time", "The time between borrowing a connection and returning it to the pool"),
  operationDuration: seconds("db.client.operation.duration", "Duration of database client operations"),
  rejections: counter(
    "meshhook.pool.rejections",
    "Requests the pool turned away: saturated, over a tenant quota, or with the circuit open",
    "{request}"
  ),
  retries: counter("meshhook.pool.retries", "Work re-run by Retry.idempotent or Retry.transaction", "{retry}"),
  leaks: counter("meshhook.pool.leaks", "Connections held longer than leakDetectionThreshold", "{connection}"),
  circuitOpen: (attributes: Attributes) =>
    Metric.gauge("meshhook.pool.circuit.open", {
      description: "1 while the circuit breaker is open (the database looks unreachable), else 0",
      attributes: { ...attributes, unit: "1" }
    }),
  connectionLimit: (attributes: Attributes) =>
    Metric.gauge("meshhook.pool.connection.limit", {
      description: "Connections the pool may open now: max, or what adaptive sizing settled on",
      attributes: { ...attributes, unit: "{connection}" }
    }),
  limitChanges: counter(
    "meshhook.pool.limit.changes",
    "Changes of the adaptive connection limit, by kind: trial_down, trial_up, revert, refused",
    "{change}"
  ),
  tenantWaitTime: seconds("meshhook.pool.tenant.wait_time", "Connection wait time by tenant"),
  tenantRejections: counter("meshhook.pool.tenant.rejections", "Requests turned away, by tenant", "{request}"),
  notificationGaps: counter(
    "meshhook.pool.notifications.gaps",
    "Times listening for notifications stopped with a lost connection and started again",
    "{gap}"
  )
} as const

/** The attribute naming the pool. @since 0.1.0 */
export const poolNameAttribute = "db.client.connection.pool.name"

/**
 * The name of the pool whose layer the current work runs on, if any: the
 * series counted in the caller's fiber (retries, notification gaps) carry it.
 * The pool's layer provides it.
 *
 * @since 0.2.0
 * @category references
 */
export const CurrentPoolName = Context.Reference<string | undefined>("@meshhook/pool/Metrics/CurrentPoolName", {
  defaultValue: () => undefined
})

/** The pool's name as an attribute, when the work runs on a pool's layer. @internal */
export const poolNameOf = (name: string | undefined): Record<string, string> =>
  name === undefined ? {} : { [poolNameAttribute]: name }
/** The attribute naming the tenant (plain or hashed). @since 0.1.0 */
export const tenantAttribute = "meshhook.tenant"
