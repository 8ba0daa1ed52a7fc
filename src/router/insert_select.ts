/**
 * INSERT ... SELECT into a sharded table (`[rewrite] enabled = true`, `split_inserts =
 * "rewrite"`): pgdog runs the SELECT, reads its rows as text and inserts each on the shard its
 * key maps to, with one multi-row `INSERT ... VALUES` per shard (per {@linkcode BATCH_ROWS}
 * rows). This module is the pure part: what the statement is ({@linkcode insertSelectOf}) and the
 * statements that insert the rows ({@linkcode insertStatements}); src/frontend/insert_select_run.ts
 * runs them.
 *
 * Each value is written as a string literal of unknown type (`'42'`, or NULL), which PostgreSQL
 * reads with the input function of the target column's type, as it reads the text the SELECT gave.
 *
 * @module
 */

import { parseSync } from "libpg-query";
import { deparseSync } from "pgsql-deparser";
import type { Node } from "./analyze.ts";
import { MAX_NESTING, nestingEstimate } from "./depth.ts";
import { walkTree } from "./tree.ts";
import {
  describe,
  isSharded,
  type RangeTable,
  type ShardedTable,
  type ShardingConfig,
  tableOf,
  tableSpec,
} from "./shard_keys.ts";

/** Rows per INSERT statement pgdog writes (several statements per shard beyond it). */
export const BATCH_ROWS = 1000;

/** An INSERT ... SELECT into a sharded table, as pgdog runs it. */
export interface InsertSelect {
  table: RangeTable;
  /** The sharded_tables entry of the table. */
  spec: ShardedTable;
  /** The column list as written; null: none (the table's first columns, in its order). */
  columns: string[] | null;
  /** The SELECT (with the INSERT's WITH clause), as a statement of its own. */
  selectSql: string;
  /** `ON CONFLICT ...` as written, carried to every INSERT; null when none. */
  onConflict: string | null;
  /** `RETURNING ...` as written, carried to every INSERT; null when none. */
  returning: string | null;
}

/** The refusal of a statement pgdog can't run this way (0A000), with why. */
export interface InsertSelectRefusal {
  refusal: string;
}

const MAYBE = /insert/i;

/**
 * What `sql` is when it is one INSERT ... SELECT (not VALUES, not DEFAULT VALUES) into a sharded
 * table: the parts pgdog runs, or why it can't; null for any other statement.
 */
export function insertSelectOf(
  sql: string,
  config: ShardingConfig,
  options: {
    /** Bind parameters ($1 is params[0]) as text, written into the SELECT as literals. */
    params?: readonly (string | null)[];
  } = {},
): InsertSelect | InsertSelectRefusal | null {
  if (!MAYBE.test(sql) || nestingEstimate(sql) > MAX_NESTING) return null;
  let tree: { stmts?: Array<{ stmt?: Node; stmt_location?: number; stmt_len?: number }> };
  try {
    tree = parseSync(sql);
  } catch {
    return null;
  }
  const stmts = tree.stmts ?? [];
  if (stmts.length !== 1) return null;
  const insert = stmts[0].stmt?.InsertStmt as Node | undefined;
  if (insert === undefined) return null;
  const select = (insert.selectStmt as { SelectStmt?: Node } | undefined)?.SelectStmt;
  if (select === undefined || select.valuesLists !== undefined) return null;
  const table = tableOf(insert.relation as Record<string, unknown>);
  if (!isSharded(table, config)) return null;
  const spec = tableSpec(table, config);
  if (spec === undefined) return null;
  const name = describe(table);
  // (PostgreSQL 18 parses RETURNING as returningClause; earlier ones as returningList.)
  const returningExprs = (insert.returningClause as { exprs?: Node[] } | undefined)?.exprs ??
    (insert.returningList as Node[] | undefined);
  if (options.params !== undefined && hasParams(returningExprs)) {
    return {
      refusal: `INSERT ... SELECT into sharded table ${name} with a parameter in its RETURNING ` +
        "list is not supported: write the value in the statement",
    };
  }
  if (insert.override !== undefined && insert.override !== "OVERRIDING_NOT_SET") {
    return {
      refusal: `INSERT ... OVERRIDING ... SELECT into sharded table ${name} is not supported`,
    };
  }
  const conflict = insert.onConflictClause as { action?: string; whereClause?: Node } | undefined;
  if (
    returningExprs !== undefined && returningExprs.length > 0 && conflict !== undefined &&
    (conflict.action === "ONCONFLICT_NOTHING" ||
      (conflict.action === "ONCONFLICT_UPDATE" && conflict.whereClause !== undefined))
  ) {
    return {
      refusal: `INSERT ... SELECT into sharded table ${name} with RETURNING and an ON CONFLICT ` +
        "that may skip rows is not supported: the order of the rows returned can't be known " +
        "(drop RETURNING, or select the rows inserted afterwards)",
    };
  }
  const columns = ((insert.cols as Node[] | undefined) ?? []).map((c) =>
    (c.ResTarget as { name: string; indirection?: unknown }).name
  );
  if (
    ((insert.cols as Node[] | undefined) ?? []).some((c) =>
      (c.ResTarget as { indirection?: unknown }).indirection !== undefined
    )
  ) {
    return {
      refusal: `INSERT ... SELECT into sharded table ${name} with subscripted or field ` +
        "columns in its column list is not supported",
    };
  }
  const withClause = insert.withClause as Node | undefined;
  if (withClause !== undefined && select.withClause !== undefined) {
    return {
      refusal: `INSERT ... SELECT into sharded table ${name}: a WITH on both the INSERT ` +
        "and its SELECT is not supported",
    };
  }
  let selectNode: unknown = { SelectStmt: withClause ? { ...select, withClause } : select };
  if (options.params !== undefined) {
    if (hasParams(insert.onConflictClause)) {
      return {
        refusal: `INSERT ... SELECT into sharded table ${name} with a parameter in its ON ` +
          "CONFLICT clause is not supported: write the value in the statement",
      };
    }
    const missing = { number: 0 };
    selectNode = withParams(selectNode, options.params, missing);
    if (missing.number > 0) {
      return { refusal: `INSERT ... SELECT: parameter $${missing.number} has no value` };
    }
  }
  let selectSql: string;
  try {
    selectSql = deparseSync(selectNode as never, { pretty: false });
    parseSync(selectSql);
  } catch {
    return {
      refusal: `pgdog can't write the SELECT of this INSERT ... SELECT into sharded table ` +
        `${name} as a statement of its own`,
    };
  }
  // ON CONFLICT and RETURNING as written: the text from their keywords (locations are bytes).
  const bytes = new TextEncoder().encode(sql);
  const text = (from: number, to: number): string =>
    new TextDecoder().decode(bytes.subarray(from, to)).replace(/[\s;]+$/, "");
  const start = stmts[0].stmt_location ?? 0;
  let end = stmts[0].stmt_len ? start + stmts[0].stmt_len : bytes.length;
  let returning: string | null = null;
  if (returningExprs !== undefined && returningExprs.length > 0) {
    const first = returningExprs[0].ResTarget as { location?: number } | undefined;
    const at = first?.location;
    // The keyword is the last "RETURNING" before its first expression (only blanks, comments
    // or PostgreSQL 18's WITH (OLD AS ...) come between).
    const before = at === undefined ? "" : text(start, at);
    const keyword = before.search(/returning(?![\s\S]*returning)/i);
    if (at === undefined || keyword < 0) {
      return { refusal: `pgdog can't read the RETURNING clause of this INSERT ... SELECT` };
    }
    const keywordAt = start + new TextEncoder().encode(before.slice(0, keyword)).length;
    returning = text(keywordAt, end);
    end = keywordAt;
  }
  let onConflict: string | null = null;
  if (conflict !== undefined) {
    onConflict = text((conflict as { location?: number }).location ?? end, end);
  }
  return {
    table,
    spec,
    columns: columns.length === 0 ? null : columns,
    selectSql,
    onConflict,
    returning,
  };
}

/** A copy of `node` with each parameter `$n` replaced by its value as a literal. */
function withParams(
  node: unknown,
  params: readonly (string | null)[],
  missing: { number: number },
): unknown {
  if (Array.isArray(node)) return node.map((n) => withParams(n, params, missing));
  if (node === null || typeof node !== "object") return node;
  const param = (node as { ParamRef?: { number?: number; location?: number } }).ParamRef;
  if (param !== undefined) {
    const n = param.number ?? 0;
    if (n < 1 || n > params.length) {
      missing.number ||= n;
      return node;
    }
    const value = params[n - 1];
    return value === null
      ? { A_Const: { isnull: true, location: param.location } }
      : { A_Const: { sval: { sval: value }, location: param.location } };
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node as Record<string, unknown>)) {
    out[k] = withParams(v, params, missing);
  }
  return out;
}

/** Whether a parse tree holds a parameter. */
function hasParams(node: unknown): boolean {
  let found = false;
  walkTree([node], (key) => {
    if (key === "ParamRef") found = true;
    return !found;
  });
  return found;
}

/** A name as PostgreSQL reads it back (quoted). */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** A value of a row as a literal (unknown type) or NULL. */
function literal(value: string | null): string {
  return value === null ? "NULL" : `'${value.replaceAll("'", "''")}'`;
}

/**
 * The statement that answers an INSERT ... SELECT ... RETURNING whose SELECT gave no rows (for
 * its RowDescription and `INSERT 0 0`): the same INSERT over no rows, routed to `shard` by hand.
 */
export function emptyInsert(plan: InsertSelect, shard: number): string {
  const t = plan.table;
  const target = (t.schema ? `${quoteIdent(t.schema)}.` : "") + quoteIdent(t.name) +
    (t.alias ? ` AS ${quoteIdent(t.alias)}` : "");
  const columns = plan.columns === null ? "" : ` (${plan.columns.map(quoteIdent).join(", ")})`;
  return `/* pgdog_shard: ${shard} */ INSERT INTO ${target}${columns} SELECT * FROM (` +
    `${plan.selectSql}) AS pgdog_rows WHERE false` +
    (plan.onConflict === null ? "" : ` ${plan.onConflict}`) +
    (plan.returning === null ? "" : ` ${plan.returning}`);
}

/** One INSERT pgdog runs for the rows of one shard. */
export interface ShardInsert {
  /** The shard; null: any one shard (no key in the rows: a column default makes it). */
  shard: number | null;
  sql: string;
  rows: number;
  /** The rows it inserts: their positions in the SELECT's rows (0-based), in its VALUES order. */
  positions: number[];
}

/**
 * The INSERTs of `rows` (the SELECT's, as text) into `columns` of the table: each row goes to
 * `shards[i]`, grouped per shard in ascending shard order, {@linkcode BATCH_ROWS} rows a
 * statement at most.
 */
export function insertStatements(
  plan: InsertSelect,
  rows: readonly (readonly (string | null)[])[],
  options: { columns: readonly string[]; shards: readonly (number | null)[] },
): ShardInsert[] {
  const t = plan.table;
  const target = (t.schema ? `${quoteIdent(t.schema)}.` : "") + quoteIdent(t.name) +
    (t.alias ? ` AS ${quoteIdent(t.alias)}` : "");
  const head = `INSERT INTO ${target} (${options.columns.map(quoteIdent).join(", ")}) VALUES `;
  const tail = (plan.onConflict === null ? "" : ` ${plan.onConflict}`) +
    (plan.returning === null ? "" : ` ${plan.returning}`);
  const byShard = new Map<number | null, number[]>();
  rows.forEach((_, i) => {
    const shard = options.shards[i];
    const list = byShard.get(shard);
    if (list === undefined) byShard.set(shard, [i]);
    else list.push(i);
  });
  const order = [...byShard.keys()].sort((a, b) => (a ?? -1) - (b ?? -1));
  const out: ShardInsert[] = [];
  for (const shard of order) {
    const indexes = byShard.get(shard)!;
    for (let from = 0; from < indexes.length; from += BATCH_ROWS) {
      const part = indexes.slice(from, from + BATCH_ROWS);
      const values = part.map((i) => `(${rows[i].map(literal).join(", ")})`).join(", ");
      out.push({ shard, sql: head + values + tail, rows: part.length, positions: part });
    }
  }
  return out;
}
