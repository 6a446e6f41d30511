/**
 * The pool's state and its rules of hand-out: which connections are open,
 * idle or lent, who waits, and who gets a connection when one comes free.
 * Synchronous, with no Effects inside: opening and closing connections and
 * resuming callers are the {@link Hooks} of whoever drives it (./engine.ts),
 * so every rule here is unit-testable alone (test/poolState.test.ts).
 *
 * The rules it keeps (numbered as in docs/architecture.md):
 * 1. Never more than `limit` (at most `max`) connections, open or being opened.
 * 2. Nobody barges: a freed connection goes straight to the waiter the
 *    scheduler picks (./scheduler.ts), and nobody takes an idle connection
 *    while others wait.
 * 3. A connection is lent to one caller alone, or shared by up to
 *    `pipelineDepth` autocommit statements; the busiest shared connection with
 *    room is filled first, and one takes no new borrower while a caller waits
 *    for a connection alone.
 * 4. More connections are wanted only when the waiters need more than are
 *    being opened, or to keep `min` open.
 * 5. A waiter that leaves the line is never handed a connection afterwards.
 * 6. A connection that is spent (broken, past its lifetime or uses) is closed
 *    instead of lent.
 *
 * It is one class, over 300 lines, because the rules are one state machine:
 * every method keeps all six, and splitting them would scatter a rule's
 * halves (a checkout and its release) across files.
 *
 * @internal
 */
import type { Entry } from "./entry.ts"
import { type Link, LinkedQueue } from "./linkedQueue.ts"
import type { Meter } from "./meter.ts"
import * as Scheduler from "./scheduler.ts"

/**
 * A caller in line.
 *
 * @internal
 */
export interface Waiting extends Scheduler.Waiting {
  /** Its place in the pool-wide arrival order, for timeouts. */
  readonly arrival: Link<any>
  readonly enqueuedAt: number
  readonly deadline: number
}

/**
 * What the state asks of its driver.
 *
 * @internal
 */
export interface Hooks<C, W> {
  /** `waiter` was handed `entry`, already checked out for it: resume its caller. */
  readonly served: (waiter: W, entry: Entry<C>) => void
  /** `entry` left the pool: close its physical connection. */
  readonly removed: (entry: Entry<C>) => void
}

/**
 * The limits the rules read.
 *
 * @internal
 */
export interface Limits {
  readonly min: number
  readonly max: number
  readonly pipelineDepth: number
  readonly maxUses: number
  /** Idle longer than this, a connection must prove itself before it is lent. */
  readonly validationThreshold: number
  /** Who is served first when callers wait. */
  readonly fairness: Scheduler.FairnessOptions
}

/** A share request of a tenant's, made once per tenant while it is the last one asked for. */
let lastShare: Scheduler.Request = { tenant: "", priority: "normal", shared: true }
const shareRequest = (tenant: string): Scheduler.Request =>
  lastShare.tenant === tenant ? lastShare : (lastShare = { tenant, priority: "normal", shared: true })

/**
 * The pool's state. Fields are read by the engine, the connection lifecycle
 * and the housekeeper; they change only through the methods.
 *
 * @internal
 */
export class PoolState<C, W extends Waiting> {
  readonly entries = new Set<Entry<C>>()
  /** Idle connections, most recently used last: reuse takes the warmest, eviction the coldest. */
  readonly idle: Array<Entry<C>> = []
  /** Every waiter in arrival order: the oldest has the earliest deadline. */
  readonly waiters = new LinkedQueue<W>((w) => w.arrival)
  /** The same waiters in the order they are to be served. */
  private readonly scheduler: Scheduler.Scheduler<W>
  /** Connections being opened. */
  creating = 0
  /** Connections that may be open: `max`, or less under adaptive sizing. */
  limit: number
  closed = false
  readonly limits: Limits
  readonly meter: Meter
  private readonly hooks: Hooks<C, W>
  private readonly now: () => number

  constructor(limits: Limits, meter: Meter, hooks: Hooks<C, W>, now: () => number) {
    this.limits = limits
    this.meter = meter
    this.hooks = hooks
    this.now = now
    this.limit = limits.max
    this.scheduler = Scheduler.make<W>(limits.fairness)
  }

  get used(): number {
    return this.entries.size - this.idle.length
  }

  /** Whether a connection is spent (rule 6). */
  isSpent(entry: Entry<C>, at: number): boolean {
    return entry.isSpent(at, this.limits.maxUses)
  }

  /** Whether a connection idle this long must prove itself before it is lent. */
  isStale(entry: Entry<C>, at: number): boolean {
    return at - entry.idleSince > this.limits.validationThreshold
  }

  /**
   * A connection (or share) for `request` right now, when nobody waits ahead
   * and its tenant is under its in-use limit (rule 2); counted as a checkout.
   */
  take(request: Scheduler.Request): Entry<C> | undefined {
    if (this.waiters.size > 0 || !this.scheduler.mayTake(request.tenant)) return undefined
    const entry = request.shared ? this.takeShare(request) ?? this.takeIdle(request) : this.takeIdle(request)
    if (entry !== undefined) this.meter.checkedOut(request.tenant, 0, this.used)
    return entry
  }

  /**
   * A share for an autocommit statement right now, when one is free, nobody
   * waits and no idle connection would need proving first: the fast path.
   */
  shareNow(tenant: string): Entry<C> | undefined {
    if (this.closed || this.waiters.size > 0) return undefined
    const request = shareRequest(tenant)
    let share = this.takeShare(request)
    if (share === undefined) {
      // A spent top would be closed and the one under it lent unproven: the slow path validates.
      const top = this.idle[this.idle.length - 1]
      const at = this.now()
      if (top === undefined || this.isStale(top, at) || this.isSpent(top, at)) return undefined
      share = this.takeIdle(request)
    }
    if (share !== undefined) this.meter.checkedOut(tenant, 0, this.used)
    return share
  }

  /** Puts a caller in line. */
  enqueue(waiter: W): void {
    this.waiters.push(waiter)
    this.scheduler.push(waiter)
    // Idle connections while others wait: the waiters ahead are at their
    // tenant's in-use limit, and this one may be served now.
    if (this.idle.length > 0) this.dispatchIdle()
  }

  /** Takes a caller out of line; `false` when it was not in it (served, timed out or failed already). */
  leave(waiter: W): boolean {
    if (!this.waiters.remove(waiter)) return false
    this.scheduler.remove(waiter)
    return true
  }

  /** Takes every caller out of line, oldest first, for the driver to fail. */
  leaveAll(): Array<W> {
    const left: Array<W> = []
    for (let waiter = this.waiters.peek(); waiter !== undefined; waiter = this.waiters.peek()) {
      this.leave(waiter)
      left.push(waiter)
    }
    return left
  }

  /** The tenants with the most callers in line, most first, at most `count` of them: who is backed up. */
  mostWaiting(count: number): Array<readonly [tenant: string, waiting: number]> {
    const byTenant = new Map<string, number>()
    for (const waiter of this.waiters) {
      const tenant = waiter.request.tenant
      if (tenant !== "") byTenant.set(tenant, (byTenant.get(tenant) ?? 0) + 1)
    }
    return Array.from(byTenant).sort((a, b) => b[1] - a[1]).slice(0, count)
  }

  /** Waiters queued for `tenant`, for its quota. */
  queued(tenant: string): number {
    return this.scheduler.queued(tenant)
  }

  /** A newly opened connection joins the pool and goes to the next waiter, or idles. */
  admit(entry: Entry<C>): void {
    this.entries.add(entry)
    this.offer(entry)
  }

  /** Gives a connection (or a share of one) back; it goes to the next waiter, or idles, or closes. */
  release(entry: Entry<C>): void {
    if (entry.state === "shared" || entry.state === "used") {
      this.meter.returned(entry.state === "used" && entry.holder !== undefined ? this.now() - entry.takenAt : undefined)
    }
    if (entry.state === "shared") {
      entry.borrowers--
      if (entry.borrowers > 0) {
        if (!this.closed && !this.isSpent(entry, this.now())) this.serveShares(entry)
        return
      }
      entry.state = "used"
      if (entry.abandoned) return this.remove(entry)
    }
    if (entry.state !== "used") return
    const holder = entry.holder
    if (holder !== undefined) {
      this.scheduler.released(holder)
      entry.holder = undefined
    }
    if (this.mustClose(entry)) this.remove(entry)
    else this.offer(entry)
    // The tenant under its limit again may be served from other idle connections.
    if (holder !== undefined && this.idle.length > 0 && this.waiters.size > 0) this.dispatchIdle()
  }

  /**
   * Gives a connection held alone back while its last statement is still in
   * flight, if it stays in service; `false`, and nothing done, when it would
   * be closed instead.
   */
  handOff(entry: Entry<C>): boolean {
    if (entry.state !== "used" || this.mustClose(entry)) return false
    this.release(entry)
    return true
  }

  /** Gives it back to be closed: its state is unknown. A shared one closes when its last borrower leaves. */
  invalidate(entry: Entry<C>): void {
    if (entry.state === "used" || entry.state === "shared") {
      entry.broken = true
      this.release(entry)
    }
  }

  /** Gives back a share whose caller left while its statement ran: the connection takes no new borrowers. */
  abandon(entry: Entry<C>): void {
    if (entry.state !== "shared") return this.invalidate(entry)
    entry.abandoned = true
    this.release(entry)
  }

  /** Takes a connection out of the pool and has it closed; idle or lent, it is never lent again. */
  remove(entry: Entry<C>): void {
    if (entry.state === "closed") return
    if (entry.state === "idle") {
      const index = this.idle.indexOf(entry)
      if (index >= 0) this.idle.splice(index, 1)
    }
    entry.state = "closed"
    this.entries.delete(entry)
    this.hooks.removed(entry)
  }

  /** Takes an idle connection out of the idle stack to ping it; it comes back through `offer` or `remove`. */
  lendToHousekeeper(entry: Entry<C>): void {
    this.idle.splice(this.idle.indexOf(entry), 1)
    entry.state = "used"
  }

  /** A free connection goes to the next waiter (and the shares after it), else to the idle stack. */
  offer(entry: Entry<C>): void {
    const waiter = this.chosen(this.scheduler.next())
    if (waiter === undefined) {
      entry.state = "idle"
      entry.idleSince = this.now()
      this.idle.push(entry)
      return
    }
    this.serve(waiter, entry)
    if (waiter.request.shared) this.serveShares(entry)
  }

  /** Rule 4: how many more connections to open now, at most `maxConnecting` at a time; counted as being opened. */
  openings(maxConnecting: number): number {
    let wanted = 0
    while (
      !this.closed && this.entries.size + this.creating < this.limit && this.creating < maxConnecting &&
      (this.demand() > this.creating || this.entries.size + this.creating < this.limits.min)
    ) {
      this.creating++
      wanted++
    }
    return wanted
  }

  /** Whether one of the openings under way is still wanted, should it fail and be tried again. */
  stillWanted(): boolean {
    const others = this.creating - 1
    return !this.closed && (this.demand() > others || this.entries.size + others < this.limits.min)
  }

  /** Sets how many connections may be open; the coldest idle ones above it close now, lent ones on return. */
  setLimit(to: number): void {
    this.limit = Math.max(this.limits.min, Math.min(this.limits.max, to))
    while (this.entries.size > this.limit && this.idle.length > 0) this.removeIdle(this.idle.shift()!)
  }

  /** Closes an idle connection already taken out of the idle stack. */
  private removeIdle(entry: Entry<C>): void {
    // Out of the idle stack already; `remove` must not look for it there.
    entry.state = "used"
    this.remove(entry)
  }

  private mustClose(entry: Entry<C>): boolean {
    return this.closed || this.isSpent(entry, this.now()) || this.entries.size > this.limit
  }

  /** Connections the waiters need: one each, or one per `pipelineDepth` shares. */
  private demand(): number {
    const shared = this.scheduler.sharedWaiting()
    return this.waiters.size - shared + Math.ceil(shared / this.limits.pipelineDepth)
  }

  private checkout(entry: Entry<C>, request: Scheduler.Request): Entry<C> {
    entry.uses++
    if (request.shared) {
      entry.state = "shared"
      entry.borrowers++
    } else {
      entry.state = "used"
      entry.holder = request.tenant
      entry.takenAt = this.now()
      entry.origin = request.origin?.()
      entry.leakReported = false
      this.scheduler.acquired(request.tenant)
    }
    return entry
  }

  /** Takes a waiter the scheduler chose out of the arrival order too. */
  private chosen(waiter: W | undefined): W | undefined {
    if (waiter !== undefined) this.waiters.remove(waiter)
    return waiter
  }

  private serve(waiter: W, entry: Entry<C>): void {
    this.checkout(entry, waiter.request)
    this.meter.checkedOut(waiter.request.tenant, this.now() - waiter.enqueuedAt, this.used)
    this.hooks.served(waiter, entry)
  }

  /** Hands spare capacity of a shared connection to waiters that want a share. */
  private serveShares(entry: Entry<C>): void {
    while (!entry.abandoned && entry.borrowers < this.limits.pipelineDepth) {
      const waiter = this.chosen(this.scheduler.nextShare())
      if (waiter === undefined) return
      this.serve(waiter, entry)
    }
  }

  /** Hands idle connections to eligible waiters, while there are both. */
  private dispatchIdle(): void {
    const at = this.now()
    while (this.idle.length > 0 && this.waiters.size > 0) {
      const entry = this.idle.pop()!
      if (this.isSpent(entry, at)) {
        this.removeIdle(entry)
        continue
      }
      const waiter = this.chosen(this.scheduler.next())
      if (waiter === undefined) {
        this.idle.push(entry)
        return
      }
      this.serve(waiter, entry)
      if (waiter.request.shared) this.serveShares(entry)
    }
  }

  private takeIdle(request: Scheduler.Request): Entry<C> | undefined {
    const at = this.now()
    for (let entry = this.idle.pop(); entry !== undefined; entry = this.idle.pop()) {
      if (!this.isSpent(entry, at)) return this.checkout(entry, request)
      this.removeIdle(entry)
    }
    return undefined
  }

  /**
   * A share of the busiest shared connection that has room. Filling one
   * connection before the next puts more statements in each write, and
   * writes (system calls) are what a pipelining client spends its time on;
   * it also keeps whole connections free for callers that need one alone.
   */
  private takeShare(request: Scheduler.Request): Entry<C> | undefined {
    const at = this.now()
    let best: Entry<C> | undefined
    for (const entry of this.entries) {
      if (
        entry.state === "shared" && !entry.abandoned && entry.borrowers < this.limits.pipelineDepth &&
        !this.isSpent(entry, at) && (best === undefined || entry.borrowers > best.borrowers)
      ) best = entry
    }
    return best === undefined ? undefined : this.checkout(best, request)
  }
}
