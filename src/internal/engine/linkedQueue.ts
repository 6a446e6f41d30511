/**
 * A FIFO of waiting callers as a doubly linked list through links the nodes
 * carry, so that joining, leaving from the middle (an interrupted or timed-out
 * caller) and serving the head are all O(1) however many fibers wait. A node
 * carries one link per queue it can be in: a waiter is in the pool-wide
 * arrival order (for timeouts) and in its tenant's queue (for service).
 *
 * The effect `Semaphore` rescans its waiters on every release, which costs too
 * much with hundreds of worker fibers queued.
 *
 * @internal
 */

/** @internal */
export class Link<A> {
  prev: A | undefined = undefined
  next: A | undefined = undefined
  /** Whether the node is in the queue, so `remove` is idempotent. */
  queued = false
}

/** @internal */
export class LinkedQueue<A> {
  private head: A | undefined = undefined
  private tail: A | undefined = undefined
  size = 0
  private readonly link: (node: A) => Link<A>

  constructor(link: (node: A) => Link<A>) {
    this.link = link
  }

  push(node: A): void {
    this.place(node, this.tail, undefined)
  }

  /** Puts `node` just ahead of `before`, which must be queued. */
  insertBefore(node: A, before: A): void {
    this.place(node, this.link(before).prev, before)
  }

  peek(): A | undefined {
    return this.head
  }

  /** The nodes, first to last; the queue must not change while they are walked. */
  *[Symbol.iterator](): Iterator<A> {
    for (let node = this.head; node !== undefined; node = this.link(node).next) yield node
  }

  /** Links `node` in between `prev` and `next` (either end when `undefined`). */
  private place(node: A, prev: A | undefined, next: A | undefined): void {
    const link = this.link(node)
    link.prev = prev
    link.next = next
    link.queued = true
    if (prev === undefined) this.head = node
    else this.link(prev).next = node
    if (next === undefined) this.tail = node
    else this.link(next).prev = node
    this.size++
  }

  /** Takes `node` out wherever it stands; returns whether it was queued. */
  remove(node: A): boolean {
    const link = this.link(node)
    if (!link.queued) return false
    if (link.prev === undefined) this.head = link.next
    else this.link(link.prev).next = link.next
    if (link.next === undefined) this.tail = link.prev
    else this.link(link.next).prev = link.prev
    link.prev = undefined
    link.next = undefined
    link.queued = false
    this.size--
    return true
  }
}
