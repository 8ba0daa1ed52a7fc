/**
 * What a client needs from the proxy around it (src/proxy.ts implements it): the databases, the
 * settings clients use, the shared caches and routers, and where a client registers for cancel
 * requests.
 *
 * @module
 */

import type { AcceptTlsOptions } from "../net/tls.ts";
import type { Databases } from "../backend/databases.ts";
import type { AuthType } from "../config/types.ts";
import type { QueryRouter } from "../router/mod.ts";
import type { PluginSet } from "../plugin/mod.ts";
import type { AdminHost } from "../admin/mod.ts";
import type { UniqueIdGenerator } from "../sharding/unique_id.ts";
import type { PreparedCache } from "./prepared.ts";

/** A client as the host registers it (the Client; narrow here so this file imports no client). */
export interface HostedClient {
  /** Also the pid in the client's BackendKeyData. */
  readonly id: number;
  readonly secret: number;
}

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
  /** A client finished logging in (the Client itself is passed). */
  register(client: HostedClient): void;
  /** A client left (the Client itself is passed). */
  unregister(client: HostedClient): void;
  cancel(pid: number, secret: number): void;
  /** DDL on `database` passed through pgdog: its column orders are read again everywhere. */
  tablesChanged(database: string): void;
}
