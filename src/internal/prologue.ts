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

/** Marks the answer of the pinning prologue when it found something to pin: flags of what it found follow. */
const leftoverMark = "leftover:"

/**
 * What the prologue checks of a session, each as a condition that holds on
 * a clean one and the words for what an earlier borrower left when it does
 * not. `$1` is the tenant setting, `$3` the pinned `search_path`.
 */
const sessionChecks: ReadonlyArray<readonly [string, string]> = [
  ["coalesce(current_setting($1, true), '') = ''", "a tenant setting"],
  ["current_user = session_user", "a role"],
  ["current_setting('search_path') = $3", "a search_path"],
  ["pg_my_temp_schema() = 0", "a temporary schema"],
  // A scan of the session's portals: the dearest check, left out where only `FETCH` or a function could use it.
  ["NOT EXISTS (SELECT FROM pg_cursors WHERE is_holdable)", "a holdable cursor"]
]

/** The checks a prologue makes: without the cursor scan for a statement on a shared connection. */
const checksFor = (cursors: boolean) => cursors ? sessionChecks : sessionChecks.slice(0, -1)

/** One flag per check, `1` where the session fails it: what the prologue reports. */
const flags = (checks: ReadonlyArray<readonly [string, string]>): string =>
  checks.map(([condition]) => `(NOT ${condition})::int`).join(" || ")

/** What failed flags say, in words. */
const described = (bits: string, checks: ReadonlyArray<readonly [string, string]>, skip: ReadonlySet<string> = new Set()) =>
  checks.filter(([, words], i) => bits[i] === "1" && !skip.has(words)).map(([, words]) => words).join(", ")

/**
 * The prologue. `$1` the tenant setting, `$2` its value for this transaction
 * (`""` without a tenant), `$3` the pinned `search_path`. Both forms answer
 * a clean session by setting the tenant, transaction-locally, and returning
 * the value `set_config` set; they differ on a session that is not clean.
 *
 * - `refusing` (directly on PostgreSQL, where the pool set every session
 *   up): the prologue fails, and with it the rest of its cycle, so the work
 *   it guards never runs; its error says what it found. The pool retires
 *   the connection and runs the work on another.
 * - `pinning` (behind a pooler, whose server connections other clients
 *   leave as they like, and whose `search_path` the pool never set): it
 *   sets the tenant, the role (`NONE`: the session's own) and the
 *   `search_path`, transaction-locally, answers with flags of what it found
 *   (read before anything is set: operands are evaluated left to right),
 *   then checks the values in force and fails if any is not the pinned one,
 *   or a temporary schema or holdable cursor is on the session.
 */
const prologueOf = (form: "refusing" | "pinning", cursors: boolean): string => {
  const checks = checksFor(cursors)
  const clean = checks.map(([condition]) => condition).join(" AND ")
  const fast = "CASE WHEN $2 = '' THEN '' ELSE set_config($1, $2, true) END"
  if (form === "refusing") {
    return `SELECT CASE WHEN ${clean} THEN ${fast}
  ELSE set_config('default_transaction_isolation', '${unconfirmedMark} ' || ${flags(checks)}, true) END`
  }
  const inForce = ["coalesce(current_setting($1, true), '') = $2", ...checks.slice(1).map(([condition]) => condition)].join(" AND ")
  return `SELECT CASE WHEN ${clean} THEN ${fast}
  ELSE '${leftoverMark}' || ${flags(checks)}
    || substr(set_config($1, $2, true) || set_config('role', 'none', true) || set_config('search_path', $3, true), 1, 0)
    || CASE WHEN ${inForce} THEN '' ELSE set_config('default_transaction_isolation', '${unconfirmedMark} pinned', true) END
END`
}

/**
 * The prologues of the transactions a lease starts, which also refuse a
 * session holding a holdable cursor (whose rows only `FETCH`, a statement
 * that never shares a connection, or a function could read), and of shared
 * statements, which skip that scan; refusing and pinning forms.
 *
 * @internal
 */
export const prologues = {
  refusing: { lease: prologueOf("refusing", true), shared: prologueOf("refusing", false) },
  pinning: { lease: prologueOf("pinning", true), shared: prologueOf("pinning", false) }
} as const

/** What the pool's session must look like; the values the prologue pins. @internal */
export interface Pins {
  readonly tenantSetting: string
  /** The pinned `search_path`, with `pg_temp` last. */
  readonly searchPath: string
  /**
   * The pool set every session up (directly on PostgreSQL): its own
   * `search_path` is the pinned one, and a session that differs is refused.
   * Not behind a pooler, whose server connections the pool does not set
   * up: there the prologue pins.
   */
  readonly baseline: boolean
}

/** The prologue for a transaction of tenant `tenant` (`""` for none); `shared` for a statement on a shared connection. @internal */
export const query = (pins: Pins, tenant: string, shared = false): Query => {
  const form = pins.baseline ? prologues.refusing : prologues.pinning
  return {
    sql: shared ? form.shared : form.lease,
    params: [pins.tenantSetting, tenant, pins.searchPath],
    prepare: true,
    shape: "values"
  }
}

/** What the prologue's answer says, when it ran. @internal */
export interface Verdict {
  /** What an earlier borrower left on the session, in words; `undefined` when it was clean. */
  readonly leftover: string | undefined
  /** Why the answer is not the one expected, if it is not: the work must not count. */
  readonly problem: string | undefined
}

/**
 * Reads the prologue's answer: the tenant's value as `set_config` set it
 * on a clean session; behind a pooler, flags of what it found and pinned.
 * A different `search_path` is not a leftover there: the pool never set one.
 *
 * @internal
 */
export const verdict = (answer: Answer, pins: Pins, tenant: string): Verdict => {
  const value = (answer.rows[0] as ReadonlyArray<unknown> | undefined)?.[0]
  if (value === tenant) return { leftover: undefined, problem: undefined }
  if (typeof value !== "string" || pins.baseline || !value.startsWith(leftoverMark)) {
    return { leftover: undefined, problem: "the prologue did not answer with the transaction's tenant" }
  }
  const found = described(value.slice(leftoverMark.length), sessionChecks, new Set(["a search_path"]))
  return { leftover: found === "" ? undefined : found, problem: undefined }
}

/**
 * Why a prologue failed, in words, when it failed on the session (what an
 * earlier borrower left, or pinned values not in force); `undefined` for any
 * other failure.
 *
 * @internal
 */
export const isUnconfirmed = (error: SqlError): string | undefined => {
  const message = (error.reason.cause as { readonly message?: unknown } | undefined)?.message
  if (typeof message !== "string") return undefined
  const at = message.indexOf(unconfirmedMark)
  if (at < 0) return undefined
  const rest = message.slice(at + unconfirmedMark.length).replace(/"$/, "").trim()
  return /^[01]+$/.test(rest) ? described(rest, sessionChecks) : "the pinned settings not in force"
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
