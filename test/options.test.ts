/**
 * The table of options (src/internal/options/options.ts) against what is derived
 * from it: the reference page, the defaults, the environment variables, and
 * the one set of duration forms, in code and in the environment.
 */
import { assert, describe, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Result from "effect/Result"
import * as Fs from "node:fs"
import { found, page, shownDefault, written } from "../docs/optionsReference.ts"
import { specs, table } from "../src/internal/options/options.ts"
import { Observability } from "../src/otel/index.ts"
import * as PoolConfig from "../src/PoolConfig.ts"

const target = { host: "127.0.0.1", username: "app" } satisfies PoolConfig.Options

const fromEnv = (env: Record<string, string>) => PoolConfig.config().parse(ConfigProvider.fromEnv({ env }))

// Compile time: the table has the keys of `PoolConfig.Options`, no more and no fewer.
type Same<A, B> = [A] extends [B] ? [B] extends [A] ? true : false : false
const sameKeys: Same<keyof typeof table, keyof PoolConfig.Options> = true

describe("the table of options", () => {
  it("has one record per option of PoolConfig.Options", () => {
    assert.isTrue(sameKeys)
  })

  it("gives every resolved option its default", () =>
    Effect.gen(function*() {
      const resolved: Readonly<Record<string, unknown>> = { ...yield* PoolConfig.resolve(target) }
      const compared = Object.entries(PoolConfig.defaults).filter(([field]) => field in resolved && field !== "fairness")
      assert.isAbove(compared.length, 40)
      for (const [field, value] of compared) {
        const expected = Result.getOrThrow(table[field as keyof typeof table].kind.check(value))
        assert.deepStrictEqual(resolved[field], expected, field)
      }
    }).pipe(Effect.runSync))

  it("reads every variable set to its default, as the reference writes it, as that default", () =>
    Effect.gen(function*() {
      const written = specs.flatMap(([field, spec]) =>
        spec.env === undefined || spec.default === undefined ? [] : [[field, spec.env, spec.kind.show(spec.default)]]
      )
      const read = yield* fromEnv(Object.fromEntries(written.map(([, name, value]) => [name, value])))
      assert.sameMembers(Object.keys(read), written.map(([field]) => field))
      const comparable = (resolved: PoolConfig.Resolved) =>
        JSON.stringify(resolved, (_, value) => typeof value === "number" && !Number.isFinite(value) ? `${value}` : value)
      assert.strictEqual(
        comparable(yield* PoolConfig.resolve({ ...read, ...target })),
        comparable(yield* PoolConfig.resolve(target))
      )
    }).pipe(Effect.runSync))
})

describe("the reference (docs/configuration.md)", () => {
  const text = Fs.readFileSync(page, "utf8")
  const rows = found(text).split("\n").filter((line) => line.startsWith("| `"))
    .map((line) => line.slice(2, -2).split(/ (?<!\\)\| /))

  it("has the options section the table writes (npm run docs:options rewrites it)", () => {
    assert.strictEqual(found(text), written(), "docs/configuration.md differs from the table: run npm run docs:options")
  })

  it("lists every option of the table once, with its variable and default, and no other", () => {
    assert.deepStrictEqual(rows.map(([option]) => option), specs.map(([field]) => `\`${field}\``))
    for (const [[option, variable, shown], [, spec]] of rows.map((row, i) => [row, specs[i]] as const)) {
      assert.strictEqual(variable, spec.env === undefined ? "–" : `\`${spec.env}\``, option)
      assert.strictEqual(shown, shownDefault(spec), option)
    }
  })

  it("names no environment variable that nothing reads", () => {
    const read = new Set([...Object.values(PoolConfig.environment), ...Object.values(Observability.environment)])
    const named = new Set(text.match(/\b(?:PG[A-Z_]*|DATABASE_URL|OTEL_[A-Z_]+)\b/g))
    for (const name of named) assert.isTrue(read.has(name as never), name)
  })
})

describe("durations", () => {
  // Each form the type takes is read as it says, from code and from the environment alike.
  const accepted: ReadonlyArray<readonly [PoolConfig.DurationInput, number]> = [
    [250, 250],
    ["250ms", 250],
    ["250 ms", 250],
    ["1.5s", 1_500],
    ["1.5 s", 1_500],
    ["2m", 120_000],
    ["1h", 3_600_000],
    ["1e3ms", 1_000],
    ["10 seconds", 10_000],
    ["2 minutes", 120_000],
    ["1 hour", 3_600_000],
    ["500 millis", 500],
    ["1 day", 86_400_000],
    [Duration.seconds(3), 3_000],
    [[1, 500_000_000], 1_500],
    [{ seconds: 2 }, 2_000],
    [2_000_000_000n, 2_000]
  ]
  // Each string the type refuses is refused when read, too.
  const refused: ReadonlyArray<string> = [
    // @ts-expect-error no unit: in code, milliseconds are a number
    "250" satisfies PoolConfig.DurationInput,
    // @ts-expect-error a unit no form has
    "10 sec" satisfies PoolConfig.DurationInput,
    // @ts-expect-error long units need the space
    "10seconds" satisfies PoolConfig.DurationInput,
    // @ts-expect-error units are lower case
    "10S" satisfies PoolConfig.DurationInput,
    // @ts-expect-error no number
    "soon" satisfies PoolConfig.DurationInput,
    // @ts-expect-error no number
    "s" satisfies PoolConfig.DurationInput,
    // @ts-expect-error Infinity takes no unit
    "Infinity ms" satisfies PoolConfig.DurationInput
  ]

  it("takes every form of PoolConfig.DurationInput, and nothing else", () =>
    Effect.gen(function*() {
      for (const [input, millis] of accepted) {
        assert.strictEqual((yield* PoolConfig.resolve({ ...target, acquireTimeout: input })).acquireTimeout, millis)
      }
      for (const input of refused) {
        const error = yield* Effect.flip(PoolConfig.resolve({ ...target, acquireTimeout: input as never }))
        assert.strictEqual(error.field, "acquireTimeout", input)
        assert.match(error.reason, /not a duration/)
      }
    }).pipe(Effect.runSync))

  it("reads the same strings from the environment, where a bare number is milliseconds", () =>
    Effect.gen(function*() {
      const strings = accepted.flatMap(([input, millis]) => typeof input === "string" ? [[input, millis] as const] : [])
      for (const [input, millis] of [...strings, ["250", 250] as const]) {
        const read = yield* fromEnv({ PGPOOL_ACQUIRE_TIMEOUT: input })
        assert.strictEqual((yield* PoolConfig.resolve({ ...target, ...read })).acquireTimeout, millis, input)
      }
      for (const input of refused.filter((input) => input !== "250")) {
        const error = yield* Effect.flip(fromEnv({ PGPOOL_ACQUIRE_TIMEOUT: input }))
        assert.include(error.message, "PGPOOL_ACQUIRE_TIMEOUT", input)
      }
    }).pipe(Effect.runSync))

  it("checks a duration's limits after its form: Infinity only where an option takes it", () =>
    Effect.gen(function*() {
      assert.strictEqual((yield* PoolConfig.resolve({ ...target, maxLifetime: "Infinity" })).maxLifetime, Infinity)
      const error = yield* Effect.flip(
        PoolConfig.resolve({ ...target, acquireTimeout: "Infinity", sizingInterval: "10ms", idleTimeout: "-5s" })
      )
      assert.deepStrictEqual(
        [error, ...error.others ?? []].map(({ field, reason }) => [field, reason]),
        [
          ["sizingInterval", "must be at least 50 ms"],
          ["acquireTimeout", "must be finite"],
          ["idleTimeout", "must be greater than zero"]
        ]
      )
    }).pipe(Effect.runSync))
})

describe("the environment", () => {
  it("reports every variable not of its option's type at once, by name and without its value", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(fromEnv({
        DATABASE_URL: "postgres://app:s3cr3t@db/x",
        PGPOOL_MAX: "lots",
        PGPOOL_ACQUIRE_TIMEOUT: "whenever",
        PGPOOL_SIZING: "huge",
        PGPOOL_PREPARE: "perhaps",
        PGPOOL_TENANT_FORMAT: "(unclosed"
      }))
      for (const name of ["PGPOOL_MAX", "PGPOOL_ACQUIRE_TIMEOUT", "PGPOOL_SIZING", "PGPOOL_PREPARE", "PGPOOL_TENANT_FORMAT"]) {
        assert.include(error.message, name)
      }
      for (const value of ["s3cr3t", "whenever", "huge", "perhaps", "(unclosed"]) assert.notInclude(error.message, value)
    }).pipe(Effect.runSync))

  it("reads each variable as its option's type", () =>
    Effect.gen(function*() {
      const read = yield* fromEnv({
        PGPORT: "6432",
        PGPOOL_MAX_USES: "Infinity",
        PGPOOL_REQUIRE_TENANT: "yes",
        PGPOOL_SIZING: "adaptive",
        PGPOOL_TENANT_FORMAT: "[a-z]+",
        PGPOOL_PRIORITY_WEIGHTS: "high=8"
      })
      assert.deepStrictEqual(
        { ...read, tenantFormat: String(read.tenantFormat) },
        {
          port: 6432,
          maxUses: Infinity,
          requireTenant: true,
          sizing: "adaptive",
          tenantFormat: "/[a-z]+/",
          priorityWeights: "high=8"
        }
      )
    }).pipe(Effect.runSync))

  it("reads a value with spaces around it, and infinity in any case, as env files and templates leave them", () =>
    Effect.gen(function*() {
      const read = yield* fromEnv({
        PGPOOL_MAX: " 20 ",
        PGPOOL_MAX_WAITING: "infinity",
        PGPOOL_TENANT_MAX_QUEUED: " INFINITY",
        PGPOOL_ACQUIRE_TIMEOUT: " 10s ",
        PGPOOL_MAX_LIFETIME: "infinity"
      })
      const resolved = yield* PoolConfig.resolve({ ...target, ...read })
      assert.deepStrictEqual(
        [resolved.max, resolved.maxWaiting, resolved.tenantMaxQueued, resolved.acquireTimeout, resolved.maxLifetime],
        [20, Infinity, Infinity, 10_000, Infinity]
      )
      const error = yield* Effect.flip(fromEnv({ PGPOOL_MAX: "  " }))
      assert.include(error.message, "PGPOOL_MAX")
    }).pipe(Effect.runSync))
})
