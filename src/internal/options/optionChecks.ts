/**
 * The checks every option gets from its record in the table (its kind, its
 * default, the option it must not exceed), and the problems found, collected
 * so that one run reports every one: the first as the `PoolConfigError`, the
 * rest in its `others`.
 *
 * Values are rendered for errors here and nowhere else, so that one place
 * decides what is never shown: the value of an option whose kind is secret,
 * and that of a key that is no option (it may be a misspelt secret).
 *
 * @internal
 */
import * as Result from "effect/Result"
import type { Options } from "../../PoolConfig.ts"
import { PoolConfigError } from "../../PoolError.ts"
import { type Spec, specs, table, type Values } from "./options.ts"

/**
 * The problems found so far.
 *
 * @internal
 */
export interface Problems {
  /** Records what is wrong with `field`, given as `value`. */
  readonly report: (field: string, value: unknown, reason: string) => void
  /** Whether something is wrong with `field`. */
  readonly has: (field: string) => boolean
  /** Every problem as one error, or `undefined` if there is none. */
  readonly error: () => PoolConfigError | undefined
}

interface Problem {
  readonly field: string
  readonly value: string
  readonly reason: string
}

/**
 * An empty collection of problems.
 *
 * @internal
 */
export const problems = (): Problems => {
  const found: Array<Problem> = []
  return {
    report: (field, value, reason) => {
      found.push({ field, value: shown(field, value), reason })
    },
    has: (field) => found.some((problem) => problem.field === field),
    error: () => {
      const [first, ...others] = found
      if (first === undefined) return undefined
      return new PoolConfigError(others.length === 0 ? first : { ...first, others })
    }
  }
}

/** Long enough for any value worth reading, short enough that a 10,000-entry table does not flood the log. */
const longest = 200

const shown = (field: string, value: unknown): string => {
  if (!Object.hasOwn(table, field) || table[field as keyof Options].kind.secret) return "<redacted>"
  const text = render(value)
  return text.length > longest ? `${text.slice(0, longest)}…` : text
}

const render = (value: unknown): string => {
  if (typeof value === "string") return JSON.stringify(value)
  if (typeof value !== "object" || value === null) return String(value)
  try {
    return JSON.stringify(value) ?? String(value)
  } catch {
    return String(value)
  }
}

/**
 * Every option (under the pool's own names) checked by its kind, with its
 * default where none is given (its pooled default behind a
 * transaction-mode pooler), none above the option its record says it must
 * not exceed, and none above what is safe behind a pooler.
 *
 * @internal
 */
export const validate = (options: Options, problems: Problems): Values => {
  const pooled = options.behindPooler === "transaction"
  const values: Record<string, unknown> = {}
  for (const [field, spec] of specs) {
    if (spec.aliasOf !== undefined) continue
    const input = options[field] ?? (pooled && spec.pooled !== undefined ? spec.pooled : spec.default)
    if (input === undefined) continue
    const result = spec.kind.check(input)
    if (Result.isSuccess(result)) values[field] = result.success
    else problems.report(field, input, result.failure)
  }
  for (const [field, spec] of specs) limits(field, spec, values, pooled, problems)
  return values as Values
}

/** An option's value against the option it must not exceed, and against what is safe behind a pooler. */
const limits = (field: string, spec: Spec<unknown>, values: Record<string, unknown>, pooled: boolean, problems: Problems) => {
  const value = values[field]
  if (typeof value !== "number") return
  const limit = spec.notAbove === undefined ? undefined : values[spec.notAbove]
  if (typeof limit === "number" && value > limit) problems.report(field, value, `must not exceed ${spec.notAbove} (${limit})`)
  if (pooled && spec.pooledAtMost !== undefined && value > spec.pooledAtMost.value) {
    problems.report(field, value, `must be at most ${spec.pooledAtMost.value} behind a transaction-mode pooler: ${spec.pooledAtMost.why}`)
  }
}
