/**
 * An UPDATE that moves a row to the shard of its new sharding key (`[rewrite] shard_key =
 * "rewrite"`, planned by src/router/key_update.ts), inside the transaction it runs in (the
 * client's, or the implicit one of a split request on both shards): the row is selected and
 * locked on its old shard with the new row computed there (pgdog's own query); then, as one
 * request the client gets one answer to (`UPDATE 1`, the RETURNING row), the new shard inserts
 * it and the old one deletes it (an {@linkcode InsertSplitRun} with a statement per shard).
 *
 * @module
 */

import { decodeText, type ErrorFields } from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { Server } from "../backend/server.ts";
import { ClientFacingError } from "../backend/pool.ts";
import { ServerConnectError } from "../backend/connect.ts";
import type { Cluster } from "../backend/databases.ts";
import { type KeyUpdatePlan, keyMoveDelete, keyMoveInsert } from "../router/key_update.ts";
import type { SplitInsertPlan } from "../router/split_insert.ts";
import type { ShardTransaction } from "./shard_transaction.ts";

/** What moving a row asks of the client. */
export interface KeyMoveHost {
  readonly cluster: Cluster;
  readonly txn: ShardTransaction;
  /** The attached server. */
  readonly server: Server | null;
  /** The attached server was taken for the move (it is parked with the transaction). */
  letGoOfServer(): void;
  /** A BEGIN held back joins the transaction's prelude (replayed on each shard it reaches). */
  openTransaction(): void;
  /** Answers the request with an error (a Query: with its ReadyForQuery). */
  answerError(fields: ErrorFields): void;
  /** For pgdog's own short statements (the transaction's prelude, a failure's marker). */
  readonly timeoutMs: number;
}

/**
 * Selects the row on its old shard: "stay" when none matched (the UPDATE runs there as written:
 * `UPDATE 0`), "done" when the client was answered (an error; the transaction fails), else the
 * statements that move it, one per shard, as a split INSERT runs them.
 */
export async function selectMovedRow(
  host: KeyMoveHost,
  plan: KeyUpdatePlan,
): Promise<SplitInsertPlan | "stay" | "done"> {
  const { cluster, txn } = host;
  let server: Server;
  host.openTransaction();
  try {
    const leg = await txn.leg(cluster, plan.from, { role: "primary", attached: host.server });
    if (leg.attached) host.letGoOfServer();
    server = leg.server;
    if (leg.fresh) {
      // The transaction reaches this shard now: it starts here as it did on the first.
      for (const msg of txn.prelude) {
        await server.query(decodeText(msg, 5, msg.length - 1), { timeoutMs: host.timeoutMs });
      }
    }
  } catch (e) {
    const fields = e instanceof ClientFacingError || e instanceof ServerConnectError
      ? e.fields
      : { severity: "ERROR", code: SqlState.InternalError, message: String(e) };
    host.answerError({ ...fields, severity: "ERROR" });
    return "done";
  }
  let result;
  try {
    // It waits for the row's lock as the client's UPDATE would (no time limit of pgdog's).
    result = await server.query(plan.selectSql);
  } catch (e) {
    txn.keep(cluster, server);
    host.answerError({
      severity: "ERROR",
      code: SqlState.ConnectionFailure,
      message: `lost the connection to shard ${plan.from}: ${String(e)}`,
    });
    return "done";
  }
  txn.keep(cluster, server);
  if (result.error !== null) {
    // The transaction failed on that shard, as the UPDATE would have made it.
    host.answerError({ ...result.error, severity: "ERROR" });
    return "done";
  }
  if (result.rows.length === 0) return "stay";
  if (result.rows.length > 1) {
    await txn.abortOn([server], host.timeoutMs);
    host.answerError({
      severity: "ERROR",
      code: "21000", // cardinality_violation
      message: `an UPDATE of the sharding key of ${plan.table} matched ${result.rows.length} ` +
        "rows: pgdog moves one row at a time to its new shard; the transaction is rolled back",
      hint: "give the WHERE clause the row's primary key",
    });
    return "done";
  }
  const [ctid, json] = result.rows[0];
  const del = { shard: plan.from, sql: keyMoveDelete(plan, ctid!), params: [], rows: [] };
  const ins = { shard: plan.to, sql: keyMoveInsert(plan, json!), params: plan.returningParams, rows: [0] };
  return {
    table: plan.table,
    statements: plan.from < plan.to ? [del, ins] : [ins, del],
    returning: plan.returning !== null,
    rowCount: 1,
    tag: "UPDATE",
    describedBy: plan.to,
  };
}
