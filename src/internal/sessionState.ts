/**
 * Session state: what a statement may leave behind on a connection, and how
 * to ask the server whether it did.
 *
 * Tenant work only ever sets transaction-local state, which ends with the
 * transaction. Anything else a caller sets on the session (`SET`,
 * `set_config(..., false)`, `SET ROLE`, `LISTEN`, SQL `PREPARE`, temporary
 * tables, session advisory locks, holdable cursors) would outlive the lease
 * and reach the next caller. Most statements cannot do that, and are told
 * apart by their command tag and text without any round trip; a lease that
 * ran one that might is checked on the server before it is lent again.
 *
 * @internal
 */

/** Command tags of statements that cannot leave session state behind. */
const plainCommands: ReadonlySet<string> = new Set([
  "SELECT",
  "INSERT",
  "UPDATE",
  "DELETE",
  "MERGE",
  "COPY",
  "FETCH",
  "MOVE",
  "BEGIN",
  "START",
  "COMMIT",
  "ROLLBACK",
  "SAVEPOINT",
  "RELEASE",
  "SHOW",
  "EXPLAIN",
  "VALUES",
  "TRUNCATE",
  "CREATE",
  "ALTER",
  "DROP",
  "COMMENT",
  "GRANT",
  "REVOKE",
  "ANALYZE",
  "VACUUM",
  "REFRESH",
  "LOCK",
  "NOTIFY"
])

/**
 * Text that may set session state through a plain command: functions that
 * set settings or take session advisory locks, temporary objects, `dblink`.
 * `pg_advisory_xact_lock` and `SET LOCAL` are transaction-scoped; a false
 * alarm only costs a check.
 */
const suspectText =
  /\b(?:set_config|pg_advisory_lock(?:_shared)?|pg_try_advisory_lock(?:_shared)?|dblink_connect(?:_u)?)\s*\(|\btemp(?:orary)?\b|\bwith\s+hold\b/i

/**
 * Remembers `f` per statement text: workers repeat the same statements, and
 * what they look like does not change. Bounded, forgetting all when full.
 *
 * @internal
 */
export const perText = <A>(f: (sql: string) => A): (sql: string) => A => {
  const remembered = new Map<string, A>()
  return (sql) => {
    if (remembered.has(sql)) return remembered.get(sql) as A
    const value = f(sql)
    if (remembered.size >= 1024) remembered.clear()
    remembered.set(sql, value)
    return value
  }
}

/**
 * Whether a statement's text may set session state.
 *
 * @internal
 */
export const isSuspectText: (sql: string) => boolean = perText((sql) => suspectText.test(sql))

/**
 * Whether a completed statement may have set session state: a command other
 * than the plain ones (`SET`, `RESET`, `LISTEN`, `PREPARE`, `DECLARE`, `DO`,
 * `CALL`, ...), or plain text that mentions a session-scoped function.
 *
 * @internal
 */
export const isSuspect = (command: string, sql: string): boolean => !plainCommands.has(command) || isSuspectText(sql)

/**
 * One round trip that reports every kind of session state a lease could
 * leave, as counts; `$1` is the role the pool logs in as, `$2` the tenant
 * setting. Custom settings such as the tenant's are not listed in
 * `pg_settings`, so the tenant setting is read by name: outside a
 * transaction it must be empty.
 *
 * @internal
 */
export const checkQuery = `SELECT
  coalesce(current_setting($2, true), '') <> '' AS tenant_set,
  (SELECT count(*) FROM pg_settings WHERE source = 'session')::int AS settings,
  (current_user::text <> $1 OR session_user::text <> $1) AS role_changed,
  (SELECT count(*) FROM pg_listening_channels())::int AS listens,
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())::int AS advisory_locks,
  (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::int AS prepared,
  (SELECT count(*) FROM pg_cursors WHERE is_holdable)::int AS cursors,
  (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::int AS temp_tables`

/**
 * What the check found, in words, or `undefined` when the session is clean.
 *
 * @internal
 */
export const findings = (row: Readonly<Record<string, unknown>>): string | undefined => {
  const found: Array<string> = []
  if (row.tenant_set === true) found.push("a session-level tenant setting")
  if (row.settings !== 0) found.push(`${row.settings} session setting(s)`)
  if (row.role_changed === true) found.push("a changed role")
  if (row.listens !== 0) found.push(`${row.listens} LISTEN channel(s)`)
  if (row.advisory_locks !== 0) found.push(`${row.advisory_locks} session advisory lock(s)`)
  if (row.prepared !== 0) found.push(`${row.prepared} SQL-prepared statement(s)`)
  if (row.cursors !== 0) found.push(`${row.cursors} holdable cursor(s)`)
  if (row.temp_tables !== 0) found.push(`${row.temp_tables} temporary table(s)`)
  return found.length === 0 ? undefined : found.join(", ")
}

/** First words of statements that run alone in their implicit transaction and may share a connection. */
const shareableStart = /^\s*(?:select|insert|update|delete|with|values|table|merge)\b/i

/**
 * Whether an autocommit statement may be pipelined on a connection other
 * callers' statements share: a plain query or DML whose text cannot set
 * session state. The rest (`SET`, `LISTEN`, `DO`, `CALL`, DDL, ...) get a
 * connection of their own.
 *
 * @internal
 */
export const isShareable: (sql: string) => boolean = perText((sql) => shareableStart.test(sql) && !isSuspectText(sql))

/**
 * The statement's operation for telemetry (`db.operation.name`): its first
 * keyword, upper-cased, e.g. `SELECT`.
 *
 * @internal
 */
export const operationName: (sql: string) => string = perText((sql) =>
  (/^\s*(?:\/\*[\s\S]*?\*\/\s*)*([A-Za-z]+)/.exec(sql)?.[1] ?? "UNKNOWN").toUpperCase()
)

/** Commands whose effect outlives the transaction, by their first words. */
const sessionCommand =
  /^\s*(?:set\s+(?!local\b|transaction\b|constraints\b)(?:session\s+)?\S|reset\b|listen\b|unlisten\b|prepare\b|deallocate\b|discard\b|load\b)/i

/** Functions and clauses whose effect outlives the transaction, anywhere in the text. */
const sessionText: ReadonlyArray<readonly [RegExp, string]> = [
  [/\bset_config\s*\((?![^()]*,\s*true\s*\))/i, "set_config without is_local = true"],
  [/\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(/i, "a session advisory lock"],
  [/\bcreate\s+(?:(?:global|local)\s+)?temp(?:orary)?\b/i, "a temporary table"],
  [/\bwith\s+hold\b/i, "a holdable cursor"],
  [/\bdblink_connect(?:_u)?\s*\(/i, "a dblink connection"]
]

/**
 * Why a statement could leave session state on its server connection, or
 * `undefined` when it cannot: what a transaction-mode pooler must not be
 * sent. It reads the text, so it errs towards refusing.
 *
 * @internal
 */
export const sessionStateIn: (sql: string) => string | undefined = perText((sql) => {
  const command = sessionCommand.exec(sql)
  if (command !== null) return `${command[0].trim().split(/\s+/)[0].toUpperCase()} outside a transaction-local form`
  for (const [pattern, reason] of sessionText) if (pattern.test(sql)) return reason
  return undefined
})
