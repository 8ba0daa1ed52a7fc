/**
 * Failover through the real proxy, against a real primary and streaming replicas that are killed,
 * stopped, frozen, paused and promoted under it:
 *
 * - a replica killed (SIGKILL) or stopped under `pgbench -S -c 8`: pgbench finishes with no failed
 *   transaction and no aborted client, the proxy bans the replica, and once it is back it serves
 *   reads again within about ban_timeout + idle_healthcheck_interval;
 * - replica lag: with ban_replica_lag_bytes or ban_replica_lag, a replica whose replay is paused
 *   leaves the rotation within a few lsn_check_intervals and returns when it catches up;
 * - health checks: a stopped replica is banned by the background check with no traffic at all; a
 *   replica that hangs (SIGSTOP) under an idle pooled connection is noticed by the checkout health
 *   check and the read is served elsewhere without an error;
 * - role = "auto": writes follow the detected primary; with no primary a write waits
 *   checkout_timeout and fails clearly; once the replica is promoted, writes reach it within
 *   lsn_check_interval + 1 s.
 *
 * Where each query ran is asked of the server (`current_setting('port')`).
 */

import assert from "node:assert/strict";
import type pg from "pg";
import {
  codeOf,
  connectPg,
  dumpLogsOnFailure,
  pgbench,
  type PgCluster,
  type PgReplica,
  type PgTarget,
  psql,
  runCommand,
  sleep,
  startPostgres,
  startProxy,
  startReplica,
  type TomlDocument,
  waitUntil,
} from "./harness/mod.ts";

const PASSWORD = "failover-test-pw";
const USER = "postgres";
const DB = "app";
const WHERE = "select current_setting('port')::int as port";

// ---------------------------------------------------------------------------------------------
// Helpers

type Role = "primary" | "replica" | "auto";

function entry(node: PgCluster, role: Role): TomlDocument {
  return { name: DB, host: node.host, port: node.port, database_name: "postgres", role };
}

function proxyFor(hosts: Array<[PgCluster, Role]>, general: TomlDocument) {
  return startProxy({
    config: { general, databases: hosts.map(([n, r]) => entry(n, r)) },
    users: { users: [{ name: USER, password: PASSWORD, database: DB }] },
  });
}

function via(proxy: { target(o: { user: string; password: string; database: string }): PgTarget }) {
  return proxy.target({ user: USER, password: PASSWORD, database: DB });
}

/** Maps ports to names. */
function namer(nodes: Record<string, PgCluster>): (port: unknown) => string {
  const byPort = new Map(Object.entries(nodes).map(([k, n]) => [n.port, k]));
  return (port) => byPort.get(Number(port)) ?? `port ${port}`;
}

/** Where `n` sequential reads ran. */
async function reads(c: pg.Client, name: (p: unknown) => string, n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(name((await c.query(WHERE)).rows[0].port));
  return out;
}

function count(seq: string[], what: string): number {
  return seq.filter((s) => s === what).length;
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** `host:port banned` as the proxy logs it. */
function bannedLine(node: PgCluster, reason = ""): RegExp {
  return new RegExp(`${escape(`${node.host}:${node.port}`)} banned: ${reason}`);
}

function unbannedLine(node: PgCluster): RegExp {
  return new RegExp(`${escape(`${node.host}:${node.port}`)} unbanned`);
}

/** The replica running a query that contains `marker` (polled for up to 3 s), or null. */
async function runningOn(marker: string, replicas: PgReplica[]): Promise<PgReplica | null> {
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline) {
    for (const r of replicas) {
      const rows = await r.sql(
        "select count(*) from pg_stat_activity " +
          `where query like '%${marker}%' and pid <> pg_backend_pid()`,
      );
      if (rows[0][0] !== "0") return r;
    }
    await sleep(20);
  }
  return null;
}

/** The proxy's output after `mark` (a {@linkcode ProxyProcess.logOffset}). */
function logsSince(proxy: { logs(): string; logOffset(): number }, mark: number): string {
  const logs = proxy.logs();
  return logs.slice(Math.max(0, mark - (proxy.logOffset() - logs.length)));
}

/**
 * SIGSTOPs a cluster's postmaster and all its children (a host that hangs: TCP still accepts,
 * nothing answers); returns the function that resumes them.
 */
async function freeze(node: PgCluster): Promise<() => Promise<void>> {
  const pid = node.pid;
  assert.ok(pid, "the cluster is not running");
  const children = await runCommand("pgrep", ["-P", String(pid)], { timeoutMs: 10_000 });
  const pids = [String(pid), ...children.stdout.split(/\s+/).filter((p) => p !== "")];
  const signal = async (sig: string) => {
    const r = await runCommand("kill", [`-${sig}`, ...pids], { timeoutMs: 10_000 });
    // A backend that exited between pgrep and kill is not an error; anything else is.
    const other = r.stderr.split("\n").filter((l) => l.trim() !== "" && !/No such process/.test(l));
    assert.ok(r.code === 0 || other.length === 0, r.stderr);
  };
  await signal("STOP");
  return () => signal("CONT");
}

// ---------------------------------------------------------------------------------------------

Deno.test("failover", async (t) => {
  await using primary = await startPostgres();
  await primary.sql("create table t (id serial primary key, x int)");
  const init = await pgbench(
    { host: primary.host, port: primary.port, user: USER, database: "postgres" },
    ["-i", "-s", "1", "-q"],
  );
  assert.equal(init.code, 0, init.stderr);
  await using r1 = await startReplica(primary);
  await using r2 = await startReplica(primary);
  await Promise.all([r1.waitForReplay(), r2.waitForReplay()]);
  const name = namer({ primary, r1, r2 });

  const FAST = {
    idle_healthcheck_interval: 300,
    idle_healthcheck_delay: 0,
    healthcheck_timeout: 1000,
    connect_timeout: 1000,
    ban_timeout: 1000,
    lsn_check_interval: 300,
    read_write_split: "exclude_primary",
    load_balancing_strategy: "round_robin",
  };

  const underPgbench = async (
    victim: PgReplica,
    how: "kill" | "stop",
    mode: string,
  ) => {
    await using proxy = await proxyFor(
      [[primary, "primary"], [r1, "replica"], [r2, "replica"]],
      FAST,
    );
    try {
      await dumpLogsOnFailure(proxy, async () => {
        const mark = proxy.logOffset();
        const run = pgbench(via(proxy), ["-n", "-S", "-M", mode, "-c", "8", "-j", "2", "-T", "8"], {
          timeoutMs: 30_000,
        });
        await sleep(3000);
        if (how === "kill") await victim.kill();
        else await victim.stop();
        const result = await run;
        assert.equal(result.code, 0, `pgbench:\n${result.stdout}\n${result.stderr}`);
        assert.doesNotMatch(result.stderr, /aborted|error/i);
        assert.equal(result.failed ?? 0, 0, result.stdout);
        assert.ok((result.processed ?? 0) > 100, result.stdout);
        await proxy.waitForLog(bannedLine(victim), { since: mark, timeoutMs: 1000 });
        console.log(`pgbench -S -M ${mode} with ${name(victim.port)} ${how}ed: tps ${result.tps}`);

        // Back in rotation within about ban_timeout + idle_healthcheck_interval.
        await victim.start();
        const back = Date.now();
        const c = await connectPg(via(proxy));
        try {
          const seen = await waitUntil(
            async () => name((await c.query(WHERE)).rows[0].port) === name(victim.port),
            5000,
            10,
          );
          const took = Date.now() - back;
          assert.ok(seen, `${name(victim.port)} never served a read again`);
          assert.ok(
            took <= FAST.ban_timeout + FAST.idle_healthcheck_interval + 1000,
            `${name(victim.port)} served reads again only after ${took} ms`,
          );
          await proxy.waitForLog(unbannedLine(victim), { since: mark, timeoutMs: 1000 });
          console.log(`${name(victim.port)} back in rotation ${took} ms after it restarted`);
        } finally {
          await c.end();
        }
      });
    } finally {
      if (!victim.running) await victim.start();
    }
  };

  await t.step(
    "a replica SIGKILLed under pgbench -S -M prepared: no failed transaction, banned, back",
    () => underPgbench(r2, "kill", "prepared"),
  );

  await t.step(
    "a replica stopped under pgbench -S -M simple: no failed transaction, banned, back",
    () => underPgbench(r1, "stop", "simple"),
  );

  await t.step("a read running on a replica that goes away is re-run on the other", async (t) => {
    for (const how of ["stop", "kill"] as const) {
      await t.step(
        how === "stop" ? "fast shutdown (FATAL 57P01)" : "SIGKILL (connection closed)",
        async () => {
          await using proxy = await proxyFor(
            [[primary, "primary"], [r1, "replica"], [r2, "replica"]],
            FAST,
          );
          const c = await connectPg(via(proxy));
          let lost: PgReplica | null = null;
          try {
            await dumpLogsOnFailure(proxy, async () => {
              const marker = `rerun_${how}`;
              const read = c.query(
                `select pg_sleep(1), current_setting('port')::int as port, '${marker}' as m`,
              ).then(
                (r: pg.QueryResult) => ({ port: name(r.rows[0].port), error: null as unknown }),
                (e: unknown) => ({ port: null, error: e }),
              );
              lost = await runningOn(marker, [r1, r2]);
              assert.ok(lost, "the read runs on no replica");
              if (how === "stop") await lost.stop();
              else await lost.kill();
              const result = await read;
              assert.equal(result.error, null, `the read failed: ${result.error}`);
              assert.equal(result.port, lost === r1 ? "r2" : "r1");
              await proxy.waitForLog(/running it on another host/, { timeoutMs: 1000 });
            });
          } finally {
            await c.end();
            const victim = lost as PgReplica | null;
            if (victim && !victim.running) await victim.start();
          }
        },
      );
    }
  });

  await t.step(
    "an idle pooled connection the server terminates is dropped, and said so",
    async () => {
      await using proxy = await proxyFor([[primary, "primary"], [r1, "replica"], [r2, "replica"]], {
        ...FAST,
        idle_healthcheck_interval: 0,
        lsn_check_interval: 600_000,
      });
      await dumpLogsOnFailure(proxy, async () => {
        const c = await connectPg(via(proxy));
        try {
          await reads(c, name, 4);
          const mark = proxy.logOffset();
          const killed = await r1.sql(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity " +
              "where backend_type = 'client backend' and pid <> pg_backend_pid()",
          );
          assert.notEqual(killed[0][0], "0");
          await proxy.waitForLog(/reported while idle: FATAL 57P01/, {
            since: mark,
            timeoutMs: 2000,
          });
          // The next reads on r1 get a new connection; no error, no ban.
          const seq = await reads(c, name, 4);
          assert.equal(count(seq, "r1"), 2, seq.join());
          assert.doesNotMatch(logsSince(proxy, mark), /banned/);
        } finally {
          await c.end();
        }
      });
    },
  );

  await t.step("replica lag: ban_replica_lag_bytes and ban_replica_lag", async (t) => {
    for (const lag of [{ ban_replica_lag_bytes: 1 }, { ban_replica_lag: 400 }]) {
      await t.step(JSON.stringify(lag), async () => {
        await Promise.all([r1.waitForReplay(), r2.waitForReplay()]);
        await using proxy = await proxyFor(
          [[primary, "primary"], [r1, "replica"], [r2, "replica"]],
          { ...FAST, lsn_check_interval: 200, ...lag },
        );
        await dumpLogsOnFailure(proxy, async () => {
          const c = await connectPg(via(proxy));
          try {
            // Both replicas in rotation first.
            assert.ok(
              await waitUntil(async () => {
                const seq = await reads(c, name, 4);
                return count(seq, "r1") === 2 && count(seq, "r2") === 2;
              }, 5000),
              "both replicas never served reads",
            );
            const mark = proxy.logOffset();
            await r1.pauseReplay();
            try {
              await primary.sql("insert into t (x) select g from generate_series(1, 100) g");
              const wrote = Date.now();
              await proxy.waitForLog(bannedLine(r1, "replica lag"), {
                since: mark,
                timeoutMs: 5000,
              });
              const took = Date.now() - wrote;
              // The byte threshold trips at the first check; the time threshold once 400 ms pass.
              assert.ok(took <= 400 + 5 * 200 + 500, `banned for lag only after ${took} ms`);
              // r2 may have been a few bytes behind at that check too (with a 1-byte threshold it
              // is banned for a round): wait until it serves reads.
              assert.ok(
                await waitUntil(async () => count(await reads(c, name, 2), "r2") > 0, 3000),
                "r2 never served reads while r1 lagged",
              );
              const seq = await reads(c, name, 20);
              assert.equal(count(seq, "r1"), 0, seq.join());
              // Still out while it lags.
              await sleep(600);
              assert.equal(count(await reads(c, name, 10), "r1"), 0);
              assert.ok(await r1.lagBytes() > 0);
            } finally {
              await r1.resumeReplay();
            }
            const resumed = Date.now();
            assert.ok(
              await waitUntil(async () => count(await reads(c, name, 2), "r1") > 0, 5000),
              "r1 never came back after catching up",
            );
            const back = Date.now() - resumed;
            assert.ok(back <= 5 * 200 + 500, `r1 back in rotation only after ${back} ms`);
            await proxy.waitForLog(unbannedLine(r1), { since: mark, timeoutMs: 1000 });
            if ("ban_replica_lag" in lag) {
              // r2 was never more than a few milliseconds behind: 400 ms of lag must not ban it.
              const wrongly = logsSince(proxy, mark).match(bannedLine(r2, ".*"));
              assert.equal(wrongly, null, `r2 banned for lag: ${wrongly?.[0]}`);
            }
          } finally {
            await c.end();
          }
        });
      });
    }
  });

  await t.step("health check: a stopped replica is banned with no traffic at all", async () => {
    await using proxy = await proxyFor(
      [[primary, "primary"], [r1, "replica"], [r2, "replica"]],
      // One LSN check at start only: the ban must come from the health check.
      { ...FAST, lsn_check_interval: 600_000 },
    );
    await dumpLogsOnFailure(proxy, async () => {
      // Idle pooled connections on both replicas.
      const c = await connectPg(via(proxy));
      const seq = await reads(c, name, 4);
      assert.equal(count(seq, "r1"), 2, seq.join());
      await c.end();
      const mark = proxy.logOffset();
      await r1.stop();
      const stopped = Date.now();
      try {
        await proxy.waitForLog(bannedLine(r1, "health check failed"), {
          since: mark,
          timeoutMs: 5000,
        });
        const took = Date.now() - stopped;
        assert.ok(
          took <= FAST.idle_healthcheck_interval + FAST.healthcheck_timeout + 500,
          `banned ${took} ms after it stopped`,
        );
        const c2 = await connectPg(via(proxy));
        try {
          const after = await reads(c2, name, 10);
          assert.deepEqual(after, Array(10).fill("r2"));
        } finally {
          await c2.end();
        }
      } finally {
        await r1.start();
      }
      await proxy.waitForLog(unbannedLine(r1), { since: mark, timeoutMs: 5000 });
    });
  });

  await t.step(
    "checkout health check: a hung replica's idle connection is noticed, the read served elsewhere",
    async () => {
      await using proxy = await proxyFor(
        [[primary, "primary"], [r1, "replica"], [r2, "replica"]],
        {
          ...FAST,
          // No background checks: only the checkout can notice.
          idle_healthcheck_interval: 0,
          lsn_check_interval: 600_000,
          healthcheck_interval: 200,
          healthcheck_timeout: 500,
          connect_timeout: 500,
          ban_timeout: 60_000,
        },
      );
      await dumpLogsOnFailure(proxy, async () => {
        const c = await connectPg(via(proxy));
        try {
          const warm = await reads(c, name, 4);
          assert.equal(count(warm, "r1"), 2, warm.join());
          const mark = proxy.logOffset();
          const thaw = await freeze(r1);
          try {
            await sleep(400); // the pooled connections are now idle longer than healthcheck_interval
            const started = Date.now();
            const seq = await reads(c, name, 6);
            const took = Date.now() - started;
            assert.deepEqual(seq, Array(6).fill("r2"));
            // One health check timeout and one connect timeout at most, then r2.
            assert.ok(took <= 500 * 3 + 500 + 1000, `6 reads took ${took} ms`);
            await proxy.waitForLog(bannedLine(r1), { since: mark, timeoutMs: 1000 });
          } finally {
            await thaw();
          }
        } finally {
          await c.end();
        }
      });
    },
  );

  await t.step("role = auto: writes follow the primary through a promotion", async () => {
    const LSN = 250;
    await Promise.all([r1.waitForReplay(), r2.waitForReplay()]);
    await using proxy = await proxyFor([[primary, "auto"], [r1, "auto"]], {
      ...FAST,
      lsn_check_interval: LSN,
      checkout_timeout: 1000,
    });
    await dumpLogsOnFailure(proxy, async () => {
      await proxy.waitForLog(/new primary chosen: 127\.0\.0\.1:(\d+)/, { timeoutMs: 5000 });
      assert.match(proxy.logs(), new RegExp(`new primary chosen: 127\\.0\\.0\\.1:${primary.port}`));
      const INSERT = "insert into t (x) values (1) returning current_setting('port')::int as port";
      const c = await connectPg(via(proxy));
      try {
        assert.equal(name((await c.query(INSERT)).rows[0].port), "primary");
        assert.deepEqual(await reads(c, name, 3), ["r1", "r1", "r1"]);

        // No primary: reads still work, a write waits checkout_timeout and fails clearly.
        const mark = proxy.logOffset();
        await primary.stop();
        await proxy.waitForLog(/no primary/, { since: mark, timeoutMs: 5000 });
        const started = Date.now();
        const err = await c.query(INSERT).then(() => null, (e: unknown) => e as Error);
        const waited = Date.now() - started;
        assert.ok(err, "a write succeeded with no primary");
        assert.match(err.message, /no primary/, err.message);
        assert.equal(codeOf(err), "08006", err.message);
        assert.ok(waited >= 900 && waited <= 3000, `the write failed after ${waited} ms`);
        assert.deepEqual(await reads(c, name, 2), ["r1", "r1"]);
        const fresh = await connectPg(via(proxy));
        try {
          assert.deepEqual(await reads(fresh, name, 2), ["r1", "r1"]);
        } finally {
          await fresh.end();
        }
        // A client with startup parameters never seen before logs in and reads too (checked at the
        // end, so that the promotion below is tested either way).
        const viaPsql = await psql(via(proxy), WHERE, { env: { PGAPPNAME: "no-primary-window" } });
        const loginProblem = viaPsql.code === 0 && name(viaPsql.stdout.trim()) === "r1"
          ? null
          : `a new client could not read while there was no primary: ${viaPsql.stderr.trim()}`;

        // Promoted: writes reach it within lsn_check_interval + 1 s, on the same connection.
        await r1.promote();
        const promoted = Date.now();
        let landed: string | null = null;
        let lastError: unknown = null;
        while (Date.now() - promoted <= LSN + 1000 && landed === null) {
          try {
            landed = name((await c.query(INSERT)).rows[0].port);
          } catch (e) {
            lastError = e;
            await sleep(25);
          }
        }
        const took = Date.now() - promoted;
        assert.equal(
          landed,
          "r1",
          `no write succeeded ${took} ms after the promotion: ${lastError}`,
        );
        await proxy.waitForLog(new RegExp(`new primary chosen: 127\\.0\\.0\\.1:${r1.port}`), {
          since: mark,
          timeoutMs: 1000,
        });
        // New connections write there too.
        const after = await connectPg(via(proxy));
        try {
          assert.equal(name((await after.query(INSERT)).rows[0].port), "r1");
          // The old primary is gone, so reads go to the new one.
          assert.deepEqual(await reads(after, name, 2), ["r1", "r1"]);
        } finally {
          await after.end();
        }
        console.log(`writes reached the promoted replica ${took} ms after the promotion`);
        assert.equal(loginProblem, null);
      } finally {
        await c.end();
      }
    });
  });
});
