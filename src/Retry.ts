/**
 * Retrying work that failed for reasons that may pass.
 *
 * The pool never re-runs a statement on its own: once a statement may have
 * reached the server, running it again could apply it twice. It retries only
 * what cannot have run (connection attempts). Callers who know better say so:
 *
 * - `Retry.idempotent(effect)` re-runs `effect` after a transient failure: the
 *   connection was lost or refused (SQLSTATE class 08, `57P01` admin shutdown,
 *   `57P02` crash shutdown, `57P03` cannot connect now, `53300` too many
 *   connections, a socket error, or no answer within `queryTimeout`). Use it
 *   for reads and for writes that are
 *   safe to repeat. The pool's own refusals (timeout, saturation, open
 *   circuit) are not retried: they answer load.
 * - `Retry.transaction(sql.withTransaction(...))` re-runs a whole transaction
 *   that the server rolled back for a serialization failure (`40001`) or a
 *   deadlock (`40P01`); nothing of it was committed. With `{ idempotent: true }`
 *   it also re-runs after a transient failure, which may have struck after
 *   `COMMIT` reached the server.
 *
 * Attempts and backoff come from the pool's `retryAttempts`, `retryBase` and
 * `retryMax` (docs/resilience.md). Each retry counts in `meshhook.pool.retries`
 * (under the pool's name when it runs on a pool's layer) and is an event
 * (`meshhook.pool.retry`) on the current span.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Schedule from "effect/Schedule"
import { SqlError } from "effect/sql/SqlError"
import * as Tracer from "effect/Tracer"
import { sqlStateOf } from "./internal/postgres/sqlState.ts"
import type { RetryKind } from "./internal/telemetry.ts"
import { CurrentPoolName, metrics, poolNameOf } from "./Metrics.ts"
import { defaults } from "./PoolConfig.ts"
import { isPoolError } from "./PoolError.ts"

/**
 * How often and how far apart to retry: `attempts` in all, pauses from `base`
 * doubling with jitter up to `max` (milliseconds).
 *
 * @since 0.1.0
 * @category models
 */
export interface Policy {
  readonly attempts: number
  readonly base: number
  readonly max: number
}

/**
 * The retry policy in use; the pool's layer provides its configured one.
 *
 * @since 0.1.0
 * @category references
 */
export const CurrentPolicy = Context.Reference<Policy>("@meshhook/pool/Retry/CurrentPolicy", {
  defaultValue: () => ({ attempts: defaults.retryAttempts, base: defaults.retryBase, max: defaults.retryMax })
})

const transientStates = new Set(["57P01", "57P02", "57P03", "53300"])

/**
 * Whether a failure may pass if the work is tried again: the connection was
 * lost or refused. Says nothing about whether the work already took effect.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isTransient = (error: unknown): boolean => {
  if (!(error instanceof SqlError)) return false
  // The pool's own refusals (timeout, saturation, circuit open, tenant rules)
  // are answers to load or to the caller: repeating at once does not help. A
  // statement that got no answer in time is the network's doing.
  const cause = error.reason.cause
  if (isPoolError(cause)) return cause._tag === "QueryTimeoutError"
  const state = sqlStateOf(error)
  if (state !== undefined) return state.startsWith("08") || transientStates.has(state)
  // No SQLSTATE: the socket failed.
  return error.reason._tag === "ConnectionError"
}

/**
 * Whether the server rolled a transaction back so that it can simply be run
 * again: serialization failure or deadlock.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isRetryableTransaction = (error: unknown): boolean => {
  if (!(error instanceof SqlError)) return false
  const state = sqlStateOf(error)
  return state === "40001" || state === "40P01"
}

const schedule = (policy: Policy) =>
  Schedule.exponential(Duration.millis(policy.base)).pipe(
    Schedule.jittered,
    Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.millis(policy.max)))),
    Schedule.upTo({ times: policy.attempts - 1 })
  )

/**
 * Counts a retry, under the name of the pool whose layer the work runs on (if any), and marks it on the
 * current span with the failure that caused it.
 */
const noteRetry = (kind: RetryKind, error: unknown) =>
  Effect.withFiber((fiber) => {
    const span = Context.getOrUndefined(fiber.context, Tracer.ParentSpan)
    const failure = error instanceof SqlError ? sqlStateOf(error) ?? error.reason._tag : String(error)
    if (span?._tag === "Span") span.event("meshhook.pool.retry", fiber.getRef(Clock.Clock).currentTimeNanosUnsafe(), { kind, failure })
    const attributes = { "meshhook.pool.retry.kind": kind, ...poolNameOf(fiber.getRef(CurrentPoolName)) }
    return Metric.update(metrics.retries(attributes), 1)
  })

const retrying = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  kind: RetryKind,
  retryable: (error: E) => boolean
): Effect.Effect<A, E, R> =>
  Effect.flatMap(Effect.service(CurrentPolicy), (policy) =>
    Effect.retry(
      Effect.tapError(self, (error) => retryable(error) ? noteRetry(kind, error) : Effect.void),
      { schedule: schedule(policy), while: retryable }
    ))

/**
 * Re-runs `self` after a transient failure, up to the policy's attempts.
 * Only for work that is safe to run twice.
 *
 * @since 0.1.0
 * @category combinators
 */
export const idempotent = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  retrying(self, "idempotent", isTransient)

/**
 * Re-runs a transaction (an effect running `sql.withTransaction`) that the
 * server rolled back for a serialization failure or deadlock; with
 * `idempotent`, also after a transient failure.
 *
 * @since 0.1.0
 * @category combinators
 */
export const transaction = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  options: { readonly idempotent?: boolean } = {}
): Effect.Effect<A, E, R> =>
  retrying(self, "transaction", (error) => isRetryableTransaction(error) || (options.idempotent === true && isTransient(error)))
