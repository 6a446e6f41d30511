/**
 * A loopback TCP proxy to put between a pool and PostgreSQL in tests, and to
 * break on purpose: add latency, slow down new connections, blackhole traffic
 * (bytes are swallowed, sockets stay open: the network partition a real
 * outage looks like), or reset every connection.
 *
 * ```ts
 * const proxy = yield* FaultProxy.make({ host: server.host, port: server.port })
 * const PoolLive = Pool.layer({ url: server.url(), port: proxy.port })
 * proxy.set({ blackhole: true })   // ... later: proxy.set({ blackhole: false })
 * ```
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Net from "node:net"

/**
 * What the proxy does to traffic; every field can be changed at any time.
 *
 * @since 0.1.0
 * @category models
 */
export interface Faults {
  /** Delay added to every chunk, each way, in ms. */
  readonly latency: number
  /** Delay before a new connection is passed through, in ms. */
  readonly connectDelay: number
  /** Swallow all bytes, each way, without closing anything. */
  readonly blackhole: boolean
  /** Refuse new connections (they are reset at once). */
  readonly refuse: boolean
}

/**
 * A running proxy.
 *
 * @since 0.1.0
 * @category models
 */
export interface FaultProxy {
  readonly host: string
  readonly port: number
  readonly faults: () => Faults
  readonly set: (faults: Partial<Faults>) => void
  /** Resets every open connection, both sides. */
  readonly resetAll: () => void
  /** Connections passed through so far. */
  readonly accepted: () => number
  /** Connections open right now. */
  readonly open: () => number
}

const none: Faults = { latency: 0, connectDelay: 0, blackhole: false, refuse: false }

/**
 * Starts a proxy on 127.0.0.1 (a free port) to `target` for the life of the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (target: { readonly host: string; readonly port: number }): Effect.Effect<FaultProxy, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(() =>
      new Promise<{ readonly server: Net.Server; readonly proxy: FaultProxy }>((resolve) => {
        let faults = none
        let accepted = 0
        const pairs = new Set<readonly [Net.Socket, Net.Socket]>()

        const pipe = (from: Net.Socket, to: Net.Socket) =>
          from.on("data", (chunk) => {
            if (faults.blackhole) return
            if (faults.latency > 0) setTimeout(() => to.writable && to.write(chunk), faults.latency)
            else if (to.writable) to.write(chunk)
          })

        const server = Net.createServer((client) => {
          if (faults.refuse) return client.resetAndDestroy()
          accepted++
          client.pause()
          const connect = () => {
            const upstream = Net.connect(target.port, target.host)
            const pair = [client, upstream] as const
            pairs.add(pair)
            const close = () => {
              pairs.delete(pair)
              client.destroy()
              upstream.destroy()
            }
            client.on("error", close).on("close", close)
            upstream.on("error", close).on("close", close)
            pipe(client, upstream)
            pipe(upstream, client)
            client.resume()
          }
          if (faults.connectDelay > 0) setTimeout(connect, faults.connectDelay)
          else connect()
        })
        server.listen(0, "127.0.0.1", () => {
          const proxy: FaultProxy = {
            host: "127.0.0.1",
            port: (server.address() as Net.AddressInfo).port,
            faults: () => faults,
            set: (changes) => {
              faults = { ...faults, ...changes }
            },
            resetAll: () => {
              for (const [client, upstream] of pairs) {
                client.resetAndDestroy()
                upstream.resetAndDestroy()
              }
              pairs.clear()
            },
            accepted: () => accepted,
            open: () => pairs.size
          }
          resolve({ server, proxy })
        })
      })
    ),
    ({ proxy, server }) =>
      Effect.promise(() => {
        proxy.resetAll()
        return new Promise<void>((resolve) => server.close(() => resolve()))
      })
  ).pipe(Effect.map(({ proxy }) => proxy))
