/**
 * UPDATEs that change a row's sharding key (`[rewrite] shard_key = "rewrite"`): when the new key
 * belongs to another shard, the row moves. The plan says what pgdog runs, inside one transaction
 * on both shards:
 *
 * 1. on the old shard, `selectSql`: the row(s) the UPDATE's WHERE matches, locked (FOR UPDATE),
 *    with the new row computed there (the SET expressions evaluated against the old row, merged
 *    into `to_jsonb(row)`), and its ctid;
 * 2. on the new shard, `insertSql(json)`: the new row inserted (`jsonb_populate_record`), with the
 *    client's RETURNING list; and on the old shard `deleteSql(ctid)`.
 *
 * The client's parameters are written into `selectSql` as literals (it runs as pgdog's own simple
 * query); the RETURNING list keeps them, renumbered (`returningParams`).
 *
 * @module
 */

import type { Node } from "./analyze.ts";
import { MergeRefusal, shardText, withLiterals } from "./merge_plan.ts";
import type { ValueContext } from "./shard_keys.ts";
import type { KeyUpdatePlan } from "./split_insert_plan.ts";

export type { KeyUpdatePlan } from "./split_insert_plan.ts";

const utf8 = new TextDecoder();

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
    refused: `an UPDATE that moves a row of ${table} to another shard (changing ${options.column}) ` +
      `can't have ${what}`,
  });
  if (body.withClause) return why("a WITH clause");
  if (((body.fromClause as Node[] | undefined) ?? []).length > 0) return why("a FROM clause");
  const targets = (body.targetList as Node[] | undefined) ?? [];
  const pairs: Node[] = [];
  for (const t of targets) {
    const r = t.ResTarget as { name?: string; val?: Node; indirection?: unknown[] };
    if (r.val === undefined || r.name === undefined) return why("this SET list");
    if (r.indirection !== undefined) return why("SET of a field or element");
    if (r.val.SetToDefault !== undefined) return why("SET ... = DEFAULT");
    if (r.val.MultiAssignRef !== undefined) return why("SET (a, b) = (...)");
    pairs.push({ A_Const: { sval: { sval: r.name } } }, r.val);
  }
  const relation = body.relation as { relname: string; schemaname?: string; alias?: Node };
  const rel = (relation.schemaname ? `${quoteIdent(relation.schemaname)}.` : "") +
    quoteIdent(relation.relname);
  const alias = (relation.alias as { aliasname?: string } | undefined)?.aliasname ??
    relation.relname;
  // Literals back in, then the client's parameters as literals (text) for the SELECT.
  const whole = withLiterals(stmt, values) as Node;
  const wholeBody = whole.UpdateStmt as Node;
  const inlined = inlineParams(
    {
      SelectStmt: {
        targetList: [
          resTarget(cast(column(["ctid"]), "text")),
          resTarget(cast(
            {
              A_Expr: {
                kind: "AEXPR_OP",
                name: [{ String: { sval: "||" } }],
                lexpr: call("to_jsonb", [column([alias, "*"])]),
                rexpr: call("jsonb_build_object", withLiterals(pairs, values) as Node[]),
              },
            },
            "text",
          )),
        ],
        fromClause: [{ RangeVar: wholeBody.relation }],
        whereClause: wholeBody.whereClause,
        lockingClause: [{
          LockingClause: { strength: "LCS_FORUPDATE", waitPolicy: "LockWaitBlock" },
        }],
        limitOption: "LIMIT_OPTION_DEFAULT",
        op: "SETOP_NONE",
      },
    },
    values,
  );
  if ("refused" in inlined) return inlined;
  const returningList = (wholeBody.returningClause as { exprs?: Node[] } | undefined)?.exprs ?? [];
  const returningParams: number[] = [];
  let returning: string | null = null;
  let selectSql: string;
  try {
    selectSql = shardText(inlined.node);
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
    selectSql,
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
  const target = plan.alias === null ? plan.relation : `${plan.relation} AS ${quoteIdent(plan.alias)}`;
  return `INSERT INTO ${target} SELECT * FROM jsonb_populate_record(NULL::${plan.relation}, ` +
    `$${tag}$${json}$${tag}$::jsonb)` + (plan.returning === null ? "" : ` RETURNING ${plan.returning}`);
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
  return { FuncCall: { funcname: [{ String: { sval: name } }], args, funcformat: "COERCE_EXPLICIT_CALL" } };
}

/** `node` with the client's parameters written in as (untyped) literals; binary ones refused. */
function inlineParams(node: Node, values: ValueContext): { node: Node } | { refused: string } {
  const bind = values.bind;
  let refused: string | null = null;
  const copy = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(copy);
    if (v === null || typeof v !== "object") return v;
    const o = v as Node;
    const ref = o.ParamRef as { number?: number } | undefined;
    if (ref?.number !== undefined) {
      const at = ref.number - 1;
      const raw = bind?.values[at];
      const formats = bind?.formats ?? [];
      const format = formats.length === 0 ? 0 : formats.length === 1 ? formats[0] : formats[at];
      if (raw === undefined) {
        refused ??= `parameter $${ref.number} has no value`;
        return o;
      }
      if (raw === null) return { A_Const: { isnull: true } };
      if (format !== 0) {
        refused ??= "an UPDATE that moves a row to another shard takes its parameters in text " +
          "format only";
        return o;
      }
      return { A_Const: { sval: { sval: utf8.decode(raw) } } };
    }
    const out: Node = {};
    for (const [k, x] of Object.entries(o)) out[k] = copy(x);
    return out;
  };
  const out = copy(node) as Node;
  return refused !== null ? { refused } : { node: out };
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
