import { equal, throws } from "node:assert/strict";
import { MergeError } from "./errors.ts";
import { resolveCount, RowWindow } from "./limit.ts";

const code = (c: string) => (e: unknown): boolean => e instanceof MergeError && e.code === c;

Deno.test("resolveCount: literals, parameters, NULL and ALL", () => {
  equal(resolveCount(null, { clause: "LIMIT" }), null);
  equal(resolveCount({ value: 5 }, { clause: "LIMIT" }), 5);
  equal(resolveCount({ param: 2 }, { clause: "OFFSET", params: ["1", " 7 "] }), 7);
  equal(resolveCount({ param: 1 }, { clause: "LIMIT", params: [null] }), null);
  equal(resolveCount({ param: 1 }, { clause: "LIMIT", params: ["+0"] }), 0);
});

Deno.test("resolveCount: PostgreSQL's errors", () => {
  throws(() => resolveCount({ value: -1 }, { clause: "LIMIT" }), code("2201W"));
  throws(() => resolveCount({ param: 1 }, { clause: "OFFSET", params: ["-2"] }), code("2201X"));
  throws(() => resolveCount({ param: 1 }, { clause: "LIMIT", params: ["1.5"] }), code("22P02"));
  throws(() => resolveCount({ param: 3 }, { clause: "LIMIT", params: ["1"] }), code("08P01"));
});

Deno.test("RowWindow skips the offset, stops at the limit, counts repeated rows", () => {
  const w = new RowWindow(2, 3);
  equal(w.take(), 0);
  equal(w.take(3), 2); // one more skipped, two out
  equal(w.full, false);
  equal(w.take(5), 1);
  equal(w.full, true);
  equal(w.take(), 0);
  const open = new RowWindow(null, null);
  equal(open.take(1000), 1000);
  equal(open.full, false);
  equal(new RowWindow(0, 0).full, true);
});
