/** What SvelteKit's hooks give every request. */
import type { Db } from "./lib/server/db.ts"

declare global {
  namespace App {
    interface Locals {
      /** The pool as the request's tenant, or with no tenant (then any SQL fails with TenantRequiredError). */
      db: Db
    }
  }
}

export {}
