/**
 * Reading statement text as PostgreSQL's lexer does: the fast path that
 * decides which statements share a connection and when the pool resets a
 * session. Spellings an attacker tries next must not hide what a statement
 * does (the prologue and the server's reports stay the defence; see
 * test/adversarial.pg.test.ts).
 */
import { assert, describe, it } from "@effect/vitest"
import * as SqlText from "../src/internal/sqlText.ts"

const sessionState = (sql: string) => SqlText.read(sql).sessionState

describe("SqlText", () => {
  it("finds set_config however it is spelled", () => {
    const spellings = [
      "SELECT set_config('app.project_id', $1, false)",
      "SELECT \"set_config\"('app.project_id', $1, false)",
      "SELECT pg_catalog.set_config('app.project_id', $1, false)",
      "SELECT pg_catalog.\"set_config\"('app.project_id', $1, false)",
      "SELECT \"pg_catalog\" . \"set_config\" ('app.project_id', $1, false)",
      "SELECT set_config /* a comment */ ('app.project_id', $1, false)",
      "SELECT set_config /* nested /* comment */ still */ ('app.project_id', $1, false)",
      "SELECT set_config -- a line comment\n ('app.project_id', $1, false)",
      "SELECT SET_CONFIG('app.project_id', $1, FALSE)",
      "SELECT U&\"\\0073et_config\"('app.project_id', $1, false)",
      "SELECT U&\"!0073et_config\" UESCAPE '!' ('app.project_id', $1, false)",
      "SELECT set_config('app.project_id', $1, (SELECT false))",
      "SELECT set_config('app.project_id', $1, $2)",
      "SELECT * FROM set_config('role', 'admin', false)",
      "WITH x AS (SELECT set_config('search_path', 'evil', false)) SELECT * FROM x"
    ]
    for (const sql of spellings) assert.strictEqual(sessionState(sql), "set_config without is_local = true", sql)
  })

  it("lets a transaction-local set_config through, and is not fooled by strings and comments", () => {
    const harmless = [
      "SELECT set_config('app.trace', $1, true)",
      "SELECT set_config('app.trace', $1, TRUE)",
      "SELECT set_config(concat('app.', 'trace'), $1, true)",
      "SELECT 'set_config(''x'', ''y'', false)' AS text",
      "SELECT $$ set_config('x', 'y', false) $$ AS text",
      "SELECT $tag$ it's set_config('x', 'y', false) $tag$ AS text",
      "SELECT E'\\' set_config(''x'', ''y'', false)' AS text",
      "SELECT 1 -- set_config('x', 'y', false)",
      "SELECT 1 /* set_config('x', 'y', false) */",
      "SELECT \"set_config('x', 'y', false)\" FROM t",
      "SELECT temp FROM weather",
      "SELECT * FROM holdings WHERE kind = 'hold'"
    ]
    for (const sql of harmless) assert.isUndefined(sessionState(sql), sql)
  })

  it("finds session objects: temporary relations however created, holdable cursors, session locks", () => {
    const objects: ReadonlyArray<readonly [string, string]> = [
      ["CREATE TEMP TABLE x (a int)", "a temporary object"],
      ["CREATE GLOBAL TEMPORARY TABLE x (a int)", "a temporary object"],
      ["create local temp view v as select 1", "a temporary object"],
      ["CREATE TABLE pg_temp.workflow_runs (a int)", "a temporary object"],
      ["CREATE TABLE \"pg_temp\".workflow_runs (a int)", "a temporary object"],
      ["SELECT * INTO TEMP x FROM workflow_runs", "a temporary object"],
      ["SELECT * INTO pg_temp.x FROM workflow_runs", "a temporary object"],
      ["CREATE FUNCTION pg_temp.f() RETURNS int AS 'SELECT 1' LANGUAGE sql", "a temporary object"],
      ["DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DECLARE outside a transaction-local form"],
      ["SELECT pg_advisory_lock(42)", "pg_advisory_lock (session-scoped)"],
      ["SELECT pg_catalog.pg_try_advisory_lock_shared(1)", "pg_try_advisory_lock_shared (session-scoped)"]
    ]
    for (const [sql, reason] of objects) assert.strictEqual(sessionState(sql), reason, sql)
  })

  it("reads the first keyword past comments and parentheses, and what it may do to a transaction", () => {
    const cases: ReadonlyArray<readonly [string, string, SqlText.Effect]> = [
      ["/* leading */ -- line\n  select 1", "SELECT", "neutral"],
      ["((SELECT 1))", "SELECT", "neutral"],
      ["WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "WITH", "neutral"],
      ["begin isolation level serializable", "BEGIN", "control"],
      ["START TRANSACTION", "START", "control"],
      ["COMMIT AND CHAIN", "COMMIT", "control"],
      ["ROLLBACK TO SAVEPOINT a", "ROLLBACK", "control"],
      ["PREPARE TRANSACTION 'x'", "PREPARE", "control"],
      ["CALL p()", "CALL", "control"],
      ["DO $$ BEGIN COMMIT; END $$", "DO", "control"],
      ["SET search_path = x", "SET", "other"],
      ["CREATE TABLE t (a int)", "CREATE", "other"],
      ["\"select\" 1", "UNKNOWN", "other"]
    ]
    for (const [sql, operation, effect] of cases) {
      const reading = SqlText.read(sql)
      assert.deepStrictEqual([reading.operation, reading.effect], [operation, effect], sql)
    }
  })

  it("commands that change the session, and the transaction-local forms that do not", () => {
    for (const sql of ["SET ROLE admin", "set session role admin", "RESET ALL", "DISCARD ALL", "LISTEN x", "DO $$ BEGIN END $$", "CALL p()", "EXECUTE p"]) {
      assert.isDefined(sessionState(sql), sql)
    }
    for (const sql of ["SET LOCAL ROLE admin", "SET TRANSACTION READ ONLY", "SET CONSTRAINTS ALL DEFERRED"]) {
      assert.isUndefined(sessionState(sql), sql)
    }
  })

  it("an unterminated string or comment ends the tokens instead of throwing", () => {
    assert.deepStrictEqual(SqlText.tokenize("SELECT 'abc").map((t) => t.text), ["select"])
    assert.deepStrictEqual(SqlText.tokenize("SELECT /* abc").map((t) => t.text), ["select"])
    assert.deepStrictEqual(SqlText.tokenize("SELECT $q$ abc").map((t) => t.text), ["select"])
    assert.deepStrictEqual(SqlText.tokenize("SELECT $1, a$b").map((t) => t.kind), ["word", "parameter", "symbol", "word"])
  })
})
