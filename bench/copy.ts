/**
 * The COPY group of `deno task bench` (`deno task bench --only copy`): `COPY ... FROM STDIN` of
 * `rows` rows, in text and in binary, through pgdog into 3 shards (each row to the shard of its
 * key) against the same COPY into one PostgreSQL directly. Each runs `rounds` times, interleaved,
 * into an emptied table; the table shows the median times, rows per second and the ratio of
 * pgdog's rate to the direct one (the goal: at least 0.5), and pgdog's peak resident memory
 * (VmHWM) over the whole group, which must not grow with the rows copied.
 *
 * @module
 */

import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { from as copyFrom } from "pg-copy-streams";
import { connectPg, type PgTarget, startSharded } from "../tests/harness/mod.ts";

/** Options of {@linkcode runCopyBench}. */
export interface CopyBenchOptions {
  /** Rows per COPY. */
  rows: number;
  /** Timed COPYs per format and target (the median is shown; at least one). */
  rounds: number;
}

const TABLE =
  "CREATE TABLE items (id bigint PRIMARY KEY, x bigint NOT NULL, payload text NOT NULL);";
const CHUNK = 64 << 10;

/** Rows 1..n as text COPY data, in CopyData-sized chunks. */
function textData(n: number): Uint8Array[] {
  const enc = new TextEncoder();
  const chunks: Uint8Array[] = [];
  let lines: string[] = [];
  let size = 0;
  for (let id = 1; id <= n; id++) {
    const line = `${id}\t${(id * 7919) % n}\tpayload-${id.toString(16).padStart(8, "0")}\n`;
    lines.push(line);
    size += line.length;
    if (size >= CHUNK) {
      chunks.push(enc.encode(lines.join("")));
      lines = [];
      size = 0;
    }
  }
  if (lines.length > 0) chunks.push(enc.encode(lines.join("")));
  return chunks;
}

/** Rows 1..n as binary COPY data (signature, tuples, trailer), in chunks. */
function binaryData(n: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  let buf = new Uint8Array(CHUNK + 256);
  let view = new DataView(buf.buffer);
  buf.set([0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a, 0xff, 0x0d, 0x0a, 0x00]);
  let at = 19;
  const enc = new TextEncoder();
  for (let id = 1; id <= n; id++) {
    const payload = enc.encode(`payload-${id.toString(16).padStart(8, "0")}`);
    view.setInt16(at, 3);
    view.setInt32(at + 2, 8);
    view.setBigInt64(at + 6, BigInt(id));
    view.setInt32(at + 14, 8);
    view.setBigInt64(at + 18, BigInt((id * 7919) % n));
    view.setInt32(at + 26, payload.length);
    buf.set(payload, at + 30);
    at += 30 + payload.length;
    if (at >= CHUNK) {
      chunks.push(buf.slice(0, at));
      buf = new Uint8Array(CHUNK + 256);
      view = new DataView(buf.buffer);
      at = 0;
    }
  }
  view.setInt16(at, -1);
  chunks.push(buf.slice(0, at + 2));
  return chunks;
}

/** Runs one COPY of `chunks`; returns its time in ms and its row count. */
async function copyOnce(
  target: PgTarget,
  options: { sql: string; chunks: Uint8Array[] },
): Promise<{ ms: number; rows: number }> {
  const c = await connectPg(target);
  try {
    const started = performance.now();
    const stream = c.query(copyFrom(options.sql));
    await pipeline(Readable.from(options.chunks), stream);
    return { ms: performance.now() - started, rows: stream.rowCount ?? 0 };
  } finally {
    await c.end();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function kib(pid: number, field: string): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
}

/** Runs the group; returns its report (Markdown). */
export async function runCopyBench(options: CopyBenchOptions): Promise<string> {
  const { rows } = options;
  const rounds = Math.max(1, options.rounds);
  await using setup = await startSharded({
    shardedTables: [{ name: "items", column: "id" }],
    schema: TABLE,
    general: { query_timeout: 0 },
  });
  const pid = setup.proxy.pid;
  const startRss = kib(pid, "VmRSS");
  const formats = [
    { name: "text", sql: "COPY items (id, x, payload) FROM STDIN", chunks: textData(rows) },
    {
      name: "binary",
      sql: "COPY items (id, x, payload) FROM STDIN (FORMAT binary)",
      chunks: binaryData(rows),
    },
  ];
  const lines = [
    `COPY FROM STDIN of ${rows.toLocaleString("en-US")} rows (bigint key, bigint, text; about ` +
    `${Math.round(formats[0].chunks.reduce((n, c) => n + c.length, 0) / 2 ** 20)} MB as text), ` +
    `median of ${rounds}: pgdog into 3 shards (each row to its key's shard) against one ` +
    "PostgreSQL directly, on the same machine. Ratio: pgdog's rows/s ÷ direct rows/s (goal ≥ 0.5).",
    "",
    "| format | direct ms | direct rows/s | pgdog ms | pgdog rows/s | ratio |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const format of formats) {
    const direct: number[] = [];
    const proxied: number[] = [];
    for (let r = 0; r < rounds; r++) {
      for (
        const [target, times] of [[setup.referenceTarget, direct], [setup.target, proxied]] as const
      ) {
        await setup.everywhere("TRUNCATE items; CHECKPOINT");
        const run = await copyOnce(target, format);
        if (run.rows !== rows) {
          throw new Error(`${format.name}: COPY ${run.rows}, expected ${rows}`);
        }
        times.push(run.ms);
      }
    }
    const d = median(direct);
    const p = median(proxied);
    const rate = (ms: number) => Math.round(rows / (ms / 1000)).toLocaleString("en-US");
    lines.push(
      `| ${format.name} | ${d.toFixed(0)} | ${rate(d)} | ${p.toFixed(0)} | ${rate(p)} | ${
        (d / p).toFixed(2)
      } |`,
    );
  }
  lines.push(
    "",
    `pgdog's resident memory: ${(startRss / 1024).toFixed(0)} MiB after start, peak (VmHWM) ` +
      `${(kib(pid, "VmHWM") / 1024).toFixed(0)} MiB over the whole group.`,
  );
  return lines.join("\n");
}
