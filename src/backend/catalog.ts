/**
 * Reads what routing needs from a shard's catalog: the column order of a table that an INSERT
 * without a column list names (see `router/columns.ts`, which keeps the answers). Shard 0 answers,
 * on the server the client already holds there (so its own transaction's DDL and its session's
 * temporary tables count) or on one checked out for the query and checked in right after it.
 *
 * @module
 */

import type { Cluster } from "./cluster.ts";
import { ClientFacingError } from "./pool.ts";
import type { Server } from "./server.ts";
import type { TableRef } from "../router/mod.ts";
import {
  columnOrderKey,
  columnOrderSql,
  columnsFromRows,
  type NameContext,
} from "../router/columns.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { TxStatus } from "../protocol/messages.ts";
import { errorMessage } from "../log.ts";
import { type Collation, collationFor } from "../cross_shard/values.ts";
import { USER_AGGREGATES_SQL } from "../router/aggregates.ts";

/** What {@linkcode learnColumnOrders} needs to know about the client. */
export interface CatalogOptions extends NameContext {
  /** The client's cluster: its shard 0 answers, its cache keeps the answers. */
  cluster: Cluster;
  /** The client's own server on shard 0, when it holds one with nothing outstanding. */
  held: Server | null;
  /**
   * The client's open transaction has run DDL, or its session has temporary tables: the tables
   * its names resolve to may not be everyone's, so the cache is neither read nor written (and its
   * own server answers, when it holds shard 0).
   */
  ownTables: boolean;
  /** How long the catalog query may take before its server is closed. */
  timeoutMs: number;
}

/**
 * Reads the column orders of `tables` (from the cluster's cache or shard 0's catalog) for one
 * routing decision; returns where the decision finds them. Throws ClientFacingError: 42P01 for a
 * table that does not exist (as PostgreSQL would answer the INSERT), or why the catalog can't be
 * read.
 */
export async function learnColumnOrders(
  tables: TableRef[],
  options: CatalogOptions,
): Promise<(table: TableRef) => string[] | undefined> {
  const { cluster, ownTables } = options;
  // Kept here too: the cache may refuse an answer, and this decision needs it.
  const learned = new Map<string, string[]>();
  const known = (table: TableRef): string[] | undefined =>
    learned.get(columnOrderKey(table, options)) ??
      (ownTables ? undefined : cluster.columns.get(table, options));
  for (const table of tables) {
    if (known(table) !== undefined) continue;
    const columns = await readColumnOrder(table, options);
    if (columns === null) {
      throw new ClientFacingError({
        severity: "ERROR",
        code: SqlState.UndefinedTable,
        message: `relation "${describe(table)}" does not exist`,
      });
    }
    learned.set(columnOrderKey(table, options), columns);
  }
  return known;
}

/**
 * The columns of `table` in order, read from shard 0; null: no such table. What everyone would
 * read (committed tables, in a fresh snapshot: a pooled server, or the client's own outside a
 * transaction; not a temporary table) is kept in the cache.
 */
async function readColumnOrder(table: TableRef, options: CatalogOptions): Promise<string[] | null> {
  const { cluster, held, timeoutMs } = options;
  const cache = cluster.columns;
  const generation = cache.generation;
  const shared = !options.ownTables && (held === null || held.txStatus === TxStatus.Idle);
  let server = held;
  let result;
  try {
    server ??= await cluster.checkout("primary", { shard: 0 });
    try {
      result = await server.query(
        columnOrderSql(table, { searchPath: options.searchPath, ownTransaction: server !== held }),
        { timeoutMs },
      );
    } finally {
      if (server !== held) server.owner?.checkin(server);
    }
  } catch (e) {
    const fields = e instanceof ClientFacingError ? e.fields : null;
    throw lookupFailed(table, {
      code: fields?.code ?? SqlState.ConnectionFailure,
      message: fields?.message ?? errorMessage(e),
    });
  }
  if (result.error !== null) throw lookupFailed(table, result.error);
  const found = columnsFromRows(result.rows);
  if (found === null) return null;
  if (shared && !found.temporary) {
    cache.set(table, {
      user: options.user,
      searchPath: options.searchPath,
      columns: found.columns,
      generation,
    });
  }
  return found.columns;
}

function describe(table: TableRef): string {
  return table.schema !== undefined ? `${table.schema}.${table.name}` : table.name;
}

function lookupFailed(table: TableRef, cause: { code: string; message: string }): Error {
  return new ClientFacingError({
    severity: "ERROR",
    code: cause.code,
    message: `pgdog could not read the columns of table "${describe(table)}" on shard 0 (to ` +
      `route an INSERT without a column list): ${cause.message}`,
  });
}

/**
 * The names of the database's own aggregates and window functions (user-defined: outside
 * pg_catalog), from the cluster's cache or shard 0's catalog: the cross-shard rule must not run
 * them per shard (see router/aggregates.ts). Read as {@linkcode learnColumnOrders} reads (the
 * client's own server when it holds shard 0; kept only when everyone would read the same).
 * Throws ClientFacingError when the catalog can't be read.
 */
export async function learnAggregates(
  options: Pick<CatalogOptions, "cluster" | "held" | "ownTables" | "timeoutMs">,
): Promise<ReadonlySet<string>> {
  const { cluster, held, timeoutMs, ownTables } = options;
  const cache = cluster.columns;
  if (!ownTables && cache.aggregates !== undefined) return cache.aggregates;
  const generation = cache.generation;
  const shared = !ownTables && (held === null || held.txStatus === TxStatus.Idle);
  let result;
  try {
    const server = held ?? await cluster.checkout("primary", { shard: 0 });
    try {
      result = await server.query(USER_AGGREGATES_SQL, { timeoutMs });
    } finally {
      if (server !== held) server.owner?.checkin(server);
    }
  } catch (e) {
    const fields = e instanceof ClientFacingError ? e.fields : null;
    throw aggregatesFailed({
      code: fields?.code ?? SqlState.ConnectionFailure,
      message: fields?.message ?? errorMessage(e),
    });
  }
  if (result.error !== null) throw aggregatesFailed(result.error);
  const names: ReadonlySet<string> = new Set(
    result.rows.map((r) => r[0]).filter((n): n is string => n !== null),
  );
  if (shared) cache.setAggregates(names, generation);
  return names;
}

function aggregatesFailed(cause: { code: string; message: string }): Error {
  return new ClientFacingError({
    severity: "ERROR",
    code: cause.code,
    message: "pgdog could not read the database's aggregate functions on shard 0 (to route a " +
      `query across shards): ${cause.message}`,
  });
}

/**
 * The database's collation as the cross-shard merge compares text, read once per cluster from
 * shard 0's `pg_database` and kept on the cluster; null when pgdog can't compare text as that
 * collation does (a libc locale other than C). Throws ClientFacingError when it can't be read.
 */
export async function learnCollation(
  cluster: Cluster,
  options: { held: Server | null; timeoutMs: number },
): Promise<Collation | null> {
  if (cluster.collation !== undefined) return cluster.collation;
  const { held, timeoutMs } = options;
  let result;
  try {
    const server = held ?? await cluster.checkout("primary", { shard: 0 });
    try {
      result = await server.query(
        "SELECT datlocprovider::text, datcollate, daticulocale FROM pg_catalog.pg_database " +
          "WHERE datname = pg_catalog.current_database()",
        { timeoutMs },
      );
    } finally {
      if (server !== held) server.owner?.checkin(server);
    }
  } catch (e) {
    const fields = e instanceof ClientFacingError ? e.fields : null;
    throw collationFailed(fields?.message ?? errorMessage(e));
  }
  if (result.error !== null || result.rows.length !== 1) {
    throw collationFailed(result.error?.message ?? "no row for the database");
  }
  const [provider, collate, icuLocale] = result.rows[0];
  const collation = collationFor({
    provider: provider ?? "c",
    collate: collate ?? "",
    icuLocale: icuLocale ?? null,
  });
  cluster.collation = collation;
  return collation;
}

function collationFailed(message: string): Error {
  return new ClientFacingError({
    severity: "ERROR",
    code: SqlState.ConnectionFailure,
    message: `pgdog could not read the database's collation from shard 0: ${message}`,
  });
}
