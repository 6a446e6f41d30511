/**
 * Helpers for tests against the real server started by globalSetup.
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Context from "effect/Context"
import * as Layer from "effect/Layer"
import * as SqlClient from "effect/sql/SqlClient"
import type * as PgBouncer from "../../src/testing/PgBouncer.ts"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Exit from "effect/Exit"
import { SqlError } from "effect/sql/SqlError"
import { randomBytes } from "node:crypto"
import { inject } from "vitest"
import { sqlStateOf } from "../../src/internal/postgres/sqlState.ts"
import * as Pool from "../../src/Pool.ts"
import type * as PoolConfig from "../../src/PoolConfig.ts"

export const databaseUrl = (): string => inject("databaseUrl")

/** The test server itself, never through PgBouncer: for tests that must reach its backends. */
export const serverUrl = (): string => inject("serverUrl")

/** What the test pools sit behind: a transaction-mode PgBouncer in the `pgbouncer` project. */
export const behindPooler = (): "none" | "transaction" => inject("behindPooler") ?? "none"

/** The SQLSTATE the server failed an exit with; `undefined` for a success, a defect or a client-side error. */
export const sqlStateOfExit = (exit: Exit.Exit<unknown, unknown>): string | undefined => {
  const error = Exit.findErrorOption(exit)
  return error._tag === "Some" && error.value instanceof SqlError ? sqlStateOf(error.value) : undefined
}

/** A name no other test uses, for tables and application names. */
export const uniqueName = (prefix: string): string => `${prefix}_${randomBytes(4).toString("hex")}`

/** A superuser connection outside any pool, to look at the server from the side. */
export const admin: Effect.Effect<PgConnection.PgConnection, SqlError, Scope.Scope> = Effect.suspend(() =>
  PgConnection.make({ url: Redacted.make(databaseUrl()), applicationName: "meshhook-test-admin" })
)

/** Server backends opened under `applicationName`. */
export const backends = (conn: PgConnection.PgConnection, applicationName: string) =>
  Effect.map(
    conn.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1", [applicationName]),
    (result) => result.rows[0].n as number
  )

/** Polls until `condition` holds, every 20 ms, for at most `millis`; returns whether it held. */
export const eventually = <E, R>(
  condition: Effect.Effect<boolean, E, R>,
  millis = 5_000
): Effect.Effect<boolean, E, R> =>
  Effect.gen(function*() {
    const until = Date.now() + millis
    while (Date.now() < until) {
      if (yield* condition) return true
      yield* Effect.sleep(20)
    }
    return yield* condition
  })

/** A pool of its own for `use`, closed when it returns. */
export const withPool = <A, E>(
  options: PoolConfig.Options,
  use: (services: { readonly sql: SqlClient.SqlClient; readonly pool: Pool.Pool["Service"] }) => Effect.Effect<A, E, Scope.Scope>
) =>
  Effect.scoped(Effect.gen(function*() {
    const context = yield* Layer.build(Pool.layer(options))
    return yield* use({ sql: Context.get(context, SqlClient.SqlClient), pool: Context.get(context, Pool.Pool) })
  }))

/** A role's login on a server, from a URL. */
export interface Login {
  readonly user: string
  readonly password: string
  readonly database: string
}

export const loginOf = (url: string | Redacted.Redacted<string>): Login => {
  const parsed = new URL(Redacted.isRedacted(url) ? Redacted.value(url) : url)
  return {
    user: decodeURIComponent(parsed.username),
    password: decodeURIComponent(parsed.password),
    database: decodeURIComponent(parsed.pathname.slice(1)) || "postgres"
  }
}

/** A server, as PgBouncer's upstream: its address and superuser. */
export const upstreamOf = (url: string): PgBouncer.Upstream => {
  const parsed = new URL(url)
  const login = loginOf(url)
  return { host: parsed.hostname, port: Number(parsed.port || 5432), user: login.user, password: login.password }
}

/** The pool layer on the test server. */
export const poolLayer = (options: PoolConfig.Options = {}) =>
  Pool.layer({ url: databaseUrl(), behindPooler: behindPooler(), ...options })
