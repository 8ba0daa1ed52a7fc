/**
 * The pools the configuration describes: one {@linkcode Cluster} per (user, database) pair in
 * users.toml, its shards and hosts built from the `[[databases]]` entries of that name, and a
 * monitor per shard for health, bans, replica lag and role detection.
 *
 * @module
 */

import type { Config, DatabaseConfig, PoolerMode, UserConfig } from "../config/types.ts";
import { resolvePoolSettings, type WorkerShare } from "../config/pool_settings.ts";
import { Pool } from "./pool.ts";
import { type BalancerSettings, Cluster, Shard, Target } from "./cluster.ts";
import { type MonitorSettings, ShardMonitor } from "./monitor.ts";
import type { ServerLogin, ServerTls } from "./connect.ts";
import { shardingConfigFor } from "../router/shard.ts";
import { ColumnOrders } from "../router/columns.ts";

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

/** A host's pool and where it sits: its cluster, shard number and target. */
export interface HostPlace {
  cluster: Cluster;
  shard: number;
  target: Target;
  pool: Pool;
}

/** All clusters and pools built from a configuration. */
export class Databases {
  readonly #clusters = new Map<string, Cluster>();
  readonly #names = new Set<string>();
  readonly #monitors: ShardMonitor[] = [];
  /** Each user's password, when its entries agree on one (null when they differ). */
  readonly #passwords = new Map<string, string | null>();

  /**
   * Builds clusters for every (user, database) pair in `config`; `serverTls` is how their server
   * connections use TLS (none when left out); `worker` makes every pool that worker's share.
   */
  constructor(
    config: Config,
    options: { serverTls?: ServerTls; previous?: Databases; worker?: WorkerShare } = {},
  ) {
    // On reload, hosts that keep their address and credentials keep their pool (and its server
    // connections, bans and detected role); their pool settings are updated in place.
    const reusable = new Map<string, Target>();
    if (options.previous) {
      for (const c of options.previous.clusters()) {
        for (const shard of c.shards) {
          for (const t of shard.targets) {
            reusable.set(targetKey(c.user, c.name, shard.number, t.pool.login), t);
          }
        }
      }
    }
    const byName = new Map<string, DatabaseConfig[]>();
    for (const db of config.databases) {
      this.#names.add(db.name);
      const list = byName.get(db.name);
      if (list) list.push(db);
      else byName.set(db.name, [db]);
    }
    const balance = balancerSettings(config);
    const monitor = monitorSettings(config);
    // One cache per database, whoever asks: DDL by one user changes the tables for all. A reload
    // starts empty caches.
    const columns = new Map<string, ColumnOrders>();
    for (const user of config.users) {
      if (user.password !== undefined) {
        const seen = this.#passwords.get(user.name);
        this.#passwords.set(
          user.name,
          seen === undefined || seen === user.password ? user.password : null,
        );
      }
      const entries = byName.get(user.database);
      if (!entries) continue;
      let orders = columns.get(user.database);
      if (orders === undefined) columns.set(user.database, orders = new ColumnOrders());
      const cluster = buildCluster(config, {
        user,
        entries,
        balance,
        tls: options.serverTls,
        reusable,
        worker: options.worker,
        columns: orders,
      });
      this.#clusters.set(clusterKey(user.name, user.database), cluster);
      for (const shard of cluster.shards) this.#monitors.push(new ShardMonitor(shard, monitor));
    }
    this.#retired = [...reusable.values()].map((t) => t.pool);
  }

  /** Pools of the previous configuration that this one dropped (a reload drains them). */
  #retired: Pool[] = [];

  /** Closes the pools the previous configuration had and this one doesn't; stops its monitors. */
  retire(previous: Databases): void {
    for (const m of previous.monitors) m.stop();
    for (const p of this.#retired) p.close();
    this.#retired = [];
  }

  /**
   * The password users.toml gives `user`, when all its entries (whatever their database) agree on
   * one: what a client naming a database that does not exist must prove before being told so.
   */
  passwordOf(user: string): string | undefined {
    return this.#passwords.get(user) ?? undefined;
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

  /** Every host of every cluster, with where it sits (admin, metrics, status page). */
  *hosts(): Generator<HostPlace> {
    for (const cluster of this.#clusters.values()) {
      for (const shard of cluster.shards) {
        for (const target of shard.targets) {
          yield { cluster, shard: shard.number, target, pool: target.pool };
        }
      }
    }
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

/** What identifies a host's pool across reloads. */
function targetKey(user: string, database: string, shard: number, login: ServerLogin): string {
  return [user, database, shard, login.host, login.port, login.database, login.user, login.password]
    .join("\u0000");
}

function buildCluster(
  config: Config,
  options: {
    user: UserConfig;
    entries: DatabaseConfig[];
    balance: BalancerSettings;
    tls: ServerTls | undefined;
    reusable: Map<string, Target>;
    worker: WorkerShare | undefined;
    columns: ColumnOrders;
  },
): Cluster {
  const { user, entries, balance, tls, reusable, worker } = options;
  const shardCount = Math.max(...entries.map((e) => e.shard)) + 1;
  const targets: Target[][] = Array.from({ length: shardCount }, () => []);
  let poolerMode: PoolerMode | null = null;
  for (const database of entries) {
    const settings = resolvePoolSettings(config, { database, user, worker });
    poolerMode ??= settings.pooler_mode;
    const login: ServerLogin = {
      host: database.host,
      port: database.port,
      database: database.database_name,
      user: settings.server_user,
      password: settings.server_password,
      tls,
    };
    const key = targetKey(user.name, user.database, database.shard, login);
    const old = reusable.get(key);
    reusable.delete(key);
    if (old && old.configuredRole === database.role && old.weight === database.lb_weight) {
      old.pool.config = settings;
      targets[database.shard].push(old);
      continue;
    }
    const pool = old?.pool ??
      new Pool({ database: user.database, user: user.name, login, config: settings });
    pool.config = settings;
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
      // Roles are detected; until the first check, nobody is primary (hosts kept by a reload
      // keep what was detected).
      for (const t of list) if (t.inRecovery === null) t.role = "replica";
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
      ? shardingConfigFor(config, user.database, {
        shards: shards.length,
        crossShardDisabled: user.cross_shard_disabled ?? config.general.cross_shard_disabled,
        rewrite: config.rewrite,
      })
      : null,
    columns: options.columns,
  });
}
