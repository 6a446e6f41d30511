/**
 * The options as Effect `Config` reads them (the environment by default):
 * each option's variable, as the table names it, read by its kind. Every
 * variable that is not of its option's form is reported at once, in one
 * `ConfigError` naming them all (not their values); what is of the right
 * form is checked with everything else by `PoolConfig.resolve`.
 *
 * @internal
 */
import * as Config from "effect/Config"
import * as Option from "effect/Option"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as SchemaIssue from "effect/SchemaIssue"
import type { Options } from "../../PoolConfig.ts"
import { specs } from "./options.ts"

type Attempt = Result.Result<Option.Option<unknown>, Config.ConfigError>

/** A variable read without stopping at the first one that is wrong. */
const attempt = (config: Config.Config<unknown>): Config.Config<Attempt> =>
  Config.option(config).pipe(
    Config.map((value): Attempt => Result.succeed(value)),
    Config.orElse((error) => Config.succeed<Attempt>(Result.fail(error)))
  )

/** The variables' failures as one, each issue beside the others; a source that failed (no variable's fault) alone. */
const together = (errors: ReadonlyArray<Config.ConfigError>): Config.ConfigError["cause"] => {
  const causes = errors.map((error) => error.cause)
  const source = causes.find((cause) => !Schema.isSchemaError(cause))
  if (source !== undefined || causes.length === 1) return source ?? causes[0]
  const [first, ...rest] = (causes as ReadonlyArray<Schema.SchemaError>).map((cause) => cause.issue)
  return new Schema.SchemaError(new SchemaIssue.Composite(Schema.Unknown.ast, [first, ...rest]))
}

const variables = Object.fromEntries(
  specs.flatMap(([field, spec]) =>
    spec.env === undefined || spec.kind.variable === undefined ? [] : [[field, attempt(spec.kind.variable(spec.env))]]
  )
)

/**
 * The options the variables set.
 *
 * @internal
 */
export const read: Config.Config<Options> = Config.all(variables).pipe(
  Config.flatMap((attempts) => {
    const entries = Object.entries(attempts)
    const failures = entries.flatMap(([, tried]) => Result.isFailure(tried) ? [tried.failure] : [])
    if (failures.length > 0) return Config.fail(together(failures))
    return Config.succeed(Object.fromEntries(
      entries.flatMap(([field, tried]) =>
        Result.isSuccess(tried) && Option.isSome(tried.success) ? [[field, tried.success.value]] : []
      )
    ) as Options)
  })
)
