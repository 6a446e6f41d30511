/**
 * The `ssl` option as the driver's TLS settings: libpq's modes, `PgClient`'s
 * booleans, or Node TLS options passed on.
 *
 * @internal
 */
import type * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Config from "effect/Config"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import type { ConnectionOptions } from "node:tls"
import type { SslMode } from "../../PoolConfig.ts"
import type { Kind } from "./optionKinds.ts"

/** The modes, weakest first. */
const sslModes: ReadonlyArray<SslMode> = ["disable", "prefer", "require", "verify-ca", "verify-full"]

/**
 * What the driver is told about TLS.
 *
 * @internal
 */
export type Tls = Pick<PgConnection.Config, "ssl" | "url">

const tlsFor = (mode: SslMode): Tls => {
  switch (mode) {
    case "disable":
      return { ssl: false }
    case "prefer":
      // The driver only offers prefer-style fallback through a URL parameter.
      return { url: Redacted.make("postgres://?sslmode=prefer") }
    case "require":
      return { ssl: { rejectUnauthorized: false } }
    case "verify-ca":
      return { ssl: { checkServerIdentity: () => undefined } }
    case "verify-full":
      return { ssl: true }
  }
}

/**
 * The `ssl` option's kind; its variable (`PGSSLMODE`) takes the modes.
 *
 * @internal
 */
export const ssl: Kind<SslMode | ConnectionOptions | boolean, Tls> = {
  check: (input) => {
    // `PgClient`'s booleans: `true` checks the chain and the host name, as the driver does with it.
    if (typeof input === "boolean") return Result.succeed(tlsFor(input ? "verify-full" : "disable"))
    if (typeof input === "string") {
      return sslModes.includes(input as SslMode)
        ? Result.succeed(tlsFor(input as SslMode))
        : Result.fail(`unknown SSL mode; use one of ${sslModes.join(", ")}`)
    }
    if (typeof input === "object" && input !== null) return Result.succeed({ ssl: input as ConnectionOptions })
    return Result.fail(`use one of ${sslModes.join(", ")} or Node TLS options`)
  },
  variable: (name) => Config.Literals(sslModes, name),
  values: "a mode, a boolean, or Node TLS options",
  show: String
}
