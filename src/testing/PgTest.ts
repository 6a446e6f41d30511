/**
 * The pool on a real, throwaway PostgreSQL database, for tests of SQL:
 * a fresh database per layer (so per test file, with `@effect/vitest`'s
 * `layer`), your migrations applied, a login role subject to row-level
 * security if you name one, and the database dropped when the scope closes.
 *
 * ```ts
 * import { PgTest } from "@meshhook/pool/testing"
 *
 * layer(PgTest.layer({ migrations: new URL("../migrations", import.meta.url), role: "app_worker" }))(
 *   "jobs", (it) => {
 *     it.effect("claims the oldest job", () => ...)
 *   })
 * ```
 *
 * The server is the one at `PGPOOL_TEST_ADMIN_URL` (a superuser URL; start
 * one per test run with `PgServer.make` in a vitest `globalSetup`), or else a
 * throwaway server started for the layer alone.
 *
 * @since 0.1.0
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Schema from "effect/Schema"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import type { SqlError } from "effect/sql/SqlError"
import { createHash, randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as Pool from "../Pool.ts"
import type * as PoolConfig from "../PoolConfig.ts"
import type * as PoolError from "../PoolError.ts"
import * as SqlState from "../internal/postgres/sqlState.ts"
import * as SqlText from "../internal/postgres/sqlText.ts"
import * as PgServer from "./PgServer.ts"

/**
 * Setting up the test database failed: the server could not be reached, a
 * migration failed (`file` names it), or the options are wrong.
 *
 * @since 0.1.0
 * @category errors
 */
export class PgTestError extends Schema.TaggedError<PgTestError>()("PgTestError", {
  message: Schema.String,
  /** The migration file that failed. */
  file: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect())
}) {}

/**
 * Where the test database is, and a way in as its owner.
 *
 * @since 0.1.0
 * @category models
 */
export interface TestDatabase {
  /** The database's name, fresh for each set-up. */
  readonly name: string
  /** The URL the pool connects with: `role` when given, else the superuser. */
  readonly url: Redacted.Redacted<string>
  /** A superuser URL for this database. */
  readonly adminUrl: Redacted.Redacted<string>
  /** Runs SQL as the superuser on this database (seeding, checks from the side): row-level security does not apply. */
  readonly admin: (
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<Readonly<Record<string, unknown>>>, SqlError>
}

/**
 * The {@link TestDatabase} of the current test.
 *
 * @since 0.1.0
 * @category services
 */
export class Database extends Context.Service<Database, TestDatabase>()("@meshhook/pool/testing/PgTest/Database") {}

/**
 * {@link createDatabase}'s options.
 *
 * @since 0.1.0
 * @category models
 */
export interface DatabaseOptions {
  /** A folder of `.sql` files applied in name order, each in a transaction, as the superuser. */
  readonly migrations?: string | URL | undefined
  /**
   * A login role without superuser or `BYPASSRLS` for the pool to connect
   * as, so that row-level security applies. It is created before the
   * migrations (which grant it what it needs) and kept: roles belong to the
   * server, and every database on it may share them.
   */
  readonly role?: string | undefined
  /**
   * How long `role` lives: `server` (the default) creates it if missing and
   * keeps it, for test servers where many databases share it; `database`
   * requires that it does not exist yet, and drops it with the database, for
   * a server where nothing outside the database may be changed or left
   * behind (an existing role of that name is refused, never altered).
   */
  readonly roleLifetime?: "server" | "database" | undefined
  /** The database's name; fresh and random by default. */
  readonly name?: string | undefined
}

/**
 * {@link layer}'s options: {@link DatabaseOptions}, the server, and the
 * pool's options (its connection settings are the test database's).
 *
 * @since 0.1.0
 * @category models
 */
export interface Options extends DatabaseOptions {
  /** A superuser URL of the server to use. Default: `PGPOOL_TEST_ADMIN_URL`, else a throwaway server. */
  readonly adminUrl?: string | Redacted.Redacted<string> | undefined
  readonly pool?: PoolConfig.Options | undefined
}

const identifier = /^[a-z_][a-z0-9_]{0,62}$/

const withPath = (url: string, database: string, credentials?: { user: string; password: string }) => {
  const parsed = new URL(url)
  parsed.pathname = `/${database}`
  if (credentials !== undefined) {
    parsed.username = credentials.user
    parsed.password = credentials.password
  }
  return parsed.toString()
}

/** The migration files in `folder`, in name order. */
const migrationFiles = (folder: string | URL): Effect.Effect<Array<string>, PgTestError> =>
  Effect.try({
    try: () => {
      const dir = typeof folder === "string" ? folder : fileURLToPath(folder)
      return Fs.readdirSync(dir).filter((f) => f.endsWith(".sql")).sort().map((f) => Path.join(dir, f))
    },
    catch: (cause) => new PgTestError({ message: `Cannot read the migrations folder ${String(folder)}`, cause })
  })

const migrate = (connection: PgConnection.PgConnection, file: string) =>
  Effect.gen(function*() {
    const script = yield* Effect.try({
      try: () => Fs.readFileSync(file, "utf8"),
      catch: (cause) => new PgTestError({ message: `Cannot read migration ${file}`, file, cause })
    })
    yield* connection.query("BEGIN", [], false)
    for (const statement of SqlText.statements(script)) yield* connection.query(statement, [], false)
    yield* connection.query("COMMIT", [], false)
  }).pipe(
    Effect.mapError((cause) =>
      cause._tag === "PgTestError"
        ? cause
        : new PgTestError({ message: `Migration ${Path.basename(file)} failed: ${SqlState.describe(cause)}`, file, cause })
    ),
    Effect.tapError(() => Effect.ignore(connection.query("ROLLBACK", [], false)))
  )

const setupError = (message: string) => (cause: SqlError) =>
  new PgTestError({ message: `${message}: ${SqlState.describe(cause)}`, cause })

/**
 * Creates a fresh database on the server behind `adminUrl` (a superuser
 * URL), creates `role` if it is missing, applies the migrations, and drops
 * the database when the scope closes.
 *
 * The role's password is derived from the superuser's, so that every set-up
 * on one server agrees on it without sharing state.
 *
 * @since 0.1.0
 * @category constructors
 */
export const createDatabase = (
  adminUrl: Redacted.Redacted<string>,
  options: DatabaseOptions = {}
): Effect.Effect<TestDatabase, PgTestError, Scope.Scope> =>
  Effect.gen(function*() {
    const name = options.name ?? `test_${randomBytes(6).toString("hex")}`
    yield* checkNames(name, options.role)
    const files = options.migrations === undefined ? [] : yield* migrationFiles(options.migrations)
    const server = yield* PgConnection.make({ url: adminUrl, applicationName: "pgtest-setup" }).pipe(
      Effect.mapError(setupError("Cannot reach the test server"))
    )
    yield* server.query(`CREATE DATABASE "${name}"`, [], false).pipe(Effect.mapError(setupError("CREATE DATABASE failed")))
    yield* Effect.addFinalizer(() => Effect.ignore(server.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`, [], false)))
    const serverUrl = Redacted.value(adminUrl)
    const login = options.role === undefined
      ? undefined
      : options.roleLifetime === "database"
      ? yield* databaseRole(server, name, options.role)
      : yield* serverRole(server, serverUrl, options.role)
    const owner = yield* PgConnection.make({ url: Redacted.make(withPath(serverUrl, name)), applicationName: "pgtest-owner" }).pipe(
      Effect.mapError(setupError("Cannot connect to the test database"))
    )
    for (const file of files) yield* migrate(owner, file)
    return {
      name,
      url: Redacted.make(withPath(serverUrl, name, login)),
      adminUrl: Redacted.make(withPath(serverUrl, name)),
      admin: (sql, params = []) => Effect.map(owner.query(sql, params), (result) => result.rows)
    }
  })

/** The database's and the role's names go into SQL as they are: only plain lower-case identifiers pass. */
const checkNames = (name: string, role: string | undefined): Effect.Effect<void, PgTestError> => {
  for (const [what, value] of [["name", name], ["role", role]] as const) {
    if (value !== undefined && !identifier.test(value)) {
      return Effect.fail(new PgTestError({ message: `PgTest: ${what} ${JSON.stringify(value)} is not a lower-case SQL identifier` }))
    }
  }
  return Effect.void
}

/** A role that must not exist yet, with a random password, dropped with the database `name`. */
const databaseRole = (server: PgConnection.PgConnection, name: string, role: string) =>
  Effect.gen(function*() {
    const password = randomBytes(18).toString("base64url")
    yield* server.query(`CREATE ROLE ${role} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '${password}'`, [], false).pipe(
      Effect.mapError((cause) =>
        SqlState.sqlStateOf(cause) === "42710"
          ? new PgTestError({
            message: `A role ${role} exists already on this server: it is not changed. Drop it, or use another server.`,
            cause
          })
          : setupError(`Cannot create the role ${role}`)(cause)
      )
    )
    // The database goes first: the role owns what was granted to it there.
    yield* Effect.addFinalizer(() =>
      Effect.ignore(Effect.andThen(
        server.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`, [], false),
        server.query(`DROP ROLE IF EXISTS ${role}`, [], false)
      ))
    )
    return { user: role, password }
  })

/** A role kept on the server, made if missing, with a password derived from the superuser's URL. */
const serverRole = (server: PgConnection.PgConnection, serverUrl: string, role: string) =>
  Effect.gen(function*() {
    const password = createHash("sha256").update(`${serverUrl}:${role}`).digest("base64url")
    // Concurrent set-ups may race to create it; both then agree on the password.
    yield* server.query(
      `DO $$ BEGIN
         CREATE ROLE ${role} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '${password}';
       EXCEPTION WHEN duplicate_object OR unique_violation THEN
         ALTER ROLE ${role} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '${password}';
       END $$`,
      [],
      false
    ).pipe(Effect.mapError(setupError(`Cannot create the role ${role}`)))
    return { user: role, password }
  })

/** The server's superuser URL: given, from `PGPOOL_TEST_ADMIN_URL`, or a throwaway server's. */
const serverUrl = (given: Options["adminUrl"]) =>
  Effect.gen(function*() {
    if (given !== undefined) return Redacted.isRedacted(given) ? given : Redacted.make(given)
    const fromEnv = yield* Config.option(Config.Redacted(environment.adminUrl))
    if (Option.isSome(fromEnv)) return fromEnv.value
    const server = yield* PgServer.make()
    return server.url()
  })

/**
 * The environment variable {@link layer} reads.
 *
 * @since 0.1.0
 * @category config
 */
export const environment = { adminUrl: "PGPOOL_TEST_ADMIN_URL" } as const

/**
 * The pool's services (`Pool`, `SqlClient`, `PgClient`) on a fresh test database, and
 * {@link Database} to seed and inspect it. Closing the scope closes the pool,
 * then drops the database (and stops the server, if the layer started one).
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<
  Pool.Services | Database,
  PgTestError | PgServer.PgServerError | Config.ConfigError | PoolError.PoolConfigError | PoolError.DatabaseUnavailableError
> =>
  Layer.unwrap(Effect.gen(function*() {
    const database = yield* createDatabase(yield* serverUrl(options.adminUrl), options)
    return Layer.merge(
      Pool.layer({ ...options.pool, url: database.url }),
      Layer.succeed(Database, database)
    )
  }))
