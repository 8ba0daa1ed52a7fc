/**
 * `cross_shard_disabled` ([general], or per user in users.toml, which overrides it): a query
 * that would run on several shards is refused with PgDog's 58000 "cross-shard queries are
 * disabled"; queries with a sharding key, reads of omnisharded tables, writes to them (one
 * answer) and session commands still run. Simple and extended protocol; the connection, and a
 * transaction around a refused query, carry on (the query never reached a shard).
 */

import assert from "node:assert/strict";
import {
  answerOf,
  connectPg,
  dumpLogsOnFailure,
  SHARDED_DB,
  SHARDED_PASSWORD,
  SHARDED_USER,
  startProxy,
  startSharded,
} from "./harness/mod.ts";
import type pg from "pg";

const SCHEMA = `
CREATE TABLE users (id bigint PRIMARY KEY, email text);
CREATE TABLE countries (code text PRIMARY KEY, name text);
`;

async function expectDisabled(dog: pg.Client, sql: string): Promise<void> {
  for (const protocol of ["simple", "extended"] as const) {
    const a = await answerOf(dog, sql, { protocol });
    assert.equal(a.error, "58000", `${protocol}: ${sql}: ${JSON.stringify(a)}`);
    assert.equal(a.message, "cross-shard queries are disabled");
  }
}

async function expectRuns(dog: pg.Client, sql: string): Promise<void> {
  for (const protocol of ["simple", "extended"] as const) {
    const a = await answerOf(dog, sql, { protocol });
    assert.equal(a.error, undefined, `${protocol}: ${sql}: ${a.message}`);
  }
}

Deno.test("cross_shard_disabled: queries for several shards are refused (58000), others run", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    omnisharded: ["countries"],
    schema: SCHEMA,
    general: { cross_shard_disabled: true },
  });
  const dog = await connectPg(setup.target);
  try {
    await dumpLogsOnFailure(setup.proxy, async () => {
      await t.step("without a sharding key: refused", async () => {
        for (let id = 1; id <= 6; id++) {
          await dog.query("INSERT INTO users VALUES ($1, $2)", [id, `u${id}`]);
        }
        await expectDisabled(dog, "SELECT count(*) FROM users");
        await expectDisabled(dog, "SELECT id FROM users ORDER BY id");
        await expectDisabled(dog, "SELECT id FROM users");
        await expectDisabled(dog, "UPDATE users SET email = email");
        await expectDisabled(dog, "SELECT id FROM users WHERE id IN (1, 2, 3, 4, 5, 6)");
      });

      await t.step("one shard, omnisharded tables, session commands: they run", async () => {
        await expectRuns(dog, "SELECT id, email FROM users WHERE id = 3");
        await expectRuns(
          dog,
          "INSERT INTO countries VALUES ('fr', 'France') ON CONFLICT (code) DO NOTHING",
        );
        await expectRuns(dog, "SELECT name FROM countries WHERE code = 'fr'");
        await expectRuns(dog, "SET application_name = 'x'");
        await expectRuns(dog, "SELECT 1");
        const r = await dog.query("SELECT email FROM users WHERE id = 4");
        assert.deepEqual(r.rows, [{ email: "u4" }]);
      });

      await t.step("inside a transaction: refused, the transaction fails", async () => {
        await dog.query("BEGIN");
        await dog.query("SELECT email FROM users WHERE id = 1");
        const a = await answerOf(dog, "SELECT count(*) FROM users", { protocol: "simple" });
        assert.equal(a.error, "58000");
        // As PostgreSQL's own error would, the refusal fails the transaction.
        const after = await answerOf(dog, "SELECT email FROM users WHERE id = 1", {
          protocol: "simple",
        });
        assert.equal(after.error, "25P02");
        await dog.query("ROLLBACK");
        await expectRuns(dog, "SELECT email FROM users WHERE id = 2");
      });
    });

    await t.step("a user's own cross_shard_disabled = false overrides [general]", async () => {
      const proxy = await startProxy({
        config: {
          general: { idle_healthcheck_interval: 0, cross_shard_disabled: true },
          databases: setup.shards.map((s, i) => ({
            name: SHARDED_DB,
            host: s.host,
            port: s.port,
            database_name: SHARDED_DB,
            shard: i,
          })),
          sharded_tables: [{ database: SHARDED_DB, name: "users", column: "id" }],
        },
        users: {
          users: [{
            name: SHARDED_USER,
            password: SHARDED_PASSWORD,
            database: SHARDED_DB,
            cross_shard_disabled: false,
          }],
        },
      });
      try {
        const other = await connectPg(
          proxy.target({ user: SHARDED_USER, password: SHARDED_PASSWORD, database: SHARDED_DB }),
        );
        try {
          const r = await other.query("SELECT count(*) AS n FROM users");
          assert.deepEqual(r.rows, [{ n: "6" }]);
        } finally {
          await other.end();
        }
      } finally {
        await proxy.stop();
      }
    });
  } finally {
    await dog.end();
  }
});
