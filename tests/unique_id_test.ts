/**
 * `pgdog.unique_id()` through the real proxy:
 *
 * - it is replaced only where PostgreSQL's parser sees a call: never inside dollar-quoted,
 *   escape or plain strings, quoted identifiers, comments, or a function body;
 * - in prepared statements (extended protocol: npm:pg named and unnamed, postgres.js, which
 *   describes its statements and pipelines them), in transaction and session mode, each
 *   execution gets a fresh id, and Describe reports the column as bigint;
 * - sharded, a prepared INSERT whose key is `pgdog.unique_id()` puts each row on its id's shard.
 */

import assert from "node:assert/strict";
import type pg from "pg";
import postgres from "postgres";
import { shardForBigint } from "../src/sharding/hash.ts";
import {
  connectPg,
  dumpLogsOnFailure,
  type PgTarget,
  startPostgres,
  startProxy,
  startSharded,
} from "./harness/mod.ts";

const USER = "postgres";
const PASSWORD = "unique-id-test-pw";

function proxyFor(pg: { host: string; port: number }, poolerMode = "transaction") {
  return startProxy({
    config: {
      general: { idle_healthcheck_interval: 0, pooler_mode: poolerMode },
      databases: [{ name: "app", host: pg.host, port: pg.port, database_name: "postgres" }],
    },
    users: { users: [{ name: USER, password: PASSWORD, database: "app" }] },
  });
}

function via(proxy: { target(o: { user: string; password: string; database: string }): PgTarget }) {
  return proxy.target({ user: USER, password: PASSWORD, database: "app" });
}

function assertFreshIds(ids: unknown[]): void {
  const values = ids.map((id) => BigInt(String(id)));
  assert.equal(new Set(values).size, values.length, `repeated ids: ${values.join(", ")}`);
  for (const v of values) assert.ok(v > 0n, `not an id: ${v}`);
}

Deno.test("pgdog.unique_id(): replaced only where the parser sees a call", async (t) => {
  await using pg = await startPostgres();
  await using proxy = await proxyFor(pg);
  await dumpLogsOnFailure(proxy, async () => {
    const c = await connectPg(via(proxy));
    try {
      await t.step("strings, quoted names and comments keep their text", async () => {
        const r = await c.query(
          "SELECT $$call pgdog.unique_id() here$$ AS dollar, $q$pgdog.unique_id()$q$ AS tagged, " +
            "E'pgdog.unique_id()\\n' AS escape, 'pgdog.unique_id()' AS plain, " +
            '1 AS "pgdog.unique_id()" /* pgdog.unique_id() */ -- pgdog.unique_id()\n',
        );
        assert.deepEqual(r.rows[0], {
          dollar: "call pgdog.unique_id() here",
          tagged: "pgdog.unique_id()",
          escape: "pgdog.unique_id()\n",
          plain: "pgdog.unique_id()",
          "pgdog.unique_id()": 1,
        });
      });

      await t.step("a function body is stored as written", async () => {
        await c.query(
          "CREATE OR REPLACE FUNCTION uid_body() RETURNS bigint LANGUAGE plpgsql " +
            "AS $$ BEGIN RETURN pgdog.unique_id(); END $$",
        );
        const r = await c.query("SELECT prosrc FROM pg_proc WHERE proname = 'uid_body'");
        assert.equal(r.rows[0].prosrc, " BEGIN RETURN pgdog.unique_id(); END ");
      });

      await t.step("a call next to look-alikes becomes an id", async () => {
        const r = await c.query(
          "SELECT pgdog.unique_id() AS id, 'pgdog.unique_id()' AS s, pgdog . unique_id ( ) AS id2",
        );
        assertFreshIds([r.rows[0].id, r.rows[0].id2]);
        assert.equal(r.rows[0].s, "pgdog.unique_id()");
      });
    } finally {
      await c.end();
    }
  });
});

Deno.test("pgdog.unique_id() in prepared statements: a fresh id per execution", async (t) => {
  await using pg = await startPostgres();
  await pg.sql("CREATE TABLE uid_items (id bigint PRIMARY KEY, v text)");
  for (const mode of ["transaction", "session"]) {
    await t.step(`${mode} mode`, async () => {
      await using proxy = await proxyFor(pg, mode);
      const target = via(proxy);
      await dumpLogsOnFailure(proxy, async () => {
        const c: pg.Client = await connectPg(target);
        try {
          // npm:pg, named: parsed once, bound and executed each time.
          const named = [];
          for (let n = 0; n < 5; n++) {
            const r = await c.query({
              name: "next_id",
              text: "SELECT pgdog.unique_id() AS id, $1::int AS n",
              values: [n],
            });
            assert.equal(r.rows[0].n, n);
            assert.equal(r.fields[0].dataTypeID, 20, "bigint");
            named.push(r.rows[0].id);
          }
          assertFreshIds(named);
          // npm:pg, unnamed: Parse, Bind, Execute each time.
          const unnamed = [];
          for (let n = 0; n < 3; n++) {
            const r = await c.query("SELECT pgdog.unique_id() AS id, $1::text AS v", ["x"]);
            unnamed.push(r.rows[0].id);
          }
          assertFreshIds([...named, ...unnamed]);
          // A string in a prepared statement stays a string.
          const s = await c.query("SELECT $$pgdog.unique_id()$$ AS s, $1::int AS n", [7]);
          assert.deepEqual(s.rows[0], { s: "pgdog.unique_id()", n: 7 });
          // Rows inserted by one prepared statement get ids of their own.
          const inserted = [];
          for (let n = 0; n < 5; n++) {
            const r = await c.query({
              name: "insert_item",
              text: "INSERT INTO uid_items (id, v) VALUES (pgdog.unique_id(), $1) RETURNING id",
              values: [`${mode} ${n}`],
            });
            inserted.push(r.rows[0].id);
          }
          assertFreshIds(inserted);
          const count = await c.query("SELECT count(*)::int AS n FROM uid_items WHERE v LIKE $1", [
            `${mode} %`,
          ]);
          assert.equal(count.rows[0].n, 5);
        } finally {
          await c.end();
        }
        // postgres.js describes each statement first and pipelines queries.
        const sql = postgres({
          host: target.host,
          port: target.port,
          user: USER,
          password: PASSWORD,
          database: "app",
          max: 1,
          onnotice: () => {},
        });
        try {
          const rows = await Promise.all(
            Array.from(
              { length: 6 },
              (_, n) => sql`SELECT pgdog.unique_id() AS id, ${n}::int AS n`,
            ),
          );
          rows.forEach((r, n) => assert.equal(r[0].n, n));
          assertFreshIds(rows.map((r) => r[0].id));
        } finally {
          await sql.end();
        }
      });
    });
  }
});

Deno.test("pgdog.unique_id() as the sharding key of a prepared INSERT", async () => {
  await using setup = await startSharded({
    shardedTables: [{ name: "items", column: "id" }],
    schema: "CREATE TABLE items (id bigint PRIMARY KEY, v text)",
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    const c = await connectPg(setup.target);
    const ids: string[] = [];
    try {
      for (let n = 0; n < 12; n++) {
        const r = await c.query({
          name: "insert_item",
          text: "INSERT INTO items (id, v) VALUES (pgdog.unique_id(), $1) RETURNING id",
          values: [`named ${n}`],
        });
        ids.push(r.rows[0].id);
      }
      for (let n = 0; n < 6; n++) {
        const r = await c.query(
          "INSERT INTO items (v, id) VALUES ($1, pgdog.unique_id()) RETURNING id",
          [`unnamed ${n}`],
        );
        ids.push(r.rows[0].id);
      }
    } finally {
      await c.end();
    }
    assertFreshIds(ids);
    const placed = await setup.placement("SELECT id FROM items");
    for (const id of ids) {
      assert.deepEqual(placed.get(String(id)), [shardForBigint(BigInt(id), 3)], `id ${id}`);
    }
  });
});
