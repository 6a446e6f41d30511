/**
 * Reading statement text as PostgreSQL's lexer does: the fast path that
 * decides which statements share a connection and when the pool resets a
 * session. Spellings an attacker tries next must not hide what a statement
 * does (the prologue and the server's reports stay the defence; see
 * test/adversarial.pg.test.ts).
 */
import { assert, describe, it } from "@effect/vitest"
import * as SqlText from "../src/internal/postgres/sqlText.ts"

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

  it("tells transaction statements apart as PostgreSQL's grammar does, synonyms folded", () => {
    const cases: ReadonlyArray<readonly [string, SqlText.Transaction | undefined, boolean]> = [
      ["BEGIN", "begin", false],
      ["start transaction isolation level serializable", "begin", false],
      ["COMMIT", "commit", true],
      ["end work;", "commit", true],
      ["/* done */ COMMIT TRANSACTION -- now", "commit", true],
      ["COMMIT AND CHAIN", "commit", false],
      ["ROLLBACK", "rollback", true],
      ["abort", "rollback", true],
      ["ROLLBACK AND CHAIN", "rollback", false],
      ["ROLLBACK TO SAVEPOINT a", "rollbackTo", false],
      ["rollback work to a", "rollbackTo", false],
      ["SAVEPOINT a", "savepoint", false],
      ["RELEASE SAVEPOINT a", "release", false],
      ["COMMIT PREPARED 'x'", undefined, false],
      ["ROLLBACK PREPARED 'x'", undefined, false],
      ["PREPARE TRANSACTION 'x'", undefined, false],
      ["(COMMIT", "commit", false],
      ["COMMIT; SELECT 1", "commit", false],
      ["SELECT 'COMMIT'", undefined, false],
      // Left open, the text is the server's to refuse: no plain end is answered for it.
      ["COMMIT /* never closed", "commit", false],
      ["END e' FOR", "commit", false]
    ]
    for (const [sql, transaction, plainEnd] of cases) {
      const reading = SqlText.read(sql)
      assert.deepStrictEqual([reading.transaction, reading.plainEnd], [transaction, plainEnd], sql)
    }
  })

  it("says which statements unwind a transaction, and which keep it whole", () => {
    const unwinds = ["ROLLBACK", "ABORT", "ROLLBACK TO SAVEPOINT a", "RELEASE a"]
    for (const sql of unwinds) assert.isTrue(SqlText.unwinds(SqlText.read(sql)), sql)
    for (const sql of ["COMMIT", "ROLLBACK PREPARED 'x'", "SELECT 1"]) assert.isFalse(SqlText.unwinds(SqlText.read(sql)), sql)
    for (const sql of ["SELECT 1", "UPDATE t SET a = 1", "BEGIN", "SAVEPOINT a", "RELEASE a", "SET LOCAL x = 1"]) {
      assert.isTrue(SqlText.keepsTransaction(SqlText.read(sql)), sql)
    }
    for (const sql of ["COMMIT", "ROLLBACK TO a", "COMMIT AND CHAIN", "CALL p()", "DO $$ BEGIN COMMIT; END $$", "PREPARE TRANSACTION 'x'"]) {
      assert.isFalse(SqlText.keepsTransaction(SqlText.read(sql)), sql)
    }
  })

  it("names the command a statement's tag names", () => {
    const cases: ReadonlyArray<readonly [string, string]> = [
      ["select 1", "SELECT"],
      ["((SELECT 1))", "SELECT"],
      ["/* c */ INSERT INTO t VALUES (1)", "INSERT"],
      ["WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "SELECT"],
      ["WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r) UPDATE t SET n = 1", "UPDATE"],
      ["TABLE t", "SELECT"],
      ["VALUES (1)", "SELECT"],
      ["END", "COMMIT"],
      ["CREATE TABLE t (a int)", "CREATE"],
      ["-- nothing", ""]
    ]
    for (const [sql, command] of cases) assert.strictEqual(SqlText.command(sql), command, sql)
  })

  it("reads a list setting's elements as the server writes them, and names quoted or not", () => {
    assert.deepStrictEqual(SqlText.listElements("\"$user\", public"), ["\"$user\"", "public"])
    assert.deepStrictEqual(SqlText.listElements("\"a,b\" , pg_temp,"), ["\"a,b\"", "pg_temp"])
    for (const text of ["pg_temp", "PG_TEMP", "\"pg_temp\"", " pg_temp "]) assert.isTrue(SqlText.isName(text, "pg_temp"), text)
    for (const text of ["pg_temp_3", "pg_catalog.pg_temp", "\"pg temp\""]) assert.isFalse(SqlText.isName(text, "pg_temp"), text)
  })

  it("an unterminated string or comment ends the tokens instead of throwing", () => {
    assert.deepStrictEqual(SqlText.tokenize("SELECT 'abc").map((t) => t.text), ["select"])
    assert.deepStrictEqual(SqlText.tokenize("SELECT /* abc").map((t) => t.text), ["select"])
    assert.deepStrictEqual(SqlText.tokenize("SELECT $q$ abc").map((t) => t.text), ["select"])
    assert.deepStrictEqual(SqlText.tokenize("SELECT $1, a$b").map((t) => t.kind), ["word", "parameter", "symbol", "word"])
  })

  it("splits a script into statements at the semicolons outside strings, comments, dollar quotes and parentheses", () => {
    const script = [
      "-- a migration",
      "CREATE TABLE t (a text DEFAULT ';', \"b;\" int);",
      "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$;",
      "/* one; /* nested; */ still a comment; */ INSERT INTO t SELECT E'it\\'s; fine';",
      "CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b);",
      ";;  -- trailing; comment",
      ""
    ].join("\n")
    assert.deepStrictEqual(SqlText.statements(script), [
      "-- a migration\nCREATE TABLE t (a text DEFAULT ';', \"b;\" int)",
      "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$",
      "/* one; /* nested; */ still a comment; */ INSERT INTO t SELECT E'it\\'s; fine'",
      "CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b)"
    ])
    assert.deepStrictEqual(SqlText.statements("SELECT 1; SELECT 'never ends; SELECT 2"), ["SELECT 1", "SELECT 'never ends; SELECT 2"])
  })
})
