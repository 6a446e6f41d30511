/**
 * What tenant isolation depends on, pinned by the server in every
 * transaction the pool starts, and restored on the session when a borrower
 * may have changed it.
 *
 * **The prologue.** The first statement of every transaction the pool starts
 * (a lone statement's implicit one, or after `BEGIN`), in the same cycle as
 * the work it protects. It sets, transaction-locally, the tenant setting (the
 * tenant's id, or empty without a tenant), the role (back to the session's
 * own, `NONE`), the `search_path` (the configured schemas with `pg_temp`
 * last, so a temporary table cannot shadow a real one) and `row_security`
 * (`on`), each only when the session does not already hold that value: a
 * clean session pays for a few reads and one write. It reports what it found
 * different (what an earlier borrower left behind). Then the server checks
 * the values in force, and that no temporary relation or holdable cursor
 * (which could hold an earlier borrower's rows) is on the session; if
 * anything is off, the prologue fails, and with it the rest of its cycle:
 * the work it guards never runs.
 *
 * **The reset.** After a lease that may have left session state (as its
 * statements, the server's reports or the prologue say), one cycle puts the
 * session back as it was opened: role and session authorization, every
 * session setting (custom ones too), cursors, `LISTEN`, temporary objects,
 * sequences' session values, session advisory locks. A session that holds
 * SQL-level prepared statements (they cannot be dropped without their
 * names), or has had a temporary schema (it stays once made), is closed
 * instead.
 *
 * @internal
 */
import type { SqlError } from "effect/sql/SqlError"
import type { Answer, Query, Reply } from "./wire.ts"
import * as SqlText from "./sqlText.ts"

/** Marks the prologue's own failure in its error message. */
const unconfirmedMark = "meshhook: isolation not in force:"

/**
 * `$1` the tenant setting, `$2` its value for this transaction (`""` without
 * a tenant), `$3` the pinned `search_path`, `$4` the pool's login role (`""`
 * when unknown). Columns are evaluated left to right: `leftover` reads the
 * session before anything is set, `pinned` sets what differs, and
 * `confirmed` checks the values in force, and that the session holds no
 * object that carries an earlier borrower's rows (a temporary relation, a
 * holdable cursor), failing the statement (and so the rest of its cycle:
 * the work it guards never runs) otherwise. Its error is recognised by
 * {@link isUnconfirmed}.
 *
 * @internal
 */
export const prologueSql = `SELECT concat_ws(', ',
    CASE WHEN coalesce(current_setting($1, true), '') <> '' THEN 'a tenant setting' END,
    CASE WHEN current_user <> session_user THEN 'a role' END,
    CASE WHEN current_setting('search_path') <> $3 THEN 'a search_path' END,
    CASE WHEN current_setting('row_security') <> 'on' THEN 'row_security' END) AS leftover,
  concat(
    CASE WHEN coalesce(current_setting($1, true), '') = $2 THEN '' ELSE set_config($1, $2, true) END,
    CASE WHEN current_user = session_user THEN '' ELSE set_config('role', 'none', true) END,
    CASE WHEN current_setting('search_path') = $3 THEN '' ELSE set_config('search_path', $3, true) END,
    CASE WHEN current_setting('row_security') = 'on' THEN '' ELSE set_config('row_security', 'on', true) END) AS pinned,
  CASE WHEN coalesce(current_setting($1, true), '') = $2 AND current_user = session_user
      AND ($4 = '' OR session_user = $4) AND current_setting('search_path') = $3 AND current_setting('row_security') = 'on'
      AND pg_my_temp_schema() = 0 AND NOT EXISTS (SELECT FROM pg_cursors WHERE is_holdable)
    THEN ''
    ELSE set_config('default_transaction_isolation', '${unconfirmedMark} ' || concat_ws(', ',
      CASE WHEN coalesce(current_setting($1, true), '') <> $2 THEN 'the tenant setting' END,
      CASE WHEN current_user <> session_user THEN 'the role' END,
      CASE WHEN $4 <> '' AND session_user <> $4 THEN 'the session user' END,
      CASE WHEN current_setting('search_path') <> $3 THEN 'the search_path' END,
      CASE WHEN current_setting('row_security') <> 'on' THEN 'row_security' END,
      CASE WHEN pg_my_temp_schema() <> 0 THEN 'a temporary schema on the session' END,
      CASE WHEN EXISTS (SELECT FROM pg_cursors WHERE is_holdable) THEN 'a holdable cursor on the session' END), true)
  END AS confirmed`

/** What the pool's session must look like; the values the prologue pins. @internal */
export interface Pins {
  readonly tenantSetting: string
  /** The pinned `search_path`, with `pg_temp` last. */
  readonly searchPath: string
  /** The role the pool logs in as, when known: the session user must be it. */
  readonly login: string | undefined
  /**
   * The session's own `search_path` is the pinned one (set when the pool
   * opened it), so a different one is a leftover. Not behind a pooler,
   * whose server connections the pool does not set up.
   */
  readonly baseline: boolean
}

/** The prologue for a transaction of tenant `tenant` (`""` for none). @internal */
export const query = (pins: Pins, tenant: string): Query => ({
  sql: prologueSql,
  params: [pins.tenantSetting, tenant, pins.searchPath, pins.login ?? ""],
  prepare: true,
  shape: "values"
})

/**
 * What an earlier borrower left on the session, in words, from the
 * prologue's answer; `undefined` when it was clean. Without a session
 * baseline (behind a pooler) a different `search_path` is not a leftover.
 *
 * @internal
 */
export const leftover = (answer: Answer, pins: Pins): string | undefined => {
  const found = String((answer.rows[0] as ReadonlyArray<unknown> | undefined)?.[0] ?? "")
    .split(", ")
    .filter((what) => what !== "" && (pins.baseline || what !== "a search_path"))
  return found.length === 0 ? undefined : found.join(", ")
}

/**
 * What the server could not confirm, when a prologue failed because the
 * values in force were not the pinned ones; `undefined` for any other
 * failure.
 *
 * @internal
 */
export const isUnconfirmed = (error: SqlError): string | undefined => {
  const message = (error.reason.cause as { readonly message?: unknown } | undefined)?.message
  if (typeof message !== "string") return undefined
  const at = message.indexOf(unconfirmedMark)
  return at < 0 ? undefined : message.slice(at + unconfirmedMark.length).replace(/"$/, "").trim()
}

/** Makes `$1` the session's own `search_path`. @internal */
export const baselineSql = "SELECT set_config('search_path', $1, false)"

/**
 * The statements that restore a session as the pool opened it; the last
 * reports SQL-prepared statements.
 *
 * @internal
 */
export const resetSql: ReadonlyArray<string> = [
  "SET SESSION AUTHORIZATION DEFAULT",
  "RESET ALL",
  baselineSql,
  "CLOSE ALL",
  "UNLISTEN *",
  "DISCARD TEMP",
  "DISCARD SEQUENCES",
  `SELECT pg_advisory_unlock_all()::text, (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::text AS prepared,
    pg_my_temp_schema()::int::text AS temp_schema`
]

/** The reset, as one cycle. @internal */
export const reset = (pins: Pins): ReadonlyArray<Query> =>
  resetSql.map((sql) => ({ sql, params: sql.includes("$1") ? [pins.searchPath] : [], prepare: true, shape: "values" }))

/**
 * Whether the reset left the session as the pool opened it; if not, why
 * (the connection must then be closed).
 *
 * @internal
 */
export const resetProblem = (reply: Reply): string | undefined => {
  if (reply.status !== "I") return "the reset did not end outside a transaction"
  const failed = reply.answers.find((answer) => answer === undefined || !("command" in answer))
  if (failed !== undefined) return "the reset failed"
  const last = reply.answers[reply.answers.length - 1] as Answer
  const [, prepared, tempSchema] = (last.rows[0] as ReadonlyArray<unknown> | undefined) ?? []
  return prepared !== "0"
    ? "the session holds SQL-prepared statements"
    : tempSchema !== "0"
    ? "the session has a temporary schema"
    : undefined
}

/** Reads the session's `search_path`, to pin it. @internal */
export const searchPathQuery: Query = {
  sql: "SELECT current_setting('search_path')",
  params: [],
  prepare: false,
  shape: "values"
}

/** Sets the pinned `search_path` for the session, as its own default. @internal */
export const baseline = (pins: Pins): Query => ({
  sql: baselineSql,
  params: [pins.searchPath],
  prepare: false,
  shape: "values"
})

/**
 * The `search_path` to pin: the schemas of `current` (the server's default
 * for the pool's role and database) in their order, without `pg_temp`,
 * followed by `pg_temp`. Listing `pg_temp` last is what stops PostgreSQL
 * from searching it first.
 *
 * @internal
 */
export const pinnedSearchPath = (current: string): string => {
  const schemas = splitList(current).filter((part) => {
    const tokens = SqlText.tokenize(part)
    return !(tokens.length === 1 && tokens[0].text.toLowerCase() === "pg_temp")
  })
  return [...schemas, "pg_temp"].join(", ")
}

/** The elements of a comma-separated setting, commas inside double quotes kept. */
const splitList = (list: string): Array<string> => {
  const parts: Array<string> = []
  let part = ""
  let quoted = false
  for (const c of list) {
    if (c === "\"") quoted = !quoted
    if (c === "," && !quoted) {
      parts.push(part)
      part = ""
    } else {
      part += c
    }
  }
  parts.push(part)
  return parts.map((p) => p.trim()).filter((p) => p !== "")
}

/** A `search_path` of the given schema names, quoted, with `pg_temp` last. @internal */
export const searchPathOf = (schemas: ReadonlyArray<string>): string =>
  [...schemas.filter((schema) => schema !== "pg_temp").map((schema) => `"${schema.replaceAll("\"", "\"\"")}"`), "pg_temp"]
    .join(", ")
