/**
 * The pool behind PgBouncer 1.18 in transaction mode, on the test server,
 * with a PgBouncer of this file's own: statements and transactions with
 * `prepare: false`; what `prepare: true` breaks; tenant isolation with many
 * tenants on two server connections; PgBouncer restarted and killed under
 * load; session state left on a server connection for the next client; and
 * the exact errors of PgBouncer's refusals (query_wait_timeout,
 * max_client_conn, the server down), on the wire and as the driver reports
 * them.
 *
 * Skipped when pgbouncer is not installed (Debian's `pgbouncer` package, or
 * `MESHHOOK_PGBOUNCER_BIN`), unless `MESHHOOK_REQUIRE_PGBOUNCER` is set, as
 * in CI: then a missing pgbouncer fails.
 */
import { assert, describe, it, layer } from "@effect/vitest"
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import { SqlError } from "effect/sql/SqlError"
import * as Stream from "effect/Stream"
import { sqlStateOf } from "../src/internal/postgres/sqlState.ts"
import * as PoolError from "../src/PoolError.ts"
import * as Tenant from "../src/Tenant.ts"
import * as PgBouncer from "../src/testing/PgBouncer.ts"
import * as PgServer from "../src/testing/PgServer.ts"
import * as SimpleQuery from "../src/testing/internal/simpleQuery.ts"
import { MeshHookDb } from "./support/meshhook.ts"
import { databaseUrl, eventually, type Login, loginOf, upstreamOf, withPool } from "./support/pg.ts"

const binary = PgBouncer.findBinary()
const required = !["", "0", "false"].includes(process.env.MESHHOOK_REQUIRE_PGBOUNCER ?? "")
const skipReason = binary === undefined && !required
  ? "skipped: pgbouncer is not installed (apt-get install pgbouncer, or set MESHHOOK_PGBOUNCER_BIN; " +
    "MESHHOOK_REQUIRE_PGBOUNCER=1 turns this into a failure)"
  : undefined
if (skipReason !== undefined) console.warn(`test/pgbouncer.pg.test.ts ${skipReason}`)

// ---------------------------------------------------------------------------
// helpers

/** What a client was told: the driver's reason, SQLSTATE and message, or the pool's error. */
interface Told {
  readonly kind: string
  readonly state: string | undefined
  readonly message: string
}

const told = (error: unknown): Told => {
  if (error instanceof SqlError) {
    const poolError = PoolError.fromSqlError(error)
    if (poolError !== undefined) return { kind: poolError._tag, state: undefined, message: poolError.message }
    const cause = error.reason.cause
    return {
      kind: error.reason._tag,
      state: sqlStateOf(error),
      message: cause instanceof Error ? cause.message : error.message
    }
  }
  if (error instanceof SimpleQuery.ServerError) {
    return { kind: `ServerError(${error.severity})`, state: error.code, message: error.message }
  }
  if (error instanceof Error) return { kind: error.constructor.name, state: undefined, message: error.message }
  return { kind: typeof error, state: undefined, message: String(error) }
}

/** The name of an outcome, for tallies: ok, the pool's error, the driver's reason, or what went wrong otherwise. */
const outcomeName = (exit: Exit.Exit<unknown, unknown>): string => {
  if (Exit.isSuccess(exit)) return "ok"
  const error = Exit.findErrorOption(exit)
  if (error._tag === "None") return Exit.hasInterrupts(exit) ? "interrupted" : "defect"
  if (error.value instanceof SqlError) {
    if (PoolError.fromSqlError(error.value) !== undefined) return told(error.value).kind
    const { kind, state, message } = told(error.value)
    return `${kind}(${state ?? "-"}): ${message}`
  }
  return "untyped"
}

/** The failure of an exit that failed. */
const errorOf = (exit: Exit.Exit<unknown, unknown>): unknown => {
  const error = Exit.findErrorOption(exit)
  return error._tag === "Some" ? error.value : assert.fail("expected a failure")
}

const tally = (names: ReadonlyArray<string>) =>
  names.reduce((counts, name) => ({ ...counts, [name]: (counts[name] ?? 0) + 1 }), {} as Record<string, number>)

/** A promise's rejection, or a failure if it resolved. */
const rejection = (promise: () => Promise<unknown>): Effect.Effect<unknown> =>
  Effect.promise(() => promise().then((value) => ({ resolved: value }), (error: unknown) => error)).pipe(
    Effect.tap((outcome) =>
      typeof outcome === "object" && outcome !== null && "resolved" in outcome
        ? Effect.sync(() => assert.fail(`expected a refusal, got ${JSON.stringify(outcome.resolved)}`))
        : Effect.void
    )
  )

/** Runs `use` with the pool's services on their own scope. */
/** The most server connections PgBouncer held for `database` and `user` while `during` ran, sampled every 20 ms. */
const peakServers = <A, E, R>(bouncer: PgBouncer.PgBouncer, database: string, user: string, during: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    let peak = 0
    let clients = 0
    const sampler = yield* Effect.forkChild(Effect.forever(Effect.gen(function*() {
      const rows = yield* bouncer.admin("SHOW POOLS")
      for (const row of rows) {
        if (row.database !== database || row.user !== user) continue
        peak = Math.max(peak, PgBouncer.serverCount(row))
        clients = Math.max(clients, Number(row.cl_active) + Number(row.cl_waiting))
      }
      yield* Effect.sleep(20)
    })))
    const result = yield* during
    yield* Fiber.interrupt(sampler)
    return { result, peakServers: peak, peakClients: clients }
  })

// ---------------------------------------------------------------------------
// the file's PgBouncer and MeshHook database

interface Setup {
  readonly upstream: PgBouncer.Upstream
  /** Transaction mode, two server connections per database and user. */
  readonly bouncer: PgBouncer.PgBouncer
  /** The MeshHook database's name, and its worker role's login. */
  readonly database: string
  readonly worker: Login
  readonly adminUrl: Redacted.Redacted<string>
  readonly projects: ReadonlyArray<string>
}

class BouncerSetup extends Context.Service<BouncerSetup, Setup>()("test/BouncerSetup") {
  static readonly layer = Layer.effect(
    BouncerSetup,
    Effect.gen(function*() {
      const db = yield* MeshHookDb
      const upstream = upstreamOf(databaseUrl())
      const bouncer = yield* PgBouncer.make({ upstream, defaultPoolSize: 2 })
      return {
        upstream,
        bouncer,
        database: db.database,
        worker: loginOf(db.workerUrl),
        adminUrl: db.adminUrl,
        projects: db.projects
      }
    })
  ).pipe(Layer.provideMerge(MeshHookDb.layer({ tenants: 40, runsPerTenant: 2 })))
}

const tenants = 40

describe.skipIf(skipReason !== undefined)(`PgBouncer 1.18 in transaction mode${skipReason ? ` (${skipReason})` : ""}`, () => {
  it("pgbouncer is installed", () => {
    assert.isDefined(binary, "MESHHOOK_REQUIRE_PGBOUNCER is set, and no pgbouncer binary was found (apt-get install pgbouncer)")
  })

  // Named, so that the layer lives until the last test of the nested describe too.
  layer(BouncerSetup.layer, { excludeTestServices: true, timeout: 60_000 })("behind the file's PgBouncer", (it) => {
    it.effect("(a) the pool runs statements and transactions through PgBouncer with behindPooler: transaction (no named prepared statements)", () =>
      Effect.gen(function*() {
        const { bouncer, database, upstream, adminUrl } = yield* BouncerSetup
        const side = yield* PgConnection.make({ url: adminUrl })
        yield* side.query("CREATE TABLE bouncer_items (id int PRIMARY KEY, note text NOT NULL)")
        const url = bouncer.url({ database })
        const { result, peakServers: peak } = yield* peakServers(
          bouncer,
          database,
          upstream.user,
          withPool({ url, max: 8, behindPooler: "transaction" }, ({ sql }) =>
            Effect.gen(function*() {
              const rows = yield* Effect.forEach(
                Array.from({ length: 200 }, (_, i) => i),
                (i) => Effect.map(sql<{ i: number }>`SELECT ${i}::int AS i FROM pg_sleep(0.001)`, ([row]) => row.i),
                { concurrency: 16 }
              )
              assert.deepStrictEqual(rows, Array.from({ length: 200 }, (_, i) => i))

              yield* sql.withTransaction(Effect.gen(function*() {
                yield* sql`INSERT INTO bouncer_items VALUES (1, 'committed')`
                // A savepoint rolled back, inside the transaction.
                yield* Effect.exit(sql.withTransaction(
                  Effect.andThen(sql`INSERT INTO bouncer_items VALUES (2, 'inner')`, Effect.fail("inner"))
                ))
                yield* sql`INSERT INTO bouncer_items VALUES (3, 'committed')`
              }))
              const failed = yield* Effect.exit(sql.withTransaction(
                Effect.andThen(sql`INSERT INTO bouncer_items VALUES (4, 'rolled back')`, Effect.fail("outer"))
              ))
              assert.isTrue(Exit.isFailure(failed))
              // Concurrent transactions, each on one server connection from BEGIN to COMMIT.
              yield* Effect.forEach(Array.from({ length: 40 }, (_, i) => 10 + i), (id) =>
                sql.withTransaction(Effect.gen(function*() {
                  const [before] = yield* sql<{ txid: string }>`SELECT txid_current()::text AS txid`
                  yield* sql`INSERT INTO bouncer_items VALUES (${id}, 'concurrent')`
                  const [after] = yield* sql<{ txid: string }>`SELECT txid_current()::text AS txid`
                  assert.strictEqual(after.txid, before.txid, "a transaction stays on one server connection")
                })), { concurrency: 8, discard: true })
              return yield* sql<{ id: number }>`SELECT id FROM bouncer_items ORDER BY id`
            }))
        )
        assert.deepStrictEqual(result.map((row) => row.id), [1, 3, ...Array.from({ length: 40 }, (_, i) => 10 + i)])
        assert.isAtMost(peak, 2, "PgBouncer held at most default_pool_size server connections")
        assert.isAbove(peak, 0)
      }))

    it.effect("(b) prepare: true breaks inside transactions: the statement was prepared on another server connection (26000)", () =>
      Effect.gen(function*() {
        const { upstream, database } = yield* BouncerSetup
        // A PgBouncer of its own, so that the scenario starts with no server connection.
        const bouncer = yield* PgBouncer.make({ upstream, defaultPoolSize: 2 })
        const url = bouncer.url({ database })
        const scenario = (prepare: boolean) =>
          withPool({ url, max: 1, prepare }, ({ sql }) =>
            Effect.gen(function*() {
              const query = (n: number) => sql<{ n: number; pid: number }>`SELECT ${n}::int AS n, pg_backend_pid() AS pid`
              // The pool's one connection prepares the statement on server connection X.
              const [first] = yield* sql.withTransaction(query(1))
              // Another client takes X: it is PgBouncer's only idle server connection.
              const other = yield* PgConnection.make({ url, prepare: false })
              yield* other.query("BEGIN")
              const [held] = (yield* other.query("SELECT pg_backend_pid() AS pid")).rows
              assert.strictEqual(held.pid, first.pid, "the other client holds the server connection the statement was prepared on")
              // The pool's next transaction runs on a new server connection Y, which never saw the Parse.
              const inTransaction = yield* Effect.exit(sql.withTransaction(query(2)))
              // Outside a transaction the driver parses again and retries, so an autocommit statement passes.
              const autocommit = yield* Effect.exit(query(3))
              yield* other.query("COMMIT")
              return { inTransaction, autocommit }
            }))

        const prepared = yield* scenario(true)
        assert.isTrue(Exit.isFailure(prepared.inTransaction), `the transaction failed: ${JSON.stringify(prepared.inTransaction)}`)
        const error = told(errorOf(prepared.inTransaction))
        assert.strictEqual(error.state, "26000", JSON.stringify(error))
        assert.match(error.message, /^prepared statement "mh_[0-9a-z]+_\d+" does not exist$/)
        assert.isTrue(Exit.isSuccess(prepared.autocommit), "autocommit statements survive: the driver re-parses on 26000")

        const unprepared = yield* scenario(false)
        assert.isTrue(Exit.isSuccess(unprepared.inTransaction), "prepare: false works")
        assert.isTrue(Exit.isSuccess(unprepared.autocommit))
      }))

    it.effect(`(c) tenant isolation: ${tenants} tenants through 8 pool connections on 2 server connections see only their own rows`, () =>
      Effect.gen(function*() {
        const { bouncer, database, worker, adminUrl, projects } = yield* BouncerSetup
        const side = yield* PgConnection.make({ url: adminUrl })
        const runs = yield* side.query("SELECT id::text AS id, project_id::text AS project FROM workflow_runs")
        const runOf = new Map(runs.rows.map((row) => [row.project as string, row.id as string]))
        const violations: Array<string> = []
        const leakedSettings: Array<string> = []
        const rolledBack: Array<string> = []
        let completed = 0

        const { peakServers: peak, peakClients } = yield* peakServers(
          bouncer,
          database,
          worker.user,
          withPool(
            {
              url: bouncer.url(worker),
              max: 8,
              behindPooler: "transaction",
              tenantSetting: "app.project_id",
              requireTenant: true,
              tenantFormat: "uuid"
            },
            ({ sql }) => {
              const checkOwn = (project: string, rows: ReadonlyArray<{ readonly project_id: string }>, what: string) => {
                for (const row of rows) {
                  if (row.project_id !== project) violations.push(`${what}: tenant ${project} saw a row of ${row.project_id}`)
                }
              }
              const append = (project: string, marker: string) =>
                sql`INSERT INTO workflow_events (project_id, run_id, type, payload)
                    VALUES (${project}, ${runOf.get(project)!}, 'bouncer', ${JSON.stringify({ writer: project, marker })}::jsonb)`
              const operation = (index: number): Effect.Effect<void, unknown> => {
                const project = projects[index % tenants]
                const marker = `op-${index}`
                const asTenant = Tenant.with(project)
                switch (index % 7) {
                  case 0:
                    return asTenant(sql<{ project_id: string }>`SELECT project_id::text FROM workflow_events`).pipe(
                      Effect.map((rows) => checkOwn(project, rows, "read"))
                    )
                  case 1:
                    return asTenant(append(project, marker))
                  case 2:
                    return asTenant(sql.withTransaction(Effect.gen(function*() {
                      const rows = yield* sql<{ project_id: string }>`SELECT project_id::text FROM workflow_runs FOR UPDATE`
                      checkOwn(project, rows, "transaction read")
                      yield* append(project, marker)
                      yield* Effect.sleep(index % 5)
                      const again = yield* sql<{ project_id: string }>`SELECT project_id::text FROM workflow_events`
                      checkOwn(project, again, "transaction read after a pause")
                    })))
                  case 3:
                    rolledBack.push(marker)
                    return Effect.exit(asTenant(sql.withTransaction(Effect.andThen(append(project, marker), Effect.fail("rollback")))))
                  case 4:
                    return asTenant(Stream.runCollect(sql<{ project_id: string }>`SELECT project_id::text FROM workflow_runs`.stream))
                      .pipe(Effect.map((rows) => checkOwn(project, rows, "stream")))
                  case 5:
                    // No tenant: row-level security shows nothing, whichever server connection it lands on.
                    return Tenant.unscoped("probe")(sql<{ n: number; setting: string }>`
                      SELECT (SELECT count(*)::int FROM workflow_events) AS n,
                             coalesce(current_setting('app.project_id', true), '') AS setting`).pipe(
                        Effect.map(([row]) => {
                          if (row.n !== 0) violations.push(`an unscoped read saw ${row.n} rows`)
                          if (row.setting !== "") leakedSettings.push(row.setting)
                        })
                      )
                  default:
                    return asTenant(sql<{ project_id: string; setting: string }>`
                      SELECT project_id::text, current_setting('app.project_id') AS setting FROM workflow_runs`).pipe(
                        Effect.map((rows) => {
                          checkOwn(project, rows, "read with setting")
                          for (const row of rows) if (row.setting !== project) violations.push(`setting ${row.setting} under ${project}`)
                        })
                      )
                }
              }
              return Effect.forEach(
                Array.from({ length: 1_400 }, (_, i) => i),
                (i) => Effect.tap(operation(i), () => Effect.sync(() => completed++)),
                { concurrency: 32, discard: true }
              )
            }
          )
        )

        const crossWritten = yield* side.query(
          "SELECT count(*)::int AS n FROM workflow_events WHERE type = 'bouncer' AND payload->>'writer' <> project_id::text"
        )
        const survivors = yield* side.query(
          "SELECT count(*)::int AS n FROM workflow_events WHERE type = 'bouncer' AND payload->>'marker' = ANY($1::text[])",
          [rolledBack]
        )
        const written = yield* side.query("SELECT count(DISTINCT project_id)::int AS tenants, count(*)::int AS n FROM workflow_events WHERE type = 'bouncer'")
        const summary = JSON.stringify({ completed, violations: violations.slice(0, 5), leakedSettings: leakedSettings.slice(0, 3), peak, peakClients })
        assert.strictEqual(completed, 1_400, summary)
        assert.deepStrictEqual(violations, [], summary)
        assert.deepStrictEqual(leakedSettings, [], summary)
        assert.strictEqual(crossWritten.rows[0].n, 0, summary)
        assert.strictEqual(survivors.rows[0].n, 0, summary)
        assert.strictEqual(written.rows[0].tenants, tenants, summary)
        assert.isAtMost(peak, 2, summary)
        assert.isAbove(peakClients, 2, `more clients than server connections: ${summary}`)
      }))

    it.effect("(d) PgBouncer stopped and killed under load: callers get typed errors or succeed, nobody hangs, the pool recovers", () =>
      Effect.gen(function*() {
        const { upstream, database } = yield* BouncerSetup
        const bouncer = yield* PgBouncer.make({ upstream, defaultPoolSize: 2 })
        return yield* withPool(
          { url: bouncer.url({ database }), max: 8, behindPooler: "transaction", acquireTimeout: 2_000 },
          ({ sql }) =>
            Effect.gen(function*() {
              const outcomes: Array<{ readonly at: number; readonly name: string }> = []
              const samples: Record<string, string> = {}
              let running = true
              const started = Date.now()
              const work = (i: number) =>
                i % 3 === 0
                  ? sql.withTransaction(Effect.andThen(sql`SELECT pg_sleep(0.01)`, sql`SELECT ${i}::int AS i`))
                  : sql`SELECT ${i}::int AS i FROM pg_sleep(0.005)`
              const worker = (w: number) =>
                Effect.gen(function*() {
                  let i = w
                  while (running) {
                    const exit = yield* Effect.exit(Effect.timeoutOption(work(i++), 8_000))
                    const name = Exit.isSuccess(exit) && exit.value._tag === "None" ? "hung" : outcomeName(exit)
                    outcomes.push({ at: Date.now() - started, name })
                    if (Exit.isFailure(exit) && samples[name] === undefined) samples[name] = told(errorOf(exit)).message
                    if (name !== "ok") yield* Effect.sleep(10)
                  }
                })
              const workers = yield* Effect.forkChild(Effect.forEach(Array.from({ length: 16 }, (_, w) => w), worker, {
                concurrency: "unbounded",
                discard: true
              }))
              const phases: Array<{ readonly what: string; readonly at: number }> = []
              const mark = (what: string) => Effect.sync(() => phases.push({ what, at: Date.now() - started }))
              yield* Effect.sleep(600)
              yield* mark("stop")
              yield* bouncer.stop
              yield* Effect.sleep(500)
              yield* bouncer.start
              yield* mark("started")
              yield* Effect.sleep(1_000)
              yield* mark("kill")
              yield* bouncer.kill
              yield* Effect.sleep(500)
              yield* bouncer.start
              yield* mark("started again")
              const back = Date.now() - started
              yield* Effect.sleep(1_500)
              running = false
              const finished = yield* Effect.timeoutOption(Fiber.await(workers), 10_000)
              assert.strictEqual(finished._tag, "Some", "every worker finished")

              const names = outcomes.map((o) => o.name)
              const afterBack = outcomes.filter((o) => o.at > back)
              const firstOkAfter = afterBack.find((o) => o.name === "ok")
              const killAt = phases.find((p) => p.what === "kill")!.at
              const failures = {
                stop: tally(outcomes.filter((o) => o.name !== "ok" && o.at < killAt).map((o) => o.name)),
                kill: tally(outcomes.filter((o) => o.name !== "ok" && o.at >= killAt).map((o) => o.name))
              }
              console.log(
                `pgbouncer restart: ${names.length} calls, failures ${JSON.stringify(failures)}, ` +
                  `first success ${firstOkAfter === undefined ? "never" : `${firstOkAfter.at - back} ms`} after the second start; phases ${JSON.stringify(phases)}; messages ${JSON.stringify(samples)}`
              )
              assert.notInclude(names, "hung")
              assert.notInclude(names, "defect")
              assert.notInclude(names, "untyped")
              assert.isDefined(firstOkAfter, "the pool served again after PgBouncer came back")
              assert.isTrue(yield* eventually(Effect.map(Effect.exit(sql`SELECT 1`), Exit.isSuccess), 5_000))
              // The last stretch of work ran clean.
              const tail = outcomes.filter((o) => o.at > back + 1_000)
              assert.isAbove(tail.length, 0)
              assert.deepStrictEqual(tally(tail.map((o) => o.name)), { ok: tail.length })
            })
        )
      }))

    it.effect("(f) session state a foreign client leaves on a server connection reaches PgBouncer's next client, never the pool's transactions", () =>
      Effect.gen(function*() {
        const { upstream, worker, projects } = yield* BouncerSetup
        const leaked = (settings: Record<string, number>) =>
          Effect.gen(function*() {
            // One server connection, so that every client lands on it.
            const bouncer = yield* PgBouncer.make({ upstream, defaultPoolSize: 1, settings })
            const seen = `SELECT coalesce(current_setting('app.project_id', true), '') AS setting,
              (SELECT count(*)::int FROM workflow_runs) AS runs`
            // A client that is not this pool leaves a session-level tenant on the server connection.
            const foreign = yield* PgConnection.make({ url: bouncer.url(worker), prepare: false })
            yield* foreign.query("SELECT set_config('app.project_id', $1, false)", [projects[1]])
            // Another plain client, no tenant: what does row-level security let it see?
            const other = yield* PgConnection.make({ url: bouncer.url(worker), prepare: false })
            const [plain] = (yield* other.query(seen)).rows
            const warnings: Array<string> = []
            const capture = Logger.layer([Logger.make((options) => void warnings.push(String(options.message)))])
            // The pool's transactions carry their own tenant (or none), whatever the server connection holds.
            const pool = yield* withPool(
              { url: bouncer.url(worker), max: 2, behindPooler: "transaction", tenantSetting: "app.project_id" },
              ({ sql }) =>
                Effect.all({
                  unscoped: Tenant.unscoped("claim")(sql.unsafe(seen)),
                  tenant: Tenant.with(projects[0])(sql.unsafe(seen)),
                  transaction: Tenant.with(projects[0])(sql.withTransaction(sql.unsafe(seen)))
                })
            ).pipe(Effect.provide(capture))
            return { plain, pool, warned: warnings.some((w) => w.includes("found a tenant setting on a server connection of the pooler")) }
          })
        const plain = yield* leaked({})
        // PgBouncer hands the server connection, with its session state, to its next client.
        assert.deepStrictEqual(plain.plain, { setting: projects[1], runs: 2 })
        // The pool's work never sees it: unscoped work no tenant, tenant work its own.
        assert.deepStrictEqual(plain.pool.unscoped, [{ setting: "", runs: 0 }])
        assert.deepStrictEqual(plain.pool.tenant, [{ setting: projects[0], runs: 2 }])
        assert.deepStrictEqual(plain.pool.transaction, [{ setting: projects[0], runs: 2 }])
        assert.isTrue(plain.warned, "the prologue reports what it found left on the session")
        // server_reset_query_always = 1: DISCARD ALL after every transaction protects the plain clients too.
        const reset = yield* leaked({ server_reset_query_always: 1 })
        assert.deepStrictEqual(reset.plain, { setting: "", runs: 0 })
      }))

    it.effect("(g) with behindPooler: \"transaction\" the pool refuses the session-level set_config: nothing reaches the server connection", () =>
      Effect.gen(function*() {
        const { upstream, worker, projects } = yield* BouncerSetup
        const bouncer = yield* PgBouncer.make({ upstream, defaultPoolSize: 1 })
        const error = yield* withPool(
          { url: bouncer.url(worker), max: 2, behindPooler: "transaction", tenantSetting: "app.project_id" },
          ({ sql }) => Effect.flip(Tenant.with(projects[0])(sql`SELECT set_config('app.project_id', ${projects[1]}, false)`))
        )
        assert.instanceOf(PoolError.fromSqlError(error), PoolError.SessionStateNotAllowedError)
        const other = yield* PgConnection.make({ url: bouncer.url(worker), prepare: false })
        const [row] = (yield* other.query(`SELECT coalesce(current_setting('app.project_id', true), '') AS setting,
          (SELECT count(*)::int FROM workflow_runs) AS runs`)).rows
        assert.deepStrictEqual(row, { setting: "", runs: 0 })
      }))

    it.effect("(h) beside a foreign client's temporary table the pool's work never runs; the empty temporary schema PgBouncer's DISCARD ALL leaves is no obstacle", () =>
      Effect.gen(function*() {
        const { upstream, worker, projects } = yield* BouncerSetup
        const afterTemporaryTable = (settings: Record<string, number>) =>
          Effect.gen(function*() {
            // One server connection: the pool's first statement lands where the table is.
            const bouncer = yield* PgBouncer.make({ upstream, defaultPoolSize: 1, settings })
            const foreign = yield* PgConnection.make({ url: bouncer.url(worker), prepare: false })
            yield* foreign.query("CREATE TEMP TABLE leak AS SELECT 1 AS x")
            const warnings: Array<string> = []
            const capture = Logger.layer([Logger.make((options) => void warnings.push(String(options.message)))])
            const outcomes = yield* withPool(
              { url: bouncer.url(worker), max: 1, behindPooler: "transaction", tenantSetting: "app.project_id" },
              ({ sql }) => {
                const count = sql<{ n: number; temporary: number }>`SELECT count(*)::int AS n,
                  (SELECT count(*)::int FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temporary FROM workflow_runs`
                const asTenant = Tenant.with(projects[0])
                return Effect.all([Effect.exit(asTenant(count)), Effect.exit(asTenant(sql.withTransaction(count)))])
              }
            ).pipe(Effect.provide(capture))
            return { outcomes, refused: warnings.some((w) => w.includes("found the pinned settings not in force")) }
          })
        const kept = yield* afterTemporaryTable({})
        // Refused where the table is (the pool may then get another server connection, as PgBouncer replaces it).
        assert.isTrue(kept.refused, "the prologue refused the server connection with the temporary table")
        for (const exit of kept.outcomes) {
          if (Exit.isSuccess(exit)) {
            assert.deepStrictEqual(exit.value, [{ n: 2, temporary: 0 }])
          } else {
            const error = PoolError.fromSqlError(Cause.squash(exit.cause) as SqlError)
            assert.strictEqual(error?._tag, "IsolationError", Cause.pretty(exit.cause))
          }
        }
        const discarded = yield* afterTemporaryTable({ server_reset_query_always: 1 })
        assert.isFalse(discarded.refused)
        for (const exit of discarded.outcomes) {
          assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
          assert.deepStrictEqual((exit as Exit.Success<unknown>).value, [{ n: 2, temporary: 0 }])
        }
      }))

    describe("(e) PgBouncer's refusals: SQLSTATE and message", () => {
      it.effect("query_wait_timeout: every server connection busy longer than the timeout", () =>
        Effect.gen(function*() {
          const { upstream, worker } = yield* BouncerSetup
          const bouncer = yield* PgBouncer.make({ upstream, defaultPoolSize: 1, queryWaitTimeout: "1 second" })
          const target = { host: bouncer.host, port: bouncer.port, ...worker }
          // Logged in before the saturation: the refusal comes at the query.
          const wire = yield* Effect.promise(() => SimpleQuery.connect(target))
          const driver = yield* PgConnection.make({ url: bouncer.url(worker), prepare: false })
          const holder = yield* PgConnection.make({ url: bouncer.url(worker), prepare: false })
          const busy = yield* Effect.forkChild(holder.query("SELECT pg_sleep(1.6)"))
          yield* Effect.sleep(200)
          const started = Date.now()
          const [atQuery, atQueryDriver, atLogin] = yield* Effect.all([
            rejection(() => wire.query("SELECT 1")),
            Effect.flip(driver.query("SELECT 1")),
            // A login waits for a server connection too (and for the auth_user's, to look the role up).
            rejection(() => SimpleQuery.simpleQuery(target, "SELECT 1"))
          ], { concurrency: "unbounded" })
          const waited = Date.now() - started
          const refusal = told(atQuery)
          console.log(`query_wait_timeout: wire ${JSON.stringify(refusal)}; at login ${JSON.stringify(told(atLogin))}; driver ${JSON.stringify(told(atQueryDriver))}; after ${waited} ms`)
          assert.deepStrictEqual(refusal, { kind: "ServerError(FATAL)", state: "08P01", message: "query_wait_timeout" })
          assert.deepStrictEqual(told(atLogin), { kind: "ServerError(FATAL)", state: "08P01", message: "query_wait_timeout" })
          // The driver sees the FATAL error and the closed socket, and reports the latter, without a SQLSTATE.
          assert.deepStrictEqual(told(atQueryDriver), { kind: "ConnectionError", state: undefined, message: "Connection closed" })
          assert.isAtLeast(waited, 900)
          assert.isTrue(Exit.isSuccess(yield* Fiber.await(busy)), "the busy client was not disturbed")
          wire.close()

          // Through the pool: the statement fails with the driver's ConnectionError; later ones get new connections.
          const holder2 = yield* PgConnection.make({ url: bouncer.url(worker), prepare: false })
          yield* withPool({ url: bouncer.url(worker), max: 2, prepare: false }, ({ sql }) =>
            Effect.gen(function*() {
              yield* sql`SELECT 1`
              const busy2 = yield* Effect.forkChild(holder2.query("SELECT pg_sleep(1.5)"))
              yield* Effect.sleep(100)
              const error = told(yield* Effect.flip(sql`SELECT 1`))
              console.log(`query_wait_timeout through the pool: ${JSON.stringify(error)}`)
              assert.deepStrictEqual(error, { kind: "ConnectionError", state: undefined, message: "Connection closed" })
              yield* Fiber.await(busy2)
              assert.isTrue(Exit.isSuccess(yield* Effect.exit(sql`SELECT 1`)))
            }))
        }))

      it.effect("max_client_conn: no more client connections", () =>
        Effect.gen(function*() {
          const { upstream, worker } = yield* BouncerSetup
          const bouncer = yield* PgBouncer.make({ upstream, maxClientConn: 2 })
          const target = { host: bouncer.host, port: bouncer.port, ...worker }
          const expected = "no more connections allowed (max_client_conn)"
          const url = bouncer.url(worker)

          // Through the pool, at run time: its first connection is open, a second is refused and retried until acquireTimeout.
          const first = yield* Effect.promise(() => SimpleQuery.connect(target))
          const atRunTime = yield* withPool({ url, max: 3, prepare: false, acquireTimeout: 1_000 }, ({ sql }) =>
            Effect.gen(function*() {
              const busy = yield* Effect.forkChild(sql.withTransaction(sql`SELECT pg_sleep(1.5)`))
              yield* Effect.sleep(100)
              const error = yield* Effect.flip(sql.withTransaction(sql`SELECT 1`))
              yield* Fiber.join(busy)
              return error
            }))

          // PgBouncer sees the pool's connection go a moment after the pool closed it: until then, no room.
          const second = yield* Effect.retry(
            Effect.tryPromise(() => SimpleQuery.connect(target)),
            { times: 100, schedule: Schedule.spaced("50 millis") }
          )
          const wire = told(yield* rejection(() => SimpleQuery.connect(target)))
          const driver = told(yield* Effect.flip(Effect.scoped(PgConnection.make({ url }))))
          // Through the pool, at start-up: no first connection within initializationTimeout.
          const atStart = yield* Effect.flip(withPool({ url, max: 2, prepare: false, initializationTimeout: 1_000 }, () => Effect.void))
          const runTime = PoolError.fromSqlError(atRunTime)
          console.log(
            `max_client_conn: wire ${JSON.stringify(wire)}; driver ${JSON.stringify(driver)}; ` +
              `pool at run time ${runTime?._tag}: ${runTime?.message}; pool at start ${atStart._tag}: ${atStart.message}`
          )
          assert.deepStrictEqual(wire, { kind: "ServerError(FATAL)", state: "08P01", message: expected })
          assert.deepStrictEqual(driver, { kind: "ConnectionError", state: "08P01", message: expected })
          assert.strictEqual(runTime?._tag, "PoolTimeoutError")
          assert.include(runTime?.message ?? "", expected)
          assert.strictEqual(atStart._tag, "DatabaseUnavailableError")
          assert.include(atStart.message, expected)
          // The admin console is exempt.
          assert.isAbove((yield* bouncer.admin("SHOW CLIENTS")).length, 0)
          first.close()
          second.close()
        }))

      it.effect("the server down: in flight, on a logged-in client, and at login; then back", () =>
        Effect.gen(function*() {
          // A server of its own, to stop.
          const server = yield* PgServer.make()
          const setup = yield* PgConnection.make({ url: server.url() })
          yield* setup.query("CREATE ROLE pgb_app LOGIN PASSWORD 'pgb_app_secret'")
          const bouncer = yield* PgBouncer.make({ upstream: server, defaultPoolSize: 2, queryWaitTimeout: "1 second" })
          const superuser = { user: server.user, password: Redacted.value(server.password), database: "postgres" }
          const app = { user: "pgb_app", password: "pgb_app_secret", database: "postgres" }
          const target = (login: Login) => ({ host: bouncer.host, port: bouncer.port, ...login })
          yield* Effect.promise(() => SimpleQuery.simpleQuery(target(superuser), "SELECT 1"))
          yield* Effect.promise(() => SimpleQuery.simpleQuery(target(app), "SELECT 1"))
          const inFlight = yield* Effect.promise(() => SimpleQuery.connect(target(app)))
          const inFlightDriver = yield* PgConnection.make({ url: bouncer.url(app), prepare: false })
          const idle = yield* Effect.promise(() => SimpleQuery.connect(target(app)))
          const idleDriver = yield* PgConnection.make({ url: bouncer.url(app), prepare: false })
          yield* idleDriver.query("SELECT 1")
          const running = yield* Effect.forkChild(Effect.all([
            rejection(() => inFlight.query("SELECT pg_sleep(3)")),
            Effect.flip(inFlightDriver.query("SELECT pg_sleep(3)"))
          ], { concurrency: "unbounded" }))
          yield* Effect.sleep(200)
          yield* server.stop
          const [wireInFlight, driverInFlight] = yield* Fiber.join(running)

          /** A login and a query; where it was refused, and how. */
          const passed = { stage: "ok", kind: "ok", state: undefined, message: "" }
          const wireAttempt = (login: Login) =>
            Effect.promise(async () => {
              let session: SimpleQuery.Session
              try {
                session = await SimpleQuery.connect(target(login))
              } catch (error) {
                return { stage: "login", ...told(error) }
              }
              try {
                await session.query("SELECT 1")
                return passed
              } catch (error) {
                return { stage: "query", ...told(error) }
              } finally {
                session.close()
              }
            })
          const driverAttempt = (login: Login) =>
            Effect.scoped(Effect.gen(function*() {
              const connection = yield* Effect.exit(PgConnection.make({ url: bouncer.url(login), prepare: false, connectTimeout: 3_000 }))
              if (Exit.isFailure(connection)) return { stage: "login", ...told(errorOf(connection)) }
              const query = yield* Effect.exit(connection.value.query("SELECT 1"))
              return Exit.isSuccess(query) ? passed : { stage: "query", ...told(errorOf(query)) }
            }))

          const report = {
            wireInFlight: told(wireInFlight),
            driverInFlight: told(driverInFlight),
            wireIdle: { stage: "query", ...told(yield* rejection(() => idle.query("SELECT 1"))) },
            driverIdle: { stage: "query", ...told(yield* Effect.flip(idleDriver.query("SELECT 1"))) },
            wireSuperuser: yield* wireAttempt(superuser),
            wireApp: yield* wireAttempt(app),
            driverSuperuser: yield* driverAttempt(superuser),
            driverApp: yield* driverAttempt(app)
          }
          console.log(`server down: ${JSON.stringify(report)}`)
          // In flight: PgBouncer passes on the server's FATAL 57P01, then sends its own FATAL 08P01 "server conn crashed?".
          assert.deepStrictEqual(report.wireInFlight, {
            kind: "ServerError(FATAL)",
            state: "57P01",
            message: "terminating connection due to administrator command"
          })
          assert.strictEqual(report.driverInFlight.kind, "ConnectionError")
          // Afterwards PgBouncer cannot reach the server: FATAL 08P01, at login (roles looked up with auth_query,
          // or after a failed server login) or at the first query (the auth_file superuser may log in).
          const downMessages = ["server login has been failing, try again later (server_login_retry)", "query_wait_timeout"]
          for (const what of ["wireIdle", "wireSuperuser", "wireApp"] as const) {
            assert.notStrictEqual(report[what].stage, "ok", what)
            assert.strictEqual(report[what].state, "08P01", what)
            assert.include(downMessages, report[what].message, what)
          }
          for (const what of ["driverIdle", "driverSuperuser", "driverApp"] as const) {
            assert.notStrictEqual(report[what].stage, "ok", what)
            assert.strictEqual(report[what].kind, "ConnectionError", what)
          }

          yield* server.start
          // PgBouncer tries the server again after server_login_retry (1 s here); logins in between are still refused.
          const recovered = yield* eventually(Effect.map(wireAttempt(app), (attempt) => attempt.stage === "ok"), 5_000)
          assert.isTrue(recovered, "logins through PgBouncer work again once the server is back")
        }))
    })
  })
})
