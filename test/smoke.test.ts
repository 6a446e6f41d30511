/**
 * Smoke tests of the main job and the benchmark suite: they run end to end on
 * a tiny scale and print what they promise. No timing is asserted.
 */
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { describe, expect, it } from "vitest"
import { findBinary } from "../src/testing/PgBouncer.ts"
import { databaseUrl } from "./support/pg.ts"

const root = Path.resolve(import.meta.dirname, "..")

const run = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}) =>
  new Promise<{ readonly code: number | null; readonly output: string }>((resolve) => {
    const child = spawn(process.execPath, args, { cwd: root, env: { ...process.env, ...env } })
    let output = ""
    child.stdout.on("data", (chunk) => output += chunk)
    child.stderr.on("data", (chunk) => output += chunk)
    child.once("exit", (code) => resolve({ code, output }))
  })

describe("the main job", () => {
  it("runs MeshHook workers and ends with a summary whose isolation check is 0", async () => {
    const { code, output } = await run(
      ["examples/main.ts", "--duration", "2", "--workers", "20", "--tenants", "5"],
      { DATABASE_URL: databaseUrl() }
    )
    expect(code, output).toBe(0)
    expect(output).toMatch(/jobs\/s/)
    expect(output).toMatch(/\d+ jobs in [\d.]+ s: \d+ jobs\/s/)
    expect(output).toMatch(/job latency ms: p50 [\d.]+ {2}p95 [\d.]+ {2}p99 [\d.]+/)
    expect(output).toMatch(/PostgreSQL connections used by the workers: at most \d+ \(pool max 8\)/)
    expect(output).toMatch(/errors: none/)
    expect(output).toMatch(/isolation check: 0 cross-tenant rows \(ok\)/)
  }, 60_000)

  it("refuses bad flags with a message and the usage, not a stack trace", async () => {
    const { code, output } = await run(["examples/main.ts", "--workers", "many"])
    expect(code).toBe(2)
    expect(output).toMatch(/--workers must be a whole number/)
    expect(output).toMatch(/Usage: npm start/)
    expect(output).not.toMatch(/\n\s+at /)
  })
})

describe("the benchmark suite", () => {
  it("runs every workload with every contender and writes its results and report", async () => {
    const out = Fs.mkdtempSync(Path.join(Os.tmpdir(), "meshhook-bench-"))
    try {
      const { code, output } = await run(["bench/run.ts", "--smoke", "--out", out])
      expect(code, output).toBe(0)
      const record = JSON.parse(Fs.readFileSync(Path.join(out, "results", "smoke.json"), "utf8"))
      expect(Object.keys(record.workloads)).toEqual(["select1", "selectByKey", "selectByKeyTenant", "meshhookJob", "meshhookJobNatural", "telemetry", "sizingTenant", "sizingJob", "spike"])
      expect(record.noisy.map((s: { name: string }) => s.name)).toContain("@meshhook/pool, tenant-fair")
      for (const [name, workload] of Object.entries(record.workloads) as Array<[string, { summaries: Array<any> }]>) {
        const ours = workload.summaries[0]
        expect(ours.name).toMatch(/^@meshhook\/pool/)
        expect(ours.median.opsPerSecond).toBeGreaterThan(0)
        expect(ours.median.errors).toBe(0)
        if (!["telemetry", "sizingTenant", "sizingJob"].includes(name)) {
          expect(workload.summaries.map((s) => s.name)).toContain("pg.Pool (defaults)")
        }
      }
      const report = Fs.readFileSync(Path.join(out, "benchmarks.md"), "utf8")
      expect(report).toMatch(/\| @meshhook\/pool \| [\d,]+ \|/)
      expect(Fs.existsSync(Path.join(out, "bench", "smoke-selectByKey.svg"))).toBe(true)
    } finally {
      Fs.rmSync(out, { recursive: true, force: true })
    }
  }, 180_000)
})

describe.skipIf(findBinary() === undefined && process.env.MESHHOOK_REQUIRE_PGBOUNCER !== "1")("the multi-process check", () => {
  it("worker processes through PgBouncer stay within its server budget, and no row crosses tenants", async () => {
    const out = Path.join(Fs.mkdtempSync(Path.join(Os.tmpdir(), "meshhook-multi-")), "result.json")
    const { code, output } = await run([
      "bench/multiprocess.ts",
      "--processes", "3", "--max", "6", "--budget", "4", "--workers", "10", "--seconds", "2", "--rounds", "1", "--out", out
    ])
    expect(code, output).toBe(0)
    const result = JSON.parse(Fs.readFileSync(out, "utf8"))
    expect(result.crossTenantRows).toBe(0)
    // Through PgBouncer the three pools (18 connections) share its 4 server connections.
    expect(result.modes.pgbouncer.peakServerConnections).toBeLessThanOrEqual(4)
    expect(result.modes.direct.peakServerConnections).toBeLessThanOrEqual(18)
    expect(result.modes.direct.peakServerConnections).toBeGreaterThan(4)
    // Directly with the budget split between them: one connection each.
    expect(result.modes.directBudget.peakServerConnections).toBeLessThanOrEqual(3)
    for (const mode of ["direct", "directBudget", "pgbouncer"]) {
      expect(result.modes[mode].jobsPerSecond).toBeGreaterThan(0)
      expect(result.modes[mode].errors).toEqual([{}])
    }
  }, 120_000)
})
