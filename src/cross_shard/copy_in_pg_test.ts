/**
 * The COPY splitter against a real PostgreSQL 15: PostgreSQL writes random rows (text with tabs,
 * newlines, carriage returns, backslashes, quotes, unicode; NULLs; integers; uuids) with
 * `COPY ... TO STDOUT` in text, CSV and binary with various options; the splitter, fed that
 * output in random pieces, must give back (a) the input itself as header + rows, (b) each row's
 * key as PostgreSQL has it (read back as text), and (c) rows that, each sent as its own CopyData
 * to `COPY ... FROM STDIN`, rebuild the same table. And copyFormatOf accepts and refuses the same
 * option lists PostgreSQL does, with its message.
 */

import { deepEqual, equal, ok } from "node:assert/strict";
import { loadModule, parseSync } from "libpg-query";
import { startPostgres } from "../../tests/harness/mod.ts";
import { concat, errorFields, fe, WireClient } from "../../tests/wire.ts";
import {
  type CopyFormat,
  CopyFormatError,
  copyFormatOf,
  CopyInSplitter,
  type CopyRows,
} from "./copy_in.ts";

await loadModule();

/** Deterministic pseudo-random numbers (mulberry32). */
function prng(seed: number): () => number {
  let a = seed;
  return () => {
    a |= 0;
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PIECES = [
  "a",
  "b",
  "Z",
  " ",
  "\t",
  "\n",
  "\r",
  "\r\n",
  "\\",
  "\\.",
  "\\N",
  '"',
  "'",
  '""',
  ",",
  ";",
  "|",
  ".",
  "N",
  "nil",
  "NULL",
  "é",
  "日本",
  "😀",
  "\\x41",
  "0",
];

function randomText(r: () => number): string {
  const n = Math.floor(r() * 8);
  let s = "";
  for (let i = 0; i < n; i++) s += PIECES[Math.floor(r() * PIECES.length)];
  // A value equal to a NULL string is ambiguous in text format: keep clear of them.
  return s === "nil" || s === "\\N" || s === "NULL" ? s + "x" : s;
}

function randomUuid(r: () => number): string {
  let h = "";
  for (let i = 0; i < 32; i++) h += "0123456789abcdef"[Math.floor(r() * 16)];
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const lit = (s: string | null): string => s === null ? "NULL" : `'${s.replaceAll("'", "''")}'`;

/** Key columns to check, with the type binary COPY needs to decode them. */
const KEYS: { column: string; keyType: "bigint" | "varchar" | "uuid" }[] = [
  { column: "id", keyType: "bigint" },
  { column: "tx", keyType: "varchar" },
  { column: "n", keyType: "bigint" },
  { column: "s", keyType: "bigint" },
  { column: "u", keyType: "uuid" },
  { column: "v", keyType: "varchar" },
];
const COLUMNS = ["ord", "id", "tx", "n", "s", "u", "v"];

/** COPY options (as written after WITH / in parentheses) to write and read the data with. */
const FORMATS: { name: string; to: string; from?: string; crlf?: boolean }[] = [
  { name: "text", to: "" },
  { name: "text CRLF", to: "", crlf: true },
  { name: "text delimiter/null", to: "(DELIMITER '|', NULL 'nil')" },
  { name: "text header", to: "(FORMAT text, HEADER)" },
  { name: "text header CRLF", to: "(FORMAT text, HEADER)", crlf: true },
  { name: "csv", to: "(FORMAT csv)" },
  { name: "csv old syntax header", to: "WITH CSV HEADER DELIMITER ';'" },
  {
    name: "csv quote/escape/null",
    to: "(FORMAT csv, DELIMITER '|', QUOTE '''', ESCAPE '\\', NULL 'NULL')",
  },
  {
    name: "csv force quote",
    to: "(FORMAT csv, FORCE_QUOTE *, ESCAPE '\\')",
    from: "(FORMAT csv, ESCAPE '\\')",
  },
  { name: "binary", to: "(FORMAT binary)" },
];

interface Expected {
  /** Per key column, each row's value as text. */
  keys: Map<string, (string | null)[]>;
  rows: number;
}

async function copyOut(c: WireClient, sql: string): Promise<Uint8Array[]> {
  const msgs = await c.simple(sql);
  const err = msgs.find((m) => m.type === "E");
  if (err) throw new Error(`${sql}: ${errorFields(err.body).M}`);
  return msgs.filter((m) => m.type === "d").map((m) => m.body);
}

/** COPY FROM STDIN with each payload its own CopyData; throws PostgreSQL's error. */
async function copyIn(c: WireClient, sql: string, payloads: Uint8Array[]): Promise<string> {
  await c.send(fe.query(sql));
  for (;;) {
    const m = await c.next();
    if (m.type === "E") {
      await c.untilReady();
      throw new Error(`${sql}: ${errorFields(m.body).M}`);
    }
    if (m.type === "G") break;
  }
  // Send in batches so the socket doesn't stall on thousands of tiny writes.
  for (let i = 0; i < payloads.length; i += 256) {
    await c.send(...payloads.slice(i, i + 256).map((p) => fe.copyData(p)));
  }
  await c.send(fe.copyDone());
  const msgs = await c.untilReady();
  const err = msgs.find((m) => m.type === "E");
  if (err) {
    const f = errorFields(err.body);
    throw new Error(`${sql}: ${f.M} (${f.W ?? ""})`);
  }
  return dataRowTag(msgs);
}

function dataRowTag(msgs: { type: string; body: Uint8Array }[]): string {
  const m = msgs.find((x) => x.type === "C");
  return m ? new TextDecoder().decode(m.body.subarray(0, m.body.length - 1)) : "";
}

function formatOf(options: string, columns: string[]): CopyFormat {
  const tree = parseSync(`COPY t FROM STDIN ${options}`) as {
    stmts: { stmt: { CopyStmt: { options?: unknown[] } } }[];
  };
  const f = copyFormatOf(tree.stmts[0].stmt.CopyStmt.options ?? [], columns);
  if ("error" in f) throw new Error(f.error);
  return f;
}

/** Feeds `file` in random pieces; returns every row (bytes), key and the header. */
function splitFile(
  format: CopyFormat,
  file: Uint8Array,
  options: { keyColumn: number | null; keyType?: "bigint" | "varchar" | "uuid"; seed: number },
): { header: Uint8Array | null; rows: Uint8Array[]; keys: (string | null)[]; ended: boolean } {
  const s = new CopyInSplitter(format, {
    keyColumn: options.keyColumn,
    columns: COLUMNS.length,
    keyType: options.keyType,
    columnNames: COLUMNS,
  });
  const r = prng(options.seed);
  const rows: Uint8Array[] = [];
  const keys: (string | null)[] = [];
  let next = 1;
  const take = (out: CopyRows): void => {
    equal(out.firstRow, next);
    for (let i = 0; i < out.starts.length; i++) {
      rows.push(out.data.slice(out.starts[i], out.ends[i]));
    }
    next += out.starts.length;
    keys.push(...out.keys);
  };
  for (let at = 0; at < file.length;) {
    // Mostly small pieces, now and then a large one.
    const size = r() < 0.1 ? Math.floor(r() * 5000) : 1 + Math.floor(r() * 40);
    take(s.push(file.subarray(at, at + size)));
    at += size;
  }
  take(s.finish());
  return { header: s.header, rows, keys, ended: s.ended };
}

const TRAILER = new Uint8Array([0xff, 0xff]);

function latin(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += String.fromCharCode(x);
  return s;
}

Deno.test("COPY splitter against PostgreSQL's own COPY TO output", async (t) => {
  await using pg = await startPostgres({});
  const c = await WireClient.connect({
    host: pg.host,
    port: pg.port,
    user: "postgres",
    database: "postgres",
  });
  try {
    const r = prng(20);
    const values: string[] = [];
    for (let i = 0; i < 300; i++) {
      const id = r() < 0.05 ? null : String(
        r() < 0.5
          ? BigInt(Math.floor((r() - 0.5) * 2 ** 53)) * 1024n + BigInt(Math.floor(r() * 1024))
          : BigInt(Math.floor((r() - 0.5) * 2000)),
      );
      const n = r() < 0.1 ? null : String(Math.floor((r() - 0.5) * 2 ** 32));
      const s = r() < 0.1 ? null : String(Math.floor((r() - 0.5) * 2 ** 16));
      const tx = r() < 0.1 ? null : randomText(r);
      const u = r() < 0.1 ? null : randomUuid(r);
      const v = r() < 0.1 ? null : randomText(r);
      values.push(
        `(${i}, ${lit(id)}::bigint, ${lit(tx)}, ${lit(n)}::int, ${lit(s)}::smallint, ${
          lit(u)
        }::uuid, ${lit(v)})`,
      );
    }
    await c.rows(
      `CREATE TABLE t (ord int, id bigint, tx text, n int, s smallint, u uuid, v varchar(100));
       INSERT INTO t VALUES ${values.join(",\n")}`,
    );
    const expected: Expected = { keys: new Map(), rows: 300 };
    for (const k of KEYS) {
      const rows = await c.rows(`SELECT ${k.column}::text FROM t ORDER BY ord`);
      expected.keys.set(k.column, rows.map((x) => x[0]));
    }
    let seed = 1;
    for (const f of FORMATS) {
      await t.step(f.name, async () => {
        const payloads = await copyOut(
          c,
          `COPY (SELECT ${COLUMNS.join(", ")} FROM t ORDER BY ord) TO STDOUT ${f.to}`,
        );
        let file = concat(payloads);
        if (f.crlf) {
          file = new TextEncoder().encode(new TextDecoder().decode(file).replaceAll("\n", "\r\n"));
        }
        const from = f.from ?? f.to;
        const format = formatOf(from, COLUMNS);
        const binary = format.format === "binary";
        // (a) header + rows are the input.
        const whole = splitFile(format, file, { keyColumn: null, seed: seed++ });
        equal(whole.rows.length, expected.rows);
        const rebuilt = concat([
          whole.header ?? new Uint8Array(0),
          ...whole.rows,
          binary ? TRAILER : new Uint8Array(0),
        ]);
        deepEqual(rebuilt, file);
        equal(whole.ended, binary);
        if (format.header !== false) ok(whole.header !== null && whole.header.length > 0);
        // (b) keys as PostgreSQL has them.
        for (const k of KEYS) {
          const keyColumn = COLUMNS.indexOf(k.column);
          const split = splitFile(format, file, { keyColumn, keyType: k.keyType, seed: seed++ });
          deepEqual(split.keys, expected.keys.get(k.column), `key ${k.column}`);
        }
        // (c) each row as its own CopyData rebuilds the table.
        await c.rows("DROP TABLE IF EXISTS t2; CREATE TABLE t2 (LIKE t)");
        const parts = [
          ...(whole.header ? [whole.header] : []),
          ...whole.rows,
          ...(binary ? [TRAILER] : []),
        ];
        const tag = await copyIn(c, `COPY t2 (${COLUMNS.join(", ")}) FROM STDIN ${from}`, parts);
        equal(tag, `COPY ${expected.rows}`);
        const diff = await c.rows(
          "SELECT (SELECT count(*) FROM (TABLE t EXCEPT ALL TABLE t2) a) + " +
            "(SELECT count(*) FROM (TABLE t2 EXCEPT ALL TABLE t) b)",
        );
        equal(diff[0][0], "0");
      });
    }

    await t.step(
      "ENCODING: LATIN1, SJIS, BIG5, GB18030 (trailing bytes that are backslashes)",
      async () => {
        const latin = ["café", "naïve\tß", "\\ÿ", "a,b", '"q"', "x\ny", "\\"];
        const sjis = ["表", "ソ\t能", "表\\", "日本語", "ﾊﾝｶｸ", "a表b", "表\n"];
        // Big5 許功蓋 and GB18030 four-byte characters (emoji, U+0080).
        const big5 = ["許", "功\t蓋", "許\\", "a許b", "蓋\n"];
        const gb18030 = ["😀", "a😀\\", "\u0080", "€\t許", "ÿ\n"];
        for (
          const [encoding, texts] of [
            ["LATIN1", latin],
            ["SJIS", sjis],
            ["BIG5", big5],
            ["GB18030", gb18030],
          ] as [string, string[]][]
        ) {
          await c.rows(
            `DROP TABLE IF EXISTS e, e2; CREATE TABLE e (ord int, tx text, tx2 text);
           CREATE TABLE e2 (LIKE e);
           INSERT INTO e SELECT i, x, x FROM generate_series(1, 50) i,
             LATERAL (SELECT (ARRAY[${texts.map(lit).join(",")}])[i % ${texts.length} + 1] x) v`,
          );
          const want = (await c.rows("SELECT tx FROM e ORDER BY ord")).map((x) => x[0]);
          const all = [
            "",
            "(FORMAT csv)",
            "(FORMAT csv, QUOTE '\\', ESCAPE '|')",
            "(FORMAT binary)",
          ];
          for (const options of all) {
            // Binary text is in the session's client_encoding (COPY's ENCODING is for text/CSV).
            const binary = options === "(FORMAT binary)";
            await c.rows(`SET client_encoding TO ${encoding}`);
            const file = concat(
              await copyOut(
                c,
                `COPY (SELECT tx, ord, tx2 FROM e ORDER BY ord) TO STDOUT ${options}`,
              ),
            );
            if (!binary) await c.rows("RESET client_encoding");
            const withEncoding = binary
              ? options
              : options === ""
              ? `(ENCODING '${encoding}')`
              : options.replace(")", `, ENCODING '${encoding}')`);
            const format = formatOf(withEncoding, ["tx", "ord", "tx2"]);
            const s = new CopyInSplitter(format, {
              keyColumn: 0,
              columns: 3,
              keyType: "varchar",
              clientEncoding: binary ? encoding : undefined,
            });
            const rows: Uint8Array[] = [];
            const keys: (string | null)[] = [];
            for (let at = 0; at < file.length; at += 3) {
              const out = s.push(file.subarray(at, at + 3));
              for (let i = 0; i < out.starts.length; i++) {
                rows.push(out.data.slice(out.starts[i], out.ends[i]));
              }
              keys.push(...out.keys);
            }
            s.end();
            deepEqual(keys, want, `${encoding} ${options}`);
            const parts = binary ? [s.header!, ...rows, TRAILER] : rows;
            deepEqual(concat(parts), file);
            await c.rows("TRUNCATE e2");
            await copyIn(c, `COPY e2 (tx, ord, tx2) FROM STDIN ${withEncoding}`, parts);
            if (binary) await c.rows("RESET client_encoding");
            const diff = await c.rows(
              "SELECT (SELECT count(*) FROM (TABLE e EXCEPT ALL TABLE e2) a) + " +
                "(SELECT count(*) FROM (TABLE e2 EXCEPT ALL TABLE e) b)",
            );
            equal(diff[0][0], "0", `${encoding} ${options}`);
          }
        }
      },
    );

    await t.step(
      "malformed data: the splitter's error is PostgreSQL's, on the same line",
      async () => {
        await c.rows("CREATE TABLE m (a int, b text)");
        const bin = (body: number[]): Uint8Array =>
          Uint8Array.from([0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a, 0xff, 0x0d, 0x0a, 0, ...body]);
        const tuple = [0, 2, 0, 0, 0, 4, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff];
        const enc = new TextEncoder();
        const cases: [string, Uint8Array | string][] = [
          ["", "1\tx\n2\r\n"],
          ["", "1\tx\r\n2\ty\n"],
          ["", "1\tx\r2\ty\n"],
          ["", "1\tx\n\\.x\n"],
          ["", "1\tx\r\n\\.\n"],
          ["", "1\tx\n\\."],
          ["(HEADER)", "a\tb\r\n1\tx\n"],
          ["(FORMAT csv)", '1,x\n2,"y\n'],
          ["(FORMAT csv)", "1,x\n2\r\n"],
          ["(FORMAT csv)", "1,x\r\n2\n"],
          ["(FORMAT csv, HEADER)", 'a,b\n1,x\n"2,y'],
          ["(FORMAT binary)", bin([])],
          ["(FORMAT binary)", "PGCOPY\n"],
          ["(FORMAT binary)", bin([0, 0])],
          ["(FORMAT binary)", bin([0, 1, 0, 0, 0, 0, 0, 0, 0])],
          ["(FORMAT binary)", bin([0, 0, 0, 0, 0, 0, 0, 0])],
          ["(FORMAT binary)", bin([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2])],
          ["(FORMAT binary)", bin([0, 0, 0, 0, 0, 0, 0, 0, ...tuple, 0, 3, 0, 0, 0, 0])],
          ["(FORMAT binary)", bin([0, 0, 0, 0, 0, 0, 0, 0, ...tuple, ...tuple.slice(0, 9)])],
          [
            "(FORMAT binary)",
            bin([0, 0, 0, 0, 0, 0, 0, 0, ...tuple, 0, 2, 0xff, 0xff, 0xff, 0xfe]),
          ],
          ["(FORMAT binary)", bin([0, 0, 0, 0, 0, 0, 0, 0, ...tuple, 0xff, 0xff, 0])],
        ];
        for (const [options, input] of cases) {
          const bytes = typeof input === "string" ? enc.encode(input) : input;
          const format = formatOf(options, ["a", "b"]);
          let mine: { error: string; line: number } | null = null;
          try {
            const s = new CopyInSplitter(format, { keyColumn: 0, columns: 2, keyType: "bigint" });
            s.push(bytes);
            s.finish();
          } catch (e) {
            if (!(e instanceof CopyFormatError)) throw e;
            mine = { error: e.message, line: e.line };
          }
          await c.rows("TRUNCATE m");
          let theirs: { error: string; line: number } | null = null;
          try {
            await copyIn(c, `COPY m FROM STDIN ${options}`, [bytes]);
          } catch (e) {
            const m = /: (.*) \((.*)\)$/s.exec((e as Error).message)!;
            theirs = { error: m[1], line: Number(/line (\d+)/.exec(m[2])?.[1] ?? 0) };
          }
          deepEqual(
            mine,
            theirs,
            `${options} ${JSON.stringify(latin(bytes))} ${JSON.stringify([mine, theirs])}`,
          );
        }
      },
    );

    await t.step(
      "a bad value: PostgreSQL names the line the splitter says for that row",
      async () => {
        await c.rows("CREATE TABLE l (a int, b text)");
        const inputs: [string, string][] = [
          ["(FORMAT csv)", '1,"a\nb"\n2,"c\nd\ne"\nx,y\n'],
          ["(FORMAT csv, HEADER)", 'a,"b\n"\n1,"a\nb"\nx,y\n'],
          ["(FORMAT csv)", '1,"a\r\nb"\r\n2,"c\r\nd"\r\nx,y\r\n'],
          ["(FORMAT csv)", '1,"a\rb"\n2,"c\nd\re"\nx,y\n'],
          ["(HEADER)", "a\tb\n1\ta\\nb\nx\ty\n"],
        ];
        for (const [options, input] of inputs) {
          const bytes = new TextEncoder().encode(input);
          const s = new CopyInSplitter(formatOf(options, ["a", "b"]), { keyColumn: 0, columns: 2 });
          const out = s.push(bytes);
          s.end();
          const named: number[] = [];
          let line = out.firstLine!;
          for (let i = 0; i < out.starts.length; i++) {
            if (i > 0) line += out.lines === null || out.lines === undefined ? 1 : out.lines[i];
            named.push(line);
          }
          const bad = out.keys.indexOf("x");
          let theirs = 0;
          try {
            await copyIn(c, `COPY l FROM STDIN ${options}`, [bytes]);
          } catch (e) {
            theirs = Number(/line (\d+)/.exec((e as Error).message)?.[1]);
          }
          equal(named[bad], theirs, `${options} ${JSON.stringify(input)}`);
        }
      },
    );

    await t.step("end markers: the splitter's rows are the rows PostgreSQL loads", async () => {
      await c.rows("CREATE TABLE em (a text, b text)");
      const inputs: [string, string][] = [
        ["", "1\tx\n2\ty\\.\n3\tz\n"],
        ["", "1\tx\n\\.\n3\tz\n"],
        ["", "1\tx\r\n\\.\r\n3\tz\r\n"],
        ["", "1\tx\r2\t\\.\r3\tz\r"],
        ["(HEADER)", "\\.\n1\tx\n"],
        ["(FORMAT csv)", "1,x\n\\.\n3,z\n"],
        ["(FORMAT csv)", '1,x\n"\\.",y\n\\.x,y\n\\.\n4,w\n'],
        ["(FORMAT csv)", "1,x\r\n\\.\n2,y\r\n"],
        ["(FORMAT csv)", "1,x\r\n\\.\r\n2,y\r\n"],
        ["", "1\tx\r\n\\.\n2\ty\r\n"],
      ];
      for (const [options, input] of inputs) {
        const bytes = new TextEncoder().encode(input);
        const s = new CopyInSplitter(formatOf(options, ["a", "b"]), { keyColumn: 0, columns: 2 });
        let mine: (string | null)[] | string;
        try {
          mine = [...s.push(bytes).keys, ...s.finish().keys];
        } catch (e) {
          mine = (e as Error).message;
        }
        await c.rows("TRUNCATE em");
        let theirs: (string | null)[] | string;
        try {
          await copyIn(c, `COPY em FROM STDIN ${options}`, [bytes]);
          theirs = (await c.rows("SELECT a FROM em ORDER BY ctid")).map((r) => r[0]);
        } catch (e) {
          theirs = /: (.*) \(/.exec((e as Error).message)![1];
        }
        deepEqual(mine, theirs, `${options} ${JSON.stringify(input)}`);
      }
    });

    await t.step("copyFormatOf accepts and refuses as PostgreSQL does", async () => {
      await c.rows("CREATE TABLE o (a int, b text, c text)");
      const cases = [
        "",
        "WITH CSV HEADER DELIMITER ';'",
        "WITH CSV FORCE NOT NULL a, b QUOTE AS '''' ESCAPE AS '\\' NULL AS 'n'",
        "WITH BINARY",
        "(FORMAT csv, HEADER match, FORCE_NULL (a), FORCE_NOT_NULL (b), ENCODING 'LATIN1', FREEZE false)",
        "(FORMAT binary, HEADER false)",
        "(HEADER 0)",
        "(HEADER on)",
        "(FORMAT 'fixed')",
        "(FORMAT csv, FORMAT text)",
        "(FORMAT binary, HEADER)",
        "(FORMAT binary, DELIMITER ',')",
        "(FORMAT binary, NULL 'x')",
        "(DELIMITER '||')",
        "(DELIMITER 'é')",
        "(DELIMITER E'\\n')",
        "(NULL E'a\\rb')",
        "(DELIMITER '\\')",
        "(DELIMITER 'a')",
        "(DELIMITER '7')",
        "(FORMAT csv, DELIMITER 'a')",
        "(QUOTE '\"')",
        "(FORMAT csv, QUOTE '')",
        "(FORMAT csv, DELIMITER '\"')",
        "(ESCAPE '\\')",
        "(FORMAT csv, ESCAPE 'ab')",
        "(FORMAT csv, FORCE_QUOTE *)",
        "(FORCE_QUOTE (a))",
        "(FORCE_NOT_NULL (a))",
        "(FORCE_NULL (a))",
        "(NULL 'a\tb')",
        "(FORMAT csv, NULL 'a\"')",
        "(FORMAT csv, FORCE_NULL (c))",
        "(HEADER 2)",
        "(HEADER maybe)",
        "(FREEZE 2)",
        "(DEFAULT 'x')",
        "(ENCODING 'nope')",
        "(ENCODING 'latin-1')",
        "(FORMAT csv, FORCE_NULL 'a')",
        "(FORMAT csv, NULL '', DELIMITER ',', QUOTE '\"', ESCAPE '\"', HEADER true)",
      ];
      for (const options of cases) {
        const sql = `COPY o (a, b) FROM STDIN ${options}`;
        const tree = parseSync(sql) as { stmts: { stmt: { CopyStmt: { options?: unknown[] } } }[] };
        const mine = copyFormatOf(tree.stmts[0].stmt.CopyStmt.options ?? [], ["a", "b"]);
        await c.send(fe.query(sql));
        const msgs = [];
        for (;;) {
          const m = await c.next();
          msgs.push(m);
          if (m.type === "G" || m.type === "Z") break;
        }
        let theirs: { error: string; code: string } | null = null;
        const err = msgs.find((m) => m.type === "E");
        if (err) {
          const f = errorFields(err.body);
          theirs = { error: f.M, code: f.C };
        } else {
          await c.send(fe.copyFail("probe"));
          await c.untilReady();
        }
        if (theirs === null) ok(!("error" in mine), `${options}: ${JSON.stringify(mine)}`);
        else deepEqual(mine, theirs, options);
      }
    });
  } finally {
    await c.close();
  }
});
