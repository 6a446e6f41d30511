/**
 * The benchmark's latency proxy (bench/latencyProxy.ts): it must add at least
 * the round trip asked for, and count what crosses it from the protocol's
 * framing, or every figure of bench/network.ts is wrong.
 */
import * as Net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as LatencyProxy from "../bench/latencyProxy.ts"

/** A protocol message: type byte, then a length that counts itself, then the body. */
const message = (type: string, body: Buffer = Buffer.alloc(0)): Buffer => {
  const header = Buffer.alloc(5)
  header.write(type, 0, "latin1")
  header.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([header, body])
}
const startup = Buffer.from([0, 0, 0, 8, 0, 3, 0, 0])
const sync = message("S")
const readyForQuery = (status: "I" | "T") => message("Z", Buffer.from(status, "latin1"))

/**
 * A stand-in server: answers every Sync with `ReadyForQuery`, in a
 * transaction (`T`) after a Parse, and a simple Query ("COMMIT") with
 * `ReadyForQuery` out of it (`I`).
 */
const fakeServer = () =>
  Net.createServer((socket) => {
    let started = false
    let inTransaction = false
    socket.setNoDelay(true)
    socket.on("data", (chunk) => {
      let at = 0
      if (!started) {
        started = true
        at = chunk.readInt32BE(0)
      }
      while (at < chunk.length) {
        const type = String.fromCharCode(chunk[at])
        if (type === "P") inTransaction = true
        if (type === "Q") inTransaction = false
        if (type === "S" || type === "Q") socket.write(readyForQuery(inTransaction ? "T" : "I"))
        at += 1 + chunk.readInt32BE(at + 1)
      }
    })
  })

/** Sends `bytes` and resolves with the first answer's arrival, in ms since sending. */
const exchange = (socket: Net.Socket, bytes: Buffer): Promise<number> =>
  new Promise((resolve) => {
    const sent = performance.now()
    socket.once("data", () => resolve(performance.now() - sent))
    socket.write(bytes)
  })

describe("latency proxy", () => {
  const server = fakeServer()
  let port = 0
  beforeAll(async () => {
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    port = (server.address() as Net.AddressInfo).port
  })
  afterAll(() => server.close())

  it("adds the round trip asked for, and counts round trips, Syncs, held time and turnaround", async () => {
    const rttMillis = 3
    const proxy = await LatencyProxy.start({ host: "127.0.0.1", port }, rttMillis)
    try {
      const socket = Net.connect({ host: "127.0.0.1", port: proxy.port })
      socket.setNoDelay(true)
      await new Promise((resolve) => socket.once("connect", resolve))
      // The startup message and a first exchange, outside the counts (the proxy's alarm thread starts meanwhile).
      socket.write(startup)
      await exchange(socket, sync)
      await proxy.reset()

      // A "transaction" of three cycles, one after another: Parse+Sync opens it, a plain Sync
      // continues it, a simple Query ends it.
      const elapsed = [
        await exchange(socket, Buffer.concat([message("P"), sync])),
        await exchange(socket, sync),
        await exchange(socket, message("Q"))
      ]
      // Then two Syncs in one write: one round trip, two Syncs.
      await new Promise<void>((resolve) => {
        let answers = 0
        socket.on("data", (chunk) => {
          answers += chunk.length / readyForQuery("I").length
          if (answers >= 2) resolve()
        })
        socket.write(Buffer.concat([sync, sync]))
      })
      const counts = await proxy.counts()
      socket.destroy()

      for (const millis of elapsed) expect(millis).toBeGreaterThanOrEqual(rttMillis)
      expect(counts.clientWrites).toBe(4)
      expect(counts.roundTrips).toBe(4)
      expect(counts.syncs).toBe(5)
      // Two turnarounds inside the held "transaction" (before the second and the third cycle).
      expect(counts.turnarounds).toBe(2)
      // Held: the three-cycle transaction and the two-Sync write, each at least its round trips.
      expect(counts.heldMillis).toBeGreaterThanOrEqual(4 * rttMillis)
      expect(counts.lateMillis).toBeGreaterThanOrEqual(0)
    } finally {
      proxy.close()
    }
  })
})
