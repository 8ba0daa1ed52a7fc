/**
 * Lifecycle of server connections and of the proxy, through the real proxy against a real
 * PostgreSQL: min_pool_size, idle_timeout, server_lifetime, servers dying under clients,
 * PostgreSQL restarting, graceful shutdown on SIGTERM, and CancelRequest forwarding.
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
  type PgCluster,
  type PgTarget,
  pgTool,
  type ProxyProcess,
  sendCancelRequest,
  sleep,
  startPostgres,
  startProxy,
  type TomlDocument,
  waitUntil,
} from "./harness/mod.ts";

const PASSWORD = "life-test-pw";
const ROLES = ["minp", "idler", "lifer", "dier", "rst", "gs", "gs2", "cx", "cx1"];

// ---------------------------------------------------------------------------------------------
// Helpers

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

/** Backend pid of the session of `user` running a query that contains `text`, once it runs. */
async function activePid(admin: pg.Client, user: string, text: string): Promise<number> {
  let pid: number | undefined;
  const found = await waitUntil(
    async () => {
      const r = await admin.query(
        "select pid from pg_stat_activity where usename = $1 and state = 'active' " +
          "and position($2 in query) > 0 and pid <> pg_backend_pid()",
        [user, text],
      );
      pid = r.rows[0]?.pid;
      return pid !== undefined;
    },
    10_000,
    20,
  );
  assert.ok(found && pid !== undefined, `no active "${text}" for ${user}`);
  return pid;
}

/** An npm:pg client with the errors it reported outside queries and a promise of its end. */
interface Tracked {
  c: pg.Client;
  errors: (Error & { code?: string })[];
  ended: Promise<void>;
  isEnded: () => boolean;
}

/** npm:pg clients that are all ended at the end of the scope. */
class Clients implements AsyncDisposable {
  readonly all: Tracked[] = [];

  async open(target: PgTarget): Promise<Tracked> {
    const errors: Error[] = [];
    const c = await connectPg(target, {
      connectionTimeoutMillis: 30_000,
      onError: (e) => errors.push(e),
    });
    let ended = false;
    const endedP = new Promise<void>((resolve) =>
      c.once("end", () => {
        ended = true;
        resolve();
      })
    );
    const t: Tracked = { c, errors, ended: endedP, isEnded: () => ended };
    this.all.push(t);
    return t;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.all.map((t) => t.c.end().catch(() => {})));
    this.all.length = 0;
  }
}

/** A proxy in front of `pg` (database "app"). */
function proxyFor(
  pg: PgCluster,
  users: TomlDocument[],
  general: TomlDocument = {},
): Promise<ProxyProcess> {
  return startProxy({
    config: { general, databases: [{ name: "app", host: pg.host, port: pg.port }] },
    users: { users: users.map((u) => ({ password: PASSWORD, database: "app", ...u })) },
  });
}

function via(proxy: ProxyProcess, user: string): PgTarget {
  return proxy.target({ user, password: PASSWORD, database: "app" });
}

/** Resolves true when `p` settles within `ms`. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((r) => {
    timer = setTimeout(() => r(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------

Deno.test("lifecycle", async (t) => {
  await using pg = await startPostgres({
    settings: { max_connections: 60 },
    roles: ROLES.map((name) => ({ name, password: PASSWORD, auth: "scram" as const })),
    databases: ["app"],
  });
  let admin = await connectPg(adminTarget(pg));
  try {
    await pg.sql(
      "create table gs_t (id int); grant all on gs_t to gs, gs2;",
      { database: "app" },
    );

    await t.step("min_pool_size = 2 opens 2 server connections with no client", async () => {
      await using proxy = await proxyFor(pg, [{ name: "minp", pool_size: 5 }], {
        min_pool_size: 2,
      });
      await dumpLogsOnFailure(proxy, async () => {
        assert.ok(
          await waitUntil(async () => (await serverCount(admin, "minp")) === 2, 5000),
          `expected 2 idle servers, have ${await serverCount(admin, "minp")}`,
        );
        await sleep(600);
        assert.equal(await serverCount(admin, "minp"), 2, "the pool went past min_pool_size");
      });
    });

    await t.step("idle_timeout = 1000 shrinks the pool back to min_pool_size", async () => {
      await using proxy = await proxyFor(pg, [{ name: "idler", pool_size: 5 }], {
        min_pool_size: 1,
        idle_timeout: 1000,
      });
      await dumpLogsOnFailure(proxy, async () => {
        await using clients = new Clients();
        const cs = await Promise.all(
          Array.from({ length: 10 }, () => clients.open(via(proxy, "idler"))),
        );
        let peak = 0;
        let loading = true;
        const sampler = (async () => {
          while (loading) {
            peak = Math.max(peak, await serverCount(admin, "idler"));
            await sleep(25);
          }
        })();
        try {
          await Promise.all(cs.map(async ({ c }) => {
            for (let i = 0; i < 2; i++) await c.query("select pg_sleep(0.3)");
          }));
        } finally {
          loading = false;
          await sampler;
        }
        const loadEnded = Date.now();
        assert.equal(peak, 5, `pool peaked at ${peak}, expected pool_size 5`);
        let shrunkAt = 0;
        assert.ok(
          await waitUntil(async () => {
            const n = await serverCount(admin, "idler");
            if (n === 1) shrunkAt = Date.now();
            return n === 1;
          }, 6000),
          `pool did not shrink to min_pool_size 1: ${await serverCount(admin, "idler")}`,
        );
        const after = shrunkAt - loadEnded;
        assert.ok(after >= 500, `idle servers closed ${after} ms after use, before idle_timeout`);
        await sleep(1500);
        assert.equal(await serverCount(admin, "idler"), 1, "pool went below min_pool_size");
        console.log(`idle_timeout 1000: shrank to min_pool_size ${after} ms after the load`);
      });
    });

    await t.step(
      "server_lifetime = 1000 replaces idle servers but never cuts a transaction",
      async () => {
        await using proxy = await proxyFor(pg, [{ name: "lifer", pool_size: 2 }], {
          server_lifetime: 1000,
        });
        await dumpLogsOnFailure(proxy, async () => {
          await using clients = new Clients();
          const [x, y] = await Promise.all([
            clients.open(via(proxy, "lifer")),
            clients.open(via(proxy, "lifer")),
          ]);
          const longTx = (async () => {
            await x.c.query("begin");
            const p1 = (await x.c.query("select pg_backend_pid() as pid")).rows[0].pid;
            await x.c.query("select pg_sleep(2)");
            const p2 = (await x.c.query("select pg_backend_pid() as pid")).rows[0].pid;
            await x.c.query("commit");
            return [p1, p2];
          })();
          longTx.catch(() => {}); // awaited below; no unhandled rejection meanwhile
          const pids: number[] = [];
          const until = Date.now() + 3500;
          while (Date.now() < until) {
            pids.push((await y.c.query("select pg_backend_pid() as pid")).rows[0].pid);
            await sleep(100);
          }
          const [p1, p2] = await longTx;
          assert.equal(p1, p2, "the long transaction moved to another server");
          const distinct = new Set(pids);
          assert.ok(
            distinct.size >= 3,
            `only ${distinct.size} backend pids over 3.5 s with server_lifetime 1000`,
          );
          assert.ok((await serverCount(admin, "lifer")) <= 2);
          console.log(`server_lifetime 1000: ${distinct.size} pids in 3.5 s; 2 s tx kept ${p1}`);
        });
      },
    );

    for (const inTransaction of [false, true]) {
      await t.step(
        inTransaction
          ? "a server terminated mid-transaction: that client is disconnected with a FATAL"
          : "a server terminated mid-query: the client gets an error and can go on",
        async () => {
          await using proxy = await proxyFor(pg, [{ name: "dier", pool_size: 3 }]);
          await dumpLogsOnFailure(proxy, async () => {
            await using clients = new Clients();
            const [a, b] = await Promise.all([
              clients.open(via(proxy, "dier")),
              clients.open(via(proxy, "dier")),
            ]);
            // B runs queries on another server the whole time.
            let bRunning = true;
            let bQueries = 0;
            const bErrors: unknown[] = [];
            const bLoop = (async () => {
              while (bRunning) {
                try {
                  const r = await b.c.query("select $1::int as v", [bQueries]);
                  assert.equal(r.rows[0].v, bQueries);
                  bQueries++;
                } catch (e) {
                  bErrors.push(e);
                }
                await sleep(20);
              }
            })();
            let pid = 0;
            let bAtKill = 0;
            try {
              if (inTransaction) await a.c.query("begin");
              const sleeping = failure(a.c.query("select pg_sleep(10)"));
              pid = await activePid(admin, "dier", "pg_sleep(10)");
              const killedAt = Date.now();
              bAtKill = bQueries;
              await admin.query("select pg_terminate_backend($1)", [pid]);
              // (Ending A at the end of the scope unblocks it, should the proxy never answer.)
              assert.ok(await settlesWithin(sleeping, 5000), "A got no answer for 5 s");
              const err = await sleeping;
              const after = Date.now() - killedAt;
              assert.ok(err, "pg_sleep(10) succeeded on a terminated server");
              const code = codeOf(err) ?? "";
              assert.ok(
                code === "57P01" || code.startsWith("08"),
                `unexpected error: ${code} ${err}`,
              );
              assert.ok(after < 2000, `A learned of the dead server only after ${after} ms`);
              // Let everything the proxy sends about it arrive.
              await sleep(300);
              const seen = [err, ...a.errors].map((e) =>
                `${codeOf(e)} ${(e as { severity?: string }).severity} ${e.message}`
              );
              console.log(`A got ${code} after ${after} ms; all errors: ${JSON.stringify(seen)}`);
              if (inTransaction) {
                // The transaction is gone with the server: A must start over.
                assert.ok(
                  await settlesWithin(a.ended, 2000),
                  "A was not disconnected after losing its transaction",
                );
                const fatal = [err, ...a.errors].some((e) =>
                  (e as { severity?: string }).severity === "FATAL"
                );
                assert.ok(fatal, `no FATAL reached A: ${seen}`);
              } else {
                const nextP = failure(a.c.query("select pg_backend_pid() as pid, 7 as v"));
                assert.ok(await settlesWithin(nextP, 5000), "A's next query got no answer in 5 s");
                const next = await nextP;
                assert.equal(
                  next,
                  null,
                  `A's next query failed: ${next}; errors A received: ${JSON.stringify(seen)}`,
                );
                assert.deepEqual(a.errors, [], "A received an error outside any query");
                const r = await a.c.query("select pg_backend_pid() as pid, 7 as v");
                assert.equal(r.rows[0].v, 7);
                assert.notEqual(r.rows[0].pid, pid, "A got the terminated backend again");
              }
            } finally {
              // B goes on after the kill: a count, not a rate (a loaded machine runs it slowly).
              const deadline = Date.now() + 10_000;
              while (bQueries < bAtKill + 5 && bErrors.length === 0 && Date.now() < deadline) {
                await sleep(20);
              }
              bRunning = false;
              await bLoop;
            }
            assert.deepEqual(bErrors, [], "B saw errors while another server was killed");
            assert.ok(
              bQueries >= bAtKill + 5,
              `B ran only ${bQueries - bAtKill} queries in 10 s after the kill`,
            );
            assert.deepEqual(b.errors, []);
            // The pool replaced the killed server: a new client works on a live backend.
            const c = await clients.open(via(proxy, "dier"));
            await Promise.all([
              b.c.query("select pg_sleep(0.2)"),
              c.c.query("select pg_sleep(0.2)"),
            ]);
            const alive = await admin.query(
              "select count(*)::int as n from pg_stat_activity where usename = 'dier' and pid = $1",
              [pid],
            );
            assert.equal(alive.rows[0].n, 0);
            assert.ok((await serverCount(admin, "dier")) >= 2, "the pool did not reconnect");
          });
        },
      );
    }

    await t.step("CancelRequest through the proxy cancels only the right query", async () => {
      await using proxy = await proxyFor(pg, [{ name: "cx", pool_size: 4 }]);
      await dumpLogsOnFailure(proxy, async () => {
        await using clients = new Clients();
        const [a, c] = await Promise.all([
          clients.open(via(proxy, "cx")),
          clients.open(via(proxy, "cx")),
        ]);
        const key = a.c as unknown as { processID: number; secretKey: number };
        assert.ok(Number.isInteger(key.processID) && Number.isInteger(key.secretKey));
        const aDone = failure(a.c.query("select pg_sleep(30)"));
        await activePid(admin, "cx", "pg_sleep(30)");
        const cStart = Date.now();
        const cDone = c.c.query("select pg_sleep(2), 5 as v");
        cDone.catch(() => {}); // awaited below; no unhandled rejection meanwhile

        // A wrong secret (and a wrong pid) cancel nothing.
        await sendCancelRequest(proxy, key.processID, key.secretKey ^ 0x5a5a);
        await sendCancelRequest(proxy, key.processID + 1, key.secretKey);
        assert.equal(await settlesWithin(aDone, 700), false, "a wrong CancelRequest cancelled A");

        const cancelAt = Date.now();
        await sendCancelRequest(proxy, key.processID, key.secretKey);
        assert.ok(await settlesWithin(aDone, 1000), "A was not cancelled within 1 s");
        const err = await aDone;
        const after = Date.now() - cancelAt;
        assert.ok(err, "A's pg_sleep(30) completed");
        assert.equal(codeOf(err), "57014", String(err));
        const cr = await cDone;
        const cTook = Date.now() - cStart;
        assert.equal(cr.rows[0].v, 5);
        assert.ok(cTook >= 1900, `C's pg_sleep(2) ended after ${cTook} ms`);
        // A is usable again.
        assert.equal((await a.c.query("select 1 as one")).rows[0].one, 1);

        // A real client: psql sends the CancelRequest itself on SIGINT.
        const target = via(proxy, "cx");
        const child = new Deno.Command(pgTool("psql"), {
          args: [
            "-X",
            "-h",
            target.host,
            "-p",
            String(target.port),
            "-U",
            target.user,
            "-d",
            target.database,
            "-c",
            "select pg_sleep(30)",
          ],
          env: { PGPASSWORD: PASSWORD, PGPASSFILE: NO_PGPASS, PGSSLMODE: "disable" },
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        const exited = child.output();
        let finished = false;
        try {
          await activePid(admin, "cx", "pg_sleep(30)");
          const sigintAt = Date.now();
          child.kill("SIGINT");
          assert.ok(await settlesWithin(exited, 2000), "psql did not return after SIGINT");
          const out = await exited;
          finished = true;
          const psqlAfter = Date.now() - sigintAt;
          const stderr = new TextDecoder().decode(out.stderr);
          assert.match(stderr, /canceling statement due to user request/);
          assert.ok(psqlAfter < 1000, `psql returned ${psqlAfter} ms after SIGINT`);
          console.log(`cancel: raw after ${after} ms, psql SIGINT after ${psqlAfter} ms`);
        } finally {
          if (!finished) {
            try {
              child.kill("SIGKILL");
            } catch {
              // Gone.
            }
            await exited.catch(() => {});
          }
        }
        assert.ok(
          await waitUntil(async () => {
            const r = await admin.query(
              "select count(*)::int as n from pg_stat_activity where usename = 'cx' " +
                "and state = 'active' and query like '%pg_sleep(30)%' and pid <> pg_backend_pid()",
            );
            return r.rows[0].n === 0;
          }, 2000),
          "a cancelled pg_sleep(30) still runs",
        );
      });
    });

    await t.step(
      "CancelRequest: a client waiting for a server is cancelled; a stale key cancels nothing",
      async () => {
        await using proxy = await proxyFor(pg, [{ name: "cx1", pool_size: 1 }]);
        await dumpLogsOnFailure(proxy, async () => {
          await using clients = new Clients();
          const [a, b] = await Promise.all([
            clients.open(via(proxy, "cx1")),
            clients.open(via(proxy, "cx1")),
          ]);
          const keyOf = (t: Tracked) => t.c as unknown as { processID: number; secretKey: number };

          // B waits for the only server, which A holds: cancelling B ends the wait.
          await a.c.query("begin");
          await a.c.query("select 1");
          const waiting = failure(b.c.query("select 1"));
          await sleep(200);
          assert.equal(await settlesWithin(waiting, 0), false, "B did not wait for A's server");
          const cancelAt = Date.now();
          await sendCancelRequest(proxy, keyOf(b).processID, keyOf(b).secretKey);
          const settled = await settlesWithin(waiting, 1000);
          await a.c.query("commit");
          assert.ok(settled, "a CancelRequest did not end B's wait for a server");
          const err = await waiting;
          assert.equal(codeOf(err), "57014", String(err));
          console.log(`waiting client cancelled after ${Date.now() - cancelAt} ms`);
          assert.equal((await b.c.query("select 2 as two")).rows[0].two, 2);

          // A's key, sent while B runs a query on the server A used before, cancels nothing.
          const bDone = failure(b.c.query("select pg_sleep(1), 9 as v"));
          await activePid(admin, "cx1", "pg_sleep(1)");
          await sendCancelRequest(proxy, keyOf(a).processID, keyOf(a).secretKey);
          const bErr = await bDone;
          assert.equal(bErr, null, `B's query was cancelled with A's key: ${bErr}`);
        });
      },
    );

    await t.step(
      "SIGTERM: in-flight transaction may COMMIT, idle clients get 57P01, exit 0",
      async () => {
        const proxy = await proxyFor(pg, [{ name: "gs", pool_size: 3 }], {
          shutdown_timeout: 10_000,
        });
        try {
          await dumpLogsOnFailure(proxy, async () => {
            await using clients = new Clients();
            const [a, b] = await Promise.all([
              clients.open(via(proxy, "gs")),
              clients.open(via(proxy, "gs")),
            ]);
            await b.c.query("select 1");
            await a.c.query("begin");
            await a.c.query("insert into gs_t values (1)");
            proxy.signal("SIGTERM");
            assert.ok(await settlesWithin(b.ended, 3000), "idle client B was not disconnected");
            assert.ok(
              b.errors.some((e) => e.code === "57P01"),
              `B got no 57P01: ${b.errors.map((e) => `${e.code} ${e.message}`)}`,
            );
            // New connections are refused.
            const refused = await failure(
              connectPg(via(proxy, "gs"), {
                connectionTimeoutMillis: 3000,
              }).then((c) => c.end()),
            );
            assert.ok(refused, "a new connection was accepted during shutdown");
            // A is still inside its transaction and can finish it.
            await sleep(300);
            assert.equal(proxy.exited, false, "the proxy exited with a transaction open");
            await a.c.query("insert into gs_t values (2)");
            await a.c.query("commit");
            const committedAt = Date.now();
            const exit = await proxy.waitForExit({ timeoutMs: 10_000 });
            const exitAfter = Date.now() - committedAt;
            assert.equal(exit.code, 0, `proxy exit ${exit.code}`);
            assert.ok(exitAfter < 3000, `proxy exited ${exitAfter} ms after the last commit`);
            assert.ok(await settlesWithin(a.ended, 2000), "A was not disconnected after COMMIT");
            const rows = await pg.sql("select id from gs_t order by id", { database: "app" });
            assert.deepEqual(rows.flat(), ["1", "2"]);
            console.log(`shutdown: exited ${exitAfter} ms after A's COMMIT; refused: ${refused}`);
          });
        } finally {
          await proxy.stop({ timeoutMs: 5000 });
        }
      },
    );

    await t.step(
      "SIGTERM with shutdown_timeout = 1000: an open transaction is rolled back after ~1 s",
      async () => {
        const proxy = await proxyFor(pg, [{ name: "gs2", pool_size: 3 }], {
          shutdown_timeout: 1000,
        });
        try {
          await dumpLogsOnFailure(proxy, async () => {
            await using clients = new Clients();
            const a = await clients.open(via(proxy, "gs2"));
            await a.c.query("begin");
            await a.c.query("insert into gs_t values (3)");
            const signalledAt = Date.now();
            proxy.signal("SIGTERM");
            const exit = await proxy.waitForExit({ timeoutMs: 10_000 });
            const took = Date.now() - signalledAt;
            assert.equal(exit.code, 0, `proxy exit ${exit.code}`);
            assert.ok(took >= 900, `proxy exited after ${took} ms, before shutdown_timeout`);
            assert.ok(took < 4000, `proxy exited only after ${took} ms`);
            assert.ok(await settlesWithin(a.ended, 2000), "A was not disconnected");
            assert.ok(
              a.errors.some((e) => e.code === "57P01"),
              `A got no 57P01: ${a.errors.map((e) => `${e.code} ${e.message}`)}`,
            );
            const rows = await pg.sql("select count(*) from gs_t where id = 3", {
              database: "app",
            });
            assert.deepEqual(rows, [["0"]], "the unfinished transaction was committed");
            assert.ok(
              await waitUntil(async () => (await serverCount(admin, "gs2")) === 0, 3000),
              "server connections outlived the proxy",
            );
            console.log(`shutdown_timeout 1000: exited after ${took} ms`);
          });
        } finally {
          await proxy.stop({ timeoutMs: 5000 });
        }
      },
    );

    await t.step("PostgreSQL restarted under idle clients: queries work again", async () => {
      await using proxy = await proxyFor(pg, [{ name: "rst", pool_size: 3 }]);
      await dumpLogsOnFailure(proxy, async () => {
        await using clients = new Clients();
        const cs = await Promise.all(
          Array.from({ length: 3 }, () => clients.open(via(proxy, "rst"))),
        );
        // Fill the pool: three servers, all idle afterwards.
        await Promise.all(cs.map(({ c }) => c.query("select pg_sleep(0.2)")));
        assert.equal(await serverCount(admin, "rst"), 3);
        await admin.end();

        // Clean restart (fast shutdown: servers get FATAL 57P01 while idle).
        await pg.stop();
        const downStart = Date.now();
        const down = await failure(cs[0].c.query("select 1"));
        const downTook = Date.now() - downStart;
        assert.ok(down, "a query succeeded while PostgreSQL was down");
        assert.ok(
          (codeOf(down) ?? "").startsWith("08"),
          `expected a connection error, got ${codeOf(down)} ${down}`,
        );
        assert.ok(downTook < 3000, `the query failed only after ${downTook} ms`);
        await pg.start();
        const afterStop = await Promise.all(
          cs.map(({ c }) => failure(c.query("select 1 as one"))),
        );
        assert.deepEqual(
          afterStop.map((e) => e && `${e.code} ${e.message}`),
          [null, null, null],
          "queries failed after a clean restart",
        );

        // Crash (SIGKILL of the postmaster) and start: at most one failure per client.
        await Promise.all(cs.map(({ c }) => c.query("select pg_sleep(0.2)")));
        await pg.kill();
        await pg.start();
        const firstAfterCrash = await Promise.all(
          cs.map(({ c }) => failure(c.query("select 1 as one"))),
        );
        const second = await Promise.all(cs.map(({ c }) => failure(c.query("select 2 as two"))));
        assert.deepEqual(
          second.map((e) => e && `${e.code} ${e.message}`),
          [null, null, null],
          "queries still fail after the crash restart",
        );
        console.log(
          `restart: down query ${codeOf(down)} after ${downTook} ms; after crash: ` +
            JSON.stringify(firstAfterCrash.map((e) => e && `${e.code} ${e.message}`)),
        );
        for (const { c } of cs) assert.equal((await c.query("select 3 as x")).rows[0].x, 3);
        assert.deepEqual(cs.flatMap((t) => t.errors.map((e) => e.message)), []);
      });
      admin = await connectPg(adminTarget(pg));
    });
  } finally {
    await admin.end().catch(() => {});
  }
});
