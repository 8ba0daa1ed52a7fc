/**
 * aggregate.ts against a real PostgreSQL 15: one table split into three "shards" (column s);
 * each shard's partials come from PostgreSQL (text, and binary for some), the accumulator
 * combines them, and the result must equal (text, type OID, and binary where checked) what
 * PostgreSQL answers for the aggregate over the whole table.
 */

import { deepEqual, equal, throws } from "node:assert/strict";
import { startPostgres } from "../../tests/harness/mod.ts";
import type { PgCluster } from "../../tests/harness/mod.ts";
import { aggregateKind } from "./aggregate.ts";
import { MergeError } from "./errors.ts";
import type { AggregateSpec, SortKey } from "./plan.ts";
import { type Collation, OID } from "./values.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function unhex(h: string): Uint8Array {
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(i * 2, i * 2 + 2), 16);
  return out;
}

function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/** A field as text hex, or N for NULL. */
function textField(e: string): string {
  return `CASE WHEN (${e}) IS NULL THEN 'N' ELSE encode(convert_to(format('%s', ${e}), 'UTF8'), 'hex') END`;
}

const SCHEMA = `
CREATE TABLE t (s int, i int4, i2 int2, i8 int8, n numeric, f float8, f4 float4, tx text,
  b bool, iv interval, ts timestamp, d date, j jsonb, arr int4[]);
INSERT INTO t
SELECT g % 3, CASE WHEN g % 7 = 0 THEN NULL ELSE (g * 37) % 101 - 50 END,
  (g * 13) % 50, (g::int8 * 1000000007) % 999999937,
  CASE WHEN g % 5 = 0 THEN NULL ELSE round(((g * 17) % 89) / 7.0, g % 4) END,
  ((g * 31) % 97) / 3.0, ((g * 29) % 83) / 7.0,
  (ARRAY['abc','ABC','Abc','','a b','é','e','E','f','10','9','a10','a9','ä','z','Z','_a','-a','résumé','resume'])[g % 20 + 1],
  g % 4 <> 0, make_interval(months => g % 3, days => g % 5, secs => g * 1.25),
  '2024-01-01'::timestamp + g * interval '7 hours 3 min', '2000-02-28'::date + g * 11,
  jsonb_build_object('g', g, 'h', g / 10.0), ARRAY[g, g % 3]
FROM generate_series(1, 40) g;
CREATE TABLE empty (s int, i int4, n numeric, f float8, tx text, b bool);
CREATE TABLE nums (s int, n numeric);
INSERT INTO nums VALUES (0, 1.5), (1, 'NaN'), (2, 2.25);
CREATE TABLE infs (s int, n numeric);
INSERT INTO infs VALUES (0, 'Infinity'), (1, 3), (2, 'Infinity');
`;

interface Case {
  /** The aggregate as the client writes it. */
  agg: string;
  fn: AggregateSpec["fn"];
  /** Per-shard partial expressions (aggregated), or per-row expressions (collect). */
  partials: string[];
  /** Partials are per row (array_agg & co., DISTINCT). */
  rows?: boolean;
  distinct?: boolean;
  orderBy?: SortKey[];
  table?: string;
  database?: string;
  /** send function for a binary comparison of the result. */
  send?: string;
  /** Compare as floats within this relative tolerance. */
  tolerance?: number;
}

const key = (column: number, descending = false, nullsFirst = descending): SortKey => ({
  column,
  descending,
  nullsFirst,
  collation: null,
});

const NUMERIC_SQ = (x: string): string => `sum((${x})::numeric * (${x}))`;

const CASES: Case[] = [
  { agg: "count(*)", fn: "count", partials: ["count(*)"], send: "int8send" },
  { agg: "count(i)", fn: "count", partials: ["count(i)"] },
  { agg: "sum(i)", fn: "sum", partials: ["sum(i)"], send: "int8send" },
  { agg: "sum(i2)", fn: "sum", partials: ["sum(i2)"] },
  { agg: "sum(i8)", fn: "sum", partials: ["sum(i8)"], send: "numeric_send" },
  { agg: "sum(n)", fn: "sum", partials: ["sum(n)"], send: "numeric_send" },
  { agg: "sum(f4)", fn: "sum", partials: ["sum(f4)"], tolerance: 1e-6 },
  { agg: "sum(f)", fn: "sum", partials: ["sum(f)"], tolerance: 1e-12 },
  { agg: "sum(iv)", fn: "sum", partials: ["sum(iv)"], send: "interval_send" },
  { agg: "avg(i)", fn: "avg", partials: ["sum(i)", "count(i)"], send: "numeric_send" },
  { agg: "avg(i2)", fn: "avg", partials: ["sum(i2)", "count(i2)"] },
  { agg: "avg(i8)", fn: "avg", partials: ["sum(i8)", "count(i8)"] },
  { agg: "avg(n)", fn: "avg", partials: ["sum(n)", "count(n)"], send: "numeric_send" },
  { agg: "avg(f)", fn: "avg", partials: ["sum(f)", "count(f)"], tolerance: 1e-12 },
  { agg: "avg(iv)", fn: "avg", partials: ["sum(iv)", "count(iv)"], send: "interval_send" },
  // float4 is summed in float8 by avg (sum(f4) is float4): the shard's sum is avg × count.
  {
    agg: "avg(f4)",
    fn: "avg",
    partials: ["sum(f4)", "count(f4)", "avg(f4)"],
    tolerance: 1e-13,
  },
  ...(["stddev", "var_pop"] as const).map((fn): Case => ({
    agg: `${fn}(f4)`,
    fn,
    partials: ["count(f4)", "sum(f4)", "sum(f4 * (f4 + 0.0))", "avg(f4)"],
    tolerance: 1e-9,
  })),
  { agg: "avg(n)", fn: "avg", partials: ["sum(n)", "count(n)"], table: "nums" },
  { agg: "avg(n)", fn: "avg", partials: ["sum(n)", "count(n)"], table: "infs" },
  ...(["stddev", "stddev_samp", "stddev_pop", "variance", "var_samp", "var_pop"] as const)
    .flatMap((fn): Case[] => [
      { agg: `${fn}(i)`, fn, partials: ["count(i)", "sum(i)", NUMERIC_SQ("i")] },
      { agg: `${fn}(i8)`, fn, partials: ["count(i8)", "sum(i8)", NUMERIC_SQ("i8")] },
      {
        agg: `${fn}(n)`,
        fn,
        partials: ["count(n)", "sum(n)", "sum(n * n)"],
        send: "numeric_send",
      },
      {
        agg: `${fn}(f)`,
        fn,
        partials: ["count(f)", "sum(f)", "sum(f * f)"],
        tolerance: 1e-9,
      },
    ]),
  { agg: "stddev(n)", fn: "stddev", partials: ["count(n)", "sum(n)", "sum(n * n)"], table: "nums" },
  {
    agg: "variance(n)",
    fn: "variance",
    partials: ["count(n)", "sum(n)", "sum(n * n)"],
    table: "infs",
  },
  { agg: "min(i)", fn: "min", partials: ["min(i)"] },
  { agg: "max(n)", fn: "max", partials: ["max(n)"] },
  { agg: "max(f)", fn: "max", partials: ["max(f)"] },
  { agg: "min(ts)", fn: "min", partials: ["min(ts)"], send: "timestamp_send" },
  { agg: "max(d)", fn: "max", partials: ["max(d)"] },
  { agg: "min(arr)", fn: "min", partials: ["min(arr)"], send: "array_send" },
  { agg: "min(tx)", fn: "min", partials: ["min(tx)"] },
  { agg: "max(tx)", fn: "max", partials: ["max(tx)"] },
  { agg: "min(tx)", fn: "min", partials: ["min(tx)"], database: "icu" },
  { agg: "max(tx)", fn: "max", partials: ["max(tx)"], database: "icu" },
  { agg: "bool_and(b)", fn: "bool_and", partials: ["bool_and(b)"] },
  { agg: "bool_or(b)", fn: "bool_or", partials: ["bool_or(b)"] },
  { agg: "every(b)", fn: "every", partials: ["every(b)"] },
  { agg: "bit_and(i)", fn: "bit_and", partials: ["bit_and(i)"] },
  { agg: "bit_or(i2)", fn: "bit_or", partials: ["bit_or(i2)"] },
  { agg: "bit_or(i8)", fn: "bit_or", partials: ["bit_or(i8)"] },
  { agg: "bit_and(i8)", fn: "bit_and", partials: ["bit_and(i8)"] },
  {
    agg: "array_agg(i ORDER BY i DESC)",
    fn: "array_agg",
    partials: ["i"],
    rows: true,
    orderBy: [key(0, true)],
    send: "array_send",
  },
  {
    agg: "array_agg(i ORDER BY i NULLS FIRST)",
    fn: "array_agg",
    partials: ["i"],
    rows: true,
    orderBy: [key(0, false, true)],
  },
  {
    agg: "array_agg(tx ORDER BY tx, i)",
    fn: "array_agg",
    partials: ["tx", "i"],
    rows: true,
    orderBy: [key(0), key(1)],
    database: "icu",
  },
  {
    agg: "array_agg(tx ORDER BY tx, i)",
    fn: "array_agg",
    partials: ["tx", "i"],
    rows: true,
    orderBy: [key(0), key(1)],
  },
  {
    agg: "array_agg(arr ORDER BY i, arr)",
    fn: "array_agg",
    partials: ["arr", "i", "arr"],
    rows: true,
    orderBy: [key(1), key(2)],
    send: "array_send",
  },
  {
    agg: "array_agg(n ORDER BY s DESC, i, n)",
    fn: "array_agg",
    partials: ["n", "s", "i"],
    rows: true,
    orderBy: [key(1, true, false), key(2), key(0)],
  },
  {
    agg: "string_agg(tx, ',' ORDER BY tx DESC, i)",
    fn: "string_agg",
    partials: ["tx", "','::text", "i"],
    rows: true,
    orderBy: [key(0, true), key(2)],
    database: "icu",
  },
  {
    agg: "string_agg(tx, '-' ORDER BY i, tx)",
    fn: "string_agg",
    partials: ["tx", "'-'::text", "i"],
    rows: true,
    orderBy: [key(2), key(0)],
  },
  {
    agg: "json_agg(i ORDER BY i)",
    fn: "json_agg",
    partials: ["i"],
    rows: true,
    orderBy: [key(0)],
  },
  {
    agg: "json_agg(tx ORDER BY i, tx)",
    fn: "json_agg",
    partials: ["tx", "i"],
    rows: true,
    orderBy: [key(1), key(0)],
  },
  {
    agg: "json_agg(arr ORDER BY i, arr)",
    fn: "json_agg",
    partials: ["arr", "i", "arr"],
    rows: true,
    orderBy: [key(1), key(2)],
  },
  {
    agg: "jsonb_agg(j ORDER BY i, j->>'g')",
    fn: "jsonb_agg",
    partials: ["j", "i", "j->>'g'"],
    rows: true,
    orderBy: [key(1), key(2)],
    send: "jsonb_send",
  },
  {
    agg: "jsonb_agg(f ORDER BY f)",
    fn: "jsonb_agg",
    partials: ["f"],
    rows: true,
    orderBy: [key(0)],
  },
  {
    agg: "json_agg(ts ORDER BY ts)",
    fn: "json_agg",
    partials: ["ts"],
    rows: true,
    orderBy: [key(0)],
  },
  {
    agg: "jsonb_agg(n ORDER BY n)",
    fn: "jsonb_agg",
    partials: ["n"],
    rows: true,
    orderBy: [key(0)],
  },
  { agg: "count(DISTINCT i)", fn: "count", partials: ["i"], rows: true, distinct: true },
  { agg: "sum(DISTINCT i)", fn: "sum", partials: ["i"], rows: true, distinct: true },
  { agg: "sum(DISTINCT i8)", fn: "sum", partials: ["i8"], rows: true, distinct: true },
  { agg: "avg(DISTINCT i)", fn: "avg", partials: ["i"], rows: true, distinct: true },
  { agg: "avg(DISTINCT n)", fn: "avg", partials: ["n"], rows: true, distinct: true },
  { agg: "stddev(DISTINCT n)", fn: "stddev", partials: ["n"], rows: true, distinct: true },
  { agg: "var_pop(DISTINCT i)", fn: "var_pop", partials: ["i"], rows: true, distinct: true },
  { agg: "max(DISTINCT tx)", fn: "max", partials: ["tx"], rows: true, distinct: true },
  { agg: "array_agg(DISTINCT i)", fn: "array_agg", partials: ["i"], rows: true, distinct: true },
  {
    agg: "array_agg(DISTINCT tx)",
    fn: "array_agg",
    partials: ["tx"],
    rows: true,
    distinct: true,
    database: "icu",
  },
  {
    agg: "string_agg(DISTINCT tx, '/')",
    fn: "string_agg",
    partials: ["tx", "'/'::text"],
    rows: true,
    distinct: true,
  },
  {
    agg: "count(DISTINCT n)",
    fn: "count",
    partials: ["n"],
    rows: true,
    distinct: true,
  },
  // Empty input: count 0, the others NULL.
  { agg: "count(*)", fn: "count", partials: ["count(*)"], table: "empty" },
  { agg: "sum(i)", fn: "sum", partials: ["sum(i)"], table: "empty" },
  { agg: "avg(n)", fn: "avg", partials: ["sum(n)", "count(n)"], table: "empty" },
  { agg: "max(tx)", fn: "max", partials: ["max(tx)"], table: "empty" },
  { agg: "bool_and(b)", fn: "bool_and", partials: ["bool_and(b)"], table: "empty" },
  { agg: "array_agg(i)", fn: "array_agg", partials: ["i"], rows: true, table: "empty" },
  { agg: "stddev(f)", fn: "stddev", partials: ["count(f)", "sum(f)", "sum(f*f)"], table: "empty" },
  {
    agg: "count(DISTINCT i)",
    fn: "count",
    partials: ["i"],
    rows: true,
    distinct: true,
    table: "empty",
  },
];

async function runCase(
  pg: PgCluster,
  c: Case,
  collations: Record<string, Collation>,
  binary: boolean,
): Promise<void> {
  const table = c.table ?? "t";
  const database = c.database ?? "postgres";
  const where = (k: number): string => `FROM ${table} WHERE s = ${k}`;
  const cols = c.partials.map((p) => binary && !c.rows ? `${textField(p)}` : textField(p));
  const typeCols = c.partials.map((p) => `pg_typeof(${p})::oid`);
  const shardRows: (Uint8Array | null)[][] = [];
  let types: number[] = [];
  for (let k = 0; k < 3; k++) {
    const sql = c.rows
      ? `SELECT ${[...cols, ...typeCols].join(", ")} ${where(k)}${
        table === "t" ? " ORDER BY i8" : ""
      }`
      : `SELECT ${[...cols, ...typeCols].join(", ")} ${where(k)}`;
    const rows = await pg.sql(sql, { database });
    for (const r of rows) {
      shardRows.push(r.slice(0, c.partials.length).map((f) => (f === "N" ? null : unhex(f))));
      types = r.slice(c.partials.length).map(Number);
    }
  }
  if (types.length === 0) {
    const [r] = await pg.sql(
      `SELECT ${typeCols.join(", ")} FROM (SELECT) x LEFT JOIN ${table} ON false`,
      { database },
    );
    types = r.map(Number);
  }
  const spec: AggregateSpec = {
    fn: c.fn,
    partials: c.partials.map((_, i) => i),
    distinct: c.distinct ?? false,
    star: c.agg === "count(*)",
    orderBy: c.orderBy ?? [],
  };
  const kind = aggregateKind(spec, {
    partialTypes: types.map((oid) => ({ oid, format: 0 })),
    collation: collations[database],
  });
  const acc = kind.create();
  for (const r of shardRows) acc.add(r);
  const value = acc.value();
  const send = c.send ? `, encode(${c.send}(${c.agg}), 'hex')` : "";
  const [[pgText, pgType, pgBinary]] = await pg.sql(
    `SELECT ${textField(c.agg)}, pg_typeof(${c.agg})::oid${send} FROM ${table}`,
    { database },
  );
  const what = `${c.agg} FROM ${table} (${database})`;
  equal(kind.resultOid, Number(pgType), `${what}: result type`);
  if (pgText === "N") {
    equal(value, null, `${what}: NULL`);
    return;
  }
  if (value === null) {
    throw new Error(`${what}: pgdog says NULL, PostgreSQL ${dec.decode(unhex(pgText))}`);
  }
  const mine = dec.decode(kind.ops.encode(value, 0));
  const theirs = dec.decode(unhex(pgText));
  if (c.tolerance !== undefined) {
    const a = Number(mine);
    const b = Number(theirs);
    if (!(Math.abs(a - b) <= c.tolerance * Math.max(1, Math.abs(b)))) {
      throw new Error(`${what}: ${mine} vs PostgreSQL ${theirs}`);
    }
  } else equal(mine, theirs, `${what}: pgdog ${mine} vs PostgreSQL ${theirs}`);
  if (pgBinary !== undefined) equal(hex(kind.ops.encode(value, 1)), pgBinary, `${what}: binary`);
}

Deno.test("aggregate: combined shard partials equal PostgreSQL's aggregate over all rows", async (t) => {
  await using pg = await startPostgres({});
  await pg.sql(
    "CREATE DATABASE icu LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0",
  );
  await pg.sql(SCHEMA);
  await pg.sql(SCHEMA, { database: "icu" });
  const collations: Record<string, Collation> = {
    postgres: { kind: "bytes" },
    icu: { kind: "icu", locale: "en-US" },
  };
  for (const c of CASES) {
    await t.step(`${c.agg} FROM ${c.table ?? "t"} (${c.database ?? "postgres"})`, async () => {
      await runCase(pg, c, collations, false);
    });
  }
});

Deno.test("aggregate: binary partials combine like text ones", () => {
  const int8 = (v: bigint): Uint8Array => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigInt64(0, v);
    return b;
  };
  const kind = aggregateKind(
    { fn: "sum", partials: [3], distinct: false, star: false, orderBy: [] },
    { partialTypes: [{ oid: OID.int8, format: 1 }], collation: { kind: "bytes" } },
  );
  const acc = kind.create();
  acc.add([int8(5n)]);
  acc.add([null]);
  acc.add([int8(-2n)]);
  equal(acc.value(), 3n);
  deepEqual(kind.ops.encode(acc.value(), 1), int8(3n));
  deepEqual(dec.decode(kind.ops.encode(acc.value(), 0)), "3");
});

Deno.test("aggregate: sum of int4 past bigint raises 22003 bigint out of range", () => {
  const kind = aggregateKind(
    { fn: "sum", partials: [0], distinct: false, star: false, orderBy: [] },
    { partialTypes: [{ oid: OID.int8, format: 0 }], collation: { kind: "bytes" } },
  );
  const acc = kind.create();
  acc.add([enc.encode("9223372036854775800")]);
  throws(
    () => acc.add([enc.encode("8")]),
    (e) => e instanceof MergeError && e.code === "22003" && e.message === "bigint out of range",
  );
});

Deno.test("aggregate: types pgdog can't combine are refused with 0A000", () => {
  const refused = (spec: Partial<AggregateSpec>, oid: number): void => {
    throws(
      () =>
        aggregateKind(
          { fn: "sum", partials: [0], distinct: false, star: false, orderBy: [], ...spec },
          { partialTypes: [{ oid, format: 0 }], collation: { kind: "bytes" } },
        ),
      (e) => e instanceof MergeError && e.code === "0A000",
    );
  };
  refused({ fn: "sum" }, 790); // money
  refused({ fn: "min" }, 600); // point
  refused({ fn: "max" }, OID.json);
  refused({ fn: "bool_and" }, OID.int4);
  refused({ fn: "array_agg" }, 600);
  refused({ fn: "string_agg" }, OID.int4);
});

Deno.test("aggregate: json_agg and jsonb_agg write each type as PostgreSQL's to_json/to_jsonb", async () => {
  await using pg = await startPostgres({});
  const cases: [string, number, string[]][] = [
    ["timestamptz", OID.timestamptz, ["2024-01-15 10:30:00.5+00", "infinity", "0044-03-15 BC"]],
    ["text", OID.text, ['a"b', "\\x", "tab\there", "é", "nl\nx", "\u0001"]],
    ["bool", OID.bool, ["true", "false"]],
    ["date", OID.date, ["2024-01-15", "infinity", "0044-03-15 BC"]],
    ["interval", OID.interval, ["1 day", "-1 mons 02:00"]],
    ["float8", OID.float8, ["NaN", "1e100", "-0", "0.1", "Infinity"]],
    ["float4", OID.float4, ["0.1", "1e30"]],
    ["numeric", OID.numeric, ["NaN", "1.50", "-0.001"]],
    ["int8", OID.int8, ["9223372036854775807"]],
    ["text[]", 1009, ['{a,"b c",NULL}', "{}"]],
    ["int4[]", 1007, ["{{1,2},{3,4}}", "{5}"]],
    ["bytea", OID.bytea, ["\\x0102"]],
    ["uuid", OID.uuid, ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]],
    ["time", OID.time, ["12:00:01.5"]],
    ["jsonb", OID.jsonb, ['{"b": 1, "a": [1, 2.50]}', '"s"']],
  ];
  for (const tz of ["UTC", "Asia/Kolkata"]) {
    for (const fn of ["json_agg", "jsonb_agg"] as const) {
      for (const [type, oid, values] of cases) {
        const rows = values.map((v) => `('${v.replace(/'/g, "''")}'::${type})`).join(", ");
        const out = await pg.sql(
          `SET TimeZone = '${tz}';
           SELECT ${textField("x")} FROM (VALUES ${rows}) t(x)
           UNION ALL SELECT ${textField(`${fn}(x)`)} FROM (VALUES ${rows}) t(x)`,
        );
        const kind = aggregateKind(
          { fn, partials: [0], distinct: false, star: false, orderBy: [] },
          { partialTypes: [{ oid, format: 0 }], collation: { kind: "bytes" } },
        );
        const acc = kind.create();
        for (const [h] of out.slice(0, values.length)) acc.add([unhex(h)]);
        equal(
          dec.decode(kind.ops.encode(acc.value(), 0)),
          dec.decode(unhex(out[values.length][0])),
          `${fn}(${type}) in ${tz}`,
        );
      }
    }
  }
});
