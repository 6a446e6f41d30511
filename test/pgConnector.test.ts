/**
 * The pinned driver still tells us when a connection must not be reused.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Redacted from "effect/Redacted"
import * as PgConnector from "../src/internal/pgConnector.ts"
import { admin, databaseUrl, eventually } from "./support/pg.ts"

/** A driver connection with a counter of the retire reports it made. */
const watched = Effect.gen(function*() {
  const connector = PgConnector.make({ url: Redacted.make(databaseUrl()) })
  const connection = yield* connector.connect
  const reports = { retired: 0 }
  connector.onRetire(connection, () => reports.retired++)
  return { connection, reports }
})

describe("PgConnector", () => {
  it.live("reports a connection whose backend was terminated", () =>
    Effect.gen(function*() {
      const { connection, reports } = yield* watched
      const side = yield* admin
      yield* side.query("SELECT pg_terminate_backend($1)", [connection.processId])
      assert.isTrue(yield* eventually(Effect.sync(() => reports.retired === 1), 2_000))
    }))

  it.live("keeps a connection whose interrupted query the server confirmed cancelled", () =>
    Effect.gen(function*() {
      const { connection, reports } = yield* watched
      const fiber = yield* Effect.forkChild(connection.query("SELECT pg_sleep(30)"))
      yield* Effect.sleep(50)
      // The pool cancels statements of a connection it lent to one caller alone.
      yield* PgConnector.cancel(connection)
      const cancelled = yield* Effect.flip(Fiber.join(fiber))
      assert.include(cancelled.message + String(cancelled.reason.cause), "cancel")
      const [row] = (yield* connection.query("SELECT 1 AS one")).rows
      assert.strictEqual(row.one, 1)
      assert.strictEqual(reports.retired, 0)
    }))
})
