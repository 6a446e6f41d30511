/**
 * A network between the benchmark's clients and PostgreSQL: a TCP proxy, in a
 * process of its own, that adds a round trip of `rttMillis` (half each way)
 * and counts what crosses it.
 *
 * Precision: Node's timers have a resolution of 1 ms, so the proxy is woken
 * by an alarm thread that sleeps in `Atomics.wait` (sub-millisecond, and no
 * CPU while it sleeps) and rings a little early by the lateness it measured;
 * whatever is left is waited out by turning the event loop (`setImmediate`),
 * which keeps reading sockets meanwhile. A real network costs the machine no
 * CPU, and a proxy spinning for its precision took half a core or more from
 * the client and the server it sits between. The delay is constant, so chunks
 * fall due in arrival order and one queue per direction serves every
 * connection. The proxy reports the delay it actually added, and its own CPU.
 *
 * What it counts, per connection, from the protocol's framing:
 * - client writes: chunks from the client, about one per write (sockets run
 *   with `TCP_NODELAY` on both sides);
 * - round trips: client writes that found nothing of theirs unanswered on the
 *   connection, so that their sender waited a whole round trip (a write
 *   pipelined behind unanswered ones does not count);
 * - connection-ms held: time from a client's message reaching the proxy on an
 *   idle connection until the `ReadyForQuery` that leaves it idle again (no
 *   Sync unanswered, not in a transaction) reaches the client; that is how
 *   long the server connection served one borrower, round trips included;
 * - client turnaround: on a held connection with nothing unanswered, time from
 *   the last answer reaching the client to the client's next message: the
 *   client's own time between two awaited statements, which holds the server
 *   connection as surely as the network does.
 *
 * The parent side (`start`) forks this file; the child serves until its
 * parent goes.
 */
import * as ChildProcess from "node:child_process"
import * as Net from "node:net"
import { performance } from "node:perf_hooks"
import * as WorkerThreads from "node:worker_threads"

/** What the proxy measured since the last reset. */
export interface Counts {
  readonly clientWrites: number
  /** Client writes sent while nothing was unanswered on their connection: each costs a whole round trip. */
  readonly roundTrips: number
  /** Sync points the clients sent (Sync or a simple Query): each is answered by one ReadyForQuery. */
  readonly syncs: number
  readonly heldMillis: number
  /** Client writes that ended a turnaround (see the module's doc), and the time those turnarounds took. */
  readonly turnarounds: number
  readonly turnaroundMillis: number
  /** Mean delay added to a chunk beyond the asked one, in ms (lateness of the event loop). */
  readonly lateMillis: number
  readonly proxyCpuMillis: number
  readonly wallMillis: number
}

/** The parent's handle on a running proxy. */
export interface LatencyProxy {
  readonly port: number
  readonly reset: () => Promise<void>
  readonly counts: () => Promise<Counts>
  readonly close: () => void
}

type Request = { readonly id: number; readonly kind: "reset" | "counts" }
type Reply = { readonly id: number; readonly counts?: Counts }

/** Forks a proxy to `target` adding `rttMillis` per round trip. */
export const start = (target: { readonly host: string; readonly port: number }, rttMillis: number): Promise<LatencyProxy> =>
  new Promise((resolve, reject) => {
    const child = ChildProcess.fork(new URL(import.meta.url).pathname, [target.host, String(target.port), String(rttMillis)], {
      stdio: ["ignore", "inherit", "inherit", "ipc"]
    })
    const waiting = new Map<number, (reply: Reply) => void>()
    let next = 0
    const ask = (kind: Request["kind"]) =>
      new Promise<Reply>((answer) => {
        const id = next++
        waiting.set(id, answer)
        child.send({ id, kind } satisfies Request)
      })
    child.once("error", reject)
    child.on("message", (message: Reply | { readonly port: number }) => {
      if ("port" in message) {
        resolve({
          port: message.port,
          reset: async () => {
            await ask("reset")
          },
          counts: async () => (await ask("counts")).counts!,
          close: () => child.kill()
        })
        return
      }
      waiting.get(message.id)?.(message)
      waiting.delete(message.id)
    })
  })

// --- the child ---

/** A chunk on its way, and when it may go. */
interface InFlight {
  readonly due: number
  readonly to: Net.Socket
  readonly data: Buffer
  /** Runs when the chunk is written (the held time's end). */
  readonly written?: () => void
}

/**
 * The alarm thread: sleeps until the time in the shared `due` slot (ms since
 * the epoch), posts one message, and sleeps again until the slot's generation
 * changes (a new time set, or the current one changed).
 */
const alarmThread = `
const { workerData, parentPort } = require("node:worker_threads")
const generation = new Int32Array(workerData, 0, 1)
const due = new Float64Array(workerData, 8, 1)
for (;;) {
  const seen = Atomics.load(generation, 0)
  const wait = due[0] - (performance.timeOrigin + performance.now())
  if (due[0] === 0) Atomics.wait(generation, 0, seen)
  else if (wait > 0) Atomics.wait(generation, 0, seen, wait)
  else {
    parentPort.postMessage(0)
    Atomics.wait(generation, 0, seen)
  }
}`

/**
 * Calls `ring` at about the `performance.now()` time last passed to the
 * returned function: from the alarm thread, early by its measured lateness,
 * or from the event loop's next turn when that time is closer than the
 * lateness.
 */
const alarm = (ring: () => void) => {
  const shared = new SharedArrayBuffer(16)
  const generation = new Int32Array(shared, 0, 1)
  const due = new Float64Array(shared, 8, 1)
  // How late the thread's message arrives after the time asked for, learnt as it goes.
  let lead = 0.1
  let asked = 0
  const thread = new WorkerThreads.Worker(alarmThread, { eval: true, workerData: shared })
  thread.unref()
  thread.on("message", () => {
    lead = Math.min(0.5, Math.max(0, 0.9 * lead + 0.1 * (lead + performance.now() - asked)))
    ring()
  })
  return (at: number) => {
    if (at - lead <= performance.now()) return void setImmediate(ring)
    asked = at
    due[0] = performance.timeOrigin + at - lead
    Atomics.add(generation, 0, 1)
    Atomics.notify(generation, 0)
  }
}

/** A FIFO of chunks, drained as they fall due. */
const delayLine = (oneWayMillis: number, onLate: (millis: number) => void) => {
  const queue: Array<InFlight> = []
  let head = 0
  let armed = false
  const pump = () => {
    const now = performance.now()
    while (head < queue.length && queue[head].due <= now) {
      const chunk = queue[head++]
      if (!chunk.to.destroyed) chunk.to.write(chunk.data)
      onLate(now - chunk.due)
      chunk.written?.()
    }
    if (head === queue.length) {
      queue.length = 0
      head = 0
      armed = false
      return
    }
    wakeAt(queue[head].due)
  }
  const wakeAt = alarm(pump)
  return (to: Net.Socket, data: Buffer, written?: () => void) => {
    const arrived = performance.now()
    if (oneWayMillis === 0) {
      to.write(data)
      written?.()
      return
    }
    queue.push({ due: arrived + oneWayMillis, to, data, ...(written ? { written } : {}) })
    if (!armed) {
      armed = true
      wakeAt(arrived + oneWayMillis)
    }
  }
}

/**
 * Splits a byte stream into protocol messages (type byte, then a length that
 * counts itself) and calls `onMessage` with each type and its first body byte.
 * `typed: false` for the client's first message, which has no type byte.
 */
const framer = (onMessage: (type: number, firstByte: number) => void, startsUntyped: boolean) => {
  let pending: Buffer = Buffer.alloc(0)
  let untyped = startsUntyped
  return (chunk: Buffer) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
    let at = 0
    for (;;) {
      const header = untyped ? 4 : 5
      if (pending.length - at < header) break
      const length = pending.readInt32BE(at + header - 4)
      const total = length + header - 4
      if (pending.length - at < total) break
      if (untyped) untyped = false
      else onMessage(pending[at], total > 5 ? pending[at + 5] : 0)
      at += total
    }
    pending = at === pending.length ? Buffer.alloc(0) : pending.subarray(at)
  }
}

const S = 0x53 // Sync
const Q = 0x51 // simple Query
const Z = 0x5a // ReadyForQuery
const I = 0x49 // status: idle

const serve = (host: string, port: number, rttMillis: number) => {
  const zero = { clientWrites: 0, roundTrips: 0, syncs: 0, heldMillis: 0, turnarounds: 0, turnaroundMillis: 0, late: 0, chunks: 0 }
  const counts = { ...zero }
  let since = { wall: performance.now(), cpu: process.cpuUsage() }
  const late = (millis: number) => {
    counts.late += millis
    counts.chunks++
  }
  const toServer = delayLine(rttMillis / 2, late)
  const toClient = delayLine(rttMillis / 2, late)

  const server = Net.createServer((client) => {
    client.setNoDelay(true)
    const upstream = Net.connect({ host, port })
    upstream.setNoDelay(true)
    // The connection's state as the proxy sees it: Syncs unanswered, the last status, since when it is held.
    let unanswered = 0
    let status = I
    let heldSince: number | undefined
    let answeredAt: number | undefined
    let answersOnTheWay = 0
    let endsHold = false
    const fromClient = framer((type) => {
      if (type === S || type === Q) {
        unanswered++
        counts.syncs++
      }
    }, true)
    const fromServer = framer((type, first) => {
      if (type !== Z) return
      unanswered = Math.max(0, unanswered - 1)
      status = first
      if (unanswered === 0 && status === I) endsHold = true
    }, false)
    const answered = () => {
      answersOnTheWay--
      answeredAt = performance.now()
    }
    client.on("data", (chunk) => {
      counts.clientWrites++
      if (unanswered === 0) {
        counts.roundTrips++
        if (heldSince !== undefined && answeredAt !== undefined && answersOnTheWay === 0) {
          counts.turnarounds++
          counts.turnaroundMillis += performance.now() - answeredAt
        }
      }
      heldSince ??= performance.now()
      fromClient(chunk)
      toServer(upstream, chunk)
    })
    upstream.on("data", (chunk) => {
      fromServer(chunk)
      answersOnTheWay++
      if (!endsHold) return toClient(client, chunk, answered)
      endsHold = false
      // The hold ends when the answer that leaves the connection idle reaches the client.
      toClient(client, chunk, () => {
        answersOnTheWay--
        answeredAt = undefined
        if (heldSince !== undefined && unanswered === 0 && status === I) {
          counts.heldMillis += performance.now() - heldSince
          heldSince = undefined
        }
      })
    })
    const close = () => {
      client.destroy()
      upstream.destroy()
    }
    client.on("close", close).on("error", close)
    upstream.on("close", close).on("error", close)
  })

  process.on("message", (request: Request) => {
    if (request.kind === "reset") {
      Object.assign(counts, zero)
      since = { wall: performance.now(), cpu: process.cpuUsage() }
      return process.send!({ id: request.id } satisfies Reply)
    }
    const cpu = process.cpuUsage(since.cpu)
    process.send!({
      id: request.id,
      counts: {
        clientWrites: counts.clientWrites,
        roundTrips: counts.roundTrips,
        syncs: counts.syncs,
        heldMillis: counts.heldMillis,
        turnarounds: counts.turnarounds,
        turnaroundMillis: counts.turnaroundMillis,
        lateMillis: counts.chunks === 0 ? 0 : counts.late / counts.chunks,
        proxyCpuMillis: (cpu.user + cpu.system) / 1_000,
        wallMillis: performance.now() - since.wall
      }
    } satisfies Reply)
  })
  process.on("disconnect", () => process.exit(0))
  server.listen(0, "127.0.0.1", () => process.send!({ port: (server.address() as Net.AddressInfo).port }))
}

if (process.send !== undefined && process.argv.length >= 5 && import.meta.url.endsWith(process.argv[1] ?? "")) {
  serve(process.argv[2], Number(process.argv[3]), Number(process.argv[4]))
}
