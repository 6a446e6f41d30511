/**
 * What the throwaway servers (`PgServer`, `PgBouncer`) share about the
 * processes they start: the unprivileged account to run them as when we are
 * root, free loopback ports, the directory each keeps its files in (and
 * what a process that died leaves behind there), stopping one, and the URL
 * of a server on loopback.
 *
 * @internal
 */
import * as Redacted from "effect/Redacted"
import type { ChildProcess } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"

/**
 * The account a child process runs as, for `spawn`'s `uid` and `gid`.
 *
 * @internal
 */
export interface RunAs {
  readonly uid: number
  readonly gid: number
}

/**
 * Who a server runs as: ourselves, or an unprivileged account (`postgres`,
 * else `nobody`) when we are root, since neither PostgreSQL nor PgBouncer
 * runs as root. Throws what `onMissing` makes when there is no such account.
 *
 * @internal
 */
export const runAsUser = (onMissing: (accounts: string) => Error): RunAs | undefined => {
  if (process.getuid?.() !== 0) return undefined
  const passwd = Fs.readFileSync("/etc/passwd", "utf8").split("\n").map((line) => line.split(":"))
  for (const name of ["postgres", "nobody"]) {
    const entry = passwd.find((fields) => fields[0] === name)
    if (entry !== undefined) return { uid: Number(entry[2]), gid: Number(entry[3]) }
  }
  throw onMissing("neither a postgres nor a nobody account exists")
}

/** Whether a process exists (one of another user's counts). */
const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/**
 * A TCP port on 127.0.0.1 that was free a moment ago.
 *
 * @internal
 */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address() as Net.AddressInfo
      server.close(() => resolve(address.port))
    })
  })

/**
 * A fresh directory under the system's temporary one, named `prefix` and a
 * random suffix, that names its owner (this process) in a file `owner`: a
 * later run removes what a process that died without closing its scope left
 * behind. Readable by all, so that a server running as another account can
 * enter it.
 *
 * @internal
 */
export const ownedDirectory = (prefix: string): string => {
  const root = Fs.mkdtempSync(Path.join(Os.tmpdir(), prefix))
  Fs.chmodSync(root, 0o755)
  Fs.writeFileSync(Path.join(root, "owner"), String(process.pid))
  return root
}

/**
 * Stops the servers left behind by processes that died without stopping
 * them (a test runner killed mid-run), and removes their directories: the
 * {@link ownedDirectory}s named `prefix` whose owner is gone. `serverPid`
 * reads a server's PID in its directory; `signal` stops it.
 *
 * @internal
 */
export const reapOrphans = (prefix: string, serverPid: (root: string) => number, signal: NodeJS.Signals): void => {
  for (const name of Fs.readdirSync(Os.tmpdir())) {
    if (!name.startsWith(prefix)) continue
    const root = Path.join(Os.tmpdir(), name)
    try {
      const owner = Number(Fs.readFileSync(Path.join(root, "owner"), "utf8"))
      if (isAlive(owner)) continue
      const pid = serverPid(root)
      if (pid > 0 && isAlive(pid)) process.kill(pid, signal)
    } catch {
      // No owner or no running server: only the directory is left.
    }
    Fs.rmSync(root, { recursive: true, force: true })
  }
}

/**
 * A server process started, and the promise of its exit.
 *
 * @internal
 */
export interface Running {
  readonly child: ChildProcess
  readonly exited: Promise<void>
}

/**
 * Stops a server with `signal`, and kills it if it has not exited after
 * `graceMillis`; resolves once it has exited.
 *
 * @internal
 */
export const stop = async (running: Running, signal: NodeJS.Signals, graceMillis: number): Promise<void> => {
  if (running.child.exitCode !== null || running.child.signalCode !== null) return
  running.child.kill(signal)
  const timer = setTimeout(() => running.child.kill("SIGKILL"), graceMillis)
  await running.exited
  clearTimeout(timer)
}

/**
 * The connection URLs of a server on `host`: for a role and database given,
 * else `user` (with `password`) and `postgres`.
 *
 * @internal
 */
export const urls = (host: string, port: number, user: string, password: string) =>
(target: {
  readonly user?: string | undefined
  readonly password?: string | undefined
  readonly database?: string | undefined
} = {}): Redacted.Redacted<string> =>
  Redacted.make(
    `postgres://${encodeURIComponent(target.user ?? user)}:${encodeURIComponent(target.password ?? password)}@${host}:${port}/${
      encodeURIComponent(target.database ?? "postgres")
    }`
  )
