/**
 * How urgent a fiber's database work is, when callers wait for connections.
 *
 * With tenant-fair scheduling, waiting requests are grouped in priority
 * classes that take turns by weight (`priorityWeights`, by default high 4,
 * normal 2, low 1): webhook intake marked `high` gets ahead of background work
 * marked `low`, which still gets a turn in every round and is never starved.
 * Like the tenant, the priority travels with the fiber and its forks.
 *
 * ```ts
 * yield* Priority.with("high")(intakeWebhook)
 * yield* Priority.with("low")(compactOldRuns)
 * ```
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import { dual } from "effect/Function"

/**
 * A priority class.
 *
 * @since 0.1.0
 * @category models
 */
export type Level = "high" | "normal" | "low"

/**
 * The fiber-local priority; `normal` unless set.
 *
 * @since 0.1.0
 * @category references
 */
export const CurrentPriority = Context.Reference<Level>("@meshhook/pool/Priority/CurrentPriority", {
  defaultValue: () => "normal"
})

const withPriority: {
  (level: Level): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, level: Level): Effect.Effect<A, E, R>
} = dual(
  2,
  <A, E, R>(self: Effect.Effect<A, E, R>, level: Level): Effect.Effect<A, E, R> =>
    Effect.provideService(self, CurrentPriority, level)
)

export {
  /**
   * Runs `self` at a priority.
   *
   * @since 0.1.0
   * @category combinators
   */
  withPriority as with
}
