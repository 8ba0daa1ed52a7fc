/**
 * A cross-shard statement on its way through fan-out: what the shards are sent instead of the
 * client's messages (the plan's shard SQL, a Bind of it with result formats for its columns, a
 * Describe of the portal so every shard's row types are known), and the merge of their answers
 * by the plan (src/cross_shard/pipeline.ts): rows in as each shard sends them, the client's rows
 * out as soon as the merge can give them.
 *
 * One run serves one request; each Query or Bind of the merged statement in it is an execution
 * of its own, answered in order.
 *
 * @module
 */

import { Action, Expect } from "../backend/response_queue.ts";
import type { Server } from "../backend/server.ts";
import { MergeError } from "../cross_shard/errors.ts";
import type { MergePlan } from "../cross_shard/plan.ts";
import { MergePipeline } from "../cross_shard/pipeline.ts";
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
  /** `cross_shard_buffer_limit`. */
  bufferLimit: number;
  /** The database's collation. */
  collation: Collation;
}

/** One Query or Bind-Execute of the merged statement. */
interface Execution {
  /** Null until its row types are known (and after it failed). */
  pipeline: MergePipeline | null;
  /** Made at the first shard RowDescription. */
  readonly make: () => MergePipeline;
  /** The client asked for the row description (a Query, or its own Describe of the portal). */
  describe: boolean;
  /** Why it can't run merged, raised at its first answer. */
  refusal?: MergeError;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Runs one merged statement's executions of a request (see the module documentation). */
export class MergeRun {
  readonly #options: MergeRunOptions;
  readonly #client: MergeClient;
  readonly #executions: Execution[] = [];
  /** The execution whose answers are being lined up. */
  #current = 0;
  /** Per leg: it finished the current execution (its CommandComplete was seen). */
  readonly #legDone: boolean[];
  readonly #out = new MessageBuilder(8192);
  /** A statement's ParameterDescription went out: its RowDescription or NoData comes next. */
  #statementDescribed = false;
  /** The portal bound last (its Describe is answered from the merge). */
  #portal: string | null = null;
  /** The shard SQL, prepared as a shared statement (extended protocol). */
  #variant: ClientStatement | null = null;

  constructor(client: MergeClient, options: MergeRunOptions) {
    this.#client = client;
    this.#options = options;
    this.#legDone = new Array(options.shards).fill(false);
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
        // The portal just bound: every shard describes it anyway (see #bind).
        if (buf[p + 5] !== 0x50 || this.#portal === null) return false;
        if (decoder.decode(buf.subarray(p + 6, end - 1)) !== this.#portal) return false;
        const last = this.#executions[this.#executions.length - 1];
        if (last !== undefined) last.describe = true;
        return true;
      }
      case Msg.Execute: {
        const nameEnd = buf.indexOf(0, p + 5);
        const maxRows = readInt32(buf, nameEnd + 1);
        const last = this.#executions[this.#executions.length - 1];
        if (maxRows > 0 && last !== undefined) {
          // Raised when its answers come (the request is being queued now).
          last.refusal = new MergeError(
            SqlState.FeatureNotSupported,
            "fetching the rows of a cross-shard query in parts (Execute with a row limit) is " +
              "not supported yet",
            { hint: "fetch all rows at once, or route the query to one shard" },
          );
        }
        return false;
      }
    }
    return false;
  }

  /** A Bind of the merged statement: bound to its shard SQL, then described, on every leg. */
  #bind(
    buf: Uint8Array,
    options: { p: number; end: number; servers: readonly Server[]; outs: readonly OutBatch[] },
  ): void {
    const { p, end, servers, outs } = options;
    const bind = readBind(buf, p, end);
    const plan = this.#options.plan;
    const variant = this.#variantFor(bind);
    // The shards send each of their columns in the client's format for it where it is one of
    // the client's columns (rows, not aggregates); the merge converts the rest.
    const shardFormats = plan.aggregate === null ? spread(bind.resultFormats, plan) : [];
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
    this.#portal = bind.portal;
    this.#executions.push(this.#execution({
      params: bind.params,
      describe: false,
      shardFormats,
      resultFormats: bind.resultFormats,
    }));
  }

  /**
   * The shard SQL (or the client's own, when the plan keeps it) as a shared statement with the
   * parameter types of the client's; null when pgdog doesn't know the client's statement (it is
   * bound as the client named it).
   */
  #variantFor(bind: BindParts): ClientStatement | null {
    if (this.#variant !== null) return this.#variant;
    const parse = this.#client.statementParse(bind.statement);
    const sql = this.#options.plan.shardSql ?? (parse === null ? null : parseQueryText(parse));
    if (sql === null) return null;
    const message = parseMessage(sql, shardParameterTypes(sql, { parse, bind }));
    const stmt: PreparedStatement = this.#client.prepared.forParse(message, 0, message.length);
    const entry = (stmt as PreparedStatement & { merged?: ClientStatement }).merged ??=
      new ClientStatement(stmt);
    return this.#variant = entry;
  }

  #execution(
    options: {
      params: (string | null)[];
      describe: boolean;
      shardFormats?: number[];
      resultFormats?: number[];
    },
  ): Execution {
    const { plan, shards, bufferLimit, collation } = this.#options;
    return {
      pipeline: null,
      describe: options.describe,
      make: () =>
        new MergePipeline(plan, {
          shards,
          bufferLimit,
          collation,
          params: options.params,
          shardFormats: options.shardFormats,
          resultFormats: options.resultFormats,
        }),
    };
  }

  /** The client's Query (the whole request): the Query the shards run instead, or null. */
  querySubstitute(): Uint8Array | null {
    this.#executions.push(this.#execution({ params: [], describe: true }));
    const sql = this.#options.plan.shardSql;
    return sql === null ? null : queryMessage(sql);
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
    const exec = this.#executions[this.#current];
    if (exec === undefined) return heads[0];
    if (exec.refusal !== undefined) throw exec.refusal;
    if (heads[0][0] !== Msg.RowDescription) return exec.describe ? heads[0] : null;
    const pipeline = exec.pipeline ??= exec.make();
    let client: Uint8Array | null = null;
    for (let i = 0; i < heads.length; i++) {
      client = pipeline.rowDescription(i, heads[i]) ?? client;
    }
    this.#legDone.fill(false);
    return exec.describe ? client : null;
  }

  /** A DataRow of leg `i`: merged; what the client can have now is returned. Throws MergeError. */
  row(i: number, msg: Uint8Array): Uint8Array | null {
    const pipeline = this.#executions[this.#current]?.pipeline;
    if (!pipeline) return null;
    pipeline.row(i, msg);
    return this.#pull(pipeline);
  }

  /** Leg `i`'s CommandComplete reached the head of its answers: its rows are all in. */
  legDone(i: number): Uint8Array | null {
    if (this.#legDone[i]) return null;
    this.#legDone[i] = true;
    const pipeline = this.#executions[this.#current]?.pipeline;
    if (!pipeline) return null;
    pipeline.shardDone(i);
    return this.#pull(pipeline);
  }

  /**
   * Every leg's CommandComplete of the current execution, lined up: the client's last rows and
   * its CommandComplete. The next execution's answers come next.
   */
  complete(heads: readonly Uint8Array[]): Uint8Array {
    const exec = this.#executions[this.#current++];
    this.#legDone.fill(false);
    const pipeline = exec?.pipeline;
    if (!pipeline) return heads[0];
    for (let i = 0; i < heads.length; i++) pipeline.shardDone(i);
    const out = this.#out;
    pipeline.pull(out);
    out.begin(Msg.CommandComplete).cstring(`SELECT ${pipeline.rowCount}`).end();
    const bytes = out.build();
    out.reset();
    exec.pipeline = null;
    return bytes;
  }

  /** The current execution failed: its rows are dropped. */
  fail(): void {
    const exec = this.#executions[this.#current];
    if (exec !== undefined) exec.pipeline = null;
  }

  #pull(pipeline: MergePipeline): Uint8Array | null {
    const out = this.#out;
    if (pipeline.pull(out) === 0) return null;
    const bytes = out.build();
    out.reset();
    return bytes;
  }
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
  if (formats.length <= 1) return formats;
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
