/**
 * The seam between the pool engine and a database driver: the engine asks a
 * connector for physical connections and for what a failed attempt means, and
 * never reads a driver's errors itself. The PostgreSQL connector is
 * ../postgres/pgConnector.ts; the test kit's memory database and the engine's unit tests
 * script their own.
 *
 * @internal
 */
import type * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { SqlError } from "effect/sql/SqlError"

/**
 * Makes physical connections and reports when one must not be reused.
 *
 * @internal
 */
export interface Connector<C> {
  /** Opens one connection; closing the scope closes it. */
  readonly connect: Effect.Effect<C, SqlError, Scope.Scope>
  /** What a failed `connect` means to the pool. */
  readonly classify: (error: SqlError) => ConnectFailure
  /**
   * Registers `retire`, to be called once if the connection dies or the
   * driver can no longer vouch for its state (a cancel it could not confirm).
   */
  readonly onRetire: (connection: C, retire: () => void) => void
  /** Cancels whatever the connection's server session is running. */
  readonly cancel: (connection: C) => Effect.Effect<void>
  /** A cheap round trip that proves the connection still works. */
  readonly validate: (connection: C) => Effect.Effect<void, SqlError>
  /**
   * Resolves once nothing sent on the connection awaits an answer: a
   * connection handed on at `COMMIT` may still carry it, and closing it then
   * would lose the answer.
   */
  readonly settled?: ((connection: C) => Effect.Effect<void>) | undefined
}

/**
 * A failed connection attempt, as the pool acts on it.
 *
 * @internal
 */
export interface ConnectFailure {
  /** One line for logs and errors: the server's message and SQLSTATE, never a password. */
  readonly reason: string
  /** Waiting will not cure it (bad credentials, no such database): waiters fail at once. */
  readonly fatal: boolean
  /** The server is out of connection slots: a limit for adaptive sizing to respect, not an outage. */
  readonly outOfSlots: boolean
}
