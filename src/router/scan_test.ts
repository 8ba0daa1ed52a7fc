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
    ]
  ) {
    const b = enc.encode(`..${sql}..`);
    equal(
      mayAffectSession(b, 2, b.length - 2),
      /set|discard|listen|prepare|execute|deallocate|advisory|pgdog/i.test(sql),
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
