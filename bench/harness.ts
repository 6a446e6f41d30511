/**
 * The benchmark harness: contenders run in alternation, round after round, so
 * that the machine's drift hits them alike; each round is a closed loop of
 * `concurrency` callers for a fixed time after a warm-up. Reports medians,
 * the min-max spread over rounds, and ratios to a baseline.
 */
import * as Os from "node:os"

export interface Contender {
  readonly name: string
  /** Prepares the contender once (connections, statements); returns its operation and a teardown. */
  readonly setup: () => Promise<{ readonly op: () => Promise<unknown>; readonly close: () => Promise<void> }>
}

export interface RoundResult {
  readonly opsPerSecond: number
  readonly p50Millis: number
  readonly p99Millis: number
  readonly errors: number
}

export interface Summary {
  readonly name: string
  readonly rounds: ReadonlyArray<RoundResult>
  readonly median: RoundResult
  readonly min: number
  readonly max: number
}

const percentile = (sorted: Float64Array, p: number): number =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]

const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/** Runs `op` from `concurrency` closed loops for `millis`, recording each operation's latency. */
export const closedLoop = async (
  op: () => Promise<unknown>,
  concurrency: number,
  millis: number
): Promise<RoundResult> => {
  const latencies: Array<number> = []
  let errors = 0
  const started = performance.now()
  const until = started + millis
  const loop = async () => {
    while (performance.now() < until) {
      const t0 = performance.now()
      try {
        await op()
        latencies.push(performance.now() - t0)
      } catch {
        errors++
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, loop))
  const elapsed = (performance.now() - started) / 1_000
  const sorted = Float64Array.from(latencies).sort()
  return {
    opsPerSecond: latencies.length / elapsed,
    p50Millis: percentile(sorted, 0.5),
    p99Millis: percentile(sorted, 0.99),
    errors
  }
}

export interface RunOptions {
  readonly rounds: number
  readonly roundMillis: number
  readonly warmupMillis: number
  readonly concurrency: number
  readonly log?: (line: string) => void
}

/** Sets every contender up, then runs them in alternation for `rounds` rounds. */
export const compare = async (
  contenders: ReadonlyArray<Contender>,
  options: RunOptions
): Promise<Array<Summary>> => {
  const log = options.log ?? ((line: string) => console.error(line))
  const prepared = []
  for (const contender of contenders) prepared.push({ contender, ...(await contender.setup()) })
  const results = new Map<string, Array<RoundResult>>(contenders.map((c) => [c.name, []]))
  try {
    for (const { op } of prepared) await closedLoop(op, options.concurrency, options.warmupMillis)
    for (let round = 0; round < options.rounds; round++) {
      // Rotate the starting contender each round as well.
      for (let i = 0; i < prepared.length; i++) {
        const { contender, op } = prepared[(i + round) % prepared.length]
        const result = await closedLoop(op, options.concurrency, options.roundMillis)
        results.get(contender.name)!.push(result)
        log(
          `  round ${round + 1}/${options.rounds} ${contender.name.padEnd(36)} ${result.opsPerSecond.toFixed(0).padStart(7)}/s` +
            `  p50 ${result.p50Millis.toFixed(2)} ms  p99 ${result.p99Millis.toFixed(2)} ms${result.errors ? `  errors ${result.errors}` : ""}`
        )
      }
    }
  } finally {
    for (const { close } of prepared) await close()
  }
  return contenders.map(({ name }) => {
    const rounds = results.get(name)!
    const throughput = rounds.map((r) => r.opsPerSecond)
    return {
      name,
      rounds,
      median: {
        opsPerSecond: median(throughput),
        p50Millis: median(rounds.map((r) => r.p50Millis)),
        p99Millis: median(rounds.map((r) => r.p99Millis)),
        errors: rounds.reduce((sum, r) => sum + r.errors, 0)
      },
      min: Math.min(...throughput),
      max: Math.max(...throughput)
    }
  })
}

/** A Markdown table of the summaries, with throughput ratios to the first. */
export const table = (summaries: ReadonlyArray<Summary>): string => {
  const base = summaries[0].median.opsPerSecond
  const lines = [
    "| contender | ops/s (median) | min-max | vs first | p50 ms | p99 ms | errors |",
    "|---|---|---|---|---|---|---|"
  ]
  for (const s of summaries) {
    lines.push(
      `| ${s.name} | ${s.median.opsPerSecond.toFixed(0)} | ${s.min.toFixed(0)}-${s.max.toFixed(0)} | ${
        (s.median.opsPerSecond / base).toFixed(2)
      }x | ${s.median.p50Millis.toFixed(2)} | ${s.median.p99Millis.toFixed(2)} | ${s.median.errors} |`
    )
  }
  return lines.join("\n")
}

/** The machine, for the record. */
export const machine = (): string => {
  const cpus = Os.cpus()
  return `${cpus.length} x ${cpus[0]?.model ?? "unknown CPU"}, ${(Os.totalmem() / 2 ** 30).toFixed(0)} GiB, ` +
    `${Os.type()} ${Os.release()}, Node ${process.version}`
}
