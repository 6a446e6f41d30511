/**
 * The order in which waiting callers are served.
 *
 * `fifo`: one queue, first come first served.
 *
 * `tenant`: weighted fair queueing across tenants, by deficit round-robin on
 * two levels. Priority classes (`high`, `normal`, `low`) take turns by their
 * weights, so a busy lower class still gets its share; within a class, each
 * tenant with waiters (a flow) takes turns by its weight, first come first
 * served within the tenant. A tenant with no waiters costs nothing and holds
 * no state, so a flood of distinct tenant ids cannot grow memory beyond the
 * callers actually waiting. A tenant at its in-use limit is passed over until
 * it gives a connection back.
 *
 * Either way the scheduler only orders waiters: the engine decides when a
 * connection is free, and the uncontended path never comes here.
 *
 * @internal
 */
import type { Level } from "../Priority.ts"
import { Link, LinkedQueue } from "./linkedQueue.ts"

/** @internal */
export type Priority = Level

/** What a caller asks for. @internal */
export interface Request {
  /** The tenant's id, or `""` for work without one. */
  readonly flow: string
  readonly priority: Priority
  /** A share of a connection for one autocommit statement, rather than a connection alone. */
  readonly shared: boolean
  /** Where the caller is (span, stack), for leak reports; asked only when leak detection is on. */
  readonly origin?: (() => string) | undefined
}

/** A waiting caller, as the scheduler sees it. @internal */
export interface Waiting {
  readonly request: Request
  readonly inFlow: Link<any>
}

/** @internal */
export interface FairnessOptions {
  readonly mode: "fifo" | "tenant"
  readonly priorityWeights: Readonly<Record<Priority, number>>
  /** The weight of a tenant not listed in `tenantWeights`. */
  readonly tenantWeight: (flow: string) => number
  /** Connections one tenant may hold at once. */
  readonly tenantMaxInUse: number
}

/** @internal */
export interface Scheduler<W extends Waiting> {
  readonly push: (waiter: W) => void
  readonly remove: (waiter: W) => void
  /** The next waiter to serve with a whole free connection, if any is eligible. */
  readonly next: () => W | undefined
  /** The next waiter that wants a share, for spare capacity of a shared connection. */
  readonly nextShare: () => W | undefined
  /** Whether a tenant's next request may take a connection without waiting. */
  readonly mayTake: (flow: string) => boolean
  /** Waiters of one tenant. */
  readonly queued: (flow: string) => number
  /** Counts a connection as held by `flow`, for its in-use limit. */
  readonly acquired: (flow: string) => void
  readonly released: (flow: string) => void
  /** Waiters in all. (With `flows`, what the tests read to prove that nothing is kept for tenants gone.) */
  readonly size: () => number
  /** Waiters for a share of a connection, for the engine's demand. */
  readonly sharedWaiting: () => number
  /** Flows the scheduler keeps state for: one per tenant and priority with waiters. */
  readonly flows: () => number
}

const priorities: ReadonlyArray<Priority> = ["high", "normal", "low"]

/** @internal */
export const make = <W extends Waiting>(options: FairnessOptions): Scheduler<W> =>
  options.mode === "fifo" ? makeFifo<W>() : makeFair<W>(options)

const makeFifo = <W extends Waiting>(): Scheduler<W> => {
  const queue = new LinkedQueue<W>((w) => w.inFlow)
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
    flows: () => queue.size > 0 ? 1 : 0
  }
}

/** A tenant with waiters, or holding connections under an in-use limit. */
interface Flow<W> {
  readonly key: string
  readonly weight: number
  readonly queue: LinkedQueue<W>
  readonly inRing: Link<Flow<W>>
  /** Turns left in the current round. */
  credit: number
}

/** A priority class: its flows with waiters, in round-robin order. */
interface Class<W> {
  readonly weight: number
  readonly ring: LinkedQueue<Flow<W>>
  cursor: Flow<W> | undefined
  credit: number
  waiting: number
}

const makeFair = <W extends Waiting>(options: FairnessOptions): Scheduler<W> => {
  const flows = new Map<string, Flow<W>>()
  const classes: Record<Priority, Class<W>> = {
    high: makeClass(options.priorityWeights.high),
    normal: makeClass(options.priorityWeights.normal),
    low: makeClass(options.priorityWeights.low)
  }
  /** Which flow a waiter is queued in: its priority class has a flow per tenant. */
  const flowKey = (request: Request) => `${request.priority}\u0000${request.flow}`
  let classCursor = 0
  let size = 0
  let sharedWaiting = 0
  const limited = options.tenantMaxInUse !== Infinity
  /** Connections held per tenant, only kept under an in-use limit. */
  const inUse = new Map<string, number>()

  const eligible = (flow: Flow<W>, wantShare: boolean): boolean => {
    const head = flow.queue.peek()
    if (head === undefined) return false
    if (wantShare) return head.request.shared
    return !limited || head.request.flow === "" || (inUse.get(head.request.flow) ?? 0) < options.tenantMaxInUse
  }

  const flowFor = (waiter: W): Flow<W> => {
    const key = flowKey(waiter.request)
    let flow = flows.get(key)
    if (flow === undefined) {
      flow = {
        key,
        weight: options.tenantWeight(waiter.request.flow),
        queue: new LinkedQueue<W>((w) => w.inFlow),
        inRing: new Link(),
        credit: 0
      }
      flows.set(key, flow)
    }
    return flow
  }

  /** Drops a flow that has no waiters left; the round goes on with the one after it. */
  const forget = (flow: Flow<W>, cls: Class<W>): void => {
    if (flow.queue.size > 0) return
    if (cls.cursor === flow) {
      const next = flow.inRing.next ?? (cls.ring.peek() === flow ? undefined : cls.ring.peek())
      cls.cursor = next
      if (next !== undefined) next.credit = next.weight
    }
    cls.ring.remove(flow)
    flows.delete(flow.key)
  }

  const taken = (waiter: W, flow: Flow<W>): W => {
    const cls = classes[waiter.request.priority]
    flow.queue.remove(waiter)
    cls.waiting--
    size--
    if (waiter.request.shared) sharedWaiting--
    forget(flow, cls)
    return waiter
  }

  /** Deficit round-robin over one class's flows: each flow serves up to its weight per turn. */
  const pickIn = (cls: Class<W>, wantShare: boolean): W | undefined => {
    for (let visited = 0; visited <= cls.ring.size; visited++) {
      let flow = cls.cursor
      if (flow === undefined) {
        flow = cls.ring.peek()
        if (flow === undefined) return undefined
        cls.cursor = flow
        flow.credit = flow.weight
      }
      if (flow.credit > 0 && eligible(flow, wantShare)) {
        flow.credit--
        return taken(flow.queue.peek()!, flow)
      }
      const next = flow.inRing.next ?? cls.ring.peek()!
      cls.cursor = next
      next.credit = next.weight
    }
    return undefined
  }

  /** Deficit round-robin over the classes, then over the chosen class's flows. */
  const pick = (wantShare: boolean): W | undefined => {
    for (let visited = 0; visited <= priorities.length; visited++) {
      const cls = classes[priorities[classCursor]]
      if (cls.credit > 0 && cls.waiting > 0) {
        const waiter = pickIn(cls, wantShare)
        if (waiter !== undefined) {
          cls.credit--
          return waiter
        }
      }
      classCursor = (classCursor + 1) % priorities.length
      const next = classes[priorities[classCursor]]
      next.credit = next.weight
    }
    return undefined
  }

  return {
    push: (waiter) => {
      const flow = flowFor(waiter)
      const cls = classes[waiter.request.priority]
      flow.queue.push(waiter)
      // A tenant that starts waiting joins at the end of the current round, just behind the cursor: at
      // the ring's tail, a stream of new tenants would keep the cursor from ever coming back round.
      if (!flow.inRing.queued) {
        if (cls.cursor === undefined) cls.ring.push(flow)
        else cls.ring.insertBefore(flow, cls.cursor)
      }
      cls.waiting++
      size++
      if (waiter.request.shared) sharedWaiting++
    },
    remove: (waiter) => {
      const flow = flows.get(flowKey(waiter.request))
      if (flow === undefined || !waiter.inFlow.queued) return
      taken(waiter, flow)
    },
    next: () => pick(false),
    // Spare room on a shared connection goes to work without a tenant, but not
    // past callers waiting for a connection alone: shared connections must drain.
    nextShare: () => size === sharedWaiting ? pick(true) : undefined,
    mayTake: (flow) => !limited || flow === "" || (inUse.get(flow) ?? 0) < options.tenantMaxInUse,
    queued: (flow) => {
      let count = 0
      for (const priority of priorities) count += flows.get(`${priority}\u0000${flow}`)?.queue.size ?? 0
      return count
    },
    acquired: (flow) => {
      if (limited && flow !== "") inUse.set(flow, (inUse.get(flow) ?? 0) + 1)
    },
    released: (flow) => {
      if (!limited || flow === "") return
      const held = (inUse.get(flow) ?? 1) - 1
      if (held === 0) inUse.delete(flow)
      else inUse.set(flow, held)
    },
    size: () => size,
    sharedWaiting: () => sharedWaiting,
    flows: () => flows.size
  }
}

const makeClass = <W>(weight: number): Class<W> => ({
  weight,
  ring: new LinkedQueue<Flow<W>>((flow) => flow.inRing),
  cursor: undefined,
  credit: weight,
  waiting: 0
})
