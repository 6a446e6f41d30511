/**
 * The names the pool's options go by: its own, and `@effect/sql-pg`'s
 * `PgClient.layer` names read with the same meaning (the table's records
 * with `aliasOf`), so options written for `PgClient` carry over. A key that
 * is neither is refused, naming the nearest option: an option the pool
 * silently ignored (a typo, or a name from another client) would leave a
 * setting at its default unseen.
 *
 * @internal
 */
import type { Options } from "../../PoolConfig.ts"
import type { Problems } from "./optionChecks.ts"
import { specs, table } from "./options.ts"

/** Edit distance, case-insensitive: how far a misspelt key is from an option. */
const distance = (a: string, b: string): number => {
  const x = a.toLowerCase()
  const y = b.toLowerCase()
  let row = Array.from({ length: y.length + 1 }, (_, j) => j)
  for (let i = 1; i <= x.length; i++) {
    const next = [i]
    for (let j = 1; j <= y.length; j++) {
      next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (x[i - 1] === y[j - 1] ? 0 : 1))
    }
    row = next
  }
  return row[y.length]
}

/** The option a key most likely meant, if one is close enough to say so. */
const nearest = (key: string): string | undefined => {
  let best: string | undefined
  let bestDistance = Infinity
  for (const [name] of specs) {
    const d = distance(key, name)
    if (d < bestDistance) {
      best = name
      bestDistance = d
    }
  }
  return bestDistance <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined
}

/**
 * `options` under the pool's own names: `PgClient`'s names mapped onto them
 * (`multiplex: false` is `pipelineDepth: 1`). Each key that is no option,
 * and each name that says something else than the pool's own name beside
 * it, is reported (and left out).
 *
 * @internal
 */
export const canonical = (options: Options, problems: Problems): Options => {
  const renamed: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(options)) {
    if (Object.hasOwn(table, key)) renamed[key] = value
    else {
      const guess = nearest(key)
      problems.report(key, value, `not an option of the pool${guess === undefined ? "" : `; did you mean ${guess}?`}`)
    }
  }
  for (const [alias, spec] of specs) {
    if (spec.aliasOf === undefined) continue
    const given = renamed[alias]
    delete renamed[alias]
    const value = given === undefined || spec.means === undefined ? given : spec.means(given)
    if (value === undefined) continue
    const own = renamed[spec.aliasOf]
    if (own !== undefined && own !== value) {
      problems.report(alias, given, `says otherwise than ${spec.aliasOf} (${String(own)}), which it is another name for`)
    } else renamed[spec.aliasOf] = value
  }
  return renamed as Options
}
