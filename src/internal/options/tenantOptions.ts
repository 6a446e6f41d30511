/**
 * The tenancy options' own kinds: the setting policies read the tenant from,
 * the tenant ids allowed, the pinned `search_path`; and the tenant id check
 * they make together.
 *
 * @internal
 */
import * as Config from "effect/Config"
import * as Result from "effect/Result"
import * as Kinds from "./optionKinds.ts"
import { searchPathOf } from "../postgres/prologue.ts"

/** A custom setting name: two or more dot-separated identifiers, as PostgreSQL requires. */
const settingName = /^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)+$/

/**
 * `tenantSetting`: a custom setting name.
 *
 * @internal
 */
export const setting = Kinds.text(
  (name) =>
    settingName.test(name) && name.length <= 63
      ? undefined
      : "must be a custom setting name like app.tenant_id (at most 63 characters)",
  "`prefix.name`, ≤ 63 characters"
)

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

const compiled = (source: string, flags?: string): RegExp | undefined => {
  try {
    return new RegExp(source, flags)
  } catch {
    return undefined
  }
}

/** What the environment's `PGPOOL_TENANT_FORMAT` says: a regular expression unless it is a word. */
const formatOf = (text: string): "any" | "uuid" | RegExp | undefined =>
  text === "any" || text === "uuid" ? text : compiled(text)

/**
 * `tenantFormat`: `any`, `uuid` or a regular expression, as the expression
 * ids must match whole (`undefined` for any).
 *
 * @internal
 */
export const format: Kinds.Kind<"any" | "uuid" | RegExp, RegExp | undefined> = {
  check: (input) => {
    if (input === "any") return Result.succeed(undefined)
    if (input === "uuid") return Result.succeed(uuid)
    const expression = input instanceof RegExp ? input : typeof input === "string" ? compiled(input) : undefined
    // Compiled alone first: a source is only wrapped once it is known to be one expression. Without `g`
    // and `y`, which would make `test` start where the last match ended, and so answer differently for the same id.
    return expression === undefined
      ? Result.fail("use any, uuid, or a valid regular expression")
      : Result.succeed(new RegExp(`^(?:${expression.source})$`, expression.flags.replace(/[gy]/g, "")))
  },
  variable: Kinds.parsed(formatOf, "use any, uuid, or a valid regular expression"),
  values: "`any`, `uuid` or a regular expression",
  show: String
}

/** A schema name as PostgreSQL allows it (`$user` for the role's own). */
const schemaName = /^(?:\$user|[^\u0000]{1,63})$/

/**
 * `searchPath`: schema names, listed or comma-separated, as the pinned
 * `search_path` (`pg_temp` last).
 *
 * @internal
 */
export const searchPath: Kinds.Kind<ReadonlyArray<string> | string, string> = {
  check: (input) => {
    const names = typeof input === "string" ? input.split(",").map((name) => name.trim()) : input
    if (!Array.isArray(names) || names.length === 0) return Result.fail("list at least one schema")
    return names.every((name) => typeof name === "string" && schemaName.test(name))
      ? Result.succeed(searchPathOf(names))
      : Result.fail("schema names are 1 to 63 characters, without NUL")
  },
  variable: (name) => Config.String(name),
  values: "schema names, listed or comma-separated",
  show: String
}

// Control characters (C0, DEL, C1) and the Unicode line and paragraph separators.
const controlCharacters = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/

/**
 * The tenant id check for a format and a longest length: why `id` is not a
 * valid tenant id, or `undefined` if it is.
 *
 * @internal
 */
export const checker = (format: RegExp | undefined, maxLength: number) => (id: string): string | undefined => {
  if (typeof id !== "string") return "must be a string"
  if (id.length === 0) return "must not be empty"
  if (id.length > maxLength) return `longer than tenantMaxLength (${maxLength})`
  if (controlCharacters.test(id)) return "contains control characters"
  if (format !== undefined && !format.test(id)) return `does not match tenantFormat ${format}`
  return undefined
}
