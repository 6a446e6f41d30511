/**
 * The size rules CONTRIBUTING.md states for src/: no function over 60 lines
 * (a closure counts as the function that holds it), and a module over 300
 * lines says why at its top ("over 300 lines"). Functions are found by
 * parsing the code (rolldown's parser), not by reading text.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { parseAst } from "rolldown/parseAst"

const root = new URL("../src/", import.meta.url)
const sources = (Fs.readdirSync(root, { recursive: true }) as Array<string>)
  .filter((file) => file.endsWith(".ts"))
  .map((file) => ({ file: Path.join("src", file), text: Fs.readFileSync(new URL(file, root), "utf8") }))

const functionTypes = new Set(["FunctionDeclaration", "FunctionExpression", "ArrowFunctionExpression"])

interface Node {
  readonly type: string
  readonly start: number
  readonly end: number
}

/** Every function of a module, with the line it starts on and how many lines it spans. */
const functions = (text: string): Array<{ readonly line: number; readonly lines: number }> => {
  const lineOf = (offset: number) => text.slice(0, offset).split("\n").length
  const found: Array<{ line: number; lines: number }> = []
  const visit = (value: unknown): void => {
    if (Array.isArray(value)) return value.forEach(visit)
    if (value === null || typeof value !== "object") return
    const node = value as Node
    if (functionTypes.has(node.type)) found.push({ line: lineOf(node.start), lines: lineOf(node.end) - lineOf(node.start) + 1 })
    for (const child of Object.values(node)) visit(child)
  }
  visit(parseAst(text, { lang: "ts" }).body)
  return found
}

describe("layout of src/", () => {
  it("reads every module", () => {
    assert.isAbove(sources.length, 40)
    assert.isAbove(functions(sources.find((s) => s.file.endsWith("Pool.ts"))!.text).length, 10)
  })

  it("has no function over 60 lines", () => {
    const long = sources.flatMap(({ file, text }) =>
      functions(text).filter((f) => f.lines > 60).map((f) => `${file}:${f.line} (${f.lines} lines)`)
    )
    assert.deepStrictEqual(long, [])
  })

  it("has no module over 300 lines that does not say why at its top", () => {
    const unexplained = sources
      .filter(({ text }) => text.trimEnd().split("\n").length > 300)
      .filter(({ text }) => !/over 300 lines/i.test(text.slice(0, text.indexOf("*/"))))
      .map(({ file }) => file)
    assert.deepStrictEqual(unexplained, [])
  })
})
