/**
 * The benchmark harness: contenders run in alternation, round after round
 * (the starting contender rotating too), so that the machine's drift hits
 * them alike. Reports medians over rounds, the min-max spread of throughput,
 * and ratios.
 */
import * as Os from "node:os"

export interface RoundResult {
  readonly opsPerSecond: number
  readonly p50Millis: number
  readonly p99Millis: number
  readonly maxMillis: number
  readonly errors: number
  /** Node's CPU time over wall time, in percent of one core; `NaN` for out-of-process contenders. */
  readonly cpuPercent: number
  /** Most server backends the contender held at once during the round. */
  readonly backends: number
}

export interface Prepared {
  readonly round: (millis: number) => Promise<Omit<RoundResult, "backends">>
  readonly close: () => Promise<void>
}

export interface Contender {
  readonly name: string
  /** The `application_name` its connections carry, to count its backends. */
  readonly applicationName: string
  readonly setup: () => Promise<Prepared>
}

export interface Summary {
  readonly name: string
  readonly rounds: ReadonlyArray<RoundResult>
  readonly median: RoundResult
  readonly min: number
  readonly max: number
}

/** `1 round`, `3 rounds`: a count with its noun. */
export const plural = (count: number, noun: string): string => `${count} ${noun}${count === 1 ? "" : "s"}`

export const percentile = (sorted: ArrayLike<number>, p: number): number =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]

export const median = (values: ReadonlyArray<number>): number => {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b)
  if (sorted.length === 0) return NaN
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/** Latency statistics of one round. */
export const latencyStats = (latencies: ArrayLike<number>) => {
  const sorted = Float64Array.from(latencies).sort()
  return {
    p50Millis: percentile(sorted, 0.5),
    p99Millis: percentile(sorted, 0.99),
    maxMillis: sorted.length === 0 ? NaN : sorted[sorted.length - 1]
  }
}

/** `op`, recording its latency when it succeeds and calling `failed` when it does not. */
const timer = (op: () => Promise<unknown>, latencies: Array<number>, failed: () => void) => async (): Promise<void> => {
  const t0 = performance.now()
  try {
    await op()
    latencies.push(performance.now() - t0)
  } catch {
    failed()
  }
}

/** What a round measured, from its latencies and the CPU time Node spent since `started`. */
const roundResult = (
  latencies: ReadonlyArray<number>,
  errors: number,
  cpu: NodeJS.CpuUsage,
  started: number
): Omit<RoundResult, "backends"> => {
  const elapsedMillis = performance.now() - started
  const used = process.cpuUsage(cpu)
  return {
    opsPerSecond: latencies.length / (elapsedMillis / 1_000),
    ...latencyStats(latencies),
    errors,
    cpuPercent: ((used.user + used.system) / 1_000 / elapsedMillis) * 100
  }
}

/** Runs `op` from `concurrency` closed loops for `millis`, recording latencies and Node's CPU time. */
export const closedLoop = async (
  op: () => Promise<unknown>,
  concurrency: number,
  millis: number
): Promise<Omit<RoundResult, "backends">> => {
  const latencies: Array<number> = []
  let errors = 0
  const cpu = process.cpuUsage()
  const started = performance.now()
  const until = started + millis
  const timed = timer(op, latencies, () => errors++)
  const loop = async () => {
    while (performance.now() < until) await timed()
  }
  await Promise.all(Array.from({ length: concurrency }, loop))
  return roundResult(latencies, errors, cpu, started)
}

/** Sends `count` operations at once and waits for all: a spike. */
export const burst = async (op: () => Promise<unknown>, count: number): Promise<Omit<RoundResult, "backends">> => {
  const latencies: Array<number> = []
  let errors = 0
  const cpu = process.cpuUsage()
  const started = performance.now()
  await Promise.all(Array.from({ length: count }, timer(op, latencies, () => errors++)))
  return roundResult(latencies, errors, cpu, started)
}

export interface CompareOptions {
  readonly rounds: number
  readonly roundMillis: number
  readonly warmupMillis: number
  /** Counts the server backends with an application name. */
  readonly backendsOf: (applicationName: string) => Promise<number>
  readonly log?: (line: string) => void
}

/** Samples `count` every 50 ms while `work` runs; returns the work's result and the peak seen. */
const withPeak = async <A>(count: () => Promise<number>, work: Promise<A>): Promise<[A, number]> => {
  let peak = 0
  let done = false
  const sampler = (async () => {
    while (!done) {
      peak = Math.max(peak, await count().catch(() => 0))
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  })()
  try {
    return [await work, peak]
  } finally {
    done = true
    await sampler
  }
}

/** Sets the contenders up, warms them, then runs them in alternation. */
export const compare = async (
  contenders: ReadonlyArray<Contender>,
  options: CompareOptions
): Promise<Array<Summary>> => {
  const log = options.log ?? ((line: string) => console.error(line))
  const prepared: Array<Contender & Prepared> = []
  const results = new Map<string, Array<RoundResult>>(contenders.map((c) => [c.name, []]))
  try {
    for (const contender of contenders) prepared.push({ ...contender, ...(await contender.setup()) })
    for (const contender of prepared) await contender.round(options.warmupMillis)
    for (let round = 0; round < options.rounds; round++) {
      for (let i = 0; i < prepared.length; i++) {
        const contender = prepared[(i + round) % prepared.length]
        const [result, backends] = await withPeak(
          () => options.backendsOf(contender.applicationName),
          contender.round(options.roundMillis)
        )
        results.get(contender.name)!.push({ ...result, backends })
        log(
          `    ${round + 1}/${options.rounds} ${contender.name.padEnd(34)} ${result.opsPerSecond.toFixed(0).padStart(7)}/s` +
            `  p50 ${result.p50Millis.toFixed(2)}  p99 ${result.p99Millis.toFixed(2)} ms  backends ${backends}` +
            (Number.isNaN(result.cpuPercent) ? "" : `  cpu ${result.cpuPercent.toFixed(0)}%`) +
            (result.errors > 0 ? `  errors ${result.errors}` : "")
        )
      }
    }
  } finally {
    for (const contender of prepared) await contender.close()
  }
  return contenders.map(({ name }) => summarize(name, results.get(name)!))
}

export const summarize = (name: string, rounds: ReadonlyArray<RoundResult>): Summary => {
  const throughput = rounds.map((r) => r.opsPerSecond)
  const pick = (f: (r: RoundResult) => number) => median(rounds.map(f))
  return {
    name,
    rounds,
    median: {
      opsPerSecond: pick((r) => r.opsPerSecond),
      p50Millis: pick((r) => r.p50Millis),
      p99Millis: pick((r) => r.p99Millis),
      maxMillis: pick((r) => r.maxMillis),
      errors: rounds.reduce((sum, r) => sum + r.errors, 0),
      cpuPercent: pick((r) => r.cpuPercent),
      backends: Math.max(...rounds.map((r) => r.backends))
    },
    min: Math.min(...throughput),
    max: Math.max(...throughput)
  }
}

/** The machine, for the record. */
export const machine = (): string => {
  const cpus = Os.cpus()
  return `${cpus.length} x ${cpus[0]?.model ?? "unknown CPU"}, ${(Os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, ` +
    `${Os.type()} ${Os.release()}, Node ${process.version}`
}
