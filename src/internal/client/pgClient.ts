/**
 * The pool as `@effect/sql-pg`'s `PgClient` service: the pool's `SqlClient`
 * with `json`, `listen`, `notify` and `config` beside it, under the same
 * service tag, so a program written for `PgClient.layer` runs on the pool's
 * layer unchanged.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as SqlClient from "effect/sql/SqlClient"
import { SqlError, UnknownError } from "effect/sql/SqlError"
import * as Statement from "effect/sql/Statement"
import * as PgClient from "@effect/sql-pg/PgClient"
import type * as Listener from "./listener.ts"
import * as PoolError from "../../PoolError.ts"
import type * as PoolConfig from "../../PoolConfig.ts"

/** The custom fragment `PgClient.makeCompiler` binds as `jsonb` (the pool's layer compiles with it). */
const pgJson = Statement.custom<Statement.Custom<"PgJson", unknown, void, void>>("PgJson")

/**
 * PostgreSQL truncates identifiers past 63 bytes, so a longer channel would listen on another name.
 *
 * @internal
 */
export const channelTooLong = (channel: string, operation: string): SqlError | undefined =>
  Buffer.byteLength(channel, "utf8") <= 63 ? undefined : new SqlError({
    reason: new UnknownError({
      cause: new Error("channel name too long"),
      message: "PostgreSQL channel names must not exceed 63 UTF-8 bytes",
      operation
    })
  })

/**
 * What `PgClient.config` reads as: the connection's settings (the password
 * stays `Redacted`), the name transforms and the pool's size under
 * `PgClient`'s option names.
 */
const configOf = (resolved: PoolConfig.Resolved): PgClient.PgClientConfig & {
  readonly maxConnections: number
  readonly minConnections: number
} => ({
  ...resolved.connection,
  transformResultNames: resolved.transformResultNames,
  transformQueryNames: resolved.transformQueryNames,
  transformJson: resolved.transformJson,
  maxConnections: resolved.max,
  minConnections: resolved.min
})

/**
 * `sql` extended in place into a `PgClient` (the service's methods are
 * properties of the client function, as `@effect/sql-pg` builds its own).
 *
 * @internal
 */
export const make = (
  sql: SqlClient.SqlClient,
  resolved: PoolConfig.Resolved,
  listener: Listener.Listener
): PgClient.PgClient => {
  // Behind a transaction-mode pooler a client's session is not its own between transactions: nothing would
  // keep the LISTEN, or deliver its notifications.
  const pooled = resolved.behindPooler === "transaction"
    ? PoolError.toSqlError(
      new PoolError.SessionStateNotAllowedError({ statement: "LISTEN", reason: "a LISTEN registration" })
    )
    : undefined
  return Object.assign(sql, {
    [PgClient.TypeId]: PgClient.TypeId,
    config: configOf(resolved),
    json: (value: unknown) => Statement.fragment([pgJson(value, undefined, undefined)]),
    listen: (channel: string) => {
      const refused = channelTooLong(channel, "listen") ?? pooled
      return refused === undefined ? listener.listen(channel) : Effect.fail(refused)
    },
    notify: (channel: string, payload: string) => {
      const refused = channelTooLong(channel, "notify")
      return refused === undefined ? Effect.asVoid(sql`SELECT pg_notify(${channel}, ${payload})`) : Effect.fail(refused)
    }
  }) as PgClient.PgClient
}
