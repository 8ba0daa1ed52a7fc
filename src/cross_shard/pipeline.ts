/**
 * One cross-shard statement's execution: the rows several shards send become the rows one
 * PostgreSQL database would send, by the stages of a {@linkcode MergePlan} (see `plan.ts`).
 * Bytes in, bytes out: the caller (fan-out) hands over each shard's RowDescription and DataRow
 * messages as they arrive and pulls the client's DataRows when it wants to write.
 *
 * How rows are held depends on the plan:
 * - no aggregate, no ORDER BY: rows go out in arrival order (a DISTINCT keeps a set of keys);
 * - no aggregate, ORDER BY the shards already sort by (`shardsSorted`): a streaming k-way merge,
 *   a row leaves as soon as no shard can still send a smaller one; a DISTINCT whose columns
 *   lead the ORDER BY only remembers the last row's key;
 * - otherwise (aggregates, or an ORDER BY the shards don't sort by) everything is held until
 *   every shard finished, then grouped, filtered, deduplicated and sorted (stable); with a LIMIT
 *   and no DISTINCT, a sort holds only the first OFFSET + LIMIT rows.
 * Held bytes count against `bufferLimit`: past it, 53200 (`cross_shard_buffer_limit`). Rows
 * waiting to stream (in arrival order, or in the k-way merge for a shard that is behind) don't:
 * the caller bounds them by reading less from a shard that is ahead ({@linkcode
 * MergePipeline.waiting}, {@linkcode MergePipeline.blocked}), unless it says it can't
 * ({@linkcode MergePipeline.countWaiting}).
 *
 * @module
 */

import type { MessageBuilder } from "../protocol/messages.ts";
import { MergeError } from "./errors.ts";
import { compositeKey, setOperationCount, toCount } from "./group.ts";
import { resolveCount, RowWindow } from "./limit.ts";
import { KWayMerge } from "./merge.ts";
import { TopN } from "./top_n.ts";
import type { AggregateFunction, MergePlan, SortKey } from "./plan.ts";
import {
  appendDataRow,
  buildRowDescription,
  type FieldDescription,
  type Fields,
  formatsPerColumn,
  parseDataRow,
  parseRowDescription,
  projectRowDescription,
} from "./rows.ts";
import {
  type Accumulator,
  type AggregateKind,
  type Collation,
  type ExprRow,
  type TypeOps,
  type Value,
  VALUE_MODULES,
  type ValueModules,
} from "./value_deps.ts";

/** How a {@linkcode MergePipeline} runs. */
export interface MergePipelineOptions {
  /** Number of shards answering (they are numbered 0 to shards - 1 in every call). */
  shards: number;
  /** Bytes of rows the pipeline may hold (`cross_shard_buffer_limit`). */
  bufferLimit: number;
  /** The statement's parameter values in text, `$1` first (LIMIT $n, OFFSET $n, HAVING). */
  params?: readonly (string | null)[];
  /** The database's collation, for text without an explicit COLLATE (default: byte order). */
  collation?: Collation;
  /**
   * Result-format codes of the Bind the shards got (Bind's rule: none all text, one for all,
   * else one per shard column). Default: each shard RowDescription field's format.
   */
  shardFormats?: readonly number[];
  /**
   * Result-format codes of the client's Bind, over its (visible) columns, same rule. Default:
   * the format the shards send each column in.
   */
  resultFormats?: readonly number[];
  /** The typed-value functions (default: values.ts, aggregate.ts, expr.ts). */
  modules?: ValueModules;
}

/** A row inside the pipeline: a shard row, or a group's row after aggregation. */
interface WorkRow {
  /** The shard's DataRow, while this row is that shard row. */
  msg: Uint8Array | null;
  /** Working-row columns as bytes (in the column's source format); null until parsed. */
  fields: Fields | null;
  /** Decoded values by working column (undefined: not decoded yet). */
  values: (Value | null | undefined)[];
  /** Arrival order (groups: first row's), to keep ties stable. */
  seq: number;
  /** Times the row goes out (set operations). */
  repeat: number;
  /** Bytes it is counted for. */
  size: number;
  /** Its visible columns are in the client's formats (aggregates encoded, conversions done). */
  encoded: boolean;
}

/** One GROUP BY group being aggregated. */
interface Group {
  /** Its first shard row (group columns are read from it); null for the empty input's group. */
  fields: Fields | null;
  accumulators: Accumulator[];
  seq: number;
}

/** The working-row layout, known once a shard's RowDescription is in. */
interface Layout {
  /** Working-row width. */
  work: number;
  /** Per working column: its shard column, or -1 for an aggregate's result. */
  shardColumn: number[];
  /** Per working column: the aggregate index, or -1. */
  aggregate: number[];
  /** Per shard column: the format its bytes come in. */
  shardFormats: (0 | 1)[];
  /** Per visible column: the format the client gets. */
  outFormats: (0 | 1)[];
  /** Shard field descriptions. */
  fields: FieldDescription[];
  kinds: AggregateKind[];
  /** The client's RowDescription. */
  description: FieldDescription[];
}

type Mode = "stream" | "merge" | "sort" | "group";

/** Aggregates whose accumulator keeps every input value: their partials count as held bytes. */
const COLLECTING: ReadonlySet<AggregateFunction> = new Set([
  "array_agg",
  "string_agg",
  "json_agg",
  "jsonb_agg",
]);

/** Held bytes counted per group and per aggregate beyond the row itself. */
const GROUP_OVERHEAD = 64;
const AGGREGATE_OVERHEAD = 48;

/**
 * The collation a `COLLATE "name"` asks for: "default" is the database's; the others as
 * `collationFor` reads them (null: one pgdog can't compare like PostgreSQL, refused).
 */
function collationByName(
  name: string,
  options: { fallback: Collation; modules: ValueModules },
): Collation {
  if (name === "default") return options.fallback;
  const collation = options.modules.collationFor(name);
  if (collation === null) {
    throw new MergeError(
      "0A000",
      `cross-shard ORDER BY can't compare text in collation "${name}" as PostgreSQL does`,
      { hint: 'Use COLLATE "C", an ICU collation, or run the query on one shard.' },
    );
  }
  return collation;
}

function bufferError(limit: number): MergeError {
  return new MergeError(
    "53200",
    `cross-shard query holds more than ${limit} bytes of rows to merge (cross_shard_buffer_limit)`,
    {
      hint: "Raise cross_shard_buffer_limit, or narrow the query (a WHERE, a LIMIT, an ORDER BY " +
        "the shards can sort by, fewer groups).",
    },
  );
}

function unsupportedType(oid: number): MergeError {
  return new MergeError(
    "0A000",
    `cross-shard query needs to compare or convert values of type ${oid}, which pgdog can't`,
    { hint: "Run it on one shard (a WHERE on the sharding key), or cast the column to text." },
  );
}

function layoutOf(
  plan: MergePlan,
  fields: FieldDescription[],
  options: {
    collation: Collation;
    shardFormats?: readonly number[];
    resultFormats?: readonly number[];
    modules: ValueModules;
  },
): Layout {
  if (fields.length !== plan.shardColumns) {
    throw new MergeError(
      "XX000",
      `cross-shard merge expected ${plan.shardColumns} columns from each shard, got ${fields.length}`,
    );
  }
  const shardFormats = options.shardFormats
    ? formatsPerColumn(options.shardFormats, fields.length)
    : fields.map((f) => f.format === 1 ? 1 as const : 0 as const);
  const shardColumn: number[] = [];
  const aggregate: number[] = [];
  const kinds: AggregateKind[] = [];
  const stage = plan.aggregate;
  if (stage === null) {
    for (let i = 0; i < fields.length; i++) {
      shardColumn.push(i);
      aggregate.push(-1);
    }
  } else {
    for (const spec of stage.aggregates) {
      const partialTypes = spec.partials.map((c) => ({
        oid: fields[c].typeOid,
        format: shardFormats[c],
      }));
      kinds.push(options.modules.aggregateKind(spec, {
        partialTypes,
        collation: options.collation,
      }));
    }
    for (const col of stage.output) {
      if ("group" in col) {
        shardColumn.push(col.group);
        aggregate.push(-1);
      } else {
        shardColumn.push(-1);
        aggregate.push(col.aggregate);
      }
    }
  }
  const work = shardColumn.length;
  if (plan.visible > work) {
    throw new MergeError(
      "XX000",
      `cross-shard merge plan shows ${plan.visible} of ${work} columns`,
    );
  }
  const base: FieldDescription[] = [];
  const resultTypes: (number | null)[] = [];
  const own: (0 | 1)[] = [];
  for (let i = 0; i < work; i++) {
    const a = aggregate[i];
    const c = a < 0 ? shardColumn[i] : stage!.aggregates[a].partials[0];
    base.push(
      fields[c] ??
        { name: "?column?", tableOid: 0, attnum: 0, typeOid: 0, size: -1, typmod: -1, format: 0 },
    );
    resultTypes.push(a < 0 ? null : kinds[a].resultOid);
    own.push(shardFormats[c] ?? 0);
  }
  const outFormats = options.resultFormats
    ? formatsPerColumn(options.resultFormats, plan.visible)
    : own.slice(0, plan.visible);
  const description = projectRowDescription(base, {
    visible: plan.visible,
    resultTypes,
    formats: outFormats,
  });
  const names = plan.columnNames;
  if (names !== undefined) {
    for (let i = 0; i < description.length; i++) {
      const name = names[i];
      if (name !== undefined) description[i].name = name;
    }
  }
  return { work, shardColumn, aggregate, shardFormats, outFormats, fields, kinds, description };
}

/**
 * The RowDescription the client gets for a cross-shard statement whose shards describe their
 * rows as `shardDescription` (hidden columns cut, aggregates with their result types): what a
 * Describe answers.
 */
export function describeMerged(
  plan: MergePlan,
  shardDescription: Uint8Array,
  options: {
    collation?: Collation;
    shardFormats?: readonly number[];
    resultFormats?: readonly number[];
    modules?: ValueModules;
  } = {},
): Uint8Array {
  const layout = layoutOf(plan, parseRowDescription(shardDescription), {
    ...options,
    collation: options.collation ?? { kind: "bytes" },
    modules: options.modules ?? VALUE_MODULES,
  });
  return buildRowDescription(layout.description);
}

/**
 * Runs a {@linkcode MergePlan} over the shards' answers to one execution. Drive it per message:
 * {@linkcode rowDescription} (each shard's; the first decides), {@linkcode row} for each
 * DataRow, {@linkcode shardDone} at each shard's CommandComplete (or PortalSuspended it won't
 * resume), and {@linkcode pull} whenever output can be written (after a batch of messages). Any
 * of them may throw a {@linkcode MergeError}: the statement fails with it and the pipeline takes
 * no more rows. The constructor throws for a negative LIMIT or OFFSET.
 *
 * ```ts ignore
 * const merge = new MergePipeline(plan, { shards: 3, bufferLimit, params, modules });
 * const out = new MessageBuilder();
 * // for each message of shard i:
 * if (type === Msg.RowDescription) {
 *   const t = merge.rowDescription(i, msg);
 *   if (t !== null) writer.enqueue(t);
 * } else if (type === Msg.DataRow) merge.row(i, msg);
 * else if (type === Msg.CommandComplete) merge.shardDone(i);
 * // after a batch (Execute with a row limit: pull(out, n), PortalSuspended while !finished):
 * merge.pull(out);
 * writer.enqueue(out.view());
 * out.reset();
 * if (merge.finished) // CommandComplete `SELECT ${merge.rowCount}`
 * ```
 */
export class MergePipeline {
  readonly #plan: MergePlan;
  readonly #modules: ValueModules;
  readonly #collation: Collation;
  readonly #params: readonly (string | null)[];
  readonly #bufferLimit: number;
  readonly #shardFormatCodes: readonly number[] | undefined;
  readonly #resultFormatCodes: readonly number[] | undefined;
  readonly #mode: Mode;
  readonly #window: RowWindow;
  readonly #shardsDone: boolean[];
  #shardsLeft: number;

  #layout: Layout | null = null;
  /** Per working column: its TypeOps, once needed. */
  #ops: (TypeOps | undefined)[] = [];
  /** Per shard column (group mode): its TypeOps, once needed. */
  #shardOps: (TypeOps | undefined)[] = [];
  /** Per sort key: the TypeOps its collation asks for. */
  #keyOps: TypeOps[] = [];
  /** Per visible column: bytes must be decoded and encoded again (format differs). */
  #convert: boolean[] = [];
  /** Shard rows go out as they came (no column cut, no conversion). */
  #verbatim = false;

  #seq = 0;
  #held = 0;
  /** Bytes of rows waiting to stream (stream and merge modes). */
  #waitingBytes = 0;
  /** Waiting rows count against the limit too (see countWaiting). */
  #countWaiting = false;
  #sent = 0;
  #failed = false;
  #stopped = false;

  // stream mode
  #fifo: WorkRow[] = [];
  #fifoHead = 0;
  // merge mode
  #merge: KWayMerge<WorkRow> | null = null;
  // distinct: the working columns that make rows equal
  readonly #distinctColumns: number[] | null;
  /** Stream and merge modes: keys of the rows that went out. */
  #distinctSeen: Set<string> | null = null;
  /** Merge mode when equal rows are adjacent: the last key that went out. */
  #distinctLast: string | null = null;
  #distinctAdjacent = false;
  // sort and group modes
  #heldRows: WorkRow[] = [];
  /** Sort mode with a LIMIT: only the first OFFSET + LIMIT rows are kept. */
  #top: TopN<WorkRow> | null = null;
  #distinctBest: Map<string, WorkRow> | null = null;
  #groups: Map<string, Group> = new Map();
  #output: WorkRow[] | null = null;
  #outputIndex = 0;
  // the row going out, and how many more times
  #current: WorkRow | null = null;
  #currentLeft = 0;

  readonly #exprRow: ExprRow & { row: WorkRow | null };

  constructor(plan: MergePlan, options: MergePipelineOptions) {
    this.#plan = plan;
    this.#modules = options.modules ?? VALUE_MODULES;
    this.#collation = options.collation ?? { kind: "bytes" };
    this.#params = options.params ?? [];
    this.#bufferLimit = options.bufferLimit;
    this.#shardFormatCodes = options.shardFormats;
    this.#resultFormatCodes = options.resultFormats;
    const limit = resolveCount(plan.limit, { clause: "LIMIT", params: this.#params });
    const offset = resolveCount(plan.offset, { clause: "OFFSET", params: this.#params });
    this.#window = new RowWindow(offset, limit);
    this.#shardsDone = new Array(options.shards).fill(false);
    this.#shardsLeft = options.shards;
    if (plan.setOperation !== null && plan.aggregate === null) {
      throw new MergeError("XX000", "cross-shard merge plan: a set operation needs its counts");
    }
    this.#mode = plan.aggregate !== null
      ? "group"
      : plan.orderBy.length === 0
      ? "stream"
      : plan.shardsSorted
      ? "merge"
      : "sort";
    this.#distinctColumns = plan.distinct === null
      ? null
      : plan.distinct.length === 0
      ? Array.from({ length: plan.visible }, (_, i) => i)
      : plan.distinct;
    if (this.#mode === "sort" && plan.distinct === null && limit !== null) {
      this.#top = new TopN((offset ?? 0) + limit, (a, b) => this.#compareStable(a, b));
    }
    if (this.#mode === "merge") {
      this.#merge = new KWayMerge(options.shards, (a, b) => this.#compareKeys(a, b));
    }
    if (this.#distinctColumns !== null) {
      if (this.#mode === "merge") {
        const lead = new Set(
          plan.orderBy.slice(0, this.#distinctColumns.length).map((k) => k.column),
        );
        this.#distinctAdjacent = this.#distinctColumns.length <= plan.orderBy.length &&
          this.#distinctColumns.every((c) => lead.has(c));
      }
      if (this.#mode === "stream" || (this.#mode === "merge" && !this.#distinctAdjacent)) {
        this.#distinctSeen = new Set();
      } else if (this.#mode === "sort" || this.#mode === "group") {
        this.#distinctBest = new Map();
      }
    }
    const params = this.#params;
    const exprRow = {
      row: null as WorkRow | null,
      value: (i: number): Value | null => this.#value(exprRow.row!, i),
      ops: (i: number): TypeOps => this.#columnOps(i),
      param: (n: number): string | null => params[n - 1] ?? null,
    };
    this.#exprRow = exprRow;
    if (this.#window.full) this.#stop();
  }

  /**
   * A shard's RowDescription. The first one sets the working-row layout and returns the
   * client's RowDescription; later ones return null (the client gets one). When the shards
   * send none (an Execute after an earlier Describe), pass the saved one before the first row.
   */
  rowDescription(_shard: number, msg: Uint8Array): Uint8Array | null {
    if (this.#layout !== null) return null;
    return this.#guard(() => {
      const layout = layoutOf(this.#plan, parseRowDescription(msg), {
        collation: this.#collation,
        shardFormats: this.#shardFormatCodes,
        resultFormats: this.#resultFormatCodes,
        modules: this.#modules,
      });
      this.#layout = layout;
      let verbatim = this.#plan.aggregate === null && this.#plan.visible === layout.work;
      for (let i = 0; i < this.#plan.visible; i++) {
        const convert = layout.aggregate[i] < 0 &&
          layout.shardFormats[layout.shardColumn[i]] !== layout.outFormats[i];
        this.#convert.push(convert);
        if (convert) verbatim = false;
      }
      this.#verbatim = verbatim;
      this.#keyOps = this.#plan.orderBy.map((k) => this.#sortKeyOps(k));
      return buildRowDescription(layout.description);
    });
  }

  /**
   * A shard's DataRow (the whole message, type byte included). The pipeline may keep it until
   * the row goes out, as it is: the caller must not reuse its bytes.
   */
  row(shard: number, msg: Uint8Array): void {
    if (this.#failed || this.#stopped) return;
    if (this.#layout === null) {
      this.#fail(new MergeError("XX000", "cross-shard merge got a row before a RowDescription"));
    }
    if (this.#shardsDone[shard]) return;
    try {
      switch (this.#mode) {
        case "stream": {
          const needFields = !this.#verbatim || this.#distinctColumns !== null;
          const row = this.#workRow(msg, needFields ? parseDataRow(msg) : null);
          this.#fifo.push(row);
          this.#wait(row.size);
          break;
        }
        case "merge": {
          const row = this.#workRow(msg, parseDataRow(msg));
          // Decode the sort keys once, here, rather than in every comparison.
          for (const k of this.#plan.orderBy) this.#value(row, k.column);
          this.#merge!.push(shard, row);
          this.#wait(row.size);
          break;
        }
        case "sort":
          this.#keep(this.#workRow(msg, parseDataRow(msg)));
          break;
        case "group":
          this.#accumulate(msg);
          break;
      }
    } catch (e) {
      this.#fail(e);
    }
  }

  /** Shard `shard` sends no more rows for this execution. */
  shardDone(shard: number): void {
    if (this.#failed || this.#shardsDone[shard]) return;
    this.#shardsDone[shard] = true;
    this.#shardsLeft--;
    if (this.#stopped) return;
    this.#merge?.finish(shard);
    if (this.#shardsLeft === 0 && (this.#mode === "sort" || this.#mode === "group")) {
      this.#guard(() => this.#finish());
    }
  }

  /**
   * Appends the client's DataRows that are ready, at most `max`, to `out`; returns how many.
   * Rows come out only here, so a row-limited Execute pulls its count and later the rest. As
   * PostgreSQL does, an Execute that got all `max` rows ends in PortalSuspended (even when none
   * are left: the next Execute then gets none and CommandComplete), one that got fewer once
   * {@linkcode finished} in CommandComplete `SELECT <rows of this Execute>`.
   */
  pull(out: MessageBuilder, max: number = Infinity): number {
    if (this.#failed || (this.#stopped && this.#currentLeft === 0)) return 0;
    return this.#guard(() => {
      let n = 0;
      while (n < max) {
        if (this.#currentLeft === 0) {
          if (this.#window.full) break;
          const row = this.#nextRow();
          if (row === undefined) break;
          if (!this.#firstOfItsKind(row)) continue;
          this.#current = row;
          this.#currentLeft = this.#window.take(row.repeat);
          continue;
        }
        this.#emit(this.#current!, out);
        this.#currentLeft--;
        n++;
      }
      if (this.#currentLeft === 0) {
        this.#current = null;
        if (this.#window.full) this.#stop();
      }
      this.#sent += n;
      return n;
    });
  }

  /** Every row the client gets went out through {@linkcode pull} (or the statement failed). */
  get finished(): boolean {
    if (this.#failed) return true;
    if (this.#currentLeft > 0) return false;
    if (this.#stopped) return true;
    if (this.#shardsLeft > 0) return false;
    switch (this.#mode) {
      case "stream":
        return this.#fifoHead === this.#fifo.length;
      case "merge":
        return this.#merge!.done;
      default:
        return this.#output !== null && this.#outputIndex === this.#output.length;
    }
  }

  /**
   * The LIMIT is reached: no more rows will go out, whatever the shards still send; the caller
   * can drain them (rows given to {@linkcode row} now are dropped at once).
   */
  get limitReached(): boolean {
    return this.#stopped;
  }

  /** Rows sent so far (the client's `SELECT n` when one Execute or Query took them all). */
  get rowCount(): number {
    return this.#sent;
  }

  /** Bytes of rows held now. */
  get held(): number {
    return this.#held;
  }

  /** Bytes of rows waiting to stream (not counted in {@linkcode held} unless countWaiting). */
  get waitingBytes(): number {
    return this.#waitingBytes;
  }

  /**
   * Rows of shard `shard` that wait to go out: in the merge, for the other shards; in arrival
   * order (no ORDER BY), every shard's rows that wait (any of them can go next). A caller can
   * stop reading a shard that is far ahead.
   */
  waiting(shard: number): number {
    if (this.#mode === "stream") return this.#fifo.length - this.#fifoHead;
    return this.#merge?.waiting(shard) ?? 0;
  }

  /**
   * The merge waits for a shard that has sent nothing it can merge yet: the shards with rows
   * {@linkcode waiting} are ahead (always false outside the k-way merge).
   */
  get blocked(): boolean {
    return this.#merge !== null && !this.#stopped && !this.#failed && this.#merge.blocked;
  }

  /**
   * From now on, rows waiting to stream count against the buffer limit too (the caller can't
   * bound them by reading less: the shards run to completion while the client fetches in parts).
   */
  countWaiting(): void {
    if (this.#countWaiting) return;
    this.#countWaiting = true;
    this.#guard(() => this.#hold(this.#waitingBytes));
  }

  // ---- internals ----

  #guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      this.#fail(e);
    }
  }

  #fail(e: unknown): never {
    this.#failed = true;
    this.#release();
    throw e;
  }

  /** No more rows go out (LIMIT reached): drop everything held. */
  #stop(): void {
    this.#stopped = true;
    this.#release();
  }

  #release(): void {
    this.#merge?.clear();
    this.#fifo = [];
    this.#fifoHead = 0;
    this.#heldRows = [];
    this.#top = null;
    this.#groups = new Map();
    this.#distinctBest = null;
    this.#distinctSeen = null;
    this.#output = null;
    this.#held = 0;
    this.#waitingBytes = 0;
  }

  /** A row waits to stream. */
  #wait(bytes: number): void {
    this.#waitingBytes += bytes;
    if (this.#countWaiting) this.#hold(bytes);
  }

  /** A waiting row went out. */
  #waited(bytes: number): void {
    this.#waitingBytes -= bytes;
    if (this.#countWaiting) this.#held -= bytes;
  }

  #hold(bytes: number): void {
    this.#held += bytes;
    if (this.#held > this.#bufferLimit) throw bufferError(this.#bufferLimit);
  }

  #workRow(msg: Uint8Array, fields: Fields | null): WorkRow {
    if (fields !== null && fields.length !== this.#plan.shardColumns) {
      throw new MergeError(
        "XX000",
        `cross-shard merge expected ${this.#plan.shardColumns} columns in a row, got ${fields.length}`,
      );
    }
    return {
      msg,
      fields,
      values: [],
      seq: this.#seq++,
      repeat: 1,
      size: msg.length,
      encoded: false,
    };
  }

  /** Working column `i`'s TypeOps (0A000 for a type the merge can't decode). */
  #columnOps(i: number): TypeOps {
    const cached = this.#ops[i];
    if (cached !== undefined) return cached;
    const layout = this.#layout!;
    const a = layout.aggregate[i];
    const ops = a >= 0 ? layout.kinds[a].ops : this.#shardColumnOps(layout.shardColumn[i]);
    this.#ops[i] = ops;
    return ops;
  }

  #shardColumnOps(c: number): TypeOps {
    const cached = this.#shardOps[c];
    if (cached !== undefined) return cached;
    const oid = this.#layout!.fields[c].typeOid;
    const ops = this.#modules.typeOps(oid, { collation: this.#collation });
    if (ops === null) throw unsupportedType(oid);
    this.#shardOps[c] = ops;
    return ops;
  }

  /** The TypeOps a sort key compares with: its column's type in the key's collation. */
  #sortKeyOps(key: SortKey): TypeOps {
    const layout = this.#layout!;
    const a = layout.aggregate[key.column];
    if (a >= 0 && key.collation === null) return layout.kinds[a].ops;
    const oid = a >= 0
      ? layout.kinds[a].resultOid
      : layout.fields[layout.shardColumn[key.column]].typeOid;
    const collation = key.collation === null
      ? this.#collation
      : collationByName(key.collation, { fallback: this.#collation, modules: this.#modules });
    const ops = this.#modules.typeOps(oid, { collation, ordering: true });
    if (ops === null) throw unsupportedType(oid);
    return ops;
  }

  /** Working column `i` of `row`, decoded (once). */
  #value(row: WorkRow, i: number): Value | null {
    const cached = row.values[i];
    if (cached !== undefined) return cached;
    const layout = this.#layout!;
    const field = row.fields![i];
    const value = field === null
      ? null
      : this.#columnOps(i).decode(field, layout.shardFormats[layout.shardColumn[i]]);
    row.values[i] = value;
    return value;
  }

  /** Orders rows by the plan's sort keys (0 for ties). */
  #compareKeys(a: WorkRow, b: WorkRow): number {
    const keys = this.#plan.orderBy;
    for (let k = 0; k < keys.length; k++) {
      const key = keys[k];
      const va = this.#value(a, key.column);
      const vb = this.#value(b, key.column);
      if (va === null || vb === null) {
        if (va === vb) continue;
        return (va === null) === key.nullsFirst ? -1 : 1;
      }
      const c = this.#keyOps[k].compare(va, vb);
      if (c !== 0) return key.descending ? -c : c;
    }
    return 0;
  }

  /** Sort order with ties in arrival order. */
  #compareStable(a: WorkRow, b: WorkRow): number {
    return this.#compareKeys(a, b) || a.seq - b.seq;
  }

  #distinctKey(row: WorkRow): string {
    const columns = this.#distinctColumns!;
    return compositeKey(
      columns.length,
      (i) => this.#value(row, columns[i]),
      (i) => this.#columnOps(columns[i]),
    );
  }

  /** Stream and merge modes: whether a row is the first of its DISTINCT kind. */
  #firstOfItsKind(row: WorkRow): boolean {
    if (this.#distinctColumns === null || this.#mode === "sort" || this.#mode === "group") {
      return true;
    }
    const key = this.#distinctKey(row);
    if (this.#distinctAdjacent) {
      if (key === this.#distinctLast) return false;
      this.#distinctLast = key;
      return true;
    }
    const seen = this.#distinctSeen!;
    if (seen.has(key)) return false;
    seen.add(key);
    this.#hold(key.length * 2);
    return true;
  }

  /** Sort mode: holds a row until every shard is done (with DISTINCT, the first per key). */
  #keep(row: WorkRow): void {
    if (this.#top !== null) {
      const dropped = this.#top.offer(row);
      if (dropped !== row) this.#hold(row.size);
      if (dropped !== null && dropped !== row) this.#held -= dropped.size;
      return;
    }
    if (this.#distinctBest === null) {
      this.#heldRows.push(row);
      this.#hold(row.size);
      return;
    }
    this.#keepDistinct(row);
  }

  #keepDistinct(row: WorkRow): void {
    const best = this.#distinctBest!;
    const key = this.#distinctKey(row);
    const kept = best.get(key);
    if (kept === undefined) {
      best.set(key, row);
      this.#hold(row.size + key.length * 2);
    } else if (this.#compareStable(row, kept) < 0) {
      best.set(key, row);
      this.#held -= kept.size;
      this.#hold(row.size);
    }
  }

  /** Group mode: adds a shard row to its group's aggregates. */
  #accumulate(msg: Uint8Array): void {
    const fields = parseDataRow(msg);
    if (fields.length !== this.#plan.shardColumns) {
      throw new MergeError(
        "XX000",
        `cross-shard merge expected ${this.#plan.shardColumns} columns in a row, got ${fields.length}`,
      );
    }
    const stage = this.#plan.aggregate!;
    const by = stage.groupBy;
    const key = by.length === 0 ? "" : compositeKey(
      by.length,
      (i) => this.#shardValue(fields, by[i]),
      (i) => this.#shardColumnOps(by[i]),
    );
    let group = this.#groups.get(key);
    if (group === undefined) {
      group = this.#newGroup(fields);
      this.#groups.set(key, group);
      this.#hold(
        GROUP_OVERHEAD + AGGREGATE_OVERHEAD * stage.aggregates.length + key.length * 2 + msg.length,
      );
    }
    for (let a = 0; a < stage.aggregates.length; a++) {
      const spec = stage.aggregates[a];
      const partials: (Uint8Array | null)[] = [];
      let bytes = 0;
      for (const c of spec.partials) {
        const f = fields[c];
        partials.push(f);
        if (f !== null) bytes += f.length;
      }
      // DISTINCT aggregates and the collecting ones keep values (DISTINCT ones dedupe them
      // themselves): counted as if every value were kept.
      if (spec.distinct || COLLECTING.has(spec.fn)) this.#hold(bytes + 16);
      group.accumulators[a].add(partials);
    }
  }

  #newGroup(fields: Fields | null): Group {
    return {
      fields,
      accumulators: this.#layout!.kinds.map((k) => k.create()),
      seq: this.#seq++,
    };
  }

  #shardValue(fields: Fields, c: number): Value | null {
    const f = fields[c];
    return f === null ? null : this.#shardColumnOps(c).decode(f, this.#layout!.shardFormats[c]);
  }

  /** Sort and group modes, every shard done: the rows that go out, in order. */
  #finish(): void {
    if (this.#layout === null) {
      this.#output = [];
      return;
    }
    let rows: WorkRow[];
    if (this.#mode === "group") {
      rows = this.#groupRows();
      if (this.#distinctBest !== null) {
        for (const row of rows) this.#keepDistinct(row);
        rows = [...this.#distinctBest.values()];
      }
    } else {
      rows = this.#top !== null
        ? this.#top.sorted()
        : this.#distinctBest !== null
        ? [...this.#distinctBest.values()]
        : this.#heldRows;
    }
    this.#distinctBest = null;
    this.#heldRows = [];
    if (this.#plan.orderBy.length > 0) rows.sort((a, b) => this.#compareStable(a, b));
    else if (this.#distinctColumns !== null) rows.sort((a, b) => a.seq - b.seq);
    this.#output = rows;
  }

  /** Group mode: each group's working row, after HAVING and the set operation. */
  #groupRows(): WorkRow[] {
    const plan = this.#plan;
    const stage = plan.aggregate!;
    const layout = this.#layout!;
    if (this.#groups.size === 0 && stage.groupBy.length === 0 && stage.aggregates.length > 0) {
      this.#groups.set("", this.#newGroup(null));
    }
    const rows: WorkRow[] = [];
    for (const group of this.#groups.values()) {
      const results = group.accumulators.map((acc) => acc.value());
      const fields: Fields = [];
      const values: (Value | null | undefined)[] = [];
      for (let i = 0; i < layout.work; i++) {
        const a = layout.aggregate[i];
        if (a >= 0) {
          fields.push(null);
          values[i] = results[a] ?? null;
        } else {
          fields.push(group.fields === null ? null : group.fields[layout.shardColumn[i]]);
        }
      }
      const row: WorkRow = {
        msg: null,
        fields,
        values,
        seq: group.seq,
        repeat: 1,
        size: 0,
        encoded: false,
      };
      if (plan.having !== null) {
        this.#exprRow.row = row;
        const keep = this.#modules.evaluate(plan.having, this.#exprRow) === true;
        this.#exprRow.row = null;
        if (!keep) continue;
      }
      if (plan.setOperation !== null) {
        const op = plan.setOperation;
        row.repeat = setOperationCount(op, toCount(results[op.left]), toCount(results[op.right]));
        if (row.repeat === 0) continue;
      }
      rows.push(row);
    }
    this.#groups = new Map();
    return rows;
  }

  #nextRow(): WorkRow | undefined {
    switch (this.#mode) {
      case "stream": {
        if (this.#fifoHead === this.#fifo.length) return undefined;
        const row = this.#fifo[this.#fifoHead];
        (this.#fifo as (WorkRow | undefined)[])[this.#fifoHead++] = undefined;
        if (this.#fifoHead === this.#fifo.length) {
          this.#fifo = [];
          this.#fifoHead = 0;
        } else if (this.#fifoHead >= 1024 && this.#fifoHead * 2 >= this.#fifo.length) {
          this.#fifo.splice(0, this.#fifoHead);
          this.#fifoHead = 0;
        }
        this.#waited(row.size);
        return row;
      }
      case "merge": {
        const row = this.#merge!.next();
        if (row !== undefined) this.#waited(row.size);
        return row;
      }
      default: {
        const output = this.#output;
        if (output === null || this.#outputIndex === output.length) return undefined;
        const row = output[this.#outputIndex];
        (output as (WorkRow | undefined)[])[this.#outputIndex++] = undefined;
        return row;
      }
    }
  }

  /** Appends the client's DataRow for a working row. */
  #emit(row: WorkRow, out: MessageBuilder): void {
    if (this.#verbatim && row.msg !== null) {
      out.bytes(row.msg);
      return;
    }
    const layout = this.#layout!;
    const visible = this.#plan.visible;
    const fields = row.fields!;
    if (!row.encoded) {
      // Once: a row a set operation repeats reuses the bytes.
      row.encoded = true;
      for (let i = 0; i < visible; i++) {
        if (layout.aggregate[i] >= 0) {
          const v = row.values[i];
          fields[i] = v === null || v === undefined
            ? null
            : this.#columnOps(i).encode(v, layout.outFormats[i]);
        } else if (this.#convert[i]) {
          const v = this.#value(row, i);
          fields[i] = v === null ? null : this.#columnOps(i).encode(v, layout.outFormats[i]);
        }
      }
    }
    appendDataRow(out, fields, visible);
  }
}
