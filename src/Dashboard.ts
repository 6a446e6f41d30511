/**
 * A live view of the pool, in a browser: `Dashboard.layer()` serves a small
 * page on 127.0.0.1 that follows the pool once a second (connections by
 * state, the connection limit, the circuit breaker, waiters by tenant, jobs
 * and statements per second, wait and statement latency percentiles), from
 * `Pool.stats` and the pool's own metrics. No external service, nothing
 * loaded from elsewhere; Node's `http` alone.
 *
 * ```ts
 * import { Layer, Metric } from "effect"
 * import { Dashboard, Pool } from "@meshhook/pool"
 *
 * const jobs = Metric.counter("worker.jobs", { incremental: true })
 * const Live = Dashboard.layer({ port: 9465, jobs }).pipe(
 *   Layer.provideMerge(Pool.layer({ url: process.env.DATABASE_URL, max: 8 }))
 * )
 * // http://127.0.0.1:9465/ while the layer's scope is open
 * ```
 *
 * The page shows what `Pool.stats` and the metrics show, never the
 * connection URL or a credential; tenants appear only as `Pool.stats` names
 * them (`tenantTelemetry`: hashed by default). It binds to loopback unless
 * `allowRemote` is set, and answers only requests that name it by a loopback
 * name. docs/live-view.md says what each figure means.
 *
 * @since 0.2.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import type * as Http from "node:http"
import type * as Net from "node:net"
import * as Readings from "./internal/dashboard/readings.ts"
import * as Server from "./internal/dashboard/server.ts"
import * as Pool from "./Pool.ts"

/**
 * The live view's options.
 *
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /** The port; `0` (the default) takes a free one, which {@link Dashboard} `url` names. */
  readonly port?: number | undefined
  /** Where to listen: `127.0.0.1` by default. Anything but loopback needs `allowRemote`. */
  readonly host?: string | undefined
  /**
   * Listen on a host that is not loopback (reachable from the network): the
   * page has no authentication, so put it behind something that has.
   * Default `false`.
   */
  readonly allowRemote?: boolean | undefined
  /** The caller's own count of jobs done, shown as jobs per second; without it, statements per second stand alone. */
  readonly jobs?: Metric.Metric<number, Metric.CounterState<number>> | undefined
  /** How often the page gets a new frame, its rates and percentiles over that interval. Default 1 second. */
  readonly interval?: Duration.Input | undefined
  /** The tenants with the most waiters to show, from 0 to 10 (all that `Pool.stats` names). Default 10. */
  readonly topTenants?: number | undefined
}

/**
 * The live view, listening: where to open it.
 *
 * @since 0.2.0
 * @category services
 */
export class Dashboard extends Context.Service<Dashboard, {
  /** The page, `http://host:port/`. */
  readonly url: string
  readonly host: string
  readonly port: number
}>()("@meshhook/pool/Dashboard") {}

/**
 * The live view could not start: a host that is not loopback without
 * `allowRemote`, a port out of range, or one that is taken.
 *
 * @since 0.2.0
 * @category errors
 */
export class DashboardError extends Schema.TaggedError<DashboardError>()("DashboardError", {
  host: Schema.String,
  port: Schema.Number,
  /** What went wrong. */
  detail: Schema.String
}) {
  override get message(): string {
    return `The live view cannot listen on ${this.host} port ${this.port}: ${this.detail}`
  }
}

/**
 * Serves the live view of the {@link Pool.Pool} for the life of the scope;
 * closing the scope ends the streams and closes the server.
 *
 * @since 0.2.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(
  options: Options = {}
): Effect.fn.Return<Dashboard["Service"], DashboardError, Pool.Pool | Scope.Scope> {
  const host = options.host ?? "127.0.0.1"
  const port = options.port ?? 0
  const loopback = Server.isLoopback(host)
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    return yield* new DashboardError({ host, port, detail: "a port is a whole number from 0 to 65535" })
  }
  const problem = settingProblem(options)
  if (problem !== undefined) return yield* new DashboardError({ host, port, detail: problem })
  if (!loopback && options.allowRemote !== true) {
    return yield* new DashboardError({
      host,
      port,
      detail: "it is not a loopback address, and the page has no authentication (allowRemote: true to listen anyway)"
    })
  }
  const live = Server.make({ loopbackNames: loopback })
  // Once listening, a failure to accept (out of file descriptors) must not crash the worker it watches.
  const runFork = Effect.runForkWith(yield* Effect.context<never>())
  const warn = (error: Error) => void runFork(Effect.logWarning(`Live view: ${error.message}`))
  const address = yield* Effect.acquireRelease(listen(live.server, host, port, warn), () => close(live))
  yield* follow(yield* Pool.Pool, live, options)
  const url = `http://${address.family === "IPv6" ? `[${address.address}]` : address.address}:${address.port}/`
  yield* Effect.logInfo(`Live view of the pool on ${url}`)
  return Dashboard.of({ url, host: address.address, port: address.port })
})

/**
 * Provides {@link Dashboard}: the live view of the pool from the context,
 * served while the layer is.
 *
 * @since 0.2.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Dashboard, DashboardError, Pool.Pool> =>
  Layer.effect(Dashboard, make(options))

/** Starts listening; a failure to (a port taken) is a typed error, and later ones go to `onError`. */
const listen = (server: Http.Server, host: string, port: number, onError: (error: Error) => void) =>
  Effect.callback<Net.AddressInfo, DashboardError>((resume) => {
    const failed = (error: Error) => resume(Effect.fail(new DashboardError({ host, port, detail: error.message })))
    server.once("error", failed)
    server.listen(port, host, () => {
      server.off("error", failed)
      server.on("error", onError)
      resume(Effect.succeed(server.address() as Net.AddressInfo))
    })
  })

/** What is wrong with the interval or the number of tenants shown, if anything. */
const settingProblem = (options: Options): string | undefined => {
  const given = options.interval === undefined ? Option.some(Duration.seconds(1)) : Duration.fromInput(options.interval)
  const interval = Option.match(given, { onNone: () => NaN, onSome: Duration.toMillis })
  if (!(interval >= 100 && Number.isFinite(interval))) return "interval must be a finite duration of at least 100 ms"
  const top = options.topTenants ?? 10
  if (!Number.isInteger(top) || top < 0 || top > 10) return "topTenants is a whole number from 0 to 10"
  return undefined
}

/**
 * Ends the streams, closes the server, and drops the connections still open
 * (a request half sent), which `close` would otherwise wait for.
 */
const close = (live: Server.LiveServer) =>
  Effect.callback<void>((resume) => {
    live.close()
    live.server.close(() => resume(Effect.void))
    live.server.closeAllConnections()
  })

/** The pool's counts, its metrics in the registry it records in, and the caller's count of jobs, now. */
const reader = (pool: Pool.Pool["Service"], jobs: Options["jobs"]) =>
  Effect.gen(function*() {
    return Readings.read({
      at: yield* Clock.currentTimeMillis,
      stats: yield* pool.stats,
      // The default registry, shared by the pool's recorder unless the application provides another to both.
      snapshots: yield* Metric.snapshot,
      poolName: pool.options.name,
      jobs: jobs === undefined ? undefined : (yield* Metric.value(jobs)).count
    })
  })

/**
 * Reads the pool every interval and publishes what changed since the last
 * reading; the first interval starts when the layer is built.
 */
const follow = Effect.fnUntraced(function*(pool: Pool.Pool["Service"], live: Server.LiveServer, options: Options) {
  const setting: Readings.Setting = {
    pool: pool.options.name,
    sizing: pool.options.sizing,
    tenantNames: pool.options.tenantTelemetry,
    topTenants: options.topTenants ?? 10
  }
  const read = reader(pool, options.jobs)
  let before = yield* read
  return yield* Effect.forkScoped(Effect.forever(Effect.gen(function*() {
    yield* Effect.sleep(options.interval ?? "1 second")
    const after = yield* read
    live.publish(Readings.frame(before, after, setting))
    before = after
  })))
})
