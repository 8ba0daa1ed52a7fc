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

import {
  decodeText,
  type ErrorFields,
  MessageBuilder,
  Msg,
  readInt16,
  readInt32,
} from "../protocol/messages.ts";
import { bindValues } from "../protocol/frontend_messages.ts";
import { Expect } from "../backend/response_queue.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { Server } from "../backend/server.ts";
import { ClientFacingError } from "../backend/pool.ts";
import { ServerConnectError } from "../backend/connect.ts";
import type { Cluster } from "../backend/databases.ts";
import { keyMoveDelete, keyMoveInsert, type KeyUpdatePlan } from "../router/key_update.ts";
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
  /** The extended-protocol request being routed (its Bind has the values), null for a Query. */
  readonly request: { buf: Uint8Array; p: number; end: number } | null;
  /** The Parse message of the client's statement `name`, for its parameter types. */
  statementParse(name: string): Uint8Array | null;
}

/** The Bind of the UPDATE: its values and formats, and the types its statement declares. */
interface UpdateBind {
  formats: number[];
  values: (Uint8Array | null)[];
  types: number[];
}

const utf8 = new TextDecoder();

/** The request's Bind (null when there is none), with its statement's declared parameter types. */
function requestBind(
  request: { buf: Uint8Array; p: number; end: number },
  statementParse: (name: string) => Uint8Array | null,
): UpdateBind | null {
  const { buf, end } = request;
  const parsed = new Map<string, Uint8Array>();
  for (let q = request.p; end - q >= 5;) {
    const next = q + readInt32(buf, q + 1) + 1;
    if (next > end) return null;
    if (buf[q] === Msg.Parse) {
      const nameEnd = buf.indexOf(0, q + 5);
      parsed.set(utf8.decode(buf.subarray(q + 5, nameEnd)), buf.subarray(q, next));
    } else if (buf[q] === Msg.Bind) {
      const portalEnd = buf.indexOf(0, q + 5);
      const stmtEnd = buf.indexOf(0, portalEnd + 1);
      const name = utf8.decode(buf.subarray(portalEnd + 1, stmtEnd));
      const values = bindValues(buf, q, next);
      if (values === null) return null;
      return {
        ...values,
        values: values.values.map((v) => v === null ? null : v.slice()),
        types: declaredTypes(parsed.get(name) ?? statementParse(name)),
      };
    } else if (buf[q] === Msg.Sync) return null;
    q = next;
  }
  return null;
}

/** The parameter type OIDs a Parse message declares. */
function declaredTypes(parse: Uint8Array | null): number[] {
  if (parse === null) return [];
  const nameEnd = parse.indexOf(0, 5);
  const q = parse.indexOf(0, nameEnd + 1) + 1;
  const out: number[] = [];
  for (let i = 0; i < readInt16(parse, q); i++) out.push(readInt32(parse, q + 2 + 4 * i));
  return out;
}

/** The UPDATE on the old shard in the extended protocol: the client's values for its parameters. */
function updateMessages(plan: KeyUpdatePlan, bind: UpdateBind): Uint8Array {
  const params = plan.selectParams;
  const formatOf = (n: number): number =>
    bind.formats.length === 0
      ? 0
      : bind.formats.length === 1
      ? bind.formats[0]
      : bind.formats[n - 1] ?? 0;
  const b = new MessageBuilder(512).begin(Msg.Parse).cstring("").cstring(plan.selectSql)
    .int16(params.length);
  for (const n of params) b.int32(bind.types[n - 1] ?? 0);
  b.end().begin(Msg.Bind).cstring("").cstring("").int16(params.length);
  for (const n of params) b.int16(formatOf(n));
  b.int16(params.length);
  for (const n of params) {
    const v = bind.values[n - 1] ?? null;
    if (v === null) b.int32(-1);
    else b.int32(v.length).bytes(v);
  }
  b.int16(0).end();
  b.begin(Msg.Execute).cstring("").int32(0).end();
  b.begin(Msg.Sync).end();
  return b.build();
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
    const bind = host.request === null ? null : requestBind(host.request, host.statementParse);
    if (bind === null) result = await server.query(plan.selectSql);
    else {
      result = await server.queryExtended(updateMessages(plan, bind), [
        Expect.Parse,
        Expect.Bind,
        Expect.Execute,
        Expect.Sync,
      ]);
    }
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
  const ins = {
    shard: plan.to,
    sql: keyMoveInsert(plan, json!),
    params: plan.insertParams,
    rows: [0],
  };
  return {
    table: plan.table,
    statements: plan.from < plan.to ? [del, ins] : [ins, del],
    returning: plan.returning !== null,
    rowCount: 1,
    tag: "UPDATE",
    describedBy: plan.to,
    oneOff: true,
  };
}
