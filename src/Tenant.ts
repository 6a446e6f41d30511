/**
 * The tenant a fiber works for.
 *
 * The tenant travels with the fiber in a `Context.Reference`, so forked
 * fibers inherit it and no argument has to carry it. The pool reads it when
 * SQL runs and sets it inside that SQL's transaction with
 * `set_config(<tenantSetting>, $1, true)`, where row-level security policies
 * read it. See docs/security.md.
 *
 * ```ts
 * const events = sql`SELECT * FROM workflow_events WHERE run_id = ${runId}`
 * yield* Tenant.with(projectId)(events)                           // only this project's rows
 * yield* Tenant.unscoped("claim jobs across projects")(claimJob)  // explicitly no tenant
 * ```
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import { dual } from "effect/Function"
import * as Option from "effect/Option"

/**
 * What a fiber has said about its tenant: nothing (`None`), a tenant, or that
 * it deliberately works across tenants (`Unscoped`, with the reason why).
 *
 * @since 0.1.0
 * @category models
 */
export type Scope =
  | { readonly _tag: "None" }
  | { readonly _tag: "Tenant"; readonly id: string }
  | { readonly _tag: "Unscoped"; readonly reason: string }

/**
 * The scope of a fiber that has said nothing about its tenant.
 *
 * @since 0.1.0
 * @category constructors
 */
export const none: Scope = { _tag: "None" }

/**
 * The fiber-local tenant scope. Prefer {@link with} and {@link unscoped} to
 * providing it directly.
 *
 * @since 0.1.0
 * @category references
 */
export const CurrentTenant = Context.Reference<Scope>("@meshhook/pool/Tenant/CurrentTenant", {
  defaultValue: () => none
})

const withTenant: {
  (id: string): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, id: string): Effect.Effect<A, E, R>
} = dual(
  2,
  <A, E, R>(self: Effect.Effect<A, E, R>, id: string): Effect.Effect<A, E, R> =>
    Effect.provideService(self, CurrentTenant, { _tag: "Tenant", id })
)

export {
  /**
   * Runs `self` for the tenant `id`: its SQL sees only that tenant's rows.
   * The pool validates the id before any SQL runs (`InvalidTenantError`).
   *
   * @since 0.1.0
   * @category combinators
   */
  withTenant as with
}

/**
 * Runs `self` explicitly without a tenant, for work that spans tenants (a
 * job claim across projects). It passes `requireTenant`, and its statements
 * carry `meshhook.tenant.unscoped` = `reason` in their spans. Row-level
 * security still applies: tables that demand a tenant show no rows.
 *
 * @since 0.1.0
 * @category combinators
 */
export const unscoped: {
  (reason: string): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, reason: string): Effect.Effect<A, E, R>
} = dual(
  2,
  <A, E, R>(self: Effect.Effect<A, E, R>, reason: string): Effect.Effect<A, E, R> =>
    Effect.provideService(self, CurrentTenant, { _tag: "Unscoped", reason })
)

/**
 * The current tenant's id, if the fiber works for one.
 *
 * @since 0.1.0
 * @category accessors
 */
export const current: Effect.Effect<Option.Option<string>> = Effect.map(
  Effect.service(CurrentTenant),
  (scope) => scope._tag === "Tenant" ? Option.some(scope.id) : Option.none()
)

/**
 * A scope in words, for errors and logs.
 *
 * @since 0.1.0
 * @category formatting
 */
export const describe = (scope: Scope): string => {
  switch (scope._tag) {
    case "None":
      return "no tenant"
    case "Tenant":
      return `tenant ${JSON.stringify(scope.id)}`
    case "Unscoped":
      return `unscoped (${scope.reason})`
  }
}

/**
 * Whether two scopes are the same.
 *
 * @since 0.1.0
 * @category predicates
 */
export const sameScope = (a: Scope, b: Scope): boolean =>
  a._tag === b._tag && (a._tag !== "Tenant" || a.id === (b as typeof a).id)
