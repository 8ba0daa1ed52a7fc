/**
 * Requests that hold several statements, on 3 shards: each statement goes to its own shard as if
 * it had been sent alone, and the client gets PostgreSQL's one answer, with its rules for the
 * implicit transaction such a request runs in. Every placement is checked on the shards directly,
 * every answer against one plain PostgreSQL database holding the same rows.
 *
 * - multi-statement simple queries (npm:pg, psql): rows land once on their shard; an error rolls
 *   back the statements before it and skips the rest; COMMIT and BEGIN inside the request;
 * - pipelined extended-protocol requests (psycopg pipeline mode and executemany, npm:pg queued
 *   queries): each execution reaches its own shard, results in order, an error skips to Sync and
 *   rolls back the pipeline;
 * - savepoints taken before a shard joins the transaction are there when it rolls back to them;
 * - PgDog's integration/pgbench/sharded.sql with pools smaller than the client count, in every
 *   protocol: no client waits for one shard while holding another, nothing stays checked out.
 */

import assert from "node:assert/strict";
import {
  answerOf,
  connectPg,
  dumpLogsOnFailure,
  pgbench,
  psql,
  runPsycopg,
  type ShardedSetup,
  startSharded,
} from "./harness/mod.ts";
import { shardForBigint } from "../src/sharding/hash.ts";

const SCHEMA = `
  CREATE TABLE users (id bigint PRIMARY KEY, email text);
  CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint, amount int);
`;

/** Where each id is (asked of every shard), and where PostgreSQL's hash puts it. */
async function assertPlaced(setup: ShardedSetup, table: string, ids: number[]): Promise<void> {
  const placed = await setup.placement(`SELECT id FROM ${table}`);
  for (const id of ids) {
    assert.deepEqual(placed.get(String(id)), [shardForBigint(BigInt(id), 3)], `${table} id ${id}`);
  }
  assert.equal(placed.size, ids.length, `${table}: ${[...placed.keys()]} (expected ${ids})`);
}

/** The ids in `table` on the reference database. */
async function referenceIds(setup: ShardedSetup, table: string): Promise<number[]> {
  const rows = await setup.reference.sql(`SELECT id FROM ${table} ORDER BY id`, {
    database: "app",
  });
  return rows.map((r) => Number(r[0]));
}

/** Runs `sql` through pgdog and on the reference with npm:pg's simple protocol; same answer. */
async function bothSimple(setup: ShardedSetup, sql: string): Promise<unknown> {
  const dog = await connectPg(setup.target);
  const ref = await connectPg(setup.referenceTarget);
  try {
    const a = await answerOf(dog, sql, { protocol: "simple" });
    const b = await answerOf(ref, sql, { protocol: "simple" });
    if (b.error) assert.equal(a.error, b.error, `${sql}: ${a.message}`);
    else assert.deepEqual(a, b, sql);
    return a;
  } finally {
    await dog.end();
    await ref.end();
  }
}

async function clean(setup: ShardedSetup): Promise<void> {
  await setup.everywhere("TRUNCATE users, orders");
}

Deno.test("requests with several statements on shards", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }, { name: "orders", column: "user_id" }],
    schema: SCHEMA,
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    await t.step("multi-statement INSERTs: each row once, on its shard", async () => {
      await clean(setup);
      // 7 and 8 hash to different shards.
      assert.notEqual(shardForBigint(7n, 3), shardForBigint(8n, 3));
      await bothSimple(
        setup,
        "INSERT INTO users (id, email) VALUES (7, 'g'); INSERT INTO users (id, email) VALUES (8, 'h');",
      );
      await bothSimple(
        setup,
        "BEGIN; INSERT INTO users (id, email) VALUES (1, 'a'); " +
          "INSERT INTO users (id, email) VALUES (2, 'b'); COMMIT;",
      );
      await assertPlaced(setup, "users", [1, 2, 7, 8]);
      // Reads of several shards in one request, in order.
      await bothSimple(
        setup,
        "SELECT email FROM users WHERE id = 1; SELECT email FROM users WHERE id = 8; " +
          "SELECT email FROM users WHERE id = 2",
      );
      const r = await psql(
        setup.target,
        "SELECT email FROM users WHERE id = 7; SELECT email FROM users WHERE id = 1",
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "g\na\n");
    });

    await t.step(
      "a long multi-statement query (parsed off the event loop) is cut too",
      async () => {
        await clean(setup);
        const ids = Array.from({ length: 300 }, (_, i) => 1000 + i);
        const sql = ids.map((id) =>
          `INSERT INTO users (id, email) VALUES (${id}, 'user-${id}@example.com')`
        )
          .join("; ");
        assert.ok(sql.length > 16 * 1024);
        await bothSimple(setup, sql);
        await assertPlaced(setup, "users", ids);
      },
    );

    await t.step(
      "statements merged across shards each run alone in a multi-statement query",
      async () => {
        await clean(setup);
        await bothSimple(
          setup,
          "INSERT INTO users (id, email) VALUES (1, 'a'); INSERT INTO users (id, email) VALUES " +
            "(2, 'b'); INSERT INTO users (id, email) VALUES (7, 'g'); " +
            "INSERT INTO users (id, email) VALUES (8, 'h')",
        );
        await bothSimple(
          setup,
          "SELECT count(*) FROM users; SELECT email FROM users ORDER BY email DESC LIMIT 3; " +
            "SELECT max(id), min(email) FROM users",
        );
        // In the request's transaction: the merge sees the rows it wrote.
        await bothSimple(
          setup,
          "INSERT INTO users (id, email) VALUES (3, 'c'); SELECT count(*), max(email) FROM users",
        );
      },
    );

    await t.step("an error rolls back the request's implicit transaction", async () => {
      await clean(setup);
      const failing = "INSERT INTO users (id, email) VALUES (3, 'c'); " +
        "INSERT INTO users (id, email) VALUES (4, 'd'); SELECT 1/0; " +
        "INSERT INTO users (id, email) VALUES (5, 'e')";
      const a = await bothSimple(setup, failing) as { error?: string };
      assert.equal(a.error, "22012");
      await assertPlaced(setup, "users", []);
      // COMMIT inside the request commits what came before; what follows is a new transaction.
      await bothSimple(
        setup,
        "INSERT INTO users (id, email) VALUES (3, 'c'); COMMIT; " +
          "INSERT INTO users (id, email) VALUES (4, 'd'); SELECT 1/0",
      );
      await assertPlaced(setup, "users", await referenceIds(setup, "users"));
      assert.deepEqual(await referenceIds(setup, "users"), [3]);
      // The connection goes on normally after an error.
      await bothSimple(setup, "SELECT count(*) FROM users WHERE id = 3");
    });

    await t.step("BEGIN inside the request makes its transaction explicit", async () => {
      await clean(setup);
      const dog = await connectPg(setup.target);
      const ref = await connectPg(setup.referenceTarget);
      try {
        for (const c of [dog, ref]) {
          await c.query(
            "INSERT INTO users (id, email) VALUES (7, 'g'); BEGIN; " +
              "INSERT INTO users (id, email) VALUES (8, 'h')",
          );
          // Still in the transaction: nothing is visible from outside yet.
          await c.query("ROLLBACK");
        }
      } finally {
        await dog.end();
        await ref.end();
      }
      await assertPlaced(setup, "users", []);
      assert.deepEqual(await referenceIds(setup, "users"), []);
    });

    await t.step("a COMMIT sent with another statement reaches every shard held", async () => {
      await clean(setup);
      for (const target of [setup.target, setup.referenceTarget]) {
        const c = await connectPg(target);
        try {
          await c.query("BEGIN");
          await c.query("INSERT INTO users (id, email) VALUES (1, 'a')");
          await c.query("INSERT INTO users (id, email) VALUES (8, 'h')");
          await c.query("SELECT 1; COMMIT");
        } finally {
          await c.end();
        }
      }
      assert.deepEqual(await referenceIds(setup, "users"), [1, 8]);
      await assertPlaced(setup, "users", [1, 8]);
    });

    await t.step("psycopg: a pipeline's executions each reach their own shard", async () => {
      await clean(setup);
      const load = "INSERT INTO orders (id, user_id, amount) VALUES " +
        "(1, 1, 10), (2, 2, 20), (3, 2, 21), (4, 3, 30), (5, 3, 31), (6, 3, 32)";
      await setup.reference.sql(load, { database: "app" });
      for (const [id, user, amount] of [[1, 1, 10], [2, 2, 20], [3, 2, 21], [4, 3, 30]]) {
        await psql(
          setup.target,
          `INSERT INTO orders (id, user_id, amount) VALUES (${id}, ${user}, ${amount})`,
        );
      }
      await psql(setup.target, "INSERT INTO orders (id, user_id, amount) VALUES (5, 3, 31)");
      await psql(setup.target, "INSERT INTO orders (id, user_id, amount) VALUES (6, 3, 32)");
      const script = `
with psycopg.connect(DSN) as conn:
    with conn.pipeline():
        curs = [conn.execute(
            "SELECT user_id, count(*) FROM orders WHERE user_id = %s GROUP BY user_id", [k])
            for k in (2, 3, 1)]
    rows = [c.fetchall() for c in curs]
print(json.dumps(rows))
`;
      const expected = await runPsycopg(setup.referenceTarget, script);
      const actual = await runPsycopg(setup.target, script);
      assert.deepEqual(actual, expected);
      assert.deepEqual(actual, [[[2, 2]], [[3, 3]], [[1, 1]]]);
    });

    await t.step(
      "psycopg: a pipeline mixing merged cross-shard reads and keyed writes",
      async () => {
        await clean(setup);
        for (const target of [setup.referenceTarget, setup.target]) {
          for (const [id, user, amount] of [[1, 1, 10], [2, 2, 20], [3, 2, 21], [4, 3, 30]]) {
            await psql(
              target,
              `INSERT INTO orders (id, user_id, amount) VALUES (${id}, ${user}, ${amount})`,
            );
          }
        }
        // Pipelined as psycopg sends them: each merged statement runs alone, in order, in the
        // pipeline's implicit transaction (the merge sees the row written before it).
        const script = `
with psycopg.connect(DSN) as conn:
    with conn.pipeline():
        a = conn.execute("SELECT count(*), sum(amount) FROM orders")
        conn.execute("INSERT INTO orders (id, user_id, amount) VALUES (%s, %s, %s)", [5, 3, 31])
        b = conn.execute("SELECT user_id, max(amount) FROM orders GROUP BY user_id ORDER BY user_id")
        c = conn.execute("SELECT amount FROM orders ORDER BY amount DESC LIMIT %s", [2])
        d = conn.execute("SELECT amount FROM orders WHERE user_id = %s ORDER BY amount", [2])
    rows = [[list(r) for r in x.fetchall()] for x in (a, b, c, d)]
print(json.dumps(rows, default=str))
`;
        const expected = await runPsycopg(setup.referenceTarget, script);
        const actual = await runPsycopg(setup.target, script) as unknown[][];
        assert.deepEqual(actual, expected);
        assert.deepEqual(actual[0], [[4, 81]], "the first read, before the write");
        assert.equal(actual[1].length, 3, "three users' groups, the new row's included");
        // The pipelined write is on its user's shard, once.
        const placed = await setup.placement("SELECT id FROM orders WHERE id = 5");
        assert.deepEqual(placed.get("5"), [shardForBigint(3n, 3)]);
      },
    );

    await t.step("psycopg executemany: rows on their shards; a failure undoes all", async () => {
      await clean(setup);
      const ids = [100, 101, 102, 103, 104, 105, 7, 8];
      const script = `
with psycopg.connect(DSN, autocommit=True) as conn:
    cur = conn.cursor()
    cur.executemany("INSERT INTO users (id, email) VALUES (%s, %s)",
                    [(i, 'e%d' % i) for i in ${JSON.stringify(ids)}])
    err = None
    try:
        cur.executemany("INSERT INTO users (id, email) VALUES (%s, %s)",
                        [(200, 'x'), (201, 'y'), (100, 'dup'), (202, 'z')])
    except psycopg.Error as e:
        err = e.sqlstate
print(json.dumps(err))
`;
      const ref = await runPsycopg(setup.referenceTarget, script);
      const dog = await runPsycopg(setup.target, script);
      assert.equal(ref, "23505");
      assert.equal(dog, ref);
      assert.deepEqual(await referenceIds(setup, "users"), [...ids].sort((a, b) => a - b));
      await assertPlaced(setup, "users", ids);
    });

    await t.step("npm:pg queued queries and extended pipelines land on their shards", async () => {
      await clean(setup);
      const c = await connectPg(setup.target);
      try {
        const ids = [11, 12, 13, 14, 15, 16];
        await Promise.all(
          ids.map((id) => c.query("INSERT INTO users (id, email) VALUES ($1, $2)", [id, `u${id}`])),
        );
        const back = await Promise.all(
          ids.map((id) => c.query("SELECT email FROM users WHERE id = $1", [id])),
        );
        assert.deepEqual(
          back.map((r: { rows: Array<{ email?: string }> }) => r.rows[0]?.email),
          ids.map((id) => `u${id}`),
        );
        await assertPlaced(setup, "users", ids);
      } finally {
        await c.end();
      }
    });

    await t.step(
      "a transaction that failed on one shard fails on all: COMMIT rolls back",
      async () => {
        await clean(setup);
        const answers: unknown[][] = [];
        for (const target of [setup.target, setup.referenceTarget]) {
          const c = await connectPg(target);
          const seen: unknown[] = [];
          try {
            await c.query("BEGIN");
            await c.query("INSERT INTO users (id, email) VALUES (1, 'a')");
            await c.query("INSERT INTO users (id, email) VALUES (8, 'h')");
            // Fails on 8's shard only (the row exists there).
            for (
              const sql of [
                "INSERT INTO users (id, email) VALUES (8, 'again')",
                "INSERT INTO users (id, email) VALUES (2, 'b')",
                "SELECT email FROM users WHERE id = 1",
              ]
            ) {
              seen.push(await c.query(sql).then(() => "ok", (e: { code?: string }) => e.code));
            }
            seen.push((await c.query("COMMIT")).command);
          } finally {
            await c.end();
          }
          answers.push(seen);
        }
        assert.deepEqual(answers[0], ["23505", "25P02", "25P02", "ROLLBACK"]);
        assert.deepEqual(answers[0], answers[1]);
        await assertPlaced(setup, "users", []);
      },
    );

    await t.step("a savepoint taken before a shard joins is there to roll back to", async () => {
      await clean(setup);
      // 1 and 8 live on different shards; the transaction reaches 8's shard after SAVEPOINT.
      assert.notEqual(shardForBigint(1n, 3), shardForBigint(8n, 3));
      const steps = [
        "BEGIN",
        "INSERT INTO users (id, email) VALUES (1, 'a')",
        "SAVEPOINT s1",
        "INSERT INTO users (id, email) VALUES (8, 'h')",
        "ROLLBACK TO SAVEPOINT s1",
        "INSERT INTO users (id, email) VALUES (7, 'g')",
        "SAVEPOINT s2",
        "INSERT INTO users (id, email) VALUES (2, 'b')",
        "RELEASE SAVEPOINT s2",
        "COMMIT",
      ];
      for (const target of [setup.target, setup.referenceTarget]) {
        for (const extended of [false, true]) {
          const c = await connectPg(target);
          try {
            await c.query("TRUNCATE users");
            for (const s of steps) {
              if (extended) await c.query({ text: s, values: [] });
              else await c.query(s);
            }
          } finally {
            await c.end();
          }
        }
      }
      assert.deepEqual(await referenceIds(setup, "users"), [1, 2, 7]);
      await assertPlaced(setup, "users", [1, 2, 7]);
      // Savepoints of a transaction that has not reached any shard yet.
      const c = await connectPg(setup.target);
      try {
        await c.query("BEGIN");
        await c.query("SAVEPOINT early");
        await c.query("INSERT INTO users (id, email) VALUES (8, 'h')");
        await c.query("ROLLBACK TO SAVEPOINT early");
        await c.query("INSERT INTO users (id, email) VALUES (13, 'm')");
        await c.query("COMMIT");
      } finally {
        await c.end();
      }
      await assertPlaced(setup, "users", [1, 2, 7, 13]);
    });
  });
});

Deno.test("PgDog's sharded pgbench script with small pools, every protocol", async (t) => {
  await using setup = await startSharded({
    shards: 2,
    shardedTables: [{ name: "sharded", column: "id" }],
    general: { default_pool_size: 2, checkout_timeout: 5000 },
    extra: { admin: { password: "admin-pw" } },
    schema: "CREATE TABLE sharded (id bigint PRIMARY KEY, value text);",
  });
  const script = await Deno.makeTempFile({ suffix: ".sql" });
  await Deno.writeTextFile(
    script,
    `\\set id (1021 * random(1, 10000000))
BEGIN;
INSERT INTO sharded (id, value) VALUES (:id, 'some value') RETURNING *;
SELECT * FROM sharded WHERE id = :id AND value = 'some value';
UPDATE sharded SET value = 'another value' WHERE id = :id;
DELETE FROM sharded WHERE id = :id AND value = 'another value';
ROLLBACK;
INSERT INTO sharded (id, value) VALUES (:id, 'some value') RETURNING *;
SELECT * FROM sharded WHERE id = :id AND value = 'some value';
UPDATE sharded SET value = 'another value' WHERE id = :id;
DELETE FROM sharded WHERE id = :id;
`,
  );
  try {
    await dumpLogsOnFailure(setup.proxy, async () => {
      for (const protocol of ["simple", "extended", "prepared"]) {
        await t.step(`--protocol ${protocol}: 10 clients, 2 servers per shard`, async () => {
          if (protocol === "prepared") {
            // pgbench prepares each statement the first time it runs it, synchronously (PQprepare)
            // for all its clients at once: while the first Parse of a statement waits for a
            // server, clients holding transactions can't move. Once known, Parse needs no server.
            const warm = await pgbench(setup.target, [
              "-n",
              "-c",
              "1",
              "-t",
              "1",
              "-M",
              protocol,
              "-f",
              script,
            ]);
            assert.equal(warm.code, 0, warm.stderr);
          }
          const r = await pgbench(setup.target, [
            "-n",
            "-c",
            "10",
            "-t",
            "100",
            "-M",
            protocol,
            "-f",
            script,
          ]);
          assert.equal(r.code, 0, `${r.stderr}\n${r.stdout}`);
          assert.equal(r.processed, 1000);
          assert.equal(r.failed ?? 0, 0);
          // Nothing stays checked out once the clients are done.
          const servers = await psql(
            { ...setup.target, user: "admin", password: "admin-pw", database: "admin" },
            "SHOW SERVERS",
          );
          assert.equal(servers.code, 0, servers.stderr);
          const busy = servers.stdout.split("\n").filter((l) => l !== "" && !/\|idle\|/.test(l));
          assert.deepEqual(busy, []);
          // Every row the script inserted outside a transaction was deleted again.
          for (let i = 0; i < 2; i++) {
            assert.deepEqual(await setup.onShard(i, "SELECT count(*) FROM sharded"), [["0"]]);
          }
        });
      }
    });
  } finally {
    await Deno.remove(script);
  }
});
