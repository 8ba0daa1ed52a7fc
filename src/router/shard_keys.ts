/**
 * Sharding as routing sees it: the configuration (sharded and omnisharded tables, schemas), the
 * table a statement names, and the shard of a sharding-key value (constants, parameters, Bind
 * values; mapping rules, then the hash or a plugin hasher).
 *
 * @module
 */

import type { Analysis, Literal, TableRef } from "./mod.ts";
import type { Node } from "./analyze.ts";
import type { MergePlan } from "../cross_shard/plan.ts";
import type { KeyUpdatePlan, SplitInsertPlan } from "./split_insert_plan.ts";
import { parseBigint, shardForBigint, shardForText, shardForUuid } from "../sharding/hash.ts";

/** How a sharded table's key is typed and hashed. */
export type KeyType = "bigint" | "varchar" | "uuid";

/** A mapping rule (list, range or default) from a key value to a shard. */
export type KeyMapping =
  | { kind: "list"; values: (bigint | string)[]; shard: number }
  | { kind: "range"; start?: bigint | string; end?: bigint | string; shard: number }
  | { kind: "default"; shard: number };

/** One `[[sharded_tables]]` entry, as routing uses it. */
export interface ShardedTable {
  /** Table name; undefined matches any table with `column`. */
  name?: string;
  schema?: string;
  column: string;
  type: KeyType;
  mapping: KeyMapping[];
  /** `hasher = "plugin:<name>"`: that plugin's `shard` hook hashes values no mapping decides. */
  plugin?: string;
}

/**
 * What one decision found and needs beyond the statement: the key values it met (for plugins),
 * and shards that plugin hashers gave (or must still give) for them.
 */
export interface ShardLookup {
  /** Key values met, in order. */
  found: Array<{ table?: string; column: string; value: string }>;
  /** Shards plugin hashers gave, by {@linkcode pluginKey}. */
  pluginShards: Map<string, number>;
  /** Plugin hasher answers the decision lacked; decide again once they are in `pluginShards`. */
  missing: Array<{ plugin: string; value: string; spec: ShardedTable }>;
  /** The column order of a table (for INSERT without a column list), when known. */
  columns?: (table: TableRef) => string[] | undefined;
  /** Column orders the decision lacked; decide again once `columns` knows them. */
  missingColumns?: TableRef[];
  /**
   * The database's own aggregates and window functions (user-defined, read from the catalog):
   * calls of them are aggregates to the cross-shard rule. Undefined: not known, a function of a
   * name that is not a built-in aggregate counts as a plain function.
   */
  aggregates?: ReadonlySet<string>;
  /**
   * Set false by a caller that can read `aggregates` from the catalog: the decision sets it true
   * when it met a call that may be one of them; decide again once `aggregates` is known.
   */
  missingAggregates?: boolean;
}

/** The key of a plugin hasher's answer in {@linkcode ShardLookup.pluginShards}. */
export function pluginKey(plugin: string, value: string): string {
  return `${plugin}\u0000${value}`;
}

/** Everything routing needs to know about a sharded database. */
export interface ShardingConfig {
  shards: number;
  tables: ShardedTable[];
  /** `[[sharded_schemas]]`: schema name → shard. */
  schemas: Map<string, number>;
  /** The shard for schemas not listed (a `[[sharded_schemas]]` entry without a name). */
  defaultSchemaShard?: number;
  /** `[[omnisharded_tables]]` names (and `schema.name`). */
  omni: Set<string>;
  /**
   * The caller runs merge plans (the cross-shard engine): a SELECT whose shards' answers need
   * merging gets a {@linkcode ShardDecision.merge} plan. Without it, such shapes are refused.
   */
  merge?: boolean;
  /** `cross_shard_disabled`: a query that would run on several shards is refused (58000). */
  crossShardDisabled?: boolean;
  /**
   * `[rewrite] split_inserts` (`error` unless `[rewrite] enabled`): a multi-row INSERT whose rows
   * belong to several shards is refused, split by shard, or sent to one shard as written; with
   * `rewrite`, INSERT ... SELECT into a sharded table routes the SELECT's rows (insert_select.ts).
   */
  splitInserts?: "error" | "rewrite" | "ignore";
  /**
   * `[rewrite] shard_key` (`error` unless `[rewrite] enabled`): an UPDATE that changes a row's
   * sharding key is refused, moves the row, or runs where the row is as written.
   */
  shardKey?: "error" | "rewrite" | "ignore";
  /**
   * `[rewrite] non_deterministic_functions = "rewrite"` (with `enabled`): a write that runs on
   * several shards gets its now(), random()... computed once (see non_deterministic.ts).
   */
  nonDeterministic?: boolean;
}

/** Where a statement goes. */
export type ShardTarget =
  | { kind: "one"; shard: number }
  | { kind: "some"; shards: number[] }
  | { kind: "all" }
  /** Any single shard will do (a read of omnisharded tables, no table at all). */
  | { kind: "any" };

/** A decision and its reason (for `pgdog route`, logs and plugins). */
export interface ShardDecision {
  target: ShardTarget;
  reason: string;
  /** Writes to omnisharded tables: every shard runs it, the client sees one shard's answer. */
  omniWrite: boolean;
  /** Why it cannot run as asked (SQLSTATE 0A000), when it can't. */
  unsupported?: string;
  /**
   * Proven correct on every shard, answers concatenated (a request of several statements may
   * send it everywhere with the others).
   */
  concatenates?: boolean;
  /** COPY TO of several shards in text or CSV with HEADER: only the first header line is sent. */
  copyHeader?: boolean;
  /** COPY FROM STDIN on every shard: pgdog splits the client's rows among them. */
  copyIn?: CopyInRoute;
  /**
   * Runs on several shards whose answers pgdog merges by this plan (sort, aggregate, distinct,
   * limit...); the shards run `merge.shardSql` (null: the statement as the client sent it).
   */
  merge?: MergePlan;
  /** A multi-row INSERT split by shard: each shard runs its own statement (see split_insert.ts). */
  splitInsert?: SplitInsertPlan;
  /** An UPDATE of a row's sharding key that moves it to another shard (see key_update.ts). */
  keyUpdate?: KeyUpdatePlan;
}

/** Where the rows of a COPY FROM STDIN go (see {@linkcode ShardDecision.copyIn}). */
export interface CopyInRoute {
  table: RangeTable;
  /** The columns the rows hold, in order (the column list, else the table's own order). */
  columns: string[];
  /** The COPY statement's options (libpg-query DefElem nodes). */
  options: unknown[];
  /** The sharding key: its column's index in `columns` and its table entry; null: every row to every shard. */
  key: { column: number; spec: ShardedTable } | null;
}

/** Bind parameter values of an extended-protocol execution (raw bytes per format code). */
export interface BindValues {
  formats: number[];
  values: (Uint8Array | null)[];
}

/** A table as a statement names it. */
export interface RangeTable {
  schema?: string;
  name: string;
  alias?: string;
}

/** A table is sharded: a `[[sharded_tables]]` entry names it, or a column-only entry applies. */
export function isSharded(t: RangeTable, config: ShardingConfig): boolean {
  return config.tables.some((s) =>
    s.name === undefined
      ? false
      : s.name === t.name && (!s.schema || !t.schema || s.schema === t.schema)
  ) ||
    // A column-only entry makes any table with that column sharded; without a schema cache, a
    // table counts as sharded when it is not declared omnisharded (nor a system catalog).
    (config.tables.some((s) => s.name === undefined) && !isOmni(t, config) && !isCatalog(t));
}

/** PostgreSQL's own catalogs and views: the same on every shard. */
function isCatalog(t: RangeTable): boolean {
  return t.schema === "pg_catalog" || t.schema === "information_schema" ||
    (t.schema === undefined && t.name.startsWith("pg_"));
}

/** A table listed in `[[omnisharded_tables]]`. */
export function isOmni(t: RangeTable, config: ShardingConfig): boolean {
  return config.omni.has(t.name) ||
    (t.schema !== undefined && config.omni.has(`${t.schema}.${t.name}`));
}

/** The table of a RangeVar node's fields. */
export function tableOf(rv: Record<string, unknown>): RangeTable {
  const alias = (rv.alias as { aliasname?: string } | undefined)?.aliasname;
  return { schema: rv.schemaname as string | undefined, name: rv.relname as string, alias };
}

/** The sharded_tables entry for a table (by name, else a column-only entry). */
export function tableSpec(t: RangeTable, config: ShardingConfig): ShardedTable | undefined {
  return config.tables.find((s) =>
    s.name === t.name && (!s.schema || !t.schema || s.schema === t.schema)
  ) ??
    config.tables.find((s) => s.name === undefined);
}

/** `schema.name`, or `name`. */
export function describe(t: RangeTable): string {
  return t.schema ? `${t.schema}.${t.name}` : t.name;
}

/** Where the values of parameters come from: the query's own literals, or Bind. */
export interface ValueContext {
  analysis: Analysis;
  bind?: BindValues;
  lookup?: ShardLookup;
}

/** A key value: text, or (Bind in binary format) raw bytes. */
export interface KeyValue {
  text: string | null;
  binary: Uint8Array | null;
}

const utf8 = new TextDecoder();

/** A constant or parameter value, or null when the expression is something else. */
export function valueOf(node: Node | undefined, ctx: ValueContext): KeyValue | null {
  if (!node) return null;
  if (node.TypeCast) return valueOf((node.TypeCast as { arg: Node }).arg, ctx);
  const c = node.A_Const as Record<string, unknown> | undefined;
  if (c) {
    if (c.isnull) return null;
    if (c.ival !== undefined) {
      return { text: String((c.ival as { ival?: number }).ival ?? 0), binary: null };
    }
    if (c.fval) return { text: (c.fval as { fval: string }).fval, binary: null };
    if (c.sval) return { text: (c.sval as { sval?: string }).sval ?? "", binary: null };
    return null;
  }
  const expr = node.A_Expr as
    | { kind: string; name?: Node[]; lexpr?: Node; rexpr?: Node }
    | undefined;
  if (
    expr && expr.kind === "AEXPR_OP" && !expr.lexpr &&
    (expr.name?.[0]?.String as { sval?: string })?.sval === "-"
  ) {
    // Unary minus (a negative literal that normalization turned into -$n).
    const inner = valueOf(expr.rexpr, ctx);
    if (inner?.text == null) return null;
    return {
      text: inner.text.startsWith("-") ? inner.text.slice(1) : `-${inner.text}`,
      binary: null,
    };
  }
  const param = node.ParamRef as { number?: number } | undefined;
  if (param?.number !== undefined) return paramValue(param.number, ctx);
  return null;
}

function paramValue(number: number, ctx: ValueContext): KeyValue | null {
  const { analysis, bind } = ctx;
  const literalAt = number - analysis.firstParam;
  if (literalAt >= 0 && literalAt < analysis.literals.length) {
    const lit: Literal = analysis.literals[literalAt];
    return { text: lit.value, binary: null };
  }
  if (!bind) return null;
  const value = bind.values[number - 1];
  if (value === undefined || value === null) return null;
  const format = bind.formats.length === 1 ? bind.formats[0] : bind.formats[number - 1] ?? 0;
  return format === 1 ? { text: null, binary: value } : { text: utf8.decode(value), binary: null };
}

/**
 * The shard of a key value: mapping rules first (list, range, default), else the hash (or the
 * plugin hasher's answer in `lookup`; a missing answer is noted there and gives 0 for now).
 */
export function valueShard(
  value: KeyValue,
  spec: ShardedTable,
  options: { shards: number; lookup?: ShardLookup },
): number | null {
  const { shards, lookup } = options;
  const typed = typedValue(value, spec.type);
  if (typed === null) return null;
  lookup?.found.push({ table: spec.name, column: spec.column, value: String(typed) });
  if (spec.mapping.length > 0) {
    for (const m of spec.mapping) {
      if (m.kind === "list" && m.values.some((v) => v === typed)) return m.shard;
    }
    for (const m of spec.mapping) {
      if (m.kind !== "range") continue;
      if (typeof typed !== typeof (m.start ?? m.end)) continue;
      if ((m.start === undefined || m.start <= typed) && (m.end === undefined || typed < m.end)) {
        return m.shard;
      }
    }
    for (const m of spec.mapping) if (m.kind === "default") return m.shard;
    if (spec.plugin === undefined) return null; // matches nothing: every shard
  }
  if (spec.plugin !== undefined) {
    const text = String(typed);
    const known = lookup?.pluginShards.get(pluginKey(spec.plugin, text));
    if (known !== undefined) return known;
    lookup?.missing.push({ plugin: spec.plugin, value: text, spec });
    return 0;
  }
  if (typeof typed === "bigint") return shardForBigint(typed, shards);
  if (spec.type === "uuid") return shardForUuid(typed, shards);
  return shardForText(typed, shards);
}

/** The value in the key's type: bigint, lower-case uuid text, or text. */
function typedValue(value: KeyValue, type: KeyType): bigint | string | null {
  if (value.binary !== null) {
    const b = value.binary;
    if (type === "bigint") {
      const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
      if (b.length === 8) return view.getBigInt64(0);
      if (b.length === 4) return BigInt(view.getInt32(0));
      if (b.length === 2) return BigInt(view.getInt16(0));
      return null;
    }
    if (type === "uuid") {
      if (b.length !== 16) return null;
      const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
      return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${
        hex.slice(20)
      }`;
    }
    return utf8.decode(b);
  }
  const text = value.text;
  if (text === null) return null;
  if (type === "bigint") return parseBigint(text);
  if (type === "uuid") {
    const hex = text.replace(/[{}-]/g, "").toLowerCase();
    if (!/^[0-9a-f]{32}$/.test(hex)) return null;
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${
      hex.slice(20)
    }`;
  }
  return text;
}
