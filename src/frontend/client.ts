/**
 * One client connection: startup, authentication, then the request loop. In transaction mode a
 * server is taken from the pool when a request arrives and given back at the ReadyForQuery that
 * ends the transaction; in session mode it is kept until the client leaves. Requests are framed
 * in the client's read buffer and forwarded as byte ranges, one write per batch.
 *
 * @module
 */

import {
  appendBackendKeyData,
  appendError,
  appendParameterStatus,
  AUTH_OK,
  describeMessageType,
  type ErrorFields,
  MessageBuilder,
  Msg,
  queryMessage,
  readyForQuery,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { MessageBuffer, MessageSizeError } from "../net/message_buffer.ts";
import { type ByteStream, closeQuietly } from "../net/stream.ts";
import { SocketWriter } from "../net/writer.ts";
import type { Server, ServerLink } from "../backend/server.ts";
import { CopyState } from "../backend/server.ts";
import { Action, Expect } from "../backend/response_queue.ts";
import { ClientFacingError, type Pool } from "../backend/pool.ts";
import type { Cluster, Databases } from "../backend/databases.ts";
import { sendCancel, ServerConnectError } from "../backend/connect.ts";
import type { AuthType } from "../config/types.ts";
import { log } from "../log.ts";
import { authenticateClient, ClientGoneError } from "./auth.ts";
import { readStartupPacket } from "./startup.ts";
import {
  markApplied,
  paramsSignature,
  paramSyncSql,
  type SessionParams,
  sessionParamsFromStartup,
} from "./params.ts";

/** Initial size of a client's read buffer; it grows for large messages and shrinks back after. */
const CLIENT_BUFFER_BYTES = 4096;
/** Bounded so a client cannot grow the cache without limit with made-up parameters. */
const LOGIN_CACHE_LIMIT = 256;

/** What a client needs from the proxy around it. */
export interface ClientHost {
  readonly databases: Databases;
  /** Current `[general]` values that clients use. */
  readonly settings: {
    auth_type: AuthType;
    client_login_timeout: number;
    max_message_size: number;
  };
  readonly shuttingDown: boolean;
  register(client: Client): void;
  unregister(client: Client): void;
  cancel(pid: number, secret: number): void;
}

let nextClientPid = 1 + Math.floor(Math.random() * 1000);

/** One client connection. */
export class Client implements ServerLink {
  /** Also the pid in this client's BackendKeyData. */
  readonly id: number;
  readonly secret: number;
  readonly conn: ByteStream;
  readonly writer: SocketWriter;
  readonly rbuf: MessageBuffer;
  readonly addr: string;
  readonly connectedAt: number = Date.now();
  user = "";
  database = "";
  params: SessionParams = new Map();
  cluster: Cluster | null = null;
  pool: Pool | null = null;
  server: Server | null = null;
  /** login | idle | waiting | active */
  state: "login" | "idle" | "waiting" | "active" = "login";
  closed = false;
  queries = 0;
  transactions = 0;
  #host: ClientHost;
  #session = false;
  #skipUntilSync = false;
  #waitAbort: AbortController | null = null;

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
      if (e instanceof MessageSizeError) {
        await this.#fatal({
          severity: "FATAL",
          code: SqlState.ProtocolViolation,
          message: e.message,
        });
      } else if (!(e instanceof ClientGoneError) && !this.closed && !isConnectionReset(e)) {
        log.warn(`client ${this.id} (${this.addr}): ${e instanceof Error ? e.message : e}`);
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

  /** A CancelRequest for this client arrived. */
  cancel(): void {
    const server = this.server;
    if (server && (server.queue.length > 0 || server.copy !== CopyState.None)) {
      sendCancel(server.address, { pid: server.backendPid, secret: server.backendSecret });
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
    let startup: Map<string, string> | null = null;
    // PostgreSQL accepts one SSLRequest and one GSSENCRequest, in either order (libpq may send both).
    const asked = { ssl: false, gssenc: false };
    while (startup === null) {
      const pkt = await readStartupPacket(this.conn);
      if (pkt === null) return false;
      switch (pkt.kind) {
        case "ssl":
        case "gssenc":
          if (asked[pkt.kind]) {
            return this.#fatalFalse(
              SqlState.ProtocolViolation,
              "unexpected second encryption request",
            );
          }
          asked[pkt.kind] = true;
          // No TLS here yet: the client continues in plain text or gives up.
          await this.writer.write(NO_ENCRYPTION);
          continue;
        case "cancel":
          host.cancel(pkt.pid, pkt.secret);
          return false;
        case "invalid":
          return this.#fatalFalse(SqlState.ProtocolViolation, pkt.reason);
        case "startup":
          if (pkt.major !== 3) {
            return this.#fatalFalse(
              SqlState.FeatureNotSupported,
              `unsupported frontend protocol ${pkt.major}.${pkt.minor}: server supports 3.0 to 3.0`,
            );
          }
          if (pkt.minor > 0 || [...pkt.params.keys()].some((k) => k.startsWith("_pq_."))) {
            await this.writer.write(
              negotiateProtocolVersion([...pkt.params.keys()].filter((k) => k.startsWith("_pq_."))),
            );
          }
          startup = pkt.params;
      }
    }
    const user = startup.get("user");
    if (!user) {
      return this.#fatalFalse(
        SqlState.InvalidAuthorizationSpecification,
        "no PostgreSQL user name specified in startup packet",
      );
    }
    const database = startup.get("database") || user;
    this.user = user;
    this.database = database;
    const replication = startup.get("replication");
    if (replication !== undefined) {
      const mode = parseReplication(replication);
      if (mode === null) {
        return this.#fatalFalse(
          SqlState.InvalidParameterValue,
          `invalid value for parameter "replication": "${replication}"`,
        );
      }
      if (mode) {
        return this.#fatalFalse(
          SqlState.FeatureNotSupported,
          "replication connections are not supported through pgdog",
        );
      }
    }
    if (!host.databases.hasDatabase(database)) {
      return this.#fatalFalse(SqlState.InvalidCatalogName, `database "${database}" does not exist`);
    }
    const cluster = host.databases.lookup(user, database);
    const method = host.settings.auth_type;
    const outcome = await authenticateClient(this, {
      method,
      user,
      known: cluster !== undefined,
      password: cluster?.password,
    });
    if (!outcome.ok) {
      if (outcome.protocol) return this.#fatalFalse(SqlState.ProtocolViolation, outcome.protocol);
      if (method === "trust") {
        return this.#fatalFalse(
          SqlState.InvalidAuthorizationSpecification,
          `user "${user}" is not configured for database "${database}" in users.toml`,
        );
      }
      if (cluster && cluster.password === undefined) {
        log.warn(
          `user "${user}" has no password in users.toml; it cannot log in with auth_type = "${method}"`,
        );
      } else if (!cluster) {
        log.info(`login refused: user "${user}" is not configured for database "${database}"`);
      }
      return this.#fatalFalse(
        SqlState.InvalidPassword,
        `password authentication failed for user "${user}"`,
      );
    }
    if (host.shuttingDown) {
      return this.#fatalFalse(SqlState.CannotConnectNow, "pgdog is shutting down");
    }
    this.cluster = cluster!;
    this.pool = cluster!.pool();
    this.#session = cluster!.poolerMode === "session";
    this.params = sessionParamsFromStartup(startup);
    let reported: Array<[string, string]>;
    try {
      reported = await this.#loginParameters();
    } catch (e) {
      const fields = e instanceof ClientFacingError || e instanceof ServerConnectError
        ? e.fields
        : {
          severity: "FATAL",
          code: SqlState.InternalError,
          message: String(e),
        };
      await this.#fatal({ ...fields, severity: "FATAL" });
      return false;
    }
    if (this.closed) return false;
    const b = new MessageBuilder(512);
    b.bytes(AUTH_OK);
    for (const [name, value] of reported) appendParameterStatus(b, name, value);
    appendBackendKeyData(b, this.id, this.secret);
    b.bytes(readyForQuery(TxStatus.Idle));
    await this.writer.write(b.view());
    this.state = "idle";
    host.register(this);
    log.debug(`client ${this.id} (${this.addr}) logged in as ${user}/${database}`);
    return true;
  }

  /**
   * The ParameterStatus values this client is shown at login: a real server's, after the client's
   * own startup parameters are applied there (which also validates them, as PostgreSQL would).
   */
  async #loginParameters(): Promise<Array<[string, string]>> {
    const pool = this.pool!;
    const signature = paramsSignature(this.params);
    const cached = pool.loginParams.get(signature);
    if (cached) return cached;
    const server = pool.tryCheckout() ?? await pool.waitForServer();
    try {
      const sql = paramSyncSql(this.params, server.applied);
      if (sql !== null) {
        const result = await server.query(sql, { timeoutMs: pool.config.rollback_timeout });
        if (result.error) throw new ClientFacingError(result.error);
        markApplied(server.applied, this.params);
      }
      const reported = [...server.reported];
      if (pool.loginParams.size >= LOGIN_CACHE_LIMIT) pool.loginParams.clear();
      pool.loginParams.set(signature, reported);
      return reported;
    } finally {
      pool.checkin(server);
    }
  }

  // ---- requests ------------------------------------------------------------------------------

  async #requestLoop(): Promise<void> {
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
      if (rb.available >= 5 && !(await this.#handleMessages())) return;
      if (this.closed) return;
      if (!(await rb.fill(this.conn))) return;
    }
  }

  /** Handles every complete message in the buffer. Returns false when the client is done. */
  async #handleMessages(): Promise<boolean> {
    const rb = this.rbuf;
    let runStart = -1;
    let runEnd = -1;
    let size: number;
    while ((size = rb.nextMessageSize()) > 0) {
      const p = rb.start;
      const type = rb.buf[p];
      if (type === Msg.Terminate) {
        if (runStart >= 0) await this.#forward(runStart, runEnd);
        return false;
      }
      if (FRONTEND_TYPES[type] === 0) {
        // Forwarding it would make PostgreSQL drop the (shared) server connection.
        if (runStart >= 0) await this.#forward(runStart, runEnd);
        await this.#fatal({
          severity: "FATAL",
          code: SqlState.ProtocolViolation,
          message: `invalid frontend message type ${describeMessageType(type)}`,
        });
        return false;
      }
      if (this.#skipUntilSync) {
        // After an error in an extended-protocol request, everything up to Sync is ignored.
        if (type === Msg.Sync) {
          this.#skipUntilSync = false;
          this.writer.enqueue(readyForQuery(TxStatus.Idle));
        }
        rb.start += size;
        continue;
      }
      if (this.server === null) {
        if (runStart >= 0) throw new Error("internal error: forward run without a server");
        if (type === Msg.Sync) {
          // Nothing outstanding: answer locally instead of taking a server for nothing.
          this.writer.enqueue(readyForQuery(TxStatus.Idle));
          rb.start += size;
          continue;
        }
        if (
          type === Msg.Flush || type === Msg.CopyData || type === Msg.CopyDone ||
          type === Msg.CopyFail
        ) {
          // PostgreSQL ignores these outside COPY; there is nothing to flush without a server.
          rb.start += size;
          continue;
        }
        // Hold the position: acquiring may wait, and nothing else touches the buffer meanwhile.
        const ok = await this.#acquire();
        if (this.closed) return false;
        if (!ok) {
          if (type === Msg.Query || type === Msg.FunctionCall) {
            this.writer.enqueue(readyForQuery(TxStatus.Idle));
          } else this.#skipUntilSync = true;
          rb.start += size;
          continue;
        }
      }
      const server = this.server!;
      if (type === Msg.Query || type === Msg.Execute || type === Msg.FunctionCall) this.queries++;
      expectResponse(server, type, rb.buf[p + 5]);
      if (runStart < 0) runStart = p;
      runEnd = p + size;
      rb.start += size;
    }
    if (runStart >= 0) await this.#forward(runStart, runEnd);
    // Make room for the partial message at the front (and shrink after a large one).
    rb.consume(0);
    if (this.writer.congested) await this.writer.flush();
    else this.writer.flush().catch(() => {});
    return true;
  }

  /** Sends bytes [start, end) of the read buffer to the attached server. */
  async #forward(start: number, end: number): Promise<void> {
    const server = this.server;
    if (!server) return;
    try {
      await server.writer.write(this.rbuf.buf.subarray(start, end));
    } catch (e) {
      // The server's read loop reports the loss to this client (serverLost).
      log.debug(
        `client ${this.id}: write to ${server.label} failed: ${e instanceof Error ? e.message : e}`,
      );
    }
  }

  /** Takes a server from the pool for the next request. False (error already queued) on failure. */
  async #acquire(): Promise<boolean> {
    const pool = this.pool!;
    let server = pool.tryCheckout();
    if (server === null) {
      this.state = "waiting";
      const abort = new AbortController();
      this.#waitAbort = abort;
      try {
        server = await pool.waitForServer({ signal: abort.signal });
      } catch (e) {
        this.state = "idle";
        if (this.closed) return false;
        const fields = e instanceof ClientFacingError || e instanceof ServerConnectError
          ? e.fields
          : {
            severity: "ERROR",
            code: SqlState.InternalError,
            message: String(e),
          };
        this.#queueError({
          ...fields,
          severity: fields.severity === "FATAL" ? "ERROR" : fields.severity,
        });
        return false;
      } finally {
        this.#waitAbort = null;
      }
      if (this.closed) {
        pool.checkin(server);
        return false;
      }
    }
    this.server = server;
    this.state = "active";
    server.attach(this);
    const sql = paramSyncSql(this.params, server.applied);
    if (sql !== null) {
      // Pipelined ahead of the request; its answer is swallowed by the server's reader.
      server.expect(Expect.Query, Action.Swallow);
      server.writer.enqueue(queryMessage(sql));
      markApplied(server.applied, this.params);
    }
    return true;
  }

  // ---- ServerLink ----------------------------------------------------------------------------

  /** Part of {@linkcode ServerLink}: release at the end of each transaction in transaction mode. */
  shouldRelease(server: Server): boolean {
    return !this.#session && server.clean;
  }

  /** Part of {@linkcode ServerLink}. */
  released(_server: Server): void {
    this.server = null;
    this.state = "idle";
    this.transactions++;
  }

  /** Part of {@linkcode ServerLink}: the server died under this client. */
  serverLost(server: Server, error: Error): void {
    if (this.server !== server) return;
    this.server = null;
    this.state = "idle";
    if (this.closed) return;
    const fields: ErrorFields = {
      severity: "ERROR",
      code: SqlState.ConnectionFailure,
      message: `server connection lost: ${error.message}`,
      detail:
        `${server.address.host}:${server.address.port} closed the connection while this client used it`,
    };
    log.warn(`client ${this.id}: ${server.label} lost: ${error.message}`);
    if (this.#session || server.txStatus !== TxStatus.Idle || server.copy !== CopyState.None) {
      // A transaction or session state is gone with the server: the client must start over.
      this.terminate({ ...fields, severity: "FATAL" });
      return;
    }
    for (let i = 0; i < server.pendingReady; i++) {
      this.#queueError(fields);
      this.writer.enqueue(readyForQuery(TxStatus.Idle));
    }
    if (server.openRequest) {
      this.#queueError(fields);
      this.#skipUntilSync = true;
    }
    this.writer.flush().catch(() => {});
  }

  // ---- errors and teardown -------------------------------------------------------------------

  #queueError(fields: ErrorFields): void {
    const b = new MessageBuilder(128);
    appendError(b, fields);
    this.writer.enqueue(b.view());
  }

  async #fatal(fields: ErrorFields): Promise<void> {
    if (this.closed) return;
    this.#queueError(fields);
    try {
      await this.writer.flush();
    } catch {
      // Client already gone.
    }
  }

  async #fatalFalse(code: string, message: string): Promise<false> {
    await this.#fatal({ severity: "FATAL", code, message });
    return false;
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
      this.pool.release(server, { reset: this.#session });
    }
    closeQuietly(this.conn);
    log.debug(`client ${this.id} (${this.addr}) disconnected`);
  }
}

/**
 * Records what the server owes for a client message about to be forwarded. `first` is the first
 * body byte (Describe's 'S'/'P').
 */
function expectResponse(server: Server, type: number, first: number): void {
  if (server.discardUntilSync && type !== Msg.Sync) return; // the server skips it
  switch (type) {
    case Msg.Query:
      server.expect(Expect.Query);
      return;
    case Msg.FunctionCall:
      server.expect(Expect.Function);
      return;
    case Msg.Sync:
      // Ignored by the server during COPY FROM STDIN, until the client ends the copy.
      if (server.copy === CopyState.In && !server.copyEnded) return;
      server.expect(Expect.Sync);
      return;
    case Msg.Parse:
      server.expect(Expect.Parse);
      return;
    case Msg.Bind:
      server.expect(Expect.Bind);
      return;
    case Msg.Describe:
      server.expect(first === 0x53 ? Expect.DescribeStatement : Expect.DescribePortal);
      return;
    case Msg.Execute:
      server.expect(Expect.Execute);
      return;
    case Msg.Close:
      server.expect(Expect.Close);
      return;
    case Msg.CopyDone:
    case Msg.CopyFail:
      if (server.copy === CopyState.In) server.copyEnded = true;
      server.expect(Expect.CopyEnd);
      return;
      // CopyData and Flush owe nothing.
  }
}

/** Message types a client may send once logged in. */
const FRONTEND_TYPES = (() => {
  const t = new Uint8Array(256);
  for (
    const m of [
      Msg.Bind,
      Msg.Close,
      Msg.CopyData,
      Msg.CopyDone,
      Msg.CopyFail,
      Msg.Describe,
      Msg.Execute,
      Msg.Flush,
      Msg.FunctionCall,
      Msg.Parse,
      Msg.Query,
      Msg.Sync,
      Msg.Terminate,
    ]
  ) t[m] = 1;
  return t;
})();

/**
 * The startup `replication` value as PostgreSQL reads it: `database`, or a boolean (true, false,
 * yes, no, on, off, 1, 0 and unique prefixes, any case). True for a replication connection, false
 * for a normal one, null when invalid.
 */
function parseReplication(value: string): boolean | null {
  const v = value.toLowerCase();
  if (v === "database") return true;
  if (v === "1") return true;
  if (v === "0") return false;
  if (v.length === 0) return null;
  if ("true".startsWith(v) || "yes".startsWith(v)) return true;
  if ("false".startsWith(v) || "no".startsWith(v)) return false;
  if (v === "on") return true;
  if (v === "off" || v === "of") return false;
  return null;
}

/** Answer to SSLRequest/GSSENCRequest when encryption is not offered. */
const NO_ENCRYPTION = Uint8Array.of(0x4e);

function negotiateProtocolVersion(unrecognized: string[]): Uint8Array {
  const b = new MessageBuilder(64).begin(Msg.NegotiateProtocolVersion).int32((3 << 16) | 0).int32(
    unrecognized.length,
  );
  for (const name of unrecognized) b.cstring(name);
  return b.end().build();
}

function isConnectionReset(e: unknown): boolean {
  return e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe ||
    e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted;
}
