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
  /**
   * Event loops (threads) serving clients, sharing the port; each has its own pools with a share
   * of every pool_size and min_pool_size.
   */
  workers: number;
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
  /** Largest Query or Parse message (with its 5-byte header) before `query_size_limit_action`. */
  query_size_limit?: number;
  /** What a Query or Parse over `query_size_limit` gets: a logged warning, or refused. */
  query_size_limit_action: "warn" | "block";
  /** When queries are parsed: auto (the database has replicas or shards), on, off. */
  query_parser: "auto" | "on" | "off";
  /** Queries that would run on several shards are refused (58000). */
  cross_shard_disabled: boolean;
  /** A COMMIT of a transaction that wrote on several shards runs two-phase commit. */
  two_phase_commit: boolean;
  /** Single statements writing on several shards use two-phase commit (unset: `two_phase_commit`). */
  two_phase_commit_auto?: boolean;
  /** Folder of the two-phase commit log (unset: no crash recovery). */
  two_phase_commit_wal_dir?: string;
  /** Bytes of one log file before the next is started. */
  two_phase_commit_wal_segment_size: number;
  /** Decisions within this long share one fsync (0: each its own). */
  two_phase_commit_wal_fsync_interval: number;
  /** How often finished log files are deleted. */
  two_phase_commit_wal_checkpoint_interval: number;
  /** Resharding: the COPY format rows travel in. */
  resharding_copy_format: "binary" | "text";
  /** Resharding: tables copied at once per source shard. */
  resharding_parallel_copies: number;
  /** Resharding: attempts at one table's copy. */
  resharding_copy_retry_max_attempts: number;
  /** Resharding: wait before a table copy's first retry (doubles, capped at 32×). */
  resharding_copy_retry_min_delay: number;
  /** Resharding: change stream reconnections before the task fails (0: forever). */
  resharding_replication_retry_max_attempts: number;
  /** Resharding: wait before the change stream's first reconnection (doubles, capped at 32×). */
  resharding_replication_retry_min_delay: number;
  /** Cutover: lag in bytes under which traffic stops. */
  cutover_traffic_stop_threshold: number;
  /** Cutover: lag in bytes at which the swap happens. */
  cutover_replication_lag_threshold: number;
  /** Cutover: no replicated transaction for this long also allows the swap. */
  cutover_last_transaction_delay: number;
  /** Cutover: longest wait with traffic stopped. */
  cutover_timeout: number;
  /** Cutover: what happens at cutover_timeout. */
  cutover_timeout_action: "abort" | "cutover";
  /** Cutover: write the swapped configuration to the files (with backups). */
  cutover_save_config: boolean;
  /** Bytes of rows one cross-shard query may hold to merge; past it that query fails (53200). */
  cross_shard_buffer_limit: number;
  /** EXPLAIN of a cross-shard query shows every shard's plan and pgdog's merge steps. */
  expanded_explain: boolean;
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
  /** Most verbose log level printed. */
  log_level: "error" | "warn" | "info" | "debug";
  /** Log line format. */
  log_format: "text" | "json";
  /** Log client logins. */
  log_connections: boolean;
  /** Log client disconnections. */
  log_disconnections: boolean;
  /** OpenMetrics port (unset: off). */
  openmetrics_port?: number;
  /** Prefix of metric names. */
  openmetrics_namespace: string;
  /** HTTP health endpoint port (unset: off). */
  healthcheck_port?: number;
  /** Period of SHOW STATS averages (ms). */
  stats_period: number;
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
  /** Refuse this user's queries that would run on several shards; overrides `[general]`'s. */
  cross_shard_disabled?: boolean;
  /** Two-phase commit for this user's transactions; overrides `[general]`'s. */
  two_phase_commit?: boolean;
  /** Two-phase commit for this user's single statements; overrides `[general]`'s. */
  two_phase_commit_auto?: boolean;
  /** Resharding connects as this user (it needs REPLICATION on the source). */
  schema_admin?: boolean;
}

/** What a rewrite setting does with a write it applies to. */
export type RewriteMode = "error" | "rewrite" | "ignore";

/** `[rewrite]`: how writes that span shards are rewritten. */
export interface RewriteConfig {
  /** The rewrites are on; off, `split_inserts` and `shard_key` act as `error`. */
  enabled: boolean;
  /** A multi-row INSERT whose rows belong to several shards. */
  split_inserts: RewriteMode;
  /** An UPDATE that changes a row's sharding key. */
  shard_key: RewriteMode;
  /** now(), random(), gen_random_uuid()... in a write sent to several shards. */
  non_deterministic_functions: "ignore" | "rewrite";
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

/**
 * The type of a sharding column, which decides how its values are hashed and compared:
 * `bigint` (also smallint and integer columns), `varchar` (any text type) or `uuid`.
 */
export type ShardingDataType = "bigint" | "varchar" | "uuid";

/**
 * How a sharding key is turned into a shard number when no mapping rule decides: `postgres`
 * hashes it like PostgreSQL's `PARTITION BY HASH`; `plugin:<name>` (kept as written) is reserved
 * for hashers provided by plugins.
 */
export type ShardingHasher = "postgres" | `plugin:${string}`;

/**
 * A sharding key value in a mapping rule, already checked against the table's data type:
 * a `bigint` (a 64-bit signed integer) for `bigint` columns, the string itself for `varchar`
 * columns, and the UUID in lower-case canonical form (`8-4-4-4-12` hex digits) for `uuid`
 * columns.
 */
export type ShardKeyValue = bigint | string;

/** A list rule: these exact values go to `shard` (like `PARTITION BY LIST`). */
export interface ShardMappingList {
  /** The rule's kind. */
  kind: "list";
  /** The values, each listed once across all of a table's list rules. */
  values: ShardKeyValue[];
  /** The shard, from 0 to the database's shard count - 1. */
  shard: number;
}

/**
 * A range rule: values from `start` (inclusive) to `end` (exclusive) go to `shard` (like
 * `PARTITION BY RANGE`). A missing bound leaves that side open; at least one is set, and when
 * both are, `start < end`. Integers compare as numbers; `varchar` and `uuid` values compare as
 * strings, by Unicode code point (the byte order of their UTF-8 form, not a collation), which for
 * the canonical lower-case UUID form is the order of the UUIDs.
 */
export interface ShardMappingRange {
  /** The rule's kind. */
  kind: "range";
  /** Lowest value in the range; unset: no lower bound. */
  start?: ShardKeyValue;
  /** First value past the range; unset: no upper bound. */
  end?: ShardKeyValue;
  /** The shard, from 0 to the database's shard count - 1. */
  shard: number;
}

/** The default rule: values no list or range rule matches go to `shard` (at most one per table). */
export interface ShardMappingDefault {
  /** The rule's kind. */
  kind: "default";
  /** The shard, from 0 to the database's shard count - 1. */
  shard: number;
}

/**
 * One rule of a sharded table's `mapping`. Rules are checked lists first, then ranges in their
 * order (the first that matches wins), then the default; a value that none matches goes to every
 * shard, as in PgDog.
 */
export type ShardMapping = ShardMappingList | ShardMappingRange | ShardMappingDefault;

/** One `[[sharded_tables]]` entry: a column whose value picks the shard of a row. */
export interface ShardedTableConfig {
  /** The `[[databases]]` name this table belongs to. */
  database: string;
  /** The table; unset: every table that has `column`. */
  name?: string;
  /** The table's schema; unset: any schema. */
  schema?: string;
  /** The sharding column. */
  column: string;
  /** Type of the column's values (default `bigint`). */
  data_type: ShardingDataType;
  /** How values that no mapping rule matches are hashed (default `postgres`). */
  hasher: ShardingHasher;
  /** PgDog's marker for the anchor table of foreign keys; accepted, not used yet. */
  primary: boolean;
  /**
   * Explicit value-to-shard rules: the entry's `[[sharded_tables.mapping]]` rules in file order,
   * then the matching top-level `[[sharded_mappings]]` rules in file order. Empty: hash only.
   */
  mapping: ShardMapping[];
}

/** One `[[sharded_schemas]]` entry: the tables of a schema live on one shard (or on all). */
export interface ShardedSchemaConfig {
  /** The `[[databases]]` name. */
  database: string;
  /** The schema; unset: the default shard for every schema that is not listed. */
  name?: string;
  /** The schema's shard; 0 and unused when `all` is true. */
  shard: number;
  /** The schema lives on every shard (PgDog's `all`). */
  all: boolean;
}

/** One `[[omnisharded_tables]]` entry: tables with the same content on every shard. */
export interface OmniTableConfig {
  /** The `[[databases]]` name. */
  database: string;
  /** Table names as written, each `table` or `schema.table`. */
  tables: string[];
  /** Send a client's queries on these tables to the same shard every time (default false). */
  sticky: boolean;
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
  /** `[rewrite]` of pgdog.toml. */
  rewrite: RewriteConfig;
  /** `[[sharded_tables]]` of pgdog.toml, with their mapping rules. */
  sharded_tables: ShardedTableConfig[];
  /** `[[sharded_schemas]]` of pgdog.toml. */
  sharded_schemas: ShardedSchemaConfig[];
  /** `[[omnisharded_tables]]` of pgdog.toml. */
  omnisharded_tables: OmniTableConfig[];
  /** `[[plugins]]` of pgdog.toml, in order. */
  plugins: PluginConfig[];
}

/** What a plugin's sandbox may do besides reading the plugin's own folder. */
export interface PluginPermissions {
  /** Paths it may read. */
  read: string[];
  /** Paths it may write. */
  write: string[];
  /** Hosts (`host` or `host:port`) it may connect to. */
  net: string[];
  /** Environment variables it may read. */
  env: string[];
  /**
   * Hosts (`host` or `host:port`) it may import modules from, besides Deno's defaults (jsr.io,
   * deno.land, esm.sh, ...) and, for a module given by URL, the module's own host.
   */
  import: string[];
  /** System information (hostname, load average). */
  sys: boolean;
}

/** `[[plugins]]`: one routing plugin. */
export interface PluginConfig {
  /** Its name, in logs, errors and `hasher = "plugin:<name>"`. */
  name: string;
  /** The module: a local path or any specifier Deno imports. */
  path: string;
  /** What `init` receives: a table, or the path of a TOML file holding one. */
  config?: Record<string, unknown> | string;
  /** What the sandbox may do; unset: nothing. */
  permissions?: PluginPermissions;
  /** Its own process (default) or a Worker. */
  isolation: "process" | "worker";
  /** Milliseconds one call may take. */
  timeout: number;
  /** A failed call: pgdog's own decision (`fallback`) or an error for the client. */
  on_error: "fallback" | "error";
  /** Heap limit of the plugin's process, in MiB. */
  memory_mb: number;
  /** Route answers kept for a plugin that declares `cacheRoute`; 0 keeps none. */
  cache_size: number;
}

/**
 * A mapping rule as written: `kind` may be left out (`values`: a list, `start`/`end`: a range,
 * neither: the default), and integers may be numbers.
 */
export interface PartialShardMapping {
  /** `list`, `range` or `default`; inferred when left out. */
  kind?: ShardMapping["kind"];
  /** The values of a list rule. */
  values?: Array<ShardKeyValue | number>;
  /** Inclusive lower bound of a range rule. */
  start?: ShardKeyValue | number;
  /** Exclusive upper bound of a range rule. */
  end?: ShardKeyValue | number;
  /** The shard. */
  shard: number;
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
  /** Rewrites of writes that span shards. */
  rewrite?: Partial<RewriteConfig>;
  /** Sharded tables; `database` and `column` are required. */
  sharded_tables?: Array<
    & Partial<Omit<ShardedTableConfig, "mapping">>
    & { database: string; column: string; mapping?: PartialShardMapping[] }
  >;
  /** Mapping rules outside their table, matched by `database`, `column`, `table` and `schema`. */
  sharded_mappings?: Array<
    PartialShardMapping & { database: string; column: string; table?: string; schema?: string }
  >;
  /** Schema-based sharding; `database` is required, and `shard` unless `all` is true. */
  sharded_schemas?: Array<Partial<ShardedSchemaConfig> & { database: string }>;
  /** Tables with the same content on every shard. */
  omnisharded_tables?: Array<Partial<OmniTableConfig> & { database: string; tables: string[] }>;
}
