/**
 * PostgreSQL notifications as a stream that outlives the connection they
 * arrive on.
 *
 * `PgClient.listen` (which the pool's layer provides) ends its queue with
 * the connection: a worker that waits on it must notice, listen again, and
 * know that whatever was sent in between is lost. `Notifications.stream`
 * does that for it: when the connection is lost it logs a warning, counts
 * the gap (`meshhook.pool.notifications.gaps`, under the pool's name on a
 * pool's layer), listens again with backoff
 * until the server answers. Each time listening starts, first or again, it
 * emits a {@link Listening} event (saying, after a gap, that notifications
 * were missed): the moment for the consumer to look at the table itself, as
 * anything announced before it may not arrive (the state a notification
 * announces must be in the database: a notification is a hint to look,
 * never the only copy). It works on any `PgClient`, the pool's or
 * `@effect/sql-pg`'s own.
 *
 * ```ts
 * Notifications.stream("job_queue").pipe(
 *   Stream.runForEach((event) => event._tag === "Received" ? wake(event.notification) : pollEverything)
 * )
 * ```
 *
 * Backpressure: notifications wait in memory until the consumer takes them;
 * a slow consumer holds memory, never the connection or the other
 * subscribers. With the pool's layer, every channel and subscriber share one
 * dedicated connection, opened beyond `max` while anyone listens.
 *
 * @since 0.1.0
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import type * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Queue from "effect/Queue"
import type { SqlError } from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import { channelTooLong } from "./internal/client/pgClient.ts"
import { CurrentPoolName, metrics, poolNameOf } from "./Metrics.ts"
import * as PoolError from "./PoolError.ts"

/**
 * A notification as the server sent it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Received {
  readonly _tag: "Received"
  readonly notification: PgConnection.Notification
}

/**
 * Listening has started: notifications sent from now on arrive. `missed` is
 * set when it started again after the connection was lost (how it was
 * lost): notifications sent in between were not received.
 *
 * @since 0.1.0
 * @category models
 */
export interface Listening {
  readonly _tag: "Listening"
  readonly channels: ReadonlyArray<string>
  readonly missed: SqlError | undefined
}

/**
 * What {@link stream} emits.
 *
 * @since 0.1.0
 * @category models
 */
export type Event = Received | Listening

/**
 * How {@link stream} listens again after a loss: the first pause, doubling up
 * to the longest, while the server does not answer.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly retryBase?: Duration.Input | undefined
  readonly retryMax?: Duration.Input | undefined
}

/**
 * Gaps in listening, each a span of time whose notifications were lost: the
 * series of the attributes given, `{ "db.client.connection.pool.name": name }`
 * for the streams on a pool's layer, `{}` for those on another `PgClient`.
 * (In 0.1.0 it was the metric itself, without the pool's name.)
 *
 * @since 0.2.0
 * @category metrics
 */
export const gaps = metrics.notificationGaps

/**
 * The notifications of `channels`, after a {@link Listening} event each time
 * listening starts, for as long as the stream runs. It fails only where `listen` itself
 * refuses for good (a channel name that is too long, `listen` behind a
 * transaction-mode pooler); lost connections are waited out.
 *
 * @since 0.1.0
 * @category constructors
 */
export const stream = (
  channels: string | ReadonlyArray<string>,
  options: Options = {}
): Stream.Stream<Event, SqlError, PgClient.PgClient> => {
  const names = typeof channels === "string" ? [channels] : [...channels]
  const refused = names.map((name) => channelTooLong(name, "listen")).find((error) => error !== undefined)
  if (refused !== undefined) return Stream.fail(refused)
  const base = Duration.toMillis(Duration.fromInputUnsafe(options.retryBase ?? 100))
  const max = Duration.toMillis(Duration.fromInputUnsafe(options.retryMax ?? 5_000))
  return Stream.callback<Event, SqlError, PgClient.PgClient>((out) =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      // On a pool's layer, the gaps are counted under its name.
      const gapsHere = gaps(poolNameOf(yield* Effect.service(CurrentPoolName)))
      let missed: SqlError | undefined
      let failures = 0
      /** Listens to every channel, then forwards until a queue fails with the connection. */
      const session = Effect.scoped(Effect.gen(function*() {
        const queues = yield* Effect.forEach(names, (name) => pg.listen(name))
        failures = 0
        yield* Queue.offer(out, { _tag: "Listening", channels: names, missed })
        missed = undefined
        yield* Effect.forEach(
          queues,
          (queue) =>
            Effect.forever(Effect.flatMap(Queue.take(queue), (notification) => Queue.offer(out, { _tag: "Received", notification }))),
          { concurrency: "unbounded", discard: true }
        )
      }))
      return yield* Effect.forever(Effect.catch(session, (error) => {
        // Behind a transaction-mode pooler no later attempt would do better.
        if (PoolError.fromSqlError(error)?._tag === "SessionStateNotAllowedError") return Queue.fail(out, error)
        const first = missed === undefined
        missed ??= error
        // Doubling from `retryBase`, counted afresh after each start (not a retry Schedule, whose state
        // would run on across the starts in between).
        failures++
        const pause = Math.min(max, base * 2 ** Math.min(failures - 1, 20))
        return Effect.andThen(
          first
            ? Effect.andThen(
              Metric.update(gapsHere, 1),
              Effect.logWarning(`Listening on ${names.join(", ")} stopped (${error.message}); notifications sent until it starts again are lost`)
            )
            : Effect.void,
          Effect.sleep(pause)
        )
      }))
    })
  )
}
