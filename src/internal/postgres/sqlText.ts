/**
 * What a statement's text says, read the way PostgreSQL's lexer reads it:
 * comments (nested), string constants (standard, `E''`, `U&''`, dollar
 * quoting), quoted identifiers (with `U&""` escapes) and qualified names.
 *
 * The text never decides isolation on its own (the transaction prologue and
 * the server's reports do, see ./prologue.ts); it decides which fast path a
 * statement may take and when the pool must look at the session:
 * - its first keyword: whether it can begin or end a transaction, or needs
 *   a connection of its own;
 * - the session-scoped functions it calls (`set_config` with `is_local` not
 *   `true`, session advisory locks, `dblink_connect`) and the words that
 *   make session objects (`TEMP`, `pg_temp`, `WITH HOLD`).
 *
 * Spelling does not hide a call: `"set_config"(...)`, `pg_catalog.set_config
 * (...)`, `set_config /* c *\/ (...)` and `U&"\0073et_config"(...)` are all
 * the same call to it.
 *
 * It also reads what else the pool and its test kit need of a statement:
 * what it does to a transaction block, and the command its tag names.
 *
 * Why this module is over 300 lines: it is every reading of SQL text there
 * is, the lexer with all that is read through it, so that no two readings
 * of a statement can disagree.
 *
 * @internal
 */

/** One token; words and identifiers are folded as PostgreSQL folds them. @internal */
export interface Token {
  readonly kind: "word" | "identifier" | "string" | "parameter" | "number" | "symbol"
  /** Lower-cased for words, decoded for quoted identifiers and strings, the character for symbols. */
  readonly text: string
}

const isIdentStart = (c: number) =>
  (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === 95 || c >= 128
const isIdentPart = (c: number) => isIdentStart(c) || (c >= 48 && c <= 57) || c === 36
const isDigit = (c: number) => c >= 48 && c <= 57

/** Decodes `U&` escapes: `\XXXX`, `\+XXXXXX`, and the escape character doubled. */
const decodeUnicodeEscapes = (body: string, escape: string): string => {
  let out = ""
  for (let i = 0; i < body.length; i++) {
    if (body[i] !== escape) {
      out += body[i]
      continue
    }
    if (body[i + 1] === escape) {
      out += escape
      i++
    } else if (body[i + 1] === "+" && /^[0-9a-fA-F]{6}$/.test(body.slice(i + 2, i + 8))) {
      out += String.fromCodePoint(parseInt(body.slice(i + 2, i + 8), 16))
      i += 7
    } else if (/^[0-9a-fA-F]{4}$/.test(body.slice(i + 1, i + 5))) {
      out += String.fromCharCode(parseInt(body.slice(i + 1, i + 5), 16))
      i += 4
    } else {
      out += body[i]
    }
  }
  return out
}

/** The body of a quoted text from `from` (just past the opening quote) and where it ends, honouring backslashes if asked. */
const quoted = (sql: string, from: number, quote: string, backslash: boolean): { body: string; end: number } | undefined => {
  let body = ""
  for (let j = from; j < sql.length; j++) {
    const c = sql[j]
    if (backslash && c === "\\") {
      body += sql.slice(j, j + 2)
      j++
    } else if (c === quote) {
      if (sql[j + 1] !== quote) return { body, end: j + 1 }
      body += quote
      j++
    } else {
      body += c
    }
  }
  return undefined
}

/** A `UESCAPE 'c'` clause after a `U&` literal, if any: its escape character and where it ends. */
const uescape = (sql: string, from: number): { escape: string; end: number } | undefined => {
  const match = /^\s*uescape\s*'([^'])'/i.exec(sql.slice(from, from + 40))
  return match === null ? undefined : { escape: match[1], end: from + match[0].length }
}

/**
 * Reads what starts at `i` of `sql` into `tokens` (nothing for whitespace
 * and comments), and says where the rest starts: `-1` for text that never
 * ends (an unterminated string or comment).
 */
type Reader = (sql: string, i: number, tokens: Array<Token>) => number

const blockComment: Reader = (sql, i) => {
  // Block comments nest in PostgreSQL.
  let depth = 1
  i += 2
  while (i < sql.length && depth > 0) {
    if (sql[i] === "/" && sql[i + 1] === "*") {
      depth++
      i += 2
    } else if (sql[i] === "*" && sql[i + 1] === "/") {
      depth--
      i += 2
    } else {
      i++
    }
  }
  return depth > 0 ? -1 : i
}

/** A quoted text whose body starts at `from`: a string constant, or a quoted identifier. */
const quotedToken = (sql: string, from: number, quote: string, backslash: boolean, tokens: Array<Token>): number => {
  const text = quoted(sql, from, quote, backslash)
  if (text === undefined) return -1
  tokens.push({ kind: quote === "'" ? "string" : "identifier", text: text.body })
  return text.end
}

/** `U&'...'` or `U&"..."`, with its escapes decoded as its `UESCAPE` clause (or the default `\\`) says. */
const unicodeEscaped: Reader = (sql, i, tokens) => {
  const quote = sql[i + 2]
  const literal = quoted(sql, i + 3, quote, false)
  if (literal === undefined) return -1
  const clause = uescape(sql, literal.end)
  const text = decodeUnicodeEscapes(literal.body, clause?.escape ?? "\\")
  tokens.push({ kind: quote === "'" ? "string" : "identifier", text })
  return clause?.end ?? literal.end
}

/** `$1` (a parameter), a dollar quote (`$$...$$`, `$tag$...$tag$`; a tag is an identifier without `$`), or a lone `$`. */
const dollar: Reader = (sql, i, tokens) => {
  let j = i + 1
  if (isDigit(sql.charCodeAt(j))) {
    while (j < sql.length && isDigit(sql.charCodeAt(j))) j++
    tokens.push({ kind: "parameter", text: sql.slice(i, j) })
    return j
  }
  if (j < sql.length && isIdentStart(sql.charCodeAt(j))) {
    j++
    while (j < sql.length && isIdentPart(sql.charCodeAt(j)) && sql[j] !== "$") j++
  }
  if (sql[j] !== "$") {
    tokens.push({ kind: "symbol", text: "$" })
    return i + 1
  }
  const delimiter = sql.slice(i, j + 1)
  const end = sql.indexOf(delimiter, j + 1)
  if (end < 0) return -1
  tokens.push({ kind: "string", text: sql.slice(j + 1, end) })
  return end + delimiter.length
}

/** A run of characters `part` accepts from `i`, as a token of `kind` (`text` folds it). */
const run = (
  sql: string,
  i: number,
  tokens: Array<Token>,
  kind: Token["kind"],
  part: (c: number, ch: string) => boolean,
  text: (run: string) => string
): number => {
  let j = i + 1
  while (j < sql.length && part(sql.charCodeAt(j), sql[j])) j++
  tokens.push({ kind, text: text(sql.slice(i, j)) })
  return j
}

const isSpace = (ch: string) => ch === " " || ch === "\t" || ch === "\n" || ch === "\r" || ch === "\f" || ch === "\v"
const isNumberPart = (c: number, ch: string) => isDigit(c) || ch === "." || ch === "_"
const lowerCase = (text: string) => text.toLowerCase()
const asIs = (text: string) => text

/** The token (or whitespace, or comment) at `i`, by its first characters. */
const token: Reader = (sql, i, tokens) => {
  const ch = sql[i]
  const next = sql[i + 1]
  if (isSpace(ch)) return i + 1
  if (ch === "-" && next === "-") {
    const end = sql.indexOf("\n", i)
    return end < 0 ? sql.length : end + 1
  }
  if (ch === "/" && next === "*") return blockComment(sql, i, tokens)
  if (ch === "'") return quotedToken(sql, i + 1, "'", false, tokens)
  if ((ch === "e" || ch === "E") && next === "'") return quotedToken(sql, i + 2, "'", true, tokens)
  if ((ch === "u" || ch === "U") && next === "&" && (sql[i + 2] === "'" || sql[i + 2] === "\"")) {
    return unicodeEscaped(sql, i, tokens)
  }
  if ("bBxXnN".includes(ch) && next === "'") return quotedToken(sql, i + 2, "'", false, tokens)
  if (ch === "\"") return quotedToken(sql, i + 1, "\"", false, tokens)
  if (ch === "$") return dollar(sql, i, tokens)
  const c = sql.charCodeAt(i)
  if (isIdentStart(c)) return run(sql, i, tokens, "word", isIdentPart, lowerCase)
  if (isDigit(c) || (ch === "." && isDigit(sql.charCodeAt(i + 1)))) return run(sql, i, tokens, "number", isNumberPart, asIs)
  tokens.push({ kind: "symbol", text: ch })
  return i + 1
}

/**
 * Splits a statement into tokens, dropping whitespace and comments. Text it
 * cannot make sense of (an unterminated string or comment) ends the tokens:
 * PostgreSQL would refuse the statement anyway.
 *
 * @internal
 */
export const tokenize = (sql: string): Array<Token> => lexed(sql).tokens

/** The tokens, and whether the text ended where a token could end (no string or comment left open). */
const lexed = (sql: string): { readonly tokens: Array<Token>; readonly complete: boolean } => {
  const tokens: Array<Token> = []
  let i = 0
  while (i >= 0 && i < sql.length) i = token(sql, i, tokens)
  return { tokens, complete: i >= 0 }
}

/**
 * Splits a script (a migration) into its statements at the semicolons
 * outside parentheses, as psql does, for a protocol that takes one statement
 * at a time. Comments stay inside the statement they are in; a piece with no
 * token (only whitespace and comments) is no statement.
 *
 * @internal
 */
export const statements = (script: string): Array<string> => {
  const found: Array<string> = []
  const tokens: Array<Token> = []
  let start = 0
  let counted = 0
  let depth = 0
  let i = 0
  while (i >= 0 && i < script.length) {
    const before = tokens.length
    const next = token(script, i, tokens)
    const read = tokens.length > before ? tokens[before] : undefined
    if (read?.kind === "symbol" && read.text === "(") depth++
    else if (read?.kind === "symbol" && read.text === ")") depth--
    else if (read?.kind === "symbol" && read.text === ";" && depth <= 0) {
      tokens.pop()
      if (tokens.length > counted) found.push(script.slice(start, i).trim())
      counted = tokens.length
      start = next
    }
    i = next
  }
  // Text that never ends (an unterminated string or comment) goes as it is: the server refuses it.
  const rest = script.slice(start).trim()
  if (i < 0 ? rest !== "" : tokens.length > counted) found.push(rest)
  return found
}

/** A word or identifier's folded name; `undefined` for other tokens. */
const nameOf = (token: Token | undefined): string | undefined =>
  token !== undefined && (token.kind === "word" || token.kind === "identifier") ? token.text.toLowerCase() : undefined

/** The arguments of a call whose `(` is at `open`, each as its tokens; commas inside nested parentheses are not splits. */
const callArguments = (tokens: ReadonlyArray<Token>, open: number): Array<Array<Token>> => {
  const args: Array<Array<Token>> = [[]]
  let depth = 0
  for (let i = open; i < tokens.length; i++) {
    const token = tokens[i]
    if (token.kind === "symbol" && (token.text === "(" || token.text === "[")) {
      depth++
      if (depth === 1) continue
    } else if (token.kind === "symbol" && (token.text === ")" || token.text === "]")) {
      depth--
      if (depth === 0) return args
    } else if (depth === 1 && token.kind === "symbol" && token.text === ",") {
      args.push([])
      continue
    }
    args[args.length - 1].push(token)
  }
  return args
}

/** A function called in the text: its name (without schema) and its arguments. @internal */
export interface Call {
  readonly name: string
  readonly args: ReadonlyArray<ReadonlyArray<Token>>
}

/**
 * The functions a statement calls by name: a name, qualified or not, quoted
 * or not, followed by `(`. Keywords such as `IN (` are included; callers
 * look for the names they care about.
 *
 * @internal
 */
export const calls = (tokens: ReadonlyArray<Token>): Array<Call> => {
  const found: Array<Call> = []
  for (let i = 0; i + 1 < tokens.length; i++) {
    const name = nameOf(tokens[i])
    const next = tokens[i + 1]
    if (name !== undefined && next.kind === "symbol" && next.text === "(") {
      found.push({ name, args: callArguments(tokens, i + 1) })
    }
  }
  return found
}

/**
 * Where a statement's first keyword is, past leading parentheses and
 * comments (`(SELECT ...)`); `-1` when it starts with anything else.
 */
const firstAt = (tokens: ReadonlyArray<Token>): number => {
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]
    if (token.kind === "symbol" && token.text === "(") continue
    return token.kind === "word" ? i : -1
  }
  return -1
}

/**
 * How a statement may affect the transaction around it:
 * - `neutral`: it runs inside whatever transaction there is, or alone in its
 *   own, and leaves none open (queries and DML: `SELECT`, `INSERT`, `WITH`,
 *   ...). Functions cannot end or begin transactions.
 * - `control`: it may begin, end or change one (`BEGIN`, `COMMIT`,
 *   `ROLLBACK`, savepoints, `PREPARE TRANSACTION`, and `CALL` / `DO`, whose
 *   bodies may commit).
 * - `other`: everything else (utility statements, DDL): it cannot open a
 *   transaction either, but may touch the session.
 *
 * @internal
 */
export type Effect = "neutral" | "control" | "other"

const neutralStarts: ReadonlySet<string> = new Set([
  "select",
  "insert",
  "update",
  "delete",
  "with",
  "values",
  "table",
  "merge",
  "show",
  "explain"
])

const controlStarts: ReadonlySet<string> = new Set([
  "begin",
  "start",
  "commit",
  "end",
  "rollback",
  "abort",
  "savepoint",
  "release",
  "call",
  "do"
])

/** Commands that set or reveal session state by themselves. */
const sessionStarts: ReadonlySet<string> = new Set([
  "set",
  "reset",
  "discard",
  "deallocate",
  "prepare",
  "execute",
  "listen",
  "unlisten",
  "load",
  "declare",
  "do",
  "call"
])

/** Functions whose effect outlives the transaction unless asked not to. */
const sessionFunctions: ReadonlySet<string> = new Set([
  "pg_advisory_lock",
  "pg_advisory_lock_shared",
  "pg_try_advisory_lock",
  "pg_try_advisory_lock_shared",
  "dblink_connect",
  "dblink_connect_u"
])

/** The words before `TEMP` / `TEMPORARY` in PostgreSQL's grammar: `CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP`, `INTO TEMP`. */
const beforeTemp: ReadonlySet<string> = new Set(["create", "replace", "global", "local", "into"])

/** What makes a session object: a temporary relation (or one in `pg_temp`), a holdable cursor. */
const sessionObject = (tokens: ReadonlyArray<Token>, at: number): string | undefined => {
  const name = nameOf(tokens[at])
  if (name === "pg_temp") return "a temporary object"
  const before = tokens[at - 1]?.kind === "word" ? tokens[at - 1].text : undefined
  if ((name === "temp" || name === "temporary") && before !== undefined && beforeTemp.has(before)) {
    return "a temporary object"
  }
  return name === "hold" && before === "with" ? "a holdable cursor" : undefined
}

/**
 * The statements that open, end or mark a transaction block, as PostgreSQL's
 * grammar tells them apart, synonyms folded: `START TRANSACTION` is a
 * `begin`, `END` a `commit`, `ABORT` a `rollback`; `rollbackTo` is `ROLLBACK
 * TO SAVEPOINT`. Two-phase commit's statements (`PREPARE TRANSACTION`,
 * `COMMIT PREPARED`, ...) are work of their own, not among them.
 *
 * @internal
 */
export type Transaction = "begin" | "commit" | "rollback" | "rollbackTo" | "savepoint" | "release"

/** The token at `at` if it is a word, lower-cased. */
const wordAt = (tokens: ReadonlyArray<Token>, at: number): string | undefined =>
  tokens[at]?.kind === "word" ? tokens[at].text : undefined

/** `WORK` or `TRANSACTION`, which PostgreSQL allows (and ignores) after `COMMIT`, `ROLLBACK` and their synonyms. */
const isNoise = (word: string | undefined): boolean => word === "work" || word === "transaction"

/** The transaction statement whose first keyword is at `at`, if it is one. */
const transactionOf = (tokens: ReadonlyArray<Token>, at: number): Transaction | undefined => {
  const next = wordAt(tokens, at + 1)
  switch (tokens[at].text) {
    case "begin":
    case "start":
      return "begin"
    case "savepoint":
      return "savepoint"
    case "release":
      return "release"
    case "commit":
    case "end":
      return next === "prepared" ? undefined : "commit"
    case "rollback":
    case "abort":
      if (next === "prepared") return undefined
      return wordAt(tokens, isNoise(next) ? at + 2 : at + 1) === "to" ? "rollbackTo" : "rollback"
    default:
      return undefined
  }
}

/**
 * Whether a `commit` or `rollback` is in its plain form: the keyword first,
 * then at most `WORK` or `TRANSACTION` and a `;`. It ends the block and
 * starts nothing (no `AND CHAIN`).
 */
const isPlainEnd = (tokens: ReadonlyArray<Token>, at: number, transaction: Transaction | undefined): boolean => {
  if (at !== 0 || (transaction !== "commit" && transaction !== "rollback")) return false
  let i = isNoise(wordAt(tokens, 1)) ? 2 : 1
  if (tokens[i]?.kind === "symbol" && tokens[i].text === ";") i++
  return i === tokens.length
}

/** What a statement's text says about it. @internal */
export interface Reading {
  /** The first keyword, upper-cased, for telemetry (`db.operation.name`); `UNKNOWN` when there is none. */
  readonly operation: string
  readonly effect: Effect
  /**
   * Why the statement may leave session state behind, from its text; `undefined`
   * when nothing in it says so. Functions defined in the database can still do
   * it unseen: the prologue and the server's reports cover them.
   */
  readonly sessionState: string | undefined
  /** What the statement does to a transaction block, when it opens, ends or marks one. */
  readonly transaction: Transaction | undefined
  /** `COMMIT` or `ROLLBACK` (or a synonym) and nothing more: it ends a transaction block and starts none. */
  readonly plainEnd: boolean
}

/**
 * Whether a statement closes a transaction or a savepoint short of
 * committing: `ROLLBACK`, `ROLLBACK TO`, `RELEASE` (`effect/sql` sends
 * them as it unwinds a transaction's scope). On a lost connection they have
 * nothing left to do: the server dropped the transaction with it.
 *
 * @internal
 */
export const unwinds = (reading: Reading): boolean => {
  const transaction = reading.transaction
  return transaction === "rollback" || transaction === "rollbackTo" || transaction === "release"
}

/**
 * Whether what a transaction did before a statement is still in force, in
 * the same transaction, after it: anything but transaction control, and
 * the control that keeps the transaction whole (`BEGIN` inside one, which
 * PostgreSQL ignores, `SAVEPOINT`, `RELEASE`). Not `COMMIT`, `ROLLBACK`,
 * `ROLLBACK TO`, nor `CALL` and `DO`, whose bodies may commit.
 *
 * @internal
 */
export const keepsTransaction = (reading: Reading): boolean => {
  const transaction = reading.transaction
  return reading.effect !== "control" || transaction === "begin" || transaction === "savepoint" ||
    transaction === "release"
}

/** Whether a `set_config` call's third argument is the literal `true`. */
const isLocalCall = (call: Call): boolean => {
  const local = call.args[2]
  return local !== undefined && local.length === 1 &&
    ((local[0].kind === "word" && local[0].text === "true") ||
      (local[0].kind === "string" && /^(t|true|on|yes|y|1)$/i.test(local[0].text.trim())))
}

/** Session state named by the first words, the calls and the words of a statement. */
const sessionStateOf = (tokens: ReadonlyArray<Token>, first: string): string | undefined => {
  if (sessionStarts.has(first)) {
    // SET LOCAL, SET TRANSACTION and SET CONSTRAINTS end with the transaction.
    const second = nameOf(tokens.find((t, i) => i > 0 && t.kind === "word") ?? undefined)
    if (first !== "set" || (second !== "local" && second !== "transaction" && second !== "constraints")) {
      return `${first.toUpperCase()} outside a transaction-local form`
    }
  }
  for (const call of calls(tokens)) {
    if (call.name === "set_config" && !isLocalCall(call)) return "set_config without is_local = true"
    if (sessionFunctions.has(call.name)) return `${call.name} (session-scoped)`
  }
  for (let at = 0; at < tokens.length; at++) {
    const object = sessionObject(tokens, at)
    if (object !== undefined) return object
  }
  return undefined
}

/**
 * Remembers `f` per statement text: workers repeat the same statements, and
 * what they look like does not change. Bounded, forgetting all when full.
 *
 * @internal
 */
export const perText = <A>(f: (sql: string) => A): (sql: string) => A => {
  const remembered = new Map<string, A>()
  return (sql) => {
    const known = remembered.get(sql)
    if (known !== undefined) return known
    const value = f(sql)
    if (remembered.size >= 1024) remembered.clear()
    remembered.set(sql, value)
    return value
  }
}

/**
 * Reads a statement's text (remembered per text).
 *
 * @internal
 */
export const read: (sql: string) => Reading = perText((sql) => {
  const { tokens, complete } = lexed(sql)
  const at = firstAt(tokens)
  const first = at < 0 ? "" : tokens[at].text
  const transaction = at < 0 ? undefined : transactionOf(tokens, at)
  return {
    operation: first === "" ? "UNKNOWN" : first.toUpperCase(),
    effect: neutralStarts.has(first) ? "neutral" : controlStarts.has(first) || first === "prepare" ? "control" : "other",
    sessionState: sessionStateOf(tokens, first),
    transaction,
    // A text left open (`COMMIT /*`) is the server's to refuse, not a plain end to answer for it.
    plainEnd: complete && isPlainEnd(tokens, at, transaction)
  }
})

/** Statements tagged as another command. */
const taggedAs: ReadonlyMap<string, string> = new Map([
  ["end", "commit"],
  ["abort", "rollback"],
  ["table", "select"],
  ["values", "select"]
])

/** The statements a `WITH` can prefix. */
const withBodies: ReadonlySet<string> = new Set(["select", "insert", "update", "delete", "merge", "values", "table"])

/** The statement the `WITH` at `at` prefixes: the first keyword of one outside its queries' parentheses. */
const prefixed = (tokens: ReadonlyArray<Token>, at: number): string => {
  let depth = 0
  for (let i = at + 1; i < tokens.length; i++) {
    const token = tokens[i]
    if (token.kind === "symbol") depth += token.text === "(" ? 1 : token.text === ")" ? -1 : 0
    else if (depth === 0 && token.kind === "word" && withBodies.has(token.text)) return token.text
  }
  return "with"
}

/**
 * The command a statement's tag names as PostgreSQL answers it (`SELECT 1`,
 * `INSERT 0 1`, `COMMIT`), upper-cased: the first keyword, or the command a
 * synonym stands for (`END` commits, `TABLE` selects), and for `WITH` the
 * statement it prefixes; `""` without a keyword, as for an empty statement.
 * For a database that stands in for PostgreSQL (the test kit's).
 *
 * @internal
 */
export const command = (sql: string): string => {
  const tokens = tokenize(sql)
  const at = firstAt(tokens)
  if (at < 0) return ""
  const first = tokens[at].text
  const word = first === "with" ? prefixed(tokens, at) : first
  return (taggedAs.get(word) ?? word).toUpperCase()
}

/**
 * The elements of a list setting as the server reports it (`search_path`:
 * `"$user", public`), each as written, quotes kept: a comma inside double
 * quotes does not split.
 *
 * @internal
 */
export const listElements = (list: string): Array<string> => {
  const elements: Array<string> = []
  let element = ""
  let quoted = false
  for (const c of list) {
    if (c === "\"") quoted = !quoted
    if (c === "," && !quoted) {
      elements.push(element)
      element = ""
    } else {
      element += c
    }
  }
  elements.push(element)
  return elements.map((e) => e.trim()).filter((e) => e !== "")
}

/**
 * Whether `text` is the one name `name` (lower-case), quoted or not:
 * `pg_temp`, `PG_TEMP`, `"pg_temp"`.
 *
 * @internal
 */
export const isName = (text: string, name: string): boolean => {
  const tokens = tokenize(text)
  return tokens.length === 1 && tokens[0].text.toLowerCase() === name
}
