/**
 * Real drivers through the proxy: npm:pg (extended protocol with text parameters, type round
 * trips, transactions, SQLSTATEs, a 20-client pg.Pool over 3 server connections, named prepared
 * statements in session mode), postgres.js (unnamed statements in transaction mode, named ones in
 * session mode), and psql's `\copy` and `\d` family. Results are compared with the same calls made
 * straight to PostgreSQL where they are deterministic.
 *
 * One cluster and one proxy: users `tx` (transaction mode, pool_size 3), `tx2` (transaction
 * mode, pool_size 2) and `sess` (session mode).
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import pg from "pg";
import type postgres from "postgres";
import {
  connectPg,
  connectPostgresJs,
  dumpLogsOnFailure,
  type PgCluster,
  type PgTarget,
  type ProxyProcess,
  psql,
  sleep,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";

const PASSWORD = "drivers-test-pw";
const USERS = ["tx", "tx2", "sess"];

interface Env {
  pg: PgCluster;
  proxy: ProxyProcess;
}

function direct(env: Env, user: string): PgTarget {
  return { host: env.pg.host, port: env.pg.port, user, password: PASSWORD, database: "app" };
}

function viaProxy(env: Env, user: string): PgTarget {
  return env.proxy.target({ user, password: PASSWORD, database: "app" });
}

async function withPg<T>(target: PgTarget, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = await connectPg(target);
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Keeps `n` clients of `target` busy with short queries until stopped. */
function busyLoad(target: PgTarget, n: number) {
  let running = true;
  let queries = 0;
  let failure: { error: unknown } | null = null;
  const loops = Array.from({ length: n }, () =>
    withPg(target, async (c) => {
      while (running) {
        await c.query("select pg_backend_pid()");
        queries++;
      }
    }).catch((error) => {
      failure ??= { error };
    }));
  return {
    /** Stops the clients; returns how many queries they ran, or throws what failed. */
    async stop(): Promise<number> {
      running = false;
      await Promise.all(loops);
      if (failure) throw failure.error;
      return queries;
    },
  };
}

const UNICODE = "héllo wörld ✓ 日本語 🐘 \u00a0tab\tquote' dq\" back\\slash";

Deno.test("drivers through the proxy", async (t) => {
  await using pgc = await startPostgres({
    roles: USERS.map((name) => ({ name, password: PASSWORD, auth: "scram" as const })),
    databases: ["app"],
  });
  await pgc.sql(
    [
      "create table types_t (id int primary key, i int, big bigint, n numeric, t text, b bytea, " +
      "j json, jb jsonb, ts timestamptz, ia int[], ta text[], nul text, f float8, bo boolean)",
      "create table tx_t (id serial primary key, who text, v int)",
      "create table uniq_t (id int primary key)",
      "create table pj_t (id int primary key, v text)",
      "create table copy_t (id int, name text, note text)",
      "grant all on all tables in schema public to public",
      "grant all on all sequences in schema public to public",
      "comment on table types_t is 'all the types'",
    ].join(";"),
    { database: "app" },
  );
  await using proxy = await startProxy({
    config: {
      general: { checkout_timeout: 10_000 },
      databases: [{ name: "app", host: pgc.host, port: pgc.port }],
    },
    users: {
      users: [
        { name: "tx", password: PASSWORD, database: "app", pool_size: 3 },
        { name: "tx2", password: PASSWORD, database: "app", pool_size: 2 },
        {
          name: "sess",
          password: PASSWORD,
          database: "app",
          pool_size: 2,
          pooler_mode: "session",
        },
      ],
    },
  });
  const env: Env = { pg: pgc, proxy };
  const step = (name: string, fn: () => Promise<void>) =>
    t.step(name, () => dumpLogsOnFailure(proxy, fn));

  // -------------------------------------------------------------------------------------------
  await step("npm:pg: parameterized queries and type round trips", async () => {
    const row = {
      id: 1,
      i: -2147483648,
      big: "9223372036854775807",
      n: "12345678901234567890.000000000001",
      t: UNICODE,
      b: new Uint8Array([0, 1, 2, 127, 128, 254, 255, 92, 39]),
      j: { a: [1, 2, { b: null }], s: UNICODE },
      jb: { z: 1, a: "ü" },
      ts: new Date("2024-02-29T23:59:58.123Z"),
      ia: [1, null, -3],
      ta: ["a", "b,c", 'd"e', "", null, "✓"],
      nul: null,
      f: 1.5e-300,
      bo: true,
    };
    const run = (target: PgTarget) =>
      withPg(target, async (c) => {
        await c.query("delete from types_t");
        const ins = await c.query(
          "insert into types_t values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
          [
            row.id,
            row.i,
            row.big,
            row.n,
            row.t,
            Buffer.from(row.b),
            JSON.stringify(row.j),
            row.jb,
            row.ts,
            row.ia,
            row.ta,
            row.nul,
            row.f,
            row.bo,
          ],
        );
        assert.equal(ins.rowCount, 1);
        const sel = await c.query("select * from types_t where id = $1 and t = $2", [1, UNICODE]);
        const lit = await c.query(
          "select $1::text as echo, $2::int + $3::int as sum, $4::text is null as isnull, " +
            "length($1::text) as len",
          [UNICODE, 40, 2, null],
        );
        return { sel: sel.rows, lit: lit.rows };
      });
    const viaP = await run(viaProxy(env, "tx"));
    const viaD = await run(direct(env, "tx"));
    assert.deepEqual(viaP, viaD);
    assert.equal(viaP.sel.length, 1);
    const got = viaP.sel[0];
    assert.equal(got.i, row.i);
    assert.equal(got.big, row.big);
    assert.equal(got.n, row.n);
    assert.equal(got.t, UNICODE);
    assert.deepEqual(new Uint8Array(got.b), row.b);
    assert.deepEqual(got.j, row.j);
    assert.deepEqual(got.jb, row.jb);
    assert.equal(got.ts.toISOString(), row.ts.toISOString());
    assert.deepEqual(got.ia, row.ia);
    assert.deepEqual(got.ta, row.ta);
    assert.equal(got.nul, null);
    assert.equal(got.f, row.f);
    assert.equal(got.bo, true);
    assert.deepEqual(viaP.lit, [{
      echo: UNICODE,
      sum: 42,
      isnull: true,
      len: [...UNICODE].length,
    }]);
  });

  await step("npm:pg: transactions keep one server, errors carry SQLSTATE", async () => {
    const load = busyLoad(viaProxy(env, "tx"), 4);
    try {
      await withPg(viaProxy(env, "tx"), async (c) => {
        await c.query("BEGIN");
        const pids = new Set<number>();
        for (let i = 0; i < 15; i++) {
          await c.query("insert into tx_t (who, v) values ($1, $2)", ["pg-commit", i]);
          pids.add((await c.query("select pg_backend_pid() as p")).rows[0].p);
          await sleep(2);
        }
        // Not visible to others before COMMIT.
        const outside = await withPg(direct(env, "tx"), async (d) => {
          const r = await d.query("select count(*)::int as n from tx_t where who = 'pg-commit'");
          return r.rows[0].n as number;
        });
        assert.equal(outside, 0);
        await c.query("COMMIT");
        assert.equal(pids.size, 1, `backend changed inside a transaction: ${[...pids]}`);

        await c.query("BEGIN");
        await c.query("insert into tx_t (who, v) values ('pg-rollback', 1)");
        await c.query("ROLLBACK");
        const n = await c.query(
          "select count(*) filter (where who = 'pg-commit')::int as c, " +
            "count(*) filter (where who = 'pg-rollback')::int as r from tx_t",
        );
        assert.deepEqual(n.rows, [{ c: 15, r: 0 }]);

        // Errors: the SQLSTATE reaches the driver and the connection stays usable.
        const codeOf = async (sql: string, values?: unknown[]) => {
          try {
            await c.query(sql, values);
          } catch (e) {
            return (e as { code?: string }).code;
          }
          return "no error";
        };
        assert.equal(await codeOf("select 1/0"), "22012");
        assert.equal(await codeOf("select $1::int / 0", [1]), "22012");
        assert.equal(await codeOf("select * from no_such_table"), "42P01");
        assert.equal(await codeOf("selec 1"), "42601");
        assert.equal(await codeOf("select $1::int", ["x"]), "22P02");
        await c.query("insert into uniq_t values (1) on conflict do nothing");
        assert.equal(await codeOf("insert into uniq_t values ($1)", [1]), "23505");
        await c.query("BEGIN");
        assert.equal(await codeOf("select 1/0"), "22012");
        assert.equal(await codeOf("select 1"), "25P02");
        await c.query("ROLLBACK");
        assert.deepEqual((await c.query("select $1::int as ok", [7])).rows, [{ ok: 7 }]);
      });
    } finally {
      const others = await load.stop();
      assert.ok(others > 5, `the other clients made no progress (${others})`);
    }
  });

  await step("npm:pg: pg.Pool of 20 over proxy pool_size 3, 200 queries", async () => {
    const target = viaProxy(env, "tx");
    const pool = new pg.Pool({ ...target, max: 20, ssl: false, connectionTimeoutMillis: 20_000 });
    pool.on("error", () => {});
    try {
      const pids = new Set<number>();
      let next = 0;
      const worker = async () => {
        const client = await pool.connect();
        try {
          while (next < 200) {
            const i = next++;
            const r = await client.query(
              "select $1::int * 2 as d, $2::text as s, pg_backend_pid() as pid",
              [i, `v${i}`],
            );
            assert.deepEqual({ d: r.rows[0].d, s: r.rows[0].s }, { d: i * 2, s: `v${i}` });
            pids.add(r.rows[0].pid);
          }
        } finally {
          client.release();
        }
      };
      await Promise.all(Array.from({ length: 20 }, worker));
      assert.equal(next, 200);
      assert.equal(pool.totalCount, 20);
      assert.ok(pids.size >= 1 && pids.size <= 3, `${pids.size} backends served the pool`);
      const servers = await pgc.sql(
        "select count(*) from pg_stat_activity where usename = 'tx' and backend_type = 'client backend'",
      );
      assert.ok(Number(servers[0][0]) <= 3, `tx has ${servers[0][0]} server connections`);
    } finally {
      await pool.end();
    }
  });

  await step("npm:pg: named prepared statements in session mode", async () => {
    await withPg(viaProxy(env, "sess"), async (c) => {
      for (let i = 0; i < 5; i++) {
        const r = await c.query({
          name: "double_it",
          text: "select $1::int * 2 as d, $2::text as t",
          values: [i, UNICODE],
        });
        assert.deepEqual(r.rows, [{ d: i * 2, t: UNICODE }]);
      }
      for (let i = 0; i < 3; i++) {
        const r = await c.query({ name: "get_n", text: "select $1::bigint + 1 as n", values: [i] });
        assert.deepEqual(r.rows, [{ n: String(i + 1) }]);
      }
      const stmts = await c.query("select name from pg_prepared_statements order by name");
      assert.deepEqual(stmts.rows.map((r: { name: string }) => r.name), ["double_it", "get_n"]);
    });
    // A new session does not inherit them (DISCARD ALL at the end of the previous one).
    await withPg(viaProxy(env, "sess"), async (c) => {
      const stmts = await c.query("select count(*)::int as n from pg_prepared_statements");
      assert.equal(stmts.rows[0].n, 0);
    });
  });

  // -------------------------------------------------------------------------------------------
  await step("postgres.js (prepare: false): templates, begin, unsafe, 10 connections", async () => {
    const sql = connectPostgresJs(viaProxy(env, "tx2"), { prepare: false, max: 10 });
    try {
      const [r] =
        await sql`select ${40}::int + ${2}::int as s, ${UNICODE}::text as u, ${null}::text as n`;
      assert.deepEqual({ ...r }, { s: 42, u: UNICODE, n: null });
      const typed = await sql`
        select ${"9007199254740993"}::bigint as big, ${[1, 2, 3]}::int[] as arr,
          ${sql.json({ k: UNICODE })}::jsonb as j, ${new Date(
        "2020-01-01T00:00:00Z",
      )}::timestamptz as ts,
          ${Buffer.from([0, 255, 10])}::bytea as b`;
      assert.equal(typed[0].big, "9007199254740993");
      assert.deepEqual(typed[0].arr, [1, 2, 3]);
      assert.deepEqual(typed[0].j, { k: UNICODE });
      assert.equal(typed[0].ts.toISOString(), "2020-01-01T00:00:00.000Z");
      assert.deepEqual([...typed[0].b], [0, 255, 10]);

      // Transactions: one server throughout, commit and rollback.
      const pids = await sql.begin(async (tx) => {
        const seen = new Set<number>();
        for (let i = 0; i < 10; i++) {
          await tx`insert into pj_t ${tx({ id: i, v: `v${i}` })}`;
          const [{ p }] = await tx`select pg_backend_pid() as p`;
          seen.add(p);
          // Other connections of the same pool keep working meanwhile.
          await sql`select 1`;
        }
        return seen;
      });
      assert.equal(pids.size, 1);
      await assert.rejects(
        sql.begin(async (tx) => {
          await tx`insert into pj_t values (100, 'rolled back')`;
          await tx`select 1/0`;
        }),
        (e: { code?: string }) => e.code === "22012",
      );
      const counts =
        await sql`select count(*)::int as n, count(*) filter (where id = 100)::int as r from pj_t`;
      assert.deepEqual({ ...counts[0] }, { n: 10, r: 0 });

      // Multi-statement simple query.
      const multi = await sql.unsafe("select 1 as a; select 'two' as b, 3 as c; select 4 as d");
      assert.equal(multi.length, 3);
      assert.deepEqual((multi as unknown as postgres.Row[][]).map((rows) => [...rows]), [
        [{ a: 1 }],
        [{ b: "two", c: 3 }],
        [{ d: 4 }],
      ]);

      // 100 concurrent queries over 10 client connections and 2 server connections.
      const results = await Promise.all(
        Array.from(
          { length: 100 },
          (_, i) => sql`select ${i}::int as i, pg_backend_pid() as pid, pg_sleep(0.001)`,
        ),
      );
      const backends = new Set<number>();
      results.forEach(([row], i) => {
        assert.equal(row.i, i);
        backends.add(row.pid);
      });
      assert.ok(backends.size <= 2, `${backends.size} backends for a pool of 2`);
      await assert.rejects(sql`select * from nope`, (e: { code?: string }) => e.code === "42P01");
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  await step("postgres.js (prepare: true) in session mode", async () => {
    const sql = connectPostgresJs(viaProxy(env, "sess"), { prepare: true, max: 1 });
    try {
      for (let i = 0; i < 5; i++) {
        const [r] = await sql`select ${i}::int * 3 as x, ${UNICODE}::text as u`;
        assert.deepEqual({ ...r }, { x: i * 3, u: UNICODE });
      }
      const [{ n }] = await sql`select count(*)::int as n from pg_prepared_statements`;
      assert.ok(n >= 1, "postgres.js did not prepare named statements");
      const rows = await sql.begin(async (tx) => {
        await tx`insert into pj_t ${tx({ id: 200, v: "session" })}`;
        return await tx`select v from pj_t where id = ${200}`;
      });
      assert.deepEqual([...rows], [{ v: "session" }]);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  // -------------------------------------------------------------------------------------------
  await step("psql: \\copy in and out, \\d family", async () => {
    const dir = await Deno.makeTempDir({ prefix: "pgdog-drivers-" });
    try {
      const input = `${dir}/in.csv`;
      const lines = Array.from(
        { length: 5000 },
        (_, i) => `${i},"name, ${i} ✓","line1\nline2 ""${i}"""`,
      );
      await Deno.writeTextFile(input, lines.join("\n") + "\n");
      const proxyT = viaProxy(env, "tx");
      const inn = await psql(proxyT, `\\copy copy_t from '${input}' with (format csv)`);
      assert.equal(inn.code, 0, inn.stderr);
      assert.match(inn.stdout, /COPY 5000/);
      const out = await psql(
        proxyT,
        `\\copy (select * from copy_t order by id) to '${dir}/out.csv' with (format csv)`,
      );
      assert.equal(out.code, 0, out.stderr);
      assert.equal(await Deno.readTextFile(`${dir}/out.csv`), await Deno.readTextFile(input));
      const toStdout = await psql(proxyT, "\\copy (select * from copy_t order by id) to stdout");
      const direct1 = await psql(
        direct(env, "tx"),
        "\\copy (select * from copy_t order by id) to stdout",
      );
      assert.equal(toStdout.code, 0, toStdout.stderr);
      assert.equal(toStdout.stdout, direct1.stdout);
      assert.ok(toStdout.stdout.length > 100_000);

      for (
        const cmd of [
          "\\d types_t",
          "\\d+ types_t",
          "\\dt",
          "\\dt+ *_t",
          "\\df int4pl",
          "\\dn",
          "\\l",
          "\\du",
        ]
      ) {
        const [p, d] = await Promise.all([
          psql(proxyT, cmd),
          psql(direct(env, "tx"), cmd),
        ]);
        assert.equal(p.code, 0, `${cmd}: ${p.stderr}`);
        assert.ok(d.stdout.length > 0, `${cmd} printed nothing`);
        assert.equal(p.stdout, d.stdout, cmd);
      }
      const d = await psql(proxyT, "\\d types_t");
      assert.match(d.stdout, /ts\|timestamp with time zone/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});
