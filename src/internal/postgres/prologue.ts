/**
 * What tenant isolation depends on, checked by the server in every
 * transaction the pool starts, and restored on the session when a borrower
 * may have changed it.
 *
 * **The prologue.** The first statement of every transaction the pool starts
 * (a lone statement's implicit one, or after `BEGIN`), in the same cycle as
 * the work it protects. On a clean session (no tenant setting, the
 * session's own role, the pinned `search_path` with `pg_temp` last, no
 * temporary schema, and for a lease no holdable cursor) it sets only the
 * tenant, transaction-locally, and answers with the value set. On any other
 * session, directly on PostgreSQL it fails, and with it the rest of its
 * cycle, so the work it guards never runs; behind a pooler it pins tenant,
 * role and `search_path` transaction-locally, then fails unless they are in
 * force.
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
 * Why this module is over 300 lines: the SQL of the prologue and the reset,
 * and what reads their answers (`verdict`, `isUnconfirmed`, `resetProblem`,
 * and `onCleanSession` for the test kit), change together; apart, one
 * would drift from the other.
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
 * Equality as PostgreSQL's own. Everything the pool's statements call is
 * qualified with `pg_catalog`: a session whose `search_path` lists another
 * schema before `pg_catalog` would otherwise resolve them to look-alike
 * functions and operators there, which could fake every check.
 */
const eq = "OPERATOR(pg_catalog.=)"

/** The value of setting `name` (an SQL expression), `''` when unset. */
const setting = (name: string) => `COALESCE(pg_catalog.current_setting(${name}, true), '')`

/**
 * One thing the prologue checks of a session: a condition that holds on a
 * clean one, the words for what an earlier borrower left when it does not,
 * and, where it differs, what behind a pooler must hold for the pinned
 * transaction to go on (`pinned`). `$1` is the tenant setting, `$3` the
 * pinned `search_path`, `$4` the same without `pg_temp`.
 */
interface Check {
  readonly clean: string
  readonly words: string
  readonly pinned?: string
}

/** The session has never had a temporary schema (once made, it stays with the backend). */
const noTemporarySchema = `pg_catalog.pg_my_temp_schema() ${eq} 0`

/** What the prologue checks, in the order of its flags. */
const sessionChecks: ReadonlyArray<Check> = [
  { clean: `${setting("$1")} ${eq} ''`, words: "a tenant setting" },
  { clean: `current_user ${eq} session_user`, words: "a role" },
  // Without `pg_temp` listed it is searched first; harmless on a session without a temporary schema (checked next).
  { clean: `${setting("'search_path'")} ${eq} ANY (ARRAY[$3, $4])`, words: "a search_path" },
  {
    clean: noTemporarySchema,
    words: "temporary objects",
    // A temporary schema stays with a backend once made, even after PgBouncer's `DISCARD ALL`: behind a pooler what
    // matters is a relation in it. Directly the pool retires such a session. The scan is planned and run only when
    // there is a schema (a subquery would be planned for every transaction: behind a pooler statements are unnamed).
    pinned: `(${noTemporarySchema} OR pg_catalog.query_to_xml('SELECT FROM pg_catalog.pg_class WHERE relnamespace ` +
      `${eq} pg_catalog.pg_my_temp_schema() LIMIT 1', false, true, '') IS DOCUMENT IS NOT TRUE)`
  },
  // A scan of the session's portals: the dearest check, left out where only `FETCH` or a function could use it.
  { clean: "NOT EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable)", words: "a holdable cursor" }
]

/** The checks a prologue makes: without the cursor scan for a statement on a shared connection. */
const checksFor = (cursors: boolean) => cursors ? sessionChecks : sessionChecks.slice(0, -1)

/** The column of the session's observation that holds a check's clean condition, or its pinned one. */
const column = (i: number, pinned = false) => `${pinned ? "p" : "c"}${i}`

/**
 * The session as the prologue finds it, read once, before anything is set
 * (`OFFSET 0` keeps the planner from copying its subqueries into every
 * place the outer statement reads them).
 */
const observation = (checks: ReadonlyArray<Check>, pinned: boolean) =>
  `(SELECT ${
    checks.flatMap((check, i) => [
      `${check.clean} AS ${column(i)}`,
      ...(pinned && check.pinned !== undefined ? [`${check.pinned} AS ${column(i, true)}`] : [])
    ]).join(", ")
  } OFFSET 0) AS session`

/**
 * One flag per check, `t` where the session fails it: what the prologue
 * reports. (`concat` of booleans: no operator or cast to resolve, which
 * costs planning time when the prologue is not prepared.)
 */
const flags = (checks: ReadonlyArray<Check>, pinned: boolean): string =>
  checks.map((check, i) => `NOT ${column(i, pinned && check.pinned !== undefined)}`).join(", ")

/** What failed flags say, in words. */
const described = (found: string, skip: ReadonlySet<string> = new Set()) =>
  sessionChecks.filter(({ words }, i) => found[i] === "t" && !skip.has(words)).map(({ words }) => words).join(", ")

/** Sets `name` to `value` for the transaction; as an argument of `concat`, adds nothing to its answer. */
const pin = (name: string, value: string) => `pg_catalog.left(pg_catalog.set_config(${name}, ${value}, true), 0)`

/** Fails the statement (and its cycle) with `why` in the error message. */
const refuse = (why: string) =>
  `pg_catalog.set_config('default_transaction_isolation', pg_catalog.concat('${unconfirmedMark} ', ${why}), true)`

/**
 * The prologue. `$1` the tenant setting, `$2` its value for this transaction
 * (`""` without a tenant), `$3` the pinned `search_path`, `$4` the same
 * without `pg_temp`. Both forms answer a clean session by setting the
 * tenant, transaction-locally, and returning the value `set_config` set;
 * they differ on a session that is not clean.
 *
 * - `refusing` (directly on PostgreSQL, where the pool set every session
 *   up): the prologue fails, and with it the rest of its cycle, so the work
 *   it guards never runs; its error says what it found. The pool retires
 *   the connection and runs the work on another.
 * - `pinning` (behind a pooler, whose server connections other clients
 *   leave as they like): it sets the tenant, the role (`NONE`: the
 *   session's own) and the `search_path`, transaction-locally, answers with
 *   flags of what it found, then checks the values in force and fails if
 *   any is not the pinned one, or a temporary relation or holdable cursor is
 *   on the session. (`concat` evaluates its arguments in order: the flags
 *   are read before anything is set.)
 */
const prologueOf = (form: "refusing" | "pinning", cursors: boolean): string => {
  const checks = checksFor(cursors)
  const clean = checks.map((_, i) => column(i)).join(" AND ")
  const fast = `CASE WHEN $2 ${eq} '' THEN '' ELSE pg_catalog.set_config($1, $2, true) END`
  const session = observation(checks, form === "pinning")
  if (form === "refusing") {
    return `SELECT CASE WHEN ${clean} THEN ${fast} ELSE ${refuse(flags(checks, false))} END FROM ${session}`
  }
  const inForce = [
    `${setting("$1")} ${eq} $2`,
    `current_user ${eq} session_user`,
    `${setting("'search_path'")} ${eq} $3`,
    ...checks.slice(3).map((check, i) => column(i + 3, check.pinned !== undefined))
  ].join(" AND ")
  return `SELECT CASE WHEN ${clean} THEN ${fast}
  ELSE pg_catalog.concat('${leftoverMark}', ${flags(checks, true)},
    ${pin("$1", "$2")}, ${pin("'role'", "'none'")}, ${pin("'search_path'", "$3")},
    CASE WHEN ${inForce} THEN '' ELSE ${refuse("'pinned'")} END)
END FROM ${session}`
}

/**
 * The prologues of the transactions a lease starts, which also refuse a
 * session holding a holdable cursor (whose rows only `FETCH`, a statement
 * that never shares a connection, or a function could read), and of shared
 * statements, which skip that scan; refusing and pinning forms.
 */
const prologues = {
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
    params: [pins.tenantSetting, tenant, pins.searchPath, withoutTemp(pins.searchPath)],
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
  const found = described(value.slice(leftoverMark.length), new Set(["a search_path"]))
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
  return /^[tf]+$/.test(rest) ? described(rest) : "the pinned settings not in force"
}

/** Makes `$1` the session's own `search_path`. */
const baselineSql = "SELECT pg_catalog.set_config('search_path', $1, false)"

/**
 * The statements that restore a session as the pool opened it; the last
 * reports what cannot be restored: SQL-prepared statements, a temporary
 * schema.
 */
const resetSql: ReadonlyArray<string> = [
  "SET SESSION AUTHORIZATION DEFAULT",
  "RESET ALL",
  baselineSql,
  "CLOSE ALL",
  "UNLISTEN *",
  "DISCARD TEMP",
  "DISCARD SEQUENCES",
  `SELECT pg_catalog.concat(pg_catalog.pg_advisory_unlock_all()),
    pg_catalog.concat((SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)) AS prepared,
    pg_catalog.concat(${noTemporarySchema}) AS no_temp_schema`
]

/** The last reset statement's report on a session as the pool opened it: locks released, nothing SQL-prepared, no temporary schema. */
const cleanReport: readonly [unlocked: string, prepared: string, noTempSchema: string] = ["", "0", "t"]

/**
 * The reset, as one cycle. Its statements are unnamed: a borrower can
 * replace a named statement of its session (`DEALLOCATE`, then `PREPARE`
 * under the same name), and the reset must be the pool's own whatever the
 * borrower did; its report then closes a session that holds one.
 *
 * @internal
 */
export const reset = (pins: Pins): ReadonlyArray<Query> =>
  resetSql.map((sql) => ({ sql, params: sql === baselineSql ? [pins.searchPath] : [], prepare: false, shape: "values" }))

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
  const [, prepared, noTempSchema] = (last.rows[0] as ReadonlyArray<unknown> | undefined) ?? []
  return prepared !== cleanReport[1]
    ? "the session holds SQL-prepared statements"
    : noTempSchema !== cleanReport[2]
    ? "the session has a temporary schema"
    : undefined
}

/** Reads the session's `search_path`, to pin it. @internal */
export const searchPathQuery: Query = {
  sql: "SELECT pg_catalog.current_setting('search_path')",
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

/** What a session answers one of the pool's own statements with. @internal */
export interface CleanAnswer {
  readonly rows: ReadonlyArray<ReadonlyArray<unknown>>
  /** For a prologue, the tenant it sets for its transaction (`""`: none). */
  readonly tenant?: string | undefined
}

/** The prologue's texts, in every form. */
const prologueTexts: ReadonlySet<string> = new Set(Object.values(prologues).flatMap((form) => [form.lease, form.shared]))

/**
 * How a session as the pool opened it answers one of the pool's own
 * statements (`undefined` for any other): the prologue with the tenant it
 * sets, the reset with a clean report, the `search_path` query with
 * `searchPath` (the server's default). For a database that stands in for
 * PostgreSQL (the test kit's), which so needs to know nothing of their text.
 *
 * @internal
 */
export const onCleanSession = (query: Query, searchPath: string): CleanAnswer | undefined => {
  if (prologueTexts.has(query.sql)) {
    // `$2`, the tenant's value, as `set_config` returns it: what `verdict` expects of a clean session.
    const tenant = query.params[1] as string
    return { rows: [[tenant]], tenant }
  }
  if (query.sql === searchPathQuery.sql) return { rows: [[searchPath]] }
  if (query.sql === baselineSql) return { rows: [[query.params[0]]] }
  const step = resetSql.indexOf(query.sql)
  if (step < 0) return undefined
  return { rows: step === resetSql.length - 1 ? [cleanReport] : [] }
}

/**
 * The `search_path` to pin: the schemas of `current` (the server's default
 * for the pool's role and database) in their order, without `pg_temp`,
 * followed by `pg_temp`. Listing `pg_temp` last is what stops PostgreSQL
 * from searching it first.
 *
 * @internal
 */
export const pinnedSearchPath = (current: string): string => {
  const schemas = SqlText.listElements(current).filter((element) => !SqlText.isName(element, "pg_temp"))
  return [...schemas, "pg_temp"].join(", ")
}

/** A pinned `search_path` without its trailing `pg_temp`: as a session holds its schemas before the pool pins them. */
const withoutTemp = (searchPath: string): string => searchPath.replace(/(^|, )pg_temp$/, "")

/** A `search_path` of the given schema names, quoted, with `pg_temp` last. @internal */
export const searchPathOf = (schemas: ReadonlyArray<string>): string =>
  [...schemas.filter((schema) => schema !== "pg_temp").map((schema) => `"${schema.replaceAll("\"", "\"\"")}"`), "pg_temp"]
    .join(", ")
