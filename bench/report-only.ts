/**
 * Regenerates docs/benchmarks.md and the charts from the results files
 * already in bench/results, without running anything: `node bench/report-only.ts`.
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Report from "./report.ts"

const benchDir = import.meta.dirname
for (const mode of ["full", "quick"]) {
  const file = Path.join(benchDir, "results", `${mode}.json`)
  if (Fs.existsSync(file)) Report.write(JSON.parse(Fs.readFileSync(file, "utf8")), Path.join(benchDir, "..", "docs"), benchDir)
}
