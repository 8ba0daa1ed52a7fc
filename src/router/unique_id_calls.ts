/**
 * Calls of `pgdog.unique_id()` in SQL text, as PostgreSQL's parser sees them: only a function
 * call counts, never the same characters inside a string (`'...'`, `E'...'`, `$$...$$`), a quoted
 * identifier or a comment, nor a function's name where it is not called
 * (`COMMENT ON FUNCTION pgdog.unique_id() ...`). pgdog replaces each call by a fresh id before
 * the statement reaches PostgreSQL (which has no `pgdog` schema), so an id can also be a
 * sharding key.
 *
 * ```ts
 * import { loadParser } from "./analyze.ts";
 * import { rewriteUniqueIdCalls } from "./unique_id_calls.ts";
 * await loadParser();
 * let n = 0;
 * rewriteUniqueIdCalls("INSERT INTO t VALUES (pgdog.unique_id(), '$$pgdog.unique_id()$$')", () => `${++n}`);
 * // "INSERT INTO t VALUES (1, '$$pgdog.unique_id()$$')"
 * ```
 *
 * @module
 */

import { parseSync } from "libpg-query";
import { skipBlanks } from "./lex.ts";
import { MAX_NESTING, nestingEstimate } from "./depth.ts";
import { walkTree } from "./tree.ts";

/** Where one call is in a text: [start, end) in UTF-16 code units, `pgdog` to `)`. */
export interface CallSpan {
  start: number;
  end: number;
}

/**
 * An id value written where a call was in a statement that is only described, never run (a
 * prepared statement's stand-in): an integer literal of type bigint, as every id is, so the
 * statement's parameter and column types stay those of the call.
 */
export const PLACEHOLDER_ID = "2147483648";

const MAYBE = /unique_id/i;

/** False when `sql` certainly calls no `pgdog.unique_id()` (a cheap test before parsing). */
export function mayCallUniqueId(sql: string): boolean {
  return MAYBE.test(sql);
}

/**
 * The calls of `pgdog.unique_id()` in `sql`, in text order. Empty when there is none, or when
 * the text does not parse (PostgreSQL then reports the syntax error itself).
 */
export function findUniqueIdCalls(sql: string): CallSpan[] {
  // A text too deep for the parser (see depth.ts) is never handed to it.
  if (!mayCallUniqueId(sql) || nestingEstimate(sql) > MAX_NESTING) return [];
  let tree: unknown;
  try {
    tree = parseSync(sql);
  } catch {
    return [];
  }
  return uniqueIdCallsIn(tree, sql);
}

/**
 * The calls of `pgdog.unique_id()` in a parse tree of `sql` (libpg-query's JSON tree), found by
 * its FuncCall nodes: the name `pgdog.unique_id`, no arguments, not an aggregate or window call.
 */
export function uniqueIdCallsIn(tree: unknown, sql: string): CallSpan[] {
  const starts: number[] = [];
  walkTree([tree], (key, value) => {
    if (key === "FuncCall" && isUniqueIdCall(value)) {
      starts.push((value as { location: number }).location);
    }
  });
  if (starts.length === 0) return [];
  starts.sort((a, b) => a - b);
  const spans: CallSpan[] = [];
  const toIndex = byteOffsetsToIndexes(sql, starts);
  for (let i = 0; i < starts.length; i++) {
    const start = toIndex[i];
    const end = callEnd(sql, start);
    if (end > start) spans.push({ start, end });
  }
  return spans;
}

function isUniqueIdCall(value: unknown): boolean {
  const call = value as {
    funcname?: Array<{ String?: { sval?: string } }>;
    args?: unknown[];
    agg_star?: boolean;
    agg_distinct?: boolean;
    agg_order?: unknown;
    agg_filter?: unknown;
    agg_within_group?: boolean;
    over?: unknown;
    func_variadic?: boolean;
    location?: number;
  };
  const name = call.funcname;
  return name?.length === 2 && name[0].String?.sval === "pgdog" &&
    name[1].String?.sval === "unique_id" && (call.args?.length ?? 0) === 0 &&
    !call.agg_star && !call.agg_distinct && call.agg_order === undefined &&
    call.agg_filter === undefined && !call.agg_within_group && call.over === undefined &&
    !call.func_variadic && typeof call.location === "number";
}

/**
 * `sql` with each call replaced by `value(i)` (i counts the calls from 0).
 */
export function replaceCalls(
  sql: string,
  spans: readonly CallSpan[],
  value: (i: number) => string,
): string {
  let out = "";
  let from = 0;
  spans.forEach((span, i) => {
    out += sql.slice(from, span.start) + value(i);
    from = span.end;
  });
  return out + sql.slice(from);
}

/**
 * `sql` with every call of `pgdog.unique_id()` replaced by `next()` (a fresh id each), or null
 * when it calls none.
 */
export function rewriteUniqueIdCalls(sql: string, next: () => string): string | null {
  const spans = findUniqueIdCalls(sql);
  return spans.length === 0 ? null : replaceCalls(sql, spans, next);
}

/**
 * libpg-query's locations are byte offsets into the UTF-8 text; the matching UTF-16 indexes of
 * `offsets` (ascending).
 */
export function byteOffsetsToIndexes(sql: string, offsets: readonly number[]): number[] {
  const out: number[] = [];
  let bytes = 0;
  let i = 0;
  for (const offset of offsets) {
    while (bytes < offset && i < sql.length) {
      const c = sql.charCodeAt(i);
      if (c < 0x80) bytes += 1;
      else if (c < 0x800) bytes += 2;
      else if (c >= 0xd800 && c <= 0xdbff) {
        bytes += 4;
        i++;
      } else bytes += 3;
      i++;
    }
    out.push(i);
  }
  return out;
}

/**
 * The end (after `)`) of the call whose name starts at `start`: `pgdog`, `.`, `unique_id`, `(`,
 * `)`, each name plain or quoted, with blanks and comments between. `start` itself when the text
 * there is not such a call.
 */
function callEnd(sql: string, start: number): number {
  let i = identifierEnd(sql, start);
  if (i < 0) return start;
  i = skipBlanks(sql, i);
  if (sql[i] !== ".") return start;
  i = identifierEnd(sql, skipBlanks(sql, i + 1));
  if (i < 0) return start;
  i = skipBlanks(sql, i);
  if (sql[i] !== "(") return start;
  i = skipBlanks(sql, i + 1);
  return sql[i] === ")" ? i + 1 : start;
}

/** The end of the identifier at `i` (plain or double-quoted), or -1. */
function identifierEnd(sql: string, i: number): number {
  if (sql[i] === '"') {
    for (let j = i + 1; j < sql.length; j++) {
      if (sql[j] !== '"') continue;
      if (sql[j + 1] === '"') j++;
      else return j + 1;
    }
    return -1;
  }
  let j = i;
  while (j < sql.length && /[\p{L}\p{N}_$]/u.test(sql[j])) j++;
  return j > i ? j : -1;
}
