/**
 * A client request cut into the statements it runs, so that each can be routed as if it had been
 * sent alone: the statements of a multi-statement simple query (by the byte ranges PostgreSQL's
 * parser gives), and the executions of a pipelined extended-protocol request (up to each
 * Execute). Pure: offsets in, offsets and bytes out.
 *
 * @module
 */

import { parseSync } from "libpg-query";
import { Msg, readInt32 } from "../protocol/messages.ts";
import type { ParseTree } from "../router/analyze.ts";
import { MAX_NESTING, nestingEstimate } from "../router/depth.ts";

/** PostgreSQL's parse tree of `sql`, or null when it does not parse (or nests too deeply). */
export function parseTree(sql: string): ParseTree | null {
  if (nestingEstimate(sql) > MAX_NESTING) return null;
  try {
    return parseSync(sql) as ParseTree;
  } catch {
    return null;
  }
}

/** One statement of a simple query: its bytes (without the trailing semicolon). */
export interface StatementRange {
  start: number;
  end: number;
}

/**
 * The byte ranges (relative to the query text) of each statement in a parse tree of that text,
 * in order; `textLength` is the text's length in bytes.
 */
export function statementRanges(tree: ParseTree, textLength: number): StatementRange[] {
  const out: StatementRange[] = [];
  for (const s of tree.stmts) {
    if (s.stmt === undefined) continue;
    const start = s.stmt_location ?? 0;
    const end = s.stmt_len ? start + s.stmt_len : textLength;
    out.push({ start, end });
  }
  return out;
}

/** A simple Query message holding `text` (bytes of the statement). */
export function queryMessageOf(text: Uint8Array): Uint8Array {
  const out = new Uint8Array(text.length + 6);
  out[0] = Msg.Query;
  const len = text.length + 5;
  out[1] = len >>> 24;
  out[2] = (len >>> 16) & 0xff;
  out[3] = (len >>> 8) & 0xff;
  out[4] = len & 0xff;
  out.set(text, 5);
  return out;
}

/** One execution of a pipelined extended-protocol request: messages [start, end). */
export interface Segment {
  start: number;
  end: number;
  /** Offset of its Execute (-1 for the messages after the last Execute). */
  execute: number;
  /** Offset of the Bind it executes, or -1. */
  bind: number;
}

/**
 * Cuts the extended-protocol request starting at `p` (buffered up to `end`) into segments that
 * each end with an Execute; messages after the last Execute and before the request's Sync form a
 * last segment without one. Returns null when
 * the request has no Sync, holds anything but Parse, Bind, Describe, Execute and Close (COPY,
 * Flush, FunctionCall, a Query), or executes at most once. `syncAt` is the Sync's offset.
 */
export function splitPipeline(
  buf: Uint8Array,
  p: number,
  end: number,
): { segments: Segment[]; syncAt: number } | null {
  const segments: Segment[] = [];
  let start = p;
  let bind = -1;
  let executes = 0;
  while (end - p >= 5) {
    const type = buf[p];
    const next = p + readInt32(buf, p + 1) + 1;
    if (next > end) return null;
    switch (type) {
      case Msg.Sync:
        if (start < p) segments.push({ start, end: p, execute: -1, bind });
        return executes > 1 ? { segments, syncAt: p } : null;
      case Msg.Bind:
        bind = p;
        break;
      case Msg.Execute:
        executes++;
        segments.push({ start, end: next, execute: p, bind });
        start = next;
        bind = -1;
        break;
      case Msg.Parse:
      case Msg.Describe:
      case Msg.Close:
        break;
      default:
        return null;
    }
    p = next;
  }
  return null;
}

/** The Sync message pgdog ends each segment with when it runs them one by one. */
export const SEGMENT_SYNC: Uint8Array = Uint8Array.of(Msg.Sync, 0, 0, 0, 4);
