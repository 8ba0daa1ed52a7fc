/**
 * pgdog's plugin API: the types a routing plugin is written against, and the version they carry.
 * A plugin is a module that exports `apiVersion` and any of the hooks of {@linkcode Plugin}
 * (or a default export made with {@linkcode definePlugin}). pgdog runs it in a sandbox (its own
 * Deno process or a Worker) with only the permissions its `[[plugins]]` entry grants, and talks to
 * it with plain JSON: everything in a context is data, nothing is a live object.
 *
 * This module imports nothing, so a plugin's sandbox loads it without reading anything else.
 *
 * @example A plugin that sends reads of one table to the primary
 * ```ts
 * import { definePlugin } from "@pgdog/pgdog/plugin";
 *
 * export default definePlugin({
 *   apiVersion: "1.0.0",
 *   route(ctx) {
 *     if (!ctx.write && ctx.tables.some((t) => t.name === "orders")) return { role: "primary" };
 *   },
 * });
 * ```
 *
 * @module
 */

/**
 * The version of this API (semver). pgdog loads a plugin whose `apiVersion` has the same major
 * version and a minor version no newer than this one.
 */
export const API_VERSION = "1.2.0";

/** Which kind of host a statement runs on. */
export type Role = "primary" | "replica";

/** A table a statement names. */
export interface PluginTable {
  /** The schema, when the statement names one. */
  schema?: string;
  /** The table's name. */
  name: string;
}

/** A sharding key value found in the statement (WHERE col = value, INSERT VALUES, Bind values). */
export interface PluginShardingKey {
  /** The sharded table, when the configuration names one. */
  table?: string;
  /** The sharding column. */
  column: string;
  /** The value, as text. */
  value: string;
}

/** What a `route` hook is told about one statement. */
export interface RouteContext {
  /** The SQL text as the client sent it. */
  query: string;
  /**
   * PostgreSQL's parse tree of `query` (libpg-query's JSON: `{ version, stmts: [{ stmt }] }`), or
   * null when the text does not parse.
   */
  statement: { version: number; stmts: Array<Record<string, unknown>> } | null;
  /** The Bind parameters, as text (null for SQL NULL); empty for a simple query. */
  params: Array<string | null>;
  /** Tables named anywhere in the statement. */
  tables: PluginTable[];
  /** Sharding key values pgdog found (empty without sharding). */
  shardingKeys: PluginShardingKey[];
  /** The statement writes (or locks, or is not known to be a read). */
  write: boolean;
  /** A transaction is open on the client's connection. */
  inTransaction: boolean;
  /** The shape of the client's database. */
  cluster: { shards: number; replicas: boolean };
  /** What pgdog decided on its own: the role, and the shard (`"all"`, or null without sharding). */
  decision: { role: Role; shard: number | "all" | null };
  /** The client's user. */
  user: string;
  /** The client's database. */
  database: string;
  /** The client's application_name ("" when unset). */
  applicationName: string;
}

/**
 * A `route` hook's answer. Every field is optional; returning nothing (or null) keeps pgdog's own
 * decision. When several plugins answer, the first one (in `[[plugins]]` order) to set a field
 * decides that field.
 */
export interface RouteAnswer {
  /** Run on this shard (0-based), or on every shard (`"all"`). Ignored without sharding. */
  shard?: number | "all";
  /** Run on the primary or on a replica. */
  role?: Role;
  /** Refuse the statement: the client receives this message with SQLSTATE 42501. */
  block?: string;
  /** Run this SQL instead; pgdog parses and routes it again (other fields still apply). */
  rewrite?: string;
}

/** What a `shard` hook (a table with `hasher = "plugin:<name>"`) is told besides the key. */
export interface ShardContext {
  /** The table, when known. */
  table?: string;
  /** The sharding column. */
  column: string;
  /** The column's configured data type. */
  dataType: "bigint" | "varchar" | "uuid";
  /** The number of shards; the answer must be 0 to shards - 1. */
  shards: number;
  /** The database. */
  database: string;
}

/** Anything a hook may return, or a promise of it. */
export type MaybePromise<T> = T | Promise<T>;

/** A plugin's hooks. Every hook is optional and may be async. */
export interface Plugin<Config = Record<string, unknown>> {
  /** The API version the plugin was written for (e.g. "1.0.0"). */
  apiVersion: string;
  /**
   * False when `route` never reads `ctx.statement`: pgdog then sends null there and skips
   * parsing statements for this plugin (a simple query's literals make each text new). Default
   * true.
   */
  parseTree?: boolean;
  /**
   * True when `route`'s answer depends only on the statement's text (`ctx.query`, and what pgdog
   * derives from it), the user, the database, the application_name and the cluster's shape: not on
   * Bind parameters, the transaction, pgdog's decision or state of the plugin's own that changes.
   * pgdog then keeps answers (up to the entry's `cache_size`) and calls `route` only for a
   * combination it has not kept. Since API 1.1. Default false.
   *
   * `"shape"` (since API 1.2) says more: the answer does not depend on the statement's constants
   * or comments either, only on its shape (its kind, tables and clauses). pgdog then keeps one
   * answer for `... WHERE id = 1` and `... WHERE id = 2` (and `... WHERE id = $1`), so queries
   * that differ only in their values cost one call. A `rewrite` answer is never kept this way
   * (it is a text with the values of one statement); `block`, `role` and `shard` are.
   */
  cacheRoute?: boolean | "shape";
  /**
   * True when `shard`'s answer depends only on its arguments (the key, the table and column, the
   * data type, the shard count, the database), as a sharding function's must for rows to stay
   * findable, and never changes while the plugin runs: pgdog then keeps answers (up to the
   * entry's `cache_size`) and calls `shard` only for a key it has not kept. Since API 1.1.
   * Default false.
   */
  cacheShard?: boolean;
  /** Called once, before any other hook, with the plugin's `config` table. */
  init?(config: Config): MaybePromise<void>;
  /** Called for each statement pgdog routes. */
  route?(ctx: RouteContext): MaybePromise<RouteAnswer | null | undefined | void>;
  /** A sharding function: the shard (0 to ctx.shards - 1) of a key value given as text. */
  shard?(key: string, ctx: ShardContext): MaybePromise<number>;
  /** Called once when pgdog stops or replaces the plugin. */
  shutdown?(): MaybePromise<void>;
}

/**
 * Defines a plugin with full type checking; export the result as the module's default export.
 *
 * @param plugin The hooks and the API version they were written for.
 * @returns The same object.
 */
export function definePlugin<Config = Record<string, unknown>>(
  plugin: Plugin<Config>,
): Plugin<Config> {
  return plugin;
}

/**
 * Why a plugin written for `pluginVersion` cannot run on a host with `hostVersion`, or null when
 * it can: the major versions must match and the plugin's minor version must not be newer.
 *
 * @param pluginVersion The plugin's `apiVersion`.
 * @param hostVersion The host's version, {@linkcode API_VERSION} by default.
 * @returns A reason, or null.
 */
export function incompatibility(
  pluginVersion: unknown,
  hostVersion: string = API_VERSION,
): string | null {
  const parse = (v: unknown) => {
    const m = typeof v === "string" ? /^(\d+)\.(\d+)(?:\.(\d+))?(?:[-+].*)?$/.exec(v) : null;
    return m ? [Number(m[1]), Number(m[2])] : null;
  };
  const plugin = parse(pluginVersion);
  if (plugin === null) {
    return `its apiVersion ${JSON.stringify(pluginVersion ?? null)} is not a version ` +
      `(export apiVersion = "${hostVersion}")`;
  }
  const host = parse(hostVersion)!;
  if (plugin[0] !== host[0]) {
    return `it was written for plugin API ${pluginVersion}, pgdog has ${hostVersion} ` +
      `(major versions differ)`;
  }
  if (plugin[1] > host[1]) {
    return `it was written for plugin API ${pluginVersion}, newer than pgdog's ${hostVersion}`;
  }
  return null;
}
