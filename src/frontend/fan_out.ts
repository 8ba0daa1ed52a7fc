/**
 * One request run on several shards at once, answered to the client as if one server ran it.
 * Every shard gets the same messages, so their answers have the same shape: at each answer other
 * than a row (RowDescription, CommandComplete, ParseComplete, ReadyForQuery, ...) the shards are
 * lined up and one answer goes out for all of them, while rows stream through as they come.
 * CommandComplete counts are summed (or, for writes to tables copied on every shard, the first
 * shard's answer stands for all, rows included); ReadyForQuery carries the status of the whole
 * (failed if any shard failed, in a transaction if any shard is). The first error wins; after it,
 * everything up to each shard's ReadyForQuery is dropped, since PostgreSQL skips the rest of the
 * request too.
 *
 * COPY TO from several shards is one stream: one CopyOutResponse and CopyDone, rows as they come,
 * and one header: with CSV or text HEADER, the first header line to arrive; in binary, the first
 * 19-byte signature and header, and one trailer at the end. (PostgreSQL sends each row in a
 * CopyData of its own, the binary header with the first row, the trailer alone or with the header
 * when there are no rows; rows of different shards never share a message.)
 *
 * @module
 */

import {
  appendError,
  decodeText,
  errorResponse,
  MessageBuilder,
  Msg,
  queryMessage,
  readInt32,
  readyForQuery,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { MergeError } from "../cross_shard/errors.ts";
import { mergeErrorFields, type MergeRun } from "./merge_run.ts";
import type { InsertSplitRun } from "./insert_split.ts";
import { FRONTEND_TYPES, wellFormed } from "../protocol/frontend_messages.ts";
import type { Server, ServerLink } from "../backend/server.ts";
import { Action, Expect, type LocalAnswer } from "../backend/response_queue.ts";
import type { SocketWriter } from "../net/writer.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import { asSocketWriter, FramedWriter } from "../net/framer.ts";
import { OutBatch } from "./out_batch.ts";
import type { RoutedMessage } from "./routed_message.ts";

/** What a leg's server link asks of the client it stands in for. */
export interface FanOutHost {
  /** Where merged answers go. */
  readonly writer: SocketWriter;
  /** A ParameterStatus of the first shard (see {@linkcode ServerLink.parameterStatus}). */
  parameterStatus(
    server: Server,
    options: { name: string; value: string; own: boolean },
  ): Uint8Array | null;
  /** A leg's server asks for COPY data, which a request on several shards can't give: end it. */
  refuseCopyIn(server: Server): void;
}

/** The servers a request runs on: one per shard of the fan-out, in the same order. */
export interface ShardLegs {
  servers: Server[];
  /** Per leg: checked out for this request (not the transaction's own, nor the session's). */
  fresh: boolean[];
}

/** What sending a request to several shards asks of the client. */
export interface FanOutSender {
  /** The client's read buffer: the request's messages, consumed as they are sent. */
  readonly rbuf: MessageBuffer;
  /** The message being handled (reused). */
  readonly msg: RoutedMessage;
  /** What opened the client's transaction, replayed on each idle leg. */
  readonly prelude: Uint8Array[];
  /** Answers a message itself where pgdog does (see LocalAnswers.answerLocally). */
  answerLocally(type: number, buf: Uint8Array, p: number, end: number): boolean;
  /** Queues a message for one leg (see Forwarder.forward). */
  forward(msg: RoutedMessage, server: Server, out: OutBatch): boolean;
  /** Queues the client's settings where a leg's differ. */
  syncParams(server: Server, out: OutBatch): void;
}

/**
 * Sink a leg's server writes its answers into; frames them into messages for the merger. The
 * server's read loop waits on what its writes return before it reads more: while the client's
 * socket is congested, and while this leg is far ahead of the others (`gate`).
 */
class LegSink extends FramedWriter {
  readonly #onMessage: (msg: Uint8Array) => void;
  readonly #gate: () => Promise<void> | null;

  constructor(
    out: SocketWriter,
    options: { onMessage: (msg: Uint8Array) => void; gate: () => Promise<void> | null },
  ) {
    super(out);
    this.#onMessage = options.onMessage;
    this.#gate = options.gate;
  }

  override write(data: Uint8Array): Promise<void> {
    this.enqueue(data);
    const gate = this.#gate();
    if (gate !== null) return gate.then(() => this.out.congested ? this.out.flush() : undefined);
    return this.out.congested ? this.out.flush() : Promise.resolve();
  }

  override flush(): Promise<void> {
    const gate = this.#gate();
    return gate !== null ? gate.then(() => this.out.flush()) : this.out.flush();
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
 * pgdog's own marker at the end of a request that ends without a Sync (a Flush): each leg gives
 * it once it answered everything before it (the request is over there, its transaction open).
 */
const REQUEST_END = 0x01;
const REQUEST_END_MESSAGE = Uint8Array.of(REQUEST_END, 0, 0, 0, 4);
const FLUSH = Uint8Array.of(Msg.Flush, 0, 0, 0, 4);

/** A leg whose rows wait this many messages for the others stops being read until they drain. */
const PAUSE_MESSAGES = 256;

/** The answers a request ends with: everything after them is left for a later request. */
function endsRequest(type: number): boolean {
  return type === Msg.ReadyForQuery || type === REQUEST_END;
}

/** Answers that line the shards up (everything but rows, COPY data and asynchronous messages). */
function isSyncPoint(type: number): boolean {
  return type !== Msg.DataRow && type !== Msg.CopyData && type !== Msg.NoticeResponse &&
    type !== Msg.NotificationResponse && type !== Msg.ParameterStatus;
}

/** Fails the transaction on a shard (its error is pgdog's own, swallowed). */
const ABORT_TRANSACTION = queryMessage(
  "DO $$BEGIN RAISE EXCEPTION 'pgdog: a cross-shard query of this transaction failed'; END$$",
);

/** Answers a merged statement's merge gives instead of the shards'. */
function isMerged(type: number): boolean {
  return type === Msg.RowDescription || type === Msg.NoData ||
    type === Msg.CommandComplete || type === Msg.PortalSuspended ||
    type === Msg.ParameterDescription;
}

/**
 * What rewrites a request's messages per leg and answers for the legs: a merged statement's run,
 * or a split INSERT's (each leg its own statement).
 */
export type LegRun = MergeRun | InsertSplitRun;

/** A shard's COPY OUT stream, as it is merged. */
interface CopyStream {
  binary: boolean;
  /** No CopyData from this shard yet. */
  first: boolean;
  /** Binary: this shard's latest CopyData, held back until the next (the last ends in the trailer). */
  held: Uint8Array | null;
}

/** The binary COPY trailer: a tuple field count of -1. */
const COPY_TRAILER = copyData(new Uint8Array([0xff, 0xff]));

function copyData(payload: Uint8Array): Uint8Array {
  const m = new Uint8Array(5 + payload.length);
  m[0] = Msg.CopyData;
  new DataView(m.buffer).setInt32(1, 4 + payload.length);
  m.set(payload, 5);
  return m;
}

/** A request in flight on several shards. */
export class FanOut {
  readonly #host: FanOutHost;
  readonly #sum: boolean;
  readonly #shards: number[];
  /** Per leg: answers waiting for the others to line up. */
  readonly #pending: Uint8Array[][];
  /** Per leg: its ReadyForQuery arrived (the request is over there). */
  readonly #ready: boolean[];
  readonly #servers: Server[] = [];
  readonly #links: ServerLink[] = [];
  #failed = false;
  /** The merge failed (not a shard): the shards' transaction must fail too. */
  #mergeFailure = false;
  #status = 0x49; // 'I'
  #resolve!: () => void;
  /** Settles once every shard answered the whole request. */
  readonly done: Promise<void>;

  readonly #keep: boolean;
  /** COPY TO in text or CSV with HEADER: each shard starts with the header line. */
  readonly #copyHeader: boolean;
  /** Per leg: its COPY OUT stream, while one runs. */
  readonly #copies: (CopyStream | null)[];
  /** The COPY header (text line or binary signature) went to the client. */
  #headerSent = false;
  /** A COPY OUT runs (headers may be waiting to go out). */
  #copying = false;
  /** Each shard's first CopyData, which starts with its header: true in binary. */
  readonly #headers = new WeakMap<Uint8Array, boolean>();
  /** Where the request is: sent to the legs, then running there, then answered. */
  #phase: "new" | "queueing" | "running" | "over" = "new";

  /** A cross-shard statement whose answers are merged (see merge_run.ts). */
  readonly #merge: LegRun | null;
  /** The request ended with a Sync (or Query): every leg's ReadyForQuery came. */
  #synced = true;
  /** Per leg: resumes its server's reading, while it is paused (see #gate). */
  readonly #resumes: ((() => void) | null)[];
  #paused = 0;

  constructor(
    host: FanOutHost,
    options: {
      shards: number[];
      sumCounts: boolean;
      keep: boolean;
      copyHeader?: boolean;
      merge?: LegRun | null;
    },
  ) {
    this.#host = host;
    this.#merge = options.merge ?? null;
    this.#keep = options.keep;
    this.#copyHeader = options.copyHeader ?? false;
    this.#copies = options.shards.map(() => null);
    this.#shards = options.shards;
    this.#sum = options.sumCounts;
    this.#pending = options.shards.map(() => []);
    this.#ready = options.shards.map(() => false);
    this.#resumes = options.shards.map(() => null);
    this.done = new Promise((resolve) => this.#resolve = resolve);
  }

  /** The server link for leg `i` (the shard `shards[i]`), to attach to that shard's server. */
  link(i: number, server: Server): ServerLink {
    this.#servers[i] = server;
    const sink = new LegSink(this.#host.writer, {
      onMessage: (msg) => this.#message(i, msg),
      gate: () => this.#gate(i),
    });
    const host = this.#host;
    return this.#links[i] = {
      writer: asSocketWriter(sink),
      shouldRelease: () => !this.#keep,
      parameterStatus: (s, options) =>
        i === 0 ? host.parameterStatus(s, options) : new Uint8Array(0),
      released: () => {},
      serverLost: (_s, error) => this.#lost(i, error),
      onServerFatal: () => "keep",
    };
  }

  /** The merge run of the request (null: answers are not merged). */
  get merge(): LegRun | null {
    return this.#merge;
  }

  /** The legs' servers, in shard order. */
  get servers(): readonly Server[] {
    return this.#servers;
  }

  /**
   * The request ended with a Sync or a Query (false: with a Flush; the legs' implicit
   * transactions and portals live on until the client's Sync).
   */
  get synced(): boolean {
    return this.#synced;
  }

  /**
   * While leg `i` is far ahead of the others (its rows wait to be lined up, or in the merge for
   * another leg), a promise its server's reader waits on before reading more; else null.
   */
  #gate(i: number): Promise<void> | null {
    if (!this.#ahead(i) || this.#resumes[i] !== null) return null;
    this.#paused++;
    return new Promise((resolve) => this.#resumes[i] = resolve);
  }

  #ahead(i: number): boolean {
    if (this.#phase === "over" || this.#ready[i] || this.#failed) return false;
    if (this.#pending[i].length > PAUSE_MESSAGES) return true;
    return this.#merge !== null && this.#merge.backlog(i) > PAUSE_MESSAGES;
  }

  /** Paused legs that are no longer ahead are read again. */
  #resume(): void {
    if (this.#paused === 0) return;
    for (let i = 0; i < this.#resumes.length; i++) {
      const resume = this.#resumes[i];
      if (resume === null || this.#ahead(i)) continue;
      this.#resumes[i] = null;
      this.#paused--;
      resume();
    }
  }

  /** The request's messages are being queued on the legs (pgdog's own answers go to each). */
  get queueing(): boolean {
    return this.#phase === "queueing";
  }

  /** The request was sent and runs on the legs (for cancels and query_timeout). */
  get running(): boolean {
    return this.#phase === "running";
  }

  /**
   * Runs a request on the shards: attaches each leg's server, queues the request (from the
   * message `first` of the client's read buffer up to its Sync, Query or FunctionCall, or what is
   * buffered of it; consumed from the buffer) on each, writes it, and settles once every shard
   * has answered it all, the client having had one answer.
   */
  async run(
    legs: ShardLegs,
    request: { first: { type: number; p: number; end: number }; client: FanOutSender },
  ): Promise<void> {
    const { client } = request;
    const rb = client.rbuf;
    const buf = rb.buf;
    const servers = legs.servers;
    const outs = servers.map(() => new OutBatch());
    servers.forEach((server, i) => {
      server.attach(this.link(i, server));
      outs[i].reset(buf);
      client.syncParams(server, outs[i]);
      // An idle leg (checked out now, or a session's kept idle) joins the open transaction.
      if (server.txStatus === TxStatus.Idle) {
        for (const msg of client.prelude) {
          outs[i].addBytes(msg);
          server.expect(Expect.Query, Action.Swallow);
        }
      }
    });
    this.#phase = "queueing";
    this.#merge?.beginRequest();
    let last = -1;
    try {
      let { type, p, end } = request.first;
      let first = true;
      for (;;) {
        if (first || !client.answerLocally(type, buf, p, end)) {
          const msg = client.msg;
          const merge = this.#merge;
          if (merge !== null && type === Msg.Query) {
            msg.substitute ??= merge.querySubstitute(decodeText(buf, p + 5, end - 1));
          }
          if (merge !== null && merge.send(type, buf, { p, end, servers, outs })) {
            // Queued on every leg by the merge.
          } else {
            for (let i = 0; i < servers.length; i++) {
              client.forward(msg, servers[i], outs[i]);
              // One shard's entry carries the substitute's ticket, one shard fails a duplicate.
              msg.ticket = null;
              msg.duplicate = null;
            }
          }
        }
        first = false;
        last = type;
        if (type === Msg.Sync || type === Msg.Query || type === Msg.FunctionCall) break;
        const size = rb.nextMessageSize();
        // A Flush ended the buffered part: the rest comes as its own request.
        if (size === 0) break;
        p = rb.start;
        end = p + size;
        type = buf[p];
        if (
          type === Msg.Terminate || FRONTEND_TYPES[type] === 0 || !wellFormed(type, buf, p, end)
        ) break;
        rb.start = end;
        client.msg.at(type, buf, p, end);
      }
      if (last !== Msg.Sync && last !== Msg.Query && last !== Msg.FunctionCall) {
        this.#endUnsynced(outs);
      }
    } finally {
      this.#phase = "running";
    }
    try {
      await Promise.all(servers.map((server, i) => outs[i].writeTo(server.writer).catch(() => {})));
      await this.done;
    } finally {
      this.#phase = "over";
      this.#resume();
    }
  }

  /**
   * The request ends without a Sync: each leg answers what it was sent (a Flush makes sure) and
   * then gives pgdog's end marker, even when an error made it skip the rest.
   */
  #endUnsynced(outs: readonly OutBatch[]): void {
    this.#servers.forEach((server, i) => {
      outs[i].addBytes(FLUSH);
      server.expect(
        Expect.Local,
        Action.Forward,
        {
          bytes: REQUEST_END_MESSAGE,
          // Skipped after an error: the marker comes after the error's own message.
          dropped: () => queueMicrotask(() => this.#message(i, REQUEST_END_MESSAGE)),
        } satisfies LocalAnswer,
      );
    });
  }

  /** True while leg `i`'s server is still attached to this request (not given back). */
  holds(i: number): boolean {
    const server = this.#servers[i];
    return server !== undefined && server.link === this.#links[i];
  }

  #lost(i: number, error: Error): void {
    if (this.#ready[i]) return;
    const b = new MessageBuilder(128);
    appendError(b, {
      severity: "ERROR",
      code: SqlState.ConnectionFailure,
      message: `lost the connection to shard ${this.#shards[i]}: ${error.message}`,
    });
    this.#message(i, b.build());
    this.#message(i, readyForQuery(0x45)); // 'E': the transaction, if any, is gone there
  }

  #message(i: number, msg: Uint8Array): void {
    if (this.#ready[i]) return;
    const type = msg[0];
    if (type === Msg.CopyInResponse || type === Msg.CopyBothResponse) {
      // The server now waits for data; it gets a CopyFail and answers with the error.
      this.#host.refuseCopyIn(this.#servers[i]);
      return;
    }
    if (this.#failed && !endsRequest(type)) return;
    if (!isSyncPoint(type)) {
      if (type === Msg.DataRow || type === Msg.CopyData) {
        // Writes to tables copied on every shard: the first shard's rows stand for all.
        if (!this.#sum && i !== 0) return;
        if (type === Msg.CopyData && this.#copies[i] !== null) {
          this.#copyData(i, this.#copies[i]!, msg);
          return;
        }
      }
      this.#stream(i, msg);
      return;
    }
    if (type === Msg.CopyOutResponse) {
      this.#copies[i] = { binary: msg[5] === 1, first: true, held: null };
      this.#copying = true;
    } else if (type === Msg.CopyDone && this.#copies[i] !== null) {
      const rest = this.#endCopy(this.#copies[i]!);
      if (rest !== null) this.#stream(i, rest);
    }
    this.#pending[i].push(msg);
    this.#align();
    this.#resume();
  }

  /** Rows and notices stream through once this leg is lined up with the others. */
  #stream(i: number, msg: Uint8Array): void {
    if (this.#pending[i].length === 0) this.#emitFrom(i, msg);
    else this.#pending[i].push(msg);
  }

  /** A row, notice or CopyData of leg `i` is due: a merged statement's rows go to the merge. */
  #emitFrom(i: number, msg: Uint8Array): void {
    const merge = this.#merge;
    if (merge === null || msg[0] !== Msg.DataRow) {
      this.#emit(msg);
      return;
    }
    if (this.#failed) return;
    try {
      const out = merge.row(i, msg);
      if (out !== null) this.#host.writer.enqueue(out);
      this.#resume();
    } catch (e) {
      this.#mergeFailed(e);
    }
  }

  /** The merge failed (a MergeError): the client's error; the rest is drained. */
  #mergeFailed(e: unknown): void {
    if (!(e instanceof MergeError)) throw e;
    this.#merge?.fail();
    if (this.#failed) return;
    this.#host.writer.enqueue(errorResponse(mergeErrorFields(e)));
    this.#failed = true;
    this.#mergeFailure = true;
    const pending = this.#pending;
    for (let i = 0; i < pending.length; i++) {
      pending[i] = pending[i].filter((m) => endsRequest(m[0]));
    }
    this.#resume();
  }

  /**
   * A shard's CopyData. Its first (in text or CSV with HEADER, the header line; in binary, the
   * header and maybe rows) is marked, to be cut when it goes out (see {@linkcode #emit}). In
   * binary, each CopyData is held back until the next: the last ends in the trailer.
   */
  #copyData(i: number, copy: CopyStream, msg: Uint8Array): void {
    if (copy.first) {
      copy.first = false;
      if (copy.binary || this.#copyHeader) this.#headers.set(msg, copy.binary);
    }
    if (!copy.binary) {
      this.#stream(i, msg);
      return;
    }
    const previous = copy.held;
    copy.held = msg;
    if (previous !== null) this.#stream(i, previous);
  }

  /** A shard's COPY OUT ended: its held-back data without the binary trailer. */
  #endCopy(copy: CopyStream): Uint8Array | null {
    const last = copy.held;
    copy.held = null;
    if (last === null) return null;
    const n = last.length;
    if (n < 7 || last[n - 2] !== 0xff || last[n - 1] !== 0xff) return last;
    const rest = copyData(last.subarray(5, n - 2));
    const header = this.#headers.get(last);
    if (header !== undefined) this.#headers.set(rest, header);
    return rest.length > 5 ? rest : null;
  }

  /** Writes a row, notice or CopyData; a shard's COPY header goes out only the first time. */
  #emit(msg: Uint8Array): void {
    const binary = this.#copying ? this.#headers.get(msg) : undefined;
    if (binary === undefined) {
      this.#host.writer.enqueue(msg);
      return;
    }
    const first = !this.#headerSent;
    this.#headerSent = true;
    if (first) this.#host.writer.enqueue(msg);
    else if (binary && msg.length >= 5 + 19) {
      // Signature (11 bytes), flags (4), header extension length (4) and the extension.
      const ext = new DataView(msg.buffer, msg.byteOffset).getInt32(5 + 15);
      const end = 5 + 19 + Math.max(0, ext);
      if (end < msg.length) this.#host.writer.enqueue(copyData(msg.subarray(end)));
    }
  }

  /** Emits merged answers while every leg has one waiting at its head. */
  #align(): void {
    const pending = this.#pending;
    for (;;) {
      let errorAt = -1;
      let allHead = true;
      for (let i = 0; i < pending.length; i++) {
        const head = this.#headSyncPoint(i);
        if (head === null) {
          allHead = false;
          continue;
        }
        if (head[0] === Msg.ErrorResponse && errorAt < 0) errorAt = i;
      }
      if (errorAt >= 0 && !this.#failed) {
        // The first error is the client's answer; the rest of the request is skipped everywhere.
        this.#merge?.fail();
        this.#host.writer.enqueue(this.#headSyncPoint(errorAt)!);
        this.#failed = true;
        for (let i = 0; i < pending.length; i++) {
          pending[i] = pending[i].filter((m) => endsRequest(m[0]));
        }
        continue;
      }
      if (!allHead) return;
      const heads = pending.map((q) => q.shift()!);
      const type = heads[0][0];
      if (type === Msg.ReadyForQuery) {
        for (let i = 0; i < heads.length; i++) this.#ready[i] = true;
        this.#finish(heads);
        return;
      }
      if (type === REQUEST_END) {
        for (let i = 0; i < heads.length; i++) this.#ready[i] = true;
        this.#synced = false;
        this.#resume();
        this.#resolve();
        return;
      }
      if (this.#failed) continue;
      if (type === Msg.CopyDone && this.#copies[0]?.binary) {
        // Every shard's rows are out: the one trailer ends the stream.
        this.#host.writer.enqueue(COPY_TRAILER);
      }
      if (type === Msg.CopyDone) {
        this.#copies.fill(null);
        this.#headerSent = false;
        this.#copying = false;
      }
      const merge = this.#merge;
      if (merge !== null && isMerged(type)) {
        try {
          const answer = type === Msg.CommandComplete || type === Msg.PortalSuspended
            ? merge.complete(heads)
            : merge.description(heads);
          if (answer !== null) this.#host.writer.enqueue(answer);
        } catch (e) {
          this.#mergeFailed(e);
          continue;
        }
      } else {
        this.#host.writer.enqueue(
          type === Msg.CommandComplete ? this.#commandComplete(heads) : heads[0],
        );
      }
      // Rows queued behind the answer just sent may go now.
      for (let i = 0; i < pending.length; i++) {
        while (pending[i].length > 0 && !isSyncPoint(pending[i][0][0])) {
          this.#emitFrom(i, pending[i].shift()!);
        }
      }
    }
  }

  /** The first queued answer of leg `i` once only lining-up answers are left at its head. */
  #headSyncPoint(i: number): Uint8Array | null {
    const q = this.#pending[i];
    while (q.length > 0 && !isSyncPoint(q[0][0])) this.#emitFrom(i, q.shift()!);
    if (q.length === 0) return null;
    const merge = this.#merge;
    if (merge !== null && q[0][0] === Msg.CommandComplete && !this.#failed) {
      // This shard's rows are all in: the merge may give rows it held for it.
      try {
        const out = merge.legDone(i);
        if (out !== null) this.#host.writer.enqueue(out);
      } catch (e) {
        this.#mergeFailed(e);
        return this.#pending[i].length > 0 ? this.#pending[i][0] : null;
      }
    }
    return q[0];
  }

  #commandComplete(heads: Uint8Array[]): Uint8Array {
    if (!this.#sum) return heads[0];
    const tags = heads.map((m) => new TextDecoder().decode(m.subarray(5, m.length - 1)));
    const parts = tags[0].split(" ");
    const last = Number(parts[parts.length - 1]);
    if (!Number.isInteger(last) || parts.length < 2) return heads[0];
    let total = 0;
    for (const tag of tags) {
      const n = Number(tag.slice(tag.lastIndexOf(" ") + 1));
      if (Number.isInteger(n)) total += n;
    }
    parts[parts.length - 1] = String(total);
    return new MessageBuilder(32).begin(Msg.CommandComplete).cstring(parts.join(" ")).end().build();
  }

  #finish(heads: Uint8Array[]): void {
    let status = 0x49; // 'I'
    for (const z of heads) {
      const s = z[5];
      if (s === 0x45) status = 0x45;
      else if (s === 0x54 && status !== 0x45) status = 0x54;
    }
    if (this.#mergeFailure && status === 0x54) {
      // PostgreSQL's transaction would be aborted by the error: so are the shards' (a COMMIT
      // then rolls back, other statements get 25P02), as the client was told.
      for (const server of this.#servers) {
        if (server.closed) continue;
        server.expect(Expect.Query, Action.Swallow);
        server.writer.write(ABORT_TRANSACTION).catch(() => {});
      }
      status = 0x45;
    }
    this.#status = status;
    this.#host.writer.enqueue(readyForQuery(status));
    this.#resume();
    this.#resolve();
  }

  /** The transaction status the client was told ('I', 'T' or 'E'). */
  get status(): number {
    return this.#status;
  }
}
