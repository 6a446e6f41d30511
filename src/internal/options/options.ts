/**
 * Every option of the pool, once: its kind, default, environment variable,
 * limits and what it does, in the order of the reference. The rest is
 * derived from this table: `PoolConfig.defaults` and `PoolConfig.environment`,
 * the checks `PoolConfig.resolve` makes (./optionChecks.ts), the variables
 * `PoolConfig.config` reads (./optionVariables.ts), `PgClient`'s names
 * (./optionNames.ts), and the options section of docs/configuration.md
 * (`npm run docs:options`; test/options.test.ts fails when the page and the
 * table differ). The `satisfies` below keeps its keys those of
 * `PoolConfig.Options`, and each record's default and variable of its
 * option's type.
 *
 * Over 300 lines: one record per option, and splitting them would
 * split the table.
 *
 * @internal
 */
import type { Options } from "../../PoolConfig.ts"
import * as Fairness from "./fairnessOptions.ts"
import * as Kinds from "./optionKinds.ts"
import * as Tenants from "./tenantOptions.ts"
import * as Tls from "./tls.ts"

/**
 * The reference's sections, in order.
 *
 * @internal
 */
export type Section = "connection" | "pool" | "resilience" | "statements" | "tenancy" | "fairness" | "pgClient"

/**
 * One option's record.
 *
 * @internal
 */
export interface Spec<In> {
  readonly section: Section
  /** What the option does, as the reference says it. */
  readonly doc: string
  readonly kind: Kinds.Kind<In, unknown>
  /** The environment variable `PoolConfig.config` reads it from. */
  readonly env?: string
  readonly default?: In
  /** The default behind a transaction-mode pooler (`behindPooler: "transaction"`), where it differs. */
  readonly pooled?: In
  /** The default as the reference says it, where it is no value (or not only one). */
  readonly shown?: string
  /** Another option this one must not exceed. */
  readonly notAbove?: keyof Options
  /** The most it may be behind a transaction-mode pooler, and why: more would not be safe there. */
  readonly pooledAtMost?: { readonly value: number; readonly why: string }
  /** For `PgClient`'s names: the pool's own option it stands for. */
  readonly aliasOf?: keyof Options
  /** The value it stands for there, if not its own; `undefined` for nothing. A method, as `Kind.show` is. */
  means?(value: In): unknown
}

const validName = (name: string) =>
  /^[A-Za-z0-9_.:-]{1,64}$/.test(name) ? undefined : "use 1 to 64 letters, digits, '_', '.', ':' or '-'"
const validApplicationName = (name: string) =>
  Buffer.byteLength(name) <= 63 && !name.includes("\0") ? undefined : "must be at most 63 bytes, without NUL"
const validHost = (host: string) => host.trim() !== "" && !host.includes("\0") ? undefined : "must name a host, without NUL"

/** `PgClient`'s names take what the option they stand for takes. */
const alias = Kinds.given({ values: "as the option it stands for" })

/**
 * The table.
 *
 * @internal
 */
export const table = {
  url: {
    section: "connection",
    kind: Kinds.secret("URL, or `Redacted`"),
    env: "DATABASE_URL",
    doc: "`postgres://user:password@host:port/database?sslmode=...&application_name=...`. The fields below win over it."
  },
  host: {
    section: "connection",
    kind: Kinds.text(validHost, "host name or address"),
    env: "PGHOST",
    shown: "from `url`",
    doc: "Server host. Required (in `url` or here), unless `path` or `stream` is given."
  },
  port: { section: "connection", kind: Kinds.count({ min: 1, max: 65535 }), env: "PGPORT", default: 5432, doc: "Server port." },
  database: {
    section: "connection",
    kind: Kinds.text(undefined, "database name"),
    env: "PGDATABASE",
    shown: "the user name",
    doc: "Database name."
  },
  username: {
    section: "connection",
    kind: Kinds.text((name) => name === "" ? "must not be empty" : undefined, "role name"),
    env: "PGUSER",
    shown: "from `url`",
    doc: "Role to log in as. Required."
  },
  password: {
    section: "connection",
    kind: Kinds.secret("string, `Redacted`, or `Effect` of `Redacted`"),
    env: "PGPASSWORD",
    shown: "from `url`",
    doc: "Password, a `Redacted`, or an `Effect` yielding the current one at each connection attempt (rotated " +
      "credentials). Optional: without one, a server that asks for a password fails the start with " +
      "`DatabaseUnavailableError` (\"No password configured\"), at once. Never logged or shown in errors."
  },
  ssl: {
    section: "connection",
    kind: Tls.ssl,
    env: "PGSSLMODE",
    default: "disable",
    shown: "`url`'s `sslmode`, else `disable`",
    doc: "`disable`, `prefer` (TLS if offered), `require` (TLS, certificate not checked), `verify-ca` (chain " +
      "checked), `verify-full` (chain and host name checked), or Node `tls.ConnectionOptions`; `PgClient`'s " +
      "`true` and `false` mean `verify-full` and `disable`."
  },
  applicationName: {
    section: "connection",
    kind: Kinds.text(validApplicationName, "≤ 63 bytes"),
    env: "PGAPPNAME",
    default: "@meshhook/pool",
    doc: "Shown in `pg_stat_activity`."
  },
  connectTimeout: {
    section: "connection",
    kind: Kinds.duration(),
    env: "PGPOOL_CONNECT_TIMEOUT",
    default: 5_000,
    doc: "Longest one connection attempt (TCP, TLS, authentication) may take."
  },
  path: { section: "connection", kind: Kinds.text(undefined, "file path"), doc: "A Unix-domain socket to connect through instead of TCP." },
  startupParameters: {
    section: "connection",
    kind: Kinds.given({ values: "record of strings" }),
    doc: "Session settings sent in every connection's startup packet (`{ statement_timeout: \"5000\" }`); they " +
      "are each session's defaults, kept through the pool's resets. PgBouncer refuses parameters it is not told " +
      "to ignore (`ignore_startup_parameters`)."
  },
  startupOptions: {
    section: "connection",
    kind: Kinds.text(undefined, "string"),
    doc: "PostgreSQL's startup `options` string (`-c name=value ...`)."
  },
  keepAlive: { section: "connection", kind: Kinds.given({ values: "`Duration.Input`" }), doc: "Idle time before TCP keepalive probes start." },
  stream: {
    section: "connection",
    kind: Kinds.given({ values: "`() => Duplex`" }),
    doc: "A custom transport instead of a socket."
  },
  types: {
    section: "connection",
    kind: Kinds.given({ values: "`PgTypes.Registry`" }),
    shown: "built-in codecs",
    doc: "A `PgTypes.Registry` (`PgTypes.makeRegistry()`, then `register(oid, codec)`): custom parsers and " +
      "serializers for this pool's connections."
  },
  maxMessageSize: {
    section: "connection",
    kind: Kinds.count({ min: 1 }),
    shown: "the driver's, 16 MiB",
    doc: "Largest message accepted from the server, in bytes."
  },

  name: {
    section: "pool",
    kind: Kinds.text(validName, "1 to 64 of `A-Z a-z 0-9 _ . : -`"),
    env: "PGPOOL_NAME",
    default: "default",
    doc: "The pool's name in metrics, logs and spans (`db.client.connection.pool.name`)."
  },
  min: {
    section: "pool",
    kind: Kinds.count({ min: 0 }),
    env: "PGPOOL_MIN",
    default: 0,
    notAbove: "max",
    doc: "Connections kept open even when idle; opened at start, refilled in the background."
  },
  max: {
    section: "pool",
    kind: Kinds.count({ min: 1 }),
    env: "PGPOOL_MAX",
    default: 10,
    doc: "Connections open at most (including those being opened); not below `min`."
  },
  maxConnecting: {
    section: "pool",
    kind: Kinds.count({ min: 1 }),
    env: "PGPOOL_MAX_CONNECTING",
    default: 2,
    doc: "Connection attempts in flight at once, so a spike of callers does not set off a storm of connects."
  },
  sizing: {
    section: "pool",
    kind: Kinds.choice(["fixed", "adaptive"]),
    env: "PGPOOL_SIZING",
    default: "fixed",
    doc: "`adaptive`: the pool finds how many connections between `min` and `max` bring throughput, and keeps to " +
      "that limit (docs/tuning.md); `fixed`: up to `max` whenever callers wait."
  },
  sizingInterval: {
    section: "pool",
    kind: Kinds.duration({ min: 50 }),
    env: "PGPOOL_SIZING_INTERVAL",
    default: 1_000,
    doc: "How often the adaptive pool measures and may change its limit; a trial lasts three intervals."
  },
  behindPooler: {
    section: "pool",
    kind: Kinds.choice(["none", "transaction"]),
    env: "PGPOOL_BEHIND_POOLER",
    default: "none",
    doc: "`transaction` behind a transaction-mode pooler (PgBouncer, Supavisor, the Supabase pooler): `prepare` " +
      "defaults to false and `pipelineDepth` is 1, one transaction at a time goes out on a connection, the " +
      "prologue pins instead of refusing, and statements that could leave session state are refused with " +
      "`SessionStateNotAllowedError` before they are sent (docs/scaling.md)."
  },
  pipelineDepth: {
    section: "pool",
    kind: Kinds.count({ min: 1, max: 128 }),
    env: "PGPOOL_PIPELINE_DEPTH",
    default: 16,
    pooled: 1,
    pooledAtMost: {
      value: 1,
      why: "a transaction-mode pooler may switch server connections between transactions pipelined on one " +
        "client connection and misframe them (docs/scaling.md)"
    },
    doc: "Lone statements (queries and DML, with a tenant or without) that share one connection, pipelined, each " +
      "in an implicit transaction of its own. One connection is filled before the next is used. `1` gives every " +
      "statement a connection of its own. Higher trades tail latency (statements queue behind each other) for " +
      "throughput. Behind a pooler only `1` is accepted: it may misframe transactions pipelined on one connection."
  },
  maxWaiting: {
    section: "pool",
    kind: Kinds.count({ min: 0, infinite: true }),
    env: "PGPOOL_MAX_WAITING",
    default: 1000,
    doc: "Callers allowed to wait at once; the next fails at once with `PoolSaturatedError`. `0` never queues; " +
      "`Infinity` never sheds."
  },
  acquireTimeout: {
    section: "pool",
    kind: Kinds.duration(),
    env: "PGPOOL_ACQUIRE_TIMEOUT",
    default: 10_000,
    doc: "Longest a caller waits for a connection, or a share of one, before `PoolTimeoutError`. A lone statement " +
      "given a share then waits behind the statements ahead of it on that connection (at most `pipelineDepth` " +
      "− 1): that wait is not bounded by `acquireTimeout` but by `queryTimeout`, and `pipelineDepth: 1` gives " +
      "every statement a connection of its own."
  },
  idleTimeout: {
    section: "pool",
    kind: Kinds.duration(),
    env: "PGPOOL_IDLE_TIMEOUT",
    default: 60_000,
    doc: "Idle time after which a connection above `min` is closed."
  },
  maxLifetime: {
    section: "pool",
    kind: Kinds.duration({ infinite: true }),
    env: "PGPOOL_MAX_LIFETIME",
    default: 30 * 60_000,
    doc: "Age at which a connection is closed once free; `Infinity` for none. Keep it below any server-side or " +
      "pooler limit."
  },
  maxLifetimeJitter: {
    section: "pool",
    kind: Kinds.between(0, 0.5),
    env: "PGPOOL_MAX_LIFETIME_JITTER",
    default: 0.1,
    doc: "Each connection's lifetime is shortened by a random share up to this, so connections opened together " +
      "do not expire together."
  },
  maxUses: {
    section: "pool",
    kind: Kinds.count({ min: 1, infinite: true }),
    env: "PGPOOL_MAX_USES",
    default: Infinity,
    doc: "Checkouts after which a connection is closed."
  },
  initializationTimeout: {
    section: "pool",
    kind: Kinds.duration(),
    env: "PGPOOL_INITIALIZATION_TIMEOUT",
    default: 30_000,
    doc: "At start the pool connects once, retrying for this long, then fails with `DatabaseUnavailableError`. " +
      "Bad credentials or a missing database fail at once."
  },
  shutdownTimeout: {
    section: "pool",
    kind: Kinds.duration(),
    env: "PGPOOL_SHUTDOWN_TIMEOUT",
    default: 10_000,
    doc: "On scope close, how long lent connections may take to come back before they are closed anyway."
  },
  housekeepingInterval: {
    section: "pool",
    kind: Kinds.duration(),
    env: "PGPOOL_HOUSEKEEPING_INTERVAL",
    default: 5_000,
    doc: "How often idle connections are checked against `idleTimeout` and `maxLifetime`, and `min` refilled."
  },

  queryTimeout: {
    section: "resilience",
    kind: Kinds.duration({ infinite: true }),
    env: "PGPOOL_QUERY_TIMEOUT",
    default: Infinity,
    doc: "Longest the client waits for a statement's answer; then it cancels, closes the connection and fails " +
      "with `QueryTimeoutError`. Detects network partitions; for slow queries prefer `statement_timeout`. " +
      "`Infinity` for none."
  },
  connectRetryBase: {
    section: "resilience",
    kind: Kinds.duration(),
    env: "PGPOOL_CONNECT_RETRY_BASE",
    default: 50,
    notAbove: "connectRetryMax",
    doc: "First pause after a failed connection attempt; doubles with jitter."
  },
  connectRetryMax: {
    section: "resilience",
    kind: Kinds.duration(),
    env: "PGPOOL_CONNECT_RETRY_MAX",
    default: 5_000,
    doc: "Longest pause between connection attempts."
  },
  validationThreshold: {
    section: "resilience",
    kind: Kinds.duration(),
    env: "PGPOOL_VALIDATION_THRESHOLD",
    default: 1_000,
    doc: "A connection idle longer is proved with `SELECT 1` before it is lent."
  },
  validationTimeout: {
    section: "resilience",
    kind: Kinds.duration(),
    env: "PGPOOL_VALIDATION_TIMEOUT",
    default: 2_000,
    doc: "Longest that proof (and a keepalive ping) may take."
  },
  keepaliveInterval: {
    section: "resilience",
    kind: Kinds.duration({ infinite: true }),
    env: "PGPOOL_KEEPALIVE_INTERVAL",
    default: 60_000,
    doc: "Idle connections are pinged this often (less up to a tenth each); `Infinity` for never."
  },
  leakDetectionThreshold: {
    section: "resilience",
    kind: Kinds.duration({ infinite: true }),
    env: "PGPOOL_LEAK_DETECTION_THRESHOLD",
    default: Infinity,
    doc: "A connection held alone longer is reported once with its span and stack; `Infinity` for off."
  },
  circuitBreakerThreshold: {
    section: "resilience",
    kind: Kinds.count({ min: 1 }),
    env: "PGPOOL_CIRCUIT_BREAKER_THRESHOLD",
    default: 3,
    doc: "Failed connection attempts in a row, with no connection left, that open the circuit."
  },
  circuitProbeInterval: {
    section: "resilience",
    kind: Kinds.duration(),
    env: "PGPOOL_CIRCUIT_PROBE_INTERVAL",
    default: 1_000,
    doc: "How often the probe tries while the circuit is open."
  },
  retryAttempts: {
    section: "resilience",
    kind: Kinds.count({ min: 1 }),
    env: "PGPOOL_RETRY_ATTEMPTS",
    default: 4,
    doc: "Attempts in all for `Retry.idempotent` and `Retry.transaction`."
  },
  retryBase: {
    section: "resilience",
    kind: Kinds.duration(),
    env: "PGPOOL_RETRY_BASE",
    default: 20,
    notAbove: "retryMax",
    doc: "First pause between them; doubles with jitter."
  },
  retryMax: {
    section: "resilience",
    kind: Kinds.duration(),
    env: "PGPOOL_RETRY_MAX",
    default: 1_000,
    doc: "Longest pause between them."
  },

  prepare: {
    section: "statements",
    kind: Kinds.flag,
    env: "PGPOOL_PREPARE",
    default: true,
    pooled: false,
    doc: "Use named prepared statements, cached per connection. Off behind poolers that cannot keep them."
  },
  preparedStatementCacheSize: {
    section: "statements",
    kind: Kinds.count({ min: 0 }),
    default: 100,
    doc: "Prepared statements kept per connection."
  },
  transformResultNames: {
    section: "statements",
    kind: Kinds.given({ values: "`(name) => string`" }),
    doc: "Renames result columns, e.g. snake_case to camelCase."
  },
  transformQueryNames: {
    section: "statements",
    kind: Kinds.given({ values: "`(name) => string`" }),
    doc: "Renames identifiers in queries."
  },
  transformJson: {
    section: "statements",
    kind: Kinds.flag,
    default: true,
    doc: "Apply the name transforms inside JSON values too."
  },
  spanAttributes: {
    section: "statements",
    kind: Kinds.given({ values: "record" }),
    default: {},
    doc: "Attributes added to every statement's span."
  },

  tenantSetting: {
    section: "tenancy",
    kind: Tenants.setting,
    env: "PGPOOL_TENANT_SETTING",
    default: "app.tenant_id",
    doc: "The custom setting row-level security policies read the tenant from (`app.project_id` for MeshHook)."
  },
  requireTenant: {
    section: "tenancy",
    kind: Kinds.flag,
    env: "PGPOOL_REQUIRE_TENANT",
    default: false,
    doc: "SQL outside `Tenant.with` and `Tenant.unscoped` fails with `TenantRequiredError` before it takes a " +
      "connection."
  },
  tenantFormat: {
    section: "tenancy",
    kind: Tenants.format,
    env: "PGPOOL_TENANT_FORMAT",
    default: "any",
    doc: "Tenant ids allowed: `any`, `uuid`, or a regular expression (matched against the whole id)."
  },
  tenantMaxLength: {
    section: "tenancy",
    kind: Kinds.count({ min: 1 }),
    env: "PGPOOL_TENANT_MAX_LENGTH",
    default: 128,
    doc: "Longest tenant id, in characters."
  },
  tenantTelemetry: {
    section: "tenancy",
    kind: Kinds.choice(["plain", "hashed", "off"]),
    env: "PGPOOL_TENANT_TELEMETRY",
    default: "hashed",
    doc: "How tenant ids appear in spans and metrics: `plain`, `hashed` (a stable 16-hex digest) or `off`."
  },
  tenantMetricsLimit: {
    section: "tenancy",
    kind: Kinds.count({ min: 0 }),
    env: "PGPOOL_TENANT_METRICS_LIMIT",
    default: 100,
    doc: "Distinct tenant values in the per-tenant metric series; the others are counted as `other`."
  },
  sessionCheck: {
    section: "tenancy",
    kind: Kinds.choice(["suspect", "always"]),
    env: "PGPOOL_SESSION_CHECK",
    default: "suspect",
    doc: "When a returned connection's session is reset (settings, role, cursors, `LISTEN`, temporary objects, " +
      "advisory locks; one more cycle): `suspect` after a lease that may have left session state (its " +
      "statements' text or command tags, a setting the server reported changed, or a prologue's findings say " +
      "so), `always` after every lease, with no connection shared. The settings isolation depends on are " +
      "checked by the server in every transaction either way (docs/security.md)."
  },
  searchPath: {
    section: "tenancy",
    kind: Tenants.searchPath,
    env: "PGPOOL_SEARCH_PATH",
    shown: "the server's default for the role",
    doc: "The schemas every transaction runs with (a list, or comma-separated); `pg_temp` is always appended " +
      "last, so a temporary table never shadows a real one."
  },

  fairness: {
    section: "fairness",
    kind: Kinds.choice(["tenant", "fifo"]),
    env: "PGPOOL_FAIRNESS",
    default: "tenant",
    doc: "`tenant` (weighted turns across tenants and priorities) or `fifo` (arrival order)."
  },
  tenantWeights: {
    section: "fairness",
    kind: Fairness.tenantWeights,
    env: "PGPOOL_TENANT_WEIGHTS",
    doc: "Weights of particular tenants (at most 10,000)."
  },
  defaultTenantWeight: {
    section: "fairness",
    kind: Kinds.count({ min: 1, max: 1000 }),
    env: "PGPOOL_DEFAULT_TENANT_WEIGHT",
    default: 1,
    doc: "Weight of every other tenant, and of work without a tenant."
  },
  priorityWeights: {
    section: "fairness",
    kind: Fairness.priorityWeights,
    env: "PGPOOL_PRIORITY_WEIGHTS",
    default: Fairness.defaultPriorityWeights,
    doc: "Turns per round of each priority class (those not given keep their default); the lowest is never starved."
  },
  tenantMaxInUse: {
    section: "fairness",
    kind: Kinds.count({ min: 1, infinite: true }),
    env: "PGPOOL_TENANT_MAX_IN_USE",
    default: Infinity,
    doc: "Connections one tenant may hold at once; its further requests wait (others are served past it). " +
      "Keeping it below `max` reserves room for the other tenants. Needs `fairness: tenant`."
  },
  tenantMaxQueued: {
    section: "fairness",
    kind: Kinds.count({ min: 0, infinite: true }),
    env: "PGPOOL_TENANT_MAX_QUEUED",
    default: Infinity,
    doc: "Requests one tenant may have waiting; past it, `TenantQuotaExceededError`. Needs `fairness: tenant`."
  },

  maxConnections: { section: "pgClient", kind: alias, aliasOf: "max", doc: "`PgClient`'s name for `max`." },
  minConnections: { section: "pgClient", kind: alias, aliasOf: "min", doc: "`PgClient`'s name for `min`." },
  connectionTTL: {
    section: "pgClient",
    kind: alias,
    aliasOf: "maxLifetime",
    doc: "`PgClient`'s name for `maxLifetime`."
  },
  multiplex: {
    section: "pgClient",
    kind: alias,
    aliasOf: "pipelineDepth",
    means: (multiplex: boolean) => multiplex ? undefined : 1,
    doc: "As `PgClient`'s: `false` is `pipelineDepth: 1`, every statement on a connection of its own; `true` " +
      "changes nothing."
  },
  multiplexConcurrency: {
    section: "pgClient",
    kind: alias,
    aliasOf: "pipelineDepth",
    doc: "`PgClient`'s name for `pipelineDepth`."
  }
} as const satisfies { readonly [K in keyof Options]-?: Spec<NonNullable<Options[K]>> }

type Table = typeof table

/**
 * The table's records with their options' names, for going through all.
 *
 * @internal
 */
export const specs = Object.entries(table) as ReadonlyArray<readonly [keyof Options, Spec<unknown>]>

/**
 * The options as resolved from the table alone (each checked, defaults
 * filled in): the value its kind makes of it, `undefined` if it has no
 * default and none was given. `PgClient`'s names are not among them: they
 * are the pool's own by then.
 *
 * @internal
 */
export type Values = {
  readonly [K in keyof Table as Table[K] extends { readonly aliasOf: string } ? never : K]:
    | (Table[K]["kind"] extends Kinds.Kind<any, infer Out> ? unknown extends Out ? NonNullable<Options[K]> : Out : never)
    | (Table[K] extends { readonly default: unknown } ? never : undefined)
}

/**
 * The options whose records have `field`, each with its value there: their
 * defaults, or their environment variables.
 *
 * @internal
 */
export const collect = <F extends "default" | "env">(field: F): {
  readonly [K in keyof Table as Table[K] extends { readonly [_ in F]: unknown } ? K : never]: Extract<
    Table[K],
    { readonly [_ in F]: unknown }
  >[F]
} => Object.fromEntries(specs.flatMap(([key, spec]) => spec[field] === undefined ? [] : [[key, spec[field]]])) as never
