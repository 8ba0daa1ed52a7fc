/**
 * A split multi-row INSERT (`[rewrite] split_inserts = "rewrite"`, planned by
 * src/router/split_insert.ts) on its way through fan-out: each shard gets its own INSERT (as a
 * Query, or parsed as a shared statement and bound with the client's values for its parameters,
 * in the client's formats), and the client gets one answer as if one statement ran: one
 * RowDescription, the RETURNING rows in the order of the VALUES list, `INSERT 0 n` with n summed.
 * It runs in a transaction on every shard it writes (the client's, or the implicit one of a split
 * request, see split_request.ts), so an error on any shard leaves nothing of it anywhere. A row's
 * move to another shard (key_move.ts) runs the same way: an INSERT on one shard, a DELETE on the
 * other, answered `UPDATE 1` with the INSERT's row.
 *
 * @module
 */

import { Action, Expect } from "../backend/response_queue.ts";
import type { Server } from "../backend/server.ts";
import { MessageBuilder, Msg, queryMessage, readInt16, readInt32 } from "../protocol/messages.ts";
import type { SplitInsertPlan, SplitInsertStatement } from "../router/split_insert.ts";
import type { Analysis } from "../router/mod.ts";
import type { Node } from "../router/analyze.ts";
import { mayCallUniqueId } from "../router/unique_id_calls.ts";
import {
  type BindValues,
  decideShard,
  type ShardingConfig,
  type ShardLookup,
  type ShardSession,
} from "../router/shard.ts";
import type { OutBatch } from "./out_batch.ts";
import { MergeError } from "../cross_shard/errors.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { ClientStatement, type PreparedCache } from "./prepared.ts";

/** What a split INSERT reads of the client. */
export interface InsertSplitClient {
  /** The process's shared statements (each shard's INSERT is prepared as one of them). */
  readonly prepared: PreparedCache;
  /** The Parse message of the client's statement `name` ("" unnamed), for its parameter types. */
  statementParse(name: string): Uint8Array | null;
  /**
   * The execution of statement `name` the Bind at `p` runs, when it calls pgdog.unique_id()
   * (see UniqueIdStatements.execution): asked so the ids routing chose count as used.
   */
  uniqueIdRun(name: string, p: number): string | null;
  /** pgdog replaced the unnamed statement on servers of this request (see Forwarder). */
  forgetUnnamedServers(): void;
}

const decoder = new TextDecoder();

/** A Bind's parts, as sent. */
interface BindParts {
  portal: string;
  statement: string;
  formats: number[];
  values: (Uint8Array | null)[];
  resultFormats: number[];
}

/** Runs one split INSERT on its legs (see the module documentation). */
export class InsertSplitRun {
  readonly #client: InsertSplitClient;
  readonly #plan: SplitInsertPlan;
  /** Per leg: its statement. */
  readonly #legs: SplitInsertStatement[];
  /** Per leg: its RETURNING rows, in the order its statement has them. */
  readonly #rows: Uint8Array[][];
  /** The portal bound to the split statements in this request ("" included), or null. */
  #portal: string | null = null;
  /** A RowDescription (or NoData) of the split statements is owed; whether the client wants it. */
  #describe: { wanted: boolean } | null = null;
  /** A statement Describe's ParameterDescription went out: its RowDescription comes next. */
  #statementDescribed = false;
  /** The statements were executed; their rows are being collected. */
  #executing = false;
  /** The rows the client's Execute asks for (0: all): the portal is suspended after them. */
  #maxRows = 0;

  constructor(
    client: InsertSplitClient,
    options: { plan: SplitInsertPlan; shardIds: readonly number[] },
  ) {
    this.#client = client;
    this.#plan = options.plan;
    this.#legs = options.shardIds.map((n) => {
      const st = options.plan.statements.find((s) => s.shard === n);
      if (st === undefined) throw new Error(`split INSERT has no statement for shard ${n}`);
      return st;
    });
    this.#rows = this.#legs.map(() => []);
  }

  /** A request starts. */
  beginRequest(): void {
    this.#describe = null;
    this.#statementDescribed = false;
  }

  /** Portals outlive no request here (an INSERT's Execute runs it to the end). */
  holds(_name: string): boolean {
    return false;
  }
  /** See {@linkcode holds}. */
  get portals(): number {
    return 0;
  }
  /** See {@linkcode holds}. */
  portalNames(): IterableIterator<string> {
    return [][Symbol.iterator]();
  }
  /** See {@linkcode holds}. */
  forget(_name: string): void {}

  /** The client's Query: each leg gets its own (sent by {@linkcode send}). */
  querySubstitute(_sql: string): Uint8Array | null {
    return null;
  }

  /**
   * Queues the client's message at [p, end) of `buf` on every leg when the split changes it
   * (Query, the Bind of the INSERT, a Describe of its portal, its Execute): true; false: the
   * message is forwarded as usual.
   */
  send(
    type: number,
    buf: Uint8Array,
    options: { p: number; end: number; servers: readonly Server[]; outs: readonly OutBatch[] },
  ): boolean {
    const { p, end, servers, outs } = options;
    switch (type) {
      case Msg.Query:
        this.#describe = { wanted: true };
        this.#executing = true;
        this.#maxRows = 0;
        for (let i = 0; i < servers.length; i++) {
          outs[i].addBytes(queryMessage(this.#legs[i].sql));
          servers[i].expect(Expect.Query);
        }
        return true;
      case Msg.Bind: {
        if (this.#portal !== null) return false;
        const bind = readBind(buf, p, end);
        // The ids routing chose (in the plan's statements) are this execution's: used now.
        this.#client.uniqueIdRun(bind.statement, p);
        this.#bind(bind, { servers, outs });
        return true;
      }
      case Msg.Describe: {
        if (buf[p + 5] !== 0x50 || this.#portal === null) return false;
        if (decoder.decode(buf.subarray(p + 6, end - 1)) !== this.#portal) return false;
        // Every leg describes the portal at the Bind.
        this.#describe!.wanted = true;
        return true;
      }
      case Msg.Execute: {
        const nameEnd = buf.indexOf(0, p + 5);
        const name = decoder.decode(buf.subarray(p + 5, nameEnd));
        if (this.#portal === null || name !== this.#portal) return false;
        // An INSERT runs whole on every leg; the client gets the rows it asks for (routing
        // refused a limit that suspends the portal unless the portal ends at this request's Sync).
        this.#maxRows = nameEnd + 5 <= end ? Math.max(0, readInt32(buf, nameEnd + 1)) : 0;
        const execute = executeMessage(name);
        for (let i = 0; i < servers.length; i++) {
          outs[i].addBytes(execute);
          servers[i].expect(Expect.Execute);
        }
        this.#executing = true;
        return true;
      }
    }
    return false;
  }

  /** The INSERT's Bind: each leg binds its own statement with its rows' values, then describes it. */
  #bind(bind: BindParts, options: { servers: readonly Server[]; outs: readonly OutBatch[] }): void {
    const { servers, outs } = options;
    const declared = parameterTypes(this.#client.statementParse(bind.statement));
    const oneOff = this.#plan.oneOff === true;
    // (The client's unnamed statement, if the request parsed one, is no longer on these servers.)
    if (oneOff) this.#client.forgetUnnamedServers();
    for (let i = 0; i < servers.length; i++) {
      const st = this.#legs[i];
      const types = st.params.map((n) => declared[n - 1] ?? 0);
      const parse = parseMessage(st.sql, types);
      if (oneOff) {
        // Runs once: the unnamed statement (its errors are the client's answer).
        outs[i].addBytes(parse);
        servers[i].expect(Expect.Parse, Action.Inject);
        outs[i].addBytes(bindMessage(bind, { statement: "", params: st.params }));
        servers[i].expect(Expect.Bind);
      } else {
        const shared = this.#client.prepared.forParse(parse, 0, parse.length);
        const variant = shared.ownUse ??= new ClientStatement(shared);
        variant.use(servers[i], outs[i]);
        outs[i].addBytes(bindMessage(bind, { statement: shared.name, params: st.params }));
        servers[i].expect(Expect.Bind, Action.Forward, variant);
      }
      outs[i].addBytes(describePortal(bind.portal));
      servers[i].expect(Expect.DescribePortal);
    }
    this.#portal = bind.portal;
    this.#describe = { wanted: false };
  }

  /** Every leg's RowDescription, NoData or ParameterDescription, lined up: the client's, or null. */
  description(heads: readonly Uint8Array[]): Uint8Array | null {
    if (heads[0][0] === Msg.ParameterDescription) {
      this.#statementDescribed = true;
      return heads[0];
    }
    if (this.#statementDescribed) {
      this.#statementDescribed = false;
      return heads[0];
    }
    const owed = this.#describe;
    this.#describe = null;
    const by = this.#legs.findIndex((st) => st.shard === this.#plan.describedBy);
    return owed === null || owed.wanted ? heads[Math.max(0, by)] : null;
  }

  /** A RETURNING row of leg `i`: kept until every leg has answered (rows go out in VALUES order). */
  row(i: number, msg: Uint8Array): Uint8Array | null {
    if (this.#executing) this.#rows[i].push(msg);
    return null;
  }

  /** Rows are held until {@linkcode complete}. */
  legDone(_i: number): Uint8Array | null {
    return null;
  }

  /** Rows are held in full (an INSERT's RETURNING rows are as many as its VALUES rows). */
  backlog(_i: number): number {
    return 0;
  }

  /** Every leg's CommandComplete: the rows in VALUES order, then `INSERT 0 n`. */
  complete(heads: readonly Uint8Array[]): Uint8Array {
    if (!this.#executing) return heads[0];
    this.#executing = false;
    if (this.#plan.returning && this.#plan.tag === undefined) {
      const short = this.#legs.findIndex((st, i) =>
        st.rows.length > 0 && this.#rows[i].length !== st.rows.length
      );
      if (short >= 0) {
        const got = this.#rows[short].length;
        this.fail();
        // (The fan-out answers it and fails the shards' transaction, as PostgreSQL's would be.)
        throw new MergeError(
          SqlState.FeatureNotSupported,
          `a multi-row INSERT into ${this.#plan.table} split by shard: a shard returned ${got} ` +
            `rows for the ${this.#legs[short].rows.length} it was given (a trigger skipped or ` +
            "added rows), so the order of the rows returned can't be known: drop RETURNING",
        );
      }
    }
    const ordered: (Uint8Array | undefined)[] = new Array(this.#plan.rowCount);
    for (let i = 0; i < this.#legs.length; i++) {
      const rows = this.#legs[i].rows;
      // (A leg whose rows the client doesn't get, a moved row's DELETE, has none listed.)
      this.#rows[i].forEach((row, j) => {
        if (j < rows.length) ordered[rows[j]] = row;
      });
      this.#rows[i] = [];
    }
    let total = 0;
    for (let i = 0; i < heads.length; i++) {
      const tag = decoder.decode(heads[i].subarray(5, heads[i].length - 1));
      const n = Number(tag.slice(tag.lastIndexOf(" ") + 1));
      if (Number.isInteger(n) && this.#legs[i].rows.length > 0) total += n;
    }
    const out = new MessageBuilder(256);
    const max = this.#maxRows;
    let count = 0;
    for (const row of ordered) {
      if (row === undefined) continue;
      if (max > 0 && count === max) break;
      out.bytes(row);
      count++;
    }
    // As PostgreSQL: the rows asked for reached, the portal is suspended (its rest never asked).
    if (max > 0 && count === max) out.begin(Msg.PortalSuspended).end();
    else out.begin(Msg.CommandComplete).cstring(`${this.#plan.tag ?? "INSERT 0"} ${total}`).end();
    return out.build();
  }

  /** The statement failed on a leg: its rows are dropped. */
  fail(): void {
    this.#executing = false;
    for (let i = 0; i < this.#rows.length; i++) this.#rows[i] = [];
  }
}

/**
 * The max rows of the first Execute in the buffered request from `p` (0 when none, or when it
 * asks for every row) and how many Executes it holds, up to its Sync, Flush or a Query (`end`:
 * where the buffered bytes end).
 */
export function executeLimits(
  buf: Uint8Array,
  p: number,
  end: number,
): { maxRows: number; executes: number } {
  let maxRows = 0;
  let executes = 0;
  while (end - p >= 5) {
    const type = buf[p];
    const next = p + readInt32(buf, p + 1) + 1;
    if (next > end || type === Msg.Sync || type === Msg.Flush || type === Msg.Query) break;
    if (type === Msg.Execute) {
      const nameEnd = buf.indexOf(0, p + 5);
      if (executes++ === 0 && nameEnd > 0 && nameEnd + 5 <= next) {
        maxRows = Math.max(0, readInt32(buf, nameEnd + 1));
      }
    }
    p = next;
  }
  return { maxRows, executes };
}

/** A Bind's parts. */
function readBind(buf: Uint8Array, p: number, end: number): BindParts {
  const portalEnd = buf.indexOf(0, p + 5);
  const stmtEnd = buf.indexOf(0, portalEnd + 1);
  let q = stmtEnd + 1;
  const nFormats = readInt16(buf, q);
  const formats: number[] = [];
  for (let i = 0; i < nFormats; i++) formats.push(readInt16(buf, q + 2 + 2 * i));
  q += 2 + 2 * nFormats;
  const n = readInt16(buf, q);
  q += 2;
  const values: (Uint8Array | null)[] = [];
  for (let i = 0; i < n; i++) {
    const len = readInt32(buf, q);
    q += 4;
    if (len < 0) values.push(null);
    else {
      values.push(buf.subarray(q, q + len));
      q += len;
    }
  }
  const nResults = q + 2 <= end ? readInt16(buf, q) : 0;
  const resultFormats: number[] = [];
  for (let i = 0; i < nResults; i++) resultFormats.push(readInt16(buf, q + 2 + 2 * i));
  return {
    portal: decoder.decode(buf.subarray(p + 5, portalEnd)),
    statement: decoder.decode(buf.subarray(portalEnd + 1, stmtEnd)),
    formats,
    values,
    resultFormats,
  };
}

/** The parameter type OIDs a Parse message declares (empty when unknown). */
function parameterTypes(parse: Uint8Array | null): number[] {
  if (parse === null) return [];
  const nameEnd = parse.indexOf(0, 5);
  const q = parse.indexOf(0, nameEnd + 1) + 1;
  const n = readInt16(parse, q);
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(readInt32(parse, q + 2 + 4 * i));
  return out;
}

/** An unnamed Parse of `sql` with these parameter types (the shared cache names it). */
function parseMessage(sql: string, types: number[]): Uint8Array {
  const b = new MessageBuilder(sql.length * 3 + 16 + 4 * types.length)
    .begin(Msg.Parse).cstring("").cstring(sql).int16(types.length);
  for (const t of types) b.int32(t);
  return b.end().build();
}

/** The client's Bind of a leg's statement: its parameters picked (`params`, 1-based), in their formats. */
function bindMessage(
  bind: BindParts,
  options: { statement: string; params: number[] },
): Uint8Array {
  const { formats, values } = bind;
  const formatOf = (n: number): number =>
    formats.length === 0 ? 0 : formats.length === 1 ? formats[0] : formats[n - 1] ?? 0;
  const b = new MessageBuilder(256).begin(Msg.Bind).cstring(bind.portal).cstring(options.statement);
  b.int16(options.params.length);
  for (const n of options.params) b.int16(formatOf(n));
  b.int16(options.params.length);
  for (const n of options.params) {
    const value = values[n - 1] ?? null;
    if (value === null) b.int32(-1);
    else b.int32(value.length).bytes(value);
  }
  b.int16(bind.resultFormats.length);
  for (const f of bind.resultFormats) b.int16(f);
  return b.end().build();
}

/** A Describe of portal `name`. */
function describePortal(name: string): Uint8Array {
  return new MessageBuilder(16 + name.length * 3).begin(Msg.Describe).byte(0x50).cstring(name)
    .end().build();
}

/** An Execute of portal `name`, for all its rows. */
function executeMessage(name: string): Uint8Array {
  return new MessageBuilder(16 + name.length * 3).begin(Msg.Execute).cstring(name).int32(0).end()
    .build();
}

/**
 * A request of one statement that is a multi-row INSERT to split (`split_inserts = "rewrite"`), or
 * an UPDATE that moves a row to another shard (`shard_key = "rewrite"`):
 * the shards its rows go to, as far as known before plugin hashers and pgdog.unique_id() ids are
 * in (the statement is decided again when it runs); null when it is not one. Outside a
 * transaction such a request runs as a split request, in an implicit transaction on every shard
 * it writes (see split_request.ts).
 */
export function loneSplitInsert(
  analysis: Analysis,
  options: { config: ShardingConfig; session: ShardSession; bind: BindValues | null },
): number[] | null {
  const { config } = options;
  const stmts = analysis.info.ast?.stmts ?? [];
  const stmt = stmts.length === 1 ? stmts[0].stmt : undefined;
  const insert = stmt?.InsertStmt as Node | undefined;
  const select = (insert?.selectStmt as { SelectStmt?: Node } | undefined)?.SelectStmt;
  const rows = select?.valuesLists as Node[] | undefined;
  const splits = config.splitInserts === "rewrite" && rows !== undefined && rows.length > 1;
  // An UPDATE that may move a row (it sets a sharding key: decided below).
  const update = stmt?.UpdateStmt as { targetList?: Node[] } | undefined;
  const moves = config.shardKey === "rewrite" && update !== undefined &&
    (update.targetList ?? []).some((t) => {
      const name = (t.ResTarget as { name?: string }).name;
      return config.tables.some((table) => table.column === name);
    });
  if (!splits && !moves) return null;
  const lookup: ShardLookup = {
    found: [],
    pluginShards: new Map(),
    missing: [],
    missingColumns: [],
  };
  const d = decideShard(analysis, {
    config,
    session: options.session,
    bind: options.bind ?? undefined,
    lookup,
  });
  if (d.splitInsert !== undefined) return d.splitInsert.statements.map((s) => s.shard);
  if (d.keyUpdate !== undefined) return [d.keyUpdate.from, d.keyUpdate.to];
  if (moves) return lookup.missing.length > 0 ? [] : null;
  // Plugin hashers not asked yet, the column order not read yet, or ids not made yet: decided
  // when it runs.
  if (
    lookup.missing.length > 0 || lookup.missingColumns!.length > 0 ||
    mayCallUniqueId(analysis.entry.query)
  ) return [];
  return null;
}
