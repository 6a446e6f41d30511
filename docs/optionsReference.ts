/**
 * The options section of docs/configuration.md, written from the table of
 * options (src/internal/options/options.ts): `npm run docs:options` rewrites it in
 * place, and test/options.test.ts fails when the page differs from what
 * this would write. The page's other parts are written by hand.
 */
import * as Fs from "node:fs"
import { type Section, type Spec, specs } from "../src/internal/options/options.ts"

/** docs/configuration.md. */
export const page = new URL("./configuration.md", import.meta.url)

const begin = "<!-- The options, written by `npm run docs:options` from src/internal/options/options.ts: edit the table, not this. -->"
const end = "<!-- End of the options. -->"

const sections: Record<Section, { readonly title: string; readonly intro?: string }> = {
  connection: { title: "Connection" },
  pool: { title: "Pool" },
  resilience: { title: "Resilience", intro: "See docs/resilience.md." },
  statements: { title: "Statements" },
  tenancy: { title: "Tenancy", intro: "See docs/tenancy.md and docs/security.md." },
  fairness: {
    title: "Fair scheduling",
    intro: "When callers wait for connections, `fairness: \"tenant\"` (the default) serves them by deficit\n" +
      "round-robin: priority classes (`Priority.with(\"high\" | \"normal\" | \"low\")`) take turns by\n" +
      "`priorityWeights`, and within a class each tenant with waiters takes turns by its weight, first come\n" +
      "first served within the tenant. Work without a tenant counts as one tenant. Nothing of this runs while\n" +
      "connections are free, and a tenant that stops waiting leaves no state."
  },
  pgClient: {
    title: "`PgClient`'s names",
    intro: "`@effect/sql-pg`'s `PgClient.layer` option names are read with the same meaning, so options written\n" +
      "for it carry over (`idleTimeout`, `prepare`, `preparedStatementCacheSize` and the `transform*` options\n" +
      "have the same names in both). Given beside the pool's own name with another value, they are refused.\n" +
      "docs/compatibility.md has the whole comparison."
  }
}

const code = (text: string): string => `\`${text}\``

/**
 * An option's default as the reference writes it.
 *
 * @internal
 */
export const shownDefault = (spec: Spec<unknown>): string => {
  if (spec.shown !== undefined) return spec.shown
  if (spec.default === undefined) return "–"
  const pooled = spec.pooled === undefined ? "" : ` (${code(spec.kind.show(spec.pooled))} behind a pooler)`
  return code(spec.kind.show(spec.default)) + pooled
}

const row = ([field, spec]: readonly [string, Spec<unknown>]): string =>
  "| " + [
    code(field),
    spec.env === undefined ? "–" : code(spec.env),
    shownDefault(spec),
    spec.aliasOf === undefined ? spec.kind.values : `as ${code(spec.aliasOf)}`,
    spec.doc
  ].map((cell) => cell.replaceAll("|", "\\|")).join(" | ") + " |"

const table = (section: Section): string => {
  const { intro, title } = sections[section]
  return [
    `## ${title}`,
    ...(intro === undefined ? [] : [intro]),
    [
      "| option | environment | default | takes | meaning |",
      "|---|---|---|---|---|",
      ...specs.filter(([, spec]) => spec.section === section).map(row)
    ].join("\n")
  ].join("\n\n")
}

/**
 * The section as this writes it, markers included.
 *
 * @internal
 */
export const written = (): string =>
  [begin, ...(Object.keys(sections) as Array<Section>).map(table), end].join("\n\n")

/**
 * The section as `text` (the page) has it, markers included; the empty
 * string if it has none.
 *
 * @internal
 */
export const found = (text: string): string => {
  const from = text.indexOf(begin)
  const to = text.indexOf(end, from)
  return from < 0 || to < 0 ? "" : text.slice(from, to + end.length)
}

if (import.meta.main) {
  const text = Fs.readFileSync(page, "utf8")
  const current = found(text)
  if (current === "") throw new Error(`${page.pathname} has no options section (its markers are missing)`)
  Fs.writeFileSync(page, text.replace(current, () => written()))
}
