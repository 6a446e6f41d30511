/**
 * `@meshhook/pool`: a fair, tenant-safe, observable PostgreSQL connection
 * pool for Effect, served as `effect/sql`'s `SqlClient`.
 *
 * @since 0.1.0
 */

/** The pool service and its layers. @since 0.1.0 */
export * as Pool from "./Pool.ts"

/** Options, defaults, validation and environment variables. @since 0.1.0 */
export * as PoolConfig from "./PoolConfig.ts"

/** The pool's typed errors. @since 0.1.0 */
export * as PoolError from "./PoolError.ts"

/** The tenant a fiber works for: Tenant.with, Tenant.unscoped, Tenant.current. @since 0.1.0 */
export * as Tenant from "./Tenant.ts"

/** How urgent a fiber's database work is: Priority.with("high"). @since 0.1.0 */
export * as Priority from "./Priority.ts"

/** Retrying what may pass: Retry.idempotent, Retry.transaction. @since 0.1.0 */
export * as Retry from "./Retry.ts"

/** The pool's metrics, named as the OpenTelemetry database conventions say. @since 0.1.0 */
export * as Metrics from "./Metrics.ts"

/** PostgreSQL notifications as a stream that listens again after a lost connection. @since 0.1.0 */
export * as Notifications from "./Notifications.ts"

/** The pool from Promise-based code (SvelteKit, plain Node): one runtime per process, typed rejections, a clean close. @since 0.2.0 */
export * as PoolRuntime from "./PoolRuntime.ts"

/** The live view of the pool: a page on 127.0.0.1 that follows its counts and metrics. @since 0.2.0 */
export * as Dashboard from "./Dashboard.ts"
