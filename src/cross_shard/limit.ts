/**
 * OFFSET and LIMIT after the merge: the numbers (literals or parameter values) and the window
 * they cut out of the merged rows.
 *
 * @module
 */

import { MergeError } from "./errors.ts";
import type { NumberSource } from "./plan.ts";

/**
 * The value of a LIMIT (`null`: no limit, as LIMIT ALL or LIMIT NULL) or OFFSET (`null`: 0).
 * `params` are the statement's parameter values in text, `$1` first. A negative value is
 * PostgreSQL's error: 2201W for LIMIT, 2201X for OFFSET.
 */
export function resolveCount(
  source: NumberSource | null,
  options: { clause: "LIMIT" | "OFFSET"; params?: readonly (string | null)[] },
): number | null {
  if (source === null) return null;
  let n: number;
  if ("value" in source) {
    n = source.value;
  } else {
    const text = options.params?.[source.param - 1];
    if (text === undefined) {
      throw new MergeError("08P01", `there is no parameter $${source.param}`);
    }
    if (text === null) return null;
    const trimmed = text.trim();
    if (!/^[+-]?\d+$/.test(trimmed)) {
      throw new MergeError("22P02", `invalid input syntax for type bigint: "${text}"`);
    }
    n = Number(trimmed);
  }
  if (n < 0) {
    throw options.clause === "LIMIT"
      ? new MergeError("2201W", "LIMIT must not be negative")
      : new MergeError("2201X", "OFFSET must not be negative");
  }
  return n;
}

/** Which of the rows that come out in order the client gets: skips `offset`, stops at `limit`. */
export class RowWindow {
  #skip: number;
  #left: number;

  /** `limit` null: no limit. */
  constructor(offset: number | null, limit: number | null) {
    this.#skip = offset ?? 0;
    this.#left = limit ?? Infinity;
  }

  /**
   * How many of `count` equal rows in a row go out (the first ones are skipped while the offset
   * lasts; none once the limit is reached).
   */
  take(count = 1): number {
    const skipped = Math.min(this.#skip, count);
    this.#skip -= skipped;
    const out = Math.min(count - skipped, this.#left);
    this.#left -= out;
    return out;
  }

  /** The limit is reached: no further row goes out. */
  get full(): boolean {
    return this.#left === 0;
  }
}
