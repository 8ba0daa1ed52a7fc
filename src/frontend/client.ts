/**
 * One client connection: login, then the request loop. In transaction mode a server is taken
 * from the pool when a request needs one and given back at the ReadyForQuery that ends the
 * transaction; in session mode (or while pinned) it is kept. Requests are framed in the client's
 * read buffer and forwarded as byte ranges, one write per batch; the few messages pgdog answers
 * or rewrites itself (prepared statement names, session commands it owns) are handled on the way.
 *
 * @module
 */

import {
  appendError,
  copyFail,
  type ErrorFields,
  MessageBuilder,
  Msg,
  readyForQuery,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { MessageBuffer } from "../net/message_buffer.ts";
import { type ByteStream, closeQuietly } from "../net/stream.ts";
import { SocketWriter } from "../net/writer.ts";
import type { Server, ServerLink } from "../backend/server.ts";
import { Expect } from "../backend/response_queue.ts";
import { ClientFacingError, type Pool } from "../backend/pool.ts";
import type { Cluster } from "../backend/databases.ts";
import type { ClientHost } from "./client_host.ts";
import { ServerConnectError } from "../backend/connect.ts";
import { ANALYZE_ON_LOOP_MAX } from "../router/mod.ts";
import type { Role } from "../router/route.ts";
import { FanOut } from "./fan_out.ts";
import { type MergeClient, MergeRun } from "./merge_run.ts";
import { type InsertSplitClient, InsertSplitRun } from "./insert_split.ts";
import { selectMovedRow } from "./key_move.ts";
import type { SplitInsertPlan } from "../router/split_insert_plan.ts";
import { OpenFan, type OpenLegs } from "./open_fan.ts";
import { mergeCollations } from "../backend/collations.ts";
import type { ColumnCollations } from "../cross_shard/column_collations.ts";
import type { Collation } from "../cross_shard/values.ts";
import type { MergePlan } from "../cross_shard/plan.ts";
import { serveAdmin } from "./admin_session.ts";
import type { LocalAnswers } from "./local_answers.ts";
import type { Forwarder } from "./forward.ts";
import type { ShardTransaction } from "./shard_transaction.ts";
import { runInsertSelect } from "./insert_select_run.ts";
import { planSplit } from "./split_request.ts";
import { commitOnShards } from "./shard_commit.ts";
import { failHeldServers, requestInFailed } from "./failed_transaction.ts";
import { planAtomicWrite } from "./atomic_write.ts";
import { runCopyIn } from "./copy_in_run.ts";
import { askPluginHashers } from "./plugin_hashers.ts";
import { ClientView } from "./client_view.ts";
import { ClientGate } from "./client_gate.ts";
import { ShardSwitch } from "./shard_switch.ts";
import { RequestServers } from "./request_servers.ts";
import { endingError, finishOwed } from "./client_end.ts";
import { warnLargeQuery } from "./large_query.ts";
import { log } from "../log.ts";
import { ClientGoneError } from "./auth.ts";
import { logInClient } from "./client_login.ts";
import { SessionState } from "./session.ts";
import { ClientStatements } from "./prepared.ts";
import {
  EXTENDED_START,
  invalidMessage,
  requestBuffered,
  STATEMENT_TYPES,
} from "../protocol/frontend_messages.ts";
import type { OutBatch } from "./out_batch.ts";
import { enforceQueryTimeout, idleTimeout, type TimeLimits } from "./timeouts.ts";

/** Initial size of a client's read buffer; it grows for large messages and shrinks back after. */
const CLIENT_BUFFER_BYTES = 4096;

let nextClientPid = 1 + Math.floor(Math.random() * 1000);

/** One client connection. */
export class Client implements ServerLink {
  /** Also the pid in this client's BackendKeyData. */
  readonly id: number;
  readonly secret: number;
  /** The connection; replaced by the TLS stream when the client switches to TLS at login. */
  conn: ByteStream;
  /** Writes to `conn` (replaced with it). */
  writer: SocketWriter;
  readonly rbuf: MessageBuffer;
  readonly addr: string;
  readonly connectedAt: number = Date.now();
  user = "";
  database = "";
  cluster: Cluster | null = null;
  pool: Pool | null = null;
  server: Server | null = null;
  session: SessionState = new SessionState(new Map());
  /** This client's prepared statement names (transaction mode). */
  readonly statements: ClientStatements = new ClientStatements();
  /** login | idle | waiting | active */
  state: "login" | "idle" | "waiting" | "active" = "login";
  closed = false;
  queries = 0;
  transactions = 0;
  /** When the client last sent something. */
  lastActivity: number = Date.now();
  #host: ClientHost;
  /** Logged in to the admin database. */
  #admin = false;
  /** A multi-shard request left portals or an unsynced request on its legs (see open_fan.ts). */
  #openFan: OpenFan | null = null;
  /**
   * The client as the parts of its request handling see it, holding the state they share and
   * the parts themselves (see ClientView).
   */
  readonly #parts: ClientView;
  // The parts the request loop and fan-out use most.
  readonly #local: LocalAnswers;
  readonly #forwarder: Forwarder;
  readonly #txn: ShardTransaction;
  readonly #out: OutBatch;
  /** The servers the request runs on (the attached one, or a fan-out's). */
  readonly #servers: RequestServers;
  /** Moves between the shards of a transaction. */
  readonly #shards: ShardSwitch;
  /** Where a new transaction waits out PAUSE and picks up a RELOAD. */
  readonly #gate: ClientGate;

  constructor(conn: ByteStream, options: { host: ClientHost; addr: string }) {
    this.conn = conn;
    this.addr = options.addr;
    this.#host = options.host;
    this.writer = new SocketWriter(conn);
    this.rbuf = new MessageBuffer(CLIENT_BUFFER_BYTES, options.host.settings.max_message_size);
    this.id = nextClientPid;
    nextClientPid = nextClientPid >= 0x7ffffff0 ? 1 : nextClientPid + 1;
    this.secret = crypto.getRandomValues(new Int32Array(1))[0];
    const parts = new ClientView(this, {
      host: options.host,
      actions: {
        send: () => this.#send(),
        closeBatch: () => this.#shards.closeBatch(),
        settle: () => this.#settle(),
        endImplicit: (commit, options) => this.#shards.endImplicit(commit, options),
        txStatus: () => this.#servers.txStatus(),
        transactionOver: () => this.#transactionOver(),
        answer: (bytes, dropped) => this.#servers.answer(bytes, dropped),
        abortEverywhere: () => this.#shards.abortEverywhere(),
        gateOpen: () => this.#gate.open(),
        atGate: () => this.#gate.pass(),
        leadServer: () => this.#servers.lead(),
        park: (server) => this.#shards.park(server),
        attach: (server, fresh) => this.#attach(server, fresh),
        releaseIfUnpinned: () => this.#servers.releaseIfUnpinned(),
        terminate: (fields) => this.terminate(fields),
        end: () => this.writer.flush().catch(() => {}).finally(() => this.#teardown()),
      },
    });
    this.#parts = parts;
    this.#local = parts.local;
    this.#forwarder = parts.forwarder;
    this.#txn = parts.txn;
    this.#out = parts.out;
    this.#servers = new RequestServers(this, parts);
    this.#shards = new ShardSwitch(this, parts);
    this.#gate = new ClientGate(this, {
      host: options.host,
      routing: parts,
      fatal: (fields) => this.#fatal(fields),
    });
  }

  /** The request running on several shards, if any. */
  get #fan(): FanOut | null {
    return this.#servers.fan;
  }
  set #fan(fan: FanOut | null) {
    this.#servers.fan = fan;
  }

  // The view's state that fan-out reads under its old names.
  get #deferredBegin(): Uint8Array | null {
    return this.#parts.deferredBegin;
  }
  set #deferredBegin(begin: Uint8Array | null) {
    this.#parts.deferredBegin = begin;
  }
  get #sessionMode(): boolean {
    return this.#parts.sessionMode;
  }

  /** Serves the connection until it ends. Never throws. */
  async run(): Promise<void> {
    try {
      if (!(await this.#login())) return;
      await this.#requestLoop();
    } catch (e) {
      const fatal = endingError(e, this);
      if (fatal !== null) await this.#fatal(fatal);
    } finally {
      this.#teardown();
    }
  }

  /** Ends the connection with a FATAL error (used by shutdown). */
  terminate(fields: ErrorFields): void {
    if (this.closed) return;
    this.#fatal(fields).finally(() => this.#teardown());
  }

  /**
   * Enforces query_timeout (the running request is cancelled, its error says why; a server that
   * ignores the cancel is closed), client_idle_timeout and client_idle_in_transaction_timeout.
   * Called periodically; 0 disables a limit.
   */
  checkTimeouts(now: number, limits: TimeLimits): void {
    if (this.state === "login" || this.state === "waiting" || this.closed) return;
    const server = this.server;
    const running = this.#servers.running();
    if (running !== null) return enforceQueryTimeout(running, { now, limits });
    const idleSince = Math.max(this.lastActivity, server?.requestStart ?? 0);
    const inTransaction = server !== null && server.txStatus !== TxStatus.Idle;
    const fatal = idleTimeout(idleSince, { now, inTransaction, limits });
    if (fatal !== null) this.terminate(fatal);
  }

  /** A CancelRequest for this client arrived. */
  cancel(): void {
    this.#servers.cancel();
  }

  // ---- login ---------------------------------------------------------------------------------

  async #login(): Promise<boolean> {
    const outcome = await logInClient(this, {
      host: this.#host,
      parts: this.#parts,
      fatal: (fields) => this.#fatal(fields),
    });
    this.#admin = outcome.as === "admin";
    this.#loggedIn = outcome.as === "database";
    return outcome.ok;
  }

  /** Logged in (its disconnection is worth a line). */
  #loggedIn = false;

  // ---- requests ------------------------------------------------------------------------------

  async #requestLoop(): Promise<void> {
    if (this.#admin) {
      return await serveAdmin({
        rbuf: this.rbuf,
        conn: this.conn,
        writer: this.writer,
        console: this.#host.console,
        isOver: () => this.closed || this.#host.shuttingDown,
        fatal: (fields) => this.#fatal(fields),
        received: () => {
          this.lastActivity = Date.now();
        },
        countQuery: () => {
          this.queries++;
        },
      });
    }
    const rb = this.rbuf;
    for (;;) {
      if (this.writer.congested) await this.writer.flush();
      if (this.#host.shuttingDown && this.server === null) {
        await this.#fatal({
          severity: "FATAL",
          code: SqlState.AdminShutdown,
          message: "pgdog is shutting down",
        });
        return;
      }
      const settings = this.#host.settings;
      // query_size_limit with "block": refused from its header, before its body is read.
      rb.queryLimit = settings.query_size_limit_action === "block"
        ? settings.query_size_limit ?? Infinity
        : Infinity;
      if (rb.available >= 5 && !(await this.#handleMessages())) return;
      if (this.closed) return;
      if (!(await rb.fill(this.conn))) return;
    }
  }

  /** Handles every complete message in the buffer. Returns false when the client is done. */
  async #handleMessages(): Promise<boolean> {
    this.lastActivity = Date.now();
    if (this.#parts.lost.replaying) await this.#parts.lost.replaying;
    // The last transaction's settings must be known before the next request runs.
    if (this.#parts.checkout.readBackDone) await this.#parts.checkout.readBackDone;
    const rb = this.rbuf;
    const out = this.#out;
    out.reset(rb.buf);
    this.#forwarder.uniqueIds?.newBatch();
    // Where the request that took a replica began: kept to re-run it if that replica dies.
    let replayFrom = -1;
    let replayRole: Role = "replica";
    let whole = this.#routesWhole();
    if (whole && this.cluster !== null) this.#parts.routing = true;
    // Query, Parse and Bind messages from this size on may need a look before they are handled.
    const large = Math.min(ANALYZE_ON_LOOP_MAX, this.#host.settings.query_size_limit ?? Infinity);
    for (;;) {
      const split = this.#parts.splits.current;
      if (split !== null && rb.start >= split.ends[split.next]) {
        // One statement of a split request is over: the next one, or the request's end.
        await this.#parts.splits.step(split);
        if (this.closed) return false;
        out.reset(rb.buf);
        continue;
      }
      const size = rb.nextMessageSize();
      if (size === 0) break;
      const buf = rb.buf;
      const p = rb.start;
      const end = p + size;
      const type = buf[p];
      const invalid = type === Msg.Terminate ? null : invalidMessage(type, buf, p, end);
      if (type === Msg.Terminate || invalid !== null) {
        // PostgreSQL answers everything before a Terminate; so does pgdog, and before it ends a
        // connection over a message it can't forward.
        await this.#send();
        await this.#finishOwed();
        if (invalid !== null) {
          await this.#fatal({
            severity: "FATAL",
            code: SqlState.ProtocolViolation,
            message: invalid,
          });
        }
        return false;
      }
      if (!this.#parts.inRequest && !this.#parts.skipUntilSync) {
        if (this.server === null && this.#txn.empty && !this.#gate.open()) {
          // A new transaction waits out PAUSE and MAINTENANCE and routes by the configuration in
          // force after them (a RELOAD may have changed the shards).
          if (!(await this.#gate.pass())) return false;
        }
        whole = this.#routesWhole();
        if (whole) this.#parts.routing = true;
      }
      if (
        whole && !this.#parts.inRequest && !this.#parts.skipUntilSync &&
        EXTENDED_START[type] === 1 && !requestBuffered(buf, p, rb.end) &&
        rb.end - p < this.#host.settings.max_message_size
      ) {
        // Sharded routing needs the whole request (the Bind's values) before it picks shards;
        // a request larger than max_message_size is routed on what has arrived.
        break;
      }
      if (this.#txn.failedLocally && await requestInFailed(this.#parts, { type, buf, p, end })) {
        // A transaction that failed on pgdog's own error (see failed_transaction.ts).
        if (this.closed) return false;
        out.reset(rb.buf);
        continue;
      }
      if (
        this.#parts.sharding !== null && !this.#parts.inRequest && !this.#parts.skipUntilSync &&
        (type === Msg.Query || EXTENDED_START[type] === 1)
      ) {
        if (split === null && type === Msg.Query && size > large) {
          // Its statements' boundaries come from the parse worker, not the event loop.
          await this.#largeMessage(type, buf, p, end);
          if (this.closed) return false;
        }
        if (
          this.#txn.parked.size > 0 &&
          await commitOnShards(this.#parts, { type, buf, p, end })
        ) {
          // A COMMIT of a transaction on several shards: pgdog commits it on each, atomically.
          if (this.closed) return false;
          out.reset(rb.buf);
          continue;
        }
        if (
          split === null && this.#parts.sharding.splitInserts === "rewrite" &&
          (type === Msg.Query || type === Msg.Parse || type === Msg.Bind) &&
          await runInsertSelect(this.#parts, { type, buf, p, end })
        ) {
          // INSERT ... SELECT into a sharded table: its INSERTs replaced it (or it was answered).
          if (this.closed) return false;
          out.reset(rb.buf);
          continue;
        }
        const request = { type, buf, p, end, bufferEnd: rb.end };
        const plan = split === null
          ? planSplit(request, this.#parts) ?? planAtomicWrite(request, this.#parts)
          : null;
        if (plan !== null) {
          await this.#parts.splits.start(plan);
          if (this.closed) return false;
          out.reset(rb.buf);
          continue;
        }
        if (
          (type === Msg.Parse || type === Msg.Bind) && this.#local.localTransactionControl(buf, p)
        ) {
          out.reset(rb.buf);
          continue;
        }
      }
      rb.start = end;
      // What handling decides belongs to this message (one left by a request that never reached
      // a server must not replace the next message).
      const msg = this.#parts.msg.at(type, buf, p, end);
      if (size > large && STATEMENT_TYPES[type] === 1 && !this.#parts.skipUntilSync) {
        await this.#largeMessage(type, buf, p, end);
        if (this.closed) return false;
      }
      if (this.#parts.skipUntilSync) {
        // After an error pgdog reported itself, everything up to Sync is ignored, as PostgreSQL does.
        if (type !== Msg.Sync) continue;
        this.#parts.skipUntilSync = false;
        this.#parts.inRequest = false;
        if (this.#txn.failedLocally) await failHeldServers(this.#parts);
        if (this.closed) return false;
        if (this.server === null) {
          this.writer.enqueue(readyForQuery(this.#servers.txStatus() as TxStatus));
          continue;
        }
      } else if (this.#local.answerLocally(type, buf, p, end)) {
        continue;
      }
      if (whole) {
        if (!this.#parts.inRequest) {
          this.#parts.requests.newRequest();
          const routed = this.#parts.sharding !== null
            ? await this.#routeShards(type, buf, p, end)
            : await this.#parts.requests.routePlugins(type, buf, p, end);
          if (this.closed) return false;
          if (routed === "again") {
            // The configuration changed while it waited at the gate: route it again.
            rb.start = p;
            this.#parts.inRequest = false;
            out.reset(rb.buf);
            continue;
          }
          if (routed === "done") {
            out.reset(rb.buf);
            continue;
          }
        }
        // A Flush lets the client read answers before the rest of the batch: postgres.js sends
        // Bind and Execute only then, so the request routes again with its values.
        this.#parts.inRequest = type !== Msg.Sync && type !== Msg.Query &&
          type !== Msg.FunctionCall &&
          type !== Msg.Flush;
        this.#parts.unsynced = type === Msg.Flush ||
          (this.#parts.unsynced && this.#parts.inRequest);
      }
      if (this.server === null) {
        if (whole && this.#txn.empty && !this.#gate.open()) {
          // MAINTENANCE or RELOAD came after this request was routed: it waits, then routes
          // again by the configuration in force (a cutover may have changed the shards).
          const before = this.cluster;
          if (!(await this.#gate.pass())) return false;
          if (this.cluster !== before) {
            rb.start = p;
            this.#parts.inRequest = false;
            out.reset(rb.buf);
            continue;
          }
        }
        // Nothing is buffered for a server yet: taking one may wait, and nothing else touches the
        // read buffer meanwhile.
        const role = this.#parts.requests.role(type, buf, p, end);
        const ok = await this.#parts.checkout.acquire(role);
        if (this.closed) return false;
        if (
          ok && (role === "replica" || this.#parts.checkout.syncSent) &&
          this.#deferredBegin === null &&
          !this.#sessionMode
        ) {
          replayFrom = p;
          replayRole = role;
        }
        if (!ok) {
          if (type === Msg.Query || type === Msg.FunctionCall) {
            this.writer.enqueue(readyForQuery(TxStatus.Idle));
          } else if (type !== Msg.Sync) this.#parts.skipUntilSync = true;
          else this.writer.enqueue(readyForQuery(TxStatus.Idle));
          continue;
        }
      } else {
        if (this.#parts.checkout.needsSync) {
          this.#parts.checkout.syncParams(this.server, this.#out);
        }
        // A transaction (a held-back BEGIN) starting on the session's idle attached server.
        if (
          this.#deferredBegin !== null && this.#parts.sharding !== null &&
          this.server.queue.length === 0
        ) {
          this.#parts.checkout.join(this.server);
        }
      }
      this.#forwarder.mayWait = true;
      const queued = this.#forwarder.forward(msg, this.server!, this.#out);
      this.#forwarder.mayWait = false;
      if (!queued) {
        // The server must describe a statement before this message (prepared.ts): wait for it.
        const server = this.server;
        await this.#send();
        await this.#settle();
        if (this.closed) return false;
        out.reset(rb.buf);
        replayFrom = -1;
        if (this.server !== server || server === null) continue; // lost: the client was told
        this.#forwarder.forward(msg, server, this.#out);
      }
      if (
        this.#parts.routing && !this.#sessionMode && !this.#parts.book.holdRest &&
        (type === Msg.Sync || type === Msg.Query) && rb.nextMessageSize() > 0
      ) {
        await this.#send();
        await this.#settle();
        if (this.closed) return false;
        out.reset(rb.buf);
        replayFrom = -1;
        continue;
      }
      // Only where a request ends: PostgreSQL answers nothing before Sync.
      if (
        this.#parts.book.holdRest &&
        (type === Msg.Sync || type === Msg.Query || type === Msg.FunctionCall)
      ) {
        this.#parts.book.holdRest = false;
        if (rb.nextMessageSize() > 0) {
          // Later messages must see the settings this one leaves (and pgdog must know them first).
          this.#keepForReplay(rb.buf, replayFrom, rb.start, replayRole);
          await this.#send();
          await this.#settle();
          if (this.closed) return false;
          out.reset(rb.buf);
          replayFrom = -1;
        }
      }
    }
    if (this.server !== null && !this.#out.empty) {
      this.#keepForReplay(rb.buf, replayFrom, rb.start, replayRole);
    }
    await this.#send();
    // Make room for the partial message at the front (and shrink after a large one).
    rb.consume(0);
    if (this.writer.congested) await this.writer.flush();
    return true;
  }

  /** See finishOwed (client_end.ts). */
  #finishOwed(): Promise<void> {
    return finishOwed(this.server, {
      writer: this.writer,
      timeoutMs: this.pool?.config.rollback_timeout ?? 5000,
    });
  }

  /** See RequestServers.settle. */
  #settle(): Promise<void> {
    return this.#servers.settle();
  }

  /** Plugins route each request whole, as sharding does (they see its Bind values). */
  #routesWhole(): boolean {
    const plugins = this.#host.plugins;
    return this.#parts.sharding !== null || (plugins !== null && plugins.routes);
  }

  /** Keeps the request at [from, to) to re-run on another server (when it is whole). */
  #keepForReplay(buf: Uint8Array, from: number, to: number, role: Role): void {
    this.#parts.lost.keep(buf, from, to, { role, begin: this.#parts.checkout.sentBegin });
  }

  /** See RequestServers.send. */
  #send(): Promise<void> {
    return this.#servers.send();
  }

  /**
   * A large Query, Parse or Bind: query_size_limit's warning, and a long statement analyzed off
   * the event loop (see RequestRouter.prepareLarge).
   */
  async #largeMessage(type: number, buf: Uint8Array, p: number, end: number): Promise<void> {
    warnLargeQuery(this.rbuf, { type, p, end }, {
      settings: this.#host.settings,
      database: this.database,
      user: this.user,
    });
    await this.#parts.requests.prepareLarge(type, buf, p, end);
  }

  // ---- sharding ------------------------------------------------------------------------------

  /**
   * Routes the request starting with this message on a sharded database (the whole request is
   * buffered; see RequestRouter.shardRoute). One shard: the request goes on through the usual
   * path to that shard's server ("go"). Several: it runs on all of them here ("done"), as does a
   * request answered while routing (an error, a plugin's block).
   */
  async #routeShards(
    type: number,
    buf: Uint8Array,
    p: number,
    end: number,
  ): Promise<"go" | "done" | "again"> {
    const open = this.#openFan?.continuedBy(type, buf, p, end) ?? null;
    if (open !== null) {
      // Its portal (or its unsynced request) is on those legs: the request goes on there.
      await this.#fanOut(open.shards, { type, p, end, omniWrite: false, open });
      return "done";
    }
    const route = await this.#parts.requests.shardRoute(type, buf, p, end);
    if (route === "go" || route === "done") return route;
    this.#parts.checkout.outsideTransaction = route.outsideTransaction;
    const shards = route.shards;
    if (shards.length === 1) return await this.#shards.toShard(shards[0]);
    if (route.copyIn !== undefined) {
      await this.#copyIn({ shards, route: route.copyIn, type, p, end });
      return "done";
    }
    let splitInsert = route.splitInsert;
    if (route.keyUpdate !== null) {
      // The row is read on its shard first; then it moves as a split write (see key_move.ts).
      const moved = await selectMovedRow({
        cluster: this.cluster!,
        txn: this.#txn,
        server: this.server,
        letGoOfServer: () => this.server = null,
        openTransaction: () => {
          if (this.#deferredBegin === null) return;
          this.#txn.prelude.unshift(this.#deferredBegin);
          this.#deferredBegin = null;
        },
        answerError: (fields) => this.#local.answerError(fields, type === Msg.Query),
        timeoutMs: this.pool?.config.rollback_timeout ?? 5000,
        request: type === Msg.Query ? null : { buf, p, end: this.rbuf.end },
        statementParse: this.#mergeClient().statementParse,
      }, route.keyUpdate);
      if (moved === "done" || this.closed) return "done";
      if (moved === "stay") return await this.#shards.toShard(route.keyUpdate.from);
      splitInsert = moved;
    }
    const fanned = await this.#fanOut(shards, {
      type,
      p,
      end,
      omniWrite: route.omniWrite,
      copyHeader: route.copyHeader,
      merge: route.merge,
      splitInsert,
    });
    return fanned === "again" ? "again" : "done";
  }

  /** COPY FROM STDIN on several shards (see copy_in_run.ts). */
  async #copyIn(request: Parameters<typeof runCopyIn>[1]): Promise<void> {
    if (this.server !== null) {
      await this.#closeBatch();
      await this.#settle();
    }
    if (this.closed) return;
    const parts = this.#parts;
    const plugins = this.#host.plugins;
    this.state = "active";
    await runCopyIn({
      rbuf: this.rbuf,
      writer: this.writer,
      closed: () => this.closed,
      cluster: this.cluster!,
      shardCount: parts.sharding!.shards,
      txn: this.#txn,
      attached: () => this.server,
      letGo: () => {
        this.server = null;
      },
      takeDeferredBegin: () => {
        const begin = parts.deferredBegin;
        parts.deferredBegin = null;
        return begin;
      },
      clientEncoding: () => this.session.params.get("client_encoding") ?? null,
      // A long COPY is activity (client_idle_timeout).
      fill: () =>
        this.rbuf.fill(this.conn).then((more) => {
          this.lastActivity = Date.now();
          return more;
        }),
      syncParams: (server, out) => parts.syncParams(server, out),
      atGate: () => this.#atGate(),
      askPluginHashers: (lookup) =>
        askPluginHashers(plugins, lookup, {
          shards: parts.sharding!.shards,
          database: this.database,
        }),
      endImplicit: async (servers, commit) => {
        this.#transactionOver();
        this.session.pgdogLocal.clear();
        const error = await parts.checkout.endImplicit(servers, commit);
        this.transactions++;
        return error;
      },
      answerError: (fields, simple) => this.#local.answerError(fields, simple),
      running: (servers) => {
        this.#servers.copying = servers;
      },
    }, request);
    this.state = "idle";
    this.lastActivity = Date.now();
  }

  /** See ShardSwitch.closeBatch. */
  #closeBatch(): Promise<void> {
    return this.#shards.closeBatch();
  }

  /** See ClientGate.pass. */
  #atGate(): Promise<boolean> {
    return this.#gate.pass();
  }

  /**
   * Runs the request starting at message [p, end) on every shard in `shards` and answers the
   * client once (see {@linkcode FanOut}). Consumes the rest of the request from the read buffer.
   */
  async #fanOut(
    shards: number[],
    options: {
      type: number;
      p: number;
      end: number;
      omniWrite: boolean;
      copyHeader?: boolean;
      merge?: MergePlan | null;
      splitInsert?: SplitInsertPlan | null;
      /** The request goes on with a run whose portals live on the legs. */
      open?: OpenLegs;
    },
  ): Promise<void | "again"> {
    if (this.#txn.empty && this.server === null && !options.open && !this.#gate.open()) {
      // MAINTENANCE or RELOAD came after routing: wait, and route again if the shards changed.
      const before = this.cluster;
      if (!(await this.#atGate())) return;
      if (this.cluster !== before) return "again";
    }
    if (this.server !== null) {
      await this.#closeBatch();
      await this.#settle();
    }
    if (this.closed) return;
    const attached = this.server;
    if (
      attached !== null && (attached.txStatus !== TxStatus.Idle || this.#sessionMode) &&
      !shards.includes(this.cluster!.shardOf(attached.owner as Pool))
    ) {
      // Its part of the transaction (or the session) goes on: parked with the others'.
      this.#shards.park(attached);
    }
    if (this.#deferredBegin !== null) {
      this.#txn.prelude.unshift(this.#deferredBegin);
      this.#deferredBegin = null;
    }
    // (Idle legs join the open transaction with it: see FanOut.run.)
    this.#txn.joining(this.server);
    const role: Role = "primary";
    if (this.#txn.empty && !(await this.#atGate())) return;
    let collations: { collation: Collation; columns: ColumnCollations } | null = null;
    if (options.merge && !options.merge.passThrough && !options.open) {
      try {
        collations = await mergeCollations(this.cluster!, {
          timeoutMs: this.cluster!.settings.checkoutTimeout,
        });
      } catch (e) {
        if (!(e instanceof ClientFacingError)) throw e;
        this.#local.answerError(e.fields, options.type === Msg.Query);
        return;
      }
      if (this.closed) return;
    }
    const legs: Server[] = [];
    const fresh: boolean[] = [];
    this.state = "waiting";
    try {
      for (const n of shards) {
        const leg = await this.#txn.leg(this.cluster!, n, { role, attached: this.server });
        if (leg.attached) this.server = null;
        legs.push(leg.server);
        fresh.push(leg.fresh);
      }
    } catch (e) {
      this.state = "idle";
      for (let i = 0; i < legs.length; i++) {
        if (fresh[i]) legs[i].owner?.checkin(legs[i]);
        else if (this.closed) (legs[i].owner as Pool).release(legs[i], { resetSql: null });
        else this.#txn.keep(this.cluster!, legs[i]);
      }
      if (this.closed) return;
      const fields = e instanceof ClientFacingError || e instanceof ServerConnectError
        ? e.fields
        : { severity: "ERROR", code: SqlState.InternalError, message: String(e) };
      this.#local.answerError({ ...fields, severity: "ERROR" }, options.type === Msg.Query);
      return;
    }
    this.state = "active";
    const fan = new FanOut({
      writer: this.writer,
      parameterStatus: (server, o) => this.parameterStatus(server, o),
      refuseCopyIn: (server) => {
        server.copyEnded = true;
        server.expect(Expect.CopyEnd);
        server.writer.write(COPY_ACROSS_SHARDS).catch(() => {});
      },
    }, {
      shards,
      sumCounts: !options.omniWrite,
      keep: this.#sessionMode,
      copyHeader: options.copyHeader,
      merge: options.open
        ? options.open.run
        : options.splitInsert
        ? new InsertSplitRun(this.#mergeClient(), { plan: options.splitInsert, shardIds: shards })
        : options.merge
        ? new MergeRun(this.#mergeClient(), {
          plan: options.merge,
          shards: shards.length,
          shardIds: shards,
          expandedExplain: this.#host.settings.expanded_explain,
          bufferLimit: this.#host.settings.cross_shard_buffer_limit,
          // A pass-through compares nothing.
          collation: collations?.collation ?? { kind: "bytes" },
          columnCollations: collations?.columns,
        })
        : null,
    });
    // (An attached server of a shard the request does not run on is let go of here.)
    this.server = null;
    this.#fan = fan;
    try {
      await fan.run({ servers: legs, fresh }, {
        first: { type: options.type, p: options.p, end: options.end },
        client: this.#parts,
      });
    } finally {
      this.#fan = null;
    }
    this.state = "idle";
    this.lastActivity = Date.now();
    for (const [i, server] of legs.entries()) {
      // Released at its ReadyForQuery (maybe taken by another client since), or lost.
      if (!fan.holds(i) || server.closed) continue;
      server.detach();
      if (this.closed) {
        // The client left meanwhile: its teardown is over, so clean these up here.
        (server.owner as Pool).release(server, {
          resetSql: this.#sessionMode ? "DISCARD ALL" : null,
        });
      } else if (fan.synced && fan.status === TxStatus.Idle && !this.#sessionMode) {
        server.owner?.checkin(server);
      } else this.#txn.keep(this.cluster!, server);
    }
    this.#openFan = OpenFan.after(fan, { shards, previous: this.#openFan, closed: this.closed });
    if (fan.synced && fan.status === TxStatus.Idle) this.#transactionOver();
  }

  /** What a merge or split INSERT run reads of the client. */
  #mergeClient(): MergeClient & InsertSplitClient {
    return {
      uniqueIdRun: (name, p) => this.#forwarder.uniqueIdRun(name, p),
      forgetUnnamedServers: () => this.#forwarder.forgetUnnamedServers(),
      prepared: this.#host.prepared,
      statementParse: (name) =>
        name === "" ? this.#forwarder.unnamedParse() : this.statements.get(name)?.parse ?? null,
    };
  }

  /** The transaction ended: nothing of it is replayed on later shards. */
  #transactionOver(): void {
    if (this.#parts.requests.ddlInTransaction) {
      this.#parts.requests.ddlInTransaction = false;
      this.cluster?.columns.clear();
      this.#host.tablesChanged(this.database);
    }
    this.#txn.over();
  }

  /** Attaches a server taken for the next request (`fresh`: from the pool, not a parked one). */
  #attach(server: Server, fresh: boolean): void {
    this.pool = server.owner as Pool;
    this.server = server;
    this.state = "active";
    if (fresh) this.#parts.checkout.pinnedThisHold = this.session.pinned;
    server.attach(this);
    this.#out.reset(this.rbuf.buf);
  }

  /** Why the client keeps its server between transactions, or "" (SHOW CLIENTS). */
  get pinned(): string {
    return this.session.pinReasons;
  }

  /** The client's application_name (SHOW CLIENTS). */
  get applicationName(): string {
    return this.session.params.get("application_name") ?? "";
  }

  /** Connected to the admin database. */
  get admin(): boolean {
    return this.#admin;
  }

  // ---- ServerLink ----------------------------------------------------------------------------

  /** Part of {@linkcode ServerLink} (see Checkout.shouldRelease). */
  shouldRelease(server: Server): boolean | string {
    return this.#parts.checkout.shouldRelease(server);
  }

  /** Part of {@linkcode ServerLink}. */
  released(_server: Server): void {
    this.#parts.lost.released();
    this.lastActivity = Date.now();
    this.server = null;
    this.state = "idle";
    this.transactions++;
    this.#parts.checkout.pinnedThisHold = false;
  }

  /**
   * Part of {@linkcode ServerLink}: keeps the client's view of reported parameters what PostgreSQL
   * would have shown it (see ReportedParameters.parameterStatus).
   */
  parameterStatus(
    _server: Server,
    options: { name: string; value: string; own: boolean },
  ): Uint8Array | null {
    return this.#parts.book.reported.parameterStatus(options);
  }

  /** Part of {@linkcode ServerLink} (see ReportedParameters.owed). */
  owedParameterStatus(server: Server): Uint8Array | null {
    return this.#parts.book.reported.owed(server);
  }

  /** Part of {@linkcode ServerLink}: what a server's FATAL means to this client. */
  onServerFatal(server: Server): "replay" | "downgrade" | "keep" {
    return this.#parts.lost.onServerFatal(server);
  }

  /** Part of {@linkcode ServerLink}: the server died under this client (see LostServers). */
  serverLost(server: Server, error: Error): void {
    if (this.server !== server) return;
    this.server = null;
    this.state = "idle";
    if (this.closed) return;
    this.#parts.lost.lost(server, error);
  }

  // ---- errors and teardown -------------------------------------------------------------------

  async #fatal(fields: ErrorFields): Promise<void> {
    if (this.closed) return;
    const b = new MessageBuilder(128);
    appendError(b, fields);
    this.writer.enqueue(b.view());
    try {
      await this.writer.flush();
    } catch {
      // Client already gone.
    }
  }

  #teardown(): void {
    if (this.closed) return;
    this.closed = true;
    this.#host.unregister(this);
    this.#parts.checkout.waitAbort?.abort(new ClientGoneError());
    const server = this.server;
    this.server = null;
    if (server && this.pool) {
      server.detach();
      this.pool.release(server, { resetSql: this.#parts.checkout.leavingSql() });
    }
    this.#txn.releaseAll(this.#sessionMode ? "DISCARD ALL" : null);
    this.statements.clear();
    closeQuietly(this.conn);
    const line = `client ${this.id} (${this.addr}) disconnected after ${
      ((Date.now() - this.connectedAt) / 1000).toFixed(1)
    } s`;
    if (this.#loggedIn && this.#host.settings.log_disconnections) log.info(line);
    else log.debug(line);
  }
}

/** Ends a COPY FROM STDIN that reached several shards (the statement was not recognized). */
const COPY_ACROSS_SHARDS = copyFail("COPY FROM STDIN on several shards is not supported by pgdog");
