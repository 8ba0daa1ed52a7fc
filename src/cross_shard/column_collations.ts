/**
 * Table columns declared with a collation of their own (`name text COLLATE "C"` in an ICU
 * database): a merge that sorts by such a column must compare as that collation does, not as
 * the database's default. Their shards' RowDescription names the table and column of each plain
 * column, so the sort keys on them get the column's collation before the merge starts.
 *
 * @module
 */

import type { MergePlan, SortKey } from "./plan.ts";
import { parseRowDescription } from "./rows.ts";

/** Collations of table columns that have one other than their database's default. */
export interface ColumnCollations {
  /** The collation name (`C`, `en-x-icu`, ...) of column `attnum` of table `tableOid`. */
  get(key: string): string | undefined;
  readonly size: number;
}

/** The key of column `attnum` of table `tableOid` in a {@linkcode ColumnCollations}. */
export function columnKey(tableOid: number, attnum: number): string {
  return `${tableOid}.${attnum}`;
}

/**
 * `plan` with each ORDER BY key that has no COLLATE of its own, and sorts a table column
 * declared with a collation, given that column's collation (the plan itself is shared and kept
 * as it is). `shardDescription` is a shard's RowDescription for the plan's shard SQL.
 */
export function withColumnCollations(
  plan: MergePlan,
  options: { shardDescription: Uint8Array; columns: ColumnCollations },
): MergePlan {
  const { columns } = options;
  if (columns.size === 0 || plan.orderBy.every((k) => k.collation !== null)) return plan;
  const fields = parseRowDescription(options.shardDescription);
  let changed = false;
  const orderBy = plan.orderBy.map((key): SortKey => {
    if (key.collation !== null) return key;
    const shardColumn = shardColumnOf(plan, key.column);
    const field = shardColumn === null ? undefined : fields[shardColumn];
    if (field === undefined || field.tableOid === 0) return key;
    const collation = columns.get(columnKey(field.tableOid, field.attnum));
    if (collation === undefined) return key;
    changed = true;
    return { ...key, collation };
  });
  return changed ? { ...plan, orderBy } : plan;
}

/** Text types, whose order depends on the collation. */
const TEXT_TYPES = new Set([25, 1043, 1042, 19]);

/**
 * Why `plan` can't be merged exactly in a database with columns of their own collation, or null:
 * a sort key on a text expression, or an aggregate that orders text (min, max, or an ORDER BY
 * inside it), would compare by the database's collation while PostgreSQL uses the collation the
 * expression inherits from its columns, which pgdog can't see.
 */
export function textAggregateRefusal(
  plan: MergePlan,
  options: { shardDescription: Uint8Array; columns: ColumnCollations },
): string | null {
  const aggregates = plan.aggregate?.aggregates ?? [];
  if (options.columns.size === 0) return null;
  if (aggregates.length === 0 && plan.orderBy.every((k) => k.collation !== null)) return null;
  const fields = parseRowDescription(options.shardDescription);
  for (const key of plan.orderBy) {
    if (key.collation !== null) continue;
    const column = shardColumnOf(plan, key.column);
    const field = column === null ? undefined : fields[column];
    // A table column's own collation is known (withColumnCollations); an expression's is not.
    if (field !== undefined && field.tableOid === 0 && TEXT_TYPES.has(field.typeOid)) {
      return `ORDER BY a text expression across shards is not supported without COLLATE in a ` +
        "database with columns of their own collation (pgdog can't tell which collation it has)";
    }
  }
  for (const a of aggregates) {
    const ordered = a.fn === "min" || a.fn === "max"
      ? [a.partials[0]]
      : a.orderBy.map((k) => a.partials[k.column]);
    if (ordered.some((c) => c !== undefined && TEXT_TYPES.has(fields[c]?.typeOid ?? 0))) {
      return `${a.fn}() of text across shards is not supported in a database with columns of ` +
        "their own collation (pgdog can't tell which collation the shards compared by)";
    }
  }
  return null;
}

/** The shard column a working-row column is (null: an aggregate's result). */
function shardColumnOf(plan: MergePlan, column: number): number | null {
  const aggregate = plan.aggregate;
  if (aggregate === null) return column;
  const out = aggregate.output[column];
  return out !== undefined && "group" in out ? aggregate.groupBy[out.group] ?? null : null;
}
