/**
 * A pgdog plugin that blocks `DELETE` and `UPDATE` statements without a `WHERE` clause, the
 * classic way to empty or overwrite a table by accident. It looks at every statement of a
 * multi-statement query, at data-modifying `WITH` queries, at `EXPLAIN ANALYZE` (which runs its
 * statement) and at `PREPARE` (whose statement runs on `EXECUTE`). `CREATE RULE` and
 * `CREATE FUNCTION` bodies are not checked: they do not run when they are defined.
 *
 * To change every row on purpose, write `WHERE true`. Tables listed in `except` are never
 * blocked.
 *
 * @example pgdog.toml
 * ```toml
 * [[plugins]]
 * name = "guard"
 * path = "./plugins/guard/mod.ts"
 * config = { except = ["scratch", "staging.import_rows"] }
 * ```
 *
 * @module
 */

import {
  definePlugin,
  type Plugin,
  type RouteAnswer,
  type RouteContext,
} from "@pgdog/pgdog/plugin";

export type {
  MaybePromise,
  Plugin,
  PluginShardingKey,
  PluginTable,
  Role,
  RouteAnswer,
  RouteContext,
  ShardContext,
} from "@pgdog/pgdog/plugin";

/** The `config` table of the plugin's `[[plugins]]` entry. */
export interface GuardConfig {
  /**
   * Tables that may be changed without a WHERE clause. `"name"` matches the table in any schema;
   * `"schema.name"` matches only when the statement names that schema too. Names are compared
   * exactly, as PostgreSQL stores them: unquoted identifiers in lower case.
   */
  except?: string[];
}

interface Entry {
  schema?: string;
  name: string;
}

interface RangeVar {
  schemaname?: string;
  relname?: string;
}

let except: Entry[] = [];

const MAYBE = /delete|update/i;

function parseEntries(value: unknown, key: string): Entry[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new Error(`guard: config.${key} must be an array of strings`);
  return value.map((item) => {
    if (typeof item !== "string" || item === "") {
      throw new Error(
        `guard: config.${key} must be an array of table names, got ${JSON.stringify(item)}`,
      );
    }
    const dot = item.lastIndexOf(".");
    return dot > 0 ? { schema: item.slice(0, dot), name: item.slice(dot + 1) } : { name: item };
  });
}

function excepted(rv: RangeVar): boolean {
  return except.some((e) =>
    e.name === rv.relname && (e.schema === undefined || e.schema === rv.schemaname)
  );
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** False when an EXPLAIN only plans its statement (no ANALYZE, or ANALYZE turned off). */
function explainRuns(explain: Record<string, unknown>): boolean {
  const options = Array.isArray(explain.options) ? explain.options : [];
  let runs = false;
  for (const option of options) {
    const def = isRecord(option) && isRecord(option.DefElem) ? option.DefElem : null;
    if (def?.defname !== "analyze") continue;
    runs = true;
    const arg = isRecord(def.arg) ? def.arg : null;
    if (arg === null) continue;
    const text = isRecord(arg.String) ? String(arg.String.sval).toLowerCase() : null;
    if (text !== null && ["false", "off", "no", "0"].includes(text)) runs = false;
    if (isRecord(arg.Integer) && !arg.Integer.ival) runs = false;
    if (isRecord(arg.Boolean) && !arg.Boolean.boolval) runs = false;
  }
  return runs;
}

/**
 * The first unguarded DELETE or UPDATE under `root` in document order, or null. The walk uses its
 * own stack: expression trees can be nested deeper than the call stack allows.
 */
function findUnguarded(root: unknown): { kind: string; relation: RangeVar } | null {
  const stack: Array<[string | null, unknown]> = [[null, root]];
  while (stack.length > 0) {
    const [key, node] = stack.pop()!;
    if (Array.isArray(node)) {
      for (let i = node.length - 1; i >= 0; i--) stack.push([null, node[i]]);
      continue;
    }
    if (!isRecord(node)) continue;
    if (key === "RuleStmt" || key === "CreateFunctionStmt") continue;
    if (key === "ExplainStmt" && !explainRuns(node)) continue;
    if (key === "DeleteStmt" || key === "UpdateStmt") {
      const relation = isRecord(node.relation) ? node.relation as RangeVar : {};
      if (node.whereClause == null && !excepted(relation)) {
        return { kind: key === "DeleteStmt" ? "DELETE" : "UPDATE", relation };
      }
    }
    const entries = Object.entries(node);
    for (let i = entries.length - 1; i >= 0; i--) {
      const value = entries[i][1];
      if (typeof value === "object" && value !== null) stack.push(entries[i]);
    }
  }
  return null;
}

function tableName(rv: RangeVar): string {
  const name = rv.relname ?? "?";
  return rv.schemaname ? `${rv.schemaname}.${name}` : name;
}

/**
 * The plugin. `init` reads {@linkcode GuardConfig}; `route` returns `{ block }` for the first
 * DELETE or UPDATE without WHERE and nothing otherwise.
 */
const plugin: Plugin<GuardConfig> = definePlugin<GuardConfig>({
  apiVersion: "1.2.0",
  // Whether a DELETE or UPDATE has a WHERE clause, and on which table, does not depend on the
  // statement's constants or comments: pgdog may keep one answer per shape.
  cacheRoute: "shape",
  init(config: GuardConfig): void {
    except = parseEntries(isRecord(config) ? config.except : undefined, "except");
  },
  route(ctx: RouteContext): RouteAnswer | undefined {
    const stmts = ctx?.statement?.stmts;
    if (!Array.isArray(stmts)) return undefined;
    // Neither statement can be written without its keyword: most queries need no walk at all.
    if (typeof ctx.query === "string" && !MAYBE.test(ctx.query)) return undefined;
    for (let i = 0; i < stmts.length; i++) {
      const found = findUnguarded(stmts[i]);
      if (found === null) continue;
      const where = stmts.length > 1 ? ` (statement ${i + 1} of ${stmts.length})` : "";
      return {
        block: `${found.kind} without WHERE on table "${tableName(found.relation)}"${where} is ` +
          `blocked by the guard plugin; add a WHERE clause (WHERE true to mean every row)`,
      };
    }
    return undefined;
  },
});

export default plugin;
