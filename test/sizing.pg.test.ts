/**
 * Adaptive sizing against a real server, on a workload with a known knee:
 * each operation holds one of four slot rows for 5 ms (a free one if any,
 * else it queues on one), so about four connections do useful work at once
 * and more only queue inside PostgreSQL. The time is sleep, not CPU, so the
 * figures hold on a busy machine.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import * as SqlClient from "effect/sql/SqlClient"
import * as Pool from "../src/Pool.ts"
import { poolLayer, uniqueName } from "./support/pg.ts"

/** One operation: a transaction that holds one of the four slots for 5 ms. */
const lockedWork = (table: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.withTransaction(Effect.gen(function*() {
      const free = yield* sql`SELECT id FROM ${sql(table)} FOR UPDATE SKIP LOCKED LIMIT 1`
      if (free.length === 0) yield* sql`SELECT id FROM ${sql(table)} WHERE id = ${1 + Math.floor(Math.random() * 4)} FOR UPDATE`
      yield* sql`SELECT pg_sleep(0.005)`
    }))
  })

/** `callers` fibers repeating `lockedWork` until interrupted. */
const load = (table: string, callers: number) =>
  Effect.forkChild(Effect.forEach(Array.from({ length: callers }), () => Effect.forever(lockedWork(table)), {
    concurrency: "unbounded",
    discard: true
  }))

/** The pool's limit every 100 ms while `effect` runs. */
const limitsDuring = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const pool = yield* Pool.Pool
    const seen = yield* Ref.make<Array<number>>([])
    const watcher = yield* Effect.forkChild(Effect.forever(
      Effect.andThen(Effect.flatMap(pool.stats, (s) => Ref.update(seen, (all) => [...all, s.limit])), Effect.sleep(100))
    ))
    yield* effect
    yield* Fiber.interrupt(watcher)
    return yield* Ref.get(seen)
  })

describe("adaptive sizing on a real server", () => {
  it.live("settles below max under a steady load that four connections serve, grows for a burst, shrinks to min when idle", () =>
    Effect.gen(function*() {
      const pool = yield* Pool.Pool
      const sql = yield* SqlClient.SqlClient
      const table = uniqueName("slots")
      yield* sql`CREATE TABLE ${sql(table)} AS SELECT generate_series(1, 4) AS id`
      const running = yield* load(table, 32)
      // Time to learn: usually about ten trials of three 200 ms intervals; on a loaded machine noisier
      // measures make trials fail more often, and the holds after them grow, so it gets up to 20 s.
      const learnt = Effect.map(pool.stats, (s) => s.limit <= 16)
      for (let waited = 0; waited < 20_000 && !(yield* learnt); waited += 200) yield* Effect.sleep(200)
      const settled = yield* limitsDuring(Effect.sleep(3_000))
      yield* Fiber.interrupt(running)
      const last = settled[settled.length - 1]
      // Well below max: more connections than the slots need only queue.
      assert.isAtMost(Math.max(...settled), 24, `limits: ${settled.join(",")}`)
      assert.isAtLeast(Math.min(...settled), 2)
      // Settled: a brief trial now and then, no swinging.
      const changes = settled.filter((limit, i) => i > 0 && limit !== settled[i - 1]).length
      assert.isAtMost(changes, 6, `limits: ${settled.join(",")}`)

      // Idle: connections above min retire within the idle timeout.
      yield* Effect.sleep(1_500)
      assert.strictEqual((yield* pool.stats).total, 1)

      // A burst: the pool opens what it has learnt it may, at once.
      const burst = yield* load(table, 32)
      yield* Effect.sleep(300)
      const during = yield* pool.stats
      yield* Fiber.interrupt(burst)
      assert.isAtLeast(during.total, Math.min(last, 4), `limit ${during.limit}, total ${during.total}`)
      yield* sql`DROP TABLE ${sql(table)}`
    }).pipe(Effect.provide(Layer.fresh(poolLayer({
      name: uniqueName("adaptive"),
      sizing: "adaptive",
      sizingInterval: "200 millis",
      min: 1,
      max: 32,
      idleTimeout: "1 second",
      housekeepingInterval: "100 millis"
    })))), 45_000)
})
