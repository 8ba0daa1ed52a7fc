/**
 * values.ts against a real PostgreSQL 15: for every type, a set of values is sent through
 * PostgreSQL, which gives its text output, its binary (send) bytes, its ORDER BY order and its
 * `=` pairs; pgdog's decode/encode/compare/groupKey must agree on every one.
 */

import { deepEqual as assertEquals, throws } from "node:assert/strict";
import { startPostgres } from "../../tests/harness/mod.ts";
import { MergeError } from "./errors.ts";
import {
  ARRAY_ELEMENT,
  type Collation,
  collationFor,
  formatFloat,
  OID,
  typeOps,
  typeSize,
} from "./values.ts";

interface Case {
  /** SQL type name. */
  type: string;
  oid: number;
  /** send function. */
  send: string;
  values: string[];
  /** Check ORDER BY (false: pgdog refuses to order this type). */
  order?: boolean;
  database?: string;
  /** SET before the query. */
  setup?: string;
  /** Binary → text can't reproduce the session's time zone text: skip that direction. */
  textFromBinary?: boolean;
}

const TEXTS = [
  "abc",
  "ABC",
  "Abc",
  "",
  "a b",
  "é",
  "e",
  "E",
  "f",
  "10",
  "9",
  "a10",
  "a9",
  "ä",
  "z",
  "Z",
  "_a",
  "-a",
  "aé",
  "ae",
  "𝄞",
  "ｆ",
  "\uffff",
  "résumé",
  "resume",
  "Résumé",
  " leading",
  "trailing ",
  "ß",
  "ss",
  "Å",
  "å",
  "a-b",
  "ab",
];

function lit(s: string): string {
  return "'" + s.replace(/'/g, "''") + "'";
}

const CASES: Case[] = [
  { type: "int2", oid: OID.int2, send: "int2send", values: ["0", "-1", "1", "32767", "-32768"] },
  {
    type: "int4",
    oid: OID.int4,
    send: "int4send",
    values: ["0", "-2147483648", "2147483647", "42", "-7"],
  },
  {
    type: "int8",
    oid: OID.int8,
    send: "int8send",
    values: ["0", "-9223372036854775808", "9223372036854775807", "12345678901234", "-1"],
  },
  {
    type: "numeric",
    oid: OID.numeric,
    send: "numeric_send",
    values: [
      "0",
      "0.00",
      "1.0",
      "1.00",
      "1",
      "-1.5",
      "NaN",
      "Infinity",
      "-Infinity",
      "123456789.000000001",
      "0.0001",
      "-0.00001",
      "1e20",
      "99999.9999",
      "10000",
      "-10000.00001",
      "0.1e-10",
    ],
  },
  {
    type: "float4",
    oid: OID.float4,
    send: "float4send",
    values: [
      "0",
      "-0",
      "NaN",
      "Infinity",
      "-Infinity",
      "0.1",
      "1e6",
      "123456",
      "1.17549435e-38",
      "3.4e38",
      "-2.5",
      "16777217",
      "1e-45",
      "0.0001",
      "0.00001234",
      "1234567",
      "8388608",
      "2.3509886e-38",
    ],
  },
  {
    type: "float8",
    oid: OID.float8,
    send: "float8send",
    values: [
      "0",
      "-0",
      "NaN",
      "Infinity",
      "-Infinity",
      "0.1",
      "1e15",
      "1e14",
      "123456789012345.6",
      "5e-324",
      "1.7976931348623157e308",
      "-1e-5",
      "0.6666666666666666",
      "0.0001",
      "1e-7",
      "2.2250738585072014e-308",
      "9007199254740993",
    ],
  },
  ...["text", "varchar", "name"].flatMap((type): Case[] =>
    ["postgres", "icu", "cutf8"].map((database) => ({
      type,
      oid: type === "text" ? OID.text : type === "varchar" ? OID.varchar : OID.name,
      send: type === "text" ? "textsend" : type === "varchar" ? "varcharsend" : "namesend",
      values: TEXTS,
      database,
    }))
  ),
  ...["postgres", "icu"].map((database): Case => ({
    type: "char(6)",
    oid: OID.bpchar,
    send: "bpcharsend",
    values: ["a", "a  ", "b", "", "A", "é", " a", "ab"],
    database,
  })),
  { type: "bool", oid: OID.bool, send: "boolsend", values: ["true", "false"] },
  {
    type: "date",
    oid: OID.date,
    send: "date_send",
    values: [
      "2000-01-01",
      "1999-12-31",
      "infinity",
      "-infinity",
      "0044-03-15 BC",
      "4713-01-01 BC",
      "5874897-12-31",
      "2024-02-29",
      "1970-01-01",
      "0001-01-01",
      "0001-12-31 BC",
    ],
  },
  {
    type: "time",
    oid: OID.time,
    send: "time_send",
    values: ["00:00", "23:59:59.999999", "24:00:00", "12:30:00.25", "12:30:00.000001"],
  },
  {
    type: "timetz",
    oid: OID.timetz,
    send: "timetz_send",
    values: ["12:00+00", "13:00+01", "12:00+05:30", "11:00-01", "12:00:00-00:00:10", "06:30+00"],
  },
  {
    type: "timestamp",
    oid: OID.timestamp,
    send: "timestamp_send",
    values: [
      "2000-01-01 00:00",
      "1999-12-31 23:59:59.999999",
      "infinity",
      "-infinity",
      "0044-03-15 10:00:00.5 BC",
      "2024-01-15 10:30:00.123",
      "294276-12-31 23:59:59",
      "4713-01-01 00:00 BC",
    ],
  },
  {
    type: "timestamptz",
    oid: OID.timestamptz,
    send: "timestamptz_send",
    values: [
      "2000-01-01 00:00+00",
      "1999-12-31 23:59:59.999999+00",
      "infinity",
      "-infinity",
      "2024-01-15 10:30:00.123+02",
      "2024-01-15 09:30:00.123+01",
      "0044-03-15 10:00:00 BC",
    ],
    setup: "SET TimeZone = 'UTC'",
  },
  {
    type: "timestamptz",
    oid: OID.timestamptz,
    send: "timestamptz_send",
    values: [
      "2000-01-01 00:00+00",
      "2024-06-15 10:30:00.5+02",
      "1900-01-01 00:00",
      "0044-03-15 10:00:00 BC",
      "2024-01-15 10:30:00",
    ],
    setup: "SET TimeZone = 'Asia/Kolkata'",
    textFromBinary: false,
  },
  {
    type: "interval",
    oid: OID.interval,
    send: "interval_send",
    values: [
      "1 year 2 mons -3 days 04:05:06.5",
      "-1 day",
      "0",
      "-04:00",
      "1 day -04:00",
      "1 mon",
      "30 days",
      "720 hours",
      "-1 year -2 mons +3 days -04:05:06",
      "100 hours",
      "1 mon -00:00:00.000001",
      "178000000 years",
      "-178000000 years",
      "1 day",
      "24 hours",
      "00:00:00.000001",
    ],
  },
  {
    type: "uuid",
    oid: OID.uuid,
    send: "uuid_send",
    values: [
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      "00000000-0000-0000-0000-000000000000",
      "ffffffff-ffff-ffff-ffff-ffffffffffff",
      "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12",
    ],
  },
  {
    type: "bytea",
    oid: OID.bytea,
    send: "byteasend",
    values: ["\\x", "\\x00", "\\x0001", "\\xff", "\\x7f", "abc", "ab", "\\x6162"],
  },
  ...["postgres", "icu"].map((database): Case => ({
    type: "jsonb",
    oid: OID.jsonb,
    send: "jsonb_send",
    values: [
      '{"a":1}',
      '{"a":1.0}',
      '{"b":2,"a":1}',
      '{"a":1,"b":2}',
      "[1,2]",
      '"str"',
      "null",
      '{"a":"1.0"}',
      '{"a":"1"}',
      '{"x":[1.50,{"y":"z\\"1.0"}]}',
      '{"x":[1.5,{"y":"z\\"1.0"}]}',
      "[]",
      "{}",
      "1",
      "-1.5",
      '"a"',
      '"B"',
      '"é"',
      '"e"',
      "true",
      "false",
      "[[]]",
      "[1]",
      "[null]",
      '{"aa":1,"c":1}',
      '{"b":1,"d":1}',
      '[1,"a"]',
      "[2]",
      '{"a":{"b":[1,2]}}',
      '{"a":{"b":[1,3]}}',
      '{"B":1}',
      '{"é":1}',
      '[true, {"k": null}]',
    ],
    database,
  })),
  {
    type: "oid",
    oid: OID.oid,
    send: "oidsend",
    values: ["0", "1", "4294967295", "2147483648"],
  },
  {
    type: '"char"',
    oid: OID.char,
    send: "charsend",
    values: ["a", "A", "é", "", "\\200", "z"],
  },
  {
    type: "int4[]",
    oid: 1007,
    send: "array_send",
    values: [
      "{}",
      "{1,2}",
      "{1,NULL}",
      "{NULL,1}",
      "{{1,2},{3,4}}",
      "[0:1]={1,2}",
      "{1,2,3}",
      "{1}",
      "{NULL}",
      "{{1},{2}}",
    ],
  },
  ...["postgres", "icu"].map((database): Case => ({
    type: "text[]",
    oid: 1009,
    send: "array_send",
    values: [
      '{"a b",NULL,"NULL",""}',
      '{"\\"q\\"","x\\\\y"}',
      "{a,B}",
      "{A,b}",
      "{é,e}",
      '{"{x}","a,b"," s "}',
      "{null}",
      "{}",
    ],
    database,
  })),
  {
    type: "numeric[]",
    oid: 1231,
    send: "array_send",
    values: ["{1.0,NaN}", "{1.00,NaN}", "{-Infinity}", "{2}"],
  },
  { type: "bytea[]", oid: 1001, send: "array_send", values: ["{\\\\x00}", '{"\\\\x0102",NULL}'] },
  {
    type: "date[]",
    oid: 1182,
    send: "array_send",
    values: ["{2024-01-01,infinity}", "{2024-01-01}"],
  },
  {
    type: "float8[]",
    oid: 1022,
    send: "array_send",
    values: ["{0.1,NaN,-0}", "{0.1,NaN,0}", "{1e100}"],
  },
  { type: "bool[]", oid: 1000, send: "array_send", values: ["{t,f}", "{f}"] },
  { type: "interval[]", oid: 1187, send: "array_send", values: ['{"1 day","24:00:00"}'] },
];

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

Deno.test("values: decode, encode, order and equality agree with PostgreSQL 15", async (t) => {
  await using pg = await startPostgres({});
  await pg.sql(
    "CREATE DATABASE icu LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0",
  );
  const [[provider, collate, icuLocale]] = await pg.sql(
    "SELECT datlocprovider, datcollate, daticulocale FROM pg_database WHERE datname = 'icu'",
  );
  const icu = collationFor({ provider, collate, icuLocale });
  assertEquals(icu, { kind: "icu", locale: "en-US" });
  await pg.sql("CREATE DATABASE cutf8 LOCALE 'C.UTF-8' TEMPLATE template0");
  const [[p2, c2, i2]] = await pg.sql(
    "SELECT datlocprovider, datcollate, daticulocale FROM pg_database WHERE datname = 'cutf8'",
  );
  const cutf8 = collationFor({ provider: p2, collate: c2, icuLocale: i2 || null });
  assertEquals(cutf8, { kind: "bytes" });
  const collations: Record<string, Collation> = { postgres: { kind: "bytes" }, icu, cutf8 };
  await t.step("type sizes are pg_type.typlen", async () => {
    const oids = [...Object.values(OID), ...ARRAY_ELEMENT.keys()];
    const rows = await pg.sql(
      `SELECT oid, typlen FROM pg_type WHERE oid IN (${oids.join(", ")}) ORDER BY oid`,
    );
    assertEquals(rows.length, oids.length);
    for (const [oid, typlen] of rows) assertEquals(typeSize(Number(oid)), Number(typlen), oid);
  });
  for (const c of CASES) {
    await t.step(
      `${c.type} (${c.database ?? "postgres"}${c.setup ? ", " + c.setup : ""})`,
      async () => {
        const rows = c.values.map((v, i) => `(${i}, ${lit(v)}::${c.type})`).join(", ");
        const order = c.order === false ? "NULL" : "string_agg(i::text, ',' ORDER BY v, i)";
        const sql = `${c.setup ? c.setup + ";" : ""}
        WITH t(i, v) AS (VALUES ${rows})
        SELECT ${c.order === false ? "NULL" : `(SELECT ${order} FROM t)`},
          (SELECT string_agg(a.i || '=' || b.i, ',' ORDER BY a.i, b.i) FROM t a JOIN t b ON a.v = b.v),
          (SELECT string_agg(encode(convert_to(format('%s', v), 'UTF8'), 'hex') || ':' ||
            encode(${c.send}(v), 'hex'), ',' ORDER BY i) FROM t)`;
        const result = await pg.sql(sql, { database: c.database ?? "postgres" });
        const [pgOrder, pgEqual, pgForms] = result[result.length - 1];
        const ops = typeOps(c.oid, { collation: collations[c.database ?? "postgres"] })!;
        const forms = pgForms.split(",").map((f) => f.split(":").map(unhex));
        const fromText = forms.map(([text]) => ops.decode(text, 0));
        const fromBinary = forms.map(([, bin]) => ops.decode(bin, 1));
        forms.forEach(([text, bin], i) => {
          const what = `${c.type} ${c.values[i]}`;
          assertEquals(dec.decode(ops.encode(fromText[i], 0)), dec.decode(text), `${what}: text`);
          assertEquals(hex(ops.encode(fromBinary[i], 1)), hex(bin), `${what}: binary`);
          assertEquals(hex(ops.encode(fromText[i], 1)), hex(bin), `${what}: text → binary`);
          if (c.textFromBinary !== false) {
            assertEquals(
              dec.decode(ops.encode(fromBinary[i], 0)),
              dec.decode(text),
              `${what}: binary → text`,
            );
          }
        });
        if (c.order !== false) {
          const mine = fromText.map((v, i) => ({ v, i }))
            .sort((a, b) => ops.compare(a.v, b.v) || a.i - b.i).map((x) => x.i).join(",");
          assertEquals(mine, pgOrder, `${c.type}: ORDER BY of ${JSON.stringify(c.values)}`);
          const mineBinary = fromBinary.map((v, i) => ({ v, i }))
            .sort((a, b) => ops.compare(a.v, b.v) || a.i - b.i).map((x) => x.i).join(",");
          assertEquals(mineBinary, pgOrder, `${c.type}: ORDER BY (binary)`);
        }
        const equal: string[] = [];
        fromText.forEach((a, i) =>
          fromBinary.forEach((b, j) => {
            if (ops.groupKey(a) === ops.groupKey(b)) equal.push(`${i}=${j}`);
          })
        );
        assertEquals(equal.join(","), pgEqual, `${c.type}: = pairs`);
      },
    );
  }
});

Deno.test("values: float text output is PostgreSQL's shortest form (checked values)", () => {
  // From PostgreSQL 15 (extra_float_digits = 1).
  assertEquals(formatFloat(1e15, false), "1e+15");
  assertEquals(formatFloat(1e14, false), "100000000000000");
  assertEquals(formatFloat(1.5e-7, false), "1.5e-07");
  assertEquals(formatFloat(1e100, false), "1e+100");
  assertEquals(formatFloat(-0, false), "-0");
  assertEquals(formatFloat(Math.fround(1234567), true), "1.234567e+06");
  assertEquals(formatFloat(Math.fround(0.1), true), "0.1");
  assertEquals(formatFloat(Math.fround(16777217), true), "1.6777216e+07");
});

Deno.test("values: random float4 and float8 text output matches PostgreSQL", async () => {
  await using pg = await startPostgres({});
  const buf = new DataView(new ArrayBuffer(8));
  const doubles: number[] = [];
  const singles: number[] = [];
  let seed = 12345;
  const rand = (): number => (seed = (seed * 1103515245 + 12345) >>> 0);
  for (let i = 0; i < 300; i++) {
    buf.setUint32(0, rand());
    buf.setUint32(4, rand());
    const d = buf.getFloat64(0);
    if (Number.isFinite(d)) doubles.push(d);
    const s = buf.getFloat32(0);
    if (Number.isFinite(s)) singles.push(s);
  }
  for (let k = -1074; k < 1024; k += 7) doubles.push(2 ** k, -(2 ** k) * 3);
  for (let k = -149; k < 128; k += 1) singles.push(Math.fround(2 ** k), Math.fround(2 ** k * 3));
  for (let k = 24; k < 40; k++) {
    singles.push(Math.fround(2 ** k + 2 ** (k - 20) * 5), Math.fround(2 ** k - 2 ** (k - 23)));
    doubles.push(2 ** (k + 30) + 2 ** (k - 20) * 5);
  }
  const dbl = doubles.map((d) => `'${d.toExponential()}'::float8::text`).join(", ");
  const sgl = singles.map((s) => `'${s.toExponential()}'::float4::text`).join(", ");
  const [d] = await pg.sql(`SELECT ${dbl}`);
  const [s] = await pg.sql(`SELECT ${sgl}`);
  assertEquals(doubles.map((x) => formatFloat(x, false)), d);
  const mine = singles.map((x) => formatFloat(x, true));
  assertEquals(
    mine.filter((m, i) => m !== s[i]),
    [],
    String(mine.filter((m, i) => m !== s[i]).map((m) => m + "/" + s[mine.indexOf(m)])),
  );
});

Deno.test("values: collations pgdog can and can't match", () => {
  assertEquals(collationFor({ provider: "c", collate: "C", icuLocale: null }), { kind: "bytes" });
  assertEquals(collationFor({ provider: "c", collate: "POSIX", icuLocale: null }), {
    kind: "bytes",
  });
  assertEquals(collationFor({ provider: "c", collate: "C.UTF-8", icuLocale: null }), {
    kind: "bytes",
  });
  assertEquals(collationFor({ provider: "c", collate: "en_US.UTF-8", icuLocale: null }), null);
  assertEquals(collationFor({ provider: "i", collate: "C", icuLocale: "de-DE" }), {
    kind: "icu",
    locale: "de-DE",
  });
  assertEquals(collationFor({ provider: "i", collate: "C", icuLocale: "en-US-u-ks-level2" }), null);
  assertEquals(collationFor({ provider: "i", collate: "C", icuLocale: "xx-YY" }), null);
  assertEquals(collationFor("C"), { kind: "bytes" });
  assertEquals(collationFor("ucs_basic"), { kind: "bytes" });
  assertEquals(collationFor("und-x-icu"), { kind: "icu", locale: "und" });
  assertEquals(collationFor("en_US"), null);
  assertEquals(typeOps(OID.json, { collation: { kind: "bytes" }, ordering: true }), null);
  assertEquals(typeOps(600, { collation: { kind: "bytes" } }), null); // point
  const json = typeOps(OID.json, { collation: { kind: "bytes" } })!;
  throws(() => json.compare("1", "2"), (e) => e instanceof MergeError && e.code === "0A000");
  assertEquals(dec.decode(json.encode(json.decode(enc.encode('{"a":  1}'), 0), 0)), '{"a":  1}');
});
