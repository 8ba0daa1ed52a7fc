/**
 * Opening a server connection: TCP connect, TLS when configured (SSLRequest, then the handshake
 * on `S`), StartupMessage, whatever authentication PostgreSQL asks for (trust, cleartext, md5,
 * SCRAM-SHA-256), then the parameters and backend key it sends until the first ReadyForQuery.
 * Also sending CancelRequests to servers (always in plain text, which PostgreSQL accepts).
 *
 * @module
 */

import {
  AuthCode,
  type ErrorFields,
  MessageBuilder,
  Msg,
  parseErrorFields,
  readCString,
  readInt32,
  sslRequest,
  startupMessage,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { ScramClientSession } from "../protocol/scram.ts";
import { md5PasswordHash } from "../protocol/md5.ts";
import { MessageBuffer } from "../net/message_buffer.ts";
import { type ByteStream, closeQuietly, tuneTcp, writeAll } from "../net/stream.ts";
import { connectTls, type TlsVerifyMode } from "../net/tls.ts";
import { Server, type ServerAddress } from "./server.ts";
import { errorMessage } from "../log.ts";

/** How server connections use TLS (`[general] tls_verify` other than `disabled`). */
export interface ServerTls {
  /** `prefer`: TLS when the server offers it, unverified; the verify modes require it. */
  mode: TlsVerifyMode;
  /** CA certificates (PEM) for the verify modes; the built-in roots when left out. */
  ca?: string;
}

/** Everything needed to log in to a server. */
export interface ServerLogin extends ServerAddress {
  password?: string;
  /** Extra startup parameters. */
  params?: Record<string, string>;
  /** TLS toward the server; plain text when left out. */
  tls?: ServerTls;
}

/** Why a server connection could not be opened; carries an ErrorResponse for the client. */
export class ServerConnectError extends Error {
  /** What the client is told. */
  readonly fields: ErrorFields;
  /** The server itself refused (as opposed to a network failure or timeout). */
  readonly fromServer: boolean;
  constructor(fields: ErrorFields, fromServer: boolean) {
    super(fields.message);
    this.name = "ServerConnectError";
    this.fields = fields;
    this.fromServer = fromServer;
  }
}

/** Opens and logs in a server connection within `timeoutMs`. */
export async function connectServer(
  login: ServerLogin,
  options: { timeoutMs: number },
): Promise<Server> {
  const session = await openServerSession(login, options);
  const server = new Server(session.conn, login, session.leftover);
  server.backendPid = session.pid;
  server.backendSecret = session.secret;
  for (const [k, v] of session.reported) server.reported.set(k, v);
  return server;
}

/** A logged-in server connection, before anything else is sent on it. */
export interface ServerSession {
  conn: ByteStream;
  /** Bytes read after the login's ReadyForQuery. */
  leftover: Uint8Array | undefined;
  pid: number;
  secret: number;
  /** ParameterStatus values the server reported. */
  reported: Map<string, string>;
}

/**
 * Opens and logs in a connection within `timeoutMs` (TLS as `login.tls` says), for callers that
 * speak the protocol themselves (resharding's replication and copy connections).
 */
export async function openServerSession(
  login: ServerLogin,
  options: { timeoutMs: number },
): Promise<ServerSession> {
  const where = `${login.host}:${login.port}`;
  let conn: ByteStream | null = null;
  let timedOut = false;
  const abort = new AbortController();
  const timer = setTimeout(() => {
    timedOut = true;
    abort.abort();
    if (conn) closeQuietly(conn);
  }, options.timeoutMs);
  try {
    const tcp = await Deno.connect({
      hostname: login.host,
      port: login.port,
      signal: abort.signal,
    });
    conn = tcp;
    if (timedOut) throw new Error("timeout");
    tuneTcp(tcp);
    if (login.tls) conn = await negotiateTls(tcp, { login, tls: login.tls });
    return await login_(conn, login);
  } catch (e) {
    if (conn) closeQuietly(conn);
    if (e instanceof ServerConnectError && !timedOut) throw e;
    const reason = timedOut
      ? `timed out after ${options.timeoutMs} ms (connect_timeout)`
      : e instanceof Error
      ? e.message
      : String(e);
    throw new ServerConnectError({
      severity: "FATAL",
      code: SqlState.ConnectionFailure,
      message: `pgdog could not connect to server ${where}: ${reason}`,
    }, false);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Asks the server for TLS and, when it agrees, runs the handshake. Resolves with the stream the
 * login continues on: the TLS stream, or `conn` itself when `prefer` met a server without TLS.
 */
async function negotiateTls(
  conn: Deno.TcpConn,
  options: { login: ServerLogin; tls: ServerTls },
): Promise<ByteStream> {
  const { login, tls } = options;
  const where = `${login.host}:${login.port}`;
  await writeAll(conn, sslRequest());
  // Exactly one byte: anything after 'S' belongs to the handshake.
  const answer = new Uint8Array(1);
  const n = await conn.read(answer);
  if (n === null) throw new Error("server closed the connection after SSLRequest");
  if (answer[0] === 0x4e) {
    if (tls.mode === "prefer") return conn;
    throw new ServerConnectError({
      severity: "FATAL",
      code: SqlState.SqlclientUnableToEstablishSqlconnection,
      message: `pgdog could not connect to server ${where}: the server does not support TLS, ` +
        `but tls_verify = "${tls.mode}" requires it`,
    }, false);
  }
  if (answer[0] === Msg.ErrorResponse) {
    // A postmaster that cannot start a backend says so before reading anything.
    const length = readInt32(await readExactly(conn, 4), 0);
    if (length < 4 || length > 1 << 16) throw new Error("invalid ErrorResponse to SSLRequest");
    const body = await readExactly(conn, length - 4);
    throw new ServerConnectError(parseErrorFields(body, 0, body.length), true);
  }
  if (answer[0] !== 0x53) {
    throw new Error(`unexpected answer to SSLRequest: ${describeByte(answer[0])}`);
  }
  try {
    return await connectTls(conn, { mode: tls.mode, ca: tls.ca, servername: login.host });
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    const reason = (errorMessage(e)) +
      (typeof code === "string" && code.length > 0 ? ` (${code})` : "");
    throw new ServerConnectError({
      severity: "FATAL",
      code: SqlState.SqlclientUnableToEstablishSqlconnection,
      message: `pgdog could not connect to server ${where}: TLS handshake failed ` +
        `(tls_verify = "${tls.mode}"): ${reason}`,
    }, false);
  }
}

async function readExactly(conn: ByteStream, n: number): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  let have = 0;
  while (have < n) {
    const got = await conn.read(buf.subarray(have));
    if (got === null) throw new Error("server closed the connection after SSLRequest");
    have += got;
  }
  return buf;
}

function describeByte(b: number): string {
  return b >= 0x20 && b < 0x7f ? `'${String.fromCharCode(b)}'` : `byte ${b}`;
}

async function login_(conn: ByteStream, login: ServerLogin): Promise<ServerSession> {
  const params: Record<string, string> = {
    user: login.user,
    database: login.database,
    ...login.params,
  };
  await writeAll(conn, startupMessage(params));
  const rb = new MessageBuffer(8192, 1 << 24);
  let scram: ScramClientSession | null = null;
  let pid = 0;
  let secret = 0;
  const reported = new Map<string, string>();
  const out = new MessageBuilder(256);
  for (;;) {
    let size: number;
    while ((size = rb.nextMessageSize()) === 0) {
      if (!(await rb.fill(conn))) throw new Error("server closed the connection during login");
    }
    const buf = rb.buf;
    const p = rb.start;
    const type = buf[p];
    const end = p + size;
    switch (type) {
      case Msg.Authentication: {
        const code = readInt32(buf, p + 5);
        out.reset();
        if (code === AuthCode.Ok) {
          // Nothing to answer.
        } else if (code === AuthCode.CleartextPassword) {
          out.begin(Msg.Password).cstring(requirePassword(login)).end();
        } else if (code === AuthCode.Md5Password) {
          const salt = buf.slice(p + 9, p + 13);
          out.begin(Msg.Password).cstring(md5PasswordHash(login.user, requirePassword(login), salt))
            .end();
        } else if (code === AuthCode.Sasl) {
          const mechanisms: string[] = [];
          let q = p + 9;
          while (q < end && buf[q] !== 0) {
            const [m, next] = readCString(buf, q, end);
            mechanisms.push(m);
            q = next;
          }
          if (!mechanisms.includes("SCRAM-SHA-256")) {
            throw refused(
              login,
              `server offers SASL mechanisms ${
                mechanisms.join(", ")
              }; pgdog supports SCRAM-SHA-256`,
            );
          }
          scram = new ScramClientSession(requirePassword(login));
          const first = new TextEncoder().encode(scram.clientFirst());
          out.begin(Msg.Password).cstring("SCRAM-SHA-256").int32(first.length).bytes(first).end();
        } else if (code === AuthCode.SaslContinue) {
          if (!scram) throw refused(login, "server sent SASLContinue before SASL");
          const serverFirst = new TextDecoder().decode(buf.subarray(p + 9, end));
          const final = await scram.handleServerFirst(serverFirst);
          out.begin(Msg.Password).string(final).end();
        } else if (code === AuthCode.SaslFinal) {
          const serverFinal = new TextDecoder().decode(buf.subarray(p + 9, end));
          if (!scram || !scram.verifyServerFinal(serverFinal)) {
            throw refused(login, "server's SCRAM signature did not verify");
          }
        } else {
          throw refused(
            login,
            `server asks for an unsupported authentication method (code ${code})`,
          );
        }
        if (out.length > 0) await writeAll(conn, out.view());
        break;
      }
      case Msg.ErrorResponse: {
        const fields = parseErrorFields(buf, p + 5, end);
        if (
          fields.code === SqlState.InvalidPassword ||
          fields.code === SqlState.InvalidAuthorizationSpecification
        ) {
          fields.detail =
            `pgdog could not log in to server ${login.host}:${login.port} as "${login.user}"; ` +
            "check the server password in users.toml (server_password or password) or pgdog.toml";
        }
        throw new ServerConnectError(fields, true);
      }
      case Msg.ParameterStatus: {
        const [name, next] = readCString(buf, p + 5, end);
        const [value] = readCString(buf, next, end);
        reported.set(name, value);
        break;
      }
      case Msg.BackendKeyData:
        pid = readInt32(buf, p + 5);
        secret = readInt32(buf, p + 9);
        break;
      case Msg.ReadyForQuery: {
        rb.consume(size);
        const leftover = rb.available > 0 ? rb.buf.slice(rb.start, rb.end) : undefined;
        return { conn, leftover, pid, secret, reported };
      }
      default:
        // NoticeResponse, NegotiateProtocolVersion: nothing to do.
        break;
    }
    rb.consume(size);
  }
}

function requirePassword(login: ServerLogin): string {
  if (login.password === undefined) {
    throw refused(
      login,
      `server asks for a password for "${login.user}" but none is configured ` +
        "(set password or server_password in users.toml, or password in [[databases]])",
    );
  }
  return login.password;
}

function refused(login: ServerLogin, message: string): ServerConnectError {
  return new ServerConnectError({
    severity: "FATAL",
    code: SqlState.SqlclientUnableToEstablishSqlconnection,
    message: `pgdog could not log in to server ${login.host}:${login.port}: ${message}`,
  }, true);
}
