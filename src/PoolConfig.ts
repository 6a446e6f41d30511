/**
 * The pool's options: their types, defaults, validation, and the
 * environment variables they are read from.
 *
 * Each option has one record in the table of options
 * (src/internal/options/options.ts), from which the defaults, the checks, the
 * variables and the reference (docs/configuration.md) are derived. This
 * module holds the public types, documented field by field for editors
 * (which makes it over 300 lines), and puts the parts together.
 *
 * Validation happens once, when the layer is built, and every problem is
 * reported in one {@link PoolConfigError} naming the options and their
 * values (never a secret's).
 *
 * @since 0.1.0
 */
import type * as PgConnection from "@effect/sql-pg/PgConnection"
import type * as PgTypes from "@effect/sql-pg/PgTypes"
import * as Config from "effect/Config"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Redacted from "effect/Redacted"
import * as Struct from "effect/Struct"
import type { Duplex } from "node:stream"
import type { ConnectionOptions } from "node:tls"
import * as Target from "./internal/options/connectionTarget.ts"
import * as Fairness from "./internal/options/fairnessOptions.ts"
import * as OptionChecks from "./internal/options/optionChecks.ts"
import * as OptionNames from "./internal/options/optionNames.ts"
import * as Table from "./internal/options/options.ts"
import * as OptionVariables from "./internal/options/optionVariables.ts"
import type { FairnessOptions } from "./internal/engine/scheduler.ts"
import * as Tenants from "./internal/options/tenantOptions.ts"
import type { PoolConfigError } from "./PoolError.ts"
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

/**
 * A duration, in the forms every duration option takes, in code and in the
 * environment alike: a number of milliseconds; any `Duration.Input` (an
 * Effect `Duration`, `"10 seconds"`, `"2 minutes"`, `"Infinity"`); or a
 * number and a short unit, `ms`, `s`, `m` or `h`, with or without a space
 * (`"500ms"`, `"10s"`, `"1.5 m"`). An environment variable writes the same
 * strings, and a bare number there (`250`) is milliseconds.
 *
 * @since 0.1.0
 * @category models
 */
export type DurationInput =
  | Duration.Input
  | `${number}${"ms" | "s" | "m" | "h"}`
  | `${number} ${"ms" | "s" | "m" | "h"}`

/**
 * Everything the pool can be told. Durations take a {@link DurationInput}.
 * Only the connection target is required: a `url`, or `host` (or `path`)
 * and `username`. docs/configuration.md has the whole reference, with the
 * environment variables.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** `postgres://user:password@host:port/database?sslmode=...`; the fields below win over it. */
  readonly url?: string | Redacted.Redacted<string> | undefined
  /** The server's host name or address. */
  readonly host?: string | undefined
  /** The server's port. Default 5432. */
  readonly port?: number | undefined
  /** The database. Default: the user name. */
  readonly database?: string | undefined
  /** The role to log in as. */
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
  readonly sizingInterval?: DurationInput | undefined
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
  readonly acquireTimeout?: DurationInput | undefined
  /** Idle time after which a connection above `min` is closed. Default 60 s. */
  readonly idleTimeout?: DurationInput | undefined
  /** Age at which a connection is closed once it is free; `"Infinity"` for none. Default 30 min. */
  readonly maxLifetime?: DurationInput | undefined
  /** Up to this share of `maxLifetime` is randomly taken off each connection's, between 0 and 0.5. Default 0.1. */
  readonly maxLifetimeJitter?: number | undefined
  /** Checkouts after which a connection is closed; `Infinity` for no limit. Default `Infinity`. */
  readonly maxUses?: number | undefined
  /** Longest one connection attempt may take. Default 5 s. */
  readonly connectTimeout?: DurationInput | undefined
  /**
   * Longest the client waits for a statement's answer before it gives up,
   * cancels, closes the connection and fails with `QueryTimeoutError`: the way
   * to notice a network partition. For slow queries prefer PostgreSQL's
   * `statement_timeout`. `"Infinity"` for none. Default none.
   */
  readonly queryTimeout?: DurationInput | undefined
  /** How long start-up retries before failing with `DatabaseUnavailableError`. Default 30 s. */
  readonly initializationTimeout?: DurationInput | undefined
  /** How long closing waits for lent connections to come back before closing them anyway. Default 10 s. */
  readonly shutdownTimeout?: DurationInput | undefined
  /** How often idle connections are checked for `idleTimeout` and `maxLifetime`, and `min` refilled. Default 5 s. */
  readonly housekeepingInterval?: DurationInput | undefined

  /** First pause between failed connection attempts; it doubles (with jitter) up to `connectRetryMax`. Default 50 ms. */
  readonly connectRetryBase?: DurationInput | undefined
  /** Longest pause between failed connection attempts. Default 5 s. */
  readonly connectRetryMax?: DurationInput | undefined
  /** A connection idle longer than this is proved with a round trip before it is lent. Default 1 s. */
  readonly validationThreshold?: DurationInput | undefined
  /** Longest that proof may take before the connection counts as dead. Default 2 s. */
  readonly validationTimeout?: DurationInput | undefined
  /** Idle connections are pinged this often (less up to a tenth), so nothing drops them unseen; `"Infinity"` for never. Default 60 s. */
  readonly keepaliveInterval?: DurationInput | undefined
  /** A connection held alone longer than this is reported once, with where it was taken; `"Infinity"` for off. Default off. */
  readonly leakDetectionThreshold?: DurationInput | undefined
  /** Failed connection attempts in a row, with no connection left, that open the circuit. Default 3. */
  readonly circuitBreakerThreshold?: number | undefined
  /** How often the probe tries to connect while the circuit is open. Default 1 s. */
  readonly circuitProbeInterval?: DurationInput | undefined
  /** Attempts `Retry.idempotent` and `Retry.transaction` make in all. Default 4. */
  readonly retryAttempts?: number | undefined
  /** First pause between those attempts; it doubles (with jitter) up to `retryMax`. Default 20 ms. */
  readonly retryBase?: DurationInput | undefined
  /** Longest pause between those attempts. Default 1 s. */
  readonly retryMax?: DurationInput | undefined

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
  readonly connectionTTL?: DurationInput | undefined
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
 * The defaults, for documentation and tests; durations in milliseconds.
 *
 * @since 0.1.0
 * @category defaults
 */
export const defaults = Table.collect("default")

/**
 * The environment variables {@link config} reads, by option.
 *
 * @since 0.1.0
 * @category config
 */
export const environment = Table.collect("env")

/** The options `Resolved` carries as validated, under their own names. */
const asValidated = [
  "name",
  "applicationName",
  "min",
  "max",
  "maxConnecting",
  "sizing",
  "sizingInterval",
  "behindPooler",
  "pipelineDepth",
  "maxWaiting",
  "acquireTimeout",
  "idleTimeout",
  "maxLifetime",
  "maxLifetimeJitter",
  "maxUses",
  "connectTimeout",
  "queryTimeout",
  "initializationTimeout",
  "shutdownTimeout",
  "housekeepingInterval",
  "connectRetryBase",
  "connectRetryMax",
  "validationThreshold",
  "validationTimeout",
  "keepaliveInterval",
  "leakDetectionThreshold",
  "circuitBreakerThreshold",
  "circuitProbeInterval",
  "retryAttempts",
  "retryBase",
  "retryMax",
  "prepare",
  "transformResultNames",
  "transformQueryNames",
  "transformJson",
  "tenantSetting",
  "requireTenant",
  "sessionCheck",
  "searchPath",
  "tenantMaxQueued",
  "tenantTelemetry",
  "tenantMetricsLimit",
  "spanAttributes"
] as const satisfies ReadonlyArray<keyof Resolved & keyof Table.Values>

/**
 * Validates options and fills in defaults. Every problem is reported at
 * once: the first as the {@link PoolConfigError}, the others in its
 * `others`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const resolve = (given: Options): Effect.Effect<Resolved, PoolConfigError> =>
  Effect.suspend(() => {
    const problems = OptionChecks.problems()
    const values = OptionChecks.validate(Target.withUrl(OptionNames.canonical(given, problems), problems), problems)
    const resolved: Resolved = {
      ...Struct.pick(values, asValidated),
      ...Target.target(values, problems),
      checkTenant: Tenants.checker(values.tenantFormat, values.tenantMaxLength),
      fairness: Fairness.scheduling(values, problems)
    }
    const error = problems.error()
    return error === undefined ? Effect.succeed(resolved) : Effect.fail(error)
  })

/**
 * Reads {@link Options} from Effect `Config` (the environment by default):
 * `DATABASE_URL` or libpq's `PGHOST`/`PGPORT`/`PGDATABASE`/`PGUSER`/`PGPASSWORD`,
 * and `PGPOOL_*` for the pool; see {@link environment}. A variable is read
 * as its option's type (a number, a duration, one of its words), and every
 * one that is not fails in one `ConfigError` naming them; limits are
 * {@link resolve}'s. `overrides` win over what is read, e.g. for transforms
 * that no variable can carry.
 *
 * @since 0.1.0
 * @category config
 */
export const config = (overrides: Options = {}): Config.Config<Options> =>
  OptionVariables.read.pipe(Config.map((read) => ({ ...read, ...overrides })))
