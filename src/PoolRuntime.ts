/**
 * The pool from Promise-based code: a SvelteKit route or hook, a plain Node
 * HTTP handler, a script.
 *
 * A `PoolRuntime` is Effect's `ManagedRuntime` over the pool's layer: one
 * pool per process, which Promise code reaches through {@link PoolRuntime.run}
 * and Effect workers share by running in {@link PoolRuntime.managed}. The
 * tenant is set per call ({@link PoolRuntime.forTenant}) and checked exactly
 * as for Effect code: a call that names none fails with
 * `TenantRequiredError` under `requireTenant`. A failed call rejects with the
 * pool's typed error itself, not the `SqlError` that wraps it, so
 * `instanceof PoolError.PoolTimeoutError` (or its `_tag`) tells a full pool
 * from a bad statement; {@link PoolRuntime.runResult} gives the same errors
 * as values.
 *
 * ```ts
 * import { Pool, PoolRuntime } from "@meshhook/pool"
 *
 * export const db = PoolRuntime.singleton("app/db", () =>
 *   PoolRuntime.make(Pool.layerConfig({ tenantSetting: "app.project_id", requireTenant: true }))
 *     .closeOn(["SIGTERM", "SIGINT"]))
 *
 * const runs = await db.forTenant(projectId).sql`SELECT id, status FROM workflow_runs`
 * ```
 *
 * See docs/integration.md for SvelteKit and plain Node servers.
 *
 * @since 0.2.0
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Result from "effect/Result"
import * as SqlClient from "effect/sql/SqlClient"
import type { Row } from "effect/sql/SqlConnection"
import { isSqlError, type SqlError } from "effect/sql/SqlError"
import type * as Pool from "./Pool.ts"
import * as PoolError from "./PoolError.ts"
import * as Tenant from "./Tenant.ts"

/**
 * What a run whose effect fails with `E` fails with: `E`, except that a
 * `SqlError` caused by the pool (no connection, no tenant, ...) is replaced
 * by that pool error. Other `SqlError`s (the server's) stay as they are.
 *
 * @since 0.2.0
 * @category models
 */
export type RunError<E> = E extends SqlError ? SqlError | PoolError.PoolError : E

/**
 * Options of one run.
 *
 * @since 0.2.0
 * @category models
 */
export interface RunOptions {
  /**
   * Interrupts the run when aborted (a request's `signal`, so that a client
   * that went away does not keep a connection); the run then rejects with
   * the signal's reason.
   */
  readonly signal?: AbortSignal | undefined
}

/**
 * Runs effects on the pool as one tenant, explicitly none, or as the effect
 * says (the runtime itself).
 *
 * @since 0.2.0
 * @category models
 */
export interface Runner<R, ER> {
  /**
   * Runs `effect` and resolves with its value. It rejects with the effect's
   * error, a pool error in place of the `SqlError` that carried it
   * ({@link RunError}); with `PoolClosedError` once the runtime is closing;
   * with the layer's error if the pool could not be built; with the defect
   * if the effect died.
   */
  readonly run: <A, E>(effect: Effect.Effect<A, E, R>, options?: RunOptions) => Promise<A>
  /**
   * {@link run}, with the errors it would reject with as values
   * (`Result.fail`); only defects and aborts still reject.
   */
  readonly runResult: <A, E>(
    effect: Effect.Effect<A, E, R>,
    options?: RunOptions
  ) => Promise<Result.Result<A, RunError<E> | ER | PoolError.PoolClosedError>>
  /** One statement, as `SqlClient`'s tagged template, run with {@link run}. */
  readonly sql: <A extends object = Row>(strings: TemplateStringsArray, ...args: Array<unknown>) => Promise<ReadonlyArray<A>>
}

/**
 * {@link PoolRuntime.closeOn}'s options.
 *
 * @since 0.2.0
 * @category models
 */
export interface CloseOptions {
  /**
   * Runs first, and the pool drains once it is done (or failed): close the
   * HTTP server here, so that requests in flight finish on an open pool and
   * nothing keeps the process alive afterwards.
   */
  readonly before?: (() => unknown) | undefined
}

/**
 * The pool's runtime: runs effects without a tenant of their own (they may
 * set one inside), or for a tenant ({@link forTenant}), and closes the pool.
 *
 * @since 0.2.0
 * @category models
 */
export interface PoolRuntime<R, ER> extends Runner<R, ER> {
  /** Effect's runtime underneath: Effect workers run in it (`managed.runFork(worker)`) on the same pool. */
  readonly managed: ManagedRuntime.ManagedRuntime<R, ER>
  /** Runs as the tenant `id`: every statement of the run is under `Tenant.with(id)`. */
  readonly forTenant: (id: string) => Runner<R, ER>
  /** Runs explicitly without a tenant (`Tenant.unscoped(reason)`), for work across tenants. */
  readonly unscoped: (reason: string) => Runner<R, ER>
  /**
   * Builds the pool now, proving the database is reachable, rather than on
   * the first run; rejects with the layer's error. The layer is built once:
   * a failed build fails every run after it, so a server should await this
   * at start and exit when it rejects.
   */
  readonly ready: () => Promise<void>
  /** Whether {@link dispose} has begun: new runs fail with `PoolClosedError`. */
  readonly closed: boolean
  /**
   * Closes the pool on the first of `events` (`process` signals such as
   * `SIGTERM`, or events a framework emits, such as adapter-node's
   * `sveltekit:shutdown`): runs `options.before`, then {@link dispose}.
   * Its listeners are removed then, so a second `SIGINT` stops the process
   * at once. If `before` fails, the exit code becomes 1.
   */
  readonly closeOn: (events: ReadonlyArray<string>, options?: CloseOptions) => PoolRuntime<R, ER>
  /**
   * Closes the pool: new runs fail with `PoolClosedError` from now on, runs
   * in flight are interrupted, and the pool drains (lent connections are
   * rolled back and every connection is closed). Idempotent.
   */
  readonly dispose: () => Promise<void>
}

/**
 * A runtime over `layer`, built on first use (or {@link PoolRuntime.ready}).
 * The layer must provide the pool's services: a plain `PgClient` layer would
 * ignore the tenant, and so would not fail closed.
 *
 * @since 0.2.0
 * @category constructors
 */
export const make = <R, ER>(layer: Layer.Layer<R | Pool.Services, ER>): PoolRuntime<R | Pool.Services, ER> => {
  type Services = R | Pool.Services
  const managed = ManagedRuntime.make(layer)
  let closed = false
  const listeners = new Set<() => void>()
  const exitOf: ExitOf<Services, ER> = (effect, options) =>
    closed
      ? Promise.resolve(Exit.fail(new PoolError.PoolClosedError()))
      : managed.runPromiseExit(Effect.mapError(effect, unwrap), options)
  const runnerFor = (scoped: Scoping<Services>) => runner<R, ER>(exitOf, scoped, () => closed)
  const dispose = () => {
    closed = true
    for (const remove of listeners) remove()
    return managed.dispose()
  }
  const self: PoolRuntime<Services, ER> = {
    ...runnerFor((effect) => effect),
    managed,
    forTenant: (id) => runnerFor(Tenant.with(id)),
    unscoped: (reason) => runnerFor(Tenant.unscoped(reason)),
    ready: () => self.run(Effect.void),
    get closed() {
      return closed
    },
    closeOn: (events, options) => {
      // A closed runtime has nothing to close: a listener would only swallow the first signal.
      if (!closed) listeners.add(closeOnce(events, options, dispose, listeners))
      return self
    },
    dispose
  }
  return self
}

/** Runs an effect to its exit, its pool errors unwrapped; a closed runtime fails it at once. */
type ExitOf<S, ER> = <A, E>(
  effect: Effect.Effect<A, E, S>,
  options: RunOptions | undefined
) => Promise<Exit.Exit<A, RunError<E> | ER | PoolError.PoolClosedError>>

/** What a runner does to each effect before it runs: nothing, or put it under a tenant scope. */
type Scoping<S> = <A, E>(effect: Effect.Effect<A, E, S>) => Effect.Effect<A, E, S>

/** The three ways to run, over one way to reach an exit. */
const runner = <R, ER>(
  exitOf: ExitOf<R | Pool.Services, ER>,
  scoped: Scoping<R | Pool.Services>,
  isClosed: () => boolean
): Runner<R | Pool.Services, ER> => {
  const run = <A, E>(effect: Effect.Effect<A, E, R | Pool.Services>, options?: RunOptions): Promise<A> =>
    exitOf(scoped(effect), options).then((exit) => {
      if (Exit.isSuccess(exit)) return exit.value
      throw failureOf(exit.cause, options, isClosed()).error
    })
  return {
    run,
    runResult: (effect, options) =>
      exitOf(scoped(effect), options).then((exit) => {
        if (Exit.isSuccess(exit)) return Result.succeed(exit.value)
        const failure = failureOf(exit.cause, options, isClosed())
        if (!failure.typed) throw failure.error
        return Result.fail(failure.error)
      }),
    sql: (strings, ...args) => run(Effect.flatMap(Effect.service(SqlClient.SqlClient), (sql) => sql(strings, ...args)))
  }
}

/**
 * Listens for the first of `events`: then stops listening, runs `before` and
 * disposes. Returns what removes the listeners, which `dispose` also calls.
 */
const closeOnce = (
  events: ReadonlyArray<string>,
  options: CloseOptions | undefined,
  dispose: () => Promise<void>,
  listeners: Set<() => void>
): () => void => {
  const close = () => {
    remove()
    Effect.runFork(Effect.tryPromise(async () => await options?.before?.()).pipe(
      Effect.tapCause((cause) =>
        Effect.andThen(
          Effect.sync(() => process.exitCode = 1),
          Effect.logError("PoolRuntime.closeOn: `before` failed; closing the pool all the same", cause)
        )
      ),
      Effect.ensuring(Effect.promise(dispose)),
      Effect.ignore
    ))
  }
  const remove = () => {
    for (const event of events) process.removeListener(event, close)
    listeners.delete(remove)
  }
  for (const event of events) process.on(event, close)
  return remove
}

/** A `SqlError` the pool raised on its own behalf becomes that pool error. */
const unwrap = <E>(error: E): RunError<E> =>
  (isSqlError(error) ? PoolError.fromSqlError(error) ?? error : error) as RunError<E>

/**
 * What a failed run gives its caller: a typed error (a value for
 * `runResult`), or what to reject with. An interruption is the runtime
 * closing (`PoolClosedError`, typed) or the caller's abort (the signal's
 * reason); a defect is rejected as it is.
 */
const failureOf = <E>(
  cause: Cause.Cause<E>,
  options: RunOptions | undefined,
  closed: boolean
): { readonly typed: true; readonly error: E | PoolError.PoolClosedError } | { readonly typed: false; readonly error: unknown } => {
  const error = Cause.findError(cause)
  if (Result.isSuccess(error)) return { typed: true, error: error.success }
  if (Cause.hasInterruptsOnly(cause)) {
    if (options?.signal?.aborted) return { typed: false, error: options.signal.reason }
    if (closed) return { typed: true, error: new PoolError.PoolClosedError() }
  }
  return { typed: false, error: Cause.squash(cause) }
}

/**
 * The runtime `make` returns, kept on `globalThis` under `key` and made
 * only once per process: a dev server that re-runs a module when it
 * changes (Vite's, under SvelteKit) gets the same pool again instead of
 * opening another each time. A disposed one is replaced. The options are
 * those of the first `make`: restart the dev server to change them.
 *
 * @since 0.2.0
 * @category constructors
 */
export const singleton = <R, ER>(key: string, make: () => PoolRuntime<R, ER>): PoolRuntime<R, ER> => {
  const store = globalThis as { [key: symbol]: PoolRuntime<R, ER> | undefined }
  const symbol = Symbol.for(`@meshhook/pool/PoolRuntime/${key}`)
  const existing = store[symbol]
  if (existing !== undefined && !existing.closed) return existing
  return store[symbol] = make()
}
