import { deepEqual, equal } from "node:assert/strict";
import { LruMap } from "./lru.ts";

Deno.test("LruMap: drops the least recently used, get marks use, peek does not", () => {
  const m = new LruMap<string, number>(3);
  m.set("a", 1);
  m.set("b", 2);
  m.set("c", 3);
  equal(m.get("a"), 1);
  equal(m.peek("b"), 2);
  m.set("d", 4); // b is the least recently used: peek did not count
  deepEqual([...m.values()], [3, 1, 4]);
  equal(m.get("b"), undefined);
  m.set("c", 30); // an update counts as use
  m.set("e", 5);
  deepEqual([...m.values()], [4, 30, 5]);
  equal(m.size, 3);
});

Deno.test("LruMap: delete, clear, and a lower limit evicts at once", () => {
  const m = new LruMap<number, string>(5);
  for (let i = 0; i < 5; i++) m.set(i, String(i));
  equal(m.delete(2, "other"), false);
  equal(m.delete(2), true);
  equal(m.delete(2), false);
  equal(m.delete(1, "1"), true);
  m.set(1, "1");
  deepEqual([...m.values()], ["0", "3", "4", "1"]);
  m.limit = 2;
  deepEqual([...m.values()], ["4", "1"]);
  equal(m.limit, 2);
  m.delete(4);
  m.delete(1);
  deepEqual([...m.values()], []);
  m.set(9, "9");
  deepEqual([...m.values()], ["9"]);
  m.clear();
  equal(m.size, 0);
  deepEqual([...m.values()], []);
  m.limit = 0; // at least one entry
  m.set(1, "a");
  m.set(2, "b");
  deepEqual([...m.values()], ["b"]);
});

Deno.test("LruMap: many evictions keep the order and the bound", () => {
  const m = new LruMap<number, number>(100);
  for (let i = 0; i < 100_000; i++) {
    m.set(i, i);
    if (i % 3 === 1) m.get(i - 50);
  }
  equal(m.size, 100);
  const values = [...m.values()];
  equal(values.length, 100);
  equal(values.at(-1), 99_999);
});
