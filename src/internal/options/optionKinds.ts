/**
 * The kinds of option values. A kind says how a given value is checked (any
 * value: JavaScript callers and casts reach the check too), how the option's
 * environment variable is read, and how a value is written in the reference.
 *
 * A variable is read for its form only, typed with Effect `Config` (a
 * number, a duration, one of a few words), so that a malformed one is
 * reported by its name; the limits are the check's, so a value out of range
 * is reported with every other problem, however it was given.
 *
 * @internal
 */
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import type * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as SchemaIssue from "effect/SchemaIssue"
import type { DurationInput } from "../../PoolConfig.ts"
import * as Durations from "./durations.ts"

/**
 * A kind of option value: `In` as the option takes it, `Out` as the pool
 * uses it.
 *
 * @internal
 */
export interface Kind<In, Out> {
  /** The value the pool uses, from a given one, or why it is wrong. */
  readonly check: (input: unknown) => Result.Result<Out, string>
  /** Reads the option's environment variable (its form; `check` judges it after). */
  readonly variable?: ((name: string) => Config.Config<In>) | undefined
  /** What it takes, as the reference says it. */
  readonly values: string
  /**
   * A value as the reference writes it, which is also how its variable is
   * written. A method, so that the table can list kinds of every option's
   * type as one (./options.ts `specs`).
   */
  show(value: In): string
  /** Never shown, not even in an error. */
  readonly secret?: boolean | undefined
}

/**
 * A variable read by `parse`, which gives `undefined` for text that is not
 * of the form; `expected` says what the form is, and the `ConfigError`
 * names the variable (not its value).
 *
 * @internal
 */
export const parsed = <A>(parse: (text: string) => A | undefined, expected: string) => (name: string): Config.Config<A> =>
  Config.String(name).pipe(Config.mapEffect((text) => {
    const value = parse(variableText(text))
    return value === undefined
      ? Effect.fail(
        new Config.ConfigError(
          new Schema.SchemaError(new SchemaIssue.Pointer([name], new SchemaIssue.InvalidValue({ message: expected })))
        )
      )
      : Effect.succeed(value)
  }))

/**
 * A variable's text as the kinds read it: env files and templating often
 * leave spaces around a value, and `infinity` is as good as `Infinity`.
 */
const variableText = (text: string): string => {
  const trimmed = text.trim()
  return /^[+-]?infinity$/i.test(trimmed) ? trimmed.replace(/infinity/i, "Infinity") : trimmed
}

/** A number as a variable gives it, or `undefined` when it is none. */
const numberOf = (text: string): number | undefined => {
  const value = text === "" ? NaN : Number(text)
  return Number.isNaN(value) ? undefined : value
}

/**
 * A whole number from `min` (and up to `max`); `Infinity` if `infinite`.
 *
 * @internal
 */
export const count = (
  limits: { readonly min: number; readonly max?: number; readonly infinite?: boolean }
): Kind<number, number> => ({
  check: (input) => {
    if (input === Infinity && limits.infinite) return Result.succeed(Infinity)
    if (typeof input !== "number" || !Number.isInteger(input)) return Result.fail("must be a whole number")
    if (input < limits.min) return Result.fail(`must be at least ${limits.min}`)
    if (limits.max !== undefined && input > limits.max) return Result.fail(`must be at most ${limits.max}`)
    return Result.succeed(input)
  },
  variable: parsed(numberOf, "a number"),
  values: `whole number${limits.max === undefined ? ` ≥ ${limits.min}` : `, ${limits.min} to ${limits.max}`}${
    limits.infinite ? " or `Infinity`" : ""
  }`,
  show: String
})

/**
 * A number from `min` to `max`.
 *
 * @internal
 */
export const between = (min: number, max: number): Kind<number, number> => ({
  check: (input) =>
    typeof input === "number" && input >= min && input <= max
      ? Result.succeed(input)
      : Result.fail(`must be between ${min} and ${max}`),
  variable: parsed(numberOf, "a number"),
  values: `${min} to ${max}`,
  show: String
})

/**
 * A duration (see ./durations.ts), as milliseconds above zero and at least
 * `min`; `Infinity` if `infinite`.
 *
 * @internal
 */
export const duration = (
  limits: { readonly min?: number; readonly infinite?: boolean } = {}
): Kind<DurationInput, number> => ({
  check: (input) => {
    const millis = Durations.toMillis(input)
    if (millis === undefined) return Result.fail(`not a duration (${Durations.forms})`)
    if (millis === Infinity && limits.infinite) return Result.succeed(Infinity)
    if (!Number.isFinite(millis)) return Result.fail("must be finite")
    if (millis <= 0) return Result.fail("must be greater than zero")
    if (limits.min !== undefined && millis < limits.min) return Result.fail(`must be at least ${limits.min} ms`)
    return Result.succeed(millis)
  },
  variable: parsed(Durations.fromVariable, `not a duration (${Durations.forms})`),
  values: `duration${limits.min === undefined ? "" : ` ≥ ${Durations.show(limits.min)}`}${
    limits.infinite ? " or `Infinity`" : ""
  }`,
  show: (value) => typeof value === "number" ? Durations.show(value) : String(value)
})

/**
 * `true` or `false`; the environment also takes Effect's other words for
 * them (`yes`, `on`, `1`, ...).
 *
 * @internal
 */
export const flag: Kind<boolean, boolean> = {
  check: (input) => typeof input === "boolean" ? Result.succeed(input) : Result.fail("must be true or false"),
  variable: (name) => Config.Boolean(name),
  values: "`true`, `false`",
  show: String
}

/**
 * One of a few words.
 *
 * @internal
 */
export const choice = <const A extends string>(values: ReadonlyArray<A>): Kind<A, A> => ({
  check: (input) =>
    values.includes(input as A)
      ? Result.succeed(input as A)
      : Result.fail(`use ${values.slice(0, -1).join(", ")} or ${values[values.length - 1]}`),
  variable: (name) => Config.Literals(values, name),
  values: values.map((value) => `\`${value}\``).join(", "),
  show: String
})

/**
 * A string, and what `rule` says is wrong with it, if anything; `values`
 * says what the rule allows.
 *
 * @internal
 */
export const text = (
  rule: (text: string) => string | undefined = () => undefined,
  values = "string"
): Kind<string, string> => ({
  check: (input) => {
    if (typeof input !== "string") return Result.fail("must be a string")
    const wrong = rule(input)
    return wrong === undefined ? Result.succeed(input) : Result.fail(wrong)
  },
  variable: (name) => Config.String(name),
  values,
  show: String
})

/**
 * A value passed on as given: its type says all there is to check, or what
 * it means is decided with other options (a password, a transform, a TLS
 * setting the driver reads).
 *
 * @internal
 */
export const given = <In = never>(options: {
  readonly values: string
  readonly variable?: (name: string) => Config.Config<In>
}): Kind<In, unknown> => ({
  check: Result.succeed,
  variable: options.variable,
  values: options.values,
  show: (value) => JSON.stringify(value)
})

/**
 * A secret, read from its variable as `Redacted` and never shown.
 *
 * @internal
 */
export const secret = (values: string): Kind<Redacted.Redacted<string>, unknown> => ({
  ...given({ values, variable: (name) => Config.Redacted(name) }),
  secret: true
})
