import { deepEqual, equal, throws } from "node:assert/strict";
import { KWayMerge } from "./merge.ts";

type Item = { key: number; tag: string };
const byKey = (a: Item, b: Item): number => a.key - b.key;

function drain<T>(m: KWayMerge<T>): T[] {
  const out: T[] = [];
  for (let x = m.next(); x !== undefined; x = m.next()) out.push(x);
  return out;
}

Deno.test("KWayMerge: nothing comes out while a source that has not finished has sent nothing", () => {
  const m = new KWayMerge<number>(3, (a, b) => a - b);
  m.push(0, 5);
  m.push(1, 7);
  deepEqual(drain(m), []);
  m.push(2, 6);
  // 5 is known smallest; then shard 0 is empty and not finished: wait.
  deepEqual(drain(m), [5]);
  equal(m.waiting(0), 0);
  equal(m.waiting(1), 1);
  m.push(0, 9);
  deepEqual(drain(m), [6]); // shard 2 now blocks
  m.finish(2);
  deepEqual(drain(m), [7]); // shard 1 blocks
  m.finish(1);
  deepEqual(drain(m), [9]);
  equal(m.done, false);
  m.finish(0);
  equal(m.done, true);
  equal(m.next(), undefined);
});

Deno.test("KWayMerge: a finished source does not block, rows stream before the others finish", () => {
  const m = new KWayMerge<number>(2, (a, b) => a - b);
  m.finish(1);
  m.push(0, 1);
  m.push(0, 2);
  deepEqual(drain(m), [1, 2]);
  m.push(0, 3);
  deepEqual(drain(m), [3]);
  equal(m.done, false);
  m.finish(0);
  equal(m.done, true);
});

Deno.test("KWayMerge: ties come out in arrival order", () => {
  const m = new KWayMerge<Item>(3, byKey);
  m.push(2, { key: 1, tag: "c1" });
  m.push(0, { key: 1, tag: "a1" });
  m.push(1, { key: 0, tag: "b0" });
  m.push(1, { key: 1, tag: "b1" });
  m.push(0, { key: 1, tag: "a2" });
  for (let s = 0; s < 3; s++) m.finish(s);
  deepEqual(drain(m).map((x) => x.tag), ["b0", "c1", "a1", "b1", "a2"]);
});

Deno.test("KWayMerge: many sources and rows come out sorted and complete", () => {
  const sources = 7;
  const m = new KWayMerge<Item>(sources, byKey);
  // Deterministic pseudo-random sorted runs, interleaved arrival.
  let x = 12345;
  const rand = (): number => (x = (x * 1103515245 + 12345) % 2147483648) / 2147483648;
  const runs: number[][] = [];
  for (let s = 0; s < sources; s++) {
    const run = Array.from({ length: 3000 }, () => Math.floor(rand() * 1000)).sort((a, b) => a - b);
    runs.push(run);
  }
  const out: number[] = [];
  const pos = new Array(sources).fill(0);
  let left = sources;
  let maxWaiting = 0;
  while (left > 0) {
    const s = Math.floor(rand() * sources);
    if (pos[s] === runs[s].length) continue;
    m.push(s, { key: runs[s][pos[s]++], tag: "" });
    if (pos[s] === runs[s].length) {
      m.finish(s);
      left--;
    }
    maxWaiting = Math.max(maxWaiting, m.size);
    for (let y = m.next(); y !== undefined; y = m.next()) out.push(y.key);
  }
  deepEqual(out, runs.flat().sort((a, b) => a - b));
  equal(m.done, true);
  // Items are held only while waiting for the others: far fewer than all of them.
  equal(maxWaiting < 2000, true, `held up to ${maxWaiting}`);
});

Deno.test("KWayMerge: clear drops what waits and ends the merge", () => {
  const m = new KWayMerge<number>(2, (a, b) => a - b);
  m.push(0, 1);
  m.push(0, 2);
  equal(m.size, 2);
  m.clear();
  equal(m.size, 0);
  equal(m.done, true);
  equal(m.next(), undefined);
  throws(() => m.push(0, 3));
});
