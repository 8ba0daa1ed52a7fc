/**
 * expr.ts against a real PostgreSQL 15: hand-picked and seeded random HAVING-like expressions
 * over a working row (int8, numeric, int4, float8, text, date, NULL int8, bool, int2 columns) are
 * run by PostgreSQL (each through a function that returns its value or its error's SQLSTATE) and
 * by pgdog; the answers must be the same.
 */

import { equal } from "node:assert/strict";
import { startPostgres } from "../../tests/harness/mod.ts";
import { MergeError } from "./errors.ts";
import { evaluate } from "./expr.ts";
import { formatNumeric, type Numeric } from "./numeric.ts";
import type { Expr } from "./plan.ts";
import { formatFloat, OID, type TypeOps, typeOps, type Value } from "./values.ts";

const COLUMNS: { type: string; oid: number; sql: string }[] = [
  { type: "int8", oid: OID.int8, sql: "12::int8" },
  { type: "numeric", oid: OID.numeric, sql: "2.50::numeric" },
  { type: "int4", oid: OID.int4, sql: "2147483000::int4" },
  { type: "float8", oid: OID.float8, sql: "0.1::float8" },
  { type: "text", oid: OID.text, sql: "'abc'::text" },
  { type: "date", oid: OID.date, sql: "'2024-02-29'::date" },
  { type: "int8", oid: OID.int8, sql: "NULL::int8" },
  { type: "bool", oid: OID.bool, sql: "true" },
  { type: "int2", oid: OID.int2, sql: "(-7)::int2" },
  { type: "numeric", oid: OID.numeric, sql: "'NaN'::numeric" },
  { type: "int8", oid: OID.int8, sql: "9223372036854775000::int8" },
  { type: "int8", oid: OID.int8, sql: "0::int8" },
];
const PARAMS = ["5", "abc", null, "2.5", "2024-03-01"];

const NUMERIC_COLUMNS = [0, 1, 2, 3, 8, 9, 10, 11, 6];

function toSql(e: Expr): string {
  if ("column" in e) return `c${e.column}`;
  if ("constant" in e) {
    if (e.constant === null) return "NULL";
    if (e.type === "text") return `'${e.constant.replace(/'/g, "''")}'`;
    if (e.type === "bool") return e.constant;
    if (e.type === "numeric") return `'${e.constant}'::numeric`;
    return e.constant.startsWith("-") ? `(${e.constant})` : e.constant;
  }
  if ("param" in e) {
    const p = PARAMS[e.param - 1];
    return p === null ? "NULL" : `'${p}'`;
  }
  const a = e.args.map(toSql);
  switch (e.op) {
    case "and":
    case "or":
      return "(" + a.join(` ${e.op.toUpperCase()} `) + ")";
    case "not":
      return `(NOT ${a[0]})`;
    case "isnull":
      return `(${a[0]} IS NULL)`;
    case "notnull":
      return `(${a[0]} IS NOT NULL)`;
    case "between":
      return `(${a[0]} ${e.not ? "NOT " : ""}BETWEEN ${a[1]} AND ${a[2]})`;
    case "in":
      return `(${a[0]} ${e.not ? "NOT " : ""}IN (${a.slice(1).join(", ")}))`;
    default:
      return `(${a[0]} ${e.op} ${a[1]})`;
  }
}

const col = (column: number): Expr => ({ column });
const int = (v: string): Expr => ({ constant: v, type: "int" });
const num = (v: string): Expr => ({ constant: v, type: "numeric" });
const str = (v: string): Expr => ({ constant: v, type: "text" });

const HAND: Expr[] = [
  { op: ">", args: [col(0), num("11.5")] },
  { op: "=", args: [col(0), str("12")] },
  { op: "=", args: [col(1), num("2.5")] },
  { op: "<", args: [col(3), num("0.1")] },
  { op: "=", args: [col(3), { op: "/", args: [int("1"), num("10")] }] },
  { op: "+", args: [col(2), int("1000")] },
  { op: "+", args: [col(2), col(0)] },
  { op: "*", args: [col(10), int("2")] },
  { op: "/", args: [col(0), col(11)] },
  { op: "%", args: [col(0), int("5")] },
  { op: "/", args: [col(0), int("5")] },
  { op: "/", args: [col(0), num("5")] },
  { op: "/", args: [col(1), int("3")] },
  { op: "/", args: [col(3), num("0")] },
  { op: "*", args: [col(8), col(8)] },
  { op: "-", args: [col(8), int("32767")] },
  { op: ">", args: [col(4), str("abb")] },
  { op: "<", args: [col(4), str("ABC")] },
  { op: "=", args: [col(5), str("2024-02-29")] },
  { op: "<", args: [col(5), { param: 5 }] },
  { op: "=", args: [col(0), { param: 1 }] },
  { op: "=", args: [col(4), { param: 2 }] },
  { op: "=", args: [col(0), { param: 3 }] },
  { op: "isnull", args: [col(6)] },
  { op: "notnull", args: [col(6)] },
  {
    op: "and",
    args: [{ op: ">", args: [col(6), int("1")] }, { op: "=", args: [int("1"), int("2")] }],
  },
  {
    op: "or",
    args: [{ op: ">", args: [col(6), int("1")] }, { op: "=", args: [int("1"), int("1")] }],
  },
  {
    op: "or",
    args: [{ op: ">", args: [col(6), int("1")] }, { op: "=", args: [int("1"), int("2")] }],
  },
  { op: "not", args: [{ op: ">", args: [col(6), int("1")] }] },
  { op: "between", args: [col(0), int("1"), int("12")], not: false },
  { op: "between", args: [col(0), int("13"), col(6)], not: true },
  { op: "between", args: [col(0), int("1"), col(6)], not: true },
  { op: "in", args: [col(0), int("1"), int("12")], not: false },
  { op: "in", args: [col(0), int("1"), col(6)], not: false },
  { op: "in", args: [col(0), int("1"), col(6)], not: true },
  { op: "in", args: [col(0), int("12"), col(6)], not: true },
  { op: "=", args: [col(9), { constant: "NaN", type: "numeric" }] },
  { op: ">", args: [col(9), num("1e100")] },
  { op: ">", args: [col(0), int("99999999999999999999")] },
  { op: "=", args: [col(7), { constant: "true", type: "bool" }] },
  { op: "=", args: [col(7), str("yes")] },
  { op: "and", args: [col(7), { op: "isnull", args: [col(6)] }] },
  { op: "-", args: [int("-2147483648"), int("1")] },
  { op: "+", args: [col(0), { constant: null, type: "int" }] },
  { op: "/", args: [col(11), col(6)] },
  { op: "=", args: [str("a"), str("a")] },
  { op: "*", args: [num("1.25"), num("-0.2")] },
  { op: "+", args: [col(3), int("1")] },
  { op: "-", args: [col(10), int("-1000")] },
];

/** Seeded random boolean expressions over the numeric columns. */
function randomExprs(count: number): Expr[] {
  let seed = 7;
  const rand = (k: number): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return (seed >>> 8) % k;
  };
  const term = (depth: number): Expr => {
    const r = rand(depth > 1 ? 4 : 7);
    if (r === 0) return col(NUMERIC_COLUMNS[rand(NUMERIC_COLUMNS.length)]);
    if (r === 1) return int(String(rand(2000) - 1000));
    if (r === 2) return num(`${rand(100)}.${rand(100)}`);
    if (r === 3) return str(String(rand(50)));
    const ops = ["+", "-", "*", "/", "+", "-", "*", "/", "%"] as const;
    return { op: ops[rand(9)], args: [term(depth + 1), term(depth + 1)] };
  };
  const bool = (depth: number): Expr => {
    const r = rand(depth > 1 ? 4 : 9);
    const cmp = ["=", "<>", "<", "<=", ">", ">="] as const;
    if (r <= 1) return { op: cmp[rand(6)], args: [term(0), term(0)] };
    if (r === 2) return { op: rand(2) ? "isnull" : "notnull", args: [term(1)] };
    if (r === 3) return { op: "between", args: [term(1), term(1), term(1)], not: rand(2) === 0 };
    if (r === 4) {
      return { op: "in", args: [term(1), term(1), term(1), term(1)], not: rand(2) === 0 };
    }
    if (r === 5) return { op: "not", args: [bool(depth + 1)] };
    return {
      op: rand(2) ? "and" : "or",
      args: [bool(depth + 1), bool(depth + 1), bool(depth + 1)],
    };
  };
  return Array.from({ length: count }, () => bool(0));
}

function show(v: Value | null, pgText: string): string {
  if (v === null) return "NULL";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "bigint") return String(v);
  if (typeof v === "number") {
    return /[.eNI]/.test(pgText) || pgText === "-0" ? formatFloat(v, false) : String(v);
  }
  if (typeof v === "object" && "unscaled" in (v as object)) return formatNumeric(v as Numeric);
  return String(v);
}

Deno.test("expr: HAVING expressions evaluate as PostgreSQL evaluates them", async () => {
  await using pg = await startPostgres({});
  await pg.sql(`CREATE FUNCTION ev(q text) RETURNS text LANGUAGE plpgsql AS $$
    DECLARE r text;
    BEGIN EXECUTE q INTO r; RETURN coalesce(r, 'NULL');
    EXCEPTION WHEN OTHERS THEN RETURN 'ERR:' || SQLSTATE; END $$`);
  const row = COLUMNS.map((c, i) => `${c.sql} AS c${i}`).join(", ");
  await pg.sql(`CREATE TABLE w AS SELECT ${row}`);
  const [texts] = await pg.sql(
    `SELECT ${COLUMNS.map((c) => `coalesce(${c.sql}::text, 'NULL')`).join(", ")}`,
  );
  const opsList: TypeOps[] = COLUMNS.map((c) => typeOps(c.oid, { collation: { kind: "bytes" } })!);
  const values = texts.map((t, i) =>
    t === "NULL" ? null : opsList[i].decode(new TextEncoder().encode(t), 0)
  );
  const ctx = {
    value: (i: number) => values[i],
    ops: (i: number) => opsList[i],
    param: (n: number) => PARAMS[n - 1],
  };
  const exprs = [...HAND, ...randomExprs(1000)];
  const queries = exprs.map((e) => `SELECT (${toSql(e)})::text FROM w`);
  const answers: string[] = [];
  for (let i = 0; i < queries.length; i += 100) {
    const list = queries.slice(i, i + 100).map((q, k) => `(${k}, '${q.replace(/'/g, "''")}')`);
    const rows = await pg.sql(`SELECT ev(q) FROM (VALUES ${list.join(", ")}) v(k, q) ORDER BY k`);
    answers.push(...rows.map((r) => r[0]));
  }
  equal(answers.length, exprs.length);
  let refused = 0;
  let typeErrors = 0;
  exprs.forEach((e, i) => {
    let mine: string;
    try {
      mine = show(evaluate(e, ctx), answers[i]);
    } catch (err) {
      if (!(err instanceof MergeError)) throw err;
      mine = "ERR:" + err.code;
    }
    // Type errors PostgreSQL finds while parsing (float % float): the shards report those.
    const parseError = answers[i] === "ERR:42883" || answers[i] === "ERR:42725";
    if (parseError) {
      typeErrors++;
      return;
    }
    if (mine === "ERR:0A000" && answers[i].startsWith("ERR:")) {
      refused++;
      return;
    }
    equal(mine, answers[i], `${toSql(e)}: pgdog ${mine}, PostgreSQL ${answers[i]}`);
  });
  // The generator mostly builds expressions both can evaluate.
  equal(
    refused + typeErrors < exprs.length / 4,
    true,
    `${refused} refused, ${typeErrors} type errors`,
  );
});

Deno.test("expr: text compares in the database collation (answers from PostgreSQL 15)", () => {
  const icu = { kind: "icu", locale: "en-US" } as const;
  const bytes = { kind: "bytes" } as const;
  const textOps = (collation: typeof icu | typeof bytes): TypeOps =>
    typeOps(OID.text, { collation })!;
  const run = (e: Expr, collation: typeof icu | typeof bytes): Value | null =>
    evaluate(e, {
      value: () => "abc",
      ops: () => textOps(collation),
      param: () => null,
      collation,
    });
  // SELECT 'a' < 'B', 'abc'::text > 'ABC', 'é' < 'f': ICU en-US t|f|t, C f|t|f.
  const cases: [Expr, boolean, boolean][] = [
    [{ op: "<", args: [str("a"), str("B")] }, true, false],
    [{ op: ">", args: [col(0), str("ABC")] }, false, true],
    [{ op: "<", args: [str("é"), str("f")] }, true, false],
  ];
  for (const [e, inIcu, inC] of cases) {
    equal(run(e, icu), inIcu, `${toSql(e)} (ICU)`);
    equal(run(e, bytes), inC, `${toSql(e)} (C)`);
  }
});
