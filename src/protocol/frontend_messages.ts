/**
 * Checks and scans of client (frontend) messages in a read buffer, without decoding what routing
 * does not need: whether a message's strings end inside it, where a request ends, what a buffered
 * request binds and whether it executes. Pure: offsets in, offsets and values out.
 *
 * @module
 */

import { describeMessageType, Msg, readInt16, readInt32 } from "./messages.ts";

/** A Bind message's parameter formats and raw values. */
export interface BindParameters {
  formats: number[];
  values: (Uint8Array | null)[];
}

/**
 * Whether the strings pgdog reads from a message end inside it: Query's text, Parse's name,
 * query and parameter type count, Bind's portal and statement names, Describe's and Close's
 * target. Everything else is left for PostgreSQL to judge.
 */
export function wellFormed(type: number, buf: Uint8Array, p: number, end: number): boolean {
  const body = p + 5;
  switch (type) {
    case Msg.Query:
      return end > body && buf[end - 1] === 0;
    case Msg.Parse: {
      const nameEnd = indexOfNul(buf, body, end);
      const queryEnd = nameEnd < 0 ? -1 : indexOfNul(buf, nameEnd + 1, end);
      if (queryEnd < 0 || queryEnd + 3 > end) return false;
      const types = (buf[queryEnd + 1] << 8) | buf[queryEnd + 2];
      return queryEnd + 3 + types * 4 === end;
    }
    case Msg.Bind: {
      const portalEnd = indexOfNul(buf, body, end);
      return portalEnd >= 0 && indexOfNul(buf, portalEnd + 1, end) >= 0;
    }
    case Msg.Flush:
      // PostgreSQL answers extra bytes with an error nothing waits for, then skips to a Sync.
      return end === body;
    case Msg.Describe:
    case Msg.Close:
      return end > body + 1 && (buf[body] === 0x53 || buf[body] === 0x50) && buf[end - 1] === 0 &&
        indexOfNul(buf, body + 1, end) === end - 1;
  }
  return true;
}

/** The first NUL byte in [from, end), or -1. */
export function indexOfNul(buf: Uint8Array, from: number, end: number): number {
  const i = buf.indexOf(0, from);
  return i >= 0 && i < end ? i : -1;
}

/** Extended-protocol messages that may start a request. */
export const EXTENDED_START: Uint8Array = (() => {
  const t = new Uint8Array(256);
  for (const m of [Msg.Parse, Msg.Bind, Msg.Describe, Msg.Execute, Msg.Close]) t[m] = 1;
  return t;
})();

/** True when the messages from `p` to `end` include the Sync (or Flush) ending the request. */
export function requestBuffered(buf: Uint8Array, p: number, end: number): boolean {
  while (end - p >= 5) {
    const type = buf[p];
    if (type === Msg.Sync || type === Msg.Flush || type === Msg.Query) return true;
    p += readInt32(buf, p + 1) + 1;
  }
  return false;
}

/**
 * What the rest of a buffered request holds: its first Bind's values, whether it executes, and
 * whether an Execute asks for a limited number of rows.
 */
export function scanRequest(
  buf: Uint8Array,
  p: number,
  end: number,
): { bind: BindParameters | null; executes: boolean; limited: boolean } {
  let bind: BindParameters | null = null;
  let executes = false;
  let limited = false;
  while (end - p >= 5) {
    const type = buf[p];
    const next = p + readInt32(buf, p + 1) + 1;
    if (next > end || type === Msg.Sync || type === Msg.Flush || type === Msg.Query) break;
    if (type === Msg.Bind && bind === null) bind = bindValues(buf, p, next);
    if (type === Msg.Execute) {
      executes = true;
      const nameEnd = buf.indexOf(0, p + 5);
      if (nameEnd > 0 && nameEnd + 5 <= next && readInt32(buf, nameEnd + 1) > 0) limited = true;
    }
    p = next;
  }
  return { bind, executes, limited };
}

/** The parameter formats and values of a Bind message (null when it is malformed). */
export function bindValues(buf: Uint8Array, p: number, end: number): BindParameters | null {
  let q = buf.indexOf(0, p + 5) + 1;
  if (q <= 0 || q >= end) return null;
  q = buf.indexOf(0, q) + 1;
  if (q <= 0 || q + 2 > end) return null;
  const nFormats = readInt16(buf, q);
  q += 2;
  const formats: number[] = [];
  for (let i = 0; i < nFormats && q + 2 <= end; i++, q += 2) formats.push(readInt16(buf, q));
  if (q + 2 > end) return null;
  const n = readInt16(buf, q);
  q += 2;
  const values: (Uint8Array | null)[] = [];
  for (let i = 0; i < n; i++) {
    if (q + 4 > end) return null;
    const len = readInt32(buf, q);
    q += 4;
    if (len < 0) values.push(null);
    else {
      if (q + len > end) return null;
      values.push(buf.subarray(q, q + len));
      q += len;
    }
  }
  return { formats, values };
}

/** Messages whose statement text may need a look when large (see the client's large-message handling). */
export const STATEMENT_TYPES: Uint8Array = (() => {
  const t = new Uint8Array(256);
  for (const m of [Msg.Query, Msg.Parse, Msg.Bind]) t[m] = 1;
  return t;
})();

/** Message types a client may send once logged in. */
export const FRONTEND_TYPES: Uint8Array = (() => {
  const t = new Uint8Array(256);
  for (
    const m of [
      Msg.Bind,
      Msg.Close,
      Msg.CopyData,
      Msg.CopyDone,
      Msg.CopyFail,
      Msg.Describe,
      Msg.Execute,
      Msg.Flush,
      Msg.FunctionCall,
      Msg.Parse,
      Msg.Query,
      Msg.Sync,
      Msg.Terminate,
    ]
  ) t[m] = 1;
  return t;
})();

/**
 * Whether the request in [start, end) can be re-run on another server: it is whole (ends with
 * Sync or Query) and has no COPY data or FunctionCall.
 */
export function replayable(buf: Uint8Array, start: number, end: number): boolean {
  let last = 0;
  for (let p = start; p < end;) {
    const type = buf[p];
    if (
      type === Msg.CopyData || type === Msg.CopyDone || type === Msg.CopyFail ||
      type === Msg.FunctionCall
    ) {
      return false;
    }
    last = type;
    p += 1 + ((buf[p + 1] << 24) | (buf[p + 2] << 16) | (buf[p + 3] << 8) | buf[p + 4]);
  }
  return last === Msg.Sync || last === Msg.Query;
}

/**
 * Why the message at [p, end) can't be handled (forwarding it would make PostgreSQL drop the
 * shared server connection): an unknown type, or a string pgdog reads that does not end inside
 * it (see {@linkcode wellFormed}). Null when it can.
 */
export function invalidMessage(
  type: number,
  buf: Uint8Array,
  p: number,
  end: number,
): string | null {
  if (FRONTEND_TYPES[type] === 0) {
    return `invalid frontend message type ${describeMessageType(type)}`;
  }
  if (!wellFormed(type, buf, p, end)) return `malformed ${describeMessageType(type)} message`;
  return null;
}
