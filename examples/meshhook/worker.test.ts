/**
 * The main job's step policy: a step the pool turned away is tried again on
 * the schedule, anything else fails at once.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Schedule from "effect/Schedule"
import type { SqlError } from "effect/sql/SqlError"
import * as PoolError from "../../src/PoolError.ts"
import * as Worker from "./worker.ts"

const saturated = PoolError.toSqlError(new PoolError.PoolSaturatedError({ maxWaiting: 10, poolSize: 2 }))
const timedOut = PoolError.toSqlError(new PoolError.PoolTimeoutError({ waitedMillis: 10, poolSize: 2, maxSize: 2, queueLength: 3 }))
const closed = PoolError.toSqlError(new PoolError.PoolClosedError())

/** A step that fails with `failures` in turn, then succeeds; and how many times it ran. */
const scripted = (failures: ReadonlyArray<SqlError>) => {
  let runs = 0
  const step = Effect.suspend(() => {
    const failure = failures[runs++]
    return failure === undefined ? Effect.succeed("done") : Effect.fail(failure)
  })
  return { step, runs: () => runs }
}

describe("Worker.whileBackpressure", () => {
  const policy = Worker.whileBackpressure(Schedule.spaced("10 millis"))

  it.live("tries a step the pool turned away again, until it runs", () =>
    Effect.gen(function*() {
      const { step, runs } = scripted([saturated, timedOut, saturated])
      assert.strictEqual(yield* policy(step), "done")
      assert.strictEqual(runs(), 4)
    }))

  it.live("fails at once on anything else: the step may have run", () =>
    Effect.gen(function*() {
      const { step, runs } = scripted([closed])
      const exit = yield* Effect.exit(policy(step))
      assert.isTrue(Exit.isFailure(exit))
      assert.strictEqual(runs(), 1)
    }))
})
