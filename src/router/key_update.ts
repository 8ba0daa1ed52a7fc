/**
 * UPDATEs that change a row's sharding key (`[rewrite] shard_key = "rewrite"`): when the new key
 * belongs to another shard, the row moves. The plan says what pgdog runs, inside one transaction
 * on both shards:
 *
 * 1. on the old shard, `selectSql`: the row(s) the UPDATE's WHERE matches (its parameters
 *    renumbered: `selectParams`), locked (FOR UPDATE), as json text, and where each is (ctid);
 * 2. on the new shard, {@linkcode keyMoveInsert}: the new row inserted, computed there from the
 *    old one (`json_populate_record`) with the client's SET expressions (which may use the old
 *    columns) and its RETURNING list (their parameters renumbered together: `insertParams`); on
 *    the old shard {@linkcode keyMoveDelete}: the row deleted by its ctid.
 *
 * @module
 */

import type { Node } from "./analyze.ts";
import { MergeRefusal, shardText, withLiterals } from "./merge_plan.ts";
import type { ValueContext } from "./shard_keys.ts";
import type { KeyUpdatePlan } from "./split_insert_plan.ts";
import { renumberParams } from "./split_insert.ts";

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
  const relation = body.relation as { relname: string; schemaname?: string; alias?: Node };
  const rel = (relation.schemaname ? `${quoteIdent(relation.schemaname)}.` : "") +
    quoteIdent(relation.relname);
  const alias = (relation.alias as { aliasname?: string } | undefined)?.aliasname ??
    relation.relname;
  // Literals back in (the tree is of the normalized text); the client's parameters stay.
  const whole = withLiterals(stmt, values) as Node;
  const wholeBody = whole.UpdateStmt as Node;
  const sets: Array<{ column: string; val: Node }> = [];
  for (const t of (wholeBody.targetList as Node[] | undefined) ?? []) {
    const r = t.ResTarget as { name?: string; val?: Node; indirection?: unknown[] };
    if (r.val === undefined || r.name === undefined) return why("this SET list");
    if (r.indirection !== undefined) return why("SET of a field or an array element");
    if (r.val.SetToDefault !== undefined) return why("SET ... = DEFAULT");
    if (r.val.MultiAssignRef !== undefined) return why("SET (a, b) = (...)");
    // The new row is computed on the new shard, which has other rows of other tables.
    if (readsTables(r.val)) return why("a subquery in its SET list");
    sets.push({ column: r.name, val: r.val });
  }
  const returningList = (wholeBody.returningClause as { exprs?: Node[] } | undefined)?.exprs ?? [];
  if (returningList.some(readsTables)) return why("a subquery in its RETURNING list");
  // On the old shard: the row (locked) and where it is.
  const select: Node = {
    SelectStmt: {
      targetList: [
        resTarget(cast(column(["ctid"]), "text")),
        resTarget(cast(call("to_json", [column([alias, "*"])]), "text")),
      ],
      fromClause: [{ RangeVar: wholeBody.relation }],
      whereClause: wholeBody.whereClause,
      lockingClause: [{
        LockingClause: { strength: "LCS_FORUPDATE", waitPolicy: "LockWaitBlock" },
      }],
      limitOption: "LIMIT_OPTION_DEFAULT",
      op: "SETOP_NONE",
    },
  };
  const selectParams: number[] = [];
  const insertParams: number[] = [];
  const set: Record<string, string> = {};
  let returning: string | null = null;
  let selectSql: string;
  try {
    selectSql = shardText(renumberParams(select, selectParams) as Node);
    // The new row's SET expressions and the RETURNING list, numbered for the new shard's INSERT.
    for (const { column, val } of sets) {
      set[column] = expressionText(renumberParams(val, insertParams) as Node);
    }
    if (returningList.length > 0) {
      returning = returningList.map((t) => targetText(renumberParams(t, insertParams) as Node))
        .join(", ");
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
    selectParams,
    relation: rel,
    alias,
    set,
    returning,
    insertParams,
  };
}

/** One expression as SQL, checked (written as a select list of one item, then cut). */
function expressionText(expr: Node): string {
  return targetText({ ResTarget: { val: expr } });
}

/** One select-list item (`expr [AS name]`) as SQL, checked. */
function targetText(target: Node): string {
  const text = shardText({
    SelectStmt: { targetList: [target], limitOption: "LIMIT_OPTION_DEFAULT", op: "SETOP_NONE" },
  });
  return text.slice("SELECT ".length);
}

/** The expression reads tables (a subquery). */
function readsTables(node: unknown): boolean {
  return JSON.stringify(node).includes('"SubLink"');
}

/**
 * The new shard's INSERT of the moved row: `json` is the old row as the old shard gave it
 * (`to_json`, columns in the table's order); the client's SET expressions are evaluated here
 * against it (its parameters typed by the columns they are assigned to), the rest copied.
 */
export function keyMoveInsert(plan: KeyUpdatePlan, json: string): string {
  let tag = "pgdog";
  while (json.includes(`$${tag}$`)) tag += "_";
  const columns = Object.keys(JSON.parse(json) as Record<string, unknown>);
  const alias = quoteIdent(plan.alias);
  const values = columns.map((c) => plan.set[c] ?? `${alias}.${quoteIdent(c)}`);
  return `INSERT INTO ${plan.relation} AS ${alias} (${columns.map(quoteIdent).join(", ")}) ` +
    `SELECT ${values.join(", ")} FROM json_populate_record(NULL::${plan.relation}, ` +
    `$${tag}$${json}$${tag}$::json) AS ${alias}` +
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
