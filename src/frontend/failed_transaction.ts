/**
 * A transaction that failed on an error pgdog answered itself (a refusal, a lookup or plugin
 * error, ...): PostgreSQL would have aborted it, so pgdog does too. The servers it holds are
 * made to fail (a statement of pgdog's raises an error there) before the client's next request
 * reaches them, so they answer it as PostgreSQL would: 25P02, COMMIT rolled back, ROLLBACK TO a
 * savepoint recovering. A transaction that holds no server yet (its BEGIN held back) is answered
 * here: 25P02 for any statement but COMMIT, ROLLBACK and ROLLBACK TO (local_answers.ts answers
 * those: COMMIT with ROLLBACK).
 *
 * @module
 */

import {
  decodeText,
  type ErrorFields,
  MessageBuilder,
  Msg,
  readyForQuery,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { EXTENDED_START } from "../protocol/frontend_messages.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import type { Server } from "../backend/server.ts";
import type { Pool } from "../backend/pool.ts";
import type { Analysis, QueryRouter } from "../router/mod.ts";
import { bindStatementName, parseQuery } from "./prepared.ts";
import type { LocalAnswers } from "./local_answers.ts";
import type { ShardTransaction } from "./shard_transaction.ts";

/** What a locally failed transaction reads of the client and asks of it. */
export interface FailingClient {
  readonly rbuf: MessageBuffer;
  readonly router: QueryRouter;
  readonly txn: ShardTransaction;
  readonly local: LocalAnswers;
  /** The attached server. */
  readonly server: Server | null;
  readonly pool: Pool | null;
  readonly closed: boolean;
  readonly inRequest: boolean;
  readonly skipUntilSync: boolean;
  /** The analysis of a statement the client prepared before (`""`: the unnamed one). */
  statementAnalysis(name: string): Analysis | null;
  /** Writes what the batch collected for the attached server. */
  send(): Promise<void>;
  /** Ends a batch left open by a Flush. */
  closeBatch(): Promise<void>;
  /** Waits until the attached server has answered everything sent. */
  settle(): Promise<void>;
  /** The transaction status the client is told. */
  txStatus(): number;
  /** Answers the client (after what its servers owe). */
  answer(bytes: Uint8Array): void;
}

/**
 * At the start of a request in a transaction pgdog failed locally: fails the servers it holds
 * (then the request goes on to them: false), or with none, answers the request as PostgreSQL
 * answers a failed transaction (true: consumed) unless it ends or rolls back the transaction
 * (false: local_answers.ts answers it).
 */
export async function requestInFailed(
  c: FailingClient,
  request: { type: number; buf: Uint8Array; p: number; end: number },
): Promise<boolean> {
  const { type, buf, p, end } = request;
  if (c.inRequest || c.skipUntilSync || (type !== Msg.Query && EXTENDED_START[type] !== 1)) {
    return false;
  }
  if (await failHeldServers(c)) return false;
  if (c.closed) return true;
  // (PostgreSQL closes statements and portals in a failed transaction too.)
  if (type === Msg.Close) return false;
  // (Transaction control is short: a long text is not worth parsing to refuse it.)
  const analysis = end - p > CONTROL_MAX
    ? null
    : type === Msg.Query
    ? c.router.analyze(decodeText(buf, p + 5, end - 1))
    : type === Msg.Parse
    ? c.router.analyze(parseQuery(buf, p, end))
    : type === Msg.Bind
    ? c.statementAnalysis(bindStatementName(buf, p, end))
    : null;
  const ends = endsFailed(analysis);
  if (ends && type !== Msg.Query) return false;
  c.rbuf.start = end;
  if (ends) {
    const tag = c.local.heldBackControl(analysis!, buf.slice(p, end));
    if (tag !== null) {
      c.answer(commandComplete(tag, c.txStatus() as TxStatus));
      return true;
    }
    if (analysis!.info.transaction === "savepoint") {
      c.local.answerError(noSuchSavepoint(analysis!), true);
      return true;
    }
    // (No transaction is open anywhere: there is nothing left to roll back.)
    c.txn.failedLocally = false;
    c.answer(commandComplete("ROLLBACK", c.txStatus() as TxStatus));
    return true;
  }
  c.local.answerError(IN_FAILED_TRANSACTION, type === Msg.Query);
  return true;
}

/**
 * Makes the servers of the locally failed transaction fail (those in a transaction) and clears
 * the mark (they carry the failure now); true when there were such servers.
 */
export async function failHeldServers(c: FailingClient): Promise<boolean> {
  const txn = c.txn;
  const held = [...txn.parked.values()];
  if (c.server !== null) held.push(c.server);
  const open = held.filter((s) => s.txStatus !== TxStatus.Idle && !s.closed);
  if (open.length === 0) return false;
  await c.send();
  await c.closeBatch();
  await c.settle();
  if (c.closed) return true;
  const healthy = open.filter((s) => s.txStatus === TxStatus.InTransaction && !s.closed);
  await txn.abortOn(healthy, c.pool?.config.rollback_timeout ?? 5000);
  txn.failedLocally = false;
  return true;
}

/** COMMIT, END, ROLLBACK, ABORT or ROLLBACK TO: what a failed transaction still runs. */
function endsFailed(analysis: Analysis | null): boolean {
  if (analysis === null || analysis.info.statements !== 1) return false;
  const tx = analysis.info.transaction;
  if (tx === "commit" || tx === "rollback") return true;
  return tx === "savepoint" && transactionStmt(analysis)?.kind === "TRANS_STMT_ROLLBACK_TO";
}

function transactionStmt(
  analysis: Analysis,
): { kind?: string; savepoint_name?: string } | undefined {
  return analysis.info.ast?.stmts[0]?.stmt?.TransactionStmt as
    | { kind?: string; savepoint_name?: string }
    | undefined;
}

function noSuchSavepoint(analysis: Analysis): ErrorFields {
  return {
    severity: "ERROR",
    code: SqlState.InvalidSavepointSpecification,
    message: `savepoint "${transactionStmt(analysis)?.savepoint_name ?? ""}" does not exist`,
  };
}

function commandComplete(tag: string, status: TxStatus): Uint8Array {
  return new MessageBuilder(32).begin(Msg.CommandComplete).cstring(tag).end()
    .bytes(readyForQuery(status)).build();
}

/** Longer messages are no COMMIT, ROLLBACK or ROLLBACK TO (not parsed). */
const CONTROL_MAX = 1024;

/** PostgreSQL's error for a statement in a failed transaction. */
const IN_FAILED_TRANSACTION: ErrorFields = {
  severity: "ERROR",
  code: SqlState.InFailedSqlTransaction,
  message: "current transaction is aborted, commands ignored until end of transaction block",
};
