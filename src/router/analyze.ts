/**
 * What a statement is, from PostgreSQL's own parse tree (libpg-query): whether it must run on a
 * primary, what transaction control it is, which tables it touches. Computed once per distinct
 * normalized query and cached.
 *
 * @module
 */

import { loadModule, parseSync } from "libpg-query";
import { errorMessage } from "../log.ts";
import { MAX_NESTING, nestingEstimate } from "./depth.ts";

/** Transaction control at the start of a request. */
export type TxControl =
  | "begin"
  | "begin_read_only"
  | "set_read_only"
  | "commit"
  | "rollback"
  | "savepoint"
  | "other";

/** A table as named in a statement. */
export interface TableRef {
  schema?: string;
  name: string;
}

/** Everything routing wants to know about one query text. */
export interface StatementInfo {
  /** Number of statements in the text. */
  statements: number;
  /** Must run on a primary (writes, locks, sequences, DDL, anything unknown). */
  write: boolean;
  /** Transaction control of the first statement, or null. */
  transaction: TxControl | null;
  /** A read-only transaction is begun by the first two statements (`BEGIN; SET TRANSACTION READ ONLY`). */
  readOnlyTransaction: boolean;
  /** Tables named anywhere in the text. */
  tables: TableRef[];
  /** The parse tree, or null when the text did not parse. */
  ast: ParseTree | null;
  /** PostgreSQL's syntax error, when the text did not parse. */
  error: string | null;
  /**
   * Set when the text was too large to analyze whole: why, for the client. The other facts are
   * then either the text's own (it was parsed, but its tree was too large to keep: `ast` is null)
   * or conservative ones (it was not parsed: a write, no tables, no transaction control).
   * Routing sends it to the primary, and a sharded database refuses it.
   */
  tooLarge?: string;
  /**
   * The text may nest too deeply to parse safely (see {@linkcode nestingEstimate}): it was not
   * parsed (`ast` is null, `error` says why) and counts as a write.
   */
  tooDeep: boolean;
}

/** libpg-query's JSON parse tree. */
export interface ParseTree {
  version: number;
  stmts: Array<{ stmt?: Node; stmt_location?: number; stmt_len?: number }>;
}

/** A parse tree node: `{ NodeType: { ...fields } }`. */
export type Node = Record<string, unknown>;

let loading: Promise<void> | null = null;
let loaded = false;

/** Loads PostgreSQL's parser (WebAssembly); call once before {@linkcode analyzeSql}. */
export function loadParser(): Promise<void> {
  loading ??= loadModule().then(() => {
    loaded = true;
  });
  return loading;
}

/** True once {@linkcode loadParser} has finished. */
export function parserLoaded(): boolean {
  return loaded;
}

/** Functions whose call makes a SELECT a write. */
function isWriteFunction(name: string): boolean {
  return name === "nextval" || name === "setval" || name.startsWith("pg_advisory_") ||
    name.startsWith("pg_try_advisory_");
}

/**
 * The facts of a text that was not parsed (a syntax error, too deep, too large): conservative
 * ones, a write with no tables and no transaction control.
 */
export function unparsedInfo(
  why: { error: string | null; tooDeep?: boolean; tooLarge?: string },
): StatementInfo {
  const info: StatementInfo = {
    statements: 1,
    write: true,
    transaction: null,
    readOnlyTransaction: false,
    tables: [],
    ast: null,
    error: why.error,
    tooDeep: why.tooDeep ?? false,
  };
  if (why.tooLarge !== undefined) info.tooLarge = why.tooLarge;
  return info;
}

/** Parses and analyzes `sql`. Never throws: a syntax error yields a write with `error` set. */
export function analyzeSql(sql: string): StatementInfo {
  const unparsed = (error: string, tooDeep: boolean): StatementInfo =>
    unparsedInfo({ error, tooDeep });
  if (nestingEstimate(sql) > MAX_NESTING) {
    return unparsed(
      `nested too deeply for pgdog to parse (more than ${MAX_NESTING} levels)`,
      true,
    );
  }
  let tree: ParseTree;
  try {
    // The parser refuses an empty string; PostgreSQL answers it with EmptyQueryResponse.
    tree = sql.trim() === "" ? { version: 0, stmts: [] } : parseSync(sql) as ParseTree;
  } catch (e) {
    return unparsed(errorMessage(e), e instanceof RangeError);
  }
  const stmts = tree.stmts.map((s) => s.stmt).filter((s): s is Node => s !== undefined);
  const tables: TableRef[] = [];
  let write = false;
  for (const stmt of stmts) {
    if (statementWrites(stmt, tables)) write = true;
  }
  const first = stmts[0] ? transactionControl(stmts[0]) : null;
  const second = stmts[1] ? transactionControl(stmts[1]) : null;
  const readOnlyTransaction = first === "begin_read_only" ||
    (first === "begin" && second === "set_read_only");
  return {
    statements: stmts.length,
    write,
    transaction: first,
    readOnlyTransaction,
    tables,
    ast: tree,
    error: null,
    tooDeep: false,
  };
}

/** Transaction control of one statement, or null if it isn't any. */
export function transactionControl(stmt: Node): TxControl | null {
  const tx = stmt.TransactionStmt as { kind?: string; options?: Node[] } | undefined;
  if (tx) {
    switch (tx.kind) {
      case "TRANS_STMT_BEGIN":
      case "TRANS_STMT_START":
        return readOnlyOption(tx.options) ? "begin_read_only" : "begin";
      case "TRANS_STMT_COMMIT":
        return "commit";
      case "TRANS_STMT_ROLLBACK":
        return "rollback";
      case "TRANS_STMT_SAVEPOINT":
      case "TRANS_STMT_RELEASE":
      case "TRANS_STMT_ROLLBACK_TO":
        return "savepoint";
      default:
        return "other";
    }
  }
  const set = stmt.VariableSetStmt as { kind?: string; name?: string; args?: Node[] } | undefined;
  if (
    set && set.kind === "VAR_SET_MULTI" && set.name === "TRANSACTION" && readOnlyOption(set.args)
  ) {
    return "set_read_only";
  }
  return null;
}

function readOnlyOption(options: Node[] | undefined): boolean {
  for (const o of options ?? []) {
    const d = o.DefElem as { defname?: string; arg?: Node } | undefined;
    if (d?.defname !== "transaction_read_only") continue;
    const c = d.arg?.A_Const as { ival?: { ival?: number } } | undefined;
    return (c?.ival?.ival ?? 0) === 1;
  }
  return false;
}

/** True when a top-level statement must run on a primary; collects its tables. */
function statementWrites(top: Node, tables: TableRef[]): boolean {
  // EXPLAIN, COPY and DECLARE wrap the statement that decides; unwrap them without recursion.
  let stmt = top;
  let explainAnalyze: boolean | null = null;
  for (;;) {
    const type = Object.keys(stmt)[0];
    const body = stmt[type] as Node;
    switch (type) {
      case "SelectStmt": {
        const writes = walk(body, tables) || body.intoClause !== undefined;
        return explainAnalyze === null ? writes : explainAnalyze && writes;
      }
      case "ExplainStmt": {
        const options = (body.options as Node[] | undefined) ?? [];
        const analyze = options.some((o) =>
          (o.DefElem as { defname?: string } | undefined)?.defname === "analyze"
        );
        // The outermost EXPLAIN decides whether the inner statement runs.
        explainAnalyze ??= analyze;
        stmt = body.query as Node;
        continue;
      }
      case "CopyStmt": {
        const copy = body as { is_from?: boolean; relation?: Node; query?: Node };
        if (copy.relation) collectTable(copy.relation, tables);
        if (copy.is_from) return explainAnalyze ?? true;
        if (!copy.query) return false;
        stmt = copy.query;
        continue;
      }
      case "DeclareCursorStmt":
        stmt = (body as { query: Node }).query;
        continue;
      case "TransactionStmt":
        return false;
      case "VariableShowStmt":
        // As PgDog does: SHOW reports the session's own server; keep it with writes.
        return explainAnalyze ?? true;
      default:
        walk(body, tables);
        return explainAnalyze ?? true;
    }
  }
}

/**
 * Walks a subtree (with an explicit stack: trees can be deep), collecting tables; true when it
 * finds something that writes (data-modifying statements in CTEs, row locks, write functions).
 */
function walk(root: unknown, tables: TableRef[]): boolean {
  let writes = false;
  // [field name, value] pairs, visited in document order (the tables' order matters).
  const stack: Array<[string | null, unknown]> = [[null, root]];
  while (stack.length > 0) {
    const [key, value] = stack.pop()!;
    switch (key) {
      case "RangeVar":
      case "relation":
        collectTable(value as Node, tables);
        if (key === "RangeVar") continue;
        break;
      case "InsertStmt":
      case "UpdateStmt":
      case "DeleteStmt":
      case "MergeStmt":
        writes = true;
        break;
      case "lockingClause":
        if (Array.isArray(value) && value.length > 0) writes = true;
        break;
      case "FuncCall": {
        const names = (value as { funcname?: Node[] }).funcname ?? [];
        const last = names[names.length - 1]?.String as { sval?: string } | undefined;
        if (last?.sval && isWriteFunction(last.sval)) writes = true;
        break;
      }
    }
    if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) stack.push([null, value[i]]);
    } else if (value !== null && typeof value === "object") {
      const entries = Object.entries(value as Record<string, unknown>);
      for (let i = entries.length - 1; i >= 0; i--) {
        if (typeof entries[i][1] === "object") stack.push(entries[i]);
      }
    }
  }
  return writes;
}

/** Collects a RangeVar's table (the node's fields, without the `RangeVar` wrapper). */
function collectTable(node: Node, tables: TableRef[]): void {
  const rv = node as { schemaname?: string; relname?: string };
  if (typeof rv.relname !== "string") return;
  tables.push(rv.schemaname ? { schema: rv.schemaname, name: rv.relname } : { name: rv.relname });
}
