import { deepEqual, equal } from "node:assert/strict";
import { parseDatabaseUrl, redactUrl } from "./database_url.ts";

Deno.test("parseDatabaseUrl: full URL with encoded parts and parameters", () => {
  const result = parseDatabaseUrl(
    "postgresql://al%40ice:p%2Fss%3Aword@db.example.com:5433/my%20db" +
      "?database_name=real&role=replica&shard=2&pool_size=7&min_pool_size=1" +
      "&pooler_mode=session&user=srv&password=srvpw",
  );
  deepEqual(result, {
    database: {
      name: "my db",
      host: "db.example.com",
      port: 5433,
      database_name: "real",
      user: "srv",
      password: "srvpw",
      pool_size: 7,
      min_pool_size: 1,
      pooler_mode: "session",
      role: "replica",
      shard: 2,
      lb_weight: 255,
    },
    user: { name: "al@ice", database: "my db", password: "p/ss:word" },
    problems: [],
    warnings: [],
  });
});

Deno.test("parseDatabaseUrl: defaults and IPv6", () => {
  deepEqual(parseDatabaseUrl("postgres://[::1]/shop"), {
    database: {
      name: "shop",
      host: "::1",
      port: 5432,
      database_name: "shop",
      role: "primary",
      shard: 0,
      lb_weight: 255,
    },
    user: { name: "postgres", database: "shop" },
    problems: [],
    warnings: [],
  });
  const bare = parseDatabaseUrl("postgres://bob@localhost");
  equal(bare.database?.name, "bob");
  equal(bare.user?.name, "bob");
  equal(parseDatabaseUrl("postgres://h/d?max_pool_size=3").database?.pool_size, 3);
});

Deno.test("parseDatabaseUrl: problems and warnings", () => {
  const expected = "expected postgres://user:password@host:port/database";
  for (const url of ["mysql://a@b/c", "postgres://", "postgres:///db", "postgres://h/a/b", "x"]) {
    deepEqual(parseDatabaseUrl(url, { label: "--database_url #2" }).problems, [
      `--database_url #2: ${expected}, got ${JSON.stringify(url)}`,
    ]);
  }
  deepEqual(parseDatabaseUrl("mysql://u:secret@h/d").problems, [
    `--database_url: ${expected}, got "mysql://u:***@h/d"`,
  ]);
  deepEqual(parseDatabaseUrl("postgres://h:99999/d").problems, [
    `--database_url: ${expected}, got "postgres://h:99999/d"`,
  ]);
  deepEqual(parseDatabaseUrl("postgres://h:0/d").problems, [
    "--database_url port: expected an integer from 1 to 65535, got 0",
  ]);
  deepEqual(
    parseDatabaseUrl("postgres://h/d?role=leader&pool_size=0&shrd=1&statement_timeout=5"),
    {
      problems: [
        '--database_url role: "leader" is not allowed; expected one of primary, replica, auto',
        "--database_url pool_size: expected an integer >= 1, got 0",
        '--database_url shrd: unknown parameter "shrd" (did you mean "shard"?)',
      ],
      warnings: [
        "--database_url: parameter statement_timeout is a PgDog setting this version does not " +
        "support yet; ignored",
      ],
    },
  );
});

Deno.test("redactUrl hides passwords", () => {
  equal(
    redactUrl("postgres://u:secret@h/d?password=x&role=replica"),
    "postgres://u:***@h/d?password=***&role=replica",
  );
  equal(redactUrl("postgres://u@h/d"), "postgres://u@h/d");
});
