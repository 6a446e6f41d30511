/**
 * The live view without a browser or a database: the figures (rates from
 * counter growth, percentiles from histogram bucket growth) from readings
 * of the pool's real metrics, and the server on the in-memory pool: what it
 * answers, to whom, where it listens, and that closing its scope closes it.
 * test/dashboard.pg.test.ts has the page in a real browser.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import { createHash } from "node:crypto"
import * as Http from "node:http"
import * as Net from "node:net"
import * as Dashboard from "../src/Dashboard.ts"
import * as Readings from "../src/internal/dashboard/readings.ts"
import type { Stats } from "../src/internal/engine/engine.ts"
import * as Telemetry from "../src/internal/telemetry.ts"
import * as Tenant from "../src/Tenant.ts"
import { PoolTest } from "../src/testing/index.ts"

const stats = (changes: Partial<Stats> = {}): Stats => ({
  total: 2,
  idle: 1,
  used: 1,
  pending: 0,
  creating: 0,
  min: 0,
  max: 4,
  limit: 4,
  circuit: "closed",
  checkouts: 0,
  checkoutWaitMillis: 0,
  tenantsWaiting: [],
  ...changes
})

const reading = (changes: Partial<Readings.Reading> = {}): Readings.Reading => ({
  at: 0,
  stats: stats(),
  statements: 0,
  statementErrors: 0,
  rejections: {},
  jobs: undefined,
  wait: Readings.emptyDistribution,
  statement: Readings.emptyDistribution,
  ...changes
})

const setting: Readings.Setting = { pool: "p", sizing: "fixed", tenantNames: "hashed", topTenants: 3 }

describe("the live view's figures", () => {
  it("a quantile is interpolated within its bucket, and is the last bound beyond it", () => {
    const distribution = { buckets: [[1, 0], [2, 10], [4, 20]] as const, count: 20 }
    assert.strictEqual(Readings.quantile(distribution, 0.25), 1.5)
    assert.strictEqual(Readings.quantile(distribution, 0.5), 2)
    assert.strictEqual(Readings.quantile(distribution, 0.75), 3)
    assert.strictEqual(Readings.quantile({ buckets: [[1, 0], [2, 0]], count: 5 }, 0.5), 2)
    assert.strictEqual(Readings.quantile({ buckets: [[1, 0], [2, 0]], count: 0 }, 0.5), undefined)
  })

  it.effect("percentiles from an Effect histogram's buckets are within a bucket of the exact ones", () =>
    Effect.gen(function*() {
      const histogram = Metric.histogram("latency", { boundaries: Metric.linearBoundaries({ start: 10, width: 10, count: 100 }) })
      // 1..1000, shuffled: the exact p50 is 500, p95 950, p99 990.
      const values = Array.from({ length: 1000 }, (_, i) => i + 1).sort(() => Math.random() - 0.5)
      for (const value of values) yield* Metric.update(histogram, value)
      const state = yield* Metric.value(histogram)
      for (const [q, exact] of [[0.5, 500], [0.95, 950], [0.99, 990]] as const) {
        const estimate = Readings.quantile(state, q)!
        assert.isAtMost(Math.abs(estimate - exact), 10, `p${q * 100}: ${estimate}`)
      }
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map())))

  it("an interval's distribution is the growth of each bucket; a series new in it counts from zero", () => {
    const before = { buckets: [[1, 3], [2, 5]] as const, count: 6 }
    const after = { buckets: [[1, 4], [2, 9]] as const, count: 12 }
    assert.deepStrictEqual(Readings.since(before, after), { buckets: [[1, 1], [2, 4]], count: 6 })
    assert.deepStrictEqual(Readings.since(Readings.emptyDistribution, after), after)
  })

  it("rates are growth per second; a total that went back counts from zero", () => {
    assert.strictEqual(Readings.perSecond(100, 250, 1.5), 100)
    assert.strictEqual(Readings.perSecond(100, 40, 2), 20)
    assert.strictEqual(Readings.perSecond(1, 2, 0), 0)
  })

  it("a frame: counts now, rates and percentiles over the interval, the top tenants", () => {
    const waits = { buckets: [[0.001, 0], [0.01, 4]] as const, count: 4 }
    const before = reading({ at: 1_000, statements: 100, jobs: 10, rejections: { saturated: 2 }, stats: stats({ checkouts: 50 }) })
    const tenantsWaiting = ["#a", "#b", "#c", "#d"].map((tenant, i) => ({ tenant, waiting: 9 - i }))
    const after = reading({
      at: 3_000,
      statements: 300,
      statementErrors: 4,
      jobs: 30,
      rejections: { saturated: 6, timeout: 2 },
      wait: waits,
      stats: stats({ checkouts: 150, pending: 30, tenantsWaiting })
    })
    const frame = Readings.frame(before, after, setting)
    assert.deepStrictEqual(frame.perSecond, {
      jobs: 10,
      statements: 100,
      statementErrors: 2,
      checkouts: 50,
      rejections: { saturated: 2, timeout: 1 }
    })
    assert.deepStrictEqual(frame.waitMillis, { p50: 5.5, p95: 9.55, p99: 9.91 })
    assert.strictEqual(frame.statementMillis, null)
    assert.deepStrictEqual(frame.tenantsWaiting.map((t) => t.tenant), ["#a", "#b", "#c"])
    assert.strictEqual(frame.waiting, 30)
    assert.strictEqual(Readings.frame(reading(), reading({ at: 1_000 }), setting).perSecond.jobs, null)
  })

  it.effect("reads one pool's series from the registry, as the pool's recorder writes them", () =>
    Effect.gen(function*() {
      const context = yield* Effect.context<never>()
      const recorder = (poolName: string) =>
        Telemetry.make({ poolName, tenantTelemetry: "hashed", tenantMetricsLimit: 10, context, operationAttributes: {} })
      const ours = recorder("ours")
      const theirs = recorder("theirs")
      ours.operation("SELECT", 0.002, undefined)
      ours.operation("INSERT", 0.004, undefined)
      ours.operation("SELECT", 0.2, "SqlError")
      ours.acquired("t1", 3)
      ours.rejected("saturated", "t1")
      ours.rejected("timeout", "t1")
      theirs.operation("SELECT", 1, undefined)
      theirs.acquired("t1", 5)
      const read = Readings.read({ at: 0, stats: stats(), snapshots: yield* Metric.snapshot, poolName: "ours", jobs: 7 })
      assert.strictEqual(read.statements, 3)
      assert.strictEqual(read.statementErrors, 1)
      assert.strictEqual(read.wait.count, 1)
      assert.strictEqual(read.statement.count, 3)
      // Reasons that never occurred may have series of zeros.
      assert.deepStrictEqual(Object.entries(read.rejections).filter(([, n]) => n > 0), [["saturated", 1], ["timeout", 1]])
      assert.strictEqual(read.jobs, 7)
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map())))
})

interface Answer {
  readonly status: number
  readonly headers: Http.IncomingHttpHeaders
  readonly body: string
}

/** One request, with headers of our own (fetch will not send another `Host`). */
const request = (url: string, options: Http.RequestOptions = {}) =>
  Effect.callback<Answer, Error>((resume) => {
    const sent = Http.request(url, options, (response) => {
      let body = ""
      response.setEncoding("utf8").on("data", (chunk) => body += chunk)
      response.on("end", () => resume(Effect.succeed({ status: response.statusCode ?? 0, headers: response.headers, body })))
    })
    sent.on("error", (error) => resume(Effect.fail(error)))
    sent.end()
    return Effect.sync(() => sent.destroy())
  })

/** Follows the feed until a frame satisfies `until`; the stream is closed after. */
const frameWhere = (url: string, until: (frame: Readings.Frame) => boolean) =>
  Effect.callback<Readings.Frame, Error>((resume) => {
    const sent = Http.get(new URL("events", url), (response) => {
      let buffer = ""
      response.setEncoding("utf8").on("data", (chunk: string) => {
        buffer += chunk
        for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
          const event = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          if (!event.startsWith("data: ")) continue
          const frame = JSON.parse(event.slice(6)) as Readings.Frame
          if (until(frame)) resume(Effect.succeed(frame))
        }
      })
    })
    sent.on("error", (error) => resume(Effect.fail(error)))
    return Effect.sync(() => sent.destroy())
  }).pipe(Effect.timeout("5 seconds"))

/** The live view of an in-memory pool of its own, every 100 ms, for the life of the scope. */
const served = (options: Dashboard.Options = {}) =>
  Effect.gen(function*() {
    const name = `dash-${Math.random().toString(36).slice(2, 8)}`
    const context = yield* Layer.build(
      Dashboard.layer({ interval: "100 millis", ...options }).pipe(
        Layer.provideMerge(PoolTest.layer({ unmatched: "empty", pool: { name } }))
      )
    )
    return { name, dashboard: Context.get(context, Dashboard.Dashboard), sql: Context.get(context, SqlClient.SqlClient) }
  })

/** The error a failed effect failed with. */
const failure = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) =>
  Effect.map(Effect.exit(Effect.scoped(effect)), (exit) => {
    assert.isTrue(Exit.isFailure(exit), "expected a failure")
    return Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
  })

describe("the live view's server", () => {
  it.live("serves one self-contained page whose inline style and script its policy allows, and nothing else", () =>
    Effect.scoped(Effect.gen(function*() {
      const { url } = (yield* served()).dashboard
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/$/)
      const page = yield* request(url)
      assert.strictEqual(page.status, 200)
      assert.match(String(page.headers["content-type"]), /^text\/html/)
      // Nothing fetched from elsewhere: no URL (protocol-relative either), no src or href at all.
      assert.notMatch(page.body, /https?:|["'(=]\s*\/\/|\bsrc=|\bhref=|@import|url\(/)
      const policy = String(page.headers["content-security-policy"])
      assert.match(policy, /default-src 'none'/)
      for (const tag of ["style", "script"]) {
        const inline = new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`).exec(page.body)![1]
        assert.include(policy, `'sha256-${createHash("sha256").update(inline).digest("base64")}'`, tag)
      }
      assert.strictEqual((yield* request(new URL("other", url).href)).status, 404)
      assert.strictEqual((yield* request(url, { method: "POST" })).status, 405)
    })))

  it.live("the feed: a frame of this pool every interval, with the statements run in it", () =>
    Effect.scoped(Effect.gen(function*() {
      const { name, dashboard, sql } = yield* served()
      yield* Effect.forEach(["t1", "t2", "t1"], (tenant) => Tenant.with(sql`SELECT 1`, tenant), { discard: true })
      const frame = yield* frameWhere(dashboard.url, (frame) => frame.perSecond.statements > 0)
      assert.strictEqual(frame.pool, name)
      assert.strictEqual(frame.circuit, "closed")
      assert.strictEqual(frame.tenantNames, "hashed")
      assert.isNotNull(frame.statementMillis)
      assert.isNull(frame.perSecond.jobs)
      assert.isAtMost(frame.seconds, 1)
    })))

  it.live("jobs per second from the caller's own counter", () =>
    Effect.scoped(Effect.gen(function*() {
      const jobs = Metric.counter(`jobs-${Math.random()}`, { incremental: true })
      const { dashboard } = yield* served({ jobs })
      yield* Metric.update(jobs, 5)
      const frame = yield* frameWhere(dashboard.url, (frame) => (frame.perSecond.jobs ?? 0) > 0)
      assert.approximately(frame.perSecond.jobs!, 5 / frame.seconds, 0.01)
    })))

  it.live("answers only requests that name it by a loopback name: another name pointed at it (DNS rebinding) gets 403", () =>
    Effect.scoped(Effect.gen(function*() {
      const { url, port } = (yield* served()).dashboard
      assert.strictEqual((yield* request(url, { headers: { host: `attacker.example:${port}` } })).status, 403)
      assert.strictEqual((yield* request(new URL("events", url).href, { headers: { host: "attacker.example" } })).status, 403)
      assert.strictEqual((yield* request(url, { headers: { host: `localhost:${port}` } })).status, 200)
    })))

  it.live("refuses a host that is not loopback unless allowed, a bad port, a taken one and bad settings", () =>
    Effect.gen(function*() {
      for (const host of ["0.0.0.0", "192.0.2.1", "example.com", "::"]) {
        const error = yield* failure(served({ host }))
        assert.instanceOf(error, Dashboard.DashboardError, host)
        assert.match((error as Error).message, /not a loopback address/)
      }
      assert.match(String(yield* failure(served({ port: 70_000 }))), /whole number from 0 to 65535/)
      // A zero interval would spin; more than ten tenants, or a fraction of one, is not what the page shows.
      for (const interval of [0, "-1 second", "soon", "Infinity"] as ReadonlyArray<Duration.Input>) {
        assert.match(String(yield* failure(served({ interval }))), /interval must be/, String(interval))
      }
      for (const topTenants of [11, -1, 2.5, NaN]) {
        assert.match(String(yield* failure(served({ topTenants }))), /topTenants is a whole number/, String(topTenants))
      }
      yield* Effect.scoped(Effect.gen(function*() {
        const { port } = (yield* served()).dashboard
        assert.match(String(yield* failure(served({ port }))), /EADDRINUSE/)
      }))
      // Allowed, it listens where asked, and answers to any name.
      yield* Effect.scoped(Effect.gen(function*() {
        const { host, port } = (yield* served({ host: "0.0.0.0", allowRemote: true })).dashboard
        assert.strictEqual(host, "0.0.0.0")
        assert.strictEqual((yield* request(`http://127.0.0.1:${port}/`, { headers: { host: "worker-7:9465" } })).status, 200)
      }))
    }))

  it.live("listens only on the address asked for: another loopback address of the machine is refused", () =>
    Effect.scoped(Effect.gen(function*() {
      const { port } = (yield* served({ host: "127.0.0.1" })).dashboard
      assert.strictEqual((yield* request(`http://127.0.0.1:${port}/`)).status, 200)
      const error = yield* Effect.flip(request(`http://127.0.0.2:${port}/`))
      assert.match(error.message, /ECONNREFUSED/)
    })))

  it.live("closing the scope ends open streams and closes the server, without waiting for a request half sent", () =>
    Effect.scoped(Effect.gen(function*() {
      const scope = yield* Scope.make()
      const { url, port } = (yield* Scope.provide(served(), scope)).dashboard
      const stream = yield* openStream(url)
      yield* halfSentRequest(port)
      yield* Scope.close(scope, Exit.void).pipe(Effect.timeout("2 seconds"))
      yield* stream.ended.pipe(Effect.timeout("2 seconds"))
      const error = yield* Effect.flip(request(url))
      assert.match(error.message, /ECONNREFUSED/)
    })))
})

/** A connection that sends part of a request's headers and no more, for the scope; once the server has them. */
const halfSentRequest = (port: number) =>
  Effect.acquireRelease(
    Effect.callback<Net.Socket>((resume) => {
      const socket = Net.connect(port, "127.0.0.1", () =>
        socket.write("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n", () => resume(Effect.succeed(socket))))
    }),
    (socket) => Effect.sync(() => socket.destroy())
  ).pipe(Effect.tap(() => Effect.sleep(50))) // the server reads it on its next turn

/** A stream of the feed, open once its first bytes arrived; `ended` when the server ends it. */
const openStream = (url: string) =>
  Effect.callback<{ readonly ended: Effect.Effect<void> }, Error>((resume) => {
    const sent = Http.get(new URL("events", url), (response) => {
      const ended = Effect.callback<void>((done) => {
        if (response.complete) return done(Effect.void)
        response.once("end", () => done(Effect.void))
      })
      response.resume()
      response.once("data", () => resume(Effect.succeed({ ended })))
    })
    sent.on("error", (error) => resume(Effect.fail(error)))
  })
