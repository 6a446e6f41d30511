/**
 * The benchmark suite end to end, at smoke scale: every workload with every
 * contender, its results and report, and what a smoke run leaves alone. Not
 * part of `npm test` (it takes minutes): `npm run test:bench`, which CI runs
 * as a step of its own. No timing is asserted.
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { describe, expect, it } from "vitest"
import { root, run } from "../test/support/scripts.ts"

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

