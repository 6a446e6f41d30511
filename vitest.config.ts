import { defineConfig } from "vitest/config"
import { findBinary } from "./src/testing/PgBouncer.ts"

/**
 * Suites that also run through a transaction-mode PgBouncer: the core, tenant isolation and the faults.
 * PgBouncer's own failures (its restart, its refusals) are test/pgbouncer.pg.test.ts.
 */
const throughPgBouncer = [
  "test/pool.pg.test.ts",
  "test/tenant.pg.test.ts",
  "test/isolation.pg.test.ts",
  "test/adversarial.pg.test.ts",
  "test/faults.pg.test.ts",
  "test/pgClient.pg.test.ts",
  "test/notifications.pg.test.ts",
  "test/compatibility.pg.test.ts"
]

/**
 * Suites that judge throughput the pool measures itself (adaptive sizing learns from it): they run after
 * the others, alone, so that the rest of the suite does not load the machine under them.
 */
const alone = ["test/sizing.pg.test.ts"]

// CI installs PgBouncer and requires it; elsewhere the suites run directly when it is missing.
const withPgBouncer = findBinary() !== undefined || process.env.MESHHOOK_REQUIRE_PGBOUNCER === "1"

export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 60_000,
    projects: [
      {
        extends: true,
        test: {
          name: "direct",
          include: ["test/**/*.test.ts", "examples/**/*.test.ts"],
          exclude: alone,
          globalSetup: ["test/support/globalSetup.ts"]
        }
      },
      {
        extends: true,
        test: { name: "alone", include: alone, globalSetup: ["test/support/globalSetup.ts"], sequence: { groupOrder: 1 } }
      },
      // The benchmark suite at smoke scale (minutes): `npm run test:bench`, a CI step of its own, not `npm test`.
      ...(process.env.MESHHOOK_BENCH_SMOKE === "1"
        ? [{ extends: true, test: { name: "bench", include: ["bench/**/*.test.ts"], testTimeout: 240_000 } }]
        : []),
      ...(withPgBouncer
        ? [{
          extends: true,
          test: { name: "pgbouncer", include: throughPgBouncer, globalSetup: ["test/support/bouncerSetup.ts"] }
        }]
        : [])
    ]
  }
})
