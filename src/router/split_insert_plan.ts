/**
 * The plan of a split multi-row INSERT (see split_insert.ts), as routing decisions carry it.
 *
 * @module
 */

/** One shard's INSERT. */
export interface SplitInsertStatement {
  shard: number;
  /** The statement, its parameters numbered $1..$n. */
  sql: string;
  /** For each parameter of `sql` ($1 first): the client's parameter number (1-based). */
  params: number[];
  /** The client's VALUES rows it inserts (0-based), in order. */
  rows: number[];
}

/** A multi-row INSERT split by shard. */
export interface SplitInsertPlan {
  /** The table written (for messages). */
  table: string;
  /** One statement per shard, ascending by shard. */
  statements: SplitInsertStatement[];
  /** The INSERT has a RETURNING list: rows come back and are put in VALUES order. */
  returning: boolean;
  /** The number of rows of the client's VALUES list. */
  rowCount: number;
}
