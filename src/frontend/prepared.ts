/**
 * Protocol-level prepared statements in transaction mode. A client's named statement lives on
 * whichever server it happens to use, so pgdog gives every distinct statement (query text plus
 * parameter types) one global name, keeps each client's names mapped to those, rewrites Parse,
 * Bind and Describe to use them, and parses a statement on a server just before the server
 * first needs it.
 *
 * @module
 */

import { Msg, readCString, writeInt32 } from "../protocol/messages.ts";
import type { SessionScan } from "../router/scan.ts";
import type { Analysis } from "../router/mod.ts";

/** One distinct statement, shared by every client that prepared it. */
export class PreparedStatement {
  /** The server-side name, unique in the process (`__pgdog_<n>`). */
  readonly name: string;
  /** The Parse message that creates it on a server, under its global name. */
  readonly parse: Uint8Array;
  /** The query text, for SHOW PREPARED and logs. */
  readonly query: string;
  /** Client names mapped to it right now. */
  refs = 0;
  /** A server parsed it successfully at least once (its text is known to be valid). */
  validated = false;
  /** Recently-used order in the cache. */
  lastUsed = 0;
  /** What running it does to the session (SET, advisory locks, ...), if anything. */
  scan: SessionScan | null = null;
  /** The router's analysis of its query (when routing). */
  analysis: Analysis | null = null;

  constructor(name: string, parse: Uint8Array, query: string) {
    this.name = name;
    this.parse = parse;
    this.query = query;
  }
}

const latin1 = new TextDecoder("latin1");
const encoder = new TextEncoder();

/** Every distinct statement known to the proxy. */
export class PreparedCache {
  readonly #byKey = new Map<string, PreparedStatement>();
  #next = 1;
  #clock = 0;
  /** Unreferenced statements beyond this many are forgotten. */
  readonly limit: number;

  constructor(options?: { limit?: number }) {
    this.limit = options?.limit ?? 100_000;
  }

  /** Number of distinct statements. */
  get size(): number {
    return this.#byKey.size;
  }

  /** All statements (SHOW PREPARED). */
  values(): IterableIterator<PreparedStatement> {
    return this.#byKey.values();
  }

  /**
   * The statement for a client's Parse message at [start, end) of `buf` (type byte included),
   * created on first sight. The key is the query and parameter types, byte for byte.
   */
  forParse(buf: Uint8Array, start: number, end: number): PreparedStatement {
    const nameEnd = buf.indexOf(0, start + 5);
    const rest = buf.subarray(nameEnd + 1, end);
    const key = latin1.decode(rest);
    let stmt = this.#byKey.get(key);
    if (stmt === undefined) {
      const name = `__pgdog_${this.#next++}`;
      const nameBytes = encoder.encode(name);
      const parse = new Uint8Array(1 + 4 + nameBytes.length + 1 + rest.length);
      parse[0] = Msg.Parse;
      writeInt32(parse, 1, parse.length - 1);
      parse.set(nameBytes, 5);
      parse.set(rest, 5 + nameBytes.length + 1);
      const query = readCString(rest, 0, rest.length)[0];
      stmt = new PreparedStatement(name, parse, query);
      this.#byKey.set(key, stmt);
      if (this.#byKey.size > this.limit) this.#evict();
    }
    stmt.lastUsed = ++this.#clock;
    return stmt;
  }

  /** Drops unreferenced statements, least recently used first, down to 90% of the limit. */
  #evict(): void {
    const idle = [...this.#byKey].filter(([, s]) => s.refs === 0).sort((a, b) =>
      a[1].lastUsed - b[1].lastUsed
    );
    let excess = this.#byKey.size - Math.floor(this.limit * 0.9);
    for (const [key] of idle) {
      if (excess-- <= 0) break;
      this.#byKey.delete(key);
    }
  }

  /** Forgets everything (RESET PREPARED). */
  clear(): void {
    this.#byKey.clear();
  }
}

/** A client's statement names, mapped to the shared statements. */
export class ClientStatements {
  readonly #byName = new Map<string, PreparedStatement>();

  /** Number of named statements. */
  get size(): number {
    return this.#byName.size;
  }

  /** The statement a client name refers to. */
  get(name: string): PreparedStatement | undefined {
    return this.#byName.get(name);
  }

  /** True when the client has a statement of that name. */
  has(name: string): boolean {
    return this.#byName.has(name);
  }

  /** Maps `name` to `stmt`. */
  set(name: string, stmt: PreparedStatement): void {
    const old = this.#byName.get(name);
    if (old === stmt) return;
    if (old) old.refs--;
    stmt.refs++;
    this.#byName.set(name, stmt);
  }

  /** Forgets `name` (Close, DEALLOCATE). */
  delete(name: string): boolean {
    const old = this.#byName.get(name);
    if (!old) return false;
    old.refs--;
    return this.#byName.delete(name);
  }

  /** Forgets every name (DEALLOCATE ALL, DISCARD ALL, disconnect). */
  clear(): void {
    for (const s of this.#byName.values()) s.refs--;
    this.#byName.clear();
  }
}

/** The statement name of a Parse message at [start, end). */
export function parseName(buf: Uint8Array, start: number, end: number): string {
  return readCString(buf, start + 5, end)[0];
}

/** The query text of a Parse message at [start, end). */
export function parseQuery(buf: Uint8Array, start: number, end: number): string {
  const nameEnd = buf.indexOf(0, start + 5);
  return readCString(buf, nameEnd + 1, end)[0];
}

/** The statement name of a Bind message at [start, end) (after the portal name). */
export function bindStatementName(buf: Uint8Array, start: number, end: number): string {
  const portalEnd = buf.indexOf(0, start + 5);
  return readCString(buf, portalEnd + 1, end)[0];
}

/** A Bind message with its statement name replaced by `name`. */
export function rewriteBind(buf: Uint8Array, start: number, end: number, name: string): Uint8Array {
  const portalEnd = buf.indexOf(0, start + 5);
  const stmtEnd = buf.indexOf(0, portalEnd + 1);
  const nameBytes = encoder.encode(name);
  const head = buf.subarray(start + 5, portalEnd + 1);
  const tail = buf.subarray(stmtEnd + 1, end);
  const out = new Uint8Array(5 + head.length + nameBytes.length + 1 + tail.length);
  out[0] = Msg.Bind;
  writeInt32(out, 1, out.length - 1);
  out.set(head, 5);
  out.set(nameBytes, 5 + head.length);
  out.set(tail, 5 + head.length + nameBytes.length + 1);
  return out;
}

/** A Describe or Close of statement `name` ('S'), for the given message type. */
export function statementMessage(type: number, name: string): Uint8Array {
  const nameBytes = encoder.encode(name);
  const out = new Uint8Array(5 + 1 + nameBytes.length + 1);
  out[0] = type;
  writeInt32(out, 1, out.length - 1);
  out[5] = 0x53; // 'S'
  out.set(nameBytes, 6);
  return out;
}

/** The object name of a Describe or Close message at [start, end), after its 'S'/'P' byte. */
export function describedName(buf: Uint8Array, start: number, end: number): string {
  return readCString(buf, start + 6, end)[0];
}
