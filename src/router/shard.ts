/**
 * Which shards a statement goes to, and why. Sources, strongest first: a `pgdog_shard` or
 * `pgdog_sharding_key` comment, `SET pgdog.shard` / `SET pgdog.sharding_key`, a schema-qualified
 * table or the session's search_path (schema sharding), the sharding key found in the statement
 * (WHERE equalities and IN lists through AND trees, INSERT values), and finally the table kind:
 * writes to tables copied on every shard go everywhere, reads of them to one shard, and statements
 * on sharded tables without a key go to all shards.
 *
 * @module
 */

import type { Analysis, Literal, TableRef } from "./mod.ts";
import type { Config } from "../config/types.ts";
import type { Node } from "./analyze.ts";
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
}

/** Bind parameter values of an extended-protocol execution (raw bytes per format code). */
export interface BindValues {
  formats: number[];
  values: (Uint8Array | null)[];
}

/** What the session adds: manual routing and the search_path. */
export interface ShardSession {
  /** `SET pgdog.shard` */
  shard?: string;
  /** `SET pgdog.sharding_key` */
  shardingKey?: string;
  /** The client's search_path, as written (e.g. `"$user", public`). */
  searchPath?: string;
}

const utf8 = new TextDecoder();

/** Decides the shards for an analyzed statement. */
export function decideShard(
  analysis: Analysis,
  options: {
    config: ShardingConfig;
    session?: ShardSession;
    bind?: BindValues;
    lookup?: ShardLookup;
  },
): ShardDecision {
  const { config, lookup } = options;
  const session = options.session ?? {};
  const one = (shard: number, reason: string): ShardDecision => ({
    target: { kind: "one", shard },
    reason,
    omniWrite: false,
  });
  const fail = (message: string): ShardDecision => ({
    target: { kind: "all" },
    reason: message,
    omniWrite: false,
    unsupported: message,
  });

  // Manual routing: comments, then SET.
  const commentShard = analysis.directives?.get("shard");
  if (commentShard !== undefined) {
    const n = manualShard(commentShard, config.shards);
    return n === null
      ? fail(`pgdog_shard ${commentShard} is not a shard number below ${config.shards}`)
      : one(n, "pgdog_shard comment");
  }
  const commentKey = analysis.directives?.get("sharding_key");
  if (commentKey !== undefined) {
    return one(keyShard(commentKey, config, lookup), "pgdog_sharding_key comment");
  }
  if (session.shard !== undefined) {
    const n = manualShard(session.shard, config.shards);
    return n === null
      ? fail(`pgdog.shard ${session.shard} is not a shard number below ${config.shards}`)
      : one(n, "SET pgdog.shard");
  }
  if (session.shardingKey !== undefined) {
    return one(keyShard(session.shardingKey, config, lookup), "SET pgdog.sharding_key");
  }

  const info = analysis.info;
  if (info.tooLarge !== undefined) {
    // Routed on what is known of it, a statement could reach the wrong shard: refused instead.
    return fail(
      `${info.tooLarge}: a sharded database cannot route it; send it in smaller pieces, or ` +
        "choose the shard with /* pgdog_shard: n */ or SET pgdog.shard",
    );
  }
  if (info.ast === null) {
    return {
      target: { kind: "any" },
      reason: "does not parse: any shard reports the error",
      omniWrite: false,
    };
  }
  const stmts = info.ast.stmts.map((s) => s.stmt).filter((s): s is Node => s !== undefined);
  if (stmts.length === 0) {
    return { target: { kind: "any" }, reason: "empty query", omniWrite: false };
  }

  // Schema sharding: a qualified table, else the first mapped schema in search_path.
  if (config.schemas.size > 0 || config.defaultSchemaShard !== undefined) {
    for (const t of info.tables) {
      if (t.schema === undefined) continue;
      const s = config.schemas.get(t.schema);
      if (s !== undefined) return one(s, `schema ${t.schema}`);
    }
    for (const schema of searchPath(session.searchPath)) {
      const s = config.schemas.get(schema);
      if (s !== undefined) return one(s, `search_path schema ${schema}`);
    }
    if (config.defaultSchemaShard !== undefined && config.tables.length === 0) {
      return one(config.defaultSchemaShard, "default schema shard");
    }
  }

  if (stmts.length > 1) {
    // Each statement would need its own decision; they go together, so together they must agree.
    const decisions = stmts.map((stmt) => decideStatement(stmt, analysis, options));
    const refused = decisions.find((d) => d.unsupported);
    if (refused) return refused;
    const first = decisions[0];
    const same = decisions.every((d) => sameTarget(d.target, first.target));
    if (same) return { ...first, reason: `every statement: ${first.reason}` };
    return { target: { kind: "all" }, reason: "statements for different shards", omniWrite: false };
  }
  return decideStatement(stmts[0], analysis, options);
}

/** True when two targets name the same shards. */
export function sameTarget(a: ShardTarget, b: ShardTarget): boolean {
  if (a.kind !== b.kind) return false;
  if (a.kind === "one" && b.kind === "one") return a.shard === b.shard;
  if (a.kind === "some" && b.kind === "some") return a.shards.join() === b.shards.join();
  return true;
}

function manualShard(text: string, shards: number): number | null {
  const n = Number(text.trim());
  return Number.isInteger(n) && n >= 0 && n < shards ? n : null;
}

/** A bare sharding key (comment or SET): hashed with the database's sharding function. */
function keyShard(key: string, config: ShardingConfig, lookup?: ShardLookup): number {
  const table = config.tables[0];
  if (table === undefined) return 0;
  return valueShard({ text: key, binary: null }, table, { shards: config.shards, lookup }) ?? 0;
}

function searchPath(value: string | undefined): string[] {
  if (!value) return [];
  return value.split(",").map((s) => s.trim()).map((s) =>
    s.startsWith('"') ? s.slice(1, -1).replaceAll('""', '"') : s.toLowerCase()
  )
    .filter((s) => s !== "" && s !== "$user");
}

interface RangeTable {
  schema?: string;
  name: string;
  alias?: string;
}

function decideStatement(
  stmt: Node,
  analysis: Analysis,
  options: { config: ShardingConfig; bind?: BindValues; lookup?: ShardLookup },
): ShardDecision {
  const { config } = options;
  const type = Object.keys(stmt)[0];
  const body = stmt[type] as Record<string, unknown>;
  const ctx: ValueContext = { analysis, bind: options.bind, lookup: options.lookup };
  switch (type) {
    case "SelectStmt":
      return decideSelect(body, ctx, config);
    case "InsertStmt":
      return decideInsert(body, ctx, config);
    case "UpdateStmt":
    case "DeleteStmt":
      return decideUpdateDelete(type, body, ctx, config);
    case "TransactionStmt":
    case "VariableSetStmt":
    case "VariableShowStmt":
      return {
        target: { kind: "all" },
        reason: "session and transaction control go to every shard in use",
        omniWrite: false,
      };
    case "ExplainStmt":
      return decideStatement((body as { query: Node }).query, analysis, options);
    case "CopyStmt": {
      const copy = body as { relation?: Record<string, unknown>; is_from?: boolean };
      const t = copy.relation ? tableOf(copy.relation) : undefined;
      if (copy.is_from && t && isSharded(t, config)) {
        return {
          target: { kind: "all" },
          reason: "COPY into a sharded table",
          omniWrite: false,
          unsupported:
            "COPY FROM into a sharded table is not supported yet: insert the rows with INSERT",
        };
      }
      if (copy.is_from) {
        return {
          target: { kind: "all" },
          reason: "COPY into a table on every shard",
          omniWrite: true,
          unsupported: "COPY FROM into a table copied on every shard is not supported yet: " +
            "insert the rows with INSERT",
        };
      }
      if (t && !isSharded(t, config)) {
        return {
          target: { kind: "any" },
          reason: "COPY from an omnisharded table",
          omniWrite: false,
        };
      }
      return { target: { kind: "all" }, reason: "COPY TO from every shard", omniWrite: false };
    }
    default:
      // DDL and everything else runs on every shard.
      return {
        target: { kind: "all" },
        reason: `${type.replace(/Stmt$/, "")} runs on every shard`,
        omniWrite: false,
      };
  }
}

function isSharded(t: RangeTable, config: ShardingConfig): boolean {
  return config.tables.some((s) =>
    s.name === undefined
      ? false
      : s.name === t.name && (!s.schema || !t.schema || s.schema === t.schema)
  ) ||
    // A column-only entry makes any table with that column sharded; without a schema cache, a
    // table counts as sharded when it is not declared omnisharded.
    (config.tables.some((s) => s.name === undefined) && !isOmni(t, config));
}

function isOmni(t: RangeTable, config: ShardingConfig): boolean {
  return config.omni.has(t.name) ||
    (t.schema !== undefined && config.omni.has(`${t.schema}.${t.name}`));
}

function tableOf(rv: Record<string, unknown>): RangeTable {
  const alias = (rv.alias as { aliasname?: string } | undefined)?.aliasname;
  return { schema: rv.schemaname as string | undefined, name: rv.relname as string, alias };
}

/** Range tables of a FROM clause (through joins; subqueries are not looked into). */
function fromTables(from: unknown, out: RangeTable[]): void {
  if (!Array.isArray(from)) return;
  for (const item of from as Node[]) collectFrom(item, out);
}

function collectFrom(node: Node, out: RangeTable[]): void {
  if (node.RangeVar) out.push(tableOf(node.RangeVar as Record<string, unknown>));
  else if (node.JoinExpr) {
    const j = node.JoinExpr as { larg: Node; rarg: Node };
    collectFrom(j.larg, out);
    collectFrom(j.rarg, out);
  }
}

/** Conditions under ON clauses of inner joins, which filter like WHERE. */
function joinQuals(from: unknown, out: Node[]): void {
  if (!Array.isArray(from)) return;
  const visit = (node: Node): void => {
    const j = node.JoinExpr as
      | { jointype?: string; larg: Node; rarg: Node; quals?: Node }
      | undefined;
    if (!j) return;
    if (j.jointype === "JOIN_INNER" && j.quals) out.push(j.quals);
    visit(j.larg);
    visit(j.rarg);
  };
  for (const item of from as Node[]) visit(item);
}

function decideSelect(
  body: Record<string, unknown>,
  ctx: ValueContext,
  config: ShardingConfig,
): ShardDecision {
  const tables: RangeTable[] = [];
  fromTables(body.fromClause, tables);
  if (tables.length === 0) return { target: { kind: "any" }, reason: "no table", omniWrite: false };
  const sharded = tables.filter((t) => isSharded(t, config));
  if (sharded.length === 0) {
    return { target: { kind: "any" }, reason: "only omnisharded tables", omniWrite: false };
  }
  const conditions: Node[] = [];
  if (body.whereClause) conditions.push(body.whereClause as Node);
  joinQuals(body.fromClause, conditions);
  const found = keysIn(conditions, tables, ctx, config);
  if (found !== null) return found;
  const merge = needsMerge(body);
  if (merge) {
    return {
      target: { kind: "all" },
      reason: "no sharding key",
      omniWrite: false,
      unsupported:
        `${merge} across shards is not supported yet: add the sharding key to the WHERE clause ` +
        "(or route with /* pgdog_shard: N */)",
    };
  }
  return {
    target: { kind: "all" },
    reason: `no sharding key for ${describe(sharded[0])}`,
    omniWrite: false,
  };
}

/** What a multi-shard SELECT would need pgdog to merge (not done yet), if anything. */
function needsMerge(body: Record<string, unknown>): string | null {
  if (Array.isArray(body.sortClause) && body.sortClause.length > 0) return "ORDER BY";
  if (body.limitCount || body.limitOffset) return "LIMIT/OFFSET";
  if (Array.isArray(body.groupClause) && body.groupClause.length > 0) return "GROUP BY";
  if (body.havingClause) return "HAVING";
  if (Array.isArray(body.distinctClause)) return "DISTINCT";
  if (hasAggregate(body.targetList)) return "an aggregate";
  if (body.op && body.op !== "SETOP_NONE") return "UNION/INTERSECT/EXCEPT";
  return null;
}

const AGGREGATES = new Set([
  "count",
  "sum",
  "avg",
  "min",
  "max",
  "stddev",
  "stddev_samp",
  "stddev_pop",
  "variance",
  "var_samp",
  "var_pop",
  "array_agg",
  "string_agg",
  "bool_and",
  "bool_or",
  "every",
  "json_agg",
  "jsonb_agg",
  "bit_and",
  "bit_or",
]);

function hasAggregate(node: unknown): boolean {
  if (Array.isArray(node)) return node.some(hasAggregate);
  if (node === null || typeof node !== "object") return false;
  for (const [key, value] of Object.entries(node)) {
    if (key === "FuncCall") {
      const f = value as { funcname?: Node[]; over?: unknown };
      const name = (f.funcname?.[f.funcname.length - 1]?.String as { sval?: string } | undefined)
        ?.sval;
      if (name && AGGREGATES.has(name) && !f.over) return true;
    }
    if (key === "SubLink" || key === "RangeSubselect") continue;
    if (hasAggregate(value)) return true;
  }
  return false;
}

function describe(t: RangeTable): string {
  return t.schema ? `${t.schema}.${t.name}` : t.name;
}

function decideInsert(
  body: Record<string, unknown>,
  ctx: ValueContext,
  config: ShardingConfig,
): ShardDecision {
  const t = tableOf(body.relation as Record<string, unknown>);
  if (!isSharded(t, config)) {
    return {
      target: { kind: "all" },
      reason: `INSERT into omnisharded ${describe(t)}`,
      omniWrite: true,
    };
  }
  const spec = tableSpec(t, config);
  if (!spec) {
    return { target: { kind: "all" }, reason: `INSERT into ${describe(t)}`, omniWrite: false };
  }
  if (body.selectStmt === undefined) {
    // DEFAULT VALUES: a column default makes the key, as below.
    return {
      target: { kind: "any" },
      reason: `INSERT ... DEFAULT VALUES into ${describe(t)}: one shard`,
      omniWrite: false,
    };
  }
  let cols = ((body.cols as Node[] | undefined) ?? []).map((c) =>
    (c.ResTarget as { name: string }).name
  );
  const select = (body.selectStmt as Node | undefined)?.SelectStmt as
    | { valuesLists?: Node[] }
    | undefined;
  if (cols.length === 0 && select?.valuesLists) {
    // No column list: the values are the table's columns in order, which the catalog knows.
    const known = ctx.lookup?.columns?.(t);
    if (known === undefined) {
      ctx.lookup?.missingColumns?.push(
        t.schema ? { schema: t.schema, name: t.name } : { name: t.name },
      );
      return {
        target: { kind: "all" },
        reason: `INSERT into ${describe(t)} without a column list: column order unknown`,
        omniWrite: false,
        unsupported: `an INSERT into sharded table ${describe(t)} without a column list needs ` +
          "the table's column order, which pgdog reads before the query runs (so not in a query " +
          "that also changes tables): name the columns, or send the DDL first",
      };
    }
    cols = known;
  }
  const at = cols.indexOf(spec.column);
  if (!select?.valuesLists) {
    return {
      target: { kind: "all" },
      reason: "INSERT ... SELECT",
      omniWrite: false,
      unsupported: `INSERT ... SELECT into sharded table ${describe(t)} is not supported yet`,
    };
  }
  if (at < 0) {
    // No key given (a column default will make one): any one shard keeps the row once.
    return {
      target: { kind: "any" },
      reason: `INSERT without ${spec.column}: one shard`,
      omniWrite: false,
    };
  }
  const shards = new Set<number>();
  for (const row of select.valuesLists) {
    const items = (row.List as { items: Node[] }).items;
    // DEFAULT (or a short row, without a column list) leaves the key to a column default.
    if (at >= items.length || items[at].SetToDefault !== undefined) continue;
    const value = valueOf(items[at], ctx);
    const shard = value === null
      ? null
      : valueShard(value, spec, { shards: config.shards, lookup: ctx.lookup });
    if (shard === null) {
      return {
        target: { kind: "all" },
        reason: `INSERT with a ${spec.column} pgdog can't evaluate`,
        omniWrite: false,
        unsupported: `the value of sharding key ${spec.column} must be a constant or a parameter`,
      };
    }
    shards.add(shard);
  }
  if (shards.size === 0) {
    return {
      target: { kind: "any" },
      reason: `INSERT with DEFAULT for ${spec.column}: one shard`,
      omniWrite: false,
    };
  }
  if (shards.size === 1) {
    const [shard] = shards;
    return {
      target: { kind: "one", shard },
      reason: `INSERT ${describe(t)}.${spec.column}`,
      omniWrite: false,
    };
  }
  return {
    target: { kind: "some", shards: [...shards].sort((a, b) => a - b) },
    reason: `INSERT rows for ${shards.size} shards`,
    omniWrite: false,
    unsupported:
      `a multi-row INSERT into ${
        describe(t)
      } whose rows belong to different shards is not supported: ` +
      "insert them in separate statements",
  };
}

function decideUpdateDelete(
  type: string,
  body: Record<string, unknown>,
  ctx: ValueContext,
  config: ShardingConfig,
): ShardDecision {
  const t = tableOf(body.relation as Record<string, unknown>);
  const verb = type === "UpdateStmt" ? "UPDATE" : "DELETE";
  if (!isSharded(t, config)) {
    return {
      target: { kind: "all" },
      reason: `${verb} of omnisharded ${describe(t)}`,
      omniWrite: true,
    };
  }
  const spec = tableSpec(t, config);
  if (spec && type === "UpdateStmt") {
    const targets = ((body.targetList as Node[] | undefined) ?? []).map((c) =>
      (c.ResTarget as { name: string }).name
    );
    if (targets.includes(spec.column)) {
      return {
        target: { kind: "all" },
        reason: "UPDATE of the sharding key",
        omniWrite: false,
        unsupported:
          `changing sharding key ${spec.column} with UPDATE is not supported: the row would belong to ` +
          "another shard (delete it and insert it again)",
      };
    }
  }
  const tables: RangeTable[] = [t];
  fromTables(body.fromClause ?? body.usingClause, tables);
  const conditions: Node[] = body.whereClause ? [body.whereClause as Node] : [];
  const found = keysIn(conditions, tables, ctx, config);
  if (found !== null) return found;
  return { target: { kind: "all" }, reason: `${verb} without a sharding key`, omniWrite: false };
}

/** The sharded_tables entry for a table (by name, else a column-only entry). */
function tableSpec(t: RangeTable, config: ShardingConfig): ShardedTable | undefined {
  return config.tables.find((s) =>
    s.name === t.name && (!s.schema || !t.schema || s.schema === t.schema)
  ) ??
    config.tables.find((s) => s.name === undefined);
}

interface ValueContext {
  analysis: Analysis;
  bind?: BindValues;
  lookup?: ShardLookup;
}

/** A key value: text, or (Bind in binary format) raw bytes. */
interface KeyValue {
  text: string | null;
  binary: Uint8Array | null;
}

/**
 * Shards selected by sharding-key conditions in AND trees (`col = v`, `v = col`, `col IN (...)`,
 * `col IS NOT DISTINCT FROM v`); null when none is found.
 */
function keysIn(
  conditions: Node[],
  tables: RangeTable[],
  ctx: ValueContext,
  config: ShardingConfig,
): ShardDecision | null {
  const sets: Array<{ shards: Set<number>; why: string }> = [];
  const visit = (node: Node): void => {
    const bool = node.BoolExpr as { boolop: string; args: Node[] } | undefined;
    if (bool) {
      if (bool.boolop === "AND_EXPR") { for (const a of bool.args) visit(a); }
      return; // OR and NOT: no single key
    }
    const expr = node.A_Expr as
      | { kind: string; name?: Node[]; lexpr?: Node; rexpr?: Node }
      | undefined;
    if (!expr) return;
    const op = (expr.name?.[0]?.String as { sval?: string } | undefined)?.sval;
    if ((expr.kind === "AEXPR_OP" && op === "=") || expr.kind === "AEXPR_NOT_DISTINCT") {
      for (const [colSide, valueSide] of [[expr.lexpr, expr.rexpr], [expr.rexpr, expr.lexpr]]) {
        const key = keyColumn(colSide, tables, config);
        if (!key) continue;
        const value = valueOf(valueSide, ctx);
        if (value === null) continue;
        const shard = valueShard(value, key.spec, { shards: config.shards, lookup: ctx.lookup });
        if (shard === null) {
          sets.push({ shards: allShards(config.shards), why: `${key.label} matches no mapping` });
        } else sets.push({ shards: new Set([shard]), why: key.label });
        return;
      }
    } else if (expr.kind === "AEXPR_IN" && op === "=") {
      const key = keyColumn(expr.lexpr, tables, config);
      const items = (expr.rexpr?.List as { items?: Node[] } | undefined)?.items;
      if (!key || !items) return;
      const shards = new Set<number>();
      for (const item of items) {
        const value = valueOf(item, ctx);
        if (value === null) return;
        const shard = valueShard(value, key.spec, { shards: config.shards, lookup: ctx.lookup });
        if (shard === null) return;
        shards.add(shard);
      }
      sets.push({ shards, why: `${key.label} IN (...)` });
    }
  };
  for (const c of conditions) visit(c);
  if (sets.length === 0) return null;
  // Every condition must hold: only their common shards can have rows.
  let common = sets[0].shards;
  for (const s of sets.slice(1)) common = new Set([...common].filter((x) => s.shards.has(x)));
  if (common.size === 0) common = sets[0].shards;
  const why = sets.map((s) => s.why).join(" and ");
  const list = [...common].sort((a, b) => a - b);
  if (list.length === 1) {
    return { target: { kind: "one", shard: list[0] }, reason: why, omniWrite: false };
  }
  if (list.length === config.shards) {
    return { target: { kind: "all" }, reason: why, omniWrite: false };
  }
  return { target: { kind: "some", shards: list }, reason: why, omniWrite: false };
}

function allShards(n: number): Set<number> {
  return new Set(Array.from({ length: n }, (_, i) => i));
}

/** The sharded_tables entry a column reference names, with a label, if it is a sharding key. */
function keyColumn(
  node: Node | undefined,
  tables: RangeTable[],
  config: ShardingConfig,
): { spec: ShardedTable; label: string } | null {
  const ref = node?.ColumnRef as { fields?: Node[] } | undefined;
  if (!ref?.fields) return null;
  const names = ref.fields.map((f) => (f.String as { sval?: string } | undefined)?.sval);
  if (names.some((n) => n === undefined)) return null;
  const column = names[names.length - 1]!;
  let candidates: RangeTable[];
  if (names.length >= 2) {
    const qualifier = names[names.length - 2]!;
    candidates = tables.filter((t) => (t.alias ?? t.name) === qualifier || t.name === qualifier);
  } else {
    candidates = tables.length === 1 ? tables : tables.filter((t) => isSharded(t, config));
  }
  for (const t of candidates) {
    if (!isSharded(t, config)) continue;
    const spec = config.tables.find((s) =>
      s.column === column && (s.name === undefined || s.name === t.name) &&
      (!s.schema || !t.schema || s.schema === t.schema)
    );
    if (spec) return { spec, label: `${t.alias ?? t.name}.${column}` };
  }
  return null;
}

/** A constant or parameter value, or null when the expression is something else. */
function valueOf(node: Node | undefined, ctx: ValueContext): KeyValue | null {
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

/**
 * The routing view of a sharded database's configuration: its `[[sharded_tables]]`,
 * `[[sharded_schemas]]` and `[[omnisharded_tables]]` entries, for `shards` shards.
 */
export function shardingConfigFor(
  config: Pick<Config, "sharded_tables" | "sharded_schemas" | "omnisharded_tables">,
  database: string,
  options: { shards: number },
): ShardingConfig {
  const tables: ShardedTable[] = config.sharded_tables.filter((t) => t.database === database)
    .map((t) => ({
      name: t.name,
      schema: t.schema,
      column: t.column,
      type: t.data_type,
      mapping: t.mapping.map((m): KeyMapping =>
        m.kind === "list"
          ? { kind: "list", values: m.values, shard: m.shard }
          : m.kind === "range"
          ? { kind: "range", start: m.start, end: m.end, shard: m.shard }
          : { kind: "default", shard: m.shard }
      ),
      plugin: t.hasher.startsWith("plugin:") ? t.hasher.slice("plugin:".length) : undefined,
    }));
  const schemas = new Map<string, number>();
  let defaultSchemaShard: number | undefined;
  for (const s of config.sharded_schemas) {
    if (s.database !== database || s.all) continue;
    if (s.name === undefined) defaultSchemaShard = s.shard;
    else schemas.set(s.name, s.shard);
  }
  const omni = new Set<string>();
  for (const o of config.omnisharded_tables) {
    if (o.database === database) { for (const t of o.tables) omni.add(t); }
  }
  return { shards: options.shards, tables, schemas, defaultSchemaShard, omni };
}

/** A single statement that only concerns the session or the transaction (BEGIN, SET, SHOW). */
export function isSessionControl(analysis: Analysis): boolean {
  const stmts = analysis.info.ast?.stmts ?? [];
  if (stmts.length !== 1 || !stmts[0].stmt) return false;
  const type = Object.keys(stmts[0].stmt)[0];
  return type === "TransactionStmt" || type === "VariableSetStmt" || type === "VariableShowStmt";
}

/** The value a `SET [LOCAL] search_path` statement gives, as written; null for other statements. */
export function searchPathSet(analysis: Analysis): string | null {
  const stmts = analysis.info.ast?.stmts ?? [];
  if (stmts.length !== 1) return null;
  const set = stmts[0].stmt?.VariableSetStmt as
    | { name?: string; kind?: string; args?: Node[] }
    | undefined;
  if (!set || set.name !== "search_path") return null;
  if (set.kind !== "VAR_SET_VALUE") return "";
  const ctx: ValueContext = { analysis };
  const parts: string[] = [];
  for (const arg of set.args ?? []) {
    const v = valueOf(arg, ctx);
    if (v?.text == null) return null;
    parts.push(v.text.includes(",") ? `"${v.text}"` : v.text);
  }
  return parts.join(", ");
}
