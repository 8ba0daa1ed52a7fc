/**
 * What pgdog answers itself, without a server, where that is what PostgreSQL would do or where
 * the message concerns pgdog: `SET pgdog.*`, `SHOW pgdog.shards`, `SELECT pgdog.unique_id()`,
 * a held-back BEGIN and the end of a transaction that reached no server (simple and extended
 * protocol), Parse of a statement known good, Close of a client's statement name, DEALLOCATE and
 * DISCARD ALL of the client's own state, and the refusals of transaction pooling (LISTEN, SQL
 * PREPARE). What it decides for a message that goes on to a server (a rewrite, its session
 * scan, its analysis) it puts in the RoutedMessage.
 *
 * @module
 */

import {
  appendError,
  decodeText,
  type ErrorFields,
  MessageBuilder,
  Msg,
  queryMessage,
  readInt32,
  readyForQuery,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import type { SocketWriter } from "../net/writer.ts";
import type { Server } from "../backend/server.ts";
import type { Analysis, QueryRouter } from "../router/mod.ts";
import { mayAffectSession, scanSession, type SessionScan } from "../router/scan.ts";
import { mayCallUniqueId } from "../router/unique_id_calls.ts";
import { holdsBackBegin } from "../router/request_route.ts";
import type { UniqueIdGenerator } from "../sharding/unique_id.ts";
import { type AdminAnswer, encodeAnswer } from "../admin/mod.ts";
import { rewrittenParse } from "./plugin_context.ts";
import {
  type ClientStatements,
  describedName,
  parseName,
  parseQuery,
  type PreparedCache,
  type PreparedStatement,
} from "./prepared.ts";
import { DEALLOCATE_NOOP, noSuchStatement, rewriteDeallocations } from "./deallocate.ts";
import type { SessionState } from "./session.ts";
import { boundStatement, type Forwarder } from "./forward.ts";
import type { RoutedMessage } from "./routed_message.ts";
import type { ShardTransaction } from "./shard_transaction.ts";
import { IMPLICIT_BEGIN, type SplitRun } from "./split_request.ts";

/** What local answers read and change of the client. */
export interface LocalClient {
  readonly router: QueryRouter;
  /** `pgdog.unique_id()`. */
  readonly uniqueIdGenerator: UniqueIdGenerator;
  readonly prepared: PreparedCache;
  /** Shards of the client's database. */
  readonly shardCount: number;
  /** Statements are parsed to route them. */
  readonly routing: boolean;
  readonly sessionMode: boolean;
  /** Prepared statements are renamed (transaction mode, prepared_statements = extended). */
  readonly renaming: boolean;
  /** The attached server. */
  readonly server: Server | null;
  readonly session: SessionState;
  readonly statements: ClientStatements;
  readonly writer: SocketWriter;
  readonly rbuf: MessageBuffer;
  /** The message being handled. */
  readonly msg: RoutedMessage;
  readonly forwarder: Forwarder;
  readonly txn: ShardTransaction;
  /** The split request running, if any. */
  readonly split: SplitRun | null;
  /** A BEGIN held back until the transaction's first statement picks its host. */
  deferredBegin: Uint8Array | null;
  /** Ignore messages up to the next Sync (after an error pgdog reported). */
  skipUntilSync: boolean;
  /** The transaction status the client is told. */
  txStatus(): number;
  /** The transaction ended (nothing of it is replayed on later shards). */
  transactionOver(): void;
  /** `SET [LOCAL] pgdog.<name> TO <value>` and `RESET pgdog.<name>`. */
  setPgdog(setting: [string, string, boolean]): void;
  /** Answers with bytes of pgdog's own, in order with whatever the servers still owe. */
  answer(bytes: Uint8Array, dropped?: () => void): void;
  /**
   * DISCARD ALL without a server: the session goes back to its startup state; the
   * ParameterStatus messages of what changed go into `b`.
   */
  resetSession(b: MessageBuilder): void;
}

/** One client's local answers. */
export class LocalAnswers {
  readonly #client: LocalClient;

  constructor(client: LocalClient) {
    this.#client = client;
  }

  /**
   * Answers a message without a server where that is what PostgreSQL would do, or where the
   * message concerns pgdog itself. Returns true when the message is dealt with.
   */
  answerLocally(type: number, buf: Uint8Array, p: number, end: number): boolean {
    const c = this.#client;
    const server = c.server;
    switch (type) {
      case Msg.Query:
        return this.#localQuery(buf, p, end);
      case Msg.Parse:
        return this.#localParse(buf, p, end);
      case Msg.Close:
        if (buf[p + 5] === 0x53) c.forwarder.uniqueIds?.forget(describedName(buf, p, end));
        if (c.renaming && buf[p + 5] === 0x53) {
          const name = describedName(buf, p, end);
          if (name !== "") {
            // Statements are shared; the client only lets go of its name for one.
            c.statements.delete(name);
            c.answer(CLOSE_COMPLETE);
            return true;
          }
        }
        return false;
      case Msg.Sync:
        // Servers set aside by a request on several shards may owe it (a Flush-ended request).
        if (server !== null || !c.txn.empty) return false;
        // Nothing outstanding: answer locally instead of taking a server for nothing.
        c.writer.enqueue(readyForQuery(c.txStatus() as TxStatus));
        return true;
      case Msg.Flush:
        return server === null && c.txn.empty;
      case Msg.CopyData:
      case Msg.CopyDone:
      case Msg.CopyFail:
        // Outside COPY PostgreSQL ignores copy messages; there is nothing to flush without a server.
        return server === null;
    }
    return false;
  }

  /** Simple queries pgdog answers or refuses itself. */
  #localQuery(buf: Uint8Array, p: number, end: number): boolean {
    const c = this.#client;
    const msg = c.msg;
    const maybeSession = mayAffectSession(buf, p + 5, end - 1);
    if (!maybeSession && !c.routing) return false;
    let sql = decodeText(buf, p + 5, end - 1);
    if (mayCallUniqueId(sql)) {
      if (SELECT_UNIQUE_ID.test(sql)) {
        const id = c.uniqueIdGenerator.nextText();
        c.answer(oneValue(
          { columns: ["unique_id"], rows: [[id]], tag: "SELECT 1", types: [20] },
          c.txStatus(),
        ));
        return true;
      }
      // Each call (as the parser sees calls) becomes its own id before routing, so an id can be
      // the sharding key.
      const rewritten = c.router.rewriteUniqueIds(
        sql,
        () => c.uniqueIdGenerator.nextText(),
      );
      if (rewritten !== null) {
        sql = rewritten;
        msg.substitute = queryMessage(sql);
        if (c.routing) msg.analysis = c.router.analyze(sql);
        if (!(c.routing && c.server === null)) return false;
      }
    }
    if (SHOW_SHARDS.test(sql)) {
      c.answer(oneValue(
        { columns: ["shards"], rows: [[c.shardCount]], tag: "SHOW" },
        c.txStatus(),
      ));
      return true;
    }
    if (c.routing && (c.server === null || c.split !== null)) {
      // Routing happens at the start of a transaction (and of each statement of a split
      // request); analyze (cached) only then.
      const analysis = c.router.analyze(sql);
      msg.analysis = analysis;
      if (this.#transactionControl(analysis, buf.slice(p, end))) return true;
    }
    const scan = maybeSession ? scanSession(sql) : null;
    if (scan === null) return false;
    if (scan.pgdogSettings.length > 0 && scan.statements === 1) {
      c.setPgdog(scan.pgdogSettings[0]);
      c.answer(commandComplete("SET", c.txStatus()));
      return true;
    }
    if (!c.sessionMode) {
      if (scan.listen) return this.refuseQuery(LISTEN_UNSUPPORTED);
      if (scan.sqlPrepared) {
        const deallocate =
          /^\s*deallocate\s+(?:prepare\s+)?(all|"(?:[^"]|"")+"|[\p{L}_][\p{L}\p{N}_$]*)\s*;?\s*$/iu
            .exec(sql);
        // (In a failed transaction the server answers, with 25P02, as PostgreSQL would.)
        if (deallocate && c.renaming && c.txStatus() !== TxStatus.Failed) {
          // Drivers (psycopg, for one) free protocol-level statements with DEALLOCATE.
          const target = deallocate[1];
          if (target.toLowerCase() === "all") {
            c.statements.clear();
            c.answer(commandComplete("DEALLOCATE ALL", c.txStatus()));
            return true;
          }
          // PostgreSQL folds only A-Z in unquoted identifiers.
          const name = target.startsWith('"')
            ? target.slice(1, -1).replaceAll('""', '"')
            : target.replace(/[A-Z]+/g, (m) => m.toLowerCase());
          if (c.statements.delete(name)) {
            c.answer(commandComplete("DEALLOCATE", c.txStatus()));
            return true;
          }
          return this.refuseQuery(noSuchStatement(name));
        }
        if (c.renaming && !scan.prepareOrExecute) {
          // DEALLOCATE among other statements: the others run, each DEALLOCATE as a no-op.
          const rewritten = rewriteDeallocations(sql, {
            deallocations: scan.deallocations,
            statements: c.statements,
          });
          msg.substitute = rewritten.query;
          msg.ticket = rewritten.ticket;
          msg.scan = scan;
          return false;
        }
        return this.refuseQuery(SQL_PREPARE_UNSUPPORTED);
      }
      if (scan.discardAll && scan.statements === 1 && c.server === null) {
        // The client's session is its state here: reset it without touching a server.
        const b = new MessageBuilder(128);
        c.resetSession(b);
        b.bytes(commandComplete("DISCARD ALL", TxStatus.Idle));
        c.answer(b.build());
        return true;
      }
    }
    msg.scan = scan;
    return false;
  }

  /** Parse messages pgdog answers itself (a known statement) or refuses. */
  #localParse(buf: Uint8Array, p: number, end: number): boolean {
    const c = this.#client;
    const nameEnd = buf.indexOf(0, p + 5);
    const queryStart = nameEnd + 1;
    const queryEnd = buf.indexOf(0, queryStart);
    let scan: SessionScan | null = null;
    // (Also true for any text that mentions pgdog, so for every call of pgdog.unique_id().)
    const maybeSession = mayAffectSession(buf, queryStart, queryEnd);
    const text = maybeSession ? decodeText(buf, queryStart, queryEnd) : null;
    if (text !== null) scan = scanSession(text);
    if (scan?.listen && !c.sessionMode) {
      this.answerError(LISTEN_UNSUPPORTED, false);
      return true;
    }
    if (scan?.prepareOrExecute && !c.sessionMode) {
      // SQL PREPARE/EXECUTE (also EXPLAIN EXECUTE, CREATE TABLE AS EXECUTE), extended protocol
      // too: a server's statements are other clients' (pgdog's __pgdog_N among them).
      this.answerError(SQL_PREPARE_UNSUPPORTED, false);
      return true;
    }
    const name = nameEnd === p + 5 ? "" : parseName(buf, p, end);
    // pgdog.unique_id(): the server prepares a stand-in, each execution gets fresh ids.
    const uniqueIds = text !== null && (c.forwarder.uniqueIds !== null || mayCallUniqueId(text))
      ? c.forwarder.uniqueIdsParse(buf, p, end)
      : null;
    if (text === null) c.forwarder.uniqueIds?.forget(name);
    const analysis = c.routing
      ? c.router.analyze(uniqueIds?.next ?? decodeText(buf, queryStart, queryEnd))
      : null;
    const msg = c.msg;
    msg.analysis = analysis;
    // A client's DEALLOCATE must not reach a server as written: it runs as a no-op (deallocate.ts).
    const deallocate = c.renaming && scan?.sqlPrepared && scan.statements === 1 &&
        scan.deallocations.length === 1
      ? scan.deallocations[0].target
      : undefined;
    if (name === "" || !c.renaming) {
      if (name === "") {
        c.forwarder.unnamedScan = scan;
        c.forwarder.unnamedAnalysis = analysis;
        c.forwarder.unnamedSql = analysis === null ? null : decodeText(buf, queryStart, queryEnd);
        c.forwarder.unnamedDeallocate = deallocate;
        if (deallocate !== undefined) {
          msg.substitute = rewrittenParse(buf, p, end, DEALLOCATE_NOOP);
        }
      }
      if (scan && name !== "") msg.scan = scan;
      if (uniqueIds !== null) msg.substitute = uniqueIds.parse;
      return false;
    }
    const existing = c.statements.entry(name);
    if (existing !== undefined) {
      if (c.server !== null) {
        msg.duplicate = existing;
        return false;
      }
      this.answerError({
        severity: "ERROR",
        code: SqlState.DuplicatePreparedStatement,
        message: `prepared statement "${name}" already exists`,
      }, false);
      return true;
    }
    let stmt: PreparedStatement;
    if (deallocate !== undefined) {
      const noop = rewrittenParse(buf, p, end, DEALLOCATE_NOOP);
      stmt = c.prepared.forParse(noop, 0, noop.length);
    } else if (uniqueIds !== null) {
      stmt = c.prepared.forParse(uniqueIds.parse, 0, uniqueIds.parse.length);
    } else stmt = c.prepared.forParse(buf, p, end);
    stmt.scan ??= scan;
    stmt.analysis ??= analysis;
    c.statements.set(name, stmt).deallocate = deallocate;
    const server = c.server;
    const onServer = server !== null && server.statements.has(stmt.name) &&
      server.txStatus !== TxStatus.Failed;
    if (onServer || (server === null && stmt.validated)) {
      // Known good, or already on this server: nothing for a server to do. Should the server skip
      // past this point after an earlier error, the statement is not created, as in PostgreSQL.
      c.answer(PARSE_COMPLETE, () => {
        if (c.statements.get(name) === stmt) c.statements.delete(name);
      });
      return true;
    }
    return false;
  }

  /**
   * BEGIN, COMMIT and ROLLBACK with no server attached, when routing: a plain BEGIN is held back
   * (answered at once) so the transaction's first statement picks the host; ending a transaction
   * that never reached a server is answered too. Returns true when answered.
   */
  #transactionControl(analysis: Analysis, message: Uint8Array): boolean {
    const c = this.#client;
    const tag = this.heldBackControl(analysis, message);
    if (tag === null) return false;
    c.answer(commandComplete(tag, c.txStatus()));
    return true;
  }

  /**
   * Refuses a simple query with `fields`. Inside a transaction the error must abort it, as
   * PostgreSQL's own would: the server is made to raise it. Returns true when answered locally.
   */
  refuseQuery(fields: ErrorFields): boolean {
    const c = this.#client;
    const server = c.server;
    // (A BEGIN held back has not reached a server yet: one is taken for it, and the error.)
    if (
      server === null ? c.deferredBegin === null : server.txStatus === TxStatus.Idle
    ) {
      this.answerError(fields, true);
      return true;
    }
    const lit = (v: string): string => `'${v.replaceAll("'", "''")}'`;
    let using = `ERRCODE = ${lit(fields.code)}, MESSAGE = ${lit(fields.message)}`;
    if (fields.detail) using += `, DETAIL = ${lit(fields.detail)}`;
    if (fields.hint) using += `, HINT = ${lit(fields.hint)}`;
    const msg = c.msg;
    msg.substitute = queryMessage(`DO $pgdog$ BEGIN RAISE EXCEPTION USING ${using}; END $pgdog$`);
    // The client gets the error as pgdog means it, without the DO block's CONTEXT line.
    msg.ticket = { raise: fields };
    return false;
  }

  /** Answers with an error; a Query also gets its ReadyForQuery, others skip to the next Sync. */
  answerError(fields: ErrorFields, query: boolean): void {
    const c = this.#client;
    // Inside the client's transaction the error fails it, as PostgreSQL's would (pgdog's
    // implicit transaction of a split request ends with it instead).
    if (c.split?.implicit !== true && c.txStatus() !== TxStatus.Idle) c.txn.failedLocally = true;
    const b = new MessageBuilder(128);
    appendError(b, fields);
    if (query) b.bytes(readyForQuery(c.txStatus()));
    else c.skipUntilSync = true;
    c.answer(b.build());
  }

  /**
   * An extended-protocol BEGIN, COMMIT or ROLLBACK request (Parse, Bind, Describe, Execute of an
   * unnamed statement, then Sync) that pgdog answers itself, as it does the simple-query ones: a
   * BEGIN is held back until the transaction's first statement picks its shard (taking a shard at
   * random would hold it while the statement waits for another), and ending a transaction that
   * never reached a server needs none. True when answered (the request is consumed).
   */
  localTransactionControl(buf: Uint8Array, p: number): boolean {
    const c = this.#client;
    const rb = c.rbuf;
    let analysis: Analysis | null = null;
    let text: string | null = null;
    if (buf[p] === Msg.Parse) {
      // Cheap test first (this runs for every extended request): an unnamed Parse whose text
      // starts like BEGIN, START, COMMIT, END, ROLLBACK, ABORT, SAVEPOINT or RELEASE.
      if (buf[p + 5] !== 0) return false;
      let first = p + 6;
      while (buf[first] === 0x20 || buf[first] === 0x0a || buf[first] === 0x09) first++;
      const prefix = ((buf[first] | 0x20) << 8) | (buf[first + 1] | 0x20);
      if (!CONTROL_PREFIXES.has(prefix)) return false;
    } else {
      // A Bind of a statement parsed earlier (pgbench -M prepared runs BEGIN that way).
      if (buf[p + 5] !== 0) return false;
      ({ analysis, text } = boundStatement(c, { buf, p, end: rb.end }));
      if (analysis === null || analysis.info.transaction === null) return false;
    }
    let q = p;
    let syncAt = -1;
    const answers = new MessageBuilder(64);
    while (rb.end - q >= 5) {
      const type = buf[q];
      const next = q + readInt32(buf, q + 1) + 1;
      if (next > rb.end) return false;
      if (type === Msg.Sync) {
        syncAt = q;
        break;
      }
      if (type === Msg.Parse) {
        if (q !== p) return false;
        text = parseQuery(buf, q, next);
        analysis = c.router.analyze(text);
        answers.bytes(PARSE_COMPLETE);
      } else if (type === Msg.Bind) {
        if (analysis === null || buf[q + 5] !== 0) return false;
        answers.bytes(BIND_COMPLETE);
      } else if (type === Msg.Describe) {
        if (buf[q + 5] !== 0x50 || buf[q + 6] !== 0) return false;
        answers.bytes(NO_DATA);
      } else if (type !== Msg.Execute) return false;
      q = next;
    }
    if (syncAt < 0 || analysis === null || text === null) return false;
    const tag = this.heldBackControl(analysis, queryMessage(text));
    if (tag === null) return false;
    if (buf[p] === Msg.Parse) {
      // The statement exists for the client now, as after a real Parse (no server has it).
      c.forwarder.noteUnnamed(buf, p, p + readInt32(buf, p + 1) + 1, null);
      c.forwarder.forgetUnnamedServers();
      c.forwarder.unnamedAnalysis = analysis;
      c.forwarder.unnamedSql = text;
      c.forwarder.unnamedScan = null;
    }
    answers.begin(Msg.CommandComplete).cstring(tag).end();
    answers.bytes(readyForQuery(c.txStatus() as TxStatus));
    rb.start = syncAt + 5;
    c.answer(answers.build());
    return true;
  }

  /**
   * Transaction control pgdog answers without a server (`message` is the statement as a simple
   * Query): a BEGIN held back until the transaction's first statement picks its host; inside a
   * split request's implicit transaction, a BEGIN that makes it explicit; COMMIT and ROLLBACK of
   * a transaction that never reached a server; savepoints of such a transaction (replayed on
   * each shard it reaches). Returns the command tag when answered, null otherwise.
   */
  heldBackControl(analysis: Analysis, message: Uint8Array): string | null {
    const c = this.#client;
    const info = analysis.info;
    if (info.statements !== 1 || analysis.directives !== null) return null;
    const tx = info.transaction;
    const split = c.split;
    if (tx === "begin" || tx === "begin_read_only") {
      if (split?.implicit) {
        // BEGIN inside a request run in an implicit transaction makes that transaction explicit.
        split.implicit = false;
        if (c.deferredBegin === IMPLICIT_BEGIN) c.deferredBegin = message;
        return "BEGIN";
      }
      const inTransaction = c.txStatus() !== TxStatus.Idle;
      if (
        holdsBackBegin(analysis, { inTransaction, deferredBegin: c.deferredBegin !== null })
      ) {
        c.deferredBegin = message;
        return "BEGIN";
      }
      return null;
    }
    const failed = c.txn.failedLocally;
    // (A session's idle servers count as untouched once the transaction failed here.)
    const untouched = c.deferredBegin !== null &&
      (failed ? c.txn.status(c.server) === TxStatus.Idle : c.server === null && c.txn.empty);
    if (!untouched) return null;
    if (tx === "commit" || tx === "rollback") {
      c.deferredBegin = null;
      c.transactionOver();
      c.session.pgdogLocal.clear();
      // COMMIT of a failed transaction rolls it back.
      return tx === "commit" && !failed ? "COMMIT" : "ROLLBACK";
    }
    if (tx !== "savepoint") return null;
    const tag = c.txn.noteSavepoint(analysis, true);
    if (failed && tag !== null) {
      // Only ROLLBACK TO recovers a failed transaction (failed_transaction.ts refuses the others).
      c.txn.failedLocally = false;
    }
    return tag;
  }
}

/** First two letters (lower case) of transaction control statements. */
const CONTROL_PREFIXES = new Set(
  ["be", "st", "co", "en", "ro", "ab", "sa", "re"].map((w) =>
    (w.charCodeAt(0) << 8) | w.charCodeAt(1)
  ),
);
const BIND_COMPLETE = Uint8Array.of(Msg.BindComplete, 0, 0, 0, 4);

const NO_DATA = Uint8Array.of(Msg.NoData, 0, 0, 0, 4);

/** `SHOW pgdog.shards`: the number of shards of the client's database. */
const SHOW_SHARDS = /^\s*show\s+pgdog\.shards\s*;?\s*$/i;

/** `SELECT pgdog.unique_id() [AS name]`, answered by pgdog itself. */
const SELECT_UNIQUE_ID =
  /^\s*select\s+pgdog\s*\.\s*unique_id\s*\(\s*\)\s*(?:(?:as\s+)?[a-z_][a-z0-9_]*\s*)?;?\s*$/i;

/** A result pgdog answers itself, with its ReadyForQuery. */
function oneValue(answer: AdminAnswer, status: number): Uint8Array {
  const body = encodeAnswer(answer);
  const z = readyForQuery(status as TxStatus);
  const out = new Uint8Array(body.length + z.length);
  out.set(body);
  out.set(z, body.length);
  return out;
}

function commandComplete(tag: string, status: number): Uint8Array {
  return new MessageBuilder(32).begin(Msg.CommandComplete).cstring(tag).end().bytes(
    readyForQuery(status as TxStatus),
  )
    .build();
}

const PARSE_COMPLETE = Uint8Array.of(Msg.ParseComplete, 0, 0, 0, 4);
const CLOSE_COMPLETE = Uint8Array.of(Msg.CloseComplete, 0, 0, 0, 4);

const LISTEN_UNSUPPORTED: ErrorFields = {
  severity: "ERROR",
  code: SqlState.FeatureNotSupported,
  message: "LISTEN is not supported in transaction pooling mode",
  detail:
    "Notifications are delivered to a server connection, which pgdog gives to other clients between " +
    "your transactions.",
  hint: 'Use pooler_mode = "session" for this user or database.',
};

const SQL_PREPARE_UNSUPPORTED: ErrorFields = {
  severity: "ERROR",
  code: SqlState.FeatureNotSupported,
  message: "SQL PREPARE and EXECUTE are not supported in transaction pooling mode",
  detail:
    "A statement prepared with SQL lives on one server connection, which pgdog gives to other clients " +
    "between your transactions.",
  hint:
    'Use your driver\'s protocol-level prepared statements (supported), or pooler_mode = "session".',
};
