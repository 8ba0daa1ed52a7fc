/**
 * Forwarding a client's messages to a server, with the prepared-statement rewriting transaction
 * pooling needs: a named statement becomes pgdog's shared `__pgdog_N` (Parse answered when the
 * server has it, Bind and Describe renamed), the unnamed statement is parsed again on a server
 * that may hold someone else's, pgdog.unique_id() calls get fresh ids per execution, and each
 * message's owed answer is recorded on the server.
 *
 * @module
 */

import { Msg, readCString, TxStatus } from "../protocol/messages.ts";
import type { Server } from "../backend/server.ts";
import { Action, Expect, type LocalAnswer, type ParseTicket } from "../backend/response_queue.ts";
import { expectResponse } from "../backend/expect_response.ts";
import { preparedNow, touchCopy } from "../backend/prepared_copies.ts";
import type { Analysis } from "../router/mod.ts";
import type { SessionScan } from "../router/scan.ts";
import type { UniqueIdGenerator } from "../sharding/unique_id.ts";
import {
  bindStatementName,
  type ClientStatement,
  type ClientStatements,
  describeCopy,
  describedName,
  parseName,
  rewriteBind,
  Use,
} from "./prepared.ts";
import { DeallocatePortal } from "./deallocate.ts";
import { type UniqueIdParse, UniqueIdStatements } from "./unique_ids.ts";
import type { OutBatch } from "./out_batch.ts";
import type { RoutedMessage } from "./routed_message.ts";

/**
 * The statement the Bind message at `p` (buffered up to `end`) runs, as its client knows it: the
 * unnamed one, or a named one pgdog keeps (`renaming`); nulls when pgdog doesn't know its text.
 */
export function boundStatement(
  c: { forwarder: Forwarder; statements: ClientStatements; renaming: boolean },
  message: { buf: Uint8Array; p: number; end: number },
): { analysis: Analysis | null; text: string | null } {
  const name = bindStatementName(message.buf, message.p, message.end);
  if (name === "") {
    return { analysis: c.forwarder.unnamedAnalysis, text: c.forwarder.unnamedSql };
  }
  if (!c.renaming) return { analysis: null, text: null };
  const stmt = c.statements.get(name);
  return { analysis: stmt?.analysis ?? null, text: stmt?.query ?? null };
}

/** What forwarding asks of the client it forwards for. */
export interface ForwardClient {
  /** This client's prepared statement names (transaction mode). */
  readonly statements: ClientStatements;
  /** Rename prepared statements (transaction mode with prepared_statements = extended). */
  readonly renaming: boolean;
  /** `pgdog.unique_id()`. */
  readonly uniqueIdGenerator: UniqueIdGenerator;
  /** A statement that changes the session reaches `server` (session bookkeeping). */
  noteScan(scan: SessionScan, server: Server): void;
  /** A Query, Execute or FunctionCall reaches `server` (SHOW CLIENTS, SHOW SERVERS). */
  countQuery(server: Server): void;
}

/** Close of the unnamed statement. */
const CLOSE_UNNAMED = Uint8Array.of(Msg.Close, 0, 0, 0, 6, 0x53, 0);
const PARSE_COMPLETE = Uint8Array.of(Msg.ParseComplete, 0, 0, 0, 4);

/** One client's statements as forwarded to servers. */
export class Forwarder {
  readonly #client: ForwardClient;
  /** Prepared statements that call pgdog.unique_id() (created at the first such Parse). */
  uniqueIds: UniqueIdStatements | null = null;

  constructor(client: ForwardClient) {
    this.#client = client;
  }

  /**
   * Queues one message for `server` in `out`, rewritten where needed, with what the server will
   * owe. False (only while `mayWait`) when nothing was queued for the message yet: the server was
   * asked to describe a statement first; wait for that answer and call again.
   */
  forward(msg: RoutedMessage, server: Server, out: OutBatch): boolean {
    const { type, buf, p, end } = msg;
    const client = this.#client;
    switch (type) {
      case Msg.Query: {
        client.countQuery(server);
        // PostgreSQL's simple Query destroys the unnamed statement.
        this.#unnamedOn.length = 0;
        const substitute = msg.substitute;
        if (substitute) {
          // DEALLOCATE among other statements (deallocate.ts): the others run as written.
          const ticket = msg.ticket;
          const scan = ticket === null ? null : msg.scan;
          if (scan) client.noteScan(scan, server);
          out.addBytes(substitute);
          server.expect(Expect.Query, Action.Forward, ticket);
          return true;
        }
        if (msg.scan) client.noteScan(msg.scan, server);
        break;
      }
      case Msg.Parse: {
        if (client.renaming && buf.indexOf(0, p + 5) !== p + 5) {
          const name = parseName(buf, p, end);
          const duplicate = msg.duplicate;
          if (duplicate !== null) {
            this.#raiseDuplicate(server, out, { existing: duplicate, clientName: name });
            return true;
          }
          const statements = client.statements;
          const stmt = statements.get(name)!;
          const undo = (): void => {
            if (statements.get(name) === stmt) statements.delete(name);
          };
          if (server.discardUntilSync) {
            // The server skips this Parse after an earlier error, so the statement is not created.
            undo();
          } else if (server.statements.has(stmt.name) && server.txStatus !== TxStatus.Failed) {
            // The server taken for this request already has it (decided before the checkout waited).
            touchCopy(server.statements, stmt.name);
            server.expect(
              Expect.Local,
              Action.Forward,
              { bytes: PARSE_COMPLETE, dropped: undo } satisfies LocalAnswer,
            );
          } else {
            // (In a failed transaction the server answers 25P02, as it would to the client's own.)
            const had = server.statements.get(stmt.name);
            out.addBytes(stmt.parse);
            const copy = preparedNow(server.statements, stmt.name);
            server.expect(
              Expect.Parse,
              Action.Forward,
              {
                name: stmt.name,
                succeeded: () => {
                  stmt.validated = true;
                },
                failed: () => {
                  if (server.statements.get(stmt.name) === copy) {
                    if (had === undefined) server.statements.delete(stmt.name);
                    else server.statements.set(stmt.name, had);
                  }
                  undo();
                },
              } satisfies ParseTicket,
            );
            // Its description, for clients told one (pipelined, answered to pgdog only).
            describeCopy(server, out, { name: stmt.name, copy });
          }
          return true;
        }
        if (msg.scan) client.noteScan(msg.scan, server);
        break;
      }
      case Msg.Bind: {
        const name = bindStatementName(buf, p, end);
        const run = this.uniqueIdRun(name, p);
        if (run !== null) {
          this.#forwardUniqueIdBind(server, out, { buf, p, end, name, run });
          return true;
        }
        if (name === "") {
          if (this.unnamedScan) client.noteScan(this.unnamedScan, server);
          this.#ensureUnnamed(server, out);
          if (buf[p + 5] === 0) this.#boundEntry = null; // the unnamed portal is replaced
          if (this.unnamedDeallocate !== undefined || this.#deallocating.active) {
            this.#deallocating.bind(this.unnamedDeallocate, buf, { p, end });
          }
          break;
        }
        const entry = client.renaming ? client.statements.entry(name) : undefined;
        if (entry === undefined) break; // the server reports the unknown name
        const stmt = entry.stmt;
        const use = server.discardUntilSync ? Use.Ready : entry.use(server, out);
        if (use === Use.Unverified && this.mayWait) {
          // The client was told the statement's description: the copy's must be known first.
          entry.askDescription(server, out);
          return false;
        }
        if (stmt.scan) client.noteScan(stmt.scan, server);
        if (entry.deallocate !== undefined || this.#deallocating.active) {
          this.#deallocating.bind(entry.deallocate, buf, { p, end });
        }
        if (server.discardUntilSync) return true;
        if (use === Use.Changed) {
          entry.raiseChanged(server, out);
          return true;
        }
        out.addBytes(rewriteBind(buf, p, end, stmt.name));
        server.expect(Expect.Bind, Action.Forward, entry);
        this.#boundEntry = entry;
        this.#boundPortal = buf[p + 5] === 0 ? "" : readCString(buf, p + 5, end)[0];
        return true;
      }
      case Msg.Describe: {
        if (buf[p + 5] === 0x53 && buf[p + 6] === 0) this.#ensureUnnamed(server, out);
        if (!client.renaming) break;
        if (buf[p + 5] !== 0x53) {
          // A portal: its description is what the client is told of the statement it was bound
          // from, until told otherwise (pgjdbc keeps it and describes no more).
          const bound = this.#boundEntry;
          if (
            bound === null || bound.toldRows !== null || server.discardUntilSync ||
            describedName(buf, p, end) !== this.#boundPortal
          ) break;
          out.addRange(p, end);
          server.expect(Expect.DescribePortal, Action.Forward, bound.portalTicket(server));
          return true;
        }
        const name = describedName(buf, p, end);
        const entry = name === "" ? undefined : client.statements.entry(name);
        if (entry === undefined) break;
        if (server.discardUntilSync) return true;
        // A copy known to differ from what the client was told fails as PostgreSQL's would;
        // otherwise the client is shown (and told from then on) what the copy describes.
        if (entry.use(server, out) === Use.Changed) entry.raiseChanged(server, out);
        else entry.describe(server, out);
        return true;
      }
      case Msg.Execute:
        client.countQuery(server);
        if (
          this.#deallocating.active &&
          this.#deallocating.execute(server, out, { buf, p, end, statements: client.statements })
        ) return true;
        break;
      case Msg.FunctionCall:
        client.countQuery(server);
        break;
    }
    const substitute = msg.substitute;
    if (type === Msg.Parse && substitute !== null) {
      // A plugin rewrote the statement (or it is a DEALLOCATE, run as a no-op).
      if (buf[p + 5] === 0) this.noteUnnamed(substitute, 0, substitute.length, server);
      out.addBytes(substitute);
      expectResponse(server, type, 0);
      return true;
    }
    if (type === Msg.Parse && buf[p + 5] === 0) this.noteUnnamed(buf, p, end, server);
    else if (type === Msg.Sync) this.#unnamedOn.length = 0;
    out.addRange(p, end);
    expectResponse(server, type, buf[p + 5]);
    return true;
  }

  /**
   * Keeps the client's unnamed Parse (as sent, in a reused buffer): `server` has it now. Any
   * server may have someone else's unnamed statement by the client's next request (another
   * client's, or one pgdog's own statements replaced), so it is parsed again when needed.
   */
  noteUnnamed(buf: Uint8Array, p: number, end: number, server: Server | null): void {
    const n = end - p;
    const saved = this.#unnamedParse;
    let same = n === this.#unnamedParseLen;
    for (let i = 0; same && i < n; i++) same = saved[i] === buf[p + i];
    if (!same) {
      if (this.#unnamedParse.length < n) this.#unnamedParse = new Uint8Array(Math.max(n, 256));
      this.#unnamedParse.set(buf.subarray(p, end));
      this.#unnamedParseLen = n;
      this.#unnamedOn.length = 0;
    }
    if (server !== null && !this.#unnamedOn.includes(server)) this.#unnamedOn.push(server);
  }

  /**
   * Before a Bind or Describe of the unnamed statement: unless this request parsed it on
   * `server`, it is parsed there again, silently (the server's may be another client's); a client
   * that never parsed one gets PostgreSQL's error, not someone else's statement.
   */
  #ensureUnnamed(server: Server, out: OutBatch): void {
    if (this.#unnamedOn.includes(server) || server.discardUntilSync) return;
    if (this.#unnamedParseLen === 0) {
      out.addBytes(CLOSE_UNNAMED);
      server.expect(Expect.Close, Action.Swallow);
      return;
    }
    out.addBytes(this.#unnamedParse.slice(0, this.#unnamedParseLen));
    server.expect(Expect.Parse, Action.Inject);
    this.#unnamedOn.push(server);
  }

  /** The client's last unnamed Parse (bytes [0, #unnamedParseLen) of a reused buffer). */
  #unnamedParse = new Uint8Array(0);
  #unnamedParseLen = 0;
  /** The servers that have it as their unnamed statement, as far as this request knows. */
  readonly #unnamedOn: Server[] = [];

  /** The client's last unnamed Parse, or null (a copy). */
  unnamedParse(): Uint8Array | null {
    return this.#unnamedParseLen === 0 ? null : this.#unnamedParse.slice(0, this.#unnamedParseLen);
  }

  /** The unnamed statement is on no server as far as this request knows. */
  forgetUnnamedServers(): void {
    this.#unnamedOn.length = 0;
  }

  /** A Parse's unique-id rewrite (see unique_ids.ts), or null when it calls no pgdog.unique_id(). */
  uniqueIdsParse(buf: Uint8Array, p: number, end: number): UniqueIdParse | null {
    this.uniqueIds ??= new UniqueIdStatements(this.#client.uniqueIdGenerator);
    return this.uniqueIds.parse(buf, p, end);
  }

  /** The Bind at `at` runs `run.text` (see UniqueIdStatements.runInstead). */
  runInstead(name: string, at: number, run: { text: string; types: Uint8Array }): void {
    this.uniqueIds ??= new UniqueIdStatements(this.#client.uniqueIdGenerator);
    this.uniqueIds.runInstead(name, at, run);
  }

  /** The text (with its ids) the Bind at `p` runs, when its statement calls pgdog.unique_id(). */
  uniqueIdRun(name: string, p: number): string | null {
    const statements = this.uniqueIds;
    if (statements === null || statements.empty) return null;
    // A name the client no longer has: the server reports it, as for any statement.
    const client = this.#client;
    if (client.renaming && name !== "" && !client.statements.has(name)) return null;
    return statements.execution(name, p);
  }

  /** A Bind of a statement that calls pgdog.unique_id(): its execution statement, then the Bind. */
  #forwardUniqueIdBind(
    server: Server,
    out: OutBatch,
    bind: { buf: Uint8Array; p: number; end: number; name: string; run: string },
  ): void {
    const { buf, p, end, name, run } = bind;
    const scan = name === "" ? this.unnamedScan : this.#client.statements.get(name)?.scan;
    if (scan) this.#client.noteScan(scan, server);
    // The server skips to the next Sync after an error: nothing to send.
    if (server.discardUntilSync) return;
    const m = this.uniqueIds!.messages(buf, p, end, name, run);
    out.addBytes(m.close);
    server.expect(Expect.Close, Action.Swallow);
    out.addBytes(m.parse);
    server.expect(Expect.Parse, Action.Inject);
    out.addBytes(m.bind);
    server.expect(Expect.Bind);
  }

  /** `forward` may return false (wait for a description, then call it again). */
  mayWait = false;

  /** The client statement the last Bind of one bound, and into which portal. */
  #boundEntry: ClientStatement | null = null;
  #boundPortal = "";
  /** What the unnamed statement deallocates (a client's DEALLOCATE; undefined for others). */
  unnamedDeallocate: string | null | undefined = undefined;
  /** What the unnamed statement does to the session, once bound. */
  unnamedScan: SessionScan | null = null;
  /** The unnamed statement's analysis, for routing its Bind. */
  unnamedAnalysis: Analysis | null = null;
  /** The text of the unnamed statement (for plugins). */
  unnamedSql: string | null = null;
  /** The portal running a client's DEALLOCATE (extended protocol), if any. */
  readonly #deallocating = new DeallocatePortal();

  /**
   * The client parses a name it already has. PostgreSQL answers 42P05 and, inside a transaction,
   * aborts it; so the server is made to do the same (its error names the client's statement).
   */
  #raiseDuplicate(
    server: Server,
    out: OutBatch,
    duplicate: { existing: ClientStatement; clientName: string },
  ): void {
    const { existing, clientName } = duplicate;
    existing.use(server, out);
    const stmt = existing.stmt;
    server.errorRewrite = { from: stmt.name, to: clientName };
    out.addBytes(stmt.parse);
    server.expect(Expect.Parse, Action.Forward, {
      name: stmt.name,
      succeeded: () => {},
      failed: () => {},
    });
  }
}
