import { deepEqual, equal } from "node:assert/strict";
import { TopN } from "./top_n.ts";

Deno.test("TopN keeps the smallest N, whatever the arrival order", () => {
  let x = 7;
  const rand = (): number => (x = (x * 1103515245 + 12345) % 2147483648) % 10000;
  const all = Array.from({ length: 5000 }, (_, i) => ({ key: rand(), seq: i }));
  const cmp = (a: { key: number; seq: number }, b: { key: number; seq: number }): number =>
    a.key - b.key || a.seq - b.seq;
  const top = new TopN(25, cmp);
  let dropped = 0;
  for (const item of all) {
    if (top.offer(item) !== null) dropped++;
    equal(top.size <= 25, true);
  }
  equal(dropped, 5000 - 25);
  deepEqual(top.sorted(), [...all].sort(cmp).slice(0, 25));
});

Deno.test("TopN returns what it drops: the pushed-out item or the offered one", () => {
  const top = new TopN<number>(2, (a, b) => a - b);
  equal(top.offer(5), null);
  equal(top.offer(3), null);
  equal(top.offer(9), 9);
  equal(top.offer(1), 5);
  deepEqual(top.sorted(), [1, 3]);
  const none = new TopN<number>(0, (a, b) => a - b);
  equal(none.offer(1), 1);
  deepEqual(none.sorted(), []);
});
