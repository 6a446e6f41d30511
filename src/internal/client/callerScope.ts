/**
 * The caller's tenant scope, read from its fiber and checked before any
 * connection is taken: a tenant id the options refuse, or that is not
 * well-formed text, fails with `InvalidTenantError`; no tenant where one is
 * required with `TenantRequiredError`; a `CurrentTenant` that is not a
 * scope at all (set by hand) is refused too. `Tenant.unscoped` work is
 * marked on its span with its reason.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type { SqlError } from "effect/sql/SqlError"
import type * as PoolConfig from "../../PoolConfig.ts"
import * as PoolError from "../../PoolError.ts"
import * as Tenant from "../../Tenant.ts"
import { fail } from "./serving.ts"
import type { Recorder } from "../telemetry.ts"

/** Lone surrogates: a string that is not well-formed UTF-16 cannot be one tenant's id. */
const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

const invalid = (preview: string, reason: string) => fail(new PoolError.InvalidTenantError({ preview, reason }))

/**
 * The current fiber's tenant scope, once checked; ids in errors as
 * `tenantTelemetry` allows them.
 *
 * @internal
 */
export const make = (options: PoolConfig.Resolved, recorder: Recorder): Effect.Effect<Tenant.Scope, SqlError> =>
  Effect.withFiber((fiber): Effect.Effect<Tenant.Scope, SqlError> => {
    const scope = fiber.getRef(Tenant.CurrentTenant) as Tenant.Scope | null | undefined
    switch (typeof scope === "object" && scope !== null ? scope._tag : undefined) {
      case "Tenant": {
        const id: unknown = (scope as { readonly id: unknown }).id
        if (typeof id !== "string") return invalid(`(${id === null ? "null" : typeof id})`, "must be a string")
        const problem = loneSurrogate.test(id) ? "is not well-formed Unicode (a lone surrogate)" : options.checkTenant(id)
        if (problem === undefined) return Effect.succeed(scope!)
        return invalid(recorder.tenantName(id), problem)
      }
      case "None":
        return options.requireTenant ? fail(new PoolError.TenantRequiredError()) : Effect.succeed(scope!)
      case "Unscoped": {
        const reason: unknown = (scope as { readonly reason: unknown }).reason
        if (typeof reason !== "string") return invalid("(unscoped)", "Tenant.unscoped needs a reason")
        return Effect.as(Effect.annotateCurrentSpan("meshhook.tenant.unscoped", reason), scope!)
      }
      default:
        return invalid("(malformed)", "the fiber's CurrentTenant is not a tenant scope")
    }
  })
