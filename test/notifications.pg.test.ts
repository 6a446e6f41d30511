/**
 * Notifications.stream against a real server: it listens again after its
 * connection is lost, says that notifications may have been missed, and
 * counts the gap; it fails only where listening can never work.
 */
import { assert, describe, it } from "@effect/vitest"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import { poolNameAttribute } from "../src/Metrics.ts"
import * as Notifications from "../src/Notifications.ts"
import * as PoolError from "../src/PoolError.ts"
import { admin, behindPooler, poolLayer, uniqueName } from "./support/pg.ts"

const direct = behindPooler() === "none"

/** Sends `payload` on `channel` every 20 ms until `events` yields a notification carrying it; returns what came before. */
const sendUntilReceived = (
  pg: PgClient.PgClient,
  events: Queue.Dequeue<Notifications.Event>,
  channel: string,
  payload: string
) =>
  Effect.gen(function*() {
    const before: Array<Notifications.Event> = []
    // A notify can fail on a pooled connection the test just killed: the sender keeps on.
    const sender = yield* Effect.forkChild(Effect.forever(Effect.andThen(Effect.ignore(pg.notify(channel, payload)), Effect.sleep(20))))
    for (;;) {
      const event = yield* Queue.take(events)
      if (event._tag === "Received" && event.notification.payload === payload) break
      before.push(event)
    }
    yield* Fiber.interrupt(sender)
    return before
  })

describe("Notifications.stream", () => {
  it.live.skipIf(!direct)("says when it listens, listens again after a lost connection, and says what was missed", () => {
    const app = uniqueName("notify")
    const jobs = uniqueName("jobs")
    const runs = uniqueName("runs")
    return Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      const side = yield* admin
      // Counted under the pool's name, as the stream runs on its layer.
      const gaps = Notifications.gaps({ [poolNameAttribute]: app })
      const gapsBefore = (yield* Metric.value(gaps)).count
      const events = yield* Queue.unbounded<Notifications.Event>()
      const listening = yield* Effect.forkChild(
        Notifications.stream([jobs, runs], { retryBase: 10, retryMax: 100 }).pipe(
          Stream.runForEach((event) => Queue.offer(events, event))
        )
      )
      const started = yield* Queue.take(events)
      assert.deepStrictEqual(started, { _tag: "Listening", channels: [jobs, runs], missed: undefined })
      const first = yield* sendUntilReceived(pg, events, runs, "before")
      assert.deepStrictEqual(first, [], "nothing else before the loss")

      // The pool itself holds no connection (min 0, nothing running): the application's backend is the listener's.
      yield* side.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", [app])
      const between = yield* sendUntilReceived(pg, events, jobs, "after")
      const again = between.filter((event) => event._tag === "Listening")
      assert.strictEqual(again.length, 1, `listening again once, got ${JSON.stringify(between.map((e) => e._tag))}`)
      assert.isDefined(again[0]._tag === "Listening" ? again[0].missed : undefined, "it says notifications were missed")
      assert.strictEqual((yield* Metric.value(gaps)).count, gapsBefore + 1)
      yield* Fiber.interrupt(listening)
    }).pipe(Effect.provide(poolLayer({ name: app, applicationName: app, min: 0, max: 2 })))
  })

  it.live("fails at once for a channel name PostgreSQL would truncate", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(Stream.runDrain(Notifications.stream(["ok", "x".repeat(64)])))
      assert.isTrue(Exit.isFailure(exit))
      assert.match(String(exit), /63 UTF-8 bytes/)
    }).pipe(Effect.provide(poolLayer())))

  it.live.skipIf(direct)("fails behind a transaction-mode pooler, where listening cannot work", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(Stream.runDrain(Notifications.stream("jobs")))
      const error = Exit.findErrorOption(exit)
      assert.strictEqual(error._tag === "Some" ? PoolError.fromSqlError(error.value)?._tag : undefined, "SessionStateNotAllowedError")
    }).pipe(Effect.provide(poolLayer())))
})
