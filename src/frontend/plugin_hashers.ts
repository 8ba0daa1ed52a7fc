/**
 * Asking plugin hashers (`hasher = "plugin:<name>"`) for the shards of the keys routing could not
 * place itself: one call per distinct key, a bounded number at a time. Routing, split writes,
 * INSERT ... SELECT and COPY all ask through here, so a key gets the same shard on every path.
 *
 * @module
 */

import type { PluginSet } from "../plugin/mod.ts";
import { pluginKey, type ShardLookup } from "../router/shard_keys.ts";

/** Calls in flight at once: a COPY of many distinct keys must not flood the plugins' queues. */
const BATCH = 256;

/**
 * Asks the plugins for every key in `lookup.missing`; their answers go into
 * `lookup.pluginShards` (so deciding again places those keys) and `missing` is emptied. Throws
 * when a plugin fails or none is running.
 */
export async function askPluginHashers(
  plugins: PluginSet | null,
  lookup: ShardLookup,
  options: { shards: number; database: string },
): Promise<void> {
  if (plugins === null) throw new Error("no plugins are running");
  const asks = new Map<string, ShardLookup["missing"][number]>();
  for (const m of lookup.missing) asks.set(pluginKey(m.plugin, m.value), m);
  lookup.missing = [];
  const all = [...asks];
  for (let i = 0; i < all.length; i += BATCH) {
    await Promise.all(
      all.slice(i, i + BATCH).map(async ([key, m]) => {
        const shard = await plugins.shard(m.plugin, m.value, {
          table: m.spec.name,
          column: m.spec.column,
          dataType: m.spec.type,
          shards: options.shards,
          database: options.database,
        });
        lookup.pluginShards.set(key, shard);
      }),
    );
  }
}
