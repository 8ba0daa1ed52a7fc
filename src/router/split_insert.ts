/**
 * Split multi-row INSERTs (`[rewrite] split_inserts = "rewrite"`): an `INSERT ... VALUES` whose
 * rows belong to several shards becomes one INSERT per shard holding that shard's rows, in the
 * order the client wrote them. Each statement is written with pgsql-deparser (and read back to
 * check it means the same), the literals normalization took out put back, and the client's Bind
 * parameters renumbered `$1..$n` per statement; `params` says which client parameter each one is.
 * ON CONFLICT and RETURNING are carried to every statement; the client's RETURNING rows are put
 * back in VALUES order by `rows`.
 *
 * @module
 */

import type { Node } from "./analyze.ts";
import { MergeRefusal, shardText, withLiterals } from "./merge_plan.ts";
import type { ValueContext } from "./shard_keys.ts";
import type { SplitInsertPlan, SplitInsertStatement } from "./split_insert_plan.ts";

export type { SplitInsertPlan, SplitInsertStatement } from "./split_insert_plan.ts";

/**
 * Splits the INSERT `stmt` (`{ InsertStmt: ... }` of a statement analyzed in `values`) by
 * `rowShards` (the shard of each VALUES row, in order). A refusal when the split can't answer as
 * one statement would (why, in words).
 */
export function planSplitInsert(
  stmt: Node,
  options: { rowShards: number[]; values: ValueContext; table: string },
): SplitInsertPlan | { refused: string } {
  const { rowShards, values, table } = options;
  const body = stmt.InsertStmt as Node;
  const select = (body.selectStmt as { SelectStmt?: Node } | undefined)?.SelectStmt;
  const rows = select?.valuesLists as Node[] | undefined;
  if (!select || !rows || rows.length !== rowShards.length) {
    return { refused: `only INSERT ... VALUES into ${table} can be split by shard` };
  }
  if (body.withClause) {
    return {
      refused: `a multi-row INSERT into ${table} with a WITH clause can't be split by shard ` +
        "(each shard would run the WITH clause): insert the rows of each shard separately",
    };
  }
  const returning =
    ((body.returningClause as { exprs?: Node[] } | undefined)?.exprs ?? []).length > 0;
  const conflict = body.onConflictClause as { action?: string; whereClause?: Node } | undefined;
  if (returning && conflict !== undefined) {
    const skips = conflict.action === "ONCONFLICT_NOTHING" ||
      (conflict.action === "ONCONFLICT_UPDATE" && conflict.whereClause !== undefined);
    if (skips) {
      return {
        refused: `a multi-row INSERT into ${table} whose rows belong to different shards, with ` +
          "RETURNING and an ON CONFLICT that may skip rows, can't be split: the order of the " +
          "rows returned can't be known (insert the rows of each shard separately, or drop " +
          "RETURNING)",
      };
    }
  }
  // Literals back in (the tree is of the normalized text); the client's parameters stay.
  const whole = withLiterals(stmt, values) as Node;
  const wholeBody = whole.InsertStmt as Node;
  const wholeRows = (wholeBody.selectStmt as { SelectStmt: Node }).SelectStmt
    .valuesLists as Node[];
  const byShard = new Map<number, number[]>();
  rowShards.forEach((shard, i) => {
    const list = byShard.get(shard);
    if (list === undefined) byShard.set(shard, [i]);
    else list.push(i);
  });
  const statements: SplitInsertStatement[] = [];
  for (const shard of [...byShard.keys()].sort((a, b) => a - b)) {
    const picked = byShard.get(shard)!;
    const part: Node = {
      InsertStmt: {
        ...wholeBody,
        selectStmt: {
          SelectStmt: {
            ...(wholeBody.selectStmt as { SelectStmt: Node }).SelectStmt,
            valuesLists: picked.map((i) => wholeRows[i]),
          },
        },
      },
    };
    const params: number[] = [];
    const renumbered = renumberParams(part, params);
    let sql: string;
    try {
      sql = shardText(renumbered);
    } catch (e) {
      if (e instanceof MergeRefusal) return { refused: e.message };
      throw e;
    }
    statements.push({ shard, sql, params, rows: picked });
  }
  return {
    table,
    statements,
    returning,
    rowCount: rows.length,
    oneOff: values.analysis.literals.length > 0,
  };
}

/**
 * A copy of `node` with its parameters numbered $1.. in order of first appearance; `params`
 * gets the original number of each.
 */
export function renumberParams(node: Node, params: number[]): Node {
  const copy = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(copy);
    if (v === null || typeof v !== "object") return v;
    const o = v as Node;
    const ref = o.ParamRef as { number?: number } | undefined;
    if (ref?.number !== undefined) {
      let at = params.indexOf(ref.number);
      if (at < 0) at = params.push(ref.number) - 1;
      return { ParamRef: { ...ref, number: at + 1 } };
    }
    const out: Node = {};
    for (const [k, x] of Object.entries(o)) out[k] = copy(x);
    return out;
  };
  return copy(node) as Node;
}

/** `pgdog route`'s line for a split INSERT: each shard's statement. */
export function describeSplitInsert(plan: SplitInsertPlan): string {
  return `split INSERT into ${plan.table}: ` +
    plan.statements.map((s) =>
      `shard ${s.shard} rows ${s.rows.map((r) => r + 1).join(",")}: ${s.sql}`
    )
      .join("; ");
}
