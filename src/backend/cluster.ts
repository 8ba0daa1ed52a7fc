/**
 * A cluster is what a client connects to: one user on one logical database, made of shards, each
 * with a primary and replicas ("targets", one {@linkcode Pool} each). This module picks the
 * target for a request: writes go to the shard's primary; reads go to the targets the
 * `read_write_split` allows, ordered by the `load_balancing_strategy`, skipping banned ones, and
 * a read whose checkout fails moves on to the next target (which gets banned).
 *
 * @module
 */

import type { PoolerMode } from "../config/types.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { log } from "../log.ts";
import { ClientFacingError, type Pool, type WaitAbort } from "./pool.ts";
import type { Server } from "./server.ts";
import type { ShardingConfig } from "../router/shard.ts";
import { ColumnOrders } from "../router/columns.ts";
import type { Collation } from "../cross_shard/values.ts";

/** How reads are spread over a shard's targets. */
export type LoadBalancingStrategy =
  | "random"
  | "round_robin"
  | "least_active_connections"
  | "weighted_round_robin";

/** Whether the primary takes reads. */
export type ReadWriteSplit =
  | "include_primary"
  | "exclude_primary"
  | "include_primary_if_replica_banned"
  | "prefer_primary";

/** Why a target is out of the read rotation. */
export interface Ban {
  reason: string;
  /** error: lifts after ban_timeout once healthy; lag: lifts when caught up; manual: UNBAN. */
  kind: "error" | "lag" | "manual";
  until: number;
  since: number;
}

/** Load-balancing settings of a cluster. */
export interface BalancerSettings {
  strategy: LoadBalancingStrategy;
  split: ReadWriteSplit;
  banTimeout: number;
  checkoutTimeout: number;
  healthcheckInterval: number;
  healthcheckTimeout: number;
}

/** One host of a shard. */
export class Target {
  readonly pool: Pool;
  /** As configured: primary, replica, or auto (detected). */
  readonly configuredRole: "primary" | "replica" | "auto";
  /** The role now (auto targets follow pg_is_in_recovery()). */
  role: "primary" | "replica";
  /** lb_weight, for weighted_round_robin. */
  readonly weight: number;
  ban: Ban | null = null;
  /** The last health check (or connection) succeeded. */
  healthy = true;
  /** Replication state from the last LSN check. */
  inRecovery: boolean | null = null;
  lsn = 0;
  /** Replica lag behind its primary, from the last LSN check. */
  lagBytes = 0;
  lagMs = 0;
  /** When the last LSN check succeeded (0: never). */
  lsnCheckedAt = 0;
  #current = 0;

  constructor(options: { pool: Pool; role: "primary" | "replica" | "auto"; weight: number }) {
    this.pool = options.pool;
    this.configuredRole = options.role;
    this.role = options.role === "replica" ? "replica" : "primary";
    this.weight = options.weight;
  }

  /** Smooth weighted round robin state. */
  get currentWeight(): number {
    return this.#current;
  }
  set currentWeight(v: number) {
    this.#current = v;
  }

  /** Human-readable identity for logs. */
  get label(): string {
    return `${this.pool.login.host}:${this.pool.login.port}`;
  }
}

/** One shard: at most one primary (at a time) and any number of replicas. */
export class Shard {
  readonly number: number;
  readonly targets: Target[];
  #rr = 0;
  #primaryWaiters: Array<() => void> = [];

  constructor(number: number, targets: Target[]) {
    this.number = number;
    this.targets = targets;
  }

  /** The current primary, if any. */
  get primary(): Target | null {
    for (const t of this.targets) if (t.role === "primary") return t;
    return null;
  }

  /** Resolves when a primary exists (role detection may take a check or two), or after `ms`. */
  waitForPrimary(ms: number): Promise<Target | null> {
    const now = this.primary;
    if (now) return Promise.resolve(now);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#primaryWaiters = this.#primaryWaiters.filter((w) => w !== wake);
        resolve(this.primary);
      }, ms);
      const wake = (): void => {
        clearTimeout(timer);
        resolve(this.primary);
      };
      this.#primaryWaiters.push(wake);
    });
  }

  /** Sets which target is the primary (role detection); returns true when it changed. */
  setPrimary(target: Target | null): boolean {
    const before = this.primary;
    if (before === target) return false;
    for (const t of this.targets) t.role = t === target ? "primary" : "replica";
    if (target) {
      log.info(`shard ${this.number}: new primary chosen: ${target.label}`);
      for (const wake of this.#primaryWaiters.splice(0)) wake();
    } else {
      log.warn(`shard ${this.number}: no primary (every host is in recovery or unreachable)`);
    }
    return true;
  }

  /** Bans a target from reads, unless it is the shard's only one. */
  ban(target: Target, options: { reason: string; kind: Ban["kind"]; ms: number }): void {
    if (this.targets.length < 2) return;
    const now = Date.now();
    if (!target.ban || target.ban.kind !== "manual") {
      if (!target.ban) log.warn(`${target.label} banned: ${options.reason}`);
      target.ban = {
        reason: options.reason,
        kind: options.kind,
        until: now + options.ms,
        since: target.ban?.since ?? now,
      };
    }
    // Safety valve: with every target banned, none is.
    if (this.targets.every((t) => t.ban !== null && t.ban.kind !== "manual")) {
      log.warn(`shard ${this.number}: every host is banned; lifting all bans`);
      for (const t of this.targets) if (t.ban?.kind !== "manual") t.ban = null;
    }
  }

  /** Lifts a ban. */
  unban(target: Target): void {
    if (target.ban) log.info(`${target.label} unbanned`);
    target.ban = null;
  }

  /** The targets a read may use, in the order to try them. */
  readCandidates(settings: BalancerSettings): Target[] {
    const primary = this.primary;
    const replicas = this.targets.filter((t) => t.role === "replica");
    const usable = (t: Target): boolean => t.ban === null;
    const liveReplicas = replicas.filter(usable);
    let withPrimary: boolean;
    switch (settings.split) {
      case "include_primary":
        withPrimary = true;
        break;
      case "exclude_primary":
        withPrimary = liveReplicas.length === 0;
        break;
      case "include_primary_if_replica_banned":
        withPrimary = liveReplicas.length < replicas.length || this.targets.length === 1;
        break;
      case "prefer_primary":
        // The primary first; replicas only when it is banned.
        if (primary && usable(primary)) return [primary];
        return this.#order(liveReplicas, settings.strategy);
    }
    const pool = withPrimary && primary && usable(primary)
      ? [...liveReplicas, primary]
      : liveReplicas;
    if (pool.length === 0) return primary ? [primary] : replicas;
    return this.#order(pool, settings.strategy);
  }

  #order(targets: Target[], strategy: LoadBalancingStrategy): Target[] {
    if (targets.length < 2) return targets;
    switch (strategy) {
      case "random": {
        const out = [...targets];
        for (let i = out.length - 1; i > 0; i--) {
          const j = Math.floor(Math.random() * (i + 1));
          [out[i], out[j]] = [out[j], out[i]];
        }
        return out;
      }
      case "round_robin": {
        const start = this.#rr++ % targets.length;
        return [...targets.slice(start), ...targets.slice(0, start)];
      }
      case "least_active_connections":
        return [...targets].sort((a, b) =>
          (a.pool.active + a.pool.waiting) - (b.pool.active + b.pool.waiting)
        );
      case "weighted_round_robin": {
        // Smooth weighted round robin: the pick gets the highest current weight, then pays the total.
        let total = 0;
        let best = targets[0];
        for (const t of targets) {
          t.currentWeight += t.weight;
          total += t.weight;
          if (t.currentWeight > best.currentWeight) best = t;
        }
        best.currentWeight -= total;
        return [best, ...targets.filter((t) => t !== best)];
      }
    }
  }
}

/** One user on one logical database. */
export class Cluster {
  readonly name: string;
  readonly user: string;
  /** The password clients must present (users.toml). */
  readonly password: string | undefined;
  readonly poolerMode: PoolerMode;
  readonly shards: Shard[];
  settings: BalancerSettings;
  /** How statements find their shard; null for a database of one shard. */
  readonly sharding: ShardingConfig | null;
  /** Column orders read from shard 0's catalog (shared by the database's clusters). */
  readonly columns: ColumnOrders;
  /**
   * The database's collation, as the cross-shard merge compares text: undefined until read from
   * the catalog (see learnCollation), null when pgdog can't match it.
   */
  collation: Collation | null | undefined = undefined;

  constructor(options: {
    name: string;
    user: string;
    password?: string;
    poolerMode: PoolerMode;
    shards: Shard[];
    settings: BalancerSettings;
    sharding?: ShardingConfig | null;
    columns?: ColumnOrders;
  }) {
    this.name = options.name;
    this.user = options.user;
    this.password = options.password;
    this.poolerMode = options.poolerMode;
    this.shards = options.shards;
    this.settings = options.settings;
    this.sharding = options.sharding ?? null;
    this.columns = options.columns ?? new ColumnOrders();
  }

  /** The shard number of the host behind `pool` (0 when it is not in this cluster). */
  shardOf(pool: Pool): number {
    for (const shard of this.shards) {
      if (shard.targets.some((t) => t.pool === pool)) return shard.number;
    }
    return 0;
  }

  /** True when some shard has a replica (routing by read/write matters). */
  get hasReplicas(): boolean {
    return this.shards.some((s) => s.targets.length > 1);
  }

  /** The pool unrouted traffic uses: the shard's (first by default) primary, else any target. */
  pool(shardNumber = 0): Pool {
    const shard = this.shards[shardNumber];
    return (shard.primary ?? shard.targets[0]).pool;
  }

  /** A pool to learn login parameters from: the primary when usable, else any usable host. */
  loginPool(): Pool {
    const shard = this.shards[0];
    const primary = shard.primary;
    if (primary && primary.ban === null) return primary.pool;
    return (shard.targets.find((t) => t.ban === null) ?? primary ?? shard.targets[0]).pool;
  }

  /** Bans the host behind `pool` from reads (its server just failed under a client). */
  banPool(pool: Pool, reason: string): void {
    for (const shard of this.shards) {
      for (const target of shard.targets) {
        if (target.pool !== pool) continue;
        target.healthy = false;
        shard.ban(target, { reason, kind: "error", ms: this.settings.banTimeout });
        return;
      }
    }
  }

  /** Every pool of the cluster. */
  pools(): Pool[] {
    return this.shards.flatMap((s) => s.targets.map((t) => t.pool));
  }

  /**
   * A server for a request needing `role` on shard `shardNumber`. Writes wait (up to
   * checkout_timeout) for a primary to exist; reads try the candidates in order, banning a target
   * whose checkout fails and moving on. Servers idle longer than healthcheck_interval are checked
   * with an empty query first.
   */
  async checkout(
    role: "primary" | "replica",
    options: { shard?: number; abort?: WaitAbort },
  ): Promise<Server> {
    const shard = this.shards[options.shard ?? 0];
    const settings = this.settings;
    if (role === "primary" || shard.targets.length === 1) {
      const primary = shard.primary ?? await shard.waitForPrimary(settings.checkoutTimeout);
      const target = primary ?? (role === "replica" ? shard.targets[0] : null);
      if (!target) {
        throw new ClientFacingError({
          severity: "ERROR",
          code: SqlState.ConnectionFailure,
          message:
            `no primary for database "${this.name}" (shard ${shard.number}) within checkout_timeout ` +
            `(${settings.checkoutTimeout} ms)`,
          hint: "Every host is in recovery or unreachable; pgdog waits for one to be promoted.",
        });
      }
      return await this.#fromTarget(shard, target, options.abort, false);
    }
    // A failed target is banned, which can change who may serve reads (exclude_primary lets the
    // primary in once no replica is left): pick again after each failure, never the same twice.
    const tried = new Set<Target>();
    let lastError: ClientFacingError | null = null;
    for (;;) {
      const candidates = shard.readCandidates(settings).filter((t) => !tried.has(t));
      if (candidates.length === 0) break;
      const target = candidates[0];
      tried.add(target);
      try {
        return await this.#fromTarget(
          shard,
          target,
          options.abort,
          tried.size < shard.targets.length,
        );
      } catch (e) {
        if (!(e instanceof TargetFailed)) throw e;
        lastError = e.cause;
      }
    }
    throw lastError ?? new ClientFacingError({
      severity: "ERROR",
      code: SqlState.ConnectionFailure,
      message: `no host available for database "${this.name}"`,
    });
  }

  async #fromTarget(
    shard: Shard,
    target: Target,
    abort: WaitAbort | undefined,
    canRetry: boolean,
  ): Promise<Server> {
    const pool = target.pool;
    for (let attempt = 0; attempt < 3; attempt++) {
      let server: Server;
      try {
        server = pool.tryCheckout() ?? await pool.waitForServer({ abort });
      } catch (e) {
        if (e instanceof ClientFacingError && isConnectFailure(e)) {
          target.healthy = false;
          shard.ban(target, {
            reason: `checkout failed: ${e.message}`,
            kind: "error",
            ms: this.settings.banTimeout,
          });
          if (canRetry) throw new TargetFailed(e);
        }
        throw e;
      }
      if (Date.now() - server.idleSince < this.settings.healthcheckInterval) return server;
      // Idle for a while: make sure it still answers before a client relies on it.
      try {
        await server.query(";", { timeoutMs: this.settings.healthcheckTimeout });
        if (server.closed) throw new Error("closed during health check");
        target.healthy = true;
        return server;
      } catch {
        server.close("failed its health check");
      }
    }
    target.healthy = false;
    shard.ban(target, {
      reason: "health checks failed",
      kind: "error",
      ms: this.settings.banTimeout,
    });
    const error = new ClientFacingError({
      severity: "ERROR",
      code: SqlState.ConnectionFailure,
      message: `server ${target.label} failed its health checks`,
    });
    if (canRetry) throw new TargetFailed(error);
    throw error;
  }
}

/** A read's checkout failed on one target; the next one may serve it. */
class TargetFailed extends Error {
  override readonly cause: ClientFacingError;
  constructor(cause: ClientFacingError) {
    super(cause.message);
    this.cause = cause;
  }
}

function isConnectFailure(e: ClientFacingError): boolean {
  // Class 08 (connection exception) and 57P0x (server shutting down / starting up).
  return e.fields.code.startsWith("08") || e.fields.code.startsWith("57P");
}
