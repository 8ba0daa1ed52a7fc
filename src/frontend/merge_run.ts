/**
 * A cross-shard statement on its way through fan-out: what the shards are sent instead of the
 * client's messages (the plan's shard SQL, a Bind of it with result formats for its columns, a
 * Describe of the portal so every shard's row types are known), and the merge of their answers
 * by the plan (src/cross_shard/pipeline.ts): rows in as each shard sends them, the client's rows
 * out as soon as the merge can give them.
 *
 * Each Query or Bind of the merged statement is an execution of its own (a pipeline); each
 * Execute of a bound portal is answered in order. An Execute with a row limit ends in
 * PortalSuspended once the client has its rows, as PostgreSQL's does, and the portal lives on
 * (with its run) for the next Execute, in this request or a later one: where the merge streams,
 * the shards' portals are executed in batches too (each asked for about the rows the merge still
 * needs from it), otherwise they run to completion and the merge keeps the rest.
 *
 * An EXPLAIN of the merged statement runs `EXPLAIN (the client's options) <shard SQL>` on every
 * shard; the client gets the first shard's plan, or with `expanded_explain` every shard's plan
 * under a line naming the shard, then pgdog's routing and merge steps.
 *
 * @module
 */

import { Action, Expect } from "../backend/response_queue.ts";
import type { Server } from "../backend/server.ts";
import { MergeError } from "../cross_shard/errors.ts";
import type { MergePlan } from "../cross_shard/plan.ts";
import { resolveCount } from "../cross_shard/limit.ts";
import { parseDataRow } from "../cross_shard/rows.ts";
import { describeMergePlan } from "../router/merge_plan.ts";
import { MergePipeline } from "../cross_shard/pipeline.ts";
import {
  type ColumnCollations,
  textAggregateRefusal,
  withColumnCollations,
} from "../cross_shard/column_collations.ts";
import type { Collation } from "../cross_shard/values.ts";
import {
  type ErrorFields,
  MessageBuilder,
  Msg,
  queryMessage,
  readInt16,
  readInt32,
  writeInt32,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { OutBatch } from "./out_batch.ts";
import { type ExplainText, explainText } from "./explain_text.ts";
import { ClientStatement, type PreparedCache, type PreparedStatement } from "./prepared.ts";

/** What a run reads of the client. */
export interface MergeClient {
  /** The process's shared statements (the shard SQL is prepared as one of them). */
  readonly prepared: PreparedCache;
  /**
   * The Parse message (type byte included) that made the client's statement `name` ("" for the
   * unnamed one), for its parameter types; null when pgdog doesn't know it.
   */
  statementParse(name: string): Uint8Array | null;
}

/** How the shards' rows are merged. */
export interface MergeRunOptions {
  plan: MergePlan;
  /** Number of legs. */
  shards: number;
  /** The shard of each leg. */
  shardIds: readonly number[];
  /** `expanded_explain`: an EXPLAIN shows every shard's plan and pgdog's steps. */
  expandedExplain: boolean;
  /** `cross_shard_buffer_limit`. */
  bufferLimit: number;
  /** The database's collation. */
  collation: Collation;
  /** Table columns with a collation of their own (sort keys on them compare by it). */
  columnCollations?: ColumnCollations;
}

/** An EXPLAIN of the merged statement: the shards explain their SQL; their plans are shown. */
interface Explain {
  /** The client's EXPLAIN options, as written. */
  options: string;
  format: string;
}

/** One Query, or one Bind of the merged statement (a portal, executed by one or more Executes). */
interface Execution {
  /** Null until its row types are known (and after it failed). */
  pipeline: MergePipeline | null;
  /** Made at the first shard RowDescription. */
  /** Makes its pipeline, given a shard's RowDescription. */
  readonly make: (shardDescription: Uint8Array) => MergePipeline;
  /** The client asked for the row description (a Query, or its own Describe of the portal). */
  describe: boolean;
  /** The client's RowDescription, once known (a later Describe of the portal answers it). */
  description: Uint8Array | null;
  /** Why it can't run merged, raised at its first answer. */
  refusal?: MergeError;
  readonly params: (string | null)[];
  /** Executes queued so far (the first one also skips the OFFSET's rows). */
  executes: number;
  /** Fetched in parts while the shards run to completion: waiting rows count as held. */
  limited: boolean;
  /** The request it was bound in. */
  readonly request: number;
  /** An EXPLAIN: each leg's plan lines (DataRows), shown at the end. */
  readonly explain: Explain | null;
  readonly plans: Uint8Array[][];
}

/** An answer of the merged statement the legs owe, in order: a row description or an Execute's. */
type Owed =
  | { kind: "describe"; exec: Execution; again: boolean }
  | { kind: "execute"; exec: Execution; max: number; sent: number };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const PORTAL_SUSPENDED = Uint8Array.of(Msg.PortalSuspended, 0, 0, 0, 4);

/**
 * Whether a plan's rows stream (no aggregate, no DISTINCT, no sort pgdog must do itself): then a
 * row-limited Execute needs only about as many rows from each shard, so the shards' portals are
 * executed in batches too; otherwise the shards run them to completion and the merge keeps what
 * the client has not fetched yet.
 */
function streams(plan: MergePlan): boolean {
  return plan.aggregate === null && plan.distinct === null &&
    (plan.orderBy.length === 0 || plan.shardsSorted);
}

/**
 * Runs one merged statement's executions (see the module documentation). A run lives as long as
 * its portals: a row-limited Execute leaves its portal suspended, and later requests that
 * execute it again ({@linkcode holds}) run on the same legs with the same run.
 */
export class MergeRun {
  readonly #options: MergeRunOptions;
  readonly #client: MergeClient;
  /** The client's portals bound to the merged statement, by name. */
  readonly #portals = new Map<string, Execution>();
  /** What the legs owe of the merged statement in the request being answered, in order. */
  #owed: Owed[] = [];
  /** Per leg: it finished the current execution (its CommandComplete was seen). */
  readonly #legDone: boolean[];
  readonly #out = new MessageBuilder(8192);
  /** A statement's ParameterDescription went out: its RowDescription or NoData comes next. */
  #statementDescribed = false;
  /** The shard SQL, prepared as a shared statement (extended protocol). */
  #variant: ClientStatement | null = null;
  /** Requests run so far. */
  #request = 0;

  constructor(client: MergeClient, options: MergeRunOptions) {
    this.#client = client;
    this.#options = options;
    this.#legDone = new Array(options.shards).fill(false);
  }

  /** A request starts (its messages are about to be queued on the legs). */
  beginRequest(): void {
    this.#request++;
    this.#owed = [];
    this.#legDone.fill(false);
    this.#statementDescribed = false;
  }

  /** Portal `name` is one of this run's (a later request executing it comes back here). */
  holds(name: string): boolean {
    return this.#portals.has(name);
  }

  /** The portals this run keeps. */
  get portals(): number {
    return this.#portals.size;
  }

  /** The names of the portals this run keeps. */
  portalNames(): IterableIterator<string> {
    return this.#portals.keys();
  }

  /** Portal `name` no longer exists (closed, or bound again by something else). */
  forget(name: string): void {
    this.#portals.delete(name);
  }

  /**
   * Queues the client's message at [p, end) of `buf` on every leg when it is one the merge
   * changes, returning true; false: the message is forwarded as usual. Throws MergeError for what
   * can't run merged.
   */
  send(
    type: number,
    buf: Uint8Array,
    options: { p: number; end: number; servers: readonly Server[]; outs: readonly OutBatch[] },
  ): boolean {
    const { p, end, servers, outs } = options;
    switch (type) {
      case Msg.Query:
        // Sent as a substitute by the caller (see querySubstitute).
        return false;
      case Msg.Bind:
        this.#bind(buf, { p, end, servers, outs });
        return true;
      case Msg.Describe: {
        if (buf[p + 5] !== 0x50) return false;
        const exec = this.#portals.get(decoder.decode(buf.subarray(p + 6, end - 1)));
        if (exec === undefined) return false;
        if (exec.request === this.#request && exec.executes === 0) {
          // Bound in this request: every shard describes it anyway (see #bind).
          exec.describe = true;
          return true;
        }
        for (let i = 0; i < servers.length; i++) {
          outs[i].addRange(p, end);
          servers[i].expect(Expect.DescribePortal);
        }
        this.#owed.push({ kind: "describe", exec, again: true });
        return true;
      }
      case Msg.Close:
        if (buf[p + 5] === 0x50) this.#portals.delete(decoder.decode(buf.subarray(p + 6, end - 1)));
        return false;
      case Msg.Execute: {
        const nameEnd = buf.indexOf(0, p + 5);
        const name = decoder.decode(buf.subarray(p + 5, nameEnd));
        const exec = this.#portals.get(name);
        if (exec === undefined) return false;
        const asked = readInt32(buf, nameEnd + 1);
        const max = asked > 0 && exec.explain === null ? asked : 0;
        const earlier = this.#owed.some((o) => o.kind === "execute");
        for (let i = 0; i < servers.length; i++) {
          outs[i].addBytes(executeMessage(name, this.#legRows(exec, { max, leg: i, earlier })));
          servers[i].expect(Expect.Execute);
        }
        exec.executes++;
        if (max > 0 && !streams(this.#options.plan)) exec.limited = true;
        this.#owed.push({ kind: "execute", exec, max, sent: 0 });
        return true;
      }
    }
    return false;
  }

  /**
   * The rows a leg is asked for by an Execute of `max` rows (0: all): enough for the merge to
   * give `max` rows once every leg answered (each leg that is not done has that many waiting),
   * not many more.
   */
  #legRows(exec: Execution, options: { max: number; leg: number; earlier: boolean }): number {
    const { max, leg, earlier } = options;
    const plan = this.#options.plan;
    if (max === 0 || !streams(plan)) return 0;
    let want = max;
    if (exec.executes === 0) {
      try {
        want += resolveCount(plan.offset, { clause: "OFFSET", params: exec.params }) ?? 0;
      } catch {
        // The merge raises it.
      }
    }
    // With Executes before it in this request, what will wait is not known yet.
    if (earlier || exec.pipeline === null) return want;
    return Math.max(1, want - exec.pipeline.waiting(leg));
  }

  /** A Bind of the merged statement: bound to its shard SQL, then described, on every leg. */
  #bind(
    buf: Uint8Array,
    options: { p: number; end: number; servers: readonly Server[]; outs: readonly OutBatch[] },
  ): void {
    const { p, end, servers, outs } = options;
    const bind = readBind(buf, p, end);
    const plan = this.#options.plan;
    const parse = this.#client.statementParse(bind.statement);
    const clientSql = parse === null ? null : parseQueryText(parse);
    const explain = clientSql === null ? null : explainText(clientSql);
    const variant = this.#variantFor(bind, { parse, clientSql, explain });
    // The shards send each of their columns in the client's format for it where it is one of
    // the client's columns (rows, not aggregates); the merge converts the rest.
    const shardFormats = explain !== null
      ? bind.resultFormats
      : plan.aggregate === null
      ? spread(bind.resultFormats, plan)
      : [];
    const message = bindMessage(buf, {
      bind,
      statement: variant?.stmt.name ?? bind.statement,
      resultFormats: shardFormats,
    });
    const describe = describePortal(bind.portal);
    for (let i = 0; i < servers.length; i++) {
      const server = servers[i];
      const out = outs[i];
      if (variant !== null) variant.use(server, out);
      out.addBytes(message);
      server.expect(Expect.Bind, Action.Forward, variant ?? undefined);
      out.addBytes(describe);
      server.expect(Expect.DescribePortal);
    }
    const exec = this.#execution({
      params: bind.params,
      describe: false,
      shardFormats,
      resultFormats: bind.resultFormats,
      explain,
    });
    this.#portals.set(bind.portal, exec);
    this.#owed.push({ kind: "describe", exec, again: false });
  }

  /**
   * The shard SQL (or the client's own, when the plan keeps it; under EXPLAIN, explained with the
   * client's options) as a shared statement with the parameter types of the client's; null when
   * pgdog doesn't know the client's statement (it is bound as the client named it).
   */
  #variantFor(
    bind: BindParts,
    options: { parse: Uint8Array | null; clientSql: string | null; explain: ExplainText | null },
  ): ClientStatement | null {
    if (this.#variant !== null) return this.#variant;
    const { parse, clientSql, explain } = options;
    const sql = this.#shardSql(clientSql, explain);
    if (sql === null) return null;
    const message = parseMessage(sql, shardParameterTypes(sql, { parse, bind }));
    const stmt: PreparedStatement = this.#client.prepared.forParse(message, 0, message.length);
    const entry = stmt.ownUse ??= new ClientStatement(stmt);
    return this.#variant = entry;
  }

  /** What the shards run for the client's `sql` (null: unknown, theirs is the client's own). */
  #shardSql(sql: string | null, explain: ExplainText | null): string | null {
    const own = this.#options.plan.shardSql;
    if (explain === null) return own ?? sql;
    return `EXPLAIN ${explain.options} ${own ?? explain.statement}`;
  }

  #execution(
    options: {
      params: (string | null)[];
      describe: boolean;
      shardFormats?: number[];
      resultFormats?: number[];
      explain: ExplainText | null;
    },
  ): Execution {
    const { shards, bufferLimit, collation, columnCollations } = this.#options;
    const explain = options.explain;
    const exec: Execution = {
      pipeline: null,
      describe: options.describe,
      description: null,
      params: options.params,
      executes: 0,
      limited: false,
      request: this.#request,
      explain: explain === null ? null : { options: explain.options, format: explain.format },
      plans: explain === null ? [] : Array.from({ length: shards }, () => []),
      make: (description) => {
        const shardDescription = description;
        const plan = concrete(this.#options.plan, shardDescription);
        const refusal = columnCollations === undefined
          ? null
          : textAggregateRefusal(plan, { shardDescription, columns: columnCollations });
        if (refusal !== null) {
          throw new MergeError(SqlState.FeatureNotSupported, refusal, {
            hint: "route the query to one shard with /* pgdog_shard: N */, or aggregate in the " +
              "application",
          });
        }
        return new MergePipeline(
          columnCollations === undefined
            ? plan
            : withColumnCollations(plan, { shardDescription, columns: columnCollations }),
          {
            shards,
            bufferLimit,
            collation,
            params: options.params,
            shardFormats: options.shardFormats,
            resultFormats: options.resultFormats,
          },
        );
      },
    };
    if (explain !== null && explain.format !== "text") {
      exec.refusal = new MergeError(
        SqlState.FeatureNotSupported,
        `EXPLAIN (FORMAT ${explain.format.toUpperCase()}) of a cross-shard query is not supported`,
        { hint: "use FORMAT TEXT, or route the query to one shard with /* pgdog_shard: N */" },
      );
    }
    return exec;
  }

  /** The client's Query `sql` (the whole request): the Query the shards run instead, or null. */
  querySubstitute(sql: string): Uint8Array | null {
    const explain = explainText(sql);
    const exec = this.#execution({ params: [], describe: true, explain });
    this.#owed.push({ kind: "describe", exec, again: false });
    this.#owed.push({ kind: "execute", exec, max: 0, sent: 0 });
    exec.executes++;
    const shardSql = this.#shardSql(sql, explain);
    return shardSql === sql ? null : queryMessage(shardSql!);
  }

  /**
   * Every leg's RowDescription (or NoData) of the current execution, lined up: the one the
   * client gets, or null (it didn't ask). Throws MergeError.
   */
  description(heads: readonly Uint8Array[]): Uint8Array | null {
    if (heads[0][0] === Msg.ParameterDescription) {
      // A Describe of the client's statement: its rows are described as the client wrote it.
      this.#statementDescribed = true;
      return heads[0];
    }
    if (this.#statementDescribed) {
      this.#statementDescribed = false;
      return heads[0];
    }
    const owed = this.#owed[0];
    if (owed === undefined || owed.kind !== "describe") return heads[0];
    this.#owed.shift();
    const exec = owed.exec;
    if (exec.refusal !== undefined) throw exec.refusal;
    if (owed.again && exec.description !== null) return exec.description;
    if (heads[0][0] !== Msg.RowDescription || exec.explain !== null) {
      return exec.describe || owed.again ? heads[0] : null;
    }
    const pipeline = exec.pipeline ??= exec.make(heads[0]);
    let client: Uint8Array | null = null;
    for (let i = 0; i < heads.length; i++) {
      client = pipeline.rowDescription(i, heads[i]) ?? client;
    }
    exec.description = client;
    this.#legDone.fill(false);
    return exec.describe || owed.again ? client : null;
  }

  /** The execution whose rows are coming, with what it owes. */
  #executing(): Owed & { kind: "execute" } | null {
    const owed = this.#owed[0];
    return owed !== undefined && owed.kind === "execute" ? owed : null;
  }

  /** A DataRow of leg `i`: merged; what the client can have now is returned. Throws MergeError. */
  row(i: number, msg: Uint8Array): Uint8Array | null {
    const owed = this.#executing();
    if (owed === null) return null;
    if (owed.exec.explain !== null) {
      owed.exec.plans[i].push(msg);
      return null;
    }
    const pipeline = owed.exec.pipeline;
    if (!pipeline) return null;
    if (owed.exec.limited) pipeline.countWaiting();
    pipeline.row(i, msg);
    return this.#pull(pipeline, owed);
  }

  /** Leg `i`'s CommandComplete reached the head of its answers: its rows are all in. */
  legDone(i: number): Uint8Array | null {
    if (this.#legDone[i]) return null;
    this.#legDone[i] = true;
    const owed = this.#executing();
    const pipeline = owed?.exec.pipeline;
    if (!pipeline) return null;
    pipeline.shardDone(i);
    return this.#pull(pipeline, owed!);
  }

  /**
   * Rows of leg `i` waiting in the merge for another leg, which must send first (0 when the
   * merge is not waiting for one): the caller stops reading a leg far ahead of the others.
   */
  backlog(i: number): number {
    const owed = this.#executing();
    // A row-limited Execute asks each leg for about its rows only, and must see every leg's end.
    if (owed === null || owed.max > 0) return 0;
    const pipeline = owed.exec.pipeline;
    return pipeline && pipeline.blocked ? pipeline.waiting(i) : 0;
  }

  /**
   * Every leg's CommandComplete or PortalSuspended of the current Execute, lined up: the
   * client's last rows of it and its CommandComplete, or PortalSuspended when it got the rows it
   * asked for. The next answers come next. Throws MergeError.
   */
  complete(heads: readonly Uint8Array[]): Uint8Array {
    const owed = this.#executing();
    if (owed === null) return heads[0];
    this.#owed.shift();
    this.#legDone.fill(false);
    const exec = owed.exec;
    if (exec.explain !== null) return this.#explained(exec, heads);
    const pipeline = exec.pipeline;
    if (!pipeline) return heads[0];
    for (let i = 0; i < heads.length; i++) {
      if (heads[i][0] === Msg.CommandComplete) pipeline.shardDone(i);
    }
    const out = this.#out;
    owed.sent += pipeline.pull(out, owed.max === 0 ? Infinity : owed.max - owed.sent);
    if (owed.max > 0 && owed.sent === owed.max) out.bytes(PORTAL_SUSPENDED);
    else if (pipeline.finished) out.begin(Msg.CommandComplete).cstring(`SELECT ${owed.sent}`).end();
    else {
      out.reset();
      throw new MergeError(
        SqlState.InternalError,
        "cross-shard merge could not give the rows an Execute asked for",
      );
    }
    const bytes = out.build();
    out.reset();
    return bytes;
  }

  /** An EXPLAIN's answer: the shards' plans (each under its shard's name with expanded_explain). */
  #explained(exec: Execution, heads: readonly Uint8Array[]): Uint8Array {
    const out = this.#out;
    const { shardIds, expandedExplain, plan } = this.#options;
    const line = (text: string): void => {
      const bytes = encoder.encode(text);
      out.begin(Msg.DataRow).int16(1).int32(bytes.length).bytes(bytes).end();
    };
    if (!expandedExplain) {
      // As one database would answer: one plan (the first shard's); the rest are alike.
      for (const row of exec.plans[0]) out.bytes(row);
    } else {
      for (let i = 0; i < exec.plans.length; i++) {
        line(`Shard ${shardIds[i]}:`);
        for (const row of exec.plans[i]) {
          const field = parseDataRow(row)[0];
          line(`  ${field === null ? "" : decoder.decode(field)}`);
        }
      }
      line("");
      line("PgDog Routing:");
      line(`Summary: shard=${shardIds.join(",")} role=primary`);
      line(`PgDog ${describeMergePlan(plan)}`);
    }
    exec.plans.forEach((rows) => rows.length = 0);
    out.bytes(heads[0]);
    const bytes = out.build();
    out.reset();
    return bytes;
  }

  /** The current execution failed: its rows are dropped, and the rest of the request's. */
  fail(): void {
    const owed = this.#owed[0];
    if (owed !== undefined) owed.exec.pipeline = null;
    this.#owed = [];
  }

  #pull(pipeline: MergePipeline, owed: { max: number; sent: number }): Uint8Array | null {
    const out = this.#out;
    const left = owed.max === 0 ? Infinity : owed.max - owed.sent;
    if (left <= 0) return null;
    const n = pipeline.pull(out, left);
    if (n === 0) return null;
    owed.sent += n;
    const bytes = out.build();
    out.reset();
    return bytes;
  }
}

/** An Execute of portal `name` for at most `rows` rows (0: all). */
function executeMessage(name: string, rows: number): Uint8Array {
  const bytes = encoder.encode(name);
  const out = new Uint8Array(1 + 4 + bytes.length + 1 + 4);
  out[0] = Msg.Execute;
  writeInt32(out, 1, out.length - 1);
  out.set(bytes, 5);
  writeInt32(out, 5 + bytes.length + 1, rows);
  return out;
}

/** The ErrorResponse fields of a merge failure. */
export function mergeErrorFields(e: MergeError): ErrorFields {
  return { severity: "ERROR", code: e.code, message: e.message, detail: e.detail, hint: e.hint };
}

interface BindParts {
  portal: string;
  statement: string;
  /** Where the parameter formats start (after the statement name). */
  paramsAt: number;
  /** Where the result formats start. */
  resultsAt: number;
  params: (string | null)[];
  /** Per parameter: sent in binary. */
  binary: boolean[];
  resultFormats: number[];
}

/** A Bind's parts; parameter values in text (binary integers read as such, others null). */
function readBind(buf: Uint8Array, p: number, end: number): BindParts {
  const portalEnd = buf.indexOf(0, p + 5);
  const stmtEnd = buf.indexOf(0, portalEnd + 1);
  const portal = decoder.decode(buf.subarray(p + 5, portalEnd));
  const statement = decoder.decode(buf.subarray(portalEnd + 1, stmtEnd));
  let q = stmtEnd + 1;
  const paramsAt = q;
  const nFormats = readInt16(buf, q);
  const formats: number[] = [];
  for (let i = 0; i < nFormats; i++) formats.push(readInt16(buf, q + 2 + 2 * i));
  q += 2 + 2 * nFormats;
  const n = readInt16(buf, q);
  q += 2;
  const params: (string | null)[] = [];
  const binary: boolean[] = [];
  for (let i = 0; i < n; i++) {
    const len = readInt32(buf, q);
    q += 4;
    const format = nFormats === 0 ? 0 : nFormats === 1 ? formats[0] : formats[i];
    binary.push(format === 1);
    if (len < 0) {
      params.push(null);
      continue;
    }
    const value = buf.subarray(q, q + len);
    params.push(format === 0 ? decoder.decode(value) : binaryInteger(value));
    q += len;
  }
  const resultsAt = q;
  const nResults = q + 2 <= end ? readInt16(buf, q) : 0;
  const resultFormats: number[] = [];
  for (let i = 0; i < nResults; i++) resultFormats.push(readInt16(buf, q + 2 + 2 * i));
  return { portal, statement, paramsAt, resultsAt, params, binary, resultFormats };
}

/** A binary int2/int4/int8 parameter as text (LIMIT $1 and the like); null for other values. */
function binaryInteger(value: Uint8Array): string | null {
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
  if (value.length === 8) return view.getBigInt64(0).toString();
  if (value.length === 4) return String(view.getInt32(0));
  if (value.length === 2) return String(view.getInt16(0));
  return null;
}

/**
 * The result formats the shards get: the client's, where it gave one per column, spread over the
 * shard columns (hidden columns in text); else the client's own codes (none or one for all).
 */
function spread(formats: number[], plan: MergePlan): number[] {
  if (formats.length <= 1 || plan.passThrough) return formats;
  const out = new Array(plan.shardColumns).fill(0);
  for (let i = 0; i < plan.visible && i < formats.length; i++) out[i] = formats[i];
  return out;
}

/** The client's Bind with another statement name and result formats. */
function bindMessage(
  buf: Uint8Array,
  options: { bind: BindParts; statement: string; resultFormats: number[] },
): Uint8Array {
  const { bind, statement, resultFormats } = options;
  const portal = encoder.encode(bind.portal);
  const name = encoder.encode(statement);
  const params = buf.subarray(bind.paramsAt, bind.resultsAt);
  const size = 4 + portal.length + 1 + name.length + 1 + params.length + 2 +
    2 * resultFormats.length;
  const out = new Uint8Array(1 + size);
  out[0] = Msg.Bind;
  writeInt32(out, 1, size);
  let q = 5;
  out.set(portal, q);
  q += portal.length + 1;
  out.set(name, q);
  q += name.length + 1;
  out.set(params, q);
  q += params.length;
  const view = new DataView(out.buffer);
  view.setInt16(q, resultFormats.length);
  q += 2;
  for (const f of resultFormats) {
    view.setInt16(q, f);
    q += 2;
  }
  return out;
}

/** The query text of a Parse message. */
function parseQueryText(parse: Uint8Array): string {
  const nameEnd = parse.indexOf(0, 5);
  return decoder.decode(parse.subarray(nameEnd + 1, parse.indexOf(0, nameEnd + 1)));
}

/**
 * The parameter types the shard SQL is prepared with (count and OIDs): the client's, and for a
 * parameter the shard SQL no longer uses (a LIMIT $n or HAVING ... $n applied by the merge) a
 * type that takes whatever the Bind sends for it (text, or bytea for binary), since PostgreSQL
 * can't infer one and the Bind still carries the value.
 */
function shardParameterTypes(
  sql: string,
  options: { parse: Uint8Array | null; bind: BindParts },
): Uint8Array {
  const { parse, bind } = options;
  const declared: number[] = [];
  if (parse !== null) {
    const nameEnd = parse.indexOf(0, 5);
    const q = parse.indexOf(0, nameEnd + 1) + 1;
    const n = readInt16(parse, q);
    for (let i = 0; i < n; i++) declared.push(readInt32(parse, q + 2 + 4 * i));
  }
  const used = new Set<number>();
  for (const m of sql.matchAll(/\$(\d+)/g)) used.add(Number(m[1]));
  const count = Math.max(declared.length, bind.params.length);
  const out = new Uint8Array(2 + 4 * count);
  const view = new DataView(out.buffer);
  view.setInt16(0, count);
  for (let i = 0; i < count; i++) {
    let type = declared[i] ?? 0;
    if (type === 0 && !used.has(i + 1)) type = bind.binary[i] ? 17 : 25; // bytea, text
    view.setInt32(2 + 4 * i, type);
  }
  return out;
}

/** An unnamed Parse of `sql` with the given parameter types (count and OIDs). */
function parseMessage(sql: string, types: Uint8Array): Uint8Array {
  const text = encoder.encode(sql);
  const size = 4 + 1 + text.length + 1 + types.length;
  const out = new Uint8Array(1 + size);
  out[0] = Msg.Parse;
  writeInt32(out, 1, size);
  out.set(text, 6);
  out.set(types, 6 + text.length + 1);
  return out;
}

/** A Describe of portal `name`. */
function describePortal(name: string): Uint8Array {
  const bytes = encoder.encode(name);
  const out = new Uint8Array(1 + 4 + 1 + bytes.length + 1);
  out[0] = Msg.Describe;
  writeInt32(out, 1, out.length - 1);
  out[5] = 0x50;
  out.set(bytes, 6);
  return out;
}

/** `plan`, with a pass-through plan's columns counted from the shards' RowDescription. */
function concrete(plan: MergePlan, shardDescription: Uint8Array): MergePlan {
  if (!plan.passThrough) return plan;
  const columns = readInt16(shardDescription, 5);
  return { ...plan, shardColumns: columns, visible: columns };
}
