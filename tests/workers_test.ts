/**
 * `[general] workers = 2`: two event loops share the port. Many short connections all succeed
 * and land on both workers, the server connections of both stay within pool_size in total,
 * CancelRequests reach a client of the other worker, PAUSE/RESUME, RELOAD and SIGHUP reach
 * both, and SIGTERM stops both cleanly.
 */

import assert from "node:assert/strict";
import type pg from "pg";
import {
  connectPg,
  dumpLogsOnFailure,
  pgbench,
  psql,
  sendCancelRequest,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";

const ADMIN = { user: "admin", password: "workers-admin-pw", database: "admin" };
const POOL_SIZE = 4;

/** Samples the app's server connections until stopped; resolves with the largest count seen. */
function sampleServers(direct: pg.Client): { stop: () => Promise<number> } {
  let max = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      const r = await direct.query(
        "select count(*)::int as n from pg_stat_activity " +
          "where datname = 'app' and backend_type = 'client backend'",
      );
      max = Math.max(max, r.rows[0].n);
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return max;
    },
  };
}

/** How many lines of each worker match `pattern` (text logs tag lines `[worker N]`). */
function perWorker(logs: string, pattern: RegExp): number[] {
  const counts = [0, 0];
  for (const line of logs.split("\n")) {
    const m = line.match(/ \[worker (\d+)\] /);
    if (m && pattern.test(line)) counts[Number(m[1])]++;
  }
  return counts;
}

Deno.test("workers = 2: both serve, pools split, admin commands and signals reach both", async () => {
  await using pg = await startPostgres({ databases: ["app"], settings: { max_connections: 60 } });
  const init = await pgbench({ host: pg.host, port: pg.port, user: "postgres", database: "app" }, [
    "-i",
    "-s",
    "1",
    "-q",
  ]);
  assert.equal(init.code, 0, init.stderr);
  const config = (poolSize: number) => ({
    general: { workers: 2, default_pool_size: poolSize, min_pool_size: 0 },
    databases: [{ name: "app", host: pg.host, port: pg.port }],
    admin: { password: ADMIN.password },
  });
  const proxy = await startProxy({
    config: config(POOL_SIZE),
    users: { users: [{ name: "postgres", password: "pw", database: "app" }] },
  });
  const direct = await connectPg({
    host: pg.host,
    port: pg.port,
    user: "postgres",
    database: "postgres",
  });
  try {
    await dumpLogsOnFailure(proxy, async () => {
      assert.match(proxy.logs(), /\[worker 0\] .*listening on \S+:\d+ \(2 workers\)/);
      const target = proxy.target({ user: "postgres", password: "pw", database: "app" });

      // 16 clients, a new connection per transaction, for 3 seconds.
      const sampler = sampleServers(direct);
      const run = await pgbench(target, ["-n", "-S", "-C", "-c", "16", "-j", "2", "-T", "3"]);
      const most = await sampler.stop();
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.failed ?? 0, 0);
      assert.ok((run.processed ?? 0) > 16, run.stdout);
      // Each worker holds half the pool: together never more than pool_size, and more than one
      // worker's half at once means both were serving.
      assert.ok(most <= POOL_SIZE, `${most} server connections for pool_size ${POOL_SIZE}`);
      assert.ok(most > POOL_SIZE / 2, `at most ${most} server connections: one worker only?`);
      const logins = perWorker(proxy.logs(), /logged in as postgres\/app/);
      assert.ok(logins[0] > 0 && logins[1] > 0, `logins per worker: ${logins}`);

      // A CancelRequest lands on either worker; it must cancel the client wherever it is.
      const sleepers: pg.Client[] = await Promise.all([0, 1, 2, 3].map(() => connectPg(target)));
      try {
        const done = sleepers.map((c) =>
          c.query("select pg_sleep(30)").then(() => "finished", (e: { code: string }) => e.code)
        );
        // A cancel that arrives before its query reaches PostgreSQL cancels nothing (as with
        // PostgreSQL itself): send them once the sleeps run, or wait in pgdog for a server (each
        // worker has POOL_SIZE / 2 servers; a waiting client's cancel is pgdog's to answer).
        let running = 0;
        let changed = Date.now();
        for (let i = 0; i < 200 && running < 4; i++) {
          const r = await direct.query(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'select pg_sleep(30)' " +
              "AND state = 'active'",
          );
          if (r.rows[0].n !== running) [running, changed] = [r.rows[0].n, Date.now()];
          if (running >= POOL_SIZE / 2 && Date.now() - changed > 300) break;
          await new Promise((resolve) => setTimeout(resolve, 25));
        }
        for (const c of sleepers) {
          const key = c as unknown as { processID: number; secretKey: number };
          await sendCancelRequest(proxy, key.processID, key.secretKey);
        }
        // Cancelled queries fail with 57014 (query_canceled) long before 30 s.
        assert.deepEqual(await Promise.all(done), ["57014", "57014", "57014", "57014"]);
      } finally {
        await Promise.all(sleepers.map((c) => c.end().catch(() => {})));
      }

      // PAUSE (answered by either worker) holds new transactions on both until RESUME.
      const adminAt = { host: proxy.host, port: proxy.port, ...ADMIN };
      const held: pg.Client[] = await Promise.all([0, 1, 2, 3].map(() => connectPg(target)));
      try {
        for (const c of held) await c.query("select 1");
        const paused = await psql(adminAt, "PAUSE");
        assert.equal(paused.code, 0, paused.stderr);
        let ran = 0;
        const queries = held.map((c) => c.query("select 1").then(() => ran++));
        for (const q of queries) q.catch(() => {}); // awaited below; no unhandled rejection meanwhile
        await new Promise((r) => setTimeout(r, 500));
        assert.equal(ran, 0, "a transaction ran while paused");
        const resumed = await psql(adminAt, "RESUME");
        assert.equal(resumed.code, 0, resumed.stderr);
        await Promise.all(queries);
        assert.equal(ran, 4);
      } finally {
        await Promise.all(held.map((c) => c.end().catch(() => {})));
      }

      // RELOAD (answered by either worker) reaches both.
      const since = proxy.logOffset();
      await proxy.writeConfig(config(6));
      const reloaded = await psql(adminAt, "RELOAD");
      assert.equal(reloaded.code, 0, reloaded.stderr);
      await proxy.waitForLog(/\[worker 0\] configuration reloaded/, { since });
      await proxy.waitForLog(/\[worker 1\] configuration reloaded/, { since });
      const shown = await psql(adminAt, "SHOW CONFIG");
      assert.match(shown.stdout, /default_pool_size\|6/);
      // SIGHUP (the main thread's signal) reaches both too.
      const hup = proxy.logOffset();
      proxy.signal("SIGHUP");
      await proxy.waitForLog(/\[worker 0\] configuration reloaded/, { since: hup });
      await proxy.waitForLog(/\[worker 1\] configuration reloaded/, { since: hup });
      const again = await pgbench(target, ["-n", "-S", "-c", "8", "-j", "2", "-T", "1"]);
      assert.equal(again.code, 0, again.stderr);

      // SIGTERM: both workers shut down, and the process exits cleanly.
      const exit = await proxy.stop();
      assert.equal(exit.code, 0, exit.logs);
      assert.deepEqual(perWorker(exit.logs, /shutdown complete/), [1, 1]);
    });
  } finally {
    await direct.end();
    if (!proxy.exited) await proxy.stop();
  }
});
