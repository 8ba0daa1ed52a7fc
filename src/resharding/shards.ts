/**
 * The shards of a database as resharding reaches them: each shard's primary (and replicas) as a
 * login for the resharding user (`[[users]] schema_admin = true` of that database, else its first
 * user), and the database's routing view (the same {@linkcode ShardingConfig} the router uses).
 *
 * @module
 */

import type { Config, UserConfig } from "../config/types.ts";
import type { ServerLogin, ServerTls } from "../backend/connect.ts";
import { resolvePoolSettings } from "../config/pool_settings.ts";
import { type ShardingConfig, shardingConfigFor } from "../router/shard.ts";

/** One shard of a database. */
export interface ShardHost {
  shard: number;
  /** Its primary, logged in as the resharding user. */
  primary: ServerLogin;
  /** Its replicas (copies may read from them). */
  replicas: ServerLogin[];
}

/** A database (a `[[databases]]` name) as resharding sees it. */
export interface ReshardingDatabase {
  name: string;
  /** The user resharding connects as. */
  user: string;
  /** By shard number. */
  shards: ShardHost[];
  /** How rows are placed on its shards (as the router places them). */
  sharding: ShardingConfig;
}

/** A resharding request that cannot run as configured (told to the operator as it is). */
export class ReshardingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReshardingError";
  }
}

/** The resharding view of database `name` in `config`; throws ReshardingError when unusable. */
export function reshardingDatabase(
  config: Config,
  name: string,
  options: { tls?: ServerTls } = {},
): ReshardingDatabase {
  const entries = config.databases.filter((d) => d.name === name);
  if (entries.length === 0) {
    const names = [...new Set(config.databases.map((d) => d.name))].join(", ");
    throw new ReshardingError(`no [[databases]] entry is named "${name}" (configured: ${names})`);
  }
  const users = config.users.filter((u) => u.database === name);
  const user: UserConfig | undefined = users.find((u) => u.schema_admin) ?? users[0];
  if (!user) {
    throw new ReshardingError(
      `no [[users]] entry for database "${name}" in users.toml: resharding connects as its ` +
        "schema_admin user (or its first user)",
    );
  }
  const count = Math.max(...entries.map((e) => e.shard)) + 1;
  const shards: ShardHost[] = [];
  for (let shard = 0; shard < count; shard++) {
    const own = entries.filter((e) => e.shard === shard);
    const primary = own.find((e) => e.role === "primary") ?? own.find((e) => e.role === "auto");
    if (!primary) {
      throw new ReshardingError(`database "${name}" has no primary for shard ${shard}`);
    }
    const login = (e: typeof primary): ServerLogin => {
      const settings = resolvePoolSettings(config, { database: e, user });
      return {
        host: e.host,
        port: e.port,
        database: e.database_name,
        user: settings.server_user,
        password: settings.server_password,
        tls: options.tls,
      };
    };
    shards.push({
      shard,
      primary: login(primary),
      replicas: own.filter((e) => e !== primary && e.role === "replica").map(login),
    });
  }
  return {
    name,
    user: user.name,
    shards,
    sharding: shardingConfigFor(config, name, { shards: count }),
  };
}

/** Whether two logins reach the same database (host, port and database name). */
export function sameDatabase(a: ServerLogin, b: ServerLogin): boolean {
  return a.host === b.host && a.port === b.port && a.database === b.database;
}

/**
 * For each destination shard, the source shard that is the same database (growing in place:
 * its rows are already there), or -1 for a new database.
 */
export function sharedShards(
  source: ReshardingDatabase,
  destination: ReshardingDatabase,
): number[] {
  return destination.shards.map((d) => {
    const s = source.shards.find((s) => sameDatabase(s.primary, d.primary));
    return s === undefined ? -1 : s.shard;
  });
}
