import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { ConfigError, loadConfig, type LoadedConfig, resolveConfig } from "./load.ts";
import type { Config } from "./types.ts";

interface Files {
  pgdog?: string;
  users?: string;
}

/** Writes the files (a missing one is not written) to a temp dir, loads them and cleans up. */
async function load(
  files: Files,
  databaseUrls?: string[],
): Promise<{ result?: LoadedConfig; error?: ConfigError }> {
  const dir = await Deno.makeTempDir({ prefix: "pgdog_config_test_" });
  try {
    if (files.pgdog !== undefined) await Deno.writeTextFile(`${dir}/pgdog.toml`, files.pgdog);
    if (files.users !== undefined) await Deno.writeTextFile(`${dir}/users.toml`, files.users);
    const strip = (lines: string[]): string[] =>
      lines.map((line) => line.replaceAll(`${dir}/`, ""));
    try {
      const result = await loadConfig(
        { config: `${dir}/pgdog.toml`, users: `${dir}/users.toml` },
        { databaseUrls },
      );
      return { result: { ...result, warnings: strip(result.warnings) } };
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      return { error: new ConfigError(strip(error.problems), strip(error.warnings)) };
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const ONE_DATABASE = '[[databases]]\nname = "shop"\nhost = "127.0.0.1"\n';
const ONE_USER = '[[users]]\nname = "bob"\ndatabase = "shop"\npassword = "pw"\n';

const DEFAULT_REWRITE = {
  enabled: false,
  split_inserts: "error",
  shard_key: "error",
  non_deterministic_functions: "ignore",
} as const;

const DEFAULT_GENERAL = {
  host: "0.0.0.0",
  port: 6432,
  workers: 1,
  default_pool_size: 10,
  min_pool_size: 1,
  pooler_mode: "transaction",
  auth_type: "scram",
  checkout_timeout: 5000,
  connect_timeout: 5000,
  idle_timeout: 60000,
  server_lifetime: 86400000,
  client_login_timeout: 60000,
  shutdown_timeout: 60000,
  rollback_timeout: 5000,
  query_timeout: 0,
  client_idle_timeout: 0,
  client_idle_in_transaction_timeout: 0,
  prepared_statements: "extended",
  prepared_statements_limit: 500,
  max_message_size: 67108864,
  query_size_limit_action: "warn",
  query_parser: "auto",
  cross_shard_disabled: false,
  cross_shard_buffer_limit: 134217728,
  two_phase_commit: false,
  two_phase_commit_wal_segment_size: 16777216,
  two_phase_commit_wal_fsync_interval: 0,
  two_phase_commit_wal_checkpoint_interval: 15000,
  resharding_copy_format: "binary",
  resharding_parallel_copies: 1,
  resharding_copy_retry_max_attempts: 5,
  resharding_copy_retry_min_delay: 1000,
  resharding_replication_retry_max_attempts: 5,
  resharding_replication_retry_min_delay: 1000,
  cutover_traffic_stop_threshold: 1000000,
  cutover_replication_lag_threshold: 0,
  cutover_last_transaction_delay: 1000,
  cutover_timeout: 30000,
  cutover_timeout_action: "abort",
  cutover_save_config: false,
  expanded_explain: false,
  query_cache_limit: 1000,
  read_write_strategy: "conservative",
  read_write_split: "include_primary",
  load_balancing_strategy: "random",
  healthcheck_interval: 30000,
  idle_healthcheck_interval: 30000,
  idle_healthcheck_delay: 5000,
  stats_period: 15000,
  log_level: "info",
  log_format: "text",
  log_connections: true,
  log_disconnections: true,
  openmetrics_namespace: "",
  healthcheck_timeout: 5000,
  ban_timeout: 300000,
  ban_replica_lag: 0,
  ban_replica_lag_bytes: 0,
  lsn_check_interval: 5000,
  lsn_check_timeout: 5000,
  lsn_check_delay: 0,
  tls_client_required: false,
  tls_verify: "prefer",
} as const;

interface BadCase {
  name: string;
  pgdog?: string;
  users?: string;
  urls?: string[];
  problems: string[];
}

const BAD_CASES: BadCase[] = [
  {
    name: "two-phase commit and [rewrite] keys",
    pgdog: [
      "[general]", //                          1
      'two_phase_commit = "yes"', //           2
      "two_phase_commit_wal_segment_size = 1", // 3
      "[rewrite]", //                          4
      'split_inserts = "split"', //            5
      "shard_key = true", //                   6
      'non_deterministic_functions = "error"', // 7
      ONE_DATABASE,
    ].join("\n"),
    users: ONE_USER,
    problems: [
      'pgdog.toml:2: [general] two_phase_commit: expected true or false, got "yes"',
      "pgdog.toml:3: [general] two_phase_commit_wal_segment_size: expected an integer >= 4096, " +
      "got 1",
      'pgdog.toml:5: [rewrite] split_inserts: "split" is not allowed; expected one of error, ' +
      "rewrite, ignore",
      "pgdog.toml:6: [rewrite] shard_key: expected one of error, rewrite, ignore, got true",
      'pgdog.toml:7: [rewrite] non_deterministic_functions: "error" is not allowed; expected ' +
      "one of ignore, rewrite",
    ],
  },
  {
    name: "wrong types and values in [general]",
    pgdog: [
      "[general]", //                       1
      'port = "64x"', //                    2
      "host = 5", //                        3
      'pooler_mode = "statement"', //       4
      "prot = 1", //                        5
      "min_pool_size = -1", //              6
      "default_pool_size = 0", //           7
      'auth_type = "md6"', //               8
      "idle_timeout = 1.5", //              9
      "connect_timeout = 100.0", //         10
      ONE_DATABASE,
    ].join("\n"),
    users: ONE_USER,
    problems: [
      'pgdog.toml:2: [general] port: expected an integer from 0 to 65535, got "64x"',
      "pgdog.toml:3: [general] host: expected a string, got 5",
      'pgdog.toml:4: [general] pooler_mode: "statement" is not allowed; expected one of ' +
      "transaction, session",
      'pgdog.toml:5: [general] prot: unknown key "prot" (did you mean "port"?)',
      "pgdog.toml:6: [general] min_pool_size: expected an integer >= 0, got -1",
      "pgdog.toml:7: [general] default_pool_size: expected an integer >= 1, got 0",
      'pgdog.toml:8: [general] auth_type: "md6" is not allowed; expected one of scram, md5, ' +
      "plain, trust",
      "pgdog.toml:9: [general] idle_timeout: expected an integer >= 0, got 1.5",
      "pgdog.toml:10: [general] connect_timeout: expected an integer >= 0, got 100.0",
    ],
  },
  {
    name: "[[databases]] entries: missing keys, names in labels, bad values",
    pgdog: [
      "[[databases]]", //                   1
      'name = "shop"', //                   2
      "", //                                3
      "[[databases]]", //                   4
      'host = "h"', //                      5
      "port = 0", //                        6
      "", //                                7
      "[[databases]]", //                   8
      'name = "x"', //                      9
      'host = "h"', //                      10
      'role = "leader"', //                 11
      "shard = -1", //                      12
      'hots = "h"', //                      13
      'database_name = ""', //              14
    ].join("\n"),
    users: ONE_USER,
    problems: [
      'pgdog.toml:1: [[databases]] #1 (name "shop") host: missing required key "host"',
      'pgdog.toml:4: [[databases]] #2 name: missing required key "name"',
      "pgdog.toml:6: [[databases]] #2 port: expected an integer from 1 to 65535, got 0",
      'pgdog.toml:11: [[databases]] #3 (name "x") role: "leader" is not allowed; expected one ' +
      "of primary, replica, auto",
      'pgdog.toml:12: [[databases]] #3 (name "x") shard: expected an integer >= 0, got -1',
      'pgdog.toml:13: [[databases]] #3 (name "x") hots: unknown key "hots" (did you mean "host"?)',
      'pgdog.toml:14: [[databases]] #3 (name "x") database_name: expected a non-empty string, ' +
      'got ""',
    ],
  },
  {
    name: "unknown sections and keys outside sections",
    pgdog: [
      "port = 6432", //                     1
      "[genral]", //                        2
      "port = 1", //                        3
      "[[databse]]", //                     4
      "[whatever]", //                      5
      "[[users]]", //                       6
      'name = "a"', //                      7
      "[databases]", //                     8
      'name = "a"', //                      9
      "[[general]]", //                     10
    ].join("\n"),
    users: ONE_USER,
    problems: [
      'pgdog.toml:1: unknown top-level key "port" (did you mean [general] port?)',
      "pgdog.toml:2: unknown section [genral] (did you mean [general]?)",
      "pgdog.toml:4: unknown section [[databse]] (did you mean [[databases]]?)",
      "pgdog.toml:5: unknown section [whatever]",
      "pgdog.toml:6: unknown section [[users]] (it belongs in users.toml)",
      "pgdog.toml:8: [[databases]]: expected an array of tables, got a table",
      "pgdog.toml:10: [general]: expected a table, got an array",
    ],
  },
  {
    name: "TOML syntax errors in both files are both reported",
    pgdog: "[general]\nport = 64x\n",
    users: '[[users]]\nname = "a\n',
    problems: [
      "pgdog.toml:2:10: invalid TOML: illegal character in numeric literal",
      "users.toml:2:10: invalid TOML: control characters are not allowed in strings",
    ],
  },
  {
    name: "problems in both files, in file and line order",
    pgdog: `${ONE_DATABASE}port = "x"\n[general]\nport = -1\n`,
    users: [
      "[[users]]", //                       1
      'name = "bob"', //                    2
      'database = "shop"', //               3
      "pasword = 1", //                     4
      "[[users]]", //                       5
      "name = 7", //                        6
      "[[users]]", //                       7
      'name = "bob"', //                    8
      'database = "shop"', //               9
      "[general]", //                       10
    ].join("\n"),
    problems: [
      'pgdog.toml:4: [[databases]] #1 (name "shop") port: expected an integer from 1 to 65535, ' +
      'got "x"',
      "pgdog.toml:6: [general] port: expected an integer from 0 to 65535, got -1",
      'users.toml:4: [[users]] #1 (name "bob") pasword: unknown key "pasword" (did you mean ' +
      '"password"?)',
      'users.toml:5: [[users]] #2 database: missing required key "database"',
      "users.toml:6: [[users]] #2 name: expected a non-empty string, got 7",
      'users.toml:7: [[users]] #3 (name "bob"): user "bob" of database "shop" is already ' +
      "defined by #1",
      "users.toml:10: unknown section [general] (it belongs in pgdog.toml)",
    ],
  },
  {
    name: "an alias and its key together",
    pgdog: `[general]\ndefault_pool_size = 5\nmax_pool_size = 6\n${ONE_DATABASE}`,
    users: `${ONE_USER}max_pool_size = 1\npool_size = 2\n`,
    problems: [
      'pgdog.toml:3: [general] max_pool_size: "max_pool_size" and "default_pool_size" are the ' +
      "same setting; set only one",
      'users.toml:6: [[users]] #1 (name "bob") pool_size: "pool_size" and "max_pool_size" are ' +
      "the same setting; set only one",
    ],
  },
  {
    name: "array elements that are not tables",
    pgdog: 'databases = [\n  1,\n  { name = "a", host = "h", port = true },\n]\n',
    users: ONE_USER,
    problems: [
      "pgdog.toml:2: [[databases]] #1: expected a table, got 1",
      'pgdog.toml:3: [[databases]] #2 (name "a") port: expected an integer from 1 to 65535, ' +
      "got true",
    ],
  },
  {
    name: "no databases at all",
    pgdog: "[general]\nport = 6000\n",
    users: ONE_USER,
    problems: [
      "no databases configured: add [[databases]] to pgdog.toml or pass --database_url",
    ],
  },
  {
    name: "both files missing",
    problems: [
      "no databases configured: add [[databases]] to pgdog.toml or pass --database_url",
    ],
  },
  {
    name: "bad database URLs come after the files' problems",
    pgdog: "[general]\nport = -1\n",
    urls: ["postgres://u:p@h/d", "postgres//nope", "postgres://h/d?pool_size=x"],
    problems: [
      "pgdog.toml:2: [general] port: expected an integer from 0 to 65535, got -1",
      "--database_url #2: expected postgres://user:password@host:port/database, got " +
      '"postgres//nope"',
      '--database_url #3 pool_size: expected an integer >= 1, got "x"',
    ],
  },
  {
    name: "URLs with the same user and database but different passwords",
    urls: ["postgres://u:a@h1/d", "postgres://u:b@h2/d?role=replica"],
    problems: [
      '--database_url #2: user "u" of database "d" has a different password in ' +
      "--database_url #1",
    ],
  },
];

for (const bad of BAD_CASES) {
  Deno.test(`loadConfig rejects: ${bad.name}`, async () => {
    const { result, error } = await load({ pgdog: bad.pgdog, users: bad.users }, bad.urls);
    equal(result, undefined, "expected a ConfigError");
    deepEqual(error?.problems, bad.problems);
    equal(error?.message, bad.problems.join("\n"));
  });
}

Deno.test("ConfigError is an Error with problems", () => {
  const error = new ConfigError(["a", "b"]);
  ok(error instanceof Error);
  equal(error.name, "ConfigError");
  equal(error.message, "a\nb");
  deepEqual(error.problems, ["a", "b"]);
  deepEqual(error.warnings, []);
});

Deno.test("loadConfig: defaults everywhere", async () => {
  const { result } = await load({ pgdog: ONE_DATABASE, users: ONE_USER });
  deepEqual(result, {
    config: {
      general: DEFAULT_GENERAL,
      databases: [{
        name: "shop",
        host: "127.0.0.1",
        port: 5432,
        database_name: "shop",
        role: "primary",
        shard: 0,
        lb_weight: 255,
      }],
      users: [{ name: "bob", database: "shop", password: "pw" }],
      admin: { name: "admin", user: "admin" },
      rewrite: DEFAULT_REWRITE,
      sharded_tables: [],
      sharded_schemas: [],
      omnisharded_tables: [],
      plugins: [],
    },
    warnings: [],
  });
});

Deno.test("loadConfig: every key set", async () => {
  const pgdog = `
[general]
host = "127.0.0.1"
port = 0
max_pool_size = 20
min_pool_size = 2
pooler_mode = "session"
auth_type = "md5"
checkout_timeout = 1
connect_timeout = 2
idle_timeout = 3
server_lifetime = 4
client_login_timeout = 5
shutdown_timeout = 6
rollback_timeout = 7
tls_client_required = false
tls_verify = "disabled"

[admin]
name = "pgdog"
user = "root"
password = "adminpw"

[[databases]]
name = "shop"
host = "db1"
port = 5433
database_name = "shop_prod"
user = "srv"
password = "srvpw"
max_pool_size = 8
min_pool_size = 0
pooler_mode = "transaction"
role = "auto"
shard = 1
`;
  const users = `
[[users]]
name = "bob"
database = "shop"
password = "pw"
pool_size = 3
min_pool_size = 1
pooler_mode = "session"
server_user = "bob_srv"
server_password = "bob_srvpw"
`;
  const { result } = await load({ pgdog, users });
  const expected: Config = {
    general: {
      host: "127.0.0.1",
      port: 0,
      workers: 1,
      default_pool_size: 20,
      min_pool_size: 2,
      pooler_mode: "session",
      auth_type: "md5",
      checkout_timeout: 1,
      connect_timeout: 2,
      idle_timeout: 3,
      server_lifetime: 4,
      client_login_timeout: 5,
      query_timeout: 0,
      client_idle_timeout: 0,
      client_idle_in_transaction_timeout: 0,
      prepared_statements: "extended",
      prepared_statements_limit: 500,
      max_message_size: 67108864,
      query_size_limit_action: "warn",
      query_parser: "auto",
      cross_shard_disabled: false,
      cross_shard_buffer_limit: 134217728,
      two_phase_commit: false,
      two_phase_commit_wal_segment_size: 16777216,
      two_phase_commit_wal_fsync_interval: 0,
      two_phase_commit_wal_checkpoint_interval: 15000,
      resharding_copy_format: "binary",
      resharding_parallel_copies: 1,
      resharding_copy_retry_max_attempts: 5,
      resharding_copy_retry_min_delay: 1000,
      resharding_replication_retry_max_attempts: 5,
      resharding_replication_retry_min_delay: 1000,
      cutover_traffic_stop_threshold: 1000000,
      cutover_replication_lag_threshold: 0,
      cutover_last_transaction_delay: 1000,
      cutover_timeout: 30000,
      cutover_timeout_action: "abort",
      cutover_save_config: false,
      expanded_explain: false,
      query_cache_limit: 1000,
      read_write_strategy: "conservative",
      read_write_split: "include_primary",
      load_balancing_strategy: "random",
      healthcheck_interval: 30000,
      idle_healthcheck_interval: 30000,
      idle_healthcheck_delay: 5000,
      stats_period: 15000,
      log_level: "info",
      log_format: "text",
      log_connections: true,
      log_disconnections: true,
      openmetrics_namespace: "",
      healthcheck_timeout: 5000,
      ban_timeout: 300000,
      ban_replica_lag: 0,
      ban_replica_lag_bytes: 0,
      lsn_check_interval: 5000,
      lsn_check_timeout: 5000,
      lsn_check_delay: 0,
      shutdown_timeout: 6,
      rollback_timeout: 7,
      tls_client_required: false,
      tls_verify: "disabled",
    },
    databases: [{
      name: "shop",
      host: "db1",
      port: 5433,
      database_name: "shop_prod",
      user: "srv",
      password: "srvpw",
      pool_size: 8,
      min_pool_size: 0,
      pooler_mode: "transaction",
      role: "auto",
      shard: 1,
      lb_weight: 255,
    }],
    users: [{
      name: "bob",
      database: "shop",
      password: "pw",
      pool_size: 3,
      min_pool_size: 1,
      pooler_mode: "session",
      server_user: "bob_srv",
      server_password: "bob_srvpw",
    }],
    admin: { name: "pgdog", user: "root", password: "adminpw" },
    rewrite: DEFAULT_REWRITE,
    sharded_tables: [],
    sharded_schemas: [],
    omnisharded_tables: [],
    plugins: [],
  };
  deepEqual(result, {
    config: expected,
    warnings: [
      'pgdog.toml:24: database "shop" has a gap in shard numbers: shard 0 is not configured; ' +
      "queries routed to it will fail",
    ],
  });
});

Deno.test("loadConfig: max_pool_size is an alias in every section", async () => {
  const { result } = await load({
    pgdog: `[general]\nmax_pool_size = 4\n${ONE_DATABASE}max_pool_size = 5\n`,
    users: `${ONE_USER}max_pool_size = 6\n`,
  });
  equal(result?.config.general.default_pool_size, 4);
  equal(result?.config.databases[0].pool_size, 5);
  equal(result?.config.users[0].pool_size, 6);
  ok(!("max_pool_size" in (result?.config.users[0] ?? {})));
});

Deno.test("loadConfig: [admin] in users.toml replaces pgdog.toml's", async () => {
  const { result } = await load({
    pgdog: `[admin]\nname = "a1"\npassword = "p1"\n${ONE_DATABASE}`,
    users: `[admin]\nuser = "u2"\n${ONE_USER}`,
  });
  deepEqual(result?.config.admin, { name: "admin", user: "u2" });
  const only = await load({ pgdog: `[admin]\npassword = "p1"\n${ONE_DATABASE}`, users: ONE_USER });
  deepEqual(only.result?.config.admin, { name: "admin", user: "admin", password: "p1" });
});

Deno.test("loadConfig: warnings", async () => {
  const pgdog = [
    "[general]", //                                   1
    "dry_run = true", //                              2
    "dns_ttl = 4", //                                 3
    "", //                                            4
    "[[databases]]", //                               5
    'name = "shop"', //                               6
    'host = "h"', //                                  7
    "statement_timeout = 100", //                     8
    "", //                                            9
    "[[databases]]", //                               10
    'name = "shop"', //                               11
    'host = "h"', //                                  12
    "port = 5432", //                                 13
    "", //                                            14
    "[[databases]]", //                               15
    'name = "lonely"', //                             16
    'host = "h"', //                                  17
    "[[databases]]", //                               18
    'name = "lonely"', //                             19
    'host = "h2"', //                                 20
    "", //                                            21
    "[tcp]", //                                       22
    "keepalive = true", //                            23
    "[[query_parsers]]", //                           24
    'database = "shop"', //                           25
    "[[query_parsers]]", //                           26
    'database = "shop"', //                           27
  ].join("\n");
  const users = [
    ONE_USER.trimEnd(), //                            1-4
    "password_hash = 'x'", //                         5
    "[[users]]", //                                   6
    'name = "eve"', //                                7
    'database = "nowhere"', //                        8
  ].join("\n");
  const { result, error } = await load({ pgdog, users });
  equal(error, undefined);
  deepEqual(result?.warnings, [
    "pgdog.toml:2: [general] dry_run is a PgDog setting this version does not " +
    "support yet; ignored",
    "pgdog.toml:3: [general] dns_ttl is a PgDog setting this version does not support yet; " +
    "ignored",
    'pgdog.toml:8: [[databases]] #1 (name "shop") statement_timeout is a PgDog setting this ' +
    "version does not support yet; ignored",
    'pgdog.toml:10: [[databases]] #2 (name "shop"): duplicate of #1 (same name, host, port, ' +
    "shard and role)",
    'pgdog.toml:15: database "lonely" has no user in users.toml; no pool is created for it',
    "pgdog.toml:22: [tcp] is a PgDog section this version does not support yet; ignored",
    "pgdog.toml:24: [[query_parsers]] is a PgDog section this version does not support yet; " +
    "ignored",
    'users.toml:5: [[users]] #1 (name "bob") password_hash is a PgDog setting this version ' +
    "does not support yet; ignored",
    'users.toml:8: [[users]] #2 (name "eve") database: no database named "nowhere" in ' +
    "pgdog.toml; this user cannot connect",
  ]);
  equal(result?.config.databases.length, 4);
});

Deno.test("loadConfig: missing files are warnings; URLs stand in for the databases", async () => {
  const { result } = await load({}, ["postgres://alice:secret@db:6000/app?role=replica"]);
  deepEqual(result, {
    config: {
      general: DEFAULT_GENERAL,
      databases: [{
        name: "app",
        host: "db",
        port: 6000,
        database_name: "app",
        role: "replica",
        shard: 0,
        lb_weight: 255,
      }],
      users: [{ name: "alice", database: "app", password: "secret" }],
      admin: { name: "admin", user: "admin" },
      rewrite: DEFAULT_REWRITE,
      sharded_tables: [],
      sharded_schemas: [],
      omnisharded_tables: [],
      plugins: [],
    },
    warnings: [
      "pgdog.toml: file not found; using defaults",
      "users.toml: file not found; using defaults",
    ],
  });
});

Deno.test("loadConfig: URLs replace [[databases]] and merge into [[users]]", async () => {
  const { result } = await load(
    {
      pgdog: ONE_DATABASE,
      users: `${ONE_USER}pool_size = 3\n[[users]]\nname = "carol"\ndatabase = "other"\n`,
    },
    [
      "postgres://bob:newpw@primary/shop",
      "postgres://bob:newpw@replica/shop?role=replica",
      "postgresql://dave@h/shop",
    ],
  );
  deepEqual(result?.config.databases.map((database) => [database.host, database.role]), [
    ["primary", "primary"],
    ["replica", "replica"],
    ["h", "primary"],
  ]);
  deepEqual(result?.config.users, [
    { name: "bob", database: "shop", password: "newpw", pool_size: 3 },
    { name: "carol", database: "other" },
    { name: "dave", database: "shop" },
  ]);
  deepEqual(result?.warnings, [
    'users.toml:8: [[users]] #2 (name "carol") database: no database named "other" in ' +
    "--database_url; this user cannot connect",
  ]);
});

Deno.test("loadConfig: a file that cannot be read is a problem", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await rejects(
      loadConfig({ config: dir, users: `${dir}/users.toml` }),
      (error: unknown) => {
        ok(error instanceof ConfigError);
        equal(error.problems.length, 1);
        ok(error.problems[0].startsWith(`${dir}: cannot read the file: `), error.problems[0]);
        deepEqual(error.warnings, [`${dir}/users.toml: file not found; using defaults`]);
        return true;
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadConfig: a byte order mark and CRLF line ends are fine", async () => {
  const { result, error } = await load({
    pgdog: `\uFEFF[general]\r\nport = 7000\r\n${ONE_DATABASE.replaceAll("\n", "\r\n")}`,
    users: ONE_USER,
  });
  equal(error, undefined);
  equal(result?.config.general.port, 7000);
});

Deno.test("resolveConfig: defaults and the same checks, without lines", () => {
  const { config, warnings } = resolveConfig({
    general: { port: 0, max_pool_size: 3 } as never,
    databases: [{ name: "shop", host: "h", pool_size: undefined }],
    users: [{ name: "bob", database: "shop" }],
  });
  deepEqual(config.general, { ...DEFAULT_GENERAL, port: 0, default_pool_size: 3 });
  deepEqual(config.databases, [{
    name: "shop",
    host: "h",
    port: 5432,
    database_name: "shop",
    role: "primary",
    shard: 0,
    lb_weight: 255,
  }]);
  deepEqual(config.admin, { name: "admin", user: "admin" });
  deepEqual(warnings, []);

  throws(
    () =>
      resolveConfig({
        general: { port: 70000, pooler_mode: "statement" as never, prot: 1 } as never,
        databases: [{ name: "shop", host: 5 as never }, { name: "x" } as never],
        users: [{ name: "bob", database: "shop" }, { name: "bob", database: "shop" }],
        extra: {},
      } as never),
    (error: unknown) => {
      ok(error instanceof ConfigError);
      deepEqual(error.problems, [
        "<config object>: [general] port: expected an integer from 0 to 65535, got 70000",
        '<config object>: [general] pooler_mode: "statement" is not allowed; expected one of ' +
        "transaction, session",
        '<config object>: [general] prot: unknown key "prot" (did you mean "port"?)',
        '<config object>: [[databases]] #1 (name "shop") host: expected a non-empty string, got 5',
        '<config object>: [[databases]] #2 (name "x") host: missing required key "host"',
        "<config object>: unknown section [extra]",
        '<config object>: [[users]] #2 (name "bob"): user "bob" of database "shop" is already ' +
        "defined by #1",
      ]);
      return true;
    },
  );
});

Deno.test("resolveConfig: warnings, source label and database URLs", () => {
  const { config, warnings } = resolveConfig(
    { general: { dns_ttl: 2 } as never, users: [] },
    { databaseUrls: ["postgres://u:p@h/d"], source: "startProxy()" },
  );
  deepEqual(config.users, [{ name: "u", database: "d", password: "p" }]);
  deepEqual(warnings, [
    "startProxy(): [general] dns_ttl is a PgDog setting this version does not support yet; " +
    "ignored",
  ]);
  const lonely = resolveConfig({ databases: [{ name: "shop", host: "h" }] });
  deepEqual(lonely.warnings, [
    '<config object>: database "shop" has no user in the users list; no pool is created for it',
  ]);
  throws(() => resolveConfig({}), {
    message: "no databases configured: add [[databases]] to <config object> or pass " +
      "--database_url",
  });
});

Deno.test("loadConfig: query_size_limit and its action; max_message_size's default", async () => {
  const set = await load({
    pgdog: '[general]\nquery_size_limit = 1048576\nquery_size_limit_action = "block"\n' +
      ONE_DATABASE,
    users: ONE_USER,
  });
  equal(set.error, undefined);
  equal(set.result?.config.general.query_size_limit, 1048576);
  equal(set.result?.config.general.query_size_limit_action, "block");
  // Unset: no limit, and "warn" as in PgDog; 64 MiB messages at most.
  const unset = await load({ pgdog: ONE_DATABASE, users: ONE_USER });
  equal(unset.result?.config.general.query_size_limit, undefined);
  equal(unset.result?.config.general.query_size_limit_action, "warn");
  equal(unset.result?.config.general.max_message_size, 64 * 1024 * 1024);
  const bad = await load({
    pgdog: '[general]\nquery_size_limit = 0\nquery_size_limit_action = "drop"\n' + ONE_DATABASE,
    users: ONE_USER,
  });
  deepEqual(bad.error?.problems.map((p) => p.replace(/;.*$/, "")), [
    "pgdog.toml:2: [general] query_size_limit: expected an integer >= 1, got 0",
    'pgdog.toml:3: [general] query_size_limit_action: "drop" is not allowed',
  ]);
  const pointless = await load({
    pgdog: "[general]\nmax_message_size = 4096\nquery_size_limit = 8192\n" + ONE_DATABASE,
    users: ONE_USER,
  });
  deepEqual(pointless.result?.warnings, [
    "pgdog.toml:3: [general] query_size_limit: 8192 is not below max_message_size (4096): a " +
    "larger message closes the connection first (08P01), so query_size_limit_action never " +
    "applies",
  ]);
});
