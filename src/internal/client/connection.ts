/**
 * `effect/sql`'s `Connection` over one way to run a statement: the pool's
 * two connections (a statement's, which takes a share or a lease when the
 * statement runs, ./routing.ts; and a lease, ./lease.ts) differ only in
 * that and in streams. The methods live on the prototype: a lease is made
 * for every statement that cannot share, and makes no closures.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type * as SqlConnection from "effect/sql/SqlConnection"
import type { SqlError } from "effect/sql/SqlError"
import type * as Stream from "effect/Stream"
import type * as Wire from "../postgres/wire.ts"

/** `effect/sql`'s row transform (result names, JSON). @internal */
export type Rows = <A extends object>(rows: ReadonlyArray<A>) => ReadonlyArray<A>

const transformed = (answer: Wire.Answer, transformRows: Rows | undefined) =>
  transformRows === undefined ? answer.rows : transformRows(answer.rows)

const values = (answer: Wire.Answer) => answer.rows as Array<Array<unknown>>

/** A `Connection` whose methods all run statements through {@link Base.run}, but streams. @internal */
export abstract class Base implements SqlConnection.Connection {
  /** Runs one statement of the caller's: its answer, as the driver's `Result`. */
  abstract run(query: Wire.Query): Effect.Effect<Wire.Answer, SqlError>

  abstract executeStream(
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: Rows | undefined
  ): Stream.Stream<any, SqlError>

  execute(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    return Effect.map(this.run({ sql, params, prepare: true, shape: "objects" }), (a) => transformed(a, transformRows))
  }
  executeUnprepared(sql: string, params: ReadonlyArray<unknown>, transformRows: Rows | undefined) {
    return Effect.map(this.run({ sql, params, prepare: false, shape: "objects" }), (a) => transformed(a, transformRows))
  }
  executeRaw(sql: string, params: ReadonlyArray<unknown>) {
    return this.run({ sql, params, prepare: true, shape: "objects" })
  }
  executeValues(sql: string, params: ReadonlyArray<unknown>) {
    return Effect.map(this.run({ sql, params, prepare: true, shape: "values" }), values)
  }
  executeValuesUnprepared(sql: string, params: ReadonlyArray<unknown>) {
    return Effect.map(this.run({ sql, params, prepare: false, shape: "values" }), values)
  }
}
