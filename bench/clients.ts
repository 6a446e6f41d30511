/**
 * The contenders of the benchmark suite, each behind the same small interface
 * and each used the way its own documentation shows: this pool and
 * `@effect/sql-pg`'s `PgClient` through `SqlClient` statements, node-postgres
 * through `pool.query`, postgres.js through its tagged template.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Redacted from "effect/Redacted"
import * as SqlClient from "effect/sql/SqlClient"
import pg from "pg"
import postgres from "postgres"
import type { Sql } from "../examples/meshhook/job.ts"
import * as Pool from "../src/Pool.ts"
import type * as PoolConfig from "../src/PoolConfig.ts"
import * as Tenant from "../src/Tenant.ts"

type Row = Readonly<Record<string, unknown>>

/** What every workload asks of a contender. */
export interface Client {
  /** An autocommit statement; its rows. */
  readonly query: (sql: Sql) => Promise<ReadonlyArray<Row>>
  /**
   * Statements in one transaction under `tenant` (set with
   * `set_config(..., true)`): sent together where the client can pipeline,
   * or one after another (`sequential`), as code that awaits each one does.
   */
  readonly inTenantTransaction: (tenant: string, statements: ReadonlyArray<Sql>, sequential?: boolean) => Promise<unknown>
  readonly close: () => Promise<void>
}

export type { Sql }

export interface Target {
  readonly url: Redacted.Redacted<string>
  readonly connections: number
  readonly applicationName: string
  readonly tenantSetting: string
  /** Open every connection up front (false: start cold, for the spike). */
  readonly warm: boolean
}

const setTenant = (setting: string, tenant: string): Sql => ({
  text: "SELECT set_config($1, $2, true)",
  params: [setting, tenant]
})

/** Clients on an Effect `SqlClient` (this pool, PgClient), driven through a runtime. */
const sqlClient = async (
  layer: Layer.Layer<SqlClient.SqlClient, unknown>,
  tenant: (
    sql: SqlClient.SqlClient,
    tenant: string,
    statements: ReadonlyArray<Sql>,
    concurrency: 1 | "unbounded"
  ) => Effect.Effect<unknown, unknown>
): Promise<Client> => {
  const runtime = ManagedRuntime.make(layer)
  const sql = await runtime.runPromise(Effect.service(SqlClient.SqlClient))
  return {
    query: (s) => runtime.runPromise(sql.unsafe<Row>(s.text, s.params)),
    inTenantTransaction: (id, statements, sequential) =>
      runtime.runPromise(tenant(sql, id, statements, sequential === true ? 1 : "unbounded")),
    close: () => runtime.dispose()
  }
}

/** What the benchmark uses of this pool's modules: the current ones, or an earlier checkout's (bench/beforeAfter.ts). */
export interface PoolModules {
  readonly Pool: Pick<typeof Pool, "layer">
  readonly Tenant: Pick<typeof Tenant, "with">
}

/**
 * This pool: the tenant comes from the fiber and the pool sets it. `options`
 * override the target's settings; `telemetry` is provided to it.
 */
export const meshhookPool = (
  target: Target,
  telemetry: Layer.Layer<never, unknown> = Layer.empty,
  options: PoolConfig.Options = {},
  modules: PoolModules = { Pool, Tenant }
) =>
  sqlClient(
    modules.Pool.layer({
      url: target.url,
      max: target.connections,
      min: target.warm ? target.connections : 0,
      applicationName: target.applicationName,
      tenantSetting: target.tenantSetting,
      ...options
    }).pipe(Layer.provideMerge(telemetry)),
    (sql, tenant, statements, concurrency) =>
      modules.Tenant.with(
        statements.length === 1
          ? sql.unsafe(statements[0].text, statements[0].params)
          : sql.withTransaction(Effect.forEach(statements, (s) => sql.unsafe(s.text, s.params), { concurrency })),
        tenant
      )
  )

/** `@effect/sql-pg`'s own client: the tenant is set by hand inside `withTransaction`. */
export const effectPgClient = (target: Target, multiplex: boolean) =>
  sqlClient(
    PgClient.layer({
      url: target.url,
      maxConnections: target.connections,
      minConnections: target.warm ? target.connections : 0,
      applicationName: target.applicationName,
      multiplex
    }),
    (sql, tenant, statements, concurrency) =>
      sql.withTransaction(Effect.andThen(
        sql.unsafe(setTenant(target.tenantSetting, tenant).text, setTenant(target.tenantSetting, tenant).params),
        Effect.forEach(statements, (s) => sql.unsafe(s.text, s.params), { concurrency })
      ))
  )

/**
 * node-postgres, as MeshHook uses it (`defaults`: only the connection count
 * set) or tuned (named prepared statements, kept-alive connections).
 */
export const nodePostgres = async (target: Target, tuned: boolean): Promise<Client> => {
  const pool = new pg.Pool({
    connectionString: Redacted.value(target.url),
    max: target.connections,
    application_name: target.applicationName,
    ...(tuned ? { keepAlive: true, idleTimeoutMillis: 60_000 } : {})
  })
  // An idle client's error (its server going away at the end of a run) would otherwise end the process.
  pool.on("error", () => undefined)
  const names = new Map<string, string>()
  const config = (s: Sql): pg.QueryConfig => {
    if (!tuned) return { text: s.text, values: [...s.params] }
    let name = names.get(s.text)
    if (name === undefined) names.set(s.text, name = `s${names.size}`)
    return { name, text: s.text, values: [...s.params] }
  }
  if (target.warm) {
    const clients = await Promise.all(Array.from({ length: target.connections }, () => pool.connect()))
    for (const client of clients) client.release()
  }
  return {
    query: async (s) => (await pool.query(config(s))).rows,
    inTenantTransaction: async (tenant, statements) => {
      const client = await pool.connect()
      try {
        await client.query("BEGIN")
        await client.query(config(setTenant(target.tenantSetting, tenant)))
        for (const s of statements) await client.query(config(s))
        await client.query("COMMIT")
      } catch (error) {
        await client.query("ROLLBACK").catch(() => undefined)
        throw error
      } finally {
        client.release()
      }
    },
    close: () => pool.end()
  }
}

/** postgres.js, with its defaults (prepared statements, pipelining) and the connection count set. */
export const postgresJs = async (target: Target): Promise<Client> => {
  const sql = postgres(Redacted.value(target.url), {
    max: target.connections,
    connection: { application_name: target.applicationName },
    onnotice: () => undefined
  })
  const run = (tx: postgres.Sql | postgres.TransactionSql, s: Sql) =>
    tx.unsafe(s.text, s.params as Array<postgres.ParameterOrJSON<never>>, { prepare: true })
  if (target.warm) await Promise.all(Array.from({ length: target.connections }, () => sql`SELECT 1`))
  return {
    query: (s) => run(sql, s),
    // Returning an array of queries from `begin`'s callback pipelines them. Only an array: postgres.js's
    // queries run when awaited, and an array resolved from an async callback is never awaited, so the
    // transaction would commit having run nothing (an earlier version of this harness did that).
    inTenantTransaction: (tenant, statements, sequential) =>
      sequential
        ? sql.begin(async (tx) => {
          await run(tx, setTenant(target.tenantSetting, tenant))
          for (const s of statements) await run(tx, s)
        })
        : sql.begin((tx) => [run(tx, setTenant(target.tenantSetting, tenant)), ...statements.map((s) => run(tx, s))]),
    close: () => sql.end({ timeout: 5 })
  }
}
