/**
 * Sharding through the real proxy into real PostgreSQL shards. Every placement claim is checked by
 * asking each shard directly, and the expected shard comes from PostgreSQL itself: a table
 * `PARTITION BY HASH` with as many partitions as there are shards, on a separate server, says
 * which partition (remainder) each value belongs in.
 *
 * - keys found in INSERT values and WHERE clauses (bigint, text, uuid), through npm:pg's extended
 *   protocol (parameters as text) and npm:postgres (binary parameters, prepared statements);
 * - list and range mappings; schema sharding by qualified name, search_path and SET LOCAL;
 * - keyless reads return every shard's rows; ORDER BY without a key is refused with 0A000;
 * - a transaction across shards commits (and rolls back) everywhere; DDL reaches every shard;
 * - manual routing with comments and SET pgdog.shard / pgdog.sharding_key.
 */

import assert from "node:assert/strict";
import type pg from "pg";
import postgres from "postgres";
import { shardForBigint } from "../src/sharding/hash.ts";
import {
  connectPg,
  dumpLogsOnFailure,
  type PgCluster,
  psql,
  startPostgres,
  startProxy,
  type TomlDocument,
} from "./harness/mod.ts";

const USER = "postgres";
const PASSWORD = "sharding-test-pw";
const DB = "app";

/** Starts `n` shards (and one reference server holding the hash-partitioned oracle tables). */
async function startShards(n: number): Promise<{ shards: PgCluster[]; oracle: PgCluster }> {
  const all = await Promise.all(
    Array.from({ length: n + 1 }, () => startPostgres({ databases: [DB] })),
  );
  return { shards: all.slice(0, n), oracle: all[n] };
}

/** The shard PostgreSQL's own hash partitioning chooses for each value (by partition remainder). */
async function oracleShards(
  oracle: PgCluster,
  type: string,
  values: string[],
  shards: number,
): Promise<number[]> {
  const table = `oracle_${type}_${shards}`;
  const parts = Array.from(
    { length: shards },
    (_, i) =>
      `CREATE TABLE ${table}_${i} PARTITION OF ${table} FOR VALUES WITH (MODULUS ${shards}, REMAINDER ${i});`,
  ).join("\n");
  await oracle.sql(
    `DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (k ${type}, i int) PARTITION BY HASH (k);\n${parts}`,
    { database: DB },
  );
  const rows = values.map((v, i) => `(${literal(v)}::${type}, ${i})`).join(",");
  await oracle.sql(`INSERT INTO ${table} VALUES ${rows}`, { database: DB });
  const out = await oracle.sql(
    `SELECT i, substring(tableoid::regclass::text from '_([0-9]+)$') FROM ${table}`,
    { database: DB },
  );
  const result = new Array<number>(values.length);
  for (const [i, part] of out) result[Number(i)] = Number(part);
  return result;
}

function literal(v: string): string {
  return `'${v.replaceAll("'", "''")}'`;
}

function databases(shards: PgCluster[]): TomlDocument[] {
  return shards.map((s, i) => ({
    name: DB,
    host: s.host,
    port: s.port,
    database_name: DB,
    shard: i,
  }));
}

/** Which shards hold a row with this key (asked directly). */
async function holders(shards: PgCluster[], sql: string): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < shards.length; i++) {
    const rows = await shards[i].sql(sql, { database: DB });
    if (rows.length > 0 && rows[0][0] !== "0") out.push(i);
  }
  return out;
}

/** For each key (text form) the shards holding it, from one query per shard. */
async function placement(
  shards: PgCluster[],
  sql: string,
): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (let i = 0; i < shards.length; i++) {
    for (const [key] of await shards[i].sql(sql, { database: DB })) {
      out.set(key, [...(out.get(key) ?? []), i]);
    }
  }
  return out;
}

function randomText(i: number): string {
  const alphabet = ["a", "é", "字", "🙂", "Z", " ", "'", "0"];
  let s = "";
  for (let k = 0; k < i % 7; k++) s += alphabet[(i * 31 + k * 7) % alphabet.length];
  return s + String(i);
}

Deno.test("sharding", async (t) => {
  const { shards, oracle } = await startShards(3);
  await using _o = oracle;
  await using _s0 = shards[0];
  await using _s1 = shards[1];
  await using _s2 = shards[2];

  const ddl = `
    CREATE TABLE users (id bigint PRIMARY KEY, name text);
    CREATE TABLE notes (author text, body text);
    CREATE TABLE things (id uuid, v int);
    CREATE TABLE regions (code bigint, label text);
    CREATE TABLE countries (code text, name text);
    CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b;
    CREATE TABLE tenant_a.items (id int); CREATE TABLE tenant_b.items (id int);
  `;
  for (const s of shards) await s.sql(ddl, { database: DB });

  await using proxy = await startProxy({
    config: {
      general: { idle_healthcheck_interval: 0, query_timeout: 3000 },
      databases: databases(shards),
      sharded_tables: [
        { database: DB, name: "users", column: "id" },
        { database: DB, name: "notes", column: "author", data_type: "varchar" },
        { database: DB, name: "things", column: "id", data_type: "uuid" },
        {
          database: DB,
          name: "regions",
          column: "code",
          mapping: [
            { values: [1, 2, 3], shard: 2 },
            { start: 100, end: 200, shard: 1 },
            { shard: 0 },
          ],
        },
      ],
      sharded_schemas: [
        { database: DB, name: "tenant_a", shard: 1 },
        { database: DB, name: "tenant_b", shard: 2 },
      ],
      omnisharded_tables: [{ database: DB, tables: ["countries"] }],
    },
    users: { users: [{ name: USER, password: PASSWORD, database: DB }] },
  });
  const target = proxy.target({ user: USER, password: PASSWORD, database: DB });

  await dumpLogsOnFailure(proxy, async () => {
    await t.step("bigint keys: INSERT and SELECT land on PostgreSQL's partition", async () => {
      const ids = [0n, 1n, -1n, 42n, 9223372036854775807n, -9223372036854775808n];
      for (let i = 0; i < 60; i++) ids.push(BigInt(i * 7919 - 100000));
      const expected = await oracleShards(oracle, "bigint", ids.map(String), 3);
      const c = await connectPg(target);
      try {
        for (const id of ids) {
          await c.query("INSERT INTO users (id, name) VALUES ($1, $2)", [String(id), `u${id}`]);
        }
        const placed = await placement(shards, "SELECT id FROM users");
        for (let i = 0; i < ids.length; i++) {
          assert.deepEqual(placed.get(String(ids[i])), [expected[i]], `id ${ids[i]}`);
          const r = await c.query("SELECT name FROM users WHERE id = $1", [String(ids[i])]);
          assert.deepEqual(r.rows, [{ name: `u${ids[i]}` }]);
          const named = await c.query({
            name: "user_by_id",
            text: "SELECT name FROM users WHERE id = $1",
            values: [String(ids[i])],
          });
          assert.deepEqual(named.rows, [{ name: `u${ids[i]}` }]);
          const simple = await c.query(`SELECT name FROM users WHERE id = ${ids[i]}`);
          assert.deepEqual(simple.rows, [{ name: `u${ids[i]}` }]);
        }
      } finally {
        await c.end();
      }
    });

    await t.step("text and uuid keys, binary parameters with npm:postgres", async () => {
      const texts = Array.from({ length: 40 }, (_, i) => randomText(i));
      texts.push("");
      const uuids = Array.from({ length: 40 }, () => crypto.randomUUID());
      const [textShards, uuidShards] = await Promise.all([
        oracleShards(oracle, "text", texts, 3),
        oracleShards(oracle, "uuid", uuids, 3),
      ]);
      const sql = postgres({
        host: target.host,
        port: target.port,
        user: USER,
        password: PASSWORD,
        database: DB,
        max: 2,
        onnotice: () => {},
      });
      try {
        for (const a of texts) await sql`INSERT INTO notes (author, body) VALUES (${a}, 'x')`;
        for (const u of uuids) await sql`INSERT INTO things (id, v) VALUES (${u}::uuid, 1)`;
        const hex = (t: string) =>
          [...new TextEncoder().encode(t)].map((b) => b.toString(16).padStart(2, "0")).join("");
        const placedTexts = await placement(
          shards,
          "SELECT 'x' || encode(convert_to(author, 'UTF8'), 'hex') FROM notes",
        );
        const placedUuids = await placement(shards, "SELECT id FROM things");
        for (let i = 0; i < texts.length; i++) {
          const where = placedTexts.get(`x${hex(texts[i])}`);
          assert.deepEqual(where, [textShards[i]], `author ${JSON.stringify(texts[i])}`);
          const rows = await sql`SELECT body FROM notes WHERE author = ${texts[i]}`;
          assert.equal(rows.length, 1);
        }
        for (let i = 0; i < uuids.length; i++) {
          assert.deepEqual(placedUuids.get(uuids[i]), [uuidShards[i]], `uuid ${uuids[i]}`);
          const rows = await sql`SELECT v FROM things WHERE id = ${uuids[i]}::uuid`;
          assert.equal(rows.length, 1);
        }
      } finally {
        await sql.end();
      }
    });

    await t.step(
      "IN lists, IS NOT DISTINCT FROM, aliases, OR; UPDATE and DELETE by key",
      async () => {
        const c = await connectPg(target);
        try {
          const ids = [910n, 911n, 912n, 913n, 914n, 915n];
          for (const id of ids) {
            await c.query("INSERT INTO users (id, name) VALUES ($1, 'w')", [String(id)]);
          }
          const list = ids.join(", ");
          assert.equal(
            (await c.query(`SELECT id FROM users WHERE id IN (${list})`)).rows.length,
            6,
          );
          assert.equal(
            (await c.query(`SELECT u.id FROM users AS u WHERE u.id IN (${list}) AND u.name = 'w'`))
              .rows.length,
            6,
          );
          assert.equal(
            (await c.query("SELECT id FROM users WHERE id IS NOT DISTINCT FROM 913")).rows.length,
            1,
          );
          assert.equal(
            (await c.query("SELECT id FROM users WHERE id = 910 OR id = 915")).rows.length,
            2,
          );
          const updated = await c.query("UPDATE users SET name = 'w2' WHERE id = $1", ["911"]);
          assert.equal(updated.rowCount, 1);
          const placed = await placement(shards, "SELECT id FROM users WHERE name = 'w2'");
          assert.deepEqual(placed.get("911"), [shardForBigint(911n, 3)]);
          const deleted = await c.query("DELETE FROM users WHERE id = 912");
          assert.equal(deleted.rowCount, 1);
          assert.equal((await placement(shards, "SELECT id FROM users WHERE id = 912")).size, 0);
          await assert.rejects(
            c.query("UPDATE users SET id = 1 WHERE id = 913"),
            (e: { code?: string }) => e.code === "0A000",
          );
        } finally {
          await c.end();
        }
      },
    );

    await t.step("list and range mappings", async () => {
      const c = await connectPg(target);
      try {
        const cases: Array<[number, number]> = [[1, 2], [3, 2], [100, 1], [199, 1], [200, 0], [
          -5,
          0,
        ]];
        for (const [code] of cases) {
          await c.query("INSERT INTO regions (code, label) VALUES ($1, 'r')", [code]);
        }
        for (const [code, shard] of cases) {
          const where = await holders(shards, `SELECT count(*) FROM regions WHERE code = ${code}`);
          assert.deepEqual(where, [shard], `code ${code}`);
        }
      } finally {
        await c.end();
      }
    });

    await t.step(
      "keyless SELECT returns every shard's rows; ORDER BY merges them; a window over all is refused",
      async () => {
        const c = await connectPg(target);
        try {
          const direct = (await Promise.all(
            shards.map((s) => s.sql("SELECT count(*) FROM users", { database: DB })),
          )).reduce((n, rows) => n + Number(rows[0][0]), 0);
          const all = await c.query("SELECT id FROM users");
          assert.equal(all.rows.length, direct);
          assert.equal(all.rowCount, direct);
          const extended = await c.query({
            text: "SELECT id, name FROM users WHERE name <> $1",
            values: ["none"],
          });
          assert.equal(extended.rows.length, direct);
          // Merged across shards in order (the cross-shard engine).
          const sorted = await c.query("SELECT id FROM users ORDER BY id");
          assert.equal(sorted.rows.length, direct);
          const ids = sorted.rows.map((r: { id: number }) => Number(r.id));
          assert.deepEqual(ids, [...ids].sort((a, b) => a - b));
          // A window over every shard's rows is still refused.
          await assert.rejects(
            c.query("SELECT id, row_number() OVER (ORDER BY id) FROM users"),
            (e: { code?: string }) => {
              assert.equal(e.code, "0A000");
              return true;
            },
          );
          // The connection goes on.
          assert.equal((await c.query("SELECT 1 AS one")).rows[0].one, 1);
          const updated = await c.query("UPDATE users SET name = name");
          assert.equal(updated.rowCount, direct);
        } finally {
          await c.end();
        }
      },
    );

    await t.step("a transaction across shards commits and rolls back everywhere", async () => {
      const c = await connectPg(target);
      try {
        const ids = [1001n, 1002n, 1003n, 1004n, 1005n, 1006n];
        const expected = await oracleShards(oracle, "bigint", ids.map(String), 3);
        assert.ok(new Set(expected).size > 1, "the ids span shards");
        await c.query("BEGIN");
        for (const id of ids) {
          await c.query("INSERT INTO users (id, name) VALUES ($1, 'tx')", [String(id)]);
        }
        await c.query("ROLLBACK");
        for (const id of ids) {
          assert.deepEqual(
            await holders(shards, `SELECT count(*) FROM users WHERE id = ${id}`),
            [],
          );
        }
        await c.query("BEGIN");
        for (const id of ids) {
          await c.query("INSERT INTO users (id, name) VALUES ($1, 'tx')", [String(id)]);
        }
        // Inside the transaction, every shard's part is visible through the proxy.
        const seen = await c.query("SELECT id FROM users WHERE name = 'tx'");
        assert.equal(seen.rows.length, ids.length);
        await c.query("COMMIT");
        for (let i = 0; i < ids.length; i++) {
          assert.deepEqual(
            await holders(shards, `SELECT count(*) FROM users WHERE id = ${ids[i]}`),
            [expected[i]],
          );
        }
        // No shard is left in a transaction.
        for (const s of shards) {
          const open = await s.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
            { database: DB },
          );
          assert.equal(open[0][0], "0");
        }
      } finally {
        await c.end();
      }
    });

    await t.step(
      "a client leaving mid-transaction leaves nothing behind on any shard",
      async () => {
        const ids = [2001n, 2002n, 2003n, 2004n, 2005n, 2006n];
        const c = await connectPg(target);
        await c.query("BEGIN");
        for (const id of ids) {
          await c.query("INSERT INTO users (id, name) VALUES ($1, 'left')", [String(id)]);
        }
        await c.query("SELECT id FROM users WHERE name = 'left'"); // every shard joins
        await c.end();
        const deadline = Date.now() + 5000;
        for (;;) {
          const open = await Promise.all(shards.map((s) =>
            s.sql(
              "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
              { database: DB },
            )
          ));
          if (open.every((r) => r[0][0] === "0")) break;
          assert.ok(Date.now() < deadline, "a shard stayed in the transaction");
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.deepEqual(
          await placement(shards, "SELECT id FROM users WHERE name = 'left'"),
          new Map(),
        );
      },
    );

    await t.step(
      "20 clients at once: keyed writes and reads, keyless reads, transactions",
      async () => {
        const base = 100_000;
        await Promise.all(Array.from({ length: 20 }, async (_, k) => {
          const c = await connectPg(target);
          try {
            for (let j = 0; j < 25; j++) {
              const id = base + k * 100 + j;
              if (j % 5 === 0) {
                await c.query("BEGIN");
                await c.query("INSERT INTO users (id, name) VALUES ($1, 'load')", [id]);
                await c.query("INSERT INTO users (id, name) VALUES ($1, 'load')", [id + 50]);
                await c.query("COMMIT");
              } else {
                await c.query("INSERT INTO users (id, name) VALUES ($1, 'load')", [id]);
              }
              const r = await c.query("SELECT name FROM users WHERE id = $1", [id]);
              assert.deepEqual(r.rows, [{ name: "load" }]);
              if (j % 7 === 0) {
                const all = await c.query("SELECT id FROM users WHERE name = 'load'");
                assert.ok(all.rows.length > 0);
              }
            }
          } finally {
            await c.end();
          }
        }));
        const placed = await placement(shards, `SELECT id FROM users WHERE name = 'load'`);
        assert.equal(placed.size, 20 * 25 + 20 * 5);
        for (const [id, where] of placed) {
          assert.deepEqual(where, [shardForBigint(BigInt(id), 3)], `id ${id}`);
        }
      },
    );

    await t.step("omnisharded tables: writes reach every shard and answer once", async () => {
      const c = await connectPg(target);
      try {
        const inserted = await c.query("INSERT INTO countries VALUES ('fr', 'France')");
        assert.equal(inserted.rowCount, 1);
        const params = await c.query("INSERT INTO countries VALUES ($1, $2)", ["de", "Germany"]);
        assert.equal(params.rowCount, 1);
        for (const s of shards) {
          const rows = await s.sql("SELECT code FROM countries ORDER BY code", { database: DB });
          assert.deepEqual(rows, [["de"], ["fr"]]);
        }
        const read = await c.query("SELECT name FROM countries WHERE code = 'fr'");
        assert.deepEqual(read.rows, [{ name: "France" }]);
        const updated = await c.query("UPDATE countries SET name = upper(name)");
        assert.equal(updated.rowCount, 2);
      } finally {
        await c.end();
      }
    });

    await t.step("COPY TO STDOUT from every shard; COPY FROM STDIN into every shard", async () => {
      const direct = (await Promise.all(
        shards.map((s) => s.sql("SELECT count(*) FROM users", { database: DB })),
      )).reduce((n, rows) => n + Number(rows[0][0]), 0);
      const out = await psql(target, "COPY users (id) TO STDOUT");
      assert.equal(out.code, 0, out.stderr);
      assert.equal(out.stdout.trim().split("\n").length, direct);
      // A table on every shard: every row to every shard, counted once.
      const into = await psql(target, "COPY countries FROM STDIN", { stdin: "es\tSpain\n" });
      assert.equal(into.code, 0, into.stderr);
      assert.equal(into.stdout.trim(), "COPY 1");
      for (const s of shards) {
        const rows = await s.sql("SELECT count(*) FROM countries WHERE code = 'es'", {
          database: DB,
        });
        assert.deepEqual(rows, [["1"]]);
      }
      await psql(target, "DELETE FROM countries WHERE code = 'es'");
    });

    await t.step("query_timeout cancels a statement running on every shard", async () => {
      const c = await connectPg(target);
      try {
        const started = Date.now();
        await assert.rejects(
          c.query("SELECT id FROM users WHERE pg_sleep(0.5) IS NULL"),
          (e: { code?: string; message?: string }) => {
            assert.equal(e.code, "57014");
            assert.match(e.message ?? "", /query_timeout/);
            return true;
          },
        );
        assert.ok(Date.now() - started < 8000, "canceled in time");
        assert.equal((await c.query("SELECT 1 AS one")).rows[0].one, 1);
        for (const s of shards) {
          const busy = await s.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(0.5)%' " +
              "AND state = 'active' AND pid <> pg_backend_pid()",
            { database: DB },
          );
          assert.equal(busy[0][0], "0");
        }
      } finally {
        await c.end();
      }
    });

    await t.step("DDL reaches every shard", async () => {
      const c = await connectPg(target);
      try {
        await c.query("CREATE TABLE made_by_proxy (id bigint)");
        for (const s of shards) {
          const rows = await s.sql("SELECT to_regclass('made_by_proxy') IS NOT NULL", {
            database: DB,
          });
          assert.equal(rows[0][0], "t");
        }
        await assert.rejects(
          c.query("CREATE TABLE made_by_proxy (id bigint)"),
          (e: { code?: string }) => {
            assert.equal(e.code, "42P07");
            return true;
          },
        );
      } finally {
        await c.end();
      }
    });

    await t.step("schema sharding: qualified names, search_path, SET LOCAL", async () => {
      const c = await connectPg(target);
      try {
        await c.query("CREATE TABLE tenant_b.made_here (id int)");
        const made = await Promise.all(
          shards.map((s) =>
            s.sql("SELECT to_regclass('tenant_b.made_here') IS NOT NULL", { database: DB })
          ),
        );
        assert.deepEqual(made.map((r) => r[0][0]), ["f", "f", "t"]);
        await c.query("INSERT INTO tenant_a.items VALUES (1)");
        await c.query("SET search_path TO tenant_b, public");
        await c.query("INSERT INTO items VALUES (2)");
        await c.query("RESET search_path");
        await c.query("BEGIN");
        await c.query("SET LOCAL search_path TO tenant_a");
        await c.query("INSERT INTO items VALUES (3)");
        await c.query("COMMIT");
        assert.deepEqual(
          await holders(shards, "SELECT count(*) FROM tenant_a.items WHERE id = 1"),
          [1],
        );
        assert.deepEqual(
          await holders(shards, "SELECT count(*) FROM tenant_b.items WHERE id = 2"),
          [2],
        );
        assert.deepEqual(
          await holders(shards, "SELECT count(*) FROM tenant_a.items WHERE id = 3"),
          [1],
        );
      } finally {
        await c.end();
      }
    });

    await t.step("pgdog.unique_id(): answered by pgdog, and a key in INSERT VALUES", async () => {
      const clients: pg.Client[] = await Promise.all(
        Array.from({ length: 4 }, () => connectPg(target)),
      );
      try {
        const seen = new Set<string>();
        let last = 0n;
        for (let round = 0; round < 50; round++) {
          const ids: string[] = await Promise.all(
            clients.map(async (c) => (await c.query("SELECT pgdog.unique_id()")).rows[0].unique_id),
          );
          for (const id of ids) {
            assert.ok(!seen.has(String(id)), `id ${id} repeated`);
            seen.add(String(id));
          }
          const max = ids.map((x) => BigInt(x)).reduce((a, b) => a > b ? a : b);
          assert.ok(max > last, "ids increase over time");
          last = max;
        }
        const c = clients[0];
        for (let i = 0; i < 10; i++) {
          await c.query("INSERT INTO users (id, name) VALUES (pgdog.unique_id(), 'generated')");
        }
        const found = await Promise.all(
          shards.map((s) =>
            s.sql("SELECT id FROM users WHERE name = 'generated'", { database: DB })
          ),
        );
        const placed = found.flatMap((rows, shard) => rows.map((r) => [r[0], shard] as const));
        assert.equal(placed.length, 10);
        const expected = await oracleShards(oracle, "bigint", placed.map(([id]) => id), 3);
        assert.deepEqual(placed.map(([, shard]) => shard), expected);
      } finally {
        await Promise.all(clients.map((c) => c.end()));
      }
    });

    await t.step("manual routing: comments and SET pgdog.shard / pgdog.sharding_key", async () => {
      const c = await connectPg(target);
      try {
        await c.query(
          "/* pgdog_shard: 2 */ INSERT INTO regions (code, label) VALUES (5000, 'manual')",
        );
        assert.deepEqual(await holders(shards, "SELECT count(*) FROM regions WHERE code = 5000"), [
          2,
        ]);
        await c.query("SET pgdog.shard TO 1");
        await c.query("INSERT INTO regions (code, label) VALUES (5001, 'manual')");
        await c.query("RESET pgdog.shard");
        assert.deepEqual(await holders(shards, "SELECT count(*) FROM regions WHERE code = 5001"), [
          1,
        ]);
        const [key] = await oracleShards(oracle, "bigint", ["777"], 3);
        await c.query("SET pgdog.sharding_key TO '777'");
        await c.query("INSERT INTO regions (code, label) VALUES (5002, 'manual')");
        await c.query("RESET pgdog.sharding_key");
        assert.deepEqual(await holders(shards, "SELECT count(*) FROM regions WHERE code = 5002"), [
          key,
        ]);
        const r = await c.query("SHOW pgdog.shards");
        assert.equal(Number(r.rows[0].shards), 3);
      } finally {
        await c.end();
      }
    });
  });
});

Deno.test("sharding: 2 shards, keys of every type, where PostgreSQL puts them", async () => {
  const { shards, oracle } = await startShards(2);
  await using _o = oracle;
  await using _s0 = shards[0];
  await using _s1 = shards[1];
  for (const s of shards) {
    await s.sql(
      "CREATE TABLE a (k bigint, v text); CREATE TABLE b (k text, v text); " +
        "CREATE TABLE c (k uuid, v text);",
      { database: DB },
    );
  }
  await using proxy = await startProxy({
    config: {
      general: { idle_healthcheck_interval: 0 },
      databases: databases(shards),
      sharded_tables: [
        { database: DB, name: "a", column: "k" },
        { database: DB, name: "b", column: "k", data_type: "varchar" },
        { database: DB, name: "c", column: "k", data_type: "uuid" },
      ],
    },
    users: { users: [{ name: USER, password: PASSWORD, database: DB }] },
  });
  await dumpLogsOnFailure(proxy, async () => {
    const keys: Record<string, string[]> = {
      a: Array.from({ length: 50 }, (_, i) => String(BigInt(i) * 1_000_003n - 25_000_000n)),
      b: Array.from({ length: 50 }, (_, i) => randomText(i + 7)),
      c: Array.from({ length: 50 }, () => crypto.randomUUID()),
    };
    const types: Record<string, string> = { a: "bigint", b: "text", c: "uuid" };
    const c = await connectPg(proxy.target({ user: USER, password: PASSWORD, database: DB }));
    try {
      for (const table of ["a", "b", "c"]) {
        const expected = await oracleShards(oracle, types[table], keys[table], 2);
        for (const k of keys[table]) {
          await c.query(`INSERT INTO ${table} (k, v) VALUES ($1, 'x')`, [k]);
        }
        const placed = await placement(
          shards,
          `SELECT 'x' || encode(convert_to(k::text, 'UTF8'), 'hex') FROM ${table}`,
        );
        const hex = (t: string) =>
          [...new TextEncoder().encode(t)].map((b) => b.toString(16).padStart(2, "0")).join("");
        keys[table].forEach((k, i) => {
          assert.deepEqual(placed.get(`x${hex(k)}`), [expected[i]], `${table} key ${k}`);
        });
        // Keyed reads find each row; a keyless read finds them all.
        for (const k of keys[table].slice(0, 10)) {
          const r = await c.query(`SELECT v FROM ${table} WHERE k = $1`, [k]);
          assert.equal(r.rows.length, 1, `${table} key ${k}`);
        }
        assert.equal((await c.query(`SELECT k FROM ${table}`)).rows.length, keys[table].length);
      }
    } finally {
      await c.end();
    }
  });
});
