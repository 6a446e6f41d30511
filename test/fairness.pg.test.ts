/**
 * Tenant-fair scheduling against a real server: a quiet tenant's statement
 * is served within a turn of a noisy tenant's backlog. Measured in statements
 * served, not in time.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as SqlClient from "effect/sql/SqlClient"
import * as Pool from "../src/Pool.ts"
import type * as PoolConfig from "../src/PoolConfig.ts"
import * as Tenant from "../src/Tenant.ts"
import { eventually, poolLayer } from "./support/pg.ts"

/** How many of a noisy tenant's 40 queued statements complete while one quiet statement waits. */
const noisyServedDuringQuiet = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const pool = yield* Pool.Pool
  let noisyDone = 0
  const noisy = yield* Effect.forkChild(Effect.all(
    Array.from({ length: 40 }, () =>
      Effect.tap(Tenant.with(sql`SELECT pg_sleep(0.01)`, "noisy"), () => Effect.sync(() => noisyDone++))),
    { concurrency: "unbounded", discard: true }
  ))
  yield* eventually(Effect.map(pool.stats, (s) => s.pending >= 30))
  const before = noisyDone
  yield* Tenant.with(sql`SELECT 1`, "quiet")
  const during = noisyDone - before
  yield* Fiber.interrupt(noisy)
  return during
})

// Statements alone on their connections (no sharing): the scheduler orders whole connections.
const contended = (fairness: PoolConfig.Options["fairness"]) => poolLayer({ max: 2, min: 2, pipelineDepth: 1, fairness })

describe("tenant-fair scheduling on a real server", () => {
  it.live("a quiet tenant is served within a turn of a noisy tenant's backlog", () =>
    Effect.gen(function*() {
      const during = yield* noisyServedDuringQuiet
      // The two statements running when it arrived, and at most the noisy tenant's turn.
      assert.isAtMost(during, 4)
    }).pipe(Effect.provide(contended("tenant"))))

  it.live("in FIFO order the quiet tenant waits behind the whole backlog", () =>
    Effect.gen(function*() {
      const during = yield* noisyServedDuringQuiet
      assert.isAtLeast(during, 25)
    }).pipe(Effect.provide(contended("fifo"))))
})
