/**
 * The housekeeper: a round every `housekeepingInterval` that closes idle
 * connections past their lifetime or uses, evicts the ones idle past
 * `idleTimeout` down to `min` (coldest first), pings the ones due a keepalive,
 * reports connections held past `leakDetectionThreshold`, and refills.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type * as PoolConfig from "../../PoolConfig.ts"
import type { Lifecycle } from "./lifecycle.ts"
import type { PoolState, Waiting } from "./poolState.ts"

/** @internal */
export type Options = Pick<PoolConfig.Resolved, "min" | "idleTimeout" | "leakDetectionThreshold" | "housekeepingInterval">

/** One round, at `at`. @internal */
export const round = <C, W extends Waiting>(
  state: PoolState<C, W>,
  lifecycle: Lifecycle<C, W>,
  options: Options,
  at: number
): void => {
  for (const entry of state.idle.filter((e) => state.isSpent(e, at))) state.remove(entry)
  // Oldest idle first: they sit at the bottom of the stack.
  for (const entry of state.idle.filter((e) => at - e.idleSince >= options.idleTimeout)) {
    if (state.entries.size <= options.min) break
    state.remove(entry)
  }
  for (const entry of state.idle.filter((e) => at - e.idleSince >= e.keepaliveAfter)) lifecycle.keepAlive(entry)
  for (const entry of state.entries) {
    // A holder, not the `used` state: a connection taken out to be pinged is `used` too, held by nobody.
    if (entry.holder !== undefined && !entry.leakReported && at - entry.takenAt >= options.leakDetectionThreshold) {
      entry.leakReported = true
      state.meter.events.leaked?.(at - entry.takenAt, entry.origin)
    }
  }
  lifecycle.fill()
}

/** Runs a round every `housekeepingInterval`, forever. @internal */
export const run = <C, W extends Waiting>(
  state: PoolState<C, W>,
  lifecycle: Lifecycle<C, W>,
  options: Options,
  now: () => number
): Effect.Effect<never> =>
  Effect.forever(Effect.andThen(
    Effect.sleep(options.housekeepingInterval),
    Effect.sync(() => round(state, lifecycle, options, now()))
  ))
