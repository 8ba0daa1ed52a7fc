/**
 * Streaming replicas of throwaway clusters.
 *
 * A replica is a base backup of a running cluster (`pg_basebackup -R -X
 * stream`), started as a hot standby that streams from it. It is a
 * {@linkcode PgCluster} like any other (own port, config directory, log,
 * cleanup) with controls for replay and promotion.
 *
 * ```ts
 * await using primary = await startPostgres();
 * await using replica = await startReplica(primary);
 * await primary.sql("CREATE TABLE t AS SELECT 1 AS x");
 * await replica.waitForReplay();
 * const rows = await replica.sql("SELECT x FROM t");
 * ```
 *
 * @module
 */

import { asPostgresUser, NO_PGPASS, pgTool, requirePgBinDir, runCommand } from "./command.ts";
import { type PgCluster, type SettingValue, startPostgresFrom } from "./postgres.ts";

/** Options for {@linkcode startReplica}. */
export interface ReplicaOptions {
  /**
   * postgresql.conf settings. The replica inherits the settings the primary
   * was started with (except the port), then gets `hot_standby = on` and
   * `wal_retrieve_retry_interval = 200ms` (reconnect quickly after the
   * primary restarts), then these.
   */
  settings?: Record<string, SettingValue>;
  /**
   * Stream through this physical replication slot on the primary
   * (`primary_slot_name`); it is created when missing, and left in place
   * when the replica is destroyed. By default the harness creates a slot
   * named `pgdog_replica_<random>` and drops it when the replica is destroyed.
   */
  slot?: string;
  /** `application_name` of the replica's WAL receiver (as seen in pg_stat_replication). */
  applicationName?: string;
}

/** Options for {@linkcode ReplicaControls.waitForReplay}. */
export interface WaitForReplayOptions {
  /** Give up (throw) after this many milliseconds; 30 000 by default. */
  timeoutMs?: number;
}

/** Options for {@linkcode ReplicaControls.promote}. */
export interface PromoteOptions {
  /** Give up (throw) after this many milliseconds; 60 000 by default. */
  timeoutMs?: number;
}

/** Replication controls of a replica from {@linkcode startReplica}. */
export interface ReplicaControls {
  /** The cluster this replica was cloned from and streams from. */
  readonly primary: PgCluster;
  /**
   * The physical replication slot on the primary it streams through (the
   * slot reserves the WAL the replica still needs, even while it is stopped).
   */
  readonly slot: string;
  /** `pg_ctl promote`, then wait until `pg_is_in_recovery()` is false. */
  promote(options?: PromoteOptions): Promise<void>;
  /** `pg_wal_replay_pause()`, then wait until replay is paused. */
  pauseReplay(): Promise<void>;
  /** `pg_wal_replay_resume()` (replay is no longer paused when it returns). */
  resumeReplay(): Promise<void>;
  /**
   * Wait until the replica has replayed all WAL the primary has inserted so
   * far (the primary's WAL is flushed first, so commits made with the
   * harness's default `synchronous_commit = off` count too). Throws on
   * timeout, for instance while replay is paused.
   */
  waitForReplay(options?: WaitForReplayOptions): Promise<void>;
  /** Whether the replica is still a standby (`SELECT pg_is_in_recovery()`). */
  isInRecovery(): Promise<boolean>;
  /** Bytes of WAL the primary has inserted that the replica has not replayed yet. */
  lagBytes(): Promise<number>;
}

/** A running replica: a {@linkcode PgCluster} with {@linkcode ReplicaControls}. */
export type PgReplica = PgCluster & ReplicaControls;

const REPLICA_DEFAULTS: Record<string, SettingValue> = {
  hot_standby: true,
  wal_retrieve_retry_interval: "200ms",
};

function quoteLiteral(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

/** A connection string value for libpq (single-quoted, \ and ' escaped). */
function connValue(value: string): string {
  return `'${value.replaceAll("\\", "\\\\").replaceAll("'", "\\'")}'`;
}

/** `X/Y` as a number of bytes. */
function parseLsn(text: string): bigint {
  const match = /^([0-9A-Fa-f]+)\/([0-9A-Fa-f]+)$/.exec(text.trim());
  if (!match) throw new Error(`not an LSN: ${JSON.stringify(text)}`);
  return (BigInt(`0x${match[1]}`) << 32n) + BigInt(`0x${match[2]}`);
}

function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${
    (lsn & 0xffffffffn).toString(16).toUpperCase()
  }`;
}

/**
 * The primary's insert position points past the page header when it sits at
 * a page boundary, while a replayed record's end points at the boundary:
 * move a position just past a page header back to the boundary. (No record
 * ends there: the header takes those bytes.)
 */
function normalizeLsn(lsn: bigint, pageSize: bigint, segmentSize: bigint): bigint {
  const SHORT_HEADER = 24n; // MAXALIGN(SizeOfXLogShortPHD)
  const LONG_HEADER = 40n; // MAXALIGN(SizeOfXLogLongPHD), first page of a segment
  if (lsn % segmentSize === LONG_HEADER) return lsn - LONG_HEADER;
  if (lsn % pageSize === SHORT_HEADER && lsn % segmentSize >= pageSize) return lsn - SHORT_HEADER;
  return lsn;
}

/** The upstream's WAL position: inserted WAL on a primary, replayed WAL on a standby. */
const UPSTREAM_LSN_SQL = "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() " +
  "ELSE pg_current_wal_insert_lsn() END, current_setting('wal_block_size'), " +
  "(SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')";

/**
 * The upstream's WAL position, normalized. With `flush`, a primary first
 * commits a transaction with an xid and `synchronous_commit = local`, which
 * flushes all WAL before it (asynchronous commits otherwise wait up to
 * wal_writer_delay for the WAL writer, and only flushed WAL is streamed).
 */
async function upstreamLsn(upstream: PgCluster, flush: boolean): Promise<bigint> {
  const flushSql = flush
    ? "BEGIN; SET LOCAL synchronous_commit = local; " +
      "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE txid_current() END; COMMIT; "
    : "";
  const rows = await upstream.sql(flushSql + UPSTREAM_LSN_SQL);
  const [lsn, pageSize, segmentSize] = rows.at(-1) ?? [];
  if (!lsn) throw new Error("the primary reported no WAL position");
  return normalizeLsn(parseLsn(lsn), BigInt(pageSize), BigInt(segmentSize));
}

class WaitTimeout extends Error {}

/**
 * Drop a replication slot once it is inactive (the walsender of a replica
 * that just stopped may take a moment to exit); gone already is fine.
 */
async function dropSlot(upstream: PgCluster, slot: string): Promise<void> {
  const name = quoteLiteral(slot);
  await upstream.sql(`DO $drop$
DECLARE deadline timestamptz := clock_timestamp() + interval '5 seconds';
BEGIN
  WHILE EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = ${name} AND active)
    AND clock_timestamp() < deadline LOOP
    PERFORM pg_sleep(0.002);
  END LOOP;
  PERFORM pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = ${name};
END $drop$`);
}

/**
 * Wait on the server until the SQL boolean `condition` holds, polling every
 * 2 ms in a DO block. Without `before`, the block commits between polls, so
 * it holds no snapshot that a recovery conflict would make replay wait for;
 * with it, `before` (SQL statements) runs first in the same transaction, and
 * the block cannot commit. Throws on timeout.
 */
async function waitOnServer(
  cluster: PgCluster,
  condition: string,
  what: string,
  options: { timeoutMs: number; before?: string },
): Promise<void> {
  const ms = Math.max(1, Math.round(options.timeoutMs));
  const marker = "pgdog-harness-wait-timeout";
  const block = `DO $wait$
DECLARE deadline timestamptz := clock_timestamp() + interval '${ms} milliseconds';
BEGIN
  LOOP
    EXIT WHEN (${condition});
    IF clock_timestamp() > deadline THEN RAISE EXCEPTION '${marker}'; END IF;
    ${options.before === undefined ? "COMMIT;" : ""}
    PERFORM pg_sleep(0.002);
  END LOOP;
END $wait$`;
  try {
    await cluster.sql(`${options.before ?? ""}${block}`, { timeoutMs: ms + 30_000 });
  } catch (err) {
    if (String(err).includes(marker)) {
      throw new WaitTimeout(`timed out after ${ms} ms waiting for ${what}`);
    }
    throw err;
  }
}

/**
 * Start a streaming replica of the running cluster `primary`: a base backup
 * (`pg_basebackup -R -X stream -c fast`, which writes standby.signal and
 * primary_conninfo) started as a hot standby on its own port, with the
 * primary's pg_hba.conf and settings (see {@linkcode ReplicaOptions.settings}).
 * It is destroyed like any cluster: `await using`, `destroy()`, or at exit;
 * it stops and starts even when its primary is gone, and reconnects within
 * about 200 ms when the primary comes back.
 *
 * `primary` may itself be a replica (cascading replication) when the top
 * primary runs with `full_page_writes: true`: the harness turns it off, and
 * PostgreSQL refuses base backups of a standby that replayed such WAL.
 * {@linkcode ReplicaControls.waitForReplay} and
 * {@linkcode ReplicaControls.lagBytes} query the primary, so it must be up.
 */
export async function startReplica(
  primary: PgCluster,
  options: ReplicaOptions = {},
): Promise<PgReplica> {
  const bin = requirePgBinDir();
  // A slot that reserves WAL before the backup starts: pg_basebackup's own
  // (temporary) slot comes only after the start, and a checkpoint in between
  // (another backup's, with 1 MB segments) may recycle WAL the backup needs.
  const ownSlot = options.slot === undefined;
  const slot = options.slot ??
    `pgdog_replica_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  await primary.sql(
    "SELECT pg_create_physical_replication_slot(s, true) FROM (VALUES (" +
      `${quoteLiteral(slot)})) AS v(s) ` +
      "WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = s)",
  );
  const connParts = [`host=${primary.host}`, `port=${primary.port}`, "user=postgres"];
  if (options.applicationName !== undefined) {
    connParts.push(`application_name=${connValue(options.applicationName)}`);
  }
  const populate = async (dataDir: string): Promise<void> => {
    const args = [
      "-d",
      connParts.join(" "),
      "-D",
      dataDir,
      "-R",
      "-X",
      "stream",
      "-c",
      "fast",
      "--no-sync",
      "--no-manifest",
      "-w",
      "-S",
      slot,
    ];
    const [cmd, cmdArgs] = asPostgresUser(pgTool("pg_basebackup"), args);
    const result = await runCommand(cmd, cmdArgs, {
      env: {
        LC_ALL: "C",
        PGSSLMODE: "disable",
        PGPASSFILE: NO_PGPASS,
        PGCONNECT_TIMEOUT: "10",
      },
      timeoutMs: 120_000,
    });
    if (result.code !== 0) {
      const why = result.timedOut ? " (timed out)" : "";
      throw new Error(
        `pg_basebackup of ${primary.host}:${primary.port} failed${why} (exit ${result.code}):\n` +
          `${result.stdout}${result.stderr}`,
      );
    }
  };
  let cluster: PgCluster;
  try {
    cluster = await startPostgresFrom(primary, populate, {
      settings: { ...REPLICA_DEFAULTS, ...options.settings },
    });
  } catch (err) {
    if (ownSlot) await dropSlot(primary, slot).catch(() => {});
    throw err;
  }
  const destroyCluster = cluster.destroy.bind(cluster);

  const controls: ReplicaControls & Pick<PgCluster, "destroy"> = {
    primary,
    slot,
    async destroy(): Promise<void> {
      await destroyCluster();
      if (ownSlot && primary.running) await dropSlot(primary, slot).catch(() => {});
    },
    async promote(promoteOptions: PromoteOptions = {}): Promise<void> {
      const [cmd, args] = asPostgresUser(`${bin}/pg_ctl`, ["-D", cluster.dataDir, "-W", "promote"]);
      const result = await runCommand(cmd, args, { env: { LC_ALL: "C" }, timeoutMs: 60_000 });
      if (result.code !== 0) {
        throw new Error(`pg_ctl promote failed (exit ${result.code}): ${result.stderr.trim()}`);
      }
      await waitOnServer(cluster, "NOT pg_is_in_recovery()", "the promotion to finish", {
        timeoutMs: promoteOptions.timeoutMs ?? 60_000,
      });
    },
    async pauseReplay(): Promise<void> {
      await waitOnServer(cluster, "pg_get_wal_replay_pause_state() = 'paused'", "replay to pause", {
        timeoutMs: 30_000,
        before: "SELECT pg_wal_replay_pause(); ",
      });
    },
    async resumeReplay(): Promise<void> {
      const rows = await cluster.sql(
        "SELECT pg_wal_replay_resume(); SELECT pg_get_wal_replay_pause_state()",
      );
      const state = rows.at(-1)?.[0];
      if (state !== "not paused") throw new Error(`replay is still ${state} after resuming`);
    },
    async waitForReplay(waitOptions: WaitForReplayOptions = {}): Promise<void> {
      const target = await upstreamLsn(primary, true);
      try {
        await waitOnServer(
          cluster,
          `pg_last_wal_replay_lsn() >= ${quoteLiteral(formatLsn(target))}::pg_lsn`,
          `replay up to ${formatLsn(target)}`,
          { timeoutMs: waitOptions.timeoutMs ?? 30_000 },
        );
      } catch (err) {
        if (!(err instanceof WaitTimeout)) throw err;
        const replayed = await cluster.sql(
          "SELECT pg_last_wal_replay_lsn(), " +
            "pg_get_wal_replay_pause_state()",
        ).catch(() => [["?", "?"]]);
        throw new Error(
          `${(err as Error).message}: replayed up to ${replayed[0]?.[0]} ` +
            `(replay ${replayed[0]?.[1]})`,
        );
      }
    },
    async isInRecovery(): Promise<boolean> {
      const rows = await cluster.sql("SELECT pg_is_in_recovery()");
      return rows[0]?.[0] === "t";
    },
    async lagBytes(): Promise<number> {
      const upstream = await upstreamLsn(primary, false);
      const rows = await cluster.sql("SELECT pg_last_wal_replay_lsn()");
      const replayed = rows[0]?.[0];
      if (!replayed) throw new Error("the replica reports no replay position (not a standby?)");
      const lag = upstream - parseLsn(replayed);
      return lag > 0n ? Number(lag) : 0;
    },
  };
  return Object.assign(cluster, controls);
}
