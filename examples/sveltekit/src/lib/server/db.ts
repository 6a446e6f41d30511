/**
 * The process's one pool, shared by every request (and by Effect workers, if
 * the server runs any: `db.managed.runFork(worker)`).
 *
 * Its options come from the environment (`DATABASE_URL`, `PGPOOL_*`,
 * `PGAPPNAME`; docs/configuration.md), with the tenancy rules fixed here:
 * MeshHook's policies read `app.project_id`, projects are UUIDs, and SQL
 * without a tenant is refused.
 *
 * `singleton`: Vite's dev server runs this module again after an edit, and
 * each run would otherwise open a pool of its own. `sveltekit:shutdown`:
 * adapter-node emits it on SIGTERM or SIGINT once the HTTP server has
 * closed and the requests in flight have finished; the pool then drains and
 * the process exits.
 */
// In an application: import { Pool, PoolRuntime } from "@meshhook/pool"
import { Pool, PoolRuntime } from "../../../../../src/index.ts"

export const db = PoolRuntime.singleton("meshhook/examples/sveltekit", () =>
  PoolRuntime.make(Pool.layerConfig({ tenantSetting: "app.project_id", tenantFormat: "uuid", requireTenant: true }))
    .closeOn(["sveltekit:shutdown"]))

/** What a request runs its database work through: the pool as the request's tenant. */
export type Db = ReturnType<typeof db.forTenant>
