/**
 * numeric.ts: exact results and scales checked against PostgreSQL 15, first on values taken
 * from it, then on a few hundred seeded random pairs it computes live.
 */

import { deepEqual, equal, throws } from "node:assert/strict";
import { startPostgres } from "../../tests/harness/mod.ts";
import { MergeError } from "./errors.ts";
import {
  addNumeric,
  compareNumeric,
  divNumeric,
  formatNumeric,
  modNumeric,
  mulNumeric,
  numericFromBinary,
  numericKey,
  numericToBinary,
  parseNumeric,
  sqrtNumeric,
  subNumeric,
} from "./numeric.ts";

const n = parseNumeric;
const f = formatNumeric;

function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

Deno.test("numeric: text in and out keeps PostgreSQL's display scale", () => {
  // SELECT 'x'::numeric in PostgreSQL 15.
  equal(f(n("1.50")), "1.50");
  equal(f(n("-0.00")), "0.00");
  equal(f(n(" 12 ")), "12");
  equal(f(n("1.5e3")), "1500");
  equal(f(n("1e-3")), "0.001");
  equal(f(n("1.25e-1")), "0.125");
  equal(f(n(".5")), "0.5");
  equal(f(n("5.")), "5");
  equal(f(n("nan")), "NaN");
  equal(f(n("-inf")), "-Infinity");
  equal(f(n("+Infinity")), "Infinity");
  throws(() => n("1.2.3"), (e) => e instanceof MergeError && e.code === "22P02");
});

Deno.test("numeric: division and square root scales as PostgreSQL's (values from it)", () => {
  equal(f(divNumeric(n("1"), n("3"))), "0.33333333333333333333");
  equal(f(divNumeric(n("10"), n("4"))), "2.5000000000000000");
  equal(f(divNumeric(n("1.000"), n("3.0"))), "0.33333333333333333333");
  equal(f(divNumeric(n("123456789.123"), n("0.0007"))), "176366841604.28571429");
  equal(f(divNumeric(n("-7.5"), n("2"))), "-3.7500000000000000");
  equal(f(sqrtNumeric(n("2"))), "1.414213562373095");
  equal(f(sqrtNumeric(n("100.00"))), "10.000000000000000");
  equal(f(sqrtNumeric(n("0"))), "0.000000000000000");
  equal(f(divNumeric(n("Infinity"), n("-2"))), "-Infinity");
  equal(f(divNumeric(n("5"), n("-Infinity"))), "0");
  equal(f(divNumeric(n("NaN"), n("0"))), "NaN");
  throws(() => divNumeric(n("1"), n("0.00")), (e) => e instanceof MergeError && e.code === "22012");
  throws(() => sqrtNumeric(n("-1")), (e) => e instanceof MergeError && e.code === "2201F");
  equal(f(addNumeric(n("Infinity"), n("-Infinity"))), "NaN");
  equal(f(mulNumeric(n("Infinity"), n("0"))), "NaN");
  equal(f(subNumeric(n("1.5"), n("0.25"))), "1.25");
});

Deno.test("numeric: order and equality across scales and special values", () => {
  const sorted = ["-Infinity", "-1.5", "0", "0.00", "1.0", "1", "Infinity", "NaN"].map(n);
  for (let i = 0; i + 1 < sorted.length; i++) {
    const c = compareNumeric(sorted[i], sorted[i + 1]);
    equal(c <= 0, true, `${f(sorted[i])} <= ${f(sorted[i + 1])}`);
  }
  equal(compareNumeric(n("1.0"), n("1.00")), 0);
  equal(compareNumeric(n("NaN"), n("NaN")), 0);
  equal(numericKey(n("1.0")), numericKey(n("1.00")));
  equal(numericKey(n("-0.0")), numericKey(n("0")));
  equal(numericKey(n("10")) === numericKey(n("1")), false);
});

Deno.test("numeric: binary send/recv as PostgreSQL sends it (numeric_send bytes)", () => {
  // SELECT encode(numeric_send('x'::numeric), 'hex') in PostgreSQL 15.
  const cases: [string, string][] = [
    ["0", "0000000000000000"],
    ["0.00", "0000000000000002"],
    ["1", "0001000000000000" + "0001"],
    ["-1.5", "000200004000000100011388"],
    ["12345678.9", "0003000100000001" + "04d2162e2328"],
    ["0.0001", "0001ffff000000040001"],
    ["NaN", "00000000c0000000"],
    ["Infinity", "00000000d0000020"],
    ["-Infinity", "00000000f0000020"],
  ];
  for (const [text, bytes] of cases) {
    equal(hex(numericToBinary(n(text))), bytes, text);
    equal(f(numericFromBinary(numericToBinary(n(text)))), text);
  }
});

Deno.test("numeric: random add/mul/div/sqrt/mod agree with PostgreSQL", async () => {
  await using pg = await startPostgres({});
  let seed = 42;
  const rand = (k: number): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % k;
  };
  const random = (): string => {
    const sign = rand(10) < 3 ? "-" : "";
    const ip = String(rand(10 ** rand(10)));
    const fs = rand(8);
    let fp = "";
    for (let i = 0; i < fs; i++) fp += String(rand(10));
    return sign + ip + (fs ? "." + fp : "");
  };
  const pairs: [string, string][] = [];
  for (let i = 0; i < 300; i++) pairs.push([random(), random()]);
  pairs.push(["99999999", "0.00000001"], ["0.00000001", "99999999"], ["1", "10000"]);
  const rows = pairs.map(([a, b]) => `('${a}'::numeric, '${b}'::numeric)`).join(", ");
  const result = await pg.sql(
    `SELECT a + b, a * b, CASE WHEN b = 0 THEN NULL ELSE a / b END,
       CASE WHEN a < 0 THEN NULL ELSE sqrt(a) END, CASE WHEN b = 0 THEN NULL ELSE a % b END,
       encode(numeric_send(a), 'hex')
     FROM (VALUES ${rows}) t(a, b)`,
  );
  const mine = pairs.map(([a, b]) => {
    const x = n(a);
    const y = n(b);
    const zero = y.unscaled === 0n;
    return [
      f(addNumeric(x, y)),
      f(mulNumeric(x, y)),
      zero ? "" : f(divNumeric(x, y)),
      x.unscaled < 0n ? "" : f(sqrtNumeric(x)),
      zero ? "" : f(modNumeric(x, y)),
      hex(numericToBinary(x)),
    ];
  });
  deepEqual(mine, result);
});
