/**
 * SQL scripts (migrations) as single statements, for the extended protocol,
 * which takes one statement at a time.
 *
 * @internal
 */

/**
 * Splits a script at its top-level semicolons. It knows quoted strings and
 * identifiers, dollar quotes and comments, which is what migrations use.
 *
 * @internal
 */
export const splitStatements = (script: string): Array<string> => {
  const statements: Array<string> = []
  let current = ""
  let i = 0
  /** Copies the script up to the end of the construct opened at `i`, closed by `close`. */
  const through = (close: string, from: number, keep: boolean) => {
    const end = script.indexOf(close, from)
    const stop = end < 0 ? script.length : end + close.length
    if (keep) current += script.slice(i, stop)
    i = stop
  }
  while (i < script.length) {
    const char = script[i]
    const dollar = char === "$" ? /^\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$/.exec(script.slice(i, i + 64)) : null
    if (dollar !== null) through(dollar[0], i + dollar[0].length, true)
    else if (script.startsWith("--", i)) through("\n", i, false)
    else if (script.startsWith("/*", i)) through("*/", i + 2, false)
    else if (char === "'" || char === "\"") through(char, i + 1, true)
    else if (char === ";") {
      if (current.trim() !== "") statements.push(current.trim())
      current = ""
      i++
    } else {
      current += char
      i++
    }
  }
  if (current.trim() !== "") statements.push(current.trim())
  return statements
}
