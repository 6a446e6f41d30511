/**
 * Turns benchmark results into docs/benchmarks.md and SVG charts in
 * docs/bench/. The page is generated; the hand-written analysis it ends with
 * lives in bench/analysis.md.
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import type { Summary } from "./harness.ts"
import * as Noisy from "./noisy.ts"

export interface Record {
  readonly mode: string
  readonly date: string
  readonly machine: string
  readonly settings: { readonly [key: string]: number }
  readonly workloads: { readonly [name: string]: { readonly title: string; readonly summaries: ReadonlyArray<Summary> } }
  readonly noisy?: ReadonlyArray<Noisy.NoisySummary>
}

const missing = (n: number | null): n is null => n === null || Number.isNaN(n)
const fixed = (n: number, digits = 0): string => missing(n) ? "–" : n.toFixed(digits)
const thousands = (n: number): string => missing(n) ? "–" : Math.round(n).toLocaleString("en-US")

/** A Markdown table: medians over rounds, the throughput spread, and ratios to the first contender. */
export const table = (summaries: ReadonlyArray<Summary>): string => {
  const base = summaries[0].median.opsPerSecond
  const lines = [
    "| contender | ops/s (median) | min–max | vs first | p50 ms | p99 ms | max ms | p99/p50 | backends | Node CPU | errors |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  ]
  for (const s of summaries) {
    const m = s.median
    lines.push(
      `| ${s.name} | ${thousands(m.opsPerSecond)} | ${thousands(s.min)}–${thousands(s.max)} | ` +
        `${fixed(m.opsPerSecond / base, 2)}× | ${fixed(m.p50Millis, 2)} | ${fixed(m.p99Millis, 2)} | ` +
        `${fixed(m.maxMillis, 1)} | ${fixed(m.p99Millis / m.p50Millis, 1)} | ${m.backends} | ` +
        `${missing(m.cpuPercent) ? "–" : `${fixed(m.cpuPercent)}%`} | ${m.errors} |`
    )
  }
  return lines.join("\n")
}

const escapeXml = (text: string): string => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

/** Widths the chart allows for text, in px per character (sans-serif at 12 px, and the 14 px bold title), generously. */
const labelCharWidth = 7
const titleCharWidth = 8.5

/** `text` in lines of at most `limit` characters, broken between words. */
const wrap = (text: string, limit: number): Array<string> => {
  const lines: Array<string> = []
  let line = ""
  for (const word of text.split(" ")) {
    if (line !== "" && line.length + 1 + word.length > limit) {
      lines.push(line)
      line = word
    } else {
      line = line === "" ? word : `${line} ${word}`
    }
  }
  return line === "" ? lines : [...lines, line]
}

/** A horizontal bar chart of median throughput with min–max whiskers; labels and title are never cut. */
export const chart = (title: string, summaries: ReadonlyArray<Summary>): string => {
  const rowHeight = 28
  const labelWidth = Math.max(230, 16 + labelCharWidth * Math.max(...summaries.map((s) => s.name.length)))
  const barWidth = 420
  const width = labelWidth + barWidth + 90
  const titleLines = wrap(`${title} — ops/s, median with min–max`, Math.floor((width - 20) / titleCharWidth))
  const top = 22 + titleLines.length * 18
  const height = top + summaries.length * rowHeight + 30
  const peak = Math.max(...summaries.map((s) => s.max)) || 1
  const x = (value: number) => labelWidth + (value / peak) * barWidth
  const rows = summaries.map((s, i) => {
    const y = top + i * rowHeight
    const color = i === 0 ? "#2f6fb0" : "#9aa7b4"
    return [
      `<text x="${labelWidth - 8}" y="${y + 17}" text-anchor="end">${escapeXml(s.name)}</text>`,
      `<rect x="${labelWidth}" y="${y + 5}" width="${Math.max(0, x(s.median.opsPerSecond) - labelWidth)}" height="16" fill="${color}"/>`,
      `<line x1="${x(s.min)}" y1="${y + 13}" x2="${x(s.max)}" y2="${y + 13}" stroke="#222" stroke-width="1.5"/>`,
      `<text x="${x(s.max) + 6}" y="${y + 17}">${thousands(s.median.opsPerSecond)}</text>`
    ].join("")
  })
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">` +
    `<rect width="100%" height="100%" fill="white"/>` +
    titleLines.map((line, i) => `<text x="10" y="${22 + i * 18}" font-size="14" font-weight="bold">${escapeXml(line)}</text>`).join("") +
    rows.join("") +
    `</svg>\n`
}

const section = (record: Record): Array<string> => {
  const lines = [
    `## ${record.mode} run, ${record.date.slice(0, 10)}`,
    "",
    `Machine: ${record.machine}. PostgreSQL 15 on the same machine, durable settings.`,
    `Settings: ${Object.entries(record.settings).map(([k, v]) => `${k} ${v}`).join(", ")}.`,
    ""
  ]
  for (const [name, workload] of Object.entries(record.workloads)) {
    lines.push(
      `### ${workload.title}`,
      "",
      `![${workload.title}](bench/${record.mode}-${name}.svg)`,
      "",
      table(workload.summaries),
      ""
    )
  }
  if (record.noisy !== undefined) {
    lines.push(
      "### Noisy neighbour: 9 quiet tenants at 20 requests/s each, one noisy tenant with 100 closed loops, 8 connections",
      "",
      "Each request holds a connection for a transaction with 2 ms of server work. The wait is from asking",
      "for a connection to holding it.",
      "",
      Noisy.table(record.noisy),
      ""
    )
  }
  return lines
}

/**
 * Writes the charts of `record` and regenerates docs/benchmarks.md from every
 * results file in `benchDir/results`, ending with `benchDir/analysis.md`.
 */
export const write = (record: Record, docsDir: string, benchDir: string): void => {
  const chartsDir = Path.join(docsDir, "bench")
  Fs.mkdirSync(chartsDir, { recursive: true })
  for (const [name, workload] of Object.entries(record.workloads)) {
    Fs.writeFileSync(Path.join(chartsDir, `${record.mode}-${name}.svg`), chart(workload.title, workload.summaries))
  }
  const records: Array<Record> = []
  for (const mode of new Set(["full", "quick", record.mode])) {
    const file = Path.join(benchDir, "results", `${mode}.json`)
    if (Fs.existsSync(file)) records.push(JSON.parse(Fs.readFileSync(file, "utf8")))
  }
  const analysis = Path.join(benchDir, "analysis.md")
  const page = [
    "# Benchmarks",
    "",
    "Generated by `npm run bench` (full: 5 rounds of 5 s per contender) or `npm run bench -- --quick`",
    "(3 rounds of 2 s); the analysis at the end is bench/analysis.md. Contenders run in alternation,",
    "the starting one rotating each round, after a warm-up; figures are medians over rounds, with the",
    "min–max spread of throughput. `backends` is the most server connections the contender held at once;",
    "`Node CPU` is the benchmark process's CPU time over wall time (100% = one core).",
    "",
    ...records.flatMap(section),
    ...(Fs.existsSync(analysis) ? [Fs.readFileSync(analysis, "utf8")] : [])
  ]
  Fs.writeFileSync(Path.join(docsDir, "benchmarks.md"), page.join("\n"))
}
