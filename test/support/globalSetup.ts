/**
 * Starts one throwaway PostgreSQL server for the whole run (or uses
 * `DATABASE_URL` when set) and hands its address to the test files, and to
 * `PgTest.layer` as `PGPOOL_TEST_ADMIN_URL` (test workers inherit it).
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import type { TestProject } from "vitest/node"
import * as PgServer from "../../src/testing/PgServer.ts"
import * as PgTest from "../../src/testing/PgTest.ts"

declare module "vitest" {
  export interface ProvidedContext {
    /** A superuser URL of the test server (through PgBouncer in the `pgbouncer` project). */
    readonly databaseUrl: string
    /** A superuser URL of the test server itself, never through PgBouncer. */
    readonly serverUrl: string
    /** What the pools of the test files sit behind: `transaction` in the `pgbouncer` project. */
    readonly behindPooler: "none" | "transaction"
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const external = process.env.DATABASE_URL
  if (external !== undefined && external !== "") {
    project.provide("databaseUrl", external)
    project.provide("serverUrl", external)
    project.provide("behindPooler", "none")
    process.env[PgTest.environment.adminUrl] = external
    return async () => {}
  }
  const scope = Effect.runSync(Scope.make())
  const server = await Effect.runPromise(Scope.provide(PgServer.make(), scope))
  project.provide("databaseUrl", Redacted.value(server.url()))
  project.provide("serverUrl", Redacted.value(server.url()))
  project.provide("behindPooler", "none")
  process.env[PgTest.environment.adminUrl] = Redacted.value(server.url())
  return () => Effect.runPromise(Scope.close(scope, Exit.void))
}
