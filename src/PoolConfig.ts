/**
 * The pool's options: their defaults, their validation, and how they are read
 * from the environment.
 *
 * Validation happens once, when the layer is built, and every problem is a
 * {@link PoolConfigError} naming the option and the value (never the
 * password). See docs/configuration.md for the full reference.
 *
 * @since 0.1.0
 */
import type * as PgConnection from "@effect/sql-pg/PgConnection"
import type * as PgTypes from "@effect/sql-pg/PgTypes"
import * as OptionNames from "./internal/optionNames.ts"
import { searchPathOf } from "./internal/prologue.ts"
import type { FairnessOptions } from "./internal/scheduler.ts"
import * as Config from "effect/Config"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type { Duplex } from "node:stream"
import type { ConnectionOptions } from "node:tls"
import { PoolConfigError } from "./PoolError.ts"
import type * as Priority from "./Priority.ts"

/**
 * How to use TLS, with libpq's meanings: `disable` never; `prefer` when the
 * server offers it; `require` always, without checking the certificate;
 * `verify-ca` always, checking the certificate chain; `verify-full` always,
 * checking the chain and the host name.
 *
 * @since 0.1.0
 * @category models
 */
export type SslMode = "disable" | "prefer" | "require" | "verify-ca" | "verify-full"

const sslModes: ReadonlyArray<SslMode> = ["disable", "prefer", "require", "verify-ca", "verify-full"]

/**
 * Everything the pool can be told. Durations take a number of milliseconds
 * or an Effect duration (`"10 seconds"`). Only the connection target is
 * required: a `url`, or `host`, `username` and `password`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** `postgres://user:password@host:port/database?sslmode=...`; the fields below win over it. */
  readonly url?: string | Redacted.Redacted<string> | undefined
  readonly host?: string | undefined
  readonly port?: number | undefined
  readonly database?: string | undefined
  readonly username?: string | undefined
  /**
   * A password, or an effect that yields the current one at each connection
   * attempt (for rotated credentials). Optional: a server that asks for one
   * when none is given fails the connection with an authentication error.
   */
  readonly password?: string | Redacted.Redacted<string> | Effect.Effect<Redacted.Redacted<string>> | undefined
  /**
   * An {@link SslMode}, or Node TLS options for full control; `PgClient`'s
   * `true` and `false` mean `verify-full` and `disable`. Default: the URL's
   * `sslmode`, else `disable`.
   */
  readonly ssl?: SslMode | ConnectionOptions | boolean | undefined
  /** Shown in `pg_stat_activity`. Default `@meshhook/pool`. */
  readonly applicationName?: string | undefined
  /** A Unix-domain socket to connect through instead of TCP (then `host` is not needed). */
  readonly path?: string | undefined
  /** Session settings sent in every connection's startup packet, as `PgClient`'s option of the name. */
  readonly startupParameters?: Readonly<Record<string, string>> | undefined
  /** PostgreSQL's startup `options` string (`-c name=value ...`), as `PgClient`'s. */
  readonly startupOptions?: string | undefined
  /** Idle time before TCP keepalive probes start, as `PgClient`'s. */
  readonly keepAlive?: Duration.Input | undefined
  /** A custom transport instead of a socket (then `host` is not needed), as `PgClient`'s. */
  readonly stream?: (() => Duplex) | undefined
  /** Type parsers and serializers (`PgTypes.Registry`), for custom types. */
  readonly types?: PgTypes.Registry | undefined
  /** Largest message accepted from the server, in bytes. Default 16 MiB. */
  readonly maxMessageSize?: number | undefined
  /** Attributes added to every statement's span. */
  readonly spanAttributes?: Readonly<Record<string, unknown>> | undefined

  /** The pool's name in metrics, logs and traces. Default `default`. */
  readonly name?: string | undefined
  /** Connections kept open even when idle. Default 0. */
  readonly min?: number | undefined
  /** Connections open at most. Default 10. */
  readonly max?: number | undefined
  /** Connection attempts in flight at once, so a spike does not set off a storm of connects. Default 2. */
  readonly maxConnecting?: number | undefined
  /**
   * `adaptive`: the pool finds how many connections, between `min` and `max`,
   * bring throughput, and stays there (see docs/tuning.md); `fixed`: it opens
   * up to `max` whenever callers wait. Default `fixed`.
   */
  readonly sizing?: Sizing | undefined
  /** How often the adaptive pool measures and may change its limit. Default 1 s. */
  readonly sizingInterval?: Duration.Input | undefined
  /**
   * Lone statements (queries and DML, with a tenant or without) that one
   * connection carries at once, pipelined, each in its own implicit
   * transaction. `1` gives every statement a connection of its own. Default
   * 16; 1 with `behindPooler: "transaction"`, since a transaction-mode
   * pooler may move each transaction to another server connection and
   * PgBouncer 1.18 garbles transactions pipelined on one client connection
   * (measured: docs/scaling.md).
   */
  readonly pipelineDepth?: number | undefined
  /** Callers allowed to wait at once; past it, `PoolSaturatedError`. `Infinity` for no bound. Default 1000. */
  readonly maxWaiting?: number | undefined
  /** Longest a caller waits for a connection before `PoolTimeoutError`. Default 10 s. */
  readonly acquireTimeout?: Duration.Input | undefined
  /** Idle time after which a connection above `min` is closed. Default 60 s. */
  readonly idleTimeout?: Duration.Input | undefined
  /** Age at which a connection is closed once it is free; `"Infinity"` for none. Default 30 min. */
  readonly maxLifetime?: Duration.Input | undefined
  /** Up to this share of `maxLifetime` is randomly taken off each connection's, between 0 and 0.5. Default 0.1. */
  readonly maxLifetimeJitter?: number | undefined
  /** Checkouts after which a connection is closed; `Infinity` for no limit. Default `Infinity`. */
  readonly maxUses?: number | undefined
  /** Longest one connection attempt may take. Default 5 s. */
  readonly connectTimeout?: Duration.Input | undefined
  /**
   * Longest the client waits for a statement's answer before it gives up,
   * cancels, closes the connection and fails with `QueryTimeoutError`: the way
   * to notice a network partition. For slow queries prefer PostgreSQL's
   * `statement_timeout`. `"Infinity"` for none. Default none.
   */
  readonly queryTimeout?: Duration.Input | undefined
  /** How long start-up retries before failing with `DatabaseUnavailableError`. Default 30 s. */
  readonly initializationTimeout?: Duration.Input | undefined
  /** How long closing waits for lent connections to come back before closing them anyway. Default 10 s. */
  readonly shutdownTimeout?: Duration.Input | undefined
  /** How often idle connections are checked for `idleTimeout` and `maxLifetime`, and `min` refilled. Default 5 s. */
  readonly housekeepingInterval?: Duration.Input | undefined

  /** First pause between failed connection attempts; it doubles (with jitter) up to `connectRetryMax`. Default 50 ms. */
  readonly connectRetryBase?: Duration.Input | undefined
  /** Longest pause between failed connection attempts. Default 5 s. */
  readonly connectRetryMax?: Duration.Input | undefined
  /** A connection idle longer than this is proved with a round trip before it is lent. Default 1 s. */
  readonly validationThreshold?: Duration.Input | undefined
  /** Longest that proof may take before the connection counts as dead. Default 2 s. */
  readonly validationTimeout?: Duration.Input | undefined
  /** Idle connections are pinged this often (less up to a tenth), so nothing drops them unseen; `"Infinity"` for never. Default 60 s. */
  readonly keepaliveInterval?: Duration.Input | undefined
  /** A connection held alone longer than this is reported once, with where it was taken; `"Infinity"` for off. Default off. */
  readonly leakDetectionThreshold?: Duration.Input | undefined
  /** Failed connection attempts in a row, with no connection left, that open the circuit. Default 3. */
  readonly circuitBreakerThreshold?: number | undefined
  /** How often the probe tries to connect while the circuit is open. Default 1 s. */
  readonly circuitProbeInterval?: Duration.Input | undefined
  /** Attempts `Retry.idempotent` and `Retry.transaction` make in all. Default 4. */
  readonly retryAttempts?: number | undefined
  /** First pause between those attempts; it doubles (with jitter) up to `retryMax`. Default 20 ms. */
  readonly retryBase?: Duration.Input | undefined
  /** Longest pause between those attempts. Default 1 s. */
  readonly retryMax?: Duration.Input | undefined

  /**
   * Use named prepared statements (cached per connection). Default true;
   * false with `behindPooler: "transaction"` (PgBouncer before 1.21 cannot
   * carry them from one server connection to the next).
   */
  readonly prepare?: boolean | undefined
  /**
   * `transaction`: the pool talks to a transaction-mode pooler (PgBouncer,
   * Supavisor, the Supabase pooler), where consecutive transactions may run
   * on different server connections and session state left by one client is
   * seen by the next. No named prepared statements by default, and any
   * statement that could leave session state (`SET` without `LOCAL`,
   * `set_config(..., false)`, `LISTEN`, `PREPARE`, session advisory locks,
   * temporary tables, ...) is refused with `SessionStateNotAllowedError`
   * before it is sent. Default `none`. See docs/scaling.md.
   */
  readonly behindPooler?: BehindPooler | undefined
  /** Prepared statements kept per connection. Default 100. */
  readonly preparedStatementCacheSize?: number | undefined
  /** Renames result columns, e.g. `String.snakeToCamel`. */
  readonly transformResultNames?: ((name: string) => string) | undefined
  /** Renames identifiers in queries, e.g. `String.camelToSnake`. */
  readonly transformQueryNames?: ((name: string) => string) | undefined
  /** Apply the name transforms inside JSON values too. Default true. */
  readonly transformJson?: boolean | undefined

  /** The setting row-level security policies read the tenant from. Default `app.tenant_id`. */
  readonly tenantSetting?: string | undefined
  /** Refuse SQL outside `Tenant.with` and `Tenant.unscoped` with `TenantRequiredError`. Default false. */
  readonly requireTenant?: boolean | undefined
  /** Tenant ids allowed: `any`, `uuid`, or a regular expression (matched whole). Default `any`. */
  readonly tenantFormat?: "any" | "uuid" | RegExp | undefined
  /** Longest tenant id, in characters. Default 128. */
  readonly tenantMaxLength?: number | undefined
  /**
   * When to reset a connection's session before lending it again:
   * `suspect` after a lease that may have left session state (its statements'
   * text or command tags, the server's reported setting changes, or the
   * transaction prologue finding leftovers say so), `always` after every
   * lease (one more cycle each, and no connection sharing). The settings
   * isolation depends on (tenant, role, search_path) are checked by the
   * server in every transaction either way. Default `suspect`.
   */
  readonly sessionCheck?: SessionCheck | undefined
  /**
   * The schemas every transaction runs with, `pg_temp` always appended last
   * (so a temporary table never shadows a real one): a list, or
   * comma-separated. Default: the server's own `search_path` for the pool's
   * role and database, read once.
   */
  readonly searchPath?: ReadonlyArray<string> | string | undefined

  /**
   * Who is served first when callers wait: `tenant` takes turns across
   * tenants by weight (and across priority classes), first come first served
   * within a tenant; `fifo` serves everyone in arrival order. Default `tenant`.
   */
  readonly fairness?: "tenant" | "fifo" | undefined
  /** Weights of particular tenants (whole numbers, 1 to 1000); others weigh `defaultTenantWeight`. */
  readonly tenantWeights?: Readonly<Record<string, number>> | string | undefined
  /** The weight of a tenant not in `tenantWeights`, and of work without a tenant. Default 1. */
  readonly defaultTenantWeight?: number | undefined
  /** Weights of the priority classes. Default `{ high: 4, normal: 2, low: 1 }`. */
  readonly priorityWeights?: Partial<Readonly<Record<Priority.Level, number>>> | string | undefined
  /** Connections one tenant may hold at once; its further requests wait. Default `Infinity`. */
  readonly tenantMaxInUse?: number | undefined
  /** Requests one tenant may have waiting; past it, `TenantQuotaExceededError`. Default `Infinity`. */
  readonly tenantMaxQueued?: number | undefined

  /** How tenant ids appear in spans and metrics: `plain`, `hashed` (a stable 16-hex digest) or `off`. Default `hashed`. */
  readonly tenantTelemetry?: "plain" | "hashed" | "off" | undefined
  /** Distinct tenant values in the per-tenant metric series; the rest are counted as `other`. Default 100. */
  readonly tenantMetricsLimit?: number | undefined

  /** `PgClient`'s name for `max`. */
  readonly maxConnections?: number | undefined
  /** `PgClient`'s name for `min`. */
  readonly minConnections?: number | undefined
  /** `PgClient`'s name for `maxLifetime`. */
  readonly connectionTTL?: Duration.Input | undefined
  /** As `PgClient`'s: `false` gives every statement a connection of its own (`pipelineDepth: 1`); `true` is the default. */
  readonly multiplex?: boolean | undefined
  /** `PgClient`'s name for `pipelineDepth`. */
  readonly multiplexConcurrency?: number | undefined
}

/**
 * What sits between the pool and PostgreSQL; see `Options.behindPooler`.
 *
 * @since 0.1.0
 * @category models
 */
export type BehindPooler = "none" | "transaction"

/**
 * How the pool decides how many connections to open; see `Options.sizing`.
 *
 * @since 0.1.0
 * @category models
 */
export type Sizing = "fixed" | "adaptive"

/**
 * When the pool checks a returned connection for session state; see
 * `Options.sessionCheck`.
 *
 * @since 0.1.0
 * @category models
 */
export type SessionCheck = "suspect" | "always"

/**
 * Validated options, durations in milliseconds.
 *
 * @since 0.1.0
 * @category models
 */
export interface Resolved {
  readonly name: string
  readonly host: string
  readonly port: number
  readonly database: string
  readonly username: string
  readonly applicationName: string
  readonly min: number
  readonly max: number
  readonly maxConnecting: number
  readonly sizing: Sizing
  readonly sizingInterval: number
  readonly behindPooler: BehindPooler
  readonly pipelineDepth: number
  readonly maxWaiting: number
  readonly acquireTimeout: number
  readonly idleTimeout: number
  readonly maxLifetime: number
  readonly maxLifetimeJitter: number
  readonly maxUses: number
  readonly connectTimeout: number
  readonly queryTimeout: number
  readonly initializationTimeout: number
  readonly shutdownTimeout: number
  readonly housekeepingInterval: number
  readonly connectRetryBase: number
  readonly connectRetryMax: number
  readonly validationThreshold: number
  readonly validationTimeout: number
  readonly keepaliveInterval: number
  readonly leakDetectionThreshold: number
  readonly circuitBreakerThreshold: number
  readonly circuitProbeInterval: number
  readonly retryAttempts: number
  readonly retryBase: number
  readonly retryMax: number
  readonly prepare: boolean
  readonly transformResultNames: ((name: string) => string) | undefined
  readonly transformQueryNames: ((name: string) => string) | undefined
  readonly transformJson: boolean
  readonly tenantSetting: string
  readonly requireTenant: boolean
  /** Why `id` is not a valid tenant id, or `undefined` if it is. */
  readonly checkTenant: (id: string) => string | undefined
  readonly sessionCheck: SessionCheck
  /** The pinned `search_path` (with `pg_temp` last), or `undefined` to read the server's default on the first connection. */
  readonly searchPath: string | undefined
  readonly fairness: FairnessOptions
  readonly tenantMaxQueued: number
  readonly tenantTelemetry: "plain" | "hashed" | "off"
  readonly tenantMetricsLimit: number
  readonly spanAttributes: Readonly<Record<string, unknown>>
  /** What the driver is given for each physical connection; holds the password. */
  readonly connection: PgConnection.Config
}

/**
 * The defaults, for documentation and tests.
 *
 * @since 0.1.0
 * @category defaults
 */
export const defaults = {
  name: "default",
  port: 5432,
  applicationName: "@meshhook/pool",
  min: 0,
  max: 10,
  maxConnecting: 2,
  sizing: "fixed",
  sizingInterval: 1_000,
  behindPooler: "none",
  pipelineDepth: 16,
  maxWaiting: 1000,
  acquireTimeout: 10_000,
  idleTimeout: 60_000,
  maxLifetime: 30 * 60_000,
  maxLifetimeJitter: 0.1,
  maxUses: Infinity,
  connectTimeout: 5_000,
  queryTimeout: Infinity,
  initializationTimeout: 30_000,
  shutdownTimeout: 10_000,
  housekeepingInterval: 5_000,
  connectRetryBase: 50,
  connectRetryMax: 5_000,
  validationThreshold: 1_000,
  validationTimeout: 2_000,
  keepaliveInterval: 60_000,
  leakDetectionThreshold: Infinity,
  circuitBreakerThreshold: 3,
  circuitProbeInterval: 1_000,
  retryAttempts: 4,
  retryBase: 20,
  retryMax: 1_000,
  prepare: true,
  preparedStatementCacheSize: 100,
  tenantSetting: "app.tenant_id",
  requireTenant: false,
  tenantFormat: "any",
  tenantMaxLength: 128,
  sessionCheck: "suspect",
  fairness: "tenant",
  defaultTenantWeight: 1,
  priorityWeights: { high: 4, normal: 2, low: 1 },
  tenantMaxInUse: Infinity,
  tenantMaxQueued: Infinity,
  tenantTelemetry: "hashed",
  tenantMetricsLimit: 100
} as const

const maxWeight = 1000
const maxWeightedTenants = 10_000

/** Reads `name=weight,name=weight` (the environment's form of a weight table). */
const weightTable = (
  field: string,
  input: Readonly<Record<string, number>> | string
): Check<Readonly<Record<string, number>>> => {
  let table: Record<string, unknown>
  if (typeof input === "string") {
    table = {}
    for (const pair of input.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
      const at = pair.lastIndexOf("=")
      if (at <= 0) return bad(field, input, "use name=weight pairs separated by commas")
      table[pair.slice(0, at).trim()] = Number(pair.slice(at + 1))
    }
  } else {
    table = { ...input }
  }
  const names = Object.keys(table)
  if (names.length > maxWeightedTenants) return bad(field, `${names.length} entries`, `at most ${maxWeightedTenants}`)
  for (const name of names) {
    const weight = table[name]
    if (typeof weight !== "number" || !Number.isInteger(weight) || weight < 1 || weight > maxWeight) {
      return bad(field, input, `the weight of ${JSON.stringify(name)} must be a whole number from 1 to ${maxWeight}`)
    }
  }
  return ok(table as Record<string, number>)
}

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
// Control characters (C0, DEL, C1) and the Unicode line and paragraph separators.
const controlCharacters = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/

/** A tenant id checker for the given format and length. */
const tenantChecker = (format: RegExp | undefined, maxLength: number) => (id: string): string | undefined => {
  if (typeof id !== "string") return "must be a string"
  if (id.length === 0) return "must not be empty"
  if (id.length > maxLength) return `longer than tenantMaxLength (${maxLength})`
  if (controlCharacters.test(id)) return "contains control characters"
  if (format !== undefined && !format.test(id)) return `does not match tenantFormat ${format}`
  return undefined
}

/** A schema name as PostgreSQL allows it (`$user` for the role's own). */
const schemaName = /^(?:\$user|[^\u0000]{1,63})$/

/** Reads `searchPath` as a list of schema names, or comma-separated. */
const schemaList = (field: string, input: ReadonlyArray<string> | string | undefined): Check<string | undefined> => {
  if (input === undefined) return ok(undefined)
  const names = typeof input === "string" ? input.split(",").map((name) => name.trim()) : input
  if (!Array.isArray(names) || names.length === 0) return bad(field, input, "list at least one schema")
  for (const name of names) {
    if (typeof name !== "string" || !schemaName.test(name)) {
      return bad(field, input, "schema names are 1 to 63 characters, without NUL")
    }
  }
  return ok(searchPathOf(names))
}

/** A custom setting name: two or more dot-separated identifiers, as PostgreSQL requires. */
const settingName = /^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)+$/

const invalid = (field: string, value: unknown, reason: string): PoolConfigError =>
  new PoolConfigError({ field, value: render(value), reason })

const render = (value: unknown): string => {
  if (typeof value === "string") return JSON.stringify(value)
  if (typeof value === "number" || typeof value === "boolean" || value === undefined || value === null) {
    return String(value)
  }
  try {
    return JSON.stringify(value) ?? String(value)
  } catch {
    return String(value)
  }
}

/** Reads a duration given as milliseconds, an Effect duration, or a short form like `500ms`, `10s`, `5m`, `1h`. */
const parseDuration = (input: Duration.Input | string): Option.Option<Duration.Duration> => {
  if (typeof input === "string") {
    const text = input.trim()
    if (/^\d+(\.\d+)?$/.test(text)) return Option.some(Duration.millis(Number(text)))
    const short = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$/.exec(text)
    if (short !== null) {
      const scale = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[short[2] as "ms" | "s" | "m" | "h"]
      return Option.some(Duration.millis(Number(short[1]) * scale))
    }
    return Duration.fromInput(text as Duration.Input)
  }
  return Duration.fromInput(input)
}

type Check<A> = { readonly ok: true; readonly value: A } | { readonly ok: false; readonly error: PoolConfigError }
const ok = <A>(value: A): Check<A> => ({ ok: true, value })
const bad = (field: string, value: unknown, reason: string): Check<never> => ({
  ok: false,
  error: invalid(field, value, reason)
})

const durationMillis = (
  field: string,
  input: Duration.Input | undefined,
  fallback: number,
  options: { readonly infinite?: boolean } = {}
): Check<number> => {
  if (input === undefined) return ok(fallback)
  const parsed = parseDuration(input)
  if (Option.isNone(parsed)) return bad(field, input, "not a duration (use milliseconds, \"10 seconds\" or \"10s\")")
  const millis = Duration.toMillis(parsed.value)
  if (millis === Infinity && options.infinite) return ok(Infinity)
  if (!Number.isFinite(millis)) return bad(field, input, "must be finite")
  if (millis <= 0) return bad(field, input, "must be greater than zero")
  return ok(millis)
}

const integer = (
  field: string,
  input: number | undefined,
  fallback: number,
  min: number,
  options: { readonly infinite?: boolean } = {}
): Check<number> => {
  if (input === undefined) return ok(fallback)
  if (input === Infinity && options.infinite) return ok(Infinity)
  if (typeof input !== "number" || !Number.isInteger(input)) return bad(field, input, "must be a whole number")
  if (input < min) return bad(field, input, `must be at least ${min}`)
  return ok(input)
}

interface UrlParts {
  readonly host?: string
  readonly port?: number
  readonly database?: string
  readonly username?: string
  readonly password?: string
  readonly sslmode?: string
  readonly applicationName?: string
}

/**
 * A URL is never shown in an error, whatever its shape: a malformed one can
 * carry its password anywhere (an unencoded `@`, a `jdbc:` prefix, the query
 * string). The reason says what is wrong.
 */
const badUrl = (reason: string): Check<never> => bad("url", "<redacted>", reason)

const parseUrl = (raw: string): Check<UrlParts> => {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    return badUrl("not a URL")
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") {
    return badUrl("the scheme must be postgres:// or postgresql://")
  }
  const decode = (text: string): string | undefined => {
    try {
      return decodeURIComponent(text)
    } catch {
      return undefined
    }
  }
  const parts: { -readonly [K in keyof UrlParts]: UrlParts[K] } = {}
  if (url.hostname !== "") parts.host = url.hostname.replace(/^\[(.*)\]$/, "$1")
  if (url.port !== "") parts.port = Number(url.port)
  for (const [key, text] of [["username", url.username], ["password", url.password]] as const) {
    if (text === "") continue
    const decoded = decode(text)
    if (decoded === undefined) return badUrl(`bad percent-encoding in the ${key}`)
    parts[key] = decoded
  }
  const database = decode(url.pathname.replace(/^\//, ""))
  if (database === undefined) return badUrl("bad percent-encoding in the database name")
  if (database !== "") parts.database = database
  const params = url.searchParams
  if (params.has("host")) parts.host = params.get("host")!
  if (params.has("port")) {
    const port = Number(params.get("port"))
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      return badUrl("bad port in the query string")
    }
    parts.port = port
  }
  if (params.has("user")) parts.username = params.get("user")!
  if (params.has("password")) parts.password = params.get("password")!
  if (params.has("dbname")) parts.database = params.get("dbname")!
  if (params.has("sslmode")) parts.sslmode = params.get("sslmode")!
  if (params.has("application_name")) parts.applicationName = params.get("application_name")!
  return ok(parts)
}

const tlsFor = (mode: SslMode): Pick<PgConnection.Config, "ssl" | "url"> => {
  switch (mode) {
    case "disable":
      return { ssl: false }
    case "prefer":
      // The driver only offers prefer-style fallback through a URL parameter.
      return { url: Redacted.make("postgres://?sslmode=prefer") }
    case "require":
      return { ssl: { rejectUnauthorized: false } }
    case "verify-ca":
      return { ssl: { checkServerIdentity: () => undefined } }
    case "verify-full":
      return { ssl: true }
  }
}

/** `PgClient`'s connection settings the pool has no use for itself: to the driver as they are. */
const driverSettings = (options: Options): Partial<PgConnection.Config> => {
  const settings: { -readonly [K in keyof PgConnection.Config]?: PgConnection.Config[K] } = {}
  if (options.path !== undefined) settings.path = options.path
  if (options.startupParameters !== undefined) settings.startupParameters = options.startupParameters
  if (options.startupOptions !== undefined) settings.startupOptions = options.startupOptions
  if (options.keepAlive !== undefined) settings.keepAlive = options.keepAlive
  if (options.stream !== undefined) settings.stream = options.stream
  if (options.types !== undefined) settings.types = options.types
  if (options.maxMessageSize !== undefined) settings.maxMessageSize = options.maxMessageSize
  return settings
}

const asRedacted = (
  password: NonNullable<Options["password"]>
): Redacted.Redacted<string> | Effect.Effect<Redacted.Redacted<string>> =>
  typeof password === "string" ? Redacted.make(password) : password

/**
 * Validates options and fills in defaults.
 *
 * @since 0.1.0
 * @category constructors
 */
export const resolve = (given: Options): Effect.Effect<Resolved, PoolConfigError> =>
  Effect.suspend(() => {
    const options = OptionNames.canonical(given)
    if (options instanceof PoolConfigError) return Effect.fail(options)
    const checks: Array<Check<unknown>> = []
    const check = <A>(result: Check<A>): A => {
      checks.push(result)
      return result.ok ? result.value : (undefined as A)
    }
    const failed = () => checks.flatMap((c) => c.ok ? [] : [c.error])
    const firstError = (): PoolConfigError | undefined => failed()[0]
    /** The first failed check, carrying the others: one run shows every wrong option. */
    const everyError = (): PoolConfigError | undefined => {
      const [first, ...others] = failed()
      if (first === undefined || others.length === 0) return first
      return new PoolConfigError({
        field: first.field,
        value: first.value,
        reason: first.reason,
        others: others.map(({ field, value, reason }) => ({ field, value, reason }))
      })
    }

    const rawUrl = options.url === undefined
      ? undefined
      : Redacted.isRedacted(options.url)
      ? Redacted.value(options.url)
      : options.url
    const url = rawUrl === undefined ? {} : check(parseUrl(rawUrl))
    if (firstError()) return Effect.fail(firstError()!)

    // A socket path or a custom transport stands in for the host (it still names the server in telemetry).
    const host = options.host ?? url.host ?? options.path ?? (options.stream === undefined ? undefined : "stream")
    if (host === undefined || host.trim() === "" || host.includes("\0")) {
      check(bad("host", host, "no host given (set url, host or path)"))
    }
    const port = options.port ?? url.port ?? defaults.port
    if (!Number.isInteger(port) || port < 1 || port > 65535) check(bad("port", port, "must be a port between 1 and 65535"))
    const username = options.username ?? url.username
    if (username === undefined || username === "") check(bad("username", username, "no username given (set url or username)"))
    const password = options.password ?? url.password
    const database = options.database ?? url.database ?? username ?? ""

    let ssl: Pick<PgConnection.Config, "ssl" | "url">
    // `PgClient`'s booleans: `true` checks the chain and the host name, as the driver does with it.
    const sslInput = typeof options.ssl === "boolean"
      ? (options.ssl ? "verify-full" : "disable")
      : options.ssl ?? url.sslmode ?? "disable"
    if (typeof sslInput === "string") {
      if (!sslModes.includes(sslInput as SslMode)) {
        check(bad(options.ssl === undefined ? "url" : "ssl", sslInput, `unknown SSL mode; use one of ${sslModes.join(", ")}`))
      }
      ssl = sslModes.includes(sslInput as SslMode) ? tlsFor(sslInput as SslMode) : {}
    } else if (typeof sslInput === "object" && sslInput !== null) {
      ssl = { ssl: sslInput }
    } else {
      ssl = {}
      check(bad("ssl", sslInput, `use one of ${sslModes.join(", ")} or Node TLS options`))
    }

    const applicationName = options.applicationName ?? url.applicationName ?? defaults.applicationName
    if (Buffer.byteLength(applicationName) > 63 || applicationName.includes("\0")) {
      check(bad("applicationName", applicationName, "must be at most 63 bytes, without NUL"))
    }
    const name = options.name ?? defaults.name
    if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(name)) {
      check(bad("name", name, "use 1 to 64 letters, digits, '_', '.', ':' or '-'"))
    }

    const min = check(integer("min", options.min, defaults.min, 0))
    const max = check(integer("max", options.max, defaults.max, 1))
    if (min !== undefined && max !== undefined && min > max) check(bad("min", min, `must not exceed max (${max})`))
    const maxConnecting = check(integer("maxConnecting", options.maxConnecting, defaults.maxConnecting, 1))
    const pipelineDepth = check(integer(
      "pipelineDepth",
      options.pipelineDepth,
      // A transaction-mode pooler may put each transaction on another server connection: one at a time on each of ours.
      options.behindPooler === "transaction" ? 1 : defaults.pipelineDepth,
      1
    ))
    if (pipelineDepth > 128) check(bad("pipelineDepth", pipelineDepth, "must be at most 128"))
    const maxWaiting = check(integer("maxWaiting", options.maxWaiting, defaults.maxWaiting, 0, { infinite: true }))
    const maxUses = check(integer("maxUses", options.maxUses, defaults.maxUses, 1, { infinite: true }))
    const preparedStatementCacheSize = check(
      integer("preparedStatementCacheSize", options.preparedStatementCacheSize, defaults.preparedStatementCacheSize, 0)
    )
    const jitter = options.maxLifetimeJitter ?? defaults.maxLifetimeJitter
    if (typeof jitter !== "number" || !(jitter >= 0 && jitter <= 0.5)) {
      check(bad("maxLifetimeJitter", jitter, "must be between 0 and 0.5"))
    }
    const acquireTimeout = check(durationMillis("acquireTimeout", options.acquireTimeout, defaults.acquireTimeout))
    const idleTimeout = check(durationMillis("idleTimeout", options.idleTimeout, defaults.idleTimeout))
    const maxLifetime = check(
      durationMillis("maxLifetime", options.maxLifetime, defaults.maxLifetime, { infinite: true })
    )
    const connectTimeout = check(durationMillis("connectTimeout", options.connectTimeout, defaults.connectTimeout))
    const initializationTimeout = check(
      durationMillis("initializationTimeout", options.initializationTimeout, defaults.initializationTimeout)
    )
    const shutdownTimeout = check(durationMillis("shutdownTimeout", options.shutdownTimeout, defaults.shutdownTimeout))
    const housekeepingInterval = check(
      durationMillis("housekeepingInterval", options.housekeepingInterval, defaults.housekeepingInterval)
    )
    const duration = (field: keyof Options & keyof typeof defaults, infinite = false) =>
      check(durationMillis(field, options[field] as Duration.Input | undefined, defaults[field] as number, { infinite }))
    const connectRetryBase = duration("connectRetryBase")
    const connectRetryMax = duration("connectRetryMax")
    if (connectRetryBase > connectRetryMax) check(bad("connectRetryBase", connectRetryBase, "must not exceed connectRetryMax"))
    const queryTimeout = duration("queryTimeout", true)
    const validationThreshold = duration("validationThreshold")
    const validationTimeout = duration("validationTimeout")
    const keepaliveInterval = duration("keepaliveInterval", true)
    const leakDetectionThreshold = duration("leakDetectionThreshold", true)
    const circuitBreakerThreshold = check(
      integer("circuitBreakerThreshold", options.circuitBreakerThreshold, defaults.circuitBreakerThreshold, 1)
    )
    const circuitProbeInterval = duration("circuitProbeInterval")
    const sizing = options.sizing ?? defaults.sizing
    if (sizing !== "fixed" && sizing !== "adaptive") check(bad("sizing", sizing, "use fixed or adaptive"))
    const sizingInterval = duration("sizingInterval")
    const behindPooler = options.behindPooler ?? defaults.behindPooler
    if (behindPooler !== "none" && behindPooler !== "transaction") {
      check(bad("behindPooler", behindPooler, "use none or transaction"))
    }
    const prepare = options.prepare ?? (behindPooler === "transaction" ? false : defaults.prepare)
    if (sizingInterval < 50) check(bad("sizingInterval", sizingInterval, "must be at least 50 ms (it measures throughput)"))
    const retryAttempts = check(integer("retryAttempts", options.retryAttempts, defaults.retryAttempts, 1))
    const retryBase = duration("retryBase")
    const retryMax = duration("retryMax")
    if (retryBase > retryMax) check(bad("retryBase", retryBase, "must not exceed retryMax"))

    const tenantSetting = options.tenantSetting ?? defaults.tenantSetting
    if (typeof tenantSetting !== "string" || !settingName.test(tenantSetting) || tenantSetting.length > 63) {
      check(bad("tenantSetting", tenantSetting, "must be a custom setting name like app.tenant_id (at most 63 characters)"))
    }
    const tenantMaxLength = check(integer("tenantMaxLength", options.tenantMaxLength, defaults.tenantMaxLength, 1))
    const formatInput = options.tenantFormat ?? defaults.tenantFormat
    let tenantFormat: RegExp | undefined
    if (formatInput === "uuid") tenantFormat = uuid
    else if (formatInput instanceof RegExp) tenantFormat = new RegExp(`^(?:${formatInput.source})$`, formatInput.flags)
    else if (typeof formatInput === "string" && formatInput !== "any") {
      try {
        tenantFormat = new RegExp(`^(?:${formatInput})$`)
      } catch {
        check(bad("tenantFormat", formatInput, "use any, uuid, or a valid regular expression"))
      }
    }
    const sessionCheck = options.sessionCheck ?? defaults.sessionCheck
    if (sessionCheck !== "suspect" && sessionCheck !== "always") {
      check(bad("sessionCheck", sessionCheck, "use suspect or always"))
    }
    const searchPath = check(schemaList("searchPath", options.searchPath))

    const fairnessMode = options.fairness ?? defaults.fairness
    if (fairnessMode !== "tenant" && fairnessMode !== "fifo") check(bad("fairness", fairnessMode, "use tenant or fifo"))
    const tenantWeights = check(weightTable("tenantWeights", options.tenantWeights ?? {})) ?? {}
    const defaultTenantWeight = check(integer("defaultTenantWeight", options.defaultTenantWeight, defaults.defaultTenantWeight, 1))
    if (defaultTenantWeight > maxWeight) check(bad("defaultTenantWeight", defaultTenantWeight, `must be at most ${maxWeight}`))
    const priorityWeights = {
      ...defaults.priorityWeights,
      ...check(weightTable("priorityWeights", options.priorityWeights ?? {}))
    }
    const unknownClass = Object.keys(priorityWeights).find((name) => !(name in defaults.priorityWeights))
    if (unknownClass !== undefined) check(bad("priorityWeights", unknownClass, "the classes are high, normal and low"))
    const tenantMaxInUse = check(integer("tenantMaxInUse", options.tenantMaxInUse, defaults.tenantMaxInUse, 1, { infinite: true }))
    const tenantMaxQueued = check(integer("tenantMaxQueued", options.tenantMaxQueued, defaults.tenantMaxQueued, 0, { infinite: true }))
    if (fairnessMode === "fifo" && (tenantMaxInUse !== Infinity || tenantMaxQueued !== Infinity)) {
      check(bad("fairness", fairnessMode, "tenantMaxInUse and tenantMaxQueued need fairness: tenant"))
    }

    const tenantTelemetry = options.tenantTelemetry ?? defaults.tenantTelemetry
    if (!["plain", "hashed", "off"].includes(tenantTelemetry)) {
      check(bad("tenantTelemetry", tenantTelemetry, "use plain, hashed or off"))
    }
    const tenantMetricsLimit = check(
      integer("tenantMetricsLimit", options.tenantMetricsLimit, defaults.tenantMetricsLimit, 0)
    )

    const error = everyError()
    if (error !== undefined) return Effect.fail(error)
    return Effect.succeed<Resolved>({
      name,
      host: host!,
      port,
      database,
      username: username!,
      applicationName,
      min,
      max,
      maxConnecting,
      sizing,
      sizingInterval,
      behindPooler,
      pipelineDepth,
      maxWaiting,
      acquireTimeout,
      idleTimeout,
      maxLifetime,
      maxLifetimeJitter: jitter,
      maxUses,
      connectTimeout,
      queryTimeout,
      initializationTimeout,
      shutdownTimeout,
      housekeepingInterval,
      connectRetryBase,
      connectRetryMax,
      validationThreshold,
      validationTimeout,
      keepaliveInterval,
      leakDetectionThreshold,
      circuitBreakerThreshold,
      circuitProbeInterval,
      retryAttempts,
      retryBase,
      retryMax,
      prepare,
      transformResultNames: options.transformResultNames,
      transformQueryNames: options.transformQueryNames,
      transformJson: options.transformJson ?? true,
      tenantSetting,
      requireTenant: options.requireTenant ?? defaults.requireTenant,
      checkTenant: tenantChecker(tenantFormat, tenantMaxLength),
      sessionCheck,
      searchPath,
      fairness: {
        mode: fairnessMode,
        priorityWeights,
        tenantWeight: (tenant) => tenantWeights[tenant] ?? defaultTenantWeight,
        tenantMaxInUse
      },
      tenantMaxQueued,
      tenantTelemetry,
      tenantMetricsLimit,
      spanAttributes: options.spanAttributes ?? {},
      connection: {
        ...ssl,
        host: host!,
        port,
        database,
        username: username!,
        ...(password === undefined ? {} : { password: asRedacted(password) }),
        applicationName,
        connectTimeout: Duration.millis(connectTimeout),
        prepare,
        preparedStatementCacheSize,
        ...driverSettings(options)
      }
    })
  })

/**
 * The environment variables {@link config} reads, by option.
 *
 * @since 0.1.0
 * @category config
 */
export const environment = {
  url: "DATABASE_URL",
  host: "PGHOST",
  port: "PGPORT",
  database: "PGDATABASE",
  username: "PGUSER",
  password: "PGPASSWORD",
  ssl: "PGSSLMODE",
  applicationName: "PGAPPNAME",
  name: "PGPOOL_NAME",
  min: "PGPOOL_MIN",
  max: "PGPOOL_MAX",
  maxConnecting: "PGPOOL_MAX_CONNECTING",
  sizing: "PGPOOL_SIZING",
  sizingInterval: "PGPOOL_SIZING_INTERVAL",
  behindPooler: "PGPOOL_BEHIND_POOLER",
  pipelineDepth: "PGPOOL_PIPELINE_DEPTH",
  maxWaiting: "PGPOOL_MAX_WAITING",
  acquireTimeout: "PGPOOL_ACQUIRE_TIMEOUT",
  idleTimeout: "PGPOOL_IDLE_TIMEOUT",
  maxLifetime: "PGPOOL_MAX_LIFETIME",
  maxLifetimeJitter: "PGPOOL_MAX_LIFETIME_JITTER",
  maxUses: "PGPOOL_MAX_USES",
  connectTimeout: "PGPOOL_CONNECT_TIMEOUT",
  queryTimeout: "PGPOOL_QUERY_TIMEOUT",
  initializationTimeout: "PGPOOL_INITIALIZATION_TIMEOUT",
  shutdownTimeout: "PGPOOL_SHUTDOWN_TIMEOUT",
  housekeepingInterval: "PGPOOL_HOUSEKEEPING_INTERVAL",
  connectRetryBase: "PGPOOL_CONNECT_RETRY_BASE",
  connectRetryMax: "PGPOOL_CONNECT_RETRY_MAX",
  validationThreshold: "PGPOOL_VALIDATION_THRESHOLD",
  validationTimeout: "PGPOOL_VALIDATION_TIMEOUT",
  keepaliveInterval: "PGPOOL_KEEPALIVE_INTERVAL",
  leakDetectionThreshold: "PGPOOL_LEAK_DETECTION_THRESHOLD",
  circuitBreakerThreshold: "PGPOOL_CIRCUIT_BREAKER_THRESHOLD",
  circuitProbeInterval: "PGPOOL_CIRCUIT_PROBE_INTERVAL",
  retryAttempts: "PGPOOL_RETRY_ATTEMPTS",
  retryBase: "PGPOOL_RETRY_BASE",
  retryMax: "PGPOOL_RETRY_MAX",
  prepare: "PGPOOL_PREPARE",
  tenantSetting: "PGPOOL_TENANT_SETTING",
  requireTenant: "PGPOOL_REQUIRE_TENANT",
  tenantFormat: "PGPOOL_TENANT_FORMAT",
  tenantMaxLength: "PGPOOL_TENANT_MAX_LENGTH",
  sessionCheck: "PGPOOL_SESSION_CHECK",
  searchPath: "PGPOOL_SEARCH_PATH",
  fairness: "PGPOOL_FAIRNESS",
  tenantWeights: "PGPOOL_TENANT_WEIGHTS",
  defaultTenantWeight: "PGPOOL_DEFAULT_TENANT_WEIGHT",
  priorityWeights: "PGPOOL_PRIORITY_WEIGHTS",
  tenantMaxInUse: "PGPOOL_TENANT_MAX_IN_USE",
  tenantMaxQueued: "PGPOOL_TENANT_MAX_QUEUED",
  tenantTelemetry: "PGPOOL_TENANT_TELEMETRY",
  tenantMetricsLimit: "PGPOOL_TENANT_METRICS_LIMIT"
} as const

/** Options read as numbers; the rest are strings, except the secrets and `prepare`. */
const numericOptions: ReadonlySet<string> = new Set([
  "port",
  "min",
  "max",
  "maxConnecting",
  "pipelineDepth",
  "maxWaiting",
  "maxUses",
  "maxLifetimeJitter",
  "tenantMaxLength",
  "defaultTenantWeight",
  "tenantMaxInUse",
  "tenantMaxQueued",
  "circuitBreakerThreshold",
  "retryAttempts",
  "tenantMetricsLimit"
])
const booleanOptions: ReadonlySet<string> = new Set(["prepare", "requireTenant"])
const secretOptions: ReadonlySet<string> = new Set(["url", "password"])

/**
 * A number as written, so that a bad one is reported by {@link resolve} with
 * the option's name rather than as a bare parse failure.
 */
const looseNumber = (text: string): number => {
  const trimmed = text.trim()
  if (/^infinity$/i.test(trimmed)) return Infinity
  return trimmed === "" ? NaN : Number(trimmed)
}

/**
 * Reads {@link Options} from Effect `Config` (the environment by default):
 * `DATABASE_URL` or libpq's `PGHOST`/`PGPORT`/`PGDATABASE`/`PGUSER`/`PGPASSWORD`,
 * and `PGPOOL_*` for the pool; see {@link environment}. `overrides` win over
 * what is read, e.g. for transforms that no variable can carry.
 *
 * @since 0.1.0
 * @category config
 */
export const config = (overrides: Options = {}): Config.Config<Options> => {
  const variable = (option: string, name: string): Config.Config<Option.Option<unknown>> =>
    Config.option<unknown>(
      secretOptions.has(option)
        ? Config.Redacted(name)
        : booleanOptions.has(option)
        ? Config.Boolean(name)
        : numericOptions.has(option)
        ? Config.map(Config.String(name), looseNumber)
        : Config.String(name)
    )
  return Config.all(
    Object.fromEntries(Object.entries(environment).map(([option, name]) => [option, variable(option, name)]))
  ).pipe(
    Config.map((values) => {
      const read: Record<string, unknown> = {}
      for (const [option, value] of Object.entries(values)) if (Option.isSome(value)) read[option] = value.value
      return { ...read, ...overrides } as Options
    })
  )
}
