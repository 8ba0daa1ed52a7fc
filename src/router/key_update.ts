/**
 * UPDATEs that change a row's sharding key (`[rewrite] shard_key = "rewrite"`): when the new key
 * belongs to another shard, the row moves. The plan says what pgdog runs, inside one transaction
 * on both shards:
 *
 * 1. on the old shard, `updateSql`: the client's UPDATE itself (SET and WHERE as written, its
 *    parameters renumbered: `updateParams`), returning the new row as jsonb text and its ctid,
 *    so PostgreSQL computes the new row (SET expressions see the old one) and locks it;
 * 2. on the new shard, {@linkcode keyMoveInsert}: the new row inserted (`jsonb_populate_record`)
 *    with the client's RETURNING list (its parameters renumbered: `returningParams`); on the old
 *    shard {@linkcode keyMoveDelete}: the row deleted by its ctid.
 *
 * (Triggers on the old shard see an UPDATE then a DELETE; on the new one an INSERT.)
 *
 * @module
 */

import type { Node } from "./analyze.ts";
import { MergeRefusal, shardText, withLiterals } from "./merge_plan.ts";
import type { ValueContext } from "./shard_keys.ts";
import type { KeyUpdatePlan } from "./split_insert_plan.ts";

export type { KeyUpdatePlan } from "./split_insert_plan.ts";

/** An identifier, quoted. */
function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/**
 * The move of the rows `stmt` (`{ UpdateStmt: ... }`) updates from shard `from` to shard `to`;
 * a refusal (why, in words) when it can't be done.
 */
export function planKeyUpdate(
  stmt: Node,
  options: { from: number; to: number; column: string; values: ValueContext; table: string },
): KeyUpdatePlan | { refused: string } {
  const { from, to, values, table } = options;
  const body = stmt.UpdateStmt as Node;
  const why = (what: string) => ({
    refused:
      `an UPDATE that moves a row of ${table} to another shard (changing ${options.column}) ` +
      `can't have ${what}`,
  });
  if (body.withClause) return why("a WITH clause");
  if (((body.fromClause as Node[] | undefined) ?? []).length > 0) return why("a FROM clause");
  const targets = (body.targetList as Node[] | undefined) ?? [];
  for (const t of targets) {
    const r = t.ResTarget as { name?: string; val?: Node };
    if (r.val === undefined || r.name === undefined) return why("this SET list");
  }
  const relation = body.relation as { relname: string; schemaname?: string; alias?: Node };
  const rel = (relation.schemaname ? `${quoteIdent(relation.schemaname)}.` : "") +
    quoteIdent(relation.relname);
  const alias = (relation.alias as { aliasname?: string } | undefined)?.aliasname ??
    relation.relname;
  // Literals back in (the tree is of the normalized text); the client's parameters stay.
  const whole = withLiterals(stmt, values) as Node;
  const wholeBody = whole.UpdateStmt as Node;
  const returningList = (wholeBody.returningClause as { exprs?: Node[] } | undefined)?.exprs ?? [];
  // On the old shard: the client's UPDATE, returning the new row (SET applied there, with the
  // parameter types PostgreSQL infers for the client's own statement) and where it is.
  const update: Node = {
    UpdateStmt: {
      ...wholeBody,
      returningClause: {
        exprs: [
          resTarget(cast(column(["ctid"]), "text")),
          resTarget(cast(call("to_jsonb", [column([alias, "*"])]), "text")),
        ],
      },
    },
  };
  const updateParams: number[] = [];
  const returningParams: number[] = [];
  let returning: string | null = null;
  let updateSql: string;
  try {
    updateSql = shardText(renumberParams(update, updateParams) as Node);
    if (returningList.length > 0) {
      const renumbered = renumberParams(returningList, returningParams) as Node[];
      // The RETURNING list, written as a SELECT list of the table's row.
      const text = shardText({
        SelectStmt: {
          targetList: renumbered,
          fromClause: [{ RangeVar: wholeBody.relation }],
          limitOption: "LIMIT_OPTION_DEFAULT",
          op: "SETOP_NONE",
        },
      });
      const fromAt = text.lastIndexOf(" FROM ");
      returning = text.slice("SELECT ".length, fromAt);
    }
  } catch (e) {
    if (e instanceof MergeRefusal) return { refused: e.message };
    throw e;
  }
  return {
    table,
    from,
    to,
    updateSql,
    updateParams,
    relation: rel,
    alias: alias === relation.relname ? null : alias,
    returning,
    returningParams,
  };
}

/** The new shard's INSERT of the moved row (`json`: its columns as jsonb text). */
export function keyMoveInsert(plan: KeyUpdatePlan, json: string): string {
  let tag = "pgdog";
  while (json.includes(`$${tag}$`)) tag += "_";
  const target = plan.alias === null
    ? plan.relation
    : `${plan.relation} AS ${quoteIdent(plan.alias)}`;
  return `INSERT INTO ${target} SELECT * FROM jsonb_populate_record(NULL::${plan.relation}, ` +
    `$${tag}$${json}$${tag}$::jsonb)` +
    (plan.returning === null ? "" : ` RETURNING ${plan.returning}`);
}

/** The old shard's DELETE of the moved row (`ctid` as the SELECT gave it). */
export function keyMoveDelete(plan: KeyUpdatePlan, ctid: string): string {
  return `DELETE FROM ${plan.relation} WHERE ctid = '${ctid.replaceAll("'", "''")}'::tid` +
    (plan.returning === null ? "" : " RETURNING 1");
}

function column(fields: string[]): Node {
  return {
    ColumnRef: { fields: fields.map((f) => f === "*" ? { A_Star: {} } : { String: { sval: f } }) },
  };
}

function resTarget(val: Node): Node {
  return { ResTarget: { val } };
}

function cast(arg: Node, type: string): Node {
  return {
    TypeCast: {
      arg,
      typeName: { names: [{ String: { sval: type } }], typemod: -1 },
    },
  };
}

function call(name: string, args: Node[]): Node {
  return {
    FuncCall: { funcname: [{ String: { sval: name } }], args, funcformat: "COERCE_EXPLICIT_CALL" },
  };
}

/** A copy of `node` with its parameters numbered $1.. by first appearance (`params`: originals). */
function renumberParams(node: unknown, params: number[]): unknown {
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
  return copy(node);
}
