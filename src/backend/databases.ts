/**
 * The pools the configuration describes. A cluster is what a client connects to: one user on one
 * logical database, made of shards, each with at most one primary and any number of replicas;
 * every (user, database, host) in it is a {@linkcode Pool}.
 *
 * @module
 */

import type { Config, DatabaseConfig, PoolerMode, UserConfig } from "../config/types.ts";
import { resolvePoolSettings } from "../config/pool_settings.ts";
import { Pool } from "./pool.ts";
import type { ServerTls } from "./connect.ts";

/** One shard of a cluster. */
export interface Shard {
  primary: Pool | null;
  replicas: Pool[];
}

/** One user on one logical database. */
export class Cluster {
  readonly name: string;
  readonly user: string;
  /** The password clients must present (users.toml). */
  readonly password: string | undefined;
  readonly poolerMode: PoolerMode;
  readonly shards: Shard[];

  constructor(
    options: {
      name: string;
      user: string;
      password?: string;
      poolerMode: PoolerMode;
      shards: Shard[];
    },
  ) {
    this.name = options.name;
    this.user = options.user;
    this.password = options.password;
    this.poolerMode = options.poolerMode;
    this.shards = options.shards;
  }

  /** The pool unrouted traffic uses: the first shard's primary, else its first replica. */
  pool(): Pool {
    const shard = this.shards[0];
    return shard.primary ?? shard.replicas[0];
  }

  /** Every pool of the cluster. */
  pools(): Pool[] {
    const out: Pool[] = [];
    for (const s of this.shards) {
      if (s.primary) out.push(s.primary);
      out.push(...s.replicas);
    }
    return out;
  }
}

function clusterKey(user: string, database: string): string {
  return `${user}\u0000${database}`;
}

/** All clusters and pools built from a configuration. */
export class Databases {
  readonly #clusters = new Map<string, Cluster>();
  readonly #names = new Set<string>();

  /**
   * Builds clusters for every (user, database) pair in `config`; `serverTls` is how their server
   * connections use TLS (none when left out).
   */
  constructor(config: Config, options: { serverTls?: ServerTls } = {}) {
    const byName = new Map<string, DatabaseConfig[]>();
    for (const db of config.databases) {
      this.#names.add(db.name);
      const list = byName.get(db.name);
      if (list) list.push(db);
      else byName.set(db.name, [db]);
    }
    for (const user of config.users) {
      const entries = byName.get(user.database);
      if (!entries) continue;
      this.#clusters.set(
        clusterKey(user.name, user.database),
        buildCluster(config, { user, entries, tls: options.serverTls }),
      );
    }
  }

  /** True when some `[[databases]]` entry has this name. */
  hasDatabase(name: string): boolean {
    return this.#names.has(name);
  }

  /** The cluster for a user on a database, if users.toml has that pair. */
  lookup(user: string, database: string): Cluster | undefined {
    return this.#clusters.get(clusterKey(user, database));
  }

  /** Every cluster. */
  clusters(): IterableIterator<Cluster> {
    return this.#clusters.values();
  }

  /** Every pool. */
  pools(): Pool[] {
    const out: Pool[] = [];
    for (const c of this.#clusters.values()) out.push(...c.pools());
    return out;
  }

  /** Periodic upkeep of every pool. */
  maintain(now: number): void {
    for (const c of this.#clusters.values()) for (const p of c.pools()) p.maintain(now);
  }

  /** Closes every pool. */
  close(): void {
    for (const p of this.pools()) p.close();
  }
}

function buildCluster(
  config: Config,
  options: { user: UserConfig; entries: DatabaseConfig[]; tls: ServerTls | undefined },
): Cluster {
  const { user, entries, tls } = options;
  const shardCount = Math.max(...entries.map((e) => e.shard)) + 1;
  const shards: Shard[] = Array.from(
    { length: shardCount },
    () => ({ primary: null, replicas: [] }),
  );
  let poolerMode: PoolerMode | null = null;
  for (const database of entries) {
    const settings = resolvePoolSettings(config, { database, user });
    poolerMode ??= settings.pooler_mode;
    const pool = new Pool({
      database: user.database,
      user: user.name,
      login: {
        host: database.host,
        port: database.port,
        database: database.database_name,
        user: settings.server_user,
        password: settings.server_password,
        tls,
      },
      config: settings,
    });
    const shard = shards[database.shard];
    if (database.role === "replica") shard.replicas.push(pool);
    else if (shard.primary === null) shard.primary = pool;
    else shard.replicas.push(pool);
  }
  return new Cluster({
    name: user.database,
    user: user.name,
    password: user.password,
    poolerMode: poolerMode ?? config.general.pooler_mode,
    shards: shards.filter((s) => s.primary !== null || s.replicas.length > 0),
  });
}
