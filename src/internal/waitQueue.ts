/**
 * The FIFO list of callers waiting for a connection.
 *
 * A doubly linked list whose nodes are the waiters themselves, so joining,
 * leaving from the middle (an interrupted or timed-out caller) and serving the
 * head are all O(1) however many fibers wait. The effect `Semaphore` rescans
 * its waiters on every release, which costs too much with hundreds of worker
 * fibers queued.
 *
 * @internal
 */

/** @internal */
export interface Node {
  prev: Node | undefined
  next: Node | undefined
  /** Whether the node is in a queue, so `remove` is idempotent. */
  queued: boolean
}

/** @internal */
export class WaitQueue<A extends Node> {
  private head: A | undefined = undefined
  private tail: A | undefined = undefined
  size = 0

  push(node: A): void {
    node.prev = this.tail
    node.next = undefined
    node.queued = true
    if (this.tail === undefined) this.head = node
    else this.tail.next = node
    this.tail = node
    this.size++
  }

  peek(): A | undefined {
    return this.head
  }

  shift(): A | undefined {
    const node = this.head
    if (node !== undefined) this.remove(node)
    return node
  }

  /** Takes `node` out wherever it stands; returns whether it was queued. */
  remove(node: A): boolean {
    if (!node.queued) return false
    if (node.prev === undefined) this.head = node.next as A | undefined
    else node.prev.next = node.next
    if (node.next === undefined) this.tail = node.prev as A | undefined
    else node.next.prev = node.prev
    node.prev = undefined
    node.next = undefined
    node.queued = false
    this.size--
    return true
  }

  /** Empties the queue, returning its nodes oldest first. */
  drain(): Array<A> {
    const nodes: Array<A> = []
    for (let node = this.shift(); node !== undefined; node = this.shift()) nodes.push(node)
    return nodes
  }
}
