import { deepEqual, equal } from "node:assert/strict";
import { mayAffectSession, scanSession } from "./scan.ts";

Deno.test("ordinary statements are not session changes", () => {
  for (
    const sql of [
      "SELECT 1",
      "UPDATE t SET a = 1 WHERE id = 2",
      "INSERT INTO t VALUES ('SET x = 1')",
      "SELECT $$ RESET ALL $$, 'DISCARD ALL', \"set\" FROM t",
      "-- SET x = 1\nSELECT 1",
      "/* SET x /* nested */ = 1 */ SELECT 1",
      "SELECT pg_advisory_xact_lock(1)",
      "SELECT set_config('a.b', 'c', true)",
      "SET LOCAL statement_timeout = '1s'",
      "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
      "BEGIN; SET LOCAL search_path TO a; COMMIT",
      "PREPARE TRANSACTION 'x'",
    ]
  ) {
    equal(scanSession(sql), null, sql);
  }
});

Deno.test("SET, RESET and set_config name the settings they change", () => {
  deepEqual(scanSession("SET work_mem = '8MB'")?.settings, ["work_mem"]);
  deepEqual(scanSession("set SESSION Search_Path to a, b")?.settings, ["search_path"]);
  deepEqual(
    scanSession("SET TIME ZONE 'UTC'; SET ROLE r2; SET NAMES 'utf8'; SET SCHEMA 'x'")?.settings,
    [
      "timezone",
      "role",
      "client_encoding",
      "search_path",
    ],
  );
  deepEqual(scanSession('SET myapp."Tenant" = 1')?.settings, ["myapp.tenant"]);
  deepEqual(scanSession("SET SESSION AUTHORIZATION bob")?.settings, ["session_authorization"]);
  deepEqual(scanSession("SELECT set_config('Application_Name', 'x', false)")?.settings, [
    "application_name",
  ]);
  equal(scanSession("SELECT set_config(name, 'x', false) FROM t")?.unknownSetting, true);
  deepEqual(scanSession("RESET statement_timeout")?.settings, ["statement_timeout"]);
  equal(scanSession("RESET ALL")?.resetAll, true);
  const discard = scanSession("DISCARD ALL");
  equal(discard?.discardAll, true);
  equal(discard?.resetAll, true);
  equal(scanSession("BEGIN; SELECT 1; SET x.y = 2; COMMIT")?.statements, 4);
});

Deno.test("advisory locks, LISTEN, SQL-level prepared statements, pgdog settings", () => {
  equal(scanSession("SELECT pg_advisory_lock(42)")?.advisoryLocks, true);
  equal(scanSession("select pg_try_advisory_lock_shared(1, 2)")?.advisoryLocks, true);
  equal(scanSession("SELECT pg_advisory_unlock_all()")?.advisoryLocks, true);
  equal(scanSession("LISTEN jobs")?.listen, true);
  equal(scanSession("PREPARE q AS SELECT 1")?.sqlPrepared, true);
  equal(scanSession("EXECUTE q")?.sqlPrepared, true);
  equal(scanSession("DEALLOCATE ALL")?.sqlPrepared, true);
  deepEqual(scanSession("SET pgdog.pin TO true")?.pgdogSettings, [["pin", "true", false]]);
  deepEqual(scanSession("SET LOCAL pgdog.role = 'replica'")?.pgdogSettings, [[
    "role",
    "replica",
    true,
  ]]);
  deepEqual(scanSession("SET pgdog.pin TO true")?.settings, []);
});

Deno.test("E'' strings and doubled quotes do not confuse statement splitting", () => {
  deepEqual(scanSession("SELECT E'it\\'s; SET a=1', 'x''; SET b=2'; SET c.d = 3")?.settings, [
    "c.d",
  ]);
});

Deno.test("the byte prefilter agrees with the text test", () => {
  const enc = new TextEncoder();
  for (
    const sql of [
      "SELECT 1",
      "select * from t where id = $1",
      "SeT x = 1",
      "DISCARD ALL",
      "x pg_ADVISORY_lock",
      "select created_at, dropped, closed_by, temperature, my_temp from t",
      "CREATE TEMP TABLE x (a int)",
      "create temporary table x (a int)",
      "select 1 into Pg_Temp.x",
      "drop table x",
      "CLOSE c",
      "declare c cursor with hold for select 1",
    ]
  ) {
    const b = enc.encode(`..${sql}..`);
    equal(
      mayAffectSession(b, 2, b.length - 2),
      /set|discard|listen|prepare|execute|deallocate|advisory|pgdog|\b(?:create|drop|close|declare|temp|temporary|pg_temp)\b/i
        .test(sql),
      sql,
    );
  }
});

Deno.test("mayAffectSession: long texts, keywords across the pieces they are read in", () => {
  const bytes = (s: string) => new TextEncoder().encode(s);
  const plain = "SELECT 1;".repeat(30_000);
  equal(mayAffectSession(bytes(plain), 0, plain.length), false);
  // Every position around the 64 KiB pieces' edges.
  for (let at = 65536 - 12; at <= 65536 + 2; at++) {
    const text = "x".repeat(at) + "DISCARD" + "y".repeat(100_000);
    equal(mayAffectSession(bytes(text), 0, text.length), true, `at ${at}`);
  }
  const tail = plain + "pgdog";
  equal(mayAffectSession(bytes(tail), 0, tail.length), true);
});

Deno.test("DEALLOCATE statements: their target, place and the DO statements before them", () => {
  const sql = 'select 1; DEALLOCATE MiXeD; do $$ begin end $$; deallocate prepare "Q"; ' +
    "DEALLOCATE ALL; deallocate a b; DEALLOCATE prepare";
  const scan = scanSession(sql)!;
  equal(scan.sqlPrepared, true);
  equal(scan.prepareOrExecute, false);
  deepEqual(
    scan.deallocations.map((d) => [d.target, sql.slice(d.from, d.to), d.dosBefore]),
    [
      ["mixed", "DEALLOCATE MiXeD", 0],
      ["Q", 'deallocate prepare "Q"', 1],
      [null, "DEALLOCATE ALL", 1],
      [undefined, "deallocate a b", 1],
      // A statement named "prepare".
      ["prepare", "DEALLOCATE prepare", 1],
    ],
  );
  // Only A-Z fold, as in PostgreSQL.
  deepEqual(scanSession("DEALLOCATE ÜNÏ")!.deallocations.map((d) => d.target), ["ÜnÏ"]);
  equal(scanSession("DEALLOCATE x; EXECUTE y")!.prepareOrExecute, true);
});

Deno.test("temporary objects and WITH HOLD cursors, and what may drop them", () => {
  for (
    const sql of [
      "CREATE TEMP TABLE t (a int)",
      "create temporary table if not exists t (a int)",
      "CREATE LOCAL TEMPORARY TABLE t (a int) ON COMMIT DELETE ROWS",
      "CREATE GLOBAL TEMP SEQUENCE s",
      "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
      "CREATE TEMP TABLE t AS SELECT 1 AS a",
      "CREATE TABLE pg_temp.t (a int)",
      'CREATE FUNCTION "pg_temp".f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$',
      "CREATE VIEW v AS SELECT * FROM pg_temp.t",
      "SELECT 1 AS a INTO TEMP t",
      "select 1 as a into temporary table t",
      "SELECT * INTO LOCAL TEMP t FROM x",
      "SELECT 1 AS a INTO pg_temp.t",
      "WITH x AS (SELECT 1 AS a) SELECT * INTO TEMP t FROM x",
      "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
      "declare c no scroll cursor with hold for select 1",
    ]
  ) {
    equal(scanSession(sql)?.tempObjects, true, sql);
  }
  for (
    const sql of [
      "CREATE TABLE t (temp int, temporary text)",
      "CREATE INDEX ON t (a)",
      "SELECT temp FROM weather",
      "SELECT 1 INTO STRICT x",
      "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
      "DECLARE c CURSOR FOR SELECT 'with hold'",
    ]
  ) {
    equal(scanSession(sql)?.tempObjects ?? false, false, sql);
  }
  equal(scanSession("CREATE TABLE t (a int)")?.creates, true);
  equal(scanSession("SELECT temp FROM weather"), null);
  for (const sql of ["DROP TABLE t", "DISCARD TEMP", "DISCARD ALL", "CLOSE ALL", "close c"]) {
    equal(scanSession(sql)?.tempRelease, true, sql);
  }
  equal(scanSession("DISCARD PLANS")?.tempRelease ?? false, false);
});

Deno.test("EXPLAIN EXECUTE and CREATE TABLE ... AS EXECUTE run SQL prepared statements", () => {
  for (
    const sql of [
      "EXPLAIN EXECUTE __pgdog_1(1)",
      "explain analyze verbose execute p",
      "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE p(2)",
      "CREATE TABLE x AS EXECUTE __pgdog_1(1)",
      "create temp table x as execute p",
    ]
  ) {
    equal(scanSession(sql)?.sqlPrepared, true, sql);
    equal(scanSession(sql)?.prepareOrExecute, true, sql);
  }
  for (const sql of ["EXPLAIN SELECT 'execute'", "CREATE TABLE execute_log (a int)"]) {
    equal(scanSession(sql)?.sqlPrepared ?? false, false, sql);
  }
});
