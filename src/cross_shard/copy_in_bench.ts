/**
 * The COPY splitter's speed: 1M rows in text, CSV and binary, fed as 64 kB CopyData payloads
 * (about what the drivers send; also one row per CopyData), the key in the first column. Each bench prints its
 * time per 1M rows; rows/s = 1e6 / time. `deno bench src/cross_shard/copy_in_bench.ts`
 */

import { type CopyFormat, CopyInSplitter } from "./copy_in.ts";
import { TEXT_COPY_FORMAT } from "./copy_format.ts";

const ROWS = 1_000_000;
const CHUNK = 64 << 10;

const TEXT: CopyFormat = TEXT_COPY_FORMAT;
const CSV: CopyFormat = {
  ...TEXT,
  format: "csv",
  delimiter: ",",
  null: "",
  quote: '"',
  escape: '"',
};
const BINARY: CopyFormat = { ...TEXT, format: "binary", delimiter: "", null: "" };

function chunks(data: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at < data.length; at += CHUNK) out.push(data.slice(at, at + CHUNK));
  return out;
}

function textRows(csv: boolean): Uint8Array[] {
  const lines: string[] = [];
  for (let i = 0; i < ROWS; i++) {
    const id = i * 7919 + 1;
    lines.push(
      csv
        ? `${id},user ${i},"user${i}@example.com",${i % 1000},2024-01-01 00:00:00\n`
        : `${id}\tuser ${i}\tuser${i}@example.com\t${i % 1000}\t2024-01-01 00:00:00\n`,
    );
  }
  return chunks(new TextEncoder().encode(lines.join("")));
}

/** The same rows, one CopyData each (as a client sending line by line would). */
function perLine(data: Uint8Array[]): Uint8Array[] {
  const all = new Uint8Array(data.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of data) {
    all.set(c, at);
    at += c.length;
  }
  const out: Uint8Array[] = [];
  for (let p = 0; p < all.length;) {
    const e = all.indexOf(10, p) + 1;
    out.push(all.subarray(p, e));
    p = e;
  }
  return out;
}

function binaryRows(): Uint8Array[] {
  const email = new TextEncoder().encode("user000000@example.com");
  const rowSize = 2 + (4 + 8) + (4 + email.length) + (4 + 4);
  const out = new Uint8Array(19 + ROWS * rowSize + 2);
  out.set([0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a, 0xff, 0x0d, 0x0a, 0x00]);
  const v = new DataView(out.buffer);
  let p = 19;
  for (let i = 0; i < ROWS; i++) {
    v.setInt16(p, 3);
    v.setInt32(p + 2, 8);
    v.setBigInt64(p + 6, BigInt(i * 7919 + 1));
    v.setInt32(p + 14, email.length);
    out.set(email, p + 18);
    p += 18 + email.length;
    v.setInt32(p, 4);
    v.setInt32(p + 4, i % 1000);
    p += 8;
  }
  v.setInt16(p, -1);
  return chunks(out);
}

const text = textRows(false);
const perRow = perLine(text);
const csv = textRows(true);
const binary = binaryRows();

function run(format: CopyFormat, data: Uint8Array[], columns: number, key: number | null): void {
  const s = new CopyInSplitter(format, { keyColumn: key, columns, keyType: "bigint" });
  let rows = 0;
  for (const c of data) rows += s.push(c).starts.length;
  rows += s.finish().starts.length;
  if (rows !== ROWS) throw new Error(`split ${rows} rows, not ${ROWS}`);
}

Deno.bench("text, 1M rows, key column 0", () => run(TEXT, text, 5, 0));
Deno.bench("text, 1M rows, no key", () => run(TEXT, text, 5, null));
Deno.bench("text, 1M rows, one CopyData per row, key column 0", () => run(TEXT, perRow, 5, 0));
Deno.bench("text, 1M rows, key column 2", () => run(TEXT, text, 5, 2));
Deno.bench("csv, 1M rows, key column 0", () => run(CSV, csv, 5, 0));
Deno.bench("csv, 1M rows, key column 2 (quoted)", () => run(CSV, csv, 5, 2));
Deno.bench("binary, 1M rows, bigint key", () => run(BINARY, binary, 3, 0));
