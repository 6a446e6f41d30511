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

type Target = { readonly host: string; readonly port: number }

/** What a proxy keeps: the faults in force, and the connections it carries (each a client and its upstream). */
interface State {
  faults: Faults
  accepted: number
  readonly pairs: Set<readonly [Net.Socket, Net.Socket]>
}

/**
 * Starts a proxy on 127.0.0.1 (a free port) to `target` for the life of the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (target: Target): Effect.Effect<FaultProxy, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(() => listen(target)),
    ({ proxy, server }) =>
      Effect.promise(() => {
        proxy.resetAll()
        return new Promise<void>((resolve) => server.close(() => resolve()))
      })
  ).pipe(Effect.map(({ proxy }) => proxy))

const listen = (target: Target): Promise<{ readonly server: Net.Server; readonly proxy: FaultProxy }> =>
  new Promise((resolve) => {
    const state: State = { faults: none, accepted: 0, pairs: new Set() }
    const server = Net.createServer((client) => accept(state, target, client))
    server.listen(0, "127.0.0.1", () => resolve({ server, proxy: controls(state, (server.address() as Net.AddressInfo).port) }))
  })

/** The proxy as its user sees it: the faults read and changed, every connection reset. */
const controls = (state: State, port: number): FaultProxy => ({
  host: "127.0.0.1",
  port,
  faults: () => state.faults,
  set: (changes) => {
    state.faults = { ...state.faults, ...changes }
  },
  resetAll: () => {
    for (const [client, upstream] of state.pairs) {
      client.resetAndDestroy()
      upstream.resetAndDestroy()
    }
    state.pairs.clear()
  },
  accepted: () => state.accepted,
  open: () => state.pairs.size
})

/** A new client: refused, or passed through to `target` (after `connectDelay`). */
const accept = (state: State, target: Target, client: Net.Socket): void => {
  if (state.faults.refuse) {
    client.resetAndDestroy()
    return
  }
  state.accepted++
  // Nothing it sends is read until there is an upstream to pass it to.
  client.pause()
  const connect = () => passThrough(state, target, client)
  if (state.faults.connectDelay > 0) setTimeout(connect, state.faults.connectDelay)
  else connect()
}

/** Connects `client` to `target`, bytes flowing both ways under the faults in force; either closing closes both. */
const passThrough = (state: State, target: Target, client: Net.Socket): void => {
  const upstream = Net.connect(target.port, target.host)
  const pair = [client, upstream] as const
  state.pairs.add(pair)
  const close = () => {
    state.pairs.delete(pair)
    client.destroy()
    upstream.destroy()
  }
  client.on("error", close).on("close", close)
  upstream.on("error", close).on("close", close)
  pipe(state, client, upstream)
  pipe(state, upstream, client)
  client.resume()
}

const pipe = (state: State, from: Net.Socket, to: Net.Socket) =>
  from.on("data", (chunk) => {
    if (state.faults.blackhole) return
    if (state.faults.latency > 0) setTimeout(() => to.writable && to.write(chunk), state.faults.latency)
    else if (to.writable) to.write(chunk)
  })
