/**
 * A network between the benchmark's clients and PostgreSQL: a TCP proxy, in a
 * process of its own, that adds a round trip of `rttMillis` (half each way)
 * and counts what crosses it.
 *
 * Precision: Node's timers have a resolution of 1 ms, so a chunk due in less
 * than that is waited for by turning the event loop (`setImmediate`), which
 * keeps reading sockets meanwhile, and later chunks keep their own arrival
 * time. The delay is constant, so chunks fall due in arrival order and one
 * queue per direction serves every connection. The proxy reports the delay
 * it actually added, and its own CPU.
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
 *   long the server connection served one borrower, round trips included.
 *
 * The parent side (`start`) forks this file; the child serves until its
 * parent goes.
 */
import * as ChildProcess from "node:child_process"
import * as Net from "node:net"
import { performance } from "node:perf_hooks"

/** What the proxy measured since the last reset. */
export interface Counts {
  readonly clientWrites: number
  /** Client writes sent while nothing was unanswered on their connection: each costs a whole round trip. */
  readonly roundTrips: number
  /** Sync points the clients sent (Sync or a simple Query): each is answered by one ReadyForQuery. */
  readonly syncs: number
  readonly heldMillis: number
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
    const wait = queue[head].due - now
    if (wait > 1.5) setTimeout(pump, wait - 1)
    else setImmediate(pump)
  }
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
      setImmediate(pump)
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
  const zero = { clientWrites: 0, roundTrips: 0, syncs: 0, heldMillis: 0, late: 0, chunks: 0 }
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
    client.on("data", (chunk) => {
      counts.clientWrites++
      if (unanswered === 0) counts.roundTrips++
      heldSince ??= performance.now()
      fromClient(chunk)
      toServer(upstream, chunk)
    })
    upstream.on("data", (chunk) => {
      fromServer(chunk)
      if (!endsHold) return toClient(client, chunk)
      endsHold = false
      // The hold ends when the answer that leaves the connection idle reaches the client.
      toClient(client, chunk, () => {
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
