import assert from "node:assert/strict";
import { crc32, frameRecord, readRecords, TwoPcWal, type WalTransaction } from "./wal.ts";

const tx = (gid: string): WalTransaction => ({
  gid,
  database: "app",
  user: "u",
  shards: [0, 1],
  at: 1,
});

function walFiles(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".wal")).sort();
}

Deno.test("crc32 of a known string", () => {
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
});

Deno.test("a torn or damaged record ends what is read", () => {
  const a = frameRecord({ t: "begin", ...tx("a") });
  const b = frameRecord({ t: "commit", ...tx("a") });
  const whole = new Uint8Array([...a, ...b]);
  assert.equal(readRecords(whole).records.length, 2);
  const torn = readRecords(whole.subarray(0, whole.length - 3));
  assert.deepEqual([torn.records.length, torn.torn], [1, true]);
  const damaged = whole.slice();
  damaged[a.length + 10] ^= 0xff;
  assert.deepEqual([readRecords(damaged).records.length, readRecords(damaged).torn], [1, true]);
});

Deno.test("replay: undecided, decided and ended transactions; a torn tail is ignored", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const options = { dir, worker: 0, workers: 1, segmentSize: 4096, fsyncInterval: 0 };
    const wal = new TwoPcWal(options);
    assert.deepEqual(await wal.open(), []);
    await wal.append({ t: "begin", ...tx("undecided") }, { durable: true });
    await wal.append({ t: "begin", ...tx("decided") }, { durable: true });
    await wal.append({ t: "commit", ...tx("decided") }, { durable: true });
    await wal.append({ t: "begin", ...tx("done") }, { durable: true });
    await wal.append({ t: "commit", ...tx("done") }, { durable: true });
    await wal.append({ t: "end", gid: "done" }, { durable: false });
    wal.close();
    // A crash in the middle of the next record.
    const [file] = walFiles(dir);
    const partial = frameRecord({ t: "commit", ...tx("undecided") }).subarray(0, 12);
    await Deno.writeFile(`${dir}/${file}`, partial, { append: true });
    const again = new TwoPcWal(options);
    const left = await again.open();
    assert.deepEqual(
      left.map((t) => [t.gid, t.decided]).sort(),
      [["decided", true], ["undecided", false]],
    );
    // Once both end, the old segment goes; the current one stays.
    await again.append({ t: "end", gid: "decided" }, { durable: false });
    assert.deepEqual(again.checkpoint(), []);
    await again.append({ t: "end", gid: "undecided" }, { durable: false });
    assert.deepEqual(again.checkpoint(), [file]);
    assert.equal(walFiles(dir).length, 1);
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("segments: an open transaction keeps every segment it has a record in", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const wal = new TwoPcWal({ dir, worker: 0, workers: 1, segmentSize: 4096, fsyncInterval: 5 });
    await wal.open();
    // Fill segments with finished transactions; one spans two segments and stays open.
    await wal.append({ t: "begin", ...tx("open") }, { durable: true });
    let i = 0;
    while (walFiles(dir).length < 2) {
      await wal.append({ t: "begin", ...tx(`t${i}`) }, { durable: true });
      await wal.append({ t: "end", gid: `t${i++}` }, { durable: false });
    }
    await wal.append({ t: "commit", ...tx("open") }, { durable: true });
    while (walFiles(dir).length < 3) {
      await wal.append({ t: "begin", ...tx(`t${i}`) }, { durable: true });
      await wal.append({ t: "end", gid: `t${i++}` }, { durable: false });
    }
    assert.deepEqual(wal.checkpoint(), [], "the open transaction's segments stay");
    assert.equal(walFiles(dir).length, 3);
    await wal.append({ t: "end", gid: "open" }, { durable: false });
    assert.equal(wal.checkpoint().length, 2);
    assert.equal(walFiles(dir).length, 1);
    wal.close();
    // Nothing is left to finish.
    const again = new TwoPcWal({ dir, worker: 0, workers: 1, segmentSize: 4096, fsyncInterval: 0 });
    assert.deepEqual(await again.open(), []);
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("worker 0 adopts the logs of workers beyond the count", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const w3 = new TwoPcWal({ dir, worker: 3, workers: 4, segmentSize: 4096, fsyncInterval: 0 });
    await w3.open();
    await w3.append({ t: "begin", ...tx("of-3") }, { durable: true });
    w3.close();
    const w1 = new TwoPcWal({ dir, worker: 1, workers: 2, segmentSize: 4096, fsyncInterval: 0 });
    assert.deepEqual(await w1.open(), []);
    w1.close();
    const w0 = new TwoPcWal({ dir, worker: 0, workers: 2, segmentSize: 4096, fsyncInterval: 0 });
    assert.deepEqual((await w0.open()).map((t) => t.gid), ["of-3"]);
    w0.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
