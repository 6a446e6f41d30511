/**
 * The named prepared statements of one connection: a name per statement
 * text and parameter types, the least recently used evicted beyond a
 * bound, and the `Close` messages eviction owes the server, which go out
 * with the next cycle.
 *
 * @internal
 */
import * as PgProtocol from "@effect/sql-pg/PgProtocol"

/** A statement the connection names; `D` is how its results read, once the server described them. @internal */
export interface Prepared<D> {
  readonly name: string
  readonly sql: string
  /** Its parameter types, joined. */
  readonly types: string
  /** The server holds the name: its `Parse` completed. */
  parsed: boolean
  /** A cycle carrying its `Parse` is on the wire. */
  parsing: boolean
  /** Its result columns, once the server described them. */
  description: D | undefined
}

/** One connection's named statements. @internal */
export interface PreparedStatements<D> {
  /**
   * By text, then by parameter types: a statement's text is usually one
   * string whose hash the JavaScript engine keeps, where a key joining it
   * with the types would be hashed afresh (the prologue is 2 KB).
   */
  readonly byText: Map<string, Map<string, Prepared<D>>>
  /** Every named statement, least recently used first. */
  readonly recency: Set<Prepared<D>>
  /** How many it keeps. */
  readonly capacity: number
  /** Makes the connection's names its own (they are never reused across connections). */
  readonly namespace: string
  counter: number
  /** `Close` messages owed for evicted statements the server holds. */
  closes: Array<Uint8Array>
}

const noCloses: Array<Uint8Array> = []

/** A connection's names, none yet, at most `capacity`. @internal */
export const make = <D>(capacity: number): PreparedStatements<D> => ({
  byText: new Map(),
  recency: new Set(),
  capacity,
  namespace: Math.random().toString(36).slice(2, 10),
  counter: 0,
  closes: noCloses
})

/**
 * The connection's name for `sql` with these parameter types, made if it
 * has none; the least recently used beyond the bound are evicted (not one
 * whose `Parse` is on the wire).
 *
 * @internal
 */
export const named = <D>(statements: PreparedStatements<D>, sql: string, types: ReadonlyArray<number>): Prepared<D> => {
  const { byText, recency } = statements
  const typeKey = types.length === 0 ? "" : types.join(",")
  let byTypes = byText.get(sql)
  const found = byTypes?.get(typeKey)
  if (found !== undefined) {
    recency.delete(found)
    recency.add(found)
    return found
  }
  const name = `mh_${statements.namespace}_${++statements.counter}`
  const entry: Prepared<D> = { name, sql, types: typeKey, parsed: false, parsing: false, description: undefined }
  if (byTypes === undefined) byText.set(sql, byTypes = new Map())
  byTypes.set(typeKey, entry)
  recency.add(entry)
  for (const old of recency) {
    if (recency.size <= statements.capacity) break
    if (old === entry || old.parsing) continue
    evict(statements, old)
  }
  return entry
}

/** Drops a name; one the server holds is closed with the next cycle. @internal */
export const evict = <D>(statements: PreparedStatements<D>, entry: Prepared<D>): void => {
  const byTypes = statements.byText.get(entry.sql)
  if (byTypes?.get(entry.types) === entry) {
    byTypes.delete(entry.types)
    if (byTypes.size === 0) statements.byText.delete(entry.sql)
  }
  statements.recency.delete(entry)
  if (entry.parsed) {
    if (statements.closes === noCloses) statements.closes = []
    statements.closes.push(PgProtocol.encodeClose({ target: "statement", name: entry.name }))
  }
  entry.parsed = false
}

/** Forgets every name: the server no longer holds them (`DEALLOCATE ALL`, `DISCARD ALL`). @internal */
export const forget = <D>(statements: PreparedStatements<D>): void => {
  for (const entry of statements.recency) entry.parsed = false
  statements.byText.clear()
  statements.recency.clear()
  statements.closes = noCloses
}

/** The `Close` messages owed, for the next cycle to carry before its statements. @internal */
export const takeCloses = <D>(statements: PreparedStatements<D>): ReadonlyArray<Uint8Array> => {
  const closes = statements.closes
  statements.closes = noCloses
  return closes
}
