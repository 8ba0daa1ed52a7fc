/**
 * A client's login: the startup-phase packets (SSLRequest, GSSENCRequest, CancelRequest,
 * StartupMessage), the switch to TLS when the client asks for it and a certificate is configured,
 * the checks PostgreSQL makes on them, and authentication. Ends either with a known user on a
 * known database, or with the connection refused with PostgreSQL's error.
 *
 * @module
 */

import {
  appendError,
  type ErrorFields,
  MessageBuilder,
  Msg,
  StartupCode,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { Cluster, Databases } from "../backend/databases.ts";
import { ClientFacingError, type Pool } from "../backend/pool.ts";
import { markApplied, paramsSignature, paramSyncSql } from "./params.ts";
import type { AdminConfig, AuthType } from "../config/types.ts";
import { errorMessage, log } from "../log.ts";
import { closeQuietly } from "../net/stream.ts";
import { acceptTls, type AcceptTlsOptions } from "../net/tls.ts";
import { SocketWriter } from "../net/writer.ts";
import { authenticateClient, type AuthIo } from "./auth.ts";
import { readStartupPacket } from "./startup.ts";

/** Who logged in. */
export interface LoginResult {
  user: string;
  database: string;
  /** The pools behind the database; null for the admin database. */
  cluster: Cluster | null;
  /** Every startup parameter, as sent. */
  startup: Map<string, string>;
  /** The client switched to TLS. */
  tls: boolean;
}

/** What login needs from the proxy. */
export interface LoginHost {
  readonly databases: Databases;
  readonly authType: AuthType;
  /** The certificate and key offered to clients that ask for TLS; null: TLS is not offered. */
  readonly tls: AcceptTlsOptions | null;
  /** Refuse clients that do not use TLS. */
  readonly tlsRequired: boolean;
  readonly shuttingDown: boolean;
  /** The admin database's name, user and password. */
  readonly admin: AdminConfig;
  cancel(pid: number, secret: number): void;
}

/** Thrown (after the client was told) when a login is refused. */
export class LoginRefused extends Error {
  readonly fields: ErrorFields;
  constructor(fields: ErrorFields) {
    super(fields.message);
    this.name = "LoginRefused";
    this.fields = fields;
  }
}

/** Answer to SSLRequest/GSSENCRequest when encryption is not offered. */
const NO_ENCRYPTION = Uint8Array.of(0x4e);
/** Answer to SSLRequest when TLS is offered: the handshake follows. */
const TLS_OFFERED = Uint8Array.of(0x53);

/**
 * Runs the startup phase and authentication. When the client switches to TLS, `io.conn` and
 * `io.writer` are replaced by the TLS stream and a writer on it. Resolves null when the client
 * left (or only sent a CancelRequest, or its TLS handshake failed); throws
 * {@linkcode LoginRefused} once the client has been sent the reason.
 */
export async function logIn(io: AuthIo, host: LoginHost): Promise<LoginResult | null> {
  const refuse = async (code: string, message: string): Promise<never> => {
    const fields: ErrorFields = { severity: "FATAL", code, message };
    const b = new MessageBuilder(128);
    appendError(b, fields);
    await io.writer.write(b.view()).catch(() => {});
    throw new LoginRefused(fields);
  };
  let startup: Map<string, string> | null = null;
  // PostgreSQL accepts one SSLRequest and one GSSENCRequest, in either order (libpq may send both).
  const asked = { ssl: false, gssenc: false };
  let tls = false;
  while (startup === null) {
    const pkt = await readStartupPacket(io.conn);
    if (pkt === null) return null;
    switch (pkt.kind) {
      case "ssl":
      case "gssenc":
        if (asked[pkt.kind] || tls) {
          // PostgreSQL reads a request it already answered (or any after TLS is up) as a startup
          // packet with an unknown protocol version.
          const code = pkt.kind === "ssl" ? StartupCode.SslRequest : StartupCode.GssEncRequest;
          await refuse(
            SqlState.FeatureNotSupported,
            `unsupported frontend protocol ${code >>> 16}.${code & 0xffff}: ` +
              "server supports 3.0 to 3.0",
          );
        }
        asked[pkt.kind] = true;
        if (pkt.kind === "ssl" && host.tls !== null) {
          await io.writer.write(TLS_OFFERED);
          const raw = io.conn;
          try {
            io.conn = await acceptTls(raw, host.tls);
          } catch (e) {
            // Nothing can be said to a client whose handshake failed.
            log.info(`client TLS handshake failed: ${errorMessage(e)}`);
            closeQuietly(raw);
            return null;
          }
          io.writer = new SocketWriter(io.conn);
          tls = true;
          continue;
        }
        // The client continues in plain text or gives up.
        await io.writer.write(NO_ENCRYPTION);
        continue;
      case "cancel":
        host.cancel(pkt.pid, pkt.secret);
        return null;
      case "invalid":
        return await refuse(SqlState.ProtocolViolation, pkt.reason);
      case "drop":
        // Like PostgreSQL: logged, and the connection closed without an answer.
        log.info(`client sent a malformed startup packet (${pkt.reason}); closing the connection`);
        return null;
      case "startup":
        if (pkt.major !== 3) {
          await refuse(
            SqlState.FeatureNotSupported,
            `unsupported frontend protocol ${pkt.major}.${pkt.minor}: server supports 3.0 to 3.0`,
          );
        }
        if (pkt.minor > 0 || [...pkt.params.keys()].some((k) => k.startsWith("_pq_."))) {
          await io.writer.write(
            negotiateProtocolVersion([...pkt.params.keys()].filter((k) => k.startsWith("_pq_."))),
          );
        }
        if (!tls && host.tlsRequired) {
          // Like PostgreSQL's hostssl refusal: before anything else about the login.
          await refuse(
            SqlState.InvalidAuthorizationSpecification,
            "pgdog requires TLS (tls_client_required = true): connect with sslmode=require " +
              "or stronger",
          );
        }
        startup = pkt.params;
    }
  }
  const user = startup.get("user");
  if (!user) {
    return await refuse(
      SqlState.InvalidAuthorizationSpecification,
      "no PostgreSQL user name specified in startup packet",
    );
  }
  const database = startup.get("database") || user;
  const replication = startup.get("replication");
  if (replication !== undefined) {
    const mode = parseReplication(replication);
    if (mode === null) {
      await refuse(
        SqlState.InvalidParameterValue,
        `invalid value for parameter "replication": "${replication}"`,
      );
    }
    if (mode) {
      await refuse(
        SqlState.FeatureNotSupported,
        "replication connections are not supported through pgdog",
      );
    }
  }
  if (database === host.admin.name) {
    return await adminLogin(io, { user, startup, tls, host, refuse });
  }
  const method = host.authType;
  if (!host.databases.hasDatabase(database)) {
    // As PostgreSQL: which databases exist is told only to a client that authenticated. Until
    // then the answer (and the exchange before it) is that of a wrong password.
    if (method !== "trust") {
      const password = host.databases.passwordOf(user);
      const outcome = await authenticateClient(io, {
        method,
        user,
        known: password !== undefined,
        password,
      });
      if (!outcome.ok) {
        if (outcome.protocol) await refuse(SqlState.ProtocolViolation, outcome.protocol);
        log.info(`login refused: database "${database}" does not exist (user "${user}")`);
        await refuse(SqlState.InvalidPassword, `password authentication failed for user "${user}"`);
      }
    }
    await refuse(SqlState.InvalidCatalogName, `database "${database}" does not exist`);
  }
  const cluster = host.databases.lookup(user, database);
  const outcome = await authenticateClient(io, {
    method,
    user,
    known: cluster !== undefined,
    password: cluster?.password,
  });
  if (!outcome.ok) {
    if (outcome.protocol) await refuse(SqlState.ProtocolViolation, outcome.protocol);
    if (method === "trust") {
      await refuse(
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
    await refuse(SqlState.InvalidPassword, `password authentication failed for user "${user}"`);
  }
  if (host.shuttingDown) await refuse(SqlState.CannotConnectNow, "pgdog is shutting down");
  return { user, database, cluster: cluster!, startup, tls };
}

/** Login to the admin database: its own user and password, never trust. */
async function adminLogin(
  io: AuthIo,
  options: {
    user: string;
    startup: Map<string, string>;
    tls: boolean;
    host: LoginHost;
    refuse: (code: string, message: string) => Promise<never>;
  },
): Promise<LoginResult> {
  const { user, host, refuse } = options;
  const admin = host.admin;
  if (admin.password === undefined || admin.password === "") {
    return await refuse(
      SqlState.InvalidAuthorizationSpecification,
      `the admin database "${admin.name}" is disabled: set a password in [admin] ` +
        "(pgdog.toml or users.toml) to use it",
    );
  }
  const method = host.authType === "trust" || host.authType === "plain" ? "scram" : host.authType;
  const outcome = await authenticateClient(io, {
    method,
    user,
    known: user === admin.user,
    password: admin.password,
  });
  if (!outcome.ok) {
    if (outcome.protocol) await refuse(SqlState.ProtocolViolation, outcome.protocol);
    await refuse(SqlState.InvalidPassword, `password authentication failed for user "${user}"`);
  }
  return { user, database: admin.name, cluster: null, startup: options.startup, tls: options.tls };
}

/**
 * The startup `replication` value as PostgreSQL reads it: `database`, or a boolean (true, false,
 * yes, no, on, off, 1, 0 and unique prefixes, any case). True for a replication connection, false
 * for a normal one, null when invalid.
 */
function parseReplication(value: string): boolean | null {
  const v = value.toLowerCase();
  if (v === "database" || v === "1" || v === "on") return true;
  if (v === "0" || v === "off" || v === "of") return false;
  if (v.length === 0) return null;
  if ("true".startsWith(v) || "yes".startsWith(v)) return true;
  if ("false".startsWith(v) || "no".startsWith(v)) return false;
  return null;
}

function negotiateProtocolVersion(unrecognized: string[]): Uint8Array {
  const b = new MessageBuilder(64).begin(Msg.NegotiateProtocolVersion).int32(3 << 16).int32(
    unrecognized.length,
  );
  for (const name of unrecognized) b.cstring(name);
  return b.end().build();
}

/** Bounded so a client cannot grow the cache without limit with made-up parameters. */
const LOGIN_CACHE_LIMIT = 256;

/**
 * The ParameterStatus values a client is shown at login: a real server's, after the client's
 * own startup parameters are applied there (which also validates them, as PostgreSQL would).
 */
export async function loginParameters(
  pool: Pool,
  params: Map<string, string>,
): Promise<Array<[string, string]>> {
  const signature = paramsSignature(params);
  const cached = pool.loginParams.get(signature);
  if (cached) return cached;
  const server = pool.tryCheckout() ?? await pool.waitForServer();
  try {
    const sql = paramSyncSql(params, server.applied);
    if (sql !== null) {
      // In a transaction, so that a failure (the client's parameters are invalid) leaves the
      // server exactly as it was.
      const timeoutMs = pool.config.rollback_timeout;
      const result = await server.query(`BEGIN;${sql};COMMIT`, { timeoutMs });
      if (result.error) {
        const rollback = await server.query("ROLLBACK", { timeoutMs });
        if (rollback.error) server.close("ROLLBACK failed after a failed settings sync");
        throw new ClientFacingError(result.error);
      }
      markApplied(server.applied, params);
    }
    const reported = [...server.reported];
    if (pool.loginParams.size >= LOGIN_CACHE_LIMIT) pool.loginParams.clear();
    pool.loginParams.set(signature, reported);
    return reported;
  } finally {
    pool.checkin(server);
  }
}
