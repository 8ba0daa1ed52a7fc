/**
 * Read/write routing through the real proxy: one primary and two streaming replicas, and every
 * claim checked by asking the server that answered (`current_setting('port')`,
 * `pg_is_in_recovery()`, `pg_backend_pid()`), never by trusting the proxy.
 *
 * - what goes where: plain reads to replicas; writes, DDL, COPY FROM, row locks, data-modifying
 *   CTEs, nextval and advisory locks to the primary; read-only transactions (three spellings) to
 *   a replica for their whole length; plain BEGIN and multi-statement requests to the primary in
 *   conservative mode and by their content in aggressive mode; the extended protocol (npm:pg
 *   parameters, named prepared statements) the same way; pgbench -S (simple, extended, prepared)
 *   only on replicas and TPC-B only on the primary, counted with pg_stat_database.xact_commit.
 * - overrides: `pgdog_role` comments, `SET [LOCAL] pgdog.role`, `RESET pgdog.role`, the startup
 *   parameter (`options=-c pgdog.role=...` and on its own).
 * - read_write_split and load_balancing_strategy, exactly where the strategy is deterministic.
 * - the parser only where routing needs it: a single host with query_parser = auto does not
 *   route (BEGIN reaches the server at once), query_parser = on does, query_parser = off with
 *   replicas sends everything to the primary.
 *
 * The parse cache (queries differing only in literals share an entry) has no observable effect
 * without the admin database, so it is not tested here.
 */

import assert from "node:assert/strict";
import type pg from "pg";
import postgres from "postgres";
import {
  codeOf,
  connectPg,
  dumpLogsOnFailure,
  pgbench,
  type PgCluster,
  type PgReplica,
  type PgTarget,
  psql,
  sleep,
  startPostgres,
  startProxy,
  startReplica,
  type TomlDocument,
  waitUntil,
} from "./harness/mod.ts";
import { dataRow, errorFields, fe, WireClient } from "./wire.ts";

const PASSWORD = "routing-test-pw";
const USER = "postgres";
const DB = "app";

/** The query that says where it ran. */
const WHERE = "select current_setting('port')::int as port";

type NodeName = "primary" | "r1" | "r2";

interface Nodes {
  primary: PgCluster;
  r1: PgReplica;
  r2: PgReplica;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** The [[databases]] entries of "app": the primary, then the replicas (with optional weights). */
function databases(
  nodes: Nodes,
  options: { replicas?: ("r1" | "r2")[]; weights?: Partial<Record<NodeName, number>> } = {},
): TomlDocument[] {
  const entry = (node: PgCluster, role: string, name: NodeName): TomlDocument => ({
    name: DB,
    host: node.host,
    port: node.port,
    database_name: "postgres",
    role,
    lb_weight: options.weights?.[name],
  });
  const replicas = options.replicas ?? ["r1", "r2"];
  return [
    entry(nodes.primary, "primary", "primary"),
    ...replicas.map((r) => entry(nodes[r], "replica", r)),
  ];
}

/** A proxy in front of `nodes` with these [general] settings. */
function proxyFor(
  nodes: Nodes,
  general: TomlDocument,
  options: { replicas?: ("r1" | "r2")[]; weights?: Partial<Record<NodeName, number>> } = {},
) {
  return startProxy({
    config: {
      // No background noise unless a step asks for it: nothing here should ever be banned.
      general: { idle_healthcheck_interval: 0, lsn_check_interval: 600_000, ...general },
      databases: databases(nodes, options),
    },
    users: { users: [{ name: USER, password: PASSWORD, database: DB }] },
  });
}

function via(proxy: { target(o: { user: string; password: string; database: string }): PgTarget }) {
  return proxy.target({ user: USER, password: PASSWORD, database: DB });
}

/** Maps a port to the node listening on it. */
function namer(nodes: Nodes): (port: unknown) => NodeName {
  const byPort = new Map<number, NodeName>([
    [nodes.primary.port, "primary"],
    [nodes.r1.port, "r1"],
    [nodes.r2.port, "r2"],
  ]);
  return (port) => {
    const name = byPort.get(Number(port));
    if (!name) throw new Error(`no node listens on port ${port}`);
    return name;
  };
}

/** The rows of the last result of a (possibly multi-statement) npm:pg query. */
function lastRows(r: pg.QueryResult | pg.QueryResult[]): Record<string, unknown>[] {
  return Array.isArray(r) ? r[r.length - 1].rows : r.rows;
}

/** Runs `n` sequential reads and returns where each ran. */
async function sequence(
  c: pg.Client,
  name: (port: unknown) => NodeName,
  n: number,
  sql = WHERE,
): Promise<NodeName[]> {
  const out: NodeName[] = [];
  for (let i = 0; i < n; i++) out.push(name((await c.query(sql)).rows[0].port));
  return out;
}

function tally(seq: NodeName[]): Record<NodeName, number> {
  const t: Record<NodeName, number> = { primary: 0, r1: 0, r2: 0 };
  for (const s of seq) t[s]++;
  return t;
}

/** Client backends on `node` other than the asking one. */
async function otherBackends(node: PgCluster, where = "true"): Promise<number> {
  const rows = await node.sql(
    "select count(*) from pg_stat_activity where backend_type = 'client backend' " +
      `and pid <> pg_backend_pid() and ${where}`,
  );
  return Number(rows[0][0]);
}

/** pg_stat_database.xact_commit of database postgres on `node`. */
async function commits(node: PgCluster): Promise<number> {
  const rows = await node.sql(
    "select xact_commit from pg_stat_database where datname = 'postgres'",
  );
  return Number(rows[0][0]);
}

// ---------------------------------------------------------------------------------------------

Deno.test("routing", async (t) => {
  await using primary = await startPostgres();
  await primary.sql(
    "create table t (id serial primary key, x int); insert into t (x) select g from generate_series(1, 10) g;" +
      "create sequence s;",
  );
  await using r1 = await startReplica(primary);
  await using r2 = await startReplica(primary);
  const nodes: Nodes = { primary, r1, r2 };
  const name = namer(nodes);
  const replicated = () => Promise.all([r1.waitForReplay(), r2.waitForReplay()]);
  await replicated();

  await t.step("conservative, exclude_primary: what goes where", async (t) => {
    await using proxy = await proxyFor(nodes, {
      read_write_split: "exclude_primary",
      load_balancing_strategy: "round_robin",
    });
    await dumpLogsOnFailure(proxy, async () => {
      const c = await connectPg(via(proxy));
      try {
        const at = async (sql: string, values?: unknown[]): Promise<NodeName> => {
          const rows = lastRows(await c.query({ text: sql, values }));
          return name(rows[0].port);
        };

        await t.step("plain SELECTs go to replicas only, alternating (round_robin)", async () => {
          const seq = await sequence(c, name, 10);
          assert.deepEqual(tally(seq).primary, 0, seq.join());
          for (let i = 1; i < seq.length; i++) assert.notEqual(seq[i], seq[i - 1], seq.join());
          const rec = await c.query("select pg_is_in_recovery() as rec");
          assert.equal(rec.rows[0].rec, true);
          // Reads of the data, too, and weird literals that the normalizer replaces.
          const r = await c.query(
            "select count(*)::int as n, E'a\\'b' as e, $$d$$ as d, interval '1 day' as i, " +
              "-1.5e3 as f, B'101'::int as b, current_setting('port')::int as port from t where x > 0",
          );
          assert.equal(r.rows[0].n, 10);
          assert.equal(r.rows[0].e, "a'b");
          assert.equal(r.rows[0].d, "d");
          assert.equal(r.rows[0].f, "-1500");
          assert.equal(r.rows[0].b, 5);
          assert.notEqual(name(r.rows[0].port), "primary");
          // COPY TO of a query is a read.
          const copy = await psql(
            via(proxy),
            "copy (select current_setting('port')) to stdout",
          );
          assert.equal(copy.code, 0, copy.stderr);
          assert.notEqual(name(copy.stdout.trim()), "primary");
        });

        await t.step("writes, DDL, COPY FROM, locks, sequences go to the primary", async () => {
          const P = "returning current_setting('port')::int as port";
          assert.equal(await at(`insert into t (x) values (100) ${P}`), "primary");
          assert.equal(await at(`update t set x = x where id = 1 ${P}`), "primary");
          assert.equal(await at(`delete from t where x = 100 ${P}`), "primary");
          for (const lock of ["update", "no key update", "share", "key share"]) {
            assert.equal(
              await at(`${WHERE} from t where id = 1 for ${lock}`),
              "primary",
              `FOR ${lock.toUpperCase()}`,
            );
          }
          assert.equal(
            await at(`with w as (insert into t (x) values (101) ${P}) select port from w`),
            "primary",
            "data-modifying CTE",
          );
          assert.equal(
            await at(`with w as (delete from t where x = 101 returning 1) ${WHERE} from w`),
            "primary",
            "data-modifying CTE (delete)",
          );
          assert.equal(
            await at("select nextval('s'), current_setting('port')::int as port"),
            "primary",
          );
          assert.equal(
            await at("select pg_advisory_xact_lock(7), current_setting('port')::int as port"),
            "primary",
          );
          // A session advisory lock pins the primary until it is released; then reads go back to
          // the replicas.
          assert.equal(
            await at("select pg_advisory_lock(8), current_setting('port')::int as port"),
            "primary",
          );
          assert.equal(await at(WHERE), "primary", "pinned by the advisory lock");
          assert.equal(
            await at("select pg_advisory_unlock(8), current_setting('port')::int as port"),
            "primary",
          );
          assert.notEqual(await at(WHERE), "primary", "unpinned after pg_advisory_unlock");
          // DDL: would fail on a replica (25006), so success means the primary.
          await c.query("create table ddl_t (x int)");
          await c.query("alter table ddl_t add column y int");
          assert.deepEqual(
            await primary.sql(
              "select count(*) from information_schema.columns " +
                "where table_name = 'ddl_t'",
            ),
            [["2"]],
          );
          await c.query("drop table ddl_t");
          // EXPLAIN ANALYZE runs its statement: a write goes to the primary.
          await c.query("explain (analyze, costs off, timing off) insert into t (x) values (999)");
          assert.deepEqual(await primary.sql("select count(*) from t where x = 999"), [["1"]]);
          await c.query("delete from t where x = 999");
          // COPY FROM, with psql (inline data).
          const copy = await psql(via(proxy), "", {
            stdin: "copy t (x) from stdin;\n201\n202\n\\.\n",
          });
          assert.equal(copy.code, 0, copy.stderr);
          assert.deepEqual(await primary.sql("select count(*) from t where x > 200"), [["2"]]);
          await c.query("delete from t where x > 200");
          // A syntax error is sent to the primary (unknown = write); PostgreSQL's error comes back.
          const bad = await c.query("selec 1").then(() => null, (e: unknown) => e);
          assert.equal(codeOf(bad), "42601", String(bad));
          assert.notEqual(await at(WHERE), "primary", "the client still routes after an error");
        });

        await t.step("read-only transactions run on one replica throughout", async () => {
          const PID = "select current_setting('port')::int as port, pg_backend_pid() as pid, " +
            "pg_is_in_recovery() as rec, current_setting('transaction_read_only') as ro";
          const spellings: Array<{ label: string; begin: string[] }> = [
            { label: "BEGIN READ ONLY", begin: ["begin read only"] },
            { label: "START TRANSACTION READ ONLY", begin: ["start transaction read only"] },
            {
              label: "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
              begin: ["begin isolation level repeatable read, read only"],
            },
            {
              label: "BEGIN; SET TRANSACTION READ ONLY",
              begin: ["begin", "set transaction read only"],
            },
            {
              label: "BEGIN; SET TRANSACTION READ ONLY (one query)",
              begin: ["begin; set transaction read only"],
            },
          ];
          for (const { label, begin } of spellings) {
            for (const sql of begin) await c.query(sql);
            const a = (await c.query(PID)).rows[0];
            const b = (await c.query(PID)).rows[0];
            await c.query("commit");
            assert.notEqual(name(a.port), "primary", label);
            assert.equal(a.rec, true, label);
            assert.equal(a.ro, "on", label);
            assert.equal(b.pid, a.pid, `${label}: one server for the whole transaction`);
          }
        });

        await t.step("plain BEGIN (and BEGIN READ WRITE) runs on the primary", async () => {
          for (const begin of ["begin", "start transaction", "begin read write"]) {
            await c.query(begin);
            const a = (await c.query(`${WHERE}, pg_backend_pid() as pid`)).rows[0];
            const b = (await c.query(`${WHERE}, pg_backend_pid() as pid`)).rows[0];
            await c.query("commit");
            assert.equal(name(a.port), "primary", begin);
            assert.equal(b.pid, a.pid, begin);
          }
          // A transaction that ends before its first statement touches nothing; the next read
          // still goes to a replica.
          await c.query("begin");
          await c.query("rollback");
          assert.notEqual(await at(WHERE), "primary");
        });

        await t.step("a multi-statement request of reads goes to the primary", async () => {
          assert.equal(await at(`select 1; ${WHERE}`), "primary");
        });

        await t.step("extended protocol: parameters and named statements", async () => {
          assert.notEqual(await at(`${WHERE}, $1::int as v`, [1]), "primary");
          assert.equal(
            await at(
              "insert into t (x) values ($1) returning current_setting('port')::int as port",
              [
                300,
              ],
            ),
            "primary",
          );
          assert.equal(
            await at(`${WHERE} from t where id = $1 for update`, [1]),
            "primary",
          );
          // Named statements: prepared once, executed again without a Parse (Bind decides).
          const c2 = await connectPg(via(proxy));
          try {
            const seen: NodeName[] = [];
            for (const client of [c, c2, c, c2]) {
              const r = await client.query({
                name: "rd",
                text: `${WHERE}, $1::int as v`,
                values: [2],
              });
              seen.push(name(r.rows[0].port));
              const w = await client.query({
                name: "wr",
                text:
                  "update t set x = x where id = $1 returning current_setting('port')::int as port",
                values: [1],
              });
              assert.equal(name(w.rows[0].port), "primary");
            }
            assert.equal(tally(seen).primary, 0, seen.join());
            assert.ok(tally(seen).r1 > 0 && tally(seen).r2 > 0, seen.join());
          } finally {
            await c2.end();
          }
          await c.query("delete from t where x = 300");
        });

        await t.step("raw extended protocol: unnamed Parse/Bind/Execute", async () => {
          await using w = await WireClient.connect({ ...via(proxy), password: PASSWORD });
          const run = async (sql: string) => {
            await w.send(fe.parse("", sql), fe.bind("", ""), fe.execute(""), fe.sync());
            const msgs = await w.untilReady();
            const err = msgs.find((m) => m.type === "E");
            assert.equal(err, undefined, err && JSON.stringify(errorFields(err.body)));
            return name(dataRow(msgs.find((m) => m.type === "D")!.body)[0]);
          };
          assert.notEqual(await run(WHERE), "primary");
          assert.equal(
            await run("insert into t (x) values (400) returning current_setting('port')"),
            "primary",
          );
          assert.notEqual(await run(WHERE), "primary");
          await c.query("delete from t where x = 400");
        });

        await t.step(
          "pipelined requests: a write behind a read still reaches the primary",
          async () => {
            const INSERT = "insert into t (x) values (401) returning current_setting('port')";
            // Every case runs; the failures are reported together.
            const failures: string[] = [];
            const check = (msgs: { type: string; body: Uint8Array }[], label: string) => {
              const err = msgs.find((m) => m.type === "E");
              if (err) {
                const f = errorFields(err.body);
                failures.push(`${label}: ${f.C} ${f.M}`);
                return;
              }
              const ports = msgs.filter((m) => m.type === "D").map((m) => name(dataRow(m.body)[0]));
              if (ports.length !== 2 || ports[1] !== "primary") {
                failures.push(`${label}: the INSERT ran on ${ports[1]}`);
              }
            };
            {
              // Two extended-protocol requests (each ending with Sync) in one write.
              await using w = await WireClient.connect({ ...via(proxy), password: PASSWORD });
              await w.send(
                fe.parse("", WHERE),
                fe.bind("", ""),
                fe.execute(""),
                fe.sync(),
                fe.parse("", INSERT),
                fe.bind("", ""),
                fe.execute(""),
                fe.sync(),
              );
              check(await w.untilReady(2), "extended");
            }
            {
              // Two simple queries in one write.
              await using w = await WireClient.connect({ ...via(proxy), password: PASSWORD });
              await w.send(fe.query(WHERE), fe.query(INSERT));
              check(await w.untilReady(2), "simple");
            }
            {
              // postgres.js pipelines queries issued together on one connection.
              const sql = postgres(proxy.url({ user: USER, password: PASSWORD, database: DB }), {
                max: 1,
                onnotice: () => {},
              });
              try {
                await sql`select 1`;
                const [, write] = await Promise.all([
                  sql.unsafe(WHERE),
                  sql.unsafe(
                    "insert into t (x) values (402) returning current_setting('port')::int as port",
                  ),
                ]);
                if (name(write[0].port) !== "primary") {
                  failures.push(`postgres.js: the INSERT ran on ${name(write[0].port)}`);
                }
              } catch (e) {
                failures.push(`postgres.js: ${codeOf(e)} ${(e as Error).message}`);
              } finally {
                await sql.end();
              }
            }
            assert.deepEqual(failures, []);
            await c.query("delete from t where x > 400");
          },
        );
      } finally {
        await c.end();
      }
    });
  });

  await t.step("aggressive: transactions and multi-statement requests by content", async () => {
    await using proxy = await proxyFor(nodes, {
      read_write_split: "exclude_primary",
      read_write_strategy: "aggressive",
    });
    await dumpLogsOnFailure(proxy, async () => {
      const c = await connectPg(via(proxy));
      try {
        const Q = `${WHERE}, pg_backend_pid() as pid`;
        await c.query("begin");
        const a = (await c.query(Q)).rows[0];
        const b = (await c.query(Q)).rows[0];
        await c.query("commit");
        assert.notEqual(name(a.port), "primary", "BEGIN; SELECT");
        assert.equal(b.pid, a.pid);

        await c.query("begin");
        const ins = await c.query(
          "insert into t (x) values (500) returning current_setting('port')::int as port, pg_backend_pid() as pid",
        );
        const after = (await c.query(Q)).rows[0];
        await c.query("rollback");
        assert.equal(name(ins.rows[0].port), "primary", "BEGIN; INSERT");
        assert.equal(after.pid, ins.rows[0].pid, "the rest of the transaction stays there");

        const multi = lastRows(await c.query(`select 1; ${WHERE}`));
        assert.notEqual(name(multi[0].port), "primary", "multi-statement reads");
        const multiWrite = lastRows(
          await c.query(
            `${WHERE}; insert into t (x) values (501) returning current_setting('port')::int as port`,
          ),
        );
        assert.equal(name(multiWrite[0].port), "primary", "multi-statement with a write");
        await c.query("delete from t where x = 501");
        // BEGIN and a write in one request.
        const bw = lastRows(
          await c.query(
            "begin; update t set x = x where id = 1 returning current_setting('port')::int as port",
          ),
        );
        await c.query("commit");
        assert.equal(name(bw[0].port), "primary");
      } finally {
        await c.end();
      }
    });
  });

  await t.step(
    "pgbench: -S only on replicas (all protocols), TPC-B only on the primary",
    async () => {
      const init = await pgbench(
        { host: primary.host, port: primary.port, user: USER, database: "postgres" },
        ["-i", "-s", "1", "-q"],
      );
      assert.equal(init.code, 0, init.stderr);
      await replicated();
      const all = [primary, r1, r2] as const;
      /** Backends of a stopped proxy are gone, so their statistics are flushed. */
      const settle = async () => {
        assert.ok(
          await waitUntil(
            async () => (await Promise.all(all.map((n) => otherBackends(n)))).every((n) => n === 0),
            10_000,
            200,
          ),
          "server connections of the stopped proxy linger",
        );
      };
      const snapshot = () => Promise.all(all.map(commits));

      await settle();
      let before = await snapshot();
      let proxy = await proxyFor(nodes, { read_write_split: "exclude_primary" });
      let processed = 0;
      try {
        await dumpLogsOnFailure(proxy, async () => {
          for (const mode of ["simple", "extended", "prepared"]) {
            const run = await pgbench(
              via(proxy),
              ["-n", "-S", "-M", mode, "-c", "4", "-t", "250"],
              {
                timeoutMs: 60_000,
              },
            );
            assert.equal(run.code, 0, `pgbench -S -M ${mode}:\n${run.stdout}\n${run.stderr}`);
            assert.equal(run.processed, 1000, run.stdout);
            processed += run.processed!;
          }
        });
      } finally {
        await proxy.stop();
      }
      await settle();
      let after = await snapshot();
      let delta = after.map((a, i) => a - before[i]);
      console.log(`pgbench -S: xact_commit deltas primary/r1/r2 = ${delta.join("/")}`);
      // The primary sees only the harness's own queries and the proxy's one LSN check.
      assert.ok(delta[0] <= 20, `the primary ran ${delta[0]} transactions during pgbench -S`);
      assert.ok(delta[1] + delta[2] >= processed, delta.join());
      assert.ok(delta[1] >= processed / 4 && delta[2] >= processed / 4, delta.join());

      before = after;
      proxy = await proxyFor(nodes, { read_write_split: "exclude_primary" });
      processed = 0;
      try {
        await dumpLogsOnFailure(proxy, async () => {
          for (const mode of ["simple", "prepared"]) {
            const run = await pgbench(via(proxy), ["-n", "-M", mode, "-c", "2", "-t", "150"], {
              timeoutMs: 60_000,
            });
            assert.equal(run.code, 0, `pgbench -M ${mode}:\n${run.stdout}\n${run.stderr}`);
            assert.equal(run.processed, 300, run.stdout);
            processed += run.processed!;
          }
        });
      } finally {
        await proxy.stop();
      }
      await settle();
      after = await snapshot();
      delta = after.map((a, i) => a - before[i]);
      console.log(`pgbench TPC-B: xact_commit deltas primary/r1/r2 = ${delta.join("/")}`);
      assert.ok(delta[0] >= processed, delta.join());
      // pgbench's few start-up reads (the scale, table info) may go to replicas; no transaction.
      assert.ok(delta[1] + delta[2] <= 60, `replicas ran ${delta[1] + delta[2]} transactions`);
      assert.deepEqual(
        await primary.sql("select count(*) from pgbench_history"),
        [[String(processed)]],
      );
    },
  );

  await t.step("overrides: comments, SET pgdog.role, startup parameter", async (t) => {
    await using proxy = await proxyFor(nodes, { read_write_split: "exclude_primary" });
    await dumpLogsOnFailure(proxy, async () => {
      const c = await connectPg(via(proxy));
      try {
        const at = async (sql: string): Promise<NodeName> =>
          name(lastRows(await c.query(sql))[0].port);
        const MULTI = `select 1; ${WHERE}`;

        await t.step("pgdog_role comments, leading and trailing", async () => {
          assert.equal(await at(`/* pgdog_role: primary */ ${WHERE}`), "primary");
          assert.equal(await at(`${WHERE} /* pgdog_role: primary */`), "primary");
          assert.equal(await at(`${WHERE} -- pgdog_role: primary`), "primary");
          assert.equal(await at(`/*pgdog_role:primary*/${WHERE}`), "primary");
          // Without a comment a multi-statement request goes to the primary; with one, a replica.
          assert.equal(await at(MULTI), "primary");
          assert.notEqual(await at(`/* pgdog_role: replica */ ${MULTI}`), "primary");
          assert.notEqual(await at(`${MULTI} /* pgdog_role: replica */`), "primary");
          // Comments work in the extended protocol too.
          const r = await c.query({
            text: `/* pgdog_role: primary */ ${WHERE}, $1::int`,
            values: [1],
          });
          assert.equal(name(r.rows[0].port), "primary");
          // And apply to that query only.
          assert.notEqual(await at(WHERE), "primary");
        });

        await t.step("SET pgdog.role / RESET pgdog.role", async () => {
          await c.query("set pgdog.role to primary");
          const other = await connectPg(via(proxy));
          try {
            assert.deepEqual(tally(await sequence(c, name, 4)), { primary: 4, r1: 0, r2: 0 });
            // Another client is not affected.
            assert.equal(tally(await sequence(other, name, 4)).primary, 0);
          } finally {
            await other.end();
          }
          // A comment still wins over SET.
          assert.notEqual(await at(`/* pgdog_role: replica */ ${WHERE}`), "primary");
          await c.query("reset pgdog.role");
          assert.equal(tally(await sequence(c, name, 4)).primary, 0);
          await c.query("set pgdog.role = 'replica'");
          assert.notEqual(await at(MULTI), "primary");
          await c.query("reset pgdog.role");
          assert.equal(await at(MULTI), "primary");
        });

        await t.step("SET LOCAL pgdog.role lasts for its transaction only", async () => {
          const Q = `${WHERE}, pg_backend_pid() as pid`;
          await c.query("begin");
          await c.query("set local pgdog.role to replica");
          const a = (await c.query(`select 1; ${Q}`)).at(-1)!.rows[0];
          const b = (await c.query(Q)).rows[0];
          await c.query("commit");
          assert.notEqual(name(a.port), "primary", "BEGIN; SET LOCAL pgdog.role TO replica");
          assert.equal(b.pid, a.pid);
          // Gone after COMMIT: a plain BEGIN goes to the primary again.
          await c.query("begin");
          assert.equal(await at(WHERE), "primary");
          await c.query("commit");

          await c.query("begin");
          await c.query("set local pgdog.role to primary");
          assert.equal(await at(WHERE), "primary");
          await c.query("rollback");
          assert.notEqual(await at(WHERE), "primary", "gone after ROLLBACK");

          // Outside a transaction block SET LOCAL does nothing (PostgreSQL: WARNING 25P01).
          await c.query("set local pgdog.role to primary");
          assert.notEqual(await at(WHERE), "primary", "SET LOCAL outside a transaction");
        });

        await t.step("startup parameter pgdog.role (options=-c and on its own)", async () => {
          const viaOptions = await psql(via(proxy), `${WHERE}; ${WHERE}; ${WHERE}`, {
            env: { PGOPTIONS: "-c pgdog.role=primary" },
          });
          assert.equal(viaOptions.code, 0, viaOptions.stderr);
          const ports = viaOptions.stdout.trim().split("\n").map(name);
          assert.deepEqual(ports, ["primary", "primary", "primary"]);
          await using w = await WireClient.connect({
            ...via(proxy),
            password: PASSWORD,
            params: { "pgdog.role": "replica" },
          });
          // A multi-statement request would go to the primary without the parameter.
          const rows = await w.rows(`select 1; ${WHERE}`);
          assert.notEqual(name(rows.at(-1)![0]), "primary");
          // SET overrides the startup parameter; RESET returns to it.
          await w.rows("set pgdog.role to primary");
          assert.equal(name((await w.rows(WHERE))[0][0]), "primary");
          await w.rows("reset pgdog.role");
          assert.notEqual(name((await w.rows(`select 1; ${WHERE}`)).at(-1)![0]), "primary");
        });
      } finally {
        await c.end();
      }
    });
  });

  await t.step("read_write_split = include_primary: reads on all three, in turn", async () => {
    await using proxy = await proxyFor(nodes, {
      read_write_split: "include_primary",
      load_balancing_strategy: "round_robin",
    });
    await dumpLogsOnFailure(proxy, async () => {
      const c = await connectPg(via(proxy));
      try {
        const seq = await sequence(c, name, 30);
        assert.deepEqual(tally(seq), { primary: 10, r1: 10, r2: 10 }, seq.join());
        for (let i = 3; i < seq.length; i++) assert.equal(seq[i], seq[i - 3], seq.join());
      } finally {
        await c.end();
      }
    });
  });

  await t.step(
    "load_balancing_strategy = random: spread within bounds, not a rotation",
    async () => {
      await using proxy = await proxyFor(nodes, {
        read_write_split: "exclude_primary",
        load_balancing_strategy: "random",
      });
      await dumpLogsOnFailure(proxy, async () => {
        const c = await connectPg(via(proxy));
        try {
          const seq = await sequence(c, name, 300);
          const n = tally(seq);
          assert.equal(n.primary, 0);
          assert.ok(n.r1 >= 75 && n.r1 <= 225, JSON.stringify(n));
          // Strict alternation over 300 random picks has probability 2^-299.
          let repeats = 0;
          for (let i = 1; i < seq.length; i++) if (seq[i] === seq[i - 1]) repeats++;
          assert.ok(repeats >= 50, `only ${repeats} repeats: not random`);
        } finally {
          await c.end();
        }
      });
    },
  );

  await t.step("load_balancing_strategy = least_active_connections", async () => {
    await using proxy = await proxyFor(nodes, {
      read_write_split: "exclude_primary",
      load_balancing_strategy: "least_active_connections",
    });
    await dumpLogsOnFailure(proxy, async () => {
      const a = await connectPg(via(proxy));
      const b = await connectPg(via(proxy));
      const c = await connectPg(via(proxy));
      /** Starts a long read; resolves with the replica it runs on once it is running there. */
      const hold = async (client: pg.Client, marker: string, seconds: number) => {
        const done = client.query(`select pg_sleep(${seconds}), '${marker}' as m`).then(
          () => null,
          (e: unknown) => e,
        );
        let on: "r1" | "r2" | null = null;
        const deadline = Date.now() + 5000;
        while (on === null && Date.now() < deadline) {
          for (const r of ["r1", "r2"] as const) {
            const n = await otherBackends(
              nodes[r],
              `query like '%${marker}%' and state = 'active'`,
            );
            if (n > 0) on = r;
          }
          if (on === null) await sleep(25);
        }
        const found = on as "r1" | "r2" | null;
        assert.ok(found, `the long read ${marker} runs on no replica`);
        return { on: found, done };
      };
      const other = (r: "r1" | "r2") => (r === "r1" ? "r2" : "r1");
      try {
        // One replica busy: every read goes to the other.
        const first = await hold(a, "hold_a", 1.5);
        assert.deepEqual(await sequence(c, name, 10), Array(10).fill(other(first.on)));
        // The next long read goes to the idle replica too.
        const second = await hold(b, "hold_b", 30);
        assert.equal(second.on, other(first.on));
        // Once the first one ends, reads go where it was.
        assert.equal(await first.done, null);
        assert.deepEqual(await sequence(c, name, 10), Array(10).fill(first.on));
        await nodes[second.on].sql(
          "select pg_cancel_backend(pid) from pg_stat_activity where query like '%hold_b%' " +
            "and pid <> pg_backend_pid()",
        );
        assert.equal(codeOf(await second.done), "57014");
      } finally {
        await Promise.all([a.end(), b.end(), c.end()]);
      }
    });
  });

  await t.step("load_balancing_strategy = weighted_round_robin follows lb_weight", async () => {
    await using proxy = await proxyFor(
      nodes,
      { read_write_split: "exclude_primary", load_balancing_strategy: "weighted_round_robin" },
      { weights: { r1: 3, r2: 1 } },
    );
    await dumpLogsOnFailure(proxy, async () => {
      const c = await connectPg(via(proxy));
      try {
        const seq = await sequence(c, name, 40);
        assert.deepEqual(tally(seq), { primary: 0, r1: 30, r2: 10 }, seq.join());
        // Smooth: never two r2 in a row.
        for (let i = 1; i < seq.length; i++) {
          assert.ok(!(seq[i] === "r2" && seq[i - 1] === "r2"), seq.join());
        }
      } finally {
        await c.end();
      }
    });
  });

  await t.step("query_parser: loaded only when routing needs it", async (t) => {
    /** Whether a BEGIN sent alone reached a server (an idle-in-transaction backend exists). */
    const beginReachesServer = async (proxyTarget: PgTarget, node: PgCluster) => {
      const c = await connectPg(proxyTarget);
      try {
        await c.query("begin");
        // Give a forwarded BEGIN time to be seen.
        const seen = await waitUntil(
          async () => (await otherBackends(node, "state = 'idle in transaction'")) > 0,
          1000,
        );
        await c.query("rollback");
        return seen;
      } finally {
        await c.end();
      }
    };

    await t.step("single host, query_parser = auto: no routing, everything works", async () => {
      await using proxy = await startProxy({
        config: {
          general: {},
          databases: [{
            name: DB,
            host: primary.host,
            port: primary.port,
            database_name: "postgres",
          }],
        },
        users: { users: [{ name: USER, password: PASSWORD, database: DB }] },
      });
      await dumpLogsOnFailure(proxy, async () => {
        assert.equal(await beginReachesServer(via(proxy), primary), true);
        const c = await connectPg(via(proxy));
        try {
          assert.equal(tally(await sequence(c, name, 5)).primary, 5);
          const r = lastRows(await c.query(`select 1; ${WHERE}`));
          assert.equal(name(r[0].port), "primary");
          const bad = await c.query("selec 1").then(() => null, (e: unknown) => e);
          assert.equal(codeOf(bad), "42601");
          await c.query("begin read only");
          assert.equal(name((await c.query(WHERE)).rows[0].port), "primary");
          await c.query("commit");
        } finally {
          await c.end();
        }
      });
    });

    await t.step("single host, query_parser = on: BEGIN is held back", async () => {
      await using proxy = await startProxy({
        config: {
          general: { query_parser: "on" },
          databases: [{
            name: DB,
            host: primary.host,
            port: primary.port,
            database_name: "postgres",
          }],
        },
        users: { users: [{ name: USER, password: PASSWORD, database: DB }] },
      });
      await dumpLogsOnFailure(proxy, async () => {
        assert.equal(await beginReachesServer(via(proxy), primary), false);
        const c = await connectPg(via(proxy));
        try {
          assert.equal(tally(await sequence(c, name, 5)).primary, 5);
        } finally {
          await c.end();
        }
      });
    });

    await t.step("replicas, query_parser = off: everything goes to the primary", async () => {
      await using proxy = await proxyFor(nodes, {
        query_parser: "off",
        read_write_split: "exclude_primary",
      });
      await dumpLogsOnFailure(proxy, async () => {
        assert.equal(await beginReachesServer(via(proxy), primary), true);
        const c = await connectPg(via(proxy));
        try {
          assert.deepEqual(tally(await sequence(c, name, 10)), { primary: 10, r1: 0, r2: 0 });
          await c.query("begin read only");
          assert.equal(name((await c.query(WHERE)).rows[0].port), "primary");
          await c.query("commit");
          // The override still works without the parser.
          await c.query("set pgdog.role to replica");
          assert.notEqual(name((await c.query(WHERE)).rows[0].port), "primary");
        } finally {
          await c.end();
        }
      });
    });
  });

  await t.step(
    "read_write_split = include_primary_if_replica_banned: the primary only after a ban",
    async () => {
      await using proxy = await proxyFor(nodes, {
        read_write_split: "include_primary_if_replica_banned",
        load_balancing_strategy: "round_robin",
        ban_timeout: 1000,
        idle_healthcheck_interval: 200,
        idle_healthcheck_delay: 0,
        healthcheck_timeout: 1000,
        connect_timeout: 1000,
      });
      await dumpLogsOnFailure(proxy, async () => {
        const c = await connectPg(via(proxy));
        try {
          assert.deepEqual(tally(await sequence(c, name, 10)), { primary: 0, r1: 5, r2: 5 });
          const mark = proxy.logOffset();
          await r2.stop();
          try {
            await proxy.waitForLog(new RegExp(`:${r2.port} banned`), {
              since: mark,
              timeoutMs: 5000,
            });
            const seq = await sequence(c, name, 10);
            assert.deepEqual(tally(seq), { primary: 5, r1: 5, r2: 0 }, seq.join());
          } finally {
            await r2.start();
          }
          // Unbanned after ban_timeout once it answers: the primary is out again.
          await proxy.waitForLog(new RegExp(`:${r2.port} unbanned`), {
            since: mark,
            timeoutMs: 10_000,
          });
          assert.deepEqual(tally(await sequence(c, name, 10)), { primary: 0, r1: 5, r2: 5 });
        } finally {
          await c.end();
        }
      });
    },
  );

  await t.step(
    "read_write_split = prefer_primary: reads on the primary; replicas while it is banned",
    async () => {
      await using proxy = await proxyFor(nodes, {
        read_write_split: "prefer_primary",
        load_balancing_strategy: "round_robin",
        ban_timeout: 1000,
        idle_healthcheck_interval: 200,
        idle_healthcheck_delay: 0,
        healthcheck_timeout: 1000,
        connect_timeout: 1000,
      });
      await dumpLogsOnFailure(proxy, async () => {
        const c = await connectPg(via(proxy));
        try {
          assert.deepEqual(tally(await sequence(c, name, 6)), { primary: 6, r1: 0, r2: 0 });
          let fresh: Awaited<ReturnType<typeof psql>> | null = null;
          const mark = proxy.logOffset();
          await primary.stop();
          try {
            await proxy.waitForLog(new RegExp(`:${primary.port} banned`), {
              since: mark,
              timeoutMs: 5000,
            });
            const seq = await sequence(c, name, 6);
            assert.deepEqual(tally(seq), { primary: 0, r1: 3, r2: 3 }, seq.join());
            // A client with startup parameters never seen before logs in and reads too (checked
            // at the end, so that the rest is tested either way).
            fresh = await psql(via(proxy), WHERE, {
              env: { PGAPPNAME: "while-the-primary-is-down" },
            });
          } finally {
            await primary.start();
          }
          await proxy.waitForLog(new RegExp(`:${primary.port} unbanned`), {
            since: mark,
            timeoutMs: 10_000,
          });
          assert.deepEqual(tally(await sequence(c, name, 6)), { primary: 6, r1: 0, r2: 0 });
          assert.equal(fresh?.code, 0, `a new client cannot read: ${fresh?.stderr}`);
          assert.notEqual(name(fresh!.stdout.trim()), "primary");
        } finally {
          await c.end();
        }
      });
    },
  );
});
