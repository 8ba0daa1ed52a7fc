/**
 * A sharding function for pgdog: tables configured with `hasher = "plugin:modulo_sharding"` put
 * integer keys on shard `key mod shards` (the non-negative remainder) and text and UUID keys on
 * shard `FNV-1a(key) mod shards`.
 *
 * - `bigint` keys: the text is a decimal integer, optionally signed, of any size (it is not
 *   limited to 64 bits). `-1` with 4 shards goes to shard 3, not -1.
 * - `varchar` keys: 32-bit FNV-1a of the key's UTF-8 bytes, as an unsigned number, mod shards.
 * - `uuid` keys: the UUID is first put in its canonical form (lower case, `8-4-4-4-12`), so every
 *   spelling PostgreSQL accepts for the same UUID (upper case, braces, no hyphens) lands on the
 *   same shard; then as for `varchar`.
 *
 * A key that is not valid for its type makes the hook throw an Error; pgdog then applies the
 * plugin's `on_error` setting.
 *
 * @example pgdog.toml
 * ```toml
 * [[plugins]]
 * name = "modulo_sharding"
 * path = "./plugins/modulo_sharding/mod.ts"
 *
 * [[sharded_tables]]
 * database = "app"
 * name = "users"
 * column = "id"
 * hasher = "plugin:modulo_sharding"
 * ```
 *
 * @module
 */

import { definePlugin, type Plugin, type ShardContext } from "@pgdog/pgdog/plugin";

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

const INTEGER = /^[+-]?[0-9]+$/;
const encoder = new TextEncoder();

/** 32-bit FNV-1a of the bytes, as an unsigned integer. */
function fnv1a32(bytes: Uint8Array): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    hash ^= bytes[i];
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/**
 * The canonical form of a UUID, or null. Accepts what PostgreSQL accepts on input: upper or lower
 * case, optional braces around the whole, and hyphens after any group of four hex digits.
 */
function canonicalUuid(text: string): string | null {
  let s = text.trim();
  if (s.startsWith("{") && s.endsWith("}")) s = s.slice(1, -1);
  let hex = "";
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "-") {
      // A hyphen only after a whole group of four digits, never twice in a row, never last.
      if (hex.length === 0 || hex.length % 4 !== 0 || s[i - 1] === "-" || i === s.length - 1) {
        return null;
      }
    } else if (/[0-9a-fA-F]/.test(c)) {
      hex += c.toLowerCase();
    } else {
      return null;
    }
  }
  if (hex.length !== 32) return null;
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${
    hex.slice(20)
  }`;
}

function describe(ctx: ShardContext): string {
  return ctx.table ? `${ctx.table}.${ctx.column}` : ctx.column;
}

/**
 * The plugin: `shard(key, ctx)` only; it takes no configuration.
 */
const plugin: Plugin = definePlugin({
  apiVersion: "1.1.0",
  // The shard follows from the key and the shard count alone: pgdog may keep it per key.
  cacheShard: true,
  shard(key: string, ctx: ShardContext): number {
    const shards = ctx?.shards;
    if (!Number.isSafeInteger(shards) || shards < 1) {
      throw new Error(`modulo_sharding: the shard count must be a positive integer, got ${shards}`);
    }
    if (typeof key !== "string") {
      throw new Error(`modulo_sharding: the key of ${describe(ctx)} is not text`);
    }
    switch (ctx.dataType) {
      case "bigint": {
        const text = key.trim();
        if (!INTEGER.test(text)) {
          throw new Error(
            `modulo_sharding: ${JSON.stringify(key)} is not an integer ` +
              `(${describe(ctx)} is a bigint column)`,
          );
        }
        const n = BigInt(shards);
        return Number(((BigInt(text) % n) + n) % n);
      }
      case "uuid": {
        const uuid = canonicalUuid(key);
        if (uuid === null) {
          throw new Error(
            `modulo_sharding: ${JSON.stringify(key)} is not a UUID ` +
              `(${describe(ctx)} is a uuid column)`,
          );
        }
        return fnv1a32(encoder.encode(uuid)) % shards;
      }
      case "varchar":
        return fnv1a32(encoder.encode(key)) % shards;
      default:
        throw new Error(
          `modulo_sharding: unknown data type ${JSON.stringify(ctx.dataType)} for ${describe(ctx)}`,
        );
    }
  },
});

export default plugin;
