/**
 * The main job and the multi-process check end to end, on a tiny scale, as a
 * user runs them: what they print and how they stop. No timing is asserted.
 */
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
import { run } from "./support/scripts.ts"

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
