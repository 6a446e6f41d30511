/**
 * What `NOTIFY` costs the database: pgbench committing a job into
 * MeshHook's queue, as a producer does, with and without a `NOTIFY` in the
 * same transaction, while a listener is connected (docs/compatibility.md,
 * "LISTEN or polling"). PostgreSQL takes a global lock to queue a
 * transaction's notifications at commit, so notifying commits are
 * serialized; this measures what that does to a producer's throughput.
 *
 * `npx node bench/notify.ts [--rounds 3] [--seconds 5] [--connections 8]`
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import { parseArgs } from "node:util"
import { compare, type Contender, machine } from "./harness.ts"
import * as MeshHook from "./meshhook.ts"
import { pgbench } from "./pgbench.ts"
import { table } from "./report.ts"

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    seconds: { type: "string", default: "5" },
    connections: { type: "string", default: "8" }
  }
})
const connections = Number(values.connections)

const scope = Effect.runSync(Scope.make())
const setup = await Effect.runPromise(Scope.provide(MeshHook.setup(), scope))
// A listener on the channel for the whole run, as a worker would be.
await Effect.runPromise(Scope.provide(
  Effect.flatMap(
    PgConnection.make({ url: Redacted.make(Redacted.value(setup.db.adminUrl)), applicationName: "bench-listener" }),
    (connection) => connection.listen("job_queue")
  ),
  scope
))
const [project] = setup.runs

/** A producer's transaction: one job queued, and with `notify` the hint to the workers. */
const producer = (notify: boolean) => `\\set n random(1, 1000000)
BEGIN;
INSERT INTO job_queue (project_id, message) VALUES ('${project.project}', jsonb_build_object('run_id', '${project.id}', 'step', :n::int));
${notify ? "NOTIFY job_queue;\n" : ""}COMMIT;
`

const contender = (name: string, notify: boolean): Contender =>
  pgbench(name, { url: Redacted.value(setup.db.adminUrl), connections, applicationName: `bench-${notify ? "" : "no"}notify` }, producer(notify))

console.log(`Machine: ${machine()}. pgbench, ${connections} connections, one listener; \`npx node bench/notify.ts ${process.argv.slice(2).join(" ")}\`\n`)
try {
  const summaries = await compare([contender("commit a job", false), contender("commit a job and NOTIFY", true)], {
    rounds: Number(values.rounds),
    roundMillis: Number(values.seconds) * 1_000,
    warmupMillis: 1_000,
    backendsOf: MeshHook.backendsOf(setup)
  })
  console.log(`### A producer's transaction, durable commits\n\n${table(summaries)}\n`)
} finally {
  await Effect.runPromise(Scope.close(scope, Exit.void))
}
