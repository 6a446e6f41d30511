/**
 * The metric and label names a PromQL expression reads, found well enough
 * for the expressions in this folder (no full parser): the recorder keeps
 * only the series the rules read, and the tests check that the dashboard and
 * the rules name nothing the pool does not export.
 */

/** Words PromQL gives a meaning of its own, which are never metric names. */
const keywords = new Set([
  "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
  "offset", "bool", "inf", "nan"
])

/** Label lists: `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`, `group_left (...)`. */
const labelList = /\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g

/** `expr` with its comments and Grafana variables gone, and its strings emptied. */
const normalized = (expr: string): string =>
  expr
    .replace(/#.*$/gm, "")
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, "\"\"")
    .replace(/\$\{?\w+(?::\w+)?\}?/g, "0")

/**
 * The metric names `expr` selects. Grafana's `label_values(metric, label)`
 * (a template variable's query) names `metric`.
 */
export const metricNames = (expr: string): ReadonlyArray<string> => {
  const values = /^\s*label_values\(\s*([A-Za-z_:][\w:]*)/.exec(expr)
  if (values !== null) return [values[1]]
  const bare = normalized(expr)
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(labelList, " ")
  // An identifier not inside a number or duration (`5m`, `1e3`) and not called as a function.
  const names = bare.match(/(?<![\w.:])[A-Za-z_:][\w:]*(?![\w:]|\s*\()/g) ?? []
  return [...new Set(names.filter((name) => !keywords.has(name.toLowerCase())))]
}

/** The label names `expr` matches on or groups by. */
export const labelNames = (expr: string): ReadonlyArray<string> => {
  const values = /^\s*label_values\(\s*[A-Za-z_:][\w:]*\s*,\s*(\w+)\s*\)/.exec(expr)
  if (values !== null) return [values[1]]
  const text = normalized(expr)
  const names: Array<string> = []
  for (const [, matchers] of text.matchAll(/\{([^}]*)\}/g)) {
    for (const [, name] of matchers.matchAll(/(\w+)\s*(?:=~|!~|!=|=)/g)) names.push(name)
  }
  for (const [, list] of text.matchAll(labelList)) {
    names.push(...list.split(",").map((name) => name.trim()).filter((name) => name !== ""))
  }
  return [...new Set(names)]
}

/**
 * The `expr` of every rule in a rules file (or a rule test file's
 * `promql_expr_test`), plain or as a `|` block; promtool checks the YAML
 * itself, so this reader only needs the files of this folder.
 */
export const ruleExpressions = (yaml: string): ReadonlyArray<string> => {
  const lines = yaml.split("\n")
  const expressions: Array<string> = []
  lines.forEach((line, i) => {
    const match = /^(\s*(?:- )?)expr:\s*(.*)$/.exec(line)
    if (match === null) return
    const [, lead, rest] = match
    if (!/^[|>]/.test(rest)) return expressions.push(rest.replace(/^(['"])(.*)\1$/, "$2"))
    const block: Array<string> = []
    for (const next of lines.slice(i + 1)) {
      if (next.trim() !== "" && next.search(/\S/) <= lead.length) break
      block.push(next)
    }
    expressions.push(block.join("\n"))
  })
  return expressions
}

/** A Grafana dashboard, as far as its queries go. */
interface Dashboard {
  readonly panels?: ReadonlyArray<Panel>
  readonly templating?: { readonly list?: ReadonlyArray<{ readonly query?: string | { readonly query?: string } }> }
}
interface Panel {
  readonly targets?: ReadonlyArray<{ readonly expr?: string }>
  readonly panels?: ReadonlyArray<Panel>
}

/** Every query of a Grafana dashboard: its panels' (rows' too) and its template variables'. */
export const dashboardExpressions = (dashboard: Dashboard): ReadonlyArray<string> => {
  const ofPanels = (panels: ReadonlyArray<Panel>): Array<string> =>
    panels.flatMap((panel) => [
      ...(panel.targets ?? []).flatMap((target) => (target.expr === undefined ? [] : [target.expr])),
      ...ofPanels(panel.panels ?? [])
    ])
  const variables = (dashboard.templating?.list ?? []).flatMap((variable) => {
    const query = typeof variable.query === "string" ? variable.query : variable.query?.query
    return query === undefined ? [] : [query]
  })
  return [...ofPanels(dashboard.panels ?? []), ...variables]
}
