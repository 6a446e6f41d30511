/**
 * The names the pool's options go by: its own, and `@effect/sql-pg`'s
 * `PgClient.layer` names read with the same meaning, so options written for
 * `PgClient` carry over. A key that is neither is refused, naming the
 * nearest option: an option the pool silently ignored (a typo, or a name from
 * another client) would leave a setting at its default unseen.
 *
 * @internal
 */
import { PoolConfigError } from "../PoolError.ts"
import type { Options } from "../PoolConfig.ts"

/** Every option key; the record's type makes the compiler keep it complete. */
const known: Record<keyof Options, true> = {
  url: true,
  host: true,
  port: true,
  path: true,
  database: true,
  username: true,
  password: true,
  ssl: true,
  applicationName: true,
  startupParameters: true,
  startupOptions: true,
  keepAlive: true,
  stream: true,
  types: true,
  maxMessageSize: true,
  spanAttributes: true,
  name: true,
  min: true,
  max: true,
  maxConnecting: true,
  sizing: true,
  sizingInterval: true,
  pipelineDepth: true,
  maxWaiting: true,
  acquireTimeout: true,
  idleTimeout: true,
  maxLifetime: true,
  maxLifetimeJitter: true,
  maxUses: true,
  connectTimeout: true,
  queryTimeout: true,
  initializationTimeout: true,
  shutdownTimeout: true,
  housekeepingInterval: true,
  connectRetryBase: true,
  connectRetryMax: true,
  validationThreshold: true,
  validationTimeout: true,
  keepaliveInterval: true,
  leakDetectionThreshold: true,
  circuitBreakerThreshold: true,
  circuitProbeInterval: true,
  retryAttempts: true,
  retryBase: true,
  retryMax: true,
  prepare: true,
  behindPooler: true,
  preparedStatementCacheSize: true,
  transformResultNames: true,
  transformQueryNames: true,
  transformJson: true,
  tenantSetting: true,
  requireTenant: true,
  tenantFormat: true,
  tenantMaxLength: true,
  sessionCheck: true,
  searchPath: true,
  fairness: true,
  tenantWeights: true,
  defaultTenantWeight: true,
  priorityWeights: true,
  tenantMaxInUse: true,
  tenantMaxQueued: true,
  tenantTelemetry: true,
  tenantMetricsLimit: true,
  maxConnections: true,
  minConnections: true,
  connectionTTL: true,
  multiplex: true,
  multiplexConcurrency: true
}

/** `PgClient`'s names for the pool's own options. */
const aliases = {
  maxConnections: "max",
  minConnections: "min",
  connectionTTL: "maxLifetime",
  multiplexConcurrency: "pipelineDepth"
} as const satisfies Partial<Record<keyof Options, keyof Options>>

/** Edit distance, case-insensitive: how far a misspelt key is from an option. */
const distance = (a: string, b: string): number => {
  const x = a.toLowerCase()
  const y = b.toLowerCase()
  let row = Array.from({ length: y.length + 1 }, (_, j) => j)
  for (let i = 1; i <= x.length; i++) {
    const next = [i]
    for (let j = 1; j <= y.length; j++) {
      next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (x[i - 1] === y[j - 1] ? 0 : 1))
    }
    row = next
  }
  return row[y.length]
}

/** The option a key most likely meant, if one is close enough to say so. */
const nearest = (key: string): string | undefined => {
  let best: string | undefined
  let bestDistance = Infinity
  for (const name of Object.keys(known)) {
    const d = distance(key, name)
    if (d < bestDistance) {
      best = name
      bestDistance = d
    }
  }
  return bestDistance <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined
}

/**
 * `options` under the pool's own names: `PgClient`'s names mapped onto
 * them (`multiplex: false` is `pipelineDepth: 1`), or the first key that is
 * no option, or that says something else than the pool's own name beside it.
 *
 * @internal
 */
export const canonical = (options: Options): Options | PoolConfigError => {
  const unknown = Object.keys(options).find((key) => !Object.hasOwn(known, key))
  if (unknown !== undefined) {
    const guess = nearest(unknown)
    return new PoolConfigError({
      field: unknown,
      value: "(not shown)",
      reason: `not an option of the pool${guess === undefined ? "" : `; did you mean ${guess}?`}`
    })
  }
  const renamed: Record<string, unknown> = { ...options }
  const pairs: Array<readonly [alias: string, own: string, value: unknown]> = Object.entries(aliases)
    .map(([alias, own]) => [alias, own, options[alias as keyof typeof aliases]] as const)
  if (options.multiplex === false) pairs.push(["multiplex", "pipelineDepth", 1])
  for (const [alias, own, value] of pairs) {
    if (value === undefined) continue
    if (renamed[own] !== undefined && renamed[own] !== value) {
      return new PoolConfigError({
        field: alias,
        value: String(value),
        reason: `says otherwise than ${own} (${String(renamed[own])}), which it is another name for`
      })
    }
    renamed[own] = value
  }
  for (const alias of [...Object.keys(aliases), "multiplex"]) delete renamed[alias]
  return renamed as Options
}
