/**
 * Routing plugins through the real proxy (`[[plugins]]`), with psql and npm:pg:
 *
 * - the sandbox (isolation = "process"): a hostile plugin's fetch, Deno.connect, file read,
 *   import() of /etc/passwd and of a file outside its folder, environment read, subprocess, file
 *   write and FFI are each denied, and the proxy goes on serving; a plugin that throws, loops
 *   forever, allocates without bound or exits gets its on_error behaviour within its timeout, is
 *   replaced (a new process; the old one is gone, so no CPU burns on), and the log names it and
 *   what happened; `on_error = "error"` fails the statement with 58000.
 * - versioning: a plugin written for a newer API is refused at startup and on RELOAD (the running
 *   configuration stays), with a message naming the plugin and both versions.
 * - what route hooks see and answer: the context (query, parse tree with literals, Bind values,
 *   tables, read/write, transaction, cluster shape, pgdog's decision, user, database,
 *   application_name); `role` (checked on the server that answered), `shard`, `block` (42501, in
 *   and out of transactions), `rewrite` (simple and extended protocol); plugin order; the worker
 *   isolation; `hasher = "plugin:<name>"` placing rows where the plugin says.
 */

import assert from "node:assert/strict";
import type pg from "pg";
import {
  connectPg,
  dumpLogsOnFailure,
  freePort,
  type PgTarget,
  psql,
  REPO_ROOT,
  sleep,
  startPostgres,
  startProxy,
  startReplica,
  type TomlDocument,
} from "./harness/mod.ts";
import { parse as parseToml } from "smol-toml";
import { API_VERSION } from "../src/plugin/api.ts";

const USER = "postgres";
const PASSWORD = "plugin-test-pw";
const HERE = new URL(".", import.meta.url).pathname;
const plugin = (file: string): string => `${HERE}plugins/${file}`;
/** A timeout for plugins whose timing is not under test (a loaded machine is slow). */
const SLACK = 10_000;
/** pgdog's plugin API version, as a pattern. */
const HOST_API = API_VERSION.replaceAll(".", "\\.");

function proxyWith(
  pg: { host: string; port: number },
  plugins: TomlDocument[],
  extra: { general?: TomlDocument; denoFlags?: string[]; cwd?: string } = {},
) {
  return startProxy({
    config: {
      general: { idle_healthcheck_interval: 0, ...extra.general },
      databases: [{ name: "app", host: pg.host, port: pg.port, database_name: "postgres" }],
      plugins,
      admin: { password: "plugin-admin-pw" },
    },
    users: { users: [{ name: USER, password: PASSWORD, database: "app" }] },
    denoFlags: extra.denoFlags ?? ["--allow-run"],
    cwd: extra.cwd,
  });
}

function via(proxy: { target(o: { user: string; password: string; database: string }): PgTarget }) {
  return proxy.target({ user: USER, password: PASSWORD, database: "app" });
}

/** [calls, cache_hits, cached] of each plugin, by name, from SHOW PLUGINS. */
async function pluginCounters(
  proxy: { target(o: { user: string; password: string; database: string }): PgTarget },
): Promise<Map<string, number[]>> {
  const admin = proxy.target({ user: "admin", password: "plugin-admin-pw", database: "admin" });
  const r = await psql(admin, "SHOW PLUGINS");
  assert.equal(r.code, 0, r.stderr);
  return new Map(
    r.stdout.trim().split("\n").map((line) => {
      const f = line.split("|");
      return [f[0], [Number(f[4]), Number(f[9]), Number(f[10])]];
    }),
  );
}

function processAlive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

Deno.test("plugins: the process sandbox denies escapes and survives misbehaving plugins", async (t) => {
  await using pg = await startPostgres();
  await using proxy = await proxyWith(pg, [
    { name: "hostile", path: plugin("hostile.ts"), timeout: 2000, memory_mb: 48 },
  ]);
  const target = via(proxy);
  await dumpLogsOnFailure(proxy, async () => {
    const ask = async (what: string) => {
      const r = await psql(target, `select '${what}'`);
      return { ok: r.code === 0, out: r.stdout.trim(), err: r.stderr.trim() };
    };
    const pidOf = async (): Promise<number> => {
      const r = await ask("pid");
      const m = /pid (\d+)/.exec(r.err);
      assert.ok(m, `no pid in ${JSON.stringify(r)}`);
      return Number(m[1]);
    };

    await t.step("every escape is denied, and the proxy keeps serving", async () => {
      for (
        const what of [
          "fetch",
          "connect",
          "channel",
          "read",
          "import",
          "import_json",
          "import_remote",
          "env",
          "run",
          "write",
          "ffi",
        ]
      ) {
        const r = await ask(what);
        assert.equal(r.ok, false, `${what}: ${JSON.stringify(r)}`);
        assert.match(r.err, new RegExp(`ERROR:  ${what} denied: `), what);
        assert.doesNotMatch(r.err, /ALLOWED/);
        // Denied by the sandbox, not by a network that happens to be out of reach.
        if (what === "import_remote") {
          assert.match(r.err, /Requires import access to "esm\.sh:443"/);
        }
        assert.equal((await psql(target, "select 40 + 2")).stdout.trim(), "42");
      }
      assert.equal(processAlive(Number.NaN), false);
    });

    await t.step("calls are pipelined: a slow answer does not hold other clients", async () => {
      const other = await connectPg(target);
      try {
        await other.query("select 0");
        let slowDone = 0;
        const slow = psql(target, "select 'slow'").then((r) => {
          slowDone = Date.now();
          return r;
        });
        await sleep(150);
        for (let i = 1; i <= 5; i++) {
          assert.equal((await other.query(`select ${i} as n`)).rows[0].n, i);
        }
        const othersDone = Date.now();
        assert.equal((await slow).stdout.trim(), "slow");
        // The plugin answered the other client while its slow call (1200 ms) was still open.
        assert.ok(
          othersDone < slowDone,
          `others done ${slowDone - othersDone} ms after the slow one`,
        );
      } finally {
        await other.end();
      }
    });

    await t.step("a plugin that throws: pgdog's own decision (fallback), logged", async () => {
      const since = proxy.logOffset();
      const r = await ask("throw");
      assert.deepEqual([r.ok, r.out], [true, "throw"]);
      await proxy.waitForLog(/plugin "hostile": route failed: Error: the plugin threw on purpose/, {
        since,
      });
    });

    for (
      const [what, logged] of [
        ["loop", /plugin "hostile": route failed: no answer within 2000 ms/],
        ["oom", /plugin "hostile": its process ran out of memory \(memory_mb = 48\); restarting/],
        ["exit", /plugin "hostile": its process exited with code 7; restarting/],
        ["garble", /plugin "hostile": its process sent an unreadable answer: .*; restarting/],
      ] as const
    ) {
      await t.step(
        `a plugin that misbehaves (${what}) is replaced; the query still runs`,
        async () => {
          const before = await pidOf();
          const since = proxy.logOffset();
          const started = Date.now();
          const r = await ask(what);
          const took = Date.now() - started;
          // oom can pass the timeout before the heap fills; either way the statement runs.
          assert.deepEqual([r.ok, r.out], [true, what], JSON.stringify(r));
          assert.ok(took < 5000, `took ${took} ms`);
          if (what !== "oom") await proxy.waitForLog(logged, { since });
          else {
            await proxy.waitForLog(
              /plugin "hostile": (its process ran out of memory|route failed: no answer within)/,
              { since },
            );
          }
          await proxy.waitForLog(/plugin "hostile": restarted/, { since, timeoutMs: 10_000 });
          // The old process is gone: nothing keeps burning CPU.
          for (let i = 0; i < 50 && processAlive(before); i++) await sleep(100);
          assert.equal(processAlive(before), false, `process ${before} still runs`);
          const after = await pidOf();
          assert.notEqual(after, before);
          assert.equal((await psql(target, "select 'served'")).stdout.trim(), "served");
        },
      );
    }

    await t.step("SHOW PLUGINS counts calls, errors, timeouts and restarts", async () => {
      const admin = { ...target, user: "admin", password: "plugin-admin-pw", database: "admin" };
      const r = await psql(admin, "SHOW PLUGINS");
      assert.equal(r.code, 0, r.stderr);
      const [name, isolation, hooks, state, calls, errors, timeouts, restarts, channel] = r.stdout
        .trim().split("|");
      assert.deepEqual([name, isolation, hooks, state], ["hostile", "process", "route", "ready"]);
      // The fast channel, not the fallback over pipes.
      assert.equal(channel, "loopback");
      assert.ok(Number(calls) >= 20, calls);
      assert.ok(Number(errors) >= 4, errors);
      assert.ok(Number(timeouts) >= 1, timeouts);
      assert.equal(Number(restarts), 4);
    });
  });
});

Deno.test("plugins: a statement that arrives while its plugin restarts waits for it", async (t) => {
  await using pg = await startPostgres();
  for (const onError of ["fallback", "error"] as const) {
    await t.step(`on_error = ${onError}: the guard still blocks right after it hung`, async () => {
      // Long enough for a restart on a loaded machine (a process starts in about 150 ms).
      await using proxy = await proxyWith(pg, [
        { name: "guard", path: plugin("hostile.ts"), timeout: 4000, on_error: onError },
      ]);
      await dumpLogsOnFailure(proxy, async () => {
        const c = await connectPg(via(proxy));
        try {
          await c.query("create table if not exists restart_guard (id int)");
          await c.query("truncate restart_guard");
          await c.query("insert into restart_guard select generate_series(1, 10)");
          // The plugin hangs: after its timeout its process is killed and a new one started.
          const hung = c.query("select 'loop' as x");
          if (onError === "fallback") assert.equal((await hung).rows[0].x, "loop");
          else await assert.rejects(hung, (e: Error & { code?: string }) => e.code === "58000");
          // At once, while it restarts: the restarted plugin decides, not pgdog's fallback.
          await assert.rejects(
            c.query("delete from restart_guard"),
            (e: Error & { code?: string }) => {
              assert.equal(e.code, "42501", e.message);
              assert.equal(e.message, "DELETE without WHERE is blocked");
              return true;
            },
          );
          const left = await c.query("select count(*)::int as n from restart_guard");
          assert.equal(left.rows[0].n, 10);
        } finally {
          await c.end();
        }
      });
    });
  }
});

Deno.test("plugins: on_error = error and API version checks", async (t) => {
  await using pg = await startPostgres();

  await t.step("on_error = error fails the statement with 58000", async () => {
    await using proxy = await proxyWith(pg, [
      { name: "strict", path: plugin("hostile.ts"), on_error: "error", timeout: SLACK },
    ]);
    await dumpLogsOnFailure(proxy, async () => {
      const c = await connectPg(via(proxy));
      try {
        await assert.rejects(c.query("select 'throw'"), (e: Error & { code?: string }) => {
          assert.equal(e.code, "58000");
          assert.match(e.message, /plugin "strict": route failed: Error: the plugin threw/);
          return true;
        });
        assert.equal((await c.query("select 1 as x")).rows[0].x, 1);
        // Inside a transaction the error fails the transaction, as PostgreSQL's own would.
        await c.query("begin");
        await assert.rejects(c.query("select 'throw'"), /route failed/);
        await assert.rejects(c.query("select 1"), /current transaction is aborted/);
        await c.query("rollback");
      } finally {
        await c.end();
      }
    });
  });

  await t.step("a newer minor API version is refused at startup, naming both", async () => {
    await assert.rejects(
      proxyWith(pg, [{ name: "future", path: plugin("future.ts") }]),
      new RegExp(
        `plugin "future" \\(.*future\\.ts\\): it was written for plugin API 1\\.99\\.0, newer than ` +
          `pgdog's ${HOST_API}`,
      ),
    );
  });

  await t.step("and on RELOAD, where the running configuration stays", async () => {
    await using proxy = await proxyWith(pg, [
      { name: "t", path: plugin("trivial.ts"), timeout: SLACK },
    ]);
    await dumpLogsOnFailure(proxy, async () => {
      const since = proxy.logOffset();
      await proxy.writeConfig({
        general: { idle_healthcheck_interval: 0 },
        databases: [{ name: "app", host: pg.host, port: pg.port, database_name: "postgres" }],
        plugins: [{ name: "future", path: plugin("future.ts") }],
      });
      proxy.signal("SIGHUP");
      await proxy.waitForLog(
        new RegExp(`reload failed: plugin "future".*newer than pgdog's ${HOST_API}`),
        {
          since,
        },
      );
      assert.equal((await psql(via(proxy), "select 'still here'")).stdout.trim(), "still here");
    });
  });
  for (const isolation of ["process", "worker"]) {
    await t.step(
      `RELOAD restarts a ${isolation} plugin whose code or config file changed`,
      async () => {
        const cwd = await Deno.makeTempDir({ prefix: "pgdog-plugin-reload-" });
        try {
          await Deno.mkdir(`${cwd}/word`);
          const code = (version: string) =>
            'export const apiVersion = "1.0.0";\nlet word = "";\n' +
            "export function init(config: { word: string }) {\n  word = config.word;\n}\n" +
            "export function route(ctx: { query: string }) {\n" +
            `  if (ctx.query.includes("which")) return { block: \`${version} \${word}\` };\n}\n`;
          await Deno.writeTextFile(`${cwd}/word/mod.ts`, code("v1"));
          await Deno.writeTextFile(`${cwd}/word.toml`, 'word = "one"\n');
          const plugins = [{
            name: "word",
            path: "./word/mod.ts",
            config: "./word.toml",
            isolation,
            timeout: SLACK,
          }];
          await using proxy = await proxyWith(pg, plugins, { cwd });
          const answer = async () =>
            (await psql(via(proxy), "select 'which'")).stderr.split("\n")[0];
          const reload = async (expect: RegExp) => {
            const since = proxy.logOffset();
            proxy.signal("SIGHUP");
            await proxy.waitForLog(/configuration reloaded/, { since });
            return expect.test(proxy.logs().slice(since));
          };
          assert.equal(await answer(), "ERROR:  v1 one");
          // Nothing changed: the running plugin stays.
          assert.equal(await reload(/plugin "word" loaded/), false);
          await Deno.writeTextFile(`${cwd}/word.toml`, 'word = "two"\n');
          assert.equal(await reload(/plugin "word" loaded/), true);
          assert.equal(await answer(), "ERROR:  v1 two");
          await Deno.writeTextFile(`${cwd}/word/mod.ts`, code("v2"));
          assert.equal(await reload(/plugin "word" loaded/), true);
          assert.equal(await answer(), "ERROR:  v2 two");
        } finally {
          await Deno.remove(cwd, { recursive: true });
        }
      },
    );
  }
});

Deno.test("plugins: what route hooks see, and every answer", async (t) => {
  await using a = await startPostgres();
  await using b = await startPostgres();
  for (const node of [a, b]) await node.sql("create table items (id bigint primary key, v text)");
  await using r = await startReplica(a);
  await r.waitForReplay();
  const host = (node: { host: string; port: number }, extra: TomlDocument = {}) => ({
    host: node.host,
    port: node.port,
    database_name: "postgres",
    ...extra,
  });
  await using proxy = await startProxy({
    config: {
      general: {
        idle_healthcheck_interval: 0,
        lsn_check_interval: 600_000,
        read_write_split: "exclude_primary",
      },
      databases: [
        { name: "app", ...host(a, { shard: 0, role: "primary" }) },
        { name: "app", ...host(r, { shard: 0, role: "replica" }) },
        { name: "app", ...host(b, { shard: 1, role: "primary" }) },
        { name: "plain", ...host(a, { role: "primary" }) },
        { name: "plain", ...host(r, { role: "replica" }) },
      ],
      sharded_tables: [{ database: "app", name: "items", column: "id", hasher: "plugin:dir" }],
      plugins: [{
        name: "dir",
        path: plugin("directives.ts"),
        config: { greeting: "hello" },
        timeout: SLACK,
      }],
    },
    users: {
      users: [
        { name: USER, password: PASSWORD, database: "app" },
        { name: USER, password: PASSWORD, database: "plain" },
      ],
    },
    denoFlags: ["--allow-run"],
  });
  const app = proxy.target({ user: USER, password: PASSWORD, database: "app" });
  const plain = proxy.target({ user: USER, password: PASSWORD, database: "plain" });
  await dumpLogsOnFailure(proxy, async () => {
    const c = await connectPg(app, { applicationName: "ctx-test" });
    const p = await connectPg(plain);
    try {
      const echo = async (sql: string, values?: unknown[]) => {
        const e = await c.query({ text: sql, values }).then(
          () => assert.fail("echo did not block"),
          (e: Error & { code?: string; detail?: string }) => e,
        );
        assert.equal(e.code, "42501");
        assert.equal(e.detail, 'blocked by plugin "dir"');
        return JSON.parse(e.message);
      };

      await t.step("the context of an extended-protocol read with a Bind value", async () => {
        const sql = "/* plugin: echo */ select v from items where id = $1";
        const ctx = await echo(sql, [7]);
        assert.equal(ctx.query, sql);
        assert.ok(ctx.statement.stmts[0].stmt.SelectStmt, JSON.stringify(ctx.statement));
        assert.deepEqual(ctx.params, ["7"]);
        assert.deepEqual(ctx.tables, [{ name: "items" }]);
        assert.deepEqual(ctx.shardingKeys, [{ table: "items", column: "id", value: "7" }]);
        assert.equal(ctx.write, false);
        assert.equal(ctx.inTransaction, false);
        assert.deepEqual(ctx.cluster, { shards: 2, replicas: true });
        // The plugin's own hasher put 7 on shard 1 (7 mod 2).
        assert.deepEqual(ctx.decision, { role: "replica", shard: 1 });
        assert.equal(ctx.user, USER);
        assert.equal(ctx.database, "app");
        assert.equal(ctx.applicationName, "ctx-test");
        assert.deepEqual(ctx.config, { greeting: "hello" });
      });

      await t.step(
        "a simple query's tree keeps its literals; writes and transactions",
        async () => {
          let ctx = await echo("/* plugin: echo */ select v from items where id = 4");
          const where = ctx.statement.stmts[0].stmt.SelectStmt.whereClause.A_Expr;
          assert.equal(where.rexpr.A_Const.ival.ival, 4);
          assert.deepEqual(ctx.decision.shard, 0);
          ctx = await echo("/* plugin: echo */ update items set v = 'x' where id = 5");
          assert.equal(ctx.write, true);
          assert.deepEqual(ctx.decision, { role: "primary", shard: 1 });
          ctx = await echo("/* plugin: echo */ select count(*) from items");
          assert.equal(ctx.decision.shard, "all");
          await c.query("begin");
          await c.query("select 1");
          ctx = await echo("/* plugin: echo */ select 2");
          assert.equal(ctx.inTransaction, true);
          await c.query("rollback");
        },
      );

      await t.step("hasher = plugin:<name> places rows where the plugin says", async () => {
        for (let id = 1; id <= 6; id++) {
          await c.query("insert into items (id, v) values ($1, $2)", [id, `v${id}`]);
        }
        await c.query("insert into items (id, v) values (11, 'v11'), (13, 'v13')");
        const ids = async (node: typeof a) =>
          (await node.sql("select id from items order by id")).map((row) => Number(row[0]));
        assert.deepEqual(await ids(a), [2, 4, 6]);
        assert.deepEqual(await ids(b), [1, 3, 5, 11, 13]);
        await r.waitForReplay();
        const got = await c.query("select v from items where id = $1", [4]);
        assert.deepEqual(got.rows, [{ v: "v4" }]);
        const all = await c.query("select id from items");
        assert.equal(all.rows.length, 8);
      });

      await t.step("shard and role answers", async () => {
        const port = async (sql: string) => Number((await c.query(sql)).rows[0].port);
        const where = "select current_setting('port') as port";
        assert.equal(await port(`/* plugin: shard=1 */ ${where}`), b.port);
        assert.equal(await port(`/* plugin: shard=0 role=primary */ ${where}`), a.port);
        assert.equal(await port(`/* plugin: shard=0 role=replica */ ${where}`), r.port);
        // A write pgdog would send to the primary, sent to the replica by the plugin: it fails there.
        await assert.rejects(
          c.query("/* plugin: shard=0 role=replica */ insert into items values (100, 'x')"),
          /read-only transaction/,
        );
        // Without sharding: the role alone.
        const recovery = async (sql: string) =>
          (await p.query(`${sql} select pg_is_in_recovery() as r`)).rows[0].r;
        assert.equal(await recovery("/* plugin: role=replica */"), true);
        assert.equal(await recovery("/* plugin: role=primary */"), false);
        // A shard answer out of range is a failed call: pgdog's own decision (fallback).
        assert.equal(await port(`/* plugin: shard=9 */ ${where} /* id */`) > 0, true);
      });

      await t.step("block: 42501, and inside a transaction it fails the transaction", async () => {
        await assert.rejects(c.query("/* plugin: block=not today */ select 1"), (
          e: Error & {
            code?: string;
          },
        ) => {
          assert.equal(e.code, "42501");
          assert.equal(e.message, "not today");
          return true;
        });
        await p.query("begin");
        await assert.rejects(p.query("/* plugin: block=nope */ select 1"), /nope/);
        await assert.rejects(p.query("select 1"), /current transaction is aborted/);
        await p.query("rollback");
        await assert.rejects(
          p.query({ text: "/* plugin: block=ext */ select $1::int", values: [1] }),
          /ext/,
        );
        assert.equal((await p.query("select 3 as x")).rows[0].x, 3);
      });

      await t.step("rewrite: simple and extended protocol, routed again", async () => {
        const one = async (q: pg.Client, sql: string, values?: unknown[]) =>
          (await q.query({ text: sql, values })).rows[0].r;
        assert.equal(
          await one(p, "/* plugin: rewrite=select 'rewritten' as r */ select 'original' as r"),
          "rewritten",
        );
        assert.equal(
          await one(p, "/* plugin: rewrite=select $1::text || '!' as r */ select $1::text as r", [
            "x",
          ]),
          "x!",
        );
        // The rewritten statement is routed on its own: a key in it picks the shard.
        assert.equal(
          await one(c, "/* plugin: rewrite=select v as r from items where id = 3 */ select 1 as r"),
          "v3",
        );
      });
    } finally {
      await c.end();
      await p.end();
    }
  });
});

Deno.test("plugins: order, and worker isolation", async (t) => {
  await using pg = await startPostgres();

  await t.step("the first plugin with an opinion on a field decides it", async () => {
    await using proxy = await proxyWith(pg, [
      { name: "first", path: plugin("directives.ts"), timeout: SLACK },
      {
        name: "second",
        path: plugin("directives.ts"),
        config: { always: { block: "second" } },
        timeout: SLACK,
      },
      // The start task's narrow grant: plugin processes run as `deno` from PATH.
    ], { denoFlags: ["--allow-run=deno"] });
    await dumpLogsOnFailure(proxy, async () => {
      const first = await psql(via(proxy), "/* plugin: block=first */ select 1");
      assert.match(first.stderr, /ERROR: {2}first\n/);
      const second = await psql(via(proxy), "select 1");
      assert.match(second.stderr, /ERROR: {2}second\n/);
    });
  });

  await t.step("cacheRoute: a kept answer stands for its text, Bind values aside", async () => {
    const metricsPort = await freePort();
    await using proxy = await proxyWith(pg, [
      { name: "kept", path: plugin("cached.ts"), timeout: SLACK, cache_size: 3 },
      { name: "asked", path: plugin("trivial.ts"), timeout: SLACK },
    ], { general: { openmetrics_port: metricsPort, openmetrics_namespace: "pgdog_" } });
    await dumpLogsOnFailure(proxy, async () => {
      const counters = async () => [...(await pluginCounters(proxy)).values()];
      const c = await connectPg(via(proxy));
      try {
        for (let i = 0; i < 3; i++) {
          assert.equal((await c.query("select 1 as one")).rows[0].one, 1);
        }
        // Extended protocol, other values each time: still one text.
        for (const v of [1, 2, 3]) {
          assert.equal((await c.query("select $1::int as v", [v])).rows[0].v, v);
        }
        assert.deepEqual(await counters(), [[2, 4, 2], [6, 0, 0]]);
        for (let i = 0; i < 2; i++) {
          await assert.rejects(c.query("select 'blocked'"), (e: Error & { code?: string }) => {
            assert.equal(e.code, "42501");
            assert.equal(e.message, "blocked by a kept answer");
            return true;
          });
          assert.equal((await c.query("select 'rewrite me' as r")).rows[0].r, "rewritten");
        }
        // The first text kept ("select 1 as one") made room for the fourth.
        assert.deepEqual(await counters(), [[4, 6, 3], [10, 0, 0]]);
        await c.query("select 1 as one");
        // A failed call is not kept: asked again (and pgdog's own decision stands).
        for (let i = 0; i < 2; i++) await c.query("select 'throw'");
        assert.deepEqual((await counters())[0].slice(0, 2), [7, 6]);
      } finally {
        await c.end();
      }
      // Another application_name is another statement.
      const other = await connectPg(via(proxy), { applicationName: "other" });
      try {
        await other.query("select $1::int as v", [4]);
      } finally {
        await other.end();
      }
      assert.deepEqual((await counters())[0].slice(0, 2), [8, 6]);
      // The same counters in OpenMetrics.
      const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      const metric = (name: string, plugin: string): number => {
        const line = metrics.split("\n")
          .find((l) =>
            l.startsWith(`pgdog_plugin_${name}{plugin="${plugin}",isolation="process"}`)
          );
        assert.ok(line, `no pgdog_plugin_${name} for ${plugin} in:\n${metrics}`);
        return Number(line.split(" ").at(-1));
      };
      assert.deepEqual(
        ["calls_total", "cache_hits_total", "cached", "errors_total", "ready"].map((m) =>
          metric(m, "kept")
        ),
        [8, 6, 3, 2, 1],
      );
      assert.equal(metric("calls_total", "asked"), 14);
    });
  });

  await t.step('cacheRoute "shape": one answer for texts differing in constants', async () => {
    await using proxy = await proxyWith(pg, [
      { name: "shape", path: plugin("shape_cached.ts"), timeout: SLACK },
    ]);
    await dumpLogsOnFailure(proxy, async () => {
      const counters = async () => (await pluginCounters(proxy)).get("shape");
      const c = await connectPg(via(proxy));
      try {
        // Simple protocol: other constants, a comment, the same shape.
        for (const text of ["select 1 as one", "select 2 as one", "/* hi */ select 3 as one"]) {
          assert.equal((await c.query(text)).rows.length, 1);
        }
        assert.deepEqual(await counters(), [1, 2, 1]);
        for (const v of [1, 2]) {
          await assert.rejects(c.query(`select ${v} as secret`), (e: Error & { code?: string }) => {
            assert.equal(e.code, "42501");
            assert.equal(e.message, "secret is not to be read");
            return true;
          });
        }
        assert.deepEqual(await counters(), [2, 3, 2]);
        // A rewrite carries one statement's values: asked again for each.
        for (const v of [5, 6]) {
          assert.equal((await c.query(`select ${v} as rewrite_me`)).rows[0].rewritten, v);
        }
        assert.deepEqual(await counters(), [4, 3, 2]);
      } finally {
        await c.end();
      }
    });
  });

  await t.step(
    "a module by URL: its own host may be imported from, others when granted",
    async () => {
      const requested: string[] = [];
      const serve = (files: Record<string, string>) =>
        Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
          requested.push(new URL(req.url).pathname);
          const body = files[new URL(req.url).pathname];
          return body === undefined ? new Response("not found", { status: 404 }) : new Response(
            body,
            { headers: { "content-type": "application/typescript" } },
          );
        });
      const helper = serve({ "/note.ts": 'export const note = "from another host";' });
      const helperHost = `127.0.0.1:${helper.addr.port}`;
      // Deno caches remote modules by URL: a port reused from an earlier run must not bring
      // back that run's module.
      const nonce = crypto.randomUUID();
      // Once loaded, a plugin may not import from its own host: that would carry data out.
      const leak = "  if (ctx.query.includes('leak')) {\n" +
        "    const url = new URL(`/leak.ts?q=${encodeURIComponent(ctx.query)}`, import.meta.url);\n" +
        "    return import(url.href).then(() => ({ block: 'leak ALLOWED' }),\n" +
        "      (e: Error) => ({ block: `leak denied: ${e.message}` }));\n  }\n";
      const origin = serve({
        "/plain.ts": 'export const apiVersion = "1.0.0";\n' +
          "export function route(ctx: { query: string }) {\n" + leak +
          '  if (ctx.query.includes("remote")) return { block: "loaded over http" };\n}\n',
        "/importing.ts": `import { note } from "http://${helperHost}/note.ts?run=${nonce}";\n` +
          'export const apiVersion = "1.0.0";\n' +
          "export function route(ctx: { query: string }) {\n" + leak +
          '  if (ctx.query.includes("remote")) return { block: note };\n}\n',
        "/leak.ts": "export {};",
      });
      const leakDenied = async (target: PgTarget) => {
        const r = await psql(target, "select 'leak'");
        assert.match(r.stderr, /ERROR: {2}leak denied: Requires import access/);
        assert.equal(requested.filter((path) => path.startsWith("/leak")).length, 0);
      };
      const url = (file: string) => `http://127.0.0.1:${origin.addr.port}/${file}?run=${nonce}`;
      try {
        {
          await using proxy = await proxyWith(pg, [
            { name: "plain", path: url("plain.ts"), timeout: SLACK },
          ]);
          const r = await psql(via(proxy), "select 'remote'");
          assert.match(r.stderr, /ERROR: {2}loaded over http\n/);
          await leakDenied(via(proxy));
        }
        await assert.rejects(
          proxyWith(pg, [{ name: "importing", path: url("importing.ts"), timeout: SLACK }]),
          new RegExp(`plugin "importing".*Requires import access to "${helperHost}"`),
        );
        await using proxy = await proxyWith(pg, [{
          name: "importing",
          path: url("importing.ts"),
          timeout: SLACK,
          permissions: { import: [helperHost] },
        }]);
        const r = await psql(via(proxy), "select 'remote'");
        assert.match(r.stderr, /ERROR: {2}from another host\n/);
        // A Worker imports with the same grants, which pgdog itself must hold.
        const worker = {
          name: "importing",
          path: url("importing.ts"),
          isolation: "worker",
          timeout: SLACK,
          permissions: { import: [helperHost] },
        };
        await assert.rejects(
          proxyWith(pg, [worker]),
          new RegExp(
            'plugin "importing".*a worker plugin can be granted only what pgdog itself was ' +
              `granted: run pgdog with --allow-import=\\S*${helperHost} too, or use ` +
              'isolation = "process"',
          ),
        );
        const origins = `127.0.0.1:${origin.addr.port},${helperHost}`;
        // --no-lock: a Worker's modules load through pgdog's own process, which would record
        // these throwaway URLs in the repository's deno.lock.
        await using inWorker = await proxyWith(pg, [worker], {
          denoFlags: [`--allow-import=${origins}`, "--no-lock"],
        });
        const w = await psql(via(inWorker), "select 'remote'");
        assert.match(w.stderr, /ERROR: {2}from another host\n/);
        await leakDenied(via(inWorker));
      } finally {
        await origin.shutdown();
        await helper.shutdown();
      }
    },
  );

  await t.step("imports from Deno's default hosts: while loading, not after", async () => {
    for (const isolation of ["process", "worker"]) {
      await using proxy = await proxyWith(pg, [
        { name: "probe", path: plugin("import_probe.ts"), isolation, timeout: SLACK },
      ]);
      const r = await psql(via(proxy), "select 'import_probe'");
      assert.match(r.stderr, /ERROR: {2}at load granted, now prompt\n/, isolation);
    }
  });

  await t.step(
    "npm dependencies: in either isolation, and not into pgdog's node_modules",
    async () => {
      for (const isolation of ["process", "worker"]) {
        await using proxy = await proxyWith(pg, [
          { name: "npm", path: plugin("npm_dependency.ts"), isolation, timeout: SLACK },
        ]);
        const r = await psql(via(proxy), "select 'a = 1'");
        assert.match(r.stderr, /ERROR: {2}toml: \{"a":1\}\n/, isolation);
      }
      // A package pgdog does not use: a plugin process takes it from Deno's cache (downloading it
      // the first time) instead of installing it into pgdog's node_modules.
      const dir = await Deno.makeTempDir({ prefix: "pgdog-npm-plugin-" });
      try {
        await Deno.writeTextFile(
          `${dir}/mod.ts`,
          'import isNumber from "npm:is-number@7.0.0";\nexport const apiVersion = "1.0.0";\n' +
            "export function route() {\n" +
            '  return { block: `is-number: ${isNumber("42")} ${isNumber("x")}` };\n}\n',
        );
        await using proxy = await proxyWith(pg, [
          { name: "own", path: `${dir}/mod.ts`, timeout: SLACK },
        ]);
        const r = await psql(via(proxy), "select 1");
        assert.match(r.stderr, /ERROR: {2}is-number: true false\n/);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
      for (const path of ["node_modules/is-number", "node_modules/.deno/is-number@7.0.0"]) {
        const installed = await Deno.lstat(`${REPO_ROOT}/${path}`).then(() => true, () => false);
        assert.equal(installed, false, `${path} was installed`);
      }
    },
  );

  await t.step(
    "a plugin's own deno.json: its import map and lockfile, not its permissions",
    async () => {
      const dir = await Deno.makeTempDir({ prefix: "pgdog-plugin-project-" });
      const module = (specifier: string): string =>
        `import isNumber from "${specifier}";\nexport const apiVersion = "1.0.0";\n` +
        "export function route() {\n" +
        '  let env = "denied";\n' +
        '  try { Deno.env.get("HOME"); env = "granted"; } catch { /* the sandbox */ }\n' +
        '  return { block: `is-number: ${isNumber("42")} ${isNumber("x")}, env ${env}` };\n}\n';
      // pgdog finds a plugin's deno.json where it may read (cwd: pgdog reads its working directory).
      const answers = async (): Promise<void> => {
        await using proxy = await proxyWith(pg, [entry], { cwd: dir });
        const r = await psql(via(proxy), "select 1");
        assert.match(r.stderr, /ERROR: {2}is-number: true false, env denied\n/);
      };
      const entry = { name: "own", path: `${dir}/mod.ts`, timeout: SLACK };
      try {
        // Permissions a deno.json lists apply only to a run that asks for them (-P): not this one.
        await Deno.writeTextFile(
          `${dir}/deno.json`,
          JSON.stringify({
            imports: { "is-number": "npm:is-number@7.0.0" },
            permissions: { default: { env: true, read: true, net: true } },
          }),
        );
        await Deno.writeTextFile(`${dir}/mod.ts`, module("is-number"));
        await answers();
        // The lockfile its own tooling writes is used as it is: a dependency not in it is refused.
        const install = await new Deno.Command(Deno.execPath(), {
          args: ["install", "--entrypoint", "mod.ts"],
          cwd: dir,
          env: { NO_COLOR: "1" },
        }).output();
        assert.equal(install.code, 0, new TextDecoder().decode(install.stderr));
        await answers();
        await Deno.writeTextFile(`${dir}/mod.ts`, module("npm:is-number@6.0.0"));
        await assert.rejects(
          proxyWith(pg, [entry], { cwd: dir }),
          /plugin "own".*lockfile is out of date/s,
        );
        // A worker resolves imports with pgdog's deno.json, and says so.
        await Deno.writeTextFile(`${dir}/mod.ts`, module("is-number"));
        await assert.rejects(
          proxyWith(pg, [{ ...entry, isolation: "worker" }], { cwd: dir }),
          /plugin "own" has a deno\.json of its own \(\S+\), which a worker does not use/,
        );
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  );

  await t.step("config from a TOML file; permissions granted reach the sandbox", async () => {
    await using proxy = await proxyWith(pg, [
      {
        name: "dir",
        path: plugin("directives.ts"),
        config: plugin("directives.toml"),
        timeout: SLACK,
      },
      {
        name: "hostile",
        path: plugin("hostile.ts"),
        timeout: SLACK,
        permissions: { read: ["/etc/passwd"], env: ["PATH"] },
      },
    ]);
    await dumpLogsOnFailure(proxy, async () => {
      const echo = await psql(via(proxy), "/* plugin: echo */ select 1");
      const ctx = JSON.parse(/ERROR: {2}(.*)\n/.exec(echo.stderr)![1]);
      assert.deepEqual(ctx.config, { greeting: "from a file", limit: 7 });
      for (const what of ["read", "env"]) {
        const r = await psql(via(proxy), `select '${what}'`);
        assert.match(r.stderr, new RegExp(`${what} ALLOWED`));
      }
      for (const what of ["fetch", "write", "import_json"]) {
        const r = await psql(via(proxy), `select '${what}'`);
        assert.match(r.stderr, new RegExp(`${what} denied`));
      }
    });
  });

  await t.step("a process talks over pipes where pgdog may not listen on loopback", async () => {
    await using proxy = await proxyWith(
      pg,
      [{ name: "d", path: plugin("directives.ts"), timeout: SLACK }],
      // pgdog's own port fixed: the denied "port 0" is only the plugin channel's listener.
      { denoFlags: ["--allow-run", "--deny-net=127.0.0.1:0"], general: { port: await freePort() } },
    );
    await dumpLogsOnFailure(proxy, async () => {
      await proxy.waitForLog(/plugin "d" talks over pipes, about twice as slow/);
      const blocked = await psql(via(proxy), "/* plugin: block=over pipes */ select 1");
      assert.match(blocked.stderr, /ERROR: {2}over pipes\n/);
      const admin = {
        ...via(proxy),
        user: "admin",
        password: "plugin-admin-pw",
        database: "admin",
      };
      const r = await psql(admin, "SHOW PLUGINS");
      assert.equal(r.stdout.trim().split("|")[8], "pipes", r.stdout);
    });
  });

  await t.step("isolation = worker: answers, and the worker's permissions hold", async () => {
    await using proxy = await proxyWith(pg, [
      { name: "w", path: plugin("directives.ts"), isolation: "worker", timeout: SLACK },
      // A generous timeout: a first fetch in a fresh worker can be slow on a loaded machine.
      { name: "h", path: plugin("hostile.ts"), isolation: "worker", timeout: 3000 },
    ]);
    await dumpLogsOnFailure(proxy, async () => {
      await proxy.waitForLog(/plugin "w" loaded \(worker; hooks: init, route, shard\)/);
      const blocked = await psql(via(proxy), "/* plugin: block=from a worker */ select 1");
      assert.match(blocked.stderr, /ERROR: {2}from a worker\n/);
      const rewritten = await psql(via(proxy), "/* plugin: rewrite=select 'w' */ select 'x'");
      assert.equal(rewritten.stdout.trim(), "w");
      for (const what of ["fetch", "connect", "read", "env", "run", "write", "import_remote"]) {
        const r = await psql(via(proxy), `select '${what}'`);
        assert.match(r.stderr, new RegExp(`ERROR:  ${what} denied: `), r.stderr);
        if (what === "import_remote") {
          assert.match(r.stderr, /Requires import access to "esm\.sh:443"/);
        }
      }
      const thrown = await psql(via(proxy), "select 'throw'");
      assert.equal(thrown.stdout.trim(), "throw");
    });
    // A worker cannot be granted what pgdog lacks (pgdog reads only its own files here).
    await assert.rejects(
      proxyWith(pg, [{
        name: "wide",
        path: plugin("trivial.ts"),
        isolation: "worker",
        permissions: { read: ["/etc/hostname"] },
      }]),
      /plugin "wide".*run pgdog with --allow-read=\S*\/etc\/hostname too, or use isolation = "process"/,
    );
  });
});

Deno.test("plugins: the example plugins in plugins/, through the proxy", async (t) => {
  await using a = await startPostgres();
  await using b = await startPostgres();
  for (const node of [a, b]) {
    await node.sql(
      "create table users (id bigint primary key, name text); " +
        "create table orders (id int primary key); insert into orders values (1), (2); " +
        "create table events (id int); insert into events select generate_series(1, 5)",
    );
  }
  await using r = await startReplica(a);
  await r.waitForReplay();
  const examples = new URL("../plugins/", import.meta.url).pathname;
  // "Writing a plugin" (plugins/README.md): its first plugin and its entry, as the page shows them.
  const page = await Deno.readTextFile(`${examples}README.md`);
  const firstPlugin = page.slice(page.indexOf("## A first plugin"), page.indexOf("## Hooks"));
  const block = (lang: string): string => {
    const m = new RegExp("```" + lang + "\\n([\\s\\S]*?)```").exec(firstPlugin);
    assert.ok(m, `no ${lang} block under "A first plugin"`);
    return m[1];
  };
  await using docs = {
    dir: await Deno.makeTempDir({ prefix: "pgdog-docs-plugin-" }),
    async [Symbol.asyncDispose]() {
      await Deno.remove(this.dir, { recursive: true });
    },
  };
  const docsEntry = (parseToml(block("toml")) as { plugins: TomlDocument[] }).plugins[0];
  const docsModule = `${docs.dir}/${String(docsEntry.path).replace(/^\.\//, "")}`;
  await Deno.mkdir(docsModule.slice(0, docsModule.lastIndexOf("/")), { recursive: true });
  await Deno.writeTextFile(docsModule, block("ts"));
  const host = (node: { host: string; port: number }, extra: TomlDocument) => ({
    host: node.host,
    port: node.port,
    database_name: "postgres",
    ...extra,
  });
  await using proxy = await startProxy({
    config: {
      general: {
        idle_healthcheck_interval: 0,
        lsn_check_interval: 600_000,
        read_write_split: "exclude_primary",
      },
      databases: [
        { name: "app", ...host(a, { shard: 0 }) },
        { name: "app", ...host(r, { shard: 0, role: "replica" }) },
        { name: "app", ...host(b, { shard: 1 }) },
        { name: "plain", ...host(a, { role: "primary" }) },
        { name: "plain", ...host(r, { role: "replica" }) },
      ],
      sharded_tables: [
        { database: "app", name: "users", column: "id", hasher: "plugin:modulo_sharding" },
      ],
      admin: { password: "plugin-admin-pw" },
      plugins: [
        { name: "guard", path: `${examples}guard/mod.ts`, timeout: SLACK, on_error: "error" },
        {
          name: "primary_only_tables",
          path: `${examples}primary_only_tables/mod.ts`,
          config: { tables: ["orders"] },
          timeout: SLACK,
        },
        {
          name: "tenant_router",
          path: `${examples}tenant_router/mod.ts`,
          config: { tenants: { acme: 0, globex: 1 } },
          timeout: SLACK,
        },
        { name: "modulo_sharding", path: `${examples}modulo_sharding/mod.ts`, timeout: SLACK },
        {
          name: "limit_rewriter",
          path: `${examples}limit_rewriter/mod.ts`,
          config: { tables: ["events"], limit: 2 },
          timeout: SLACK,
        },
        { ...docsEntry, path: docsModule, timeout: SLACK },
      ],
    },
    users: {
      users: [
        { name: USER, password: PASSWORD, database: "app" },
        { name: USER, password: PASSWORD, database: "plain" },
      ],
    },
    denoFlags: ["--allow-run"],
  });
  const app = proxy.target({ user: USER, password: PASSWORD, database: "app" });
  const plain = proxy.target({ user: USER, password: PASSWORD, database: "plain" });
  const port = "select current_setting('port')::int as port";
  await dumpLogsOnFailure(proxy, async () => {
    await t.step("modulo_sharding: rows where id mod 2 says", async () => {
      const c = await connectPg(app);
      try {
        for (let id = 1; id <= 4; id++) {
          await c.query("insert into users (id, name) values ($1, $2)", [id, `u${id}`]);
        }
      } finally {
        await c.end();
      }
      const ids = async (node: typeof a) =>
        (await node.sql("select id from users order by id")).map((row) => Number(row[0]));
      assert.deepEqual(await ids(a), [2, 4]);
      assert.deepEqual(await ids(b), [1, 3]);
      // It declares cacheShard: a key it was asked about is not asked again.
      const again = await connectPg(app);
      try {
        for (let i = 0; i < 2; i++) {
          const found = await again.query("select name from users where id = $1", [3]);
          assert.equal(found.rows[0].name, "u3");
        }
      } finally {
        await again.end();
      }
      // calls, cache_hits, cached: four keys asked, then key 3 found twice.
      assert.deepEqual((await pluginCounters(proxy)).get("modulo_sharding"), [4, 2, 4]);
    });

    await t.step("tenant_router: a comment, or application_name", async () => {
      const c = await connectPg(app);
      const acme = await connectPg(app, { applicationName: "tenant:acme" });
      try {
        const at = async (q: typeof c, sql: string) => Number((await q.query(sql)).rows[0].port);
        assert.equal(await at(c, `/* tenant: globex */ ${port} from events limit 1`), b.port);
        assert.equal(await at(c, `/* tenant: acme */ ${port} from events limit 1`), r.port);
        assert.equal(await at(acme, `${port} from events limit 1`), r.port);
        // primary_only_tables has an opinion on the role only: both apply.
        assert.equal(await at(acme, `${port} from orders limit 1`), a.port);
      } finally {
        await c.end();
        await acme.end();
      }
    });

    await t.step("Writing a plugin: the first plugin works as the page shows it", async () => {
      const reports = await connectPg(plain, { applicationName: "reports" });
      try {
        // A read pgdog would send to the primary (the comment) goes to the replica.
        const read = await reports.query(`/* pgdog_role: primary */ ${port} from events limit 1`);
        assert.equal(Number(read.rows[0].port), r.port);
        await assert.rejects(
          reports.query("insert into events values (9)"),
          (e: Error & { code?: string }) => {
            assert.equal(e.code, "42501");
            assert.equal(e.message, "reports connections are read-only");
            return true;
          },
        );
      } finally {
        await reports.end();
      }
    });

    await t.step("primary_only_tables, guard and limit_rewriter", async () => {
      const c = await connectPg(plain);
      try {
        const at = async (sql: string) => Number((await c.query(sql)).rows[0].port);
        assert.equal(await at(`${port} from orders limit 1`), a.port);
        assert.equal(await at(`${port} from events limit 1`), r.port);
        await assert.rejects(c.query("delete from orders"), (e: Error & { code?: string }) => {
          assert.equal(e.code, "42501");
          assert.match(e.message, /DELETE without WHERE on table "orders" is blocked by the guard/);
          return true;
        });
        await c.query("delete from orders where id = 2");
        assert.equal((await a.sql("select count(*) from orders"))[0][0], "1");
        assert.equal((await c.query("select id from events")).rows.length, 2);
        assert.equal((await c.query("select id from events limit 4")).rows.length, 4);
        assert.equal((await c.query("select id from events where id > $1", [1])).rows.length, 2);
        // guard and primary_only_tables declare cacheRoute "shape": other constants, no new call;
        // limit_rewriter keeps nothing.
        const before = await pluginCounters(proxy);
        for (const id of [1, 7, 9]) {
          const sql = `${port}, (select count(*) from orders where id = ${id}) as n`;
          assert.equal(await at(sql), a.port);
        }
        const after = await pluginCounters(proxy);
        // [calls, cache_hits] added by the three statements.
        const change = (name: string) =>
          after.get(name)!.slice(0, 2).map((n, i) => n - before.get(name)![i]);
        assert.deepEqual(change("guard"), [1, 2]);
        assert.deepEqual(change("primary_only_tables"), [1, 2]);
        assert.deepEqual(change("limit_rewriter"), [3, 0]);
      } finally {
        await c.end();
      }
    });
  });
});
