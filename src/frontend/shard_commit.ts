/**
 * The client's own COMMIT (or END) of a transaction that holds servers on several shards, as a
 * simple query or an extended-protocol request (Parse, Bind, Describe, Execute of COMMIT, then
 * Sync): pgdog commits on every held server itself, all or nothing (two-phase commit with
 * `two_phase_commit`, otherwise deferred constraints checked on every shard before any COMMIT;
 * see src/two_pc/coordinator.ts), and answers as PostgreSQL would: COMMIT, or the error (every
 * shard rolled back), or ROLLBACK when the transaction had failed.
 *
 * @module
 */

import {
  appendError,
  decodeText,
  type ErrorFields,
  MessageBuilder,
  Msg,
  readInt32,
  readyForQuery,
  TxStatus,
} from "../protocol/messages.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import type { Server } from "../backend/server.ts";
import type { Analysis, QueryRouter } from "../router/mod.ts";
import { type ClientStatements, parseQuery } from "./prepared.ts";
import { boundStatement, type Forwarder } from "./forward.ts";
import type { ShardTransaction } from "./shard_transaction.ts";

/** What a multi-shard COMMIT reads of the client and asks of it. */
export interface CommitClient {
  readonly rbuf: MessageBuffer;
  readonly router: QueryRouter;
  readonly forwarder: Forwarder;
  readonly statements: ClientStatements;
  readonly renaming: boolean;
  readonly closed: boolean;
  readonly txn: ShardTransaction;
  /** The attached server. */
  readonly attached: Server | null;
  /** Writes what the batch collected for the attached server. */
  send(): Promise<void>;
  /** Ends a batch left open by a Flush. */
  closeBatch(): Promise<void>;
  /** Waits until the attached server has answered everything sent. */
  settle(): Promise<void>;
  /** Fails the other shards' parts of a transaction that failed on one. */
  abortEverywhere(): Promise<void>;
  /** Ends the transaction on every held server (see Checkout.endImplicit). */
  endImplicit(commit: boolean, options: { explicit: boolean }): Promise<ErrorFields | null>;
  /** Answers the client (after what its servers owe). */
  answer(bytes: Uint8Array): void;
}

/**
 * When the request at `p` is a lone COMMIT of a transaction holding servers on several shards,
 * commits it and answers; true then (the request is consumed).
 */
export async function commitOnShards(
  c: CommitClient,
  request: { type: number; buf: Uint8Array; p: number; end: number },
): Promise<boolean> {
  const txn = c.txn;
  // Cheap test first: this runs for every request of a sharded database.
  if (txn.parked.size === 0 || (txn.parked.size === 1 && c.attached === null)) return false;
  const { type, buf, p, end } = request;
  let answers: MessageBuilder;
  let consumedTo: number;
  let parsed: { analysis: Analysis; text: string } | null = null;
  if (type === Msg.Query) {
    if (!startsLikeCommit(buf, p + 5)) return false;
    if (!isCommit(c.router.analyze(decodeText(buf, p + 5, end - 1)))) return false;
    answers = new MessageBuilder(64);
    consumedTo = end;
  } else {
    const scan = extendedCommit(c, buf, p);
    if (scan === null) return false;
    ({ answers, consumedTo, parsed } = scan);
  }
  await c.send();
  await c.closeBatch();
  await c.settle();
  if (c.closed) return true;
  await c.abortEverywhere();
  if (c.closed) return true;
  c.rbuf.start = consumedTo;
  if (parsed !== null) {
    // The statement exists for the client now, as after a real Parse (no server has it).
    const f = c.forwarder;
    f.noteUnnamed(buf, p, p + readInt32(buf, p + 1) + 1, null);
    f.forgetUnnamedServers();
    f.unnamedAnalysis = parsed.analysis;
    f.unnamedSql = parsed.text;
    f.unnamedScan = null;
  }
  const held = [...txn.parked.values()];
  if (c.attached !== null) held.push(c.attached);
  const failed = held.some((s) => s.txStatus === TxStatus.Failed);
  const error = await c.endImplicit(!failed, { explicit: true });
  if (error !== null) appendError(answers, error);
  else answers.begin(Msg.CommandComplete).cstring(failed ? "ROLLBACK" : "COMMIT").end();
  answers.bytes(readyForQuery(TxStatus.Idle));
  c.answer(answers.build());
  return true;
}

/** Whether a statement is a plain COMMIT or END (not AND CHAIN). */
function isCommit(analysis: Analysis | null): analysis is Analysis {
  if (analysis === null) return false;
  const info = analysis.info;
  if (info.statements !== 1 || analysis.directives !== null || info.transaction !== "commit") {
    return false;
  }
  const stmt = info.ast?.stmts[0]?.stmt?.TransactionStmt as { chain?: boolean } | undefined;
  return stmt?.chain !== true;
}

/** The text at `at` starts (after blanks) with "co" or "en", as COMMIT and END do. */
function startsLikeCommit(buf: Uint8Array, at: number): boolean {
  while (buf[at] === 0x20 || buf[at] === 0x0a || buf[at] === 0x09 || buf[at] === 0x0d) at++;
  const a = buf[at] | 0x20;
  const b = buf[at + 1] | 0x20;
  return (a === 0x63 && b === 0x6f) || (a === 0x65 && b === 0x6e);
}

/**
 * An extended-protocol COMMIT request: an unnamed Parse of COMMIT (or a Bind of a statement
 * that is one), Bind, Describe of the portal, Execute, Sync. Its answers up to the command tag,
 * where it ends, and the Parse's statement.
 */
function extendedCommit(
  c: CommitClient,
  buf: Uint8Array,
  p: number,
): {
  answers: MessageBuilder;
  consumedTo: number;
  parsed: { analysis: Analysis; text: string } | null;
} | null {
  const rb = c.rbuf;
  let analysis: Analysis | null = null;
  let text: string | null = null;
  let parsed = false;
  if (buf[p] === Msg.Parse) {
    if (buf[p + 5] !== 0 || !startsLikeCommit(buf, p + 6)) return null;
  } else if (buf[p] === Msg.Bind) {
    if (buf[p + 5] !== 0) return null;
    ({ analysis, text } = boundStatement(c, { buf, p, end: rb.end }));
    if (!isCommit(analysis)) return null;
  } else return null;
  const answers = new MessageBuilder(64);
  let q = p;
  while (rb.end - q >= 5) {
    const type = buf[q];
    const next = q + readInt32(buf, q + 1) + 1;
    if (next > rb.end) return null;
    if (type === Msg.Sync) {
      if (analysis === null || text === null || !isCommit(analysis)) return null;
      return {
        answers,
        consumedTo: next,
        parsed: parsed ? { analysis, text } : null,
      };
    }
    if (type === Msg.Parse) {
      if (q !== p) return null;
      text = parseQuery(buf, q, next);
      analysis = c.router.analyze(text);
      if (!isCommit(analysis)) return null;
      parsed = true;
      answers.bytes(PARSE_COMPLETE);
    } else if (type === Msg.Bind) {
      if (analysis === null || buf[q + 5] !== 0) return null;
      answers.bytes(BIND_COMPLETE);
    } else if (type === Msg.Describe) {
      if (buf[q + 5] !== 0x50 || buf[q + 6] !== 0) return null;
      answers.bytes(NO_DATA);
    } else if (type !== Msg.Execute) return null;
    q = next;
  }
  return null;
}

const PARSE_COMPLETE = Uint8Array.of(Msg.ParseComplete, 0, 0, 0, 4);
const BIND_COMPLETE = Uint8Array.of(Msg.BindComplete, 0, 0, 0, 4);
const NO_DATA = Uint8Array.of(Msg.NoData, 0, 0, 0, 4);
