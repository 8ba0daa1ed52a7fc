/**
 * INSERT ... SELECT into a sharded table, run by pgdog (`[rewrite] enabled = true`,
 * `split_inserts = "rewrite"`), from a simple query or one extended-protocol execution. The
 * SELECT runs first: on the one shard it needs, or on each of its shards with the rows
 * concatenated, or merged by the cross-shard engine (MergePipeline) when the router plans a
 * merge; on the client's own servers of its open transaction where it holds them, else on pooled
 * ones. Its rows (text) are placed by the router's sharding function (plugin hashers asked once
 * per distinct key), and the client's request is replaced in the read buffer by its own Parse,
 * Bind and Describe (extended protocol, without Execute) and one multi-row INSERT per shard (see
 * src/router/insert_select.ts), run as a split request (split_request.ts): in the client's
 * transaction, or in one implicit transaction across the shards, ended by Checkout.endImplicit.
 * The client gets one `INSERT 0 n`.
 *
 * @module
 */

import { askPluginHashers } from "./plugin_hashers.ts";
import {
  decodeText,
  type ErrorFields,
  MessageBuilder,
  Msg,
  queryMessage,
  readInt16,
  readInt32,
  readyForQuery,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import { decodeDataRow, type Server } from "../backend/server.ts";
import { mergeCollations } from "../backend/collations.ts";
import { MergePipeline } from "../cross_shard/pipeline.ts";
import { MergeError } from "../cross_shard/errors.ts";
import type { Cluster } from "../backend/databases.ts";
import { ClientFacingError, type Pool } from "../backend/pool.ts";
import { learnColumnOrders } from "../backend/catalog.ts";
import type { QueryRouter } from "../router/mod.ts";
import {
  decideShard,
  type ShardingConfig,
  type ShardLookup,
  type ShardSession,
  valueShard,
} from "../router/shard.ts";
import {
  emptyInsert,
  type InsertSelect,
  insertSelectOf,
  insertStatements,
} from "../router/insert_select.ts";
import type { PluginSet } from "../plugin/mod.ts";
import { errorMessage } from "../log.ts";
import type { ShardTransaction } from "./shard_transaction.ts";
import { raiseSql, type SplitPlan, type SplitRunner } from "./split_request.ts";
import type { LocalAnswers } from "./local_answers.ts";
import type { Forwarder } from "./forward.ts";
import { bindStatementName, type ClientStatements, parseName, parseQuery } from "./prepared.ts";
import { bindValues } from "../protocol/frontend_messages.ts";
import { SEGMENT_SYNC } from "./request_units.ts";

/** What running an INSERT ... SELECT reads of the client. */
export interface InsertSelectClient {
  readonly user: string;
  readonly database: string;
  readonly cluster: Cluster | null;
  readonly sharding: ShardingConfig | null;
  readonly router: QueryRouter;
  readonly plugins: PluginSet | null;
  readonly server: Server | null;
  readonly closed: boolean;
  readonly txn: ShardTransaction;
  readonly rbuf: MessageBuffer;
  readonly splits: SplitRunner;
  readonly local: LocalAnswers;
  readonly forwarder: Forwarder;
  readonly statements: ClientStatements;
  /** `cross_shard_buffer_limit`: the SELECT's rows pgdog may hold, in bytes. */
  readonly crossShardBufferLimit: number;
  shardSession(): ShardSession;
  txStatus(): number;
  answer(bytes: Uint8Array): void;
  send(): Promise<void>;
  closeBatch(): Promise<void>;
  settle(): Promise<void>;
}

/**
 * The request starting at [p, end) of the read buffer (a Query, or an extended-protocol request:
 * [Parse] Bind [Describe portal] Execute Sync), when it is an INSERT ... SELECT into a sharded
 * table and the setting is on: run (its INSERTs started as a split request, or answered) and
 * true; false for any other request (left alone).
 */
export async function runInsertSelect(
  c: InsertSelectClient,
  request: { type: number; buf: Uint8Array; p: number; end: number },
): Promise<boolean> {
  const config = c.sharding;
  if (config === null || config.splitInserts !== "rewrite") return false;
  const { type, buf, p, end } = request;
  let sql: string;
  let to = end;
  let extended: ExtendedRequest | null = null;
  // Cheap test first (this runs for every request): the text says "insert" somewhere.
  if (type === Msg.Query) {
    if (!mentionsInsert(buf, p + 5, end - 1)) return false;
    sql = decodeText(buf, p + 5, end - 1);
  } else {
    if (!mayInsert(c, buf, p)) return false;
    extended = extendedRequest(c, { buf, p, bufferEnd: c.rbuf.end });
    if (extended === null) return false;
    sql = extended.sql;
    to = extended.to;
  }
  // The cached analysis first: most statements are no INSERT ... SELECT.
  if (!isInsertSelect(c.router, sql)) return false;
  // Routed by hand (a comment or SET pgdog.shard / sharding_key): it goes where it is told.
  const manual = c.shardSession();
  const directives = c.router.analyze(sql).directives;
  if (
    manual.shard != null || manual.shardingKey != null || directives?.has("shard") ||
    directives?.has("sharding_key")
  ) return false;
  const params = extended?.params ?? undefined;
  const plan = extended?.refusal !== undefined
    ? { refusal: extended.refusal }
    : insertSelectOf(sql, config, { params: params ?? undefined });
  if (plan === null) return false;
  // What the client sent before is answered first; its servers are then free to ask.
  await c.send();
  await c.closeBatch();
  await c.settle();
  if (c.closed) return true;
  const outcome = "refusal" in plan
    ? { error: refusal(plan.refusal) }
    : await planInserts(c, plan, { p, end: to, maxRows: extended?.maxRows ?? 0 }).catch((
      e,
    ): { error: ErrorFields } => ({
      error: e instanceof ClientFacingError ? { ...e.fields, severity: "ERROR" } : {
        severity: "ERROR",
        code: SqlState.InternalError,
        message: `INSERT ... SELECT: ${errorMessage(e)}`,
      },
    }));
  if (c.closed) return true;
  const rb = c.rbuf;
  if ("error" in outcome) {
    if (c.txStatus() === TxStatus.Idle) {
      rb.start = to;
      c.local.answerError(outcome.error, true);
    } else {
      // Inside a transaction the error must fail it, as PostgreSQL's would: a shard raises it.
      // (ErrorResponse and ReadyForQuery answer an extended request as they answer the Query.)
      rb.replace(p, to, queryMessage(raiseSql(outcome.error)));
    }
    return true;
  }
  if ("refusal" in plan) return true; // (its error was answered above)
  // RETURNING: one RowDescription reaches the client, as from one INSERT: the first
  // statement's (simple protocol), or those the request's own Describes get (extended).
  const rowDescriptions = plan.returning === null ? undefined : extended?.describes ?? 1;
  if ("plan" in outcome) {
    await c.splits.start(withPrefix({ ...outcome.plan, rowDescriptions }, extended));
    return true;
  }
  if (extended !== null || plan.returning !== null) {
    // No rows: the request's own Parse, Bind and Describe still run (their answers, its state);
    // a simple query with RETURNING runs the INSERT over no rows for its RowDescription.
    const none = extended === null
      ? queryMessage(emptyInsert(plan, c.txn.heldShards(c.cluster!, c.server)[0] ?? 0))
      : new Uint8Array(0);
    await c.splits.start(withPrefix(
      {
        from: p,
        to,
        bytes: none,
        ends: none.length > 0 ? [p + none.length] : [],
        shards: [],
        sumInserts: true,
        rowDescriptions,
      },
      extended,
    ));
    return true;
  }
  rb.start = to;
  const b = new MessageBuilder(64);
  b.begin(Msg.CommandComplete).cstring("INSERT 0 0").end();
  b.bytes(readyForQuery(c.txStatus()));
  c.answer(b.build());
  return true;
}

/**
 * An extended request's plan: first its own messages but Execute, with a Sync of pgdog's (the
 * server parses, binds and describes, answering ParseComplete, BindComplete, NoData... as to the
 * request itself; nothing runs), then the INSERTs.
 */
function withPrefix(plan: SplitPlan, extended: ExtendedRequest | null): SplitPlan {
  if (extended === null) return plan;
  const prefix = extended.prefix;
  const bytes = new Uint8Array(prefix.length + plan.bytes.length);
  bytes.set(prefix, 0);
  bytes.set(plan.bytes, prefix.length);
  return {
    ...plan,
    to: extended.to,
    bytes,
    ends: [plan.from + prefix.length, ...plan.ends.map((e) => e + prefix.length)],
  };
}

/** An extended-protocol request that runs one statement once: what it runs and with what. */
interface ExtendedRequest {
  sql: string;
  /** The Bind's parameters as text; null for a format pgdog can't write as a literal. */
  params: (string | null)[] | null;
  /** Its messages but Execute and Sync, then a Sync of pgdog's. */
  prefix: Uint8Array;
  /** Its Describe messages (each gets a RowDescription when the statement returns rows). */
  describes: number;
  /** The end of its Sync. */
  to: number;
  /** The rows its Execute asks for (0: all). */
  maxRows: number;
  refusal?: string;
}

const utf8 = new TextDecoder();

/**
 * [Parse] Bind [Describe] Execute Sync from `p`, whole in the buffer; null for any other shape
 * (routed as any request), or one whose statement pgdog doesn't know.
 */
function extendedRequest(
  c: InsertSelectClient,
  at: { buf: Uint8Array; p: number; bufferEnd: number },
): ExtendedRequest | null {
  const { buf, bufferEnd } = at;
  let q = at.p;
  let parsed: { name: string; sql: string } | null = null;
  let bind: { statement: string; params: (string | null)[] | null; binaryResults: boolean } | null =
    null;
  let executes = 0;
  let maxRows = 0;
  let describes = 0;
  const kept: Uint8Array[] = [];
  while (bufferEnd - q >= 5) {
    const type = buf[q];
    const next = q + readInt32(buf, q + 1) + 1;
    if (next > bufferEnd) return null;
    if (type === Msg.Sync) {
      if (bind === null || executes !== 1) return null;
      const sql = parsed !== null && parsed.name === bind.statement
        ? parsed.sql
        : bind.statement === ""
        ? c.forwarder.unnamedSql
        : c.statements.get(bind.statement)?.query ?? null;
      if (sql === null) return null;
      kept.push(SEGMENT_SYNC);
      const prefix = new Uint8Array(kept.reduce((n, m) => n + m.length, 0));
      let at = 0;
      for (const m of kept) {
        prefix.set(m, at);
        at += m.length;
      }
      const request: ExtendedRequest = {
        sql,
        params: bind.params,
        prefix,
        describes,
        to: next,
        maxRows,
      };
      if (bind.params === null) {
        request.refusal = "INSERT ... SELECT into a sharded table with binary parameters is not " +
          "supported: send the parameters as text";
      } else if (bind.binaryResults) {
        // (Only RETURNING has results; pgdog's INSERTs answer in text.)
        request.refusal = "INSERT ... SELECT into a sharded table with binary result formats is " +
          "not supported: ask for text results";
      }
      return request;
    }
    if (type === Msg.Parse) {
      if (parsed !== null || bind !== null) return null;
      parsed = { name: parseName(buf, q, next), sql: parseQuery(buf, q, next) };
    } else if (type === Msg.Bind) {
      if (bind !== null) return null;
      const values = bindValues(buf, q, next);
      if (values === null) return null;
      const binary = values.values.some((v, i) =>
        v !== null &&
        (values.formats.length === 1 ? values.formats[0] : values.formats[i] ?? 0) !== 0
      );
      bind = {
        statement: bindStatementName(buf, q, next),
        params: binary ? null : values.values.map((v) => v === null ? null : utf8.decode(v)),
        binaryResults: resultFormats(buf, q, next).some((f) => f !== 0),
      };
    } else if (type === Msg.Execute) {
      if (bind === null) return null;
      executes++;
      const nameEnd = buf.indexOf(0, q + 5);
      if (nameEnd + 5 <= next) maxRows = Math.max(0, readInt32(buf, nameEnd + 1));
    } else if (type === Msg.Describe) describes++;
    else return null;
    if (type !== Msg.Execute) kept.push(buf.slice(q, next));
    q = next;
  }
  return null;
}

/** The result format codes of the Bind message at [p, end). */
function resultFormats(buf: Uint8Array, p: number, end: number): number[] {
  let q = buf.indexOf(0, buf.indexOf(0, p + 5) + 1) + 1;
  const formats = readInt16(buf, q);
  q += 2 + 2 * formats;
  const values = readInt16(buf, q);
  q += 2;
  for (let i = 0; i < values && q + 4 <= end; i++) {
    const len = readInt32(buf, q);
    q += 4 + Math.max(len, 0);
  }
  const out: number[] = [];
  const n = q + 2 <= end ? readInt16(buf, q) : 0;
  for (let i = 0; i < n && q + 4 + 2 * i <= end; i++) out.push(readInt16(buf, q + 2 + 2 * i));
  return out;
}

/** The statement is one INSERT whose rows come from a SELECT (not VALUES), by its cached analysis. */
/** Whether bytes [from, to) of `buf` hold "insert" in any case, without decoding them. */
function mentionsInsert(buf: Uint8Array, from: number, to: number): boolean {
  for (let i = from + 1; i + 4 < to; i++) {
    // "n" first (the rarest letter of the word), then "i" before it and "sert" after it.
    if (
      (buf[i] | 0x20) === 0x6e && (buf[i - 1] | 0x20) === 0x69 && (buf[i + 1] | 0x20) === 0x73 &&
      (buf[i + 2] | 0x20) === 0x65 && (buf[i + 3] | 0x20) === 0x72 && (buf[i + 4] | 0x20) === 0x74
    ) return true;
  }
  return false;
}

/**
 * Whether the extended request at `p` (a Parse, or a Bind of a statement parsed before) may run
 * an INSERT: its text says "insert", or pgdog doesn't know the text.
 */
function mayInsert(c: InsertSelectClient, buf: Uint8Array, p: number): boolean {
  if (c.rbuf.end - p < 5) return true;
  let end = p + readInt32(buf, p + 1) + 1;
  if (buf[p] === Msg.Parse) {
    const text = buf.indexOf(0, p + 5) + 1;
    if (mentionsInsert(buf, text, Math.min(end, buf.indexOf(0, text)))) return true;
    // The Bind after it may run another statement, parsed before.
    p = end;
    if (c.rbuf.end - p < 5) return true;
    end = p + readInt32(buf, p + 1) + 1;
    if (buf[p] === Msg.Bind && end <= c.rbuf.end && bindStatementName(buf, p, end) === "") {
      return false;
    }
  }
  if (buf[p] !== Msg.Bind || end > c.rbuf.end) return true;
  const name = bindStatementName(buf, p, end);
  const sql = name === "" ? c.forwarder.unnamedSql : c.statements.get(name)?.query;
  return sql === null || sql === undefined || /insert/i.test(sql);
}

function isInsertSelect(router: QueryRouter, sql: string): boolean {
  if (!/insert/i.test(sql)) return false;
  const stmts = router.analyze(sql).info.ast?.stmts;
  if (stmts === undefined || stmts.length !== 1) return false;
  const insert = stmts[0].stmt?.InsertStmt as {
    selectStmt?: { SelectStmt?: Record<string, unknown> };
  } | undefined;
  const select = insert?.selectStmt?.SelectStmt;
  return select !== undefined && select.valuesLists === undefined;
}

/** The INSERTs of the SELECT's rows as a split plan replacing [p, end); none when no rows. */
async function planInserts(
  c: InsertSelectClient,
  plan: InsertSelect,
  at: { p: number; end: number; maxRows: number },
): Promise<{ plan: SplitPlan } | { error: ErrorFields } | { empty: true }> {
  const config = c.sharding!;
  const cluster = c.cluster!;
  const session = c.shardSession();
  const timeoutMs = cluster.settings.checkoutTimeout;
  const names = { user: c.user, searchPath: session.searchPath };
  // The SELECT's shards, as the router would send it alone.
  const analysis = c.router.analyze(plan.selectSql);
  const lookup: ShardLookup = {
    found: [],
    pluginShards: new Map(),
    missing: [],
    columns: (t) => cluster.columns.get(t, names),
    missingColumns: [],
    aggregates: cluster.columns.aggregates,
    missingAggregates: false,
  };
  const decision = decideShard(analysis, { config, session, lookup });
  if (decision.unsupported !== undefined) {
    return { error: refusal(`the SELECT of an INSERT ... SELECT: ${decision.unsupported}`) };
  }
  const held = c.txn.heldShards(cluster, c.server);
  const t = decision.target;
  let shards = t.kind === "one"
    ? [t.shard]
    : t.kind === "some"
    ? t.shards
    : t.kind === "any"
    ? [held[0] ?? c.txn.anyShard(cluster, config.shards)]
    : Array.from({ length: config.shards }, (_, i) => i);
  // A key a plugin hasher would place: every shard answers (only that one has the rows).
  if (lookup.missing.length > 0 && t.kind !== "any") {
    shards = Array.from({ length: config.shards }, (_, i) => i);
  }
  const merge = shards.length > 1 && decision.merge && !decision.merge.passThrough
    ? decision.merge
    : null;
  const rows: (string | null)[][] = [];
  // Merged across shards: each shard runs the plan's statement, the merge engine makes the rows.
  const pipeline = merge === null ? null : new MergePipeline(merge, {
    shards: shards.length,
    bufferLimit: c.crossShardBufferLimit,
    collation: (await mergeCollations(cluster, { timeoutMs })).collation,
  });
  // (pgdog reads each shard's rows whole, one shard after the other: it can't hold one back.)
  pipeline?.countWaiting();
  const selectSql = merge?.shardSql ?? plan.selectSql;
  let failure: unknown = null;
  /** Bytes of rows held (about: one per value besides its text). */
  let heldBytes = 0;
  for (const [i, n] of shards.entries()) {
    const own = heldServer(c, n);
    const server = own ?? await cluster.checkout("primary", { shard: n });
    // A pooled server has someone's settings: the SELECT runs with the client's search_path and
    // writes its values in forms every session reads back alike (SET LOCAL: this query only).
    const sql = own !== null
      ? { text: selectSql, skip: 0 }
      : pooledSelect(selectSql, session.searchPath);
    let descriptions = 0;
    const messages = (msg: Uint8Array): void => {
      // (Called while the server's answer is read: a merge failure is kept for after it.)
      if (failure !== null) return;
      try {
        if (msg[0] === Msg.RowDescription) {
          if (++descriptions > sql.skip) pipeline!.rowDescription(i, msg);
        } else if (descriptions > sql.skip) pipeline!.row(i, msg);
      } catch (e) {
        failure = e;
      }
    };
    let result;
    try {
      // (Its time is the statement's: query_timeout applies to the client's request as a whole.)
      result = await server.query(sql.text, { messages: pipeline === null ? undefined : messages });
    } finally {
      if (own === null) server.owner?.checkin(server);
    }
    if (result.error !== null) return { error: { ...result.error, severity: "ERROR" } };
    for (const row of result.rows.slice(sql.skip)) {
      rows.push(row);
      for (const v of row) heldBytes += v === null ? 1 : v.length + 1;
    }
    if (heldBytes > c.crossShardBufferLimit) return { error: tooMany(c.crossShardBufferLimit) };
    if (failure === null) pipeline?.shardDone(i);
  }
  if (pipeline !== null) {
    const out = new MessageBuilder(1024);
    try {
      if (failure !== null) throw failure;
      while (pipeline.pull(out) > 0);
    } catch (e) {
      if (!(e instanceof MergeError)) throw e;
      return {
        error: {
          severity: "ERROR",
          code: e.code,
          message: e.message,
          detail: e.detail,
          hint: e.hint,
        },
      };
    }
    const bytes = out.view();
    for (let q = 0; q < bytes.length;) {
      const size = readInt32(bytes, q + 1) + 1;
      if (bytes[q] === Msg.DataRow) {
        rows.push(decodeDataRow(bytes, q, size));
        heldBytes += size;
      }
      q += size;
    }
  }
  if (heldBytes > c.crossShardBufferLimit) return { error: tooMany(c.crossShardBufferLimit) };
  if (rows.length === 0) return { empty: true };
  // Fetched in parts (an Execute asking for no more rows than there are): outside a transaction
  // the portal ends at the Sync, so the first rows and PortalSuspended are the whole answer; in
  // one, its next Execute would ask for more, which pgdog can't give yet.
  const suspends = plan.returning !== null && at.maxRows > 0 && rows.length >= at.maxRows;
  if (suspends && c.txStatus() !== TxStatus.Idle) {
    return {
      error: refusal(
        `INSERT ... SELECT ... RETURNING into a sharded table inside a transaction, its ` +
          `${rows.length} rows fetched ${at.maxRows} at a time (a cursor or fetch size: Execute ` +
          "with max rows), is not supported: execute it for all its rows (max rows 0)",
      ),
    };
  }
  let columns = plan.columns;
  if (columns === null) {
    const known = await learnColumnOrders([plan.table], {
      cluster,
      held: null,
      ownTables: false,
      timeoutMs,
      ...names,
    });
    columns = (known(plan.table) ?? []).slice(0, rows[0].length);
  }
  const keyAt = columns.indexOf(plan.spec.column);
  const placed = await placeRows(c, plan, { rows, keyAt });
  if ("error" in placed) return placed;
  const statements = insertStatements(plan, rows, { columns, shards: placed.shards });
  const messages = statements.map((s) => queryMessage(s.sql));
  const bytes = new Uint8Array(messages.reduce((n, m) => n + m.length, 0));
  const ends: number[] = [];
  let offset = 0;
  for (const m of messages) {
    bytes.set(m, offset);
    offset += m.length;
    ends.push(at.p + offset);
  }
  const used = new Set<number>();
  for (const s of statements) if (s.shard !== null) used.add(s.shard);
  return {
    plan: {
      from: at.p,
      to: at.end,
      bytes,
      ends,
      shards: [...used].sort((a, b) => a - b),
      sumInserts: true,
      // The rows come back per shard: held, and answered in the SELECT's order.
      returning: plan.returning === null ? undefined : {
        order: statements.map((s) => s.positions),
        limit: c.crossShardBufferLimit,
        maxRows: at.maxRows,
      },
    },
  };
}

/** Each row's shard by its key (null: no key in the rows, any one shard), or an error. */
async function placeRows(
  c: InsertSelectClient,
  plan: InsertSelect,
  options: { rows: (string | null)[][]; keyAt: number },
): Promise<{ shards: (number | null)[] } | { error: ErrorFields }> {
  const { rows, keyAt } = options;
  if (keyAt < 0) return { shards: rows.map(() => null) };
  const config = c.sharding!;
  const spec = plan.spec;
  const lookup: ShardLookup = { found: [], pluginShards: new Map(), missing: [] };
  const place = (): (number | null)[] =>
    rows.map((row) => {
      const value = row[keyAt];
      return value === null || value === undefined
        ? null
        : valueShard({ text: value, binary: null }, spec, { shards: config.shards, lookup });
    });
  let shards = place();
  if (lookup.missing.length > 0) {
    // A plugin hasher: each distinct key asked once, in batches.
    try {
      await askPluginHashers(c.plugins, lookup, { shards: config.shards, database: c.database });
    } catch (e) {
      return { error: pluginError(errorMessage(e)) };
    }
    shards = place();
  }
  const unplaced = shards.findIndex((s) => s === null);
  if (unplaced >= 0) {
    const value = rows[unplaced][keyAt];
    return {
      error: refusal(
        value === null
          ? `INSERT ... SELECT: row ${unplaced + 1} of the SELECT has a NULL sharding key ` +
            `${spec.column}, which belongs to no shard`
          : `INSERT ... SELECT: the sharding key ${spec.column} = ${value} of row ${
            unplaced + 1
          } belongs to no shard (it matches no mapping)`,
      ),
    };
  }
  return { shards };
}

/**
 * The SELECT for a pooled server, in one implicit transaction: ISO dates, PostgreSQL intervals,
 * exact floats, hex bytea, and the client's search_path (its `set_config` row is the first
 * `skip` rows of the answer).
 */
function pooledSelect(selectSql: string, searchPath: string | undefined | null): {
  text: string;
  skip: number;
} {
  let text = "SET LOCAL DateStyle = 'ISO, MDY'; SET LOCAL IntervalStyle = 'postgres'; " +
    "SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'; ";
  let skip = 0;
  if (searchPath) {
    text += `SELECT set_config('search_path', '${searchPath.replaceAll("'", "''")}', true); `;
    skip = 1;
  }
  return { text: text + selectSql, skip };
}

/** The client's own server of shard `n` in its open transaction, when it holds one. */
function heldServer(c: InsertSelectClient, n: number): Server | null {
  const server = c.server;
  if (server !== null && c.cluster!.shardOf(server.owner as Pool) === n) return server;
  return c.txn.parked.get(n) ?? null;
}

/** The SELECT gave more rows than pgdog may hold (53200, as a cross-shard merge past its limit). */
function tooMany(limit: number): ErrorFields {
  return {
    severity: "ERROR",
    code: "53200",
    message: `INSERT ... SELECT: the SELECT's rows are more than cross_shard_buffer_limit ` +
      `(${limit} bytes), which pgdog holds to insert them`,
    hint: "Insert them in parts (a WHERE on ranges of the key), or with COPY.",
  };
}

function refusal(message: string): ErrorFields {
  return { severity: "ERROR", code: SqlState.FeatureNotSupported, message };
}

function pluginError(message: string): ErrorFields {
  return { severity: "ERROR", code: SqlState.SystemError, message };
}
