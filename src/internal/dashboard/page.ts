/**
 * The live view's page: one self-contained HTML document, its style and
 * script inline, that follows `events` (Server-Sent Events, one frame of
 * ./readings.ts a second). It loads nothing else, and its Content Security
 * Policy says so to the browser: only this style and script, by hash, and
 * connections back to where it came from.
 *
 * @internal
 */
import { createHash } from "node:crypto"

const style = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330 }
header { display: flex; gap: 1em; align-items: baseline; padding: .8em 1.2em; background: #1d2330; color: #fff }
h1 { font-size: 1.2em; margin: 0 } h1 span { font-weight: 400 }
h2 { font-size: .9em; margin: 0 0 .6em; text-transform: uppercase; letter-spacing: .05em; color: #5b6375 }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 1em; padding: 1em 1.2em }
section { background: #fff; border-radius: 6px; padding: .9em 1em; box-shadow: 0 1px 2px #0002 }
section.wide { grid-column: 1 / -1 }
dl { display: grid; grid-template-columns: auto auto; gap: .2em 1em; margin: .6em 0 0 }
dd { margin: 0; text-align: right; font-variant-numeric: tabular-nums; font-weight: 600 }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums }
th, td { text-align: right; padding: .2em .4em } th:first-child, td:first-child { text-align: left }
.badge { padding: .1em .6em; border-radius: 1em; background: #2e7d32; font-size: .85em }
.badge.open { background: #c62828 } #status { margin-left: auto; font-size: .85em; color: #b8c0d0 }
.stack { display: flex; height: 22px; background: #e6e9ef; border-radius: 3px; position: relative; overflow: hidden }
.stack span { display: block } .used { background: #3b6fd4 } .idle { background: #8fb0ee } .opening { background: #f2b134 }
dt i { display: inline-block; width: .8em; height: .8em; border-radius: 2px; margin-right: .4em }
#limit { position: absolute; top: 0; bottom: 0; width: 2px; background: #1d2330 }
svg { width: 100%; height: 40px; margin-top: .6em } polyline { fill: none; stroke: #3b6fd4; stroke-width: 2; vector-effect: non-scaling-stroke }
ol { margin: 0; padding: 0; list-style: none }
li { display: grid; grid-template-columns: 11em 1fr 3em; gap: .6em; align-items: center; margin: .2em 0 }
li code { overflow: hidden; text-overflow: ellipsis } li b { text-align: right }
li span { height: 12px; background: #d4553b; border-radius: 2px }
.note { color: #5b6375; font-size: .85em; margin: 0 0 .6em }
`

const body = `
<header><h1>Pool <span id="pool">…</span></h1><span id="circuit" class="badge">circuit closed</span>
<span id="status">connecting…</span></header>
<main>
<section><h2>Connections</h2>
<div class="stack"><span class="used" id="bar-used"></span><span class="idle" id="bar-idle"></span>
<span class="opening" id="bar-opening"></span><i id="limit"></i></div>
<dl><dt><i class="used"></i>used</dt><dd id="used">–</dd><dt><i class="idle"></i>idle</dt><dd id="idle">–</dd>
<dt><i class="opening"></i>opening</dt><dd id="opening">–</dd>
<dt id="limit-label">limit / max</dt><dd id="limits">–</dd><dt>callers waiting</dt><dd id="waiting">–</dd>
<dt>checkouts since start</dt><dd id="checkouts">–</dd></dl></section>
<section><h2>Per second</h2>
<dl><dt id="jobs-label">jobs</dt><dd id="jobs">–</dd><dt>statements</dt><dd id="statements">–</dd>
<dt>failed statements</dt><dd id="errors">–</dd><dt>checkouts</dt><dd id="checkouts-rate">–</dd>
<dt>turned away</dt><dd id="rejections">–</dd></dl>
<svg viewBox="0 0 120 40" preserveAspectRatio="none"><polyline id="spark"/></svg>
<p class="note">statements per second since the page opened (two minutes at most)</p></section>
<section><h2>Latency, last interval (ms)</h2>
<table><tr><th></th><th>p50</th><th>p95</th><th>p99</th></tr>
<tr><td>wait for a connection</td><td id="wait-p50">–</td><td id="wait-p95">–</td><td id="wait-p99">–</td></tr>
<tr><td>statement</td><td id="statement-p50">–</td><td id="statement-p95">–</td><td id="statement-p99">–</td></tr></table>
</section>
<section class="wide"><h2>Waiters by tenant</h2><p class="note" id="tenant-names"></p><ol id="tenants"></ol></section>
</main>
`

/** Written for a reader: no build step, no framework; text goes in with textContent only, never as HTML. */
const script = `
const $ = (id) => document.getElementById(id)
// Two decimals below 10, one below 100, none above: rates and milliseconds alike.
const number = (n) => n === null ? "–" : n.toLocaleString("en-US", { maximumFractionDigits: n < 10 ? 2 : n < 100 ? 1 : 0 })
const history = []
const tenantNames = {
  hashed: "Tenant ids hashed, as telemetry names them (tenantTelemetry: hashed).",
  plain: "Tenant ids as they are (tenantTelemetry: plain).",
  off: "Tenants hidden (tenantTelemetry: off): their backlogs without their names."
}
let frames = 0

function connections(f) {
  const c = f.connections
  for (const part of ["used", "idle", "opening"]) {
    $(part).textContent = c[part]
    $("bar-" + part).style.width = (100 * c[part] / c.max) + "%"
  }
  $("limit").style.left = "calc(" + (100 * c.limit / c.max) + "% - 2px)"
  $("limit-label").textContent = f.sizing === "adaptive" ? "limit (adaptive) / max" : "limit / max"
  $("limits").textContent = c.limit + " / " + c.max
  $("waiting").textContent = f.waiting
  $("checkouts").textContent = f.checkouts.toLocaleString("en-US")
}

function rates(f) {
  const r = f.perSecond
  $("jobs-label").textContent = r.jobs === null ? "jobs (not counted)" : "jobs"
  $("jobs").textContent = number(r.jobs)
  $("statements").textContent = number(r.statements)
  $("errors").textContent = number(r.statementErrors)
  $("checkouts-rate").textContent = number(r.checkouts)
  const reasons = Object.entries(r.rejections)
  $("rejections").textContent = number(reasons.reduce((sum, [, n]) => sum + n, 0))
  $("rejections").title = reasons.map(([reason, n]) => reason + ": " + number(n)).join(", ")
  history.push(r.statements)
  if (history.length > 120) history.shift()
  const top = Math.max(1, ...history)
  const step = 120 / Math.max(1, history.length - 1)
  $("spark").setAttribute("points", history.map((v, i) => i * step + "," + (39 - 38 * v / top)).join(" "))
}

function latencies(f) {
  for (const [name, p] of [["wait", f.waitMillis], ["statement", f.statementMillis]]) {
    for (const q of ["p50", "p95", "p99"]) $(name + "-" + q).textContent = p === null ? "–" : number(p[q])
  }
}

function tenants(f) {
  $("tenant-names").textContent = tenantNames[f.tenantNames] + " Callers without a tenant are not listed."
  const most = Math.max(1, ...f.tenantsWaiting.map((t) => t.waiting))
  $("tenants").replaceChildren(...f.tenantsWaiting.map((t) => {
    const row = document.createElement("li")
    const name = document.createElement("code")
    const bar = document.createElement("span")
    const count = document.createElement("b")
    name.textContent = t.tenant
    bar.style.width = (100 * t.waiting / most) + "%"
    count.textContent = t.waiting
    row.append(name, bar, count)
    return row
  }))
  if (f.tenantsWaiting.length === 0) $("tenants").textContent = "nobody waits"
}

function show(f) {
  $("pool").textContent = f.pool
  $("circuit").textContent = "circuit " + f.circuit
  $("circuit").className = "badge " + f.circuit
  connections(f)
  rates(f)
  latencies(f)
  tenants(f)
  document.body.dataset.frames = ++frames
  $("status").textContent = "live, " + new Date(f.at).toLocaleTimeString()
}

const events = new EventSource("events")
events.onmessage = (message) => show(JSON.parse(message.data))
events.onerror = () => { $("status").textContent = "disconnected, retrying…" }
`

const hash = (text: string) => `'sha256-${createHash("sha256").update(text).digest("base64")}'`

/**
 * The page's Content Security Policy: nothing but its own inline style and
 * script (by hash), and its feed.
 *
 * @internal
 */
export const contentSecurityPolicy = [
  "default-src 'none'",
  `style-src ${hash(style)}`,
  `script-src ${hash(script)}`,
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'"
].join("; ")

/**
 * The page.
 *
 * @internal
 */
export const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Pool live view</title><style>${style}</style></head>
<body>${body}<script>${script}</script></body></html>
`
