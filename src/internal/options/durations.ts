/**
 * The one set of forms a duration option takes, in code and in the
 * environment alike, as `PoolConfig.DurationInput` spells it: a number of
 * milliseconds; any `Duration.Input` (an Effect `Duration`, `"10 seconds"`,
 * `"Infinity"`); or a number and a short unit, `ms`, `s`, `m` or `h`, with or
 * without a space (`"500ms"`, `"1.5 s"`). A number in a string is what
 * TypeScript's `${number}` takes. The environment writes the same strings,
 * and a number there (`250`) is milliseconds.
 *
 * Strings are read here rather than by `Duration.fromInput`, whose reading
 * of numbers is narrower than the type it accepts (`"1e3 seconds"` types but
 * does not parse): this way what compiles is what is read.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"
import type { DurationInput } from "../../PoolConfig.ts"

/** Milliseconds per unit; the short units also go without the space. */
const millisPer: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  nano: 1e-6,
  nanos: 1e-6,
  micro: 1e-3,
  micros: 1e-3,
  milli: 1,
  millis: 1,
  second: 1_000,
  seconds: 1_000,
  minute: 60_000,
  minutes: 60_000,
  hour: 3_600_000,
  hours: 3_600_000,
  day: 86_400_000,
  days: 86_400_000,
  week: 604_800_000,
  weeks: 604_800_000
}
const shortUnits: ReadonlySet<string> = new Set(["ms", "s", "m", "h"])

/** A number as TypeScript's `${number}` takes it: any text `Number` reads as finite, but the empty one. */
const numeric = (text: string): boolean => text !== "" && Number.isFinite(Number(text))

/** The forms, for error messages. */
export const forms = "use milliseconds, a Duration, \"10 seconds\" or \"10s\""

const fromString = (text: string): number | undefined => {
  if (text === "Infinity") return Infinity
  if (text === "-Infinity") return -Infinity
  const unit = /[a-z]+$/.exec(text)?.[0]
  if (unit === undefined || !Object.hasOwn(millisPer, unit)) return undefined
  const rest = text.slice(0, -unit.length)
  const number = rest.endsWith(" ") ? rest.slice(0, -1) : shortUnits.has(unit) ? rest : undefined
  return number !== undefined && numeric(number) ? Number(number) * millisPer[unit] : undefined
}

/**
 * A duration in one of the forms, in milliseconds (±`Infinity` included:
 * the option's limits say whether it may be); `undefined` for anything else.
 *
 * @internal
 */
export const toMillis = (input: unknown): number | undefined =>
  typeof input === "number"
    ? input
    : typeof input === "string"
    ? fromString(input)
    : Option.getOrUndefined(Option.map(Duration.fromInput(input as Duration.Input), Duration.toMillis))

/**
 * An environment variable's text as a duration option's value: a number is
 * milliseconds, any other text must be one of the forms.
 *
 * @internal
 */
export const fromVariable = (text: string): DurationInput | undefined =>
  numeric(text) ? Number(text) : fromString(text) === undefined ? undefined : text as DurationInput

/**
 * Milliseconds in the shortest of the forms (`"1500ms"`, `"10s"`, `"30m"`), as
 * the reference shows a default.
 *
 * @internal
 */
export const show = (millis: number): string => {
  if (!Number.isFinite(millis)) return String(millis)
  const unit = (["h", "m", "s"] as const).find((unit) => millis % millisPer[unit] === 0 && millis !== 0)
  return unit === undefined ? `${millis}ms` : `${millis / millisPer[unit]}${unit}`
}
