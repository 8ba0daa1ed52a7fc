/**
 * query_timeout, client_idle_timeout and client_idle_in_transaction_timeout through the real
 * proxy: each ends the right thing, with a clear ErrorResponse, at about the configured time, and
 * leaves the pool clean. "Clean" is proven on pool_size 1: the next client gets a working server,
 * and pg_stat_activity shows no session idle in transaction and no query left running.
 * (client_login_timeout is covered by startup_test.ts.)
 *
 * One cluster; one proxy per timeout, since the three are `[general]` settings that would
 * otherwise act on each other's clients.
 */

import assert from "node:assert/strict";
import pg from "pg";
import {
  codeOf,
  dumpLogsOnFailure,
  type PgTarget,
  type ProxyProcess,
  psql,
  sleep,
  startPostgres,
  startProxy,
  waitUntil,
} from "./harness/mod.ts";
import { type BackendMessage, dataRow, errorFields, fe, summary, WireClient } from "./wire.ts";

const PASSWORD = "timeouts-test-pw";
const ROLES = ["qt", "qt2", "it", "itx"];
const TIMEOUT = 500;
/** A 500 ms timeout must fire within these bounds (ms) on a loaded machine. */
const EARLIEST = 400;
const LATEST = 3000;

// ---------------------------------------------------------------------------------------------
// Helpers

async function openPg(target: PgTarget, onError?: (e: Error) => void): Promise<pg.Client> {
  const client = new pg.Client({
    host: target.host,
    port: target.port,
    user: target.user,
    password: target.password,
    database: target.database,
    connectionTimeoutMillis: 20_000,
    ssl: false,
  });
  client.on("error", (e: Error) => onError?.(e));
  await client.connect();
  return client;
}

/** Runs `p`; resolves with its error (null when it fulfils) and how long it took. */
async function timed<T>(
  p: () => Promise<T>,
): Promise<{ err: (Error & { code?: string }) | null; ms: number }> {
  const started = performance.now();
  try {
    await p();
    return { err: null, ms: performance.now() - started };
  } catch (e) {
    return { err: e as Error & { code?: string }, ms: performance.now() - started };
  }
}

/** Closes everything opened through it at the end of the scope. */
class Closer implements AsyncDisposable {
  readonly #all: Array<() => Promise<unknown>> = [];

  add<T extends { end(): Promise<unknown> } | WireClient>(c: T): T {
    this.#all.push(() => c instanceof WireClient ? c.close() : c.end());
    return c;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.#all.map((f) => f().catch(() => {})));
    this.#all.length = 0;
  }
}

/**
 * Waits for the FATAL ErrorResponse a timeout sends, then for the connection to close. Returns
 * the error's fields and when it arrived (performance.now()).
 */
async function expectFatal(
  w: WireClient,
  withinMs: number,
): Promise<{ fields: Record<string, string>; at: number; before: BackendMessage[] }> {
  const before: BackendMessage[] = [];
  const deadline = performance.now() + withinMs;
  for (;;) {
    const m = await w.next(Math.max(1, deadline - performance.now()));
    if (m.type === "E") {
      const at = performance.now();
      const fields = errorFields(m.body);
      // Nothing may follow: the connection is closed.
      let after: BackendMessage | null = null;
      try {
        after = await w.next(3000);
      } catch (e) {
        assert.match(String(e), /closed|reset|EOF/i, `after the FATAL: ${e}`);
      }
      assert.equal(after, null, `a message after the FATAL: ${after && summary([after])}`);
      return { fields, at, before };
    }
    before.push(m);
  }
}

/**
 * Simple query that must succeed; returns its rows. When the connection ends instead, the error
 * says what the proxy sent before closing it.
 */
async function rowsOrFatal(w: WireClient, sql: string): Promise<(string | null)[][]> {
  await w.send(fe.query(sql));
  const got: BackendMessage[] = [];
  for (;;) {
    let m: BackendMessage;
    try {
      m = await w.next(30_000);
    } catch (e) {
      const err = got.find((x) => x.type === "E");
      const why = err ? JSON.stringify(errorFields(err.body)) : "no error message";
      throw new Error(`${sql}: ${e instanceof Error ? e.message : e} (${why})`);
    }
    got.push(m);
    if (m.type !== "Z") continue;
    const err = got.find((x) => x.type === "E");
    if (err) throw new Error(`${sql}: ${JSON.stringify(errorFields(err.body))}`);
    return got.filter((x) => x.type === "D").map((x) => dataRow(x.body));
  }
}

/** The pool's server connections that are not plainly idle, straight from pg_stat_activity. */
async function busyServers(admin: pg.Client, user: string): Promise<string[]> {
  const r = await admin.query(
    "select state || ': ' || query as s from pg_stat_activity " +
      "where usename = $1 and backend_type = 'client backend' and state <> 'idle'",
    [user],
  );
  return r.rows.map((x: { s: string }) => x.s);
}

/** The pool of `user` (pool_size 1) is clean: nothing busy, and a new client gets a working server. */
async function assertClean(admin: pg.Client, target: PgTarget): Promise<void> {
  const clean = await waitUntil(
    async () => (await busyServers(admin, target.user)).length === 0,
    3000,
  );
  assert.ok(clean, `left on the server: ${(await busyServers(admin, target.user)).join("; ")}`);
  const c = await openPg(target);
  try {
    const r = await c.query(
      "select 7 as v, current_setting('transaction_isolation') as iso, " +
        "(select count(*)::int from pg_stat_activity where usename = current_user " +
        "and state like 'idle in transaction%') as idle_in_tx",
    );
    assert.deepEqual(r.rows[0], { v: 7, iso: "read committed", idle_in_tx: 0 });
    // A transaction works too (the server is not left in a failed one).
    await c.query("begin");
    await c.query("select 1");
    await c.query("commit");
  } finally {
    await c.end();
  }
}

function proxyWith(
  cluster: { host: string; port: number },
  general: Record<string, unknown>,
  users: Array<{ name: string; pool_size: number }>,
): Promise<ProxyProcess> {
  return startProxy({
    config: {
      general: { checkout_timeout: 10_000, ...general },
      databases: [{ name: "app", host: cluster.host, port: cluster.port }],
    },
    users: { users: users.map((u) => ({ ...u, password: PASSWORD, database: "app" })) },
  });
}

// ---------------------------------------------------------------------------------------------

Deno.test("timeouts", async (t) => {
  await using cluster = await startPostgres({
    roles: ROLES.map((name) => ({ name, password: PASSWORD, auth: "scram" as const })),
    databases: ["app"],
  });
  await cluster.sql(
    [
      "create table t (id int primary key, v text)",
      "insert into t values (1, 'one')",
      "grant all on t to public",
    ].join(";"),
    { database: "app" },
  );
  const admin = await openPg({
    host: cluster.host,
    port: cluster.port,
    user: "postgres",
    database: "app",
  });
  try {
    await t.step("query_timeout", async (t) => {
      await using proxy = await proxyWith(cluster, { query_timeout: TIMEOUT }, [
        { name: "qt", pool_size: 1 },
        { name: "qt2", pool_size: 2 },
      ]);
      const target = (user: string) => proxy.target({ user, password: PASSWORD, database: "app" });
      const step = (name: string, fn: () => Promise<void>) =>
        t.step(name, () => dumpLogsOnFailure(proxy, fn));

      await step(
        "a long query is cancelled after ~0.5 s with 57014; the client goes on",
        async () => {
          await using closer = new Closer();
          const a = closer.add(await openPg(target("qt")));
          const pid = (await a.query("select pg_backend_pid() as p")).rows[0].p;
          const { err, ms } = await timed(() => a.query("select pg_sleep(5)"));
          assert.ok(err, "pg_sleep(5) completed despite query_timeout");
          assert.equal(codeOf(err), "57014", String(err));
          assert.match(err.message, /query_timeout/);
          assert.ok(ms >= EARLIEST && ms < LATEST, `cancelled after ${ms} ms`);
          // The client goes on, on the same (healthy) server.
          const r = await a.query("select pg_backend_pid() as p, 1 + 1 as v");
          assert.equal(r.rows[0].v, 2);
          assert.equal(r.rows[0].p, pid, "the server was replaced although it obeyed the cancel");
          // Over the extended protocol too.
          const ext = await timed(() => a.query("select pg_sleep($1)", [5]));
          assert.equal(codeOf(ext.err), "57014", String(ext.err));
          assert.ok(ext.ms >= EARLIEST && ext.ms < LATEST, `cancelled after ${ext.ms} ms`);
          // A query under the limit is not touched.
          assert.equal(
            (await a.query("select 'slept' as ok from pg_sleep(0.2)")).rows[0].ok,
            "slept",
          );
          await a.end();
          await assertClean(admin, target("qt"));
        },
      );

      await step("psql sees the error", async () => {
        const started = performance.now();
        const r = await psql(target("qt"), "select pg_sleep(5)");
        const ms = performance.now() - started;
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /ERROR: {2}canceling statement due to query_timeout/);
        assert.ok(ms < LATEST + 2000, `psql took ${ms} ms`);
        await assertClean(admin, target("qt"));
      });

      await step("another client's quick queries are unaffected meanwhile", async () => {
        await using closer = new Closer();
        const a = closer.add(await openPg(target("qt2")));
        const b = closer.add(await openPg(target("qt2")));
        const slow = timed(() => a.query("select pg_sleep(5)"));
        await sleep(100);
        for (let i = 0; i < 5; i++) {
          const { err, ms } = await timed(() => b.query("select $1::int as v", [i]));
          assert.equal(err, null, String(err));
          assert.ok(ms < 1000, `B's quick query took ${ms} ms`);
        }
        const { err, ms } = await slow;
        assert.equal(codeOf(err), "57014", String(err));
        assert.ok(ms >= EARLIEST && ms < LATEST, `cancelled after ${ms} ms`);
        assert.equal((await b.query("select 5 as v")).rows[0].v, 5);
        assert.equal((await a.query("select 6 as v")).rows[0].v, 6);
      });

      await step("inside a transaction: aborted (25P02) until ROLLBACK", async () => {
        await using closer = new Closer();
        const a = closer.add(await openPg(target("qt")));
        await a.query("begin");
        await a.query("insert into t values (100, 'in the cancelled transaction')");
        const { err, ms } = await timed(() => a.query("select pg_sleep(5)"));
        assert.equal(codeOf(err), "57014", String(err));
        assert.match(err!.message, /query_timeout/);
        assert.ok(ms >= EARLIEST && ms < LATEST, `cancelled after ${ms} ms`);
        const next = await timed(() => a.query("select 1"));
        assert.equal(codeOf(next.err), "25P02", `after the cancel: ${next.err}`);
        await a.query("rollback");
        const r = await a.query("select count(*)::int as n from t where id = 100");
        assert.equal(r.rows[0].n, 0, "the cancelled transaction's insert is there");
        await a.end();
        await assertClean(admin, target("qt"));
      });
    });

    await t.step("client_idle_timeout", async (t) => {
      await using proxy = await proxyWith(cluster, { client_idle_timeout: TIMEOUT }, [
        { name: "it", pool_size: 1 },
      ]);
      const target = proxy.target({ user: "it", password: PASSWORD, database: "app" });
      const step = (name: string, fn: () => Promise<void>) =>
        t.step(name, () => dumpLogsOnFailure(proxy, fn));

      await step("an idle client is disconnected with 57P05; an active one is not", async () => {
        await using closer = new Closer();
        const idle = closer.add(await WireClient.connect(target));
        await idle.rows("select 1");
        const idleSince = performance.now();
        // Never sent a query at all.
        const silentSince = performance.now();
        const silent = closer.add(await WireClient.connect(target));
        // Querying every 100 ms for 1.5 s, meanwhile.
        const active = closer.add(await WireClient.connect(target));
        const activeRun = (async () => {
          const end = performance.now() + 1500;
          let n = 0;
          while (performance.now() < end) {
            assert.deepEqual(await active.rows(`select ${n}`), [[String(n)]]);
            n++;
            await sleep(100);
          }
          return n;
        })();
        const [gone, silentGone, queries] = await Promise.all([
          expectFatal(idle, 10_000),
          expectFatal(silent, 10_000),
          activeRun,
        ]);
        for (
          const [what, got, since] of [["idle", gone, idleSince], [
            "silent",
            silentGone,
            silentSince,
          ]] as const
        ) {
          assert.deepEqual(got.before, [], `${what}: messages before the FATAL`);
          assert.equal(got.fields.S, "FATAL");
          assert.equal(got.fields.C, "57P05");
          assert.match(got.fields.M, /client_idle_timeout/);
          const ms = got.at - since;
          assert.ok(ms >= EARLIEST && ms < LATEST, `${what}: disconnected after ${ms} ms`);
        }
        assert.ok(queries >= 10, `the active client ran only ${queries} queries`);
        assert.deepEqual(await active.rows("select 'still here'"), [["still here"]]);
        await active.close();
        await assertClean(admin, target);
      });

      await step("a query running longer than the timeout is not idleness", async () => {
        await using closer = new Closer();
        const a = closer.add(await WireClient.connect(target));
        // The client waits 1.2 s for its answer, then 200 ms: it is never idle for 500 ms.
        assert.deepEqual(await rowsOrFatal(a, "select 'slept' from pg_sleep(1.2)"), [["slept"]]);
        await sleep(200);
        assert.deepEqual(await rowsOrFatal(a, "select 'after the long query'"), [[
          "after the long query",
        ]]);
        await a.close();
        await assertClean(admin, target);
      });

      await step("a client waiting for a server is not idle", async () => {
        await using closer = new Closer();
        const holder = closer.add(await WireClient.connect(target));
        const waiter = closer.add(await WireClient.connect(target));
        // The holder keeps the only server in a transaction for 1.2 s (idle in a transaction is
        // not this setting's business); the waiter's query waits for it all that time.
        await rowsOrFatal(holder, "begin");
        await rowsOrFatal(holder, "select 1");
        const waiting = rowsOrFatal(waiter, "select 'served'").then(
          (rows) => ({ rows, err: null }),
          (err: Error) => ({ rows: null, err }),
        );
        await sleep(1200);
        await rowsOrFatal(holder, "commit");
        const { rows, err } = await waiting;
        assert.equal(err, null, `the waiting client: ${err}`);
        assert.deepEqual(rows, [["served"]]);
        await holder.close();
        await waiter.close();
        await assertClean(admin, target);
      });

      await step("idle inside a transaction is not client_idle_timeout's business", async () => {
        await using closer = new Closer();
        const a = closer.add(await WireClient.connect(target));
        await rowsOrFatal(a, "begin");
        await rowsOrFatal(a, "select 1");
        assert.equal(await a.hasMessageWithin(1200), false, "disconnected inside a transaction");
        await rowsOrFatal(a, "commit");
        assert.deepEqual(await rowsOrFatal(a, "select 'ok'"), [["ok"]]);
        await a.close();
        await assertClean(admin, target);
      });
    });

    await t.step("client_idle_in_transaction_timeout", async (t) => {
      await using proxy = await proxyWith(
        cluster,
        { client_idle_in_transaction_timeout: TIMEOUT },
        [{ name: "itx", pool_size: 1 }],
      );
      const target = proxy.target({ user: "itx", password: PASSWORD, database: "app" });
      const step = (name: string, fn: () => Promise<void>) =>
        t.step(name, () => dumpLogsOnFailure(proxy, fn));

      await step(
        "idle inside BEGIN: 25P03 after ~0.5 s, rolled back, row lock released",
        async () => {
          await using closer = new Closer();
          const a = closer.add(await WireClient.connect(target));
          await a.rows("begin");
          await a.rows("insert into t values (200, 'never committed')");
          assert.deepEqual(await a.rows("select v from t where id = 1 for update"), [["one"]]);
          const since = performance.now();
          const got = await expectFatal(a, 10_000);
          const ms = got.at - since;
          assert.deepEqual(got.before, [], "messages before the FATAL");
          assert.equal(got.fields.S, "FATAL");
          assert.equal(got.fields.C, "25P03");
          assert.match(got.fields.M, /client_idle_in_transaction_timeout/);
          assert.ok(ms >= EARLIEST && ms < LATEST, `disconnected after ${ms} ms`);
          // Rolled back: the row lock is free and the insert is gone.
          const lock = await admin.query(
            "begin; set local lock_timeout = '2s'; select v from t where id = 1 for update; commit",
          ).then(() => null, (e: Error) => e);
          assert.equal(lock, null, `the row lock is still held: ${lock}`);
          const r = await admin.query("select count(*)::int as n from t where id = 200");
          assert.equal(r.rows[0].n, 0, "the insert of the disconnected transaction is there");
          await assertClean(admin, target);
        },
      );

      await step("idle in a failed transaction: 25P03 too", async () => {
        await using closer = new Closer();
        const a = closer.add(await WireClient.connect(target));
        await rowsOrFatal(a, "begin");
        const failed = await a.simple("select 1/0");
        assert.deepEqual(summary(failed), ["E 22012", "Z E"]);
        const since = performance.now();
        const got = await expectFatal(a, 10_000);
        const ms = got.at - since;
        assert.equal(got.fields.C, "25P03");
        assert.ok(ms >= EARLIEST && ms < LATEST, `disconnected after ${ms} ms`);
        await assertClean(admin, target);
      });

      await step("idle outside a transaction is not affected", async () => {
        await using closer = new Closer();
        const a = closer.add(await WireClient.connect(target));
        await rowsOrFatal(a, "select 1");
        assert.equal(await a.hasMessageWithin(1200), false, "disconnected while idle");
        assert.deepEqual(await rowsOrFatal(a, "select 'ok'"), [["ok"]]);
      });

      await step("a long query inside a transaction is not idle", async () => {
        await using closer = new Closer();
        const a = closer.add(await WireClient.connect(target));
        await rowsOrFatal(a, "begin");
        assert.deepEqual(await rowsOrFatal(a, "select 'slept' from pg_sleep(1.2)"), [["slept"]]);
        // A short pause after it (well under 500 ms) is not 500 ms of idleness.
        await sleep(200);
        assert.deepEqual(await rowsOrFatal(a, "select 'still in'"), [["still in"]]);
        // Pipelined: a long query sent together with the next statement.
        await a.send(fe.query("select pg_sleep(0.8)"), fe.query("select 'next'"));
        const msgs = await a.untilReady(2);
        assert.deepEqual(summary(msgs).filter((s) => s.startsWith("E")), []);
        await rowsOrFatal(a, "commit");
        assert.deepEqual(await rowsOrFatal(a, "select 'ok'"), [["ok"]]);
        await a.close();
        await assertClean(admin, target);
      });
    });
  } finally {
    await admin.end();
  }
});
