/**
 * Keys that make rows equal for GROUP BY, DISTINCT and set operations, and the set operations'
 * repeat counts.
 *
 * @module
 */

import type { SetOperation } from "./plan.ts";
import type { TypeOps, Value } from "./value_deps.ts";

/**
 * One string per combination of values, equal exactly when every value is (by its type's
 * {@linkcode TypeOps.groupKey}); NULLs are equal to each other, as GROUP BY and DISTINCT have
 * them. Each part is length-prefixed, so no value can imitate a column boundary.
 */
export function compositeKey(
  count: number,
  value: (i: number) => Value | null,
  ops: (i: number) => TypeOps,
): string {
  let key = "";
  for (let i = 0; i < count; i++) {
    const v = value(i);
    if (v === null) {
      key += "N";
      continue;
    }
    const part = ops(i).groupKey(v);
    key += part.length + ":" + part;
  }
  return key;
}

/** A count an aggregate gave (int8 or numeric, in whatever form its type decodes to). */
export function toCount(value: Value | null): number {
  if (value === null || value === undefined) return 0;
  if (typeof value === "number") return value;
  if (typeof value === "bigint") return Number(value);
  const n = Number(String(value));
  return Number.isFinite(n) ? n : 0;
}

/**
 * How many times a row that occurs `left` times on the left side and `right` times on the right
 * comes out of the set operation.
 */
export function setOperationCount(op: SetOperation, left: number, right: number): number {
  switch (op.op) {
    case "union":
      return op.all ? left + right : left + right > 0 ? 1 : 0;
    case "intersect":
      return op.all ? Math.min(left, right) : left > 0 && right > 0 ? 1 : 0;
    case "except":
      return op.all ? Math.max(left - right, 0) : left > 0 && right === 0 ? 1 : 0;
  }
}
