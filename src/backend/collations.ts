/**
 * What the cross-shard merge needs to compare text as the shards do, read from shard 0's
 * catalog once per cluster: the table columns declared with a collation of their own (see
 * src/cross_shard/column_collations.ts), forgotten with the column orders after DDL through
 * pgdog and on RELOAD.
 *
 * @module
 */

import type { Cluster } from "./cluster.ts";
import { ClientFacingError } from "./pool.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { errorMessage } from "../log.ts";
import { type ColumnCollations, columnKey } from "../cross_shard/column_collations.ts";
import type { Collation } from "../cross_shard/values.ts";
import { learnCollation } from "./catalog.ts";

/** The cached answer, with the column-order generation it was read in. */
const cache = new WeakMap<Cluster, { generation: number; columns: ColumnCollations }>();

const SQL = "SELECT a.attrelid::int8::text, a.attnum::text, c.collprovider::text, " +
  "c.collcollate, c.colliculocale, c.collname FROM pg_catalog.pg_attribute a " +
  "JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation " +
  "WHERE a.attcollation NOT IN (0, 100) AND a.attnum > 0 AND NOT a.attisdropped " +
  "AND a.attrelid >= 16384";

/**
 * The table columns of the database that have a collation other than the default, by table and
 * column: an ICU collation as `<locale>-x-icu`, a libc C or POSIX one as `C`, any other by its
 * own name (the merge refuses those). Throws ClientFacingError when the catalog can't be read.
 */
export async function learnColumnCollations(
  cluster: Cluster,
  options: { timeoutMs: number },
): Promise<ColumnCollations> {
  const generation = cluster.columns.generation;
  const known = cache.get(cluster);
  if (known !== undefined && known.generation === generation) return known.columns;
  let result;
  try {
    const server = await cluster.checkout("primary", { shard: 0 });
    try {
      result = await server.query(SQL, { timeoutMs: options.timeoutMs });
    } finally {
      server.owner?.checkin(server);
    }
  } catch (e) {
    const fields = e instanceof ClientFacingError ? e.fields : null;
    throw failed(fields?.message ?? errorMessage(e));
  }
  if (result.error !== null) throw failed(result.error.message);
  const columns = new Map<string, string>();
  for (const [table, attnum, provider, collate, icuLocale, name] of result.rows) {
    const collation = provider === "i" && icuLocale
      ? `${icuLocale}-x-icu`
      : provider === "c" && (collate === "C" || collate === "POSIX")
      ? "C"
      : name ?? "";
    columns.set(columnKey(Number(table), Number(attnum)), collation);
  }
  // Kept only if no DDL came while reading (it would have changed the generation).
  if (cluster.columns.generation === generation) cache.set(cluster, { generation, columns });
  return columns;
}

function failed(message: string): Error {
  return new ClientFacingError({
    severity: "ERROR",
    code: SqlState.ConnectionFailure,
    message: `pgdog could not read the columns' collations from shard 0: ${message}`,
  });
}

/**
 * How a merge of this cluster's shards compares text: the database's default collation and the
 * columns with their own. Throws ClientFacingError: the catalog can't be read, or (0A000) the
 * default collation is one pgdog can't compare by (a libc locale other than C).
 */
export async function mergeCollations(
  cluster: Cluster,
  options: { timeoutMs: number },
): Promise<{ collation: Collation; columns: ColumnCollations }> {
  const collation = await learnCollation(cluster, { held: null, timeoutMs: options.timeoutMs });
  if (collation === null) {
    throw new ClientFacingError({
      severity: "ERROR",
      code: SqlState.FeatureNotSupported,
      message: "a cross-shard query that needs merging is not supported on a database whose " +
        "default collation pgdog can't compare text by (a libc locale other than C)",
      hint: 'create the database with LOCALE "C" or an ICU locale, or route with ' +
        "/* pgdog_shard: N */",
    });
  }
  return { collation, columns: await learnColumnCollations(cluster, options) };
}
