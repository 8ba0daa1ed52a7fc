/**
 * Protocol-level prepared statements in transaction mode. A client's named statement lives on
 * whichever server it happens to use, so pgdog gives every distinct statement (query text plus
 * parameter types) one global name, keeps each client's names mapped to those, rewrites Parse,
 * Bind and Describe to use them, and parses a statement on a server just before the server
 * first needs it.
 *
 * Sharing must not show a client anything PostgreSQL would not. In PostgreSQL each client's
 * statement is planned at its own Parse, and keeps the result type it was described with: when
 * a table changes, a statement parsed before the change fails once the change makes it fail, and
 * one parsed after works. So a client only uses a server's copy that was prepared after its own
 * Parse (an older copy is parsed again, Close then Parse, just before the client uses it), and a
 * client that was shown a description (a Describe of the statement, or of a portal bound from it)
 * gets PostgreSQL's 0A000 "cached plan must not change result type" rather than rows of another
 * shape when the copy it would use describes itself differently. pgdog describes every copy it
 * parses, pipelined, so it rarely has to wait for a description.
 *
 * @module
 */

import { type ErrorFields, Msg, readCString, writeInt32 } from "../protocol/messages.ts";
import type { SessionScan } from "../router/scan.ts";
import type { Analysis } from "../router/mod.ts";
import type { Server } from "../backend/server.ts";
import {
  Action,
  Expect,
  type ParseTicket,
  type RunTicket,
  type StatementTicket,
} from "../backend/response_queue.ts";
import {
  describeParameters,
  describeRows,
  preparedClock,
  preparedNow,
  type StatementCopies,
  type StatementCopy,
  touchCopy,
} from "../backend/prepared_copies.ts";

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
  /**
   * pgdog's own use of it (the shard SQL of a cross-shard statement, see merge_run.ts): the
   * entry that readies servers for it and learns of their copies' failures.
   */
  ownUse: ClientStatement | null = null;

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

/** What {@linkcode ClientStatement.use} found. */
export const Use = {
  /** The server's copy can run the client's message. */
  Ready: 0,
  /** The client was shown a description and the copy's is unknown: ask the server first. */
  Unverified: 1,
  /** The copy describes itself otherwise than the client was told: the client gets 0A000. */
  Changed: 2,
} as const;

/** Where messages for a server are queued. */
export interface MessageSink {
  addBytes(bytes: Uint8Array): void;
}

/**
 * One of a client's statement names. It is also the ticket of the Binds that run it (a server's
 * error about the statement is noted here).
 */
export class ClientStatement implements StatementTicket {
  /** The shared statement. */
  readonly stmt: PreparedStatement;
  /** When the client parsed it ({@linkcode preparedClock}). */
  readonly since: number;
  /**
   * The result columns the client was shown (a Describe of the statement, or of a portal bound
   * from it: pgjdbc keeps those), or null; see describeRows in prepared_copies.ts.
   */
  toldRows: string | null = null;
  /** The parameter types the client was shown (a Describe of the statement), or null. */
  toldParams: string | null = null;
  /** A `DEALLOCATE` statement: what it deallocates (null for ALL); undefined otherwise. */
  deallocate?: string | null;

  constructor(stmt: PreparedStatement) {
    this.stmt = stmt;
    this.since = preparedClock();
  }

  /**
   * Readies `server` to run a Bind or Describe of this statement: a copy the server lacks, or one
   * older than the client's Parse or reported stale, is parsed there first (queued on `out`, its
   * success swallowed, its error the answer to the client's message). Then checks the copy against
   * what the client was told.
   */
  use(server: Server, out: MessageSink): number {
    const stmt = this.stmt;
    const copies = server.statements;
    let copy = touchCopy(copies, stmt.name);
    if (copy === undefined || copy.stale || copy.preparedAt < this.since) {
      const again = copy !== undefined;
      if (again) {
        // Parsed again for this client: planned against the tables as they are now, as its own
        // Parse would have been.
        out.addBytes(statementMessage(Msg.Close, stmt.name));
        server.expect(Expect.Close, Action.Swallow);
      }
      copy = preparedNow(copies, stmt.name);
      out.addBytes(stmt.parse);
      server.expect(Expect.Parse, Action.Inject, new CopyParse(stmt, { copy, copies, again }));
      // Its description, for clients that were told one (pipelined: nobody waits for it here).
      describeCopy(server, out, { name: stmt.name, copy });
    }
    const rows = this.toldRows;
    if (rows === null) return Use.Ready;
    if (copy.rows === null) return Use.Unverified;
    if (copy.rows !== rows) return Use.Changed;
    const params = this.toldParams;
    return params === null || copy.params === null || copy.params === params
      ? Use.Ready
      : Use.Changed;
  }

  /**
   * Asks the server to describe its copy (after {@linkcode use} returned Unverified): the answer is
   * recorded, not shown; an error is the answer to the client's message. A Flush makes the server
   * answer now, so the client's message can wait for it.
   */
  askDescription(server: Server, out: MessageSink): void {
    const copy = server.statements.get(this.stmt.name);
    if (copy === undefined) return;
    if (!copy.describing) describeCopy(server, out, { name: this.stmt.name, copy });
    out.addBytes(FLUSH);
  }

  /**
   * The client's Describe of this statement, rewritten: what the server answers is what the
   * client was told.
   */
  describe(server: Server, out: MessageSink): void {
    const copy = server.statements.get(this.stmt.name);
    out.addBytes(statementMessage(Msg.Describe, this.stmt.name));
    server.expect(
      Expect.DescribeStatement,
      Action.Forward,
      copy === undefined ? null : new DescribeTicket(this.stmt.name, copy, this),
    );
  }

  /**
   * What a Describe of a portal bound from this statement carries, when the client was not told a
   * description yet (its answer is then what the client was told), or null.
   */
  portalTicket(server: Server): StatementTicket | null {
    if (this.toldRows !== null) return null;
    const copy = server.statements.get(this.stmt.name);
    return copy === undefined ? null : new DescribeTicket(this.stmt.name, copy, this);
  }

  /**
   * Instead of the client's message: the server fails with PostgreSQL's 0A000 (in a transaction it
   * aborts it, as PostgreSQL's own would). The client is told once; it describes again, or goes
   * on with the statement as it now is.
   */
  raiseChanged(server: Server, out: MessageSink): void {
    this.forget();
    raiseOnServer(server, out, CACHED_PLAN_CHANGED);
  }

  /** Part of {@linkcode StatementTicket}: the server failed a Bind or Describe of the statement. */
  failed(copies: StatementCopies, fields: ErrorFields): void {
    noteFailure(copies, this.stmt.name, fields);
    // Told once, as with PostgreSQL's own error: the client describes again or goes on.
    if (isStale(fields)) this.forget();
  }

  /** The client no longer relies on a description (it was told the statement changed). */
  forget(): void {
    this.toldRows = null;
    this.toldParams = null;
  }
}

/**
 * Makes the server fail the request at this point with `fields` (an Execute of a portal that does
 * not exist, whose error is replaced): nothing runs, the server skips to the next Sync, and a
 * transaction is aborted, as with an error of PostgreSQL's own at that message.
 */
export function raiseOnServer(server: Server, out: MessageSink, fields: ErrorFields): void {
  out.addBytes(EXECUTE_NO_PORTAL);
  server.expect(Expect.Execute, Action.Forward, { raise: fields } satisfies RunTicket);
}

/**
 * Asks the server to describe its copy of a statement: the answer is recorded, not shown; an error
 * is the answer to the client's message it precedes.
 */
export function describeCopy(
  server: Server,
  out: MessageSink,
  options: { name: string; copy: StatementCopy },
): void {
  const { name, copy } = options;
  copy.describing = true;
  out.addBytes(statementMessage(Msg.Describe, name));
  server.expect(Expect.DescribeStatement, Action.Inject, new DescribeTicket(name, copy, null));
}

/** An error that means the server's copy was planned against tables that have changed since. */
function isStale(fields: ErrorFields): boolean {
  return (fields.code === "0A000" &&
    fields.message.startsWith("cached plan must not change result type")) ||
    fields.code.startsWith("42");
}

/** A server failed a Bind or Describe of statement `name`: notes what that says of its copies. */
function noteFailure(copies: StatementCopies, name: string, fields: ErrorFields): void {
  if (isStale(fields)) {
    const copy = copies.get(name);
    if (copy !== undefined) copy.stale = true;
  } else if (fields.code === "26000" && fields.message.includes(`"${name}"`)) {
    // The server lost a statement pgdog believed it had (a DEALLOCATE inside a function, say):
    // what else it lost is unknown, so every copy there is parsed again before its next use.
    for (const copy of copies.values()) copy.stale = true;
  }
}

/** The Parse of a server copy pgdog sends before a client's message that needs it. */
class CopyParse implements ParseTicket {
  readonly name: string;
  readonly #stmt: PreparedStatement;
  readonly #copy: StatementCopy;
  readonly #copies: StatementCopies;
  /** A Close of an older copy went before it. */
  readonly #again: boolean;

  constructor(
    stmt: PreparedStatement,
    options: { copy: StatementCopy; copies: StatementCopies; again: boolean },
  ) {
    this.name = stmt.name;
    this.#stmt = stmt;
    this.#copy = options.copy;
    this.#copies = options.copies;
    this.#again = options.again;
  }

  succeeded(): void {
    this.#stmt.validated = true;
  }

  failed(): void {
    if (this.#copies.get(this.name) !== this.#copy) return;
    // After a Close that may have been skipped too, whether the older copy is there is unknown:
    // the next use closes and parses it again.
    if (this.#again) this.#copy.stale = true;
    else this.#copies.delete(this.name);
  }
}

/**
 * Records a copy's description from the server's answer to a Describe of it (or of a portal bound
 * from it), and, for a client's own Describe, what the client was told.
 */
class DescribeTicket implements StatementTicket {
  readonly #name: string;
  readonly #copy: StatementCopy;
  readonly #client: ClientStatement | null;
  #params: string | null = null;

  constructor(name: string, copy: StatementCopy, client: ClientStatement | null) {
    this.#name = name;
    this.#copy = copy;
    this.#client = client;
  }

  described(type: number, buf: Uint8Array, start: number): void {
    if (type === Msg.ParameterDescription) {
      this.#params = describeParameters(buf, start);
      return;
    }
    const rows = describeRows(buf, type === Msg.RowDescription ? start : null);
    const copy = this.#copy;
    copy.rows = rows;
    copy.params = this.#params ?? copy.params;
    copy.describing = false;
    const client = this.#client;
    if (client !== null) {
      client.toldRows = rows;
      if (this.#params !== null) client.toldParams = this.#params;
    }
  }

  dropped(): void {
    this.#copy.describing = false;
  }

  failed(copies: StatementCopies, fields: ErrorFields): void {
    this.#copy.describing = false;
    noteFailure(copies, this.#name, fields);
    if (this.#client !== null && isStale(fields)) this.#client.forget();
  }
}

/** A client's statement names, mapped to the shared statements. */
export class ClientStatements {
  readonly #byName = new Map<string, ClientStatement>();

  /** Number of named statements. */
  get size(): number {
    return this.#byName.size;
  }

  /** The statement a client name refers to. */
  get(name: string): PreparedStatement | undefined {
    return this.#byName.get(name)?.stmt;
  }

  /** The client's record of a name. */
  entry(name: string): ClientStatement | undefined {
    return this.#byName.get(name);
  }

  /** True when the client has a statement of that name. */
  has(name: string): boolean {
    return this.#byName.has(name);
  }

  /** Maps `name` to `stmt`, parsed by the client now. */
  set(name: string, stmt: PreparedStatement): ClientStatement {
    const entry = new ClientStatement(stmt);
    this.#put(name, entry);
    return entry;
  }

  #put(name: string, entry: ClientStatement): void {
    const old = this.#byName.get(name);
    if (old) old.stmt.refs--;
    entry.stmt.refs++;
    this.#byName.set(name, entry);
  }

  /** Forgets `name` (Close, DEALLOCATE). */
  delete(name: string): boolean {
    return this.take(name) !== undefined;
  }

  /** Forgets `name`, returning its record (to put it back with {@linkcode restore}). */
  take(name: string): ClientStatement | undefined {
    const old = this.#byName.get(name);
    if (!old) return undefined;
    old.stmt.refs--;
    this.#byName.delete(name);
    return old;
  }

  /** Forgets every name (DEALLOCATE ALL, DISCARD ALL, disconnect); returns what it forgot. */
  clear(): Array<[string, ClientStatement]> {
    const all = [...this.#byName];
    for (const s of this.#byName.values()) s.stmt.refs--;
    this.#byName.clear();
    return all;
  }

  /** Puts back names forgotten by a DEALLOCATE that did not run, unless taken again since. */
  restore(entries: Array<[string, ClientStatement]>): void {
    for (const [name, entry] of entries) if (!this.#byName.has(name)) this.#put(name, entry);
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

/** Flush: the server answers what it holds without ending the request. */
const FLUSH = Uint8Array.of(Msg.Flush, 0, 0, 0, 4);

/** An Execute of a portal no client can have created: the server fails it with 34000. */
const EXECUTE_NO_PORTAL = (() => {
  const name = encoder.encode("__pgdog_no_portal");
  const out = new Uint8Array(5 + name.length + 1 + 4);
  out[0] = Msg.Execute;
  writeInt32(out, 1, out.length - 1);
  out.set(name, 5);
  return out;
})();

/** PostgreSQL's error when a statement's result type changed since the client was told it. */
const CACHED_PLAN_CHANGED: ErrorFields = {
  severity: "ERROR",
  code: "0A000",
  message: "cached plan must not change result type",
  // Drivers (postgres.js) prepare again when the error comes from here, as PostgreSQL's does.
  other: { F: "plancache.c", R: "RevalidateCachedQuery" },
};
