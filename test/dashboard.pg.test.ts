/**
 * The live view in a real browser: Debian's Chromium, headless, driven by
 * puppeteer-core. The page loads and updates; with one tenant flooding a
 * small pool, that tenant tops its waiters-by-tenant list, hashed, with its
 * backlog; no plain tenant id or credential reaches the page or its feed.
 * Then the main job's `--dashboard`, end to end (and, with
 * MESHHOOK_DASHBOARD_SCREENSHOT=path, the screenshot of docs/live-view.md).
 *
 * CI installs Chromium (.ci/run) and requires it; elsewhere these tests are
 * skipped without it.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as SqlClient from "effect/sql/SqlClient"
import { createHash } from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import puppeteer, { type Page } from "puppeteer-core"
import * as Dashboard from "../src/Dashboard.ts"
import * as Tenant from "../src/Tenant.ts"
import { databaseUrl, eventually, poolLayer, uniqueName } from "./support/pg.ts"
import { run } from "./support/scripts.ts"

const chromiumPath = "/usr/bin/chromium"
const chromium = Fs.existsSync(chromiumPath)
const inBrowser = it.live.skipIf(!chromium && process.env.CI !== "true")

/** Every process whose command line names `text`: Chromium's processes by their profile directory. */
const processesNaming = (text: string): Array<number> =>
  Fs.readdirSync("/proc").filter((entry) => /^\d+$/.test(entry)).filter((pid) => {
    try {
      return Fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(text)
    } catch {
      return false // gone meanwhile
    }
  }).map(Number)

/**
 * Headless Chromium for the scope, with a page 1100 px wide; closed with it,
 * and checked to leave none of its processes behind.
 */
const browserPage = Effect.gen(function*() {
  assert.isTrue(chromium, `${chromiumPath} is missing: install Debian's chromium package (CI does, in .ci/run)`)
  const browser = yield* Effect.acquireRelease(
    Effect.promise(() =>
      puppeteer.launch({ executablePath: chromiumPath, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] })
    ),
    (browser) =>
      Effect.gen(function*() {
        const profile = browser.process()?.spawnargs.find((arg) => arg.startsWith("--user-data-dir="))
        yield* Effect.promise(() => browser.close())
        if (profile !== undefined) assert.isTrue(yield* eventually(Effect.sync(() => processesNaming(profile).length === 0)))
      })
  )
  const page = yield* Effect.promise(() => browser.newPage())
  yield* Effect.promise(() => page.setViewport({ width: 1100, height: 400 }))
  return page
})

/** What the page shows, read in the page (as text: the project's types have no DOM). */
const readFigures = `(() => {
  const text = (id) => document.getElementById(id)?.textContent ?? ""
  return {
    frames: Number(document.body.dataset.frames ?? 0),
    checkouts: text("checkouts"),
    jobs: text("jobs"),
    tenants: Array.from(document.querySelectorAll("#tenants li")).map((row) => ({
      tenant: row.querySelector("code").textContent,
      waiting: Number(row.querySelector("b").textContent)
    }))
  }
})()`

interface Shown {
  /** Frames received. */
  readonly frames: number
  readonly checkouts: string
  readonly jobs: string
  /** The waiters-by-tenant rows. */
  readonly tenants: ReadonlyArray<{ readonly tenant: string; readonly waiting: number }>
}

const figures = (page: Page) => Effect.promise(() => page.evaluate(readFigures) as Promise<Shown>)

/** Waits until the page's figures satisfy `until` (at most 15 s), and returns them. */
const figuresWhere = (page: Page, until: (shown: Shown) => boolean) =>
  Effect.gen(function*() {
    for (let tries = 0; tries < 150; tries++) {
      const shown = yield* figures(page)
      if (until(shown)) return shown
      yield* Effect.sleep(100)
    }
    return assert.fail(`the page never showed that: ${JSON.stringify(yield* figures(page))}`)
  })

/** The next frame of the feed, as the page's own origin reads it. */
const feedFrame = (page: Page) =>
  Effect.promise(() =>
    page.evaluate(`new Promise((resolve) => {
      const events = new EventSource("events")
      events.onmessage = (message) => { events.close(); resolve(message.data) }
    })`) as Promise<string>
  )

/** As `tenantTelemetry: "hashed"` names a tenant. */
const hashed = (tenant: string) => `#${createHash("sha256").update(tenant).digest("hex").slice(0, 16)}`

/** Callers that each run `work` as `tenant` over and over, until the scope closes. */
const callers = (count: number, tenant: string, work: Effect.Effect<unknown, unknown, never>) =>
  Effect.forkScoped(Effect.all(
    Array.from({ length: count }, () => Effect.forever(Effect.ignore(Tenant.with(work, tenant)))),
    { concurrency: "unbounded", discard: true }
  ))

describe("the live view in a browser", () => {
  inBrowser("loads, updates, and shows a noisy tenant's backlog on top, hashed; no plain tenant id or credential", () =>
    Effect.scoped(Effect.gen(function*() {
      const context = yield* Layer.build(Dashboard.layer().pipe(Layer.provideMerge(poolLayer({ max: 2, name: uniqueName("live") }))))
      const sql = Context.get(context, SqlClient.SqlClient)
      const { url } = Context.get(context, Dashboard.Dashboard)
      for (const quiet of ["quiet-tenant-1", "quiet-tenant-2"]) yield* callers(1, quiet, sql`SELECT pg_sleep(0.01)`)
      const page = yield* browserPage
      yield* Effect.promise(() => page.goto(url))
      const first = yield* figuresWhere(page, (shown) => shown.frames >= 1)
      const later = yield* figuresWhere(page, (shown) => shown.frames >= first.frames + 2)
      assert.notStrictEqual(later.checkouts, first.checkouts, "checkouts since start")
      assert.strictEqual(later.jobs, "–", "no job counter given")

      const noisy = "noisy-tenant-4f2a"
      yield* callers(24, noisy, sql.withTransaction(sql`SELECT pg_sleep(0.05)`))
      const flooded = yield* figuresWhere(page, (shown) => shown.tenants[0]?.waiting >= 10)
      assert.strictEqual(flooded.tenants[0].tenant, hashed(noisy))
      for (const other of flooded.tenants.slice(1)) assert.isBelow(other.waiting, flooded.tenants[0].waiting)

      const html = yield* Effect.promise(() => page.content())
      const frame = yield* feedFrame(page)
      assert.include(frame, hashed(noisy))
      const password = new URL(databaseUrl()).password
      for (const shown of [html, frame]) {
        for (const secret of [noisy, "quiet-tenant", databaseUrl(), ...(password === "" ? [] : [password])]) {
          assert.notInclude(shown, secret)
        }
      }
    })))

  inBrowser("npm start -- --dashboard: the main job's live view, with jobs per second and its noisy tenant", () =>
    Effect.gen(function*() {
      const port = yield* freePort
      const job = yield* Effect.forkChild(Effect.promise(() =>
        run(["examples/main.ts", `--dashboard=${port}`, "--noisy", "30", "--duration", "6", "--workers", "20", "--tenants", "5", "--max", "2"])
      ))
      const url = `http://127.0.0.1:${port}/`
      const html = yield* Effect.scoped(Effect.gen(function*() {
        const page = yield* browserPage
        // Until the job has started its server, made its database and started serving (a minute at most).
        yield* Effect.retry(Effect.tryPromise(() => page.goto(url)), { times: 300, schedule: Schedule.spaced("200 millis") })
        const screenshot = process.env.MESHHOOK_DASHBOARD_SCREENSHOT
        // For the screenshot, a few seconds of history in the chart.
        const frames = screenshot === undefined ? 1 : 5
        const shown = yield* figuresWhere(page, (shown) =>
          shown.frames >= frames && shown.jobs !== "–" && shown.tenants[0]?.waiting >= 10)
        assert.match(shown.tenants[0].tenant, /^#[0-9a-f]{16}$/)
        if (screenshot !== undefined) yield* Effect.promise(() => page.screenshot({ path: screenshot as `${string}.png`, fullPage: true }))
        return yield* Effect.promise(() => page.content())
      }))
      const { code, output } = yield* Fiber.join(job)
      assert.strictEqual(code, 0, output)
      assert.include(output, `Live view of the pool on ${url}`)
      const project = /Noisy tenant: 30 more callers as project ([0-9a-f-]{36})/.exec(output)?.[1]
      assert.isDefined(project, output)
      assert.notInclude(html, project!)
    }), 90_000)
})

describe("the main job's --dashboard", () => {
  it("without --duration runs until Ctrl-C, then ends with its summary and closes the live view", async () => {
    const { code, output } = await run(["examples/main.ts", "--dashboard=0", "--workers", "5", "--tenants", "2"], {}, /\s2 s {2}jobs/)
    expect(output).toMatch(/Running 5 workers until Ctrl-C/)
    const url = /Live view of the pool on (http:\/\/127\.0\.0\.1:\d+\/)/.exec(output)?.[1]
    expect(url, output).toBeDefined()
    expect(output).toMatch(/isolation check: 0 cross-tenant rows \(ok\)/)
    expect(code, output).toBe(0)
    await expect(fetch(url!)).rejects.toThrow()
  }, 60_000)
})

/** A port nobody listens on now. */
const freePort = Effect.callback<number>((resume) => {
  const server = Net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = server.address() as Net.AddressInfo
    server.close(() => resume(Effect.succeed(port)))
  })
})
