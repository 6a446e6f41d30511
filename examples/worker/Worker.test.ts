/**
 * The worker's logic with the pool's mock layer: no database, each test a
 * script of what the database answers, and assertions on what the worker
 * sent and under which tenant.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Pool from "../../src/Pool.ts"
import { PoolTest } from "../../src/testing/index.ts"
import { Webhook, WebhookError } from "./Worker.ts"
import * as Worker from "./Worker.ts"

const project = "0b3f4a52-1111-4a4a-8a8a-000000000001"
const run = "5e0f1c2d-2222-4b4b-9b9b-000000000002"

const claimed = (step: number) => PoolTest.rows("FROM job_queue WHERE vt", [{ msg_id: "17", project_id: project, run_id: run, step }])
const history = PoolTest.rows("SELECT type FROM workflow_events", [{ type: "run_created" }, { type: "step_succeeded" }])

/**
 * A webhook that answers `status`, and checks what it is sent (the claimed job's step, the run's two
 * events) and that the worker holds no connection while it waits.
 */
const webhook = (status: number, step: number) =>
  Layer.effect(
    Webhook,
    Effect.gen(function*() {
      const pool = yield* Pool.Pool
      return Webhook.of({
        send: (request) =>
          Effect.gen(function*() {
            const stats = yield* pool.stats
            assert.strictEqual(stats.used, 0, "no connection is held during the HTTP call")
            assert.deepStrictEqual(request, { runId: run, step, events: 2 })
            if (status >= 400) return yield* new WebhookError({ status })
            return { status }
          })
      })
    })
  )

/** The pool's mock layer with `replies`, and the webhook answering `status` for the job at `step`. */
const scripted = (replies: ReadonlyArray<PoolTest.Reply>, status = 200, step = 1) =>
  Layer.provideMerge(webhook(status, step), PoolTest.layer({ replies, unmatched: "empty" }))

describe("Worker.processNext, with the mock layer", () => {
  it.effect("claims without a tenant, then works as the job's tenant, and advances the run", () =>
    Effect.gen(function*() {
      assert.strictEqual(yield* Worker.processNext, "advanced")
      yield* PoolTest.assertRan("FROM job_queue WHERE vt", { tenant: null, transaction: false })
      yield* PoolTest.assertRan("workflow_events", { tenant: project, transaction: true })
      yield* PoolTest.assertRan("UPDATE workflow_runs SET step", { tenant: project, params: [2, run] })
      const [next] = yield* PoolTest.assertRan("INSERT INTO job_queue", { tenant: project, times: 1 })
      assert.deepStrictEqual(JSON.parse(String(next.params[1])), { run_id: run, step: 2 })
      yield* PoolTest.assertRan("DELETE FROM job_queue", { tenant: project, params: ["17"] })
      yield* PoolTest.assertAllReplied
    }).pipe(Effect.provide(scripted([claimed(1), history]))))

  it.effect("the last step finishes the run and queues nothing", () =>
    Effect.gen(function*() {
      assert.strictEqual(yield* Worker.processNext, "finished")
      yield* PoolTest.assertRan("SET status = 'succeeded'", { tenant: project })
      yield* PoolTest.assertNotRan("INSERT INTO job_queue")
    }).pipe(Effect.provide(scripted([claimed(Worker.stepsPerRun), history], 200, Worker.stepsPerRun))))

  it.effect("a refused webhook records the failure and leaves the job for a retry", () =>
    Effect.gen(function*() {
      assert.strictEqual(yield* Worker.processNext, "retrying")
      const [failed] = yield* PoolTest.assertRan("'step_failed'", { tenant: project })
      assert.deepStrictEqual(JSON.parse(String(failed.params[2])), { step: 1, status: 503 })
      yield* PoolTest.assertRan("UPDATE job_queue SET vt", { params: [Worker.retryDelaySeconds, "17"] })
      yield* PoolTest.assertNotRan("DELETE FROM job_queue")
    }).pipe(Effect.provide(scripted([claimed(1), history], 503))))

  it.effect("an empty queue: one statement, nothing else", () =>
    Effect.gen(function*() {
      assert.strictEqual(yield* Worker.processNext, "idle")
      assert.strictEqual((yield* PoolTest.statements).length, 1)
    }).pipe(Effect.provide(scripted([PoolTest.rows("FROM job_queue", [])]))))

  it.effect("a serialization failure while finishing fails the turn: the job is not acknowledged", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Worker.processNext)
      assert.strictEqual(error.reason._tag, "SerializationError")
      // The transaction stopped at the failure; the acknowledgement never ran.
      yield* PoolTest.assertNotRan("DELETE FROM job_queue")
    }).pipe(Effect.provide(scripted([claimed(1), history, PoolTest.sqlState("UPDATE workflow_runs", "40001")]))))
})
