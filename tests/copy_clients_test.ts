/**
 * The client libraries' COPY APIs through pgdog on 3 shards (issue #20, COPY):
 *
 * - COPY FROM STDIN with psql's `\copy`, npm:pg with pg-copy-streams, postgres.js
 *   `.writable()` and psycopg 3's `cursor.copy()`, in text, CSV and binary: every row on the
 *   shard of its key, `COPY n` as PostgreSQL says it;
 * - COPY TO STDOUT across shards (a table, a query) with the same libraries, in text, CSV with
 *   HEADER (one header line) and binary (one signature and one trailer around every shard's
 *   tuples): the reference database's rows, in any order.
 */

import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { from as copyFrom, to as copyTo } from "pg-copy-streams";
import {
  connectPg,
  connectPostgresJs,
  dumpLogsOnFailure,
  type PgTarget,
  psql,
  psycopgAvailable,
  runPsycopg,
  type ShardedSetup,
  startSharded,
} from "./harness/mod.ts";
import { shardForBigint } from "../src/sharding/hash.ts";

const SCHEMA = "CREATE TABLE users (id bigint PRIMARY KEY, email text, note text);";
const SIGNATURE = Uint8Array.of(0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a, 0xff, 0x0d, 0x0a, 0x00);

/** Each users row is on exactly the shard of its id; returns how many rows there are. */
async function placedByKey(setup: ShardedSetup): Promise<number> {
  const placed = await setup.placement("SELECT id FROM users");
  for (const [id, shards] of placed) {
    assert.deepEqual(shards, [shardForBigint(BigInt(id), 3)], `id ${id}`);
  }
  return placed.size;
}

/** Rows `from`..`to` (exclusive) as text COPY data; every third note NULL, some escapes. */
function textRows(from: number, to: number): string {
  let out = "";
  for (let id = from; id < to; id++) {
    out += `${id}\tu${id}@x\\t${id % 5 === 0 ? "\\\\" : ""}\t${id % 3 === 0 ? "\\N" : `n${id}`}\n`;
  }
  return out;
}

/** The same rows as binary COPY data (signature, tuples, trailer). */
function binaryRows(from: number, to: number): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [SIGNATURE, new Uint8Array(8)];
  for (let id = from; id < to; id++) {
    const email = enc.encode(`u${id}@x\t${id % 5 === 0 ? "\\" : ""}`);
    const note = id % 3 === 0 ? null : enc.encode(`n${id}`);
    const t = new Uint8Array(2 + 12 + 4 + email.length + 4 + (note?.length ?? 0));
    const v = new DataView(t.buffer);
    v.setInt16(0, 3);
    v.setInt32(2, 8);
    v.setBigInt64(6, BigInt(id));
    v.setInt32(14, email.length);
    t.set(email, 18);
    v.setInt32(18 + email.length, note === null ? -1 : note.length);
    if (note !== null) t.set(note, 22 + email.length);
    parts.push(t);
  }
  parts.push(Uint8Array.of(0xff, 0xff));
  return concat(parts);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * A binary COPY stream's tuples (each as hex), checking it has one signature at the start and
 * one trailer at the end.
 */
function binaryTuples(data: Uint8Array): string[] {
  assert.deepEqual([...data.subarray(0, 11)], [...SIGNATURE], "signature");
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let p = 19 + v.getInt32(15);
  const tuples: string[] = [];
  for (;;) {
    const n = v.getInt16(p);
    if (n === -1) {
      assert.equal(p + 2, data.length, "the trailer ends the stream");
      return tuples.sort();
    }
    let q = p + 2;
    for (let i = 0; i < n; i++) {
      const len = v.getInt32(q);
      q += 4 + Math.max(0, len);
    }
    tuples.push([...data.subarray(p, q)].map((b) => b.toString(16).padStart(2, "0")).join(""));
    p = q;
  }
}

/** A text or CSV COPY stream's lines: the header (when asked) first, the rest sorted. */
function textLines(data: string, header: boolean): string[] {
  const lines = data.replace(/\n$/, "").split("\n");
  const head = header ? [lines.shift()!] : [];
  return [...head, ...lines.sort()];
}

async function readAll(stream: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const c of stream) chunks.push(new Uint8Array(c));
  return concat(chunks);
}

/** COPY TO STDOUT with npm:pg and pg-copy-streams. */
async function pgCopyOut(target: PgTarget, sql: string): Promise<Uint8Array> {
  const c = await connectPg(target);
  try {
    return await readAll(c.query(copyTo(sql)));
  } finally {
    await c.end();
  }
}

const COPY_OUTS: Array<[string, "text" | "csv" | "binary", boolean]> = [
  ["COPY users TO STDOUT", "text", false],
  ["COPY users (id, note) TO STDOUT (FORMAT csv, HEADER)", "csv", true],
  ["COPY users TO STDOUT (FORMAT text, HEADER)", "text", true],
  ["COPY users TO STDOUT (FORMAT binary)", "binary", false],
  [
    "COPY (SELECT id, email FROM users WHERE id % 2 = 0) TO STDOUT (FORMAT binary)",
    "binary",
    false,
  ],
  ["COPY (SELECT id, note FROM users WHERE id < 0) TO STDOUT (FORMAT binary)", "binary", false],
  ["COPY (SELECT * FROM users WHERE id > 50) TO STDOUT (FORMAT csv, HEADER)", "csv", true],
];

/** The same COPY TO through pgdog and on the reference: equal rows, one header / signature. */
function assertSameCopy(got: Uint8Array, want: Uint8Array, format: string, header: boolean) {
  if (format === "binary") {
    assert.deepEqual([...got.subarray(0, 19)], [...want.subarray(0, 19)]);
    assert.deepEqual(binaryTuples(got), binaryTuples(want));
    return;
  }
  const dec = new TextDecoder();
  assert.deepEqual(textLines(dec.decode(got), header), textLines(dec.decode(want), header));
}

Deno.test("COPY through pgdog with psql, npm:pg, postgres.js and psycopg", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    schema: SCHEMA,
  });
  const both = [setup.target, setup.referenceTarget];
  await dumpLogsOnFailure(setup.proxy, async () => {
    await t.step("psql \\copy from a file: text, CSV with HEADER, binary", async () => {
      const dir = await Deno.makeTempDir({ prefix: "pgdog-copy-clients-" });
      try {
        await Deno.writeTextFile(`${dir}/a.txt`, textRows(-100, 100));
        await Deno.writeTextFile(
          `${dir}/b.csv`,
          "id,email,note\n" +
            Array.from({ length: 100 }, (_, i) => `${i + 100},"c${i},x",${i % 2 ? "" : "n"}\n`)
              .join(""),
        );
        await Deno.writeFile(`${dir}/c.bin`, binaryRows(200, 300));
        for (const target of both) {
          for (
            const [cmd, n] of [
              [`\\copy users from '${dir}/a.txt'`, 200],
              [`\\copy users from '${dir}/b.csv' with (format csv, header)`, 100],
              [`\\copy users from '${dir}/c.bin' with (format binary)`, 100],
            ] as const
          ) {
            const r = await psql(target, cmd);
            assert.equal(r.code, 0, r.stderr);
            assert.equal(r.stdout.trim(), `COPY ${n}`);
          }
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
      assert.equal(await placedByKey(setup), 400);
    });

    await t.step("psql \\copy to stdout: text and CSV with one header", async () => {
      for (
        const [cmd, header] of [
          ["\\copy users to stdout", false],
          ["\\copy users to stdout with (format csv, header)", true],
          ["\\copy (select id, email from users where id > 0) to stdout with csv header", true],
        ] as const
      ) {
        const [got, want] = await Promise.all(both.map((target) => psql(target, cmd)));
        assert.equal(got.code, 0, got.stderr);
        assert.deepEqual(textLines(got.stdout, header), textLines(want.stdout, header), cmd);
      }
    });

    await t.step(
      "npm:pg with pg-copy-streams: COPY FROM (text, binary) and TO (every format)",
      async () => {
        for (const target of both) {
          const c = await connectPg(target);
          try {
            const text = c.query(copyFrom("COPY users (id, email, note) FROM STDIN"));
            // Rows cut across chunks at odd places.
            const data = new TextEncoder().encode(textRows(1000, 3000));
            const chunks: Uint8Array[] = [];
            for (let p = 0; p < data.length; p += 4093) chunks.push(data.subarray(p, p + 4093));
            await pipeline(Readable.from(chunks), text);
            assert.equal(text.rowCount, 2000);
            const binary = c.query(copyFrom("COPY users FROM STDIN (FORMAT binary)"));
            await pipeline(Readable.from([binaryRows(3000, 3500)]), binary);
            assert.equal(binary.rowCount, 500);
          } finally {
            await c.end();
          }
        }
        assert.equal(await placedByKey(setup), 2900);
        for (const [sql, format, header] of COPY_OUTS) {
          const [got, want] = await Promise.all(both.map((target) => pgCopyOut(target, sql)));
          assertSameCopy(got, want, format, header);
        }
      },
    );

    await t.step("postgres.js: writable() and readable()", async () => {
      for (const target of both) {
        const sql = connectPostgresJs(target);
        try {
          const w = await sql`COPY users (id, email, note) FROM STDIN`.writable();
          await pipeline(Readable.from([textRows(5000, 6000)]), w);
          const b = await sql`COPY users FROM STDIN (FORMAT binary)`.writable();
          await pipeline(Readable.from([binaryRows(6000, 6100)]), b);
        } finally {
          await sql.end();
        }
      }
      assert.equal(await placedByKey(setup), 4000);
      for (const [text, format, header] of COPY_OUTS) {
        const [got, want] = await Promise.all(both.map(async (target) => {
          const sql = connectPostgresJs(target);
          try {
            return await readAll(await sql.unsafe(text).readable());
          } finally {
            await sql.end();
          }
        }));
        assertSameCopy(got, want, format, header);
      }
    });

    await t.step("psycopg 3: cursor.copy() in text and binary, both ways", async () => {
      if (!(await psycopgAvailable())) throw new Error("psycopg 3 is not installed");
      const script = `
with psycopg.connect(DSN, autocommit=True) as conn:
    cur = conn.cursor()
    with cur.copy("COPY users (id, email, note) FROM STDIN") as copy:
        for i in range(7000, 8000):
            copy.write_row((i, f"p{i}\\t", None if i % 4 == 0 else f"q{i}"))
    text_rows = cur.rowcount
    with cur.copy("COPY users (id, email, note) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "text", "text"])
        for i in range(8000, 8500):
            copy.write_row((i, f"b{i}", None))
    binary_rows = cur.rowcount
    out = []
    with cur.copy("COPY (SELECT id, email, note FROM users WHERE id >= 7000) TO STDOUT") as copy:
        for row in copy.rows():
            out.append(list(row))
    binary_out = []
    with cur.copy("COPY (SELECT id, email FROM users WHERE id >= 7000) TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "text"])
        for row in copy.rows():
            binary_out.append(list(row))
    print(json.dumps({"text": text_rows, "binary": binary_rows, "out": sorted(out), "binary_out": sorted(binary_out)}))
`;
      const [got, want] = [
        await runPsycopg<Record<string, unknown>>(setup.target, script),
        await runPsycopg<Record<string, unknown>>(setup.referenceTarget, script),
      ];
      assert.equal(got.text, 1000);
      assert.equal(got.binary, 500);
      assert.deepEqual(got, want);
      assert.equal(await placedByKey(setup), 5500);
    });

    await t.step("every row equals the reference's", async () => {
      const sql = "SELECT id, email, note FROM users ORDER BY id";
      const [got, want] = await Promise.all(both.map((target) => psql(target, sql)));
      assert.equal(got.code, 0, got.stderr);
      assert.equal(got.stdout, want.stdout);
    });
  });
});
