/**
 * Records the pool's metrics for the alert rules' tests: starts a throwaway
 * PostgreSQL, runs the scenarios of docs/operations/recording.ts for real (their time is
 * not compressed), and scrapes each pool's Prometheus endpoint every 15 s,
 * as a Prometheus server would.
 *
 * It writes, for each scenario, the series the rules read as promtool
 * `input_series` into docs/operations/prometheus/meshhook-pool.rules.test.yml (between
 * its `recorded <scenario>` markers), and the last full scrape as
 * docs/operations/recorded/<scenario>.prom (every metric and label the pool exported).
 * The alert expectations in the test file stay hand-written.
 *
 * `npx node docs/operations/record.ts [--minutes 13] [--interval 15]`
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import { parseArgs } from "node:util"
import * as PgServer from "../../src/testing/PgServer.ts"
import { metricNames, ruleExpressions } from "./promql.ts"
import { parseScrape, record, type Recording } from "./recording.ts"

const here = new URL(".", import.meta.url)
const rulesFile = new URL("prometheus/meshhook-pool.rules.yml", here)
const testFile = new URL("prometheus/meshhook-pool.rules.test.yml", here)

/** The labels a Prometheus server adds to what it scrapes from a worker's endpoint. */
const targetLabels = (scenario: string) => ({ job: "meshhook-worker", instance: `${scenario}:9464` })

/** A value as promtool reads it: whole numbers as they are, others to the microsecond. */
const number = (value: number): string => (Number.isInteger(value) ? String(value) : String(Number(value.toFixed(6))))

/**
 * Values in promtool's expanding notation: `_` for a scrape without the
 * series (`_xn` for n of them), `a+bxn` or `a-bxn` for a run of three or
 * more whole numbers changing by `b` (n+1 values), other values as they are.
 */
const notation = (values: ReadonlyArray<number | undefined>): string => {
  const parts: Array<string> = []
  for (let i = 0; i < values.length;) {
    const value = values[i]
    if (value === undefined) {
      let n = 1
      while (i + n < values.length && values[i + n] === undefined) n++
      parts.push(n === 1 ? "_" : `_x${n}`)
      i += n
      continue
    }
    const next = values[i + 1]
    const step = next === undefined ? Number.NaN : next - value
    let n = 0
    if (Number.isInteger(value) && Number.isInteger(step)) {
      while (values[i + n + 1] === value + (n + 1) * step) n++
    }
    if (n < 2) {
      parts.push(number(value))
      i += 1
    } else {
      parts.push(`${number(value)}${step < 0 ? "-" : "+"}${Math.abs(step)}x${n}`)
      i += n + 1
    }
  }
  return parts.join(" ")
}

/** A series as promtool names it, quoted for YAML. */
const seriesName = (name: string, labels: Readonly<Record<string, string>>): string => {
  const inner = Object.entries(labels).map(([label, value]) => `${label}="${value.replace(/[\\"]/g, "\\$&")}"`)
  return `'${name}{${inner.join(",")}}'`.replace(/(?<=.)'(?=.)/g, "''")
}

/** The input series of one recording: the series of the metrics `names`, one value per scrape. */
const inputSeries = (recording: Recording, names: ReadonlySet<string>, indent: string): string => {
  const series = new Map<string, Array<number | undefined>>()
  recording.scrapes.forEach((text, round) => {
    for (const sample of parseScrape(text)) {
      if (!names.has(sample.name)) continue
      const key = seriesName(sample.name, { ...sample.labels, ...targetLabels(recording.scenario) })
      let values = series.get(key)
      if (values === undefined) series.set(key, values = Array.from({ length: recording.scrapes.length }, () => undefined))
      values[round] = sample.value
    }
  })
  return [...series].sort(([a], [b]) => a.localeCompare(b))
    .map(([key, values]) => `${indent}- series: ${key}\n${indent}  values: '${notation(values)}'\n`)
    .join("")
}

/** `text` with the lines between `# recorded <scenario>: begin` and `...: end` replaced by `lines`. */
const replaceBlock = (text: string, scenario: string, lines: string): string => {
  const block = new RegExp(`(# recorded ${scenario}: begin[^\\n]*\\n)[\\s\\S]*?^([ \\t]*# recorded ${scenario}: end)`, "m")
  if (!block.test(text)) throw new Error(`${testFile.pathname} has no "# recorded ${scenario}: begin/end" markers`)
  return text.replace(block, (_, begin: string, end: string) => `${begin}${lines}${end}`)
}

const { values: args } = parseArgs({
  options: { minutes: { type: "string", default: "13" }, interval: { type: "string", default: "15" } }
})
const seconds = Number(args.minutes) * 60
const intervalSeconds = Number(args.interval)

const names = new Set(ruleExpressions(Fs.readFileSync(rulesFile, "utf8")).flatMap(metricNames))
const scope = Effect.runSync(Scope.make())
// Ctrl-C stops the server too, instead of leaving it running.
process.once("SIGINT", () => void Effect.runPromise(Scope.close(scope, Exit.void)).finally(() => process.exit(130)))
try {
  const server = await Effect.runPromise(Scope.provide(PgServer.make(), scope))
  console.log(`Recording ${args.minutes} min, a scrape every ${intervalSeconds} s`)
  const recordings = await record({
    url: Redacted.value(server.url()),
    seconds,
    intervalSeconds,
    onScrape: (round, rounds) => process.stdout.write(`\rscrape ${round}/${rounds}`)
  })
  process.stdout.write("\n")
  let tests = Fs.readFileSync(testFile, "utf8")
  Fs.mkdirSync(new URL("recorded/", here), { recursive: true })
  for (const recording of recordings) {
    const indent = /^([ \t]*)# recorded /m.exec(tests)?.[1] ?? "      "
    tests = replaceBlock(tests, recording.scenario, inputSeries(recording, names, indent))
    Fs.writeFileSync(new URL(`recorded/${recording.scenario}.prom`, here), recording.scrapes.at(-1)!)
  }
  Fs.writeFileSync(testFile, tests)
  console.log(`Wrote ${testFile.pathname} and docs/operations/recorded/*.prom`)
} finally {
  await Effect.runPromise(Scope.close(scope, Exit.void))
}
