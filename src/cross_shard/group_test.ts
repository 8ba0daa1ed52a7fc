import { equal, notEqual } from "node:assert/strict";
import { compositeKey, setOperationCount, toCount } from "./group.ts";
import type { TypeOps } from "./value_deps.ts";

const textOps: TypeOps = {
  oid: 25,
  decode: (f) => new TextDecoder().decode(f),
  encode: (v) => new TextEncoder().encode(v as string),
  compare: (a, b) => (a as string) < (b as string) ? -1 : a === b ? 0 : 1,
  groupKey: (v) => v as string,
};

Deno.test("compositeKey: equal exactly for equal values, NULLs equal, no boundary tricks", () => {
  const key = (...vs: (string | null)[]): string =>
    compositeKey(vs.length, (i) => vs[i], () => textOps);
  equal(key("a", null), key("a", null));
  notEqual(key("a", null), key("a", "N"));
  notEqual(key("ab", "c"), key("a", "bc"));
  notEqual(key("1:a"), key("1", "a"));
  notEqual(key(null, "x"), key("x", null));
  equal(key(), "");
});

Deno.test("toCount reads an aggregate's count however its type decodes", () => {
  equal(toCount(3n), 3);
  equal(toCount(4), 4);
  equal(toCount({ toString: () => "12" }), 12);
  equal(toCount(null), 0);
});

Deno.test("setOperationCount: PostgreSQL's set operation multiplicities", () => {
  const n = (op: "union" | "intersect" | "except", all: boolean, l: number, r: number): number =>
    setOperationCount({ op, all, left: 0, right: 1 }, l, r);
  equal(n("union", false, 3, 2), 1);
  equal(n("union", true, 3, 2), 5);
  equal(n("intersect", false, 3, 0), 0);
  equal(n("intersect", false, 3, 2), 1);
  equal(n("intersect", true, 3, 2), 2);
  equal(n("except", false, 3, 2), 0);
  equal(n("except", false, 3, 0), 1);
  equal(n("except", true, 3, 2), 1);
  equal(n("except", true, 1, 2), 0);
});
