/**
 * A pgdog plugin that routes each statement to its tenant's shard. The tenant comes from a
 * comment in the query (`/* tenant: acme *\/`, or sqlcommenter's `/* tenant='acme' *\/`), or
 * else from the connection's `application_name` (`tenant:acme`). The `tenants` table maps tenant
 * names to shards.
 *
 * @example pgdog.toml
 * ```toml
 * [[plugins]]
 * name = "tenant_router"
 * path = "./plugins/tenant_router/mod.ts"
 * config = { tenants = { acme = 0, globex = 1, initech = 1 }, require_tenant = true }
 * ```
 *
 * @module
 */

import {
  definePlugin,
  type Plugin,
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

/** A shard number (0-based), or `"all"` for every shard. */
export type TenantShard = number | "all";

/** The `config` table of the plugin's `[[plugins]]` entry. */
export interface TenantRouterConfig {
  /** Tenant name to shard. Names compare exactly (case matters). */
  tenants: Record<string, TenantShard>;
  /**
   * How `application_name` names the tenant: `"prefix"` (default) reads `tenant:<name>`,
   * `"exact"` takes the whole value as the tenant's name, `"off"` ignores it.
   */
  application_name?: "prefix" | "exact" | "off";
  /** The shard of statements that name no tenant. Unset: pgdog decides. */
  default?: TenantShard;
  /**
   * Refuse statements that name a table but no tenant, or an unknown tenant (default false).
   * Cannot be combined with `default`.
   */
  require_tenant?: boolean;
}

interface Settings {
  tenants: Map<string, TenantShard>;
  applicationName: "prefix" | "exact" | "off";
  fallback?: TenantShard;
  required: boolean;
}

let settings: Settings = { tenants: new Map(), applicationName: "prefix", required: false };

const APP_PREFIX = "tenant:";
const MAYBE = /tenant/i;
const IN_COMMENT = /\btenant\s*[:=]\s*(?:'([^']*)'|"([^"]*)"|([A-Za-z0-9_.-]+))/gi;

function fail(message: string): never {
  throw new Error(`tenant_router: ${message}`);
}

function parseShard(value: unknown, where: string): TenantShard {
  if (value === "all" || (Number.isSafeInteger(value) && (value as number) >= 0)) {
    return value as TenantShard;
  }
  return fail(`${where} must be a shard number (0 or more) or "all", got ${JSON.stringify(value)}`);
}

function parseConfig(config: unknown): Settings {
  if (typeof config !== "object" || config === null) fail("config.tenants is required");
  const c = config as Record<string, unknown>;
  if (typeof c.tenants !== "object" || c.tenants === null || Array.isArray(c.tenants)) {
    fail("config.tenants must be a table of tenant names to shards, e.g. { acme = 0 }");
  }
  const tenants = new Map<string, TenantShard>();
  for (const [name, shard] of Object.entries(c.tenants)) {
    tenants.set(name, parseShard(shard, `config.tenants.${name}`));
  }
  const mode = c.application_name ?? "prefix";
  if (mode !== "prefix" && mode !== "exact" && mode !== "off") {
    fail(`config.application_name must be "prefix", "exact" or "off", got ${JSON.stringify(mode)}`);
  }
  const required = c.require_tenant ?? false;
  if (typeof required !== "boolean") fail("config.require_tenant must be true or false");
  const fallback = c.default === undefined ? undefined : parseShard(c.default, "config.default");
  if (required && fallback !== undefined) {
    fail("config.default and config.require_tenant = true cannot be combined");
  }
  return { tenants, applicationName: mode, fallback, required };
}

/**
 * The tenant names in the block comments of `sql`, in order. Strings, quoted identifiers, dollar
 * quotes and line comments are skipped, so text inside a literal never names a tenant.
 */
function commentTenants(sql: string): string[] {
  const found: string[] = [];
  const n = sql.length;
  let i = 0;
  while (i < n) {
    const c = sql[i];
    if (c === "'" || c === '"') {
      // E'...' strings allow backslash escapes; elsewhere a doubled quote is the only escape.
      const escapes = c === "'" && i > 0 && (sql[i - 1] === "E" || sql[i - 1] === "e") &&
        (i < 2 || !/[A-Za-z0-9_$]/.test(sql[i - 2]));
      i++;
      while (i < n) {
        if (escapes && sql[i] === "\\") i += 2;
        else if (sql[i] === c) {
          if (sql[i + 1] === c) i += 2;
          else break;
        } else i++;
      }
      i++;
    } else if (c === "-" && sql[i + 1] === "-") {
      const end = sql.indexOf("\n", i);
      i = end < 0 ? n : end + 1;
    } else if (c === "/" && sql[i + 1] === "*") {
      const start = i + 2;
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (sql[i] === "/" && sql[i + 1] === "*") {
          depth++;
          i += 2;
        } else if (sql[i] === "*" && sql[i + 1] === "/") {
          depth--;
          i += 2;
        } else i++;
      }
      if (depth > 0) break; // unterminated: not a comment PostgreSQL would accept
      for (const m of sql.slice(start, i - 2).matchAll(IN_COMMENT)) {
        found.push(m[1] ?? m[2] ?? m[3]);
      }
    } else if (c === "$" && (i === 0 || !/[A-Za-z0-9_$]/.test(sql[i - 1]))) {
      const tag = /^\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/.exec(
        sql.slice(i, i + 64),
      );
      if (tag === null) {
        i++;
        continue;
      }
      const end = sql.indexOf(tag[0], i + tag[0].length);
      i = end < 0 ? n : end + tag[0].length;
    } else i++;
  }
  return found;
}

function applicationTenant(name: string): string | null {
  switch (settings.applicationName) {
    case "prefix":
      return name.startsWith(APP_PREFIX) && name.length > APP_PREFIX.length
        ? name.slice(APP_PREFIX.length).trim()
        : null;
    case "exact":
      return name === "" ? null : name;
    default:
      return null;
  }
}

/**
 * The plugin. `init` reads {@linkcode TenantRouterConfig}; `route` answers `{ shard }` for a
 * statement whose tenant is configured, `{ block }` when it must refuse it, nothing otherwise.
 */
const plugin: Plugin<TenantRouterConfig> = definePlugin<TenantRouterConfig>({
  apiVersion: "1.1.0",
  // Reads the query text, tables and application_name, never the parse tree; the answer follows
  // from those (and the cluster's shape), so pgdog may keep it per text and application_name.
  parseTree: false,
  cacheRoute: true,
  init(config: TenantRouterConfig): void {
    settings = parseConfig(config);
  },
  route(ctx: RouteContext): RouteAnswer | undefined {
    const query = typeof ctx?.query === "string" ? ctx.query : "";
    const named = MAYBE.test(query) ? [...new Set(commentTenants(query))] : [];
    if (named.length > 1) {
      return {
        block: `the query names ${named.length} tenants (${
          named.map((t) => `"${t}"`).join(", ")
        })` +
          `; the tenant_router plugin routes each query to one tenant`,
      };
    }
    let tenant: string | null = named[0] ?? null;
    let source = "a tenant comment";
    if (tenant === null && typeof ctx.applicationName === "string") {
      tenant = applicationTenant(ctx.applicationName);
      source = "application_name";
    }
    const namesTables = Array.isArray(ctx.tables) && ctx.tables.length > 0;
    if (tenant === null) {
      if (settings.fallback !== undefined) return { shard: settings.fallback };
      if (settings.required && namesTables) {
        return {
          block: `no tenant given; add a /* tenant: <name> */ comment or connect with ` +
            `application_name 'tenant:<name>' (the tenant_router plugin requires one)`,
        };
      }
      return undefined;
    }
    const shard = settings.tenants.get(tenant);
    if (shard === undefined) {
      return settings.required && namesTables
        ? {
          block: `unknown tenant "${tenant}" (from ${source}); the tenant_router plugin has no ` +
            `shard for it`,
        }
        : undefined;
    }
    const shards = ctx.cluster?.shards;
    if (typeof shard === "number" && typeof shards === "number" && shard >= shards) {
      return {
        block: `tenant "${tenant}" maps to shard ${shard}, but database "${ctx.database}" has ` +
          `${shards} shard${shards === 1 ? "" : "s"} (tenant_router plugin configuration)`,
      };
    }
    return { shard };
  },
});

export default plugin;
