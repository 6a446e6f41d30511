/**
 * `LISTEN` on a connection of its own, shared by every subscriber.
 *
 * A pooled connection cannot carry `LISTEN`: notifications arrive on the
 * session, between statements, and the session would go to the next
 * borrower with the registration on it (the pool's session check closes a
 * connection that ran `LISTEN` for that reason). So notifications come on one
 * dedicated connection, opened with the first subscriber and closed after the
 * last: one connection beyond the pool's `max` while anyone listens, however
 * many channels and subscribers. Nothing else runs on it, so no tenant's
 * statement or session state ever meets it.
 *
 * Each subscriber gets its own unbounded queue (a slow consumer holds memory,
 * not the connection, and never stalls the others). When the connection is
 * lost, every queue fails with the connection's `SqlError`, as with
 * `@effect/sql-pg`'s `PgClient`: notifications sent until the consumer
 * listens again may have been missed, and the failure says so. The next
 * `listen` opens a new connection.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type * as Queue from "effect/Queue"
import * as RcRef from "effect/RcRef"
import type * as Scope from "effect/Scope"
import type { SqlError } from "effect/sql/SqlError"
import * as PgConnection from "@effect/sql-pg/PgConnection"

/** @internal */
export interface Listener {
  /** The channel's notifications, for the life of the caller's scope. */
  readonly listen: (channel: string) => Effect.Effect<Queue.Dequeue<PgConnection.Notification, SqlError>, SqlError, Scope.Scope>
}

/**
 * A listener connecting with `config`; its connection lives no longer than
 * the scope it is made in.
 *
 * @internal
 */
export const make = (config: PgConnection.Config): Effect.Effect<Listener, never, Scope.Scope> =>
  Effect.map(
    // Pinned once for the connection's life: a pinned connection takes any number of `listen`s.
    RcRef.make({ acquire: Effect.flatMap(PgConnection.make({ ...config, multiplex: false }), (connection) => connection.pin) }),
    (connection) => {
      const subscribe = (channel: string) => Effect.flatMap(RcRef.get(connection), (pg) => pg.listen(channel))
      return {
        // A connection lost while others still hold it fails at once (with how it was lost, a
        // `ConnectionError` or the server's own error): once more, on a new one.
        listen: (channel) =>
          Effect.catch(subscribe(channel), () => Effect.andThen(RcRef.invalidate(connection), subscribe(channel)))
      }
    }
  )
