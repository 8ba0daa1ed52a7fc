/**
 * The command line end to end: `deno run mod.ts ...` as users run it. Help, version, bad flags,
 * `configcheck` with the exact messages of bad files, `--database_url`, and a proxy started
 * with an invalid configuration.
 */

import assert from "node:assert/strict";
import {
  connectPg,
  dumpLogsOnFailure,
  psql,
  runPgdog,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";
import { shardForBigint } from "../src/sharding/hash.ts";

const DENO_JSON = JSON.parse(
  Deno.readTextFileSync(new URL("../deno.json", import.meta.url)),
) as { version: string };

/** Lines of a stack trace, which a configuration problem must never print. */
const STACK_LINE = /^\s+at /m;

const DATABASE = '[[databases]]\nname = "app"\nhost = "127.0.0.1"\n';
const USER = '[[users]]\nname = "alice"\ndatabase = "app"\npassword = "pw"\n';

/** Files passed with relative paths (the CLI runs in their directory), so messages are exact. */
const FILE_ARGS = ["-c", "pgdog.toml", "-u", "users.toml"];

Deno.test("cli: --help and -h print the usage and exit 0", async () => {
  for (const flag of ["--help", "-h"]) {
    const r = await runPgdog([flag]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "");
    assert.match(r.stdout, new RegExp(`^pgdog ${DENO_JSON.version.replaceAll(".", "\\.")}: `));
    assert.match(r.stdout, /^Usage:$/m);
    assert.match(r.stdout, /^\s+pgdog \[run\] \[options\]/m);
    assert.match(r.stdout, /^\s+pgdog configcheck \[options\]/m);
    assert.match(r.stdout, /^\s+-c, --config <path>/m);
    assert.match(r.stdout, /^\s+-u, --users <path>/m);
    assert.match(r.stdout, /^\s+-d, --database_url <url>/m);
    assert.match(r.stdout, /^\s+-V, --version/m);
  }
});

Deno.test("cli: --version and -V print the version from deno.json", async () => {
  for (const flag of ["--version", "-V"]) {
    const r = await runPgdog([flag]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `pgdog ${DENO_JSON.version}\n`);
    assert.equal(r.stderr, "");
  }
});

Deno.test("cli: an unknown flag or command exits 2 with the usage on stderr", async () => {
  const flag = await runPgdog(["--bogus-flag"]);
  assert.equal(flag.code, 2);
  assert.equal(flag.stdout, "");
  assert.match(flag.stderr, /^pgdog: .*'--bogus-flag'/);
  assert.match(flag.stderr, /^Usage:$/m);
  assert.doesNotMatch(flag.stderr, STACK_LINE);

  const command = await runPgdog(["frobnicate"]);
  assert.equal(command.code, 2);
  assert.equal(command.stdout, "");
  assert.match(command.stderr, /^pgdog: unknown command "frobnicate"\n/);
  assert.match(command.stderr, /^Usage:$/m);

  // A flag that needs a value, without one.
  const missing = await runPgdog(["configcheck", "-c"]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /^pgdog: /);
  assert.doesNotMatch(missing.stderr, STACK_LINE);
});

Deno.test("cli: configcheck accepts a valid configuration", async () => {
  const r = await runPgdog(["configcheck", ...FILE_ARGS], {
    configText: `[general]\nport = 0\n${DATABASE}`,
    usersText: USER,
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "configuration is valid (pgdog.toml, users.toml)\n");
  assert.equal(r.stderr, "");
});

interface BadConfig {
  name: string;
  pgdog: string;
  users: string;
  args?: string[];
  /** Every problem line, in order (the summary line is checked separately). */
  problems: string[];
}

const BAD_CONFIGS: BadConfig[] = [
  {
    name: "TOML syntax error (unterminated string) with line:column",
    pgdog: '[general]\nport = 1\n\n[[databases]]\nname = "app"\nhost = "127.0.0.1\n',
    users: USER,
    problems: ["pgdog.toml:6:18: invalid TOML: control characters are not allowed in strings"],
  },
  {
    name: "TOML syntax error in users.toml",
    pgdog: DATABASE,
    users: '[[users]]\nname = "alice"\ndatabase = "app"\npassword = "x" extra\n',
    problems: [
      "users.toml:4:16: invalid TOML: each key-value declaration must be followed by an " +
      "end-of-line",
    ],
  },
  {
    name: "wrong type",
    pgdog: `[general]\nport = "6432"\n${DATABASE}`,
    users: USER,
    problems: ['pgdog.toml:2: [general] port: expected an integer from 0 to 65535, got "6432"'],
  },
  {
    name: "unknown key with a suggestion",
    pgdog: `[general]\nport = 0\npoolr_mode = "session"\n${DATABASE}`,
    users: USER,
    problems: [
      'pgdog.toml:3: [general] poolr_mode: unknown key "poolr_mode" (did you mean "pooler_mode"?)',
    ],
  },
  {
    name: "missing required key",
    pgdog: '[[databases]]\nname = "app"\nport = 5433\n',
    users: USER,
    problems: ['pgdog.toml:1: [[databases]] #1 (name "app") host: missing required key "host"'],
  },
  {
    name: "invalid enum value",
    pgdog: `[general]\npooler_mode = "statement"\nauth_type = "md5"\n${DATABASE}`,
    users: USER,
    problems: [
      'pgdog.toml:2: [general] pooler_mode: "statement" is not allowed; expected one of ' +
      "transaction, session",
    ],
  },
  {
    name: "bad values in users.toml",
    pgdog: DATABASE,
    users: '[[users]]\nname = "alice"\ndatabase = "app"\npassword = 5\npool_size = 0\n',
    problems: [
      'users.toml:4: [[users]] #1 (name "alice") password: expected a string, got 5',
      'users.toml:5: [[users]] #1 (name "alice") pool_size: expected an integer >= 1, got 0',
    ],
  },
  {
    name: "unknown section",
    pgdog: `[genral]\nport = 1\n${DATABASE}`,
    users: USER,
    problems: ["pgdog.toml:1: unknown section [genral] (did you mean [general]?)"],
  },
  {
    name: "malformed --database_url (its password is not shown)",
    pgdog: DATABASE,
    users: USER,
    args: ["-d", "postgres://u:hunter2@h:port/d"],
    problems: [
      "--database_url #1: expected postgres://user:password@host:port/database, got " +
      '"postgres://u:***@h:port/d"',
    ],
  },
  {
    name: "problems in both files and a URL, in file and line order",
    pgdog: "[general]\nport = 99999\n",
    users: '[[users]]\nname = "a"\n',
    args: ["--database_url", "postgres//nope"],
    problems: [
      "pgdog.toml:2: [general] port: expected an integer from 0 to 65535, got 99999",
      'users.toml:1: [[users]] #1 (name "a") database: missing required key "database"',
      '--database_url #1: expected postgres://user:password@host:port/database, got "postgres//nope"',
    ],
  },
];

Deno.test("cli: configcheck reports bad configuration files exactly and exits 1", async (t) => {
  const results = await Promise.all(
    BAD_CONFIGS.map((bad) =>
      runPgdog(["configcheck", ...FILE_ARGS, ...(bad.args ?? [])], {
        configText: bad.pgdog,
        usersText: bad.users,
      })
    ),
  );
  for (const [i, bad] of BAD_CONFIGS.entries()) {
    await t.step(bad.name, () => {
      const r = results[i];
      const n = bad.problems.length;
      assert.equal(r.code, 1, `exit code; stderr:\n${r.stderr}`);
      assert.equal(r.stdout, "");
      assert.equal(
        r.stderr,
        [
          ...bad.problems,
          `pgdog: configuration is invalid (${n} problem${n === 1 ? "" : "s"})`,
          "",
        ].join("\n"),
      );
      assert.doesNotMatch(r.stderr, STACK_LINE);
      assert.doesNotMatch(r.stderr, /hunter2/);
    });
  }
});

Deno.test("cli: --database_url without pgdog.toml is a valid configuration", async () => {
  // Neither file exists: both are warnings, and the URL supplies the database and its user.
  const r = await runPgdog([
    "configcheck",
    "-c",
    "missing-pgdog.toml",
    "-u",
    "missing-users.toml",
    "-d",
    "postgres://u:p@127.0.0.1:5999/db",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "configuration is valid (missing-pgdog.toml, missing-users.toml)\n");
  const warnings = r.stderr.split("\n").filter((l) => l !== "").map((l) =>
    l.replace(/^\S+ WARN /, "")
  );
  assert.deepEqual(warnings, [
    "missing-pgdog.toml: file not found; using defaults",
    "missing-users.toml: file not found; using defaults",
  ]);
  // And without a URL, the same missing files are an error.
  const none = await runPgdog(["configcheck", "-c", "missing-pgdog.toml", "-u", "missing.toml"]);
  assert.equal(none.code, 1);
  assert.equal(
    none.stderr,
    "no databases configured: add [[databases]] to missing-pgdog.toml or pass --database_url\n" +
      "pgdog: configuration is invalid (1 problem)\n",
  );
});

Deno.test("cli: the proxy with an invalid configuration exits 1 without listening", async () => {
  const r = await runPgdog(["run", ...FILE_ARGS], {
    configText: `[general]\nport = 0\nhost = "127.0.0.1"\nprot = 1\n${DATABASE}`,
    usersText: USER,
    timeoutMs: 30_000,
  });
  assert.equal(r.code, 1, `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  assert.equal(
    r.stderr,
    'pgdog.toml:4: [general] prot: unknown key "prot" (did you mean "port"?)\n' +
      "pgdog: configuration is invalid (1 problem)\n",
  );
  assert.doesNotMatch(r.stdout + r.stderr, /listening on/);
  // The default command is run, too.
  const implicit = await runPgdog(FILE_ARGS, {
    configText: `[general]\nport = 0\nhost = "127.0.0.1"\n`,
    usersText: USER,
    timeoutMs: 30_000,
  });
  assert.equal(implicit.code, 1, implicit.stderr);
  assert.match(implicit.stderr, /^no databases configured: /);
  assert.doesNotMatch(implicit.stdout + implicit.stderr, /listening on/);
});

Deno.test("cli: --database_url supplies the database and its user to a running proxy", async (t) => {
  await using pg = await startPostgres({
    roles: [
      { name: "u", password: "p", auth: "scram" },
      { name: "filer", password: "fpw", auth: "scram" },
    ],
    databases: ["db", "filedb"],
  });
  const url = `postgres://u:p@127.0.0.1:${pg.port}/db`;

  await t.step("pgdog.toml without [[databases]], users.toml empty: -d alone", async () => {
    await using proxy = await startProxy({
      config: { general: { min_pool_size: 0 } },
      usersText: "",
      args: ["-d", url],
    });
    await dumpLogsOnFailure(proxy, async () => {
      const r = await psql(
        proxy.target({ user: "u", password: "p", database: "db" }),
        "SELECT current_user, current_database(), inet_server_port()",
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), `u|db|${pg.port}`);
      // The URL's password is the user's client password too.
      const wrong = await psql(proxy.target({ user: "u", password: "nope", database: "db" }), "");
      assert.notEqual(wrong.code, 0);
      assert.match(wrong.stderr, /password authentication failed for user "u"/);
    });
  });

  await t.step("users.toml missing entirely: -d still works", async () => {
    await using proxy = await startProxy({
      config: { general: { min_pool_size: 0 } },
      args: ["-u", "no-such-users.toml", "-d", url],
    });
    await dumpLogsOnFailure(proxy, async () => {
      const client = await connectPg(proxy.target({ user: "u", password: "p", database: "db" }));
      try {
        const res = await client.query("SELECT current_user AS u, current_database() AS d");
        assert.deepEqual(res.rows, [{ u: "u", d: "db" }]);
      } finally {
        await client.end();
      }
      assert.match(proxy.logs(), /WARN no-such-users\.toml: file not found; using defaults/);
    });
  });

  await t.step("-d replaces the [[databases]] of pgdog.toml", async () => {
    await using proxy = await startProxy({
      config: {
        general: { min_pool_size: 0 },
        databases: [{ name: "filedb", host: pg.host, port: pg.port }],
      },
      users: { users: [{ name: "filer", password: "fpw", database: "filedb" }] },
      args: ["-d", url],
    });
    await dumpLogsOnFailure(proxy, async () => {
      const ok = await psql(
        proxy.target({ user: "u", password: "p", database: "db" }),
        "SELECT current_database()",
      );
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(ok.stdout.trim(), "db");
      await assert.rejects(
        connectPg(proxy.target({ user: "filer", password: "fpw", database: "filedb" })),
        (err: Error & { code?: string }) => {
          assert.equal(err.code, "3D000");
          assert.equal(err.message, 'database "filedb" does not exist');
          return true;
        },
      );
    });
  });
});

Deno.test("pgdog route: each statement's shard and reason, without connecting", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pgdog-test-route-" });
  try {
    await Deno.writeTextFile(
      `${dir}/queries.sql`,
      "SELECT * FROM users WHERE id = 42;\nINSERT INTO users (id, name) VALUES (7, 'x');\n" +
        "SELECT id, name FROM users ORDER BY id LIMIT 3;\nCREATE TABLE t (x int);\n" +
        "INSERT INTO users VALUES (8, 'y');\nSELECT id FROM users WHERE id IN (SELECT max(id) " +
        "FROM users);\n",
    );
    const r = await runPgdog(["route", `${dir}/queries.sql`], {
      cwd: dir,
      config: {
        databases: [0, 1, 2].map((shard) => ({ name: "app", host: "127.0.0.1", shard })),
        sharded_tables: [{ database: "app", name: "users", column: "id" }],
      },
      users: { users: [{ name: "u", password: "p", database: "app" }] },
    });
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.split("\n").filter((l) => !l.startsWith("  ") && l !== "");
    assert.deepEqual(lines, [
      `shard ${shardForBigint(42n, 3)} (replica): users.id`,
      `shard ${shardForBigint(7n, 3)} (primary): INSERT users.id`,
      "all shards (replica): no sharding key for users: every shard's rows, merged",
      "all shards (primary): Create runs on every shard",
      "decided by the table's column order (primary): INSERT without a column list: the proxy " +
      "reads the column order of users from shard 0",
      "refused (replica): an aggregate in a subquery reading users without its sharding key is " +
      "not supported across shards yet: each shard would answer it from its own rows; add " +
      "users.id = ... to it, correlate it on the sharding key with the outer query, or route with " +
      "/* pgdog_shard: N */",
    ]);
    // A merged statement: its merge steps and what each shard runs, under its text.
    const merged = r.stdout.split("\n");
    const at = merged.indexOf("  SELECT id, name FROM users ORDER BY id LIMIT 3");
    assert.deepEqual(merged.slice(at + 1, at + 3), [
      "  merge: merge sorted by 1; limit 3",
      "  each shard runs: SELECT id, name FROM users ORDER BY id LIMIT 3",
    ]);
    const unknown = await runPgdog(["route", `${dir}/queries.sql`, "-D", "nope"], {
      cwd: dir,
      config: { databases: [{ name: "app", host: "127.0.0.1" }] },
      users: { users: [{ name: "u", password: "p", database: "app" }] },
    });
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /no database "nope"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
