/**
 * Runs the project's scripts (the main job, the benchmarks) as a user does, for the end-to-end tests.
 */
import { spawn } from "node:child_process"
import * as Path from "node:path"

/** The project's root. */
export const root = Path.resolve(import.meta.dirname, "..", "..")

/**
 * Runs a script to its end. `interrupt`: in a process group of its own, as a terminal runs it; once its
 * output matches, the whole group gets SIGINT, as from Ctrl-C.
 */
export const run = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}, interrupt?: RegExp) =>
  new Promise<{ readonly code: number | null; readonly output: string }>((resolve) => {
    const { DATABASE_URL: _, ...inherited } = process.env
    const child = spawn(process.execPath, args, { cwd: root, env: { ...inherited, ...env }, detached: interrupt !== undefined })
    let output = ""
    let interrupted = false
    const onOutput = (chunk: Buffer) => {
      output += chunk
      if (interrupt !== undefined && !interrupted && interrupt.test(output)) {
        interrupted = true
        process.kill(-child.pid!, "SIGINT")
      }
    }
    child.stdout.on("data", onOutput)
    child.stderr.on("data", onOutput)
    child.once("exit", (code) => resolve({ code, output }))
  })
