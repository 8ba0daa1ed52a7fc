/**
 * The configuration model: what `pgdog.toml` and `users.toml` hold once loaded, validated and
 * given their defaults. Key names are PgDog's, in snake_case, so the objects mirror the files and
 * a program can pass the same shape to `startProxy()`. All durations are milliseconds.
 *
 * @module
 */

/** How long a client keeps a server connection. */
export type PoolerMode = "transaction" | "session";

/** How clients prove who they are to the proxy. */
export type AuthType = "scram" | "md5" | "plain" | "trust";

/**
 * How pgdog checks PostgreSQL's certificate: `disabled` never asks for TLS, `prefer` uses it
 * when offered without checking the certificate, `verify_ca` requires it and checks the chain,
 * `verify_full` also checks that the certificate names the host.
 */
export type TlsVerify = "disabled" | "prefer" | "verify_ca" | "verify_full";

/** The role of a host in its database: fixed, or detected from `pg_is_in_recovery()`. */
export type DatabaseRole = "primary" | "replica" | "auto";

/** `[general]`: process-wide settings and the defaults of every pool. */
export interface GeneralConfig {
  /** Address the proxy listens on. */
  host: string;
  /** TCP port the proxy listens on; 0 picks a free port (logged at startup). */
  port: number;
  /** Server connections per pool unless a database or user says otherwise. */
  default_pool_size: number;
  /** Server connections each pool keeps open even when idle. */
  min_pool_size: number;
  /** Default pooling mode. */
  pooler_mode: PoolerMode;
  /** Client authentication method. */
  auth_type: AuthType;
  /** How long a client waits for a server connection before it gets an error. */
  checkout_timeout: number;
  /** How long opening and authenticating a server connection may take. */
  connect_timeout: number;
  /** Idle server connections above `min_pool_size` are closed after this long. */
  idle_timeout: number;
  /** Server connections are closed (when idle) once they are this old. */
  server_lifetime: number;
  /** How long a client may take from connecting to finishing authentication. */
  client_login_timeout: number;
  /** On SIGINT/SIGTERM, how long running transactions may take to finish. */
  shutdown_timeout: number;
  /** How long cleaning a server (drain, rollback, reset) may take before it is closed instead. */
  rollback_timeout: number;
  /** A request still running after this long is cancelled; 0 means no limit. */
  query_timeout: number;
  /** A client idle outside a transaction this long is disconnected; 0 means never. */
  client_idle_timeout: number;
  /** A client idle inside a transaction this long is disconnected (and rolled back); 0 means never. */
  client_idle_in_transaction_timeout: number;
  /** Protocol-level prepared statements in transaction mode: `extended` renames and shares them. */
  prepared_statements: "extended" | "disabled";
  /** Prepared statements kept on each server; the least recently used beyond it are closed. */
  prepared_statements_limit: number;
  /** Largest message a client may send, in bytes; a larger declared length closes that client. */
  max_message_size: number;
  /** When queries are parsed: auto (the database has replicas or shards), on, off. */
  query_parser: "auto" | "on" | "off";
  /** Parsed (normalized) queries kept in the cache. */
  query_cache_limit: number;
  /** conservative: read-write transactions and multi-statement requests go to the primary. */
  read_write_strategy: "conservative" | "aggressive";
  /** Whether the primary also serves reads. */
  read_write_split:
    | "include_primary"
    | "exclude_primary"
    | "include_primary_if_replica_banned"
    | "prefer_primary";
  /** How reads are spread over a shard's hosts. */
  load_balancing_strategy:
    | "random"
    | "round_robin"
    | "least_active_connections"
    | "weighted_round_robin";
  /** A connection idle this long is health-checked before it is handed out. */
  healthcheck_interval: number;
  /** Background health checks of every host, this often; 0 disables them. */
  idle_healthcheck_interval: number;
  /** Delay before the first background health check. */
  idle_healthcheck_delay: number;
  /** How long a health check may take. */
  healthcheck_timeout: number;
  /** How long a failed host stays out of the read rotation (at least). */
  ban_timeout: number;
  /** Replica lag (ms) that takes a replica out of rotation; 0: never. */
  ban_replica_lag: number;
  /** Replica lag (WAL bytes) that takes a replica out of rotation; 0: never. */
  ban_replica_lag_bytes: number;
  /** How often replication positions are checked. */
  lsn_check_interval: number;
  /** How long a replication position check may take. */
  lsn_check_timeout: number;
  /** Delay before the first replication position check. */
  lsn_check_delay: number;
  /** Certificate chain (PEM file) offered to clients; TLS is offered when this and the key are set. */
  tls_certificate?: string;
  /** Private key (PEM file) of `tls_certificate`. */
  tls_private_key?: string;
  /** Refuse clients that do not use TLS. */
  tls_client_required: boolean;
  /** TLS toward PostgreSQL servers and how their certificates are checked. */
  tls_verify: TlsVerify;
  /** CA certificates (PEM file) that server certificates are checked against. */
  tls_server_ca_certificate?: string;
}

/** One `[[databases]]` entry: a PostgreSQL host serving a logical database. */
export interface DatabaseConfig {
  /** The name clients connect to. */
  name: string;
  /** Host name or IP address of the PostgreSQL server. */
  host: string;
  /** Port of the PostgreSQL server (default 5432). */
  port: number;
  /** The database name on the PostgreSQL server; defaults to `name`. */
  database_name: string;
  /** Server login; overrides the user's `server_user`. */
  user?: string;
  /** Server password; overrides the user's `server_password`. */
  password?: string;
  /** Server connections per pool; overrides `[general]` default_pool_size. */
  pool_size?: number;
  /** Idle server connections kept per pool; overrides `[general]` min_pool_size. */
  min_pool_size?: number;
  /** Pooling mode; overrides `[general]` pooler_mode. */
  pooler_mode?: PoolerMode;
  /** Role of this host (default primary). */
  role: DatabaseRole;
  /** Shard number of this host (default 0). */
  shard: number;
  /** Weight for weighted_round_robin (0-255). */
  lb_weight: number;
}

/** One `[[users]]` entry of `users.toml`: who may connect to which database. */
export interface UserConfig {
  /** The user name clients log in with. */
  name: string;
  /** The logical database (a `[[databases]]` name) this user may connect to. */
  database: string;
  /** The password clients must present (and, by default, the server password). */
  password?: string;
  /** Server connections of this user's pools; overrides the database's and `[general]`'s. */
  pool_size?: number;
  /** Idle server connections kept; overrides the database's and `[general]`'s. */
  min_pool_size?: number;
  /** Pooling mode; overrides the database's and `[general]`'s. */
  pooler_mode?: PoolerMode;
  /** Login used on the PostgreSQL server; defaults to `name`. */
  server_user?: string;
  /** Password used on the PostgreSQL server; defaults to `password`. */
  server_password?: string;
}

/** `[admin]`: the admin database's credentials. */
export interface AdminConfig {
  /** Name of the admin database (default `admin`). */
  name: string;
  /** User name for the admin database (default `admin`). */
  user: string;
  /** Without a password the admin database refuses every login. */
  password?: string;
}

/** The whole configuration. */
export interface Config {
  /** `[general]` of pgdog.toml. */
  general: GeneralConfig;
  /** `[[databases]]` of pgdog.toml (or from `--database_url`). */
  databases: DatabaseConfig[];
  /** `[[users]]` of users.toml (plus the users of `--database_url`). */
  users: UserConfig[];
  /** `[admin]` of users.toml, else of pgdog.toml, else the defaults. */
  admin: AdminConfig;
}

/** A configuration where every section and key may be left out; defaults fill the rest. */
export interface PartialConfig {
  /** Process-wide settings; every key has a default. */
  general?: Partial<GeneralConfig>;
  /** Database hosts; `name` and `host` are required. */
  databases?: Array<Partial<DatabaseConfig> & { name: string; host: string }>;
  /** Users; `name` and `database` are required. */
  users?: Array<Partial<UserConfig> & { name: string; database: string }>;
  /** Admin database credentials. */
  admin?: Partial<AdminConfig>;
}
