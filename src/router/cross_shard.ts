/**
 * The cross-shard rule, in one place. A statement runs where pgdog can prove that the answer of
 * the shards it goes to is the answer of one database holding every row; everything else over
 * sharded tables is refused with SQLSTATE 0A000, saying what is unsupported and what to do.
 *
 * A statement is proven correct in one of these ways:
 *
 * - **One shard.** Every occurrence of a sharded table anywhere in the statement (FROM, joins,
 *   subqueries, CTEs, set operations, the table written) is *confined* to that shard: a condition
 *   that filters its rows compares its sharding key with constants of that shard (`=`, `IN (...)`,
 *   `IS NOT DISTINCT FROM`, the values of an INSERT), or equals the key of an occurrence that is
 *   confined (a join or a correlation on the keys, or `key IN (SELECT key ...)`), with the same
 *   sharding function. A condition filters an occurrence when it is a top-level `AND` term of the
 *   WHERE clause, of the ON clause of an inner join, or of the ON clause of an outer join on the
 *   side whose rows it can drop. The shard then holds every row that can matter, so anything
 *   (aggregates, ORDER BY, LIMIT, window functions, CTEs, writes) is answered exactly.
 * - **Several shards, answers concatenated.** Nothing needs merging: the statement is a plain
 *   SELECT (no aggregate, GROUP BY, HAVING, DISTINCT, ORDER BY, LIMIT/OFFSET or window function,
 *   except groups on a sharding key of its rows and windows partitioned by one, which are whole on
 *   one shard; or UNION ALL of such parts), an UPDATE or DELETE, or COPY / CREATE TABLE AS of such
 *   a query;
 *   the sharded tables that make its rows are joined on their keys (directly or through plain
 *   subqueries in FROM and CTEs), so each row is made on one shard; a table copied on every shard
 *   never sits on the kept side of an outer join against sharded rows; and every other occurrence
 *   (a subquery in the select list or WHERE clause, a LATERAL subquery, a CTE that aggregates) is
 *   confined to the shard of the row it belongs to, by a correlation on the keys. It runs on every
 *   shard, or only on the shards the keys select. There must be no data-modifying CTE.
 * - **Several shards, answers merged** (when the caller runs merge plans, `ShardingConfig.merge`).
 *   A SELECT whose outer query needs merging (ORDER BY, LIMIT/OFFSET, aggregates, GROUP BY,
 *   HAVING, DISTINCT [ON], UNION, INTERSECT, EXCEPT) is proven as above with the outer query's
 *   own ORDER BY, aggregates... set aside: its rows are made on one shard each and every part
 *   inside it (subqueries, CTEs, the parts of a set operation) is exact on each shard. The
 *   decision then carries the {@linkcode MergePlan} (`merge_plan.ts`) that merges the shards'
 *   answers, or the statement is refused with the reason it can't be merged. A part of a set
 *   operation whose rows no sharded table makes (omnisharded tables, no table) is the same on
 *   every shard: the plan counts its rows once. Groups and window
 *   partitions on a sharding key of the rows are whole on one shard: the shards compute them.
 * - **No sharded table.** Tables copied on every shard (omnisharded) and parts without tables are
 *   the same everywhere: a read goes to any one shard; a write goes to every shard and answers
 *   once, provided it reads no sharded table (each shard would write different rows).
 *
 * DDL and other utility statements run on every shard. The rule can't see inside functions,
 * procedures, views or triggers: they count as what they look like from the outside.
 *
 * @module
 */

import type { Node, TableRef } from "./analyze.ts";
import { walkTree } from "./tree.ts";
import { isAggregateFunction, mayBeUserAggregate } from "./aggregates.ts";
import { planMerge, windowsOnKey } from "./merge_plan.ts";
import { planSplitInsert } from "./split_insert.ts";
import { planKeyUpdate } from "./key_update.ts";
import type { MergePlan } from "../cross_shard/plan.ts";
import {
  describe,
  isOmni,
  isSharded,
  type RangeTable,
  type ShardDecision,
  type ShardedTable,
  type ShardingConfig,
  type ShardTarget,
  tableOf,
  tableSpec,
  type ValueContext,
  valueOf,
  valueShard,
} from "./shard_keys.ts";

/** What routing one statement needs besides the statement. */
export interface RouteContext {
  config: ShardingConfig;
  values: ValueContext;
}

/**
 * Queries (and subqueries, and CTEs once per reference) analyzed in one statement at most; it
 * also bounds how deeply the analysis recurses (a CTE chain needs no parentheses of its own).
 */
const MAX_QUERIES = 500;

/** What to do about a refused shape, when adding the key is the way out. */
const ADVICE = "add the sharding key to the WHERE clause (or route with /* pgdog_shard: N */)";

/**
 * Decides where one statement goes (see the module documentation). With `everyShard`, only a
 * proof that running it on every shard (answers concatenated) is correct will do: for a request
 * whose statements go everywhere together.
 */
export function routeStatement(
  stmt: Node,
  ctx: RouteContext,
  options: ProveOptions = {},
): ShardDecision {
  // EXPLAIN runs (or plans) its statement where the statement would run.
  let node = stmt;
  while (node.ExplainStmt) node = (node.ExplainStmt as { query: Node }).query;
  const type = Object.keys(node)[0];
  const body = node[type] as Node;
  switch (type) {
    case "SelectStmt":
      if (body.intoClause) return createAs(node, ctx, "SELECT INTO");
      return prove(node, ctx, options);
    case "UpdateStmt": {
      const mode = ctx.config.shardKey ?? "error";
      const key = mode === "error" ? null : keyAssignment(body, ctx.config);
      if (key === null) return prove(node, ctx, options);
      // Where the row is: the UPDATE without its new key, decided by its WHERE.
      const targetList = (body.targetList as Node[]).filter((_, i) => i !== key.at);
      const d = prove({ UpdateStmt: { ...body, targetList } }, ctx, options);
      // (EXPLAIN of it plans the UPDATE where the row is.)
      if (mode === "ignore" || d.unsupported || node !== stmt) return d;
      return moveDecision(node, { ctx, decision: d, key });
    }
    case "InsertStmt":
    case "DeleteStmt":
      return prove(node, ctx, options);
    case "MergeStmt":
      return merge(body, ctx);
    case "CopyStmt":
      return copy(body, ctx, options);
    case "CreateTableAsStmt": {
      const what = (body.into as { skipData?: boolean } | undefined)?.skipData
        ? null
        : body.objtype === "OBJECT_MATVIEW"
        ? "CREATE MATERIALIZED VIEW"
        : "CREATE TABLE AS";
      if (what === null) return allShards("CreateTableAs WITH NO DATA runs on every shard");
      return createAs(body.query as Node, ctx, what);
    }
    case "DeclareCursorStmt": {
      const d = prove((body as { query: Node }).query, ctx, {});
      if (d.unsupported || d.target.kind === "one" || d.target.kind === "any") return d;
      return refuse(
        "a cursor over rows of several shards is not supported yet: " + ADVICE,
      );
    }
    case "ExecuteStmt":
      return refuse(
        "EXECUTE of a statement prepared with SQL PREPARE is not supported on a sharded " +
          "database (pgdog can't see its query): use your driver's prepared statements (or " +
          "route with /* pgdog_shard: N */)",
      );
    case "FetchStmt":
    case "ClosePortalStmt":
      return {
        target: { kind: "any" },
        reason: "a cursor: the shard the transaction holds",
        omniWrite: false,
      };
    case "VariableShowStmt":
      // Every server of the session has the same settings: one answers, as one server would.
      return {
        target: { kind: "any" },
        reason: "SHOW: the settings are the same on every shard; one in use answers",
        omniWrite: false,
      };
    case "TransactionStmt":
    case "VariableSetStmt":
      return {
        target: { kind: "all" },
        reason: "session and transaction control go to every shard in use",
        omniWrite: false,
      };
    default:
      // DDL and everything else runs on every shard.
      return allShards(`${type.replace(/Stmt$/, "")} runs on every shard`);
  }
}

/** How a statement is proven. */
export interface ProveOptions {
  /** Only running it on every shard, answers concatenated, will do. */
  everyShard?: boolean;
  /** No merge plan: the answers are sent on as they come (COPY). */
  noMerge?: boolean;
}

/**
 * A multi-row INSERT whose rows belong to several shards, as `[rewrite] split_inserts` says:
 * split by shard ("rewrite"), sent as written to its first row's shard ("ignore"), or null
 * (refused by the caller). `alone`: the INSERT is the statement, nothing else reads or writes a
 * sharded table in it.
 */
function splitInsertDecision(
  node: Node,
  options: {
    ctx: RouteContext;
    insert: { table: string; column: string };
    rowShards: (number | null)[];
    alone: boolean;
  },
): ShardDecision | null {
  const { ctx, insert, alone } = options;
  const mode = ctx.config.splitInserts ?? "error";
  if (mode === "error") return null;
  const first = options.rowShards.find((n) => n !== null)!;
  if (mode === "ignore") {
    return {
      target: { kind: "one", shard: first },
      reason: `multi-row INSERT ${insert.table}: its first row's shard (split_inserts = "ignore")`,
      omniWrite: false,
    };
  }
  if (!alone || node.InsertStmt === undefined) {
    return refuse(
      `a multi-row INSERT into ${insert.table} whose rows belong to different shards can be ` +
        "split only as a statement of its own (not inside a CTE or with other sharded tables)",
    );
  }
  // Rows whose key a column default makes go to one shard, with the first row's.
  const rowShards = options.rowShards.map((n) => n ?? first);
  const plan = planSplitInsert(node, { rowShards, values: ctx.values, table: insert.table });
  if ("refused" in plan) return refuse(plan.refused);
  const shards = plan.statements.map((st) => st.shard);
  return {
    target: { kind: "some", shards },
    reason: `multi-row INSERT ${insert.table}.${insert.column}: split into shards ${
      shards.join(",")
    }`,
    omniWrite: false,
    splitInsert: plan,
  };
}

/** The SET item of an UPDATE of a sharded table that assigns its sharding key, or null. */
function keyAssignment(
  body: Node,
  config: ShardingConfig,
): { at: number; column: string; val: Node; spec: ShardedTable; table: string } | null {
  const t = tableOf(body.relation as Node);
  if (!isSharded(t, config)) return null;
  const spec = tableSpec(t, config);
  if (spec === undefined) return null;
  const targets = (body.targetList as Node[] | undefined) ?? [];
  for (let at = 0; at < targets.length; at++) {
    const r = targets[at].ResTarget as { name?: string; val?: Node };
    if (r.name === spec.column && r.val !== undefined) {
      return { at, column: spec.column, val: r.val, spec, table: describe(t) };
    }
  }
  return null;
}

/**
 * An UPDATE that changes a row's sharding key, `shard_key = "rewrite"`: where its WHERE confines
 * it to one shard and the new key maps there too, the plain UPDATE (`decision`); to another
 * shard, the row moves (see key_update.ts); otherwise refused.
 */
function moveDecision(
  node: Node,
  options: {
    ctx: RouteContext;
    decision: ShardDecision;
    key: { column: string; val: Node; spec: ShardedTable; table: string };
  },
): ShardDecision {
  const { ctx, decision, key } = options;
  const what = `an UPDATE of sharding key ${key.column} of ${key.table}`;
  if (decision.target.kind !== "one") {
    return refuse(
      `${what} must find its row on one shard: give the WHERE clause the row's current key ` +
        `(WHERE ${key.column} = ...)`,
    );
  }
  const value = valueOf(key.val, ctx.values);
  const to = value === null
    ? null
    : valueShard(value, key.spec, { shards: ctx.config.shards, lookup: ctx.values.lookup });
  if (to === null) {
    return refuse(`${what}: the new value of ${key.column} must be a constant or a parameter`);
  }
  const from = decision.target.shard;
  if (to === from) return decision;
  const plan = planKeyUpdate(node, {
    from,
    to,
    column: key.column,
    values: ctx.values,
    table: key.table,
  });
  if ("refused" in plan) return refuse(plan.refused);
  return {
    target: { kind: "some", shards: from < to ? [from, to] : [to, from] },
    reason: `UPDATE of ${key.table}.${key.column}: the row moves from shard ${from} to shard ${to}`,
    omniWrite: false,
    keyUpdate: plan,
  };
}

function allShards(reason: string): ShardDecision {
  return { target: { kind: "all" }, reason, omniWrite: false, concatenates: true };
}

function refuse(message: string): ShardDecision {
  return { target: { kind: "all" }, reason: message, omniWrite: false, unsupported: message };
}

// ---- the statement's structure ---------------------------------------------------------------

/** One occurrence of a sharded table in a statement. */
interface Occurrence {
  /** How the statement names it (its alias, else the table). */
  label: string;
  table: string;
  /** Its sharding-key columns and their sharding functions. */
  keys: Map<string, ShardedTable>;
  /** Where it is, for messages: "the statement", "a subquery", "WITH t", ... */
  place: string;
  /** The query it is in, and why that query's rows couldn't be concatenated (if so). */
  query: Query;
  /** Proof state: shards holding every row that can matter (null: any shard), ... */
  shards: Set<number> | null;
  /** ... and whether those rows are on the shard of the row they belong to. */
  onRowShard: boolean;
  /** Union-find parent, for the groups of occurrences joined on their keys. */
  parent: Occurrence;
}

/** A write's RETURNING expressions (PostgreSQL 18 parses them as returningClause). */
function returningOf(body: Node): unknown {
  return (body.returningClause as { exprs?: Node[] } | undefined)?.exprs ?? body.returningList;
}

/** A column that is the sharding key of an occurrence. */
interface KeyRef {
  occ: Occurrence;
  column: string;
}

/** A relation in a query's FROM clause (or the table an UPDATE or DELETE writes). */
interface Rel {
  /** The name that qualifies its columns. */
  name: string | null;
  /** Its columns that are sharding keys. */
  keys: Map<string, KeyRef>;
  /** Occurrences whose rows make its rows, each with whether it may be null-extended there. */
  members: Array<[Occurrence, boolean]>;
  /** Key equalities inside it that put its members' rows on one shard. */
  connections: Array<[Occurrence, Occurrence]>;
  /** An outer join inside it that would repeat rows on every shard. */
  issue: string | null;
  /** May be null-extended (the nullable side of an outer join). */
  nullable: boolean;
}

/** A query: a SELECT (or set operation), or the query part of an INSERT, UPDATE or DELETE. */
interface Query {
  /** Where outer column references resolve next (null: nowhere). */
  outer: Query | null;
  /** Where CTE names resolve next. */
  cteParent: Query | null;
  ctes: Map<string, Cte>;
  rels: Rel[];
  place: string;
  /** Why its rows can't be concatenated across shards (ORDER BY, an aggregate, ...). */
  issue: string | null;
  /** An outer join that would repeat rows on every shard. */
  joinIssue: string | null;
  connections: Array<[Occurrence, Occurrence]>;
  /** Column names merged by JOIN ... USING: unqualified references to them aren't resolved. */
  merged: Set<string>;
  /** A NATURAL join: no unqualified reference is resolved. */
  natural: boolean;
  /** A simple SELECT's target list (for the keys it exposes), else null. */
  targets: Node[] | null;
  /** The parts of a UNION ALL, else null. */
  arms: Query[] | null;
  /** The CTE whose query this is, if it is one. */
  cteBody: Cte | null;
  /** A subquery in it aggregates its rows (`(SELECT max(outer.x))`). */
  outerAggregate: boolean;
  /** Its issue is groups or window partitions on a sharding key: exact on each shard. */
  exact: boolean;
}

/** A CTE definition. */
interface Cte {
  name: string;
  query: Node;
  /** Its position in its WITH clause (without RECURSIVE, a CTE sees only those before it). */
  index: number;
  recursive: boolean;
  /** The query whose WITH defines it. */
  home: Query;
  colnames: string[] | null;
  instantiating: boolean;
  /** A data-modifying CTE runs once, wherever it is referenced (its rows are opaque). */
  dataModifying: boolean;
}

interface QueryOptions {
  outer: Query | null;
  cteParent: Query | null;
  place: string;
  /** The CTE whose query this is. */
  cteBody?: Cte;
}

const JOIN_LEFT = "JOIN_LEFT";
const JOIN_RIGHT = "JOIN_RIGHT";
const JOIN_FULL = "JOIN_FULL";

/**
 * A key compared with values (`=`, `IN`, `IS NOT DISTINCT FROM`) in a condition that filters its
 * occurrence: the values' shards hold every row of it that matters. The values (constants or
 * parameters) are read for each execution.
 */
interface Pin {
  occ: Occurrence;
  spec: ShardedTable;
  values: Node[];
  label: string;
  /** Shards of the values, once read (null: they don't narrow anything down). */
  shards: Set<number> | null;
}

/** A DEFAULT in an INSERT's row. */
const DEFAULT_VALUE: Node = { SetToDefault: {} };

/** The rows of an INSERT into a sharded table, whose key values say its shard. */
interface InsertRows {
  occ: Occurrence;
  spec: ShardedTable;
  column: string;
  table: string;
  /** The key's value in each row. */
  values: Node[];
}

/**
 * The rows of an INSERT without a column list: the key's position is in the table's definition,
 * which the catalog gives when the statement runs (a lookup, see ShardLookup.columns).
 */
interface UnlistedInsert {
  occ: Occurrence;
  table: RangeTable;
  rows: Node[][];
}

/**
 * A statement's occurrences and the facts about them, gathered in one pass over its parse tree.
 * They don't depend on the values of constants and parameters: kept with the parse tree.
 */
class Statement {
  readonly occurrences: Occurrence[] = [];
  /** `[to, from]`: the rows of `to` that matter have the key of a row of `from` that matters. */
  readonly edges: Array<[Occurrence, Occurrence]> = [];
  readonly pins: Pin[] = [];
  readonly inserts: InsertRows[] = [];
  readonly unlisted: UnlistedInsert[] = [];
  /** The statement's own query. */
  top: Query | null = null;
  /** Omnisharded tables written. */
  readonly omniWrites: string[] = [];
  /** The first data-modifying CTE, described. */
  dataModifying: string | null = null;
  /** A shape refused wherever it would run. */
  refusal: string | null = null;
  /** Tables INSERTs without their key write: any one shard will do for them. */
  readonly free: Occurrence[] = [];
  /**
   * A function call met may be one of the database's own aggregates, which `userAggregates`
   * doesn't say (unknown): counted as a plain function.
   */
  unknownFunctions = false;
  #queries = 0;

  constructor(
    readonly config: ShardingConfig,
    /** The database's own aggregates and window functions (undefined: not known). */
    readonly userAggregates: ReadonlySet<string> | undefined,
  ) {}

  #newQuery(options: QueryOptions): Query {
    if (++this.#queries > MAX_QUERIES) throw new TooComplex();
    return {
      outer: options.outer,
      cteParent: options.cteParent,
      ctes: new Map(),
      rels: [],
      place: options.place,
      issue: null,
      joinIssue: null,
      connections: [],
      merged: new Set(),
      natural: false,
      targets: null,
      arms: null,
      cteBody: options.cteBody ?? null,
      outerAggregate: false,
      exact: false,
    };
  }

  #occurrence(t: RangeTable, query: Query): Occurrence | null {
    const { config } = this;
    if (!isSharded(t, config)) return null;
    const keys = new Map<string, ShardedTable>();
    const named = config.tables.filter((s) =>
      s.name !== undefined && s.name === t.name && (!s.schema || !t.schema || s.schema === t.schema)
    );
    for (const s of named.length > 0 ? named : config.tables.filter((s) => s.name === undefined)) {
      if (!keys.has(s.column)) keys.set(s.column, s);
    }
    const occ = {
      label: t.alias ?? t.name,
      table: describe(t),
      keys,
      place: query.place,
      query,
      shards: null,
      onRowShard: false,
    } as Omit<Occurrence, "parent"> as Occurrence;
    occ.parent = occ;
    this.occurrences.push(occ);
    return occ;
  }

  /** A SELECT (or set operation), or an INSERT, UPDATE or DELETE. */
  query(node: Node, options: QueryOptions): Query {
    const type = Object.keys(node)[0];
    const body = node[type] as Node;
    if (type === "SelectStmt") {
      const op = body.op as string | undefined;
      return op && op !== "SETOP_NONE"
        ? this.#setOperation(body, options)
        : this.#select(body, options);
    }
    if (type === "InsertStmt" || type === "UpdateStmt" || type === "DeleteStmt") {
      return this.write(type, body, options);
    }
    const q = this.#newQuery(options);
    this.refusal ??= `${type.replace(/Stmt$/, "")} inside a query is not supported on a sharded ` +
      "database: route it with /* pgdog_shard: N */";
    return q;
  }

  #select(body: Node, options: QueryOptions): Query {
    const q = this.#newQuery(options);
    this.#with(body.withClause, q);
    const joins = this.#from(body.fromClause, q);
    const inEdges = new Map<Node, KeyRef>();
    this.#conditions(q, { where: body.whereClause as Node | undefined, joins, inEdges });
    const found = this.#expressions(q, [
      body.targetList,
      body.fromClause,
      body.whereClause,
      body.groupClause,
      body.havingClause,
      body.windowClause,
      body.sortClause,
      body.distinctClause,
      body.limitCount,
      body.limitOffset,
      body.valuesLists,
    ], inEdges);
    q.targets = (body.targetList as Node[] | undefined) ?? [];
    q.issue = nonEmpty(body.sortClause)
      ? "ORDER BY"
      : body.limitCount || body.limitOffset
      ? "LIMIT/OFFSET"
      : nonEmpty(body.groupClause)
      ? "GROUP BY"
      : body.havingClause
      ? "HAVING"
      : Array.isArray(body.distinctClause)
      ? "DISTINCT"
      : found.window || nonEmpty(body.windowClause)
      ? "a window function"
      : found.aggregate || q.outerAggregate
      ? "an aggregate"
      : null;
    q.exact = q.issue !== null && this.#wholeOnShards(body, q, found);
    return q;
  }

  /**
   * Groups on a sharding key of the rows, and window partitions on one, are whole on one shard:
   * a query whose only issue is those answers exactly on each shard.
   */
  #wholeOnShards(body: Node, q: Query, found: { aggregate: boolean; window: boolean }): boolean {
    if (
      nonEmpty(body.sortClause) || body.limitCount || body.limitOffset ||
      Array.isArray(body.distinctClause) || q.outerAggregate
    ) return false;
    const isKey = (node: Node): boolean => this.isRowKey(node, q);
    const groups = (body.groupClause as Node[] | undefined) ?? [];
    const grouped = groups.length > 0 || body.havingClause !== undefined || found.aggregate;
    if (grouped && !groups.some((g) => groupItemIsKey(g, body, isKey))) return false;
    if (found.window || nonEmpty(body.windowClause)) return windowsOnKey(body, isKey);
    return true;
  }

  /** UNION, INTERSECT, EXCEPT: the parts are queries of their own, side by side. */
  #setOperation(body: Node, options: QueryOptions): Query {
    const q = this.#newQuery(options);
    this.#with(body.withClause, q);
    let issue: string | null = nonEmpty(body.sortClause)
      ? "ORDER BY"
      : body.limitCount || body.limitOffset
      ? "LIMIT/OFFSET"
      : null;
    const arms: Query[] = [];
    const armOptions: QueryOptions = { outer: options.outer, cteParent: q, place: options.place };
    // Flatten the tree of operations (a long UNION chain nests deeply) without recursion.
    const stack: Node[] = [body];
    while (stack.length > 0) {
      const s = stack.pop()!;
      const op = s.op as string | undefined;
      const plainArm = !op || op === "SETOP_NONE";
      const nested = s !== body &&
        (nonEmpty(s.sortClause) || s.limitCount || s.limitOffset || s.withClause);
      if (plainArm || nested) {
        const arm = plainArm ? this.#select(s, armOptions) : this.#setOperation(s, armOptions);
        arms.push(arm);
        continue;
      }
      if (!(op === "SETOP_UNION" && s.all)) {
        issue ??= op === "SETOP_UNION"
          ? "UNION"
          : op === "SETOP_INTERSECT"
          ? "INTERSECT"
          : "EXCEPT";
      }
      // The parts are SelectStmt bodies, without the node wrapper.
      stack.push(s.rarg as Node);
      stack.push(s.larg as Node);
    }
    q.arms = arms;
    q.issue = issue;
    return q;
  }

  /** INSERT, UPDATE or DELETE (also as a data-modifying CTE). */
  write(type: string, body: Node, options: QueryOptions): Query {
    const q = this.#newQuery(options);
    this.#with(body.withClause, q);
    const t = tableOf(body.relation as Node);
    const omni = !isSharded(t, this.config);
    if (omni) this.omniWrites.push(describe(t));
    const occ = omni ? null : this.#occurrence(t, q);
    q.rels.push(occ ? tableRel(occ, t) : otherRel(t.alias ?? t.name));
    const inEdges = new Map<Node, KeyRef>();
    if (type === "InsertStmt") {
      if (occ) this.#insertKey(body, occ, t);
      const select = (body.selectStmt as { SelectStmt?: Node } | undefined)?.SelectStmt;
      q.rels.push(otherRel("excluded"));
      if (select && !select.valuesLists) {
        if (occ) {
          this.refusal ??= this.config.splitInserts === "rewrite"
            // Run by pgdog (src/frontend/insert_select_run.ts) when sent as a simple query.
            ? `INSERT ... SELECT into sharded table ${describe(t)} is run by pgdog only as a ` +
              "request of its own: a simple query, or one execution (Parse, Bind, Execute) " +
              "ending with Sync"
            : `INSERT ... SELECT into sharded table ${describe(t)} needs [rewrite] enabled = ` +
              'true and split_inserts = "rewrite" (pgdog then runs the SELECT and sends each ' +
              "row to its shard)";
        }
        this.query({ SelectStmt: select }, { outer: q.outer, cteParent: q, place: "a subquery" });
      }
      this.#expressions(
        q,
        [select?.valuesLists, body.onConflictClause, returningOf(body)],
        inEdges,
      );
      return q;
    }
    const joins = this.#from(type === "UpdateStmt" ? body.fromClause : body.usingClause, q);
    if (occ && type === "UpdateStmt") {
      for (const c of (body.targetList as Node[] | undefined) ?? []) {
        const name = (c.ResTarget as { name?: string }).name;
        if (name !== undefined && occ.keys.has(name)) {
          this.refusal ??= `changing sharding key ${name} with UPDATE is not supported: the row ` +
            "would belong to another shard (delete it and insert it again, or let pgdog move it " +
            'with [rewrite] enabled = true and shard_key = "rewrite")';
        }
      }
    }
    this.#conditions(q, { where: body.whereClause as Node | undefined, joins, inEdges });
    this.#expressions(q, [
      body.targetList,
      type === "UpdateStmt" ? body.fromClause : body.usingClause,
      body.whereClause,
      returningOf(body),
    ], inEdges);
    return q;
  }

  /** The shard of an INSERT's rows (a pin on the table written), or a refusal. */
  #insertKey(body: Node, occ: Occurrence, t: RangeTable): void {
    const cols = ((body.cols as Node[] | undefined) ?? []).map((c) =>
      (c.ResTarget as { name: string }).name
    );
    const select = (body.selectStmt as { SelectStmt?: Node } | undefined)?.SelectStmt;
    const rows = select?.valuesLists as Node[] | undefined;
    let column: string | null = null;
    for (const c of cols) if (occ.keys.has(c)) column ??= c;
    const conflict = body.onConflictClause as { targetList?: Node[] } | undefined;
    for (const c of conflict?.targetList ?? []) {
      const name = (c.ResTarget as { name?: string }).name;
      if (name !== undefined && occ.keys.has(name)) {
        this.refusal ??= `changing sharding key ${name} with ON CONFLICT DO UPDATE is not ` +
          "supported: the row would belong to another shard";
      }
    }
    if (!select) {
      // DEFAULT VALUES: a column default makes the key; any one shard keeps the row once.
      this.free.push(occ);
      return;
    }
    if (!rows) return; // INSERT ... SELECT, refused
    if (cols.length === 0) {
      // The key's position is in the table's definition: looked up when the statement runs.
      this.unlisted.push({
        occ,
        table: t,
        rows: rows.map((row) => (row.List as { items: Node[] }).items),
      });
      return;
    }
    if (column === null) {
      // No key given (a column default will make one): any one shard keeps the row once.
      this.free.push(occ);
      return;
    }
    const at = cols.indexOf(column);
    this.inserts.push({
      occ,
      spec: occ.keys.get(column)!,
      column,
      table: describe(t),
      values: rows.map((row) => (row.List as { items: Node[] }).items[at]),
    });
  }

  #with(clause: unknown, q: Query): void {
    const w = clause as { ctes?: Node[]; recursive?: boolean } | undefined;
    const ctes = (w?.ctes ?? []).map((item, index): Cte => {
      const c = item.CommonTableExpr as {
        ctename: string;
        ctequery: Node;
        aliascolnames?: Node[];
      };
      const cte: Cte = {
        name: c.ctename,
        query: c.ctequery,
        index,
        recursive: w!.recursive === true,
        home: q,
        colnames: c.aliascolnames ? c.aliascolnames.map(stringOf) : null,
        instantiating: false,
        dataModifying: false,
      };
      q.ctes.set(c.ctename, cte);
      return cte;
    });
    for (const cte of ctes) {
      const type = Object.keys(cte.query)[0];
      if (type === "InsertStmt" || type === "UpdateStmt" || type === "DeleteStmt") {
        // It runs once, referenced or not.
        cte.dataModifying = true;
        const verb = type.slice(0, -4).toUpperCase();
        const target = tableOf((cte.query[type] as Node).relation as Node);
        this.dataModifying ??= `a data-modifying WITH (${cte.name}: ${verb} ${describe(target)})`;
        this.write(type, cte.query[type] as Node, {
          outer: q.outer,
          cteParent: q,
          place: `WITH ${cte.name}`,
          cteBody: cte,
        });
      } else if (type === "MergeStmt") {
        this.refusal ??= "MERGE in a WITH clause is not supported on a sharded database: route " +
          "it with /* pgdog_shard: N */";
        cte.dataModifying = true;
      }
    }
  }

  /**
   * The relations of a FROM clause, in order (a LATERAL subquery sees those before it), and its
   * joins, walked without recursion.
   */
  #from(from: unknown, q: Query): Join[] {
    const joins: Join[] = [];
    const aliases: Rel[] = [];
    type Step = { node: Node; nullable: boolean } | { join: Join; at: "middle" | "end" };
    const stack: Step[] = [];
    const items = Array.isArray(from) ? from as Node[] : [];
    for (let i = items.length - 1; i >= 0; i--) stack.push({ node: items[i], nullable: false });
    while (stack.length > 0) {
      const step = stack.pop()!;
      if ("join" in step) {
        if (step.at === "middle") step.join.middle = q.rels.length;
        else {
          step.join.end = q.rels.length;
          joins.push(step.join);
        }
        continue;
      }
      const j = step.node.JoinExpr as Node | undefined;
      if (!j) {
        q.rels.push(this.#rel(step.node, q, step.nullable));
        continue;
      }
      const type = j.jointype as string;
      const join: Join = {
        type,
        quals: j.quals as Node | undefined,
        using: ((j.usingClause as Node[] | undefined) ?? []).map(stringOf),
        start: q.rels.length,
        middle: 0,
        end: 0,
      };
      if (j.isNatural) q.natural = true;
      for (const c of join.using) q.merged.add(c);
      const alias = (j.alias as { aliasname?: string } | undefined)?.aliasname;
      if (alias) aliases.push(otherRel(alias));
      stack.push({ join, at: "end" });
      stack.push({
        node: j.rarg as Node,
        nullable: step.nullable || type === JOIN_LEFT || type === JOIN_FULL,
      });
      stack.push({ join, at: "middle" });
      stack.push({
        node: j.larg as Node,
        nullable: step.nullable || type === JOIN_RIGHT || type === JOIN_FULL,
      });
    }
    q.rels.push(...aliases);
    // An outer join keeps the rows of one side: they must not be rows every shard has.
    for (const join of joins) {
      const left = q.rels.slice(join.start, join.middle);
      const right = q.rels.slice(join.middle, join.end);
      const rowsOf = (rels: Rel[]): boolean => rels.some((r) => r.members.length > 0);
      const kept = join.type === JOIN_LEFT
        ? [[left, right]]
        : join.type === JOIN_RIGHT
        ? [[right, left]]
        : join.type === JOIN_FULL
        ? [[left, right], [right, left]]
        : [];
      for (const [keep, other] of kept) {
        if (!rowsOf(keep) && rowsOf(other)) {
          const names = keep.map((r) => r.name ?? "?").join(", ");
          const kind = join.type.slice(5);
          q.joinIssue ??= `a ${kind} JOIN that keeps every row of ${names} (not sharded)`;
        }
      }
    }
    return joins;
  }

  /** One relation of a FROM clause. */
  #rel(node: Node, q: Query, nullable: boolean): Rel {
    const sample = node.RangeTableSample as { relation?: Node } | undefined;
    if (sample?.relation) node = sample.relation;
    if (node.RangeVar) {
      const rv = node.RangeVar as Node;
      const t = tableOf(rv);
      const cte = rv.schemaname === undefined ? this.#cte(t.name, q) : null;
      if (cte) return { ...this.#cteRel(cte, t), nullable };
      const occ = this.#occurrence(t, q);
      return { ...(occ ? tableRel(occ, t) : otherRel(t.alias ?? t.name)), nullable };
    }
    if (node.RangeSubselect) {
      const sub = node.RangeSubselect as { lateral?: boolean; subquery: Node; alias?: Node };
      const alias = sub.alias as { aliasname?: string; colnames?: Node[] } | undefined;
      const name = alias?.aliasname ?? null;
      const inner = this.query(sub.subquery, {
        outer: sub.lateral ? q : q.outer,
        cteParent: q,
        place: sub.lateral
          ? "a LATERAL subquery"
          : name
          ? `subquery ${name} in FROM`
          : "a subquery in FROM",
      });
      // A LATERAL subquery's rows depend on the row it joins: it is proven like a subquery.
      const rel = derivedRel(inner, {
        name,
        colnames: alias?.colnames ? alias.colnames.map(stringOf) : null,
        rowsOfItsOwn: !sub.lateral,
      });
      return { ...rel, nullable };
    }
    const alias = (Object.values(node)[0] as { alias?: { aliasname?: string } } | undefined)
      ?.alias?.aliasname;
    // A function without an alias is named after the function.
    const first = (node.RangeFunction as { functions?: Node[] } | undefined)?.functions?.[0];
    const fn = (first?.List as { items?: Node[] } | undefined)?.items?.[0];
    const fname = (fn?.FuncCall as { funcname?: Node[] } | undefined)?.funcname;
    return { ...otherRel(alias ?? (fname ? stringOf(fname[fname.length - 1]) : null)), nullable };
  }

  #cte(name: string, q: Query): Cte | null {
    // The CTE whose query the lookup just left, if any.
    let inside = null as Cte | null;
    for (let s: Query | null = q; s !== null; s = s.cteParent) {
      const cte = s.ctes.get(name);
      // Inside a CTE of the same WITH, only those before it are visible, unless WITH RECURSIVE
      // (else the name is an outer CTE's, or a table's).
      if (cte && (inside?.home !== s || inside.recursive || cte.index < inside.index)) return cte;
      inside = s.cteBody;
    }
    return null;
  }

  /** A reference to a CTE: its query, analyzed where it is used (as PostgreSQL may inline it). */
  #cteRel(cte: Cte, t: RangeTable): Rel {
    const name = t.alias ?? t.name;
    if (cte.dataModifying || cte.instantiating) return otherRel(name);
    cte.instantiating = true;
    const inner = this.query(cte.query, {
      outer: cte.home.outer,
      cteParent: cte.home,
      place: `WITH ${cte.name}`,
      cteBody: cte,
    });
    cte.instantiating = false;
    return derivedRel(inner, { name, colnames: cte.colnames, rowsOfItsOwn: !cte.recursive });
  }

  /**
   * The facts in a query's conditions: keys compared with constants (pins), keys compared with
   * keys (edges, and connections that co-locate rows), and `key IN (SELECT ...)` terms.
   */
  #conditions(
    q: Query,
    options: { where: Node | undefined; joins: Join[]; inEdges: Map<Node, KeyRef> },
  ): void {
    const all = new Set(q.rels);
    if (options.where) this.#terms(q, options.where, { filters: all }, options.inEdges);
    for (const join of options.joins) {
      const left = new Set(q.rels.slice(join.start, join.middle));
      const right = new Set(q.rels.slice(join.middle, join.end));
      const filters = join.type === JOIN_LEFT
        ? right
        : join.type === JOIN_RIGHT
        ? left
        : join.type === JOIN_FULL
        ? new Set<Rel>()
        : new Set([...left, ...right]);
      const sides = { filters, left, right };
      if (join.quals) this.#terms(q, join.quals, sides, options.inEdges);
      for (const column of join.using) {
        const l = uniqueKey(column, [...left], q);
        const r = uniqueKey(column, [...right], q);
        if (l && r) this.#keyEquality(q, l, r, sides);
      }
    }
  }

  #terms(
    q: Query,
    condition: Node,
    sides: { filters: Set<Rel>; left?: Set<Rel>; right?: Set<Rel> },
    inEdges: Map<Node, KeyRef>,
  ): void {
    for (const term of conjuncts(condition)) {
      const sub = term.SubLink as
        | { subLinkType?: string; testexpr?: Node; operName?: Node[] }
        | undefined;
      if (sub) {
        const op = sub.operName ? stringOf(sub.operName[sub.operName.length - 1]) : "=";
        if (sub.subLinkType === "ANY_SUBLINK" && op === "=") {
          const ref = this.#keyRef(sub.testexpr, q);
          if (ref) inEdges.set(sub as Node, ref.key);
        }
        continue;
      }
      const expr = term.A_Expr as
        | { kind: string; name?: Node[]; lexpr?: Node; rexpr?: Node }
        | undefined;
      if (!expr) continue;
      const op = expr.name ? stringOf(expr.name[expr.name.length - 1]) : "";
      if ((expr.kind === "AEXPR_OP" && op === "=") || expr.kind === "AEXPR_NOT_DISTINCT") {
        const l = this.#keyRef(expr.lexpr, q);
        const r = this.#keyRef(expr.rexpr, q);
        if (l && r) {
          // NULL IS NOT DISTINCT FROM NULL: rows without a key would match across shards.
          if (expr.kind === "AEXPR_OP") this.#keyEquality(q, l, r, sides);
        } else if (l || r) {
          const ref = (l ?? r)!;
          const value = l ? expr.rexpr : expr.lexpr;
          if (value && isValue(value) && ref.home === q && sides.filters.has(ref.rel)) {
            this.pins.push({
              occ: ref.key.occ,
              spec: spec(ref.key),
              values: [value],
              label: `${ref.key.occ.label}.${ref.key.column}`,
              shards: null,
            });
          }
        }
      } else if (expr.kind === "AEXPR_IN" && op === "=") {
        const ref = this.#keyRef(expr.lexpr, q);
        const items = (expr.rexpr?.List as { items?: Node[] } | undefined)?.items;
        if (!ref || !items || ref.home !== q || !sides.filters.has(ref.rel)) continue;
        if (!items.every(isValue)) continue;
        this.pins.push({
          occ: ref.key.occ,
          spec: spec(ref.key),
          values: items,
          label: `${ref.key.occ.label}.${ref.key.column} IN (...)`,
          shards: null,
        });
      }
    }
  }

  /** `a.key = b.key`: edges into whichever side the condition filters, and co-location. */
  #keyEquality(
    q: Query,
    a: ResolvedRef,
    b: ResolvedRef,
    sides: { filters: Set<Rel>; left?: Set<Rel>; right?: Set<Rel> },
  ): void {
    if (!sameFunction(spec(a.key), spec(b.key))) return;
    const aHere = a.home === q;
    const bHere = b.home === q;
    const aFiltered = aHere && sides.filters.has(a.rel);
    const bFiltered = bHere && sides.filters.has(b.rel);
    if (aFiltered) this.edges.push([a.key.occ, b.key.occ]);
    if (bFiltered) this.edges.push([b.key.occ, a.key.occ]);
    if (!aHere || !bHere) return;
    const across = sides.left !== undefined &&
      ((sides.left.has(a.rel) && sides.right!.has(b.rel)) ||
        (sides.right!.has(a.rel) && sides.left.has(b.rel)));
    if (across || (aFiltered && bFiltered)) q.connections.push([a.key.occ, b.key.occ]);
  }

  /**
   * Whether `node` names a sharding key of the rows of `q` that is never null-extended: rows
   * with equal values of it are on one shard.
   */
  isRowKey(node: Node | undefined, q: Query): boolean {
    const ref = this.#keyRef(node, q);
    if (!ref || ref.home !== q || ref.rel.nullable) return false;
    return ref.rel.members.some(([occ, nullable]) => occ === ref.key.occ && !nullable);
  }

  /** The sharding key a column reference names, and the relation it comes through. */
  #keyRef(node: Node | undefined, q: Query): ResolvedRef | null {
    const names = columnNames(node);
    if (names === null) return null;
    const column = names[names.length - 1];
    if (names.length === 1) {
      // Unqualified: only this query's relations, where exactly one has such a key column (were
      // there another column of that name, PostgreSQL would call the reference ambiguous).
      if (q.natural || q.merged.has(column)) return null;
      const rels = q.rels.filter((r) => r.keys.has(column));
      return rels.length === 1 ? { key: rels[0].keys.get(column)!, rel: rels[0], home: q } : null;
    }
    const qualifier = names[names.length - 2];
    for (let s: Query | null = q; s !== null; s = s.outer) {
      const rel = s.rels.find((r) => r.name === qualifier);
      if (rel) {
        const key = rel.keys.get(column);
        return key ? { key, rel, home: s } : null;
      }
    }
    return null;
  }

  /**
   * Subqueries in a query's expressions (each a query of its own, which may refer to this one),
   * and whether the expressions aggregate or use window functions; walked without recursion.
   */
  #expressions(
    q: Query,
    roots: unknown[],
    inEdges: Map<Node, KeyRef>,
  ): { aggregate: boolean; window: boolean } {
    const found = { aggregate: false, window: false };
    const stack: unknown[] = [...roots];
    while (stack.length > 0) {
      const node = stack.pop();
      if (Array.isArray(node)) {
        for (const child of node) stack.push(child);
        continue;
      }
      if (node === null || typeof node !== "object") continue;
      for (const [key, value] of Object.entries(node as Node)) {
        if (key === "SubLink") {
          const sub = value as { subselect: Node; testexpr?: Node };
          if (sub.testexpr) stack.push(sub.testexpr);
          this.#sublink(q, sub as unknown as Node, inEdges.get(sub as unknown as Node));
          continue;
        }
        // FROM items are relations, analyzed as such.
        if (key === "RangeVar" || key === "RangeSubselect") continue;
        if (key === "FuncCall") {
          const f = value as Node;
          if (f.over) found.window = true;
          else if (isAggregate(f, this)) found.aggregate = true;
        } else if (key === "GroupingFunc") found.aggregate = true;
        else if (key === "JsonObjectAgg" || key === "JsonArrayAgg") {
          // JSON_OBJECTAGG(...) / JSON_ARRAYAGG(...), maybe with OVER.
          const c = Object.hasOwn(value as Node, "constructor")
            ? (value as Node).constructor as { over?: unknown }
            : undefined;
          if (c?.over) found.window = true;
          else found.aggregate = true;
        }
        if (typeof value === "object") stack.push(value);
      }
    }
    return found;
  }

  #sublink(q: Query, sub: Node, from: KeyRef | undefined): void {
    const inner = this.query(sub.subselect as Node, {
      outer: q,
      cteParent: q,
      place: "a subquery",
    });
    // `(SELECT max(u.id))`: an aggregate over the outer query's columns aggregates its rows.
    if (outerAggregate(sub.subselect as Node, inner, this)) q.outerAggregate = true;
    // `key IN (SELECT key FROM t ...)`: the rows of t that matter have the outer row's key.
    if (!from || (inner.issue !== null && !inner.exact) || inner.targets?.length !== 1) return;
    const val = (inner.targets[0].ResTarget as { val?: Node } | undefined)?.val;
    const ref = this.#keyRef(val, inner);
    if (ref && ref.home === inner && sameFunction(spec(ref.key), spec(from))) {
      this.edges.push([ref.key.occ, from.occ]);
    }
  }
}

interface Join {
  type: string;
  quals: Node | undefined;
  using: string[];
  /** The relations of its left side are `rels[start, middle)`, of its right `[middle, end)`. */
  start: number;
  middle: number;
  end: number;
}

interface ResolvedRef {
  key: KeyRef;
  /** The relation (in `home`) the column comes through. */
  rel: Rel;
  home: Query;
}

function spec(key: KeyRef): ShardedTable {
  return key.occ.keys.get(key.column)!;
}

function tableRel(occ: Occurrence, t: RangeTable): Rel {
  const keys = new Map<string, KeyRef>();
  for (const column of occ.keys.keys()) keys.set(column, { occ, column });
  return {
    name: t.alias ?? t.name,
    keys,
    members: [[occ, false]],
    connections: [],
    issue: null,
    nullable: false,
  };
}

/** A relation that is the same on every shard (or can't be seen into). */
function otherRel(name: string | null): Rel {
  return { name, keys: new Map(), members: [], connections: [], issue: null, nullable: false };
}

/**
 * A subquery or CTE as a relation. A plain SELECT's rows are made of its relations' rows, one
 * shard each when those are joined on their keys: they count as its members, and the key columns
 * it selects stay keys. Any other query (aggregates, LIMIT, set operations, LATERAL, recursive)
 * is opaque: its sharded tables must be confined like a subquery's.
 */
function derivedRel(
  inner: Query,
  options: { name: string | null; colnames: string[] | null; rowsOfItsOwn: boolean },
): Rel {
  const rel = otherRel(options.name);
  if (!options.rowsOfItsOwn || (inner.issue !== null && !inner.exact) || inner.targets === null) {
    return rel;
  }
  for (const r of inner.rels) {
    for (const [occ, nullable] of r.members) rel.members.push([occ, nullable || r.nullable]);
    rel.connections.push(...r.connections);
    rel.issue ??= r.issue;
  }
  rel.connections.push(...inner.connections);
  rel.issue ??= inner.joinIssue;
  const { colnames } = options;
  let position = 0;
  let positional = true;
  for (const target of inner.targets) {
    const t = target.ResTarget as { name?: string; val?: Node } | undefined;
    const fields = (t?.val?.ColumnRef as { fields?: Node[] } | undefined)?.fields;
    if (fields && fields[fields.length - 1].A_Star !== undefined) {
      // `*` or `t.*`: their columns keep their names unless renamed by position (unknown here).
      if (colnames === null) {
        const qualifier = fields.length > 1 ? stringOf(fields[fields.length - 2]) : null;
        for (const r of inner.rels) {
          if (qualifier !== null && r.name !== qualifier) continue;
          for (const [column, key] of r.keys) if (!rel.keys.has(column)) rel.keys.set(column, key);
        }
      }
      positional = false;
      continue;
    }
    const names = columnNames(t?.val);
    const renamed = colnames !== null && positional ? colnames[position] : undefined;
    position++;
    if (colnames !== null && !positional) continue;
    const name = renamed ?? t?.name ?? names?.[names.length - 1];
    if (names === null || name === undefined) continue;
    const column = names[names.length - 1];
    // Resolved among the subquery's own relations only.
    const candidates = names.length === 1
      ? (inner.natural || inner.merged.has(column)
        ? []
        : inner.rels.filter((r) => r.keys.has(column)))
      : inner.rels.filter((r) => r.name === names[names.length - 2]);
    if (candidates.length !== 1) continue;
    const key = candidates[0].keys.get(column);
    if (key && !rel.keys.has(name)) rel.keys.set(name, key);
  }
  return rel;
}

/** The only key column named `column` among `rels`, if exactly one relation has it. */
function uniqueKey(column: string, rels: Rel[], home: Query): ResolvedRef | null {
  const found = rels.filter((r) => r.keys.has(column));
  return found.length === 1 ? { key: found[0].keys.get(column)!, rel: found[0], home } : null;
}

/** Two keys hash values the same way. */
function sameFunction(a: ShardedTable, b: ShardedTable): boolean {
  return a === b ||
    (a.type === b.type && a.plugin === b.plugin &&
      JSON.stringify(a.mapping, bigintText) === JSON.stringify(b.mapping, bigintText));
}

function bigintText(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? `${value}n` : value;
}

/** The top-level `AND` terms of a condition. */
function conjuncts(condition: Node): Node[] {
  const out: Node[] = [];
  const stack = [condition];
  while (stack.length > 0) {
    const node = stack.pop()!;
    const bool = node.BoolExpr as { boolop: string; args: Node[] } | undefined;
    if (bool?.boolop === "AND_EXPR") {
      for (let i = bool.args.length - 1; i >= 0; i--) stack.push(bool.args[i]);
    } else out.push(node);
  }
  return out;
}

/** The names of a column reference (`[table, column]`, `[column]`), or null for anything else. */
function columnNames(node: Node | undefined): string[] | null {
  const fields = (node?.ColumnRef as { fields?: Node[] } | undefined)?.fields;
  if (!fields) return null;
  const names: string[] = [];
  for (const f of fields) {
    const s = (f.String as { sval?: string } | undefined)?.sval;
    if (s === undefined) return null;
    names.push(s);
  }
  return names;
}

function stringOf(node: Node): string {
  return (node.String as { sval?: string } | undefined)?.sval ?? "";
}

function nonEmpty(v: unknown): boolean {
  return Array.isArray(v) && v.length > 0;
}

/** A constant or a parameter (maybe cast, maybe negated): what {@linkcode valueOf} reads. */
function isValue(node: Node): boolean {
  let n: Node | undefined = node;
  for (;;) {
    if (n?.TypeCast) n = (n.TypeCast as { arg: Node }).arg;
    else if (n?.A_Expr && !(n.A_Expr as Node).lexpr) n = (n.A_Expr as Node).rexpr as Node;
    else return n?.A_Const !== undefined || n?.ParamRef !== undefined;
  }
}

/**
 * A GROUP BY item names a sharding key of the rows: a column first (as PostgreSQL takes a column
 * of the FROM clause first), else the select-list entry its position or alias names.
 */
function groupItemIsKey(item: Node, body: Node, isKey: (node: Node) => boolean): boolean {
  if (isKey(item)) return true;
  const targets = (body.targetList as Node[] | undefined) ?? [];
  const c = (item.A_Const as { ival?: { ival?: number } } | undefined)?.ival;
  if (c !== undefined) {
    const val = (targets[(c.ival ?? 0) - 1]?.ResTarget as { val?: Node } | undefined)?.val;
    return val !== undefined && isKey(val);
  }
  const names = columnNames(item);
  if (names?.length !== 1) return false;
  const t = targets.find((t) => (t.ResTarget as { name?: string }).name === names[0]);
  const val = (t?.ResTarget as { val?: Node } | undefined)?.val;
  return val !== undefined && isKey(val);
}

/**
 * A subquery has an aggregate of the query outside it: one whose arguments name columns, all of
 * relations outside the subquery (PostgreSQL evaluates an aggregate at the level of its columns).
 * An unqualified column counts as the subquery's own when it has a FROM clause.
 */
function outerAggregate(select: Node, inner: Query, s: Statement): boolean {
  const body = select.SelectStmt as Node | undefined;
  if (!body) return false;
  const own = new Set(inner.rels.map((r) => r.name));
  let found = false;
  walkTree([body.targetList, body.havingClause, body.sortClause], (key, value) => {
    if (found || key === "SubLink" || key === "RangeSubselect") return false;
    if (key !== "FuncCall") return;
    const f = value as Node;
    if (f.over || !isAggregate(f, s)) return;
    const refs: string[][] = [];
    walkTree([f.args, f.agg_filter, f.agg_order], (k, v) => {
      if (k === "SubLink") return false;
      if (k === "ColumnRef") {
        const names = columnNames({ ColumnRef: v });
        if (names) refs.push(names);
      }
    });
    if (refs.length === 0) return;
    found = refs.every((n) => n.length > 1 ? !own.has(n[n.length - 2]) : inner.rels.length === 0);
    return false;
  });
  return found;
}

/** An aggregate call (not a window call) of a statement whose database knows `user`. */
function isAggregate(f: Node, s: Statement): boolean {
  if (mayBeUserAggregate(f, s.userAggregates)) s.unknownFunctions = true;
  return isAggregateFunction(f, s.userAggregates);
}

// ---- the proof -------------------------------------------------------------------------------

/** Gathers the facts of a statement and decides (see the module documentation). */
function prove(
  node: Node,
  ctx: RouteContext,
  options: ProveOptions,
): ShardDecision {
  const s = statementOf(node, ctx);
  const top = s.top!;
  if (s.refusal) return refuse(s.refusal);
  const type = Object.keys(node)[0];
  if (s.omniWrites.length > 0) {
    const omni = [...new Set(s.omniWrites)].join(", ");
    if (s.occurrences.length > 0) {
      const table = s.occurrences[0].table;
      return refuse(
        `a write to omnisharded ${omni} that reads sharded table ${table} is not supported: ` +
          "each shard would write different rows (read them first, then write the values)",
      );
    }
    return {
      target: { kind: "all" },
      reason: `write to omnisharded ${omni}: every shard, one answer`,
      omniWrite: true,
    };
  }
  // The values: the shards of the keys compared with constants or parameters, and of INSERT rows.
  const shardOptions = { shards: ctx.config.shards, lookup: ctx.values.lookup };
  for (const pin of s.pins) {
    pin.shards = new Set();
    for (const v of pin.values) {
      const value = valueOf(v, ctx.values);
      const shard = value === null ? null : valueShard(value, pin.spec, shardOptions);
      if (shard === null) {
        pin.shards = null; // unknown, or matching no mapping: every shard
        break;
      }
      pin.shards.add(shard);
    }
  }
  const pins = [...s.pins];
  const free = [...s.free];
  const inserts = [...s.inserts];
  for (const u of s.unlisted) {
    const lookup = ctx.values.lookup;
    const known = lookup?.columns?.(u.table);
    if (known === undefined) {
      lookup?.missingColumns?.push(
        u.table.schema ? { schema: u.table.schema, name: u.table.name } : { name: u.table.name },
      );
      return refuse(
        `an INSERT into sharded table ${describe(u.table)} without a column list needs the ` +
          "table's column order, which pgdog reads before the query runs: name the columns " +
          `(INSERT INTO ${describe(u.table)} (${[...u.occ.keys.keys()][0]}, ...) VALUES ...)`,
      );
    }
    const column = known.find((c) => u.occ.keys.has(c));
    if (column === undefined) {
      free.push(u.occ);
      continue;
    }
    const at = known.indexOf(column);
    inserts.push({
      occ: u.occ,
      spec: u.occ.keys.get(column)!,
      column,
      table: describe(u.table),
      // A row too short to reach the key leaves it to a column default.
      values: u.rows.map((items) => items[at] ?? DEFAULT_VALUE),
    });
  }
  for (const insert of inserts) {
    const shards = new Set<number>();
    /** Each row's shard (null: DEFAULT, a column default makes the key). */
    const rowShards: (number | null)[] = [];
    for (const v of insert.values) {
      // DEFAULT leaves the key to a column default: any shard of the others keeps the row once.
      if (v.SetToDefault !== undefined) {
        rowShards.push(null);
        continue;
      }
      const value = valueOf(v, ctx.values);
      const shard = value === null ? null : valueShard(value, insert.spec, shardOptions);
      if (shard === null) {
        return refuse(
          `the value of sharding key ${insert.column} must be a constant or a parameter`,
        );
      }
      shards.add(shard);
      rowShards.push(shard);
    }
    if (shards.size > 1) {
      const split = splitInsertDecision(node, {
        ctx,
        insert,
        rowShards,
        alone: inserts.length === 1 && s.occurrences.length === 1 && !options.everyShard,
      });
      if (split !== null) return split;
      return refuse(
        `a multi-row INSERT into ${insert.table} whose rows belong to different shards is not ` +
          "supported: insert them in separate statements, or let pgdog split it with " +
          '[rewrite] enabled = true and split_inserts = "rewrite"',
      );
    }
    if (shards.size === 0) {
      free.push(insert.occ);
      continue;
    }
    pins.unshift({
      occ: insert.occ,
      spec: insert.spec,
      values: insert.values,
      label: `INSERT ${insert.table}.${insert.column}`,
      shards,
    });
  }
  const checked = s.occurrences.filter((o) => !free.includes(o));
  if (checked.length === 0) {
    const reason = free.length > 0
      ? `INSERT without ${[...free[0].keys.keys()].join(", ")}: one shard`
      : "no sharded table";
    return { target: { kind: "any" }, reason, omniWrite: false };
  }
  if (!options.everyShard) {
    const one = oneShard(s, pins, checked);
    if (one) return one;
  }
  if (type === "InsertStmt") {
    if (options.everyShard) {
      return refuse(`an INSERT into ${checked[0].table} runs only on the shard of its rows`);
    }
    return refuse(unconfined(s, checked, []));
  }
  if (s.dataModifying) {
    return refuse(
      `${s.dataModifying} across shards is not supported yet: give it the sharding key of one ` +
        "shard, run it as a statement of its own, or route with /* pgdog_shard: N */",
    );
  }
  const tops = top.arms ?? [top];
  const mergeable = ctx.config.merge === true && type === "SelectStmt" && !options.everyShard &&
    !options.noMerge;
  // UNION ALL with a part every shard has (omnisharded tables): merged, so it counts once.
  const replicatedArm = mergeable && top.arms !== null && top.arms.some(sameEverywhere);
  if ((top.issue && !top.exact) || replicatedArm) {
    if (!mergeable) return refuse(`${top.issue} across shards is not supported yet: ${ADVICE}`);
    if (top.outerAggregate) {
      return refuse(
        "an aggregate of the outer query's rows inside a subquery (SELECT (SELECT max(t.x)) " +
          "FROM t) is not supported across shards: write the aggregate in the outer query, add " +
          "the sharding key to the WHERE clause, or route with /* pgdog_shard: N */",
      );
    }
    // The outer query is merged; every part inside it must be proven as for concatenation.
    const d = everyShard(s, { pins, checked, tops, shards: ctx.config.shards, merged: top });
    if (d.unsupported || d.target.kind === "one") return d;
    // The parts of a set operation whose rows every shard has: counted once by the plan.
    const replicated = tops.length > 1 ? tops.map(sameEverywhere) : undefined;
    const plan = mergePlanOf(node, s, ctx, replicated);
    if ("refused" in plan) return refuse(plan.refused);
    // Window functions partitioned by the key, say: the shards' rows are the answer.
    if (concatenation(plan)) return d;
    return {
      target: d.target,
      reason: `${d.reason}, merged`,
      omniWrite: false,
      merge: plan,
    };
  }
  return everyShard(s, { pins, checked, tops, shards: ctx.config.shards });
}

/** A merge plan made for a tree and its literals, and the column orders it read. */
interface PlanMade {
  result: MergePlan | { refused: string };
  columnsUsed: Array<{ table: TableRef; columns: string[] | undefined }>;
}

/** Merge plans by statement and literal values (a few per statement). */
const plans = new WeakMap<Statement, Map<string, PlanMade>>();
const PLANS_PER_STATEMENT = 64;

/**
 * The merge plan of a statement for this execution's literals: made once and kept with the
 * statement's facts, as long as the column orders it read (for `*`) are still those.
 */
function mergePlanOf(
  node: Node,
  s: Statement,
  ctx: RouteContext,
  replicatedArms: boolean[] | undefined,
): MergePlan | { refused: string } {
  const { analysis, lookup } = ctx.values;
  const key = analysis.literals.map((l) => `${l.kind[0]}${l.value}`).join("\u0000");
  let made = plans.get(s);
  const kept = made?.get(key);
  if (
    kept &&
    kept.columnsUsed.every((u) =>
      JSON.stringify(lookup?.columns?.(u.table)) === JSON.stringify(u.columns)
    )
  ) return kept.result;
  const missing = lookup?.missingColumns?.length ?? 0;
  const columnsUsed: PlanMade["columnsUsed"] = [];
  const top = s.top!;
  const result = planMerge(node, {
    values: ctx.values,
    isKey: (column) => top.arms === null && s.isRowKey(column, top),
    columnsUsed,
    replicatedArms,
  });
  // Kept plans are shared by executions: nobody may change them.
  if (!("refused" in result)) deepFreeze(result);
  // A plan waiting for column orders is made again once they are known.
  if ((lookup?.missingColumns?.length ?? 0) === missing) {
    if (!made) plans.set(s, made = new Map());
    if (made.size >= PLANS_PER_STATEMENT) made.clear();
    made.set(key, { result, columnsUsed });
  }
  return result;
}

function deepFreeze(value: unknown): void {
  if (value === null || typeof value !== "object" || Object.isFrozen(value)) return;
  Object.freeze(value);
  for (const v of Object.values(value)) deepFreeze(v);
}

/** A plan with nothing to merge: the answers concatenated are the answer. */
function concatenation(plan: MergePlan): boolean {
  return plan.shardSql === null && plan.aggregate === null && plan.setOperation === null &&
    plan.distinct === null && plan.orderBy.length === 0 && plan.limit === null &&
    plan.offset === null && plan.visible === plan.shardColumns;
}

/** Thrown when a statement has more queries than pgdog analyzes (CTEs count per reference). */
class TooComplex extends Error {}

/**
 * Statements analyzed for a sharding configuration and the database's own aggregates (a set
 * learned from the catalog, kept until DDL), by parse tree (kept with the parse tree).
 */
const statements = new WeakMap<ShardingConfig, WeakMap<object, WeakMap<Node, Statement>>>();
/** The key of {@linkcode statements} while the database's own aggregates are not known. */
const UNKNOWN_AGGREGATES = {};

/**
 * The facts of a statement, gathered once for its parse tree; tells the lookup when the
 * database's own aggregates could change them (see {@linkcode ShardLookup.missingAggregates}).
 */
function statementOf(node: Node, ctx: RouteContext): Statement {
  const { config } = ctx;
  const lookup = ctx.values.lookup;
  const user = lookup?.aggregates;
  let byAggregates = statements.get(config);
  if (!byAggregates) statements.set(config, byAggregates = new WeakMap());
  let byNode = byAggregates.get(user ?? UNKNOWN_AGGREGATES);
  if (!byNode) byAggregates.set(user ?? UNKNOWN_AGGREGATES, byNode = new WeakMap());
  let s = byNode.get(node);
  if (!s) {
    s = new Statement(config, user);
    try {
      s.top = s.query(node, { outer: null, cteParent: null, place: "the statement" });
    } catch (e) {
      if (!(e instanceof TooComplex)) throw e;
      s = new Statement(config, user);
      s.refusal = `the statement has more than ${MAX_QUERIES} queries and subqueries (CTEs ` +
        "count once per reference) for pgdog to prove where it can run across shards: route " +
        "it with /* pgdog_shard: N */";
    }
    byNode.set(node, s);
  }
  if (s.unknownFunctions && lookup?.missingAggregates === false) lookup.missingAggregates = true;
  return s;
}

/** Every occurrence confined to one shard, the same for all: that shard. */
function oneShard(s: Statement, pins: Pin[], checked: Occurrence[]): ShardDecision | null {
  propagate(s, pins, []);
  const union = new Set<number>();
  for (const o of checked) {
    if (o.shards === null) return null;
    for (const n of o.shards) union.add(n);
  }
  if (union.size > 1) return null;
  // No row can match anywhere (contradictory keys): the first key's shard answers that.
  const shard = union.size === 1 ? [...union][0] : [...pins[0]?.shards ?? [0]][0] ?? 0;
  const labels = [...new Set(pins.filter((p) => p.shards !== null).map((p) => p.label))];
  return {
    target: { kind: "one", shard },
    reason: labels.join(" and "),
    omniWrite: false,
  };
}

/** Runs on every shard (or those the keys select), answers concatenated, when that is proven. */
function everyShard(
  s: Statement,
  options: {
    pins: Pin[];
    checked: Occurrence[];
    tops: Query[];
    shards: number;
    /** The query whose rows pgdog merges (its own ORDER BY, aggregates... are planned). */
    merged?: Query;
  },
): ShardDecision {
  const { pins, checked, tops } = options;
  const members: Array<[Occurrence, boolean]> = [];
  const perTop: Array<Array<[Occurrence, boolean]>> = [];
  for (const top of tops) {
    // A part of a merged set operation whose rows are the same on every shard (omnisharded
    // tables, no table): the merge plan counts its rows once (see sameEverywhere).
    if (options.merged !== undefined && tops.length > 1 && sameEverywhere(top)) continue;
    if (top.issue && top !== options.merged && !top.exact) {
      return refuse(`${top.issue} across shards is not supported yet: ${ADVICE}`);
    }
    const own: Array<[Occurrence, boolean]> = [];
    const connections = [...top.connections];
    let issue = top.joinIssue;
    for (const r of top.rels) {
      for (const [occ, nullable] of r.members) own.push([occ, nullable || r.nullable]);
      connections.push(...r.connections);
      issue ??= r.issue;
    }
    if (own.length === 0) {
      // Its rows are the same on every shard: each shard would answer them again.
      const inside = checked.find((o) => o.query !== top) ?? checked[0];
      return refuse(unconfined(s, [inside], []));
    }
    if (issue) {
      return refuse(
        `${issue} across shards is not supported yet: put the sharded table on that side, use ` +
          "an inner join, or route with /* pgdog_shard: N */",
      );
    }
    // Rows are made on one shard only when every sharded table in them is joined on the keys.
    for (const [o] of own) o.parent = o;
    for (const [a, b] of connections) {
      a.parent = a;
      b.parent = b;
    }
    for (const [a, b] of connections) unite(a, b);
    const root = find(own[0][0]);
    const apart = own.find(([o]) => find(o) !== root);
    if (apart) {
      const a = own[0][0];
      const b = apart[0];
      return refuse(
        `a join of ${a.table} and ${b.table} that is not on their sharding keys is not ` +
          `supported across shards yet: join them on the keys (${a.label}.${firstKey(a)} = ` +
          `${b.label}.${firstKey(b)}, same sharding function), ${ADVICE}`,
      );
    }
    members.push(...own);
    perTop.push(own);
  }
  if (members.length === 0) {
    // Every part is the same on every shard, but something inside reads a sharded table.
    return refuse(unconfined(s, [checked[0]], []));
  }
  propagate(s, pins, members.map(([o]) => o));
  const inTop = new Set(members.map(([o]) => o));
  const bad = checked.filter((o) => !inTop.has(o) && !o.onRowShard && o.shards?.size !== 0);
  if (bad.length > 0) return refuse(unconfined(s, bad, tops));
  // The shards that can have rows: those every row's (never null-extended) tables allow.
  let shards: Set<number> | null = new Set();
  for (const own of perTop) {
    let these: Set<number> | null = null;
    for (const [o, nullable] of own) if (!nullable) these = intersect(these, o.shards);
    if (these === null) {
      shards = null;
      break;
    }
    for (const n of these) shards.add(n);
  }
  const labels = [
    ...new Set(pins.filter((p) => p.shards !== null && inTop.has(p.occ)).map((p) => p.label)),
  ];
  const reason = shards === null || labels.length === 0
    ? `no sharding key for ${members[0][0].table}: every shard's rows`
    : labels.join(" and ");
  const n = options.shards;
  let target: ShardTarget;
  if (shards === null || shards.size === 0 || shards.size === n) target = { kind: "all" };
  else if (shards.size === 1) target = { kind: "one", shard: [...shards][0] };
  else target = { kind: "some", shards: [...shards].sort((a, b) => a - b) };
  return { target, reason, omniWrite: false, concatenates: true };
}

/** A query whose rows no sharded table makes: each shard has them all (its parts may differ). */
function sameEverywhere(q: Query): boolean {
  if (q.arms !== null) return q.arms.every(sameEverywhere);
  return q.rels.every((r) => r.members.length === 0);
}

/** The refusal for occurrences not confined to one shard. */
function unconfined(s: Statement, bad: Occurrence[], tops: Query[]): string {
  const o = bad.find((x) => x.shards === null && !x.onRowShard) ?? bad[0];
  const where = o.query.issue && !tops.includes(o.query)
    ? `${o.query.issue} in ${o.place}`
    : o.place === "the statement"
    ? "a statement"
    : o.place;
  if (o.shards !== null && o.shards.size > 0 && s.occurrences.length > 1) {
    return `${where} reading rows of ${o.table} on another shard than the rest of the statement ` +
      "is not supported: read them with a statement of their own (or route with " +
      "/* pgdog_shard: N */)";
  }
  return `${where} reading ${o.table} without its sharding key is not supported across shards ` +
    `yet: each shard would answer it from its own rows; add ${o.label}.${firstKey(o)} = ... ` +
    "to it, correlate it on the sharding key with the outer query, or route with " +
    "/* pgdog_shard: N */";
}

function firstKey(o: Occurrence): string {
  return [...o.keys.keys()][0] ?? "?";
}

/**
 * The fixed point of the facts: pins restrict an occurrence's shards, edges pass restrictions
 * (and "on the row's shard", from `seeds`) on.
 */
function propagate(s: Statement, pins: Pin[], seeds: Occurrence[]): void {
  for (const o of s.occurrences) {
    o.shards = null;
    o.onRowShard = false;
  }
  for (const p of pins) p.occ.shards = intersect(p.occ.shards, p.shards);
  for (const o of seeds) o.onRowShard = true;
  for (let changed = true; changed;) {
    changed = false;
    for (const [to, from] of s.edges) {
      const shards = intersect(to.shards, from.shards);
      const onRowShard = to.onRowShard || from.onRowShard;
      if (onRowShard !== to.onRowShard || (shards?.size ?? -1) !== (to.shards?.size ?? -1)) {
        to.shards = shards;
        to.onRowShard = onRowShard;
        changed = true;
      }
    }
  }
}

/** The intersection of shard sets (null: every shard). */
function intersect(a: Set<number> | null, b: Set<number> | null): Set<number> | null {
  if (a === null) return b === null ? null : new Set(b);
  if (b === null) return a;
  return new Set([...a].filter((x) => b.has(x)));
}

function find(o: Occurrence): Occurrence {
  while (o.parent !== o) {
    o.parent = o.parent.parent;
    o = o.parent;
  }
  return o;
}

function unite(a: Occurrence, b: Occurrence): void {
  const ra = find(a);
  const rb = find(b);
  if (ra !== rb) ra.parent = rb;
}

// ---- statements around queries ---------------------------------------------------------------

/**
 * COPY: out of a table or a query (from every shard, one stream); from STDIN into a table (every
 * shard, the rows split by their key, or every row to every shard for tables on every shard).
 */
function copy(body: Node, ctx: RouteContext, options: ProveOptions): ShardDecision {
  const c = body as {
    relation?: Node;
    query?: Node;
    is_from?: boolean;
    is_program?: boolean;
    filename?: string;
    attlist?: Node[];
    options?: Node[];
  };
  const { config } = ctx;
  const t = c.relation ? tableOf(c.relation) : undefined;
  if (c.is_from) return copyIn(c, t, ctx);
  const header = copyHeader(c.options ?? []);
  if (c.query) {
    const d = prove(c.query, ctx, { ...options, noMerge: true });
    return d.target.kind === "all" || d.target.kind === "some" ? { ...d, copyHeader: header } : d;
  }
  if (t && isOmni(t, config)) {
    return { target: { kind: "any" }, reason: "COPY from an omnisharded table", omniWrite: false };
  }
  if (t && !isSharded(t, config)) {
    return {
      target: { kind: "any" },
      reason: "COPY from a table on every shard",
      omniWrite: false,
    };
  }
  return { ...allShards("COPY TO from every shard, one stream"), copyHeader: header };
}

/** COPY FROM: from STDIN only; a sharded table needs its key among the columns the rows hold. */
function copyIn(
  c: { is_program?: boolean; filename?: string; attlist?: Node[]; options?: Node[] },
  t: RangeTable | undefined,
  ctx: RouteContext,
): ShardDecision {
  const { config } = ctx;
  if (t === undefined) return refuse("COPY FROM without a table");
  if (c.is_program || c.filename !== undefined) {
    return refuse(
      "COPY FROM a file or a program on a sharded database is not supported: each shard would " +
        "read its own; use COPY FROM STDIN (psql's \\copy)",
    );
  }
  const listed = c.attlist?.map((n) => stringOf(n)) ?? null;
  const sharded = isSharded(t, config) && !isOmni(t, config);
  const spec = sharded ? tableSpec(t, config) : undefined;
  let columns = listed;
  if (columns === null) {
    const lookup = ctx.values.lookup;
    const known = lookup?.columns?.(t);
    if (known === undefined) {
      lookup?.missingColumns?.push(
        t.schema ? { schema: t.schema, name: t.name } : { name: t.name },
      );
      return refuse(
        `COPY into ${describe(t)} without a column list needs the table's column order, which ` +
          `pgdog reads before the COPY runs: name the columns (COPY ${
            describe(t)
          } (...) FROM STDIN)`,
      );
    }
    columns = known;
  }
  const route = { table: t, columns, options: c.options ?? [] };
  if (spec === undefined) {
    return {
      target: { kind: "all" },
      reason: "COPY FROM into a table on every shard: every row to every shard",
      omniWrite: true,
      copyIn: { ...route, key: null },
    };
  }
  const column = columns.indexOf(spec.column);
  if (column < 0) {
    return refuse(
      `COPY into sharded table ${describe(t)} needs its sharding key ${spec.column} among the ` +
        "columns: each row goes to the shard of its key",
    );
  }
  return {
    target: { kind: "all" },
    reason: `COPY FROM: each row to the shard of its ${spec.column}`,
    omniWrite: false,
    copyIn: { ...route, key: { column, spec } },
  };
}

/** COPY ... (HEADER) in text or CSV format: each shard would send the header line. */
function copyHeader(options: Node[]): boolean {
  let header = false;
  let binary = false;
  for (const o of options) {
    const d = o.DefElem as { defname?: string; arg?: Node } | undefined;
    if (d?.defname === "format") binary = stringOf(d.arg ?? {}).toLowerCase() === "binary";
    if (d?.defname === "header") header = truthy(d.arg);
  }
  return header && !binary;
}

function truthy(arg: Node | undefined): boolean {
  if (arg === undefined) return true;
  const b = arg.Boolean as { boolval?: boolean } | undefined;
  if (b) return b.boolval === true;
  const i = arg.Integer as { ival?: number } | undefined;
  if (i) return (i.ival ?? 0) !== 0;
  const s = stringOf(arg).toLowerCase();
  return s === "true" || s === "on" || s === "match" || s === "1";
}

/** CREATE TABLE AS, SELECT INTO, CREATE MATERIALIZED VIEW: run on every shard, as DDL. */
function createAs(query: Node, ctx: RouteContext, what: string): ShardDecision {
  let q = query;
  if (q.SelectStmt && (q.SelectStmt as Node).intoClause) {
    // SELECT INTO: the same query without its INTO.
    q = { SelectStmt: { ...(q.SelectStmt as Node), intoClause: undefined } };
  }
  if (!q.SelectStmt) {
    return refuse(`${what} of anything but a SELECT is not supported on a sharded database`);
  }
  const d = prove(q, ctx, { everyShard: true });
  if (d.unsupported) {
    return refuse(`${what} runs on every shard, each with its own rows: ${d.unsupported}`);
  }
  if (d.target.kind === "any") {
    // No sharded table: every shard makes the same table; one answer.
    return { target: { kind: "all" }, reason: `${what} of tables on every shard`, omniWrite: true };
  }
  return { ...allShards(`${what}: each shard keeps its own rows (${d.reason})`) };
}

/** MERGE: only into and from tables copied on every shard. */
function merge(body: Node, ctx: RouteContext): ShardDecision {
  const { config } = ctx;
  const sharded = rangeVars(body).find((t) => isSharded(t, config));
  if (sharded) {
    return refuse(
      `MERGE with sharded table ${describe(sharded)} is not supported across shards yet: use ` +
        "INSERT ... ON CONFLICT, UPDATE and DELETE (or route with /* pgdog_shard: N */)",
    );
  }
  return {
    target: { kind: "all" },
    reason: "MERGE of omnisharded tables: every shard, one answer",
    omniWrite: true,
  };
}

/** Every table named anywhere under `root` (CTE names included), without recursion. */
function rangeVars(root: unknown): RangeTable[] {
  const out: RangeTable[] = [];
  walkTree([root], (key, value) => {
    if ((key === "RangeVar" || key === "relation") && (value as Node).relname !== undefined) {
      out.push(tableOf(value as Node));
      return false;
    }
  });
  return out;
}
