/**
 * The fair scheduling options: weight tables, given as records or as the
 * environment writes them (`name=weight,name=weight`), and the scheduler's
 * options made of them.
 *
 * @internal
 */
import * as Config from "effect/Config"
import * as Result from "effect/Result"
import type { Level } from "../../Priority.ts"
import type { Kind } from "./optionKinds.ts"
import type { Problems } from "./optionChecks.ts"
import type { Values } from "./options.ts"
import type { FairnessOptions } from "../engine/scheduler.ts"

const maxWeight = 1000
const maxEntries = 10_000

/**
 * The priority classes' weights when none are given.
 *
 * @internal
 */
export const defaultPriorityWeights: Readonly<Record<Level, number>> = { high: 4, normal: 2, low: 1 }

type Weights = Readonly<Record<string, number>>

/** `name=weight` pairs separated by commas; `undefined` if a pair is not one. */
const pairs = (text: string): Weights | undefined => {
  const entries: Array<[string, number]> = []
  for (const pair of text.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    const at = pair.lastIndexOf("=")
    if (at <= 0) return undefined
    entries.push([pair.slice(0, at).trim(), Number(pair.slice(at + 1))])
  }
  return Object.fromEntries(entries)
}

/** Why a weight table is wrong, if it is; `names`, if given, are the only ones allowed. */
const wrongIn = (table: Weights, names: ReadonlyArray<string> | undefined): string | undefined => {
  const entries = Object.entries(table)
  if (entries.length > maxEntries) return `at most ${maxEntries} entries`
  if (names !== undefined) {
    const stranger = entries.find(([name]) => !names.includes(name))
    if (stranger !== undefined) return `${JSON.stringify(stranger[0])} is no class; the classes are ${names.join(", ")}`
  }
  const wrong = entries.find(([, weight]) => !(Number.isInteger(weight) && weight >= 1 && weight <= maxWeight))
  return wrong === undefined
    ? undefined
    : `the weight of ${JSON.stringify(wrong[0])} must be a whole number from 1 to ${maxWeight}`
}

/** A weight table, of any names or of `names` only. */
const weights = (names?: ReadonlyArray<string>): Kind<Weights | string, Weights> => ({
  check: (input) => {
    const table = typeof input === "string"
      ? pairs(input)
      : typeof input === "object" && input !== null
      ? input as Weights
      : undefined
    if (table === undefined) return Result.fail("use name=weight pairs separated by commas")
    const wrong = wrongIn(table, names)
    return wrong === undefined ? Result.succeed(table) : Result.fail(wrong)
  },
  variable: (name) => Config.String(name),
  values: names === undefined
    ? `\`name=weight,...\` or a record; weights 1 to ${maxWeight}`
    : `weights 1 to ${maxWeight} of ${names.map((name) => `\`${name}\``).join(", ")}`,
  show: (value) =>
    typeof value === "string" ? value : Object.entries(value).map(([name, weight]) => `${name}=${weight}`).join(",")
})

/**
 * `tenantWeights`: weights of particular tenants.
 *
 * @internal
 */
export const tenantWeights = weights()

const classWeights = weights(Object.keys(defaultPriorityWeights))

/**
 * `priorityWeights`: the classes given, the others at their default.
 *
 * @internal
 */
export const priorityWeights: Kind<Weights | string, Readonly<Record<Level, number>>> = {
  ...classWeights,
  check: (input) => Result.map(classWeights.check(input), (given) => ({ ...defaultPriorityWeights, ...given }))
}

/**
 * The scheduler's options; limits per tenant are refused without tenant
 * fairness, where nothing would keep them.
 *
 * @internal
 */
export const scheduling = (
  values: Pick<
    Values,
    "fairness" | "tenantWeights" | "defaultTenantWeight" | "priorityWeights" | "tenantMaxInUse" | "tenantMaxQueued"
  >,
  problems: Problems
): FairnessOptions => {
  if (values.fairness === "fifo" && (values.tenantMaxInUse !== Infinity || values.tenantMaxQueued !== Infinity)) {
    problems.report("fairness", values.fairness, "tenantMaxInUse and tenantMaxQueued need fairness: tenant")
  }
  // A Map, not the record: a tenant named like an Object.prototype member must weigh as any other.
  const tenantWeights = new Map(Object.entries(values.tenantWeights ?? {}))
  return {
    mode: values.fairness,
    priorityWeights: values.priorityWeights,
    tenantWeight: (tenant) => tenantWeights.get(tenant) ?? values.defaultTenantWeight,
    tenantMaxInUse: values.tenantMaxInUse
  }
}
