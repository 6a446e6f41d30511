/**
 * Three pools on a real PostgreSQL, each exporting its metrics through its
 * own Prometheus endpoint (as three worker processes would), scraped on a
 * fixed interval:
 *
 * - `healthy`: adaptive sizing (max 10) kept busy by twelve callers running
 *   short transactions and statements for a few tenants, its limit tried
 *   lower now and then; an occasional statement fails (division by zero).
 * - `saturated`: fixed at 4 connections, more callers than they serve in time
 *   (each transaction holds its connection for 400 ms), a short
 *   `acquireTimeout` (4 s), a bounded queue (`maxWaiting`) that a burst every
 *   15 s overfills, a noisy tenant with twice its queue quota
 *   (`tenantMaxQueued`) of callers, and a slow job every 10 s that holds a
 *   connection past `leakDetectionThreshold`.
 * - `failing`: behind a proxy, its reads retried (`Retry.idempotent`). For
 *   the first 60% of the run its backends are terminated every second (what a failover or an operator's
 *   `pg_terminate_backend` does), which also breaks its `LISTEN` connection;
 *   then the database becomes unreachable (connections reset and refused).
 *
 * docs/operations/record.ts turns the scrapes into the rule tests' input series; the
 * tests run it for a few seconds to check that what the dashboard and the
 * rules read is what the pool exports.
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as References from "effect/References"
import type * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import * as Stream from "effect/Stream"
import * as Notifications from "../../src/Notifications.ts"
import { Observability } from "../../src/otel/index.ts"
import * as Pool from "../../src/Pool.ts"
import type * as PoolConfig from "../../src/PoolConfig.ts"
import * as Retry from "../../src/Retry.ts"
import * as Tenant from "../../src/Tenant.ts"
import * as FaultProxy from "../../src/testing/FaultProxy.ts"
import { freePort } from "../../src/testing/internal/process.ts"

/** One line of a scrape: a series and its value. */
export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

/** What one scenario's endpoint served, scrape by scrape. */
export interface Recording {
  readonly scenario: string
  /** The text of every scrape, in order. */
  readonly scrapes: ReadonlyArray<string>
}

/** The scenarios, in the order they are recorded and written. */
export const scenarios = ["healthy", "saturated", "failing"] as const

/** How long to record, how often to scrape, and the superuser URL of the server to use. */
export interface Options {
  readonly url: string
  readonly seconds: number
  readonly intervalSeconds: number
  /** Told after each round of scrapes (progress on the terminal). */
  readonly onScrape?: ((round: number, rounds: number) => void) | undefined
}

/** Tenants of the load; telemetry shows them hashed (`tenantTelemetry` is `hashed` by default). */
const tenants = Array.from({ length: 8 }, (_, i) => `tenant-${i + 1}`)

const pick = <A>(all: ReadonlyArray<A>): A => all[Math.floor(Math.random() * all.length)]

/**
 * `callers` fibers running `work` over and over for the life of the scope,
 * each time made afresh (its random choices too); a failure pauses its
 * caller, so that refused callers do not spin.
 */
const callers = <E, R>(callers: number, work: (caller: number) => Effect.Effect<unknown, E, R>) =>
  Effect.forEach(
    Array.from({ length: callers }, (_, caller) => caller),
    (caller) =>
      Effect.forkScoped(Effect.forever(Effect.catch(Effect.suspend(() => work(caller)), () => Effect.sleep(500)))),
    { discard: true }
  )

/** The healthy load: short transactions and statements that keep adaptive sizing busy, and now and then a failing statement. */
const healthyLoad = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* callers(12, () => {
    const roll = Math.random()
    const work = roll < 0.75
      ? sql.withTransaction(Effect.andThen(sql`SELECT pg_sleep(0.05)`, sql`SELECT 1`))
      : roll < 0.97
      ? sql`SELECT pg_sleep(0.01)`
      : sql`SELECT 1/0` // an application error (22012), which no alert is about
    return Effect.andThen(Tenant.with(pick(tenants))(work), Effect.sleep(20))
  })
})

/**
 * More callers than the pool serves in time: three per tenant, a noisy
 * tenant with twice its queue quota of callers, a burst every 15 s that
 * overfills the queue, and a slow job every 10 s.
 */
const saturatedLoad = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const hold = (seconds: number) => sql.withTransaction(sql`SELECT pg_sleep(${seconds})`)
  yield* callers(24, (caller) => Tenant.with(tenants[caller % tenants.length])(hold(0.4)))
  yield* callers(16, () => Tenant.with("tenant-noisy")(hold(0.4)))
  yield* callers(1, () => Effect.andThen(Tenant.with(pick(tenants))(hold(3)), Effect.sleep(10_000)))
  const burst = Effect.forEach(
    Array.from({ length: 16 }, (_, i) => tenants[i % tenants.length]),
    (tenant) => Effect.ignore(Tenant.with(tenant)(hold(0.4))),
    { concurrency: "unbounded", discard: true }
  )
  yield* Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(15_000), Effect.forkScoped(burst))))
})

/** Statements and a listener, while backends are terminated and then the database goes away. */
const failingLoad = (url: string, proxy: FaultProxy.FaultProxy, outageAfterMillis: number, applicationName: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Reads, safe to run again: a statement that lost its connection is retried (meshhook.pool.retries).
    const read = Retry.idempotent(sql`SELECT pg_sleep(0.05)`)
    yield* callers(6, () => Effect.andThen(Tenant.with(pick(tenants))(read), Effect.sleep(20)))
    // The listener loses its connection with every termination: each time is a gap.
    yield* Effect.forkScoped(Effect.forever(Effect.ignore(Stream.runDrain(Notifications.stream("recorder_jobs")))))
    const admin = yield* PgConnection.make({ url: Redacted.make(url), applicationName: "meshhook-recorder" })
    const terminate = admin.query(
      "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
      [applicationName]
    )
    const outageAt = Date.now() + outageAfterMillis
    yield* Effect.forkScoped(Effect.gen(function*() {
      while (Date.now() < outageAt) yield* Effect.andThen(Effect.ignore(terminate), Effect.sleep(1_000))
      proxy.set({ refuse: true })
      proxy.resetAll()
    }))
  })

/** A pool under `load`, its metrics served at a Prometheus endpoint of its own; returns a scrape of it. */
const start = (
  options: PoolConfig.Options,
  load: Effect.Effect<void, unknown, Pool.Services | Scope.Scope>
): Effect.Effect<Effect.Effect<string>, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const port = yield* Effect.promise(freePort)
    const context = yield* Layer.build(Layer.provideMerge(
      Pool.layer(options),
      Observability.layer({ serviceName: "meshhook-worker", traces: false, metrics: false, prometheusPort: port })
    ))
    yield* Effect.provideContext(load, context)
    return Effect.promise(async () => (await fetch(`http://127.0.0.1:${port}/metrics`)).text())
  }).pipe(
    // The pools' warnings (leaks, the circuit, listening stopped) are the point of the run, not news.
    Effect.provideService(References.MinimumLogLevel, "Error"),
    // Each pool its own metric registry: one endpoint serves one pool's series, as one worker process would.
    Effect.provideService(Metric.MetricRegistry, new Map())
  )

/** Runs the three scenarios at once on the server at `options.url`, scraping each on the interval. */
export const record = (options: Options): Promise<ReadonlyArray<Recording>> =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const server = new URL(options.url)
    const proxy = yield* FaultProxy.make({ host: server.hostname, port: Number(server.port || 5432) })
    const millis = options.seconds * 1_000
    const failingName = "meshhook-failing"
    const scrapers = [
      yield* start({ url: options.url, name: "healthy", sizing: "adaptive", min: 1, max: 10, sizingInterval: 500 }, healthyLoad),
      yield* start({
        url: options.url,
        name: "saturated",
        max: 4,
        acquireTimeout: 4_000,
        maxWaiting: 34,
        tenantMaxQueued: 8,
        leakDetectionThreshold: 2_000,
        housekeepingInterval: 1_000
      }, saturatedLoad),
      yield* start(
        { url: options.url, port: proxy.port, name: "failing", applicationName: failingName, max: 4 },
        failingLoad(options.url, proxy, millis * 0.6, failingName)
      )
    ]
    const started = Date.now()
    const rounds = Math.floor(options.seconds / options.intervalSeconds) + 1
    const scrapes: Array<Array<string>> = scrapers.map(() => [])
    for (let round = 0; round < rounds; round++) {
      yield* Effect.sleep(Math.max(0, started + round * options.intervalSeconds * 1_000 - Date.now()))
      const texts = yield* Effect.all(scrapers, { concurrency: "unbounded" })
      texts.forEach((text, i) => scrapes[i].push(text))
      options.onScrape?.(round + 1, rounds)
    }
    return scenarios.map((scenario, i) => ({ scenario, scrapes: scrapes[i] }))
  })))

/** The samples of a scrape in Prometheus' text format. */
export const parseScrape = (text: string): ReadonlyArray<Sample> => {
  const samples: Array<Sample> = []
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line)
    if (match === null) throw new Error(`Not a sample: ${line}`)
    const labels: Record<string, string> = {}
    for (const [, name, value] of (match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[name] = value.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c))
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) })
  }
  return samples
}
