/**
 * The worker's SQL against a real database: a fresh one for this file with
 * MeshHook's migrations, the pool connecting as the worker role (row-level
 * security applies), and the webhook stood in for.
 */
import { assert, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import { PgTest } from "../../src/testing/index.ts"
import { Webhook, WebhookError } from "./Worker.ts"
import * as Worker from "./Worker.ts"

const database = PgTest.layer({
  migrations: new URL("../meshhook/migrations", import.meta.url),
  role: "mh_worker",
  pool: { tenantSetting: "app.project_id", tenantFormat: "uuid", requireTenant: true }
})

/** A webhook that answers with the statuses given, one per call. */
const webhook = (...statuses: Array<number>) =>
  Layer.succeed(Webhook, Webhook.of({
    send: () => {
      const status = statuses.shift() ?? 200
      return status >= 400 ? Effect.fail(new WebhookError({ status })) : Effect.succeed({ status })
    }
  }))

/** A project with one run at step 1 and its job, seeded by the owner; returns the ids. */
const seedRun = Effect.gen(function*() {
  const db = yield* PgTest.Database
  const [project] = yield* db.admin("INSERT INTO projects (owner, name) VALUES (gen_random_uuid(), 'p') RETURNING id::text")
  const [definition] = yield* db.admin(
    "INSERT INTO workflow_definitions (project_id, slug, definition) VALUES ($1, 'hook', '{}') RETURNING id::text",
    [project.id]
  )
  const [run] = yield* db.admin(
    "INSERT INTO workflow_runs (project_id, workflow_id, status) VALUES ($1, $2, 'running') RETURNING id::text",
    [project.id, definition.id]
  )
  yield* db.admin("INSERT INTO workflow_events (project_id, run_id, type, payload) VALUES ($1, $2, 'run_created', '{}')", [
    project.id,
    run.id
  ])
  yield* db.admin("INSERT INTO job_queue (project_id, message) VALUES ($1, jsonb_build_object('run_id', $2::text, 'step', 1))", [
    project.id,
    run.id
  ])
  return { project: String(project.id), run: String(run.id) }
})

const eventsOf = (run: string) =>
  Effect.flatMap(Effect.service(PgTest.Database), (db) =>
    db.admin("SELECT type, project_id::text AS project FROM workflow_events WHERE run_id = $1 ORDER BY ts, id", [run]))

// Live clock: the listening worker sleeps and times out for real.
layer(database, { excludeTestServices: true })("Worker.processNext, on a real database", (it) => {
  it.effect("runs a run to the end, one step per job, as the run's tenant", () =>
    Effect.gen(function*() {
      const { project, run } = yield* seedRun
      const outcomes = [
        yield* Worker.processNext,
        yield* Worker.processNext,
        yield* Worker.processNext,
        yield* Worker.processNext
      ]
      assert.deepStrictEqual(outcomes, ["advanced", "advanced", "finished", "idle"])
      const events = yield* eventsOf(run)
      assert.deepStrictEqual(events.map((e) => e.type), [
        "run_created",
        "step_started",
        "step_succeeded",
        "step_started",
        "step_succeeded",
        "step_started",
        "step_succeeded"
      ])
      // Row-level security let the worker write only as the run's own project.
      assert.isTrue(events.every((e) => e.project === project))
      const db = yield* PgTest.Database
      const [state] = yield* db.admin("SELECT status, step FROM workflow_runs WHERE id = $1", [run])
      assert.deepStrictEqual(state, { status: "succeeded", step: Worker.stepsPerRun })
      const [queued] = yield* db.admin("SELECT count(*)::int AS n FROM job_queue")
      assert.strictEqual(queued.n, 0)
    }).pipe(Effect.provide(webhook())))

  it.effect("a refused call is recorded, and its job waits out the retry delay", () =>
    Effect.gen(function*() {
      const { run } = yield* seedRun
      assert.strictEqual(yield* Worker.processNext, "retrying")
      // The job is not visible again yet: the queue looks empty.
      assert.strictEqual(yield* Worker.processNext, "idle")
      const events = yield* eventsOf(run)
      assert.deepStrictEqual(events.map((e) => e.type), ["run_created", "step_started", "step_failed"])
      const db = yield* PgTest.Database
      const [job] = yield* db.admin(
        "SELECT read_ct, vt > now() + interval '20 seconds' AS later FROM job_queue WHERE message->>'run_id' = $1",
        [run]
      )
      assert.deepStrictEqual(job, { read_ct: 1, later: true })
    }).pipe(Effect.provide(webhook(503))))

  it.effect("listening: an idle worker wakes on a producer's notification, long before its poll", () =>
    Effect.gen(function*() {
      const outcomes = yield* Queue.unbounded<Worker.Outcome>()
      const worker = yield* Effect.forkChild(
        Worker.listening({ pollInterval: "1 hour" }).pipe(Stream.runForEach((outcome) => Queue.offer(outcomes, outcome)))
      )
      // Listening has started and the queue has been looked at: nothing visible (the retried job waits out its delay).
      assert.strictEqual(yield* Queue.take(outcomes), "idle")
      const { run } = yield* seedRun
      const db = yield* PgTest.Database
      yield* db.admin("SELECT pg_notify($1, '')", [Worker.jobsChannel])
      // Without the notification the worker would sleep for an hour.
      const next = yield* Queue.take(outcomes).pipe(Effect.timeout("20 seconds"))
      assert.strictEqual(next, "advanced")
      const events = yield* eventsOf(run)
      assert.deepStrictEqual(events.map((e) => e.type), ["run_created", "step_started", "step_succeeded"])
      yield* Fiber.interrupt(worker)
    }).pipe(Effect.provide(webhook())))
})
