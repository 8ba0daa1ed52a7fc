/**
 * Which function calls are aggregates, for the cross-shard rule (`cross_shard.ts`) and the merge
 * planner (`merge_plan.ts`): PostgreSQL's built-in aggregates by name, and the database's own
 * (user-defined aggregates and window functions, `pg_proc.prokind` 'a' or 'w' outside
 * pg_catalog), which the proxy reads from shard 0's catalog (`backend/catalog.ts`) and routing
 * receives through `ShardLookup.aggregates`. Without them (`pgdog route`), a function of an
 * unknown name is a plain function.
 *
 * @module
 */

import type { Node } from "./analyze.ts";

/** PostgreSQL's built-in aggregate functions (pg_proc, prokind 'a'). */
export const BUILTIN_AGGREGATES: ReadonlySet<string> = new Set(
  ("any_value array_agg avg bit_and bit_or bit_xor bool_and bool_or corr count covar_pop " +
    "covar_samp cume_dist dense_rank every json_agg json_agg_strict json_object_agg " +
    "json_object_agg_strict json_object_agg_unique json_object_agg_unique_strict jsonb_agg " +
    "jsonb_agg_strict jsonb_object_agg jsonb_object_agg_strict jsonb_object_agg_unique " +
    "jsonb_object_agg_unique_strict max min mode percent_rank percentile_cont percentile_disc " +
    "range_agg range_intersect_agg rank regr_avgx regr_avgy regr_count regr_intercept regr_r2 " +
    "regr_slope regr_sxx regr_sxy regr_syy stddev stddev_pop stddev_samp string_agg sum var_pop " +
    "var_samp variance xmlagg").split(" "),
);

/**
 * The catalog query listing the database's own aggregates and window functions (by name; a
 * name defined in any schema counts, whatever the search_path: pgdog errs on refusing).
 */
export const USER_AGGREGATES_SQL =
  "SELECT DISTINCT p.proname::text FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n " +
  "ON n.oid = p.pronamespace WHERE p.prokind IN ('a', 'w') AND n.nspname <> 'pg_catalog'";

/** The last name of a function call (`s.f(x)`: `f`), as the parser gives it. */
export function functionName(f: Node): string {
  const names = f.funcname as Node[] | undefined;
  const last = names?.[names.length - 1];
  return (last?.String as { sval?: string } | undefined)?.sval ?? "";
}

/**
 * A `FuncCall` node's body (without `OVER`: window calls are not aggregates here) is an aggregate:
 * aggregate syntax (`*`, DISTINCT, FILTER, ORDER BY, WITHIN GROUP), a built-in aggregate's name,
 * or one of `user` (the database's own, when known).
 */
export function isAggregateFunction(f: Node, user: ReadonlySet<string> | undefined): boolean {
  if (f.agg_star || f.agg_distinct || f.agg_within_group || f.agg_filter || f.agg_order) {
    return true;
  }
  const name = functionName(f);
  return BUILTIN_AGGREGATES.has(name.toLowerCase()) || user?.has(name) === true;
}

/**
 * A function call routing can't classify yet: not aggregate syntax nor a built-in aggregate, and
 * the database's own aggregates are not known (`user` undefined).
 */
export function mayBeUserAggregate(f: Node, user: ReadonlySet<string> | undefined): boolean {
  if (user !== undefined) return false;
  const names = f.funcname as Node[] | undefined;
  const schema = names && names.length > 1
    ? (names[0].String as { sval?: string } | undefined)?.sval
    : undefined;
  return schema !== "pg_catalog" && !isAggregateFunction(f, undefined);
}
