/**
 * The `pgbouncer` test project: a server of its own with PgBouncer in
 * transaction mode in front, handed to the test files as their server, and
 * `behindPooler: "transaction"` for their pools. The files of that project
 * (vitest.config.ts) run unchanged through it.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import type { TestProject } from "vitest/node"
import * as PgBouncer from "../../src/testing/PgBouncer.ts"
import * as PgServer from "../../src/testing/PgServer.ts"

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const scope = Effect.runSync(Scope.make())
  const started = Effect.gen(function*() {
    const server = yield* PgServer.make()
    const bouncer = yield* PgBouncer.make({
      upstream: { host: server.host, port: server.port, user: server.user, password: server.password },
      // Fewer server connections than the tests' pools have: transactions share them.
      defaultPoolSize: 4,
      maxClientConn: 500
    })
    return { bouncerUrl: bouncer.url({ user: server.user, password: Redacted.value(server.password) }), server }
  })
  const { bouncerUrl, server } = await Effect.runPromise(Scope.provide(started, scope))
  project.provide("databaseUrl", Redacted.value(bouncerUrl))
  project.provide("serverUrl", Redacted.value(server.url()))
  project.provide("behindPooler", "transaction")
  return () => Effect.runPromise(Scope.close(scope, Exit.void))
}
