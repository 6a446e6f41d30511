/**
 * A MeshHook-shaped database on the test server, shared by the tests of one file.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Database from "../../examples/meshhook/database.ts"
import * as Pool from "../../src/Pool.ts"
import type * as PoolConfig from "../../src/PoolConfig.ts"
import { behindPooler, databaseUrl } from "./pg.ts"

export class MeshHookDb extends Context.Service<MeshHookDb, Database.MeshHookDatabase>()("test/MeshHookDb") {
  static readonly layer = (options: Database.Options = {}) =>
    Layer.effect(MeshHookDb, Effect.suspend(() => Database.create(Redacted.make(databaseUrl()), options)))
}

/** A pool that logs in as the worker role and sets MeshHook's tenant setting. */
export const workerPool = (options: PoolConfig.Options = {}) =>
  Layer.unwrap(Effect.map(Effect.service(MeshHookDb), (db) =>
    Pool.layer({ url: db.workerUrl, tenantSetting: Database.tenantSetting, behindPooler: behindPooler(), ...options })))
