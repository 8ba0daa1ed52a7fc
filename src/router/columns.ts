/**
 * The column order of sharded tables, for `INSERT INTO t VALUES (...)` without a column list: the
 * sharding key's position in the table is where its value sits in each row. pgdog asks a shard's
 * catalog once per table (see `backend/catalog.ts`) and keeps the answer here, per database, until
 * DDL passes through pgdog or a RELOAD builds new pools (and a new cache).
 *
 * @module
 */

import type { Analysis, TableRef } from "./mod.ts";
import { LruMap } from "../lru.ts";

/** How an unqualified table name resolves: through the session's search_path, as that user. */
export interface NameContext {
  /** The user the client logged in as (`$user` in search_path, role defaults). */
  user: string;
  /** The client's search_path as set (startup parameter or SET); undefined: the server default. */
  searchPath?: string;
}

/** Column orders kept at most (tables × distinct search_paths); the least recently used go. */
const COLUMN_ORDERS_LIMIT = 10_000;

/** Known column orders of one database's tables (and the names of its own aggregates). */
export class ColumnOrders {
  readonly #orders: LruMap<string, string[]>;
  #generation = 0;

  /** `limit`: the most column orders kept (10,000 by default). */
  constructor(options: { limit?: number } = {}) {
    this.#orders = new LruMap(options.limit ?? COLUMN_ORDERS_LIMIT);
  }

  /** The table's columns in order (attnum), if known. */
  get(table: TableRef, context: NameContext): string[] | undefined {
    return this.#orders.get(columnOrderKey(table, context));
  }

  /**
   * Keeps a column order read from the catalog when the read began at `generation` (see
   * {@linkcode ColumnOrders.generation}): one that DDL may have overtaken is not kept.
   */
  set(table: TableRef, options: NameContext & { columns: string[]; generation: number }): void {
    if (options.generation !== this.#generation) return;
    this.#orders.set(columnOrderKey(table, options), options.columns);
  }

  /** Changes at each {@linkcode ColumnOrders.clear}: a read that began before it may be stale. */
  get generation(): number {
    return this.#generation;
  }

  /** Forgets everything (DDL went through pgdog). */
  clear(): void {
    this.#generation++;
    if (this.#orders.size > 0) this.#orders.clear();
    this.#aggregates = undefined;
  }

  #aggregates: ReadonlySet<string> | undefined = undefined;

  /**
   * The names of the database's own aggregates and window functions (see router/aggregates.ts),
   * once read from the catalog; kept, and forgotten, with the column orders.
   */
  get aggregates(): ReadonlySet<string> | undefined {
    return this.#aggregates;
  }

  /** Keeps the aggregates read from the catalog when the read began at `generation`. */
  setAggregates(names: ReadonlySet<string>, generation: number): void {
    if (generation === this.#generation) this.#aggregates = names;
  }

  /** The number of column orders kept. */
  get size(): number {
    return this.#orders.size;
  }
}

/**
 * The cache key of a table's column order: a qualified name is the same table for everyone; an
 * unqualified one depends on the search_path and the user it is resolved with.
 */
export function columnOrderKey(table: TableRef, context: NameContext): string {
  if (table.schema !== undefined) return `${table.schema}\u0000${table.name}`;
  return `\u0000${table.name}\u0000${context.user}\u0000${context.searchPath ?? "\u0001"}`;
}

/**
 * The catalog query for a table's columns in attnum order (dropped and system columns left out),
 * the name resolved as PostgreSQL resolves it for the session: `to_regclass` with the session's
 * search_path. Without `ownTransaction` the query runs as is, in the client's own session; with it,
 * on a pooled server, inside a transaction that sets the client's search_path for its length
 * (or the server's default, when the client set none). One row per column (its name, and whether
 * the table is temporary); one row with a NULL name for a table without columns; no row when
 * there is no such table.
 */
export function columnOrderSql(
  table: TableRef,
  options: { searchPath?: string; ownTransaction: boolean },
): string {
  const name = table.schema !== undefined
    ? `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`
    : quoteIdent(table.name);
  const select = "SELECT a.attname, c.relpersistence = 't' FROM (SELECT pg_catalog.to_regclass(" +
    quoteLiteral(name) + ") AS oid) t JOIN pg_catalog.pg_class c ON c.oid = t.oid " +
    "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 " +
    "AND NOT a.attisdropped ORDER BY a.attnum";
  if (!options.ownTransaction) return select;
  // set_config(..., true) lasts until COMMIT; the WHERE runs it once and returns no row.
  const path = options.searchPath === undefined
    ? "SET LOCAL search_path TO DEFAULT"
    : `SELECT 1 WHERE pg_catalog.set_config('search_path', ${
      quoteLiteral(options.searchPath)
    }, true) IS NULL`;
  return `BEGIN;${path};${select};COMMIT`;
}

/** The table {@linkcode columnOrderSql} found: its columns in order; null: no such table. */
export function columnsFromRows(
  rows: (string | null)[][],
): { columns: string[]; temporary: boolean } | null {
  if (rows.length === 0) return null;
  return {
    columns: rows.map((r) => r[0]).filter((c): c is string => c !== null),
    temporary: rows[0][1] === "t",
  };
}

/**
 * Statements that cannot change any table's columns, name or schema. Anything else (CREATE,
 * ALTER, DROP, RENAME, DO, CALL, ...) makes pgdog forget the column orders it knows.
 */
const KEEPS_TABLES = new Set([
  "InsertStmt",
  "UpdateStmt",
  "DeleteStmt",
  "MergeStmt",
  "CopyStmt",
  "TransactionStmt",
  "VariableSetStmt",
  "VariableShowStmt",
  "PrepareStmt",
  "ExecuteStmt",
  "DeallocateStmt",
  "DeclareCursorStmt",
  "FetchStmt",
  "ClosePortalStmt",
  "LockStmt",
  "TruncateStmt",
  "VacuumStmt",
  "ListenStmt",
  "UnlistenStmt",
  "NotifyStmt",
  "DiscardStmt",
  "ConstraintsSetStmt",
  "CheckPointStmt",
  "IndexStmt",
  "ReindexStmt",
  "ClusterStmt",
  "CommentStmt",
  "GrantStmt",
  "GrantRoleStmt",
]);

/** True when the statement may change a table's columns, name or schema (DDL). */
export function changesTables(analysis: Analysis): boolean {
  for (const s of analysis.info.ast?.stmts ?? []) {
    if (s.stmt !== undefined && statementChangesTables(s.stmt)) return true;
  }
  return false;
}

/**
 * True when the statement creates a temporary table (or view): a name the session resolves to a
 * table no other session sees.
 */
export function createsTemporaryTable(analysis: Analysis): boolean {
  for (const s of analysis.info.ast?.stmts ?? []) {
    const stmt = s.stmt as Record<string, Record<string, unknown> | undefined> | undefined;
    if (stmt === undefined) continue;
    const into = (stmt.CreateTableAsStmt?.into ?? stmt.SelectStmt?.intoClause) as
      | { rel?: unknown }
      | undefined;
    for (const rel of [stmt.CreateStmt?.relation, stmt.ViewStmt?.view, into?.rel]) {
      const r = rel as { relpersistence?: string; schemaname?: string } | undefined;
      if (r?.relpersistence === "t" || r?.schemaname?.startsWith("pg_temp")) return true;
    }
  }
  return false;
}

function statementChangesTables(stmt: Record<string, unknown>): boolean {
  const type = Object.keys(stmt)[0];
  const body = stmt[type] as Record<string, unknown>;
  // SELECT ... INTO creates a table; EXPLAIN ANALYZE runs its statement.
  if (type === "SelectStmt") return body.intoClause !== undefined;
  if (type === "ExplainStmt") return statementChangesTables(body.query as Record<string, unknown>);
  return !KEEPS_TABLES.has(type);
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** A literal that reads the same whatever standard_conforming_strings is. */
function quoteLiteral(value: string): string {
  return `E'${value.replaceAll("\\", "\\\\").replaceAll("'", "''")}'`;
}
