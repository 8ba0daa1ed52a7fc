/**
 * The admin database through psql and npm:pg, as operators use it: login with the `[admin]`
 * password (and refusals), the SHOW commands with PgDog's column names checked against what is
 * really connected, probes answered, unknown commands explained, RESET QUERY_CACHE.
 */

import assert from "node:assert/strict";
import {
  connectPg,
  dumpLogsOnFailure,
  pgbench,
  type PgCluster,
  psql,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";

const ADMIN_PASSWORD = "admin-test-pw";

/** Runs an admin command with psql; rows as objects keyed by column (psql -A with a header). */
async function admin(
  target: { host: string; port: number },
  sql: string,
  password = ADMIN_PASSWORD,
): Promise<{ code: number; rows: Record<string, string>[]; stderr: string }> {
  const r = await psql(
    { host: target.host, port: target.port, user: "admin", password, database: "admin" },
    sql,
    { extraArgs: ["-F", "\t", "--pset=tuples_only=off", "--pset=footer=off"] },
  );
  const lines = r.stdout.split("\n").filter((l) => l !== "");
  const header = lines[0]?.split("\t") ?? [];
  const rows = lines.slice(1).map((l) => {
    const cells = l.split("\t");
    return Object.fromEntries(header.map((h, i) => [h, cells[i]]));
  });
  return { code: r.code, rows, stderr: r.stderr };
}

/** A cluster with database "app" holding pgbench's tables. */
async function startPgbenchCluster(): Promise<PgCluster> {
  const pg = await startPostgres({ databases: ["app"] });
  const init = await pgbench(
    { host: pg.host, port: pg.port, user: "postgres", database: "app" },
    ["-i", "-s", "1", "-q"],
  );
  if (init.code !== 0) {
    await pg[Symbol.asyncDispose]();
    throw new Error(`pgbench -i: ${init.stderr}`);
  }
  return pg;
}

/** A proxy with an admin password in front of `pg`'s database "app" (one host). */
async function adminProxy(
  pg: { host: string; port: number },
  options: { general: Record<string, unknown>; poolSize: number },
) {
  const proxy = await startProxy({
    config: {
      general: options.general,
      databases: [{ name: "app", host: pg.host, port: pg.port, pool_size: options.poolSize }],
      admin: { password: ADMIN_PASSWORD },
    },
    users: { users: [{ name: "postgres", password: "app-pw", database: "app" }] },
  });
  return {
    proxy,
    at: { host: "127.0.0.1", port: proxy.port },
    app: proxy.target({ user: "postgres", password: "app-pw", database: "app" }),
  };
}

Deno.test("admin database", async (t) => {
  await using pg = await startPostgres({ databases: ["app"] });
  const { proxy: p, at, app } = await adminProxy(pg, {
    general: { query_parser: "on" },
    poolSize: 1,
  });
  await using proxy = p;

  await dumpLogsOnFailure(proxy, async () => {
    await t.step("login: the [admin] password, nothing else", async () => {
      const ok = await admin(at, "SHOW VERSION");
      assert.equal(ok.code, 0, ok.stderr);
      assert.match(ok.rows[0].version, /^pgdog \d+\.\d+\.\d+/);
      const wrong = await admin(at, "SHOW VERSION", "nope");
      assert.notEqual(wrong.code, 0);
      assert.match(wrong.stderr, /password authentication failed for user "admin"/);
    });

    await t.step("SHOW CLIENTS, SERVERS, POOLS, LISTS reflect what is connected", async () => {
      const c = await connectPg({ ...app }, { applicationName: "admin-test-app" });
      const holder = await connectPg(app);
      try {
        await c.query("SELECT 1");
        const clients = await admin(at, "show clients;");
        assert.equal(clients.code, 0, clients.stderr);
        const mine = clients.rows.find((r) => r.application_name === "admin-test-app");
        assert.ok(mine, JSON.stringify(clients.rows));
        assert.equal(mine.user, "postgres");
        assert.equal(mine.database, "app");
        assert.equal(mine.addr, "127.0.0.1");
        assert.ok(Number(mine.queries) >= 1);
        assert.equal(mine.pinned, "");

        const servers = await admin(at, "SHOW SERVERS");
        assert.equal(servers.rows.length, 1);
        assert.equal(servers.rows[0].database, "app");
        assert.equal(Number(servers.rows[0].port), pg.port);
        const pids = await pg.sql("SELECT pid FROM pg_stat_activity WHERE datname = 'app'");
        assert.ok(pids.some(([pid]) => pid === servers.rows[0].remote_pid));

        // pool_size 1: one client holds the server, the next one waits.
        await holder.query("BEGIN");
        await holder.query("SELECT 1");
        const waiting = c.query("SELECT 2");
        let pools = await admin(at, "SHOW POOLS");
        for (let i = 0; i < 50 && pools.rows[0]?.cl_waiting !== "1"; i++) {
          await new Promise((r) => setTimeout(r, 50));
          pools = await admin(at, "SHOW POOLS");
        }
        assert.equal(pools.rows.length, 1);
        const pool = pools.rows[0];
        assert.equal(pool.database, "app");
        assert.equal(pool.cl_waiting, "1");
        assert.equal(pool.sv_active, "1");
        assert.equal(pool.pool_mode, "transaction");
        assert.equal(pool.online, "t");
        await holder.query("COMMIT");
        await waiting;

        const lists = await admin(at, "SHOW LISTS");
        assert.equal(lists.rows[0].databases, "1");
        assert.equal(lists.rows[0].pools, "1");
        assert.ok(Number(lists.rows[0].used_clients) >= 3); // two apps and this admin session
      } finally {
        await c.end();
        await holder.end();
      }
    });

    await t.step("SHOW CONFIG, QUERY_CACHE, PREPARED, BANS; RESET QUERY_CACHE", async () => {
      const config = await admin(at, "SHOW CONFIG");
      assert.equal(config.rows.find((r) => r.name === "query_parser")?.value, "on");
      assert.equal(config.rows.find((r) => r.name === "default_pool_size")?.value, "10");
      const c = await connectPg(app);
      try {
        await c.query({ name: "admin-test-stmt", text: "SELECT $1::int AS n", values: [1] });
        await c.query("SELECT 41 + 1");
      } finally {
        await c.end();
      }
      const cache = await admin(at, "SHOW QUERY_CACHE");
      assert.ok(cache.rows.some((r) => r.query.includes("SELECT $1 + $2")), JSON.stringify(cache));
      const prepared = await admin(at, "SHOW PREPARED");
      assert.ok(prepared.rows.some((r) => r.statement === "SELECT $1::int AS n"));
      assert.deepEqual((await admin(at, "SHOW BANS")).rows, []);
      const reset = await admin(at, "RESET QUERY_CACHE");
      assert.equal(reset.code, 0, reset.stderr);
      assert.deepEqual((await admin(at, "SHOW QUERY_CACHE")).rows, []);
    });

    await t.step("probes get an empty column; unknown commands list what exists", async () => {
      const probe = await psql(
        { ...at, user: "admin", password: ADMIN_PASSWORD, database: "admin" },
        "SHOW server_version_num",
        { extraArgs: ["--pset=tuples_only=off"] },
      );
      assert.equal(probe.code, 0, probe.stderr);
      assert.match(probe.stdout, /server_version_num/);
      const bad = await admin(at, "DROP DATABASE app");
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /unknown admin command: DROP DATABASE app/);
      assert.match(bad.stderr, /SHOW POOLS/);
      // The extended protocol is refused, the connection stays usable.
      const c = await connectPg({
        ...at,
        user: "admin",
        password: ADMIN_PASSWORD,
        database: "admin",
      });
      try {
        await assert.rejects(
          c.query("SHOW POOLS WHERE $1", [1]),
          (e: { code?: string }) => e.code === "0A000",
        );
        const r = await c.query("SHOW VERSION");
        assert.equal(r.rows.length, 1);
      } finally {
        await c.end();
      }
    });
  });
});

Deno.test("admin database without a password refuses every login and says why", async () => {
  await using pg = await startPostgres({ databases: ["app"] });
  await using proxy = await startProxy({
    config: { databases: [{ name: "app", host: pg.host, port: pg.port }] },
    users: { users: [{ name: "postgres", password: "x", database: "app" }] },
  });
  const r = await psql(
    { host: "127.0.0.1", port: proxy.port, user: "admin", password: "admin", database: "admin" },
    "SHOW VERSION",
  );
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /admin database "admin" is disabled: set a password in \[admin\]/);
});

Deno.test("admin: BAN/UNBAN, SHOW REPLICATION, SHUTDOWN", async () => {
  await using pg = await startPostgres({ databases: ["app"] });
  // The same server twice, as primary and replica: two hosts for one shard, so one can be banned.
  await using proxy = await startProxy({
    config: {
      general: { lsn_check_interval: 200, lsn_check_delay: 0, shutdown_timeout: 2000 },
      databases: [
        { name: "app", host: pg.host, port: pg.port, role: "primary" },
        { name: "app", host: "127.0.0.1", port: pg.port, role: "replica" },
      ],
      admin: { password: ADMIN_PASSWORD },
    },
    users: { users: [{ name: "postgres", password: "app-pw", database: "app" }] },
  });
  const at = { host: "127.0.0.1", port: proxy.port };
  await dumpLogsOnFailure(proxy, async () => {
    const pools = (await admin(at, "SHOW POOLS")).rows;
    assert.deepEqual(pools.map((p) => p.role), ["primary", "replica"]);
    const replica = pools[1].id;
    assert.equal((await admin(at, `BAN ${replica}`)).code, 0);
    const bans = (await admin(at, "SHOW BANS")).rows;
    assert.equal(bans.length, 1);
    assert.equal(bans[0].id, replica);
    assert.equal(bans[0].ban_reason, "banned by an admin");
    assert.equal((await admin(at, "SHOW POOLS")).rows[1].banned, "t");
    const missing = await admin(at, "BAN 99999");
    assert.match(missing.stderr, /no pool with id 99999/);
    assert.equal((await admin(at, `UNBAN ${replica}`)).code, 0);
    assert.deepEqual((await admin(at, "SHOW BANS")).rows, []);

    // The LSN checks fill SHOW REPLICATION.
    let rows = (await admin(at, "SHOW REPLICATION")).rows;
    for (let i = 0; i < 50 && rows.some((r) => r.pg_lsn === ""); i++) {
      await new Promise((r) => setTimeout(r, 100));
      rows = (await admin(at, "SHOW REPLICATION")).rows;
    }
    assert.equal(rows.length, 2);
    for (const r of rows) {
      assert.match(r.pg_lsn, /^[0-9A-F]+\/[0-9A-F]+$/);
      assert.equal(r.pg_is_in_recovery, "f");
    }

    const app = await connectPg(
      proxy.target({ user: "postgres", password: "app-pw", database: "app" }),
    );
    app.on("error", () => {});
    const shutdown = await admin(at, "SHUTDOWN");
    assert.equal(shutdown.code, 0, shutdown.stderr);
    const deadline = Date.now() + 10_000;
    while (!proxy.exited) {
      assert.ok(Date.now() < deadline, "the proxy did not exit after SHUTDOWN");
      await new Promise((r) => setTimeout(r, 100));
    }
    await app.end().catch(() => {});
  });
});

Deno.test("admin: SHOW STATS counts a pgbench workload; averages over stats_period", async () => {
  await using pg = await startPgbenchCluster();
  const { proxy: p, at, app } = await adminProxy(pg, {
    general: { stats_period: 500 },
    poolSize: 4,
  });
  await using proxy = p;
  await dumpLogsOnFailure(proxy, async () => {
    const before = (await admin(at, "SHOW STATS")).rows[0];
    const running = pgbench(app, ["-n", "-c", "4", "-T", "3"], { timeoutMs: 60_000 });
    await new Promise((r) => setTimeout(r, 2000));
    const during = (await admin(at, "SHOW STATS")).rows[0];
    const run = await running;
    assert.equal(run.code, 0, run.stderr);
    const after = (await admin(at, "SHOW STATS")).rows[0];
    const moved = (k: string): number => Number(after[k]) - Number(before[k]);
    // TPC-B: 7 statements per transaction (BEGIN ... END), each a query.
    assert.ok(moved("total_xact_count") >= run.processed!, JSON.stringify(after));
    assert.ok(moved("total_query_count") >= run.processed! * 7, JSON.stringify(after));
    assert.ok(moved("total_server_assignment_count") >= run.processed!);
    assert.ok(moved("total_received") > 0 && moved("total_sent") > 0);
    assert.ok(Number(after.total_xact_time) > 0);
    assert.ok(Number(after.total_query_time) > 0);
    assert.ok(Number(during.avg_xact_count) > 0, JSON.stringify(during));
    assert.ok(Number(during.avg_query_count) > Number(during.avg_xact_count));
    assert.ok(Number(during.avg_xact_time) > 0);
  });
});

Deno.test("admin: PAUSE waits for running transactions and holds new ones; MAINTENANCE ON, RELOAD, MAINTENANCE OFF under pgbench", async () => {
  await using pg = await startPgbenchCluster();
  const { proxy: p, at, app } = await adminProxy(pg, { general: {}, poolSize: 4 });
  await using proxy = p;
  await dumpLogsOnFailure(proxy, async () => {
    const console = await connectPg({
      ...at,
      user: "admin",
      password: ADMIN_PASSWORD,
      database: "admin",
    });
    const a = await connectPg(app);
    const b = await connectPg(app);
    const settled = (promise: Promise<unknown>) => {
      let done = false;
      promise.then(() => done = true, () => done = true);
      return () => done;
    };
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    try {
      await a.query("BEGIN");
      await a.query("SELECT 1");
      const pausing = console.query("PAUSE app");
      const paused = settled(pausing);
      await sleep(300);
      assert.equal(paused(), false, "PAUSE answered while a transaction was running");
      await a.query("SELECT 2"); // the running transaction goes on
      await a.query("COMMIT");
      await pausing;
      const held = b.query("SELECT 42 AS n");
      const heldDone = settled(held);
      await sleep(300);
      assert.equal(heldDone(), false, "a new transaction ran while paused");
      const pools = await console.query("SHOW POOLS");
      assert.equal(pools.rows[0].paused, "t");
      await console.query("RESUME app");
      assert.deepEqual((await held).rows, [{ n: 42 }]);

      // The cutover primitive: pgbench sees no error across MAINTENANCE ON ... OFF.
      const bench = pgbench(app, ["-n", "-c", "4", "-T", "4"], { timeoutMs: 60_000 });
      await sleep(1000);
      await console.query("MAINTENANCE ON");
      const parked = b.query("SELECT 7 AS n");
      const parkedDone = settled(parked);
      await sleep(800);
      assert.equal(parkedDone(), false, "a query ran during maintenance");
      // The cutover: a new configuration (a smaller pool here) while everything is parked.
      await proxy.writeConfig({
        databases: [{ name: "app", host: pg.host, port: pg.port, pool_size: 3 }],
        admin: { password: ADMIN_PASSWORD },
      });
      await console.query("RELOAD");
      await console.query("MAINTENANCE OFF");
      assert.deepEqual((await parked).rows, [{ n: 7 }]);
      const run = await bench;
      assert.equal(run.code, 0, `${run.stdout}\n${run.stderr}`);
      assert.equal(run.failed ?? 0, 0, run.stdout);
      assert.ok((run.processed ?? 0) > 0);
    } finally {
      await Promise.all([a.end(), b.end(), console.end()]);
    }
  });
});

Deno.test("admin: RECONNECT, HEALTHCHECK, SET at run time", async () => {
  await using pg = await startPostgres({ databases: ["app"] });
  const { proxy: p, at, app } = await adminProxy(pg, { general: {}, poolSize: 1 });
  await using proxy = p;
  await dumpLogsOnFailure(proxy, async () => {
    const c = await connectPg(app);
    try {
      const pid = async () => (await c.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
      const before = await pid();
      assert.equal(await pid(), before);
      assert.equal((await admin(at, "RECONNECT")).code, 0);
      assert.notEqual(await pid(), before, "RECONNECT kept the old server connection");

      const checked = await admin(at, "HEALTHCHECK");
      assert.equal(checked.code, 0, checked.stderr);
      assert.deepEqual(checked.rows.map((r) => r.healthy), ["t"]);

      assert.equal((await admin(at, "SET query_timeout TO 300")).code, 0);
      assert.equal(
        (await admin(at, "SHOW CONFIG")).rows.find((r) => r.name === "query_timeout")?.value,
        "300",
      );
      await assert.rejects(c.query("SELECT pg_sleep(3)"), /query_timeout/);
      assert.equal((await admin(at, "SET query_timeout = 0")).code, 0);
      assert.equal((await c.query("SELECT pg_sleep(0.5), 1 AS one")).rows[0].one, 1);
      const bad = await admin(at, "SET read_write_strategy TO 'sometimes'");
      assert.match(bad.stderr, /read_write_strategy is one of conservative, aggressive/);
      const fixed = await admin(at, "SET port TO 1");
      assert.match(fixed.stderr, /port can't be changed at run time/);
    } finally {
      await c.end();
    }
  });
});

Deno.test("healthcheck_port: 200 while a pool is online, 502 when its host is down", async () => {
  await using pg = await startPostgres({ databases: ["app"] });
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const { proxy: p } = await adminProxy(pg, {
    general: { healthcheck_port: port, idle_healthcheck_interval: 100, idle_healthcheck_delay: 0 },
    poolSize: 2,
  });
  await using proxy = p;
  await dumpLogsOnFailure(proxy, async () => {
    const status = async () => {
      const r = await fetch(`http://127.0.0.1:${port}/`);
      await r.body?.cancel();
      return r.status;
    };
    const until = async (want: number) => {
      const deadline = Date.now() + 10_000;
      while (await status() !== want) {
        assert.ok(Date.now() < deadline, `healthcheck never answered ${want}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    await until(200);
    await pg.stop();
    await until(502);
    await pg.start();
    await until(200);
  });
});

Deno.test("openmetrics_port: /metrics moves with a pgbench workload", async () => {
  await using pg = await startPgbenchCluster();
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const { proxy: p, app } = await adminProxy(pg, {
    general: { openmetrics_port: port, openmetrics_namespace: "pgdog_" },
    poolSize: 4,
  });
  await using proxy = p;
  await dumpLogsOnFailure(proxy, async () => {
    const scrape = async () => {
      const r = await fetch(`http://127.0.0.1:${port}/metrics`);
      assert.equal(r.status, 200);
      assert.match(r.headers.get("content-type") ?? "", /openmetrics/);
      return await r.text();
    };
    const value = (text: string, name: string): number => {
      const line = text.split("\n").find((l) =>
        l.startsWith(`${name}{`) && l.includes('database="app"')
      );
      return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : NaN;
    };
    const before = await scrape();
    const run = await pgbench(app, ["-n", "-c", "4", "-t", "50"], { timeoutMs: 60_000 });
    assert.equal(run.code, 0, run.stderr);
    const after = await scrape();
    const moved = (name: string) => value(after, name) - (value(before, name) || 0);
    assert.ok(moved("pgdog_xact_count_total") >= 200, after);
    assert.ok(moved("pgdog_query_count_total") >= 200 * 7, after);
    assert.ok(moved("pgdog_received_bytes_total") > 0);
    assert.ok(moved("pgdog_query_time_seconds_total") > 0);
    assert.ok(moved("pgdog_checkout_wait_seconds_count") >= 200, after);
    assert.equal(value(after, "pgdog_pool_size"), 4);
    assert.equal(value(after, "pgdog_healthy"), 1);
    assert.match(
      after,
      /pgdog_sv_idle\{user="postgres",database="app",host="[^"]+",port="\d+",shard="0",role="primary"\}/,
    );
    assert.equal((await fetch(`http://127.0.0.1:${port}/nope`)).status, 404);
  });
});

Deno.test("logging: log_format json, log_connections / log_disconnections, log_level", async () => {
  await using pg = await startPostgres({ databases: ["app"] });
  const { proxy: p, app } = await adminProxy(pg, {
    general: { log_format: "json", log_connections: true, log_disconnections: true },
    poolSize: 1,
  });
  await using proxy = p;
  await dumpLogsOnFailure(proxy, async () => {
    const c = await connectPg(app);
    await c.query("SELECT 1");
    await c.end();
    await proxy.waitForLog(/disconnected after/, { since: 0, timeoutMs: 5000 });
    const lines = proxy.logs().trim().split("\n");
    const parsed = lines.map((l) =>
      JSON.parse(l) as { time: string; level: string; message: string }
    );
    assert.ok(
      parsed.some((l) => l.level === "info" && /logged in as postgres\/app/.test(l.message)),
    );
    assert.ok(parsed.some((l) => l.level === "info" && /disconnected after/.test(l.message)));
    assert.ok(!proxy.logs().includes("app-pw"), "a password reached the log");
  });

  const { proxy: q, app: app2 } = await adminProxy(pg, {
    general: { log_level: "warn", log_connections: true },
    poolSize: 1,
  });
  await using quiet = q;
  const c = await connectPg(app2);
  await c.query("SELECT 1");
  await c.end();
  await new Promise((r) => setTimeout(r, 200));
  assert.doesNotMatch(quiet.logs(), /logged in as|disconnected/);
});
