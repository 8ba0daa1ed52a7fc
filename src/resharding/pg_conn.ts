/**
 * A plain PostgreSQL client connection for resharding's own work (schema sync, table copies,
 * applying replicated changes, replication streams): one request at a time, simple and extended
 * queries with text values, COPY in and out, and the CopyBoth stream of logical replication. Not
 * pooled, not used for clients' traffic.
 *
 * @module
 */

import { openServerSession, type ServerLogin } from "../backend/connect.ts";
import { MessageBuffer } from "../net/message_buffer.ts";
import { type ByteStream, closeQuietly, writeAll } from "../net/stream.ts";
import {
  copyFail,
  type ErrorFields,
  MessageBuilder,
  Msg,
  parseErrorFields,
  queryMessage,
  readCString,
  readInt32,
} from "../protocol/messages.ts";

export type { ServerLogin } from "../backend/connect.ts";

/** An ErrorResponse from the server (or pgdog's own failure on the connection, code 08006). */
export class PgError extends Error {
  /** The server's error fields. */
  readonly fields: ErrorFields;
  constructor(fields: ErrorFields) {
    super(fields.message);
    this.name = "PgError";
    this.fields = fields;
  }
  /** The SQLSTATE. */
  get code(): string {
    return this.fields.code;
  }
}

/** What a query returned. */
export interface PgResult {
  /** Column names of the (last) row set. */
  columns: string[];
  /** Rows as text (null for SQL NULL). */
  rows: (string | null)[][];
  /** CommandComplete tags in order. */
  tags: string[];
}

const COPY_DONE = Uint8Array.of(Msg.CopyDone, 0, 0, 0, 4);
const SYNC = Uint8Array.of(Msg.Sync, 0, 0, 0, 4);
const TERMINATE = Uint8Array.of(Msg.Terminate, 0, 0, 0, 4);
const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** One connection; requests must not overlap (each awaits the previous one's end). */
export class PgConn {
  readonly #conn: ByteStream;
  readonly #rb = new MessageBuffer(64 << 10, 1 << 30);
  #closed = false;
  /** A read started by copyInError, awaited by the next request before it reads. */
  #watch: Promise<void> | null = null;
  /** The transaction status of the last ReadyForQuery ('I', 'T' or 'E'). */
  status = 0x49;
  /** The server's process id (for pg_terminate_backend and cancels). */
  readonly pid: number;
  /** ParameterStatus values the server reported. */
  readonly reported: Map<string, string>;
  /** Where it is connected, for messages. */
  readonly label: string;

  private constructor(
    conn: ByteStream,
    options: { leftover?: Uint8Array; pid: number; reported: Map<string, string>; label: string },
  ) {
    this.#conn = conn;
    if (options.leftover) {
      this.#rb.buf.set(options.leftover, this.#rb.end);
      this.#rb.end += options.leftover.length;
    }
    this.pid = options.pid;
    this.reported = options.reported;
    this.label = options.label;
  }

  /** Connects and logs in (`params` such as `replication: "database"` go in the startup). */
  static async connect(login: ServerLogin, options: { timeoutMs?: number } = {}): Promise<PgConn> {
    const session = await openServerSession(login, { timeoutMs: options.timeoutMs ?? 10_000 });
    return new PgConn(session.conn, {
      leftover: session.leftover,
      pid: session.pid,
      reported: session.reported,
      label: `${login.host}:${login.port}/${login.database}`,
    });
  }

  /** True once closed (by close() or a failure). */
  get closed(): boolean {
    return this.#closed;
  }

  /** Runs SQL (one or several statements) with the simple protocol. Throws PgError. */
  async query(sql: string): Promise<PgResult> {
    await this.#send(queryMessage(sql));
    return await this.#collect();
  }

  /**
   * Runs one statement with the extended protocol (unnamed statement and portal), its
   * parameters sent as text with types left to the server. Throws PgError.
   */
  async execute(sql: string, params: readonly (string | null)[]): Promise<PgResult> {
    await this.#send(extendedMessages(sql, params));
    return await this.#collect();
  }

  /**
   * Runs `COPY ... TO STDOUT`, handing each CopyData payload to `onData` (awaited: backpressure);
   * resolves with the command tag.
   */
  async copyOut(
    sql: string,
    onData: (payload: Uint8Array) => void | Promise<void>,
  ): Promise<string> {
    await this.#send(queryMessage(sql));
    let error: ErrorFields | null = null;
    let tag = "";
    for (;;) {
      const [type, p, end] = await this.#next();
      if (type === Msg.CopyData) {
        if (error === null) {
          try {
            await onData(this.#rb.buf.subarray(p + 5, end));
          } catch (e) {
            // The caller failed: the connection is mid-COPY and cannot be reused.
            this.close();
            throw e;
          }
        }
      } else if (type === Msg.CommandComplete) tag = readCString(this.#rb.buf, p + 5, end)[0];
      else if (type === Msg.ErrorResponse) error ??= parseErrorFields(this.#rb.buf, p + 5, end);
      else if (type === Msg.ReadyForQuery) {
        this.status = this.#rb.buf[p + 5];
        this.#rb.consume(end - p);
        if (error) throw new PgError(error);
        return tag;
      }
      this.#rb.consume(end - p);
    }
  }

  /**
   * Starts `COPY ... FROM STDIN`: resolves once the server is ready for data (then send
   * copyData, and end with copyDone or copyFail). Throws PgError when the COPY is refused.
   */
  async copyIn(sql: string): Promise<void> {
    await this.#send(queryMessage(sql));
    await this.#untilCopyResponse(Msg.CopyInResponse);
  }

  /** Sends COPY data (one CopyData message; `payload` is copied into it). */
  async copyData(payload: Uint8Array): Promise<void> {
    const msg = new Uint8Array(payload.length + 5);
    msg[0] = Msg.CopyData;
    new DataView(msg.buffer).setInt32(1, payload.length + 4);
    msg.set(payload, 5);
    await this.#send(msg);
  }

  /**
   * During a COPY FROM STDIN: the server's error when it has already refused the data (a
   * constraint, a bad value: it ignores the rest, and copyDone throws the same), else null.
   * Never waits: it looks at what has arrived and keeps one read pending for the next call.
   */
  copyInError(): PgError | null {
    const rb = this.#rb;
    for (let p = rb.start; p + 5 <= rb.end;) {
      const size = readInt32(rb.buf, p + 1) + 1;
      if (p + size > rb.end) break;
      if (rb.buf[p] === Msg.ErrorResponse) {
        return new PgError(parseErrorFields(rb.buf, p + 5, p + size));
      }
      p += size;
    }
    if (this.#watch === null && !this.#closed) {
      this.#watch = rb.fill(this.#conn).then(
        (more) => {
          this.#watch = null;
          if (!more) this.close();
        },
        () => {
          this.#watch = null;
          this.close();
        },
      );
    }
    return null;
  }

  /** Ends a COPY FROM STDIN; resolves with its tag (e.g. `COPY 10`). Throws PgError. */
  async copyDone(): Promise<string> {
    await this.#send(COPY_DONE);
    const r = await this.#collect();
    return r.tags.at(-1) ?? "";
  }

  /** Abandons a COPY FROM STDIN (the server answers with an error, swallowed here). */
  async copyFail(reason: string): Promise<void> {
    await this.#send(copyFail(reason));
    try {
      await this.#collect();
    } catch (e) {
      if (!(e instanceof PgError)) throw e;
    }
  }

  /**
   * Starts a CopyBoth stream (`START_REPLICATION ...` on a replication connection); then read
   * with readCopyData and answer with copyData.
   */
  async copyBoth(sql: string): Promise<void> {
    await this.#send(queryMessage(sql));
    await this.#untilCopyResponse(Msg.CopyBothResponse);
  }

  /**
   * The next CopyData payload of a CopyBoth or COPY OUT stream (a copy: it stays valid), or null
   * when the server ended the stream (CopyDone, then the rest up to ReadyForQuery is read; or a
   * walsender's CommandComplete and hang-up at shutdown). Throws PgError when the server reports
   * an error.
   */
  async readCopyData(): Promise<Uint8Array | null> {
    for (;;) {
      const [type, p, end] = await this.#next();
      if (type === Msg.CopyData) {
        const payload = this.#rb.buf.slice(p + 5, end);
        this.#rb.consume(end - p);
        return payload;
      }
      if (type === Msg.CopyDone || type === Msg.CommandComplete) {
        // CommandComplete without CopyDone: a walsender ending for a shutdown, which hangs up
        // right after it.
        this.#rb.consume(end - p);
        if (type === Msg.CopyDone) await this.#send(COPY_DONE).catch(() => {});
        try {
          await this.#collect();
        } catch (e) {
          if (!(e instanceof PgError && e.code === "08006")) throw e;
        }
        return null;
      }
      if (type === Msg.ErrorResponse) {
        const error = parseErrorFields(this.#rb.buf, p + 5, end);
        this.#rb.consume(end - p);
        await this.#collect().catch(() => {});
        throw new PgError(error);
      }
      this.#rb.consume(end - p);
    }
  }

  /** Closes the connection (Terminate, then the socket). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#conn.write(TERMINATE).catch(() => {}).finally(() => closeQuietly(this.#conn));
  }

  async #untilCopyResponse(want: number): Promise<void> {
    for (;;) {
      const [type, p, end] = await this.#next();
      if (type === want) {
        this.#rb.consume(end - p);
        return;
      }
      if (type === Msg.ErrorResponse) {
        const error = parseErrorFields(this.#rb.buf, p + 5, end);
        this.#rb.consume(end - p);
        await this.#collect().catch(() => {});
        throw new PgError(error);
      }
      if (type === Msg.ReadyForQuery) {
        this.status = this.#rb.buf[p + 5];
        this.#rb.consume(end - p);
        throw new PgError({
          severity: "ERROR",
          code: "08P01",
          message: `${this.label}: the statement did not start a COPY`,
        });
      }
      this.#rb.consume(end - p);
    }
  }

  /** Reads the answers up to ReadyForQuery. */
  async #collect(): Promise<PgResult> {
    const result: PgResult = { columns: [], rows: [], tags: [] };
    let error: ErrorFields | null = null;
    for (;;) {
      const [type, p, end] = await this.#next();
      const buf = this.#rb.buf;
      switch (type) {
        case Msg.RowDescription: {
          result.columns = [];
          result.rows = [];
          const n = (buf[p + 5] << 8) | buf[p + 6];
          let q = p + 7;
          for (let i = 0; i < n; i++) {
            const [name, next] = readCString(buf, q, end);
            result.columns.push(name);
            q = next + 18;
          }
          break;
        }
        case Msg.DataRow:
          result.rows.push(dataRow(buf, p, end));
          break;
        case Msg.CommandComplete:
          result.tags.push(readCString(buf, p + 5, end)[0]);
          break;
        case Msg.ErrorResponse:
          error ??= parseErrorFields(buf, p + 5, end);
          break;
        case Msg.CopyInResponse:
          // A COPY FROM STDIN inside a multi-statement query: refuse the data.
          await this.#send(copyFail("pgdog sends no COPY data here"));
          break;
        case Msg.ReadyForQuery:
          this.status = buf[p + 5];
          this.#rb.consume(end - p);
          if (error) throw new PgError(error);
          return result;
      }
      this.#rb.consume(end - p);
    }
  }

  /** The next whole message: [type, start, end) in the read buffer (not consumed). */
  async #next(): Promise<[number, number, number]> {
    let size: number;
    while ((size = this.#rb.nextMessageSize()) === 0) {
      if (this.#watch !== null) {
        await this.#watch;
        continue;
      }
      if (this.#closed) throw this.#gone();
      let more: boolean;
      try {
        more = await this.#rb.fill(this.#conn);
      } catch (e) {
        this.close();
        throw this.#gone(e);
      }
      if (!more) {
        this.close();
        throw this.#gone();
      }
    }
    const p = this.#rb.start;
    return [this.#rb.buf[p], p, p + size];
  }

  async #send(data: Uint8Array): Promise<void> {
    if (this.#closed) throw this.#gone();
    try {
      await writeAll(this.#conn, data);
    } catch (e) {
      this.close();
      throw this.#gone(e);
    }
  }

  #gone(cause?: unknown): PgError {
    const why = cause instanceof Error ? `: ${cause.message}` : "";
    return new PgError({
      severity: "FATAL",
      code: "08006",
      message: `connection to ${this.label} was closed${why}`,
    });
  }
}

function dataRow(buf: Uint8Array, p: number, end: number): (string | null)[] {
  const n = (buf[p + 5] << 8) | buf[p + 6];
  const row: (string | null)[] = new Array(n);
  let q = p + 7;
  for (let i = 0; i < n; i++) {
    const len = readInt32(buf, q);
    q += 4;
    if (len < 0) row[i] = null;
    else {
      row[i] = decoder.decode(buf.subarray(q, Math.min(q + len, end)));
      q += len;
    }
  }
  return row;
}

/** Parse, Bind (text parameters), Describe, Execute, Sync of one unnamed statement. */
function extendedMessages(sql: string, params: readonly (string | null)[]): Uint8Array {
  const b = new MessageBuilder(256 + sql.length);
  b.begin(Msg.Parse).cstring("").cstring(sql).int16(0).end();
  b.begin(Msg.Bind).cstring("").cstring("").int16(0).int16(params.length);
  for (const v of params) {
    if (v === null) b.int32(-1);
    else {
      const bytes = encoder.encode(v);
      b.int32(bytes.length).bytes(bytes);
    }
  }
  b.int16(0).end();
  b.begin(Msg.Describe).byte(0x50).cstring("").end();
  b.begin(Msg.Execute).cstring("").int32(0).end();
  b.bytes(SYNC);
  return b.build();
}
