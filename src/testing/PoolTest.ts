/**
 * The pool on an in-memory database, for unit tests of code that uses
 * `SqlClient`: no server, no sockets, deterministic under Effect's
 * `TestClock`.
 *
 * It is the real pool (the same queue, tenant rules, transactions and errors)
 * in front of a database that answers from a script: each statement the code
 * sends is recorded with its parameters and the tenant the pool set for it,
 * and answered by the first scripted reply that matches it. A statement with
 * no reply is a defect that names it.
 *
 * ```ts
 * import { PoolTest } from "@meshhook/pool/testing"
 *
 * it.effect("claims a job", () =>
 *   Effect.gen(function*() {
 *     const job = yield* claimJob
 *     assert.strictEqual(job?.id, "42")
 *     yield* PoolTest.assertRan("FROM job_queue", { tenant: null })
 *   }).pipe(Effect.provide(PoolTest.layer({
 *     replies: [PoolTest.rows("FROM job_queue", [{ id: "42" }])]
 *   }))))
 * ```
 *
 * Over 300 lines: the scripted replies, the recorded statements and the
 * assertions over them are one test kit.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as SqlClient from "effect/sql/SqlClient"
import { SqlError } from "effect/sql/SqlError"
import { AssertionError } from "node:assert"
import * as Pool from "../Pool.ts"
import type * as PoolConfig from "../PoolConfig.ts"
import * as PoolError from "../PoolError.ts"
import * as Memory from "./internal/memoryDatabase.ts"

/**
 * A statement as the database saw it: `sql` (with `$n` placeholders),
 * `params`, the `tenant` the pool had set in its transaction (`undefined`
 * when none), whether it ran in a `transaction` block (`sql.withTransaction`;
 * a lone statement runs in an implicit transaction of its own, which does
 * not count), and its `connection`.
 *
 * @since 0.1.0
 * @category models
 */
export type Statement = Memory.Statement

/**
 * Which statements a reply answers: a string the text contains (case and
 * spacing aside), a regular expression, or a predicate.
 *
 * @since 0.1.0
 * @category models
 */
export type Match = Memory.Match

/**
 * A scripted reply. Replies are tried in order; the first that matches and
 * has answers left answers.
 *
 * @since 0.1.0
 * @category models
 */
export type Reply = Memory.Reply

/**
 * How often a reply answers (default once; `Infinity` for always) and how
 * long each answer takes on Effect's clock (default at once).
 *
 * @since 0.1.0
 * @category models
 */
export interface ReplyOptions {
  readonly times?: number | undefined
  readonly delay?: Duration.Input | undefined
}

/** A row as `SqlClient` returns it. */
type Row = Readonly<Record<string, unknown>>

const reply = (match: Match, answer: Memory.Answer, options: ReplyOptions = {}): Reply => {
  const times = options.times ?? 1
  if (!(times >= 1)) throw new RangeError(`PoolTest: times must be at least 1, got ${times}`)
  return { match, answer, times, delay: Duration.fromInputUnsafe(options.delay ?? 0) }
}

/**
 * Answers matching statements with `rows`, or with what `rows` computes
 * from the statement.
 *
 * @since 0.1.0
 * @category replies
 */
export const rows = (
  match: Match,
  rows: ReadonlyArray<Row> | ((statement: Statement) => ReadonlyArray<Row>),
  options?: ReplyOptions
): Reply => reply(match, { _tag: "Rows", rows: typeof rows === "function" ? rows : () => rows }, options)

/**
 * Fails matching statements with `error`. A pool error (`PoolTimeoutError`,
 * `PoolSaturatedError`, ...) arrives wrapped in a `SqlError` exactly as the
 * real pool delivers it, so `PoolError.fromSqlError` finds it.
 *
 * @since 0.1.0
 * @category replies
 */
export const fail = (match: Match, error: SqlError | PoolError.PoolError, options?: ReplyOptions): Reply =>
  reply(match, {
    _tag: "Fail",
    error: () => error instanceof SqlError ? error : PoolError.toSqlError(error)
  }, options)

/**
 * Fails matching statements with a server error of SQLSTATE `code`, shaped
 * as the driver shapes it: `"23505"` gives a `UniqueViolation`, `"40001"` a
 * `SerializationError`, `"40P01"` a `DeadlockError`, ...
 *
 * @since 0.1.0
 * @category replies
 */
export const sqlState = (
  match: Match,
  code: string,
  options: ReplyOptions & { readonly message?: string | undefined; readonly constraint?: string | undefined } = {}
): Reply => {
  if (!/^[0-9A-Z]{5}$/.test(code)) throw new RangeError(`PoolTest: ${JSON.stringify(code)} is not a SQLSTATE`)
  return reply(match, {
    _tag: "Fail",
    error: () => Memory.serverError(code, options.message ?? `simulated error ${code}`, options.constraint)
  }, options)
}

/**
 * The connection dies under matching statements, as when the backend is
 * killed: the statement fails with a `ConnectionError` and the pool replaces
 * the connection.
 *
 * @since 0.1.0
 * @category replies
 */
export const connectionLost = (match: Match, options?: ReplyOptions): Reply =>
  reply(match, { _tag: "ConnectionLost" }, options)

/**
 * The in-memory database behind {@link layer}: what it recorded, and knobs
 * to change its behaviour during a test.
 *
 * @since 0.1.0
 * @category services
 */
export class MockDatabase extends Context.Service<MockDatabase, {
  /** Every statement the code sent, in order (the pool's own are left out). */
  readonly statements: Effect.Effect<ReadonlyArray<Statement>>
  /** Adds replies after those already scripted. */
  readonly reply: (...replies: ReadonlyArray<Reply>) => Effect.Effect<void>
  /** Replies with answers left. */
  readonly unusedReplies: Effect.Effect<ReadonlyArray<Reply>>
  /** Takes the database down (open connections die, new ones are refused) or brings it back. */
  readonly setDown: (down: boolean) => Effect.Effect<void>
  /** Connections opened so far and open now. */
  readonly connections: Effect.Effect<{ readonly opened: number; readonly open: number }>
}>()("@meshhook/pool/testing/PoolTest/MockDatabase") {}

/**
 * {@link layer}'s options: the script, what an unscripted statement gets
 * (`"die"`, the default, or `"empty"`: no rows), how long connecting takes on
 * Effect's clock, and the pool's options (`max`, `requireTenant`,
 * `acquireTimeout`, ...; the connection settings are ignored).
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly replies?: ReadonlyArray<Reply> | undefined
  readonly unmatched?: "die" | "empty" | undefined
  readonly connectDelay?: Duration.Input | undefined
  readonly pool?: PoolConfig.Options | undefined
}

const memoryUrl = "postgres://pooltest:pooltest@in-memory:5432/pooltest"

/**
 * The pool's services (`Pool` and `SqlClient`) on an in-memory database,
 * and {@link MockDatabase} to look at and steer it.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<
  Pool.Pool | SqlClient.SqlClient | MockDatabase,
  PoolError.PoolConfigError | PoolError.DatabaseUnavailableError
> =>
  Layer.unwrap(Effect.sync(() => {
    const database = Memory.makeDatabase({
      replies: options.replies ?? [],
      unmatched: options.unmatched ?? "die",
      connectDelay: Duration.fromInputUnsafe(options.connectDelay ?? 0)
    })
    const control = MockDatabase.of({
      statements: Effect.sync(() => [...database.statements]),
      reply: (...replies) => Effect.sync(() => void database.replies.push(...replies.map((reply) => ({ ...reply })))),
      unusedReplies: Effect.sync(() => database.replies.filter((r) => r.times > 0 && r.times !== Infinity)),
      setDown: (down) =>
        Effect.sync(() => {
          database.down = down
          if (down) for (const connection of [...database.open]) connection.kill()
        }),
      connections: Effect.sync(() => ({ opened: database.opened, open: database.open.size }))
    })
    const pool = Pool.layerFrom(
      Effect.succeed<PoolConfig.Options>({ ...options.pool, url: memoryUrl }),
      (resolved) => Pool.makeWithConnector(resolved, (_, init) => Memory.connector(database, init))
    )
    return Layer.merge(pool, Layer.succeed(MockDatabase, control))
  }))

/**
 * The statements recorded so far.
 *
 * @since 0.1.0
 * @category accessors
 */
export const statements: Effect.Effect<ReadonlyArray<Statement>, never, MockDatabase> = Effect.flatMap(
  Effect.service(MockDatabase),
  (db) => db.statements
)

/**
 * Takes the database down or brings it back (see {@link MockDatabase}).
 *
 * @since 0.1.0
 * @category accessors
 */
export const setDatabaseDown = (down: boolean): Effect.Effect<void, never, MockDatabase> =>
  Effect.flatMap(Effect.service(MockDatabase), (db) => db.setDown(down))

/**
 * What {@link assertRan} checks of every matching statement: its tenant
 * (`null`: none), parameters, whether it was in a transaction, and how many
 * there were.
 *
 * @since 0.1.0
 * @category models
 */
export interface Expected {
  readonly tenant?: string | null | undefined
  readonly params?: ReadonlyArray<unknown> | undefined
  readonly transaction?: boolean | undefined
  readonly times?: number | undefined
}

const listing = (all: ReadonlyArray<Statement>) =>
  all.length === 0
    ? "  (none)"
    : all.map((s) => `  [tenant ${s.tenant ?? "none"}] ${s.sql.replace(/\s+/g, " ").trim()}`).join("\n")

const failed = (message: string, actual?: unknown, expected?: unknown) =>
  Effect.die(new AssertionError({ message, actual, expected }))

/**
 * Asserts that statements matching `match` ran, as `expected` says, and
 * returns them. A failure lists what ran instead.
 *
 * @since 0.1.0
 * @category assertions
 */
export const assertRan = (
  match: Match,
  expected: Expected = {}
): Effect.Effect<ReadonlyArray<Statement>, never, MockDatabase> =>
  Effect.flatMap(statements, (all) => {
    const found = all.filter((s) => Memory.matches(match, s))
    const what = Memory.describeMatch(match)
    if (found.length === 0) return failed(`No statement matching ${what} ran. Statements:\n${listing(all)}`)
    if (expected.times !== undefined && found.length !== expected.times) {
      return failed(`${found.length} statement(s) matching ${what} ran, expected ${expected.times}`, found.length, expected.times)
    }
    for (const statement of found) {
      if (expected.tenant !== undefined && statement.tenant !== (expected.tenant ?? undefined)) {
        return failed(
          `A statement matching ${what} ran under tenant ${statement.tenant ?? "none"}, expected ${expected.tenant ?? "none"}`,
          statement.tenant ?? null,
          expected.tenant
        )
      }
      if (expected.transaction !== undefined && statement.transaction !== expected.transaction) {
        return failed(`A statement matching ${what} ran ${statement.transaction ? "in" : "outside"} a transaction`)
      }
      if (expected.params !== undefined && !sameParams(statement.params, expected.params)) {
        return failed(`A statement matching ${what} had other parameters`, statement.params, expected.params)
      }
    }
    return Effect.succeed(found)
  })

const sameParams = (actual: ReadonlyArray<unknown>, expected: ReadonlyArray<unknown>) =>
  actual.length === expected.length && actual.every((value, i) => Object.is(value, expected[i]) || String(value) === String(expected[i]))

/**
 * Asserts that no statement matching `match` ran.
 *
 * @since 0.1.0
 * @category assertions
 */
export const assertNotRan = (match: Match): Effect.Effect<void, never, MockDatabase> =>
  Effect.flatMap(statements, (all) => {
    const found = all.filter((s) => Memory.matches(match, s))
    return found.length === 0
      ? Effect.void
      : failed(`${found.length} statement(s) matching ${Memory.describeMatch(match)} ran:\n${listing(found)}`)
  })

/**
 * Asserts that every reply scripted for a number of answers was used up.
 *
 * @since 0.1.0
 * @category assertions
 */
export const assertAllReplied: Effect.Effect<void, never, MockDatabase> = Effect.flatMap(
  Effect.service(MockDatabase),
  (db) =>
    Effect.flatMap(db.unusedReplies, (unused) =>
      unused.length === 0
        ? Effect.void
        : failed(
          `Scripted replies were not used: ${
            unused.map((r) => `${Memory.describeMatch(r.match)} (${r.times} left)`).join(", ")
          }`
        ))
)
