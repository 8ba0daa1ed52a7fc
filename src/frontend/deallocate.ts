/**
 * `DEALLOCATE name|ALL` from a client in transaction mode, in every protocol. The client's names
 * are pgdog's (the server only knows `__pgdog_<n>`), and a server's statements are shared, so the
 * statement must not reach a server as written: pgdog frees the client's names and the server runs
 * a no-op in its place (`DO`), whose CommandComplete becomes PostgreSQL's `DEALLOCATE` (or
 * `DEALLOCATE ALL`). Where the statement sits in a transaction, its errors, and which later
 * statements run are then exactly PostgreSQL's. For a name the client does not have, the server
 * itself fails with PostgreSQL's 26000 (in a simple query the statement is left as written).
 *
 * A DEALLOCATE sent alone as a simple query is answered without a server (see client.ts).
 *
 * @module
 */

import {
  type ErrorFields,
  MessageBuilder,
  Msg,
  queryMessage,
  readCString,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { Server } from "../backend/server.ts";
import { Action, Expect, type RunTicket } from "../backend/response_queue.ts";
import type { Deallocation } from "../router/scan.ts";
import { type ClientStatements, type MessageSink, raiseOnServer } from "./prepared.ts";

/** What a client's DEALLOCATE becomes on the server: nothing, with CommandComplete "DO". */
export const DEALLOCATE_NOOP = "DO $pgdog$BEGIN END$pgdog$";

/** A CommandComplete message with `tag`. */
function completion(tag: string): Uint8Array {
  return new MessageBuilder(32).begin(Msg.CommandComplete).cstring(tag).end().build();
}

const DEALLOCATE = completion("DEALLOCATE");
const DEALLOCATE_ALL = completion("DEALLOCATE ALL");

/** PostgreSQL's error for a DEALLOCATE of a name the client does not have. */
export function noSuchStatement(name: string): ErrorFields {
  return {
    severity: "ERROR",
    code: SqlState.InvalidSqlStatementName,
    message: `prepared statement "${name}" does not exist`,
  };
}

/**
 * The extended protocol: a client's Parse of a DEALLOCATE statement went to the server as
 * {@linkcode DEALLOCATE_NOOP}; this follows which portal runs it, from its Bind to its Execute.
 */
export class DeallocatePortal {
  #portal = "";
  /** What the portal deallocates (null for ALL); undefined when no portal runs a DEALLOCATE. */
  #target: string | null | undefined = undefined;

  /** A portal runs a DEALLOCATE (a Bind or an Execute must be looked at). */
  get active(): boolean {
    return this.#target !== undefined;
  }

  /**
   * A Bind at [p, end) of a statement that deallocates `target` (undefined for any other
   * statement, which ends the DEALLOCATE portal it replaces).
   */
  bind(target: string | null | undefined, buf: Uint8Array, span: { p: number; end: number }): void {
    const portal = readCString(buf, span.p + 5, span.end)[0];
    if (target !== undefined) {
      this.#portal = portal;
      this.#target = target;
    } else if (portal === this.#portal) this.#target = undefined;
  }

  /**
   * An Execute at [p, end), queued on `out` for `server`: when it runs the DEALLOCATE portal, the
   * client's names are freed now (put back if the server skips or fails it) and the no-op's
   * CommandComplete becomes DEALLOCATE; a name the client does not have fails with 26000 instead.
   * False for an Execute of another portal (nothing queued).
   */
  execute(
    server: Server,
    out: MessageSink,
    options: { buf: Uint8Array; p: number; end: number; statements: ClientStatements },
  ): boolean {
    const { buf, p, end, statements } = options;
    const target = this.#target;
    if (target === undefined || readCString(buf, p + 5, end)[0] !== this.#portal) return false;
    const execute = buf.subarray(p, end);
    if (server.discardUntilSync) {
      out.addBytes(execute); // the server skips it, as PostgreSQL skips it
      return true;
    }
    let ticket: RunTicket;
    if (target === null) {
      const freed = statements.clear();
      ticket = new DeallocateRun(DEALLOCATE_ALL, () => statements.restore(freed));
    } else {
      const entry = statements.take(target);
      if (entry === undefined) {
        raiseOnServer(server, out, noSuchStatement(target));
        return true;
      }
      ticket = new DeallocateRun(DEALLOCATE, () => statements.restore([[target, entry]]));
    }
    out.addBytes(execute);
    server.expect(Expect.Execute, Action.Forward, ticket);
    return true;
  }
}

class DeallocateRun implements RunTicket {
  readonly #tag: Uint8Array;
  readonly #undo: () => void;

  constructor(tag: Uint8Array, undo: () => void) {
    this.#tag = tag;
    this.#undo = undo;
  }

  completed(tag: string): Uint8Array | null {
    return tag === "DO" ? this.#tag : null;
  }

  dropped(): void {
    this.#undo();
  }
}

/**
 * A simple query with DEALLOCATE among other statements: the Query message to send instead, and
 * the ticket of its entry. Each DEALLOCATE of a name the client has (or of ALL) becomes
 * {@linkcode DEALLOCATE_NOOP}; the names are freed when its CommandComplete arrives (a
 * DEALLOCATE is not undone by a later error, as in PostgreSQL).
 */
export function rewriteDeallocations(
  sql: string,
  options: { deallocations: Deallocation[]; statements: ClientStatements },
): { query: Uint8Array; ticket: RunTicket } {
  const { deallocations, statements } = options;
  // Which DO tags are pgdog's: the n-th DO of the answer comes from the n-th DO statement.
  const ours: Array<string | null | undefined> = [];
  let text = "";
  let at = 0;
  let rewritten = 0;
  // Freed by an earlier statement of the same text: a second DEALLOCATE of it fails (26000).
  const freed = new Set<string>();
  let allFreed = false;
  for (const d of deallocations) {
    const target = d.target;
    if (target === undefined) continue;
    if (target !== null && (allFreed || freed.has(target) || !statements.has(target))) continue;
    if (target === null) allFreed = true;
    else freed.add(target);
    ours[d.dosBefore + rewritten++] = target;
    text += sql.slice(at, d.from) + DEALLOCATE_NOOP;
    at = d.to;
  }
  text += sql.slice(at);
  return { query: queryMessage(text), ticket: new DeallocateQuery(ours, statements) };
}

class DeallocateQuery implements RunTicket {
  readonly #ours: Array<string | null | undefined>;
  readonly #statements: ClientStatements;
  #dos = 0;

  constructor(ours: Array<string | null | undefined>, statements: ClientStatements) {
    this.#ours = ours;
    this.#statements = statements;
  }

  completed(tag: string): Uint8Array | null {
    if (tag !== "DO") return null;
    const n = this.#dos++;
    if (!(n in this.#ours)) return null; // the client's own DO
    const target = this.#ours[n];
    if (target === null) {
      this.#statements.clear();
      return DEALLOCATE_ALL;
    }
    this.#statements.delete(target!);
    return DEALLOCATE;
  }
}
