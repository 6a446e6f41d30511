/**
 * A throwaway PgBouncer for tests, in front of a PostgreSQL server (a
 * `PgServer`, or any server whose superuser you know).
 *
 * ```ts
 * const server = yield* PgServer.make()
 * const bouncer = yield* PgBouncer.make({ upstream: server, defaultPoolSize: 2 })
 * const PoolLive = Pool.layer({ url: bouncer.url({ user: "app", password }), prepare: false })
 * ```
 *
 * It runs the machine's `pgbouncer` (`MESHHOOK_PGBOUNCER_BIN`, else the one on
 * `PATH`, else `/usr/sbin/pgbouncer`; Debian's package is `pgbouncer`). It
 * listens on 127.0.0.1 only, on a free port, in transaction pooling mode by
 * default, and forwards every database name to the upstream server. PgBouncer
 * refuses to run as root, so under root it runs as the `postgres` user (or
 * `nobody`), as `PgServer` does. Closing the scope stops it and deletes its
 * directory.
 *
 * Authentication: any login role of the upstream server connects with its own
 * password, and clients authenticate with SCRAM-SHA-256. The upstream
 * superuser is the `auth_user` and the one entry of the `auth_file`, with its
 * password in plain text (the file is readable by PgBouncer's account alone),
 * so that PgBouncer can log in to the server as it. Every other role is looked
 * up with an `auth_query` on `pg_authid` (run as that superuser, in the
 * database the client asks for), which returns the role's stored secret: with
 * PostgreSQL's default `password_encryption = scram-sha-256`, a SCRAM secret.
 * PgBouncer (since 1.14; tested with Debian 12's 1.18) checks the client's
 * SCRAM proof against it, which yields the client key, and logs in to the
 * server with that key (SCRAM pass-through): no application role's password
 * is written anywhere, and roles created after start-up work at once. A role
 * with an MD5 secret would need MD5 clients.
 *
 * What tests behind it should know (PgBouncer 1.18, `test/pgbouncer.pg.test.ts`):
 * - A login needs a server connection: roles looked up by `auth_query` take
 *   one from the superuser's pool (the same database), and a login waits for
 *   a free one in its own pool too. Saturate either and new logins wait, then
 *   fail with `query_wait_timeout`.
 * - Named prepared statements are not supported in transaction mode: a
 *   statement prepared on one server connection is unknown on the next
 *   (SQLSTATE 26000). Give the pool `prepare: false`.
 * - Session state (`set_config(..., false)`, `SET`, `SET ROLE`, advisory
 *   locks) stays on the server connection for the next client, whatever the
 *   client does with its own connection. `settings: { server_reset_query_always: 1 }`
 *   runs `DISCARD ALL` after every transaction.
 * - Refusals are `FATAL` errors with SQLSTATE `08P01` (max_client_conn,
 *   query_wait_timeout, server_login_retry, and also bad passwords and
 *   unknown roles), sent just before PgBouncer closes the connection.
 *
 * The admin console (`admin`) speaks only the simple query protocol, which
 * `PgConnection` does not; a small client of this module's does it.
 *
 * Over 300 lines: the settings that make PgBouncer stand in for a real
 * pooler in tests, its process, and its admin console.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Process from "./internal/process.ts"
import { simpleQuery, type Target } from "./internal/simpleQuery.ts"

/**
 * Preparing, starting or stopping PgBouncer failed. `log` holds its last
 * output lines.
 *
 * @since 0.1.0
 * @category errors
 */
export class PgBouncerError extends Schema.TaggedError<PgBouncerError>()("PgBouncerError", {
  message: Schema.String,
  /** PgBouncer's last output lines. */
  log: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect())
}) {}

/**
 * The PostgreSQL server PgBouncer forwards to, and its superuser: a
 * `PgServer.PgServer` is one.
 *
 * @since 0.1.0
 * @category models
 */
export interface Upstream {
  readonly host: string
  readonly port: number
  /** A superuser (it reads `pg_authid` for the other roles' secrets). */
  readonly user: string
  readonly password: Redacted.Redacted<string> | string
}

/**
 * PgBouncer's pooling modes.
 *
 * @since 0.1.0
 * @category models
 */
export type PoolMode = "session" | "transaction" | "statement"

/**
 * Options for {@link make}. Durations are rounded to milliseconds and given
 * to PgBouncer in seconds; unset options keep PgBouncer's defaults.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly upstream: Upstream
  /** The `pgbouncer` binary. Defaults to `MESHHOOK_PGBOUNCER_BIN`, then `PATH`, then `/usr/sbin/pgbouncer`. */
  readonly binary?: string | undefined
  /** `pool_mode`. Default `transaction`. */
  readonly poolMode?: PoolMode | undefined
  /** `default_pool_size`: server connections per user and database. PgBouncer's default is 20. */
  readonly defaultPoolSize?: number | undefined
  /** `max_client_conn`: client connections in all; past it, new ones are refused. PgBouncer's default is 100. */
  readonly maxClientConn?: number | undefined
  /** `max_db_connections`: server connections per database, all users together. Default unlimited. */
  readonly maxDbConnections?: number | undefined
  /** `query_wait_timeout`: longest a client's query waits for a server connection before the client is disconnected. PgBouncer's default is 120 s. */
  readonly queryWaitTimeout?: Duration.Input | undefined
  /** `server_lifetime`: server connections older than this are closed when released. PgBouncer's default is 3600 s. */
  readonly serverLifetime?: Duration.Input | undefined
  /** `server_idle_timeout`: idle server connections are closed after this. PgBouncer's default is 600 s. */
  readonly serverIdleTimeout?: Duration.Input | undefined
  /**
   * More `[pgbouncer]` settings, after the ones above (and winning over them).
   * The defaults include `server_login_retry = 1` (PgBouncer's is 15 s: the
   * pause after a failed server login), so tests recover quickly.
   */
  readonly settings?: Readonly<Record<string, string | number>> | undefined
}

/**
 * A running PgBouncer.
 *
 * @since 0.1.0
 * @category models
 */
export interface PgBouncer {
  readonly host: string
  readonly port: number
  /** A connection URL through PgBouncer; defaults to the upstream superuser and `postgres`. */
  readonly url: (options?: {
    readonly user?: string | undefined
    readonly password?: string | undefined
    readonly database?: string | undefined
  }) => Redacted.Redacted<string>
  /** Immediate shutdown (`SIGTERM`): clients are disconnected, transactions in flight are lost. */
  readonly stop: Effect.Effect<void, PgBouncerError>
  /** A crash (`SIGKILL`): sockets are closed by the kernel, nothing is said to clients or the server. */
  readonly kill: Effect.Effect<void, PgBouncerError>
  /** Starts a stopped PgBouncer again, on the same port. */
  readonly start: Effect.Effect<void, PgBouncerError>
  /** PgBouncer's current PID, or `undefined` while it is stopped. */
  readonly pid: () => number | undefined
  /** PgBouncer's last output lines (its log), across restarts. */
  readonly log: () => string
  /**
   * Runs a command on the admin console (the `pgbouncer` virtual database),
   * as the upstream superuser: `SHOW POOLS`, `SHOW CLIENTS`, `RELOAD`, ...
   * Values come back as text.
   */
  readonly admin: (command: string) => Effect.Effect<ReadonlyArray<Readonly<Record<string, string | null>>>, PgBouncerError>
  /** Server connections PgBouncer holds (`SHOW POOLS`, every state), for one database and user, or all. */
  readonly serverConnections: (
    options?: { readonly database?: string | undefined; readonly user?: string | undefined }
  ) => Effect.Effect<number, PgBouncerError>
}

const defaultBinary = "/usr/sbin/pgbouncer"

/** The `SHOW POOLS` columns that count server connections, one per state (PgBouncer 1.18). */
const serverColumns = ["sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login"]

/**
 * The server connections of one `SHOW POOLS` row, in every state.
 *
 * @since 0.1.0
 * @category utils
 */
export const serverCount = (row: Readonly<Record<string, string | null>>): number =>
  serverColumns.reduce((n, column) => n + Number(row[column] ?? 0), 0)

const isExecutable = (file: string): boolean => {
  try {
    Fs.accessSync(file, Fs.constants.X_OK)
    return Fs.statSync(file).isFile()
  } catch {
    return false
  }
}

/**
 * The `pgbouncer` binary {@link make} would run: `explicit`, else
 * `MESHHOOK_PGBOUNCER_BIN`, else the first on `PATH`, else
 * `/usr/sbin/pgbouncer`; `undefined` when none of them exists. Tests use it
 * to skip when PgBouncer is not installed.
 *
 * @since 0.1.0
 * @category utils
 */
export const findBinary = (explicit?: string): string | undefined => {
  const chosen = explicit ?? process.env.MESHHOOK_PGBOUNCER_BIN
  if (chosen !== undefined && chosen !== "") return isExecutable(chosen) ? chosen : undefined
  for (const dir of (process.env.PATH ?? "").split(Path.delimiter)) {
    if (dir === "") continue
    const file = Path.join(dir, "pgbouncer")
    if (isExecutable(file)) return file
  }
  return isExecutable(defaultBinary) ? defaultBinary : undefined
}

/** Who PgBouncer runs as: ourselves, or an unprivileged account when we are root. */
const runAsUser = (): Process.RunAs | undefined =>
  Process.runAsUser((accounts) => new PgBouncerError({ message: `Running as root, and ${accounts} to run PgBouncer` }))

const dirPrefix = "meshhook-pgbouncer-"

/** The PID of the PgBouncer whose files are in `root`, as its start wrote it. */
const bouncerPid = (root: string): number => Number(Fs.readFileSync(Path.join(root, "pgbouncer.pid"), "utf8"))

const seconds = (input: Duration.Input): string => {
  const millis = Math.round(Duration.toMillis(Duration.fromInputUnsafe(input)))
  return String(millis / 1000)
}

/** An `auth_file` field: double-quoted, inner quotes doubled. */
const quoted = (value: string): string => `"${value.replaceAll("\"", "\"\"")}"`

/**
 * The stored secret of a login role whose password has not expired. It runs
 * as the `auth_user`, which must be able to read `pg_authid` (a superuser).
 */
const authQuery = "SELECT rolname::text AS usename, CASE WHEN rolvaliduntil IS NULL OR rolvaliduntil > now() " +
  "THEN rolpassword END AS passwd FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolcanlogin"

const settingsOf = (options: Options, port: number, authFile: string): Record<string, string | number> => {
  const optional = (name: string, value: number | undefined) => value === undefined ? {} : { [name]: value }
  const optionalTime = (name: string, value: Duration.Input | undefined) =>
    value === undefined ? {} : { [name]: seconds(value) }
  return {
    listen_addr: "127.0.0.1",
    listen_port: port,
    unix_socket_dir: "",
    auth_type: "scram-sha-256",
    auth_file: authFile,
    auth_user: options.upstream.user,
    auth_query: authQuery,
    admin_users: options.upstream.user,
    pool_mode: options.poolMode ?? "transaction",
    ignore_startup_parameters: "extra_float_digits",
    server_login_retry: 1,
    ...optional("default_pool_size", options.defaultPoolSize),
    ...optional("max_client_conn", options.maxClientConn),
    ...optional("max_db_connections", options.maxDbConnections),
    ...optionalTime("query_wait_timeout", options.queryWaitTimeout),
    ...optionalTime("server_lifetime", options.serverLifetime),
    ...optionalTime("server_idle_timeout", options.serverIdleTimeout),
    ...options.settings
  }
}

const configFile = (upstream: Upstream, settings: Record<string, string | number>): string => {
  const lines = [
    "[databases]",
    `* = host=${upstream.host} port=${upstream.port}`,
    "",
    "[pgbouncer]"
  ]
  for (const [name, value] of Object.entries(settings)) {
    if (/[\n\r]/.test(`${name}${value}`)) throw new PgBouncerError({ message: `PgBouncer setting ${name}: line breaks are not allowed` })
    lines.push(`${name} = ${value}`)
  }
  return `${lines.join("\n")}\n`
}

/** Starts `pgbouncer` and resolves once it listens. */
const launch = (
  binary: string,
  config: string,
  runAs: Process.RunAs | undefined,
  onLog: (chunk: string) => void,
  recentLog: () => string
): Promise<Process.Running> =>
  new Promise((resolve, reject) => {
    const child = spawn(binary, [config], {
      ...runAs,
      stdio: ["ignore", "pipe", "pipe"],
      env: { PATH: process.env.PATH, LC_ALL: "C", TZ: "UTC" }
    })
    const exited = new Promise<void>((done) => child.once("exit", () => done()))
    let seen = ""
    let ready = false
    const onData = (chunk: Buffer) => {
      const text = chunk.toString()
      onLog(text)
      seen = (seen + text).slice(-4000)
      if (!ready && seen.includes("process up")) {
        ready = true
        resolve({ child, exited })
      }
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.once("error", (cause) => reject(new PgBouncerError({ message: `Cannot run ${binary}`, cause })))
    child.once("exit", (code, signal) => {
      if (!ready) {
        reject(new PgBouncerError({ message: `pgbouncer exited during start-up (${code ?? signal})`, log: recentLog() }))
      }
    })
  })

const fail = (message: string) => (cause: unknown) =>
  cause instanceof PgBouncerError ? cause : new PgBouncerError({ message, cause })

/**
 * Starts PgBouncer in front of `options.upstream` for the life of the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options): Effect.Effect<PgBouncer, PgBouncerError, Scope.Scope> =>
  Effect.gen(function*() {
    const upstream = options.upstream
    const superPassword = Redacted.isRedacted(upstream.password) ? Redacted.value(upstream.password) : upstream.password
    const port = yield* Effect.promise(Process.freePort)
    const setup = yield* prepare(options, port, superPassword)
    const bouncer = yield* bouncerProcess(setup)
    const host = "127.0.0.1"
    const admin = adminConsole({ host, port, user: upstream.user, password: superPassword, database: "pgbouncer" })
    return {
      host,
      port,
      url: Process.urls(host, port, upstream.user, superPassword),
      ...bouncer,
      admin,
      serverConnections: (filter = {}) =>
        Effect.map(admin("SHOW POOLS"), (rows) =>
          rows
            .filter((row) =>
              row.database !== "pgbouncer" &&
              (filter.database === undefined || row.database === filter.database) &&
              (filter.user === undefined || row.user === filter.user)
            )
            .reduce((sum, row) => sum + serverCount(row), 0))
    } satisfies PgBouncer
  })

/** What PgBouncer runs from, and as. */
interface Setup {
  readonly binary: string
  readonly runAs: Process.RunAs | undefined
  readonly root: string
  readonly config: string
}

/** The binary, and a directory with PgBouncer's configuration and `auth_file` in it, removed when the scope closes. */
const prepare = (options: Options, port: number, superPassword: string): Effect.Effect<Setup, PgBouncerError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        const binary = requireBinary(options.binary)
        const runAs = runAsUser()
        Process.reapOrphans(dirPrefix, bouncerPid, "SIGKILL")
        const root = Process.ownedDirectory(dirPrefix)
        const authFile = Path.join(root, "userlist.txt")
        const config = Path.join(root, "pgbouncer.ini")
        Fs.writeFileSync(authFile, `${quoted(options.upstream.user)} ${quoted(superPassword)}\n`, { mode: 0o600 })
        Fs.writeFileSync(config, configFile(options.upstream, settingsOf(options, port, authFile)), { mode: 0o600 })
        if (runAs !== undefined) {
          for (const file of [authFile, config]) Fs.chownSync(file, runAs.uid, runAs.gid)
        }
        return { binary, runAs, root, config }
      },
      catch: fail("Cannot prepare PgBouncer's directory")
    }),
    (setup) => Effect.sync(() => Fs.rmSync(setup.root, { recursive: true, force: true }))
  )

/** The binary {@link findBinary} finds, or why there is none. */
const requireBinary = (explicit: string | undefined): string => {
  const binary = findBinary(explicit)
  if (binary !== undefined) return binary
  const chosen = explicit ?? process.env.MESHHOOK_PGBOUNCER_BIN
  throw new PgBouncerError({
    message: chosen !== undefined && chosen !== ""
      ? `${chosen} is not an executable pgbouncer`
      : "No pgbouncer binary: install Debian's pgbouncer package, or set MESHHOOK_PGBOUNCER_BIN"
  })
}

/**
 * The PgBouncer process: started now, stopped when the scope closes, and
 * stopped, killed or started again on demand; its log kept across restarts.
 */
const bouncerProcess = (
  setup: Setup
): Effect.Effect<Pick<PgBouncer, "start" | "stop" | "kill" | "pid" | "log">, PgBouncerError, Scope.Scope> => {
  let log = ""
  const onLog = (chunk: string) => {
    log = (log + chunk).slice(-16_000)
  }
  let running: Process.Running | undefined
  const start = Effect.tryPromise({
    try: async () => {
      if (running !== undefined) return
      const current = await launch(setup.binary, setup.config, setup.runAs, onLog, () => log)
      running = current
      // For a later run to stop it, should this process die without closing the scope.
      Fs.writeFileSync(Path.join(setup.root, "pgbouncer.pid"), String(current.child.pid))
      void current.exited.then(() => {
        if (running === current) running = undefined
      })
    },
    catch: fail("Cannot start pgbouncer")
  })
  const stopWith = (signal: NodeJS.Signals) =>
    Effect.tryPromise({
      try: async () => {
        const current = running
        running = undefined
        if (current !== undefined) await Process.stop(current, signal, 10_000)
      },
      catch: fail("Cannot stop pgbouncer")
    })
  const stop = stopWith("SIGTERM")
  const controls = { start, stop, kill: stopWith("SIGKILL"), pid: () => running?.child.pid, log: () => log }
  return Effect.as(Effect.acquireRelease(start, () => Effect.orDie(stop)), controls)
}

/** Runs commands on the admin console, one connection each. */
const adminConsole = (target: Target): PgBouncer["admin"] => (command) =>
  Effect.tryPromise({
    try: () => simpleQuery(target, command),
    catch: fail(`PgBouncer admin command failed: ${command}`)
  })
