/**
 * The two-phase commit log (`two_phase_commit_wal_dir`): what pgdog decided about each
 * transaction it commits on several shards, kept on disk so that after a crash it finishes them.
 *
 * Records: Begin (before any PREPARE TRANSACTION: the gid and the participants), Committing (the
 * decision, fsynced before any COMMIT PREPARED) and End (every participant finished). Each record
 * is framed as `u32 length, u32 CRC-32 of the payload, payload (JSON)`: a torn or damaged record
 * (a crash while writing) fails its check and it and what follows in that file are ignored.
 *
 * The log is a set of segment files `w<worker>-<seq>.wal` (one set per worker with `[general]
 * workers` > 1), each up to `two_phase_commit_wal_segment_size` bytes. A process never appends
 * to the files of an earlier run: it starts a new segment. The checkpointer deletes a segment
 * (not the current one) once every transaction with a record in it has ended, so a transaction
 * still open keeps each of its segments, and the log does not grow without bound.
 *
 * @module
 */

import { log } from "../log.ts";

/** Stands for a pending fsync queued as a microtask (fsync_interval 0). */
const SYNC_QUEUED = "queued";

/** One participant of a transaction: a shard of a database, reached as a user. */
export interface WalTransaction {
  /** The gid without its shard suffix (see gid.ts). */
  gid: string;
  database: string;
  user: string;
  /** The shards that prepared (or will prepare) their part. */
  shards: number[];
  /** When it began, ms since the epoch. */
  at: number;
}

/** A record of the log. */
export type WalRecord =
  | ({ t: "begin" } & WalTransaction)
  | ({ t: "commit" } & WalTransaction)
  | { t: "end"; gid: string };

/** A transaction as replaying the log leaves it: decided (Committing logged) or not. */
export interface ReplayedTransaction extends WalTransaction {
  decided: boolean;
}

/** Log settings. */
export interface WalOptions {
  /** Folder of the log. */
  dir: string;
  /** This worker (0 when there is one). */
  worker: number;
  /** How many workers there are (worker 0 also adopts the files of workers beyond the count). */
  workers: number;
  segmentSize: number;
  /** Durable records within this many ms share one fsync (0: each its own). */
  fsyncInterval: number;
  /** Checkpoint whenever a new segment starts (two_phase_commit_wal_checkpoint_interval = 0). */
  checkpointOnRotate?: boolean;
}

const HEADER = 8;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** CRC-32 (IEEE) of `data`. */
export function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** One record framed: length, checksum, payload. */
export function frameRecord(record: WalRecord): Uint8Array {
  const payload = encoder.encode(JSON.stringify(record));
  const out = new Uint8Array(HEADER + payload.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, payload.length);
  view.setUint32(4, crc32(payload));
  out.set(payload, HEADER);
  return out;
}

/** The records of one segment's bytes, up to the first torn or damaged one. */
export function readRecords(data: Uint8Array): { records: WalRecord[]; torn: boolean } {
  const records: WalRecord[] = [];
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let at = 0;
  while (at < data.length) {
    if (data.length - at < HEADER) return { records, torn: true };
    const length = view.getUint32(at);
    const sum = view.getUint32(at + 4);
    if (length === 0 || at + HEADER + length > data.length) return { records, torn: true };
    const payload = data.subarray(at + HEADER, at + HEADER + length);
    if (crc32(payload) !== sum) return { records, torn: true };
    try {
      records.push(JSON.parse(decoder.decode(payload)) as WalRecord);
    } catch {
      return { records, torn: true };
    }
    at += HEADER + length;
  }
  return { records, torn: false };
}

/** A segment file's name, and what it says. */
function segmentOf(name: string): { worker: number; seq: number } | null {
  const m = /^w(\d+)-(\d{8})\.wal$/.exec(name);
  return m === null ? null : { worker: Number(m[1]), seq: Number(m[2]) };
}

function segmentName(worker: number, seq: number): string {
  return `w${worker}-${String(seq).padStart(8, "0")}.wal`;
}

/** The two-phase commit log of one worker. */
export class TwoPcWal {
  readonly #options: WalOptions;
  #file: Deno.FsFile | null = null;
  #seq = 0;
  #size = 0;
  /** Segment file name → gids with a record in it. */
  readonly #segments = new Map<string, Set<string>>();
  /** Gids whose End is written. */
  readonly #ended = new Set<string>();
  /** Waiters for the next fsync (grouped by fsync_interval). */
  #syncWaiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  #syncTimer: ReturnType<typeof setTimeout> | typeof SYNC_QUEUED | null = null;
  /** When this worker's log was first created (ms): prepared transactions older than it can't be in it. */
  createdAt = 0;

  constructor(options: WalOptions) {
    this.#options = options;
  }

  /** The folder. */
  get dir(): string {
    return this.#options.dir;
  }

  /** Segment files on disk (for tests and SHOW). */
  get segments(): string[] {
    return [...this.#segments.keys()];
  }

  /**
   * Opens the log: creates the folder, reads every segment of this worker (worker 0 also those
   * of workers beyond the count), and starts a new segment. Returns the transactions not ended.
   */
  async open(): Promise<ReplayedTransaction[]> {
    const o = this.#options;
    await Deno.mkdir(o.dir, { recursive: true });
    const marker = `${o.dir}/w${o.worker}.created`;
    try {
      this.createdAt = Number((await Deno.readTextFile(marker)).trim());
    } catch {
      this.createdAt = Date.now();
      await Deno.writeTextFile(marker, `${this.createdAt}\n`);
    }
    const names: Array<{ name: string; worker: number; seq: number }> = [];
    for await (const entry of Deno.readDir(o.dir)) {
      const s = entry.isFile ? segmentOf(entry.name) : null;
      if (s === null) continue;
      if (s.worker === o.worker || (o.worker === 0 && s.worker >= o.workers)) {
        names.push({ name: entry.name, ...s });
      }
    }
    names.sort((a, b) => a.worker - b.worker || a.seq - b.seq);
    const open = new Map<string, ReplayedTransaction>();
    for (const { name, worker, seq } of names) {
      if (worker === o.worker) this.#seq = Math.max(this.#seq, seq);
      const data = await Deno.readFile(`${o.dir}/${name}`);
      const { records, torn } = readRecords(data);
      if (torn) log.warn(`two-phase commit log ${name}: a torn record at its end is ignored`);
      const gids = new Set<string>();
      for (const r of records) {
        gids.add(r.gid);
        if (r.t === "end") {
          open.delete(r.gid);
          this.#ended.add(r.gid);
          continue;
        }
        const known = open.get(r.gid);
        if (this.#ended.has(r.gid)) continue;
        open.set(r.gid, {
          gid: r.gid,
          database: r.database,
          user: r.user,
          shards: r.shards,
          at: r.at,
          decided: r.t === "commit" || (known?.decided ?? false),
        });
      }
      this.#segments.set(name, gids);
    }
    this.#next();
    return [...open.values()];
  }

  /** Starts the next segment. */
  #next(): void {
    const o = this.#options;
    if (this.#file !== null) {
      try {
        this.#file.syncDataSync();
      } finally {
        this.#file.close();
      }
    }
    this.#seq++;
    const name = segmentName(o.worker, this.#seq);
    this.#file = Deno.openSync(`${o.dir}/${name}`, { create: true, write: true, truncate: true });
    this.#size = 0;
    this.#current = name;
    this.#segments.set(name, new Set());
  }

  #current = "";

  /**
   * Appends a record; with `durable`, resolves once it is on disk (fsync, grouped within
   * fsync_interval). End records need not be durable: a lost End only makes recovery finish
   * the transaction again (which answers "does not exist").
   */
  append(record: WalRecord, options: { durable: boolean }): Promise<void> {
    const frame = frameRecord(record);
    if (this.#size > 0 && this.#size + frame.length > this.#options.segmentSize) {
      this.#next();
      if (this.#options.checkpointOnRotate) this.checkpoint();
    }
    const file = this.#file!;
    let at = 0;
    while (at < frame.length) at += file.writeSync(frame.subarray(at));
    this.#size += frame.length;
    this.#segments.get(this.#current)!.add(record.gid);
    if (record.t === "end") this.#ended.add(record.gid);
    if (!options.durable) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#syncWaiters.push({ resolve, reject });
      if (this.#syncTimer !== null) return;
      if (this.#options.fsyncInterval === 0) {
        // No waiting for a timer (a timer turn costs a millisecond or more): records appended
        // in this turn of the event loop share the fsync.
        this.#syncTimer = SYNC_QUEUED;
        queueMicrotask(() => this.#sync());
        return;
      }
      this.#syncTimer = setTimeout(() => this.#sync(), this.#options.fsyncInterval);
    });
  }

  #sync(): void {
    this.#syncTimer = null;
    const waiters = this.#syncWaiters;
    if (waiters.length === 0) return;
    this.#syncWaiters = [];
    try {
      this.#file!.syncDataSync();
      for (const w of waiters) w.resolve();
    } catch (e) {
      for (const w of waiters) w.reject(e);
    }
  }

  /**
   * Deletes the segments (not the current one) whose transactions have all ended. Returns the
   * names deleted.
   */
  checkpoint(): string[] {
    const deleted: string[] = [];
    const dir = this.#options.dir;
    let synced = false;
    for (const [name, gids] of this.#segments) {
      if (name === this.#current) continue;
      let done = true;
      for (const gid of gids) {
        if (!this.#ended.has(gid)) {
          done = false;
          break;
        }
      }
      if (!done) continue;
      if (!synced) {
        // The End records that allow it must be on disk before what they close is deleted.
        this.#file?.syncDataSync();
        synced = true;
      }
      try {
        Deno.removeSync(`${dir}/${name}`);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
      this.#segments.delete(name);
      deleted.push(name);
    }
    if (deleted.length > 0) {
      // Ended gids no segment mentions any more are forgotten.
      const mentioned = new Set<string>();
      for (const gids of this.#segments.values()) for (const g of gids) mentioned.add(g);
      for (const g of [...this.#ended]) if (!mentioned.has(g)) this.#ended.delete(g);
    }
    return deleted;
  }

  /** Flushes and closes the current segment. */
  close(): void {
    if (this.#syncTimer !== null) {
      if (this.#syncTimer !== SYNC_QUEUED) clearTimeout(this.#syncTimer);
      this.#sync();
    }
    if (this.#file !== null) {
      try {
        this.#file.syncDataSync();
      } catch {
        // Closing anyway.
      }
      this.#file.close();
      this.#file = null;
    }
  }
}
