/**
 * Adaptive sizing: how many connections the pool may open (its limit),
 * between `min` and `max`, from what the pool measures interval by interval.
 *
 * The pool opens connections only on demand, so the limit matters only while
 * every allowed connection is in use or callers wait ("busy" below). Then the
 * question is whether more connections bring more throughput, or only more
 * queueing inside PostgreSQL. The controller answers it by experiment, as a
 * hill climber on throughput:
 *
 * 1. It starts at `max`: a burst is served at once, as by a fixed pool.
 * 2. While busy, it tries a smaller limit. The step is a sixteenth of the
 *    limit, or more when the time a checkout takes has risen above the
 *    fastest seen (its no-load baseline): at twice the baseline, a quarter.
 *    The smaller limit stays if throughput holds within `dropTolerance` of
 *    the bar (at first, the median of the last busy intervals, so that one
 *    lucky interval does not set it; then the best throughput a step of the
 *    descent has held) and callers' wait plus checkout grows by less than
 *    `latencyTolerance`; the next step is then twice as large. Otherwise the
 *    limit goes back, and stays for `holdIntervals`, twice as long after
 *    each failed trial in a row (up to eight times): a pool that has found
 *    its size stops paying for trials, and one kept trial resets it.
 * 3. After a hold, with callers waiting, it tries a larger limit (an eighth
 *    more, twice as much after each trial kept), kept only if throughput
 *    rises by `gainThreshold`; otherwise back, and hold.
 * 4. A trial the load stops in is undone, and held off like a failure: load
 *    in bursts shorter than a trial teaches nothing.
 * 5. A server that refuses connections for lack of slots (SQLSTATE 53300,
 *    or a pooler's "no more connections") caps the limit at what is open.
 *
 * A trial is judged on the two intervals after the one in which it settles
 * in, so one noisy interval does not decide it. On a noisy host (a loaded
 * machine, a shared database) the tolerances widen to twice the spread seen
 * between steady intervals, up to a fifth: otherwise every trial down would
 * fail on noise and the pool would stay at `max`.
 *
 * Every change has a reason, for the log and the metrics. The controller is
 * a pure state machine: the pool feeds it samples on a timer, tests feed it
 * a simulated database.
 *
 * Over 300 lines: the controller is one state machine whose every step reads
 * what the others learnt, and most of the module is this explanation of it.
 *
 * @internal
 */

/** What the pool measured over one interval. @internal */
export interface Sample {
  /** Checkouts given back (a connection held alone, or a share of one). */
  readonly completions: number
  /** Mean time a checkout was held, in ms (time-weighted in-use over completions). */
  readonly serviceMillis: number
  /** Mean time a caller waited for its checkout, in ms (0 for those served at once). */
  readonly waitMillis: number
  /** Callers waiting at the end of the interval. */
  readonly pending: number
  /** The most connections in use at once. */
  readonly peakUsed: number
  /** Connections open at the end. */
  readonly open: number
  /** Connection attempts the server refused for lack of connection slots. */
  readonly refused: number
  readonly intervalMillis: number
}

/** The controller's settings. @internal */
export interface Settings {
  readonly min: number
  readonly max: number
  /** Share of throughput a smaller limit may lose and still be kept. Default 0.05. */
  readonly dropTolerance?: number | undefined
  /** Share by which a smaller limit may lengthen callers' wait plus checkout and still be kept. Default 0.25. */
  readonly latencyTolerance?: number | undefined
  /** Share of throughput a larger limit must add to be kept. Default 0.1. */
  readonly gainThreshold?: number | undefined
  /** Intervals to stay at a limit after a trial failed (doubling with each failure in a row). Default 10. */
  readonly holdIntervals?: number | undefined
}

/** A change of the limit, what kind of step it is, and why. @internal */
export interface Change {
  readonly from: number
  readonly to: number
  /** `trial_down` / `trial_up`: an experiment; `revert`: it failed; `refused`: the server has no slots. */
  readonly kind: "trial_down" | "trial_up" | "revert" | "refused"
  readonly reason: string
}

/** @internal */
export interface Controller {
  readonly limit: () => number
  /** Takes one interval's sample; returns the change it makes, if any. */
  readonly next: (sample: Sample) => Change | undefined
}

/** Intervals a trial lasts: one to settle in, two measured. */
const trialIntervals = 3

/** The hold after failed trials grows to at most `holdIntervals` × 2^this (80 s at the defaults). */
const maxHoldDoublings = 3

/** Noise widens a tolerance to at most this share: a trial never gives up more throughput than this on noise. */
const maxNoiseTolerance = 0.2

/** The mean absolute difference of two normal draws is this many of their standard deviation (2/√π). */
const meanDifferencePerDeviation = 1.128

interface Trial {
  readonly from: number
  readonly to: number
  /** The throughput to beat (up) or to hold (down), per second. */
  readonly reference: number
  /** Callers' wait plus checkout before the trial, in ms. */
  readonly response: number
  /** Its intervals so far, and the sums of what was measured over the last two. */
  intervals: number
  rate: number
  responseSum: number
  measured: number
}

const percent = (x: number) => `${Math.round(x * 100)}%`

/** @internal */
export const make = (settings: Settings): Controller => new Limiter(settings)

/** What the controller learns of the workload as it goes. */
class Limiter implements Controller {
  private readonly min: number
  private readonly max: number
  private readonly dropTolerance: number
  private readonly latencyTolerance: number
  private readonly gainThreshold: number
  private readonly holdIntervals: number
  private current: number
  private interval = 0
  private holdUntil = 0
  private trial: Trial | undefined = undefined
  /** The fastest mean checkout seen: the no-load baseline. It forgets slowly, as workloads change. */
  private baseline = Infinity
  /** Whether the last interval was busy: the first busy one after a quiet spell is only half a measure. */
  private wasBusy = false
  /** Throughput of the last busy intervals outside trials, per second. */
  private readonly recentRates: Array<number> = []
  /** Callers' wait plus checkout over those intervals (smoothed), in ms. */
  private response = 0
  /** The bar a descent's steps must hold: where it began, then the best a step of it has held. */
  private descentReference = 0
  /** Trials failed in a row: the hold after the next failure is longer. */
  private failedInARow = 0
  /** Trials kept in a row, in the current direction: the next may go further. */
  private downStreak = 0
  private upStreak = 0
  private direction: "down" | "up" = "down"
  /** Relative standard deviation of one busy interval's throughput at a steady limit. */
  private noise = 0
  /** Throughput of the last busy interval, if the limit has not changed since and it was a full measure. */
  private lastSteadyRate: number | undefined = undefined

  constructor(settings: Settings) {
    this.min = settings.min
    this.max = settings.max
    this.dropTolerance = settings.dropTolerance ?? 0.05
    this.latencyTolerance = settings.latencyTolerance ?? 0.25
    this.gainThreshold = settings.gainThreshold ?? 0.1
    this.holdIntervals = settings.holdIntervals ?? 10
    this.current = settings.max
  }

  readonly limit = (): number => this.current

  readonly next = (sample: Sample): Change | undefined => {
    this.interval++
    const rate = sample.completions * 1_000 / Math.max(1, sample.intervalMillis)
    if (sample.completions > 0) this.baseline = Math.min(this.baseline * 1.01, sample.serviceMillis)
    // Every allowed connection was in use, or callers waited: the limit is what decides.
    const busy = sample.pending > 0 || sample.peakUsed >= this.current
    if (sample.refused > 0) return this.refused(sample)
    if (this.trial !== undefined) return this.during(this.trial, sample, rate, busy)
    if (!busy) {
      // The load changed: what was measured before says nothing about what comes.
      this.recentRates.length = 0
      this.wasBusy = false
      this.lastSteadyRate = undefined
      return undefined
    }
    return this.steady(sample, rate)
  }

  /** The server refused connections: the limit holds at what is open. */
  private refused(sample: Sample): Change | undefined {
    this.trial = undefined
    this.holdUntil = this.interval + this.holdIntervals
    return this.change(
      Math.min(this.current, sample.open),
      "refused",
      `the server refused ${sample.refused} connection(s) for lack of slots: holding at ${Math.max(this.min, sample.open)}`
    )
  }

  /** An interval of a trial: measured after the first, judged after the last. */
  private during(trial: Trial, sample: Sample, rate: number, busy: boolean): Change | undefined {
    // The load fell while trying: nothing was learnt, so the limit goes back to where it was proven. Load
    // in bursts shorter than a trial teaches nothing either: it is held off like a failure.
    if (!busy) {
      this.trial = undefined
      this.hold()
      this.recentRates.length = 0
      this.wasBusy = false
      return this.change(trial.from, "revert", `the load stopped during the trial of ${trial.to}: back to ${trial.from}`)
    }
    if (++trial.intervals === 1) return undefined
    this.observeNoise(rate)
    trial.rate += rate
    trial.responseSum += sample.waitMillis + sample.serviceMillis
    trial.measured++
    if (trial.intervals < trialIntervals) return undefined
    this.trial = undefined
    return this.judge(trial)
  }

  /** A busy interval outside a trial: measured, and perhaps the start of the next trial. */
  private steady(sample: Sample, rate: number): Change | undefined {
    // The first busy interval after a quiet one was partly quiet: not a measure of anything.
    if (this.wasBusy) {
      this.recentRates.push(rate)
      this.observeNoise(rate)
    }
    this.wasBusy = true
    if (this.recentRates.length > 5) this.recentRates.shift()
    const responseNow = sample.waitMillis + sample.serviceMillis
    this.response = this.response === 0 ? responseNow : this.response * 0.7 + responseNow * 0.3
    // A trial needs a few intervals to compare with.
    if (this.interval < this.holdUntil || this.recentRates.length < 3) return undefined
    const limit = this.current
    const waiting = sample.pending > 0 || sample.waitMillis > 0
    if (waiting && limit < this.max && this.direction === "up") {
      // An eighth more, twice as much after each trial kept.
      const to = limit + Math.max(1, Math.floor(Math.min(limit / 2, limit / 8 * 2 ** this.upStreak)))
      return this.start(to, "trial_up", (to) => `callers waiting with all ${limit} connections in use: trying ${to}`)
    }
    this.direction = "down"
    this.upStreak = 0
    if (limit <= this.min) return undefined
    // Further when checkouts take longer than at no load, and twice as far after each trial kept.
    const inflation = sample.serviceMillis / this.baseline
    const share = Math.max(Math.max(0, 1 - 1 / inflation) / 2, 2 ** this.downStreak / 16)
    const to = Math.max(this.min, limit - Math.max(1, Math.floor(limit * Math.min(0.5, share))))
    return this.start(
      to,
      "trial_down",
      (to) => `all ${limit} connections in use, checkouts at ${inflation.toFixed(1)}× their fastest: trying ${to}`
    )
  }

  /** A tolerance, widened so that a trial is not judged on noise. */
  private beyondNoise(tolerance: number): number {
    return Math.max(tolerance, Math.min(maxNoiseTolerance, 2 * this.noise))
  }

  /** Learns the noise from consecutive measures at one limit. */
  private observeNoise(rate: number): void {
    const last = this.lastSteadyRate
    if (last !== undefined && rate + last > 0) {
      const spread = Math.abs(rate - last) / ((rate + last) / 2) / meanDifferencePerDeviation
      this.noise = this.noise === 0 ? spread : this.noise * 0.8 + spread * 0.2
    }
    this.lastSteadyRate = rate
  }

  private change(to: number, kind: Change["kind"], reason: string): Change | undefined {
    const from = this.current
    this.current = Math.max(this.min, Math.min(this.max, to))
    if (this.current === from) return undefined
    this.lastSteadyRate = undefined
    return { from, to: this.current, kind, reason }
  }

  /** Each failure in a row doubles the hold: a pool that has found its size stops paying for trials. */
  private hold(): void {
    this.holdUntil = this.interval + this.holdIntervals * 2 ** Math.min(this.failedInARow, maxHoldDoublings)
    this.failedInARow++
  }

  private back(trial: Trial, reason: string, then: "down" | "up"): Change | undefined {
    this.hold()
    this.downStreak = 0
    this.upStreak = 0
    this.direction = then
    return this.change(trial.from, "revert", `${reason}: back to ${trial.from}`)
  }

  /** The outcome of a trial, from its measured intervals. */
  private judge(trial: Trial): Change | undefined {
    const rate = trial.rate / trial.measured
    const waited = trial.responseSum / trial.measured
    const drop = this.beyondNoise(this.dropTolerance)
    const gain = this.beyondNoise(this.gainThreshold)
    if (trial.to < trial.from) {
      if (rate < trial.reference * (1 - drop)) {
        return this.back(trial, `throughput fell ${percent(1 - rate / trial.reference)} with ${trial.to} connections`, "up")
      }
      if (waited > trial.response * (1 + this.beyondNoise(this.latencyTolerance)) && rate < trial.reference * (1 + gain)) {
        return this.back(trial, `callers waited ${percent(waited / trial.response - 1)} longer with ${trial.to} connections`, "up")
      }
      // The bar for the rest of the descent is the best it has held: one that began above the knee (more
      // connections than help, so less throughput) must not go on past it. Under noise this errs towards
      // more connections, never towards less throughput.
      this.descentReference = Math.max(this.descentReference, rate)
      this.kept()
      this.downStreak++
      return undefined
    }
    if (rate >= trial.reference * (1 + gain)) {
      this.kept()
      this.upStreak++
      return undefined
    }
    return this.back(trial, `no throughput gain with ${trial.to} connections (${percent(rate / trial.reference - 1)})`, "down")
  }

  private kept(): void {
    this.failedInARow = 0
    this.recentRates.length = 0
  }

  private start(to: number, kind: "trial_down" | "trial_up", reason: (to: number) => string): Change | undefined {
    const made = this.change(to, kind, reason(Math.max(this.min, Math.min(this.max, to))))
    if (made !== undefined) {
      const sorted = [...this.recentRates].sort((a, b) => a - b)
      const median = sorted[Math.floor(sorted.length / 2)]
      if (kind === "trial_up" || this.downStreak === 0) this.descentReference = median
      const reference = kind === "trial_up" ? median : this.descentReference
      this.trial = { from: made.from, to: made.to, reference, response: this.response, intervals: 0, rate: 0, responseSum: 0, measured: 0 }
    }
    return made
  }
}
