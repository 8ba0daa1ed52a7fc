/**
 * One connection to a PostgreSQL server, after login. A single read loop runs for the
 * connection's whole life. Every request message sent to the server has an entry in its
 * {@linkcode ResponseQueue}; each response is matched against the head entry, which says whether
 * it goes to the attached client, is dropped (the proxy's own pipelined messages), or is kept for
 * the proxy (its own queries). Responses going to a client are passed on as ranges of the read
 * buffer; only the few messages pooling must see (ReadyForQuery, ParameterStatus, COPY
 * responses) are looked at whole.
 *
 * @module
 */

import {
  copyFail,
  describeMessageType,
  type ErrorFields,
  errorResponse,
  MessageBuilder,
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
import { errorMessage, log } from "../log.ts";
import { sendCancel } from "./cancel.ts";
import {
  Action,
  endsWithReady,
  Expect,
  type LocalAnswer,
  type ParseTicket,
  ResponseQueue,
  type RunTicket,
  type StatementTicket,
} from "./response_queue.ts";
import { allStale, type StatementCopies } from "./prepared_copies.ts";

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
  /**
   * Asked at each ReadyForQuery that leaves the server clean: false keeps it; true gives it back;
   * a string gives it back after running that SQL on it (resetting what the client left).
   */
  shouldRelease(server: Server): boolean | string;
  /**
   * A ParameterStatus from the server: `own` when answering the client's request, otherwise from
   * pgdog's own settings sync. Returns bytes to send the client instead (possibly empty), or null
   * to pass an own one unchanged (a sync's is dropped unless replaced).
   */
  parameterStatus(
    server: Server,
    options: { name: string; value: string; own: boolean },
  ): Uint8Array | null;
  /** The server was released after a ReadyForQuery; the link must forget it. */
  released(server: Server): void;
  /**
   * At the ReadyForQuery that ends a request the link forwarded: ParameterStatus messages the
   * client is owed that PostgreSQL did not send (null: none), to go out before the ReadyForQuery.
   */
  owedParameterStatus?(server: Server): Uint8Array | null;
  /** The server failed while attached. */
  serverLost(server: Server, error: Error): void;
  /**
   * The server sent a FATAL (it is about to close): `replay` drops it (the client's request will
   * run elsewhere), `downgrade` passes it as an ERROR (the client goes on with another server),
   * `keep` passes it unchanged.
   */
  onServerFatal(server: Server): "replay" | "downgrade" | "keep";
}

/** The pool a server belongs to. */
export interface ServerOwner {
  /** A clean server comes back. */
  checkin(server: Server): void;
  /** A server comes back after `resetSql` (and any cleaning) runs on it. */
  release(server: Server, options: { resetSql: string | null }): void;
  /** The server's connection ended; forget it. */
  serverClosed(server: Server): void;
}

/** What the proxy's own SQL on a server produced. */
export interface InternalResult {
  /** The first ErrorResponse, if any. */
  error: ErrorFields | null;
  /** Data rows as text. */
  rows: (string | null)[][];
  /** CommandComplete tags in order. */
  tags: string[];
  /** ReadyForQuery status at the end. */
  status: number;
}

interface InternalRequest {
  result: InternalResult;
  onDone?: (r: InternalResult) => void;
  /** Takes each RowDescription and DataRow as sent (then not decoded into `rows`). */
  messages?: (msg: Uint8Array) => void;
  resolve: (r: InternalResult) => void;
  reject: (e: Error) => void;
}

/**
 * What the entries of a settings sync carry (see {@linkcode Server.settingsSync}); a Parse ticket
 * that does nothing, so the queue treats its Parse like any other.
 */
const SETTINGS_SYNC: ParseTicket = { name: "", succeeded() {}, failed() {} };

/** The settings sync ahead of a client's request failed: the server was closed before running it. */
export class SettingsSyncError extends Error {
  /** The server's error. */
  readonly fields: ErrorFields;
  constructor(fields: ErrorFields) {
    super(`a statement pgdog ran to apply the client's settings failed: ${fields.message}`);
    this.name = "SettingsSyncError";
    this.fields = fields;
  }
}

/** One extended-protocol statement (unnamed statement and portal), without a Sync. */
function appendStatement(b: MessageBuilder, sql: string): void {
  b.begin(Msg.Parse).cstring("").cstring(sql).int16(0).end();
  b.begin(Msg.Bind).cstring("").cstring("").int16(0).int16(0).int16(0).end();
  b.begin(Msg.Execute).cstring("").int32(0).end();
}

/** A PostgreSQL protocol violation by a server. */
export class ServerProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ServerProtocolError";
  }
}

// How responses are handled: by the head entry's action, or IDLE when nothing is expected.
const IDLE = 4;

// Message types that must be seen whole, per handling; all others stream through in pieces.
const WHOLE: Uint8Array[] = [
  typeTable([
    Msg.ReadyForQuery,
    Msg.ParameterStatus,
    Msg.ErrorResponse,
    Msg.CommandComplete,
    Msg.CopyInResponse,
    Msg.CopyOutResponse,
    Msg.CopyBothResponse,
  ]),
  typeTable([Msg.ReadyForQuery, Msg.ParameterStatus, Msg.ErrorResponse, Msg.CopyInResponse]),
  typeTable([
    Msg.ReadyForQuery,
    Msg.ParameterStatus,
    Msg.ErrorResponse,
    Msg.CommandComplete,
    Msg.DataRow,
    // (Handed whole to a query's `messages`, see query.)
    Msg.RowDescription,
    Msg.CopyInResponse,
  ]),
  typeTable([
    Msg.ParameterStatus,
    Msg.ErrorResponse,
    Msg.NoticeResponse,
    Msg.NotificationResponse,
    Msg.ReadyForQuery,
  ]),
];
WHOLE[IDLE] = WHOLE[3];

/** The answer to a statement Describe: seen whole when pgdog records the description. */
const DESCRIPTION = typeTable([Msg.ParameterDescription, Msg.RowDescription, Msg.NoData]);

/** Answers that carry results: once one reached a client, its request can't be re-run. */
const DATA = typeTable([
  Msg.DataRow,
  Msg.CommandComplete,
  Msg.EmptyQueryResponse,
  Msg.PortalSuspended,
  Msg.ErrorResponse,
  Msg.ReadyForQuery,
  Msg.FunctionCallResponse,
  Msg.CopyInResponse,
  Msg.CopyOutResponse,
  Msg.CopyBothResponse,
  Msg.CopyData,
  Msg.CopyDone,
  Msg.NotificationResponse,
]);

/** The SQLSTATE of an ErrorResponse at [p, p + size). */
function errorCode(buf: Uint8Array, p: number, size: number): string {
  return parseErrorFields(buf, p + 5, p + size).code;
}

function typeTable(types: number[]): Uint8Array {
  const t = new Uint8Array(256);
  for (const x of types) t[x] = 1;
  return t;
}

const textDecoder = new TextDecoder();
/** An error replacement meaning "pass nothing on". */
const EMPTY = new Uint8Array(0);

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
  /** Prepared statements this server holds (or is about to, once a Parse in flight completes),
   * by pgdog's global name, least recently used first. */
  readonly statements: StatementCopies = new Map();
  /** Responses still owed, one entry per request message. */
  readonly queue: ResponseQueue = new ResponseQueue();
  /** Status of the last ReadyForQuery. */
  txStatus: number = TxStatus.Idle;
  /** Queued entries that end with ReadyForQuery (Query, FunctionCall, Sync). */
  pendingReady = 0;
  /** Extended-protocol messages were sent after the last Sync. */
  openRequest = false;
  /** An extended-protocol message failed and no Sync was sent yet: the server skips until one. */
  discardUntilSync = false;
  copy: number = CopyState.None;
  /** The client ended COPY FROM STDIN; Syncs count again. */
  copyEnded = false;
  readonly createdAt: number = Date.now();
  /** When it last went back to its pool (a health check counts: it says the server answers). */
  idleSince: number = Date.now();
  /** When a client last had it: what `idle_timeout` counts from (a health check is not use). */
  lastUsed: number = this.idleSince;
  /** Names to put back in the next error: a statement's server-side name becomes the client's. */
  errorRewrite: { from: string; to: string } | null = null;
  /**
   * pgdog sent a CancelRequest and has not seen its 57014 yet: the query may have ended before the
   * cancel lands, so the server must not serve anyone else (it is closed at check-in).
   */
  cancelPending = false;
  /** Result data (rows, completions, errors, ReadyForQuery) reached the client since it attached. */
  dataForwarded = false;
  /** The client's entries answered since it attached (acknowledgements a re-run must not repeat). */
  answered = 0;
  /** An ErrorResponse went to the client since the last ReadyForQuery. */
  errorForwarded = false;
  /** Set when pgdog cancels the running query itself: the client's 57014 error says why. */
  cancelNote: string | null = null;
  /** When the request now being answered started (query_timeout). */
  requestStart = 0;
  /** When the current client got this server (SHOW STATS transaction time). */
  attachedAt = 0;
  /** Queries (simple Query and Execute) run for clients. */
  queries = 0;
  /** Time held by clients, summed over the transactions they ran (ms). */
  xactTimeMs = 0;
  /** Time from each request to its ReadyForQuery, summed (ms). */
  queryTimeMs = 0;
  /** Close instead of reusing at the next checkin (state no longer known). */
  discard = false;
  closed = false;
  link: ServerLink | null = null;
  bytesReceived = 0;
  transactions = 0;

  #buf: Uint8Array = new Uint8Array(READ_BUFFER_BYTES);
  #carry = 0;
  #remaining = 0;
  #dropping = false;
  #need = 0;
  #internal: InternalRequest[] = [];
  #drained: Array<() => void> = [];
  #ranges: number[] = [];
  #runStart = -1;

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
    const a = this.address;
    return `server ${this.id} (${a.user}@${a.host}:${a.port}/${a.database})`;
  }

  /** True when nothing is outstanding and no transaction is open. */
  get clean(): boolean {
    return this.queue.length === 0 && !this.openRequest && !this.discardUntilSync &&
      this.txStatus === TxStatus.Idle && this.copy === CopyState.None && !this.closed;
  }

  /** Forward this server's output to `link` until it is released. */
  attach(link: ServerLink): void {
    this.link = link;
    this.attachedAt = this.lastUsed = Date.now();
    this.dataForwarded = false;
    this.answered = 0;
  }

  /** Stops forwarding (the client went away); the server's output is then dropped. */
  detach(): void {
    this.link = null;
    this.lastUsed = Date.now();
  }

  /**
   * Records that a request message was sent (or, for `Expect.Local`, answered by the proxy with
   * `local`). Call in the order the messages go out, before writing them.
   */
  expect(kind: number, action: number = Action.Forward, payload: unknown = null): void {
    if (kind === Expect.Local && this.queue.length === 0) {
      // Nothing owed before it: the answer can go out now.
      const bytes = (payload as LocalAnswer).bytes;
      if (this.link && bytes) this.link.writer.enqueue(bytes);
      return;
    }
    if (this.queue.length === 0) this.requestStart = Date.now();
    this.queue.push(kind, action, payload);
    if (endsWithReady(kind)) {
      this.pendingReady++;
      this.openRequest = false;
    } else if (kind !== Expect.Local && kind !== Expect.CopyEnd) {
      this.openRequest = true;
    }
  }

  /**
   * Queues `statements` (a settings sync) to run ahead of a client's request in the same write, and
   * returns their bytes, to be sent first. They go as extended-protocol messages without a Sync,
   * inside BEGIN and COMMIT: should one fail, PostgreSQL rolls them back and skips everything up to
   * the client's next Sync (or, for simple queries, everything), so the request never runs in a
   * state nobody chose; pgdog then closes the server at once and reports a
   * {@linkcode SettingsSyncError} to the client, which runs the request on another server. COMMIT
   * ends the transaction before the client's first message, so a client's BEGIN or ROLLBACK cannot
   * take the settings into its own transaction.
   */
  settingsSync(statements: string[]): Uint8Array {
    const b = new MessageBuilder(256);
    b.bytes(SYNC_BEGIN);
    for (const sql of statements) appendStatement(b, sql);
    b.bytes(SYNC_COMMIT);
    for (let i = statements.length + 2; i > 0; i--) {
      this.expect(Expect.Parse, Action.Swallow, SETTINGS_SYNC);
      this.expect(Expect.Bind, Action.Swallow, SETTINGS_SYNC);
      this.expect(Expect.Execute, Action.Swallow, SETTINGS_SYNC);
    }
    return b.build();
  }

  /**
   * Runs SQL as the proxy, after whatever is already owed, and resolves with its outcome once its
   * ReadyForQuery arrives. `onDone` runs synchronously at that moment, before the server can be
   * released, so its decisions count for that release.
   */
  query(
    sql: string,
    options?: {
      timeoutMs?: number;
      onDone?: (r: InternalResult) => void;
      /** Takes each RowDescription and DataRow message as sent, instead of `rows`. */
      messages?: (msg: Uint8Array) => void;
    },
  ): Promise<InternalResult> {
    if (this.closed) return Promise.reject(new Error(`${this.label} is closed`));
    const onDone = options?.onDone;
    const messages = options?.messages;
    const p = new Promise<InternalResult>((resolve, reject) => {
      this.#internal.push({
        result: { error: null, rows: [], tags: [], status: this.txStatus },
        resolve,
        reject,
        onDone,
        messages,
      });
    });
    this.expect(Expect.Query, Action.Collect);
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
   * Runs an extended-protocol request as the proxy (`messages`, answered as `kinds` expect, the
   * last a Sync), after whatever is already owed; resolves as {@linkcode query} does (rows as
   * text: ask for text results).
   */
  queryExtended(messages: Uint8Array, kinds: number[]): Promise<InternalResult> {
    if (this.closed) return Promise.reject(new Error(`${this.label} is closed`));
    const p = new Promise<InternalResult>((resolve, reject) => {
      this.#internal.push({
        result: { error: null, rows: [], tags: [], status: this.txStatus },
        resolve,
        reject,
      });
    });
    for (const kind of kinds) this.expect(kind, Action.Collect);
    this.writer.write(messages).catch((e) => this.#fail(e));
    return p;
  }

  /**
   * Optionally sends `extra` (e.g. CopyFail, Sync) as the proxy, then resolves once every owed
   * response has arrived. Call on a detached server: its responses are then dropped.
   */
  drain(extra?: Uint8Array): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`${this.label} is closed`));
    if (extra) this.writer.write(extra).catch((e) => this.#fail(e));
    if (this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drained.push(resolve));
  }

  /** Cancels whatever the server is running (a separate connection carries the request). */
  sendCancel(): void {
    this.cancelPending = true;
    sendCancel(this.address, { pid: this.backendPid, secret: this.backendSecret });
  }

  /**
   * Closes the connection politely (Terminate, then close) and tells the pool; the attached client
   * learns of it with `error` (by default, one saying `reason`).
   */
  close(reason?: string, error?: Error): void {
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
    this.#ended(error ?? new Error(reason ?? "server connection closed by pgdog"));
  }

  #fail(e: unknown): void {
    if (this.closed) return;
    this.closed = true;
    closeQuietly(this.conn);
    this.#ended(e instanceof Error ? e : new Error(String(e)));
  }

  #ended(error: Error): void {
    const link = this.link;
    for (const req of this.#internal.splice(0)) req.reject(error);
    for (const resolve of this.#drained.splice(0)) resolve();
    link?.serverLost(this, error);
    this.owner?.serverClosed(this);
  }

  async #readLoop(): Promise<void> {
    try {
      if (this.#carry > 0) await this.#process(this.#carry);
      while (!this.closed) {
        if (this.#need > this.#buf.length) this.#grow(this.#need);
        const buf = this.#buf;
        // No subarray (an allocation per read) when nothing is carried over.
        const n = await this.conn.read(this.#carry === 0 ? buf : buf.subarray(this.#carry));
        if (n === null) {
          this.#fail(new Error("server closed the connection unexpectedly"));
          return;
        }
        this.bytesReceived += n;
        await this.#process(this.#carry + n);
      }
    } catch (e) {
      if (!this.closed) {
        log.debug(`${this.label} read loop ended: ${errorMessage(e)}`);
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
    const queue = this.queue;
    ranges.length = 0;
    this.#runStart = -1;
    let p = 0;
    this.#need = 0;
    while (p < total) {
      if (this.#remaining > 0) {
        const take = Math.min(this.#remaining, total - p);
        if (this.#dropping) this.#endRun(p);
        else if (this.#runStart < 0) this.#runStart = p;
        p += take;
        this.#remaining -= take;
        continue;
      }
      this.#settleHead(buf, p);
      if (total - p < 5) break;
      const type = buf[p];
      const len = readInt32(buf, p + 1);
      if (len < 4) {
        throw new ServerProtocolError(`invalid message length ${len} from ${this.label}`);
      }
      const size = len + 1;
      const head = queue.headKind;
      const handling = head === 0 ? (this.link ? Action.Forward : IDLE) : queue.headAction;
      if (handling === IDLE && WHOLE[IDLE][type] === 0) {
        log.warn(
          `${this.label} sent unexpected message ${
            describeMessageType(type)
          } while idle; closing it`,
        );
        this.close("protocol desync");
        return;
      }
      const forwarding = this.link !== null &&
        (handling === Action.Forward || (handling === Action.Inject && type === Msg.ErrorResponse));
      if (forwarding && DATA[type] === 1 && type !== Msg.ErrorResponse) this.dataForwarded = true;
      if (
        WHOLE[handling][type] === 0 &&
        (DESCRIPTION[type] === 0 || queue.headPayload === null ||
          (head !== Expect.DescribeStatement && head !== Expect.DescribePortal))
      ) {
        // Streamed: passed on piece by piece to an attached client, skipped otherwise.
        this.#dropping = !forwarding;
        if (this.#dropping) this.#endRun(p);
        else if (this.#runStart < 0) this.#runStart = p;
        this.#remaining = size;
        this.#advance(type);
        continue;
      }
      if (total - p < size) {
        this.#need = size;
        break;
      }
      if (handling === IDLE) {
        this.#idleMessage(type, buf, p, size);
        p += size;
        if (this.closed) return;
        continue;
      }
      if (type === Msg.ErrorResponse && this.cancelPending && errorCode(buf, p, size) === "57014") {
        this.cancelPending = false; // the cancel took effect: nothing is left in flight
      }
      if (
        DESCRIPTION[type] === 1 &&
        (head === Expect.DescribeStatement || head === Expect.DescribePortal)
      ) {
        (queue.headPayload as StatementTicket | null)?.described?.(type, buf, p + 5);
      } else if (
        type === Msg.ErrorResponse && queue.headPayload !== null &&
        (head === Expect.Bind || head === Expect.DescribeStatement ||
          head === Expect.DescribePortal)
      ) {
        (queue.headPayload as StatementTicket).failed(
          this.statements,
          parseErrorFields(buf, p + 5, p + size),
        );
      }
      if (handling === Action.Collect) this.#collect(type, buf, p, size);
      else if (handling === Action.Swallow && type === Msg.ErrorResponse) {
        if (queue.headPayload === SETTINGS_SYNC) {
          // The request behind it is being skipped: this server must not answer it at all.
          this.#endRun(p);
          const link = this.link;
          if (link) {
            for (let i = 0; i < ranges.length; i += 2) {
              link.writer.enqueue(buf.subarray(ranges[i], ranges[i + 1]));
            }
          }
          ranges.length = 0;
          this.#settingsSyncFailed(parseErrorFields(buf, p + 5, p + size));
          return;
        }
        this.#swallowedError(buf, p, size);
      }
      let replacement: Uint8Array | null = null;
      if (type === Msg.ParameterStatus) {
        const [name, value] = this.#parameterStatus(buf, p, size);
        if (this.link && (forwarding || handling === Action.Swallow)) {
          replacement = this.link.parameterStatus(this, { name, value, own: forwarding });
          if (!forwarding && replacement === null) replacement = EMPTY;
        }
      }
      if (forwarding && type === Msg.ErrorResponse) {
        replacement = this.#errorForClient(buf, p, size);
        if (replacement !== EMPTY) {
          this.dataForwarded = true;
          this.errorForwarded = true;
        }
      } else if (type === Msg.CommandComplete && buf[p + 5] === 0x44) {
        // 'D': DO, DEALLOCATE, DELETE, ...
        replacement = this.#commandTag(buf, p, size);
        if (!forwarding) replacement = null;
      }
      if (type === Msg.ReadyForQuery && forwarding) {
        const owed = this.link!.owedParameterStatus?.(this) ?? null;
        if (owed !== null) {
          // What the client is owed goes out first, then the ReadyForQuery.
          this.#endRun(p);
          const link = this.link!;
          for (let i = 0; i < ranges.length; i += 2) {
            link.writer.enqueue(buf.subarray(ranges[i], ranges[i + 1]));
          }
          ranges.length = 0;
          link.writer.enqueue(owed);
        }
      }
      if (forwarding && replacement === null) {
        if (this.#runStart < 0) this.#runStart = p;
      } else {
        this.#endRun(p);
      }
      if (replacement !== null && replacement.length > 0) {
        // Everything before it goes out first, then the rewritten error instead of the original.
        const link = this.link!;
        const ranges = this.#ranges;
        for (let i = 0; i < ranges.length; i += 2) {
          link.writer.enqueue(buf.subarray(ranges[i], ranges[i + 1]));
        }
        ranges.length = 0;
        link.writer.enqueue(replacement);
      }
      p += size;
      if (type !== Msg.ReadyForQuery) {
        this.#advance(type);
        continue;
      }
      this.txStatus = buf[p - 1];
      this.#advance(type);
      this.#settleHead(buf, p);
      const link = this.link;
      const verdict = link && this.clean ? link.shouldRelease(this) : false;
      if (link && verdict !== false) {
        this.#endRun(p);
        // Copy the tail out: the read buffer is reused while the client may still be slow to read.
        for (let i = 0; i < ranges.length; i += 2) {
          link.writer.enqueue(buf.subarray(ranges[i], ranges[i + 1]));
        }
        ranges.length = 0;
        this.link = null;
        this.idleSince = this.lastUsed = Date.now();
        this.transactions++;
        this.xactTimeMs += this.idleSince - this.attachedAt;
        link.released(this);
        if (verdict === true) this.owner?.checkin(this);
        else this.owner?.release(this, { resetSql: verdict });
      }
    }
    this.#settleHead(buf, p);
    this.#endRun(p);
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

  /** Closes the current forward run at `p`. */
  #endRun(p: number): void {
    if (this.#runStart >= 0) {
      if (p > this.#runStart) this.#ranges.push(this.#runStart, p);
      this.#runStart = -1;
    }
  }

  /**
   * Settles entries at the head that owe no server message: the proxy's own answers go out (after
   * everything forwarded so far), copy-end markers are dropped.
   */
  #settleHead(buf: Uint8Array, p: number): void {
    let head = this.queue.headKind;
    while (head === Expect.Local || head === Expect.CopyEnd) {
      const local = (this.queue.headPayload as LocalAnswer | null)?.bytes ?? null;
      const link = this.link;
      if (local && link) {
        this.#endRun(p);
        const ranges = this.#ranges;
        for (let i = 0; i < ranges.length; i += 2) {
          link.writer.enqueue(buf.subarray(ranges[i], ranges[i + 1]));
        }
        ranges.length = 0;
        link.writer.enqueue(local);
        if (DATA[local[0]] === 1) this.dataForwarded = true;
      }
      this.#pop();
      head = this.queue.headKind;
    }
  }

  /**
   * An ErrorResponse about to go to the client, rewritten when pgdog knows better: a cancel pgdog
   * sent itself names its reason, and a FATAL the client survives (it gets another server) is
   * passed on as an ERROR. Null keeps the original bytes.
   */
  #errorForClient(buf: Uint8Array, p: number, size: number): Uint8Array | null {
    const fields = parseErrorFields(buf, p + 5, p + size);
    const head = this.queue.headKind;
    if (head === Expect.Execute || head === Expect.Query) {
      const raise = (this.queue.headPayload as RunTicket | null)?.raise;
      // pgdog made the server fail here (an Execute of a portal that does not exist, or a DO
      // block raising pgdog's error); in a failed transaction the server's own 25P02 is what
      // PostgreSQL would have said.
      if (raise !== undefined && fields.code === (head === Expect.Query ? raise.code : "34000")) {
        return errorResponse(raise);
      }
    }
    let changed = false;
    const rewrite = this.errorRewrite;
    if (rewrite !== null && fields.message.includes(`"${rewrite.from}"`)) {
      this.errorRewrite = null;
      fields.message = fields.message.replaceAll(`"${rewrite.from}"`, `"${rewrite.to}"`);
      changed = true;
    }
    if (this.cancelNote !== null && fields.code === "57014") {
      fields.message = this.cancelNote;
      changed = true;
    }
    if ((fields.severity === "FATAL" || fields.severity === "PANIC") && this.link) {
      const verdict = this.link.onServerFatal(this);
      if (verdict === "replay") return EMPTY;
      if (verdict === "downgrade") {
        fields.severity = "ERROR";
        changed = true;
      }
    }
    return changed ? errorResponse(fields) : null;
  }

  /**
   * A CommandComplete whose tag starts with "D". A statement pgdog rewrote (a client's DEALLOCATE
   * run as a no-op) gets the tag PostgreSQL would give; a DEALLOCATE pgdog did not write (typed by
   * a client with a server-side name, say) may have dropped any statement here. Returns the
   * message to send instead, or null.
   */
  #commandTag(buf: Uint8Array, p: number, size: number): Uint8Array | null {
    const ticket = this.queue.headPayload as RunTicket | null;
    if (ticket?.completed !== undefined) {
      const replacement = ticket.completed(readCString(buf, p + 5, p + size)[0]);
      if (replacement !== null) return replacement;
    }
    // "DEAL": DEALLOCATE or DEALLOCATE ALL.
    if (buf[p + 6] === 0x45 && buf[p + 7] === 0x41 && buf[p + 8] === 0x4c) {
      allStale(this.statements);
    }
    return null;
  }

  /** Moves the response queue along for a message of `type` (seen at its header). */
  #advance(type: number): void {
    const queue = this.queue;
    const head = queue.headKind;
    switch (type) {
      case Msg.ReadyForQuery:
        this.copy = CopyState.None;
        this.copyEnded = false;
        this.discardUntilSync = false;
        this.errorForwarded = false;
        this.errorRewrite = null;
        this.cancelNote = null;
        {
          const now = Date.now();
          this.queryTimeMs += now - this.requestStart;
          this.requestStart = now;
        }
        // Pop through the entry this answers (anything before it was skipped by the server).
        while (queue.length > 0) {
          const kind = queue.headKind;
          this.#pop();
          if (endsWithReady(kind)) break;
        }
        return;
      case Msg.ParseComplete:
        if (head === Expect.Parse) {
          (queue.headPayload as ParseTicket | null)?.succeeded();
          this.#pop();
        }
        return;
      case Msg.BindComplete:
        if (head === Expect.Bind) this.#pop();
        return;
      case Msg.CloseComplete:
        if (head === Expect.Close) this.#pop();
        return;
      case Msg.NoData:
      case Msg.RowDescription:
        if (head === Expect.DescribeStatement || head === Expect.DescribePortal) this.#pop();
        return;
      case Msg.CommandComplete:
      case Msg.EmptyQueryResponse:
      case Msg.PortalSuspended:
        if (head === Expect.Execute) this.#pop();
        return;
      case Msg.ErrorResponse:
        if (
          head === Expect.Parse || head === Expect.Bind || head === Expect.DescribeStatement ||
          head === Expect.DescribePortal || head === Expect.Execute || head === Expect.Close
        ) {
          // The server now skips every message up to the next Sync; statements in skipped (or
          // failed) Parses were not created.
          if (!queue.dropUntilSync(this.#forgetStatement)) this.discardUntilSync = true;
          this.#recount();
        }
        return;
      case Msg.CopyInResponse:
        this.copy = CopyState.In;
        // Syncs sent after the COPY and before its end are ignored by the server.
        if (queue.removeSyncsBeforeCopyEnd() > 0) this.#recount();
        if (head === Expect.Query && queue.headAction !== Action.Forward) {
          // The proxy's own statement started a COPY (never intended): end it.
          this.writer.write(COPY_FAIL).catch((e) => this.#fail(e));
        }
        return;
      case Msg.CopyOutResponse:
        this.copy = CopyState.Out;
        return;
      case Msg.CopyBothResponse:
        this.copy = CopyState.Both;
        return;
    }
  }

  /** Removes the head entry, keeping counters and waiters right. */
  #pop(): void {
    const kind = this.queue.headKind;
    const action = this.queue.headAction;
    this.queue.shift();
    if (action === Action.Forward) this.answered++;
    if (endsWithReady(kind)) this.pendingReady--;
    if (action === Action.Collect && endsWithReady(kind)) {
      const req = this.#internal.shift();
      if (req) {
        req.result.status = this.txStatus;
        req.onDone?.(req.result);
        req.resolve(req.result);
      }
    }
    if (this.queue.length === 0 && this.#drained.length > 0) {
      for (const resolve of this.#drained.splice(0)) resolve();
    }
  }

  readonly #forgetStatement = (kind: number, payload: unknown): void => {
    if (kind === Expect.Parse) (payload as ParseTicket | null)?.failed();
    else if (kind === Expect.Local) (payload as LocalAnswer | null)?.dropped?.();
    else if (kind === Expect.Execute) (payload as RunTicket | null)?.dropped?.();
    else if (kind === Expect.DescribeStatement || kind === Expect.DescribePortal) {
      (payload as StatementTicket | null)?.dropped?.();
    }
  };

  #recount(): void {
    let ready = 0;
    for (let n = 0; n < this.queue.length; n++) if (endsWithReady(this.queue.kindAt(n))) ready++;
    this.pendingReady = ready;
  }

  #collect(type: number, buf: Uint8Array, p: number, size: number): void {
    const req = this.#internal[0];
    if (!req) return;
    switch (type) {
      case Msg.ErrorResponse:
        req.result.error ??= parseErrorFields(buf, p + 5, p + size);
        return;
      case Msg.CommandComplete:
        req.result.tags.push(readCString(buf, p + 5, p + size)[0]);
        return;
      case Msg.DataRow:
        if (req.messages !== undefined) req.messages(buf.slice(p, p + size));
        else req.result.rows.push(decodeDataRow(buf, p, size));
        return;
      case Msg.RowDescription:
        req.messages?.(buf.slice(p, p + size));
        return;
    }
  }

  #settingsSyncFailed(fields: ErrorFields): void {
    log.warn(
      `${this.label}: applying a client's settings failed (${fields.code} ${fields.message}); ` +
        "closing it before it runs the request",
    );
    const error = new SettingsSyncError(fields);
    this.close(error.message, error);
  }

  #swallowedError(buf: Uint8Array, p: number, size: number): void {
    const e = parseErrorFields(buf, p + 5, p + size);
    log.warn(
      `${this.label}: a statement pgdog sent failed: ${e.message}; the server will be closed after use`,
    );
    this.discard = true;
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
        // Nothing was owed: after an unexpected ERROR PostgreSQL may be skipping to a Sync
        // nobody will send, so the connection can't be trusted with another request.
        this.close(`server sent ${e.severity} while idle`);
        return;
      }
      default:
        // ReadyForQuery with nothing owed: harmless, nothing to do.
    }
  }

  #parameterStatus(buf: Uint8Array, p: number, size: number): [string, string] {
    const [name, next] = readCString(buf, p + 5, p + size);
    const [value] = readCString(buf, next, p + size);
    this.reported.set(name, value);
    return [name, value];
  }
}

const COPY_FAIL = copyFail("COPY is not allowed in a statement run by pgdog");

const SYNC_BEGIN = ((): Uint8Array => {
  const b = new MessageBuilder(64);
  appendStatement(b, "BEGIN");
  return b.build();
})();
const SYNC_COMMIT = ((): Uint8Array => {
  const b = new MessageBuilder(64);
  appendStatement(b, "COMMIT");
  return b.build();
})();

/** The values of the DataRow message of `size` bytes at `p`, as text (null: SQL NULL). */
export function decodeDataRow(buf: Uint8Array, p: number, size: number): (string | null)[] {
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
