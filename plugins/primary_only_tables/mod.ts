/**
 * A pgdog plugin that sends reads of some tables to the primary, for data that must be read right
 * after it is written (replication lag would show stale rows) or that replicas do not have.
 * Writes already go to the primary; this plugin only changes where reads go.
 *
 * @example pgdog.toml
 * ```toml
 * [[plugins]]
 * name = "primary_only_tables"
 * path = "./plugins/primary_only_tables/mod.ts"
 * config = { tables = ["orders", "billing.invoices"] }
 * ```
 *
 * @module
 */

import {
  definePlugin,
  type Plugin,
  type PluginTable,
  type RouteAnswer,
  type RouteContext,
} from "@pgdog/pgdog/plugin";

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

/** The `config` table of the plugin's `[[plugins]]` entry. */
export interface PrimaryOnlyTablesConfig {
  /**
   * The tables whose reads go to the primary. `"name"` matches the table in any schema;
   * `"schema.name"` matches only when the statement names that schema too. Names are compared
   * exactly, as PostgreSQL stores them: unquoted identifiers in lower case.
   */
  tables: string[];
}

/** Table name to the schemas listed for it; null in the set means "any schema". */
let tables = new Map<string, Set<string | null>>();

function parseTables(value: unknown): Map<string, Set<string | null>> {
  if (!Array.isArray(value)) {
    throw new Error("primary_only_tables: config.tables must be an array of table names");
  }
  const map = new Map<string, Set<string | null>>();
  for (const item of value) {
    if (typeof item !== "string" || item === "") {
      throw new Error(
        `primary_only_tables: config.tables must hold table names, got ${JSON.stringify(item)}`,
      );
    }
    const dot = item.lastIndexOf(".");
    const name = dot > 0 ? item.slice(dot + 1) : item;
    const schema = dot > 0 ? item.slice(0, dot) : null;
    if (!map.has(name)) map.set(name, new Set());
    map.get(name)!.add(schema);
  }
  return map;
}

function listed(table: PluginTable): boolean {
  const schemas = tables.get(table?.name);
  if (schemas === undefined) return false;
  return schemas.has(null) || (table.schema !== undefined && schemas.has(table.schema));
}

/**
 * The plugin. `init` reads {@linkcode PrimaryOnlyTablesConfig}; `route` answers
 * `{ role: "primary" }` for a read that names a listed table, and nothing otherwise.
 */
const plugin: Plugin<PrimaryOnlyTablesConfig> = definePlugin<PrimaryOnlyTablesConfig>({
  apiVersion: "1.2.0",
  // Reads ctx.tables and ctx.write only, never the parse tree: both follow from the statement's
  // shape, whatever its constants and comments, so pgdog may keep one answer per shape.
  parseTree: false,
  cacheRoute: "shape",
  init(config: PrimaryOnlyTablesConfig): void {
    tables = parseTables(
      typeof config === "object" && config !== null ? config.tables : undefined,
    );
  },
  route(ctx: RouteContext): RouteAnswer | undefined {
    if (ctx?.write !== false || !Array.isArray(ctx.tables)) return undefined;
    return ctx.tables.some(listed) ? { role: "primary" } : undefined;
  },
});

export default plugin;
