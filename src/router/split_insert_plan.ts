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
  /** The command tag the client gets (with the rows summed); `INSERT 0` when absent. */
  tag?: string;
  /** The shard whose row description the client gets (the first shard's when absent). */
  describedBy?: number;
  /**
   * The statements hold values written in (literals, ids, a moved row): each runs once, as the
   * unnamed statement, rather than prepared for reuse.
   */
  oneOff?: boolean;
}

/** An UPDATE that moves a row to the shard of its new sharding key (see key_update.ts). */
export interface KeyUpdatePlan {
  /** The table written (for messages). */
  table: string;
  /** The row's shard now, and the shard of its new key. */
  from: number;
  to: number;
  /** On the old shard: `ctid::text` and the row as json text of the rows matched, FOR UPDATE. */
  selectSql: string;
  /** For each parameter of `selectSql` ($1 first): the client's parameter number. */
  selectParams: number[];
  /** The table, quoted (schema-qualified when the client wrote it so). */
  relation: string;
  /** The name the client's expressions use for the table (its alias, or its name). */
  alias: string;
  /** The client's SET expressions as SQL, by column (parameters numbered as `insertParams`). */
  set: Record<string, string>;
  /** The client's RETURNING list as SQL, or null. */
  returning: string | null;
  /** For each parameter of the new shard's INSERT ($1 first): the client's parameter number. */
  insertParams: number[];
}
