/**
 * Where a row of a table belongs on the destination: the same rules the router uses
 * ({@linkcode tableSpec}, {@linkcode valueShard}, plugin hashers asked in batches through
 * askPluginHashers), so a row copied or replicated lands where a client's INSERT of it would.
 *
 * @module
 */

import type { PluginSet } from "../plugin/mod.ts";
import { askPluginHashers } from "../frontend/plugin_hashers.ts";
import {
  isOmni,
  isSharded,
  type ShardedTable,
  type ShardLookup,
  tableSpec,
  valueShard,
} from "../router/shard_keys.ts";
import { type ReshardingDatabase, ReshardingError } from "./shards.ts";

/** How a table's rows are placed: by a key column, or on every shard. */
export type TablePlacement =
  | { kind: "sharded"; spec: ShardedTable; /** The key's index in `columns`. */ column: number }
  | { kind: "all" };

/** A table by schema and name (as the catalog spells them). */
export interface TableName {
  schema: string;
  name: string;
}

/**
 * How `table` (with `columns`, in the order rows carry them) is placed in `db`: sharded when the
 * router treats it as sharded and it has the key column; every shard otherwise (omnisharded or
 * unlisted tables, as the router writes them).
 */
export function tablePlacement(
  db: ReshardingDatabase,
  options: { table: TableName; columns: readonly string[] },
): TablePlacement {
  const t = { schema: options.table.schema, name: options.table.name };
  if (isOmni(t, db.sharding) || !isSharded(t, db.sharding)) return { kind: "all" };
  const spec = tableSpec(t, db.sharding);
  if (!spec) return { kind: "all" };
  const column = options.columns.indexOf(spec.column);
  if (column < 0) {
    if (spec.name === undefined) return { kind: "all" };
    throw new ReshardingError(
      `table ${t.schema}.${t.name} is sharded by ${spec.column} in "${db.name}", but has no ` +
        "such column",
    );
  }
  return { kind: "sharded", spec, column };
}

/** Answers of plugin hashers kept at most (cleared beyond). */
const PLUGIN_ANSWERS = 100_000;

/** Places key values on the shards of one database. */
export class RowPlacer {
  readonly #db: ReshardingDatabase;
  readonly #plugins: PluginSet | null;
  readonly #lookup: ShardLookup = { found: [], pluginShards: new Map(), missing: [] };

  constructor(db: ReshardingDatabase, options: { plugins: PluginSet | null }) {
    this.#db = db;
    this.#plugins = options.plugins;
  }

  /** A placer for another database, asking the same plugin hashers. */
  forDatabase(db: ReshardingDatabase): RowPlacer {
    return new RowPlacer(db, { plugins: this.#plugins });
  }

  /** The shard count. */
  get shards(): number {
    return this.#db.shards.length;
  }

  /**
   * The shard of each key (PostgreSQL's text form), in order. A NULL key has no hash: its row
   * goes to shard 0, so it is kept (and found by a query for NULL keys, which runs everywhere).
   * Throws ReshardingError for a value no rule places.
   */
  async shardsOf(spec: ShardedTable, keys: readonly (string | null)[]): Promise<Int32Array> {
    const out = new Int32Array(keys.length);
    const lookup = this.#lookup;
    const options = { shards: this.#db.shards.length, lookup };
    const value = { text: null as string | null, binary: null };
    for (let pass = 0; pass < 2; pass++) {
      lookup.missing.length = 0;
      for (let i = 0; i < keys.length; i++) {
        const text = keys[i];
        if (text === null) {
          out[i] = 0;
          continue;
        }
        value.text = text;
        lookup.found.length = 0;
        const shard = valueShard(value, spec, options);
        if (shard === null || shard < 0 || shard >= options.shards) {
          throw new ReshardingError(
            `no shard of "${this.#db.name}" for ${spec.column} = ${JSON.stringify(text)} ` +
              `(a value of type ${spec.type} that a mapping rule or the hash places)`,
          );
        }
        out[i] = shard;
      }
      if (lookup.missing.length === 0) return out;
      if (pass === 1) break;
      if (lookup.pluginShards.size > PLUGIN_ANSWERS) lookup.pluginShards.clear();
      await askPluginHashers(this.#plugins, lookup, {
        shards: options.shards,
        database: this.#db.name,
      });
    }
    throw new ReshardingError("a plugin hasher gave no shard");
  }
}
