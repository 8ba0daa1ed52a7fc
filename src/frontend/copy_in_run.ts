/**
 * COPY FROM STDIN on several shards: every shard runs the client's COPY statement, the client gets
 * one CopyInResponse, and its data is split among the shards: for a sharded table each row goes to
 * the shard of its key (the rows found by the splitter of src/cross_shard/copy_in.ts), re-batched
 * into CopyData of up to {@linkcode BATCH_BYTES} per shard; for a table on every shard every
 * shard gets all of it. The header (binary signature, HEADER line) goes to every shard first, a
 * binary trailer to every shard last. The client gets one `COPY n` (summed over the shards; once
 * for a table on every shard).
 *
 * Memory stays flat: each shard has two batch buffers, one filling while the other is written;
 * while a shard's socket is slow the client is not read (backpressure).
 *
 * All or nothing: a bad row, an error on any shard, a client's CopyFail or a lost shard ends the
 * COPY on every shard (CopyFail to the others); outside a transaction the implicit transaction pgdog
 * opened on every shard rolls back (and commits through Checkout.endImplicit only when every shard
 * succeeded); inside one, every shard's part of it fails. The client gets PostgreSQL's error, its
 * `COPY t, line N` context mapped back to the client's own line where pgdog still remembers which
 * row that shard line was, and the rest of its COPY data is ignored, as PostgreSQL does.
 *
 * @module
 */

import {
  appendError,
  copyFail,
  type ErrorFields,
  MessageBuilder,
  Msg,
  parseErrorFields,
  readInt32,
  readyForQuery,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import type { SocketWriter } from "../net/writer.ts";
import { asSocketWriter, FramedWriter } from "../net/framer.ts";
import type { Server, ServerLink } from "../backend/server.ts";
import { Action, Expect } from "../backend/response_queue.ts";
import { ClientFacingError, type Pool } from "../backend/pool.ts";
import { ServerConnectError } from "../backend/connect.ts";
import type { Cluster } from "../backend/databases.ts";
import {
  type CopyFormat,
  CopyFormatError,
  copyFormatOf,
  CopyInSplitter,
  type CopyRows,
} from "../cross_shard/copy_in.ts";
import { type CopyInRoute, type ShardLookup, valueShard } from "../router/shard_keys.ts";
import { errorMessage } from "../log.ts";
import { OutBatch } from "./out_batch.ts";
import type { ShardTransaction } from "./shard_transaction.ts";
import { IMPLICIT_BEGIN } from "./split_request.ts";

/** What a COPY FROM on several shards needs of the client. */
export interface CopyInHost {
  readonly rbuf: MessageBuffer;
  readonly writer: SocketWriter;
  /** The client is gone. */
  closed(): boolean;
  readonly cluster: Cluster;
  /** The number of shards the sharding configuration hashes over. */
  readonly shardCount: number;
  readonly txn: ShardTransaction;
  /** The attached server (a leg of the COPY, or parked, once it runs). */
  attached(): Server | null;
  /** The attached server is the COPY's (or parked) now: the client lets go of it. */
  letGo(): void;
  /** A BEGIN of the client's held back (taken: the COPY runs in the client's transaction). */
  takeDeferredBegin(): Uint8Array | null;
  /** The session's client_encoding (null: not set, UTF-8). */
  clientEncoding(): string | null;
  /** Reads more of the client's messages into `rbuf`; false when the client is gone. */
  fill(): Promise<boolean>;
  /** Queues the client's settings where a leg's differ. */
  syncParams(server: Server, out: OutBatch): void;
  /** A new transaction waits out PAUSE (false: the client was told, or left). */
  atGate(): Promise<boolean>;
  /** Asks the plugin hashers for `lookup.missing` (see plugin_hashers.ts; throws on failure). */
  askPluginHashers(lookup: ShardLookup): Promise<void>;
  /**
   * Ends the transaction pgdog opened on `servers` (commit or roll back) and gives them back;
   * returns the first error.
   */
  endImplicit(servers: Server[], commit: boolean): Promise<ErrorFields | null>;
  /** The COPY's servers while it runs (null: it is over), for cancels and query_timeout. */
  running(servers: readonly Server[] | null): void;
  /** Answers an error of pgdog's own (a simple query: with ReadyForQuery). */
  answerError(fields: ErrorFields, simple: boolean): void;
}

/** Rows are re-batched per shard into CopyData messages of about this size. */
export const BATCH_BYTES = 64 << 10;
/** Per shard, the client row numbers of this many recent rows (to map a shard's line back). */
const RING = 8192;
/** Plugin hasher answers kept across chunks (cleared beyond this). */
const PLUGIN_ANSWERS = 100_000;
const FIVE = 5;
/** Before waiting for the client, partial batches go out when none did for this long. */
const FLUSH_AFTER_MS = 20;
const BINARY_TRAILER = Uint8Array.of(0xff, 0xff);
const COPY_DONE = Uint8Array.of(Msg.CopyDone, 0, 0, 0, 4);
/** Ends a shard's COPY when it failed elsewhere (its own error is not the client's). */
const COPY_FAILED = copyFail("the COPY failed on another shard or in pgdog");

/** One shard's part of the COPY. */
interface Leg {
  server: Server;
  shard: number;
  fresh: boolean;
  /** "starting": the COPY statement sent; "copying": CopyInResponse came; "done": ReadyForQuery. */
  state: "starting" | "copying" | "done";
  /** CopyInResponse (kept from the first leg, for the client). */
  response: Uint8Array | null;
  /** Its first ErrorResponse. */
  error: Uint8Array | null;
  count: number;
  status: number;
  /** The batch filling (a CopyData message: 5 header bytes, then rows). */
  buf: Uint8Array;
  len: number;
  /** The other batch, being written (or free). */
  spare: Uint8Array;
  inflight: Promise<void> | null;
  /** Rows sent. */
  rows: number;
  /** Lines sent, as PostgreSQL counts them in its errors (`COPY t, line N`; a header counts). */
  lines: number;
  /** Per recent row (row n at (n - 1) % RING): its last line on the shard, and in the client's data. */
  shardLines: Float64Array | null;
  clientLines: Float64Array | null;
  link: ServerLink | null;
}

/** Frames a leg's answers into whole messages for the run. */
class LegSink extends FramedWriter {
  readonly #onMessage: (msg: Uint8Array) => void;
  constructor(out: SocketWriter, onMessage: (msg: Uint8Array) => void) {
    super(out);
    this.#onMessage = onMessage;
  }
  override write(data: Uint8Array): Promise<void> {
    this.enqueue(data);
    return Promise.resolve();
  }
  override flush(): Promise<void> {
    return Promise.resolve();
  }
  protected messages(run: Uint8Array): void {
    for (let p = 0; p < run.length;) {
      const size = readInt32(run, p + 1) + 1;
      this.#onMessage(run.slice(p, p + size));
      p += size;
    }
  }
}

/**
 * Runs a COPY FROM STDIN whose Query message is [p, end) of the client's read buffer (already
 * consumed) on `shards`, reading the client's COPY data from its read buffer until CopyDone or
 * CopyFail (or an error), and answers the client.
 */
export async function runCopyIn(
  host: CopyInHost,
  request: { shards: number[]; route: CopyInRoute; type: number; p: number; end: number },
): Promise<void> {
  const simple = request.type === Msg.Query;
  if (!simple) {
    host.answerError({
      severity: "ERROR",
      code: SqlState.FeatureNotSupported,
      message: "COPY FROM STDIN into a table on several shards runs only as a simple query " +
        "(send it without parameters)",
    }, false);
    return;
  }
  const format = copyFormatOf(request.route.options, request.route.columns);
  if ("error" in format) {
    host.answerError({ severity: "ERROR", code: format.code, message: format.error }, true);
    return;
  }
  const query = host.rbuf.buf.slice(request.p, request.end);
  await new CopyInRun(host, { ...request, format, clientEncoding: host.clientEncoding() })
    .run(query);
}

class CopyInRun {
  readonly #host: CopyInHost;
  readonly #shards: number[];
  readonly #route: CopyInRoute;
  readonly #format: CopyFormat;
  readonly #legs: Leg[] = [];
  /** Leg index by shard number. */
  readonly #legOf: Int32Array;
  #implicit = false;
  /** The error the client gets (the first), as an ErrorResponse. */
  #failure: Uint8Array | null = null;
  #wake: (() => void) | null = null;
  readonly #splitter: CopyInSplitter | null;
  #headerSent = false;
  /** When partial batches were last written (see {@linkcode FLUSH_AFTER_MS}). */
  #flushedAt = performance.now();
  /** The COPY failed: legs still copying (or starting to) get a CopyFail. */
  #aborting = false;
  /** Lines before the first row on each shard (a HEADER line). */
  readonly #headerLines: number;
  readonly #lookup: ShardLookup = { found: [], pluginShards: new Map(), missing: [] };
  /** Reused per chunk: each row's leg. */
  #rowLegs = new Int32Array(1024);

  constructor(
    host: CopyInHost,
    options: {
      shards: number[];
      route: CopyInRoute;
      format: CopyFormat;
      clientEncoding: string | null;
    },
  ) {
    this.#host = host;
    this.#shards = options.shards;
    this.#route = options.route;
    this.#format = options.format;
    const max = Math.max(...options.shards) + 1;
    this.#legOf = new Int32Array(max).fill(-1);
    options.shards.forEach((n, i) => this.#legOf[n] = i);
    const key = options.route.key;
    this.#splitter = key === null ? null : new CopyInSplitter(options.format, {
      keyColumn: key.column,
      columns: options.route.columns.length,
      keyType: key.spec.type,
      columnNames: options.route.columns,
      clientEncoding: options.clientEncoding ?? undefined,
    });
    this.#headerLines = options.format.format !== "binary" && options.format.header !== false
      ? 1
      : 0;
  }

  async run(query: Uint8Array): Promise<void> {
    const host = this.#host;
    if (!(await this.#takeLegs())) return;
    // Every leg starts the COPY in a transaction: pgdog's implicit one outside the client's;
    // inside it, a leg not in it yet (checked out now, or a session's server kept idle) joins it
    // with what opened it (or a BEGIN when pgdog did not see that: session mode).
    const prelude = host.txn.prelude;
    for (const leg of this.#legs) {
      const out = new OutBatch();
      out.reset(query);
      host.syncParams(leg.server, out);
      const joins = this.#implicit
        ? [IMPLICIT_BEGIN]
        : leg.server.txStatus !== TxStatus.Idle
        ? []
        : prelude.length > 0
        ? prelude
        : [IMPLICIT_BEGIN];
      for (const msg of joins) {
        out.addBytes(msg);
        leg.server.expect(Expect.Query, Action.Swallow);
      }
      out.addBytes(query);
      leg.server.expect(Expect.Query, Action.Forward);
      out.writeTo(leg.server.writer).catch(() => {});
    }
    await this.#until(() => this.#legs.every((l) => l.state !== "starting"));
    this.#checkColumns();
    if (this.#failure === null && !host.closed()) {
      host.writer.enqueue(this.#legs[0].response!);
      await host.writer.flush().catch(() => {});
      await this.#stream();
    }
    await this.#finish();
  }

  /**
   * The shards take as many columns as pgdog split the rows by: without a column list, the
   * table's generated columns take no data, so the key is not where the table's order says.
   */
  #checkColumns(): void {
    const response = this.#legs[0].response;
    if (this.#failure !== null || response === null || this.#route.key === null) return;
    const columns = (response[6] << 8) | response[7];
    if (columns === this.#route.columns.length) return;
    const table = this.#route.table.name;
    this.#fail({
      severity: "ERROR",
      code: SqlState.FeatureNotSupported,
      message: `COPY into sharded table ${table} without a column list: the table has columns ` +
        `that take no data (generated columns), so pgdog can't tell where the sharding key is; ` +
        `name the columns (COPY ${table} (...) FROM STDIN)`,
    });
  }

  /** The servers of every shard: the transaction's own, else checked out (in shard order). */
  async #takeLegs(): Promise<boolean> {
    const host = this.#host;
    const begin = host.takeDeferredBegin();
    if (begin !== null) host.txn.prelude.unshift(begin);
    if (host.txn.empty && !(await host.atGate())) return false;
    const cluster = host.cluster;
    try {
      for (const n of this.#shards) {
        const attached = host.attached();
        const leg = await host.txn.leg(cluster, n, { role: "primary", attached });
        if (leg.attached) host.letGo();
        this.#legs.push(this.#newLeg(leg.server, { shard: n, fresh: leg.fresh }));
      }
    } catch (e) {
      for (const leg of this.#legs) {
        if (leg.fresh) leg.server.owner?.checkin(leg.server);
        else if (host.closed()) (leg.server.owner as Pool).release(leg.server, { resetSql: null });
        else host.txn.keep(cluster, leg.server);
      }
      if (host.closed()) return false;
      const fields = e instanceof ClientFacingError || e instanceof ServerConnectError
        ? e.fields
        : { severity: "ERROR", code: SqlState.InternalError, message: String(e) };
      host.answerError({ ...fields, severity: "ERROR" }, true);
      return false;
    }
    // The client is in a transaction when it sent BEGIN (held back) or a server holds one of its
    // (the legs' own status: the COPY's legs are every server the client holds).
    this.#implicit = begin === null && this.#legs.every((l) => l.server.txStatus === TxStatus.Idle);
    // A server of a shard the COPY does not run on is set aside (the COPY runs on every shard).
    const other = host.attached();
    if (other !== null) {
      host.txn.park(cluster, other);
      host.letGo();
    }
    for (let i = 0; i < this.#legs.length; i++) {
      const leg = this.#legs[i];
      const sink = new LegSink(host.writer, (msg) => this.#message(i, msg));
      leg.link = {
        writer: asSocketWriter(sink),
        shouldRelease: () => false,
        parameterStatus: () => new Uint8Array(0),
        released: () => {},
        serverLost: (_s, error) => this.#lost(i, error),
        onServerFatal: () => "keep",
      };
      leg.server.attach(leg.link);
    }
    host.running(this.#legs.map((l) => l.server));
    return true;
  }

  #newLeg(server: Server, options: { shard: number; fresh: boolean }): Leg {
    return {
      server,
      shard: options.shard,
      fresh: options.fresh,
      state: "starting",
      response: null,
      error: null,
      count: 0,
      status: TxStatus.Idle,
      buf: new Uint8Array(FIVE + BATCH_BYTES),
      len: FIVE,
      spare: new Uint8Array(FIVE + BATCH_BYTES),
      inflight: null,
      rows: 0,
      lines: this.#headerLines,
      shardLines: this.#route.key === null ? null : new Float64Array(RING),
      clientLines: this.#route.key === null ? null : new Float64Array(RING),
      link: null,
    };
  }

  /** An answer of leg `i`'s server. */
  #message(i: number, msg: Uint8Array): void {
    const leg = this.#legs[i];
    if (leg.state === "done") return;
    switch (msg[0]) {
      case Msg.CopyInResponse:
        leg.state = "copying";
        leg.response = msg;
        if (this.#aborting) this.#abort(leg);
        break;
      case Msg.ErrorResponse:
        leg.error ??= msg;
        if (this.#failure === null) this.#failure = this.#clientError(leg, msg);
        break;
      case Msg.CommandComplete: {
        const tag = new TextDecoder().decode(msg.subarray(5, msg.length - 1));
        const n = Number(tag.slice(tag.lastIndexOf(" ") + 1));
        if (Number.isFinite(n)) leg.count = n;
        break;
      }
      case Msg.ReadyForQuery:
        leg.state = "done";
        leg.status = msg[5];
        break;
      case Msg.NoticeResponse:
        this.#host.writer.enqueue(msg);
        break;
    }
    this.#notify();
  }

  #lost(i: number, error: Error): void {
    const leg = this.#legs[i];
    if (leg.state === "done") return;
    this.#fail({
      severity: "ERROR",
      code: SqlState.ConnectionFailure,
      message: `lost the connection to shard ${leg.shard}: ${error.message}`,
    });
    leg.state = "done";
    leg.status = TxStatus.Failed;
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    if (wake !== null) {
      this.#wake = null;
      wake();
    }
  }

  async #until(done: () => boolean): Promise<void> {
    while (!done()) await new Promise<void>((resolve) => this.#wake = resolve);
  }

  /** Fails the COPY with an error of pgdog's own (unless it failed already). */
  #fail(fields: ErrorFields): void {
    if (this.#failure !== null) return;
    const b = new MessageBuilder(128);
    appendError(b, fields);
    this.#failure = b.build();
  }

  /** A shard's error for the client: its `COPY t, line N` in the client's lines. */
  #clientError(leg: Leg, msg: Uint8Array): Uint8Array {
    const shardLines = leg.shardLines;
    const clientLines = leg.clientLines;
    if (shardLines === null || clientLines === null) return msg;
    const fields = parseErrorFields(msg, 5, msg.length);
    const where = fields.other?.W;
    const m = where === undefined ? null : /^(COPY [^\n]*?, line )(\d+)/.exec(where);
    if (m === null) return msg;
    const line = Number(m[2]);
    // The row whose lines hold that line (rows are in order): the first one ending at or after it.
    let found = -1;
    for (let n = Math.max(1, leg.rows - RING + 1); n <= leg.rows; n++) {
      if (shardLines[(n - 1) % RING] >= line) {
        found = (n - 1) % RING;
        break;
      }
    }
    if (found < 0) return msg;
    const client = clientLines[found] - (shardLines[found] - line);
    fields.other!.W = m[1] + client + where!.slice(m[0].length);
    const b = new MessageBuilder(msg.length + 16);
    appendError(b, fields);
    return b.build();
  }

  /** The client's line of row r of `rows` (its last line, as PostgreSQL names it). */
  #clientLine(rows: CopyRows, r: number): number {
    const first = rows.firstLine ?? rows.firstRow + this.#headerLines;
    const lines = rows.lines;
    if (lines === null || lines === undefined) return first + r;
    let line = first;
    for (let i = 1; i <= r; i++) line += lines[i];
    return line;
  }

  /** Reads the client's COPY data until CopyDone, CopyFail or a failure. */
  async #stream(): Promise<void> {
    const host = this.#host;
    const rb = host.rbuf;
    for (;;) {
      if (this.#failure !== null) return;
      const size = rb.nextMessageSize();
      if (size === 0) {
        const now = performance.now();
        if (now - this.#flushedAt >= FLUSH_AFTER_MS) {
          // A client that sends slowly: what it sent goes on before pgdog waits for more (each
          // shard sees its rows, and a cancel or an error there takes effect on them).
          this.#flushedAt = now;
          for (const leg of this.#legs) await this.#flush(leg);
          if (this.#failure !== null) return;
        }
        if (!(await host.fill())) {
          this.#fail({
            severity: "ERROR",
            code: SqlState.ConnectionFailure,
            message: "the client went away during COPY",
          });
          return;
        }
        continue;
      }
      const p = rb.start;
      const buf = rb.buf;
      const type = buf[p];
      rb.start = p + size;
      switch (type) {
        case Msg.CopyData:
          await this.#data(buf.subarray(p + 5, p + size));
          break;
        case Msg.CopyDone:
          await this.#done();
          return;
        case Msg.CopyFail: {
          const reason = new TextDecoder().decode(buf.subarray(p + 5, p + size - 1));
          this.#fail({
            severity: "ERROR",
            code: SqlState.QueryCanceled,
            message: `COPY from stdin failed: ${reason}`,
          });
          return;
        }
        case Msg.Flush:
        case Msg.Sync:
          break; // PostgreSQL ignores them during COPY IN
        case Msg.Terminate:
          // Left for the client's loop, which ends the connection.
          rb.start = p;
          this.#fail({
            severity: "ERROR",
            code: SqlState.ConnectionFailure,
            message: "the client ended the connection during COPY",
          });
          return;
        default:
          this.#fail({
            severity: "ERROR",
            code: SqlState.ProtocolViolation,
            message: `unexpected message type 0x${
              type.toString(16).padStart(2, "0").toUpperCase()
            } during COPY from stdin`,
          });
          return;
      }
    }
  }

  /** One CopyData of the client's. */
  async #data(chunk: Uint8Array): Promise<void> {
    const splitter = this.#splitter;
    if (splitter === null) {
      // A table on every shard: all of it to every shard.
      for (const leg of this.#legs) await this.#add(leg, chunk, 0, chunk.length);
      return;
    }
    let rows: CopyRows;
    try {
      rows = splitter.push(chunk);
    } catch (e) {
      this.#formatError(e);
      return;
    }
    await this.#rows(rows);
  }

  /** Rows of the splitter's, each to the leg of its key (the header first, once). */
  async #rows(rows: CopyRows): Promise<void> {
    const splitter = this.#splitter!;
    if (!this.#headerSent && splitter.header !== null) await this.#sendHeader(splitter.header);
    const n = rows.starts.length;
    if (n === 0) return;
    if (!(await this.#routeRows(rows))) return;
    const legs = this.#legs;
    const rowLegs = this.#rowLegs;
    const { data, starts, ends } = rows;
    const lines = rows.lines ?? null;
    let clientLine = rows.firstLine ?? rows.firstRow + this.#headerLines;
    for (let r = 0; r < n; r++) {
      const leg = legs[rowLegs[r]];
      const start = starts[r];
      const end = ends[r];
      if (leg.len + (end - start) > leg.buf.length) await this.#add(leg, data, start, end);
      else {
        leg.buf.set(data.subarray(start, end), leg.len);
        leg.len += end - start;
      }
      const taken = lines === null ? 1 : lines[r];
      if (r > 0) clientLine += taken;
      leg.lines += taken;
      const at = leg.rows % RING;
      leg.shardLines![at] = leg.lines;
      leg.clientLines![at] = clientLine;
      leg.rows++;
    }
  }

  /** A CopyFormatError (or a bug) fails the COPY with the client's line. */
  #formatError(e: unknown): void {
    if (!(e instanceof CopyFormatError)) {
      this.#fail({ severity: "ERROR", code: SqlState.InternalError, message: errorMessage(e) });
      return;
    }
    this.#fail({
      severity: "ERROR",
      code: e.code,
      message: e.message,
      other: { W: `COPY ${this.#route.table.name}, line ${e.line}` },
    });
  }

  /** The header to every shard, once. */
  async #sendHeader(header: Uint8Array): Promise<void> {
    this.#headerSent = true;
    for (const leg of this.#legs) await this.#add(leg, header, 0, header.length);
  }

  /**
   * Each row's leg in #rowLegs (the shard of its key, plugin hashers asked once per chunk for the
   * values they have not answered); false when a row has no shard (the COPY failed).
   */
  async #routeRows(rows: CopyRows): Promise<boolean> {
    const key = this.#route.key!;
    const spec = key.spec;
    const n = rows.starts.length;
    if (this.#rowLegs.length < n) this.#rowLegs = new Int32Array(n * 2);
    const lookup = this.#lookup;
    const options = { shards: this.#host.shardCount, lookup };
    const value = { text: null as string | null, binary: null };
    for (let pass = 0; pass < 2; pass++) {
      lookup.missing.length = 0;
      for (let r = 0; r < n; r++) {
        const text = rows.keys[r];
        if (text === null) {
          this.#rowFailure(this.#clientLine(rows, r), {
            code: "22004",
            message:
              `the sharding key ${spec.column} of a row is NULL: a row without its key has no shard`,
          });
          return false;
        }
        value.text = text;
        lookup.found.length = 0;
        const shard = valueShard(value, spec, options);
        const leg = shard === null ? -1 : shard < this.#legOf.length ? this.#legOf[shard] : -1;
        if (leg < 0) {
          this.#rowFailure(this.#clientLine(rows, r), {
            code: "22P02",
            message: `no shard for the sharding key ${spec.column} = ${JSON.stringify(text)} ` +
              `(a value of type ${spec.type} that a mapping rule or the hash places)`,
          });
          return false;
        }
        this.#rowLegs[r] = leg;
      }
      if (lookup.missing.length === 0) return true;
      if (pass === 1) break;
      if (lookup.pluginShards.size > PLUGIN_ANSWERS) lookup.pluginShards.clear();
      try {
        await this.#host.askPluginHashers(lookup);
      } catch (e) {
        this.#fail({ severity: "ERROR", code: SqlState.SystemError, message: errorMessage(e) });
        return false;
      }
    }
    this.#fail({
      severity: "ERROR",
      code: SqlState.InternalError,
      message: "a plugin hasher gave no shard",
    });
    return false;
  }

  #rowFailure(line: number, error: { code: string; message: string }): void {
    this.#fail({
      severity: "ERROR",
      ...error,
      other: { W: `COPY ${this.#route.table.name}, line ${line}` },
    });
  }

  /** Appends bytes [start, end) of `data` to a leg's batch, writing the batch when full. */
  async #add(leg: Leg, data: Uint8Array, start: number, end: number): Promise<void> {
    const n = end - start;
    if (leg.len + n > leg.buf.length) await this.#flush(leg);
    if (n > BATCH_BYTES) {
      // A row larger than a batch goes as a CopyData of its own.
      const msg = new Uint8Array(FIVE + n);
      msg.set(data.subarray(start, end), FIVE);
      await this.#write(leg, msg);
      return;
    }
    leg.buf.set(data.subarray(start, end), leg.len);
    leg.len += n;
  }

  /** Writes a leg's batch (waiting for its previous write first: the other buffer is then free). */
  async #flush(leg: Leg): Promise<void> {
    if (leg.len === FIVE) return;
    const buf = leg.buf;
    const len = leg.len;
    leg.buf = leg.spare;
    leg.spare = buf;
    leg.len = FIVE;
    await this.#write(leg, buf.subarray(0, len));
  }

  /** Writes one CopyData message (its header filled in here) after the leg's previous write. */
  async #write(leg: Leg, msg: Uint8Array): Promise<void> {
    msg[0] = Msg.CopyData;
    new DataView(msg.buffer, msg.byteOffset).setInt32(1, msg.length - 1);
    if (leg.inflight !== null) await leg.inflight;
    if (leg.server.closed) return;
    leg.inflight = leg.server.writer.write(msg).catch(() => {
      // The server's read loop reports the loss (serverLost).
    });
  }

  /** The client's CopyDone: the rest, the trailer, CopyDone to every shard. */
  async #done(): Promise<void> {
    const splitter = this.#splitter;
    if (splitter !== null) {
      // A last line without its terminator is a row, as PostgreSQL takes it.
      let last: CopyRows;
      try {
        last = splitter.finish();
      } catch (e) {
        this.#formatError(e);
        return;
      }
      await this.#rows(last);
      if (this.#failure !== null) return;
      if (!this.#headerSent && splitter.header !== null) await this.#sendHeader(splitter.header);
      if (this.#format.format === "binary" && this.#headerSent) {
        for (const leg of this.#legs) await this.#add(leg, BINARY_TRAILER, 0, 2);
      }
    }
    for (const leg of this.#legs) await this.#flush(leg);
    for (const leg of this.#legs) {
      if (leg.inflight !== null) await leg.inflight;
      leg.inflight = null;
      if (leg.state !== "copying" || leg.server.closed) continue;
      leg.server.copyEnded = true;
      leg.server.expect(Expect.CopyEnd);
      leg.server.writer.write(COPY_DONE).catch(() => {});
    }
  }

  /** Ends the COPY on every shard, the transaction (when pgdog's), and answers the client. */
  async #finish(): Promise<void> {
    const host = this.#host;
    const legs = this.#legs;
    if (this.#failure !== null) {
      for (const leg of legs) if (leg.inflight !== null) await leg.inflight;
      this.#aborting = true;
      for (const leg of legs) this.#abort(leg);
    }
    await this.#until(() => legs.every((l) => l.state === "done"));
    host.running(null);
    const servers = legs.map((l) => l.server);
    for (const s of servers) s.detach();
    const failure = this.#failure;
    let answer: Uint8Array;
    let status: number;
    if (this.#implicit) {
      const alive = servers.filter((s) => !s.closed);
      const error = await host.endImplicit(alive, failure === null);
      status = TxStatus.Idle;
      if (failure !== null) answer = failure;
      else if (error !== null) {
        const b = new MessageBuilder(128);
        appendError(b, error);
        answer = b.build();
      } else answer = this.#complete();
    } else {
      status = failure !== null ? TxStatus.Failed : TxStatus.InTransaction;
      for (const leg of legs) {
        if (leg.server.closed) continue;
        if (leg.status === TxStatus.Failed) status = TxStatus.Failed;
        if (host.closed()) (leg.server.owner as Pool).release(leg.server, { resetSql: null });
        else host.txn.keep(host.cluster, leg.server);
      }
      answer = failure ?? this.#complete();
    }
    if (host.closed()) return;
    host.writer.enqueue(answer);
    host.writer.enqueue(readyForQuery(status));
  }

  /** A leg still copying ends its COPY with an error (the COPY failed elsewhere). */
  #abort(leg: Leg): void {
    if (leg.state !== "copying" || leg.server.copyEnded || leg.server.closed) return;
    leg.server.copyEnded = true;
    leg.server.expect(Expect.CopyEnd);
    leg.server.writer.write(COPY_FAILED).catch(() => {});
  }

  /** `COPY n`: the shards' rows (a table on every shard: once). */
  #complete(): Uint8Array {
    let total = 0;
    if (this.#route.key === null) total = this.#legs[0].count;
    else for (const leg of this.#legs) total += leg.count;
    return new MessageBuilder(32).begin(Msg.CommandComplete).cstring(`COPY ${total}`).end()
      .build();
  }
}
