/**
 * Split requests: a request whose statements must be routed one by one (a multi-statement simple
 * query, or a pipelined extended-protocol request whose statements go to different shards) is
 * cut into statements, each run as a request of its own, in one implicit transaction as
 * PostgreSQL runs it. planSplit plans the cut; SplitRunner runs it.
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
import type { MessageBuffer } from "../net/message_buffer.ts";
import type { SocketWriter } from "../net/writer.ts";
import { asSocketWriter } from "../net/framer.ts";
import { bindValues } from "../protocol/frontend_messages.ts";
import { type Analysis, ANALYZE_ON_LOOP_MAX, type QueryRouter } from "../router/mod.ts";
import type { ParseTree } from "../router/analyze.ts";
import {
  type BindValues,
  decideShard,
  sameTarget,
  type ShardingConfig,
  type ShardLookup,
  type ShardSession,
  type ShardTarget,
} from "../router/shard.ts";
import { BlockWriter, type HeldReturning } from "./block_writer.ts";
import { loneSplitInsert } from "./insert_split.ts";
import { bindStatementName, parseName, parseQuery } from "./prepared.ts";
import {
  parseTree,
  queryMessageOf,
  SEGMENT_SYNC,
  splitPipeline,
  statementRanges,
} from "./request_units.ts";

/** What planning a split asks of the client. */
export interface SplitClient {
  readonly router: QueryRouter;
  readonly sharding: ShardingConfig | null;
  /** The session's manual routing and search_path, as shard decisions see them. */
  shardSession(): ShardSession;
  /** The analysis of a statement the client prepared before (`""`: the unnamed one). */
  statementAnalysis(name: string): Analysis | null;
  /** The shards the client's transaction holds. */
  heldShards(): number[];
  /** The transaction status the client was last told. */
  txStatus(): number;
  /** The text with ids an execution of a statement calling pgdog.unique_id() runs. */
  readonly forwarder: { uniqueIdRun(name: string, p: number): string | null };
}

/** The BEGIN pgdog sends for a split request run outside a transaction. */
export const IMPLICIT_BEGIN: Uint8Array = queryMessage("BEGIN");
const SEMICOLON = 0x3b;

/** A request cut into statements (see planSplit): what replaces it in the read buffer. */
export interface SplitPlan {
  /** The request's bytes in the read buffer. */
  from: number;
  to: number;
  /** Its statements, each a request of its own. */
  bytes: Uint8Array;
  /** Where each of them ends in the read buffer once `bytes` replaced the request. */
  ends: number[];
  /** Every shard a statement goes to, ascending (taken before the first runs). */
  shards: number[];
  /**
   * The statements are INSERTs pgdog wrote for one client statement (INSERT ... SELECT): the
   * client gets one `INSERT 0 n` with their sum, not one tag each.
   */
  sumInserts?: boolean;
  /** How many RowDescriptions reach the client (the rest are dropped); absent: all. */
  rowDescriptions?: number;
  /** The RETURNING rows of the INSERTs, held and answered in the client statement's order. */
  returning?: HeldReturning;
}

/** A split request while it runs. */
export interface SplitRun {
  ends: number[];
  /** The statement running now (index into `ends`). */
  next: number;
  /** Stands in for the client's writer: one answer, one ReadyForQuery. */
  writer: BlockWriter;
  /** pgdog opened the transaction the statements run in (PostgreSQL's implicit transaction). */
  implicit: boolean;
}

/**
 * A request whose statements must be routed one by one: a multi-statement simple query or a
 * pipelined extended-protocol request whose statements do not all go to the same shards (or
 * that holds something pgdog answers itself, or a statement it refuses). Null when the request
 * runs whole, as today: every statement for the same shards, or nothing to split.
 */
export function planSplit(
  request: {
    type: number;
    buf: Uint8Array;
    /** The request's first message is [p, end); the buffered bytes end at `bufferEnd`. */
    p: number;
    end: number;
    bufferEnd: number;
  },
  client: SplitClient,
): SplitPlan | null {
  const { type, buf, p, end } = request;
  const router = client.router;
  const config = client.sharding!;
  const units: Array<{ bytes: Uint8Array; analysis: Analysis | null; bind: BindValues | null }> =
    [];
  let requestEnd: number;
  if (type === Msg.Query) {
    const semicolon = buf.indexOf(SEMICOLON, p + 5);
    if (semicolon < 0 || semicolon >= end) return loneRequest(request, client);
    const sql = decodeText(buf, p + 5, end - 1);
    const whole = router.analyze(sql);
    if (whole.info.statements < 2 || whole.info.ast === null || whole.directives !== null) {
      return whole.info.statements === 1 ? loneRequest(request, client) : null;
    }
    // The cached tree is of the text with its constants replaced: locations need the original
    // (a large text's was parsed by the parse worker).
    let tree: ParseTree | null;
    if (!whole.entry.normalized && whole.entry.query === sql) tree = whole.info.ast;
    else if (sql.length <= ANALYZE_ON_LOOP_MAX) tree = parseTree(sql);
    else {
      const json = router.treeJson(whole, sql);
      tree = json === "null" ? null : JSON.parse(json) as ParseTree;
    }
    if (tree === null) return null;
    const body = buf.subarray(p + 5, end - 1);
    for (const r of statementRanges(tree, body.length)) {
      const text = body.subarray(r.start, r.end);
      units.push({
        bytes: queryMessageOf(text),
        analysis: router.analyze(decodeText(text, 0, text.length)),
        bind: null,
      });
    }
    requestEnd = end;
  } else {
    const pipe = splitPipeline(buf, p, request.bufferEnd);
    if (pipe === null) return loneRequest(request, client);
    // Statements parsed earlier in this request, by name.
    const parsed = new Map<string, Analysis>();
    for (const seg of pipe.segments) {
      let analysis: Analysis | null = null;
      let bind: BindValues | null = null;
      for (let q = seg.start; q < seg.end;) {
        const next = q + readInt32(buf, q + 1) + 1;
        if (buf[q] === Msg.Parse) {
          parsed.set(
            parseName(buf, q, next),
            router.analyze(parseQuery(buf, q, next)),
          );
        } else if (buf[q] === Msg.Bind && q === seg.bind && seg.execute >= 0) {
          const name = bindStatementName(buf, q, next);
          analysis = parsed.get(name) ?? client.statementAnalysis(name);
          bind = bindValues(buf, q, next);
        }
        q = next;
      }
      units.push({ bytes: buf.subarray(seg.start, seg.end), analysis, bind });
    }
    requestEnd = pipe.syncAt + 5;
  }
  const session = client.shardSession();
  // Each statement's target, as if sent alone; statements that only follow (session and
  // transaction control, no table) go wherever the others go.
  let target: ShardTarget | null = null;
  let split = false;
  let endsTransaction = false;
  let sets = false;
  let shows = false;
  let others = false;
  const shards = new Set<number>();
  for (const u of units) {
    const a = u.analysis;
    if (a === null || a.info.ast === null) continue;
    const stmt = a.info.ast.stmts[0]?.stmt;
    const kind = stmt === undefined ? "" : Object.keys(stmt)[0];
    if (kind === "CopyStmt") return null; // COPY data follows the request: it runs whole
    if (kind === "TransactionStmt") {
      const tx = a.info.transaction;
      if (tx === "savepoint" || tx === "begin" || tx === "begin_read_only") split = true;
      else endsTransaction = true;
      continue;
    }
    if (kind === "VariableSetStmt" || kind === "VariableShowStmt") {
      const name = (stmt![kind] as { name?: string }).name ?? "";
      if (name.toLowerCase().startsWith("pgdog.")) split = true; // pgdog answers these
      if (kind === "VariableSetStmt") sets = true;
      else shows = others = true;
      continue;
    }
    others = true;
    if (kind === "DeallocateStmt" || kind === "DiscardStmt") split = true;
    const lookup: ShardLookup = { found: [], pluginShards: new Map(), missing: [] };
    const d = decideShard(a, { config, session, bind: u.bind ?? undefined, lookup });
    if (d.unsupported !== undefined || lookup.missing.length > 0) split = true;
    // A statement whose shards' answers are merged runs as a request of its own, as does one
    // that runs a statement of its own on each shard (a split INSERT, a row's move).
    if (d.merge !== undefined || d.splitInsert !== undefined || d.keyUpdate !== undefined) {
      split = true;
    }
    const t = d.target;
    if (t.kind === "one") shards.add(t.shard);
    else if (t.kind === "some") { for (const n of t.shards) shards.add(n); }
    else if (t.kind === "all") { for (let n = 0; n < config.shards; n++) shards.add(n); }
    if (target === null) target = t;
    else if (!sameTarget(target, t)) split = true;
  }
  // COMMIT or ROLLBACK must reach every shard the transaction holds, not only these.
  if (
    !split && endsTransaction &&
    client.heldShards().some((n) => !shards.has(n))
  ) split = true;
  // A SET must reach every shard the client holds, a SHOW answer once: each runs on its own
  // when the request as a whole would not do that (it goes where its other statements go).
  const held = client.heldShards();
  const reached = shards.size > 0 ? shards : new Set(held.slice(0, 1));
  if (sets && others && held.some((n) => !reached.has(n))) split = true;
  if (shows && shards.size > 1) split = true;
  if (!split) return null;
  let size = 0;
  for (const u of units) size += u.bytes.length + (type === Msg.Query ? 0 : 5);
  const bytes = new Uint8Array(size);
  const ends: number[] = [];
  let at = 0;
  for (let i = 0; i < units.length; i++) {
    bytes.set(units[i].bytes, at);
    at += units[i].bytes.length;
    if (type !== Msg.Query) {
      bytes.set(SEGMENT_SYNC, at);
      at += 5;
    }
    ends.push(p + at);
  }
  return { from: p, to: requestEnd, bytes, ends, shards: [...shards].sort((a, b) => a - b) };
}

/**
 * A request of one statement that must still run as a split request: a multi-row INSERT split by
 * shard, or an UPDATE moving a row to another shard, outside a transaction (it needs the implicit
 * transaction on every shard it writes, ended by Checkout.endImplicit). Null for every other
 * request.
 */
function loneRequest(
  request: { type: number; buf: Uint8Array; p: number; end: number; bufferEnd: number },
  client: SplitClient,
): SplitPlan | null {
  const config = client.sharding!;
  if (config.splitInserts !== "rewrite" && config.shardKey !== "rewrite") return null;
  if (client.txStatus() !== TxStatus.Idle) return null;
  const { type, buf, p, end } = request;
  let analysis: Analysis | null = null;
  let bind: BindValues | null = null;
  // The Bind's values are decoded only for an INSERT or UPDATE (most requests are neither).
  let bindAt: [number, number] | null = null;
  let to: number;
  if (type === Msg.Query) {
    // Most queries are told apart by their first letter, before any decoding.
    let at = p + 5;
    while (at < end && buf[at] <= 0x20) at++;
    const first = buf[at] | 0x20;
    if (first !== 0x69 && first !== 0x75 && buf[at] !== 0x2f && buf[at] !== 0x2d) return null;
    const sql = decodeText(buf, p + 5, end - 1);
    if (!INSERT_START.test(sql)) return null;
    analysis = client.router.analyze(sql);
    to = end;
  } else {
    // Parse, Bind, Describe, Execute up to the Sync: the one execution's statement and values.
    // Statements this request parses (null: neither an INSERT nor an UPDATE), by name.
    const parsed = new Map<string, Analysis | null>();
    let q = p;
    for (;;) {
      if (request.bufferEnd - q < 5) return null;
      const next = q + readInt32(buf, q + 1) + 1;
      if (next > request.bufferEnd) return null;
      const t = buf[q];
      if (t === Msg.Parse) {
        const sql = parseQuery(buf, q, next);
        parsed.set(
          parseName(buf, q, next),
          INSERT_START.test(sql) ? client.router.analyze(sql) : null,
        );
      } else if (t === Msg.Bind) {
        const name = bindStatementName(buf, q, next);
        if (parsed.has(name)) analysis = parsed.get(name)!;
        else {
          // With its pgdog.unique_id() ids, as routing sees it (the same text: same Bind offset).
          const run = client.forwarder.uniqueIdRun(name, q);
          analysis = run !== null ? client.router.analyze(run) : client.statementAnalysis(name);
        }
        bindAt = [q, next];
      } else if (t === Msg.Sync) {
        to = next;
        break;
      } else if (t !== Msg.Describe && t !== Msg.Execute && t !== Msg.Close) return null;
      q = next;
    }
  }
  if (analysis === null) return null;
  const kind = Object.keys(analysis.info.ast?.stmts[0]?.stmt ?? {})[0];
  if (kind !== "InsertStmt" && kind !== "UpdateStmt") return null;
  if (bindAt !== null) bind = bindValues(buf, bindAt[0], bindAt[1]);
  const shards = loneSplitInsert(analysis, {
    config,
    session: client.shardSession(),
    bind,
  });
  if (shards === null) return null;
  return {
    from: p,
    to,
    bytes: buf.slice(p, to),
    ends: [to],
    shards: [...shards].sort((a, b) => a - b),
  };
}

/** A statement that may be an INSERT or UPDATE (comments and blanks before it aside). */
const INSERT_START = /^\s*(?:\/\*[\s\S]*?\*\/\s*|--[^\n]*\n\s*)*(?:insert|update)\b/i;

/** A statement that raises `fields` on the server (in the transaction it runs in). */
export function raiseSql(fields: ErrorFields): string {
  const lit = (v: string): string => `'${v.replaceAll("'", "''")}'`;
  let using = `ERRCODE = ${lit(fields.code)}, MESSAGE = ${lit(fields.message)}`;
  if (fields.detail) using += `, DETAIL = ${lit(fields.detail)}`;
  if (fields.hint) using += `, HINT = ${lit(fields.hint)}`;
  return `DO $pgdog$ BEGIN RAISE EXCEPTION USING ${using}; END $pgdog$`;
}

const PORTAL_SUSPENDED = new MessageBuilder(8).begin(Msg.PortalSuspended).end().build();

/** CommandComplete `INSERT 0 n`. */
function insertTag(n: number): Uint8Array {
  return new MessageBuilder(32).begin(Msg.CommandComplete).cstring(`INSERT 0 ${n}`).end().build();
}

/** What running a split request asks of the client. */
export interface SplitHost {
  readonly rbuf: MessageBuffer;
  readonly closed: boolean;
  /** Where answers to the client go (a split request puts a BlockWriter in front). */
  writer: SocketWriter;
  /** A BEGIN held back (IMPLICIT_BEGIN: pgdog's, for the implicit transaction). */
  deferredBegin: Uint8Array | null;
  skipUntilSync: boolean;
  /** Set false: the client is between requests. */
  set inRequest(inRequest: boolean);
  txStatus(): number;
  /** The shards the client's transaction holds. */
  heldShards(): number[];
  /** Writes what the batch collected for the server. */
  send(): Promise<void>;
  /** Ends a batch left open by a Flush before the server is left. */
  closeBatch(): Promise<void>;
  /** Waits until the server has answered everything sent. */
  settle(): Promise<void>;
  /** Takes a server of shard `n` (the attached one is parked); false when that failed (told). */
  useShard(n: number): Promise<boolean>;
  /** Ends the implicit transaction on every server it reached; returns the first error. */
  endImplicit(commit: boolean): Promise<ErrorFields | null>;
  /** The transaction ended. */
  transactionOver(): void;
}

/** Runs one client's split requests. */
export class SplitRunner {
  readonly #host: SplitHost;
  /** The split request running, if any. */
  current: SplitRun | null = null;

  constructor(host: SplitHost) {
    this.#host = host;
  }

  /**
   * Starts a split request: its statements replace it in the read buffer, each as a request of
   * its own (simple queries one statement each; extended-protocol executions each closed by a
   * Sync of pgdog's), the servers of every shard it needs are taken in shard order (a client
   * never holds one shard while waiting for a lower one), and outside a transaction pgdog opens
   * one, as PostgreSQL runs such a request in an implicit transaction.
   */
  async start(plan: SplitPlan): Promise<void> {
    const h = this.#host;
    const rb = h.rbuf;
    // What the client sent before must be answered before its servers are set aside.
    await h.send();
    await h.closeBatch();
    await h.settle();
    if (h.closed) return;
    rb.replace(plan.from, plan.to, plan.bytes);
    const last = plan.ends[plan.ends.length - 1];
    const implicit = h.txStatus() === TxStatus.Idle;
    if (implicit) h.deferredBegin = IMPLICIT_BEGIN;
    const held = h.heldShards();
    for (const n of plan.shards) {
      if (held.includes(n)) continue;
      const ok = await h.useShard(n);
      if (h.closed) return;
      if (!ok) {
        // The error is queued; the request is not run at all.
        rb.start = last;
        if (implicit) await h.endImplicit(false);
        h.writer.enqueue(readyForQuery(h.txStatus() as TxStatus));
        return;
      }
      await h.send();
    }
    const writer = new BlockWriter(h.writer, {
      sumInserts: plan.sumInserts === true,
      rowDescriptions: plan.rowDescriptions,
      returning: plan.returning,
    });
    h.writer = asSocketWriter(writer);
    this.current = { ends: plan.ends, next: 0, writer, implicit };
  }

  /** One statement of the split request is answered: go on, skip the rest after an error, or end. */
  async step(split: SplitRun): Promise<void> {
    const h = this.#host;
    await h.send();
    await h.settle();
    const rb = h.rbuf;
    split.next++;
    const abort = split.writer.abort;
    if (abort !== null && !split.writer.failed) {
      // The rows can't be answered: the statement fails as PostgreSQL's would, failing the
      // transaction on a shard (a statement raising the error replaces the rest).
      split.writer.abort = null;
      const raise = queryMessage(raiseSql(abort));
      rb.replace(rb.start, split.ends[split.ends.length - 1], raise);
      split.ends = [...split.ends.slice(0, split.next), rb.start + raise.length];
      return;
    }
    const last = split.ends[split.ends.length - 1];
    if (split.writer.failed && split.next < split.ends.length) {
      // PostgreSQL stops at the first error: the rest of the request is not run.
      rb.start = last;
      split.next = split.ends.length;
      h.skipUntilSync = false;
      h.inRequest = false;
    }
    if (split.next < split.ends.length) {
      // After a COMMIT or ROLLBACK in the request, what follows runs in a new implicit transaction.
      if (h.txStatus() === TxStatus.Idle && h.deferredBegin === null) {
        h.deferredBegin = IMPLICIT_BEGIN;
        split.implicit = true;
      }
      return;
    }
    this.current = null;
    h.writer = split.writer.target;
    const inserted = split.writer.inserted;
    if (inserted !== null && !split.writer.failed) {
      const { rows, suspended } = split.writer.takeRows();
      if (rows.length > 0) h.writer.enqueue(rows);
      h.writer.enqueue(suspended ? PORTAL_SUSPENDED : insertTag(inserted));
    }
    if (
      split.implicit && h.deferredBegin !== IMPLICIT_BEGIN && h.txStatus() !== TxStatus.Idle
    ) {
      const error = await h.endImplicit(!split.writer.failed);
      if (error !== null) {
        const b = new MessageBuilder(128);
        appendError(b, error);
        h.writer.enqueue(b.build());
      }
    } else if (split.implicit && h.deferredBegin === IMPLICIT_BEGIN) {
      // Nothing reached a server: there is no transaction to end.
      h.deferredBegin = null;
      h.transactionOver();
    }
    if (h.closed) return;
    h.writer.enqueue(readyForQuery(h.txStatus() as TxStatus));
  }
}
