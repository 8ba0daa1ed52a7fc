import { equal, ok } from "node:assert/strict";
import { analyzeSql, loadParser } from "./analyze.ts";
import { MAX_NESTING, nestingEstimate } from "./depth.ts";

await loadParser();

/** Texts that nest `n` levels deep, one per way SQL nests. */
const shapes: Record<string, (n: number) => string> = {
  plus: (n) => "SELECT " + Array(n).fill("1").join(" + "),
  not: (n) => "SELECT " + "NOT ".repeat(n) + "true",
  minus: (n) => "SELECT " + "- ".repeat(n) + "1",
  casts: (n) => "SELECT 1" + "::int".repeat(n),
  functions: (n) => "SELECT " + "abs(".repeat(n) + "1" + ")".repeat(n),
  subqueries: (n) => "SELECT " + "(SELECT ".repeat(n) + "1" + ")".repeat(n),
  from: (n) => "SELECT * FROM " + "(SELECT * FROM ".repeat(n) + "t" + ") s".repeat(n),
  cases: (n) => "SELECT " + "CASE WHEN true THEN ".repeat(n) + "1" + " END".repeat(n),
  arrays: (n) => "SELECT " + "ARRAY[".repeat(n) + "1" + "]".repeat(n),
  unions: (n) => Array(n).fill("SELECT 1").join(" UNION "),
  joins: (n) =>
    "SELECT * FROM t0" + Array.from({ length: n }, (_, i) => ` JOIN t${i + 1} ON true`).join(""),
};

Deno.test("texts too deep for the parser are not parsed, and the parser keeps working", () => {
  for (const [name, make] of Object.entries(shapes)) {
    // Deep enough to exhaust the parser's stack (or PostgreSQL's grammar stack).
    const info = analyzeSql(make(12_000));
    equal(info.tooDeep, true, name);
    equal(info.ast, null, name);
    equal(info.write, true, `${name}: routed as a write (to the primary)`);
    ok(info.error?.includes("nested too deeply"), name);
  }
  // Deep texts that PostgreSQL itself accepts.
  for (const sql of [shapes.functions(3000), shapes.not(5000), shapes.subqueries(1000)]) {
    equal(analyzeSql(sql).tooDeep, true);
  }
  for (let i = 0; i < 200; i++) analyzeSql(shapes.plus(20_000));
  const info = analyzeSql("SELECT a FROM t WHERE b IN (SELECT c FROM u)");
  equal(info.error, null);
  equal(info.tables.length, 2);
});

Deno.test("every text under the limit parses and is analyzed", () => {
  for (const [name, make] of Object.entries(shapes)) {
    let n = 1;
    while (nestingEstimate(make(n + 1)) <= MAX_NESTING) n++;
    ok(n >= 150, `${name}: only ${n} levels fit under the limit`);
    const info = analyzeSql(make(n));
    equal(info.tooDeep, false, name);
    equal(info.error, null, `${name} at ${n} levels: ${info.error}`);
  }
});

Deno.test("the estimate skips strings, identifiers and comments, and stays low for wide queries", () => {
  const quoted = "SELECT '((((((((' || $$ (((((( $$ || E'\\' ((((' AS \"((((\" FROM t -- ((((\n" +
    "WHERE /* (( /* ((( */ */ a = 1";
  ok(nestingEstimate(quoted) < 20, String(nestingEstimate(quoted)));
  const ids = Array.from({ length: 20_000 }, (_, i) => i).join(", ");
  ok(nestingEstimate(`SELECT * FROM users WHERE id IN (${ids})`) < 20);
  const rows = Array.from({ length: 5000 }, (_, i) => `(${i}, 'x')`).join(", ");
  ok(nestingEstimate(`INSERT INTO t VALUES ${rows}`) < 20);
  const or = Array.from({ length: 5000 }, (_, i) => `a = ${i}`).join(" OR ");
  ok(nestingEstimate(`SELECT * FROM t WHERE ${or}`) < 20);
  equal(analyzeSql(`SELECT * FROM t WHERE ${or}`).error, null);
});
