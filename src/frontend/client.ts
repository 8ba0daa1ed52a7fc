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
  appendBackendKeyData,
  appendError,
  appendParameterStatus,
  AUTH_OK,
  copyFail,
  decodeText,
  describeMessageType,
  type ErrorFields,
  MessageBuilder,
  Msg,
  readyForQuery,
  SYNC,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { MessageBuffer, MessageSizeError, QueryTooLargeError } from "../net/message_buffer.ts";
import { type ByteStream, closeQuietly } from "../net/stream.ts";
import { SocketWriter } from "../net/writer.ts";
import type { AcceptTlsOptions } from "../net/tls.ts";
import { CopyState, type Server, type ServerLink, SettingsSyncError } from "../backend/server.ts";
import { Action, Expect, type LocalAnswer } from "../backend/response_queue.ts";
import { ClientFacingError, type Pool, WaitAbort } from "../backend/pool.ts";
import type { Cluster, Databases } from "../backend/databases.ts";
import { ServerConnectError } from "../backend/connect.ts";
import type { AuthType } from "../config/types.ts";
import type { SessionScan } from "../router/scan.ts";
import { ANALYZE_ON_LOOP_MAX, type QueryRouter } from "../router/mod.ts";
import { parseRole, type Role } from "../router/route.ts";
import type { ShardingConfig } from "../router/shard.ts";
import type { PluginSet } from "../plugin/mod.ts";
import { FanOut, type FanOutSender } from "./fan_out.ts";
import { MergeRun } from "./merge_run.ts";
import { OpenFan, type OpenLegs } from "./open_fan.ts";
import { learnCollation } from "../backend/catalog.ts";
import type { Collation } from "../cross_shard/values.ts";
import type { MergePlan } from "../cross_shard/plan.ts";
import { adminGreeting, serveAdmin } from "./admin_session.ts";
import type { ForwardClient } from "./forward.ts";
import type { LocalClient } from "./local_answers.ts";
import type { RouterClient } from "./request_router.ts";
import { RequestRouter } from "./request_router.ts";
import { ReportedParameters } from "./reported_parameters.ts";
import { LocalAnswers } from "./local_answers.ts";
import { Forwarder } from "./forward.ts";
import { RoutedMessage } from "./routed_message.ts";
import { ShardTransaction } from "./shard_transaction.ts";
import { planSplit, type SplitClient, type SplitHost, SplitRunner } from "./split_request.ts";
import type { AdminHost } from "../admin/mod.ts";
import type { UniqueIdGenerator } from "../sharding/unique_id.ts";
import { errorMessage, log } from "../log.ts";
import { ClientGoneError } from "./auth.ts";
import { logIn, loginParameters, LoginRefused } from "./login.ts";
import {
  markApplied,
  paramSyncStatements,
  sessionParamsFromStartup,
  startupOption,
} from "./params.ts";
import { sameParams, SessionState } from "./session.ts";
import { ClientStatements, type PreparedCache, statementMessage } from "./prepared.ts";
import {
  EXTENDED_START,
  FRONTEND_TYPES,
  replayable,
  requestBuffered,
  STATEMENT_TYPES,
  wellFormed,
} from "../protocol/frontend_messages.ts";
import { OutBatch } from "./out_batch.ts";

/** Initial size of a client's read buffer; it grows for large messages and shrinks back after. */
const CLIENT_BUFFER_BYTES = 4096;
/**
 * Cleans a server a client pinned (or left in a state pgdog does not know) before others use it:
 * the identity first (RESET ALL keeps it, and another identity may not reset everything).
 */
const PIN_CLEANUP = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; " +
  "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP";

/** What the parts of a client's request handling read and change of it. */
type ClientParts =
  & LocalClient
  & RouterClient
  & ForwardClient
  & SplitClient
  & SplitHost
  & FanOutSender;

/** What a client needs from the proxy around it. */
export interface ClientHost {
  readonly databases: Databases;
  /** Current `[general]` values that clients use. */
  readonly settings: {
    auth_type: AuthType;
    client_login_timeout: number;
    max_message_size: number;
    /** Largest Query or Parse before query_size_limit_action (unset: no limit). */
    query_size_limit?: number;
    query_size_limit_action: "warn" | "block";
    prepared_statements: "extended" | "disabled";
    prepared_statements_limit: number;
    /** Bytes of rows one cross-shard query may hold to merge. */
    cross_shard_buffer_limit: number;
    /** EXPLAIN of a cross-shard query shows every shard's plan. */
    expanded_explain: boolean;
    log_connections: boolean;
    log_disconnections: boolean;
    /** The certificate and key offered to clients; null when TLS is not offered. */
    tls: AcceptTlsOptions | null;
    /** Refuse clients that do not use TLS. */
    tls_client_required: boolean;
  };
  readonly prepared: PreparedCache;
  readonly router: QueryRouter;
  /** The routing plugins (null when none is configured). */
  readonly plugins: PluginSet | null;
  /** `pgdog.unique_id()`. */
  readonly uniqueIds: UniqueIdGenerator;
  /** What the admin database shows and changes. */
  readonly console: AdminHost;
  /** `[general]` routing settings. */
  readonly routing: {
    query_parser: "auto" | "on" | "off";
    read_write_strategy: "conservative" | "aggressive";
  };
  readonly shuttingDown: boolean;
  register(client: Client): void;
  unregister(client: Client): void;
  cancel(pid: number, secret: number): void;
  /** DDL on `database` passed through pgdog: its column orders are read again everywhere. */
  tablesChanged(database: string): void;
}

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
  #sessionMode = false;
  /** Rename prepared statements (transaction mode with prepared_statements = extended). */
  #renaming = false;
  #skipUntilSync = false;
  #waitAbort: WaitAbort | null = null;
  /** The server's settings may lag behind the client's (session mode, after a read-back). */
  #needsSync = false;
  /** The server was pinned at some point since it was taken. */
  #pinnedThisHold = false;
  /** Parse queries to route them (the database has replicas, or query_parser = on). */
  #routing = false;
  /** A plain BEGIN held back so the transaction's first statement can choose its host. */
  #deferredBegin: Uint8Array | null = null;
  /** A settings read-back was sent and has not answered yet. */
  #readBackPending = false;
  /** Resolves when the pending read-back has answered. */
  #readBackDone: Promise<void> | null = null;
  /** A forwarded message may change the session: later pipelined messages wait for it to settle. */
  #holdRest = false;
  /** What this client was told of reported parameters (ParameterStatus). */
  readonly #reported = new ReportedParameters();
  /** `pgdog.role` from the startup packet. */
  #startupRole: Role | null = null;
  /**
   * The request a replica is answering (or one behind a settings sync), kept until its answer
   * starts, to re-run it elsewhere; `begin` is the held-back BEGIN that went ahead of it.
   */
  #replay: { bytes: Uint8Array; role: Role; begin: Uint8Array | null } | null = null;
  /** The held-back BEGIN sent with the current server's first request (to re-run with it). */
  #sentBegin: Uint8Array | null = null;
  /** A settings sync went ahead of the request being sent. */
  #syncSent = false;
  /** A request was re-run after a settings sync failed, and has not completed since. */
  #syncRetried = false;
  /** A re-run in progress: new requests wait for it. */
  #replaying: Promise<void> | null = null;
  #out = new OutBatch();
  /** Logged in to the admin database. */
  #admin = false;
  /** Sharded databases: how statements find their shard (null otherwise). */
  #sharding: ShardingConfig | null = null;
  /** The shard the next checkout is for. */
  #shard = 0;
  /** The transaction's servers on other shards, and what is replayed on each shard it reaches. */
  readonly #txn = new ShardTransaction();
  /** The next checkout is for a request that runs nothing: no transaction starts there. */
  #outsideTransaction = false;
  /** Between a request's first message and its Sync (sharded routing decides once per request). */
  #inRequest = false;
  /** The attached server got a Flush and no Sync since: its batch is still open. */
  #unsynced = false;
  /** The request running on several shards, if any. */
  #fan: FanOut | null = null;
  /** A multi-shard request left portals or an unsynced request on its legs (see open_fan.ts). */
  #openFan: OpenFan | null = null;
  /** The message being handled, and what handling it decided (reused for every message). */
  readonly #msg = new RoutedMessage();
  /**
   * The client as the parts of its request handling see it (local answers, routing, forwarding,
   * split planning): one view of its state for all of them.
   */
  readonly #parts: ClientParts = ((client: Client): ClientParts => ({
    get id() {
      return client.id;
    },
    get user() {
      return client.user;
    },
    get database() {
      return client.database;
    },
    get cluster() {
      return client.cluster;
    },
    get sharding() {
      return client.#sharding;
    },
    get router() {
      return client.#host.router;
    },
    get plugins() {
      return client.#host.plugins;
    },
    get prepared() {
      return client.#host.prepared;
    },
    get uniqueIdGenerator() {
      return client.#host.uniqueIds;
    },
    get strategy() {
      return client.#host.routing.read_write_strategy;
    },
    get shardCount() {
      return client.cluster!.shards.length;
    },
    get routing() {
      return client.#routing;
    },
    get sessionMode() {
      return client.#sessionMode;
    },
    get renaming() {
      return client.#renaming;
    },
    get startupRole() {
      return client.#startupRole;
    },
    get closed() {
      return client.closed;
    },
    get server() {
      return client.#leadServer();
    },
    get unsynced() {
      return client.#unsynced;
    },
    get session() {
      return client.session;
    },
    statements: client.statements,
    get writer() {
      return client.writer;
    },
    set writer(writer: SocketWriter) {
      client.writer = writer;
    },
    set inRequest(inRequest: boolean) {
      client.#inRequest = inRequest;
    },
    send: () => client.#send(),
    closeBatch: () => client.#closeBatch(),
    settle: () => client.#settle(),
    useShard: async (n) => {
      if (client.server !== null) client.#park(client.server);
      client.#shard = n;
      return await client.#acquire("primary");
    },
    endImplicit: (commit) => client.#endImplicit(commit),
    // (Getters: fields that are set after this one.)
    get rbuf() {
      return client.rbuf;
    },
    get msg() {
      return client.#msg;
    },
    get forwarder() {
      return client.#forwarder;
    },
    get txn() {
      return client.#txn;
    },
    get local() {
      return client.#local;
    },
    get split() {
      return client.#splits.current;
    },
    get deferredBegin() {
      return client.#deferredBegin;
    },
    set deferredBegin(begin: Uint8Array | null) {
      client.#deferredBegin = begin;
    },
    get skipUntilSync() {
      return client.#skipUntilSync;
    },
    set skipUntilSync(skip: boolean) {
      client.#skipUntilSync = skip;
    },
    txStatus: () => client.#txStatus(),
    transactionOver: () => client.#transactionOver(),
    setPgdog: (setting) => client.#setPgdog(setting),
    answer: (bytes, dropped) => client.#answer(bytes, dropped),
    resetSession: (b) => client.#resetSession(b),
    tablesChanged: () => client.#host.tablesChanged(client.database),
    abortEverywhere: () => client.#abortEverywhere(),
    gateOpen: () => client.#gateOpen(),
    atGate: () => client.#atGate(),
    noteScan: (scan, server) => client.#noteScan(scan, server),
    countQuery: (server) => {
      client.queries++;
      server.queries++;
    },
    shardSession: () => client.#router.shardSession(),
    statementAnalysis: (name) =>
      name === ""
        ? client.#forwarder.unnamedAnalysis
        : client.statements.get(name)?.analysis ?? null,
    heldShards: () => client.#txn.heldShards(client.cluster!, client.server),
    get prelude() {
      return client.#txn.prelude;
    },
    answerLocally: (type, buf, p, end) => client.#local.answerLocally(type, buf, p, end),
    forward: (msg, server, out) => client.#forwarder.forward(msg, server, out),
    syncParams: (server, out) => client.#syncParams(server, out),
  }))(this);
  /** What pgdog answers itself. */
  readonly #local = new LocalAnswers(this.#parts);
  /** Routes requests: their role, and their shards. */
  readonly #router = new RequestRouter(this.#parts);
  /** Forwards messages to servers, rewriting prepared statements. */
  readonly #forwarder = new Forwarder(this.#parts);
  /** Runs requests cut into statements that run one by one (see planSplit). */
  readonly #splits = new SplitRunner(this.#parts);

  constructor(conn: ByteStream, options: { host: ClientHost; addr: string }) {
    this.conn = conn;
    this.addr = options.addr;
    this.#host = options.host;
    this.writer = new SocketWriter(conn);
    this.rbuf = new MessageBuffer(CLIENT_BUFFER_BYTES, options.host.settings.max_message_size);
    this.id = nextClientPid;
    nextClientPid = nextClientPid >= 0x7ffffff0 ? 1 : nextClientPid + 1;
    this.secret = crypto.getRandomValues(new Int32Array(1))[0];
  }

  /** Serves the connection until it ends. Never throws. */
  async run(): Promise<void> {
    try {
      if (!(await this.#login())) return;
      await this.#requestLoop();
    } catch (e) {
      if (e instanceof QueryTooLargeError) {
        log.error(
          `client ${this.id} (${this.user}@${this.database}): [large_query] refused a message of ` +
            `${e.size} bytes (query_size_limit is ${e.limit} bytes): '${this.#querySample()}...'`,
        );
        await this.#fatal({
          severity: "FATAL",
          code: SqlState.ProgramLimitExceeded,
          message: e.message,
          detail: `message is ${e.size} bytes, query_size_limit is ${e.limit} bytes`,
        });
      } else if (e instanceof MessageSizeError) {
        await this.#fatal({
          severity: "FATAL",
          code: SqlState.ProtocolViolation,
          message: e.message,
        });
      } else if (
        !(e instanceof ClientGoneError) && !(e instanceof LoginRefused) && !this.closed &&
        !isConnectionReset(e)
      ) {
        log.warn(`client ${this.id} (${this.addr}): ${errorMessage(e)}`);
      }
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
  checkTimeouts(
    now: number,
    limits: { query: number; idle: number; idleInTransaction: number; grace: number },
  ): void {
    if (this.state === "login" || this.state === "waiting" || this.closed) return;
    const server = this.server;
    const fan = this.#fan;
    const running = server && server.queue.length > 0
      ? [server]
      : fan !== null && fan.running
      ? fan.servers
      : null;
    if (running !== null) {
      if (limits.query <= 0) return;
      for (const s of running) {
        if (s.queue.length === 0 || s.closed) continue;
        const elapsed = now - s.requestStart;
        if (s.cancelNote === null && elapsed >= limits.query) {
          s.cancelNote = `canceling statement due to query_timeout (${limits.query} ms)`;
          s.sendCancel();
        } else if (s.cancelNote !== null && elapsed >= limits.query + limits.grace) {
          s.close(`query_timeout: the server ignored the cancel for ${limits.grace} ms`);
        }
      }
      return;
    }
    const idleSince = Math.max(this.lastActivity, server?.requestStart ?? 0);
    const inTransaction = server !== null && server.txStatus !== TxStatus.Idle;
    if (
      inTransaction && limits.idleInTransaction > 0 && now - idleSince >= limits.idleInTransaction
    ) {
      this.terminate({
        severity: "FATAL",
        code: SqlState.IdleInTransactionSessionTimeout,
        message:
          `terminating connection due to client_idle_in_transaction_timeout (${limits.idleInTransaction} ms)`,
      });
    } else if (!inTransaction && limits.idle > 0 && now - idleSince >= limits.idle) {
      this.terminate({
        severity: "FATAL",
        code: SqlState.IdleSessionTimeout,
        message: `terminating connection due to client_idle_timeout (${limits.idle} ms)`,
      });
    }
  }

  /** A CancelRequest for this client arrived. */
  cancel(): void {
    const server = this.server;
    if (server && (server.queue.length > 0 || server.copy !== CopyState.None)) {
      server.sendCancel();
    } else if (this.#fan !== null && this.#fan.running) {
      for (const s of this.#fan.servers) if (s.queue.length > 0 && !s.closed) s.sendCancel();
    } else if (this.#waitAbort) {
      this.#waitAbort.abort(
        new ClientFacingError({
          severity: "ERROR",
          code: SqlState.QueryCanceled,
          message: "canceling statement due to user request",
        }),
      );
    }
  }

  // ---- login ---------------------------------------------------------------------------------

  async #login(): Promise<boolean> {
    const host = this.#host;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      this.#fatal({
        severity: "FATAL",
        code: SqlState.ProtocolViolation,
        message:
          `login not completed within client_login_timeout (${host.settings.client_login_timeout} ms)`,
      }).finally(() => closeQuietly(this.conn));
    }, host.settings.client_login_timeout);
    try {
      const ok = await this.#loginSteps();
      return ok && !timedOut && !this.closed;
    } catch (e) {
      if (timedOut) return false;
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  async #loginSteps(): Promise<boolean> {
    const host = this.#host;
    const result = await logIn(this, {
      databases: host.databases,
      authType: host.settings.auth_type,
      tls: host.settings.tls,
      tlsRequired: host.settings.tls_client_required,
      admin: host.console.config.admin,
      get shuttingDown() {
        return host.shuttingDown;
      },
      cancel: (pid, secret) => host.cancel(pid, secret),
    });
    if (result === null) return false;
    this.user = result.user;
    this.database = result.database;
    if (result.cluster === null) {
      this.#admin = true;
      this.session = new SessionState(sessionParamsFromStartup(result.startup));
      await this.writer.write(adminGreeting({
        applicationName: result.startup.get("application_name") ?? "",
        pid: this.id,
        secret: this.secret,
      }));
      this.state = "idle";
      host.register(this);
      log.info(`client ${this.id} (${this.addr}) logged in to the admin database as ${this.user}`);
      return true;
    }
    this.cluster = result.cluster;
    this.pool = result.cluster.loginPool();
    this.#sessionMode = result.cluster.poolerMode === "session";
    this.#renaming = !this.#sessionMode && host.settings.prepared_statements === "extended";
    const parser = host.routing.query_parser;
    this.#sharding = result.cluster.sharding;
    this.#routing = parser === "on" || (parser === "auto" && result.cluster.hasReplicas) ||
      this.#sharding !== null;
    this.#startupRole = parseRole(
      result.startup.get("pgdog.role") ?? startupOption(result.startup, "pgdog.role"),
    );
    this.session = new SessionState(sessionParamsFromStartup(result.startup));
    let reported: Array<[string, string]>;
    try {
      reported = await loginParameters(this.pool!, this.session.params);
    } catch (e) {
      const fields = e instanceof ClientFacingError || e instanceof ServerConnectError
        ? e.fields
        : { severity: "FATAL", code: SqlState.InternalError, message: String(e) };
      await this.#fatal({ ...fields, severity: "FATAL" });
      return false;
    }
    if (this.closed) return false;
    const b = new MessageBuilder(512);
    b.bytes(AUTH_OK);
    for (const [name, value] of reported) {
      appendParameterStatus(b, name, value);
      this.#reported.login(name, value);
    }
    appendBackendKeyData(b, this.id, this.secret);
    b.bytes(readyForQuery(TxStatus.Idle));
    await this.writer.write(b.view());
    this.state = "idle";
    host.register(this);
    this.#loggedIn = true;
    const line = `client ${this.id} (${this.addr}) logged in as ${this.user}/${this.database}` +
      (result.tls ? " over TLS" : "");
    if (host.settings.log_connections) log.info(line);
    else log.debug(line);
    return true;
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
    if (this.#replaying) await this.#replaying;
    // The last transaction's settings must be known before the next request runs.
    if (this.#readBackDone) await this.#readBackDone;
    const rb = this.rbuf;
    const out = this.#out;
    out.reset(rb.buf);
    this.#forwarder.uniqueIds?.newBatch();
    // Where the request that took a replica began: kept to re-run it if that replica dies.
    let replayFrom = -1;
    let replayRole: Role = "replica";
    let whole = this.#routesWhole();
    if (whole && this.cluster !== null) this.#routing = true;
    // Query, Parse and Bind messages from this size on may need a look before they are handled.
    const large = Math.min(ANALYZE_ON_LOOP_MAX, this.#host.settings.query_size_limit ?? Infinity);
    for (;;) {
      const split = this.#splits.current;
      if (split !== null && rb.start >= split.ends[split.next]) {
        // One statement of a split request is over: the next one, or the request's end.
        await this.#splits.step(split);
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
      if (type === Msg.Terminate) {
        // PostgreSQL answers everything before a Terminate; so does pgdog.
        await this.#send();
        await this.#finishOwed();
        return false;
      }
      if (FRONTEND_TYPES[type] === 0) {
        // Forwarding it would make PostgreSQL drop the (shared) server connection.
        await this.#send();
        await this.#finishOwed();
        await this.#fatal({
          severity: "FATAL",
          code: SqlState.ProtocolViolation,
          message: `invalid frontend message type ${describeMessageType(type)}`,
        });
        return false;
      }
      if (!wellFormed(type, buf, p, end)) {
        // pgdog reads these messages' names itself: never past their end.
        await this.#send();
        await this.#finishOwed();
        await this.#fatal({
          severity: "FATAL",
          code: SqlState.ProtocolViolation,
          message: `malformed ${describeMessageType(type)} message`,
        });
        return false;
      }
      if (!this.#inRequest && !this.#skipUntilSync) {
        if (this.server === null && this.#txn.empty && !this.#gateOpen()) {
          // A new transaction waits out PAUSE and MAINTENANCE and routes by the configuration in
          // force after them (a RELOAD may have changed the shards).
          if (!(await this.#atGate())) return false;
        }
        whole = this.#routesWhole();
        if (whole) this.#routing = true;
      }
      if (
        whole && !this.#inRequest && !this.#skipUntilSync &&
        EXTENDED_START[type] === 1 && !requestBuffered(buf, p, rb.end) &&
        rb.end - p < this.#host.settings.max_message_size
      ) {
        // Sharded routing needs the whole request (the Bind's values) before it picks shards;
        // a request larger than max_message_size is routed on what has arrived.
        break;
      }
      if (
        this.#sharding !== null && !this.#inRequest && !this.#skipUntilSync &&
        (type === Msg.Query || EXTENDED_START[type] === 1)
      ) {
        if (split === null && type === Msg.Query && size > large) {
          // Its statements' boundaries come from the parse worker, not the event loop.
          await this.#largeMessage(type, buf, p, end);
          if (this.closed) return false;
        }
        const plan = split === null
          ? planSplit({ type, buf, p, end, bufferEnd: rb.end }, this.#parts)
          : null;
        if (plan !== null) {
          await this.#splits.start(plan);
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
      const msg = this.#msg.at(type, buf, p, end);
      if (size > large && STATEMENT_TYPES[type] === 1 && !this.#skipUntilSync) {
        await this.#largeMessage(type, buf, p, end);
        if (this.closed) return false;
      }
      if (this.#skipUntilSync) {
        // After an error pgdog reported itself, everything up to Sync is ignored, as PostgreSQL does.
        if (type !== Msg.Sync) continue;
        this.#skipUntilSync = false;
        this.#inRequest = false;
        if (this.server === null) {
          this.writer.enqueue(readyForQuery(TxStatus.Idle));
          continue;
        }
      } else if (this.#local.answerLocally(type, buf, p, end)) {
        continue;
      }
      if (whole) {
        if (!this.#inRequest) {
          this.#router.newRequest();
          const routed = this.#sharding !== null
            ? await this.#routeShards(type, buf, p, end)
            : await this.#router.routePlugins(type, buf, p, end);
          if (this.closed) return false;
          if (routed === "done") {
            out.reset(rb.buf);
            continue;
          }
        }
        // A Flush lets the client read answers before the rest of the batch: postgres.js sends
        // Bind and Execute only then, so the request routes again with its values.
        this.#inRequest = type !== Msg.Sync && type !== Msg.Query && type !== Msg.FunctionCall &&
          type !== Msg.Flush;
        this.#unsynced = type === Msg.Flush || (this.#unsynced && this.#inRequest);
      }
      if (this.server === null) {
        // Nothing is buffered for a server yet: taking one may wait, and nothing else touches the
        // read buffer meanwhile.
        const role = this.#router.role(type, buf, p, end);
        const ok = await this.#acquire(role);
        if (this.closed) return false;
        if (
          ok && (role === "replica" || this.#syncSent) && this.#deferredBegin === null &&
          !this.#sessionMode
        ) {
          replayFrom = p;
          replayRole = role;
        }
        if (!ok) {
          if (type === Msg.Query || type === Msg.FunctionCall) {
            this.writer.enqueue(readyForQuery(TxStatus.Idle));
          } else if (type !== Msg.Sync) this.#skipUntilSync = true;
          else this.writer.enqueue(readyForQuery(TxStatus.Idle));
          continue;
        }
      } else if (this.#needsSync) {
        this.#syncParams(this.server, this.#out);
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
        this.#routing && !this.#sessionMode && !this.#holdRest &&
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
        this.#holdRest && (type === Msg.Sync || type === Msg.Query || type === Msg.FunctionCall)
      ) {
        this.#holdRest = false;
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

  /**
   * Waits (bounded by rollback_timeout) until the server has answered everything the client sent
   * before, so those answers reach the client ahead of a close, as with PostgreSQL.
   */
  async #finishOwed(): Promise<void> {
    const server = this.server;
    if (server === null || server.queue.length === 0) return;
    const limit = this.pool?.config.rollback_timeout ?? 5000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      // A Flush: PostgreSQL holds answers to extended-protocol messages until Sync or Flush.
      server.drain(FLUSH_MESSAGE),
      new Promise<void>((resolve) => timer = setTimeout(resolve, limit)),
    ]).catch(() => {});
    clearTimeout(timer);
    await this.writer.flush().catch(() => {});
  }

  /** Waits until the server has answered everything sent and any settings read-back is in. */
  async #settle(): Promise<void> {
    const server = this.server;
    if (server !== null && server.queue.length > 0) await server.drain().catch(() => {});
    if (this.#replaying) await this.#replaying;
    if (this.#readBackDone) await this.#readBackDone;
  }

  /** Plugins route each request whole, as sharding does (they see its Bind values). */
  #routesWhole(): boolean {
    const plugins = this.#host.plugins;
    return this.#sharding !== null || (plugins !== null && plugins.routes);
  }

  /** Keeps the request at [from, to) to re-run on another server (when it is whole). */
  #keepForReplay(buf: Uint8Array, from: number, to: number, role: Role): void {
    this.#replay = from >= 0 && replayable(buf, from, to)
      ? { bytes: buf.slice(from, to), role, begin: this.#sentBegin }
      : null;
  }

  /** Writes what the batch collected for the server. */
  async #send(): Promise<void> {
    const server = this.server;
    if (!server || this.#out.empty) {
      this.#out.reset(this.rbuf.buf);
      return;
    }
    try {
      await this.#out.writeTo(server.writer);
    } catch (e) {
      // The server's read loop reports the loss to this client (serverLost).
      log.debug(
        `client ${this.id}: write to ${server.label} failed: ${errorMessage(e)}`,
      );
    } finally {
      this.#out.reset(this.rbuf.buf);
    }
  }

  /**
   * A large Query, Parse or Bind: query_size_limit's warning, and a long statement analyzed off
   * the event loop (see RequestRouter.prepareLarge).
   */
  async #largeMessage(type: number, buf: Uint8Array, p: number, end: number): Promise<void> {
    const { query_size_limit: limit, query_size_limit_action: action } = this.#host.settings;
    if (type !== Msg.Bind && limit !== undefined && end - p > limit && action === "warn") {
      log.warn(
        `[large_query] size=${end - p}B query_size_limit=${limit}B '${this.#querySample(p)}...' ` +
          `[database: ${this.database}, user: ${this.user}]`,
      );
    }
    await this.#router.prepareLarge(type, buf, p, end);
  }

  /** The start of the message at `p` of the read buffer (from `start`), on one line, for logs. */
  #querySample(p = this.rbuf.start): string {
    const rb = this.rbuf;
    const text = decodeText(rb.buf, Math.min(p + 5, rb.end), Math.min(p + 5 + 200, rb.end));
    return text.replaceAll("\0", " ").replace(/\s+/g, " ").slice(0, 100);
  }

  /** Session bookkeeping for a statement that reached `server`. */
  #noteScan(scan: SessionScan, server: Server): void {
    this.session.note(scan);
    if (scan.settings.length > 0 || scan.resetAll || scan.unknownSetting || scan.advisoryLocks) {
      this.#holdRest = true;
    }
    this.#reported.noteResets(scan);
    if (scan.discardAll) {
      // DISCARD ALL on the server drops its prepared statements, and the client's.
      server.statements.clear();
      this.statements.clear();
      this.#forwarder.uniqueIds?.clear();
    }
  }

  /** DISCARD ALL without a server (see LocalClient.resetSession). */
  #resetSession(b: MessageBuilder): void {
    this.session.reset();
    this.statements.clear();
    // As PostgreSQL does, report the parameters that go back to their startup values.
    this.#reported.backToStartup(b);
  }

  /** Answers with bytes of pgdog's own, in order with whatever the server still owes. */
  #answer(bytes: Uint8Array, dropped?: () => void): void {
    const legs = this.#fan !== null && this.#fan.queueing ? this.#fan.servers : null;
    if (legs !== null) {
      // Every shard's answers carry it, so the merged answer has it once, in its place.
      legs.forEach((server, i) =>
        server.expect(
          Expect.Local,
          Action.Forward,
          {
            bytes,
            dropped: i === 0 ? dropped : undefined,
          } satisfies LocalAnswer,
        )
      );
    } else if (this.server) {
      this.server.expect(Expect.Local, Action.Forward, { bytes, dropped } satisfies LocalAnswer);
    } else this.writer.enqueue(bytes);
  }

  #txStatus(): number {
    const server = this.#leadServer();
    if (!this.#txn.empty) return this.#txn.status(server);
    if (server) return server.txStatus;
    return this.#deferredBegin !== null ? TxStatus.InTransaction : TxStatus.Idle;
  }

  /**
   * The server whose state answers for the client's: the attached one, or while a request runs
   * on several shards, the first shard's.
   */
  #leadServer(): Server | null {
    const fan = this.#fan;
    return fan !== null && fan.queueing ? fan.servers[0] : this.server;
  }

  /** `SET [LOCAL] pgdog.<name> TO <value>` and `RESET pgdog.<name>`. */
  #setPgdog([name, value, local]: [string, string, boolean]): void {
    if (local) {
      if (this.#txStatus() === TxStatus.Idle) return;
      // Lasts until the transaction ends.
      if (value === "") this.session.pgdogLocal.delete(name);
      else this.session.pgdogLocal.set(name, value);
      return;
    }
    if (name === "pin") {
      const on = /^(true|on|yes|1)$/i.test(value);
      this.session.manualPin = on;
      if (on) this.#pinnedThisHold = this.#leadServer() !== null;
      else this.#releaseIfUnpinned();
      return;
    }
    if (value === "") this.session.pgdog.delete(name);
    else this.session.pgdog.set(name, value);
  }

  /** After an unpin, a server kept only for the pin goes back (cleaned) at once. */
  #releaseIfUnpinned(): void {
    const server = this.server;
    if (
      !server || this.#sessionMode || this.session.pinned || !server.clean ||
      this.session.needsReadBack || this.#fan !== null
    ) return;
    this.server = null;
    this.state = "idle";
    this.#pinnedThisHold = false;
    this.pool!.release(server, { resetSql: PIN_CLEANUP });
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
  ): Promise<"go" | "done"> {
    const open = this.#openFan?.continuedBy(type, buf, p, end) ?? null;
    if (open !== null) {
      // Its portal (or its unsynced request) is on those legs: the request goes on there.
      await this.#fanOut(open.shards, { type, p, end, omniWrite: false, open });
      return "done";
    }
    const route = await this.#router.shardRoute(type, buf, p, end);
    if (route === "go" || route === "done") return route;
    this.#outsideTransaction = route.outsideTransaction;
    const shards = route.shards;
    if (shards.length === 1) {
      const n = shards[0];
      const current = this.server;
      if (current !== null) {
        if (this.cluster!.shardOf(current.owner as Pool) === n) return "go";
        await this.#closeBatch();
        await this.#settle();
        if (this.closed) return "done";
        if (this.server !== null) this.#park(this.server);
      }
      this.#shard = n;
      return "go";
    }
    await this.#fanOut(shards, {
      type,
      p,
      end,
      omniWrite: route.omniWrite,
      copyHeader: route.copyHeader,
      merge: route.merge,
    });
    return "done";
  }

  // ---- split requests ------------------------------------------------------------------------

  /**
   * Ends the transaction pgdog opened for a split request on every server it reached, and gives
   * them back. Returns the first error (a COMMIT can fail, e.g. a deferred constraint).
   */
  async #endImplicit(commit: boolean): Promise<ErrorFields | null> {
    this.#deferredBegin = null;
    const servers: Server[] = this.#txn.takeAll();
    const attached = this.server;
    if (attached !== null) {
      attached.detach();
      this.server = null;
      this.state = "idle";
      servers.unshift(attached);
    }
    this.#transactionOver();
    this.session.pgdogLocal.clear();
    const limit = this.pool?.config.rollback_timeout ?? 5000;
    const sql = commit ? "COMMIT" : "ROLLBACK";
    let error: ErrorFields | null = null;
    const results = await Promise.all(
      servers.map((s) => s.query(sql, { timeoutMs: limit }).catch((e) => ({ error: lost(e) }))),
    );
    for (const r of results) error ??= r.error;
    if (servers.length > 0 && this.session.needsReadBack && !servers[0].closed) {
      // The statements may have changed settings: every server ran them; read them from one.
      const r = await servers[0].query(this.session.readBackSql(), { timeoutMs: limit })
        .catch(() => null);
      if (r !== null && r.error === null) {
        this.session.applyReadBack(r.rows, servers[0]);
        this.#needsSync = true;
      }
      this.#reported.resetDone();
    }
    for (const s of servers) (s.owner as Pool).release(s, { resetSql: null });
    this.transactions++;
    return error === null ? null : { ...error, severity: "ERROR" };
  }

  /**
   * A transaction on several shards failed on one of them: it fails on the others too (a
   * statement of pgdog's raises an error there), so a later COMMIT rolls back everywhere, as
   * PostgreSQL would, instead of committing the shards that did not see the error.
   */
  async #abortEverywhere(): Promise<void> {
    const healthy = this.#txn.toAbort(this.server);
    if (healthy.length === 0) return;
    await this.#send();
    await this.#settle();
    await this.#txn.abortOn(healthy, this.pool?.config.rollback_timeout ?? 5000);
  }

  /** Ends a batch left open by a Flush (its answers are in) before the server is left. */
  async #closeBatch(): Promise<void> {
    const server = this.server;
    if (server === null || !this.#unsynced) return;
    this.#unsynced = false;
    this.#out.reset(this.rbuf.buf);
    this.#out.addBytes(SYNC);
    server.expect(Expect.Sync, Action.Swallow);
    await this.#send();
  }

  /**
   * A new transaction waits here while PAUSE or MAINTENANCE holds its database, then picks up
   * the configuration in force (a RELOAD may have changed it). False (the client told, and
   * closed) when its user or database was removed.
   */
  async #atGate(): Promise<boolean> {
    this.#gatePassed = null;
    const gate = this.#host.console.gate;
    if (gate.closed(this.database)) {
      const was = this.state;
      this.state = "waiting";
      await gate.wait(this.database);
      this.state = was;
    }
    const databases = this.#host.databases;
    const cluster = databases.lookup(this.user, this.database);
    if (cluster === this.cluster) {
      this.#gatePassed = databases;
      return true;
    }
    if (cluster === undefined) {
      await this.#fatal({
        severity: "FATAL",
        code: SqlState.AdminShutdown,
        message: `user "${this.user}" on database "${this.database}" is no longer in the ` +
          "configuration (RELOAD)",
      });
      return false;
    }
    this.cluster = cluster;
    this.#sharding = cluster.sharding;
    // A shard chosen under the old configuration may not exist in this one.
    if (this.#shard >= cluster.shards.length) this.#shard = 0;
    this.#routing ||= cluster.hasReplicas || cluster.sharding !== null;
    this.#gatePassed = databases;
    return true;
  }

  /** The configuration (pools) this client last passed the gate with. */
  #gatePassed: Databases | null = null;

  /** True when {@linkcode #atGate} would let the client through at once, as it is. */
  #gateOpen(): boolean {
    return this.#host.databases === this.#gatePassed &&
      !this.#host.console.gate.closed(this.database);
  }

  /** Sets the attached server aside (its transaction goes on) while another shard is used. */
  #park(server: Server): void {
    this.#txn.park(this.cluster!, server);
    this.server = null;
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
      /** The request goes on with a run whose portals live on the legs. */
      open?: OpenLegs;
    },
  ): Promise<void> {
    if (this.server !== null) {
      await this.#closeBatch();
      await this.#settle();
    }
    if (this.closed) return;
    if (this.#deferredBegin !== null) {
      this.#txn.prelude.unshift(this.#deferredBegin);
      this.#deferredBegin = null;
    }
    const role: Role = "primary";
    if (this.#txn.empty && !(await this.#atGate())) return;
    let collation: Collation | null = null;
    if (options.merge && !options.open) {
      try {
        collation = await learnCollation(this.cluster!, {
          held: null,
          timeoutMs: this.cluster!.settings.checkoutTimeout,
        });
      } catch (e) {
        if (!(e instanceof ClientFacingError)) throw e;
        this.#local.answerError(e.fields, options.type === Msg.Query);
        return;
      }
      if (this.closed) return;
      if (collation === null) {
        this.#local.answerError({
          severity: "ERROR",
          code: SqlState.FeatureNotSupported,
          message: "a cross-shard query that needs merging is not supported on a database whose " +
            "default collation pgdog can't compare text by (a libc locale other than C)",
          hint: 'create the database with LOCALE "C" or an ICU locale, or route with ' +
            "/* pgdog_shard: N */",
        }, options.type === Msg.Query);
        return;
      }
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
      merge: options.open ? options.open.run : options.merge
        ? new MergeRun({
          prepared: this.#host.prepared,
          statementParse: (name) =>
            name === "" ? this.#forwarder.unnamedParse() : this.statements.get(name)?.parse ?? null,
        }, {
          plan: options.merge,
          shards: shards.length,
          shardIds: shards,
          expandedExplain: this.#host.settings.expanded_explain,
          bufferLimit: this.#host.settings.cross_shard_buffer_limit,
          collation: collation!,
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

  /** The transaction ended: nothing of it is replayed on later shards. */
  #transactionOver(): void {
    if (this.#router.ddlInTransaction) {
      this.#router.ddlInTransaction = false;
      this.cluster?.columns.clear();
      this.#host.tablesChanged(this.database);
    }
    this.#txn.over();
  }

  /** Takes a server for the next request. False (error already queued) on failure. */
  async #acquire(role: Role): Promise<boolean> {
    if (this.#txn.empty && !this.#gateOpen() && !(await this.#atGate())) return false;
    const cluster = this.cluster!;
    let server: Server;
    const shard = this.#shard;
    const parked = this.#sharding !== null ? this.#txn.take(shard) : undefined;
    if (parked !== undefined) {
      // This transaction already runs on that shard.
      this.pool = parked.owner as Pool;
      this.server = parked;
      this.state = "active";
      parked.attach(this);
      this.#out.reset(this.rbuf.buf);
      return true;
    }
    const fast = role === "primary" || !cluster.hasReplicas
      ? cluster.pool(shard).tryCheckout()
      : null;
    if (fast !== null && !this.#needsHealthcheck(fast)) {
      server = fast;
    } else {
      if (fast !== null) fast.owner?.checkin(fast);
      this.state = "waiting";
      const abort = new WaitAbort();
      this.#waitAbort = abort;
      try {
        server = await cluster.checkout(role, { abort, shard });
      } catch (e) {
        this.state = "idle";
        if (this.closed) return false;
        const fields = e instanceof ClientFacingError || e instanceof ServerConnectError
          ? e.fields
          : { severity: "ERROR", code: SqlState.InternalError, message: String(e) };
        const b = new MessageBuilder(128);
        appendError(b, {
          ...fields,
          severity: fields.severity === "FATAL" ? "ERROR" : fields.severity,
        });
        this.writer.enqueue(b.view());
        return false;
      } finally {
        this.#waitAbort = null;
      }
      if (this.closed) {
        server.owner?.checkin(server);
        return false;
      }
    }
    if (server.closed) {
      // Lost between checkout and attach: nothing will report it to this client; take another.
      return await this.#acquire(role);
    }
    this.pool = server.owner as Pool;
    this.server = server;
    this.state = "active";
    this.#pinnedThisHold = this.session.pinned;
    server.attach(this);
    this.#out.reset(this.rbuf.buf);
    if (this.#renaming) this.#evictStatements(server);
    // Last before the request: nothing with a Sync may come between (see Server.settingsSync).
    this.#syncParams(server, this.#out);
    this.#sentBegin = this.#outsideTransaction ? null : this.#deferredBegin;
    if (this.#outsideTransaction) {
      this.#outsideTransaction = false;
    } else if (this.#deferredBegin !== null && this.#sharding === null) {
      // The transaction's first statement chose the host: the BEGIN goes first, answered already.
      this.#out.addBytes(this.#deferredBegin);
      server.expect(Expect.Query, Action.Swallow);
      this.#deferredBegin = null;
    } else if (this.#sharding !== null) {
      if (this.#deferredBegin !== null) {
        this.#txn.prelude.unshift(this.#deferredBegin);
        this.#deferredBegin = null;
      }
      // A transaction reaching a shard: it starts there as it did on the first (BEGIN, then
      // what was held back or must be replayed: SET LOCAL search_path, savepoints).
      for (const msg of this.#txn.prelude) {
        this.#out.addBytes(msg);
        server.expect(Expect.Query, Action.Swallow);
      }
    }
    return true;
  }

  /**
   * Re-runs a request lost before any of its answer went out (a read whose replica died, or one
   * whose server failed to take the client's settings) on another server.
   */
  async #rerun(
    replay: { bytes: Uint8Array; role: Role; begin: Uint8Array | null },
    answered: number,
  ): Promise<void> {
    const bytes = replay.bytes;
    if (replay.begin !== null) {
      // The held-back BEGIN goes ahead of it again (once in a sharded transaction's prelude).
      if (this.#txn.prelude[0] === replay.begin) this.#txn.prelude.shift();
      this.#deferredBegin = replay.begin;
    }
    if (!(await this.#acquire(replay.role))) {
      // The error is queued; each request in it still needs its ReadyForQuery.
      for (let p = 0; p < bytes.length;) {
        const type = bytes[p];
        if (type === Msg.Query || type === Msg.Sync) {
          this.writer.enqueue(readyForQuery(TxStatus.Idle));
        }
        p += 1 + ((bytes[p + 1] << 24) | (bytes[p + 2] << 16) | (bytes[p + 3] << 8) | bytes[p + 4]);
      }
      return;
    }
    this.#out.useSource(bytes);
    // Not the request loop's message: a re-run may start while that one waits.
    const msg = new RoutedMessage();
    for (let p = 0; p < bytes.length;) {
      const end = p + 1 +
        ((bytes[p + 1] << 24) | (bytes[p + 2] << 16) | (bytes[p + 3] << 8) | bytes[p + 4]);
      this.#forwarder.forward(msg.at(bytes[p], bytes, p, end), this.server!, this.#out);
      p = end;
    }
    // The client already has the first answers (ParseComplete, BindComplete, ...): not again.
    this.server?.queue.swallowFirst(answered);
    await this.#send();
  }

  /** A server idle longer than healthcheck_interval is checked before use (by the cluster). */
  #needsHealthcheck(server: Server): boolean {
    return Date.now() - server.idleSince >= this.cluster!.settings.healthcheckInterval;
  }

  /**
   * Pipelines the settings difference ahead of the request; its answer is swallowed. Should it
   * fail, the server skips the request and is closed (serverLost re-runs it elsewhere); later
   * requests of the batch wait until this one is answered.
   */
  #syncParams(server: Server, out: OutBatch): void {
    this.#needsSync = false;
    this.#syncSent = false;
    const params = this.session.params;
    const statements = paramSyncStatements(params, server.applied);
    if (statements === null) return;
    out.addBytes(server.settingsSync(statements));
    markApplied(server.applied, params);
    this.#syncSent = true;
    this.#reported.syncSent();
    this.#holdRest = true;
  }

  /** Closes the least recently used statements beyond prepared_statements_limit, pipelined. */
  #evictStatements(server: Server): void {
    let excess = server.statements.size - this.#host.settings.prepared_statements_limit;
    if (excess <= 0) return;
    for (const name of server.statements.keys()) {
      if (excess-- <= 0) break;
      server.statements.delete(name);
      this.#out.addBytes(statementMessage(Msg.Close, name));
      server.expect(Expect.Close, Action.Swallow);
    }
    this.#out.addBytes(SYNC);
    server.expect(Expect.Sync, Action.Swallow);
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

  /**
   * Part of {@linkcode ServerLink}, asked at each ReadyForQuery that leaves the server idle: if the
   * transaction may have changed the session, its state is read back first (the server stays until
   * that answer is in); in transaction mode the server then goes back unless pinned.
   */
  shouldRelease(server: Server): boolean | string {
    // Map#clear allocates a new table even when the map is empty: once per transaction here.
    if (this.session.pgdogLocal.size > 0) this.session.pgdogLocal.clear();
    if (this.#txn.empty) this.#transactionOver();
    if (this.session.needsReadBack) {
      this.#readBack(server);
      return false;
    }
    if (this.session.pinned) {
      this.#pinnedThisHold = true;
      return false;
    }
    if (this.#sessionMode) return false;
    // Unpinned now (locks released): the server still gets the cleanup a pin promises.
    return this.#pinnedThisHold ? PIN_CLEANUP : true;
  }

  #readBack(server: Server): void {
    const sql = this.session.readBackSql();
    this.#readBackPending = true;
    let done!: () => void;
    this.#readBackDone = new Promise((resolve) => done = resolve);
    const finish = (): void => {
      this.#readBackPending = false;
      this.#readBackDone = null;
      this.#reported.resetDone();
      done();
    };
    server.query(sql, {
      timeoutMs: this.pool!.config.rollback_timeout,
      onDone: (r) => {
        finish();
        if (r.error) {
          log.warn(`client ${this.id}: reading back session settings failed: ${r.error.message}`);
          server.discard = true;
          this.session.note(FORGET_SCAN);
          return;
        }
        this.session.applyReadBack(r.rows, server);
        this.#needsSync = !sameParams(this.session.params, server.applied);
      },
    }).catch(() => {
      // The server was lost; serverLost() tells the client.
      finish();
    });
  }

  /** Part of {@linkcode ServerLink}. */
  released(_server: Server): void {
    this.#replay = null;
    this.#syncRetried = false;
    this.lastActivity = Date.now();
    this.server = null;
    this.state = "idle";
    this.transactions++;
    this.#pinnedThisHold = false;
  }

  /**
   * Part of {@linkcode ServerLink}: keeps the client's view of reported parameters what PostgreSQL
   * would have shown it (see ReportedParameters.parameterStatus).
   */
  parameterStatus(
    _server: Server,
    options: { name: string; value: string; own: boolean },
  ): Uint8Array | null {
    return this.#reported.parameterStatus(options);
  }

  /** Part of {@linkcode ServerLink} (see ReportedParameters.owed). */
  owedParameterStatus(server: Server): Uint8Array | null {
    return this.#reported.owed(server);
  }

  /** Part of {@linkcode ServerLink}: what a server's FATAL means to this client. */
  onServerFatal(server: Server): "replay" | "downgrade" | "keep" {
    if (this.#replay?.role === "replica" && !server.dataForwarded) return "replay";
    if (this.#survives(server)) return "downgrade";
    // The client has the server's FATAL, as PostgreSQL sends it: nothing follows but the close.
    this.#fatalForwarded = true;
    return "keep";
  }

  /** A server's FATAL went to the client unchanged: its connection ends without another word. */
  #fatalForwarded = false;

  /** Outside a transaction (and unpinned) a lost server is simply replaced. */
  #survives(server: Server): boolean {
    return !this.#sessionMode && !this.session.pinned && server.txStatus === TxStatus.Idle &&
      server.copy === CopyState.None;
  }

  /** Part of {@linkcode ServerLink}: the server died under this client. */
  serverLost(server: Server, error: Error): void {
    if (this.server !== server) return;
    this.server = null;
    this.state = "idle";
    if (this.closed) return;
    const replay = this.#replay;
    this.#replay = null;
    const syncFailed = error instanceof SettingsSyncError;
    if (
      replay && !server.dataForwarded && !this.session.pinned && this.cluster &&
      (syncFailed ? !this.#syncRetried : replay.role === "replica")
    ) {
      if (syncFailed) {
        // The server skipped the request: it runs on another server, with the settings applied.
        this.#syncRetried = true;
        log.info(`client ${this.id}: running the request on another server`);
      } else {
        // A read lost before any of its answer went out: run it again on another host.
        this.cluster.banPool(server.owner as Pool, `server lost: ${error.message}`);
        log.info(
          `client ${this.id}: ${server.label} lost before answering a read; running it on another host`,
        );
      }
      this.#replaying = this.#rerun(replay, server.answered).catch((e) => {
        log.warn(
          `client ${this.id}: re-running a read failed: ${errorMessage(e)}`,
        );
      }).finally(() => {
        this.#replaying = null;
      });
      return;
    }
    const fields: ErrorFields = syncFailed
      ? {
        ...error.fields,
        severity: "ERROR",
        message:
          `pgdog could not apply this session's settings on a server: ${error.fields.message}`,
        detail: "The request did not run.",
      }
      : {
        severity: "ERROR",
        code: SqlState.ConnectionFailure,
        message: `server connection lost: ${error.message}`,
        detail:
          `${server.address.host}:${server.address.port} closed the connection while this client used it`,
      };
    log.warn(`client ${this.id}: ${server.label} lost: ${error.message}`);
    if (syncFailed && this.#syncRetried) {
      // Two servers in a row refused the session's settings: no server can take this session.
      this.terminate({ ...fields, severity: "FATAL" });
      return;
    }
    if (this.#fatalForwarded) {
      this.writer.flush().catch(() => {}).finally(() => this.#teardown());
      return;
    }
    if (!this.#survives(server)) {
      // A transaction or session state is gone with the server: the client must start over.
      this.terminate({ ...fields, severity: "FATAL" });
      return;
    }
    const b = new MessageBuilder(128);
    for (let i = 0; i < server.pendingReady; i++) {
      // The request being answered may already have its error (the server's own FATAL).
      if (i > 0 || !server.errorForwarded) appendError(b, fields);
      b.bytes(readyForQuery(TxStatus.Idle));
    }
    if (server.openRequest) {
      appendError(b, fields);
      this.#skipUntilSync = true;
    }
    this.writer.enqueue(b.view());
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
    this.#waitAbort?.abort(new ClientGoneError());
    const server = this.server;
    this.server = null;
    if (server && this.pool) {
      server.detach();
      // Until the read-back has answered, settings or advisory locks the client left are unknown:
      // reset everything rather than hand them to someone else.
      const unknownState = this.#pinnedThisHold || this.session.pinned ||
        this.session.needsReadBack ||
        this.#readBackPending;
      const resetSql = this.#sessionMode ? "DISCARD ALL" : unknownState ? PIN_CLEANUP : null;
      this.pool.release(server, { resetSql });
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

/** A read-back failed: keep asking next time (settings unknown). */
const FORGET_SCAN: SessionScan = {
  settings: [],
  resets: [],
  unknownSetting: true,
  resetAll: false,
  discardAll: false,
  advisoryLocks: true,
  tempObjects: true,
  creates: false,
  tempRelease: false,
  listen: false,
  sqlPrepared: false,
  prepareOrExecute: false,
  deallocations: [],
  pgdogSettings: [],
  statements: 0,
};

/** A server lost while pgdog ran its own statement on it. */
function lost(e: unknown): ErrorFields {
  return {
    severity: "ERROR",
    code: SqlState.ConnectionFailure,
    message: `server connection lost: ${errorMessage(e)}`,
  };
}

/** Flush: asks the server for the answers it holds back until Sync. */
const FLUSH_MESSAGE = Uint8Array.of(Msg.Flush, 0, 0, 0, 4);

/** Ends a COPY FROM STDIN that reached several shards (the statement was not recognized). */
const COPY_ACROSS_SHARDS = copyFail("COPY FROM STDIN on several shards is not supported by pgdog");

function isConnectionReset(e: unknown): boolean {
  return e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe ||
    e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted;
}
