/**
 * The operators' files (docs/operations/): the Grafana dashboard imports as Grafana
 * expects and, with the alert rules, reads only metrics and labels the pool
 * exported in the recorded scrapes (docs/operations/recorded/, from a real pool: see
 * docs/operations/record.ts); promtool accepts the rules and their tests pass on the
 * recordings. test/operations.pg.test.ts checks the same names against a
 * live scrape.
 */
import { assert, describe, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import { dashboardExpressions, labelNames, metricNames, ruleExpressions } from "../docs/operations/promql.ts"
import { parseScrape, scenarios } from "../docs/operations/recording.ts"

const ops = new URL("../docs/operations/", import.meta.url)
const read = (path: string) => Fs.readFileSync(new URL(path, ops), "utf8")

const dashboard = JSON.parse(read("grafana/meshhook-pool.json"))
const rules = read("prometheus/meshhook-pool.rules.yml")

/** Every series of the last scrape of each recorded scenario. */
const recorded = scenarios.flatMap((scenario) => parseScrape(read(`recorded/${scenario}.prom`)))
/** Labels the Prometheus server adds to every scraped series. */
const targetLabels = ["job", "instance"]

/** `promtool` on the PATH, if there is one. */
const promtool = (() => {
  try {
    execFileSync("promtool", ["--version"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})()

/** The names in `expressions` that are not in `known`. */
const unknown = (
  expressions: ReadonlyArray<string>,
  names: (expr: string) => ReadonlyArray<string>,
  known: ReadonlySet<string>
) => [...new Set(expressions.flatMap(names))].filter((name) => !known.has(name))

describe("operators' files", () => {
  const expressions = { dashboard: dashboardExpressions(dashboard), rules: ruleExpressions(rules) }

  it("the dashboard asks for a Prometheus data source on import, and every panel queries it", () => {
    const input = (dashboard.__inputs as Array<Record<string, string>>).find((input) => input.name === "DS_PROMETHEUS")
    assert.include(input, { type: "datasource", pluginId: "prometheus" })
    const panels = (dashboard.panels as Array<Record<string, any>>).filter((panel) => panel.type !== "row")
    assert.isAtLeast(panels.length, 10)
    const ids = (dashboard.panels as Array<{ id: number }>).map((panel) => panel.id)
    assert.strictEqual(new Set(ids).size, ids.length, "panel ids are unique")
    for (const panel of panels) {
      assert.strictEqual(panel.datasource.uid, "${DS_PROMETHEUS}", panel.title)
      assert.isAtLeast(panel.targets.length, 1, panel.title)
      for (const target of panel.targets) {
        assert.strictEqual(target.datasource.uid, "${DS_PROMETHEUS}", panel.title)
        assert.isNotEmpty(target.expr, panel.title)
      }
    }
    assert.isAtLeast(expressions.dashboard.length, panels.length)
  })

  it("the dashboard and the rules read only metrics and labels the pool exported", () => {
    const names = new Set(recorded.map((sample) => sample.name))
    const labels = new Set([...recorded.flatMap((sample) => Object.keys(sample.labels)), ...targetLabels])
    for (const [file, exprs] of Object.entries(expressions)) {
      assert.isNotEmpty(exprs, file)
      assert.deepStrictEqual(unknown(exprs, metricNames, names), [], `${file}: metrics not in docs/operations/recorded/*.prom`)
      assert.deepStrictEqual(unknown(exprs, labelNames, labels), [], `${file}: labels not in docs/operations/recorded/*.prom`)
    }
    // The reader of names finds what is there (a reader that found nothing would pass the above).
    assert.includeMembers(expressions.rules.flatMap(metricNames), [
      "db_client_connection_wait_time_bucket",
      "meshhook_pool_circuit_open"
    ])
  })

  it("every series the recorded pools exported names its pool, retries and notification gaps too", () => {
    const unnamed = recorded.filter((sample) => sample.name !== "target_info" && sample.labels.db_client_connection_pool_name === undefined)
    assert.deepStrictEqual([...new Set(unnamed.map((sample) => sample.name))], [])
    assert.includeMembers(recorded.map((sample) => sample.name), ["meshhook_pool_retries_total", "meshhook_pool_notifications_gaps_total"])
  })

  it("the recorded scrapes hold no tenant id in the clear", () => {
    const tenants = recorded.flatMap((sample) => sample.labels.meshhook_tenant ?? [])
    assert.isNotEmpty(tenants)
    for (const tenant of tenants) assert.match(tenant, /^([0-9a-f]{16}|other)$/)
    // The load's tenants are named tenant-1, tenant-noisy, ...: none of them may appear.
    for (const file of ["prometheus/meshhook-pool.rules.test.yml", ...scenarios.map((s) => `recorded/${s}.prom`)]) {
      assert.notInclude(read(file), "tenant-", file)
    }
  })

  // CI installs promtool (.ci/run); elsewhere these run when it is there.
  const withPromtool = it.skipIf(!promtool && process.env.CI !== "true")
  withPromtool("promtool: the rules are valid, and their tests pass on the recordings", () => {
    assert.isTrue(promtool, "promtool is not installed (Debian's prometheus package); CI needs it")
    const run = (...args: Array<string>): string => {
      try {
        return execFileSync("promtool", args, { cwd: new URL("prometheus/", ops), encoding: "utf8" })
      } catch (error) {
        const output = error as { readonly stdout?: string; readonly stderr?: string }
        return assert.fail(`promtool ${args.join(" ")} failed:\n${output.stdout ?? ""}${output.stderr ?? ""}`)
      }
    }
    assert.include(run("check", "rules", "meshhook-pool.rules.yml"), "SUCCESS")
    assert.include(run("test", "rules", "meshhook-pool.rules.test.yml"), "SUCCESS")
  })
})
