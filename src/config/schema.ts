/**
 * The declarative description of every configuration section and key: type, default, whether it
 * is required, and a one-line description. Validation (`validate.ts`), defaults and the Markdown
 * reference (`renderReference()`) are all driven by these tables, so adding a key is one entry
 * here plus its field in `types.ts`.
 *
 * PgDog has many settings this version does not implement. Their names are listed too
 * (`unsupported` and `UNSUPPORTED_SECTIONS`): a file that sets them still loads, with a warning,
 * so a PgDog configuration can be pointed at this proxy unchanged.
 *
 * @module
 */

import type {
  AdminConfig,
  DatabaseConfig,
  GeneralConfig,
  OmniTableConfig,
  PartialShardMapping,
  PluginConfig,
  RewriteConfig,
  ShardedSchemaConfig,
  ShardedTableConfig,
  UserConfig,
} from "./types.ts";

/** The two configuration files, by their default names. */
export type ConfigFile = "pgdog.toml" | "users.toml";

/** The type of a key's value, and the constraints it is checked against. */
export type ValueType =
  | { kind: "string"; nonEmpty?: boolean }
  | { kind: "integer"; min?: number; max?: number }
  | { kind: "boolean" }
  | {
    kind: "enum";
    /** The allowed values. */
    values: readonly string[];
    /** Also allowed: any value that starts with one of these and goes on (`plugin:<name>`). */
    prefixes?: readonly string[];
    /** PgDog values this version rejects with "not supported" rather than "not allowed". */
    unsupported?: readonly string[];
  }
  | { kind: "string_list" }
  /** A sharding key value: an integer (kept as a bigint) or a string. */
  | { kind: "shard_key" }
  /** A non-empty list of sharding key values. */
  | { kind: "shard_key_list" }
  /** A TOML table (kept as written), or a string: the path of a TOML file holding one. */
  | { kind: "table_or_path" }
  /**
   * A plugin's permissions: `read`, `write`, `net`, `env`, `import` (lists of strings), `sys`
   * (boolean).
   */
  | { kind: "permissions" };

/** A value a key can default to. */
export type DefaultValue = string | number | boolean | readonly string[];

/** One key of a section. `K` narrows `name` so a section's keys can be checked against its type. */
export interface KeySpec<K extends string = string> {
  /** The key as written in TOML (PgDog's name). */
  name: K;
  /** Type and constraints of the value. */
  type: ValueType;
  /** Value used when the key is left out; without one the key stays unset. */
  default?: DefaultValue;
  /** When left out, copy the value of this other key of the same entry (e.g. `database_name`). */
  defaultFrom?: string;
  /** Without the key the entry is invalid. */
  required?: boolean;
  /** Required unless this boolean key of the same entry is true (`shard` unless `all`). */
  requiredUnless?: string;
  /** Other names PgDog accepts for the key (e.g. `max_pool_size`). */
  aliases?: readonly string[];
  /** Unit of an integer value, shown in the reference. */
  unit?: "ms";
  /** One line for the reference. */
  description: string;
}

/** A section: a table (`[general]`) or an array of tables (`[[databases]]`). */
export interface SectionSpec {
  /** Name without brackets; dotted for a nested array (`sharded_tables.mapping`). */
  name: string;
  /** Other names the section may be written with (`sharded_mapping`). */
  aliases?: readonly string[];
  /** `[[name]]` (true) or `[name]` (false). */
  array: boolean;
  /** The files the section may appear in. */
  files: readonly ConfigFile[];
  /** One or two sentences for the reference. */
  description: string;
  /** The keys this version supports. */
  keys: readonly KeySpec[];
  /** PgDog keys of this section that this version ignores with a warning. */
  unsupported: readonly string[];
  /**
   * Arrays of tables nested in each entry, e.g. `[[sharded_tables.mapping]]`: each is keyed in
   * the entry by the last part of its dotted name.
   */
  subsections?: readonly SectionSpec[];
  /** A TOML example for the reference. */
  example?: string;
}

/** A PgDog section that this version ignores with a warning. */
export interface UnsupportedSection {
  /** Name without brackets. */
  name: string;
  /** `[[name]]` (true) or `[name]` (false). */
  array: boolean;
}

// Builders for one-line key entries (internal; the tables below are the interface).
const MAX_PORT = 65535;

function str<K extends string>(
  name: K,
  description: string,
  extra: Partial<KeySpec<K>> = {},
): KeySpec<K> {
  return { name, type: { kind: "string" }, description, ...extra };
}

function int<K extends string>(
  name: K,
  description: string,
  extra: Partial<KeySpec<K>> & { min?: number; max?: number } = {},
): KeySpec<K> {
  const { min, max, ...rest } = extra;
  return { name, type: { kind: "integer", min, max }, description, ...rest };
}

function ms<K extends string>(name: K, defaultValue: number, description: string): KeySpec<K> {
  return {
    name,
    type: { kind: "integer", min: 0 },
    default: defaultValue,
    unit: "ms",
    description,
  };
}

function bool<K extends string>(
  name: K,
  defaultValue: boolean,
  description: string,
): KeySpec<K> {
  return { name, type: { kind: "boolean" }, default: defaultValue, description };
}

function oneOf<K extends string>(
  name: K,
  values: readonly string[],
  description: string,
  extra: Partial<KeySpec<K>> = {},
): KeySpec<K> {
  return { name, type: { kind: "enum", values }, description, ...extra };
}

const POOLER_MODES = ["transaction", "session"] as const;
const AUTH_TYPES = ["scram", "md5", "plain", "trust"] as const;
const ROLES = ["primary", "replica", "auto"] as const;
const PREPARED_MODES = ["extended", "disabled"] as const;
const QUERY_PARSER = ["auto", "on", "off"] as const;
const RW_STRATEGIES = ["conservative", "aggressive"] as const;
const RW_SPLITS = [
  "include_primary",
  "exclude_primary",
  "include_primary_if_replica_banned",
  "prefer_primary",
] as const;
const LB_STRATEGIES = [
  "random",
  "round_robin",
  "least_active_connections",
  "weighted_round_robin",
] as const;
const TLS_VERIFY_MODES = ["disabled", "prefer", "verify_ca", "verify_full"] as const;

const GENERAL_KEYS = [
  str("host", "Address the proxy listens on.", { default: "0.0.0.0" }),
  int("port", "TCP port the proxy listens on; 0 picks a free port (logged at startup).", {
    default: 6432,
    min: 0,
    max: MAX_PORT,
  }),
  int(
    "workers",
    "Event loops (threads) serving clients; each has its own pools with a share of pool_size.",
    { default: 1, min: 1, max: 64 },
  ),
  int("default_pool_size", "Server connections per pool unless a database or user sets one.", {
    default: 10,
    min: 1,
    aliases: ["max_pool_size"],
  }),
  int("min_pool_size", "Server connections each pool keeps open even when idle.", {
    default: 1,
    min: 0,
  }),
  oneOf("pooler_mode", POOLER_MODES, "Default pooling mode.", { default: "transaction" }),
  oneOf("auth_type", AUTH_TYPES, "How clients authenticate to the proxy.", { default: "scram" }),
  ms("checkout_timeout", 5000, "How long a client waits for a server connection."),
  ms("connect_timeout", 5000, "How long opening and authenticating a server connection may take."),
  ms(
    "idle_timeout",
    60000,
    "Idle server connections above min_pool_size close this long after a client last used them.",
  ),
  ms("server_lifetime", 86400000, "Server connections are closed (when idle) at this age."),
  ms("client_login_timeout", 60000, "How long a client may take to finish authentication."),
  ms("shutdown_timeout", 60000, "On SIGINT/SIGTERM, how long transactions may take to finish."),
  ms("rollback_timeout", 5000, "How long cleaning a returned server may take before it is closed."),
  ms("query_timeout", 0, "A request still running after this long is cancelled (0: no limit)."),
  ms(
    "client_idle_timeout",
    0,
    "A client idle outside a transaction this long is disconnected (0: never).",
  ),
  ms(
    "client_idle_in_transaction_timeout",
    0,
    "A client idle inside a transaction this long is disconnected and rolled back (0: never).",
  ),
  oneOf(
    "prepared_statements",
    PREPARED_MODES,
    "Protocol-level prepared statements in transaction mode: extended renames and shares them.",
    { default: "extended" },
  ),
  int(
    "prepared_statements_limit",
    "Prepared statements kept per server; the least recently used are closed.",
    {
      default: 500,
      min: 1,
    },
  ),
  int(
    "max_message_size",
    "Largest protocol message a client may send, in bytes; larger ones close it (64 MiB).",
    {
      default: 67108864,
      min: 1024,
    },
  ),
  int(
    "query_size_limit",
    "Bytes (header included) a Query or Parse may have before query_size_limit_action applies.",
    { min: 1 },
  ),
  oneOf(
    "query_size_limit_action",
    ["warn", "block"],
    "warn: log the query; block: refuse it before reading it (FATAL 54000) and disconnect.",
    { default: "warn" },
  ),
  oneOf(
    "query_parser",
    QUERY_PARSER,
    "Parse queries: auto (when the database has replicas or shards), on, off.",
    {
      default: "auto",
    },
  ),
  bool(
    "cross_shard_disabled",
    false,
    "Queries that would run on several shards (no sharding key) are refused (58000).",
  ),
  int(
    "cross_shard_buffer_limit",
    "Bytes of rows one cross-shard query may hold to merge; past it, that query fails (53200).",
    { default: 134217728, min: 1024 },
  ),
  bool(
    "two_phase_commit",
    false,
    "COMMIT of a transaction that wrote on several shards runs two-phase commit.",
  ),
  {
    name: "two_phase_commit_auto",
    type: { kind: "boolean" },
    description: "Single statements writing on several shards use it too (unset: as " +
      "two_phase_commit).",
  },
  str(
    "two_phase_commit_wal_dir",
    "Folder of the two-phase commit log, replayed at startup (unset: no crash recovery).",
  ),
  int(
    "two_phase_commit_wal_segment_size",
    "Bytes of one two-phase commit log file before a new one is started.",
    { default: 16777216, min: 4096 },
  ),
  ms(
    "two_phase_commit_wal_fsync_interval",
    0,
    "Decisions within this long share one fsync of the log (0: each its own).",
  ),
  ms(
    "two_phase_commit_wal_checkpoint_interval",
    15000,
    "How often finished log files are deleted (0: when a new file starts).",
  ),
  oneOf(
    "resharding_copy_format",
    ["binary", "text"],
    "Resharding: the COPY format rows travel in from the source to the destination shards.",
    { default: "binary" },
  ),
  int(
    "resharding_parallel_copies",
    "Resharding: tables copied at once per source shard.",
    { default: 1, min: 1 },
  ),
  int(
    "resharding_copy_retry_max_attempts",
    "Resharding: attempts at one table's copy (a retry first empties the table on the new shards " +
      "when the failed attempt committed rows there).",
    { default: 5, min: 1 },
  ),
  ms(
    "resharding_copy_retry_min_delay",
    1000,
    "Resharding: wait before a table copy's first retry (doubles, up to 32 times this).",
  ),
  int(
    "resharding_replication_retry_max_attempts",
    "Resharding: reconnections of the change stream after a failure before the task fails " +
      "(0: forever).",
    { default: 5, min: 0 },
  ),
  ms(
    "resharding_replication_retry_min_delay",
    1000,
    "Resharding: wait before the change stream's first reconnection (doubles, up to 32 times).",
  ),
  int(
    "cutover_traffic_stop_threshold",
    "Cutover: replication lag (bytes) under which traffic is stopped (MAINTENANCE ON).",
    { default: 1000000, min: 0 },
  ),
  int(
    "cutover_replication_lag_threshold",
    "Cutover: replication lag (bytes) at which, traffic stopped, the swap happens.",
    { default: 0, min: 0 },
  ),
  ms(
    "cutover_last_transaction_delay",
    1000,
    "Cutover: accepted for PgDog's files; pgdog does not swap on a quiet stream alone but waits " +
      "until the source confirms every change was sent (at once when the source is idle).",
  ),
  ms(
    "cutover_timeout",
    30000,
    "Cutover: longest wait with traffic stopped before cutover_timeout_action.",
  ),
  oneOf(
    "cutover_timeout_action",
    ["abort", "cutover"],
    "Cutover: at cutover_timeout, abort (traffic resumes on the source) or cutover anyway.",
    { default: "abort" },
  ),
  bool(
    "cutover_save_config",
    false,
    "Cutover: write the swapped configuration to pgdog.toml and users.toml (keeping " +
      "backups as .bak.toml); otherwise it lives in memory until the next RELOAD.",
  ),
  bool(
    "expanded_explain",
    false,
    "EXPLAIN across shards shows each shard's plan and pgdog's merge (off: shard 0's plan).",
  ),
  int(
    "query_cache_limit",
    "Parsed queries kept (normalized: literals don't count), least recently used out.",
    {
      default: 1000,
      min: 1,
    },
  ),
  oneOf(
    "read_write_strategy",
    RW_STRATEGIES,
    "conservative: read-write transactions and multi-statement requests go to the primary.",
    { default: "conservative" },
  ),
  oneOf("read_write_split", RW_SPLITS, "Whether the primary serves reads too.", {
    default: "include_primary",
  }),
  oneOf("load_balancing_strategy", LB_STRATEGIES, "How reads are spread over replicas.", {
    default: "random",
  }),
  ms(
    "healthcheck_interval",
    30000,
    "A connection idle this long answers an empty query before it is handed out.",
  ),
  ms(
    "idle_healthcheck_interval",
    30000,
    "Every host answers an empty query this often (0: never).",
  ),
  ms("idle_healthcheck_delay", 5000, "Delay before the first background health check."),
  oneOf(
    "log_level",
    ["error", "warn", "info", "debug"],
    "Most verbose log lines printed (PGDOG_LOG overrides).",
    {
      default: "info",
    },
  ),
  oneOf(
    "log_format",
    ["text", "json"],
    "text: `<time> <LEVEL> <message>`; json: one object per line.",
    {
      default: "text",
    },
  ),
  bool("log_connections", true, "Log each client login (user, database, address)."),
  bool("log_disconnections", true, "Log each client disconnection."),
  int("openmetrics_port", "HTTP port serving OpenMetrics at /metrics (unset: off).", {
    min: 0,
    max: MAX_PORT,
  }),
  str("openmetrics_namespace", "Prefix of every metric name, e.g. `pgdog_`.", { default: "" }),
  int(
    "healthcheck_port",
    "A plain HTTP port on the same host: 200 while any pool is online, 502 otherwise (unset: off).",
    { min: 0, max: MAX_PORT },
  ),
  ms(
    "stats_period",
    15000,
    "The averages of the admin database's SHOW STATS are over this period.",
  ),
  ms("healthcheck_timeout", 5000, "How long a health check may take."),
  ms(
    "ban_timeout",
    300000,
    "A host that failed stays out of the read rotation at least this long.",
  ),
  ms(
    "ban_replica_lag",
    0,
    "A replica lagging this far behind is taken out of rotation (0: never).",
  ),
  int(
    "ban_replica_lag_bytes",
    "A replica this many WAL bytes behind is taken out of rotation (0: never).",
    {
      default: 0,
      min: 0,
    },
  ),
  ms(
    "lsn_check_interval",
    5000,
    "How often replication positions are checked (replicas and role = auto).",
  ),
  ms("lsn_check_timeout", 5000, "How long a replication position check may take."),
  ms("lsn_check_delay", 0, "Delay before the first replication position check."),
  str(
    "tls_certificate",
    "Certificate chain (PEM file) offered to clients; with tls_private_key, TLS is offered.",
  ),
  str("tls_private_key", "Private key (PEM file, unencrypted) of tls_certificate."),
  bool(
    "tls_client_required",
    false,
    "Refuse clients that do not use TLS (needs tls_certificate and tls_private_key).",
  ),
  oneOf(
    "tls_verify",
    TLS_VERIFY_MODES,
    "TLS to servers: disabled, prefer (unverified), verify_ca (chain), verify_full (chain, host).",
    { default: "prefer" },
  ),
  str(
    "tls_server_ca_certificate",
    "CA certificates (PEM file) for verify_ca and verify_full; built-in roots when unset.",
  ),
] satisfies KeySpec<keyof GeneralConfig>[];

const DATABASE_KEYS = [
  str("name", "The database name clients connect to.", {
    required: true,
    type: { kind: "string", nonEmpty: true },
  }),
  str("host", "Host name or IP address of the PostgreSQL server.", {
    required: true,
    type: { kind: "string", nonEmpty: true },
  }),
  int("port", "Port of the PostgreSQL server.", { default: 5432, min: 1, max: MAX_PORT }),
  str("database_name", "Database name on the PostgreSQL server.", {
    defaultFrom: "name",
    type: { kind: "string", nonEmpty: true },
  }),
  str("user", "Server login for every user of this database (overrides server_user)."),
  str("password", "Server password for every user of this database (overrides server_password)."),
  int("pool_size", "Server connections per pool (overrides default_pool_size).", {
    min: 1,
    aliases: ["max_pool_size"],
  }),
  int("min_pool_size", "Idle server connections kept per pool (overrides [general]).", { min: 0 }),
  oneOf("pooler_mode", POOLER_MODES, "Pooling mode of this database (overrides [general])."),
  oneOf("role", ROLES, "primary, replica, or auto (detected with pg_is_in_recovery()).", {
    default: "primary",
  }),
  int("shard", "Shard number of this host.", { default: 0, min: 0 }),
  int("lb_weight", "Weight of this host for weighted_round_robin.", {
    default: 255,
    min: 0,
    max: 255,
  }),
] satisfies KeySpec<keyof DatabaseConfig>[];

const USER_KEYS = [
  str("name", "User name clients log in with.", {
    required: true,
    type: { kind: "string", nonEmpty: true },
  }),
  str("database", "The [[databases]] name this user may connect to.", {
    required: true,
    type: { kind: "string", nonEmpty: true },
  }),
  str("password", "Password clients must present; also the default server password."),
  int("pool_size", "Server connections of this user's pool (overrides the database's).", {
    min: 1,
    aliases: ["max_pool_size"],
  }),
  int("min_pool_size", "Idle server connections kept (overrides the database's).", { min: 0 }),
  oneOf("pooler_mode", POOLER_MODES, "Pooling mode of this user (overrides the database's)."),
  str("server_user", "Login used on the PostgreSQL server; defaults to name."),
  str("server_password", "Password used on the PostgreSQL server; defaults to password."),
  {
    name: "cross_shard_disabled",
    type: { kind: "boolean" },
    description: "Refuse queries for several shards (overrides [general]).",
  },
  {
    name: "two_phase_commit",
    type: { kind: "boolean" },
    description: "Two-phase commit for this user's transactions (overrides [general]).",
  },
  {
    name: "two_phase_commit_auto",
    type: { kind: "boolean" },
    description: "Two-phase commit for this user's single statements (overrides [general]).",
  },
  {
    name: "schema_admin",
    type: { kind: "boolean" },
    description: "Resharding (schema sync, copy, replication) connects as this user; it " +
      "needs the REPLICATION attribute on the source (unset: false).",
  },
] satisfies KeySpec<keyof UserConfig>[];

const REWRITE_MODES = ["error", "rewrite", "ignore"] as const;

const REWRITE_KEYS = [
  bool(
    "enabled",
    false,
    "Turns the rewrites below on; off, split_inserts and shard_key both act as error.",
  ),
  oneOf(
    "split_inserts",
    REWRITE_MODES,
    "A multi-row INSERT whose rows belong to several shards: error refuses it (0A000); " +
      "rewrite sends each shard one INSERT of its rows, atomically; ignore sends it to one " +
      "shard as written (unsafe: rows land on the wrong shard). rewrite also runs INSERT ... " +
      "SELECT into a sharded table (pgdog runs the SELECT and sends each row to its shard).",
    { default: "error" },
  ),
  oneOf(
    "shard_key",
    REWRITE_MODES,
    "An UPDATE that changes a row's sharding key: error refuses it (0A000); rewrite moves " +
      "the row (delete on the old shard, insert on the new one, in one transaction); ignore " +
      "forwards it as written (unsafe: the row stays on a shard its key does not map to).",
    { default: "error" },
  ),
  oneOf(
    "non_deterministic_functions",
    ["ignore", "rewrite"],
    "A write sent to several shards that calls now(), random(), gen_random_uuid() and " +
      "the like: rewrite computes each call once in pgdog so every shard stores the same " +
      "value; ignore lets each shard compute its own.",
    { default: "ignore" },
  ),
] satisfies KeySpec<keyof RewriteConfig>[];

const ADMIN_KEYS = [
  str("name", "Name of the admin database.", { default: "admin" }),
  str("user", "User name for the admin database.", { default: "admin" }),
  str("password", "Admin password; without one the admin database refuses every login."),
] satisfies KeySpec<keyof AdminConfig>[];

// Compile-time completeness: every field of the config types has a key entry.
type Missing<T, S extends readonly { name: string }[]> = Exclude<keyof T, S[number]["name"]>;
const _generalComplete: [Missing<GeneralConfig, typeof GENERAL_KEYS>] extends [never] ? true
  : never = true;
const _databaseComplete: [Missing<DatabaseConfig, typeof DATABASE_KEYS>] extends [never] ? true
  : never = true;
const _userComplete: [Missing<UserConfig, typeof USER_KEYS>] extends [never] ? true : never = true;
const _rewriteComplete: [Missing<RewriteConfig, typeof REWRITE_KEYS>] extends [never] ? true
  : never = true;
const _adminComplete: [Missing<AdminConfig, typeof ADMIN_KEYS>] extends [never] ? true
  : never = true;
const _tableComplete: [
  Missing<Omit<ShardedTableConfig, "mapping">, typeof SHARDED_TABLE_KEYS>,
] extends [never] ? true
  : never = true;
const _ruleComplete: [Missing<PartialShardMapping, typeof MAPPING_RULE_KEYS>] extends [never] ? true
  : never = true;
const _schemaComplete: [Missing<ShardedSchemaConfig, typeof SHARDED_SCHEMA_KEYS>] extends [never]
  ? true
  : never = true;
const _omniComplete: [Missing<OmniTableConfig, typeof OMNI_TABLE_KEYS>] extends [never] ? true
  : never = true;

/** Role-specific pool keys PgDog accepts in `[[databases]]` and `[[users]]`. */
const ROLE_POOL_KEYS = [
  "pool_size_primary",
  "pool_size_replica",
  "min_pool_size_primary",
  "min_pool_size_replica",
  "idle_timeout_primary",
  "idle_timeout_replica",
];

/** `[general]` */
export const GENERAL: SectionSpec = {
  name: "general",
  array: false,
  files: ["pgdog.toml"],
  description: "Process-wide settings and the defaults of every pool.",
  keys: GENERAL_KEYS,
  unsupported: [
    "broadcast_address",
    "broadcast_port",
    "openmetrics_host",
    "dns_ttl",
    "prepared_statements_ttl",
    "prepared_statements_ttl_jitter",
    "server_lifetime_jitter",
    "connect_attempts",
    "connect_attempt_delay",
    "shutdown_termination_timeout",
    "require_healthcheck_on_discovery",
    "query_parser_enabled",
    "query_parser_engine",
    "dry_run",
    "system_catalogs",
    "omnisharded_sticky",
    "load_schema",
    "reload_schema_on_ddl",
    "canonicalize_type_information",
    "sharding_lookup_cache_size",
    "sharding_lookup_timeout",
    "unique_id_min",
    "unique_id_function",
    "passthrough_auth",
    "tls_client_ca_certificate",
    "tls_server_certificate",
    "tls_server_private_key",
    "mirror_queue",
    "mirror_exposure",
    "pub_sub_channel_size",
    "connection_recovery",
    "client_connection_recovery",
    "log_dedup_window",
    "log_dedup_threshold",
    "query_log",
    "query_log_stdout",
    "log_min_duration_parse",
    "log_query_sample_length",
  ],
};

/** `[[databases]]` */
export const DATABASES: SectionSpec = {
  name: "databases",
  array: true,
  files: ["pgdog.toml"],
  description: "One entry per PostgreSQL host. Entries with the same `name` form one database " +
    "(its primary, replicas and shards).",
  keys: DATABASE_KEYS,
  unsupported: [
    "statement_timeout",
    "lock_timeout",
    "idle_timeout",
    "read_only",
    "server_lifetime",
    "server_lifetime_jitter",
    "resharding_only",
    ...ROLE_POOL_KEYS,
  ],
};

const DATA_TYPES = ["bigint", "varchar", "uuid"] as const;
const MAPPING_KINDS = ["list", "range", "default"] as const;

function required<K extends string>(name: K, description: string): KeySpec<K> {
  return { name, type: { kind: "string", nonEmpty: true }, required: true, description };
}

const MAPPING_RULE_KEYS = [
  oneOf("kind", MAPPING_KINDS, "list, range or default; inferred when left out (see above)."),
  {
    name: "values",
    type: { kind: "shard_key_list" },
    description: "A list rule's values: integers (bigint), strings (varchar) or UUID strings.",
  },
  {
    name: "start",
    type: { kind: "shard_key" },
    description: "A range rule's lowest value (inclusive); unset: no lower bound.",
  },
  {
    name: "end",
    type: { kind: "shard_key" },
    description: "A range rule's upper bound (exclusive); unset: no upper bound.",
  },
  int("shard", "Where the rule's values go: 0 to the database's shard count - 1.", {
    required: true,
    min: 0,
  }),
] satisfies KeySpec<keyof PartialShardMapping>[];

const SHARDED_TABLE_KEYS = [
  required("database", "The [[databases]] name the table belongs to."),
  str("name", "The table; unset: every table that has the column."),
  str("schema", "The table's schema; unset: any schema."),
  required("column", "The sharding column."),
  oneOf(
    "data_type",
    DATA_TYPES,
    "bigint (also smallint and integer), varchar (any text) or uuid; PgDog's vector is not supported.",
    { default: "bigint", type: { kind: "enum", values: DATA_TYPES, unsupported: ["vector"] } },
  ),
  oneOf(
    "hasher",
    ["postgres"],
    "How unmapped values pick a shard: PostgreSQL's hash partitioning, or `plugin:<name>`: the " +
      "`shard` hook of that [[plugins]] entry.",
    {
      default: "postgres",
      type: { kind: "enum", values: ["postgres"], prefixes: ["plugin:"], unsupported: ["sha1"] },
    },
  ),
  bool("primary", false, "PgDog's anchor table for foreign keys; accepted, not used yet."),
] satisfies KeySpec<Exclude<keyof ShardedTableConfig, "mapping">>[];

const SHARDED_MAPPING_KEYS = [
  required("database", "The database of the [[sharded_tables]] entry the rule belongs to."),
  required("column", "Its column."),
  str("table", "Its name; unset: every entry with this database and column."),
  str("schema", "Its schema; unset: any."),
  ...MAPPING_RULE_KEYS,
];

const SHARDED_SCHEMA_KEYS = [
  required("database", "The [[databases]] name."),
  str("name", "The schema; unset: the shard of every schema that is not listed."),
  int("shard", "The schema's shard: 0 to the database's shard count - 1.", {
    default: 0,
    min: 0,
    requiredUnless: "all",
  }),
  bool("all", false, "The schema lives on every shard."),
] satisfies KeySpec<keyof ShardedSchemaConfig>[];

const OMNI_TABLE_KEYS = [
  required("database", "The [[databases]] name."),
  {
    name: "tables",
    type: { kind: "string_list" },
    required: true,
    description: "Table names, each table or schema.table.",
  },
  bool("sticky", false, "Send a client's queries on these tables to the same shard every time."),
] satisfies KeySpec<keyof OmniTableConfig>[];

/** `[[users]]` (users.toml) */
export const USERS: SectionSpec = {
  name: "users",
  array: true,
  files: ["users.toml"],
  description: "Who may connect to which database. A pool is created for each user and the " +
    "[[databases]] entries with that name.",
  keys: USER_KEYS,
  unsupported: [
    "databases",
    "all_databases",
    "passwords",
    "password_hash",
    "server_auth",
    "server_iam_region",
    "server_vault_path",
    "vault_refresh_percent",
    "vault_path",
    "identity",
    "tls_client_certificate_required",
    "statement_timeout",
    "lock_timeout",
    "replication_mode",
    "replication_sharding",
    "idle_timeout",
    "read_only",
    "server_lifetime",
    "server_lifetime_jitter",
    ...ROLE_POOL_KEYS,
  ],
};

/** `[admin]` */
export const ADMIN: SectionSpec = {
  name: "admin",
  array: false,
  files: ["pgdog.toml", "users.toml"],
  description: "Credentials of the admin database. An `[admin]` in users.toml replaces the " +
    "one in pgdog.toml as a whole.",
  keys: ADMIN_KEYS,
  unsupported: [],
};

/** `[rewrite]` */
export const REWRITE: SectionSpec = {
  name: "rewrite",
  array: false,
  files: ["pgdog.toml"],
  description: 'Writes pgdog rewrites so they keep every row on its shard (see "Writes ' +
    "across shards\"). Without two_phase_commit a crash between the shards' commits can " +
    "leave part of a rewritten write committed.",
  keys: REWRITE_KEYS,
  unsupported: ["primary_key"],
  example: `[rewrite]
enabled = true
split_inserts = "rewrite"
shard_key = "rewrite"
`,
};

/** `[[sharded_tables.mapping]]` (nested in `[[sharded_tables]]`) */
export const SHARDED_TABLE_MAPPING: SectionSpec = {
  name: "sharded_tables.mapping",
  array: true,
  files: ["pgdog.toml"],
  description: "Explicit rules for the [[sharded_tables]] entry above it; values no rule matches " +
    "are hashed. A rule with `values` is a list, one with `start` and/or `end` a range (start " +
    "inclusive, end exclusive, a missing bound is open), one with neither the default. Lists " +
    "are checked first, then ranges in order, then the default. Values must fit the table's " +
    "`data_type`: integers for bigint, strings for varchar, UUID strings for uuid. varchar and " +
    "uuid ranges compare by Unicode code point (not a collation), which for UUIDs is their order.",
  keys: MAPPING_RULE_KEYS,
  unsupported: [],
  example: `[[sharded_tables]]
database = "prod"
name = "orders"
column = "customer_id"

# customers 1, 2 and 3 live on shard 0
[[sharded_tables.mapping]]
values = [1, 2, 3]
shard = 0

# 1000 <= customer_id < 2000
[[sharded_tables.mapping]]
start = 1000
end = 2000
shard = 1

# everything else
[[sharded_tables.mapping]]
shard = 0
`,
};

/** `[[sharded_tables]]` */
export const SHARDED_TABLES: SectionSpec = {
  name: "sharded_tables",
  array: true,
  files: ["pgdog.toml"],
  description: "The columns whose values pick the shard of a row, in databases with several " +
    "shards (several `shard` numbers in [[databases]], 0 to N-1). A value is hashed like " +
    "PostgreSQL's `PARTITION BY HASH` with N partitions, unless a mapping rule places it.",
  keys: SHARDED_TABLE_KEYS,
  unsupported: ["centroids", "centroids_path", "centroid_probes", "lookup_query", "lookup_result"],
  subsections: [SHARDED_TABLE_MAPPING],
  example: `[[sharded_tables]]
database = "prod"
name = "users"
column = "id"

# any table with a tenant_id column
[[sharded_tables]]
database = "prod"
column = "tenant_id"
data_type = "uuid"
`,
};

/** `[[sharded_mappings]]` (also spelled `[[sharded_mapping]]`) */
export const SHARDED_MAPPINGS: SectionSpec = {
  name: "sharded_mappings",
  aliases: ["sharded_mapping"],
  array: true,
  files: ["pgdog.toml"],
  description: "PgDog's older, deprecated form of [[sharded_tables.mapping]]: the same rules " +
    "outside their table, which they join by `database`, `column` and, when given, `table` and " +
    "`schema`.",
  keys: SHARDED_MAPPING_KEYS,
  unsupported: [],
  example: `[[sharded_mappings]]
database = "prod"
table = "orders"
column = "customer_id"
kind = "range"
start = 2000
shard = 1
`,
};

/** `[[sharded_schemas]]` */
export const SHARDED_SCHEMAS: SectionSpec = {
  name: "sharded_schemas",
  array: true,
  files: ["pgdog.toml"],
  description: "Schema-based sharding: the tables of a schema live on one shard.",
  keys: SHARDED_SCHEMA_KEYS,
  unsupported: [],
  example: `[[sharded_schemas]]
database = "prod"
name = "customer_a"
shard = 0

[[sharded_schemas]]
database = "prod"
name = "customer_b"
shard = 1

# every other schema
[[sharded_schemas]]
database = "prod"
shard = 0
`,
};

/** `[[omnisharded_tables]]` */
export const OMNISHARDED_TABLES: SectionSpec = {
  name: "omnisharded_tables",
  array: true,
  files: ["pgdog.toml"],
  description: "Tables with the same content on every shard: reads go to one shard, writes to " +
    "all. (Tables that are not sharded are treated this way too.)",
  keys: OMNI_TABLE_KEYS,
  unsupported: [],
  example: `[[omnisharded_tables]]
database = "prod"
tables = ["countries", "billing.plans"]
sticky = true
`,
};

const PLUGIN_KEYS = [
  required("name", 'The plugin\'s name, used in logs, errors and `hasher = "plugin:<name>"`.'),
  required(
    "path",
    "The plugin module: a local file (relative to the working directory) or any specifier " +
      "Deno imports (`jsr:`, `npm:`, `https:`).",
  ),
  {
    name: "config",
    type: { kind: "table_or_path" },
    description: "What the plugin's `init` hook receives: an inline table, or the path of a " +
      "TOML file pgdog reads for it; unset: an empty table.",
  },
  {
    name: "permissions",
    type: { kind: "permissions" },
    description: "What the sandbox may do besides reading the plugin's own folder: " +
      "`read`, `write`, `net`, `env`, `import` (lists) and `sys` (boolean); unset: nothing.",
  },
  oneOf(
    "isolation",
    ["process", "worker"],
    "`process`: its own Deno process (killable, memory-capped); `worker`: a Deno Worker (faster, " +
      'for trusted plugins; see "Writing a plugin").',
    { default: "process" },
  ),
  int("timeout", "How long one call may take; then `on_error` applies (a process is restarted).", {
    default: 100,
    min: 1,
    unit: "ms",
  }),
  oneOf(
    "on_error",
    ["fallback", "error"],
    "When a call fails or times out: `fallback` keeps pgdog's own decision (fails open), `error` " +
      "fails the statement (SQLSTATE 58000); a plugin that blocks statements needs `error`.",
    { default: "fallback" },
  ),
  int("memory_mb", "Heap limit of the plugin's process (V8 old space), in MiB.", {
    default: 256,
    min: 16,
  }),
  int(
    "cache_size",
    "How many answers to keep for a plugin that declares `cacheRoute` or `cacheShard`, per hook; " +
      "0: none.",
    { default: 10_000, min: 0 },
  ),
] satisfies KeySpec<keyof PluginConfig>[];

/** `[[plugins]]` */
export const PLUGINS: SectionSpec = {
  name: "plugins",
  array: true,
  files: ["pgdog.toml"],
  description: "Routing plugins written in TypeScript, each in its own sandbox, called in the " +
    'order listed (see "Writing a plugin"). Read at startup and on RELOAD.',
  keys: PLUGIN_KEYS,
  unsupported: [],
  example: `[[plugins]]
name = "guard"
path = "plugins/guard/mod.ts"
timeout = 50
on_error = "error"

[[plugins]]
name = "tenants"
path = "plugins/tenant_router/mod.ts"
config = { tenants = { acme = 0, globex = 1 } }
permissions = { read = ["./data"] }
`,
};

/** Every supported top-level section, in reference order. */
export const SECTIONS: readonly SectionSpec[] = [
  GENERAL,
  DATABASES,
  ADMIN,
  USERS,
  REWRITE,
  SHARDED_TABLES,
  SHARDED_MAPPINGS,
  SHARDED_SCHEMAS,
  OMNISHARDED_TABLES,
  PLUGINS,
];

/** PgDog sections of pgdog.toml that this version ignores with a warning. */
export const UNSUPPORTED_SECTIONS: readonly UnsupportedSection[] = [
  { name: "query_parsers", array: true },
  { name: "multi_tenant", array: false },
  { name: "tcp", array: false },
  { name: "memory", array: false },
  { name: "replication", array: false },
  { name: "mirroring", array: true },
  { name: "replica_lag", array: false },
  { name: "otel", array: false },
  { name: "vault", array: false },
];

/** `[general]` or `[[databases]]`: how a section is written in TOML. */
export function sectionHeader(section: { name: string; array: boolean }): string {
  return section.array ? `[[${section.name}]]` : `[${section.name}]`;
}

/** Finds a top-level section (of any file) by its name or one of its aliases. */
export function findSection(name: string): SectionSpec | undefined {
  return SECTIONS.find((section) => section.name === name || section.aliases?.includes(name));
}

/** The key under which a nested section sits in its parent's entries (`mapping`). */
export function subsectionKey(section: SectionSpec): string {
  return section.name.slice(section.name.lastIndexOf(".") + 1);
}

/** Finds a key of a section by its name or one of its aliases. */
export function findKey(section: SectionSpec, name: string): KeySpec | undefined {
  return section.keys.find((key) => key.name === name || key.aliases?.includes(name));
}

/**
 * Fills in defaults: each key of `section` that `values` lacks gets its `default`, or the value
 * of its `defaultFrom` key. Keys without either stay unset. Returns a new object.
 */
export function withDefaults(
  section: SectionSpec,
  values: Readonly<Record<string, unknown>>,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of section.keys) {
    if (values[key.name] !== undefined) {
      out[key.name] = values[key.name];
    } else if (key.defaultFrom !== undefined && values[key.defaultFrom] !== undefined) {
      out[key.name] = values[key.defaultFrom];
    } else if (key.default !== undefined) {
      out[key.name] = Array.isArray(key.default) ? [...key.default] : key.default;
    }
  }
  return out;
}

/** Describes a value type in words, as used in the reference and in error messages. */
export function describeType(type: ValueType): string {
  switch (type.kind) {
    case "string":
      return type.nonEmpty ? "a non-empty string" : "a string";
    case "boolean":
      return "true or false";
    case "string_list":
      return "a list of strings";
    case "shard_key":
      return "an integer or a string";
    case "shard_key_list":
      return "a non-empty list of integers or strings";
    case "table_or_path":
      return "a table or a file path";
    case "permissions":
      return "a table of read, write, net, env, import (lists of strings) and sys (true or false)";
    case "enum":
      return `one of ${enumChoices(type).join(", ")}`;
    case "integer":
      if (type.min !== undefined && type.max !== undefined) {
        return `an integer from ${type.min} to ${type.max}`;
      }
      if (type.min !== undefined) return `an integer >= ${type.min}`;
      if (type.max !== undefined) return `an integer <= ${type.max}`;
      return "an integer";
  }
}

/** The choices of an enum as shown to people: its values, then `prefix<name>` patterns. */
export function enumChoices(type: Extract<ValueType, { kind: "enum" }>): string[] {
  return [...type.values, ...(type.prefixes ?? []).map((prefix) => `${prefix}<name>`)];
}

function typeCell(key: KeySpec): string {
  const type = key.type;
  switch (type.kind) {
    case "string":
      return "string";
    case "boolean":
      return "boolean";
    case "string_list":
      return "list of strings";
    case "shard_key":
      return "integer or string";
    case "shard_key_list":
      return "list of integers or strings";
    case "table_or_path":
      return "table or string";
    case "permissions":
      return "table";
    case "enum":
      return enumChoices(type).map((value) => `\`${value}\``).join(" | ");
    case "integer": {
      const unit = key.unit ? ` (${key.unit})` : "";
      if (type.min !== undefined && type.max !== undefined) {
        return `integer ${type.min}..${type.max}${unit}`;
      }
      if (type.min !== undefined) return `integer >= ${type.min}${unit}`;
      if (type.max !== undefined) return `integer <= ${type.max}${unit}`;
      return `integer${unit}`;
    }
  }
}

function defaultCell(key: KeySpec, section: SectionSpec): string {
  if (key.required) return "required";
  if (key.requiredUnless) return `required unless \`${key.requiredUnless} = true\``;
  if (key.defaultFrom) return `same as \`${key.defaultFrom}\``;
  if (key.default === undefined) {
    return section === DATABASES || section === USERS ? "inherited" : "unset";
  }
  if (typeof key.default === "string") return `\`"${key.default}"\``;
  if (Array.isArray(key.default)) return `\`${JSON.stringify(key.default)}\``;
  return `\`${key.default}\``;
}

function keyCell(key: KeySpec): string {
  const aliases = key.aliases?.length
    ? ` (alias ${key.aliases.map((alias) => `\`${alias}\``).join(", ")})`
    : "";
  return `\`${key.name}\`${aliases}`;
}

function escapeCell(text: string): string {
  return text.replaceAll("|", "\\|");
}

// The reference is written the way `deno fmt` formats Markdown (prose wrapped at 100 columns,
// table columns padded), so formatting the repository leaves it unchanged.
const WRAP_WIDTH = 100;

/** Splits prose into words, keeping each `code span` whole. */
function words(text: string): string[] {
  const out: string[] = [];
  let current = "";
  let inCode = false;
  for (const c of text) {
    if (c === "`") inCode = !inCode;
    if (c === " " && !inCode) {
      if (current) out.push(current);
      current = "";
    } else {
      current += c;
    }
  }
  if (current) out.push(current);
  return out;
}

/** Wraps a paragraph (or a list item, given its marker) at {@link WRAP_WIDTH} columns. */
function wrap(text: string, marker = ""): string {
  const indent = " ".repeat(marker.length);
  const lines: string[] = [];
  let line = marker;
  for (const word of words(text)) {
    const prefix = lines.length === 0 ? marker : indent;
    if (line === prefix) {
      line += word;
    } else if (line.length + 1 + word.length <= WRAP_WIDTH) {
      line += ` ${word}`;
    } else {
      lines.push(line);
      line = indent + word;
    }
  }
  lines.push(line);
  return lines.join("\n");
}

/** A Markdown table with padded columns. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((cell, i) =>
    Math.max(3, cell.length, ...rows.map((row) => row[i].length))
  );
  const line = (cells: string[]): string =>
    `| ${cells.map((cell, i) => cell.padEnd(widths[i])).join(" | ")} |`;
  return [
    line(header),
    line(widths.map((width) => "-".repeat(width))),
    ...rows.map(line),
  ].join("\n");
}

/**
 * Renders the configuration reference as Markdown from the schema. The README's section between
 * the `config-reference` markers is this output at heading level 2 (a test keeps them equal).
 */
export function renderReference(options?: { headingLevel?: number }): string {
  const h = "#".repeat(options?.headingLevel ?? 1);
  const out: string[] = [];
  out.push(`${h} Configuration reference`);
  out.push("");
  out.push(wrap(
    "pgdog reads two TOML files: `pgdog.toml` (`[general]`, `[[databases]]`, `[admin]` and the " +
      "sharding sections) and `users.toml` (`[[users]]`, optionally `[admin]`). A missing file " +
      "is a warning, and defaults are used. Times are integers in milliseconds.",
  ));
  out.push("");
  out.push(wrap(
    "Pool settings are looked up in the user, then the database, then `[general]`. An unknown " +
      "key or section is an error; a PgDog setting this version does not implement yet is " +
      "ignored with a warning (the lists are at the end).",
  ));
  out.push("");
  out.push(wrap(
    "`--database_url postgres://user:password@host:port/database` (repeatable) replaces every " +
      "`[[databases]]` entry and adds a `[[users]]` entry for the URL's user and password. Query " +
      "parameters `database_name`, `role`, `shard`, `pool_size`, `min_pool_size`, " +
      "`pooler_mode`, `user` and `password` set the database's keys of the same names.",
  ));
  const all = SECTIONS.flatMap((section) => [section, ...(section.subsections ?? [])]);
  for (const section of all) {
    const names = [section.name, ...(section.aliases ?? [])]
      .map((name) => `\`${sectionHeader({ name, array: section.array })}\``)
      .join(" or ");
    out.push("");
    out.push(`${h}# ${names} (${section.files.join(", ")})`);
    out.push("");
    out.push(wrap(section.description));
    out.push("");
    out.push(table(
      ["Key", "Type", "Default", "Description"],
      section.keys.map((key) => [
        keyCell(key),
        escapeCell(typeCell(key)),
        defaultCell(key, section),
        escapeCell(key.description),
      ]),
    ));
    if (section.example !== undefined) {
      out.push("");
      out.push("Example:");
      out.push("");
      out.push("```toml");
      out.push(section.example.trimEnd());
      out.push("```");
    }
  }
  out.push("");
  out.push(`${h}# PgDog settings not supported yet`);
  out.push("");
  out.push("These load with a warning and have no effect.");
  out.push("");
  for (const section of all) {
    if (section.unsupported.length === 0) continue;
    const names = section.unsupported.map((name) => `\`${name}\``).join(", ");
    out.push(wrap(`\`${sectionHeader(section)}\`: ${names}.`, "- "));
  }
  const sections = UNSUPPORTED_SECTIONS.map((section) => `\`${sectionHeader(section)}\``);
  out.push(wrap(`Sections of pgdog.toml: ${sections.join(", ")}.`, "- "));
  out.push("");
  return out.join("\n");
}
