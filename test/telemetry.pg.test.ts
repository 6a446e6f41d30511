/**
 * Telemetry: metrics and spans through @effect/opentelemetry, with in-memory
 * exporters and with a real OTLP/HTTP receiver on loopback.
 */
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import {
  AggregationTemporality,
  DataPointType,
  InMemoryMetricExporter,
  type MetricData,
  PeriodicExportingMetricReader
} from "@opentelemetry/sdk-metrics"
import * as Otel from "@opentelemetry/api"
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks"
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as References from "effect/References"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Redacted from "effect/Redacted"
import * as SqlClient from "effect/sql/SqlClient"
import { ConnectionError, SqlError } from "effect/sql/SqlError"
import * as Http from "node:http"
import * as Worker from "../examples/meshhook/worker.ts"
import { Observability } from "../src/otel/index.ts"
import * as Pool from "../src/Pool.ts"
import type * as PoolConfig from "../src/PoolConfig.ts"
import * as Retry from "../src/Retry.ts"
import * as Tenant from "../src/Tenant.ts"
import { MeshHookDb, workerPool } from "./support/meshhook.ts"
import { databaseUrl, eventually } from "./support/pg.ts"

/** A pool with in-memory span and metric exporters, and a way to read what they hold. */
const instrumented = async (options: PoolConfig.Options) => {
  const spans = new InMemorySpanExporter()
  const metrics = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
  const reader = new PeriodicExportingMetricReader({ exporter: metrics, exportIntervalMillis: 3_600_000 })
  const sdk = NodeSdk.layer(() => ({
    resource: { serviceName: "telemetry-test" },
    spanProcessor: new SimpleSpanProcessor(spans),
    metricReader: reader
  }))
  const runtime = ManagedRuntime.make(Layer.provideMerge(Pool.layer({ url: databaseUrl(), ...options }), sdk))
  await runtime.runPromise(Effect.void)
  const collect = async (): Promise<Array<MetricData>> => {
    metrics.reset()
    await reader.forceFlush()
    return metrics.getMetrics().flatMap((r) => r.scopeMetrics.flatMap((s) => s.metrics))
  }
  return { runtime, spans, collect }
}

/** The OpenTelemetry instrument a metric was exported as. */
const instrument = (metric: MetricData): string => {
  switch (metric.dataPointType) {
    case DataPointType.HISTOGRAM:
      return "Histogram"
    case DataPointType.GAUGE:
      return "Gauge"
    case DataPointType.SUM:
      return metric.isMonotonic ? "Counter" : "UpDownCounter"
    default:
      return "other"
  }
}

const find = (all: ReadonlyArray<MetricData>, name: string) => {
  const metric = all.find((m) => m.descriptor.name === name)
  assert.isDefined(metric, `metric ${name}`)
  return metric!
}

/** The value of the series of metric `name` with `attributes` (among others). */
const valueOf = (all: ReadonlyArray<MetricData>, name: string, attributes: Readonly<Record<string, string>>) => {
  const point = find(all, name).dataPoints.find((p) => Object.entries(attributes).every(([k, v]) => p.attributes[k] === v))
  assert.isDefined(point, `${name} ${JSON.stringify(attributes)}`)
  return point!.value
}

const secret = "s3cret-parameter-value"

describe("telemetry", () => {
  it("metrics: names, instruments, units and attributes, with counts that match the work done", async () => {
    const { collect, runtime } = await instrumented({ name: "metrics-test", max: 1, min: 1, acquireTimeout: 100 })
    try {
      await runtime.runPromise(Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        for (let i = 0; i < 5; i++) yield* sql`SELECT ${i}::int`
        yield* Effect.exit(sql`SELECT 1/0`)
        // Three callers time out while the only connection is held.
        const holder = yield* Effect.forkChild(Effect.scoped(Effect.andThen(sql.reserve, Effect.never)))
        yield* Effect.sleep(50)
        const timedOut = yield* Effect.all(Array.from({ length: 3 }, () => Effect.exit(sql`SELECT 1`)), {
          concurrency: "unbounded"
        })
        assert.isTrue(timedOut.every(Exit.isFailure))
        yield* Fiber.interrupt(holder)
        yield* Effect.sleep(1_200)
      }))
      const all = await collect()
      const pool = { "db.client.connection.pool.name": "metrics-test" }

      const count = find(all, "db.client.connection.count")
      assert.strictEqual(instrument(count), "UpDownCounter")
      assert.strictEqual(count.descriptor.unit, "{connection}")
      const states = count.dataPoints.map((p) => ({ ...p.attributes }))
      assert.deepInclude(states, { ...pool, "db.client.connection.state": "idle", unit: "{connection}" })
      assert.deepInclude(states, { ...pool, "db.client.connection.state": "used", unit: "{connection}" })
      const idle = count.dataPoints.find((p) => p.attributes["db.client.connection.state"] === "idle")!
      assert.strictEqual(idle.value, 1)

      for (const [name, value] of [["db.client.connection.max", 1], ["db.client.connection.idle.max", 1], ["db.client.connection.idle.min", 1]] as const) {
        const limit = find(all, name)
        assert.strictEqual(instrument(limit), "UpDownCounter")
        assert.strictEqual(limit.dataPoints[0].value, value)
      }
      const pending = find(all, "db.client.connection.pending_requests")
      assert.strictEqual(pending.descriptor.unit, "{request}")
      assert.strictEqual(pending.dataPoints[0].value, 0)

      const timeouts = find(all, "db.client.connection.timeouts")
      assert.strictEqual(instrument(timeouts), "Counter")
      assert.strictEqual(timeouts.descriptor.unit, "{timeout}")
      assert.strictEqual(timeouts.dataPoints[0].value, 3)
      assert.include(timeouts.dataPoints[0].attributes, pool)

      for (const name of ["db.client.connection.wait_time", "db.client.connection.use_time", "db.client.connection.create_time"]) {
        const histogram = find(all, name)
        assert.strictEqual(instrument(histogram), "Histogram", name)
        assert.strictEqual(histogram.descriptor.unit, "s")
        assert.include(histogram.dataPoints[0].attributes, pool)
      }
      const waits = find(all, "db.client.connection.wait_time").dataPoints[0].value as { count: number }
      assert.isAtLeast(waits.count, 7)

      const operations = find(all, "db.client.operation.duration")
      const selects = operations.dataPoints.filter((p) => p.attributes["db.operation.name"] === "SELECT")
      const ok = selects.find((p) => p.attributes["error.type"] === undefined)!
      const failed = selects.find((p) => p.attributes["error.type"] === "22012")!
      assert.strictEqual((ok.value as { count: number }).count, 5)
      assert.strictEqual((failed.value as { count: number }).count, 1)
      // The pool's refusals under its error's name, not as the ConnectionError they are wrapped in.
      const refused = selects.find((p) => p.attributes["error.type"] === "PoolTimeoutError")
      assert.strictEqual((refused?.value as { count: number } | undefined)?.count, 3)
      assert.isUndefined(selects.find((p) => p.attributes["error.type"] === "ConnectionError"))
      assert.include(ok.attributes, { "db.system.name": "postgresql", ...pool })

      const rejections = find(all, "meshhook.pool.rejections")
      assert.include(rejections.dataPoints.find((p) => p.attributes["meshhook.pool.rejection.reason"] === "timeout")!, { value: 3 })
    } finally {
      await runtime.dispose()
    }
  }, 30_000)

  it("every counter and gauge of a pool exists from its start, at 0 (the limit at max), under the pool's name", async () => {
    const { collect, runtime } = await instrumented({ name: "quiet-test", max: 3 })
    try {
      const all = await collect()
      const pool = { "db.client.connection.pool.name": "quiet-test" }
      const each = (name: string, attribute: string, values: ReadonlyArray<string>) =>
        values.map((value) => [name, { [attribute]: value }] as const)
      const zero = [
        ["db.client.connection.timeouts", {}] as const,
        ["meshhook.pool.leaks", {}] as const,
        ["meshhook.pool.circuit.open", {}] as const,
        ["meshhook.pool.notifications.gaps", {}] as const,
        ...each("meshhook.pool.rejections", "meshhook.pool.rejection.reason", ["saturated", "tenant_quota", "circuit_open", "timeout"]),
        ...each("meshhook.pool.limit.changes", "meshhook.pool.limit.change", ["trial_down", "trial_up", "revert", "refused"]),
        ...each("meshhook.pool.retries", "meshhook.pool.retry.kind", ["idempotent", "transaction"])
      ]
      for (const [name, attributes] of zero) assert.strictEqual(valueOf(all, name, { ...pool, ...attributes }), 0, name)
      assert.strictEqual(valueOf(all, "meshhook.pool.connection.limit", pool), 3)
    } finally {
      await runtime.dispose()
    }
  }, 30_000)

  it("spans: a transaction under a tenant, with the tenant hashed and no parameters or secrets anywhere", async () => {
    const { runtime, spans } = await instrumented({ name: "spans-test", max: 1, tenantTelemetry: "hashed" })
    try {
      await runtime.runPromise(Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* Tenant.with("project-42")(sql.withTransaction(Effect.gen(function*() {
          yield* sql`SELECT ${secret}::text AS a`
          yield* sql`SELECT ${secret}::text AS b`
        })))
      }).pipe(Effect.withSpan("job")))
      const finished: ReadonlyArray<ReadableSpan> = spans.getFinishedSpans()
      const job = finished.find((s) => s.name === "job")!
      const transaction = finished.find((s) => s.name === "sql.transaction")!
      const statements = finished.filter((s) => s.attributes["db.query.text"] !== undefined)
      assert.strictEqual(transaction.parentSpanContext?.spanId, job.spanContext().spanId)
      assert.strictEqual(statements.length, 2)
      for (const statement of statements) {
        // OpenTelemetry's database span name: `{db.operation.name} {target}`.
        assert.strictEqual(statement.name, `SELECT ${new URL(databaseUrl()).pathname.slice(1)}`)
        assert.strictEqual(statement.parentSpanContext?.spanId, transaction.spanContext().spanId)
        assert.strictEqual(statement.kind, 2 /* SpanKind.CLIENT */)
        assert.include(statement.attributes, {
          "db.system.name": "postgresql",
          "db.operation.name": "SELECT",
          "server.address": "127.0.0.1",
          "db.client.connection.pool.name": "spans-test"
        })
        assert.match(String(statement.attributes["db.query.text"]), /\$1/)
        assert.match(String(statement.attributes["meshhook.tenant"]), /^[0-9a-f]{16}$/)
      }
      const everything = JSON.stringify(finished.map((s) => [s.attributes, s.events]))
      assert.notInclude(everything, secret)
      assert.notInclude(everything, "project-42")
      assert.notInclude(everything, Redacted.value(Redacted.make(new URL(databaseUrl()).password)))
    } finally {
      await runtime.dispose()
    }
  }, 30_000)

  it("a caller who waits gets a wait span; a failed statement carries its SQLSTATE", async () => {
    const { runtime, spans } = await instrumented({ name: "wait-test", max: 1 })
    try {
      await runtime.runPromise(Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const holder = yield* Effect.forkChild(Effect.scoped(Effect.andThen(sql.reserve, Effect.sleep(100))))
        yield* Effect.sleep(20)
        yield* sql`SELECT 1`
        yield* Fiber.join(holder)
        yield* Effect.exit(sql`SELECT 1/0`)
      }))
      const finished = spans.getFinishedSpans()
      const wait = finished.find((s) => s.name === "db.client.connection.wait")
      assert.isDefined(wait)
      assert.include(wait!.attributes, { "db.client.connection.pool.name": "wait-test", "meshhook.pool.queue_position": 1 })
      const failed = finished.find((s) => s.attributes["db.response.status_code"] !== undefined)!
      assert.include(failed.attributes, { "db.response.status_code": "22012", "error.type": "22012" })
    } finally {
      await runtime.dispose()
    }
  }, 30_000)
})

describe("telemetry of failures", () => {
  it("retries and refusals are span events and counted; logs name the pool and never the password", async () => {
    const password = new URL(databaseUrl()).password
    const logs: Array<string> = []
    const { collect, runtime, spans } = await instrumented({ name: "events-test", max: 1, acquireTimeout: 50 })
    const capture = Logger.layer([Logger.make((options) => void logs.push(JSON.stringify(options.message) + JSON.stringify(options.fiber.getRef(References.CurrentLogAnnotations))))])
    try {
      await runtime.runPromise(Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        let attempts = 0
        yield* Retry.idempotent(Effect.suspend(() =>
          ++attempts === 1
            ? Effect.fail(new SqlError({ reason: new ConnectionError({ cause: new Error("reset"), message: "reset" }) }))
            : sql`SELECT 1`
        )).pipe(Effect.withSpan("retried"))
        const holder = yield* Effect.forkChild(Effect.scoped(Effect.andThen(sql.reserve, Effect.never)))
        yield* Effect.sleep(20)
        yield* Effect.exit(sql`SELECT 1`)
        yield* Fiber.interrupt(holder)
        // A session-level SET makes the pool close the connection and say so in a log line.
        yield* Effect.scoped(Effect.flatMap(sql.reserve, (conn) => conn.executeRaw("SET work_mem = '8MB'", [])))
      }).pipe(Effect.provide(capture)))
      const finished = spans.getFinishedSpans()
      const retried = finished.find((s) => s.name === "retried")!
      assert.deepInclude(retried.events.map((e) => [e.name, e.attributes]), ["meshhook.pool.retry", { kind: "idempotent", failure: "ConnectionError" }])
      const refused = finished.find((s) => s.events.some((e) => e.name === "meshhook.pool.refused"))
      assert.strictEqual(refused?.events.find((e) => e.name === "meshhook.pool.refused")?.attributes?.reason, "PoolTimeoutError")
      assert.strictEqual(refused?.attributes["error.type"], "PoolTimeoutError")
      const all = await collect()
      // The retry ran on the pool's layer: it is counted under the pool's name.
      const retries = { "db.client.connection.pool.name": "events-test", "meshhook.pool.retry.kind": "idempotent" }
      assert.strictEqual(valueOf(all, "meshhook.pool.retries", retries), 1)
      const warning = logs.find((l) => l.includes("session state"))
      assert.isDefined(warning)
      assert.include(warning!, "events-test")
      assert.notInclude(logs.join("\n"), password)
    } finally {
      await runtime.dispose()
    }
  }, 30_000)
})

/** An OTLP/HTTP receiver on loopback: keeps every JSON body posted to it, by path. */
const receiver = () =>
  new Promise<{ readonly url: string; readonly received: Map<string, Array<any>>; readonly close: () => Promise<void> }>(
    (resolve) => {
      const received = new Map<string, Array<any>>()
      const server = Http.createServer((request, response) => {
        let body = ""
        request.on("data", (chunk) => body += chunk)
        request.on("end", () => {
          const list = received.get(request.url ?? "") ?? []
          list.push(JSON.parse(body))
          received.set(request.url ?? "", list)
          response.writeHead(200, { "content-type": "application/json" }).end("{}")
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as import("node:net").AddressInfo
        resolve({ url: `http://127.0.0.1:${port}`, received, close: () => new Promise((done) => server.close(() => done())) })
      })
    }
  )

describe("OTLP export", () => {
  it.live("an endpoint where nothing listens is reported through the program's logger, and closing does not fail", () =>
    Effect.gen(function*() {
      // A port that was free a moment ago: nothing listens on it.
      const server = Http.createServer()
      yield* Effect.promise(() => new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve)))
      const port = (server.address() as { port: number }).port
      yield* Effect.promise(() => new Promise<void>((resolve) => server.close(() => resolve())))
      const logs: Array<string> = []
      const capture = Logger.layer([Logger.make((options) => void logs.push(String(options.message)))])
      const closed = yield* Effect.exit(Effect.scoped(Effect.gen(function*() {
        yield* Layer.build(Observability.layer({ endpoint: `http://127.0.0.1:${port}`, metricsIntervalMillis: 100 }))
        yield* Effect.void.pipe(Effect.withSpan("dropped"))
        yield* eventually(Effect.sync(() => logs.some((line) => line.includes("/v1/metrics"))), 10_000)
      })).pipe(Effect.provide(capture)))
      assert.isTrue(Exit.isSuccess(closed), String(closed))
      const warning = logs.find((line) => line.includes(`http://127.0.0.1:${port}/v1/metrics`))
      assert.match(warning ?? logs.join("\n"), /Exporting metrics to http:\/\/127\.0\.0\.1:\d+\/v1\/metrics failed: .*ECONNREFUSED/)
    }), 30_000)

  it.live("a MeshHook job's trace and the pool's metrics reach an OTLP/HTTP receiver", () =>
    Effect.gen(function*() {
      const otlp = yield* Effect.promise(receiver)
      yield* Effect.addFinalizer(() => Effect.promise(otlp.close))
      const exporting = Observability.layer({ endpoint: otlp.url, serviceName: "meshhook-test", metricsIntervalMillis: 300 })
      const ran = yield* Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(Layer.provideMerge(workerPool({ name: "otlp-test" }), exporting))
        const done = yield* Worker.runJob(Effect.sleep(5)).pipe(Effect.withSpan("meshhook.job"), Effect.provide(context))
        yield* Effect.sleep(700)
        return done
      }).pipe(Effect.provide(Layer.empty)))
      assert.isTrue(ran)
      const traces = otlp.received.get("/v1/traces") ?? []
      const spans = traces.flatMap((t) => t.resourceSpans.flatMap((r: any) => r.scopeSpans.flatMap((s: any) => s.spans)))
      const job = spans.find((s: any) => s.name === "meshhook.job")
      assert.isDefined(job, `spans: ${spans.map((s: any) => s.name).join(", ")}`)
      const children = spans.filter((s: any) => s.parentSpanId === job.spanId)
      assert.isAtLeast(children.filter((s: any) => s.name === "sql.transaction").length, 2)
      const statements = spans.filter((s: any) => s.traceId === job.traceId && s.attributes?.some((a: any) => a.key === "db.query.text"))
      assert.isAtLeast(statements.length, 5)
      assert.isTrue(yield* eventually(Effect.sync(() => (otlp.received.get("/v1/metrics") ?? []).length > 0), 5_000))
      const metricNames = new Set((otlp.received.get("/v1/metrics") ?? []).flatMap((m) =>
        m.resourceMetrics.flatMap((r: any) => r.scopeMetrics.flatMap((s: any) => s.metrics.map((x: any) => x.name)))
      ))
      for (const name of ["db.client.connection.count", "db.client.connection.wait_time", "db.client.operation.duration"]) {
        assert.isTrue(metricNames.has(name), `${name} in ${[...metricNames].join(", ")}`)
      }
    }).pipe(Effect.provide(MeshHookDb.layer({ tenants: 3, runsPerTenant: 2 }))), 60_000)

  it.live("sampling keeps whole traces: some of 40 at a ratio of 0.5, each with its statements, and no orphan spans", () =>
    Effect.gen(function*() {
      const otlp = yield* Effect.promise(receiver)
      yield* Effect.addFinalizer(() => Effect.promise(otlp.close))
      const exporting = Observability.layer({ endpoint: otlp.url, traceSampleRatio: 0.5, metrics: false })
      yield* Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(Layer.provideMerge(workerPool({ name: "sampling-test" }), exporting))
        yield* Effect.forEach(
          Array.from({ length: 40 }, (_, i) => i),
          (i) =>
            Effect.gen(function*() {
              const sql = yield* SqlClient.SqlClient
              yield* Tenant.unscoped(sql`SELECT ${i}::int AS n`, "sampling test")
            }).pipe(Effect.withSpan(`job-${i}`), Effect.provide(context)),
          { concurrency: 8 }
        )
      }))
      const spans = (otlp.received.get("/v1/traces") ?? []).flatMap((t) =>
        t.resourceSpans.flatMap((r: any) => r.scopeSpans.flatMap((s: any) => s.spans))
      )
      const roots = spans.filter((s: any) => s.name.startsWith("job-"))
      assert.isAbove(roots.length, 0)
      assert.isBelow(roots.length, 40)
      const rootIds = new Set(roots.map((s: any) => s.spanId))
      const statements = spans.filter((s: any) => !s.name.startsWith("job-"))
      assert.strictEqual(statements.length, roots.length, "one statement span per kept job")
      for (const statement of statements) assert.isTrue(rootIds.has(statement.parentSpanId), "no orphan statement span")
    }).pipe(Effect.provide(MeshHookDb.layer({ tenants: 1, runsPerTenant: 1 }))), 60_000)

  it.live("otelContext makes Effect's span the active OpenTelemetry span, for libraries instrumented with the API", () =>
    Effect.gen(function*() {
      const otlp = yield* Effect.promise(receiver)
      yield* Effect.addFinalizer(() => Effect.promise(otlp.close))
      Otel.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())
      yield* Effect.addFinalizer(() => Effect.sync(() => Otel.context.disable()))
      const activeInside = (otelContext: boolean) =>
        Effect.scoped(Effect.gen(function*() {
          const context = yield* Layer.build(Observability.layer({ endpoint: otlp.url, metrics: false, otelContext }))
          return yield* Effect.gen(function*() {
            const span = yield* Effect.currentSpan
            const active = Otel.trace.getSpan(Otel.context.active())?.spanContext().spanId
            return { effect: span.spanId, active }
          }).pipe(Effect.withSpan("outer"), Effect.provide(context))
        }))
      const bridged = yield* activeInside(true)
      assert.strictEqual(bridged.active, bridged.effect)
      const plain = yield* activeInside(false)
      assert.isUndefined(plain.active)
    }), 30_000)
})
