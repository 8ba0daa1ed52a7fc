/**
 * The planning half of the cross-shard engine: from the parse tree of a SELECT that every shard
 * (or the shards its keys select) can run, the {@linkcode MergePlan} that turns their answers
 * into the answer of one database, and the SQL each shard runs (deparsed with pgsql-deparser).
 * The cross-shard rule (`cross_shard.ts`) proves where the statement may run; this module only
 * plans the merge of its outer query, or says why it can't.
 *
 * What is planned:
 * - **Rows** (no aggregation): ORDER BY on output names, aliases, positions, expressions and
 *   columns not selected (hidden columns appended to the shard's select list), ASC/DESC, NULLS
 *   FIRST/LAST, COLLATE; the shards sort too (`shardsSorted`). LIMIT/OFFSET/FETCH FIRST: the
 *   shards get `LIMIT limit + offset`. DISTINCT and DISTINCT ON run on the shards and again here.
 * - **Aggregates**: count, sum, min, max, avg, stddev/variance (+ _pop/_samp), bool_and, bool_or,
 *   every, bit_and, bit_or split into partials (see `AggregateSpec`); FILTER stays in the partial;
 *   DISTINCT aggregates make the shards group on their arguments too; array_agg, string_agg,
 *   json_agg, jsonb_agg make the shards send one row per input row (the other aggregates' partials
 *   then cover that row alone). GROUP BY on expressions, positions, aliases; HAVING, ORDER BY and
 *   LIMIT after grouping.
 * - **Groups and window partitions on a sharding key** are whole on one shard: the shards run the
 *   query as it is (any aggregate, HAVING, window function), pgdog sorts and cuts.
 * - **Set operations**: UNION ALL (sorted and cut if asked), UNION (the shards' distinct rows,
 *   deduplicated again), one INTERSECT [ALL] or EXCEPT [ALL] of two SELECTs (each row with its
 *   count on either side). A part every shard has (omnisharded tables, no table;
 *   `replicatedArms`) is counted once: each shard sends its distinct rows with their count there,
 *   and pgdog takes the largest count instead of adding them up (UNION ALL with one such part
 *   is planned that way too).
 *
 * What is refused (0A000, with the reason): expressions over aggregates in the select list,
 * aggregates pgdog can't combine (percentile_*, mode, corr...), GROUPING SETS/ROLLUP/CUBE,
 * window functions not partitioned by a sharding key, FETCH ... WITH TIES, FOR UPDATE with a
 * merge, mixes of UNION/INTERSECT/EXCEPT, and any shard statement PostgreSQL's parser would not
 * read back as the tree pgdog meant.
 *
 * Literals that normalization turned into parameters are put back first (the plan and the shard
 * SQL carry their values); the client's own `$n` keep their numbers, and the engine reads their
 * values at run time ({@linkcode NumberSource} `{ param }`, {@linkcode Expr} `{ param }`).
 *
 * @module
 */

import { deparseSync } from "pgsql-deparser";
import { parseSync } from "libpg-query";
import type {
  AggregateFunction,
  AggregateSpec,
  Expr,
  MergePlan,
  NumberSource,
  OutputColumn,
  SortKey,
} from "../cross_shard/plan.ts";
import type { Node } from "./analyze.ts";
import { walkTree } from "./tree.ts";
import { errorMessage } from "../log.ts";
import type { ValueContext } from "./shard_keys.ts";
import type { TableRef } from "./analyze.ts";
import { BUILTIN_AGGREGATES, functionName, isAggregateFunction } from "./aggregates.ts";

/** Why a statement can't be merged (SQLSTATE 0A000), said to the client. */
export class MergeRefusal extends Error {}

/** What planning needs besides the statement. */
export interface MergePlanContext {
  values: ValueContext;
  /**
   * Whether a column reference of the outer query names a sharding key of its rows (rows with
   * equal values of it are on one shard): groups and window partitions on it are whole on one
   * shard, so the shards compute them.
   */
  isKey?: (column: Node) => boolean;
  /** Filled with the column orders the plan read from `values.lookup` (for `*`). */
  columnsUsed?: Array<{ table: TableRef; columns: string[] | undefined }>;
  /**
   * A set operation's parts (left to right, as {@linkcode setOperationArms} finds them) whose
   * rows every shard has (omnisharded tables, no table): each shard would send them again, so
   * the plan counts them once.
   */
  replicatedArms?: boolean[];
}

/**
 * The merge plan of a cross-shard SELECT (`{ SelectStmt }`, EXPLAIN unwrapped), or the reason it
 * can't be merged.
 */
export function planMerge(stmt: Node, ctx: MergePlanContext): MergePlan | { refused: string } {
  try {
    const tree = withLiterals(stmt, ctx.values) as Node;
    const body = tree.SelectStmt as Node | undefined;
    if (!body) throw new MergeRefusal("only a SELECT can be merged across shards");
    const op = body.op as string | undefined;
    return op && op !== "SETOP_NONE" ? planSetOperation(body, ctx) : planSelect(body, ctx);
  } catch (e) {
    if (e instanceof MergeRefusal) return { refused: e.message };
    // pgsql-deparser doesn't know every node: refused, never a guess.
    return {
      refused: `pgdog can't write this statement for the shards (${errorMessage(e)}): route it ` +
        "with /* pgdog_shard: N */",
    };
  }
}

/** A short human description of a plan, for `pgdog route` and EXPLAIN. */
export function describeMergePlan(plan: MergePlan): string {
  const parts: string[] = [];
  const col = (n: number): string => String(n + 1);
  const keys = (ks: SortKey[]): string =>
    ks.map((k) =>
      col(k.column) + (k.descending ? " desc" : "") +
      (k.nullsFirst !== k.descending ? (k.nullsFirst ? " nulls first" : " nulls last") : "") +
      (k.collation !== null ? ` collate "${k.collation}"` : "")
    ).join(", ");
  const num = (n: NumberSource): string => "value" in n ? String(n.value) : `$${n.param}`;
  const a = plan.aggregate;
  if (a) {
    if (a.groupBy.length > 0) parts.push(`group by ${a.groupBy.map(col).join(", ")}`);
    const aggs = a.aggregates.map((s) =>
      `${s.fn}(${s.distinct ? "distinct " : ""}${s.star ? "*" : s.partials.map(col).join(", ")}` +
      // Its ORDER BY keys are positions in its partials: shown as shard columns.
      `${
        s.orderBy.length > 0
          ? ` order by ${keys(s.orderBy.map((k) => ({ ...k, column: s.partials[k.column] })))}`
          : ""
      })`
    );
    parts.push(`aggregate ${aggs.join(", ")}`);
  }
  if (plan.having) parts.push("having");
  if (plan.setOperation) {
    const s = plan.setOperation;
    parts.push(`${s.op}${s.all ? " all" : ""}`);
  }
  if (plan.distinct !== null) {
    parts.push(
      plan.distinct.length === 0 ? "distinct" : `distinct on ${plan.distinct.map(col).join(", ")}`,
    );
  }
  if (plan.orderBy.length > 0) {
    parts.push(`${plan.shardsSorted ? "merge sorted" : "sort"} by ${keys(plan.orderBy)}`);
  }
  if (plan.offset) parts.push(`offset ${num(plan.offset)}`);
  if (plan.limit) parts.push(`limit ${num(plan.limit)}`);
  if (plan.visible < plan.shardColumns && !a) {
    parts.push(`${plan.shardColumns - plan.visible} hidden column(s)`);
  }
  return `merge: ${parts.join("; ") || "concatenate"}` +
    (plan.shardSql !== null ? ` (shards: ${plan.shardSql})` : "");
}

// ---- literals --------------------------------------------------------------------------------

/** A copy of the tree with the literals normalization took out put back (locations dropped). */
export function withLiterals(node: unknown, values: ValueContext): unknown {
  const { firstParam, literals } = values.analysis;
  const copy = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(copy);
    if (v === null || typeof v !== "object") return v;
    const o = v as Node;
    // `-5` became `-$n`: the parser folds a minus into the constant; so does this.
    const minus = o.A_Expr as { kind?: string; name?: Node[]; lexpr?: Node; rexpr?: Node };
    const negated = minus?.kind === "AEXPR_OP" && !minus.lexpr && minus.name?.length === 1 &&
        stringOf(minus.name[0]) === "-"
      ? (minus.rexpr?.ParamRef as { number?: number } | undefined)?.number
      : undefined;
    if (negated !== undefined) {
      const lit = literals[negated - firstParam];
      if (lit?.kind === "number") {
        return numberConst(lit.value.startsWith("-") ? lit.value.slice(1) : `-${lit.value}`);
      }
    }
    const p = o.ParamRef as { number?: number } | undefined;
    if (p?.number !== undefined) {
      const at = p.number - firstParam;
      if (at >= 0 && at < literals.length) {
        const lit = literals[at];
        return lit.kind === "string" ? stringConst(lit.value) : numberConst(lit.value);
      }
    }
    const out: Node = {};
    for (const [k, x] of Object.entries(o)) if (k !== "location") out[k] = copy(x);
    return out;
  };
  return copy(node);
}

function stringConst(value: string): Node {
  return { A_Const: { sval: { sval: value } } };
}

/** A number as PostgreSQL's parser makes it: int4 when it fits, else its text. */
function numberConst(text: string): Node {
  const digits = text.replace(/^-/, "").replaceAll("_", "");
  if (/^\d+$/.test(digits) && Number(digits) <= 2147483647) {
    return intConst(text.startsWith("-") ? -Number(digits) : Number(digits));
  }
  return { A_Const: { fval: { fval: text } } };
}

function intConst(n: number): Node {
  if (Math.abs(n) > 2147483647) return { A_Const: { fval: { fval: String(n) } } };
  return { A_Const: { ival: n === 0 ? {} : { ival: n } } };
}

function str(s: string): Node {
  return { String: { sval: s } };
}

// ---- node helpers ----------------------------------------------------------------------------

/** Shard statements written before, by their tree: the text, or null where it didn't read back. */
const written = new Map<string, string | null>();
const WRITTEN_MAX = 1000;

/**
 * The SQL of a shard statement, checked: PostgreSQL's parser must read it back as the same tree
 * (pgsql-deparser can drop parentheses an expression needs), else the statement is refused.
 */
export function shardText(stmt: Node): string {
  const tree = canonical(stmt);
  let sql = written.get(tree);
  if (sql === undefined) {
    const text = deparse(stmt);
    let same = false;
    try {
      const back = (parseSync(text) as { stmts: Array<{ stmt?: Node }> }).stmts;
      same = back.length === 1 && canonical(back[0].stmt) === tree;
    } catch {
      same = false;
    }
    sql = same ? text : null;
    if (written.size >= WRITTEN_MAX) written.clear();
    written.set(tree, sql);
  }
  if (sql === null) {
    throw new MergeRefusal(
      "pgdog can't write this statement for the shards without changing its meaning (a limit of " +
        "its SQL writer): put parentheses around the expressions in it, or route with " +
        "/* pgdog_shard: N */",
    );
  }
  return sql;
}

/** Fields of a parse tree that are positions in the text. */
const POSITION = /location$|_start$|_end$/;

/** JSON of a tree with sorted keys and no positions. */
function canonical(node: unknown): string {
  if (Array.isArray(node)) return `[${node.map(canonical).join(",")}]`;
  if (node === null || typeof node !== "object") return JSON.stringify(node) ?? "null";
  const keys = Object.keys(node as Node).filter((k) =>
    !POSITION.test(k) && (node as Node)[k] !== undefined
  ).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical((node as Node)[k])}`).join(",")}}`;
}

function deparse(node: Node): string {
  return deparseSync(node as never, { pretty: false });
}

function call(fn: string, args: Node[], filter?: Node): Node {
  const f: Node = { funcname: [str(fn)], funcformat: "COERCE_EXPLICIT_CALL" };
  if (args.length > 0) f.args = args;
  else f.agg_star = true;
  if (filter) f.agg_filter = filter;
  return { FuncCall: f };
}

function binary(op: string, l: Node, r: Node): Node {
  return { A_Expr: { kind: "AEXPR_OP", name: [str(op)], lexpr: l, rexpr: r } };
}

function cast(arg: Node, type: string): Node {
  return {
    TypeCast: { arg, typeName: { names: [str("pg_catalog"), str(type)], typemod: -1 } },
  };
}

function target(val: Node, name?: string): Node {
  return { ResTarget: name === undefined ? { val } : { name, val } };
}

function stringOf(node: Node | undefined): string {
  return (node?.String as { sval?: string } | undefined)?.sval ?? "";
}

function funcName(f: Node): string {
  const names = f.funcname as Node[];
  return stringOf(names[names.length - 1]).toLowerCase();
}

/** The integer of a constant (`1`, `-1`), or null. */
function intOf(node: Node | undefined): number | null {
  const c = node?.A_Const as { ival?: { ival?: number } } | undefined;
  if (c?.ival !== undefined) return c.ival.ival ?? 0;
  return null;
}

/**
 * A function call that is an aggregate (not a window function); `user`: the database's own
 * aggregates (see aggregates.ts).
 */
function isAggregateCall(node: Node, user: ReadonlySet<string> | undefined): boolean {
  const f = node.FuncCall as Node | undefined;
  if (!f || f.over) return false;
  return isAggregateFunction(f, user);
}

/**
 * Calls `visit` with every key and value under `roots` that belongs to this query level: not
 * inside a subquery (a SubLink's subquery or a subquery in FROM), though what a SubLink compares
 * with (`sum(x) > ALL (...)`) is. `visit` returns false to skip what is under a value.
 */
function walkLevel(roots: unknown[], visit: (key: string, value: Node) => boolean | void): void {
  const step = (key: string, value: unknown): boolean | void => {
    if (key === "RangeSubselect") return false;
    if (key === "SubLink") {
      walkTree([(value as Node).testexpr], step);
      return false;
    }
    return visit(key, value as Node);
  };
  walkTree(roots, step);
}

/** Whether `root` has an aggregate or window function (outside subqueries), by kind. */
function found(
  root: unknown,
  user: ReadonlySet<string> | undefined,
): { aggregate: boolean; window: boolean } {
  const out = { aggregate: false, window: false };
  walkLevel([root], (k, x) => {
    if (k === "FuncCall") {
      if (x.over) out.window = true;
      else if (isAggregateCall({ FuncCall: x }, user)) out.aggregate = true;
    } else if (k === "GroupingFunc") out.aggregate = true;
  });
  return out;
}

const MERGEABLE = new Set<AggregateFunction>([
  "count",
  "sum",
  "min",
  "max",
  "avg",
  "stddev",
  "stddev_samp",
  "stddev_pop",
  "variance",
  "var_samp",
  "var_pop",
  "bool_and",
  "bool_or",
  "every",
  "bit_and",
  "bit_or",
  "array_agg",
  "string_agg",
  "json_agg",
  "jsonb_agg",
]);

const VARIANCE = new Set([
  "stddev",
  "stddev_samp",
  "stddev_pop",
  "variance",
  "var_samp",
  "var_pop",
]);
/** Aggregates whose shards send one row per input value. */
const PER_ROW = new Set(["array_agg", "string_agg", "json_agg", "jsonb_agg"]);
/** Aggregates that skip NULL inputs. */
const NULL_SKIPPING = new Set(["count", "sum", "avg", "string_agg", ...VARIANCE]);
/** Aggregates for which DISTINCT changes nothing. */
const DISTINCT_FREE = new Set(["min", "max", "bool_and", "bool_or", "every", "bit_and", "bit_or"]);

/**
 * The name PostgreSQL gives an output column (FigureColname), as far as ORDER BY by name needs.
 */
function outputName(t: Node): string {
  const r = t.ResTarget as { name?: string; val?: Node };
  if (r.name !== undefined) return r.name;
  return figure(r.val);
}

function figure(v: Node | undefined): string {
  if (!v) return "?column?";
  const fields = (v.ColumnRef as { fields?: Node[] } | undefined)?.fields;
  if (fields) return stringOf(fields[fields.length - 1]) || "?column?";
  if (v.FuncCall) return funcName(v.FuncCall as Node);
  if (v.TypeCast) {
    const inner = figure((v.TypeCast as { arg: Node }).arg);
    if (inner !== "?column?") return inner;
    const names = ((v.TypeCast as Node).typeName as { names: Node[] }).names;
    return stringOf(names[names.length - 1]);
  }
  if (v.CaseExpr) return "case";
  if (v.CoalesceExpr) return "coalesce";
  return "?column?";
}

// ---- LIMIT and OFFSET ------------------------------------------------------------------------

function numberSource(node: Node | undefined, what: string): NumberSource | null {
  if (!node) return null;
  let n = node;
  while (n.TypeCast) n = (n.TypeCast as { arg: Node }).arg;
  const c = n.A_Const as { isnull?: boolean; ival?: { ival?: number }; fval?: { fval: string } };
  if (c?.isnull) return null;
  if (c?.ival !== undefined) return { value: c.ival.ival ?? 0 };
  if (c?.fval && Number.isFinite(Number(c.fval.fval))) {
    // LIMIT 2.5 is LIMIT 3, as numeric to bigint rounds.
    const x = Number(c.fval.fval);
    return { value: Math.sign(x) * Math.round(Math.abs(x)) };
  }
  const p = n.ParamRef as { number?: number } | undefined;
  if (p?.number !== undefined) return { param: p.number };
  const e = n.A_Expr as { lexpr?: Node; rexpr?: Node; name?: Node[] } | undefined;
  if (e && !e.lexpr && stringOf(e.name?.[0]) === "-") {
    const inner = numberSource(e.rexpr, what);
    if (inner && "value" in inner) return { value: -inner.value };
  }
  throw new MergeRefusal(
    `${what} with an expression is not supported across shards: use a constant or a parameter`,
  );
}

function sourceNode(n: NumberSource): Node {
  return "value" in n ? intConst(n.value) : cast({ ParamRef: { number: n.param } }, "int8");
}

/** The LIMIT each shard runs: enough rows for the client's LIMIT after its OFFSET. */
function shardLimit(limit: NumberSource, offset: NumberSource | null): Node {
  if (offset === null) return sourceNode(limit);
  if ("value" in limit && "value" in offset) return intConst(limit.value + offset.value);
  return binary("+", sourceNode(limit), sourceNode(offset));
}

interface Limits {
  limit: NumberSource | null;
  offset: NumberSource | null;
}

/** A negative literal: the shards get the client's own clauses and raise PostgreSQL's error. */
/**
 * The shards' copy of a statement with OFFSET: no OFFSET, and LIMIT limit + offset (the merge
 * applies both). False when there is nothing to change (no OFFSET, or a negative one the shards
 * must refuse as written).
 */
function foldOffset(shard: Node, limits: Limits): boolean {
  const { limit, offset } = limits;
  if (offset === null || negative(limits)) return false;
  delete shard.limitOffset;
  if (limit === null) delete shard.limitCount;
  else shard.limitCount = shardLimit(limit, offset);
  shard.limitOption = limit === null ? "LIMIT_OPTION_DEFAULT" : "LIMIT_OPTION_COUNT";
  return true;
}

function negative(l: Limits): boolean {
  return (l.limit !== null && "value" in l.limit && l.limit.value < 0) ||
    (l.offset !== null && "value" in l.offset && l.offset.value < 0);
}

function limitsOf(body: Node): Limits {
  if (body.limitOption === "LIMIT_OPTION_WITH_TIES") {
    throw new MergeRefusal(
      "FETCH FIRST ... WITH TIES is not supported across shards yet: use LIMIT (or route with " +
        "/* pgdog_shard: N */)",
    );
  }
  return {
    limit: numberSource(body.limitCount as Node | undefined, "LIMIT"),
    offset: numberSource(body.limitOffset as Node | undefined, "OFFSET"),
  };
}

// ---- sort keys -------------------------------------------------------------------------------

interface SortItem {
  node: Node;
  key: Omit<SortKey, "column">;
}

function sortItems(clause: unknown): SortItem[] {
  return ((clause as Node[] | undefined) ?? []).map((item) => {
    const s = item.SortBy as {
      node: Node;
      sortby_dir?: string;
      sortby_nulls?: string;
      useOp?: Node[];
    };
    let descending = s.sortby_dir === "SORTBY_DESC";
    if (s.sortby_dir === "SORTBY_USING") {
      const op = stringOf(s.useOp?.[s.useOp.length - 1]);
      if (op !== "<" && op !== ">") {
        throw new MergeRefusal(
          `ORDER BY ... USING ${op} is not supported across shards: use ASC or DESC`,
        );
      }
      descending = op === ">";
    }
    const nullsFirst = s.sortby_nulls === "SORTBY_NULLS_FIRST"
      ? true
      : s.sortby_nulls === "SORTBY_NULLS_LAST"
      ? false
      : descending;
    let node = s.node;
    let collation: string | null = null;
    const c = node.CollateClause as { arg: Node; collname: Node[] } | undefined;
    if (c) {
      collation = stringOf(c.collname[c.collname.length - 1]);
      node = c.arg;
    }
    return { node, key: { descending, nullsFirst, collation } };
  });
}

// ---- the select list -------------------------------------------------------------------------

/** A column of the client's answer. */
interface OutCol {
  name: string;
  /** Named with AS. */
  aliased?: boolean;
  /** Deparsed expression (for matching ORDER BY and GROUP BY expressions). */
  key: string;
  expr: Node;
}

/** The client's columns, `*` expanded by the catalog's column orders. */
function outputColumns(
  body: Node,
  ctx: MergePlanContext,
  outer: Map<string, Cte> = new Map(),
): OutCol[] {
  const out: OutCol[] = [];
  for (const t of (body.targetList as Node[] | undefined) ?? []) {
    const val = (t.ResTarget as { val: Node }).val;
    const fields = (val.ColumnRef as { fields?: Node[] } | undefined)?.fields;
    if (fields && fields[fields.length - 1].A_Star !== undefined) {
      const qualifier = fields.length > 1 ? stringOf(fields[fields.length - 2]) : null;
      for (const [rel, column] of starColumns(body, qualifier, ctx, outer)) {
        const expr = { ColumnRef: { fields: [str(rel), str(column)] } };
        out.push({ name: column, key: deparse(expr), expr });
      }
      continue;
    }
    const aliased = (t.ResTarget as { name?: string }).name !== undefined;
    out.push({ name: outputName(t), key: deparse(val), expr: val, aliased });
  }
  return out;
}

/** The columns `*` (or `qualifier.*`) stands for, as `[relation, column]`. */
function starColumns(
  body: Node,
  qualifier: string | null,
  ctx: MergePlanContext,
  outer: Map<string, Cte>,
): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const ctes = new Map(outer);
  const w = body.withClause as { ctes?: Node[] } | undefined;
  for (const c of w?.ctes ?? []) {
    const cte = c.CommonTableExpr as { ctename: string; ctequery: Node; aliascolnames?: Node[] };
    ctes.set(cte.ctename, {
      query: cte.ctequery,
      names: cte.aliascolnames ? cte.aliascolnames.map(stringOf) : null,
    });
  }
  const star = (): never => {
    throw new MergeRefusal(
      "SELECT * here needs the column order of a table or subquery pgdog can't see: name the " +
        "columns in the select list",
    );
  };
  const lookup = ctx.values.lookup;
  const visit = (item: Node): void => {
    const j = item.JoinExpr as Node | undefined;
    if (j) {
      if (j.isNatural || (j.usingClause as Node[] | undefined)?.length) star();
      if ((j.alias as Node | undefined) !== undefined) star();
      visit(j.larg as Node);
      visit(j.rarg as Node);
      return;
    }
    const rv = item.RangeVar as
      | { relname: string; schemaname?: string; alias?: { aliasname: string; colnames?: Node[] } }
      | undefined;
    const sub = item.RangeSubselect as
      | { subquery: Node; alias?: { aliasname: string; colnames?: Node[] } }
      | undefined;
    const alias = rv?.alias ?? sub?.alias;
    const name = alias?.aliasname ?? rv?.relname ?? null;
    if (qualifier !== null && name !== qualifier) return;
    if (name === null) star();
    let columns: string[] | undefined;
    if (rv && rv.schemaname === undefined && ctes.has(rv.relname)) {
      const cte = ctes.get(rv.relname)!;
      // `WITH t AS (SELECT * FROM t)` reads table t: not this CTE again.
      const inside = new Map(ctes);
      inside.delete(rv.relname);
      columns = subqueryColumns(cte.query, ctx, inside);
      // WITH t(a, b) renames the first columns.
      if (cte.names) columns = columns.map((c, i) => cte.names![i] ?? c);
    } else if (rv) {
      const table = rv.schemaname ? { schema: rv.schemaname, name: rv.relname } : {
        name: rv.relname,
      };
      columns = lookup?.columns?.(table);
      ctx.columnsUsed?.push({ table, columns });
      if (columns === undefined) {
        if (lookup?.columns && lookup.missingColumns) {
          lookup.missingColumns.push(table);
          throw new MergeRefusal(
            `pgdog needs the column order of ${rv.relname} for SELECT *: name the columns`,
          );
        }
        star();
      }
    } else if (sub) columns = subqueryColumns(sub.subquery, ctx, ctes);
    else star();
    const renamed = (alias?.colnames ?? []).map(stringOf);
    columns!.forEach((c, i) => out.push([name!, renamed[i] ?? c]));
  };
  for (const item of (body.fromClause as Node[] | undefined) ?? []) visit(item);
  if (out.length === 0) star();
  return out;
}

/** A CTE as `*` sees it. */
interface Cte {
  query: Node;
  names: string[] | null;
}

function subqueryColumns(query: Node, ctx: MergePlanContext, ctes: Map<string, Cte>): string[] {
  let body = query.SelectStmt as Node | undefined;
  while (body && body.op && body.op !== "SETOP_NONE") body = body.larg as Node;
  if (!body || body.valuesLists) {
    throw new MergeRefusal("SELECT * over a subquery here: name the columns in the select list");
  }
  return outputColumns(body, ctx, ctes).map((c) => c.name);
}

/** The client's column an ORDER BY (or DISTINCT ON) item names, by position, name or expression. */
function outputIndex(node: Node, cols: OutCol[], what: string): number | null {
  const position = intOf(node);
  if (position !== null) {
    if (position < 1 || position > cols.length) {
      throw new MergeRefusal(`${what} position ${position} is not in the select list`);
    }
    return position - 1;
  }
  const fields = (node.ColumnRef as { fields?: Node[] } | undefined)?.fields;
  if (fields?.length === 1) {
    const name = stringOf(fields[0]);
    const at = cols.findIndex((c) => c.name === name);
    if (at >= 0) return at;
  }
  const key = deparse(node);
  const at = cols.findIndex((c) => c.key === key);
  return at >= 0 ? at : null;
}

function lockRefusal(body: Node): void {
  if ((body.lockingClause as Node[] | undefined)?.length) {
    throw new MergeRefusal(
      "FOR UPDATE/SHARE with ORDER BY, LIMIT, aggregates or DISTINCT across shards is not " +
        "supported: lock the rows with a statement that needs no merging",
    );
  }
}

// ---- a simple SELECT -------------------------------------------------------------------------

function planSelect(body: Node, ctx: MergePlanContext): MergePlan {
  lockRefusal(body);
  const f = found([
    body.targetList,
    body.havingClause,
    body.sortClause,
    body.distinctClause,
  ], ctx.values.lookup?.aggregates);
  const groupClause = (body.groupClause as Node[] | undefined) ?? [];
  const grouped = f.aggregate || groupClause.length > 0 || body.havingClause !== undefined;
  // Groups on a sharding key are whole on one shard: the shards aggregate them completely.
  const isKey = ctx.isKey;
  const keyGrouped = grouped && isKey !== undefined && groupClause.some((g) => {
    // A key is a column of the FROM clause, which PostgreSQL takes before an alias.
    if (isKey(g)) return true;
    try {
      return isKey(groupExpression(g, body, ctx));
    } catch (e) {
      if (e instanceof MergeRefusal) return false;
      throw e;
    }
  });
  if (f.window || (body.windowClause as Node[] | undefined)?.length) {
    if ((grouped && !keyGrouped) || !windowsOnKey(body, ctx.isKey)) {
      throw new MergeRefusal(
        "a window function over rows of several shards is not supported: partition it by the " +
          "sharding key, add the sharding key to the WHERE clause, or route with " +
          "/* pgdog_shard: N */",
      );
    }
  }
  return grouped && !keyGrouped ? planAggregate(body, ctx) : planRows(body, ctx);
}

/** A GROUP BY item as an expression (a position or an output name stands for its target). */
function groupExpression(item: Node, body: Node, ctx: MergePlanContext): Node {
  const targets = (body.targetList as Node[] | undefined) ?? [];
  const position = intOf(item);
  if (position !== null) {
    const t = targets[position - 1]?.ResTarget as { val?: Node } | undefined;
    return t?.val ?? item;
  }
  const fields = (item.ColumnRef as { fields?: Node[] } | undefined)?.fields;
  const name = fields?.length === 1 ? stringOf(fields[0]) : null;
  const t = targets.find((t) => (t.ResTarget as { name?: string }).name === name);
  if (name !== null && t) {
    const val = (t.ResTarget as { val: Node }).val;
    const vf = (val.ColumnRef as { fields?: Node[] } | undefined)?.fields;
    if (vf && vf.length === 1 && stringOf(vf[0]) === name) return item;
    // PostgreSQL takes a column of the FROM clause first, the select list's alias after.
    let inputs: Set<string>;
    try {
      inputs = new Set(starColumns(body, null, ctx, new Map()).map(([, c]) => c));
    } catch (e) {
      if (!(e instanceof MergeRefusal)) throw e;
      throw new MergeRefusal(
        `GROUP BY ${name} names an output column of the select list, and pgdog can't tell ` +
          "whether a table has a column of that name (which PostgreSQL would take): group by " +
          "the expression or its position",
      );
    }
    if (!inputs.has(name)) return val;
  }
  return item;
}

/** Every window of the query is partitioned by a sharding key (each partition on one shard). */
export function windowsOnKey(body: Node, isKey: ((column: Node) => boolean) | undefined): boolean {
  if (!isKey) return false;
  const named = new Map<string, Node>();
  for (const w of (body.windowClause as Node[] | undefined) ?? []) {
    const def = w.WindowDef as { name?: string };
    if (def.name) named.set(def.name, def as Node);
  }
  const onKey = (def: Node): boolean => {
    let d: Node | undefined = def;
    // A window may take its PARTITION BY from a named one (`OVER (w ORDER BY ...)`).
    for (let hops = 0; d && hops < 100; hops++) {
      const parts = d.partitionClause as Node[] | undefined;
      if (parts?.length) return parts.some((p) => isKey(p));
      const ref = (d.refname ?? (d.name !== undefined && d !== def ? undefined : d.name)) as
        | string
        | undefined;
      const next = ref !== undefined ? named.get(ref) : undefined;
      if (next === d) return false;
      d = next;
    }
    return false;
  };
  let partitioned = true;
  walkLevel([body.targetList, body.sortClause, body.windowClause], (k, x) => {
    if (!partitioned) return false;
    if (k === "FuncCall" && x.over && !onKey(x.over as Node)) partitioned = false;
    if (k === "WindowDef" && !onKey(x)) partitioned = false;
  });
  return partitioned;
}

/** No aggregation: the shards' rows, sorted, deduplicated and cut as the client asked. */
function planRows(body: Node, ctx: MergePlanContext): MergePlan {
  const cols = outputColumns(body, ctx);
  const visible = cols.length;
  const hidden: Node[] = [];
  const distinctClause = body.distinctClause as Node[] | undefined;
  const plainDistinct = distinctClause !== undefined &&
    (distinctClause.length === 0 || (distinctClause.length === 1 &&
      Object.keys(distinctClause[0]).length === 0));
  const column = (node: Node, what: string): number => {
    const at = outputIndex(node, cols, what);
    if (at !== null) return at;
    if (plainDistinct) {
      throw new MergeRefusal(
        "for SELECT DISTINCT, ORDER BY expressions must appear in select list",
      );
    }
    const key = deparse(node);
    const seen = hidden.findIndex((h) => deparse(h) === key);
    if (seen >= 0) return visible + seen;
    hidden.push(node);
    return visible + hidden.length - 1;
  };
  const orderBy = sortItems(body.sortClause).map((s) => ({
    column: column(s.node, "ORDER BY"),
    ...s.key,
  }));
  let distinct: number[] | null = null;
  if (plainDistinct) distinct = [];
  else if (distinctClause !== undefined) {
    distinct = distinctClause.map((d) => column(d, "DISTINCT ON"));
  }
  const limits = limitsOf(body);
  const { limit, offset } = limits;
  const shard: Node = { ...body };
  let changed = hidden.length > 0;
  if (hidden.length > 0) {
    shard.targetList = [...(body.targetList as Node[]), ...hidden.map((h) => target(h))];
  }
  if (foldOffset(shard, limits)) changed = true;
  return {
    shardSql: changed ? shardText({ SelectStmt: shard }) : null,
    shardColumns: visible + hidden.length,
    aggregate: null,
    having: null,
    setOperation: null,
    distinct,
    orderBy,
    shardsSorted: orderBy.length > 0,
    limit,
    offset,
    visible,
  };
}

// ---- aggregation -----------------------------------------------------------------------------

/** One aggregate of the query, with the expressions its partials are on the shards. */
interface PlannedAggregate {
  key: string;
  spec: Omit<AggregateSpec, "partials" | "orderBy">;
  partials: Node[];
  /** ORDER BY inside it: positions in `partials`. */
  orderBy: Array<{ partial: number; key: Omit<SortKey, "column"> }>;
}

class AggregatePlanner {
  /** The database's own aggregates (see aggregates.ts). */
  constructor(readonly userAggregates: ReadonlySet<string> | undefined) {}

  /** Shard columns that are group keys (deparsed), first in the shard row. */
  readonly groups: Node[] = [];
  readonly groupKeys: string[] = [];
  /** How many of `groups` the shards GROUP BY (the rest depend on them). */
  shardGroupBy = 0;
  readonly aggregates: PlannedAggregate[] = [];
  readonly output: OutputColumn[] = [];
  /** Shards send one row per input row (array_agg and friends). */
  perRow = false;
  /** The argument DISTINCT aggregates share (shards group on it too). */
  /** The query has GROUP BY: expressions of its keys are columns of the shard row. */
  hasGroupBy = false;
  /** The arguments of DISTINCT aggregates (the shards group on them too). */
  readonly distinctArgs: Node[] = [];

  group(node: Node): number {
    const key = deparse(node);
    const at = this.groupKeys.indexOf(key);
    if (at >= 0) return at;
    this.groups.push(node);
    this.groupKeys.push(key);
    return this.groups.length - 1;
  }

  /** The working-row column of a group key or aggregate (added as a hidden column if new). */
  outputOf(col: OutputColumn): number {
    const at = this.output.findIndex((o) =>
      "group" in o && "group" in col ? o.group === col.group : "aggregate" in o &&
        "aggregate" in col && o.aggregate === col.aggregate
    );
    if (at >= 0) return at;
    this.output.push(col);
    return this.output.length - 1;
  }

  aggregate(node: Node): number {
    const key = deparse(node);
    const seen = this.aggregates.findIndex((a) => a.key === key);
    if (seen >= 0) return seen;
    const f = node.FuncCall as Node;
    const fn = funcName(f);
    const names = f.funcname as Node[];
    if (names.length > 1 && stringOf(names[0]) !== "pg_catalog") {
      throw new MergeRefusal(`aggregate ${deparse(node)} can't be merged across shards`);
    }
    if (this.userAggregates?.has(functionName(f)) && !BUILTIN_AGGREGATES.has(fn)) {
      throw new MergeRefusal(
        `aggregate ${fn}() is defined in the database, and pgdog can't combine an aggregate it ` +
          "doesn't know from the shards' answers: group by the sharding key, add the sharding " +
          "key to the WHERE clause, or route with /* pgdog_shard: N */",
      );
    }
    if (f.agg_within_group || !MERGEABLE.has(fn as AggregateFunction)) {
      throw new MergeRefusal(
        `aggregate ${fn}() can't be merged across shards (pgdog merges count, sum, min, max, ` +
          "avg, stddev, variance, bool_and, bool_or, every, bit_and, bit_or, array_agg, " +
          "string_agg, json_agg, jsonb_agg): group by the sharding key, add the sharding key " +
          "to the WHERE clause, or route with /* pgdog_shard: N */",
      );
    }
    if (found([f.args, f.agg_filter, f.agg_order], this.userAggregates).aggregate) {
      throw new MergeRefusal("nested aggregate calls are not allowed");
    }
    const args = (f.args as Node[] | undefined) ?? [];
    const filter = f.agg_filter as Node | undefined;
    const star = f.agg_star === true;
    let distinct = f.agg_distinct === true && !DISTINCT_FREE.has(fn);
    const x = args[0];
    const partials: Node[] = [];
    const orderBy: PlannedAggregate["orderBy"] = [];
    if (distinct) {
      let arg = x;
      if (filter) {
        // Rows the filter drops count as NULL, which these aggregates skip.
        if (!NULL_SKIPPING.has(fn)) {
          throw new MergeRefusal(
            `${fn}(DISTINCT ...) FILTER (WHERE ...) is not supported across shards yet`,
          );
        }
        arg = { CaseExpr: { args: [{ CaseWhen: { expr: filter, result: x } }] } };
      }
      // The shards group on each DISTINCT argument too (each value once per group and shard).
      if (!this.distinctArgs.some((d) => deparse(d) === deparse(arg))) this.distinctArgs.push(arg);
      partials.push(arg);
      if (fn === "string_agg") {
        partials.push(args[1]);
        this.distinctArgs.push(args[1]);
      }
    } else if (PER_ROW.has(fn)) {
      if (filter) {
        throw new MergeRefusal(
          `${fn}(...) FILTER (WHERE ...) is not supported across shards yet`,
        );
      }
      this.perRow = true;
      partials.push(x);
      if (fn === "string_agg") partials.push(args[1]);
    } else {
      const agg = (name: string, a: Node[]): Node => call(name, a, filter);
      // avg(x): the shard's sum of float4 in float8 (sum(float4) is float4), as avg × count.
      if (fn === "avg") partials.push(agg("sum", [x]), agg("count", [x]), agg("avg", [x]));
      else if (VARIANCE.has(fn)) {
        // x * (x + 0.0): numeric (exact) for integers and numeric, float8 for float4 and float8.
        const square = binary("*", x, binary("+", x, { A_Const: { fval: { fval: "0.0" } } }));
        partials.push(
          agg("count", [x]),
          agg("sum", [x]),
          agg("sum", [square]),
          agg("avg", [x]),
        );
      } else partials.push(agg(fn, star ? [] : [x]));
    }
    for (const s of sortItems(f.agg_order)) {
      if (!distinct && !PER_ROW.has(fn)) continue; // order doesn't change the others
      const k = deparse(s.node);
      let at = distinct && k === deparse(x) ? 0 : partials.findIndex((p) => deparse(p) === k);
      if (at < 0) {
        if (distinct) {
          throw new MergeRefusal(
            "in an aggregate with DISTINCT, ORDER BY expressions must appear in argument list",
          );
        }
        partials.push(s.node);
        at = partials.length - 1;
      }
      orderBy.push({ partial: at, key: s.key });
    }
    if (DISTINCT_FREE.has(fn)) distinct = false;
    this.aggregates.push({
      key,
      spec: { fn: fn as AggregateFunction, distinct, star },
      partials,
      orderBy,
    });
    return this.aggregates.length - 1;
  }

  /** HAVING (or anything pgdog evaluates after the merge) as an {@linkcode Expr}. */
  expr(node: Node, firstParam: number): Expr {
    const e = (n: Node): Expr => this.expr(n, firstParam);
    if (isAggregateCall(node, this.userAggregates)) {
      return { column: this.outputOf({ aggregate: this.aggregate(node) }) };
    }
    const key = deparse(node);
    const g = this.groupKeys.indexOf(key);
    if (g >= 0) return { column: this.outputOf({ group: g }) };
    const c = node.A_Const as Node | undefined;
    if (c) {
      if (c.isnull) return { constant: null, type: "text" };
      if (c.ival !== undefined) return { constant: String(intOf(node)), type: "int" };
      if (c.fval) {
        // An integer beyond int4 is int8 when it fits (as PostgreSQL's make_const types it).
        const text = (c.fval as { fval: string }).fval;
        return { constant: text, type: /^-?\d+$/.test(text) ? "int" : "numeric" };
      }
      if (c.boolval) {
        return { constant: (c.boolval as { boolval?: boolean }).boolval ? "t" : "f", type: "bool" };
      }
      if (c.sval) return { constant: (c.sval as { sval?: string }).sval ?? "", type: "text" };
    }
    const tc = node.TypeCast as { arg: Node; typeName: { names: Node[] } } | undefined;
    if (tc?.arg.A_Const) {
      const inner = e(tc.arg) as { constant: string | null; type: string };
      const t = stringOf(tc.typeName.names[tc.typeName.names.length - 1]);
      const type = ["int2", "int4", "int8", "integer", "bigint", "smallint"].includes(t)
        ? "int"
        : ["numeric", "decimal"].includes(t)
        ? "numeric"
        : t === "bool" || t === "boolean"
        ? "bool"
        : ["text", "varchar"].includes(t)
        ? "text"
        : null;
      if (type !== null) return { constant: inner.constant, type };
    }
    const p = node.ParamRef as { number: number } | undefined;
    if (p && p.number < firstParam) return { param: p.number };
    const b = node.BoolExpr as { boolop: string; args: Node[] } | undefined;
    if (b) {
      if (b.boolop === "NOT_EXPR") return { op: "not", args: [e(b.args[0])] };
      return { op: b.boolop === "AND_EXPR" ? "and" : "or", args: b.args.map(e) };
    }
    const nt = node.NullTest as { arg: Node; nulltesttype: string } | undefined;
    if (nt) {
      return { op: nt.nulltesttype === "IS_NULL" ? "isnull" : "notnull", args: [e(nt.arg)] };
    }
    const a = node.A_Expr as
      | { kind: string; name: Node[]; lexpr?: Node; rexpr?: Node }
      | undefined;
    if (a) {
      const op = stringOf(a.name[a.name.length - 1]);
      if (a.kind === "AEXPR_OP" && !a.lexpr && op === "-" && a.rexpr) {
        return { op: "-", args: [{ constant: "0", type: "int" }, e(a.rexpr)] };
      }
      if (a.kind === "AEXPR_OP" && a.lexpr && a.rexpr && BINARY.has(op)) {
        return {
          op: op === "!=" ? "<>" : op as "=",
          args: [e(a.lexpr), e(a.rexpr)],
        };
      }
      if ((a.kind === "AEXPR_BETWEEN" || a.kind === "AEXPR_NOT_BETWEEN") && a.lexpr) {
        const [lo, hi] = (a.rexpr!.List as { items: Node[] }).items;
        return {
          op: "between",
          args: [e(a.lexpr), e(lo), e(hi)],
          not: a.kind === "AEXPR_NOT_BETWEEN",
        };
      }
      if (a.kind === "AEXPR_IN" && a.lexpr) {
        const items = (a.rexpr!.List as { items: Node[] }).items;
        return { op: "in", args: [e(a.lexpr), ...items.map(e)], not: op === "<>" };
      }
    }
    // An expression of the group keys (no aggregate): computed by the shards, once per group.
    if (this.hasGroupBy && !found(node, this.userAggregates).aggregate) {
      return { column: this.outputOf({ group: this.group(node) }) };
    }
    throw new MergeRefusal(
      `HAVING ${deparse(node)} is not supported across shards yet: pgdog evaluates comparisons, ` +
        "AND/OR/NOT, arithmetic, IS [NOT] NULL, BETWEEN and IN over aggregates and group keys",
    );
  }
}

const BINARY = new Set(["=", "<>", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%"]);

/** Aggregates and GROUP BY: shards send group keys and partials; pgdog combines them. */
function planAggregate(body: Node, ctx: MergePlanContext): MergePlan {
  const user = ctx.values.lookup?.aggregates;
  const p = new AggregatePlanner(user);
  const targets = (body.targetList as Node[] | undefined) ?? [];
  const groupClause = (body.groupClause as Node[] | undefined) ?? [];
  if (body.groupDistinct) {
    throw new MergeRefusal("GROUP BY DISTINCT is not supported across shards yet");
  }
  const cols: OutCol[] = targets.map((t) => {
    const val = (t.ResTarget as { val: Node }).val;
    const fields = (val.ColumnRef as { fields?: Node[] } | undefined)?.fields;
    if (fields && fields[fields.length - 1].A_Star !== undefined) {
      throw new MergeRefusal(
        "SELECT * with aggregates or GROUP BY across shards: name the columns",
      );
    }
    const aliased = (t.ResTarget as { name?: string }).name !== undefined;
    return { name: outputName(t), key: deparse(val), expr: val, aliased };
  });
  // GROUP BY items: positions and output names stand for their select-list expressions.
  for (const item of groupClause) {
    if (item.GroupingSet) {
      throw new MergeRefusal(
        "GROUPING SETS, ROLLUP and CUBE are not supported across shards yet: run one GROUP BY " +
          "per grouping set and combine them with UNION ALL, or route with /* pgdog_shard: N */",
      );
    }
    const position = intOf(item);
    if (position !== null && (position < 1 || position > cols.length)) {
      throw new MergeRefusal(`GROUP BY position ${position} is not in select list`);
    }
    const node = groupExpression(item, body, ctx);
    if (isAggregateCall(node, user)) {
      throw new MergeRefusal("aggregate functions are not allowed in GROUP BY");
    }
    p.group(node);
  }
  p.shardGroupBy = p.groups.length;
  const hasGroupBy = groupClause.length > 0;
  p.hasGroupBy = hasGroupBy;
  // The client's columns: group keys (or expressions of them) and aggregates.
  for (const c of cols) {
    if (isAggregateCall(c.expr, user)) {
      p.output.push({ aggregate: p.aggregate(c.expr) });
      continue;
    }
    const g = p.groupKeys.indexOf(c.key);
    if (g >= 0) {
      p.output.push({ group: g });
      continue;
    }
    if (found(c.expr, user).aggregate) {
      throw new MergeRefusal(
        `the expression ${c.key} over aggregates is not supported across shards yet: select ` +
          "the aggregates themselves and compute it in the application (or route with " +
          "/* pgdog_shard: N */)",
      );
    }
    if (!hasGroupBy) {
      throw new MergeRefusal(
        `${c.key} next to aggregates without GROUP BY is not supported across shards yet: ` +
          "select the aggregates only",
      );
    }
    // An expression of the group keys: a column of the shard row, the same in the whole group.
    p.output.push({ group: p.group(c.expr) });
  }
  const visible = p.output.length;
  const having = body.havingClause
    ? p.expr(body.havingClause as Node, ctx.values.analysis.firstParam)
    : null;
  const orderBy: SortKey[] = sortItems(body.sortClause).map((s) => {
    let column = outputIndex(s.node, cols, "ORDER BY");
    if (column === null) {
      if (isAggregateCall(s.node, user)) column = p.outputOf({ aggregate: p.aggregate(s.node) });
      else {
        let g = p.groupKeys.indexOf(deparse(s.node));
        // An expression of the group keys: a hidden column the shards compute per group.
        if (g < 0 && p.hasGroupBy && !found(s.node, user).aggregate) g = p.group(s.node);
        if (g < 0) {
          throw new MergeRefusal(
            `ORDER BY ${deparse(s.node)} after GROUP BY across shards: order by a group key, ` +
              "an aggregate or a column of the select list",
          );
        }
        column = p.outputOf({ group: g });
      }
    }
    return { column, ...s.key };
  });
  const distinctClause = body.distinctClause as Node[] | undefined;
  let distinct: number[] | null = null;
  if (distinctClause !== undefined) {
    if (distinctClause.length > 1 || Object.keys(distinctClause[0] ?? {}).length > 0) {
      throw new MergeRefusal("DISTINCT ON with aggregates is not supported across shards yet");
    }
    distinct = [];
  }
  const { limit, offset } = limitsOf(body);
  // The shard row: group keys, then each aggregate's partials. A DISTINCT aggregate's argument
  // is a group key of the shards (each value once per group), not of pgdog.
  const groupBy = p.groups.map((_, i) => i);
  const shardGroups = groupBy.slice(0, p.shardGroupBy);
  if (p.distinctArgs.length > 0) {
    for (const d of p.distinctArgs) {
      const before = p.groups.length;
      const at = p.group(d);
      if (at >= before) shardGroups.push(at);
      else if (!shardGroups.includes(at)) shardGroups.push(at);
    }
  }
  const partialAt: number[][] = [];
  let next = p.groups.length;
  const shardTargets: Node[] = p.groups.map((g) => target(g));
  const shardKeys: string[] = [];
  for (const a of p.aggregates) {
    const at: number[] = [];
    // Shards that send one row per input row send the others' partials of that row alone.
    const own = p.perRow && !a.spec.distinct && !PER_ROW.has(a.spec.fn);
    for (const partial of a.partials) {
      const node = own ? rowPartial(partial) : partial;
      const k = deparse(node);
      // A DISTINCT aggregate's argument is a group key already.
      const g = a.spec.distinct ? p.groupKeys.indexOf(k) : -1;
      // The same partial twice (sum(x) of sum and of avg) is one shard column.
      const same = g >= 0 ? -1 : shardKeys.indexOf(k);
      if (g >= 0) at.push(g);
      else if (same >= 0) at.push(p.groups.length + same);
      else {
        shardTargets.push(target(node));
        shardKeys.push(k);
        at.push(next++);
      }
    }
    partialAt.push(at);
  }
  const shard: Node = { ...body, targetList: shardTargets };
  delete shard.havingClause;
  delete shard.sortClause;
  delete shard.distinctClause;
  delete shard.limitCount;
  delete shard.limitOffset;
  shard.limitOption = "LIMIT_OPTION_DEFAULT";
  if (p.perRow || shardGroups.length === 0) delete shard.groupClause;
  else shard.groupClause = shardGroups.map((i) => intConst(i + 1));
  const aggregates: AggregateSpec[] = p.aggregates.map((a, i) => ({
    ...a.spec,
    partials: partialAt[i],
    // Keys over positions in `partials` (as the engine reads them).
    orderBy: a.orderBy.map((o) => ({ column: o.partial, ...o.key })),
  }));
  return {
    shardSql: shardText({ SelectStmt: shard }),
    shardColumns: next,
    aggregate: {
      groupBy,
      aggregates,
      output: p.output,
    },
    having,
    setOperation: null,
    distinct,
    orderBy,
    shardsSorted: false,
    limit,
    offset,
    visible,
    // An aggregate's shard column is named after its first partial; an alias may be lost too.
    columnNames: cols.map((c) => c.aliased || isAggregateCall(c.expr, user) ? c.name : undefined),
  };
}

/**
 * An aggregate partial over one row (the row the shard sends): `(SELECT sum(a0) FROM (VALUES
 * (x)) AS r(a0) WHERE filter)`, so it has the aggregate's type and FILTER.
 */
function rowPartial(partial: Node): Node {
  const f = partial.FuncCall as Node;
  const args = (f.args as Node[] | undefined) ?? [];
  const names = args.map((_, i) => `pgdog_a${i}`);
  const inner: Node = { funcname: f.funcname, funcformat: "COERCE_EXPLICIT_CALL" };
  if (args.length === 0) inner.agg_star = true;
  else inner.args = names.map((n) => ({ ColumnRef: { fields: [str("pgdog_row"), str(n)] } }));
  const select: Node = {
    targetList: [target({ FuncCall: inner })],
    limitOption: "LIMIT_OPTION_DEFAULT",
    op: "SETOP_NONE",
  };
  if (args.length > 0) {
    select.fromClause = [{
      RangeSubselect: {
        subquery: {
          SelectStmt: {
            valuesLists: [{ List: { items: args } }],
            limitOption: "LIMIT_OPTION_DEFAULT",
            op: "SETOP_NONE",
          },
        },
        alias: { aliasname: "pgdog_row", colnames: names.map(str) },
      },
    }];
  }
  if (f.agg_filter) select.whereClause = f.agg_filter;
  return { SubLink: { subLinkType: "EXPR_SUBLINK", subselect: { SelectStmt: select } } };
}

// ---- set operations --------------------------------------------------------------------------

function planSetOperation(body: Node, ctx: MergePlanContext): MergePlan {
  lockRefusal(body);
  // The operations of the tree, and its leftmost SELECT (whose names the answer has).
  const ops: Array<{ op: string; all: boolean }> = [];
  const stack: Node[] = [body];
  while (stack.length > 0) {
    const s = stack.pop()!;
    const op = s.op as string;
    if (!op || op === "SETOP_NONE") continue;
    ops.push({ op, all: s.all === true });
    stack.push(s.larg as Node, s.rarg as Node);
  }
  let left = body;
  while (left.op && left.op !== "SETOP_NONE") left = left.larg as Node;
  const names = outputColumns(left, ctx).map((c) => ({ ...c, key: "" }));
  const visible = names.length;
  const orderBy = sortItems(body.sortClause).map((s) => {
    const at = outputIndex(s.node, names, "ORDER BY");
    if (at === null) {
      throw new MergeRefusal(
        "ORDER BY on a UNION, INTERSECT or EXCEPT result must name a result column (by name or " +
          "position)",
      );
    }
    return { column: at, ...s.key };
  });
  const limits = limitsOf(body);
  const { limit, offset } = limits;
  const top = ops[0];
  const unions = ops.every((o) => o.op === "SETOP_UNION");
  const arms = setOperationArms(body);
  const replicated = ctx.replicatedArms ?? [];
  if (replicated.length > 0 && replicated.length !== arms.length) {
    throw new Error("the set operation's parts are not those the rule found");
  }
  const anyReplicated = replicated.some((r) => r);
  if (unions && top.all && ops.every((o) => o.all) && anyReplicated) {
    // UNION ALL with a part every shard has: its rows counted once (its count on one shard).
    if (replicated.filter((r) => r).length > 1) {
      throw new MergeRefusal(
        "UNION ALL of several parts without a sharded table (omnisharded tables, constants) and " +
          "a sharded table is not supported across shards yet: put those parts in one " +
          "subquery, or route with /* pgdog_shard: N */",
      );
    }
    const shard = { ...body } as Node;
    delete shard.sortClause;
    delete shard.limitCount;
    delete shard.limitOffset;
    shard.limitOption = "LIMIT_OPTION_DEFAULT";
    return countedPlan({
      shard: replaceArms(
        shard,
        arms,
        (arm, i) =>
          replicated[i] ? groupedSide(arm, { right: true, columns: visible }) : side(arm, 1, 0),
      ),
      op: "union",
      all: true,
      replicatedRight: true,
      visible,
      names: names.map((c) => c.name),
      orderBy,
      limit,
      offset,
    });
  }
  if (unions && (top.all ? ops.every((o) => o.all) : true)) {
    // UNION ALL concatenates; a UNION (at the top) removes every duplicate: shards do it too.
    const shard: Node = { ...body };
    const changed = foldOffset(shard, limits);
    return {
      shardSql: changed ? shardText({ SelectStmt: shard }) : null,
      shardColumns: visible,
      aggregate: null,
      having: null,
      setOperation: null,
      distinct: top.all ? null : [],
      orderBy,
      shardsSorted: orderBy.length > 0,
      limit,
      offset,
      visible,
    };
  }
  const plain = (n: Node): boolean => !n.op || n.op === "SETOP_NONE";
  if (ops.length !== 1 || !plain(body.larg as Node) || !plain(body.rarg as Node)) {
    throw new MergeRefusal(
      "a combination of UNION, INTERSECT and EXCEPT across shards is not supported yet: one " +
        "INTERSECT or EXCEPT of two SELECTs is (or route with /* pgdog_shard: N */)",
    );
  }
  // Each shard sends every row of either side with a count of 1 on its side; pgdog groups them.
  // A side every shard has sends each of its rows once with its count there (counted once).
  const [leftSame, rightSame] = [replicated[0] === true, replicated[1] === true];
  const shard: Node = {
    op: "SETOP_UNION",
    all: true,
    larg: leftSame
      ? groupedSide(body.larg as Node, { right: false, columns: visible })
      : side(body.larg as Node, 1, 0),
    rarg: rightSame
      ? groupedSide(body.rarg as Node, { right: true, columns: visible })
      : side(body.rarg as Node, 0, 1),
    limitOption: "LIMIT_OPTION_DEFAULT",
  };
  if (body.withClause) shard.withClause = body.withClause;
  return countedPlan({
    shard,
    op: top.op === "SETOP_INTERSECT" ? "intersect" : "except",
    all: top.all,
    replicatedLeft: leftSame,
    replicatedRight: rightSame,
    visible,
    names: leftSame ? names.map((c) => c.name) : undefined,
    orderBy,
    limit,
    offset,
  });
}

/**
 * The parts of a set operation, left to right, as the cross-shard rule finds them: its SELECTs,
 * and nested operations with their own ORDER BY, LIMIT or WITH as one part each.
 */
function setOperationArms(body: Node): Node[] {
  const arms: Node[] = [];
  const stack: Node[] = [body];
  while (stack.length > 0) {
    const s = stack.pop()!;
    const op = s.op as string | undefined;
    const nested = s !== body &&
      (((s.sortClause as Node[] | undefined)?.length ?? 0) > 0 || s.limitCount ||
        s.limitOffset || s.withClause);
    if (!op || op === "SETOP_NONE" || nested) {
      arms.push(s);
      continue;
    }
    stack.push(s.rarg as Node, s.larg as Node);
  }
  return arms;
}

/** A copy of a set operation's tree with its parts (see setOperationArms) replaced. */
function replaceArms(body: Node, arms: Node[], f: (arm: Node, i: number) => Node): Node {
  const at = new Map(arms.map((a, i) => [a, i]));
  const copy = (n: Node): Node => {
    const i = at.get(n);
    if (i !== undefined) return f(n, i);
    return { ...n, larg: copy(n.larg as Node), rarg: copy(n.rarg as Node) };
  };
  return copy(body);
}

/** A part of a set operation, each row with a count of 1 on its side (`l`, `r`). */
function side(n: Node, l: number, r: number): Node {
  return {
    targetList: [
      target({ ColumnRef: { fields: [{ A_Star: {} }] } }),
      target(cast(intConst(l), "int8"), "pgdog_left"),
      target(cast(intConst(r), "int8"), "pgdog_right"),
    ],
    fromClause: [{
      RangeSubselect: {
        subquery: { SelectStmt: n },
        alias: { aliasname: l === 1 ? "pgdog_l" : "pgdog_r" },
      },
    }],
    limitOption: "LIMIT_OPTION_DEFAULT",
    op: "SETOP_NONE",
  };
}

/**
 * A part every shard has, each distinct row once with how many times it occurs (on its side,
 * 0 on the other): the same on every shard, so pgdog takes the largest (one shard's count).
 */
function groupedSide(n: Node, options: { right: boolean; columns: number }): Node {
  const names = Array.from({ length: options.columns }, (_, i) => `pgdog_c${i + 1}`);
  const count: Node = {
    FuncCall: { funcname: [str("count")], agg_star: true, funcformat: "COERCE_EXPLICIT_CALL" },
  };
  const zero = cast(intConst(0), "int8");
  return {
    targetList: [
      ...names.map((c) => target({ ColumnRef: { fields: [str(c)] } })),
      target(options.right ? zero : count, "pgdog_left"),
      target(options.right ? count : zero, "pgdog_right"),
    ],
    fromClause: [{
      RangeSubselect: {
        subquery: { SelectStmt: n },
        alias: { aliasname: "pgdog_same", colnames: names.map(str) },
      },
    }],
    groupClause: names.map((_, i) => intConst(i + 1)),
    limitOption: "LIMIT_OPTION_DEFAULT",
    op: "SETOP_NONE",
  };
}

/**
 * The plan of a set operation whose shards send each row with its counts on either side
 * (`visible` columns, then the left and right counts): pgdog groups equal rows, adds up a
 * sharded side's counts and takes the largest of a replicated side's (every shard has it).
 */
function countedPlan(o: {
  shard: Node;
  op: "union" | "intersect" | "except";
  all: boolean;
  replicatedLeft?: boolean;
  replicatedRight?: boolean;
  visible: number;
  /** The client's column names, where the shards' first part is not the client's. */
  names?: string[];
  orderBy: SortKey[];
  limit: NumberSource | null;
  offset: NumberSource | null;
}): MergePlan {
  const visible = o.visible;
  const count = (column: number, replicated: boolean | undefined): AggregateSpec => ({
    fn: replicated ? "max" : "count",
    partials: [column],
    distinct: false,
    star: !replicated,
    orderBy: [],
  });
  const groupBy = Array.from({ length: visible }, (_, i) => i);
  const plan: MergePlan = {
    shardSql: shardText({ SelectStmt: o.shard }),
    shardColumns: visible + 2,
    aggregate: {
      groupBy,
      aggregates: [count(visible, o.replicatedLeft), count(visible + 1, o.replicatedRight)],
      output: [...groupBy.map((g) => ({ group: g })), { aggregate: 0 }, { aggregate: 1 }],
    },
    having: null,
    setOperation: { op: o.op, all: o.all, left: 0, right: 1 },
    distinct: null,
    orderBy: o.orderBy,
    shardsSorted: false,
    limit: o.limit,
    offset: o.offset,
    visible,
  };
  if (o.names !== undefined) plan.columnNames = o.names;
  return plan;
}
