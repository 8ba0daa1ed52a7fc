/**
 * The merge plan: how the answers of several shards become the one answer a single PostgreSQL
 * database holding every row would give. The router builds it from the parse tree
 * (`src/router/merge_plan.ts`); the engine in this folder runs it on the shards' bytes.
 *
 * The stages, in order (each optional):
 *
 * 1. **Shard rows.** Every shard runs {@linkcode MergePlan.shardSql} and answers rows whose
 *    columns are `shardColumns` wide: the client's columns (or the group keys and aggregate
 *    partials) followed by hidden ones the later stages need.
 * 2. **Aggregate** (`aggregate` set): rows with equal `groupBy` columns (all rows when empty)
 *    are one group; each {@linkcode AggregateSpec} combines its partial columns and finishes.
 *    The working row of a group is then `aggregate.output`: each entry a group-by shard column
 *    or an aggregate's result. Without this stage the working row is the shard row.
 * 3. **Having**: groups whose {@linkcode Expr} is not true are dropped.
 * 4. **Set operation** (`setOperation`): how many times each group's row is emitted.
 * 5. **Distinct**: equal rows (all columns or the `on` columns, by working-row index) kept once
 *    (the first in sort order, as DISTINCT ON does).
 * 6. **Sort** by `orderBy` (working-row indices). When `shardsSorted`, every shard already sends
 *    its rows in that order and the engine merges them as they arrive (k-way, streaming);
 *    otherwise it sorts what it holds.
 * 7. **Offset and limit.**
 * 8. **Project**: the client gets the first `visible` columns of the working row; RowDescription
 *    is cut the same way (an aggregate's column gets its result type).
 *
 * Values are compared and grouped as PostgreSQL does for the column's type (see `values.ts`).
 * Rows held beyond streaming count against `cross_shard_buffer_limit` (53200 past it).
 *
 * @module
 */

/** A number the client gave: a literal, or the value of parameter `$param` (1-based). */
export type NumberSource = { value: number } | { param: number };

/** One sort key over working-row columns. */
export interface SortKey {
  /** Working-row column index (0-based). */
  column: number;
  descending: boolean;
  /** PostgreSQL's default: NULLS FIRST when descending, NULLS LAST when ascending. */
  nullsFirst: boolean;
  /**
   * Text collation: an explicit `COLLATE "name"` of the ORDER BY item, else null (the column's
   * own collation, or the database default, found at run time).
   */
  collation: string | null;
}

/** Aggregate functions the engine combines, by their PostgreSQL names. */
export type AggregateFunction =
  | "count"
  | "sum"
  | "min"
  | "max"
  | "avg"
  | "stddev"
  | "stddev_samp"
  | "stddev_pop"
  | "variance"
  | "var_samp"
  | "var_pop"
  | "bool_and"
  | "bool_or"
  | "every"
  | "bit_and"
  | "bit_or"
  | "array_agg"
  | "string_agg"
  | "json_agg"
  | "jsonb_agg";

/**
 * One aggregate of the client's query, split into partials the shards compute. Partial layouts
 * (shard column indices in `partials`, in this order):
 * - count: `[count(...)]` (int8);  sum, min, max, bool_*, every, bit_*: `[same(...)]`;
 * - avg: `[sum(x), count(x), avg(x)]`; the result type follows the sum's type (int8 or numeric:
 *   numeric; float4/float8: float8; interval: interval). PostgreSQL accumulates float4 in
 *   float8 while sum(float4) is float4: when the sum is float4, a shard's sum is taken as
 *   avg × count (float8) instead; the other types use the exact sum;
 * - stddev/variance family: `[count(x), sum(x), sum(x*x), avg(x)]` with the sum of squares exact
 *   for integers and numeric (numeric), float8 for floats; `avg(x)` as for avg (Σx of float4);
 * - array_agg, json_agg, jsonb_agg: `[x]` one shard row per input value (shards don't
 *   aggregate; with `orderBy` the shard rows carry the keys as further partial columns);
 *   string_agg: `[x, delimiter]`;
 * - `distinct`: shards send each distinct value of `x` once per group (`[x]`); the engine
 *   deduplicates across shards and aggregates the values itself.
 * FILTER (WHERE ...) stays in the shards' partial expressions.
 */
export interface AggregateSpec {
  fn: AggregateFunction;
  /** Shard columns holding the partials, as laid out above. */
  partials: number[];
  distinct: boolean;
  /** count(*) (no argument). */
  star: boolean;
  /** ORDER BY inside the aggregate (array_agg, string_agg, json_agg...): keys over `partials`. */
  orderBy: SortKey[];
}

/** A working-row column after aggregation. */
export type OutputColumn = { group: number } | { aggregate: number };

/** Stage 2. */
export interface AggregateStage {
  /** Shard columns that make a group (empty: one group, even with no rows). */
  groupBy: number[];
  aggregates: AggregateSpec[];
  /** The working row. */
  output: OutputColumn[];
}

/** An expression pgdog evaluates after the merge (HAVING). */
export type Expr =
  | { column: number }
  | { constant: string | null; type: "int" | "numeric" | "text" | "bool" }
  | { param: number }
  | { op: "=" | "<>" | "<" | "<=" | ">" | ">=" | "+" | "-" | "*" | "/" | "%"; args: [Expr, Expr] }
  | { op: "and" | "or"; args: Expr[] }
  | { op: "not"; args: [Expr] }
  | { op: "isnull" | "notnull"; args: [Expr] }
  | { op: "between"; args: [Expr, Expr, Expr]; not: boolean }
  | { op: "in"; args: Expr[]; not: boolean };

/** Stage 4: rows are grouped on every column; `left`/`right` are the aggregate indices
 * (counts of the row in each side). */
export interface SetOperation {
  op: "union" | "intersect" | "except";
  all: boolean;
  left: number;
  right: number;
}

/** A plan that passes the shards' rows through as they arrive (see MergePlan.passThrough). */
export const PASS_THROUGH: MergePlan = Object.freeze({
  shardSql: null,
  shardColumns: 0,
  aggregate: null,
  having: null,
  setOperation: null,
  distinct: null,
  orderBy: [],
  shardsSorted: false,
  limit: null,
  offset: null,
  visible: 0,
  passThrough: true,
});

/** The whole plan. */
export interface MergePlan {
  /** The statement each shard runs ($n parameters keep their numbers); null: the client's own. */
  shardSql: string | null;
  /** Columns of a shard row. */
  shardColumns: number;
  aggregate: AggregateStage | null;
  having: Expr | null;
  setOperation: SetOperation | null;
  /** Null: none; `[]`: on every visible column; else the working-row columns of DISTINCT ON. */
  distinct: number[] | null;
  orderBy: SortKey[];
  shardsSorted: boolean;
  limit: NumberSource | null;
  offset: NumberSource | null;
  /** The client's columns: the first `visible` of the working row. */
  visible: number;
  /**
   * The shards' rows as they come, no stage but the row count (a cross-shard SELECT that is
   * concatenated, fetched in parts by a row-limited Execute): `shardColumns` and `visible` are
   * the first RowDescription's column count.
   */
  passThrough?: boolean;
  /**
   * The client's column names (`visible` of them), where the shards' RowDescription names
   * differ from what one PostgreSQL would call them (an aggregate split into partials: `avg`
   * whose shard column is `sum`; a group key selected under an alias). Absent: the shards'
   * names (an aggregate's column takes the name of its first partial); so does an undefined
   * entry.
   */
  columnNames?: (string | undefined)[];
}
