/**
 * The settings of one pool (a user connected to one `[[databases]]` host), resolved from the
 * user, the database and `[general]`, in that order of precedence.
 *
 * @module
 */

import type { Config, DatabaseConfig, PoolerMode, UserConfig } from "./types.ts";

/** The resolved settings of one pool. Durations are milliseconds. */
export interface PoolSettings {
  /** Most server connections the pool opens. */
  pool_size: number;
  /** Server connections kept open even when idle; never more than `pool_size`. */
  min_pool_size: number;
  /** Pooling mode of the pool. */
  pooler_mode: PoolerMode;
  /** Login used on the PostgreSQL server. */
  server_user: string;
  /** Password used on the PostgreSQL server; undefined when none is configured. */
  server_password?: string;
  /** `[general]` idle_timeout: idle connections above `min_pool_size` close after this. */
  idle_timeout: number;
  /** `[general]` server_lifetime: connections close (when idle) at this age. */
  server_lifetime: number;
  /** `[general]` checkout_timeout: how long a client waits for a connection. */
  checkout_timeout: number;
  /** `[general]` connect_timeout: how long connecting and logging in may take. */
  connect_timeout: number;
  /** `[general]` rollback_timeout: how long cleaning a returned connection may take. */
  rollback_timeout: number;
}

/** The database host and user a pool is for. */
export interface PoolSettingsOptions {
  /** The `[[databases]]` entry (one host) of the pool. */
  database: DatabaseConfig;
  /** The `[[users]]` entry of the pool. */
  user: UserConfig;
  /** With `[general]` workers > 1: which worker the pool belongs to (its share of the sizes). */
  worker?: WorkerShare;
}

/** One worker among `count` (`[general]` workers), numbered from 0. */
export interface WorkerShare {
  /** This worker, 0 to count - 1. */
  index: number;
  /** How many workers there are. */
  count: number;
}

/**
 * The part of `total` connections that worker `share.index` of `share.count` gets: `total` is
 * split as evenly as possible (the first `total % count` workers get one more), so the shares
 * add up to `total`. With `atLeastOne`, a worker whose share would be 0 gets 1 instead (a pool
 * smaller than the number of workers: every worker must be able to serve its clients, so the
 * pool then opens up to `count` connections).
 */
export function workerShare(total: number, share: WorkerShare & { atLeastOne?: boolean }): number {
  const { index, count } = share;
  if (count <= 1) return total;
  const part = Math.floor(total / count) + (index < total % count ? 1 : 0);
  return share.atLeastOne ? Math.max(1, part) : part;
}

/**
 * Resolves the settings of the pool for `options.user` on `options.database`: pool size, minimum
 * size and mode come from the user, else the database, else `[general]`; the server login is
 * the database's `user`, else the user's `server_user`, else the user's name; the server
 * password is the database's `password`, else `server_password`, else the user's `password`.
 * With `options.worker`, both sizes are that worker's share ({@linkcode workerShare}).
 */
export function resolvePoolSettings(config: Config, options: PoolSettingsOptions): PoolSettings {
  const { database, user, worker } = options;
  const general = config.general;
  let poolSize = user.pool_size ?? database.pool_size ?? general.default_pool_size;
  let minPoolSize = user.min_pool_size ?? database.min_pool_size ?? general.min_pool_size;
  if (worker !== undefined) {
    poolSize = workerShare(poolSize, { ...worker, atLeastOne: true });
    minPoolSize = workerShare(minPoolSize, worker);
  }
  const settings: PoolSettings = {
    pool_size: poolSize,
    min_pool_size: Math.min(minPoolSize, poolSize),
    pooler_mode: user.pooler_mode ?? database.pooler_mode ?? general.pooler_mode,
    server_user: database.user ?? user.server_user ?? user.name,
    idle_timeout: general.idle_timeout,
    server_lifetime: general.server_lifetime,
    checkout_timeout: general.checkout_timeout,
    connect_timeout: general.connect_timeout,
    rollback_timeout: general.rollback_timeout,
  };
  const password = database.password ?? user.server_password ?? user.password;
  if (password !== undefined) settings.server_password = password;
  return settings;
}
