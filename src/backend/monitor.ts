/**
 * Background checks of a shard's hosts: an empty query (`;`) on an idle connection every
 * `idle_healthcheck_interval`; lifting bans once a host answers again; and, when the shard has
 * replicas or `role = "auto"` hosts, an LSN check every `lsn_check_interval` that measures
 * replica lag (banning replicas over `ban_replica_lag` / `ban_replica_lag_bytes`) and finds the
 * primary with `pg_is_in_recovery()`.
 *
 * @module
 */

import { errorMessage, log } from "../log.ts";
import { connectServer } from "./connect.ts";
import type { InternalResult, Server } from "./server.ts";
import type { Shard, Target } from "./cluster.ts";

/** Timings and thresholds of the checks (milliseconds, bytes; 0 disables a lag threshold). */
export interface MonitorSettings {
  idleHealthcheckInterval: number;
  idleHealthcheckDelay: number;
  healthcheckTimeout: number;
  banTimeout: number;
  lsnCheckInterval: number;
  lsnCheckTimeout: number;
  lsnCheckDelay: number;
  banReplicaLag: number;
  banReplicaLagBytes: number;
}

const LSN_QUERY = "SELECT pg_catalog.pg_is_in_recovery()::text, " +
  "(CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() " +
  "ELSE pg_catalog.pg_current_wal_lsn() END - '0/0'::pg_lsn)::text, " +
  "(extract(epoch FROM CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_xact_replay_timestamp() " +
  "ELSE pg_catalog.now() END) * 1000)::bigint::text";

/** Runs the periodic checks of one shard. */
export class ShardMonitor {
  readonly shard: Shard;
  settings: MonitorSettings;
  #timers: Array<ReturnType<typeof setTimeout>> = [];
  #stopped = false;
  #lsnRunning = false;
  #healthRunning = false;
  #history: Array<{ lsn: number; at: number }> = [];

  constructor(shard: Shard, settings: MonitorSettings) {
    this.shard = shard;
    this.settings = settings;
  }

  /** True when this shard needs LSN checks (replicas to measure, or roles to detect). */
  get lsnChecks(): boolean {
    return this.shard.targets.length > 1 ||
      this.shard.targets.some((t) => t.configuredRole === "auto");
  }

  /** True when every host's role is detected. */
  get detectsRoles(): boolean {
    return this.shard.targets.every((t) => t.configuredRole === "auto");
  }

  /** Starts the timers. */
  start(): void {
    const s = this.settings;
    if (s.idleHealthcheckInterval > 0) {
      this.#every(s.idleHealthcheckDelay, s.idleHealthcheckInterval, () => this.healthRound());
    }
    if (this.lsnChecks) this.#every(s.lsnCheckDelay, s.lsnCheckInterval, () => this.lsnRound());
  }

  /** Stops the timers. */
  stop(): void {
    this.#stopped = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers = [];
  }

  #every(delay: number, interval: number, fn: () => Promise<void>): void {
    const run = (): void => {
      if (this.#stopped) return;
      fn().catch((e) => log.debug(`monitor: ${errorMessage(e)}`)).finally(() => {
        if (!this.#stopped) this.#timers.push(setTimeout(run, Math.max(10, interval)));
      });
    };
    this.#timers.push(setTimeout(run, Math.max(0, delay)));
  }

  /** One health round: every host answers an empty query; bans expire only for hosts that do. */
  async healthRound(): Promise<void> {
    if (this.#healthRunning) return;
    this.#healthRunning = true;
    try {
      const now = Date.now();
      await Promise.all(this.shard.targets.map(async (target) => {
        const banned = target.ban?.kind === "error";
        if (banned && now < target.ban!.until) return; // the ban runs its course first
        const ok = await this.check(target);
        target.healthy = ok;
        if (ok && banned) this.shard.unban(target);
        else if (!ok) {
          this.shard.ban(target, {
            reason: "health check failed",
            kind: "error",
            ms: this.settings.banTimeout,
          });
        }
      }));
    } finally {
      this.#healthRunning = false;
    }
  }

  /** Runs `;` on the target (an idle connection, or a new one when it has none at all). */
  async check(target: Target): Promise<boolean> {
    const pool = target.pool;
    // Every connection is serving clients: the host answers them, and a connection of the
    // monitor's own would go over pool_size.
    if (pool.idle.length === 0 && pool.total > 0 && pool.servers.size > 0) return true;
    try {
      const r = await this.#run(target, ";", this.settings.healthcheckTimeout);
      return r.error === null;
    } catch {
      return false;
    }
  }

  /** One LSN round: replication position of every host, then roles and lag. */
  async lsnRound(): Promise<void> {
    if (this.#lsnRunning) return;
    this.#lsnRunning = true;
    try {
      const results = await Promise.all(this.shard.targets.map(async (target) => {
        try {
          const r = await this.#run(target, LSN_QUERY, this.settings.lsnCheckTimeout);
          if (r.error || r.rows.length === 0) return null;
          const [recovery, lsn, ts] = r.rows[0];
          target.inRecovery = recovery === "true";
          target.lsn = Number(lsn ?? 0);
          target.lsnCheckedAt = Date.now();
          target.healthy = true;
          return { target, ts: ts === null ? null : Number(ts) };
        } catch {
          target.healthy = false;
          return null;
        }
      }));
      const fresh = results.filter((r): r is { target: Target; ts: number | null } => r !== null);
      if (this.detectsRoles) {
        const writable = fresh.filter((r) => r.target.inRecovery === false).sort((a, b) =>
          b.target.lsn - a.target.lsn
        );
        const current = this.shard.primary;
        const currentOk = current !== null && writable.some((r) => r.target === current);
        if (!currentOk) this.shard.setPrimary(writable[0]?.target ?? null);
      }
      const primary = this.shard.primary;
      const primaryResult = fresh.find((r) => r.target === primary);
      if (primaryResult) {
        const last = this.#history[this.#history.length - 1];
        if (!last || last.lsn !== primaryResult.target.lsn) {
          this.#history.push({ lsn: primaryResult.target.lsn, at: Date.now() });
          if (this.#history.length > 1000) this.#history.shift();
        }
      }
      for (const target of this.shard.targets) {
        if (target === primary) continue;
        const mine = fresh.find((r) => r.target === target);
        if (!mine) {
          if (target.ban === null) {
            this.shard.ban(target, {
              reason: "replication check failed",
              kind: "error",
              ms: this.settings.banTimeout,
            });
          }
          continue;
        }
        if (!primaryResult) continue;
        const bytes = Math.max(0, primaryResult.target.lsn - target.lsn);
        let ms = 0;
        if (bytes > 0) {
          // Since when the primary has been past this replica's position.
          const first = this.#history.find((h) => h.lsn > target.lsn);
          ms = first ? Math.max(0, Date.now() - first.at) : 0;
        }
        target.lagBytes = bytes;
        target.lagMs = ms;
        const s = this.settings;
        const lagging = (s.banReplicaLag > 0 && ms >= s.banReplicaLag) ||
          (s.banReplicaLagBytes > 0 && bytes >= s.banReplicaLagBytes);
        if (lagging) {
          this.shard.ban(target, {
            reason: `replica lag ${ms} ms, ${bytes} bytes`,
            kind: "lag",
            ms: Number.MAX_SAFE_INTEGER,
          });
        } else if (target.ban?.kind === "lag") {
          this.shard.unban(target);
        }
      }
    } finally {
      this.#lsnRunning = false;
    }
  }

  /** Runs SQL on a target: on an idle pooled connection when there is one, else on a new one. */
  async #run(target: Target, sql: string, timeoutMs: number): Promise<InternalResult> {
    const pool = target.pool;
    const idle = pool.tryCheckout();
    if (idle) {
      try {
        return await idle.query(sql, { timeoutMs });
      } finally {
        pool.checkin(idle);
      }
    }
    let server: Server | null = null;
    try {
      server = await connectServer(pool.login, { timeoutMs });
      server.start();
      return await server.query(sql, { timeoutMs });
    } finally {
      server?.close("monitor check done");
    }
  }
}
