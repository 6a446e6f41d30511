/**
 * Option validation, environment configuration and start-up failures.
 */
import { assert, describe, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as SqlClient from "effect/sql/SqlClient"
import * as Net from "node:net"
import { Observability } from "../src/otel/index.ts"
import * as Pool from "../src/Pool.ts"
import * as PoolConfig from "../src/PoolConfig.ts"
import { databaseUrl } from "./support/pg.ts"

const secret = "s3cr3t-Pa55"
const valid: PoolConfig.Options = { host: "127.0.0.1", username: "app", password: secret }

const configError = (options: PoolConfig.Options) =>
  Effect.flip(PoolConfig.resolve(options)).pipe(
    Effect.tap((error) => Effect.sync(() => assert.strictEqual(error._tag, "PoolConfigError")))
  )

describe("PoolConfig.resolve", () => {
  it.effect("fills in the defaults", () =>
    Effect.gen(function*() {
      const resolved = yield* PoolConfig.resolve({ url: `postgres://app:${secret}@db.internal:6432/meshhook` })
      assert.strictEqual(resolved.host, "db.internal")
      assert.strictEqual(resolved.port, 6432)
      assert.strictEqual(resolved.database, "meshhook")
      assert.strictEqual(resolved.username, "app")
      assert.strictEqual(resolved.max, PoolConfig.defaults.max)
      assert.strictEqual(resolved.acquireTimeout, PoolConfig.defaults.acquireTimeout)
      assert.strictEqual(resolved.maxUses, Infinity)
    }))

  it.effect("reads durations as milliseconds, Effect durations or short forms", () =>
    Effect.gen(function*() {
      const resolved = yield* PoolConfig.resolve({
        ...valid,
        acquireTimeout: 250,
        idleTimeout: "2 minutes",
        maxLifetime: "Infinity",
        shutdownTimeout: "1.5s",
        connectTimeout: "750 ms"
      })
      assert.strictEqual(resolved.acquireTimeout, 250)
      assert.strictEqual(resolved.idleTimeout, 120_000)
      assert.strictEqual(resolved.maxLifetime, Infinity)
      assert.strictEqual(resolved.shutdownTimeout, 1_500)
      assert.strictEqual(resolved.connectTimeout, 750)
    }))

  const cases: ReadonlyArray<readonly [string, PoolConfig.Options, string]> = [
    ["a URL that is not one", { url: "not a url" }, "url"],
    ["a URL with another scheme", { url: `mysql://app:${secret}@h/db` }, "url"],
    ["a URL with a bad port", { url: `postgres://app:${secret}@h/db?port=99999` }, "url"],
    ["an unknown sslmode in the URL", { url: `postgres://app:${secret}@h/db?sslmode=sometimes` }, "url"],
    ["an unknown ssl option", { ...valid, ssl: "sometimes" as never }, "ssl"],
    ["no host", { username: "app", password: secret }, "host"],
    ["a port out of range", { ...valid, port: 0 }, "port"],
    ["no username", { host: "h", password: secret }, "username"],
    ["min above max", { ...valid, min: 5, max: 2 }, "min"],
    ["a negative min", { ...valid, min: -1 }, "min"],
    ["a zero max", { ...valid, max: 0 }, "max"],
    ["a fractional max", { ...valid, max: 2.5 }, "max"],
    ["a zero maxConnecting", { ...valid, maxConnecting: 0 }, "maxConnecting"],
    ["a negative maxWaiting", { ...valid, maxWaiting: -1 }, "maxWaiting"],
    ["a zero maxUses", { ...valid, maxUses: 0 }, "maxUses"],
    ["a zero acquireTimeout", { ...valid, acquireTimeout: 0 }, "acquireTimeout"],
    ["a negative idleTimeout", { ...valid, idleTimeout: -5 }, "idleTimeout"],
    ["an infinite acquireTimeout", { ...valid, acquireTimeout: "Infinity" }, "acquireTimeout"],
    ["a duration that is not one", { ...valid, connectTimeout: "soon" as never }, "connectTimeout"],
    ["a zero initializationTimeout", { ...valid, initializationTimeout: 0 }, "initializationTimeout"],
    ["a zero shutdownTimeout", { ...valid, shutdownTimeout: 0 }, "shutdownTimeout"],
    ["a zero housekeepingInterval", { ...valid, housekeepingInterval: 0 }, "housekeepingInterval"],
    ["a jitter above one half", { ...valid, maxLifetimeJitter: 0.9 }, "maxLifetimeJitter"],
    ["a pool name with spaces", { ...valid, name: "my pool" }, "name"],
    ["an application name over 63 bytes", { ...valid, applicationName: "x".repeat(64) }, "applicationName"]
  ]
  const names: ReadonlyArray<readonly [string, Record<string, unknown>, string, RegExp]> = [
    ["a misspelt option", { ...valid, maxConnection: 8 }, "maxConnection", /did you mean maxConnections\?/],
    ["a key that is no option, whose value may be a secret", { ...valid, passwd: secret }, "passwd", /did you mean password\?/],
    ["a key far from every option", { ...valid, flux: 1 }, "flux", /^not an option of the pool$/],
    ["a PgClient name that says otherwise than the pool's own", { ...valid, max: 5, maxConnections: 8 }, "maxConnections", /max \(5\)/],
    ["multiplex: false beside a pipelineDepth above 1", { ...valid, multiplex: false, pipelineDepth: 8 }, "multiplex", /pipelineDepth/],
    [
      "pipelining behind a transaction-mode pooler, which may misframe it",
      { ...valid, behindPooler: "transaction", pipelineDepth: 16 },
      "pipelineDepth",
      /at most 1 behind a transaction-mode pooler/
    ],
    [
      "pipelining behind a pooler under PgClient's name",
      { ...valid, behindPooler: "transaction", multiplexConcurrency: 4 },
      "pipelineDepth",
      /at most 1 behind a transaction-mode pooler/
    ]
  ]
  for (const [what, options, field, reason] of names) {
    it.effect(`rejects ${what}, naming it`, () =>
      Effect.gen(function*() {
        const error = yield* configError(options as PoolConfig.Options)
        assert.strictEqual(error.field, field)
        assert.match(error.reason, reason)
        assert.notInclude(JSON.stringify(error), secret)
      }))
  }

  it.effect("reports every wrong option at once, not only the first", () =>
    Effect.gen(function*() {
      const error = yield* configError({ ...valid, min: -1, max: 0, pipelineDepth: 0, acquireTimeout: "soon" as never })
      assert.strictEqual(error.field, "min")
      assert.sameMembers((error.others ?? []).map((other) => other.field), ["max", "pipelineDepth", "acquireTimeout"])
      for (const field of ["min", "max", "pipelineDepth", "acquireTimeout"]) assert.include(error.message, `${field} = `)
    }))

  it.effect("reports a key that is no option and a wrong URL beside the other problems, showing neither", () =>
    Effect.gen(function*() {
      const error = yield* configError({
        url: `postgres://app:${secret}@h/db?sslmode=sometimes`,
        passwd: secret,
        retryBase: "2s",
        retryMax: "1s"
      } as PoolConfig.Options)
      assert.deepStrictEqual(
        [error, ...error.others ?? []].map(({ field, value }) => [field, value]),
        [["passwd", "<redacted>"], ["url", "<redacted>"], ["retryBase", "2000"]]
      )
      assert.match(error.message, /sslmode|SSL mode/)
      assert.match(error.message, /must not exceed retryMax \(1000\)/)
      assert.notInclude(JSON.stringify(error), secret)
    }))

  it.effect("reads PgClient's option names with the same meaning", () =>
    Effect.gen(function*() {
      const resolved = yield* PoolConfig.resolve({
        ...valid,
        maxConnections: 7,
        minConnections: 2,
        connectionTTL: "10 minutes",
        multiplexConcurrency: 4,
        startupParameters: { statement_timeout: "1234" },
        keepAlive: "30 seconds",
        spanAttributes: { service: "worker" }
      })
      assert.deepStrictEqual([resolved.max, resolved.min, resolved.maxLifetime, resolved.pipelineDepth], [7, 2, 600_000, 4])
      assert.deepStrictEqual(resolved.connection.startupParameters, { statement_timeout: "1234" })
      assert.strictEqual(resolved.connection.keepAlive, "30 seconds")
      assert.deepStrictEqual(resolved.spanAttributes, { service: "worker" })
      assert.strictEqual((yield* PoolConfig.resolve({ ...valid, multiplex: false })).pipelineDepth, 1)
      assert.strictEqual((yield* PoolConfig.resolve({ ...valid, ssl: true })).connection.ssl, true)
      assert.strictEqual((yield* PoolConfig.resolve({ ...valid, ssl: false })).connection.ssl, false)
      assert.strictEqual((yield* PoolConfig.resolve({ ...valid, max: 6, maxConnections: 6 })).max, 6)
    }))

  it.effect("matches tenantFormat against the whole id, the same way every time", () =>
    Effect.gen(function*() {
      const { checkTenant } = yield* PoolConfig.resolve({ ...valid, tenantFormat: /[a-z]+/g })
      assert.deepStrictEqual(["abc", "abc", "abc1", "1abc"].map((id) => checkTenant(id) === undefined), [
        true,
        true,
        false,
        false
      ])
      const error = yield* configError({ ...valid, tenantFormat: "x)|(?:y" as never })
      assert.strictEqual(error.field, "tenantFormat")
    }))

  it.effect("needs no password: the server says whether it wants one", () =>
    Effect.gen(function*() {
      const resolved = yield* PoolConfig.resolve({ url: "postgres://app@db.internal/meshhook" })
      assert.isUndefined(resolved.connection.password)
      const socket = yield* PoolConfig.resolve({ path: "/var/run/postgresql/.s.PGSQL.5432", username: "app" })
      assert.strictEqual(socket.connection.path, "/var/run/postgresql/.s.PGSQL.5432")
    }))

  for (const [what, options, field] of cases) {
    it.effect(`rejects ${what} naming ${field}`, () =>
      Effect.gen(function*() {
        const error = yield* configError(options)
        assert.strictEqual(error.field, field)
        assert.notInclude(error.message, secret)
        assert.notInclude(JSON.stringify(error), secret)
      }))
  }

  it.effect("never shows a URL it rejects, whatever its shape", () =>
    Effect.gen(function*() {
      const shapes = [
        `postgres://app:${secret}@h:99999/db`,
        `jdbc:postgresql://app:${secret}@h/db`,
        `postgres+ssl://app:${secret}@h/db`,
        `mysql://app:${secret}@h/db`,
        `postgres://app:${secret}@@h/db%zz`,
        `postgres://app:p@${secret}@h/db?port=0`,
        `postgres://h/db?password=${secret}&port=lots`,
        `postgres://h/db?password=${secret}&sslmode=sometimes`,
        `postgres://app:${secret}`,
        `${secret}`,
        `postgres://app:${encodeURIComponent(secret)}%@h/db`,
        ` postgres://app:${secret}@h/db`
      ]
      let rejected = 0
      for (const url of shapes) {
        // Some shapes still parse (the URL standard takes the last @): then the resolved options must not show it.
        const result = yield* Effect.result(PoolConfig.resolve({ url }))
        if (result._tag === "Failure") rejected++
        const shown = result._tag === "Failure"
          ? `${result.failure.message} ${JSON.stringify(result.failure)} ${String(result.failure)}`
          : JSON.stringify(result.success)
        assert.notInclude(shown, secret, url)
        assert.notInclude(shown, encodeURIComponent(secret), url)
      }
      assert.isAtLeast(rejected, shapes.length - 2)
    }))
})

describe("Pool.layerConfig", () => {
  const withEnv = (env: Record<string, string>) => Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnvRecord(env)))

  it.live("reads DATABASE_URL and PGPOOL_* from the environment", () =>
    Effect.gen(function*() {
      const pool = yield* Pool.Pool
      const sql = yield* SqlClient.SqlClient
      assert.strictEqual(pool.options.max, 3)
      assert.strictEqual(pool.options.acquireTimeout, 2_000)
      assert.strictEqual(pool.options.name, "from-env")
      const [row] = yield* sql<{ one: number }>`SELECT 1 AS one`
      assert.strictEqual(row.one, 1)
    }).pipe(Effect.provide(Pool.layerConfig().pipe(withEnv({
      DATABASE_URL: databaseUrl(),
      PGPOOL_MAX: "3",
      PGPOOL_ACQUIRE_TIMEOUT: "2s",
      PGPOOL_NAME: "from-env"
    })))))

  it.effect("a junk DATABASE_URL fails with a PoolConfigError that does not show it", () =>
    Effect.gen(function*() {
      for (const junk of [`jdbc:postgresql://app:${secret}@h/db`, `app:${secret}@h`, `postgres://h/db?password=${secret}&port=x`]) {
        const error = yield* Effect.flip(Layer.build(Pool.layerConfig().pipe(withEnv({ DATABASE_URL: junk }))))
        assert.strictEqual(error._tag, "PoolConfigError")
        assert.notInclude(`${error.message} ${JSON.stringify(error)}`, secret)
      }
    }))

  it.live("reports a variable not of its option's type by its name, and one out of range as the option it sets", () =>
    Effect.gen(function*() {
      const build = (max: string) =>
        Effect.flip(Layer.build(Pool.layerConfig().pipe(withEnv({ DATABASE_URL: databaseUrl(), PGPOOL_MAX: max }))))
      const malformed = yield* build("lots")
      assert.strictEqual(malformed._tag, "ConfigError")
      assert.include(malformed.message, "PGPOOL_MAX")
      const outOfRange = yield* build("0")
      assert.strictEqual(outOfRange._tag, "PoolConfigError")
      if (outOfRange._tag === "PoolConfigError") assert.strictEqual(outOfRange.field, "max")
    }))
})

describe("Observability options", () => {
  const failure = (layer: Layer.Layer<never, unknown>) =>
    Effect.scoped(Effect.flip(Layer.build(layer))) as Effect.Effect<{ _tag: string; field?: string; message: string }>

  it.effect("an option out of range fails the layer with a PoolConfigError naming it", () =>
    Effect.gen(function*() {
      for (
        const [options, field] of [
          [{ traceSampleRatio: 1.5 }, "traceSampleRatio"],
          [{ traceSampleRatio: Number.NaN }, "traceSampleRatio"],
          [{ metricsIntervalMillis: 0 }, "metricsIntervalMillis"],
          [{ prometheusPort: 70_000 }, "prometheusPort"],
          [{ endpoint: "not a url with secret-token" }, "endpoint"]
        ] as const
      ) {
        const error = yield* failure(Observability.layer(options))
        assert.strictEqual(error._tag, "PoolConfigError")
        assert.strictEqual(error.field, field)
        assert.notInclude(error.message, "secret-token")
      }
    }))

  it.effect("reads its options from the environment, and reports a bad one", () =>
    Effect.gen(function*() {
      const error = yield* failure(Observability.layerConfig().pipe(
        Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnvRecord({ PGPOOL_TRACE_SAMPLE_RATIO: "-0.5" })))
      ))
      assert.strictEqual(error.field, "traceSampleRatio")
    }))
})

/** A loopback port with nothing listening on it. */
const closedPort = Effect.promise(() =>
  new Promise<number>((resolve) => {
    const server = Net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address() as Net.AddressInfo
      server.close(() => resolve(port))
    })
  })
)

describe("start-up against a real server", () => {
  it.live("fails with DatabaseUnavailableError after initializationTimeout when nothing listens", () =>
    Effect.gen(function*() {
      const port = yield* closedPort
      const error = yield* Effect.flip(Layer.build(Pool.layer({ ...valid, port, initializationTimeout: 400 })))
      assert.strictEqual(error._tag, "DatabaseUnavailableError")
      if (error._tag === "DatabaseUnavailableError") {
        assert.isAbove(error.attempts, 1)
        assert.include(error.message, "initializationTimeout")
        assert.notInclude(error.message, secret)
      }
    }))

  it.live("fails at once with DatabaseUnavailableError on a wrong password, without printing it", () =>
    Effect.gen(function*() {
      const url = new URL(databaseUrl())
      url.password = secret
      const started = Date.now()
      const error = yield* Effect.flip(Layer.build(Pool.layer({ url: Redacted.make(url.toString()) })))
      assert.strictEqual(error._tag, "DatabaseUnavailableError")
      if (error._tag === "DatabaseUnavailableError") {
        assert.strictEqual(error.attempts, 1)
        assert.include(error.message, "28P01")
        assert.notInclude(error.message, secret)
      }
      assert.isBelow(Date.now() - started, 5_000)
    }))
})
