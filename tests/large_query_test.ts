/**
 * Large queries with the query parser on, through the real proxy:
 *
 * - one client's 3.6 MB multi-statement query (`SELECT 1;` 400,000 times) does not hold the
 *   others: a connected client's `SELECT 1` and a new login stay fast while it is parsed (off the
 *   event loop), and pgdog's resident memory does not keep what the parse took;
 * - `query_size_limit`: `warn` logs the query and runs it; `block` refuses a Query or Parse over
 *   the limit from its header, with FATAL 54000, and disconnects;
 * - a sharded database refuses a statement too large to route by its parse tree, with a clear
 *   error, rather than guess a shard.
 */

import assert from "node:assert/strict";
import {
  connectPg,
  dumpLogsOnFailure,
  runCommand,
  startPostgres,
  startProxy,
  startSharded,
} from "./harness/mod.ts";

const USER = "postgres";
const PASSWORD = "large-query-pw";
const encoder = new TextEncoder();

/** VmRSS of a process, in bytes. */
async function rssOf(pid: number): Promise<number> {
  const r = await runCommand("cat", [`/proc/${pid}/status`], { timeoutMs: 10_000 });
  return Number(r.stdout.match(/VmRSS:\s+(\d+) kB/)?.[1] ?? NaN) * 1024;
}

const MB = (n: number): string => `${(n / 1048576).toFixed(0)} MB`;

function message(type: string, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + body.length);
  out[0] = type.charCodeAt(0);
  new DataView(out.buffer).setInt32(1, 4 + body.length);
  out.set(body, 5);
  return out;
}

/**
 * Logs in (trust), sends `sql` as one Query and reads everything up to its ReadyForQuery without
 * decoding it (the reply is large: this process measures other clients meanwhile). Resolves with
 * what ended it: "ready", or the connection's end.
 */
async function bigQuery(target: { host: string; port: number }, sql: string): Promise<string> {
  const conn = await Deno.connect({ hostname: target.host, port: target.port });
  try {
    const params = encoder.encode(`user\0${USER}\0database\0app\0\0`);
    const startup = new Uint8Array(8 + params.length);
    new DataView(startup.buffer).setInt32(0, startup.length);
    new DataView(startup.buffer).setInt32(4, 196608);
    startup.set(params, 8);
    await conn.write(startup);
    const buf = new Uint8Array(1 << 16);
    // ReadyForQuery, idle: the end of the login, then of the query.
    const ready = [0x5a, 0, 0, 0, 5, 0x49];
    const endsReady = (n: number): boolean => n >= 6 && ready.every((b, i) => buf[n - 6 + i] === b);
    let readies = 0;
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) return "closed";
      if (!endsReady(n)) continue;
      if (++readies === 2) return "ready";
      const q = message("Q", encoder.encode(sql + "\0"));
      // Written while the reply is read: a large reply must not wait for the write to finish.
      (async () => {
        for (let o = 0; o < q.length;) o += await conn.write(q.subarray(o));
      })().catch(() => {});
    }
  } finally {
    conn.close();
  }
}

Deno.test("a large query does not hold other clients, and its memory goes back", async (t) => {
  await using pg = await startPostgres();
  await using proxy = await startProxy({
    config: {
      general: { idle_healthcheck_interval: 0, query_parser: "on", auth_type: "trust" },
      databases: [{ name: "app", host: pg.host, port: pg.port, database_name: "postgres" }],
    },
    users: { users: [{ name: USER, password: PASSWORD, database: "app" }] },
  });
  const target = proxy.target({ user: USER, password: PASSWORD, database: "app" });
  await dumpLogsOnFailure(proxy, async () => {
    const other = await connectPg(target);
    try {
      // Warm up: the parser, a server connection, a small multi-statement query.
      for (let i = 0; i < 20; i++) await other.query("SELECT 1; SELECT 2");
      // 3.6 MB: beyond what pgdog parses (routed as a write); 900 KB: parsed in the worker.
      for (const count of [400_000, 100_000]) {
        await t.step(`SELECT 1; ${count} times`, () => measure("SELECT 1;".repeat(count)));
      }
      assert.equal((await other.query("SELECT 41 + 1 AS x")).rows[0].x, 42);
    } finally {
      await other.end();
    }

    async function measure(big: string): Promise<void> {
      const before = await rssOf(proxy.pid);
      let done = false;
      const running = bigQuery(proxy, big).finally(() => done = true);
      // Meanwhile: a connected client's SELECT 1, and new logins.
      let worst = 0;
      let worstLogin = 0;
      let queries = 0;
      const started = Date.now();
      while (!done && Date.now() - started < 60_000) {
        const t0 = performance.now();
        await other.query("SELECT 1");
        worst = Math.max(worst, performance.now() - t0);
        queries++;
        if (queries % 20 === 0) {
          const t1 = performance.now();
          const fresh = await connectPg(target);
          await fresh.query("SELECT 1");
          await fresh.end();
          worstLogin = Math.max(worstLogin, performance.now() - t1);
        }
        await new Promise((r) => setTimeout(r, 5));
      }
      const ended = await running;
      const took = Date.now() - started;
      assert.equal(ended, "ready");
      assert.ok(queries > 10, `only ${queries} queries ran in ${took} ms`);
      // Loose bounds for a shared machine: before, every other query waited for seconds.
      assert.ok(worst < 500, `SELECT 1 took up to ${worst.toFixed(0)} ms (big query: ${took} ms)`);
      assert.ok(worstLogin < 1500, `a login took up to ${worstLogin.toFixed(0)} ms`);
      // The parse's memory goes back (the worker ends soon after a large text); before, RSS grew
      // by about 500 MB and stayed.
      let after = await rssOf(proxy.pid);
      for (let i = 0; i < 20 && after - before > 150 << 20; i++) {
        await new Promise((r) => setTimeout(r, 500));
        after = await rssOf(proxy.pid);
      }
      assert.ok(after - before < 150 << 20, `RSS ${MB(before)} -> ${MB(after)}`);
    }
  });
});

Deno.test("query_size_limit: warn logs and runs, block refuses before reading", async (t) => {
  await using pg = await startPostgres();
  const wide = `SELECT ${Array.from({ length: 100 }, (_, i) => `${i} AS col_${i}`).join(", ")}`;
  const size = 5 + encoder.encode(wide).length + 1;
  for (const action of ["warn", "block"] as const) {
    await t.step(action, async () => {
      await using proxy = await startProxy({
        config: {
          general: {
            idle_healthcheck_interval: 0,
            query_size_limit: 1024,
            query_size_limit_action: action,
          },
          databases: [{ name: "app", host: pg.host, port: pg.port, database_name: "postgres" }],
        },
        users: { users: [{ name: USER, password: PASSWORD, database: "app" }] },
      });
      const target = proxy.target({ user: USER, password: PASSWORD, database: "app" });
      await dumpLogsOnFailure(proxy, async () => {
        const c = await connectPg(target, { onError: () => {} });
        try {
          assert.equal((await c.query("SELECT 1 AS x")).rows[0].x, 1);
          const since = proxy.logOffset();
          if (action === "warn") {
            const r = await c.query(wide);
            assert.equal(r.rows[0].col_99, 99);
            await proxy.waitForLog(
              new RegExp(
                `WARN \\[large_query\\] size=${size}B query_size_limit=1024B 'SELECT 0 AS col_0, ` +
                  `1 AS col_1.*\\.\\.\\.' \\[database: app, user: ${USER}\\]`,
              ),
              { since },
            );
            // In a prepared statement too (the Parse message).
            const p = await c.query({
              name: "wide",
              text: wide.replace("0 AS", "$1::int AS"),
              values: [5],
            });
            assert.equal(p.rows[0].col_0, 5);
          } else {
            await assert.rejects(c.query(wide), (e: Error & { code?: string; detail?: string }) => {
              assert.equal(e.code, "54000");
              assert.equal(e.message, "query size exceeds query_size_limit");
              assert.equal(e.detail, `message is ${size} bytes, query_size_limit is 1024 bytes`);
              return true;
            });
            await proxy.waitForLog(
              new RegExp(
                `ERROR client \\d+ \\(${USER}@app\\): \\[large_query\\] refused a message of ${size} bytes`,
              ),
              { since },
            );
            // The connection is gone; others are served, and a small query still works.
            await assert.rejects(c.query("SELECT 1"));
            const d = await connectPg(target);
            assert.equal((await d.query("SELECT 2 AS x")).rows[0].x, 2);
            // A Parse over the limit is refused the same way.
            await assert.rejects(
              d.query({ name: "wide", text: wide.replace("0 AS", "$1::int AS"), values: [5] }),
              (e: Error & { code?: string }) => e.code === "54000",
            );
            await d.end().catch(() => {});
          }
        } finally {
          await c.end().catch(() => {});
        }
      });
    });
  }
});

Deno.test("sharded: a statement too large to route by its tree is refused, not guessed", async () => {
  await using setup = await startSharded({
    shardedTables: [{ name: "items", column: "id" }],
    schema: "CREATE TABLE items (id bigint PRIMARY KEY, v text)",
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    const c = await connectPg(setup.target);
    try {
      // About 2,000 rows: analyzed whole (off the event loop), routed by its keys.
      const some = Array.from({ length: 2000 }, (_, i) => `(${i * 3}, 'v')`).join(", ");
      await assert.rejects(
        c.query(`INSERT INTO items (id, v) VALUES ${some}`),
        /rows for different shards|several shards|different shards/,
      );
      const one = "SELECT v FROM items WHERE id = 3;".repeat(300);
      assert.ok(one.length > 8192);
      await c.query(one);
      // 25,000 statements (850 KB): its tree would be tens of MB; refused with the reason.
      const huge = "SELECT v FROM items WHERE id = 3;".repeat(25_000);
      await assert.rejects(c.query(huge), (e: Error & { code?: string }) => {
        assert.equal(e.code, "0A000");
        assert.match(e.message, /too large to route by its parse tree .*a sharded database/);
        return true;
      });
      // Chosen by hand, it runs.
      const r = await c.query(`/* pgdog_shard: 0 */ ${one.repeat(100)}`);
      assert.equal(r.length, 30_000);
    } finally {
      await c.end();
    }
  });
});
