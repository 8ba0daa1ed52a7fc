/**
 * A client connection's login, within client_login_timeout: the startup phase and authentication
 * (see logIn), then the client set up for its database (its cluster, pooler mode, routing, the
 * session parameters it starts with) or for the admin database, told it is in, and registered
 * with the proxy for cancel requests.
 *
 * @module
 */

import {
  appendBackendKeyData,
  appendParameterStatus,
  AUTH_OK,
  type ErrorFields,
  MessageBuilder,
  readyForQuery,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { closeQuietly } from "../net/stream.ts";
import { ClientFacingError, type Pool } from "../backend/pool.ts";
import type { Cluster } from "../backend/databases.ts";
import { ServerConnectError } from "../backend/connect.ts";
import { parseRole, type Role } from "../router/route.ts";
import type { ShardingConfig } from "../router/shard.ts";
import { log } from "../log.ts";
import type { AuthIo } from "./auth.ts";
import { logIn, loginParameters } from "./login.ts";
import { adminGreeting } from "./admin_session.ts";
import { sessionParamsFromStartup, startupOption } from "./params.ts";
import { SessionState } from "./session.ts";
import type { ReportedParameters } from "./reported_parameters.ts";
import type { ClientHost } from "./client_host.ts";

/** The client's own fields login reads and sets. */
export interface LoggingInClient extends AuthIo {
  readonly id: number;
  readonly secret: number;
  readonly addr: string;
  readonly closed: boolean;
  user: string;
  database: string;
  cluster: Cluster | null;
  pool: Pool | null;
  session: SessionState;
  state: "login" | "idle" | "waiting" | "active";
}

/** The client's request-handling state login sets up (see ClientView). */
export interface LoginParts {
  sessionMode: boolean;
  renaming: boolean;
  sharding: ShardingConfig | null;
  routing: boolean;
  startupRole: Role | null;
  /** What the client is told of reported parameters (login's values first). */
  readonly reported: ReportedParameters;
}

/** How a login ended. */
export interface LoginOutcome {
  /** Logged in to the admin database, or to a database (null: neither). */
  as: "admin" | "database" | null;
  /** The client may go on (false as well when client_login_timeout struck, or it left). */
  ok: boolean;
}

/**
 * Logs the client in within client_login_timeout (past it, the client is told and its connection
 * closed). Throws what ends the connection otherwise (see endingError).
 */
export async function logInClient(
  client: LoggingInClient,
  options: {
    host: ClientHost;
    parts: LoginParts;
    /** Tells the client a FATAL error. */
    fatal: (fields: ErrorFields) => Promise<void>;
  },
): Promise<LoginOutcome> {
  const host = options.host;
  const outcome: LoginOutcome = { as: null, ok: false };
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    options.fatal({
      severity: "FATAL",
      code: SqlState.ProtocolViolation,
      message:
        `login not completed within client_login_timeout (${host.settings.client_login_timeout} ms)`,
    }).finally(() => closeQuietly(client.conn));
  }, host.settings.client_login_timeout);
  try {
    const ok = await loginSteps(client, options, outcome);
    outcome.ok = ok && !timedOut && !client.closed;
    return outcome;
  } catch (e) {
    if (timedOut) return outcome;
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

async function loginSteps(
  client: LoggingInClient,
  options: { host: ClientHost; parts: LoginParts; fatal: (fields: ErrorFields) => Promise<void> },
  outcome: LoginOutcome,
): Promise<boolean> {
  const { host, parts } = options;
  const result = await logIn(client, {
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
  client.user = result.user;
  client.database = result.database;
  if (result.cluster === null) {
    outcome.as = "admin";
    client.session = new SessionState(sessionParamsFromStartup(result.startup));
    await client.writer.write(adminGreeting({
      applicationName: result.startup.get("application_name") ?? "",
      pid: client.id,
      secret: client.secret,
    }));
    client.state = "idle";
    host.register(client);
    log.info(
      `client ${client.id} (${client.addr}) logged in to the admin database as ${client.user}`,
    );
    return true;
  }
  client.cluster = result.cluster;
  client.pool = result.cluster.loginPool();
  parts.sessionMode = result.cluster.poolerMode === "session";
  parts.renaming = !parts.sessionMode && host.settings.prepared_statements === "extended";
  const parser = host.routing.query_parser;
  parts.sharding = result.cluster.sharding;
  parts.routing = parser === "on" || (parser === "auto" && result.cluster.hasReplicas) ||
    parts.sharding !== null;
  parts.startupRole = parseRole(
    result.startup.get("pgdog.role") ?? startupOption(result.startup, "pgdog.role"),
  );
  client.session = new SessionState(sessionParamsFromStartup(result.startup));
  let reported: Array<[string, string]>;
  try {
    reported = await loginParameters(client.pool!, client.session.params);
  } catch (e) {
    const fields = e instanceof ClientFacingError || e instanceof ServerConnectError
      ? e.fields
      : { severity: "FATAL", code: SqlState.InternalError, message: String(e) };
    await options.fatal({ ...fields, severity: "FATAL" });
    return false;
  }
  if (client.closed) return false;
  const b = new MessageBuilder(512);
  b.bytes(AUTH_OK);
  for (const [name, value] of reported) {
    appendParameterStatus(b, name, value);
    parts.reported.login(name, value);
  }
  appendBackendKeyData(b, client.id, client.secret);
  b.bytes(readyForQuery(TxStatus.Idle));
  await client.writer.write(b.view());
  client.state = "idle";
  host.register(client);
  outcome.as = "database";
  const line =
    `client ${client.id} (${client.addr}) logged in as ${client.user}/${client.database}` +
    (result.tls ? " over TLS" : "");
  if (host.settings.log_connections) log.info(line);
  else log.debug(line);
  return true;
}
