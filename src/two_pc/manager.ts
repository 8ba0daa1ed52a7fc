/**
 * The process's (or worker's) two-phase commit state: the settings, the durable log, the
 * transactions being committed (SHOW TRANSACTIONS), the counters (OpenMetrics), recovery at
 * startup, and the background retries of second phases (COMMIT PREPARED, ROLLBACK PREPARED) a
 * shard could not take when they were due.
 *
 * Transaction ids: `__pgdog_2pc_<node>_<worker>_<random>` plus `_<shard>` per participant. The
 * node is `NODE_ID`'s trailing number (as for `pgdog.unique_id()`), the worker the `[general]
 * workers` index (0 with one), so neither other pgdog instances nor other workers collide; the
 * random part (48 bits) keeps this instance's own transactions apart, across restarts too.
 *
 * Recovery (before clients are accepted): every transaction the log left undecided is rolled
 * back on each participant (ROLLBACK PREPARED), every decided one committed (COMMIT PREPARED);
 * "does not exist" (42704) counts as done. A shard that can't be reached is retried in the
 * background. Then prepared transactions of this node and worker that the log doesn't know
 * (`pg_prepared_xacts`) are rolled back when they were prepared before the log was created
 * (no log could have recorded them: a run without `two_phase_commit_wal_dir`, or a deleted
 * log); newer ones are left alone with a warning, as another pgdog may be using the same
 * NODE_ID.
 *
 * @module
 */

import type { Config, UserConfig } from "../config/types.ts";
import type { Databases } from "../backend/databases.ts";
import type { Pool } from "../backend/pool.ts";
import { errorMessage, log } from "../log.ts";
import { type ReplayedTransaction, TwoPcWal, type WalTransaction } from "./wal.ts";

/** The prefix of every gid pgdog gives a prepared transaction. */
export const GID_PREFIX = "__pgdog_2pc_";

/** How often failed second phases are retried. */
const RETRY_MS = 1000;

/** A step of the two-phase commit where a test-only fault point can kill pgdog. */
export type CrashStep = "first_prepare" | "prepared" | "decided" | "first_commit";

/** A transaction being committed, as SHOW TRANSACTIONS lists it. */
export interface TransactionState extends WalTransaction {
  state: "preparing" | "committing" | "rolling back" | "retrying commit" | "retrying rollback";
}

/** Two-phase commit counters of one user and database. */
export interface TwoPcStats {
  database: string;
  user: string;
  /** Transactions committed with two-phase commit. */
  committed: number;
  /** Two-phase commits that failed (the transaction rolled back). */
  failed: number;
  /** Transactions finished by recovery (at startup or by background retries). */
  recovered: number;
}

/** A second phase a shard has yet to take. */
interface Unfinished {
  tx: WalTransaction;
  commit: boolean;
  shards: Set<number>;
  /** Left by an earlier run (counts as recovered when done). */
  recovered: boolean;
}

/** The two-phase commit state of one process (one per worker). */
export class TwoPcManager {
  #config: Config | null = null;
  #databases: Databases | null = null;
  nodeId = 0;
  worker = 0;
  workers = 1;
  wal: TwoPcWal | null = null;
  /** Transactions being committed or finished, by gid. */
  readonly transactions: Map<string, TransactionState> = new Map();
  readonly #unfinished = new Map<string, Unfinished>();
  readonly #stats = new Map<string, TwoPcStats>();
  #retryTimer: ReturnType<typeof setInterval> | null = null;
  #checkpointTimer: ReturnType<typeof setInterval> | null = null;
  #retrying = false;
  /** The test-only fault point (PGDOG_2PC_CRASH_AT): pgdog kills itself at that step. */
  crashAt: CrashStep | null = null;
  /** The test-only pause (PGDOG_2PC_PAUSE_AT, PGDOG_2PC_PAUSE_MS): pgdog waits at that step. */
  pauseAt: { step: CrashStep; ms: number } | null = null;

  /** Takes the configuration (at startup and on RELOAD) and the pools recovery uses. */
  configure(config: Config, options: { databases: Databases }): void {
    this.#config = config;
    this.#databases = options.databases;
    this.#enabled.clear();
  }

  /** enabled()'s answers, by user, database and kind (cleared when the configuration changes). */
  readonly #enabled = new Map<string, boolean>();

  /**
   * Whether a commit of `user` on `database` uses two-phase commit: `auto` for a transaction pgdog
   * opened (a single statement), else the client's own transaction.
   */
  enabled(user: string, database: string, options: { auto: boolean }): boolean {
    const key = `${options.auto ? "a" : "e"}${user}\u0000${database}`;
    let on = this.#enabled.get(key);
    if (on === undefined) {
      on = this.#resolve(user, database, options);
      this.#enabled.set(key, on);
    }
    return on;
  }

  #resolve(user: string, database: string, options: { auto: boolean }): boolean {
    const config = this.#config;
    if (config === null) return false;
    const u: UserConfig | undefined = config.users.find((x) =>
      x.name === user && x.database === database
    );
    const g = config.general;
    const explicit = u?.two_phase_commit ?? g.two_phase_commit;
    if (!options.auto) return explicit;
    return u?.two_phase_commit_auto ?? g.two_phase_commit_auto ?? explicit;
  }

  /** A new gid (without its shard suffix). */
  newGid(): string {
    const random = crypto.getRandomValues(new Uint8Array(6));
    const hex = [...random].map((b) => b.toString(16).padStart(2, "0")).join("");
    return `${this.ownPrefix()}${hex}`;
  }

  /** The gid prefix of this node and worker. */
  ownPrefix(): string {
    return `${GID_PREFIX}${this.nodeId}_${this.worker}_`;
  }

  /** A test-only fault point: pgdog SIGKILLs itself at `step` when PGDOG_2PC_CRASH_AT names it. */
  crashPoint(step: CrashStep): void {
    if (this.crashAt !== step) return;
    log.error(`PGDOG_2PC_CRASH_AT=${step}: killing pgdog (a test's fault point)`);
    Deno.kill(Deno.pid, "SIGKILL");
  }

  /** A test-only pause: pgdog waits at `step` when PGDOG_2PC_PAUSE_AT names it. */
  async pausePoint(step: CrashStep): Promise<void> {
    if (this.pauseAt?.step !== step) return;
    log.warn(`PGDOG_2PC_PAUSE_AT=${step}: waiting ${this.pauseAt.ms} ms (a test's fault point)`);
    await new Promise((r) => setTimeout(r, this.pauseAt!.ms));
  }

  /**
   * Opens the log and finishes what it left (before clients are accepted), rolls back the
   * prepared transactions older than the log, and starts the retries and the checkpointer.
   */
  async start(): Promise<void> {
    this.stop();
    const config = this.#config!;
    const g = config.general;
    try {
      const crash = Deno.env.get("PGDOG_2PC_CRASH_AT");
      if (crash) this.crashAt = crash as CrashStep;
      const pause = Deno.env.get("PGDOG_2PC_PAUSE_AT");
      if (pause) {
        this.pauseAt = {
          step: pause as CrashStep,
          ms: Number(Deno.env.get("PGDOG_2PC_PAUSE_MS") ?? 3000),
        };
      }
    } catch {
      // No permission: no fault point.
    }
    if (g.two_phase_commit_wal_dir !== undefined) {
      this.wal = new TwoPcWal({
        dir: g.two_phase_commit_wal_dir,
        worker: this.worker,
        workers: this.workers,
        segmentSize: g.two_phase_commit_wal_segment_size,
        fsyncInterval: g.two_phase_commit_wal_fsync_interval,
        checkpointOnRotate: g.two_phase_commit_wal_checkpoint_interval === 0,
      });
      const left = await this.wal.open();
      if (left.length > 0) {
        log.info(`two-phase commit: finishing ${left.length} transaction(s) left by the last run`);
      }
      for (const tx of left) this.#recover(tx);
      await this.retry();
      await this.#rollBackOrphans().catch((e) =>
        log.warn(`two-phase commit: looking for orphaned prepared transactions: ${errorMessage(e)}`)
      );
      const every = g.two_phase_commit_wal_checkpoint_interval;
      if (every > 0) {
        this.#checkpointTimer = setInterval(() => {
          try {
            this.wal?.checkpoint();
          } catch (e) {
            log.warn(`two-phase commit log checkpoint: ${errorMessage(e)}`);
          }
        }, every);
        Deno.unrefTimer(this.#checkpointTimer);
      }
    }
    this.#retryTimer = setInterval(() => {
      if (this.#unfinished.size > 0) this.retry().catch(() => {});
    }, RETRY_MS);
    Deno.unrefTimer(this.#retryTimer);
  }

  #recover(tx: ReplayedTransaction): void {
    const entry: Unfinished = {
      tx,
      commit: tx.decided,
      shards: new Set(tx.shards),
      recovered: true,
    };
    this.#unfinished.set(tx.gid, entry);
    this.transactions.set(tx.gid, {
      ...tx,
      state: tx.decided ? "retrying commit" : "retrying rollback",
    });
  }

  /** Stops the timers and closes the log. */
  stop(): void {
    if (this.#retryTimer !== null) clearInterval(this.#retryTimer);
    if (this.#checkpointTimer !== null) clearInterval(this.#checkpointTimer);
    this.#retryTimer = this.#checkpointTimer = null;
    this.wal?.close();
    this.wal = null;
  }

  /** Logs the participants before any PREPARE (durable). */
  async begin(tx: WalTransaction): Promise<void> {
    this.transactions.set(tx.gid, { ...tx, state: "preparing" });
    await this.wal?.append({ t: "begin", ...tx }, { durable: true });
  }

  /** Logs the decision to commit (durable) before any COMMIT PREPARED. */
  async decide(tx: WalTransaction): Promise<void> {
    await this.wal?.append({ t: "commit", ...tx }, { durable: true });
    this.transactions.set(tx.gid, { ...tx, state: "committing" });
  }

  /** The transaction is rolling back (the log needs nothing: undecided means rolled back). */
  rollingBack(tx: WalTransaction): void {
    this.transactions.set(tx.gid, { ...tx, state: "rolling back" });
  }

  /**
   * The transaction is over: `pending` shards still owe their second phase (retried in the
   * background); with none, End is logged.
   */
  finished(
    tx: WalTransaction,
    options: { commit: boolean; pending: number[]; countFailure?: boolean },
  ): void {
    const stats = this.#statsOf(tx);
    if (options.commit) stats.committed++;
    else if (options.countFailure !== false) stats.failed++;
    if (options.pending.length > 0) {
      this.#unfinished.set(tx.gid, {
        tx,
        commit: options.commit,
        shards: new Set(options.pending),
        recovered: false,
      });
      this.transactions.set(tx.gid, {
        ...tx,
        state: options.commit ? "retrying commit" : "retrying rollback",
      });
      return;
    }
    this.#end(tx.gid);
  }

  #end(gid: string): void {
    this.transactions.delete(gid);
    this.#unfinished.delete(gid);
    this.wal?.append({ t: "end", gid }, { durable: false }).catch(() => {});
  }

  #statsOf(tx: { database: string; user: string }): TwoPcStats {
    const key = `${tx.database}\u0000${tx.user}`;
    let s = this.#stats.get(key);
    if (s === undefined) {
      s = { database: tx.database, user: tx.user, committed: 0, failed: 0, recovered: 0 };
      this.#stats.set(key, s);
    }
    return s;
  }

  /** The counters, per user and database. */
  stats(): TwoPcStats[] {
    return [...this.#stats.values()];
  }

  /** Second phases still owed (background retries). */
  get unfinished(): number {
    return this.#unfinished.size;
  }

  /** Tries every owed second phase once. */
  async retry(): Promise<void> {
    if (this.#retrying) return;
    this.#retrying = true;
    try {
      await Promise.all([...this.#unfinished.values()].map((u) => this.#retryOne(u)));
    } finally {
      this.#retrying = false;
    }
  }

  async #retryOne(u: Unfinished): Promise<void> {
    const verb = u.commit ? "COMMIT PREPARED" : "ROLLBACK PREPARED";
    await Promise.all([...u.shards].map(async (shard) => {
      const gid = `${u.tx.gid}_${shard}`;
      try {
        await this.runOn(u.tx, { shard, sql: `${verb} '${gid}'`, missingOk: true });
        u.shards.delete(shard);
      } catch (e) {
        log.warn(`two-phase commit: ${verb} '${gid}' on shard ${shard}: ${errorMessage(e)}`);
      }
    }));
    if (u.shards.size > 0 || !this.#unfinished.has(u.tx.gid)) return;
    if (u.recovered) this.#statsOf(u.tx).recovered++;
    log.info(
      `two-phase commit: transaction ${u.tx.gid} ${
        u.commit ? "committed" : "rolled back"
      } on every shard`,
    );
    this.#end(u.tx.gid);
  }

  /**
   * Runs `sql` on shard `shard` of the transaction's database, as its user, with a server of the
   * pool. Throws on failure (an error 42704 counts as done with `missingOk`).
   */
  async runOn(
    tx: { database: string; user: string },
    options: { shard: number; sql: string; missingOk?: boolean },
  ): Promise<(string | null)[][]> {
    const cluster = this.#databases?.lookup(tx.user, tx.database);
    if (cluster === undefined) {
      throw new Error(`no database "${tx.database}" for user "${tx.user}" in the configuration`);
    }
    if (options.shard >= cluster.shards.length) throw new Error(`no shard ${options.shard}`);
    const server = await cluster.checkout("primary", { shard: options.shard });
    const timeoutMs = (server.owner as Pool).config.rollback_timeout;
    try {
      const r = await server.query(options.sql, { timeoutMs });
      if (r.error !== null && !(options.missingOk && r.error.code === "42704")) {
        throw new Error(`${r.error.code}: ${r.error.message}`);
      }
      return r.rows;
    } finally {
      if (!server.closed) (server.owner as Pool).release(server, { resetSql: null });
    }
  }

  /**
   * Rolls back prepared transactions of this node and worker that the log does not know and that
   * were prepared before the log was created; warns about newer ones.
   */
  async #rollBackOrphans(): Promise<void> {
    const databases = this.#databases;
    const wal = this.wal;
    if (databases === null || wal === null) return;
    const prefix = this.ownPrefix();
    const seen = new Set<string>();
    for (const cluster of databases.clusters()) {
      if (cluster.sharding === null) continue;
      for (let shard = 0; shard < cluster.shards.length; shard++) {
        const pool = cluster.pool(shard);
        const place = `${pool.login.host}:${pool.login.port}/${cluster.name}`;
        if (seen.has(place)) continue;
        seen.add(place);
        const tx = { database: cluster.name, user: cluster.user };
        const rows = await this.runOn(tx, {
          shard,
          sql: "SELECT gid, (extract(epoch FROM prepared) * 1000)::bigint FROM pg_prepared_xacts " +
            `WHERE database = current_database() AND left(gid, ${prefix.length}) = '${prefix}'`,
        });
        for (const [gid, preparedAt] of rows) {
          if (gid === null) continue;
          const base = gid.slice(0, gid.lastIndexOf("_"));
          if (this.#unfinished.has(base) || this.transactions.has(base)) continue;
          if (Number(preparedAt) < wal.createdAt) {
            log.warn(
              `two-phase commit: rolling back '${gid}' on shard ${shard} (prepared before the log existed)`,
            );
            await this.runOn(tx, { shard, sql: `ROLLBACK PREPARED '${gid}'`, missingOk: true });
          } else {
            log.warn(
              `two-phase commit: prepared transaction '${gid}' on shard ${shard} is not in the log; ` +
                "left alone (is another pgdog running with the same NODE_ID?)",
            );
          }
        }
      }
    }
  }
}

/** This process's (worker's) two-phase commit state. */
export const twoPhaseCommits: TwoPcManager = new TwoPcManager();
