/**
 * pgbench as a contender: PostgreSQL's own C client, the machine's limit for
 * a given number of connections. Latencies come from its per-transaction log.
 */
import { spawn, spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import type { Contender } from "./harness.ts"
import { latencyStats } from "./harness.ts"

/** pgbench's path, or `undefined` when the machine has none. */
export const pgbenchPath = (): string | undefined => {
  const found = spawnSync("sh", ["-c", "command -v pgbench"], { encoding: "utf8" }).stdout.trim()
  return found === "" ? undefined : found
}

export interface PgbenchTarget {
  readonly url: string
  readonly connections: number
  readonly applicationName: string
}

const envFor = (url: string, applicationName: string): NodeJS.ProcessEnv => {
  const parsed = new URL(url)
  return {
    PATH: process.env.PATH,
    PGHOST: parsed.hostname,
    PGPORT: parsed.port,
    PGUSER: decodeURIComponent(parsed.username),
    PGPASSWORD: decodeURIComponent(parsed.password),
    PGDATABASE: decodeURIComponent(parsed.pathname.slice(1)),
    PGAPPNAME: applicationName
  }
}

/** Runs pgbench to completion; rejects with its output on failure. */
export const runPgbench = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv, cwd?: string): Promise<string> =>
  new Promise((resolve, reject) => {
    const child = spawn(pgbenchPath() ?? "pgbench", args, { env, cwd, stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    child.stdout.on("data", (chunk) => output += chunk)
    child.stderr.on("data", (chunk) => output += chunk)
    child.once("error", reject)
    child.once("exit", (code) => code === 0 ? resolve(output) : reject(new Error(`pgbench failed (${code}):\n${output}`)))
  })

/** A pgbench contender running `script` (a pgbench script's text) with `-M prepared`. */
export const pgbench = (name: string, target: PgbenchTarget, script: string): Contender => ({
  name,
  applicationName: target.applicationName,
  setup: async () => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "meshhook-pgbench-"))
    const scriptFile = Path.join(dir, "script.sql")
    Fs.writeFileSync(scriptFile, script)
    const env = envFor(target.url, target.applicationName)
    return {
      round: async (millis) => {
        for (const file of Fs.readdirSync(dir)) if (file.startsWith("log")) Fs.rmSync(Path.join(dir, file))
        const seconds = Math.max(1, Math.round(millis / 1_000))
        const output = await runPgbench([
          "-n",
          "-M",
          "prepared",
          "-c",
          String(target.connections),
          "-j",
          String(Math.min(target.connections, Os.cpus().length)),
          "-T",
          String(seconds),
          "-l",
          "--log-prefix=log",
          "-f",
          scriptFile
        ], env, dir)
        const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(output)?.[1] ?? NaN)
        const failed = Number(/number of failed transactions: (\d+)/.exec(output)?.[1] ?? 0)
        const latencies: Array<number> = []
        for (const file of Fs.readdirSync(dir)) {
          if (!file.startsWith("log")) continue
          for (const line of Fs.readFileSync(Path.join(dir, file), "utf8").split("\n")) {
            const fields = line.split(" ")
            if (fields.length >= 3) latencies.push(Number(fields[2]) / 1_000)
          }
        }
        return { opsPerSecond: tps, ...latencyStats(latencies), errors: failed, cpuPercent: NaN }
      },
      close: async () => Fs.rmSync(dir, { recursive: true, force: true })
    }
  }
})
