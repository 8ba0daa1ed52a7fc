/**
 * Self-test of the test harness: throwaway clusters, clients and the proxy
 * subprocess machinery (with a stand-in script, not the real proxy).
 */

import assert from "node:assert/strict";
import {
  connectPg,
  parsePgbenchOutput,
  pgbench,
  psql,
  type RoleSpec,
  runPgdog,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Like exists(), through a subprocess: Deno refuses /dev/shm without --allow-all. */
async function existsOutsideDeno(path: string): Promise<boolean> {
  const { code } = await new Deno.Command("test", { args: ["-e", path] }).output();
  return code === 0;
}

const ROLES: RoleSpec[] = [
  { name: "u_scram", password: "s3cret-scram", auth: "scram" },
  { name: "u_md5", password: "s3cret-md5", auth: "md5" },
  { name: "u_password", password: "s3cret-plain", auth: "password" },
  { name: "u_trust", auth: "trust" },
  { name: "u_super", password: "s3cret-super", auth: "scram", superuser: true },
];

Deno.test("postgres: roles authenticate with their method, sql(), settings", async () => {
  await using pg = await startPostgres({
    roles: ROLES,
    databases: ["plain", { name: "owned", owner: "u_scram" }],
    settings: { max_connections: 123, cluster_name: "harness's test" },
  });
  assert.equal(pg.host, "127.0.0.1");
  assert.ok(pg.port > 0 && pg.port !== 5432 && pg.port !== 6432);

  const target = (user: string, password?: string) => ({
    host: pg.host,
    port: pg.port,
    user,
    password,
    database: "plain",
  });
  const checks = ROLES.filter((r) => r.password !== undefined).flatMap((role) => [
    psql(target(role.name, role.password), "SELECT current_user").then((r) => {
      assert.equal(r.code, 0, `${role.name} with its password: ${r.stderr}`);
      assert.equal(r.stdout.trim(), role.name);
    }),
    psql(target(role.name, "wrong"), "SELECT 1").then((r) => {
      assert.notEqual(r.code, 0, `${role.name} with a wrong password logged in`);
      assert.match(r.stderr, /password authentication failed/);
    }),
  ]);
  checks.push(
    psql(target("u_trust"), "SELECT current_user").then((r) => {
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), "u_trust");
    }),
    // Unknown roles fall through to the final scram line.
    psql(target("nobody", "x"), "SELECT 1").then((r) => {
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /password authentication failed/);
    }),
  );
  await Promise.all(checks);

  // Passwords are stored as asked.
  const stored = Object.fromEntries(
    await pg.sql("SELECT rolname, left(rolpassword, 14) FROM pg_authid WHERE rolname LIKE 'u\\_%'"),
  );
  assert.equal(stored.u_scram, "SCRAM-SHA-256$");
  assert.equal(stored.u_password, "SCRAM-SHA-256$");
  assert.equal(stored.u_md5.slice(0, 3), "md5");
  assert.equal(stored.u_trust, "");
  assert.deepEqual(await pg.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'u_super'"), [[
    "t",
  ]]);

  // sql(): rows split by tab, databases, options, errors.
  assert.deepEqual(await pg.sql("SELECT 1, 'a b', NULL::text UNION ALL SELECT 2, 'c', 'd'"), [
    ["1", "a b", ""],
    ["2", "c", "d"],
  ]);
  assert.deepEqual(await pg.sql("SELECT 1 WHERE false"), []);
  assert.deepEqual(await pg.sql("SHOW max_connections"), [["123"]]);
  assert.deepEqual(await pg.sql("SHOW cluster_name"), [["harness's test"]]);
  assert.deepEqual(await pg.sql("SELECT current_database()", { database: "owned" }), [["owned"]]);
  await assert.rejects(() => pg.sql("SELECT nope"), /column "nope" does not exist/);
  // Non-owners may create tables in a database's public schema.
  await pg.sql("CREATE TABLE t (x int)", {
    database: "plain",
    user: "u_md5",
    password: "s3cret-md5",
  });
  assert.deepEqual(
    await pg.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'owned'"),
    [["u_scram"]],
  );
  assert.equal(
    pg.url({ user: "a@b", password: "p/w", database: "d" }),
    `postgres://a%40b:p%2Fw@127.0.0.1:${pg.port}/d`,
  );
});

Deno.test("postgres: kill + start, stop, destroy", async () => {
  // synchronous_commit is off by default: a crash may lose the last commits.
  const pg = await startPostgres({ settings: { synchronous_commit: true } });
  try {
    const port = pg.port;
    assert.equal(await existsOutsideDeno(`${pg.dataDir}/PG_VERSION`), true);
    await pg.sql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)");
    await pg.kill();
    assert.equal(pg.running, false);
    const down = await psql(
      { host: pg.host, port, user: "postgres", database: "postgres" },
      "SELECT 1",
    );
    assert.notEqual(down.code, 0);
    await pg.start();
    assert.equal(pg.port, port);
    assert.deepEqual(await pg.sql("SELECT x FROM kept"), [["42"]]);
    await pg.stop();
    await pg.stop(); // idempotent
    await pg.start();
    assert.deepEqual(await pg.sql("SELECT 1"), [["1"]]);
    assert.match(await pg.log(), /database system is ready to accept connections/);
  } finally {
    await pg.destroy();
  }
  assert.equal(await existsOutsideDeno(pg.dataDir), false);
  assert.equal(exists(pg.configDir), false);
  await pg.destroy(); // idempotent
});

Deno.test("postgres: two clusters start concurrently", async () => {
  const [a, b] = await Promise.all([startPostgres(), startPostgres()]);
  try {
    assert.notEqual(a.port, b.port);
    assert.notEqual(a.dataDir, b.dataDir);
    const [ra, rb] = await Promise.all([a.sql("SELECT 'a'"), b.sql("SELECT 'b'")]);
    assert.deepEqual([ra, rb], [[["a"]], [["b"]]]);
  } finally {
    await Promise.all([a.destroy(), b.destroy()]);
  }
});

Deno.test("postgres: start failures throw with the server log", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = (listener.addr as Deno.NetAddr).port;
    await assert.rejects(
      () => startPostgres({ settings: { port } }),
      /failed to start on port \d+[\s\S]*(could not bind|could not create any TCP\/IP sockets)/,
    );
  } finally {
    listener.close();
  }
  await assert.rejects(
    () => startPostgres({ settings: { no_such_setting: 1 } }),
    /unrecognized configuration parameter "no_such_setting"/,
  );
});

Deno.test("clients: pgbench and npm:pg", async () => {
  await using pg = await startPostgres({
    roles: [{ name: "bench", password: "benchpw", auth: "scram" }],
  });
  const target = {
    host: pg.host,
    port: pg.port,
    user: "bench",
    password: "benchpw",
    database: "postgres",
  };
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/select.sql`, "SELECT 1;\n");
    const run = await pgbench(target, ["-n", "-c", "2", "-t", "50", "-f", `${dir}/select.sql`]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.processed, 100);
    assert.equal(run.failed, 0);
    assert.ok(run.tps !== undefined && run.tps > 0);
    assert.ok(run.latencyAvgMs !== undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }

  const client = await connectPg(target);
  try {
    const res = await client.query("SELECT $1::int + 1 AS n", [41]);
    assert.equal(res.rows[0].n, 42);
  } finally {
    await client.end();
  }

  assert.deepEqual(
    parsePgbenchOutput(
      "number of transactions actually processed: 10000/10000\n" +
        "number of failed transactions: 3 (0.030%)\nlatency average = 1.234 ms\n" +
        "initial connection time = 5.1 ms\ntps = 1234.5 (without initial connection time)\n",
    ),
    { processed: 10000, failed: 3, latencyAvgMs: 1.234, tps: 1234.5 },
  );
});

const FAKE_PROXY = `
const args = Deno.args;
if (args.includes("--version")) { console.log("fake 1.0"); Deno.exit(0); }
const config = Deno.readTextFileSync(args[args.indexOf("-c") + 1]);
if (config.includes("fail")) { console.error("ERROR bad config"); Deno.exit(3); }
const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
console.log("users file: " + args[args.indexOf("-u") + 1]);
console.error(new Date().toISOString() + " INFO listening on 127.0.0.1:" + listener.addr.port);
Deno.addSignalListener("SIGHUP", () => console.error("INFO reloaded " + Deno.readTextFileSync(args[args.indexOf("-c") + 1]).length));
Deno.addSignalListener("SIGTERM", () => { console.error("INFO bye"); Deno.exit(0); });
for await (const conn of listener) conn.close();
`;

Deno.test("proxy: subprocess machinery (stand-in script)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const entry = `${dir}/fake.ts`;
    await Deno.writeTextFile(entry, FAKE_PROXY);

    const proxy = await startProxy({
      entry,
      cwd: dir,
      config: { general: { workers: 2 }, databases: [{ name: "db", host: "127.0.0.1" }] },
      users: { users: [{ name: "u", password: "p", database: "db" }] },
    });
    assert.ok(proxy.port > 0);
    assert.equal(proxy.host, "127.0.0.1");
    const config = await Deno.readTextFile(proxy.configPath);
    assert.match(config, /host = "127.0.0.1"/);
    assert.match(config, /port = 0/);
    assert.match(config, /\[\[databases\]\]/);
    const conn = await Deno.connect({ hostname: proxy.host, port: proxy.port });
    conn.close();
    assert.equal(
      proxy.url({ user: "u", password: "p", database: "db" }),
      `postgres://u:p@127.0.0.1:${proxy.port}/db`,
    );
    await proxy.waitForLog(/users file: .*users\.toml/);
    const mark = proxy.logOffset();
    await proxy.writeConfig({ general: { workers: 3 } });
    assert.match(await Deno.readTextFile(proxy.configPath), new RegExp(`port = ${proxy.port}`));
    proxy.signal("SIGHUP");
    await proxy.waitForLog(/reloaded \d+/, { since: mark });
    await assert.rejects(
      () => proxy.waitForLog(/never printed/, { timeoutMs: 50 }),
      /timed out waiting/,
    );
    const exit = await proxy.stop();
    assert.equal(exit.code, 0);
    assert.match(exit.logs, /INFO bye/);
    assert.equal(exists(proxy.dir), false);

    await assert.rejects(
      () => startProxy({ entry, cwd: dir, configText: "fail = true\n" }),
      /exited with code 3 before listening[\s\S]*ERROR bad config/,
    );

    const version = await runPgdog(["--version"], { entry, cwd: dir });
    assert.equal(version.code, 0);
    assert.equal(version.stdout.trim(), "fake 1.0");
    const bad = await runPgdog([], { entry, cwd: dir, configText: "fail = 1\n", usersText: "" });
    assert.equal(bad.code, 3);
    assert.match(bad.stderr, /bad config/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
