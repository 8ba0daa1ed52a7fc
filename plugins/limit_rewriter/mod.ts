/**
 * A pgdog plugin that caps unbounded reads of large tables: a `SELECT` on a configured table
 * without a `LIMIT` is rewritten with `LIMIT n` appended, so a forgotten WHERE clause cannot pull
 * millions of rows through the proxy.
 *
 * Only a query made of one plain `SELECT` is rewritten: not `UNION`/`INTERSECT`/`EXCEPT`, not
 * `SELECT ... FOR UPDATE`/`FOR SHARE`, not `SELECT ... INTO`, not a query that already has
 * `LIMIT`, `FETCH FIRST` or `LIMIT ALL` (the way to ask for every row). The table must be named
 * in the statement's own FROM list (joins included), not only in a subquery or a `WITH` query.
 *
 * @example pgdog.toml
 * ```toml
 * [[plugins]]
 * name = "limit_rewriter"
 * path = "./plugins/limit_rewriter/mod.ts"
 * config = { tables = ["events", "audit.log"], limit = 1000 }
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
export interface LimitRewriterConfig {
  /**
   * The tables whose reads are capped. `"name"` matches the table in any schema; `"schema.name"`
   * matches only when the statement names that schema too. Names are compared exactly, as
   * PostgreSQL stores them: unquoted identifiers in lower case.
   */
  tables: string[];
  /** The number of rows to cap at (default 1000). */
  limit?: number;
}

interface Entry {
  schema?: string;
  name: string;
}

type Node = Record<string, unknown>;

let tables: Entry[] = [];
let limit = 1000;

function fail(message: string): never {
  throw new Error(`limit_rewriter: ${message}`);
}

function isNode(value: unknown): value is Node {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function parseConfig(config: unknown): { tables: Entry[]; limit: number } {
  const c = isNode(config) ? config : {};
  if (!Array.isArray(c.tables)) fail("config.tables must be an array of table names");
  const entries = c.tables.map((item: unknown): Entry => {
    if (typeof item !== "string" || item === "") {
      fail(`config.tables must hold table names, got ${JSON.stringify(item)}`);
    }
    const dot = item.lastIndexOf(".");
    return dot > 0 ? { schema: item.slice(0, dot), name: item.slice(dot + 1) } : { name: item };
  });
  const n = c.limit ?? 1000;
  if (!Number.isSafeInteger(n) || (n as number) < 1) {
    fail(`config.limit must be a whole number of rows, 1 or more, got ${JSON.stringify(n)}`);
  }
  return { tables: entries, limit: n as number };
}

/** True when a RangeVar in the FROM list is a configured table (and not a WITH query's name). */
function capped(rv: Node, cteNames: Set<string>): boolean {
  const name = rv.relname;
  const schema = rv.schemaname;
  if (typeof name !== "string") return false;
  if (schema === undefined && cteNames.has(name)) return false;
  return tables.some((e) => e.name === name && (e.schema === undefined || e.schema === schema));
}

/** True when the FROM list, through joins, names a configured table. */
function fromNamesTable(items: unknown, cteNames: Set<string>): boolean {
  if (!Array.isArray(items)) return false;
  const pending: unknown[] = [...items];
  while (pending.length > 0) {
    const item = pending.pop();
    if (!isNode(item)) continue;
    if (isNode(item.RangeVar) && capped(item.RangeVar, cteNames)) return true;
    if (isNode(item.JoinExpr)) pending.push(item.JoinExpr.larg, item.JoinExpr.rarg);
  }
  return false;
}

function cteNamesOf(select: Node): Set<string> {
  const names = new Set<string>();
  const ctes = isNode(select.withClause) ? select.withClause.ctes : undefined;
  if (Array.isArray(ctes)) {
    for (const cte of ctes) {
      const name = isNode(cte) && isNode(cte.CommonTableExpr) ? cte.CommonTableExpr.ctename : null;
      if (typeof name === "string") names.add(name);
    }
  }
  return names;
}

/** The statement's SelectStmt when the query should get a LIMIT, else null. */
function unboundedSelect(ctx: RouteContext): Node | null {
  const stmts = ctx.statement?.stmts;
  if (!Array.isArray(stmts) || stmts.length !== 1) return null;
  const raw = stmts[0];
  const stmt = isNode(raw) && isNode(raw.stmt) ? raw.stmt : null;
  const select = stmt !== null && isNode(stmt.SelectStmt) ? stmt.SelectStmt : null;
  if (select === null) return null;
  if (select.op !== undefined && select.op !== "SETOP_NONE") return null;
  if (select.limitCount !== undefined || select.lockingClause !== undefined) return null;
  if (select.intoClause !== undefined || select.valuesLists !== undefined) return null;
  return fromNamesTable(select.fromClause, cteNamesOf(select)) ? select : null;
}

/**
 * Where the statement's text ends in `sql`: after its last token other than `;`. Also returns
 * the comments that follow that point, which are kept after the LIMIT. Strings, quoted
 * identifiers, dollar quotes and comments are skipped as whole tokens.
 */
function statementEnd(
  sql: string,
): { end: number; comments: Array<{ text: string; line: boolean }> } {
  const n = sql.length;
  let end = 0;
  let comments: Array<{ text: string; line: boolean }> = [];
  let i = 0;
  while (i < n) {
    const c = sql[i];
    const start = i;
    if (c === " " || c === "\t" || c === "\n" || c === "\r" || c === "\f" || c === "\v") {
      i++;
      continue;
    }
    if (c === "-" && sql[i + 1] === "-") {
      const nl = sql.indexOf("\n", i);
      i = nl < 0 ? n : nl;
      comments.push({ text: sql.slice(start, i).trimEnd(), line: true });
      continue;
    }
    if (c === "/" && sql[i + 1] === "*") {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (sql[i] === "/" && sql[i + 1] === "*") {
          depth++;
          i += 2;
        } else if (sql[i] === "*" && sql[i + 1] === "/") {
          depth--;
          i += 2;
        } else i++;
      }
      comments.push({ text: sql.slice(start, i), line: false });
      continue;
    }
    if (c === ";") {
      i++;
      continue;
    }
    if (c === "'" || c === '"') {
      const escapes = c === "'" && i > 0 && (sql[i - 1] === "E" || sql[i - 1] === "e") &&
        (i < 2 || !/[A-Za-z0-9_$]/.test(sql[i - 2]));
      i++;
      while (i < n) {
        if (escapes && sql[i] === "\\") i += 2;
        else if (sql[i] === c) {
          if (sql[i + 1] === c) i += 2;
          else break;
        } else i++;
      }
      i = Math.min(i + 1, n);
    } else if (c === "$" && (i === 0 || !/[A-Za-z0-9_$]/.test(sql[i - 1]))) {
      const tag = /^\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/.exec(
        sql.slice(i, i + 64),
      );
      if (tag === null) i++;
      else {
        const close = sql.indexOf(tag[0], i + tag[0].length);
        i = close < 0 ? n : close + tag[0].length;
      }
    } else {
      i++;
    }
    end = i;
    comments = [];
  }
  return { end, comments };
}

/**
 * The plugin. `init` reads {@linkcode LimitRewriterConfig}; `route` answers
 * `{ rewrite: "<the query> LIMIT n" }` for an unbounded SELECT on a configured table, and nothing
 * otherwise.
 */
const plugin: Plugin<LimitRewriterConfig> = definePlugin<LimitRewriterConfig>({
  apiVersion: "1.0.0",
  init(config: LimitRewriterConfig): void {
    ({ tables, limit } = parseConfig(config));
  },
  route(ctx: RouteContext): RouteAnswer | undefined {
    if (tables.length === 0 || typeof ctx?.query !== "string") return undefined;
    // pgdog does not merge LIMIT across shards; leave statements sent to every shard alone.
    if (ctx.decision?.shard === "all" && (ctx.cluster?.shards ?? 1) > 1) return undefined;
    if (unboundedSelect(ctx) === null) return undefined;
    const { end, comments } = statementEnd(ctx.query);
    if (end === 0) return undefined;
    let tail = "";
    for (const comment of comments) {
      // A line comment ends at a line break; keep one after it so nothing else is commented out.
      tail += ` ${comment.text}${comment.line ? "\n" : ""}`;
    }
    return { rewrite: `${ctx.query.slice(0, end)} LIMIT ${limit}${tail}`.trimEnd() };
  },
});

export default plugin;
