/**
 * What the throwaway servers (`PgServer`, `PgBouncer`) share about the
 * processes they start: the unprivileged account to run them as when we are
 * root, free loopback ports, and whether a process is still alive.
 *
 * @internal
 */
import * as Fs from "node:fs"
import * as Net from "node:net"

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

/**
 * Whether a process exists (one of another user's counts).
 *
 * @internal
 */
export const isAlive = (pid: number): boolean => {
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
