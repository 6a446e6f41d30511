/**
 * The names the operators' files read, against what the pool exports now:
 * the recording scenarios (docs/operations/recording.ts) run for a few seconds on the
 * test server, and each pool's Prometheus endpoint is scraped. Catches a
 * metric or label renamed in src/ that the committed recordings (and so
 * test/operations.test.ts) would still show under its old name.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import { dashboardExpressions, labelNames, metricNames, ruleExpressions } from "../docs/operations/promql.ts"
import { parseScrape, record, scenarios } from "../docs/operations/recording.ts"
import { serverUrl } from "./support/pg.ts"

const ops = new URL("../docs/operations/", import.meta.url)
const read = (path: string) => Fs.readFileSync(new URL(path, ops), "utf8")

describe("operators' files against a live scrape", () => {
  it("every metric and label the dashboard and the rules read, the pool exports", async () => {
    const recordings = await record({ url: serverUrl(), seconds: 8, intervalSeconds: 8 })
    const live = recordings.flatMap((recording) => parseScrape(recording.scrapes.at(-1)!))
    const names = new Set(live.map((sample) => sample.name))
    // job and instance are the Prometheus server's.
    const labels = new Set([...live.flatMap((sample) => Object.keys(sample.labels)), "job", "instance"])
    const expressions = [
      ...dashboardExpressions(JSON.parse(read("grafana/meshhook-pool.json"))),
      ...ruleExpressions(read("prometheus/meshhook-pool.rules.yml"))
    ]
    const missing = (found: (expr: string) => ReadonlyArray<string>, known: ReadonlySet<string>) =>
      [...new Set(expressions.flatMap(found))].filter((name) => !known.has(name)).sort()
    assert.deepStrictEqual(missing(metricNames, names), [], "metrics read but not exported")
    assert.deepStrictEqual(missing(labelNames, labels), [], "labels read but not exported")
    // The committed recordings name what the pool exports now.
    const committed = new Set(scenarios.flatMap((scenario) => parseScrape(read(`recorded/${scenario}.prom`))).map((s) => s.name))
    assert.deepStrictEqual([...committed].filter((name) => !names.has(name)).sort(), [], "recorded but no longer exported")
  }, 60_000)
})
