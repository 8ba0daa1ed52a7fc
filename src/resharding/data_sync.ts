/**
 * Moving the data of one database onto another (COPY_DATA, REPLICATE): per source shard, a
 * permanent logical replication slot created first (its exported snapshot is what every table
 * copy reads), the tables copied into the destination's shards, then the slot's changes applied
 * to the destination for as long as the task runs. The state is kept here for SHOW TABLE_COPIES
 * and SHOW REPLICATION_SLOTS, and for the cutover to wait on.
 *
 * @module
 */

import type { PluginSet } from "../plugin/mod.ts";
import type { GeneralConfig } from "../config/types.ts";
import { log } from "../log.ts";
import { errorMessage } from "../log.ts";
import { ChangeApplier } from "./apply.ts";
import { type Lsn, parseLsn } from "./changes.ts";
import { PgConn, PgError } from "./pg_conn.ts";
import { RowPlacer, tablePlacement } from "./placement.ts";
import { createSlot, dropSlot, ReplicationStream } from "./replication.ts";
import { type ReshardingDatabase, ReshardingError, type ShardHost } from "./shards.ts";
import { copyTableWithRetry, publicationTables, quoteIdent, schemaShard } from "./table_copy.ts";

/** The schema of pgdog's own bookkeeping on destination shards (apply.ts's progress rows). */
const RESHARDING_SCHEMA = "pgdog_resharding";

/** One table copy from one source shard, as SHOW TABLE_COPIES lists it. */
export interface TableCopyState {
  schema: string;
  table: string;
  sourceShard: number;
  status: "waiting" | "copying" | "done" | "failed";
  rows: number;
  bytes: number;
  startedAt: number;
  endedAt: number;
  sql: string;
  error?: string;
  /** The command line's progress view has shown its end. */
  shownDone?: boolean;
}

/** One source shard's replication slot, as SHOW REPLICATION_SLOTS lists it. */
export interface SlotState {
  host: string;
  port: number;
  database: string;
  name: string;
  sourceShard: number;
  /** The end of the last source transaction applied on the destination. */
  applied: Lsn;
  /** The source's current WAL position, last read. */
  current: Lsn;
  /** How far the stream confirmed: applied transactions, or an idle source's WAL end. */
  idleUpTo: Lsn;
  /** Still copying tables (changes are applied after). */
  copying: boolean;
  lastTransactionAt: number;
}

/** What a data sync needs from the running pgdog. */
export interface DataSyncOptions {
  source: ReshardingDatabase;
  destination: ReshardingDatabase;
  publication: string;
  /** Slot name prefix (each source shard's slot is `<prefix>_<shard>`). */
  slot: string;
  /** REPLICATE: no copy; the slots exist already (or are created now, without a copy). */
  replicateOnly: boolean;
  /** Per destination shard, the source shard that is the same database (grow in place), or -1. */
  shared: number[];
  plugins: PluginSet | null;
  format: "binary" | "text";
  parallelCopies: number;
  copyAttempts: number;
  copyRetryDelayMs: number;
  replicationAttempts: number;
  replicationRetryDelayMs: number;
  signal: AbortSignal;
  /** Says what it is doing (SHOW TASKS inner_status). */
  status(text: string): void;
}

/** The settings of a data sync that come from `[general]`. */
export function dataSyncSettings(
  g: GeneralConfig,
): Pick<
  DataSyncOptions,
  | "format"
  | "parallelCopies"
  | "copyAttempts"
  | "copyRetryDelayMs"
  | "replicationAttempts"
  | "replicationRetryDelayMs"
> {
  return {
    format: g.resharding_copy_format,
    parallelCopies: g.resharding_parallel_copies,
    copyAttempts: g.resharding_copy_retry_max_attempts,
    copyRetryDelayMs: g.resharding_copy_retry_min_delay,
    replicationAttempts: g.resharding_replication_retry_max_attempts,
    replicationRetryDelayMs: g.resharding_replication_retry_min_delay,
  };
}

/** A running data sync: copy, then changes applied until stopped. */
export class DataSync {
  readonly tables: TableCopyState[] = [];
  readonly slots: SlotState[] = [];
  readonly #options: DataSyncOptions;
  readonly #streams = new Map<number, ReplicationStream>();
  #copied = Promise.withResolvers<void>();
  #failure: Error | null = null;

  /** Stops every shard's work: the task's stop, or one shard's failure. */
  readonly #stop = new AbortController();

  constructor(options: DataSyncOptions) {
    this.#options = options;
    if (options.signal.aborted) this.#stop.abort();
    else options.signal.addEventListener("abort", () => this.#stop.abort(), { once: true });
    this.#copied.promise.catch(() => {});
    for (const s of options.source.shards) {
      this.slots.push({
        host: s.primary.host,
        port: s.primary.port,
        database: s.primary.database,
        name: slotName(options.slot, s.shard),
        sourceShard: s.shard,
        applied: 0n,
        current: 0n,
        idleUpTo: 0n,
        copying: !options.replicateOnly,
        lastTransactionAt: 0,
      });
    }
  }

  /** Resolves when every table is copied (rejects when the copy failed). */
  get copied(): Promise<void> {
    return this.#copied.promise;
  }

  /** Why it failed, once it has. */
  get failure(): Error | null {
    return this.#failure;
  }

  /** Runs until stopped (resolves) or failed (rejects). */
  async run(): Promise<void> {
    const o = this.#options;
    let copies = 0;
    try {
      // A copy starts from empty tables: rows an earlier, stopped run left would be doubled.
      if (!o.replicateOnly) await this.#emptyDestination();
      const runs = o.source.shards.map((s) =>
        this.#runShard(s, () => {
          if (++copies === o.source.shards.length) this.#copied.resolve();
        })
      );
      await Promise.all(runs);
    } catch (e) {
      this.#failure = e instanceof Error ? e : new Error(String(e));
      // The other shards stop too: a failed data sync is started again as a whole.
      this.#stop.abort();
      this.#copied.reject(this.#failure);
      for (const s of this.#streams.values()) s.close();
      if (!o.signal.aborted) throw this.#failure;
    }
  }

  /**
   * Whether every stream has applied the source's WAL up to `targets` (per source shard; taken
   * after traffic stopped) and holds no transaction half applied.
   */
  caughtUp(targets: Map<number, Lsn>): boolean {
    this.#readConfirmed();
    return this.slots.every((s) => {
      const target = targets.get(s.sourceShard) ?? 0n;
      return s.applied >= target || s.idleUpTo >= target;
    });
  }

  /** Asks every stream for a keepalive now (its WAL position), for caughtUp. */
  poke(): void {
    this.#readConfirmed();
    for (const s of this.#streams.values()) void s.sendStatus({ reply: true });
  }

  /** What each stream has confirmed (applied transactions, or an idle source's WAL end). */
  #readConfirmed(): void {
    for (const [shard, stream] of this.#streams) {
      const slot = this.slots[shard];
      if (stream.confirmed > slot.idleUpTo) slot.idleUpTo = stream.confirmed;
    }
  }

  /** Lag in bytes of each slot (the source's WAL not yet applied), and the largest. */
  lag(): number {
    let max = 0;
    for (const s of this.slots) max = Math.max(max, Number(slotLagBytes(s)));
    return max;
  }

  /** Reads each source shard's current WAL position (for lag). */
  async refreshPositions(): Promise<void> {
    await Promise.all(this.#options.source.shards.map(async (s) => {
      const conn = await PgConn.connect(s.primary);
      try {
        const r = await conn.query("SELECT pg_current_wal_lsn()::text");
        const slot = this.slots[s.shard];
        slot.current = parseLsn(r.rows[0][0] ?? "0/0");
        this.#readConfirmed();
      } finally {
        conn.close();
      }
    }));
  }

  /** Stops the streams (the slots stay: STOP_TASK drops them with {@linkcode dropSlots}). */
  stop(): void {
    for (const s of this.#streams.values()) s.close();
  }

  /** Drops every source shard's slot. */
  async dropSlots(): Promise<void> {
    const o = this.#options;
    await Promise.all(
      o.source.shards.map((s) =>
        dropSlot(s.primary, slotName(o.slot, s.shard)).catch((e) =>
          log.warn(
            `resharding: could not drop slot ${slotName(o.slot, s.shard)}: ${errorMessage(e)}`,
          )
        )
      ),
    );
  }

  /** Empties the publication's tables on the destination's new (not shared) shards. */
  async #emptyDestination(): Promise<void> {
    const o = this.#options;
    const tables = (await publicationTables(o.source.shards[0].primary, o.publication))
      .filter((t) => t.schema !== RESHARDING_SCHEMA);
    if (tables.length === 0) return;
    const names = tables.map((t) => `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`).join(", ");
    o.status("emptying the destination's tables");
    await Promise.all(o.destination.shards.map(async (d) => {
      if (o.shared[d.shard] >= 0) return;
      const conn = await PgConn.connect(d.primary);
      try {
        await conn.query(`TRUNCATE ${names}`);
      } catch (e) {
        // A table missing there is reported by its copy, with what to do (SCHEMA_SYNC pre).
        if (!(e instanceof PgError && e.code === "42P01")) throw e;
      } finally {
        conn.close();
      }
    }));
  }

  async #runShard(shard: ShardHost, copiedOne: () => void): Promise<void> {
    const o = this.#options;
    const slot = this.slots[shard.shard];
    const placer = new RowPlacer(o.destination, { plugins: o.plugins });
    let startLsn: Lsn | undefined;
    if (!o.replicateOnly) {
      o.status(`creating slot ${slot.name} on shard ${shard.shard}`);
      // A slot left by an earlier run that never finished its copy is useless: start over.
      await dropSlot(shard.primary, slot.name);
      const created = await createSlot(shard.primary, { name: slot.name, exportSnapshot: true });
      startLsn = created.consistentPoint;
      slot.applied = created.consistentPoint;
      try {
        await this.#copyShard(shard, { snapshot: created.snapshot, placer });
      } finally {
        created.conn.close();
      }
      slot.copying = false;
      copiedOne();
    } else {
      const existing = await slotExists(shard.primary, slot.name);
      if (!existing) {
        const created = await createSlot(shard.primary, { name: slot.name });
        created.conn.close();
        startLsn = created.consistentPoint;
      }
      copiedOne();
    }
    await this.#stream(shard, { placer, startLsn });
  }

  async #copyShard(
    shard: ShardHost,
    options: { snapshot: string | null; placer: RowPlacer },
  ): Promise<void> {
    const o = this.#options;
    const tables = await publicationTables(shard.primary, o.publication);
    const mine: TableCopyState[] = [];
    const work: Array<() => Promise<void>> = [];
    for (const t of tables) {
      // pgdog's own bookkeeping (a reverse replication's progress rows) is not data to move.
      if (t.schema === RESHARDING_SCHEMA) continue;
      const state: TableCopyState = {
        schema: t.schema,
        table: t.name,
        sourceShard: shard.shard,
        status: "waiting",
        rows: 0,
        bytes: 0,
        startedAt: 0,
        endedAt: 0,
        sql: `COPY ${quoteIdent(t.schema)}.${quoteIdent(t.name)} TO STDOUT`,
      };
      this.tables.push(state);
      mine.push(state);
      work.push(async () => {
        this.#stop.signal.throwIfAborted();
        state.status = "copying";
        state.startedAt = Date.now();
        try {
          const done = await copyTableWithRetry({
            source: shard.primary,
            snapshot: options.snapshot,
            table: t,
            destination: o.destination,
            placer: options.placer,
            shared: o.shared,
            sourceShard: shard.shard,
            format: o.format,
            attempts: o.copyAttempts,
            minDelayMs: o.copyRetryDelayMs,
            sourceDatabase: o.source,
            signal: this.#stop.signal,
            onProgress: (rows, bytes) => {
              state.rows = rows;
              state.bytes = bytes;
            },
          });
          state.rows = done.rows;
          state.bytes = done.bytes;
          state.status = "done";
        } catch (e) {
          state.status = "failed";
          state.error = errorMessage(e);
          throw e;
        } finally {
          state.endedAt = Date.now();
        }
      });
    }
    o.status(`copying ${work.length} tables from shard ${shard.shard}`);
    let next = 0;
    const lanes = Array.from({ length: Math.max(1, o.parallelCopies) }, async () => {
      while (next < work.length) await work[next++]();
    });
    await Promise.all(lanes);
  }

  /** Applies the slot's changes to the destination until stopped; reconnects after failures. */
  async #stream(
    shard: ShardHost,
    options: { placer: RowPlacer; startLsn: Lsn | undefined },
  ): Promise<void> {
    const o = this.#options;
    const slot = this.slots[shard.shard];
    let failures = 0;
    let startLsn = options.startLsn;
    while (!this.#stop.signal.aborted) {
      const applier = new ChangeApplier({
        destination: o.destination,
        placer: options.placer,
        shared: o.shared,
        sourceShard: shard.shard,
        slot: slot.name,
        source: o.source,
      });
      let stream: ReplicationStream | null = null;
      try {
        await applier.start();
        stream = await ReplicationStream.start(shard.primary, {
          slot: slot.name,
          publication: o.publication,
          startLsn,
        });
        this.#streams.set(shard.shard, stream);
        o.status(`replicating from ${this.slots.length} shards`);
        const abort = () => stream?.close();
        this.#stop.signal.addEventListener("abort", abort, { once: true });
        // Stopped while the stream was starting: the listener came too late to hear it.
        if (this.#stop.signal.aborted) abort();
        try {
          await this.#pump(shard.shard, { stream, applier });
        } finally {
          this.#stop.signal.removeEventListener("abort", abort);
        }
        if (this.#stop.signal.aborted) return;
        throw new Error("the source ended the replication stream");
      } catch (e) {
        if (this.#stop.signal.aborted) return;
        failures++;
        const max = o.replicationAttempts;
        log.warn(
          `resharding: replication from shard ${shard.shard} failed (${failures}` +
            `${max > 0 ? ` of ${max}` : ""}): ${errorMessage(e)}`,
        );
        if (e instanceof ReshardingError || (max > 0 && failures >= max)) throw e;
        const delay = Math.min(
          o.replicationRetryDelayMs * 2 ** (failures - 1),
          o.replicationRetryDelayMs * 32,
        );
        await abortableSleep(delay, this.#stop.signal);
        // Resume where the slot confirmed; the destination's progress rows skip what was applied.
        startLsn = undefined;
      } finally {
        stream?.close();
        applier.close();
        this.#streams.delete(shard.shard);
      }
    }
  }

  async #pump(
    sourceShard: number,
    options: { stream: ReplicationStream; applier: ChangeApplier },
  ): Promise<void> {
    const { stream, applier } = options;
    const slot = this.slots[sourceShard];
    /** Relations whose rows are on every shard: their changes come from source shard 0 only. */
    const skipped = new Set<number>();
    for (;;) {
      const next = await stream.next();
      if (next === null) return;
      const c = next.change;
      switch (c.kind) {
        case "relation": {
          if (c.schema === RESHARDING_SCHEMA) {
            skipped.add(c.oid);
            break;
          }
          if (sourceShard !== 0) {
            const placement = tablePlacement(this.#options.destination, {
              table: { schema: c.schema, name: c.name },
              columns: c.columns.map((col) => col.name),
            });
            // A schema-sharded table lives on one source shard: its changes come from there.
            const table = { schema: c.schema, name: c.name };
            if (placement.kind === "all" && schemaShard(this.#options.source, table) === null) {
              skipped.add(c.oid);
            } else skipped.delete(c.oid);
          }
          break;
        }
        case "insert":
        case "update":
        case "delete":
          if (skipped.has(c.relation)) continue;
          break;
        case "truncate":
          if (c.relations.every((r) => skipped.has(r))) continue;
          break;
      }
      await applier.apply(next);
      if (c.kind === "commit") {
        slot.applied = applier.applied();
        slot.lastTransactionAt = applier.lastTransactionAt();
        stream.confirm(slot.applied);
      }
    }
  }
}

/** The slot of one source shard. */
export function slotName(prefix: string, shard: number): string {
  return `${prefix}_${shard}`;
}

/** Bytes of the source's WAL the slot has not applied (0 when idle at the source's position). */
export function slotLagBytes(s: SlotState): bigint {
  const done = s.applied > s.idleUpTo ? s.applied : s.idleUpTo;
  return s.current > done ? s.current - done : 0n;
}

async function slotExists(login: ShardHost["primary"], name: string): Promise<boolean> {
  const conn = await PgConn.connect(login);
  try {
    const r = await conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", [name]);
    return r.rows.length > 0;
  } finally {
    conn.close();
  }
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
