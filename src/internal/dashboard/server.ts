/**
 * The live view's HTTP server, on Node's `http` alone: `GET /` the page,
 * `GET /events` the frames as Server-Sent Events; anything else is refused.
 *
 * @internal
 */
import * as Http from "node:http"
import * as Net from "node:net"
import * as Page from "./page.ts"
import type { Frame } from "./readings.ts"

const loopbackAddresses = new Net.BlockList()
loopbackAddresses.addSubnet("127.0.0.0", 8, "ipv4")
loopbackAddresses.addAddress("::1", "ipv6")

/**
 * Whether `host` (a name or an address) is this machine's loopback:
 * `localhost`, 127.0.0.0/8 or ::1.
 *
 * @internal
 */
export const isLoopback = (host: string): boolean => {
  const version = Net.isIP(host)
  return host.toLowerCase() === "localhost" ||
    (version !== 0 && loopbackAddresses.check(host, version === 6 ? "ipv6" : "ipv4"))
}

/** The host name of a `Host` header (`name:port`, `[v6]:port`). */
const hostName = (header: string): string =>
  header.startsWith("[") ? header.slice(1, header.indexOf("]")) : header.replace(/:\d*$/, "")

/** A client further behind than this many bytes of frames is dropped rather than buffered for. */
const maxBacklogBytes = 64 * 1024

/** Headers of every answer: nothing cached, sniffed, framed or sent on as a referrer. */
const common = {
  "Cache-Control": "no-store",
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "Cross-Origin-Resource-Policy": "same-origin"
}

/**
 * The server and its feed: `publish` sends a frame to every open stream (and
 * keeps it for those that open next), `close` ends the streams.
 *
 * @internal
 */
export interface LiveServer {
  readonly server: Http.Server
  readonly publish: (frame: Frame) => void
  readonly close: () => void
}

/**
 * Makes the server (not yet listening). With `loopbackNames`, requests must
 * name the host as a loopback address or `localhost`: a page elsewhere that
 * points its own name at 127.0.0.1 (DNS rebinding) is refused.
 *
 * @internal
 */
export const make = (options: { readonly loopbackNames: boolean }): LiveServer => {
  const streams = new Set<Http.ServerResponse>()
  let latest: string | undefined
  const send = (stream: Http.ServerResponse, event: string) => {
    if (stream.writableLength > maxBacklogBytes) {
      streams.delete(stream)
      return void stream.destroy()
    }
    stream.write(event)
  }
  const subscribe = (request: Http.IncomingMessage, response: Http.ServerResponse) => {
    response.writeHead(200, { ...common, "Content-Type": "text/event-stream; charset=utf-8" })
    // Reconnect soon after a lost stream; then the latest frame at once rather than in up to a second.
    response.write("retry: 2000\n\n")
    if (latest !== undefined) response.write(latest)
    streams.add(response)
    request.once("close", () => streams.delete(response))
  }
  const server = Http.createServer((request, response) => {
    const refusal = refuse(request, options.loopbackNames)
    if (refusal !== undefined) {
      response.writeHead(refusal.status, { ...common, "Content-Type": "text/plain; charset=utf-8", ...refusal.headers })
      return void response.end(`${refusal.text}\n`)
    }
    if (request.url === "/events") return subscribe(request, response)
    response.writeHead(200, {
      ...common,
      "Content-Type": "text/html; charset=utf-8",
      "Content-Security-Policy": Page.contentSecurityPolicy
    })
    response.end(Page.html)
  })
  return {
    server,
    publish: (frame) => {
      latest = `data: ${JSON.stringify(frame)}\n\n`
      for (const stream of streams) send(stream, latest)
    },
    close: () => {
      for (const stream of streams) stream.end()
      streams.clear()
    }
  }
}

/** Why a request gets no page or feed, if it does not. */
const refuse = (
  request: Http.IncomingMessage,
  loopbackNames: boolean
): { readonly status: number; readonly text: string; readonly headers?: Record<string, string> } | undefined => {
  if (loopbackNames && !isLoopback(hostName(request.headers.host ?? ""))) {
    return { status: 403, text: "This live view answers to loopback names only (127.0.0.1, localhost, [::1])" }
  }
  if (request.method !== "GET") return { status: 405, text: "Only GET", headers: { Allow: "GET" } }
  if (request.url !== "/" && request.url !== "/events") return { status: 404, text: "Not found: the page is /, its feed /events" }
  return undefined
}
