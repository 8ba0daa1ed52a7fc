/**
 * `[rewrite] non_deterministic_functions = "rewrite"`: a write to an omnisharded table (every
 * shard runs it) that calls now(), random(), gen_random_uuid(), current_date... stores the same
 * values on every shard, in the simple and extended protocol (unnamed and named statements, with
 * Bind parameters), INSERT and UPDATE, and inside a transaction now() is the same for every
 * statement. Without the setting each shard computes its own (the check can fail). DDL keeps its
 * DEFAULT now(); a read is untouched.
 */

import assert from "node:assert/strict";
import { connectPg, connectPostgresJs, dumpLogsOnFailure, startSharded } from "./harness/mod.ts";
import type { ShardedSetup } from "./harness/sharded.ts";

const SCHEMA = `
CREATE TABLE users (id bigint PRIMARY KEY, email text, ts timestamptz);
CREATE TABLE omni (
  id int PRIMARY KEY, ts timestamptz, r float8, u uuid, d date, lt timestamp(3), st timestamptz
);
`;

const COLUMNS = "id, ts, r, u, d, lt, st";

/** Every shard's rows of omni (id, then values), as text; asserts the shards agree. */
async function sameEverywhere(setup: ShardedSetup, where = "true"): Promise<string[][]> {
  const sql = `SELECT ${COLUMNS} FROM omni WHERE ${where} ORDER BY id`;
  const first = await setup.onShard(0, sql);
  for (let i = 1; i < setup.shards.length; i++) {
    assert.deepEqual(await setup.onShard(i, sql), first, `shard ${i} differs from shard 0`);
  }
  return first;
}

const INSERT_ALL = "INSERT INTO omni VALUES " +
  "($1, now(), random(), gen_random_uuid(), current_date, localtimestamp(3), statement_timestamp())";

Deno.test("non_deterministic_functions = rewrite: every shard stores the same values", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    omnisharded: ["omni"],
    schema: SCHEMA,
    extra: { rewrite: { enabled: true, non_deterministic_functions: "rewrite" } },
  });
  const dog = await connectPg(setup.target);
  try {
    await dumpLogsOnFailure(setup.proxy, async () => {
      await t.step("INSERT, simple protocol", async () => {
        await dog.query(INSERT_ALL.replace("$1", "1"));
        const rows = await sameEverywhere(setup, "id = 1");
        assert.equal(rows.length, 1);
        assert.ok(rows[0].every((v) => v !== ""), JSON.stringify(rows));
      });

      await t.step("INSERT, extended protocol: unnamed and named statements", async () => {
        await dog.query(INSERT_ALL, [2]);
        await dog.query({ name: "ins", text: INSERT_ALL, values: [3] });
        await dog.query({ name: "ins", text: INSERT_ALL, values: [4] });
        const rows = await sameEverywhere(setup, "id IN (2, 3, 4)");
        assert.equal(rows.length, 3);
        // Each execution gets its own values.
        assert.notEqual(rows[1][2], rows[2][2]);
        assert.notEqual(rows[1][3], rows[2][3]);
      });

      await t.step("UPDATE, simple and extended, with clock_timestamp() and a uuid", async () => {
        await dog.query(
          "UPDATE omni SET r = random(), u = gen_random_uuid(), ts = clock_timestamp() WHERE id <= 2",
        );
        await dog.query("UPDATE omni SET r = random() * $1, d = current_date - 1 WHERE id > 2", [
          10,
        ]);
        const rows = await sameEverywhere(setup);
        assert.equal(rows.length, 4);
      });

      await t.step("inside a transaction: one now() for every statement", async () => {
        await dog.query("BEGIN");
        await dog.query("INSERT INTO omni (id, ts, r) VALUES (10, now(), random())");
        await new Promise((r) => setTimeout(r, 50));
        await dog.query("INSERT INTO omni (id, ts, r) VALUES ($1, current_timestamp, random())", [
          11,
        ]);
        await dog.query("UPDATE omni SET st = statement_timestamp() WHERE id >= 10");
        await dog.query("COMMIT");
        const rows = await sameEverywhere(setup, "id >= 10");
        assert.equal(rows.length, 2);
        assert.equal(rows[0][1], rows[1][1], "now() is the transaction's");
        assert.notEqual(rows[0][2], rows[1][2], "random() is per call");
        // The next transaction has its own now().
        await new Promise((r) => setTimeout(r, 20));
        await dog.query("BEGIN");
        await dog.query("INSERT INTO omni (id, ts) VALUES (12, now())");
        await dog.query("COMMIT");
        const [next] = await sameEverywhere(setup, "id = 12");
        assert.notEqual(next[1], rows[0][1]);
      });

      await t.step(
        "a multi-statement query; DDL keeps DEFAULT now(); reads untouched",
        async () => {
          await dog.query(
            "INSERT INTO omni (id, ts) VALUES (20, now()); INSERT INTO omni (id, ts) VALUES (21, now())",
          );
          const rows = await sameEverywhere(setup, "id IN (20, 21)");
          assert.equal(rows[0][1], rows[1][1], "one implicit transaction, one now()");
          await dog.query("CREATE TABLE omni_ddl (id int, at timestamptz DEFAULT now())");
          const def = await setup.onShard(
            1,
            "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'omni_ddl'::regclass",
          );
          assert.deepEqual(def, [["now()"]]);
          const read = await dog.query("SELECT now() AS n, random() AS r");
          assert.equal(read.rows.length, 1);
        },
      );

      await t.step("postgres.js: prepared statements, in and out of a transaction", async () => {
        const sql = connectPostgresJs(setup.target, { prepare: true, max: 1 });
        try {
          for (const id of [40, 41]) {
            await sql`INSERT INTO omni (id, ts, r, u) VALUES (${id}, now(), random(), gen_random_uuid())`;
          }
          await sql.begin(async (tx) => {
            await tx`INSERT INTO omni (id, ts, r) VALUES (${42}, now(), random())`;
            await tx`UPDATE omni SET u = gen_random_uuid(), st = now() WHERE id = ${42}`;
          });
        } finally {
          await sql.end();
        }
        const rows = await sameEverywhere(setup, "id BETWEEN 40 AND 42");
        assert.equal(rows.length, 3);
        assert.notEqual(rows[0][3], rows[1][3]);
        // (A BEGIN held back while an idle server is attached: still the transaction's now().)
        assert.equal(rows[2][1], rows[2][6], "one now() in the transaction");
      });

      await t.step(
        "a sharded table's rows on several shards: one now(), a uuid per row",
        async () => {
          for (let id = 1; id <= 9; id++) {
            await dog.query("INSERT INTO users (id) VALUES ($1)", [id]);
          }
          await dog.query("UPDATE users SET ts = now(), email = gen_random_uuid()::text");
          const perShard = await Promise.all(
            setup.shards.map((_, i) => setup.onShard(i, "SELECT ts, email FROM users")),
          );
          assert.ok(perShard.filter((r) => r.length > 0).length >= 2, "rows on several shards");
          const rows = perShard.flat();
          assert.equal(rows.length, 9);
          assert.equal(
            new Set(rows.map((r) => r[0])).size,
            1,
            "one now() on every shard",
          );
          assert.equal(new Set(rows.map((r) => r[1])).size, 9, "gen_random_uuid() per row");
        },
      );

      await t.step(
        "a transaction on one shard first: the omnisharded write gets its now()",
        async () => {
          await dog.query("BEGIN");
          await dog.query("INSERT INTO users (id, ts) VALUES (100, now())");
          await new Promise((r) => setTimeout(r, 50));
          await dog.query("INSERT INTO omni (id, ts) VALUES (60, now())");
          await dog.query("COMMIT");
          const [omni] = await sameEverywhere(setup, "id = 60");
          const user = (await dog.query("SELECT ts::text AS ts FROM users WHERE id = 100")).rows[0];
          const [own] = (await setup.placement("SELECT ts FROM users WHERE id = 100")).keys();
          assert.equal(
            omni[1],
            own,
            `omnisharded ${omni[1]}, the shard's own ${JSON.stringify(user)}`,
          );
        },
      );

      await t.step("a function pgdog can't compute is an error of the statement", async () => {
        await assert.rejects(
          dog.query("INSERT INTO omni (id, u) VALUES (30, uuid_generate_v4())"),
          /uuid_generate_v4/,
        );
        const after = await sameEverywhere(setup, "id = 30");
        assert.equal(after.length, 0);
        // Inside a transaction it fails the transaction, as PostgreSQL's error would.
        await dog.query("BEGIN");
        await assert.rejects(
          dog.query("INSERT INTO omni (id, u) VALUES (32, uuid_generate_v4())"),
          /uuid_generate_v4/,
        );
        await assert.rejects(dog.query("SELECT 1"), (e: { code?: string }) => e.code === "25P02");
        await dog.query("COMMIT");
        assert.equal((await sameEverywhere(setup, "id = 32")).length, 0);
      });
    });
  } finally {
    await dog.end();
  }
});

Deno.test("non_deterministic_functions = ignore (default): each shard has its own", async () => {
  await using setup = await startSharded({
    shards: 2,
    shardedTables: [{ name: "users", column: "id" }],
    omnisharded: ["omni"],
    schema: SCHEMA,
  });
  const dog = await connectPg(setup.target);
  try {
    await dumpLogsOnFailure(setup.proxy, async () => {
      await dog.query(INSERT_ALL.replace("$1", "1"));
      await dog.query(INSERT_ALL, [2]);
      await assert.rejects(sameEverywhere(setup), /differs/);
    });
  } finally {
    await dog.end();
  }
});
