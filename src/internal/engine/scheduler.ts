/**
 * The order in which waiting callers are served.
 *
 * `fifo`: one queue, first come first served.
 *
 * `tenant`: weighted fair queueing across tenants, by deficit round-robin on
 * two levels. Priority classes (`high`, `normal`, `low`) take turns by their
 * weights, so a busy lower class still gets its share; within a class, each
 * tenant with waiters (a lane) takes turns by its weight, first come first
 * served within the tenant. A tenant with no waiters costs nothing and holds
 * no state, so a flood of distinct tenant ids cannot grow memory beyond the
 * callers actually waiting. A tenant at its in-use limit is passed over until
 * it gives a connection back.
 *
 * Either way the scheduler only orders waiters: the engine decides when a
 * connection is free, and the uncontended path never comes here.
 *
 * Over 300 lines: two schedulers behind one interface, each small; the fair
 * one's rounds on two levels are kept together so that their invariants can
 * be read in one place.
 *
 * @internal
 */
import type { Level } from "../../Priority.ts"
import { Link, LinkedQueue } from "./linkedQueue.ts"

/** @internal */
export type Priority = Level

/** What a caller asks for. @internal */
export interface Request {
  /** The tenant's id, or `""` for work without one. */
  readonly tenant: string
  readonly priority: Priority
  /** A share of a connection for one autocommit statement, rather than a connection alone. */
  readonly shared: boolean
  /** Where the caller is (span, stack), for leak reports; asked only when leak detection is on. */
  readonly origin?: (() => string) | undefined
}

/** A waiting caller, as the scheduler sees it. @internal */
export interface Waiting {
  readonly request: Request
  readonly inLane: Link<any>
}

/** @internal */
export interface FairnessOptions {
  readonly mode: "fifo" | "tenant"
  readonly priorityWeights: Readonly<Record<Priority, number>>
  /** The weight of a tenant not listed in `tenantWeights`. */
  readonly tenantWeight: (tenant: string) => number
  /** Connections one tenant may hold at once. */
  readonly tenantMaxInUse: number
}

/** @internal */
export interface Scheduler<W extends Waiting> {
  push(waiter: W): void
  remove(waiter: W): void
  /** The next waiter to serve with a whole free connection, if any is eligible. */
  next(): W | undefined
  /** The next waiter that wants a share, for spare capacity of a shared connection. */
  nextShare(): W | undefined
  /** Whether a tenant's next request may take a connection without waiting. */
  mayTake(tenant: string): boolean
  /** Waiters of one tenant. */
  queued(tenant: string): number
  /** Counts a connection as held by `tenant`, for its in-use limit. */
  acquired(tenant: string): void
  released(tenant: string): void
  /** Waiters in all. (With `lanes`, what the tests read to prove that nothing is kept for tenants gone.) */
  size(): number
  /** Waiters for a share of a connection, for the engine's demand. */
  sharedWaiting(): number
  /** Lanes the scheduler keeps state for: one per tenant and priority with waiters. */
  lanes(): number
}

const priorities: ReadonlyArray<Priority> = ["high", "normal", "low"]

/** @internal */
export const make = <W extends Waiting>(options: FairnessOptions): Scheduler<W> =>
  options.mode === "fifo" ? makeFifo<W>() : makeFair<W>(options)

const makeFifo = <W extends Waiting>(): Scheduler<W> => {
  const queue = new LinkedQueue<W>((w) => w.inLane)
  let shared = 0
  const take = (waiter: W | undefined): W | undefined => {
    if (waiter !== undefined) {
      queue.remove(waiter)
      if (waiter.request.shared) shared--
    }
    return waiter
  }
  return {
    push: (waiter) => {
      queue.push(waiter)
      if (waiter.request.shared) shared++
    },
    remove: (waiter) => {
      if (queue.remove(waiter) && waiter.request.shared) shared--
    },
    next: () => take(queue.peek()),
    nextShare: () => queue.peek()?.request.shared ? take(queue.peek()) : undefined,
    mayTake: () => true,
    queued: () => 0,
    acquired: () => {},
    released: () => {},
    size: () => queue.size,
    sharedWaiting: () => shared,
    lanes: () => queue.size > 0 ? 1 : 0
  }
}

/** A tenant's waiters of one priority class, and its turns in the round. */
interface Lane<W> {
  readonly key: string
  readonly weight: number
  readonly queue: LinkedQueue<W>
  readonly inRing: Link<Lane<W>>
  /** Turns left in the current round. */
  credit: number
}

/** A priority class: its lanes with waiters, in round-robin order. */
interface Class<W> {
  readonly weight: number
  readonly ring: LinkedQueue<Lane<W>>
  cursor: Lane<W> | undefined
  credit: number
  waiting: number
}

const makeFair = <W extends Waiting>(options: FairnessOptions): Scheduler<W> => new FairScheduler<W>(options)

/** Deficit round-robin on two levels: priority classes by weight, then tenants (lanes) by weight. */
class FairScheduler<W extends Waiting> implements Scheduler<W> {
  private readonly options: FairnessOptions
  private readonly lanesByKey = new Map<string, Lane<W>>()
  private readonly classes: Record<Priority, Class<W>>
  private classCursor = 0
  private waiting = 0
  private sharesWaiting = 0
  private readonly limited: boolean
  /** Connections held per tenant, only kept under an in-use limit. */
  private readonly inUse = new Map<string, number>()

  constructor(options: FairnessOptions) {
    this.options = options
    this.limited = options.tenantMaxInUse !== Infinity
    this.classes = {
      high: makeClass(options.priorityWeights.high),
      normal: makeClass(options.priorityWeights.normal),
      low: makeClass(options.priorityWeights.low)
    }
  }

  push(waiter: W): void {
    const lane = this.laneFor(waiter)
    const cls = this.classes[waiter.request.priority]
    lane.queue.push(waiter)
    // A tenant that starts waiting joins at the end of the current round, just behind the cursor: at
    // the ring's tail, a stream of new tenants would keep the cursor from ever coming back round.
    if (!lane.inRing.queued) {
      if (cls.cursor === undefined) cls.ring.push(lane)
      else cls.ring.insertBefore(lane, cls.cursor)
    }
    cls.waiting++
    this.waiting++
    if (waiter.request.shared) this.sharesWaiting++
  }

  remove(waiter: W): void {
    const lane = this.lanesByKey.get(laneKey(waiter.request.priority, waiter.request.tenant))
    if (lane === undefined || !waiter.inLane.queued) return
    this.taken(waiter, lane)
  }

  next(): W | undefined {
    return this.pick(false)
  }

  nextShare(): W | undefined {
    // Spare room on a shared connection goes to work that wants a share, but not
    // past callers waiting for a connection alone: shared connections must drain.
    return this.waiting === this.sharesWaiting ? this.pick(true) : undefined
  }

  mayTake(tenant: string): boolean {
    return !this.limited || tenant === "" || (this.inUse.get(tenant) ?? 0) < this.options.tenantMaxInUse
  }

  queued(tenant: string): number {
    let count = 0
    for (const priority of priorities) count += this.lanesByKey.get(laneKey(priority, tenant))?.queue.size ?? 0
    return count
  }

  acquired(tenant: string): void {
    if (this.limited && tenant !== "") this.inUse.set(tenant, (this.inUse.get(tenant) ?? 0) + 1)
  }

  released(tenant: string): void {
    if (!this.limited || tenant === "") return
    const held = (this.inUse.get(tenant) ?? 1) - 1
    if (held === 0) this.inUse.delete(tenant)
    else this.inUse.set(tenant, held)
  }

  size(): number {
    return this.waiting
  }

  sharedWaiting(): number {
    return this.sharesWaiting
  }

  lanes(): number {
    return this.lanesByKey.size
  }

  /** Whether a lane's first waiter may be served now: it wants a share if one is offered, and its tenant is under its in-use limit. */
  private eligible(lane: Lane<W>, wantShare: boolean): boolean {
    const head = lane.queue.peek()
    if (head === undefined) return false
    if (wantShare) return head.request.shared
    return this.mayTake(head.request.tenant)
  }

  private laneFor(waiter: W): Lane<W> {
    const key = laneKey(waiter.request.priority, waiter.request.tenant)
    let lane = this.lanesByKey.get(key)
    if (lane === undefined) {
      lane = {
        key,
        weight: this.options.tenantWeight(waiter.request.tenant),
        queue: new LinkedQueue<W>((w) => w.inLane),
        inRing: new Link(),
        credit: 0
      }
      this.lanesByKey.set(key, lane)
    }
    return lane
  }

  /** Drops a lane that has no waiters left; the round goes on with the one after it. */
  private forget(lane: Lane<W>, cls: Class<W>): void {
    if (lane.queue.size > 0) return
    if (cls.cursor === lane) {
      const next = lane.inRing.next ?? (cls.ring.peek() === lane ? undefined : cls.ring.peek())
      cls.cursor = next
      if (next !== undefined) next.credit = next.weight
    }
    cls.ring.remove(lane)
    this.lanesByKey.delete(lane.key)
  }

  private taken(waiter: W, lane: Lane<W>): W {
    const cls = this.classes[waiter.request.priority]
    lane.queue.remove(waiter)
    cls.waiting--
    this.waiting--
    if (waiter.request.shared) this.sharesWaiting--
    this.forget(lane, cls)
    return waiter
  }

  /** Deficit round-robin over one class's lanes: each lane serves up to its weight per turn. */
  private pickIn(cls: Class<W>, wantShare: boolean): W | undefined {
    for (let visited = 0; visited <= cls.ring.size; visited++) {
      let lane = cls.cursor
      if (lane === undefined) {
        lane = cls.ring.peek()
        if (lane === undefined) return undefined
        cls.cursor = lane
        lane.credit = lane.weight
      }
      if (lane.credit > 0 && this.eligible(lane, wantShare)) {
        lane.credit--
        return this.taken(lane.queue.peek()!, lane)
      }
      const next = lane.inRing.next ?? cls.ring.peek()!
      cls.cursor = next
      next.credit = next.weight
    }
    return undefined
  }

  /** Deficit round-robin over the classes, then over the chosen class's lanes. */
  private pick(wantShare: boolean): W | undefined {
    for (let visited = 0; visited <= priorities.length; visited++) {
      const cls = this.classes[priorities[this.classCursor]]
      if (cls.credit > 0 && cls.waiting > 0) {
        const waiter = this.pickIn(cls, wantShare)
        if (waiter !== undefined) {
          cls.credit--
          return waiter
        }
      }
      this.classCursor = (this.classCursor + 1) % priorities.length
      const next = this.classes[priorities[this.classCursor]]
      next.credit = next.weight
    }
    return undefined
  }
}

/** Which lane a waiter is queued in: its priority class has a lane per tenant. */
const laneKey = (priority: Priority, tenant: string) => `${priority}\u0000${tenant}`

const makeClass = <W>(weight: number): Class<W> => ({
  weight,
  ring: new LinkedQueue<Lane<W>>((lane) => lane.inRing),
  cursor: undefined,
  credit: weight,
  waiting: 0
})
