/**
 * Test support for code that uses `@meshhook/pool`.
 *
 * @since 0.1.0
 */

/** A throwaway PostgreSQL server. @since 0.1.0 */
export * as PgServer from "./PgServer.ts"

/** A throwaway PgBouncer in front of a PostgreSQL server. @since 0.1.0 */
export * as PgBouncer from "./PgBouncer.ts"

/** The pool on an in-memory, scripted database, for unit tests. @since 0.1.0 */
export * as PoolTest from "./PoolTest.ts"

/** The pool on a fresh real database with migrations, for tests of SQL. @since 0.1.0 */
export * as PgTest from "./PgTest.ts"

/** A loopback TCP proxy that injects latency, slow connects, blackholes and resets. @since 0.1.0 */
export * as FaultProxy from "./FaultProxy.ts"
