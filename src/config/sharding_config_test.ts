import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { ConfigError, loadConfig, type LoadedConfig, resolveConfig } from "./load.ts";
import { canonicalUuid, compareShardKeys } from "./sharding.ts";
import {
  OMNISHARDED_TABLES,
  SHARDED_MAPPINGS,
  SHARDED_SCHEMAS,
  SHARDED_TABLE_MAPPING,
  SHARDED_TABLES,
} from "./schema.ts";
import type { Config } from "./types.ts";

/** Writes pgdog.toml (and a users.toml for `prod`) to a temp dir and loads them. */
async function load(
  pgdog: string,
  options: { users?: string; databaseUrls?: string[] } = {},
): Promise<{ result?: LoadedConfig; error?: ConfigError }> {
  const dir = await Deno.makeTempDir({ prefix: "pgdog_sharding_test_" });
  try {
    await Deno.writeTextFile(`${dir}/pgdog.toml`, pgdog);
    await Deno.writeTextFile(`${dir}/users.toml`, options.users ?? USERS);
    const strip = (lines: string[]): string[] =>
      lines.map((line) => line.replaceAll(`${dir}/`, ""));
    try {
      const result = await loadConfig(
        { config: `${dir}/pgdog.toml`, users: `${dir}/users.toml` },
        { databaseUrls: options.databaseUrls },
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

/** Numbered lines, so a test can say which line a message points at. */
function lines(...text: string[]): string {
  return text.join("\n") + "\n";
}

const USERS = '[[users]]\nname = "app"\ndatabase = "prod"\n\n[[users]]\nname = "app"\n' +
  'database = "solo"\n';

/** `prod` with shards 0 and 1 (lines 1-7), `solo` with one shard (lines 9-11). */
const DATABASES = lines(
  "[[databases]]", //                   1
  'name = "prod"', //                   2
  'host = "h0"', //                     3
  "[[databases]]", //                   4
  'name = "prod"', //                   5
  'host = "h1"', //                     6
  "shard = 1", //                       7
  "", //                                8
  "[[databases]]", //                   9
  'name = "solo"', //                   10
  'host = "h"', //                      11
);

Deno.test("sharding: every form of every section, as the model", async () => {
  const pgdog = DATABASES + lines(
    "[[sharded_tables]]", //                                            12
    'database = "prod"', //                                             13
    'name = "users"', //                                                14
    'schema = "public"', //                                             15
    'column = "id"', //                                                 16
    "primary = true", //                                                17
    "", //                                                              18
    "[[sharded_tables.mapping]]", //                                    19
    "values = [1, -2, 9223372036854775807]", //                         20
    "shard = 1", //                                                     21
    "", //                                                              22
    "[[sharded_tables.mapping]]", //                                    23
    'kind = "range"', //                                                24
    "start = 100", //                                                   25
    "end = 200", //                                                     26
    "shard = 0", //                                                     27
    "", //                                                              28
    "[[sharded_tables.mapping]]", //                                    29
    "end = -9223372036854775808", //                                    30
    "shard = 1", //                                                     31
    "", //                                                              32
    "[[sharded_tables]]", //                                            33
    'database = "prod"', //                                             34
    'column = "tenant_id"', //                                          35
    'data_type = "uuid"', //                                            36
    'hasher = "plugin:tenants"', //                                     37
    "mapping = [", //                                                   38
    '  { values = ["A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"], shard = 1 },', // 39
    '  { start = "{80000000000000000000000000000000}", shard = 1 },', // 40
    "  { shard = 0 },", //                                              41
    "]", //                                                             42
    "", //                                                              43
    "[[sharded_tables]]", //                                            44
    'database = "prod"', //                                             45
    'name = "regions"', //                                              46
    'column = "code"', //                                               47
    'data_type = "varchar"', //                                         48
    "", //                                                              49
    "[[sharded_mappings]]", //                                          50
    'database = "prod"', //                                             51
    'column = "code"', //                                               52
    'kind = "list"', //                                                 53
    'values = ["eu", "uk"]', //                                         54
    "shard = 0", //                                                     55
    "", //                                                              56
    "[[sharded_mapping]]", //                                           57
    'database = "prod"', //                                             58
    'table = "regions"', //                                             59
    'column = "code"', //                                               60
    'start = "m"', //                                                   61
    "shard = 1", //                                                     62
    "", //                                                              63
    "[[sharded_mapping]]", //                                           64
    'database = "prod"', //                                             65
    'column = "id"', //                                                 66
    'table = "users"', //                                               67
    'schema = "public"', //                                             68
    'kind = "default"', //                                              69
    "shard = 0", //                                                     70
    "", //                                                              71
    "[[sharded_schemas]]", //                                           72
    'database = "prod"', //                                             73
    'name = "customer_a"', //                                           74
    "shard = 1", //                                                     75
    "", //                                                              76
    "[[sharded_schemas]]", //                                           77
    'database = "prod"', //                                             78
    'name = "shared"', //                                               79
    "all = true", //                                                    80
    "", //                                                              81
    "[[sharded_schemas]]", //                                           82
    'database = "prod"', //                                             83
    "shard = 0", //                                                     84
    "", //                                                              85
    "[[omnisharded_tables]]", //                                        86
    'database = "prod"', //                                             87
    'tables = ["countries", "billing.plans"]', //                       88
    "sticky = true", //                                                 89
    "", //                                                              90
    "[[omnisharded_tables]]", //                                        91
    'database = "prod"', //                                             92
    "tables = []", //                                                   93
    "", //                                                              94
    "[[plugins]]", //                                                   95
    'name = "tenants"', //                                              96
    'path = "plugins/tenants.ts"', //                                   97
  );
  const { result, error } = await load(pgdog);
  equal(error, undefined, error?.message);
  const config = result!.config;
  const expected: Pick<Config, "sharded_tables" | "sharded_schemas" | "omnisharded_tables"> = {
    sharded_tables: [
      {
        database: "prod",
        name: "users",
        schema: "public",
        column: "id",
        data_type: "bigint",
        hasher: "postgres",
        primary: true,
        mapping: [
          { kind: "list", values: [1n, -2n, 9223372036854775807n], shard: 1 },
          { kind: "range", start: 100n, end: 200n, shard: 0 },
          { kind: "range", end: -9223372036854775808n, shard: 1 },
          { kind: "default", shard: 0 },
        ],
      },
      {
        database: "prod",
        column: "tenant_id",
        data_type: "uuid",
        hasher: "plugin:tenants",
        primary: false,
        mapping: [
          { kind: "list", values: ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"], shard: 1 },
          { kind: "range", start: "80000000-0000-0000-0000-000000000000", shard: 1 },
          { kind: "default", shard: 0 },
        ],
      },
      {
        database: "prod",
        name: "regions",
        column: "code",
        data_type: "varchar",
        hasher: "postgres",
        primary: false,
        mapping: [
          { kind: "list", values: ["eu", "uk"], shard: 0 },
          { kind: "range", start: "m", shard: 1 },
        ],
      },
    ],
    sharded_schemas: [
      { database: "prod", name: "customer_a", shard: 1, all: false },
      { database: "prod", name: "shared", shard: 0, all: true },
      { database: "prod", shard: 0, all: false },
    ],
    omnisharded_tables: [
      { database: "prod", tables: ["countries", "billing.plans"], sticky: true },
      { database: "prod", tables: [], sticky: false },
    ],
  };
  deepEqual(
    {
      sharded_tables: config.sharded_tables,
      sharded_schemas: config.sharded_schemas,
      omnisharded_tables: config.omnisharded_tables,
    },
    expected,
  );
  deepEqual(result!.warnings, [
    "pgdog.toml:50: [[sharded_mappings]] is deprecated in PgDog; [[sharded_tables.mapping]] " +
    "under the table is the current form",
    "pgdog.toml:57: [[sharded_mapping]] is deprecated in PgDog; [[sharded_tables.mapping]] " +
    "under the table is the current form",
  ]);

  // The model is a valid input too, and gives itself back.
  const again = resolveConfig(config);
  deepEqual(again.config, config);
});

Deno.test("sharding: no sharding sections, empty lists", async () => {
  const { result } = await load(DATABASES);
  deepEqual(result?.config.sharded_tables, []);
  deepEqual(result?.config.sharded_schemas, []);
  deepEqual(result?.config.omnisharded_tables, []);
});

Deno.test("sharding: the reference's examples load together", async () => {
  const examples = [
    SHARDED_TABLES,
    SHARDED_TABLE_MAPPING,
    SHARDED_MAPPINGS,
    SHARDED_SCHEMAS,
    OMNISHARDED_TABLES,
  ].map((section) => section.example);
  ok(examples.every((example) => example !== undefined));
  const { result, error } = await load(DATABASES + examples.join("\n"));
  equal(error, undefined, error?.message);
  deepEqual(
    result?.config.sharded_tables.map((table) => [table.name, table.column, table.mapping.length]),
    [["users", "id", 0], [undefined, "tenant_id", 0], ["orders", "customer_id", 4]],
  );
  equal(result?.warnings.length, 1, result?.warnings.join("\n"));
});

interface BadCase {
  name: string;
  pgdog: string;
  urls?: string[];
  problems: string[];
  warnings?: string[];
}

const BAD_CASES: BadCase[] = [
  {
    name: "[[sharded_tables]]: keys, values and databases",
    pgdog: DATABASES + lines(
      "[[sharded_tables]]", //                        12
      'database = "nope"', //                         13
      'column = "id"', //                             14
      "[[sharded_tables]]", //                        15
      'database = "prod"', //                         16
      'column = "id"', //                             17
      'data_type = "vector"', //                      18
      'hasher = "sha1"', //                           19
      "centroids = [[1.0, 2.0]]", //                  20
      'lookup_query = "SELECT 1"', //                 21
      "[[sharded_tables]]", //                        22
      'database = "prod"', //                         23
      'data_type = "text"', //                        24
      'hasher = "plugin:"', //                        25
      "primary = 1", //                               26
      "mapping = 5", //                               27
      "[[sharded_tables]]", //                        28
      'database = "prod"', //                         29
      'name = "t"', //                                30
      'column = "c"', //                              31
      'colum = "c"', //                               32
      "mapping = [1]", //                             33
    ),
    problems: [
      'pgdog.toml:13: [[sharded_tables]] #1 database: no database named "nope" in pgdog.toml',
      'pgdog.toml:18: [[sharded_tables]] #2 data_type: "vector" is a PgDog value this version ' +
      "does not support; expected one of bigint, varchar, uuid",
      'pgdog.toml:19: [[sharded_tables]] #2 hasher: "sha1" is a PgDog value this version does ' +
      "not support; expected one of postgres, plugin:<name>",
      'pgdog.toml:22: [[sharded_tables]] #3 column: missing required key "column"',
      'pgdog.toml:24: [[sharded_tables]] #3 data_type: "text" is not allowed; expected one of ' +
      "bigint, varchar, uuid",
      'pgdog.toml:25: [[sharded_tables]] #3 hasher: "plugin:" is not allowed; expected one of ' +
      "postgres, plugin:<name>",
      "pgdog.toml:26: [[sharded_tables]] #3 primary: expected true or false, got 1",
      "pgdog.toml:27: [[sharded_tables]] #3 mapping: expected an array of tables, got 5",
      'pgdog.toml:32: [[sharded_tables]] #4 (name "t") colum: unknown key "colum" (did you mean ' +
      '"column"?)',
      'pgdog.toml:33: [[sharded_tables]] #4 (name "t") mapping #1: expected a table, got 1',
    ],
    warnings: [
      "pgdog.toml:20: [[sharded_tables]] #2 centroids is a PgDog setting this version does not " +
      "support yet; ignored",
      "pgdog.toml:21: [[sharded_tables]] #2 lookup_query is a PgDog setting this version does " +
      "not support yet; ignored",
    ],
  },
  {
    name: "[[sharded_tables]]: the same table twice",
    pgdog: DATABASES + lines(
      "[[sharded_tables]]", //                        12
      'database = "prod"', //                         13
      'name = "users"', //                            14
      'column = "id"', //                             15
      "[[sharded_tables]]", //                        16
      'database = "prod"', //                         17
      'name = "users"', //                            18
      'schema = "s"', //                              19
      'column = "id"', //                             20
      "[[sharded_tables]]", //                        21
      'database = "prod"', //                         22
      'name = "users"', //                            23
      'column = "id"', //                             24
      'data_type = "varchar"', //                     25
    ),
    problems: [
      'pgdog.toml:21: [[sharded_tables]] #3 (name "users"): duplicate of #1 (same database, ' +
      "schema, name and column)",
    ],
  },
  {
    name: "mapping rules: shards, kinds and values of a bigint table",
    pgdog: DATABASES + lines(
      "[[sharded_tables]]", //                        12
      'database = "prod"', //                         13
      'column = "id"', //                             14
      "[[sharded_tables.mapping]]", //                15
      'values = [1, "x", 2]', //                      16
      "shard = 2", //                                 17
      "[[sharded_tables.mapping]]", //                18
      "values = [3, 4, 4]", //                        19
      "shard = 1", //                                 20
      "[[sharded_tables.mapping]]", //                21
      "values = [5]", //                              22
      "shard = 0", //                                 23
      "[[sharded_tables.mapping]]", //                24
      "values = [6, 5, 3]", //                        25
      "shard = 1", //                                 26
      "[[sharded_tables.mapping]]", //                27
      "values = [9223372036854775808]", //            28
      "shard = 0", //                                 29
      "[[sharded_tables.mapping]]", //                30
      "values = []", //                               31
      "shard = 0", //                                 32
      "[[sharded_tables.mapping]]", //                33
      "values = [1.5]", //                            34
      "shard = -1", //                                35
      "[[sharded_tables.mapping]]", //                36
      "values = [1]", //                              37
      "end = 3", //                                   38
      "shard = 0", //                                 39
      "[[sharded_tables.mapping]]", //                40
      'kind = "list"', //                             41
      "start = 1", //                                 42
      "shard = 0", //                                 43
      "[[sharded_tables.mapping]]", //                44
      'kind = "range"', //                            45
      "shard = 0", //                                 46
      "[[sharded_tables.mapping]]", //                47
      'kind = "default"', //                          48
      "values = [7]", //                              49
      "shard = 0", //                                 50
      "[[sharded_tables.mapping]]", //                51
      'kind = "hash"', //                             52
      "shard = 0", //                                 53
      "[[sharded_tables.mapping]]", //                54
      "values = [8]", //                              55
    ),
    problems: [
      "pgdog.toml:16: [[sharded_tables]] #1 mapping #1 values: expected an integer (data_type " +
      '"bigint"), got "x" at index 1',
      'pgdog.toml:17: [[sharded_tables]] #1 mapping #1 shard: no shard 2: database "prod" has ' +
      "shards 0 to 1",
      "pgdog.toml:19: [[sharded_tables]] #1 mapping #2 values: 4 is listed twice",
      "pgdog.toml:25: [[sharded_tables]] #1 mapping #4 values: 5 is already listed in mapping #3",
      "pgdog.toml:25: [[sharded_tables]] #1 mapping #4 values: 3 is already listed in mapping #2",
      "pgdog.toml:28: [[sharded_tables]] #1 mapping #5 values: 9223372036854775808 is out of " +
      "range for bigint (64-bit signed integers) at index 0",
      "pgdog.toml:31: [[sharded_tables]] #1 mapping #6 values: expected a non-empty list of " +
      "integers or strings, got an empty list",
      "pgdog.toml:34: [[sharded_tables]] #1 mapping #7 values: expected integers or strings, got " +
      "1.5 at index 0",
      "pgdog.toml:35: [[sharded_tables]] #1 mapping #7 shard: expected an integer >= 0, got -1",
      "pgdog.toml:36: [[sharded_tables]] #1 mapping #8: a rule has values (a list) or start/end " +
      "(a range), not both",
      'pgdog.toml:40: [[sharded_tables]] #1 mapping #9 values: missing required key "values" ' +
      '(kind = "list")',
      'pgdog.toml:42: [[sharded_tables]] #1 mapping #9 start: not allowed with kind = "list"',
      'pgdog.toml:44: [[sharded_tables]] #1 mapping #10: kind = "range" needs start, end or both',
      'pgdog.toml:49: [[sharded_tables]] #1 mapping #11 values: not allowed with kind = "default"',
      'pgdog.toml:52: [[sharded_tables]] #1 mapping #12 kind: "hash" is not allowed; expected ' +
      "one of list, range, default",
      'pgdog.toml:54: [[sharded_tables]] #1 mapping #13 shard: missing required key "shard"',
    ],
  },
  {
    name: "mapping rules: ranges and defaults",
    pgdog: DATABASES + lines(
      "[[sharded_tables]]", //                        12
      'database = "prod"', //                         13
      'column = "id"', //                             14
      "mapping = [", //                               15
      "  { start = 10, end = 5, shard = 0 },", //     16
      "  { start = 10, end = 10, shard = 0 },", //    17
      '  { start = "a", shard = 0 },', //             18
      "  { shard = 0 },", //                          19
      "  { shard = 1 },", //                          20
      "]", //                                         21
    ),
    problems: [
      "pgdog.toml:16: [[sharded_tables]] #1 mapping #1 end: 5 is not greater than start 10; the " +
      "range is empty",
      "pgdog.toml:17: [[sharded_tables]] #1 mapping #2 end: 10 is not greater than start 10; the " +
      "range is empty",
      "pgdog.toml:18: [[sharded_tables]] #1 mapping #3 start: expected an integer (data_type " +
      '"bigint"), got "a"',
      "pgdog.toml:20: [[sharded_tables]] #1 mapping #5: a second default rule; mapping #4 is the " +
      "default",
    ],
  },
  {
    name: "mapping rules: varchar and uuid values",
    pgdog: DATABASES + lines(
      "[[sharded_tables]]", //                        12
      'database = "prod"', //                         13
      'column = "code"', //                           14
      'data_type = "varchar"', //                     15
      "mapping = [", //                               16
      '  { values = ["a", 1], shard = 0 },', //       17
      '  { start = "b", end = "a", shard = 0 },', //  18
      "]", //                                         19
      "[[sharded_tables]]", //                        20
      'database = "prod"', //                         21
      'column = "tenant"', //                         22
      'data_type = "uuid"', //                        23
      "[[sharded_tables.mapping]]", //                24
      'values = ["not-a-uuid", 7]', //                25
      "shard = 0", //                                 26
      "[[sharded_tables.mapping]]", //                27
      'values = ["A0EEBC999C0B4EF8BB6D6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]', // 28
      "shard = 0", //                                 29
    ),
    problems: [
      "pgdog.toml:17: [[sharded_tables]] #1 mapping #1 values: expected a string (data_type " +
      '"varchar"), got 1 at index 1',
      'pgdog.toml:18: [[sharded_tables]] #1 mapping #2 end: "a" is not greater than start "b"; ' +
      "the range is empty",
      "pgdog.toml:25: [[sharded_tables]] #2 mapping #1 values: expected a UUID (data_type " +
      '"uuid"), got "not-a-uuid" at index 0',
      "pgdog.toml:25: [[sharded_tables]] #2 mapping #1 values: expected a UUID (data_type " +
      '"uuid"), got 7 at index 1',
      'pgdog.toml:28: [[sharded_tables]] #2 mapping #2 values: "a0eebc99-9c0b-4ef8-bb6d-' +
      '6bb9bd380a11" is listed twice',
    ],
  },
  {
    name: "[[sharded_mappings]] that match no table, or break its rules",
    pgdog: DATABASES + lines(
      "[[sharded_tables]]", //                        12
      'database = "prod"', //                         13
      'name = "orders"', //                           14
      'column = "customer_id"', //                    15
      "[[sharded_tables.mapping]]", //                16
      "values = [1]", //                              17
      "shard = 0", //                                 18
      "[[sharded_mappings]]", //                      19
      'database = "prod"', //                         20
      'column = "id"', //                             21
      "shard = 0", //                                 22
      "[[sharded_mapping]]", //                       23
      'database = "prod"', //                         24
      'column = "customer_id"', //                    25
      'table = "users"', //                           26
      'schema = "public"', //                         27
      "shard = 0", //                                 28
      "[[sharded_mappings]]", //                      29
      'database = "prod"', //                         30
      'column = "customer_id"', //                    31
      "values = [2, 1]", //                           32
      "shard = 3", //                                 33
      "[[sharded_mappings]]", //                      34
      'column = "customer_id"', //                    35
      "shard = 0", //                                 36
    ),
    problems: [
      'pgdog.toml:19: [[sharded_mappings]] #1: no [[sharded_tables]] entry has database "prod", ' +
      'column "id"',
      'pgdog.toml:23: [[sharded_mapping]] #1: no [[sharded_tables]] entry has database "prod", ' +
      'column "customer_id", name "users", schema "public"',
      "pgdog.toml:32: [[sharded_mappings]] #2 values: 1 is already listed in [[sharded_tables]] " +
      '#1 (name "orders") mapping #1',
      'pgdog.toml:33: [[sharded_mappings]] #2 shard: no shard 3: database "prod" has shards 0 ' +
      "to 1",
      'pgdog.toml:34: [[sharded_mappings]] #3 database: missing required key "database"',
    ],
    warnings: [
      "pgdog.toml:19: [[sharded_mappings]] is deprecated in PgDog; [[sharded_tables.mapping]] " +
      "under the table is the current form",
      "pgdog.toml:23: [[sharded_mapping]] is deprecated in PgDog; [[sharded_tables.mapping]] " +
      "under the table is the current form",
    ],
  },
  {
    name: "[[sharded_schemas]]",
    pgdog: DATABASES + lines(
      "[[sharded_schemas]]", //                       12
      'database = "prod"', //                         13
      'name = "a"', //                                14
      "[[sharded_schemas]]", //                       15
      'database = "prod"', //                         16
      'name = "b"', //                                17
      "shard = 2", //                                 18
      "[[sharded_schemas]]", //                       19
      'database = "prod"', //                         20
      'name = "b"', //                                21
      "shard = 1", //                                 22
      "[[sharded_schemas]]", //                       23
      'database = "prod"', //                         24
      "shard = 0", //                                 25
      "[[sharded_schemas]]", //                       26
      'database = "prod"', //                         27
      "shard = 1", //                                 28
      "[[sharded_schemas]]", //                       29
      'database = "gone"', //                         30
      'name = "c"', //                                31
      'all = "yes"', //                               32
    ),
    problems: [
      'pgdog.toml:12: [[sharded_schemas]] #1 (name "a") shard: missing required key "shard" (or ' +
      "set all = true)",
      'pgdog.toml:18: [[sharded_schemas]] #2 (name "b") shard: no shard 2: database "prod" has ' +
      "shards 0 to 1",
      'pgdog.toml:19: [[sharded_schemas]] #3 (name "b"): duplicate of #2 (same database and name)',
      "pgdog.toml:26: [[sharded_schemas]] #5: duplicate of #4 (the same database, both without a " +
      "name)",
      'pgdog.toml:30: [[sharded_schemas]] #6 (name "c") database: no database named "gone" in ' +
      "pgdog.toml",
      'pgdog.toml:32: [[sharded_schemas]] #6 (name "c") all: expected true or false, got "yes"',
    ],
  },
  {
    name: "[[omnisharded_tables]]",
    pgdog: DATABASES + lines(
      "[[omnisharded_tables]]", //                    12
      'database = "ghost"', //                        13
      'tables = ["a.b.c", "", ".t", "ok"]', //        14
      "sticky = 1", //                                15
      "[[omnisharded_tables]]", //                    16
      'database = "prod"', //                         17
      'tables = "countries"', //                      18
      "[[omnisharded_tables]]", //                    19
      'database = "prod"', //                         20
    ),
    problems: [
      'pgdog.toml:13: [[omnisharded_tables]] #1 database: no database named "ghost" in ' +
      "pgdog.toml",
      "pgdog.toml:14: [[omnisharded_tables]] #1 tables: expected a table name or schema.table, " +
      'got "a.b.c" at index 0',
      "pgdog.toml:14: [[omnisharded_tables]] #1 tables: expected a table name or schema.table, " +
      'got "" at index 1',
      "pgdog.toml:14: [[omnisharded_tables]] #1 tables: expected a table name or schema.table, " +
      'got ".t" at index 2',
      "pgdog.toml:15: [[omnisharded_tables]] #1 sticky: expected true or false, got 1",
      'pgdog.toml:18: [[omnisharded_tables]] #2 tables: expected a list of strings, got "countries"',
      'pgdog.toml:19: [[omnisharded_tables]] #3 tables: missing required key "tables"',
    ],
  },
  {
    name: "sections of the wrong shape",
    pgdog: DATABASES + lines(
      "[sharded_tables]", //                          12
      'database = "prod"', //                         13
      "[sharded_schemas]", //                         14
      "[[sharded_tabels]]", //                        15
    ),
    problems: [
      "pgdog.toml:12: [[sharded_tables]]: expected an array of tables, got a table",
      "pgdog.toml:14: [[sharded_schemas]]: expected an array of tables, got a table",
      "pgdog.toml:15: unknown section [[sharded_tabels]] (did you mean [[sharded_tables]]?)",
    ],
  },
  {
    name: "databases from --database_url",
    pgdog: lines(
      "[[sharded_tables]]", //                        1
      'database = "prod"', //                         2
      'column = "id"', //                             3
      "[[sharded_tables.mapping]]", //                4
      "values = [1]", //                              5
      "shard = 2", //                                 6
      "[[sharded_tables]]", //                        7
      'database = "other"', //                        8
      'column = "id"', //                             9
    ),
    urls: ["postgres://app@h0/prod", "postgres://app@h1/prod?shard=1"],
    problems: [
      'pgdog.toml:6: [[sharded_tables]] #1 mapping #1 shard: no shard 2: database "prod" has ' +
      "shards 0 to 1",
      'pgdog.toml:8: [[sharded_tables]] #2 database: no database named "other" in ' +
      "--database_url",
    ],
  },
];

for (const bad of BAD_CASES) {
  Deno.test(`sharding rejects: ${bad.name}`, async () => {
    const { result, error } = await load(bad.pgdog, { databaseUrls: bad.urls });
    equal(result, undefined, "expected a ConfigError");
    deepEqual(error?.problems, bad.problems);
    if (bad.warnings) deepEqual(error?.warnings, bad.warnings);
  });
}

Deno.test("sharding: warnings", async () => {
  const pgdog = lines(
    "[[databases]]", //                               1
    'name = "prod"', //                               2
    'host = "h0"', //                                 3
    "[[databases]]", //                               4
    'name = "prod"', //                               5
    'host = "h2"', //                                 6
    "shard = 2", //                                   7
    "[[databases]]", //                               8
    'name = "solo"', //                               9
    'host = "h"', //                                  10
    "[[sharded_tables]]", //                          11
    'database = "solo"', //                           12
    'name = "t"', //                                  13
    'column = "id"', //                               14
    "[[sharded_tables]]", //                          15
    'database = "prod"', //                           16
    'column = "id"', //                               17
    "mapping = [", //                                 18
    "  { start = 0, end = 100, shard = 0 },", //      19
    "  { start = 50, shard = 1 },", //                20
    "  { end = 10, shard = 0 },", //                  21
    "]", //                                           22
    "[[sharded_schemas]]", //                         23
    'database = "prod"', //                           24
    'name = "s"', //                                  25
    "all = true", //                                  26
    "shard = 1", //                                   27
    "[[omnisharded_tables]]", //                      28
    'database = "solo"', //                           29
    'tables = ["public.t", "x"]', //                  30
  );
  const { result, error } = await load(pgdog);
  equal(error, undefined, error?.message);
  deepEqual(result?.warnings, [
    'pgdog.toml:1: database "prod" has a gap in shard numbers: shard 1 is not configured; ' +
    "queries routed to it will fail",
    'pgdog.toml:11: [[sharded_tables]] #1 (name "t"): database "solo" has one shard; this ' +
    "sharded table has no effect",
    "pgdog.toml:20: [[sharded_tables]] #2 mapping #2: overlaps mapping #1 (shard 0); the first " +
    "matching range wins",
    'pgdog.toml:27: [[sharded_schemas]] #1 (name "s") shard: ignored with all = true',
    'pgdog.toml:30: [[omnisharded_tables]] #1 tables: "public.t" is a sharded table ' +
    '([[sharded_tables]] #1 (name "t")); this entry has no effect on it',
  ]);
});

Deno.test("sharding: the sections belong in pgdog.toml", async () => {
  const { error } = await load(DATABASES, {
    users: `${USERS}[[sharded_tables]]\ndatabase = "prod"\ncolumn = "id"\n`,
  });
  deepEqual(error?.problems, [
    "users.toml:8: unknown section [[sharded_tables]] (it belongs in pgdog.toml)",
  ]);
});

Deno.test("resolveConfig: sharding sections from a program", () => {
  const { config, warnings } = resolveConfig({
    databases: [{ name: "prod", host: "h0" }, { name: "prod", host: "h1", shard: 1 }],
    users: [{ name: "app", database: "prod" }],
    sharded_tables: [{
      database: "prod",
      column: "id",
      mapping: [{ values: [1, 2n], shard: 1 }, { start: 10, end: 20n, shard: 0 }, { shard: 1 }],
    }],
    sharded_schemas: [{ database: "prod", name: "a", shard: 1 }],
    omnisharded_tables: [{ database: "prod", tables: ["t"] }],
  });
  deepEqual(warnings, []);
  deepEqual(config.sharded_tables, [{
    database: "prod",
    column: "id",
    data_type: "bigint",
    hasher: "postgres",
    primary: false,
    mapping: [
      { kind: "list", values: [1n, 2n], shard: 1 },
      { kind: "range", start: 10n, end: 20n, shard: 0 },
      { kind: "default", shard: 1 },
    ],
  }]);
  deepEqual(config.sharded_schemas, [{ database: "prod", name: "a", shard: 1, all: false }]);
  deepEqual(config.omnisharded_tables, [{ database: "prod", tables: ["t"], sticky: false }]);

  throws(
    () =>
      resolveConfig({
        databases: [{ name: "prod", host: "h0" }],
        users: [{ name: "app", database: "prod" }],
        sharded_tables: [{
          database: "prod",
          column: "id",
          mapping: [{ values: [2 ** 60], shard: 0 }, { start: 1.5, shard: 3 }],
        }],
      }),
    (error: unknown) => {
      ok(error instanceof ConfigError);
      deepEqual(error.problems, [
        "<config object>: [[sharded_tables]] #1 mapping #1 values: expected integers or strings, " +
        "got 1152921504606847000 (beyond 2^53: pass a bigint) at index 0",
        "<config object>: [[sharded_tables]] #1 mapping #2 start: expected an integer or a " +
        "string, got 1.5",
      ]);
      deepEqual(error.warnings, [
        '<config object>: [[sharded_tables]] #1: database "prod" has one shard; this sharded ' +
        "table has no effect",
      ]);
      return true;
    },
  );
});

Deno.test("canonicalUuid accepts PostgreSQL's input forms", () => {
  const canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
  for (
    const text of [
      "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
      "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
      "a0eebc999c0b4ef8bb6d6bb9bd380a11",
      "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
      "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
    ]
  ) {
    equal(canonicalUuid(text), canonical, text);
  }
  for (
    const text of [
      "",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
      "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
      "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ]
  ) {
    equal(canonicalUuid(text), undefined, text);
  }
});

Deno.test("compareShardKeys: integers as numbers, strings by code point", () => {
  ok(compareShardKeys(-5n, 3n) < 0);
  ok(compareShardKeys(10n, 9n) > 0);
  equal(compareShardKeys(7n, 7n), 0);
  ok(compareShardKeys("a", "b") < 0);
  ok(compareShardKeys("ab", "a") > 0);
  equal(compareShardKeys("x", "x"), 0);
  ok(compareShardKeys("Z", "a") < 0); // not a collation
  // U+FF5E (one UTF-16 unit) sorts before U+1F600 (a surrogate pair), as in UTF-8 byte order,
  // although its UTF-16 code unit is larger than the pair's first one.
  ok(compareShardKeys("\uff5e", "\u{1f600}") < 0);
  ok("\uff5e" > "\u{1f600}");
});

Deno.test("plugins: defaults, and every mistake named by file, line and key", async () => {
  const ok1 = await load(
    DATABASES + lines(
      "[[plugins]]", //                                                   12
      'name = "guard"', //                                                13
      'path = "plugins/guard/mod.ts"', //                                 14
      "", //                                                              15
      "[[plugins]]", //                                                   16
      'name = "tenants"', //                                              17
      'path = "jsr:@acme/tenants"', //                                    18
      "config = { tenants = { acme = 0 } }", //                           19
      'permissions = { read = ["./data"], net = ["10.0.0.5:8080"], import = ["x.dev"], sys = true }',
      'isolation = "worker"', //                                          21
      "timeout = 50", //                                                  22
      'on_error = "error"', //                                            23
      "memory_mb = 64", //                                                24
      "cache_size = 0", //                                                25
    ),
  );
  equal(ok1.error, undefined, ok1.error?.message);
  deepEqual(ok1.result!.config.plugins, [
    {
      name: "guard",
      path: "plugins/guard/mod.ts",
      isolation: "process",
      timeout: 100,
      on_error: "fallback",
      memory_mb: 256,
      cache_size: 10_000,
    },
    {
      name: "tenants",
      path: "jsr:@acme/tenants",
      config: { tenants: { acme: 0 } },
      permissions: {
        read: ["./data"],
        write: [],
        net: ["10.0.0.5:8080"],
        env: [],
        import: ["x.dev"],
        sys: true,
      },
      isolation: "worker",
      timeout: 50,
      on_error: "error",
      memory_mb: 64,
      cache_size: 0,
    },
  ]);
  const bad = await load(
    DATABASES + lines(
      "[[plugins]]", //                                                   12
      'name = "a"', //                                                    13
      'path = "a.ts"', //                                                 14
      'permissions = { run = ["ls"] }', //                                15
      "", //                                                              16
      "[[plugins]]", //                                                   17
      'name = "a"', //                                                    18
      'path = "b.ts"', //                                                 19
      'isolation = "thread"', //                                          20
      "config = 3", //                                                    21
      "", //                                                              22
      "[[plugins]]", //                                                   23
      'name = "c"', //                                                    24
      "cache_size = -1", //                                               25
      "[[sharded_tables]]", //                                            26
      'database = "prod"', //                                             27
      'column = "id"', //                                                 28
      'hasher = "plugin:nope"', //                                        29
    ),
  );
  const problems = bad.error!.problems.join("\n");
  ok(
    problems.includes(
      'pgdog.toml:15: [[plugins]] #1 (name "a") permissions: permissions.run is not a permission',
    ),
    problems,
  );
  ok(
    problems.includes(
      'pgdog.toml:18: [[plugins]] #2 (name "a") name: plugin "a" is already defined by #1',
    ),
    problems,
  );
  ok(
    problems.includes(
      'pgdog.toml:20: [[plugins]] #2 (name "a") isolation: "thread" is not allowed',
    ),
    problems,
  );
  ok(
    problems.includes(
      'pgdog.toml:21: [[plugins]] #2 (name "a") config: expected a table or a file path, got 3',
    ),
    problems,
  );
  ok(
    problems.includes('pgdog.toml:23: [[plugins]] #3 (name "c") path: missing required key "path"'),
    problems,
  );
  ok(
    problems.includes(
      'pgdog.toml:25: [[plugins]] #3 (name "c") cache_size: expected an integer >= 0, got -1',
    ),
    problems,
  );
  ok(
    problems.includes(
      'pgdog.toml:29: [[sharded_tables]] #1 hasher: no [[plugins]] entry named "nope"',
    ),
    problems,
  );
});
