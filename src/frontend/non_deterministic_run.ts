/**
 * `[rewrite] non_deterministic_functions = "rewrite"` at run time: a write routed to several
 * shards whose text calls now(), random(), gen_random_uuid()... (see
 * src/router/non_deterministic.ts) has the calls' values computed once, by a `SELECT` on one
 * shard's primary (a pooled connection, or see below), and every shard runs
 * the text with those values written in as typed literals:
 *
 * - a simple Query is replaced by the rewritten one (`RoutedMessage.substitute`);
 * - each Bind of the request (extended protocol) runs the rewritten text as an execution
 *   statement of its own, as `pgdog.unique_id()` executions do (unique_ids.ts): the client's
 *   statement and its parameters are unchanged.
 *
 * Inside a client's transaction, the transaction's instant (now(), current_timestamp,
 * current_date...) is taken once, at the first write that needs it, and every later statement of
 * the transaction gets the same one: PostgreSQL's now() is the same for a whole transaction.
 * When the transaction already holds a shard, that shard answers (on the client's own server, in
 * its transaction): its now() is the one the transaction's statements there got.
 *
 * @module
 */

import {
  decodeText,
  type ErrorFields,
  Msg,
  queryMessage,
  readInt32,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { Cluster } from "../backend/databases.ts";
import { ClientFacingError } from "../backend/pool.ts";
import { errorMessage } from "../log.ts";
import {
  type CallValues,
  findNonDeterministicCalls,
  mayCallNonDeterministic,
  substituteCalls,
  valuesFromRow,
  valuesQuery,
} from "../router/non_deterministic.ts";
import type { ClientStatements } from "./prepared.ts";
import type { Forwarder } from "./forward.ts";
import type { RoutedMessage } from "./routed_message.ts";
import type { ShardTransaction } from "./shard_transaction.ts";
import type { Server } from "../backend/server.ts";

/** What the rewrite reads of the client. */
export interface NonDeterministicClient {
  readonly cluster: Cluster | null;
  readonly msg: RoutedMessage;
  readonly forwarder: Forwarder;
  readonly statements: ClientStatements;
  /** The attached server, and whether it got a Flush and no Sync since. */
  readonly server: Server | null;
  readonly unsynced: boolean;
  readonly txn: ShardTransaction;
}

/** One client's rewrites of non-deterministic calls, with its transaction's instant. */
export class NonDeterministicRewrite {
  /** The instant of the client's open transaction, once a write needed it. */
  #transaction: string | null = null;

  /** The client's transaction ended (or none is open): the next one gets its own instant. */
  transactionOver(): void {
    this.#transaction = null;
  }

  /**
   * Rewrites the request starting at message [p, end) of `buf` (buffered up to `bufferEnd`),
   * routed to several shards, the first being `shard`. Null when done (or nothing to do); the
   * error for the client when the values could not be computed.
   */
  async rewrite(
    c: NonDeterministicClient,
    request: {
      type: number;
      buf: Uint8Array;
      p: number;
      end: number;
      bufferEnd: number;
      shard: number;
      inTransaction: boolean;
      /**
       * The write is one every shard runs alike (omnisharded tables): random(), the uuids and
       * clock_timestamp() get one value too. Otherwise (a sharded table's rows on several
       * shards, each row on one) only the transaction's and statement's times are taken once,
       * and the per-row functions stay per row.
       */
      everyShardAlike: boolean;
    },
  ): Promise<ErrorFields | null> {
    const { type, buf, p, end } = request;
    const options = {
      shard: request.shard,
      inTransaction: request.inTransaction,
      perCall: request.everyShardAlike,
    };
    if (type === Msg.Query) {
      const substitute = c.msg.substitute;
      const sql = substitute !== null
        ? decodeText(substitute, 5, substitute.length - 1)
        : decodeText(buf, p + 5, end - 1);
      const text = await this.#rewriteText(c, sql, options);
      if (text instanceof Error) return failed(text);
      if (text !== null) c.msg.substitute = queryMessage(text);
      return null;
    }
    // Extended protocol: each Bind of the request, with its statement's text and types.
    const parsed = new Map<string, { text: string; types: Uint8Array }>();
    let q = p;
    while (request.bufferEnd - q >= 5) {
      const t = buf[q];
      const next = q + readInt32(buf, q + 1) + 1;
      if (next > request.bufferEnd || t === Msg.Sync || t === Msg.Query || t === Msg.Flush) break;
      if (t === Msg.Parse) {
        const message = buf.subarray(q, next);
        parsed.set(cString(message, 5).text, {
          text: cString(message, cString(message, 5).end).text,
          types: parseTypes(message),
        });
      } else if (t === Msg.Bind) {
        const message = buf.subarray(q, next);
        const name = cString(message, cString(message, 5).end).text;
        const statement = parsed.get(name) ?? this.#prepared(c, name);
        if (statement !== null) {
          const sql = c.forwarder.uniqueIdRun(name, q) ?? statement.text;
          const text = await this.#rewriteText(c, sql, options);
          if (text instanceof Error) return failed(text);
          if (text !== null) c.forwarder.runInstead(name, q, { text, types: statement.types });
        }
      }
      q = next;
    }
    return null;
  }

  /** The text and parameter types of a statement the client prepared before this request. */
  #prepared(c: NonDeterministicClient, name: string): { text: string; types: Uint8Array } | null {
    const parse = name === "" ? c.forwarder.unnamedParse() : c.statements.get(name)?.parse ?? null;
    if (parse === null) return null;
    const text = name === "" ? c.forwarder.unnamedSql : c.statements.get(name)?.query ?? null;
    return text === null ? null : { text, types: parseTypes(parse) };
  }

  /** `sql` with its calls' values written in; null when it has none; an Error when not computed. */
  async #rewriteText(
    c: NonDeterministicClient,
    sql: string,
    options: { shard: number; inTransaction: boolean; perCall: boolean },
  ): Promise<string | Error | null> {
    if (!mayCallNonDeterministic(sql)) return null;
    const calls = findNonDeterministicCalls(sql).filter((call) =>
      options.perCall || call.source !== "call"
    );
    const query = valuesQuery(calls);
    if (query === null) return null;
    let values: CallValues;
    try {
      const cluster = c.cluster!;
      // In a transaction that already holds a shard, that shard's now() is the transaction's
      // (what its own statements got); else a pooled server's, now.
      const held = options.inTransaction && this.#transaction === null ? heldServer(c) : null;
      const server = held ?? await cluster.checkout("primary", { shard: options.shard });
      let result;
      try {
        result = await server.query(query, {
          timeoutMs: held === null ? cluster.settings.checkoutTimeout : undefined,
        });
      } finally {
        if (held === null) server.owner?.checkin(server);
      }
      if (result.error !== null) {
        return new ClientFacingError(result.error);
      }
      values = valuesFromRow(calls, result.rows[0] ?? []);
    } catch (e) {
      return e instanceof Error ? e : new Error(String(e));
    }
    if (values.transaction !== undefined) {
      if (options.inTransaction) {
        this.#transaction ??= values.transaction;
        values.transaction = this.#transaction;
      } else this.#transaction = null;
    }
    return substituteCalls(sql, calls, values);
  }
}

/** A server of the client's open transaction with nothing outstanding, if it holds one. */
function heldServer(c: NonDeterministicClient): Server | null {
  const attached = c.server;
  if (
    attached !== null && !c.unsynced && attached.queue.length === 0 &&
    attached.txStatus === TxStatus.InTransaction
  ) return attached;
  for (const server of c.txn.parked.values()) {
    if (server.queue.length === 0 && server.txStatus === TxStatus.InTransaction) return server;
  }
  return null;
}

/** The client's error for values that could not be computed. */
function failed(e: Error): ErrorFields {
  if (e instanceof ClientFacingError) return { ...e.fields, severity: "ERROR" };
  return {
    severity: "ERROR",
    code: SqlState.ConnectionFailure,
    message: `pgdog could not compute the non-deterministic values of a write for several ` +
      `shards: ${errorMessage(e)}`,
  };
}

const utf8 = new TextDecoder();

/** The NUL-terminated string at `from` of a message, and where the next field starts. */
function cString(message: Uint8Array, from: number): { text: string; end: number } {
  const nul = message.indexOf(0, from);
  const end = nul < 0 ? message.length : nul;
  return { text: utf8.decode(message.subarray(from, end)), end: end + 1 };
}

/** A Parse message's parameter types, as sent (count, then the type oids). */
function parseTypes(parse: Uint8Array): Uint8Array {
  const queryStart = cString(parse, 5).end;
  return parse.slice(cString(parse, queryStart).end);
}
