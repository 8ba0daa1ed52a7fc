/**
 * The pools the configuration describes: one {@linkcode Cluster} per (user, database) pair in
 * users.toml, its shards and hosts built from the `[[databases]]` entries of that name, and a
 * monitor per shard for health, bans, replica lag and role detection.
 *
 * @module
 */

import type { Config, DatabaseConfig, PoolerMode, UserConfig } from "../config/types.ts";
import { resolvePoolSettings } from "../config/pool_settings.ts";
import { Pool } from "./pool.ts";
import { type BalancerSettings, Cluster, Shard, Target } from "./cluster.ts";
import { type MonitorSettings, ShardMonitor } from "./monitor.ts";
import type { ServerTls } from "./connect.ts";
import { shardingConfigFor } from "../router/shard.ts";

export { Cluster, Shard, Target } from "./cluster.ts";

function clusterKey(user: string, database: string): string {
  return `${user}\u0000${database}`;
}

/** Load-balancing settings from `[general]`. */
export function balancerSettings(config: Config): BalancerSettings {
  const g = config.general;
  return {
    strategy: g.load_balancing_strategy,
    split: g.read_write_split,
    banTimeout: g.ban_timeout,
    checkoutTimeout: g.checkout_timeout,
    healthcheckInterval: g.healthcheck_interval,
    healthcheckTimeout: g.healthcheck_timeout,
  };
}

/** Monitor settings from `[general]`. */
export function monitorSettings(config: Config): MonitorSettings {
  const g = config.general;
  return {
    idleHealthcheckInterval: g.idle_healthcheck_interval,
    idleHealthcheckDelay: g.idle_healthcheck_delay,
    healthcheckTimeout: g.healthcheck_timeout,
    banTimeout: g.ban_timeout,
    lsnCheckInterval: g.lsn_check_interval,
    lsnCheckTimeout: g.lsn_check_timeout,
    lsnCheckDelay: g.lsn_check_delay,
    banReplicaLag: g.ban_replica_lag,
    banReplicaLagBytes: g.ban_replica_lag_bytes,
  };
}

/** All clusters and pools built from a configuration. */
export class Databases {
  readonly #clusters = new Map<string, Cluster>();
  readonly #names = new Set<string>();
  readonly #monitors: ShardMonitor[] = [];

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
    const balance = balancerSettings(config);
    const monitor = monitorSettings(config);
    for (const user of config.users) {
      const entries = byName.get(user.database);
      if (!entries) continue;
      const cluster = buildCluster(config, { user, entries, balance, tls: options.serverTls });
      this.#clusters.set(clusterKey(user.name, user.database), cluster);
      for (const shard of cluster.shards) this.#monitors.push(new ShardMonitor(shard, monitor));
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

  /** Every shard monitor. */
  get monitors(): readonly ShardMonitor[] {
    return this.#monitors;
  }

  /** Starts the background checks. */
  startMonitors(): void {
    for (const m of this.#monitors) m.start();
  }

  /** Periodic upkeep of every pool. */
  maintain(now: number): void {
    for (const c of this.#clusters.values()) for (const p of c.pools()) p.maintain(now);
  }

  /** Stops the checks and closes every pool. */
  close(): void {
    for (const m of this.#monitors) m.stop();
    for (const p of this.pools()) p.close();
  }
}

function buildCluster(
  config: Config,
  options: {
    user: UserConfig;
    entries: DatabaseConfig[];
    balance: BalancerSettings;
    tls: ServerTls | undefined;
  },
): Cluster {
  const { user, entries, balance, tls } = options;
  const shardCount = Math.max(...entries.map((e) => e.shard)) + 1;
  const targets: Target[][] = Array.from({ length: shardCount }, () => []);
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
    targets[database.shard].push(
      new Target({ pool, role: database.role, weight: database.lb_weight }),
    );
  }
  const shards: Shard[] = [];
  targets.forEach((list, n) => {
    if (list.length === 0) return;
    // Fixed roles: the first primary entry is the primary, any other one serves as a replica.
    if (!list.every((t) => t.configuredRole === "auto")) {
      let seen = false;
      for (const t of list) {
        if (t.configuredRole === "replica") t.role = "replica";
        else if (t.configuredRole === "primary" && !seen) {
          t.role = "primary";
          seen = true;
        } else t.role = "replica";
      }
    } else {
      // Roles are detected; until the first check, nobody is primary.
      for (const t of list) t.role = "replica";
    }
    shards.push(new Shard(n, list));
  });
  return new Cluster({
    name: user.database,
    user: user.name,
    password: user.password,
    poolerMode: poolerMode ?? config.general.pooler_mode,
    shards,
    settings: balance,
    sharding: shards.length > 1
      ? shardingConfigFor(config, user.database, { shards: shards.length })
      : null,
  });
}
