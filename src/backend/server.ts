/**
 * One connection to a PostgreSQL server, after login. A single read loop runs for the
 * connection's whole life and hands what arrives to whoever uses the server at that moment:
 *
 * - forward mode: a client is attached; bytes are passed on as ranges of the read buffer, and
 *   only the few messages pooling must see (ReadyForQuery, ParameterStatus, COPY responses) are
 *   looked at whole;
 * - internal mode: the proxy runs its own SQL (cleanup, parameter sync) and consumes the answer;
 * - idle mode: the server sits in its pool; anything but a notice or a parameter change is a fault.
 *
 * @module
 */

import {
  copyFail,
  type ErrorFields,
  Msg,
  parseErrorFields,
  queryMessage,
  readCString,
  readInt16,
  readInt32,
  TERMINATE,
  TxStatus,
} from "../protocol/messages.ts";
import { type ByteStream, closeQuietly } from "../net/stream.ts";
import { SocketWriter } from "../net/writer.ts";
import { log } from "../log.ts";

const MODE_IDLE = 0;
const MODE_FORWARD = 1;
const MODE_INTERNAL = 2;

/** Size of each server connection's read buffer. */
const READ_BUFFER_BYTES = 64 << 10;

/** COPY sub-protocol state of a server. */
export const CopyState = { None: 0, In: 1, Out: 2, Both: 3 } as const;

/** Where a server is and which login it uses. */
export interface ServerAddress {
  host: string;
  port: number;
  database: string;
  user: string;
}

/** The client side of an attached server: receives forwarded bytes and decides on release. */
export interface ServerLink {
  /** Where forwarded bytes are written. */
  readonly writer: SocketWriter;
  /** Asked at each forwarded ReadyForQuery: may the server go back to its pool now? No side effects. */
  shouldRelease(server: Server): boolean;
  /** The server was released after a ReadyForQuery; the link must forget it. */
  released(server: Server): void;
  /** The server failed while attached. */
  serverLost(server: Server, error: Error): void;
}

/** The pool a server belongs to. */
export interface ServerOwner {
  /** A clean server comes back. */
  checkin(server: Server): void;
  /** The server's connection ended; forget it. */
  serverClosed(server: Server): void;
}

/** What the proxy's own SQL on a server produced. */
export interface InternalResult {
  /** The first ErrorResponse, if any. */
  error: ErrorFields | null;
  /** Data rows as text (only when collected). */
  rows: (string | null)[][];
  /** CommandComplete tags in order. */
  tags: string[];
  /** ReadyForQuery status at the end. */
  status: number;
}

interface InternalRequest {
  collect: boolean;
  result: InternalResult;
  resolve: (r: InternalResult) => void;
  reject: (e: Error) => void;
}

/** A PostgreSQL protocol violation by a server. */
export class ServerProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ServerProtocolError";
  }
}

// Message types each mode must see whole; all others are streamed (forwarded or skipped) in pieces.
const FORWARD_WHOLE = typeTable([
  Msg.ReadyForQuery,
  Msg.ParameterStatus,
  Msg.CopyInResponse,
  Msg.CopyOutResponse,
  Msg.CopyBothResponse,
]);
const SWALLOW_WHOLE = typeTable([Msg.ReadyForQuery, Msg.ParameterStatus, Msg.ErrorResponse]);
const INTERNAL_WHOLE = typeTable([
  Msg.ReadyForQuery,
  Msg.ParameterStatus,
  Msg.ErrorResponse,
  Msg.CommandComplete,
  Msg.CopyInResponse,
  Msg.CopyOutResponse,
  Msg.CopyBothResponse,
]);
const INTERNAL_COLLECT_WHOLE = typeTable([
  Msg.ReadyForQuery,
  Msg.ParameterStatus,
  Msg.ErrorResponse,
  Msg.CommandComplete,
  Msg.CopyInResponse,
  Msg.CopyOutResponse,
  Msg.CopyBothResponse,
  Msg.DataRow,
]);
const IDLE_WHOLE = typeTable([
  Msg.ParameterStatus,
  Msg.ErrorResponse,
  Msg.NoticeResponse,
  Msg.NotificationResponse,
  Msg.ReadyForQuery,
]);

function typeTable(types: number[]): Uint8Array {
  const t = new Uint8Array(256);
  for (const x of types) t[x] = 1;
  return t;
}

const textDecoder = new TextDecoder();
let nextServerId = 1;

/** A logged-in server connection. */
export class Server {
  /** Process-unique id (SHOW SERVERS, logs). */
  readonly id: number = nextServerId++;
  readonly address: ServerAddress;
  readonly conn: ByteStream;
  readonly writer: SocketWriter;
  owner: ServerOwner | null = null;
  /** BackendKeyData from the server, used to cancel its queries. */
  backendPid = 0;
  backendSecret = 0;
  /** The latest value of each parameter the server reported (ParameterStatus). */
  readonly reported: Map<string, string> = new Map();
  /** Session parameters the proxy set on this server, by lower-case name. */
  readonly applied: Map<string, string> = new Map();
  /** Status of the last ReadyForQuery. */
  txStatus: number = TxStatus.Idle;
  /** Queries and Syncs sent whose ReadyForQuery hasn't arrived. */
  pendingRfq = 0;
  /** Extended-protocol messages were sent after the last Sync. */
  openRequest = false;
  /** ReadyForQuery answers still to come for proxy-injected requests whose output is dropped. */
  swallowRfq = 0;
  copy: number = CopyState.None;
  readonly createdAt: number = Date.now();
  /** When it last went back to its pool. */
  idleSince: number = Date.now();
  /** Close instead of reusing at the next checkin (state no longer known). */
  discard = false;
  closed = false;
  link: ServerLink | null = null;
  bytesReceived = 0;
  transactions = 0;

  #mode = MODE_IDLE;
  #buf: Uint8Array = new Uint8Array(READ_BUFFER_BYTES);
  #carry = 0;
  #remaining = 0;
  #dropping = false;
  #need = 0;
  #internal: InternalRequest | null = null;
  #ranges: number[] = [];

  /**
   * @param conn the connection, already past login
   * @param address where it goes
   * @param leftover bytes read past the login's ReadyForQuery, if any
   */
  constructor(conn: ByteStream, address: ServerAddress, leftover?: Uint8Array) {
    this.conn = conn;
    this.address = address;
    this.writer = new SocketWriter(conn);
    if (leftover && leftover.length) {
      this.#buf.set(leftover);
      this.#carry = leftover.length;
    }
  }

  /** Starts the read loop; call once, after `owner` is set. */
  start(): void {
    this.#readLoop();
  }

  /** Human-readable identity for logs. */
  get label(): string {
    return `server ${this.id} (${this.address.user}@${this.address.host}:${this.address.port}/${this.address.database})`;
  }

  /** True when nothing is outstanding and no transaction is open. */
  get clean(): boolean {
    return this.pendingRfq === 0 && !this.openRequest && this.swallowRfq === 0 &&
      this.txStatus === TxStatus.Idle && this.copy === CopyState.None && !this.closed;
  }

  /** Forward this server's output to `link` until it is released. */
  attach(link: ServerLink): void {
    this.link = link;
    this.#mode = MODE_FORWARD;
  }

  /** Stops forwarding (the client went away); the server's output is then dropped. */
  detach(): void {
    this.link = null;
    if (this.#mode === MODE_FORWARD) this.#mode = MODE_IDLE;
  }

  /**
   * Runs SQL as the proxy and resolves with its outcome once ReadyForQuery arrives. Output of
   * requests still outstanding from a client is consumed first. Only for a detached server.
   */
  query(sql: string, options?: { collect?: boolean; timeoutMs?: number }): Promise<InternalResult> {
    if (this.closed) return Promise.reject(new Error(`${this.label} is closed`));
    this.pendingRfq++;
    const p = this.#startInternal(options?.collect ?? false);
    this.writer.write(queryMessage(sql)).catch((e) => this.#fail(e));
    const timeoutMs = options?.timeoutMs;
    if (timeoutMs === undefined) return p;
    // An unresponsive server must not hold its caller (or its pool slot) forever.
    const timer = setTimeout(
      () => this.close(`query by pgdog took longer than ${timeoutMs} ms`),
      timeoutMs,
    );
    return p.finally(() => clearTimeout(timer));
  }

  /**
   * Sends raw frontend messages as the proxy (e.g. Sync, CopyFail) and waits until every
   * outstanding ReadyForQuery has arrived, dropping the output.
   */
  drain(extra?: Uint8Array, rfqs = 0): Promise<InternalResult> {
    if (this.closed) return Promise.reject(new Error(`${this.label} is closed`));
    this.pendingRfq += rfqs;
    if (extra) this.writer.write(extra).catch((e) => this.#fail(e));
    if (this.pendingRfq === 0 && this.swallowRfq === 0) {
      return Promise.resolve({ error: null, rows: [], tags: [], status: this.txStatus });
    }
    return this.#startInternal(false);
  }

  #startInternal(collect: boolean): Promise<InternalResult> {
    if (this.#internal) {
      return Promise.reject(new Error(`${this.label} already runs an internal request`));
    }
    this.link = null;
    this.#mode = MODE_INTERNAL;
    return new Promise((resolve, reject) => {
      this.#internal = {
        collect,
        result: { error: null, rows: [], tags: [], status: this.txStatus },
        resolve,
        reject,
      };
    });
  }

  /** Closes the connection politely (Terminate, then close) and tells the pool. */
  close(reason?: string): void {
    if (this.closed) return;
    this.closed = true;
    if (reason) log.debug(`closing ${this.label}: ${reason}`);
    if (this.writer.error) {
      closeQuietly(this.conn);
    } else {
      this.writer.enqueue(TERMINATE);
      const timer = setTimeout(() => closeQuietly(this.conn), 1000);
      this.writer.flush().catch(() => {}).finally(() => {
        clearTimeout(timer);
        closeQuietly(this.conn);
      });
    }
    this.#ended(new Error(reason ?? "server connection closed by pgdog"));
  }

  #fail(e: unknown): void {
    if (this.closed) return;
    this.closed = true;
    closeQuietly(this.conn);
    const error = e instanceof Error ? e : new Error(String(e));
    this.#ended(error);
  }

  #ended(error: Error): void {
    const link = this.link;
    this.link = null;
    this.#mode = MODE_IDLE;
    const internal = this.#internal;
    this.#internal = null;
    internal?.reject(error);
    link?.serverLost(this, error);
    this.owner?.serverClosed(this);
  }

  async #readLoop(): Promise<void> {
    try {
      if (this.#carry > 0) await this.#process(this.#carry);
      while (!this.closed) {
        if (this.#need > this.#buf.length) this.#grow(this.#need);
        const n = await this.conn.read(this.#buf.subarray(this.#carry));
        if (n === null) {
          this.#fail(new Error("server closed the connection unexpectedly"));
          return;
        }
        this.bytesReceived += n;
        await this.#process(this.#carry + n);
      }
    } catch (e) {
      if (!this.closed) {
        log.debug(`${this.label} read loop ended: ${e instanceof Error ? e.message : e}`);
      }
      this.#fail(e);
    }
  }

  #grow(size: number): void {
    let cap = this.#buf.length * 2;
    while (cap < size) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.#buf.subarray(0, this.#carry));
    this.#buf = next;
  }

  /** Handles bytes [0, total) of the read buffer. */
  async #process(total: number): Promise<void> {
    const buf = this.#buf;
    const ranges = this.#ranges;
    ranges.length = 0;
    let runStart = -1;
    let p = 0;
    this.#need = 0;
    while (p < total) {
      if (this.#remaining > 0) {
        const take = Math.min(this.#remaining, total - p);
        if (this.#dropping) {
          if (runStart >= 0) {
            ranges.push(runStart, p);
            runStart = -1;
          }
        } else if (runStart < 0) {
          runStart = p;
        }
        p += take;
        this.#remaining -= take;
        continue;
      }
      if (total - p < 5) break;
      const type = buf[p];
      const len = readInt32(buf, p + 1);
      if (len < 4) {
        throw new ServerProtocolError(`invalid message length ${len} from ${this.label}`);
      }
      const size = len + 1;
      const mode = this.#mode;
      const whole = mode === MODE_FORWARD
        ? (this.swallowRfq > 0 ? SWALLOW_WHOLE : FORWARD_WHOLE)
        : mode === MODE_INTERNAL
        ? (this.#internal?.collect ? INTERNAL_COLLECT_WHOLE : INTERNAL_WHOLE)
        : IDLE_WHOLE;
      if (whole[type] === 0) {
        // Streamed: forwarded piece by piece to an attached client, skipped otherwise.
        this.#dropping = !(mode === MODE_FORWARD && this.swallowRfq === 0);
        if (this.#dropping && runStart >= 0) {
          ranges.push(runStart, p);
          runStart = -1;
        }
        if (!this.#dropping && runStart < 0) runStart = p;
        this.#remaining = size;
        continue;
      }
      if (total - p < size) {
        this.#need = size;
        break;
      }
      if (mode === MODE_FORWARD) {
        const forward = this.#forwardMessage(type, buf, p, size);
        if (forward) {
          if (runStart < 0) runStart = p;
        } else if (runStart >= 0) {
          ranges.push(runStart, p);
          runStart = -1;
        }
        p += size;
        if (forward && type === Msg.ReadyForQuery) {
          const link = this.link!;
          if (link.shouldRelease(this)) {
            if (runStart >= 0) {
              ranges.push(runStart, p);
              runStart = -1;
            }
            // Copy the tail out: the read buffer is reused while the client may still be slow to read.
            for (let i = 0; i < ranges.length; i += 2) {
              link.writer.enqueue(buf.subarray(ranges[i], ranges[i + 1]));
            }
            ranges.length = 0;
            this.link = null;
            this.#mode = MODE_IDLE;
            this.idleSince = Date.now();
            link.released(this);
            this.owner?.checkin(this);
          }
        }
      } else if (mode === MODE_INTERNAL) {
        this.#internalMessage(type, buf, p, size);
        p += size;
      } else {
        this.#idleMessage(type, buf, p, size);
        p += size;
        if (this.closed) return;
      }
    }
    if (runStart >= 0) ranges.push(runStart, p);
    if (ranges.length > 0) {
      const link = this.link;
      if (link) {
        try {
          if (ranges.length === 2) {
            await link.writer.write(buf.subarray(ranges[0], ranges[1]));
          } else {
            for (let i = 0; i < ranges.length; i += 2) {
              link.writer.enqueue(buf.subarray(ranges[i], ranges[i + 1]));
            }
            await link.writer.flush();
          }
        } catch {
          // The client is gone; its teardown cleans this server up. Keep reading meanwhile.
        }
      }
      ranges.length = 0;
    }
    this.#carry = total - p;
    if (this.#carry > 0) this.#buf.copyWithin(0, p, total);
  }

  /** A whole message in forward mode; returns whether to pass it on. */
  #forwardMessage(type: number, buf: Uint8Array, p: number, size: number): boolean {
    if (this.swallowRfq > 0) {
      if (type === Msg.ReadyForQuery) {
        this.swallowRfq--;
        this.txStatus = buf[p + 5];
      } else if (type === Msg.ParameterStatus) {
        this.#parameterStatus(buf, p, size);
      } else if (type === Msg.ErrorResponse) {
        const e = parseErrorFields(buf, p + 5, p + size);
        log.warn(
          `${this.label}: session parameter sync failed: ${e.message}; the server will be closed`,
        );
        this.discard = true;
        this.applied.clear();
      }
      return false;
    }
    switch (type) {
      case Msg.ReadyForQuery:
        this.txStatus = buf[p + 5];
        if (this.pendingRfq > 0) this.pendingRfq--;
        this.copy = CopyState.None;
        if (this.txStatus === TxStatus.Idle) this.transactions++;
        return true;
      case Msg.ParameterStatus:
        this.#parameterStatus(buf, p, size);
        return true;
      case Msg.CopyInResponse:
        this.copy = CopyState.In;
        return true;
      case Msg.CopyOutResponse:
        this.copy = CopyState.Out;
        return true;
      case Msg.CopyBothResponse:
        this.copy = CopyState.Both;
        return true;
    }
    return true;
  }

  #internalMessage(type: number, buf: Uint8Array, p: number, size: number): void {
    const req = this.#internal;
    switch (type) {
      case Msg.ReadyForQuery:
        this.txStatus = buf[p + 5];
        this.copy = CopyState.None;
        if (this.swallowRfq > 0) this.swallowRfq--;
        else if (this.pendingRfq > 0) this.pendingRfq--;
        if (this.pendingRfq === 0 && this.swallowRfq === 0 && req) {
          this.#internal = null;
          this.#mode = MODE_IDLE;
          req.result.status = this.txStatus;
          req.resolve(req.result);
        }
        return;
      case Msg.ErrorResponse:
        if (req && !req.result.error) req.result.error = parseErrorFields(buf, p + 5, p + size);
        return;
      case Msg.ParameterStatus:
        this.#parameterStatus(buf, p, size);
        return;
      case Msg.CommandComplete:
        req?.result.tags.push(readCString(buf, p + 5, p + size)[0]);
        return;
      case Msg.DataRow:
        if (req) req.result.rows.push(decodeDataRow(buf, p, size));
        return;
      case Msg.CopyInResponse:
        // A client left in the middle of COPY FROM STDIN: end it so the server answers.
        this.copy = CopyState.In;
        this.writer.write(copyFailMessage).catch((e) => this.#fail(e));
        return;
      case Msg.CopyOutResponse:
      case Msg.CopyBothResponse:
        this.copy = CopyState.Out;
        return;
    }
  }

  #idleMessage(type: number, buf: Uint8Array, p: number, size: number): void {
    switch (type) {
      case Msg.ParameterStatus:
        this.#parameterStatus(buf, p, size);
        return;
      case Msg.NoticeResponse:
      case Msg.NotificationResponse:
        return;
      case Msg.ErrorResponse: {
        const e = parseErrorFields(buf, p + 5, p + size);
        log.warn(`${this.label} reported while idle: ${e.severity} ${e.code} ${e.message}`);
        if (e.severity === "FATAL" || e.severity === "PANIC") {
          this.close("server sent FATAL while idle");
        }
        return;
      }
      default:
        log.warn(
          `${this.label} sent unexpected message '${
            String.fromCharCode(type)
          }' while idle; closing it`,
        );
        this.close("protocol desync");
    }
  }

  #parameterStatus(buf: Uint8Array, p: number, size: number): void {
    const [name, next] = readCString(buf, p + 5, p + size);
    const [value] = readCString(buf, next, p + size);
    this.reported.set(name, value);
  }
}

const copyFailMessage = copyFail("client disconnected during COPY");

function decodeDataRow(buf: Uint8Array, p: number, size: number): (string | null)[] {
  const n = readInt16(buf, p + 5);
  const row: (string | null)[] = [];
  let q = p + 7;
  const end = p + size;
  for (let i = 0; i < n && q + 4 <= end; i++) {
    const len = readInt32(buf, q);
    q += 4;
    if (len < 0) {
      row.push(null);
    } else {
      row.push(textDecoder.decode(buf.subarray(q, q + len)));
      q += len;
    }
  }
  return row;
}
