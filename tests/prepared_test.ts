/**
 * Protocol-level prepared statements in transaction mode (`prepared_statements = "extended"`):
 * pgbench -M prepared/extended, npm:pg named queries and postgres.js (`prepare: true`) sharing a
 * few server connections; the per-server `prepared_statements_limit`; statements a schema change
 * invalidates; Close, duplicate names, unknown names and DEALLOCATE answered as PostgreSQL would;
 * SQL PREPARE refused in transaction mode and working in session mode; pipelines; and an error in
 * a Parse pgdog injects itself reaching the client exactly once.
 *
 * Where it is cheap, the same workload also runs through a second proxy with
 * `prepared_statements = "disabled"` (everything passed through unchanged) and fails there, which
 * shows the feature is what makes it work. Raw-protocol exchanges are also run straight against
 * PostgreSQL and must produce the same messages.
 *
 * One cluster, two proxies. Users of the main proxy (transaction mode unless said otherwise):
 * `bench` (pool_size 4), `named`, `pjs`, `many`, `wire` (pool_size 2), `one`, `pipe1`, `inj_a`,
 * `inj_b` (pool_size 1) and `sess` (session mode); its `prepared_statements_limit` is 100. The
 * disabled proxy has its own users (`off_*`), so the server connections of the two never mix.
 *
 * `PREP_ONLY=<regex>` runs only the steps whose names match (the others are ignored).
 */

import assert from "node:assert/strict";
import type pg from "pg";
import type postgres from "postgres";
import {
  connectPg,
  connectPostgresJs,
  dumpLogsOnFailure,
  pgbench,
  type PgCluster,
  type PgTarget,
  type ProxyProcess,
  psql,
  sleep,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";
import {
  type BackendMessage,
  errorFields,
  fe,
  summary,
  WireClient,
  type WireTarget,
} from "./wire.ts";

const PASSWORD = "prepared-test-pw";
const LIMIT = 100;

/** Users of the main proxy: name -> pool settings. */
const MAIN_USERS: Record<string, { pool_size: number; pooler_mode?: string }> = {
  bench: { pool_size: 4 },
  named: { pool_size: 2 },
  pjs: { pool_size: 2 },
  many: { pool_size: 2 },
  wire: { pool_size: 2 },
  one: { pool_size: 1 },
  pipe1: { pool_size: 1 },
  inj_a: { pool_size: 1 },
  inj_b: { pool_size: 1 },
  sess: { pool_size: 2, pooler_mode: "session" },
};

/** Users of the proxy with prepared_statements = "disabled". */
const OFF_USERS: Record<string, { pool_size: number }> = {
  off_bench: { pool_size: 2 },
  off_named: { pool_size: 2 },
  off_one: { pool_size: 1 },
};

const decoder = new TextDecoder();

interface Env {
  pg: PgCluster;
  proxy: ProxyProcess;
  off: ProxyProcess;
}

function direct(env: Env, user: string): PgTarget {
  return { host: env.pg.host, port: env.pg.port, user, password: PASSWORD, database: "app" };
}

function via(proxy: ProxyProcess, user: string): PgTarget {
  return proxy.target({ user, password: PASSWORD, database: "app" });
}

async function withPg<T>(target: PgTarget, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = await connectPg(target);
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

async function withWire<T>(target: WireTarget, fn: (c: WireClient) => Promise<T>): Promise<T> {
  const c = await WireClient.connect(target);
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

/** The SQLSTATE of a driver error (or undefined). */
function codeOf(e: unknown): string | undefined {
  return (e as { code?: string } | null)?.code;
}

/** Asserts that `p` rejects with SQLSTATE `code` (and a message matching `message`). */
async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.equal(codeOf(e), code, `expected ${code}, got ${codeOf(e)}: ${String(e)}`);
    if (message) assert.match((e as Error).message, message);
    return true;
  });
}

/** RowDescription as `name:typeoid` per column. */
function rowDescription(body: Uint8Array): string[] {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const n = view.getInt16(0);
  const out: string[] = [];
  let o = 2;
  for (let i = 0; i < n; i++) {
    const end = body.indexOf(0, o);
    const name = decoder.decode(body.subarray(o, end));
    o = end + 1;
    const type = view.getInt32(o + 6);
    o += 18;
    out.push(`${name}:${type}`);
  }
  return out;
}

/** ParameterDescription as type oids. */
function parameterDescription(body: Uint8Array): number[] {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  return Array.from({ length: view.getInt16(0) }, (_, i) => view.getInt32(2 + 4 * i));
}

/**
 * A readable summary of every message, with what matters for comparisons: errors with their
 * SQLSTATE and message, RowDescription with its columns, ParameterDescription with its types.
 */
function detail(msgs: BackendMessage[]): string[] {
  const plain = summary(msgs);
  return msgs.map((m, i) => {
    switch (m.type) {
      case "E": {
        const f = errorFields(m.body);
        return `E ${f.C} ${f.M}`;
      }
      case "T":
        return `T ${rowDescription(m.body).join(",")}`;
      case "t":
        return `t ${parameterDescription(m.body).join(",")}`;
      default:
        return plain[i];
    }
  });
}

/** Sends `msgs` in one write and reads the answers up to the `ready`-th ReadyForQuery. */
async function roundTrip(c: WireClient, msgs: Uint8Array[], ready = 1): Promise<BackendMessage[]> {
  await c.send(...msgs);
  return await c.untilReady(ready);
}

/**
 * Runs the same exchange straight against PostgreSQL and through the proxy (user `user`), asserts
 * the messages agree (see {@linkcode detail}) and returns them.
 */
async function sameBothWays(
  env: Env,
  user: string,
  exchange: (c: WireClient) => Promise<BackendMessage[]>,
): Promise<string[]> {
  const expected = detail(await withWire(direct(env, user), exchange));
  const actual = detail(await withWire(via(env.proxy, user), exchange));
  assert.deepEqual(actual, expected, "messages through the proxy differ from PostgreSQL's");
  return actual;
}

/** Samples the server connections of `user` (pg_stat_activity) every 100 ms until stopped. */
async function sampleServers(env: Env, user: string) {
  const c = await connectPg({
    host: env.pg.host,
    port: env.pg.port,
    user: "postgres",
    database: "app",
  });
  let running = true;
  let max = 0;
  let samples = 0;
  const loop = (async () => {
    while (running) {
      const r = await c.query(
        "select count(*)::int as n from pg_stat_activity " +
          "where usename = $1 and backend_type = 'client backend'",
        [user],
      );
      max = Math.max(max, r.rows[0].n);
      samples++;
      await sleep(100);
    }
  })();
  return {
    async stop(): Promise<{ max: number; samples: number }> {
      running = false;
      try {
        await loop;
      } finally {
        await c.end();
      }
      return { max, samples };
    },
  };
}

/** Lines of the PostgreSQL log written by `user` since `offset` that report an ERROR. */
async function logErrors(env: Env, user: string, offset: number): Promise<string[]> {
  const log = (await env.pg.log()).slice(offset);
  return log.split("\n").filter((l) => l.includes(` ${user}@app ERROR:`));
}

/** The postgres.js workload: concurrent prepared queries, and transactions that reuse them. */
async function postgresJsWorkload(sql: postgres.Sql, tag: string): Promise<Set<number>> {
  const backends = new Set<number>();
  for (let round = 0; round < 3; round++) {
    const results = await Promise.all(
      Array.from(
        { length: 60 },
        (_, i) =>
          i % 2 === 0
            ? sql`select ${i}::int * 2 as d, ${`s${i}`}::text as s, pg_backend_pid() as pid`
            : sql`select ${i}::bigint + 1 as n, pg_backend_pid() as pid`,
      ),
    );
    results.forEach(([row], i) => {
      if (i % 2 === 0) assert.deepEqual({ d: row.d, s: row.s }, { d: i * 2, s: `s${i}` });
      else assert.equal(row.n, String(i + 1));
      backends.add(row.pid);
    });
  }
  // Transactions reuse statements prepared outside them (and on other connections).
  await Promise.all(Array.from({ length: 10 }, (_, k) =>
    sql.begin(async (tx) => {
      const pids = new Set<number>();
      for (let i = 0; i < 5; i++) {
        const id = k * 10 + i;
        await tx`insert into pj_t (id, tag, v) values (${id}, ${tag}, ${`v${id}`})`;
        const [row] = await tx`select ${id}::int * 2 as d, ${`s${id}`}::text as s,
          pg_backend_pid() as pid`;
        assert.deepEqual({ d: row.d, s: row.s }, { d: id * 2, s: `s${id}` });
        pids.add(row.pid);
        const [n] = await tx`select ${id}::bigint + 1 as n, pg_backend_pid() as pid`;
        assert.equal(n.n, String(id + 1));
        pids.add(n.pid);
      }
      assert.equal(pids.size, 1, "a transaction moved between servers");
    })));
  await assert.rejects(
    sql.begin(async (tx) => {
      await tx`insert into pj_t (id, tag, v) values (${1000}, ${tag}, ${"rolled back"})`;
      await tx`select ${1}::int / ${0}::int as boom`;
    }),
    (e: unknown) => codeOf(e) === "22012",
  );
  const [counts] = await sql`select count(*)::int as n, count(*) filter (where id = 1000)::int as r
    from pj_t where tag = ${tag}`;
  assert.deepEqual({ n: counts.n, r: counts.r }, { n: 50, r: 0 });
  return backends;
}

Deno.test("prepared statements in transaction mode", async (t) => {
  const roles = [...new Set([...Object.keys(MAIN_USERS), ...Object.keys(OFF_USERS)])];
  await using pgc = await startPostgres({
    roles: roles.map((name) => ({ name, password: PASSWORD, auth: "scram" as const })),
    databases: ["app"],
  });
  await pgc.sql(
    [
      "create table items (id int primary key, v text)",
      "insert into items select i, 'item ' || i from generate_series(1, 10) i",
      "create table pj_t (id int, tag text, v text)",
      "create table w_t (v text)",
      "grant all on all tables in schema public to public",
    ].join(";"),
    { database: "app" },
  );
  const usersOf = (users: Record<string, object>) => ({
    users: Object.entries(users).map(([name, settings]) => ({
      name,
      password: PASSWORD,
      database: "app",
      ...settings,
    })),
  });
  await using proxy = await startProxy({
    config: {
      general: { checkout_timeout: 20_000, prepared_statements_limit: LIMIT },
      databases: [{ name: "app", host: pgc.host, port: pgc.port }],
    },
    users: usersOf(MAIN_USERS),
  });
  await using off = await startProxy({
    config: {
      general: { checkout_timeout: 20_000, prepared_statements: "disabled" },
      databases: [{ name: "app", host: pgc.host, port: pgc.port }],
    },
    users: usersOf(OFF_USERS),
  });
  const env: Env = { pg: pgc, proxy, off };
  const only = Deno.env.get("PREP_ONLY");
  const step = (name: string, fn: () => Promise<void>) =>
    t.step({
      name,
      ignore: only !== undefined && !new RegExp(only).test(name),
      fn: () =>
        dumpLogsOnFailure(
          { logs: () => `${proxy.logs()}----- disabled proxy -----\n${off.logs()}` },
          fn,
        ),
    });

  // -------------------------------------------------------------------------------------------
  await step("pgbench -M prepared and -M extended, 32 clients over 4 servers", async () => {
    const init = await pgbench(direct(env, "bench"), ["-i", "-s", "1", "-q"]);
    assert.equal(init.code, 0, init.stderr);
    await pgc.sql("grant all on all tables in schema public to public", { database: "app" });
    const sampler = await sampleServers(env, "bench");
    let sampled: { max: number; samples: number };
    try {
      for (const [mode, seconds] of [["prepared", "10"], ["extended", "10"]]) {
        const r = await pgbench(
          via(proxy, "bench"),
          ["-n", "-M", mode, "-c", "32", "-j", "2", "-T", seconds],
          { timeoutMs: 120_000 },
        );
        assert.equal(r.code, 0, `${mode}: ${r.stderr}\n${r.stdout}`);
        assert.equal(r.failed, 0, `${mode}: ${r.stdout}`);
        assert.ok((r.processed ?? 0) > 0 && (r.tps ?? 0) > 0, `${mode}: ${r.stdout}`);
      }
    } finally {
      sampled = await sampler.stop();
    }
    assert.ok(sampled.samples >= 20, `only ${sampled.samples} samples`);
    assert.ok(sampled.max >= 1 && sampled.max <= 4, `bench had ${sampled.max} server connections`);

    // The servers hold pgdog's names only (pgbench names its statements P_0, P_1, ...).
    await withPg(via(proxy, "bench"), async (c) => {
      const r = await c.query("select name, statement from pg_prepared_statements");
      const names: string[] = r.rows.map((row: { name: string }) => row.name);
      assert.ok(
        r.rows.some((row: { statement: string }) => /pgbench_accounts/.test(row.statement)),
        `no pgbench statement on the server: ${JSON.stringify(r.rows)}`,
      );
      assert.deepEqual(names.filter((n) => !n.startsWith("__pgdog_")), []);
    });

    // TPC-B bookkeeping adds up: no statement ran twice or in another client's transaction.
    const [[accounts, branches, tellers, history]] = await pgc.sql(
      "select (select sum(abalance) from pgbench_accounts), (select sum(bbalance) from pgbench_branches), " +
        "(select sum(tbalance) from pgbench_tellers), (select sum(delta) from pgbench_history)",
      { database: "app" },
    );
    assert.equal(accounts, history);
    assert.equal(branches, history);
    assert.equal(tellers, history);

    // Without the feature, pgbench's per-connection statement names collide on shared servers.
    const r = await pgbench(
      via(off, "off_bench"),
      ["-n", "-M", "prepared", "-c", "8", "-j", "2", "-T", "3"],
      { timeoutMs: 60_000 },
    );
    assert.ok(r.code !== 0 || (r.failed ?? 0) > 0, `disabled: pgbench succeeded:\n${r.stdout}`);
    assert.match(
      r.stderr + r.stdout,
      /prepared statement "[^"]+" (does not exist|already exists)/,
    );
  });

  // -------------------------------------------------------------------------------------------
  await step("npm:pg named queries: 20 clients over 2 servers", async () => {
    /** Each client: the shared "item" statement and "mine", whose text depends on the client. */
    const work = async (target: PgTarget, c: number, iterations: number, errors: unknown[]) =>
      await withPg(target, async (client) => {
        const pids = new Set<number>();
        for (let i = 0; i < iterations; i++) {
          try {
            const id = (i + c) % 10 + 1;
            const r = await client.query({
              name: "item",
              text:
                "select id, v, $1::int * 2 as d, $2::text as t, pg_backend_pid() as pid from items where id = $3",
              values: [i, `c${c}-${i}`, id],
            });
            assert.equal(r.rows.length, 1);
            const { pid, ...row } = r.rows[0];
            pids.add(pid);
            assert.deepEqual(row, { id, v: `item ${id}`, d: i * 2, t: `c${c}-${i}` });
            assert.deepEqual(
              r.fields.map((f: pg.FieldDef) => `${f.name}:${f.dataTypeID}`),
              ["id:23", "v:25", "d:23", "t:25", "pid:23"],
            );
            const m = await client.query({
              name: "mine",
              text: `select $1::bigint + ${c % 5} as n, 'client ${c % 5}'::text as who`,
              values: [i],
            });
            assert.deepEqual(m.rows, [{ n: String(i + (c % 5)), who: `client ${c % 5}` }]);
            assert.deepEqual(
              m.fields.map((f: pg.FieldDef) => `${f.name}:${f.dataTypeID}`),
              ["n:20", "who:25"],
            );
          } catch (e) {
            errors.push(e);
          }
        }
        return pids;
      });

    const errors: unknown[] = [];
    const pidSets = await Promise.all(
      Array.from({ length: 20 }, (_, c) => work(via(proxy, "named"), c, 25, errors)),
    );
    assert.deepEqual(errors.map(String), []);
    const pids = new Set(pidSets.flatMap((s) => [...s]));
    assert.ok(pids.size >= 1 && pids.size <= 2, `${pids.size} backends for a pool of 2`);

    const offErrors: unknown[] = [];
    await Promise.all(
      Array.from({ length: 20 }, (_, c) => work(via(off, "off_named"), c, 5, offErrors)),
    );
    // Disabled: the same names meet on shared servers: "already exists", "does not exist", or
    // worse, another client's statement of the same name runs.
    assert.ok(offErrors.length > 0, "disabled: every named query worked");
    for (const e of offErrors) {
      assert.ok(
        /^(26000|42P05)$/.test(codeOf(e) ?? "") || e instanceof assert.AssertionError,
        String(e),
      );
    }
  });

  // -------------------------------------------------------------------------------------------
  await step("postgres.js (prepare: true): 10 connections over 2 servers", async () => {
    const offset = (await pgc.log()).length;
    const sql = connectPostgresJs(via(proxy, "pjs"), { max: 10 });
    try {
      const backends = await postgresJsWorkload(sql, "extended");
      assert.ok(backends.size >= 1 && backends.size <= 2, `${backends.size} backends`);
      // postgres.js really used named statements, under pgdog's names.
      const rows = await sql`select name from pg_prepared_statements`;
      assert.ok(rows.length >= 2, `only ${rows.length} statements on the server`);
      assert.deepEqual(rows.map((r) => r.name).filter((n) => !n.startsWith("__pgdog_")), []);
    } finally {
      await sql.end({ timeout: 5 });
    }
    // postgres.js silently retries a statement PostgreSQL reports missing (26000) or stale
    // (0A000); the server log shows whether it had to. Only the deliberate division by zero may
    // be there. (Through the disabled proxy it has to, and its pipelined retries then hang or
    // misparse rows: no comparison run here.)
    const errors = (await logErrors(env, "pjs", offset)).filter((l) => !/division by zero/.test(l));
    assert.deepEqual(errors, []);
  });

  // -------------------------------------------------------------------------------------------
  await step(
    `10,000 distinct statements from 50 clients: at most ${LIMIT} per server`,
    async () => {
      const target = via(proxy, "many");
      const CLIENTS = 50;
      const PER_CLIENT = 200;
      let running = true;
      let maxSeen = 0;
      let monitorSamples = 0;
      const monitor = withPg(target, async (c) => {
        while (running) {
          const r = await c.query("select count(*)::int as n from pg_prepared_statements");
          maxSeen = Math.max(maxSeen, r.rows[0].n);
          monitorSamples++;
          await sleep(200);
        }
      });
      let executed = 0;
      try {
        await Promise.all(
          Array.from({ length: CLIENTS }, (_, c) =>
            withPg(target, async (client) => {
              for (let round = 0; round < 2; round++) {
                for (let j = 0; j < PER_CLIENT; j++) {
                  const k = c * PER_CLIENT + j;
                  const r = await client.query({
                    name: `s${k}`,
                    text: `select $1::int + ${k} as v`,
                    values: [k],
                  });
                  assert.deepEqual(r.rows, [{ v: 2 * k }]);
                  executed++;
                }
              }
            })),
        );
      } finally {
        running = false;
        await monitor;
      }
      assert.equal(executed, 2 * CLIENTS * PER_CLIENT);
      assert.ok(monitorSamples >= 3, `only ${monitorSamples} samples`);
      assert.ok(maxSeen <= LIMIT, `a server held ${maxSeen} statements (limit ${LIMIT})`);

      // Both servers at the end: within the limit, and still caching (not closing after each use).
      await withPg(target, async (a) => {
        await a.query("begin");
        const first = await a.query(
          "select count(*)::int as n, pg_backend_pid() as pid from pg_prepared_statements",
        );
        const second = await withPg<pg.QueryResult>(
          target,
          (b) =>
            b.query(
              "select count(*)::int as n, pg_backend_pid() as pid from pg_prepared_statements",
            ),
        );
        await a.query("commit");
        assert.notEqual(first.rows[0].pid, second.rows[0].pid);
        for (const r of [first, second]) {
          assert.ok(
            r.rows[0].n >= LIMIT / 2 && r.rows[0].n <= LIMIT,
            `a server holds ${r.rows[0].n} statements (limit ${LIMIT})`,
          );
        }
        assert.ok(maxSeen >= LIMIT / 2, `the servers never held more than ${maxSeen} statements`);
      });
    },
  );

  // -------------------------------------------------------------------------------------------
  await step("a table change invalidates a statement: the error, then recovery", async () => {
    await pgc.sql(
      [
        "create table inv_t (id int primary key, a text)",
        "insert into inv_t values (1, 'x')",
        "grant all on all tables in schema public to public",
      ].join(";"),
      { database: "app" },
    );
    const run = (c: pg.Client, table: string) =>
      c.query({ name: "inv", text: `select * from ${table} where id = $1`, values: [1] });

    await withPg(via(proxy, "one"), async (c) => {
      assert.deepEqual((await run(c, "inv_t")).rows, [{ id: 1, a: "x" }]);
      await pgc.sql("alter table inv_t add column c int default 7", { database: "app" });
      await rejectsWith(run(c, "inv_t"), "0A000", /cached plan must not change result type/);
      // The same client, same statement: now with the new column.
      const r = await run(c, "inv_t");
      assert.deepEqual(r.rows, [{ id: 1, a: "x", c: 7 }]);
      assert.deepEqual(r.fields.map((f: pg.FieldDef) => f.name), ["id", "a", "c"]);
      assert.deepEqual((await run(c, "inv_t")).rows, [{ id: 1, a: "x", c: 7 }]);
    });
    await withPg(via(proxy, "one"), async (c) => {
      assert.deepEqual((await run(c, "inv_t")).rows, [{ id: 1, a: "x", c: 7 }]);
    });
  });

  await step("disabled: a stale statement keeps failing, nothing is deallocated", async () => {
    // Without the feature pgdog passes everything through: PostgreSQL keeps refusing the stale
    // statement on that connection (the client must prepare it again), and the client's other
    // statements on the server are left alone.
    await pgc.sql(
      [
        "create table inv_off (id int primary key, a text)",
        "insert into inv_off values (1, 'x')",
        "grant all on all tables in schema public to public",
      ].join(";"),
      { database: "app" },
    );
    const run = (c: pg.Client) =>
      c.query({ name: "inv", text: "select * from inv_off where id = $1", values: [1] });
    const keep = (c: pg.Client) =>
      c.query({ name: "keep", text: "select $1::int + 1 as k", values: [1] });
    await withPg(via(off, "off_one"), async (c) => {
      assert.deepEqual((await keep(c)).rows, [{ k: 2 }]);
      assert.deepEqual((await run(c)).rows, [{ id: 1, a: "x" }]);
      await pgc.sql("alter table inv_off add column c int default 7", { database: "app" });
      await rejectsWith(run(c), "0A000", /cached plan must not change result type/);
      assert.deepEqual((await keep(c)).rows, [{ k: 2 }]);
      await rejectsWith(run(c), "0A000", /cached plan must not change result type/);
    });
  });

  await step("a dropped column: PostgreSQL's error, then it works again", async () => {
    await pgc.sql(
      [
        "create table dc_t (id int primary key, a text, b int)",
        "insert into dc_t values (1, 'x', 2)",
        "grant all on all tables in schema public to public",
      ].join(";"),
      { database: "app" },
    );
    const run = (c: pg.Client) =>
      c.query({ name: "dc", text: "select id, b from dc_t where id = $1", values: [1] });
    await withPg(via(proxy, "one"), async (c) => {
      assert.deepEqual((await run(c)).rows, [{ id: 1, b: 2 }]);
      await pgc.sql("alter table dc_t drop column b", { database: "app" });
      await rejectsWith(run(c), "42703", /column "b" does not exist/);
      await rejectsWith(run(c), "42703", /column "b" does not exist/);
      await pgc.sql("alter table dc_t add column b int default 5", { database: "app" });
      assert.deepEqual((await run(c)).rows, [{ id: 1, b: 5 }]);
      const fresh = await c.query({
        name: "dc_fresh",
        text: "select id, b from dc_t where id = $1",
        values: [1],
      });
      assert.deepEqual(fresh.rows, [{ id: 1, b: 5 }]);
    });
  });

  // -------------------------------------------------------------------------------------------
  await step(
    "Close and re-Parse; Describe; duplicate and unknown names (as PostgreSQL)",
    async () => {
      const s = await sameBothWays(env, "wire", async (c) => {
        const out: BackendMessage[] = [];
        const rt = async (...msgs: Uint8Array[]) => out.push(...await roundTrip(c, msgs));
        await rt(fe.parse("a", "select 1 as x"), fe.sync());
        await rt(fe.bind("", "a"), fe.execute(""), fe.sync());
        // Close, then the same name for another statement.
        await rt(fe.close("S", "a"), fe.sync());
        await rt(
          fe.parse("a", "select $1::int + 1 as y, $2::text as z"),
          fe.describe("S", "a"),
          fe.bind("", "a", ["41", "zz"]),
          fe.execute(""),
          fe.sync(),
        );
        // A second Parse of a name the client has: 42P05, and the old statement stays.
        await rt(fe.parse("a", "select 3 as other"), fe.sync());
        await rt(fe.bind("", "a", ["1", "q"]), fe.execute(""), fe.sync());
        // Unknown names: Bind and Describe report 26000 naming the client's statement.
        await rt(fe.bind("", "nope"), fe.execute(""), fe.sync());
        await rt(fe.describe("S", "nope2"), fe.sync());
        // Closing a name that does not exist is not an error.
        await rt(fe.close("S", "never"), fe.sync());
        // Close then Bind in one pipeline: the name is gone for the Bind.
        await rt(fe.close("S", "a"), fe.bind("", "a", ["1", "q"]), fe.execute(""), fe.sync());
        // Parse and Close in one pipeline, then the name is free again.
        await rt(fe.parse("pc", "select 5 as five"), fe.close("S", "pc"), fe.sync());
        await rt(fe.parse("pc", "select 6 as six"), fe.bind("", "pc"), fe.execute(""), fe.sync());
        return out;
      });
      assert.deepEqual(s, [
        "1",
        "Z I",
        "2",
        "D 1",
        "C SELECT 1",
        "Z I",
        "3",
        "Z I",
        "1",
        "t 23,25",
        "T y:23,z:25",
        "2",
        "D 42|zz",
        "C SELECT 1",
        "Z I",
        'E 42P05 prepared statement "a" already exists',
        "Z I",
        "2",
        "D 2|q",
        "C SELECT 1",
        "Z I",
        'E 26000 prepared statement "nope" does not exist',
        "Z I",
        'E 26000 prepared statement "nope2" does not exist',
        "Z I",
        "3",
        "Z I",
        "3",
        'E 26000 prepared statement "a" does not exist',
        "Z I",
        "1",
        "3",
        "Z I",
        "1",
        "2",
        "D 6",
        "C SELECT 1",
        "Z I",
      ]);
    },
  );

  await step("a Parse that failed created nothing: the name can be parsed again", async () => {
    const s = await sameBothWays(env, "wire", async (c) => {
      await c.send(fe.parse("bad", "select * from no_such_table"), fe.sync());
      const failed = await c.untilReady();
      await c.send(fe.bind("", "bad"), fe.execute(""), fe.sync());
      const unknown = await c.untilReady();
      await c.send(
        fe.parse("bad", "select 4 as four"),
        fe.bind("", "bad"),
        fe.execute(""),
        fe.sync(),
      );
      return [...failed, ...unknown, ...await c.untilReady()];
    });
    assert.deepEqual(s, [
      'E 42P01 relation "no_such_table" does not exist',
      "Z I",
      'E 26000 prepared statement "bad" does not exist',
      "Z I",
      "1",
      "2",
      "D 4",
      "C SELECT 1",
      "Z I",
    ]);
  });

  await step("a Parse skipped after an earlier error created nothing", async () => {
    const s = await sameBothWays(env, "wire", async (c) => [
      // Make the text known (and on a server) first.
      ...await roundTrip(c, [fe.parse("known", "select 7 as seven"), fe.sync()]),
      // The error on the first message makes PostgreSQL skip the rest, the Parse included.
      ...await roundTrip(c, [
        fe.parse("", "selec 1"),
        fe.parse("skipped", "select 7 as seven"),
        fe.bind("", "skipped"),
        fe.execute(""),
        fe.sync(),
      ]),
      ...await roundTrip(c, [fe.bind("", "skipped"), fe.execute(""), fe.sync()]),
    ]);
    assert.deepEqual(s, [
      "1",
      "Z I",
      'E 42601 syntax error at or near "selec"',
      "Z I",
      'E 26000 prepared statement "skipped" does not exist',
      "Z I",
    ]);
  });

  await step("a Parse in a failed transaction fails and creates nothing", async () => {
    const s = await sameBothWays(env, "wire", async (c) => [
      ...await roundTrip(c, [
        fe.query("begin"),
        fe.parse("in_tx", "select 8 as eight"),
        fe.bind("", "in_tx"),
        fe.execute(""),
        fe.sync(),
        fe.query("select 1/0"),
      ], 3),
      // The same text under another name: the server has it, but the transaction is aborted.
      ...await roundTrip(c, [fe.parse("in_failed_tx", "select 8 as eight"), fe.sync()]),
      ...await c.simple("rollback"),
      ...await roundTrip(c, [fe.bind("", "in_failed_tx"), fe.execute(""), fe.sync()]),
    ]);
    assert.deepEqual(s, [
      "C BEGIN",
      "Z T",
      "1",
      "2",
      "D 8",
      "C SELECT 1",
      "Z T",
      "E 22012 division by zero",
      "Z E",
      "E 25P02 current transaction is aborted, commands ignored until end of transaction block",
      "Z E",
      "C ROLLBACK",
      "Z I",
      'E 26000 prepared statement "in_failed_tx" does not exist',
      "Z I",
    ]);
  });

  await step("a duplicate Parse inside a transaction aborts it (as PostgreSQL)", async () => {
    const s = await sameBothWays(env, "wire", async (c) => {
      await c.send(fe.parse("dup", "select 1"), fe.sync());
      const parsed = await c.untilReady();
      await c.send(fe.query("begin; insert into w_t values ('dup-in-tx')"));
      const begun = await c.untilReady();
      await c.send(fe.parse("dup", "select 2"), fe.sync());
      const dup = await c.untilReady();
      const commit = await c.simple("commit");
      const count = await c.simple("select count(*) from w_t where v = 'dup-in-tx'");
      await c.simple("delete from w_t where v = 'dup-in-tx'");
      return [...parsed, ...begun, ...dup, ...commit, ...count];
    });
    assert.deepEqual(s, [
      "1",
      "Z I",
      "C BEGIN",
      "C INSERT 0 1",
      "Z T",
      'E 42P05 prepared statement "dup" already exists',
      "Z E",
      "C ROLLBACK",
      "Z I",
      "T count:20",
      "D 0",
      "C SELECT 1",
      "Z I",
    ]);
  });

  // -------------------------------------------------------------------------------------------
  await step("DEALLOCATE name|ALL as simple queries free the client's statements", async () => {
    const bindRun = async (c: WireClient, name: string) => {
      await c.send(fe.bind("", name), fe.execute(""), fe.sync());
      return await c.untilReady();
    };
    const s = await sameBothWays(env, "wire", async (c) => {
      await c.send(
        fe.parse("d1", "select 1 as one"),
        fe.parse("D2", "select 2 as two"),
        fe.parse("d3", "select 3 as three"),
        fe.sync(),
      );
      const out = await c.untilReady();
      out.push(...await bindRun(c, "d1"));
      out.push(...await c.simple("DEALLOCATE d1"));
      out.push(...await bindRun(c, "d1"));
      out.push(...await bindRun(c, "D2"));
      out.push(...await c.simple('deallocate "D2";'));
      out.push(...await bindRun(c, "D2"));
      out.push(...await c.simple("DEALLOCATE PREPARE d3"));
      out.push(...await bindRun(c, "d3"));
      out.push(...await c.simple("DEALLOCATE nope"));
      // The freed name can be used again.
      await c.send(fe.parse("d1", "select 11 as eleven"), fe.parse("d4", "select 4"), fe.sync());
      out.push(...await c.untilReady());
      out.push(...await bindRun(c, "d1"));
      out.push(...await c.simple("DEALLOCATE ALL"));
      out.push(...await bindRun(c, "d1"));
      out.push(...await bindRun(c, "d4"));
      // DISCARD ALL sent alone forgets them too.
      out.push(...await roundTrip(c, [fe.parse("d5", "select 5"), fe.sync()]));
      out.push(...await c.simple("DISCARD ALL"));
      out.push(...await bindRun(c, "d5"));
      return out;
    });
    assert.deepEqual(s, [
      "1",
      "1",
      "1",
      "Z I",
      "2",
      "D 1",
      "C SELECT 1",
      "Z I",
      "C DEALLOCATE",
      "Z I",
      'E 26000 prepared statement "d1" does not exist',
      "Z I",
      "2",
      "D 2",
      "C SELECT 1",
      "Z I",
      "C DEALLOCATE",
      "Z I",
      'E 26000 prepared statement "D2" does not exist',
      "Z I",
      "C DEALLOCATE",
      "Z I",
      'E 26000 prepared statement "d3" does not exist',
      "Z I",
      'E 26000 prepared statement "nope" does not exist',
      "Z I",
      "1",
      "1",
      "Z I",
      "2",
      "D 11",
      "C SELECT 1",
      "Z I",
      "C DEALLOCATE ALL",
      "Z I",
      'E 26000 prepared statement "d1" does not exist',
      "Z I",
      'E 26000 prepared statement "d4" does not exist',
      "Z I",
      "1",
      "Z I",
      "C DISCARD ALL",
      "Z I",
      'E 26000 prepared statement "d5" does not exist',
      "Z I",
    ]);
  });

  await step("DEALLOCATE of unquoted names folds them as PostgreSQL does", async () => {
    const s = await sameBothWays(env, "wire", async (c) => [
      ...await roundTrip(c, [
        fe.parse("mixed", "select 1"),
        fe.parse("ünï_1$", "select 2"),
        fe.sync(),
      ]),
      // Unquoted: ASCII letters are lower-cased; other letters, digits and $ are part of the name.
      ...await c.simple("DEALLOCATE MiXeD"),
      ...await c.simple("DEALLOCATE ünï_1$"),
      ...await roundTrip(c, [fe.bind("", "mixed"), fe.execute(""), fe.sync()]),
      ...await roundTrip(c, [fe.bind("", "ünï_1$"), fe.execute(""), fe.sync()]),
    ]);
    assert.deepEqual(s, [
      "1",
      "1",
      "Z I",
      "C DEALLOCATE",
      "Z I",
      "C DEALLOCATE",
      "Z I",
      'E 26000 prepared statement "mixed" does not exist',
      "Z I",
      'E 26000 prepared statement "ünï_1$" does not exist',
      "Z I",
    ]);
  });

  await step("DEALLOCATE of an unknown name inside a transaction aborts it", async () => {
    const s = await sameBothWays(env, "wire", async (c) => [
      ...await c.simple("begin"),
      ...await c.simple("insert into w_t values ('dealloc-in-tx')"),
      ...await c.simple("deallocate nope"),
      ...await c.simple("commit"),
      ...await c.simple("select count(*) from w_t where v = 'dealloc-in-tx'"),
      ...await c.simple("delete from w_t where v = 'dealloc-in-tx'"),
    ]);
    assert.deepEqual(s.slice(0, 13), [
      "C BEGIN",
      "Z T",
      "C INSERT 0 1",
      "Z T",
      'E 26000 prepared statement "nope" does not exist',
      "Z E",
      "C ROLLBACK",
      "Z I",
      "T count:20",
      "D 0",
      "C SELECT 1",
      "Z I",
      "C DELETE 0",
    ]);
  });

  // -------------------------------------------------------------------------------------------
  await step(
    "SQL PREPARE/EXECUTE: 0A000 in transaction mode, working in session mode",
    async () => {
      await withWire(via(proxy, "wire"), async (c) => {
        for (const sql of ["PREPARE x AS select 1", "EXECUTE x", "prepare y (int) as select $1"]) {
          const msgs = await c.simple(sql);
          assert.deepEqual(summary(msgs), ["E 0A000", "Z I"], sql);
          const f = errorFields(msgs[0].body);
          assert.equal(
            f.M,
            "SQL PREPARE and EXECUTE are not supported in transaction pooling mode",
          );
          assert.match(f.H ?? "", /protocol-level prepared statements/);
        }
        // Other clients' statements are not reachable through EXPLAIN or CREATE TABLE AS either,
        // nor through the extended protocol.
        for (const sql of ["EXPLAIN EXECUTE __pgdog_1(1)", "CREATE TABLE x AS EXECUTE __pgdog_1"]) {
          assert.deepEqual(summary(await c.simple(sql)), ["E 0A000", "Z I"], sql);
        }
        await c.send(fe.parse("", "EXECUTE __pgdog_1"), fe.bind("", ""), fe.execute(""), fe.sync());
        assert.deepEqual(summary(await c.untilReady()), ["E 0A000", "Z I"]);
        // Inside a transaction the server raises pgdog's error (the transaction fails as it
        // would): the client sees pgdog's fields, not the DO block pgdog ran for it.
        assert.deepEqual(summary(await c.simple("BEGIN")), ["C BEGIN", "Z T"]);
        const inTx = await c.simple("PREPARE x AS select 1");
        assert.deepEqual(summary(inTx), ["E 0A000", "Z E"]);
        const f = errorFields(inTx[0].body);
        assert.match(f.M, /SQL PREPARE and EXECUTE are not supported/);
        assert.equal(f.W, undefined, `no CONTEXT: ${f.W}`);
        assert.deepEqual(summary(await c.simple("ROLLBACK")), ["C ROLLBACK", "Z I"]);
        // PL/pgSQL's EXECUTE is not SQL EXECUTE.
        assert.deepEqual(
          summary(await c.simple("DO $$ BEGIN EXECUTE 'select 1'; END $$")),
          ["C DO", "Z I"],
        );
        // The word in a string or as a column alias is not a PREPARE.
        assert.deepEqual(await c.rows("select 'PREPARE x AS select 1' as prepare"), [[
          "PREPARE x AS select 1",
        ]]);
      });
      const refused = await psql(via(proxy, "wire"), "PREPARE x AS select 1");
      assert.notEqual(refused.code, 0);
      assert.match(
        refused.stderr,
        /SQL PREPARE and EXECUTE are not supported in transaction pooling mode/,
      );

      const session = await psql(via(proxy, "sess"), "", {
        stdin: "PREPARE x (int) AS select $1 * 3;\nEXECUTE x(14);\nEXECUTE x(2);\nDEALLOCATE x;\n" +
          "select count(*) from pg_prepared_statements;\n",
      });
      assert.equal(session.code, 0, session.stderr);
      assert.deepEqual(session.stdout.trim().split("\n"), [
        "PREPARE",
        "42",
        "6",
        "DEALLOCATE",
        "0",
      ]);
    },
  );

  // -------------------------------------------------------------------------------------------
  await step(
    "pipelines of named statements, in and out of transactions, shared servers",
    async () => {
      for (const user of ["pipe1", "wire"]) {
        let running = true;
        let others = 0;
        const other = withPg(via(proxy, user), async (c) => {
          while (running) {
            const r = await c.query({
              name: "s1",
              text: "select $1::int * 100 as o",
              values: [others],
            });
            assert.deepEqual(r.rows, [{ o: others * 100 }]);
            others++;
          }
        });
        try {
          await Promise.all([0, 1, 2].map((k) =>
            withWire({ ...via(proxy, user) }, async (c) => {
              const s1 = `select $1::int + ${k} as a`;
              const s2 = `select $1::text || '-${k}' as b`;
              for (let r = 0; r < 20; r++) {
                const body = [
                  fe.bind("", "s1", [String(r)]),
                  fe.execute(""),
                  fe.bind("", "s2", [`r${r}`]),
                  fe.execute(""),
                ];
                const parse = r === 0 ? [fe.parse("s1", s1), fe.parse("s2", s2)] : [];
                const rows = [
                  "2",
                  `D ${r + k}`,
                  "C SELECT 1",
                  "2",
                  `D r${r}-${k}`,
                  "C SELECT 1",
                ];
                if (r % 4 === 3) {
                  await c.send(
                    fe.query("begin"),
                    ...body,
                    fe.sync(),
                    ...body,
                    fe.sync(),
                    fe.query("commit"),
                  );
                  const got = summary(await c.untilReady(4));
                  assert.deepEqual(got, [
                    "C BEGIN",
                    "Z T",
                    ...rows,
                    "Z T",
                    ...rows,
                    "Z T",
                    "C COMMIT",
                    "Z I",
                  ], `${user} client ${k} round ${r}`);
                } else if (r % 4 === 2) {
                  // An error in the middle: the rest up to Sync is skipped, the next request works.
                  await c.send(
                    fe.bind("", "s2", [`e${r}`]),
                    fe.execute(""),
                    fe.bind("", "s1", ["not a number"]),
                    fe.execute(""),
                    fe.bind("", "s2", ["skipped"]),
                    fe.execute(""),
                    fe.sync(),
                    ...body,
                    fe.sync(),
                  );
                  const got = summary(await c.untilReady(2));
                  assert.deepEqual(got, [
                    "2",
                    `D e${r}-${k}`,
                    "C SELECT 1",
                    "E 22P02",
                    "Z I",
                    ...rows,
                    "Z I",
                  ], `${user} client ${k} round ${r}`);
                } else {
                  await c.send(...parse, ...body, fe.sync());
                  const got = summary(await c.untilReady());
                  assert.deepEqual(
                    got,
                    [...(r === 0 ? ["1", "1"] : []), ...rows, "Z I"],
                    `${user} client ${k} round ${r}`,
                  );
                }
              }
            })
          ));
        } finally {
          running = false;
          await other;
        }
        assert.ok(others > 0, `${user}: the other client made no progress`);
      }
    },
  );

  await step("the same text with other parameter types is another statement", async () => {
    const exchange = (types: number[], value: string) => async (c: WireClient) =>
      await roundTrip(c, [
        fe.parse("typed", "select $1 as v", types),
        fe.describe("S", "typed"),
        fe.bind("", "typed", [value]),
        fe.execute(""),
        fe.sync(),
      ]);
    // Both clients at once, on the same pool, so the statements meet on the servers.
    const [int4, text, unknown] = await Promise.all([
      sameBothWays(env, "pipe1", exchange([23], "42")),
      sameBothWays(env, "pipe1", exchange([25], "forty-two")),
      sameBothWays(env, "pipe1", exchange([], "untyped")),
    ]);
    assert.deepEqual(int4, ["1", "t 23", "T v:23", "2", "D 42", "C SELECT 1", "Z I"]);
    assert.deepEqual(text, ["1", "t 25", "T v:25", "2", "D forty-two", "C SELECT 1", "Z I"]);
    assert.deepEqual(unknown, ["1", "t 25", "T v:25", "2", "D untyped", "C SELECT 1", "Z I"]);
  });

  await step("Describe and Bind of a statement the server has not seen yet", async () => {
    const text = "select id, v from items where id = $1";
    // inj_a's pool parses it, so pgdog knows it is valid; inj_b's server has never seen it.
    await withPg(via(proxy, "inj_a"), async (a) => {
      const r = await a.query({ name: "known", text, values: [3] });
      assert.deepEqual(r.rows, [{ id: 3, v: "item 3" }]);
    });
    const s = await sameBothWays(env, "inj_b", async (c) => [
      ...await roundTrip(c, [fe.parse("k", text), fe.sync()]),
      ...await roundTrip(c, [fe.describe("S", "k"), fe.sync()]),
      ...await roundTrip(c, [
        fe.bind("", "k", ["4"]),
        fe.describe("P", ""),
        fe.execute(""),
        fe.sync(),
      ]),
    ]);
    assert.deepEqual(s, [
      "1",
      "Z I",
      "t 23",
      "T id:23,v:25",
      "Z I",
      "2",
      "T id:23,v:25",
      "D 4|item 4",
      "C SELECT 1",
      "Z I",
    ]);
  });

  await step(`one pipeline with more statements than the limit (${LIMIT})`, async () => {
    const N = LIMIT + 50;
    const target = via(proxy, "pipe1");
    await withWire(target, async (c) => {
      for (let round = 0; round < 3; round++) {
        const msgs: Uint8Array[] = [];
        for (let k = 0; k < N; k++) {
          if (round === 0) msgs.push(fe.parse(`big${k}`, `select $1::int * 1000 + ${k} as v`));
          msgs.push(fe.bind("", `big${k}`, [String(round)]), fe.execute(""));
        }
        msgs.push(fe.sync());
        const got = summary(await roundTrip(c, msgs));
        const expected: string[] = [];
        for (let k = 0; k < N; k++) {
          if (round === 0) expected.push("1");
          expected.push("2", `D ${round * 1000 + k}`, "C SELECT 1");
        }
        expected.push("Z I");
        assert.deepEqual(got, expected, `round ${round}`);
        // Another client's request in between: the server is trimmed back to the limit.
        await withPg(target, async (o) => {
          const r = await o.query("select count(*)::int as n from pg_prepared_statements");
          assert.ok(r.rows[0].n <= LIMIT, `the server holds ${r.rows[0].n} statements`);
        });
      }
    });
  });

  // -------------------------------------------------------------------------------------------
  await step("an error in an injected Parse reaches the client exactly once", async () => {
    await pgc.sql(
      [
        "create table inj_t (id int, v text)",
        "insert into inj_t values (1, 'one')",
        "grant all on inj_t to public",
      ].join(";"),
      { database: "app" },
    );
    const text = "select v from inj_t where id = $1";
    // A prepares and runs it on its server: pgdog now knows the statement is valid.
    await withPg(via(proxy, "inj_a"), async (a) => {
      const r = await a.query({ name: "inj", text, values: [1] });
      assert.deepEqual(r.rows, [{ v: "one" }]);

      await pgc.sql("drop table inj_t", { database: "app" });
      // PostgreSQL's own answer to the same exchange.
      const expected = await withWire(direct(env, "inj_b"), async (c) => {
        await c.send(
          fe.parse("b_inj", text),
          fe.bind("", "b_inj", ["1"]),
          fe.execute(""),
          fe.sync(),
        );
        return detail(await c.untilReady());
      });
      assert.deepEqual(expected, ['E 42P01 relation "inj_t" does not exist', "Z I"]);

      // B's server never had it: pgdog parses it there first, and that Parse fails.
      await withWire(via(proxy, "inj_b"), async (b) => {
        await b.send(
          fe.parse("b_inj", text),
          fe.bind("", "b_inj", ["1"]),
          fe.execute(""),
          fe.bind("", "b_inj", ["1"]),
          fe.execute(""),
          fe.sync(),
        );
        const got = detail(await b.untilReady());
        assert.equal(await b.hasMessageWithin(200), false, "more after ReadyForQuery");
        const errors = got.filter((m) => m.startsWith("E "));
        assert.deepEqual(errors, [expected[0]], `errors: ${JSON.stringify(got)}`);
        assert.equal(got.at(-1), "Z I");
        assert.deepEqual(got.filter((m) => /^[2DC]/.test(m)), [], JSON.stringify(got));
        const acknowledged = got.includes("1");

        await pgc.sql(
          [
            "create table inj_t (id int, v text)",
            "insert into inj_t values (1, 'one again')",
            "grant all on inj_t to public",
          ].join(";"),
          { database: "app" },
        );
        // B's next try works: with the name it was told exists, or parsing it again.
        await b.send(
          ...(acknowledged ? [] : [fe.parse("b_inj", text)]),
          fe.bind("", "b_inj", ["1"]),
          fe.execute(""),
          fe.sync(),
        );
        const again = summary(await b.untilReady());
        assert.deepEqual(again, [
          ...(acknowledged ? [] : ["1"]),
          "2",
          "D one again",
          "C SELECT 1",
          "Z I",
        ]);
      });
      // A's statement works again too.
      assert.deepEqual((await a.query({ name: "inj", text, values: [1] })).rows, [{
        v: "one again",
      }]);
    });
  });

  await step("npm:pg: a named query whose table is created later works on retry", async () => {
    // The app starts before the migration: the first try fails, the same client retries.
    const attempt = async (target: PgTarget, table: string) =>
      await withPg(target, async (c) => {
        const run = () =>
          c.query({ name: "late", text: `select v from ${table} where id = $1`, values: [1] });
        await rejectsWith(run(), "42P01");
        await pgc.sql(
          `create table ${table} (id int, v text); insert into ${table} values (1, 'late');` +
            `grant all on ${table} to public`,
          { database: "app" },
        );
        return (await run()).rows;
      });
    assert.deepEqual(await attempt(direct(env, "inj_b"), "late_direct"), [{ v: "late" }]);
    assert.deepEqual(await attempt(via(proxy, "inj_b"), "late_proxy"), [{ v: "late" }]);
  });
});
