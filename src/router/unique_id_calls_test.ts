import assert from "node:assert/strict";
import { loadParser } from "./analyze.ts";
import {
  findUniqueIdCalls,
  PLACEHOLDER_ID,
  replaceCalls,
  rewriteUniqueIdCalls,
} from "./unique_id_calls.ts";

await loadParser();

function numbered(sql: string): string | null {
  let n = 0;
  return rewriteUniqueIdCalls(sql, () => `${++n}00`);
}

Deno.test("unique_id calls: each call becomes its own id", () => {
  assert.equal(
    numbered("INSERT INTO t (id, v) VALUES (pgdog.unique_id(), 'a'), (pgdog.unique_id(), 'b')"),
    "INSERT INTO t (id, v) VALUES (100, 'a'), (200, 'b')",
  );
  assert.equal(numbered("SELECT pgdog.unique_id()"), "SELECT 100");
  assert.equal(numbered("select -PGDOG.UNIQUE_ID()::text"), "select -100::text");
});

Deno.test("unique_id calls: spelled with blanks, comments and quoted names", () => {
  assert.equal(numbered("SELECT pgdog . unique_id ( /* none */ ) AS id"), "SELECT 100 AS id");
  assert.equal(numbered('SELECT "pgdog"."unique_id"()'), "SELECT 100");
  assert.equal(numbered("SELECT pgdog -- x\n.unique_id()"), "SELECT 100");
  // A quoted name keeps its case: "PgDog" is another schema.
  assert.equal(numbered('SELECT "PgDog".unique_id()'), null);
});

Deno.test("unique_id calls: never inside strings, quoted identifiers or comments", () => {
  for (
    const sql of [
      "SELECT $$call pgdog.unique_id() here$$",
      "SELECT $tag$pgdog.unique_id()$tag$",
      "SELECT E'pgdog.unique_id()\\''",
      "SELECT 'pgdog.unique_id()'",
      'SELECT 1 AS "pgdog.unique_id()"',
      "SELECT 1 -- pgdog.unique_id()",
      "SELECT /* pgdog.unique_id() */ 1",
      "CREATE FUNCTION f() RETURNS bigint AS $$ SELECT pgdog.unique_id() $$ LANGUAGE sql",
      // A name, not a call.
      "COMMENT ON FUNCTION pgdog.unique_id() IS 'ids'",
      // Not the function pgdog answers: arguments, a window call.
      "SELECT pgdog.unique_id(1)",
      "SELECT pgdog.unique_id() OVER ()",
      "SELECT other.unique_id()",
    ]
  ) {
    assert.equal(numbered(sql), null, sql);
  }
  // A real call next to look-alikes: only the call changes.
  assert.equal(
    numbered("SELECT $$pgdog.unique_id()$$, pgdog.unique_id(), 'pgdog.unique_id()'"),
    "SELECT $$pgdog.unique_id()$$, 100, 'pgdog.unique_id()'",
  );
});

Deno.test("unique_id calls: positions after multi-byte characters", () => {
  // The parser counts UTF-8 bytes; JavaScript strings count UTF-16 units.
  assert.equal(
    numbered("SELECT 'é€😀', pgdog.unique_id(), 'ü', pgdog.unique_id()"),
    "SELECT 'é€😀', 100, 'ü', 200",
  );
});

Deno.test("unique_id calls: nested deep, in every kind of statement", () => {
  const deep = "SELECT " + "(".repeat(200) + "pgdog.unique_id()" + ")".repeat(200);
  assert.equal(numbered(deep), "SELECT " + "(".repeat(200) + "100" + ")".repeat(200));
  // Deeper than the parser may be given (see depth.ts): left alone, never parsed.
  const tooDeep = "SELECT " + "(".repeat(2000) + "pgdog.unique_id()" + ")".repeat(2000);
  assert.deepEqual(findUniqueIdCalls(tooDeep), []);
  assert.equal(
    numbered(
      "WITH x AS (INSERT INTO t VALUES (pgdog.unique_id()) RETURNING *) " +
        "UPDATE u SET id = pgdog.unique_id() FROM x; SELECT pgdog.unique_id()",
    ),
    "WITH x AS (INSERT INTO t VALUES (100) RETURNING *) UPDATE u SET id = 200 FROM x; SELECT 300",
  );
});

Deno.test("unique_id calls: a text that does not parse is left alone", () => {
  assert.deepEqual(findUniqueIdCalls("SELEC pgdog.unique_id()"), []);
  assert.deepEqual(findUniqueIdCalls("SELECT 1"), []);
});

Deno.test("unique_id calls: the placeholder keeps the statement's types and column names", () => {
  const sql = "INSERT INTO t VALUES (pgdog.unique_id(), $1) RETURNING pgdog.unique_id()";
  const spans = findUniqueIdCalls(sql);
  assert.equal(spans.length, 2);
  assert.equal(
    replaceCalls(sql, spans, () => PLACEHOLDER_ID),
    "INSERT INTO t VALUES (2147483648, $1) RETURNING 2147483648",
  );
  // Above the int4 range: PostgreSQL types the literal bigint, as it does every id.
  assert.ok(Number(PLACEHOLDER_ID) > 2 ** 31 - 1);
});
