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
}

/**
 * Resolves the settings of the pool for `options.user` on `options.database`: pool size, minimum
 * size and mode come from the user, else the database, else `[general]`; the server login is
 * the database's `user`, else the user's `server_user`, else the user's name; the server
 * password is the database's `password`, else `server_password`, else the user's `password`.
 */
export function resolvePoolSettings(config: Config, options: PoolSettingsOptions): PoolSettings {
  const { database, user } = options;
  const general = config.general;
  const poolSize = user.pool_size ?? database.pool_size ?? general.default_pool_size;
  const minPoolSize = user.min_pool_size ?? database.min_pool_size ?? general.min_pool_size;
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
