/**
 * Pooling behaviour through the real proxy against a real PostgreSQL: server connections are
 * capped at pool_size under heavy client load, clients queue and time out, connections come back
 * clean after clients vanish mid-transaction or mid-result, session mode pins and resets, and
 * pool settings resolve user > database > general.
 *
 * One cluster serves every step; each step starts its own proxy and uses its own role, so
 * pg_stat_activity counts per role measure exactly one pool.
 */

import assert from "node:assert/strict";
import type pg from "pg";
import {
  codeOf,
  connectPg,
  dumpLogsOnFailure,
  failure,
  NO_PGPASS,
  pgbench,
  type PgCluster,
  type PgTarget,
  pgTool,
  type ProxyProcess,
  sleep,
  startPostgres,
  startProxy,
  type TomlDocument,
  waitUntil,
} from "./harness/mod.ts";

const PASSWORD = "pool-test-pw";
const ROLES = [
  "bench",
  "many",
  "chk",
  "locker",
  "streamer",
  "sess",
  "sess1",
  "txn",
  "prec_user",
  "prec_db",
  "prec_gen",
];

// ---------------------------------------------------------------------------------------------
// Helpers

/** A superuser connection straight to the cluster, for pg_stat_activity and setup. */
function adminTarget(pg: PgCluster): PgTarget {
  return { host: pg.host, port: pg.port, user: "postgres", database: "postgres" };
}

/** Server connections (client backends) the cluster has for `user`. */
async function serverCount(admin: pg.Client, user: string): Promise<number> {
  const r = await admin.query(
    "select count(*)::int as n from pg_stat_activity where usename = $1 and backend_type = 'client backend'",
    [user],
  );
  return r.rows[0].n;
}

/** Samples serverCount every `intervalMs` until stopped; reports the maximum. */
function sampleServers(admin: pg.Client, users: string[], intervalMs = 50) {
  let running = true;
  const max = new Map<string, number>(users.map((u) => [u, 0]));
  let samples = 0;
  const loop = (async () => {
    while (running) {
      const r = await admin.query(
        "select usename::text as u, count(*)::int as n from pg_stat_activity " +
          "where usename = any($1) and backend_type = 'client backend' group by usename",
        [users],
      );
      for (const row of r.rows) max.set(row.u, Math.max(max.get(row.u) ?? 0, row.n));
      samples++;
      await sleep(intervalMs);
    }
  })();
  return {
    async stop(): Promise<{ max: Map<string, number>; samples: number }> {
      running = false;
      await loop;
      return { max, samples };
    },
  };
}

/** npm:pg clients that are all ended at the end of the scope. */
class Clients implements AsyncDisposable {
  readonly all: pg.Client[] = [];
  readonly errors: Error[] = [];

  async open(target: PgTarget): Promise<pg.Client> {
    const c = await connectPg(target, {
      connectionTimeoutMillis: 30_000,
      onError: (e) => this.errors.push(e),
    });
    this.all.push(c);
    return c;
  }

  /** Opens `n` clients, at most `parallel` connecting at once. */
  async openMany(target: PgTarget, n: number, parallel: number): Promise<pg.Client[]> {
    const out: pg.Client[] = new Array(n);
    let next = 0;
    const worker = async () => {
      while (next < n) {
        const i = next++;
        out[i] = await this.open(target);
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
    return out;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.all.map((c) => c.end().catch(() => {})));
    this.all.length = 0;
  }
}

interface UserSpec {
  name: string;
  database?: string;
  pool_size?: number;
  min_pool_size?: number;
  pooler_mode?: "session" | "transaction";
}

/** A proxy in front of `pg`, database "app" unless `databases` says otherwise. */
function proxyFor(
  pg: PgCluster,
  options: {
    users: UserSpec[];
    general?: TomlDocument;
    databases?: TomlDocument[];
  },
): Promise<ProxyProcess> {
  return startProxy({
    config: {
      general: options.general ?? {},
      databases: options.databases ?? [{ name: "app", host: pg.host, port: pg.port }],
    },
    users: {
      users: options.users.map((u) => ({ password: PASSWORD, database: "app", ...u })),
    },
  });
}

function via(proxy: ProxyProcess, user: string, database = "app"): PgTarget {
  return proxy.target({ user, password: PASSWORD, database });
}

/**
 * Awaits `p` for at most `ms`; when it takes longer, runs `unblock` (so nothing is left hanging),
 * waits for `p` and fails with `message`.
 */
async function withDeadline<T>(
  p: Promise<T>,
  ms: number,
  unblock: () => Promise<unknown>,
  message: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const settled = await Promise.race([
    p.then(() => true, () => true),
    new Promise<false>((r) => timer = setTimeout(() => r(false), ms)),
  ]);
  clearTimeout(timer);
  if (!settled) {
    await unblock().catch(() => {});
    await p.catch(() => {});
    assert.fail(message);
  }
  return await p;
}

const encoder = new TextEncoder();

function startupMessage(user: string, database: string): Uint8Array {
  const body = encoder.encode(`user\0${user}\0database\0${database}\0\0`);
  const msg = new Uint8Array(8 + body.length);
  const dv = new DataView(msg.buffer);
  dv.setInt32(0, msg.length);
  dv.setInt32(4, 196608);
  msg.set(body, 8);
  return msg;
}

function queryMessage(sql: string): Uint8Array {
  const body = encoder.encode(`${sql}\0`);
  const msg = new Uint8Array(5 + body.length);
  msg[0] = 0x51; // 'Q'
  new DataView(msg.buffer).setInt32(1, 4 + body.length);
  msg.set(body, 5);
  return msg;
}

/**
 * A raw protocol connection (the proxy must use auth_type = "trust"): logs in and reads until
 * the first ReadyForQuery.
 */
async function rawLogin(proxy: ProxyProcess, user: string): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: proxy.host, port: proxy.port });
  try {
    await conn.write(startupMessage(user, "app"));
    let buf = new Uint8Array(0);
    const chunk = new Uint8Array(8192);
    for (;;) {
      const n = await conn.read(chunk);
      if (n === null) throw new Error("proxy closed the raw connection during login");
      const next = new Uint8Array(buf.length + n);
      next.set(buf);
      next.set(chunk.subarray(0, n), buf.length);
      buf = next;
      // Walk whole messages; stop at ReadyForQuery, fail on ErrorResponse.
      let p = 0;
      while (buf.length - p >= 5) {
        const type = buf[p];
        const len = new DataView(buf.buffer, buf.byteOffset + p + 1, 4).getInt32(0);
        if (buf.length - p < len + 1) break;
        if (type === 0x45) {
          throw new Error(
            `login failed: ${new TextDecoder().decode(buf.subarray(p + 5, p + len))}`,
          );
        }
        if (type === 0x5a) return conn;
        p += len + 1;
      }
    }
  } catch (e) {
    conn.close();
    throw e;
  }
}

/**
 * About 50 GB of rows, streamed as they are produced (a set-returning function in the select list
 * is not materialized first): draining it would take far too long, so the proxy must cancel it.
 */
const BIG_QUERY = "select repeat('x', 1000), generate_series(1, 50000000)";

/** Whether the cluster still runs BIG_QUERY for `user`. */
async function bigQueryRunning(admin: pg.Client, user: string): Promise<boolean> {
  const r = await admin.query(
    "select count(*)::int as n from pg_stat_activity where usename = $1 and state = 'active' " +
      "and query like '%generate_series(1, 50000000)%' and pid <> pg_backend_pid()",
    [user],
  );
  return r.rows[0].n > 0;
}

// ---------------------------------------------------------------------------------------------

Deno.test("pooling", async (t) => {
  await using pg = await startPostgres({
    settings: { max_connections: 50 },
    roles: ROLES.map((name) => ({ name, password: PASSWORD, auth: "scram" as const })),
    databases: ["app"],
  });
  const admin = await connectPg(adminTarget(pg));
  try {
    await pg.sql(
      "create table t (id int primary key, v text); insert into t values (1, 'one'), (2, 'two');" +
        "grant all on t to locker;",
      { database: "app" },
    );

    await t.step(
      "pgbench -c 50 -j 2 -t 200 over pool_size 5: no failures, never more than 5 servers",
      async () => {
        const init = await pgbench(
          { host: pg.host, port: pg.port, user: "bench", password: PASSWORD, database: "app" },
          ["-i", "-s", "1", "-q"],
        );
        assert.equal(init.code, 0, `pgbench -i failed: ${init.stderr}`);
        await using proxy = await proxyFor(pg, { users: [{ name: "bench", pool_size: 5 }] });
        await dumpLogsOnFailure(proxy, async () => {
          const sampler = sampleServers(admin, ["bench"]);
          let run, max, samples;
          try {
            run = await pgbench(via(proxy, "bench"), ["-c", "50", "-j", "2", "-t", "200"], {
              timeoutMs: 120_000,
            });
          } finally {
            ({ max, samples } = await sampler.stop());
          }
          assert.equal(run.code, 0, `pgbench failed:\n${run.stdout}\n${run.stderr}`);
          assert.equal(run.processed, 10_000, run.stdout);
          assert.equal(run.failed ?? 0, 0, run.stdout);
          const peak = max.get("bench")!;
          assert.ok(samples >= 10, `only ${samples} samples`);
          assert.ok(peak <= 5, `${peak} server connections for pool_size 5`);
          assert.ok(peak >= 2, `sampling never saw load (peak ${peak})`);
          console.log(`pgbench: tps ${run.tps}, peak ${peak} servers over ${samples} samples`);
        });
      },
    );

    await t.step(
      "500 clients held open over pool_size 10 (max_connections 50) all run queries",
      async () => {
        await using proxy = await proxyFor(pg, { users: [{ name: "many", pool_size: 10 }] });
        await dumpLogsOnFailure(proxy, async () => {
          await using clients = new Clients();
          const sampler = sampleServers(admin, ["many"]);
          const pids = new Set<number>();
          let max, samples;
          try {
            const all = await clients.openMany(via(proxy, "many"), 500, 25);
            assert.equal(all.length, 500);
            // Every connection is open at once; now all of them query at the same time.
            await Promise.all(all.map(async (c, i) => {
              for (let k = 0; k < 3; k++) {
                const r = await c.query("select pg_backend_pid() as pid, $1::int as v", [
                  i * 10 + k,
                ]);
                assert.equal(r.rows[0].v, i * 10 + k);
                pids.add(r.rows[0].pid);
              }
            }));
          } finally {
            ({ max, samples } = await sampler.stop());
          }
          const peak = max.get("many")!;
          assert.ok(peak <= 10, `${peak} server connections for pool_size 10`);
          assert.ok(peak >= 2, `sampling never saw load (peak ${peak}, ${samples} samples)`);
          assert.ok(pids.size <= 10, `${pids.size} distinct backend pids for pool_size 10`);
          assert.ok(pids.size >= 2, `only ${pids.size} backend pid: no concurrency`);
          assert.deepEqual(clients.errors, []);
          console.log(`500 clients: ${pids.size} backend pids, peak ${peak} servers`);
        });
      },
    );

    await t.step(
      "checkout_timeout: a client waiting for a busy pool_size 1 gets 53300 after ~0.5 s",
      async () => {
        await using proxy = await proxyFor(pg, {
          users: [{ name: "chk", pool_size: 1 }],
          general: { checkout_timeout: 500 },
        });
        await dumpLogsOnFailure(proxy, async () => {
          await using clients = new Clients();
          const a = await clients.open(via(proxy, "chk"));
          const b = await clients.open(via(proxy, "chk"));
          await a.query("begin");
          await a.query("select 1");
          const started = Date.now();
          let waited = -1;
          const err = await withDeadline(
            failure(b.query("select 1")).finally(() => waited = Date.now() - started),
            5000,
            () => a.query("commit"),
            "B still waited for a server after 5 s (checkout_timeout 500)",
          );
          assert.ok(err, "B's query succeeded while A held the only server");
          assert.equal(codeOf(err), "53300", String(err));
          assert.match(err.message, /exhausted/);
          assert.ok(waited >= 450, `B failed after ${waited} ms, before checkout_timeout`);
          assert.ok(waited < 3000, `B failed only after ${waited} ms`);
          await a.query("commit");
          const r = await b.query("select 2 as two");
          assert.equal(r.rows[0].two, 2);
          // A is fine too, and still shares the one server with B.
          assert.equal((await a.query("select 3 as x")).rows[0].x, 3);
          console.log(`checkout_timeout 500: B failed after ${waited} ms`);
        });
      },
    );

    await t.step(
      "psql killed inside a transaction holding a row lock: the lock is released at once",
      async () => {
        await using proxy = await proxyFor(pg, { users: [{ name: "locker", pool_size: 2 }] });
        await dumpLogsOnFailure(proxy, async () => {
          await using clients = new Clients();
          const other = await clients.open(via(proxy, "locker"));
          const target = via(proxy, "locker");
          const child = new Deno.Command(pgTool("psql"), {
            args: [
              "-X",
              "-q",
              "-h",
              target.host,
              "-p",
              String(target.port),
              "-U",
              target.user,
              "-d",
              target.database,
            ],
            env: { PGPASSWORD: PASSWORD, PGPASSFILE: NO_PGPASS, PGSSLMODE: "disable" },
            stdin: "piped",
            stdout: "null",
            stderr: "null",
          }).spawn();
          const writer = child.stdin.getWriter();
          try {
            await writer.write(
              new TextEncoder().encode("BEGIN;\nSELECT * FROM t WHERE id = 1 FOR UPDATE;\n"),
            );
            const locked = await waitUntil(async () => {
              const r = await admin.query(
                "select count(*)::int as n from pg_stat_activity where usename = 'locker' " +
                  "and state = 'idle in transaction' and query ilike '%for update%'",
              );
              return r.rows[0].n === 1;
            }, 10_000);
            assert.ok(locked, "psql never got the row lock through the proxy");
          } finally {
            child.kill("SIGKILL");
            await child.status;
            await writer.close().catch(() => {});
          }
          const killedAt = Date.now();
          await other.query("begin");
          await other.query("set local lock_timeout = '3s'");
          const r = await other.query("select v from t where id = 1 for update");
          const gotLockAfter = Date.now() - killedAt;
          await other.query("commit");
          assert.equal(r.rows[0].v, "one");
          assert.ok(gotLockAfter < 1500, `lock acquired only ${gotLockAfter} ms after the kill`);
          const idleInTx = await admin.query(
            "select count(*)::int as n from pg_stat_activity where usename = 'locker' " +
              "and state like 'idle in transaction%'",
          );
          assert.equal(idleInTx.rows[0].n, 0, "a session is left idle in transaction");
          console.log(`row lock free ${gotLockAfter} ms after SIGKILL of psql`);
        });
      },
    );

    await t.step(
      "client gone in the middle of a huge result: pool_size 1 is usable again at once",
      async () => {
        await using proxy = await proxyFor(pg, {
          users: [{ name: "streamer", pool_size: 1 }],
          general: { auth_type: "trust" },
        });
        await dumpLogsOnFailure(proxy, async () => {
          await using clients = new Clients();
          const before = await clients.open(via(proxy, "streamer"));
          const pidBefore = (await before.query("select pg_backend_pid() as pid")).rows[0].pid;

          // 1. Reads the first rows, then hangs up.
          const raw = await rawLogin(proxy, "streamer");
          let received = 0;
          try {
            await raw.write(queryMessage(BIG_QUERY));
            const buf = new Uint8Array(64 << 10);
            while (received < 256 << 10) {
              const n = await raw.read(buf);
              if (n === null) throw new Error("proxy closed the connection mid-result");
              received += n;
            }
          } finally {
            raw.close();
          }
          const goneAt = Date.now();
          const r = await before.query("select pg_backend_pid() as pid, 42 as v");
          const readyAfter = Date.now() - goneAt;
          assert.equal(r.rows[0].v, 42);
          assert.ok(readyAfter < 3000, `next query took ${readyAfter} ms`);
          assert.ok(
            await waitUntil(async () => !(await bigQueryRunning(admin, "streamer")), 3000),
            "the abandoned query still runs on the server",
          );

          // 2. Sends the query and hangs up without reading anything.
          const raw2 = await rawLogin(proxy, "streamer");
          try {
            await raw2.write(queryMessage(BIG_QUERY));
            // Let the query reach the server before hanging up.
            await waitUntil(() => bigQueryRunning(admin, "streamer"), 3000, 10);
          } finally {
            raw2.close();
          }
          const gone2At = Date.now();
          const r2 = await before.query("select pg_backend_pid() as pid, 43 as v");
          const ready2After = Date.now() - gone2At;
          assert.equal(r2.rows[0].v, 43);
          assert.ok(ready2After < 3000, `next query took ${ready2After} ms`);
          assert.ok(
            await waitUntil(async () => !(await bigQueryRunning(admin, "streamer")), 3000),
            "the abandoned query still runs on the server",
          );
          assert.ok((await serverCount(admin, "streamer")) <= 1);
          console.log(
            `mid-result disconnect: usable again after ${readyAfter} ms / ${ready2After} ms; ` +
              `backend pid ${pidBefore} -> ${r.rows[0].pid} -> ${r2.rows[0].pid}`,
          );
        });
      },
    );

    await t.step(
      "session mode pins a server and resets it (DISCARD ALL); transaction mode interleaves",
      async () => {
        await using proxy = await proxyFor(pg, {
          users: [
            { name: "sess", pool_size: 2, pooler_mode: "session" },
            { name: "sess1", database: "appsess" },
            { name: "txn", pool_size: 1 },
          ],
          general: { checkout_timeout: 1000 },
          databases: [
            { name: "app", host: pg.host, port: pg.port },
            {
              name: "appsess",
              host: pg.host,
              port: pg.port,
              database_name: "app",
              pool_size: 1,
              pooler_mode: "session",
            },
          ],
        });
        await dumpLogsOnFailure(proxy, async () => {
          const defaultWorkMem = (await admin.query("show work_mem")).rows[0].work_mem;
          assert.notEqual(defaultWorkMem, "7MB");

          // pooler_mode on the user: each client keeps its own server across transactions.
          {
            await using clients = new Clients();
            const a = await clients.open(via(proxy, "sess"));
            const b = await clients.open(via(proxy, "sess"));
            await a.query("set work_mem = '7MB'");
            await a.query("create temp table tmp_a (x int)");
            await a.query("insert into tmp_a values (1), (2)");
            const pidsA = new Set<number>();
            const pidsB = new Set<number>();
            for (let i = 0; i < 5; i++) {
              await a.query("begin");
              pidsA.add((await a.query("select pg_backend_pid() as pid")).rows[0].pid);
              await a.query("commit");
              pidsB.add((await b.query("select pg_backend_pid() as pid")).rows[0].pid);
            }
            assert.equal(pidsA.size, 1, `A moved between servers: ${[...pidsA]}`);
            assert.equal(pidsB.size, 1, `B moved between servers: ${[...pidsB]}`);
            assert.notEqual([...pidsA][0], [...pidsB][0], "A and B shared a server");
            assert.equal((await a.query("show work_mem")).rows[0].work_mem, "7MB");
            assert.equal((await a.query("select count(*)::int as n from tmp_a")).rows[0].n, 2);
            assert.equal((await b.query("show work_mem")).rows[0].work_mem, defaultWorkMem);
            assert.equal((await b.query("select to_regclass('tmp_a') as r")).rows[0].r, null);
          }

          // pooler_mode on the database, pool_size 1: the next client gets the same server, reset.
          {
            await using clients = new Clients();
            const a = await clients.open(via(proxy, "sess1", "appsess"));
            const pidA = (await a.query("select pg_backend_pid() as pid")).rows[0].pid;
            await a.query("set work_mem = '7MB'");
            await a.query("create temp table tt (x int)");
            // While A holds the only server, another client cannot get it.
            const blocked = await withDeadline(
              failure(
                clients.open(via(proxy, "sess1", "appsess")).then((b) => b.query("select 1")),
              ),
              5000,
              () => a.end(),
              "a second session client still waited after 5 s (checkout_timeout 1000)",
            );
            assert.ok(blocked, "a second session client got a server while A held the only one");
            assert.equal(codeOf(blocked), "53300", String(blocked));
            await a.end();
            const c = await clients.open(via(proxy, "sess1", "appsess"));
            const r = await c.query(
              "select pg_backend_pid() as pid, current_setting('work_mem') as wm, " +
                "to_regclass('tt')::text as tt",
            );
            assert.equal(r.rows[0].pid, pidA, "the next client got another server");
            assert.equal(r.rows[0].wm, defaultWorkMem, "SET work_mem leaked to the next client");
            assert.equal(r.rows[0].tt, null, "the temp table leaked to the next client");
          }

          // Transaction mode, pool_size 1: two clients take turns on the one server.
          {
            await using clients = new Clients();
            const [a, b] = await Promise.all([
              clients.open(via(proxy, "txn")),
              clients.open(via(proxy, "txn")),
            ]);
            const pids = new Set<number>();
            let done = 0;
            await Promise.all([a, b].map(async (c, who) => {
              for (let i = 0; i < 50; i++) {
                await c.query("begin");
                const r = await c.query("select pg_backend_pid() as pid, $1::int as v", [
                  who * 1000 + i,
                ]);
                assert.equal(r.rows[0].v, who * 1000 + i);
                pids.add(r.rows[0].pid);
                await c.query("commit");
                done++;
              }
            }));
            assert.equal(done, 100);
            assert.equal(pids.size, 1, `pool_size 1 used ${pids.size} servers`);
          }
        });
      },
    );

    await t.step("pool_size precedence: user > database > general", async () => {
      await using proxy = await proxyFor(pg, {
        general: { default_pool_size: 2 },
        databases: [
          { name: "dbp", host: pg.host, port: pg.port, database_name: "app", pool_size: 3 },
          { name: "dbq", host: pg.host, port: pg.port, database_name: "app" },
        ],
        users: [
          { name: "prec_user", database: "dbp", pool_size: 4 },
          { name: "prec_db", database: "dbp" },
          { name: "prec_gen", database: "dbq" },
        ],
      });
      await dumpLogsOnFailure(proxy, async () => {
        const expected: Record<string, [string, number]> = {
          prec_user: ["dbp", 4],
          prec_db: ["dbp", 3],
          prec_gen: ["dbq", 2],
        };
        await using clients = new Clients();
        const sampler = sampleServers(admin, Object.keys(expected), 25);
        let max;
        try {
          await Promise.all(
            Object.entries(expected).map(async ([user, [db]]) => {
              const cs = await clients.openMany(via(proxy, user, db), 8, 8);
              await Promise.all(cs.map(async (c) => {
                for (let i = 0; i < 3; i++) await c.query("select pg_sleep(0.25)");
              }));
            }),
          );
        } finally {
          ({ max } = await sampler.stop());
        }
        for (const [user, [, size]] of Object.entries(expected)) {
          assert.equal(max.get(user), size, `${user}: peak ${max.get(user)}, expected ${size}`);
        }
      });
    });
  } finally {
    await admin.end();
  }
});
