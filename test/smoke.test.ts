/**
 * Smoke tests of the main job and the benchmark suite: they run end to end on
 * a tiny scale and print what they promise. No timing is asserted.
 */
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { describe, expect, it } from "vitest"
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { findBinary } from "../src/testing/PgBouncer.ts"
import * as PgTest from "../src/testing/PgTest.ts"
import { databaseUrl } from "./support/pg.ts"

const root = Path.resolve(import.meta.dirname, "..")

/**
 * Runs a script to its end. `interrupt`: in a process group of its own, as a terminal runs it; once its
 * output matches, the whole group gets SIGINT, as from Ctrl-C.
 */
const run = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}, interrupt?: RegExp) =>
  new Promise<{ readonly code: number | null; readonly output: string }>((resolve) => {
    const { DATABASE_URL: _, ...inherited } = process.env
    const child = spawn(process.execPath, args, { cwd: root, env: { ...inherited, ...env }, detached: interrupt !== undefined })
    let output = ""
    let interrupted = false
    const onOutput = (chunk: Buffer) => {
      output += chunk
      if (interrupt !== undefined && !interrupted && interrupt.test(output)) {
        interrupted = true
        process.kill(-child.pid!, "SIGINT")
      }
    }
    child.stdout.on("data", onOutput)
    child.stderr.on("data", onOutput)
    child.once("exit", (code) => resolve({ code, output }))
  })

describe("the main job", () => {
  it("runs MeshHook workers and ends with a summary whose isolation check is 0", async () => {
    const { code, output } = await run(["examples/main.ts", "--duration", "2", "--workers", "20", "--tenants", "5"])
    expect(code, output).toBe(0)
    expect(output).toMatch(/jobs\/s/)
    expect(output).toMatch(/\d+ jobs in [\d.]+ s: \d+ jobs\/s/)
    expect(output).toMatch(/job latency ms: p50 [\d.]+ {2}p95 [\d.]+ {2}p99 [\d.]+/)
    expect(output).toMatch(/waiting for a connection: [\d.]+ ms per checkout, \d+% of the jobs' time/)
    expect(output).toMatch(/PostgreSQL connections used by the workers: at most \d+ \(pool max 8\)/)
    expect(output).toMatch(/errors: none/)
    expect(output).toMatch(/isolation check: 0 cross-tenant rows \(ok\)/)
  }, 60_000)

  it("Ctrl-C in a terminal (SIGINT to the whole process group) ends the run early with its summary", async () => {
    const { code, output } = await run(
      ["examples/main.ts", "--duration", "60", "--workers", "20", "--tenants", "5"],
      {},
      /\s1 s {2}jobs/
    )
    expect(output).toMatch(/Stopping early/)
    expect(output).toMatch(/isolation check: 0 cross-tenant rows \(ok\)/)
    expect(output).not.toMatch(/Failed:/)
    expect(code, output).toBe(0)
  }, 90_000)

  it("far more workers than the pool can queue wait their turn and get work done; PGPOOL_* variables size the pool", async () => {
    const { code, output } = await run(
      // Long enough for a loaded machine: the first seconds go to turning most of them away.
      ["examples/main.ts", "--duration", "8", "--workers", "3000", "--tenants", "5"],
      { PGPOOL_MAX: "3", PGPOOL_MAX_WAITING: "100" }
    )
    expect(code, output).toBe(0)
    expect(output).toMatch(/on a pool of 3\b/)
    const jobs = Number(/(\d+) jobs in [\d.]+ s/.exec(output)?.[1] ?? 0)
    expect(jobs, output).toBeGreaterThan(0)
  }, 90_000)

  it("on a server that has an mh_worker role already, refuses and changes nothing", async () => {
    const side = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      // The role as the test kit leaves it on a shared test server.
      yield* PgTest.createDatabase(Redacted.make(databaseUrl()), { role: "mh_worker" })
      const admin = yield* PgConnection.make({ url: Redacted.make(databaseUrl()) })
      const password = () =>
        Effect.map(admin.query("SELECT rolpassword FROM pg_authid WHERE rolname = 'mh_worker'"), (r) => r.rows[0]?.rolpassword)
      return { before: yield* password() }
    })))
    const { code, output } = await run(["examples/main.ts", "--duration", "1", "--workers", "2", "--tenants", "1"], {
      DATABASE_URL: databaseUrl()
    })
    expect(code).not.toBe(0)
    expect(output).toMatch(/A role mh_worker exists already on this server: it is not changed/)
    const after = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const admin = yield* PgConnection.make({ url: Redacted.make(databaseUrl()) })
      return (yield* admin.query("SELECT rolpassword FROM pg_authid WHERE rolname = 'mh_worker'")).rows[0]?.rolpassword
    })))
    expect(after).toBe(side.before)
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
  it("a smoke run leaves the published page and charts alone, and says where it wrote", async () => {
    const published = Path.join(root, "docs", "benchmarks.md")
    const before = Fs.statSync(published).mtimeMs
    const { code, output } = await run(["bench/run.ts", "--smoke", "--only", "select1"])
    expect(code, output).toBe(0)
    const written = /Wrote (\S+) and (\S+)/.exec(output)
    expect(written, output).not.toBeNull()
    for (const file of written!.slice(1)) {
      expect(Path.relative(root, file).startsWith(".."), file).toBe(true)
      expect(Fs.existsSync(file)).toBe(true)
    }
    expect(Fs.statSync(published).mtimeMs).toBe(before)
    Fs.rmSync(Path.dirname(written![2]), { recursive: true, force: true })
  }, 120_000)


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
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "meshhook-multi-"))
    const out = Path.join(dir, "result.json")
    const { code, output } = await run([
      "bench/multiprocess.ts",
      "--processes", "3", "--max", "6", "--budget", "4", "--workers", "10", "--seconds", "2", "--rounds", "1", "--out", out
    ])
    expect(code, output).toBe(0)
    const result = JSON.parse(Fs.readFileSync(out, "utf8"))
    Fs.rmSync(dir, { recursive: true, force: true })
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
