/**
 * Where the pool connects and as whom: a URL read as the options it stands
 * for (the options given win over it), the server and the role required,
 * and the driver's settings for every connection.
 *
 * A URL is never shown in an error, whatever its shape: a malformed one can
 * carry its password anywhere (an unencoded `@`, a `jdbc:` prefix, the query
 * string). Its problems are `url`'s, whose kind is secret, and say what is
 * wrong without it.
 *
 * @internal
 */
import type * as PgConnection from "@effect/sql-pg/PgConnection"
import * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import type { Options } from "../../PoolConfig.ts"
import type { Problems } from "./optionChecks.ts"
import { table, type Values } from "./options.ts"

/** What a URL can say, as options. */
type UrlParts = {
  -readonly [K in "host" | "port" | "database" | "username" | "password" | "ssl" | "applicationName"]?: unknown
}

const decode = (text: string): string | undefined => {
  try {
    return decodeURIComponent(text)
  } catch {
    return undefined
  }
}

/** libpq's parameters in a URL's query string, and the options they set. */
const queryParameters = {
  host: "host",
  port: "port",
  user: "username",
  password: "password",
  dbname: "database",
  sslmode: "ssl",
  application_name: "applicationName"
} as const satisfies Record<string, keyof UrlParts>

/** The options a `postgres://` URL gives, its query string winning over the rest; or why it is no such URL. */
const parseUrl = (raw: string): UrlParts | string => {
  const url = URL.parse(raw)
  if (url === null) return "not a URL"
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") return "the scheme must be postgres:// or postgresql://"
  const parts: UrlParts = {}
  if (url.hostname !== "") parts.host = url.hostname.replace(/^\[(.*)\]$/, "$1")
  if (url.port !== "") parts.port = Number(url.port)
  for (const [key, text] of [["username", url.username], ["password", url.password]] as const) {
    if (text === "") continue
    const decoded = decode(text)
    if (decoded === undefined) return `bad percent-encoding in the ${key}`
    parts[key] = decoded
  }
  const database = decode(url.pathname.replace(/^\//, ""))
  if (database === undefined) return "bad percent-encoding in the database name"
  if (database !== "") parts.database = database
  for (const [name, key] of Object.entries(queryParameters)) {
    const text = url.searchParams.get(name)
    if (text !== null) parts[key] = key === "port" ? Number(text) : text
  }
  // The authority's port is a number by the URL's own syntax; the query string's is checked as part of it.
  if (url.searchParams.has("port") && Result.isFailure(table.port.kind.check(parts.port))) {
    return "bad port in the query string"
  }
  return parts
}

/**
 * `options` with what their URL says filled in where they say nothing. Each
 * part filled in is checked as its option would be, and a wrong one
 * reported as the URL's.
 *
 * @internal
 */
export const withUrl = (options: Options, problems: Problems): Options => {
  if (options.url === undefined) return options
  const raw = Redacted.isRedacted(options.url) ? Redacted.value(options.url) : options.url
  const parts = parseUrl(String(raw))
  if (typeof parts === "string") {
    problems.report("url", raw, parts)
    return options
  }
  const filled: Record<string, unknown> = { ...options }
  for (const [key, value] of Object.entries(parts) as Array<[keyof UrlParts, unknown]>) {
    if (filled[key] !== undefined) continue
    const checked = table[key].kind.check(value)
    if (Result.isFailure(checked)) problems.report("url", raw, `the ${key} in it: ${checked.failure}`)
    else filled[key] = value
  }
  return filled as Options
}

/**
 * Where to connect, as whom, and how: what `Resolved` says of it.
 *
 * @internal
 */
export interface Target {
  readonly host: string
  readonly port: number
  readonly database: string
  readonly username: string
  readonly connection: PgConnection.Config
}

/**
 * The target of validated options; the server and the role are required (a
 * socket path or a custom transport stands in for the host). Nothing is
 * said missing when the URL that should have said it is wrong.
 *
 * @internal
 */
export const target = (values: Values, problems: Problems): Target => {
  // The host still names the server in telemetry.
  const host = values.host ?? values.path ?? (values.stream === undefined ? undefined : "stream")
  const required = (field: "host" | "username", value: string | undefined, reason: string) => {
    if (value === undefined && !problems.has(field) && !problems.has("url")) problems.report(field, value, reason)
    return value ?? ""
  }
  const server = {
    host: required("host", host, "no host given (set url, host or path)"),
    port: values.port,
    database: values.database ?? values.username ?? "",
    username: required("username", values.username, "no username given (set url or username)")
  }
  return {
    ...server,
    connection: {
      ...values.ssl,
      ...server,
      ...(values.password === undefined ? {} : { password: asRedacted(values.password) }),
      applicationName: values.applicationName,
      connectTimeout: Duration.millis(values.connectTimeout),
      prepare: values.prepare,
      preparedStatementCacheSize: values.preparedStatementCacheSize,
      ...driverSettings(values)
    }
  }
}

const asRedacted = (
  password: string | Redacted.Redacted<string> | Effect.Effect<Redacted.Redacted<string>>
): Redacted.Redacted<string> | Effect.Effect<Redacted.Redacted<string>> =>
  typeof password === "string" ? Redacted.make(password) : password

/** `PgClient`'s connection settings the pool has no use for itself: to the driver as they are. */
const driverOptions = [
  "path",
  "startupParameters",
  "startupOptions",
  "keepAlive",
  "stream",
  "types",
  "maxMessageSize"
] as const satisfies ReadonlyArray<keyof Values & keyof PgConnection.Config>

const driverSettings = (values: Values): Partial<PgConnection.Config> =>
  Object.fromEntries(driverOptions.flatMap((key) => values[key] === undefined ? [] : [[key, values[key]]]))
