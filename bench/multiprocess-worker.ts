/**
 * One worker process of the multi-process check (bench/multiprocess.ts):
 * MeshHook worker fibers on one pool until the deadline, then one line of
 * JSON on stdout with what they did.
 *
 * Environment: WORKER_URL, BEHIND_POOLER (none | transaction), POOL_MAX,
 * WORKERS, DURATION_MS, HTTP_MS.
 */
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Pool from "../src/Pool.ts"
import * as PoolError from "../src/PoolError.ts"
import * as Database from "../examples/meshhook/database.ts"
import * as Worker from "../examples/meshhook/worker.ts"

const env = (name: string): string => {
  const value = process.env[name]
  if (value === undefined || value === "") throw new Error(`${name} is not set`)
  return value
}

const deadline = Date.now() + Number(env("DURATION_MS"))
const httpMillis = Number(env("HTTP_MS"))
let jobs = 0
const errors: Record<string, number> = {}

const worker = Effect.gen(function*() {
  while (Date.now() < deadline) {
    const outcome = yield* Effect.result(Worker.runJob(Effect.sleep(httpMillis)))
    if (outcome._tag === "Success") {
      if (outcome.success) jobs++
      else yield* Effect.sleep(httpMillis)
    } else {
      const name = PoolError.fromSqlError(outcome.failure)?._tag ?? outcome.failure.reason._tag
      errors[name] = (errors[name] ?? 0) + 1
    }
  }
})

await Effect.runPromise(
  Effect.forEach(Array.from({ length: Number(env("WORKERS")) }), () => worker, { concurrency: "unbounded", discard: true }).pipe(
    Effect.provide(Pool.layer({
      url: Redacted.make(env("WORKER_URL")),
      max: Number(env("POOL_MAX")),
      tenantSetting: Database.tenantSetting,
      requireTenant: true,
      tenantFormat: "uuid",
      behindPooler: env("BEHIND_POOLER") as "none" | "transaction",
      applicationName: "multiprocess-worker"
    }))
  )
)
console.log(JSON.stringify({ jobs, errors }))
