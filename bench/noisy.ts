/**
 * The noisy-neighbour benchmark: nine quiet tenants send 20 requests/s each
 * (open loop), one noisy tenant runs 100 closed loops, all on one pool of 8
 * connections; every request holds a connection for a transaction with 2 ms of
 * server work. Measured: the quiet tenants' acquire wait (from asking for a
 * connection to holding it), alone and beside the noisy tenant, and the total
 * throughput, for this pool with tenant-fair scheduling, with FIFO, with
 * fairness plus an in-use limit, and node-postgres `pg.Pool` for reference.
 */
import * as Effect from "effect/Effect"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Redacted from "effect/Redacted"
import * as SqlClient from "effect/sql/SqlClient"
import pg from "pg"
import * as Pool from "../src/Pool.ts"
import type * as PoolConfig from "../src/PoolConfig.ts"
import * as Tenant from "../src/Tenant.ts"
import { latencyStats, median } from "./harness.ts"

const connections = 8
const quietTenants = 9
const quietRate = 20
const noisyLoops = 100
const tenantSetting = "app.tenant_id"

/** Holds a connection for one tenant transaction; resolves with the acquire wait in ms. */
type Request = (tenant: string) => Promise<number>

interface Contender {
  readonly name: string
  readonly setup: (url: string) => Promise<{ readonly request: Request; readonly close: () => Promise<void> }>
}

const ourPool = (name: string, options: PoolConfig.Options): Contender => ({
  name,
  setup: async (url) => {
    const runtime = ManagedRuntime.make(
      Pool.layer({ url, max: connections, min: connections, tenantSetting, maxWaiting: 10_000, ...options })
    )
    const sql = await runtime.runPromise(Effect.service(SqlClient.SqlClient))
    const request: Request = (tenant) =>
      runtime.runPromise(Effect.scoped(Effect.gen(function*() {
        const asked = performance.now()
        const connection = yield* sql.reserve
        const waited = performance.now() - asked
        yield* connection.executeRaw("BEGIN", [])
        yield* connection.executeRaw("SELECT pg_sleep(0.002)", [])
        yield* connection.executeRaw("COMMIT", [])
        return waited
      })).pipe(Tenant.with(tenant)))
    return { request, close: () => runtime.dispose() }
  }
})

const nodePostgres: Contender = {
  name: "pg.Pool (FIFO)",
  setup: async (url) => {
    const pool = new pg.Pool({ connectionString: url, max: connections })
    const request: Request = async (tenant) => {
      const asked = performance.now()
      const client = await pool.connect()
      const waited = performance.now() - asked
      try {
        await client.query("BEGIN")
        await client.query("SELECT set_config($1, $2, true)", [tenantSetting, tenant])
        await client.query("SELECT pg_sleep(0.002)")
        await client.query("COMMIT")
      } finally {
        client.release()
      }
      return waited
    }
    return { request, close: () => pool.end() }
  }
}

export const contenders: ReadonlyArray<Contender> = [
  ourPool("@meshhook/pool, tenant-fair", { fairness: "tenant" }),
  ourPool("@meshhook/pool, FIFO", { fairness: "fifo" }),
  ourPool("@meshhook/pool, tenant-fair + tenantMaxInUse 7", { fairness: "tenant", tenantMaxInUse: 7 }),
  nodePostgres
]

export interface PhaseResult {
  readonly quietP50: number
  readonly quietP99: number
  readonly quietRequests: number
  readonly opsPerSecond: number
}

const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

/** One phase: the quiet tenants' open loops, with or without the noisy tenant's closed loops. */
const phase = async (request: Request, millis: number, noisy: boolean): Promise<PhaseResult> => {
  const quietWaits: Array<number> = []
  let completed = 0
  const until = performance.now() + millis
  const started = performance.now()
  const inFlight: Array<Promise<void>> = []
  const quiet = async (tenant: string) => {
    // Poisson arrivals at quietRate per second.
    while (performance.now() < until) {
      await sleep(-Math.log(1 - Math.random()) * (1_000 / quietRate))
      if (performance.now() >= until) break
      inFlight.push(request(tenant).then((waited) => {
        quietWaits.push(waited)
        completed++
      }, () => undefined))
    }
  }
  const loud = async () => {
    while (performance.now() < until) {
      await request("noisy").then(() => void completed++, () => undefined)
    }
  }
  await Promise.all([
    ...Array.from({ length: quietTenants }, (_, i) => quiet(`quiet-${i}`)),
    ...(noisy ? Array.from({ length: noisyLoops }, loud) : [])
  ])
  await Promise.all(inFlight)
  const stats = latencyStats(quietWaits)
  return {
    quietP50: stats.p50Millis,
    quietP99: stats.p99Millis,
    quietRequests: quietWaits.length,
    opsPerSecond: completed / ((performance.now() - started) / 1_000)
  }
}

export interface NoisySummary {
  readonly name: string
  readonly alone: PhaseResult
  readonly noisy: PhaseResult
}

const medianPhase = (phases: ReadonlyArray<PhaseResult>): PhaseResult => ({
  quietP50: median(phases.map((p) => p.quietP50)),
  quietP99: median(phases.map((p) => p.quietP99)),
  quietRequests: median(phases.map((p) => p.quietRequests)),
  opsPerSecond: median(phases.map((p) => p.opsPerSecond))
})

/** Runs every contender through both phases, alternating, `rounds` times. */
export const run = async (
  url: Redacted.Redacted<string>,
  rounds: number,
  phaseMillis: number,
  log: (line: string) => void
): Promise<Array<NoisySummary>> => {
  const results = new Map<string, { alone: Array<PhaseResult>; noisy: Array<PhaseResult> }>(
    contenders.map((c) => [c.name, { alone: [], noisy: [] }])
  )
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < contenders.length; i++) {
      const contender = contenders[(i + round) % contenders.length]
      const { close, request } = await contender.setup(Redacted.value(url))
      try {
        await phase(request, 500, true)
        const alone = await phase(request, phaseMillis, false)
        const noisy = await phase(request, phaseMillis, true)
        results.get(contender.name)!.alone.push(alone)
        results.get(contender.name)!.noisy.push(noisy)
        log(
          `    ${round + 1}/${rounds} ${contender.name.padEnd(48)} quiet wait p99 alone ${alone.quietP99.toFixed(2)} ms,` +
            ` with noisy ${noisy.quietP99.toFixed(2)} ms; ${noisy.opsPerSecond.toFixed(0)} ops/s`
        )
      } finally {
        await close()
      }
    }
  }
  return contenders.map(({ name }) => {
    const r = results.get(name)!
    return { name, alone: medianPhase(r.alone), noisy: medianPhase(r.noisy) }
  })
}

/** The Markdown table of the noisy-neighbour results. */
export const table = (summaries: ReadonlyArray<NoisySummary>): string => {
  const fifo = summaries.find((s) => s.name === "@meshhook/pool, FIFO")
  const lines = [
    "| setup | quiet wait p50 / p99 alone (ms) | quiet wait p50 / p99 with noisy (ms) | p99 with noisy / alone | total ops/s with noisy | vs FIFO |",
    "|---|---:|---:|---:|---:|---:|"
  ]
  for (const s of summaries) {
    lines.push(
      `| ${s.name} | ${s.alone.quietP50.toFixed(2)} / ${s.alone.quietP99.toFixed(2)} | ` +
        `${s.noisy.quietP50.toFixed(2)} / ${s.noisy.quietP99.toFixed(2)} | ` +
        `${(s.noisy.quietP99 / s.alone.quietP99).toFixed(1)}× | ${s.noisy.opsPerSecond.toFixed(0)} | ` +
        `${fifo === undefined ? "–" : `${(s.noisy.opsPerSecond / fifo.noisy.opsPerSecond).toFixed(2)}×`} |`
    )
  }
  return lines.join("\n")
}
