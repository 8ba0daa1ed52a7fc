/**
 * Logical replication from a source shard: slots (created with an exported snapshot for the
 * copy, dropped when done), the stream of decoded `pgoutput` changes with the status updates that
 * tell the source how far it may forget its WAL, and a slot's lag.
 *
 * @module
 */

import { formatLsn, type Lsn, parseLsn, type StreamedChange } from "./changes.ts";
import { PgConn, PgError, type ServerLogin } from "./pg_conn.ts";
import { decodePgoutput } from "./pgoutput.ts";
import { ReshardingError } from "./shards.ts";

/** A slot made by {@linkcode createSlot}. */
export interface CreatedSlot {
  name: string;
  /** Changes committed after this position are streamed; earlier ones are in the snapshot. */
  consistentPoint: Lsn;
  /** The exported snapshot (`SET TRANSACTION SNAPSHOT`), or null when none was asked for. */
  snapshot: string | null;
  /**
   * The replication connection that made the slot: keep it open and idle while the snapshot is
   * used (the snapshot lives until its next command), then close it. Closing it drops a
   * temporary slot.
   */
  conn: PgConn;
}

/** The same server as a `replication=database` connection (logical replication's walsender). */
export function replicationLogin(login: ServerLogin): ServerLogin {
  return {
    ...login,
    params: { ...login.params, replication: "database", client_encoding: "UTF8" },
  };
}

/** The same server as a plain connection. */
function plainLogin(login: ServerLogin): ServerLogin {
  if (!login.params?.replication) return login;
  const { replication: _, ...params } = login.params;
  return { ...login, params };
}

/** `"name"` (doubled inner quotes): slot and publication names as SQL identifiers. */
function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** `'text'` (doubled inner quotes). */
function quoteLiteral(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

/**
 * Creates logical replication slot `name` (plugin pgoutput) on the server of `login`, with an
 * exported snapshot when `exportSnapshot` is set. Throws PgError (42710 when the slot exists).
 */
export async function createSlot(
  login: ServerLogin,
  options: { name: string; temporary?: boolean; exportSnapshot?: boolean; timeoutMs?: number },
): Promise<CreatedSlot> {
  const conn = await PgConn.connect(replicationLogin(login), { timeoutMs: options.timeoutMs });
  try {
    // The pre-15 syntax: PostgreSQL 10 to 17 all accept it.
    const r = await conn.query(
      `CREATE_REPLICATION_SLOT ${quoteIdent(options.name)}${
        options.temporary ? " TEMPORARY" : ""
      } LOGICAL pgoutput ${options.exportSnapshot ? "EXPORT_SNAPSHOT" : "NOEXPORT_SNAPSHOT"}`,
    );
    const row = r.rows[0];
    return {
      name: row[0] ?? options.name,
      consistentPoint: parseLsn(row[1] ?? ""),
      snapshot: row[2],
      conn,
    };
  } catch (e) {
    conn.close();
    throw e;
  }
}

/**
 * Drops slot `name` on the server of `login`; resolves false when there is no such slot. A
 * walsender still streaming from it gets a second to let go, then is terminated.
 */
export async function dropSlot(
  login: ServerLogin,
  name: string,
  options: { timeoutMs?: number } = {},
): Promise<boolean> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  const graceUntil = Date.now() + 1_000;
  const conn = await PgConn.connect(plainLogin(login), { timeoutMs });
  try {
    for (;;) {
      const r = await conn.execute(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
        [name],
      );
      if (r.rows.length === 0) return false;
      const pid = r.rows[0][0];
      if (pid === null) {
        try {
          await conn.execute("SELECT pg_drop_replication_slot($1)", [name]);
          return true;
        } catch (e) {
          if (e instanceof PgError && e.code === "42704") return false;
          // 55006: taken again between the look and the drop.
          if (!(e instanceof PgError && e.code === "55006")) throw e;
        }
      } else if (Date.now() >= graceUntil) {
        await conn.execute("SELECT pg_terminate_backend($1)", [pid]);
      }
      if (Date.now() >= deadline) {
        throw new ReshardingError(
          `replication slot "${name}" on ${conn.label} is still in use after ${timeoutMs} ms`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    conn.close();
  }
}

/** How far a slot's consumer is behind the server's WAL. */
export interface SlotLag {
  /**
   * WAL bytes between the server's insert position (commits not yet flushed included) and what
   * the consumer confirmed.
   */
  lagBytes: bigint;
  /** What the consumer confirmed (null when the slot has no confirmed position). */
  confirmedFlush: Lsn | null;
  /** A walsender is streaming from it. */
  active: boolean;
}

/**
 * The lag of slot `slot`, read on `source` (a login, connected for this call, or an open plain
 * connection to reuse). Throws ReshardingError when there is no such slot.
 */
export async function slotLag(source: ServerLogin | PgConn, slot: string): Promise<SlotLag> {
  const conn = source instanceof PgConn ? source : await PgConn.connect(plainLogin(source));
  try {
    const r = await conn.execute(
      `SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                   ELSE pg_current_wal_insert_lsn() END,
              confirmed_flush_lsn, restart_lsn, active
         FROM pg_replication_slots WHERE slot_name = $1`,
      [slot],
    );
    if (r.rows.length === 0) {
      throw new ReshardingError(`replication slot "${slot}" does not exist on ${conn.label}`);
    }
    const [current, confirmed, restart, active] = r.rows[0];
    const confirmedFlush = confirmed === null ? null : parseLsn(confirmed);
    const from = confirmedFlush ?? (restart === null ? null : parseLsn(restart));
    const now = current === null ? null : parseLsn(current);
    const lag = now === null || from === null ? 0n : now - from;
    return { lagBytes: lag > 0n ? lag : 0n, confirmedFlush, active: active === "t" };
  } finally {
    if (conn !== source) conn.close();
  }
}

/** The slot's confirmed_flush_lsn (0 when it has none), read on a plain connection. */
async function slotConfirmedFlush(login: ServerLogin, slot: string): Promise<Lsn> {
  const conn = await PgConn.connect(plainLogin(login));
  try {
    const r = await conn.execute(
      "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1",
      [slot],
    );
    const text = r.rows[0]?.[0];
    return text ? parseLsn(text) : 0n;
  } finally {
    conn.close();
  }
}

/** An interval's text (`00:01:00`, `00:00:02.5`) in ms; 0 for zero or anything else. */
function intervalMs(text: string | null): number {
  const m = /^(\d+):(\d+):(\d+(?:\.\d+)?)$/.exec(text ?? "");
  return m ? ((Number(m[1]) * 60 + Number(m[2])) * 60 + Number(m[3])) * 1000 : 0;
}

/** Microseconds from the Unix epoch to PostgreSQL's (2000-01-01). */
const PG_EPOCH_US = 946_684_800_000_000n;

/** Options of {@linkcode ReplicationStream.start}. */
export interface ReplicationStreamOptions {
  slot: string;
  publication: string;
  /**
   * Where to start; the slot's confirmed position when earlier or left out (the source never
   * streams what was confirmed).
   */
  startLsn?: Lsn;
  /**
   * Longest time between two status updates (default 10 s; at most a third of the source's
   * `wal_sender_timeout`).
   */
  statusIntervalMs?: number;
  /** How long a slot still held by an ending walsender is waited for (default 10 s). */
  busyWaitMs?: number;
  /** Connection timeout (default 10 s). */
  timeoutMs?: number;
}

/**
 * A logical replication stream of one slot (pgoutput, protocol version 1, text values), read
 * with {@linkcode next}. The stream answers the source's keepalives and sends status updates
 * itself: their flush position is what {@linkcode confirm} was given (the source keeps the WAL
 * after it), sent within a second of changing and at least every `statusIntervalMs`. When every
 * transaction it delivered has been confirmed, a keepalive's WAL end is confirmed too, so an idle
 * stream shows no lag. A change's `lsn` is its XLogData's start (a Begin: the transaction's first
 * record; a Commit: the end of its commit record); Relation and Type messages, which have none,
 * get the one of the message before.
 */
export class ReplicationStream {
  readonly #conn: PgConn;
  readonly #statusIntervalMs: number;
  readonly #timer: ReturnType<typeof setInterval>;
  /** The start of the last XLogData received (the write position). */
  #received: Lsn;
  /** The flush position: the source may forget WAL before it. */
  #confirmed: Lsn;
  /** The flush position last sent. */
  #reported: Lsn = -1n;
  #lastSentAt = 0;
  /** The start of the last XLogData that had one. */
  #lastStart: Lsn;
  /** The end LSN of the last Commit delivered by next(). */
  #lastCommitEnd: Lsn = 0n;
  #inTransaction = false;
  #sending: Promise<void> = Promise.resolve();
  #failure: unknown = null;
  #closed = false;
  #closing: Promise<void> | null = null;
  #ended = false;
  #reading = false;

  private constructor(conn: PgConn, options: { confirmed: Lsn; statusIntervalMs: number }) {
    this.#conn = conn;
    this.#confirmed = options.confirmed;
    this.#received = options.confirmed;
    this.#lastStart = options.confirmed;
    this.#statusIntervalMs = options.statusIntervalMs;
    this.#timer = setInterval(() => this.#tick(), Math.min(1_000, this.#statusIntervalMs));
    Deno.unrefTimer(this.#timer);
  }

  /**
   * Connects (a replication connection) and starts streaming slot `slot` for publication
   * `publication`. Throws PgError (42704 no such slot; 55006 the slot stayed in use), or
   * ReshardingError when there is no such publication.
   */
  static async start(
    login: ServerLogin,
    options: ReplicationStreamOptions,
  ): Promise<ReplicationStream> {
    const conn = await PgConn.connect(replicationLogin(login), { timeoutMs: options.timeoutMs });
    try {
      const busyUntil = Date.now() + (options.busyWaitMs ?? 10_000);
      for (;;) {
        const r = await conn.query(
          `SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = ${
            quoteLiteral(options.publication)
          }), current_setting('wal_sender_timeout')::interval`,
        );
        // Otherwise the stream would fail only at the first change.
        if (r.rows[0][0] !== "t") {
          throw new ReshardingError(
            `publication "${options.publication}" does not exist on ${conn.label}`,
          );
        }
        const start = options.startLsn ?? 0n;
        try {
          await conn.copyBoth(
            `START_REPLICATION SLOT ${quoteIdent(options.slot)} LOGICAL ${formatLsn(start)} ` +
              `(proto_version '1', publication_names ${
                quoteLiteral(quoteIdent(options.publication))
              })`,
          );
        } catch (e) {
          // An ending walsender (a stream just closed) still holds the slot for a moment.
          if (e instanceof PgError && e.code === "55006" && Date.now() < busyUntil) {
            await new Promise((resolve) => setTimeout(resolve, 100));
            continue;
          }
          throw e;
        }
        // The slot's position, read now that nothing but this stream moves it (a walsender that
        // just let go may have moved it after an earlier look): no status update may send it back
        // (PostgreSQL before 17 would take it), or confirmed transactions would come again.
        const slotConfirmed = await slotConfirmedFlush(login, options.slot);
        // A source that drops silent standbys sooner than in three intervals hears from it
        // more often (its keepalives go unanswered while no next() is reading).
        const senderTimeoutMs = intervalMs(r.rows[0][1]);
        let statusIntervalMs = options.statusIntervalMs ?? 10_000;
        if (senderTimeoutMs > 0) {
          statusIntervalMs = Math.max(100, Math.min(statusIntervalMs, senderTimeoutMs / 3));
        }
        return new ReplicationStream(conn, {
          confirmed: start > slotConfirmed ? start : slotConfirmed,
          statusIntervalMs,
        });
      }
    } catch (e) {
      conn.close();
      throw e;
    }
  }

  /** The flush position reported to the source (what confirm() was given, or an idle WAL end). */
  get confirmed(): Lsn {
    return this.#confirmed;
  }

  /** The start of the last XLogData received. */
  get received(): Lsn {
    return this.#received;
  }

  /**
   * The next change, or null when the stream ended (the source ended it, or close() was called).
   * Throws PgError when the source reports an error or the connection fails, PgoutputError on a
   * message it cannot decode. One call at a time: a call while another is pending throws.
   */
  async next(): Promise<StreamedChange | null> {
    if (this.#reading) throw new Error("ReplicationStream.next() called while another is pending");
    this.#reading = true;
    try {
      return await this.#next();
    } finally {
      this.#reading = false;
    }
  }

  async #next(): Promise<StreamedChange | null> {
    for (;;) {
      if (this.#failure !== null) throw this.#failure;
      if (this.#closing || this.#ended) return null;
      let payload: Uint8Array | null;
      try {
        payload = await this.#conn.readCopyData();
      } catch (e) {
        if (this.#closing) return null;
        throw e;
      }
      if (payload === null) {
        this.#ended = true;
        clearInterval(this.#timer);
        return null;
      }
      const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
      if (payload[0] === 0x77 && payload.length >= 25) { // 'w' XLogData
        // Relation messages carry no position (0): they get the one of the message before.
        const start = view.getBigUint64(1);
        if (start > this.#received) this.#received = start;
        if (start !== 0n) this.#lastStart = start;
        const lsn = this.#lastStart;
        const change = decodePgoutput(payload.subarray(25));
        if (change.kind === "begin") this.#inTransaction = true;
        else if (change.kind === "commit") {
          this.#inTransaction = false;
          this.#lastCommitEnd = change.endLsn;
        }
        return { lsn, change };
      }
      if (payload[0] === 0x6b && payload.length >= 18) { // 'k' primary keepalive
        const walEnd = view.getBigUint64(1);
        // Everything before walEnd was sent; when all of it was confirmed, so is walEnd.
        if (
          !this.#inTransaction && this.#confirmed >= this.#lastCommitEnd &&
          walEnd > this.#confirmed
        ) {
          this.#confirmed = walEnd;
        }
        if (walEnd > this.#received && !this.#inTransaction) this.#received = walEnd;
        if (payload[17] === 1 || this.#confirmed !== this.#reported) await this.sendStatus();
      }
    }
  }

  /**
   * Everything up to `lsn` (a Commit's `endLsn`) is applied: the source may forget it, and a
   * stream started later begins after it. Never moves back.
   */
  confirm(lsn: Lsn): void {
    if (lsn > this.#confirmed) this.#confirmed = lsn;
  }

  /**
   * Sends a status update now (resolves once written); with `reply`, the source answers with a
   * keepalive at once (an idle stream then confirms the source's WAL end: the cutover's wait).
   */
  sendStatus(options: { reply?: boolean } = {}): Promise<void> {
    if (this.#closed || this.#ended) return this.#sending;
    const flush = this.#confirmed;
    const write = this.#received > flush ? this.#received : flush;
    const msg = new Uint8Array(34);
    const view = new DataView(msg.buffer);
    msg[0] = 0x72; // 'r'
    view.setBigUint64(1, write);
    view.setBigUint64(9, flush);
    view.setBigUint64(17, flush);
    view.setBigInt64(25, BigInt(Date.now()) * 1000n - PG_EPOCH_US);
    msg[33] = options.reply ? 1 : 0;
    this.#reported = flush;
    this.#lastSentAt = Date.now();
    this.#sending = this.#sending.then(() => this.#conn.copyData(msg)).catch((e) => {
      if (!this.#closed) this.#failure ??= e;
    });
    return this.#sending;
  }

  /**
   * Sends the confirmed position a last time and ends the stream (the slot stays). Unless a
   * next() is pending, it waits (up to 5 s) for the source to end the stream, so that when it
   * resolves the source has the confirmed position and the slot is free for another stream.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    clearInterval(this.#timer);
    if (!this.#ended && this.#failure === null) {
      await this.sendStatus();
      if (!this.#reading) {
        // CopyDone comes after the status: once the source answers it, it has read the status.
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([
          this.#conn.copyDone().catch(() => {}),
          new Promise((resolve) => timer = setTimeout(resolve, 5_000)),
        ]);
        clearTimeout(timer);
      }
    }
    this.#closed = true;
    this.#conn.close();
  }

  #tick(): void {
    if (
      this.#confirmed !== this.#reported ||
      Date.now() - this.#lastSentAt >= this.#statusIntervalMs
    ) {
      void this.sendStatus();
    }
  }
}
