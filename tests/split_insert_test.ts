/**
 * Multi-row INSERTs whose rows belong to several shards, with `[rewrite] split_inserts =
 * "rewrite"`: each row lands once, on its shard; the client gets one answer (RETURNING rows in
 * VALUES order, `INSERT 0 n`) in the simple and extended protocols, text and binary; an error on
 * any shard leaves nothing of the statement anywhere (outside and inside a transaction);
 * `pgdog.unique_id()` makes a fresh id per row; a plugin hasher places each row; "error" refuses.
 */

import assert from "node:assert/strict";
import {
  assertRefused,
  compareAnswers,
  connectPg,
  dumpLogsOnFailure,
  psycopgAvailable,
  REPO_ROOT,
  runPsycopg,
  type ShardedSetup,
  startSharded,
} from "./harness/mod.ts";
import { fe, WireClient } from "./wire.ts";
import { shardForBigint } from "../src/sharding/hash.ts";

const SCHEMA = `
  CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL DEFAULT 'none', n int);
`;
const s = (id: number | bigint) => shardForBigint(BigInt(id), 3);

/** compareAnswers, and neither side failed. */
async function compareOk(
  setup: ShardedSetup,
  sql: string,
  options: Parameters<typeof compareAnswers>[2],
): ReturnType<typeof compareAnswers> {
  const answer = await compareAnswers(setup, sql, options);
  assert.equal(answer.error, undefined, `${sql}: ${answer.message}`);
  return answer;
}

/** Every id of `users` sits exactly once, on its shard; returns the ids found. */
async function assertPlaced(setup: ShardedSetup, shardOf = s): Promise<string[]> {
  const placed = await setup.placement("SELECT id FROM users");
  for (const [id, shards] of placed) {
    assert.deepEqual(shards, [shardOf(BigInt(id))], `id ${id} is on shards ${shards}`);
  }
  return [...placed.keys()].sort((a, b) => Number(a) - Number(b));
}

/** The union of the shards' users equals the reference's. */
async function assertSameRows(setup: ShardedSetup): Promise<void> {
  const sql = "SELECT id, email, n FROM users ORDER BY id";
  const reference = await setup.reference.sql(sql, { database: "app" });
  const dog = await connectPg(setup.target);
  try {
    const r = await dog.query({ text: sql, rowMode: "array" });
    assert.deepEqual(
      r.rows.map((row: unknown[]) => row.map((v) => v === null ? "" : String(v))),
      reference.map((row) => row.map((v) => v ?? "")),
    );
  } finally {
    await dog.end();
  }
}

Deno.test("split multi-row INSERT: rows on their shards, one answer", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    schema: SCHEMA,
    extra: { rewrite: { enabled: true, split_inserts: "rewrite" } },
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    await t.step("simple, extended, binary: RETURNING in VALUES order, INSERT 0 n", async () => {
      for (const [i, protocol] of (["simple", "extended", "binary"] as const).entries()) {
        const o = i * 10;
        const answer = await compareOk(
          setup,
          `INSERT INTO users (id, email, n) VALUES (${o + 1}, 'a', 1), (${o + 2}, 'b', 2 * 3), ` +
            `(${o + 3}, DEFAULT, NULL), (${
              o + 4
            }, upper('d'), ${o}) RETURNING id, email, n * 2 AS m`,
          { protocols: [protocol] },
        );
        assert.equal(answer.rowCount, 4);
      }
      // Without RETURNING, and with the rows' shards in an order of their own.
      await compareOk(
        setup,
        "INSERT INTO users (id, email) VALUES (105, 'x'), (101, 'y'), (104, 'z'), (102, 'w')",
        { protocols: ["simple"] },
      );
      assert.deepEqual(new Set([1, 2, 3, 4].map(s)).size > 1, true);
      // Several of them in one simple query (an implicit transaction), with the same shards
      // (0 and 1).
      assert.deepEqual([111, 114, 113, 123].map(s), [0, 1, 0, 1]);
      await compareOk(
        setup,
        "INSERT INTO users (id) VALUES (111), (114); INSERT INTO users (id) VALUES (113), (123)",
        { protocols: ["simple"] },
      );
      await assertPlaced(setup);
      await assertSameRows(setup);
    });

    await t.step("Bind parameters, renumbered per shard; formats kept", async () => {
      await compareOk(
        setup,
        "INSERT INTO users (id, email, n) VALUES ($1, $2, $5), ($3, $4, $5), ($6, 'lit', $5) " +
          "RETURNING id, email, n",
        { protocols: ["extended"], values: [201, "p", 202, "q", 7, 203] },
      );
      await compareOk(
        setup,
        "INSERT INTO users (id, email, n) VALUES ($1, $2, $5), ($3, $4, $5), ($6, 'lit', $5) " +
          "RETURNING id, email, n",
        { protocols: ["binary"], values: [211, "p", 212, "q", 8, 213] },
      );
      // A named statement executed twice (the second Bind reuses it; its answer counts).
      await setup.reference.sql("INSERT INTO users (id, email) VALUES (221, 'x'), (222, 'y')", {
        database: "app",
      });
      const dog = await connectPg(setup.target);
      await dog.query("INSERT INTO users (id, email) VALUES (221, 'x'), (222, 'y')");
      await dog.end();
      await compareOk(
        setup,
        "INSERT INTO users (id, email) VALUES ($1, 'x'), ($2, 'y') ON CONFLICT (id) DO UPDATE " +
          "SET n = coalesce(users.n, 0) + 1 RETURNING id, n",
        { protocols: ["prepared"], values: [221, 222] },
      );
      // Binary parameters, pipelined with another statement, as drivers send them.
      const w = await WireClient.connect(setup.target);
      const int8 = (n: number) => {
        const b = new Uint8Array(8);
        new DataView(b.buffer).setBigInt64(0, BigInt(n));
        return b;
      };
      await w.send(
        fe.parse("", "INSERT INTO users (id, email) VALUES ($1, $2), ($3, $2) RETURNING id", [
          20,
          25,
          20,
        ]),
        fe.bind("", "", [int8(231), "bin", int8(232)], { paramFormats: [1, 0, 1] }),
        fe.describe("P", ""),
        fe.execute("", 0),
        fe.sync(),
      );
      const msgs = await w.untilReady();
      await w.close();
      const tags = msgs.filter((m) => m.type === "C").map((m) => new TextDecoder().decode(m.body));
      assert.deepEqual(tags, ["INSERT 0 2\0"]);
      assert.equal(msgs.filter((m) => m.type === "T").length, 1);
      await setup.reference.sql(
        "INSERT INTO users (id, email) VALUES (231, 'bin'), (232, 'bin')",
        { database: "app" },
      );
      await assertPlaced(setup);
      await assertSameRows(setup);
    });

    await t.step(
      "ON CONFLICT carried to each shard; RETURNING that may skip rows refused",
      async () => {
        await compareOk(
          setup,
          "INSERT INTO users (id, email) VALUES (1, 'again'), (2, 'again'), (300, 'new') " +
            "ON CONFLICT (id) DO UPDATE SET email = excluded.email || users.email RETURNING id, email",
          { protocols: ["simple"] },
        );
        await compareOk(
          setup,
          "INSERT INTO users (id, email) VALUES (3, 'skip'), (4, 'skip'), (301, 'new') " +
            "ON CONFLICT DO NOTHING",
          { protocols: ["extended"] },
        );
        const message = await assertRefused(
          setup,
          "INSERT INTO users (id) VALUES (5), (6), (302) ON CONFLICT DO NOTHING RETURNING id",
        );
        assert.match(message, /order of the rows returned/);
        await assertSameRows(setup);
      },
    );

    await t.step("an error on one shard: nothing of the statement anywhere", async () => {
      // 1 exists; the other rows are new and on other shards.
      const others = [400, 401, 402, 403, 404, 405].filter((id) => s(id) !== s(1)).slice(0, 2);
      assert.equal(others.length, 2);
      const sql = `INSERT INTO users (id) VALUES (${others[0]}), (1), (${others[1]})`;
      const dog = await connectPg(setup.target);
      try {
        await assert.rejects(dog.query(sql), { code: "23505" });
        await assert.rejects(dog.query({ text: sql, values: [] }), { code: "23505" });
        // In a transaction: the transaction fails as PostgreSQL's would.
        await dog.query("BEGIN");
        await dog.query(`INSERT INTO users (id) VALUES (${others[0] + 1000})`);
        await assert.rejects(dog.query(sql), { code: "23505" });
        await assert.rejects(dog.query("SELECT 1"), { code: "25P02" });
        await dog.query("ROLLBACK");
        // A client's transaction: split rows commit (or roll back) with it.
        await dog.query("BEGIN");
        await dog.query("INSERT INTO users (id, email) VALUES (500, 't'), (501, 't'), (502, 't')");
        await dog.query("ROLLBACK");
        await dog.query("BEGIN");
        const r = await dog.query(
          "INSERT INTO users (id, email) VALUES (510, 't'), (511, 't'), (512, 't') RETURNING id",
        );
        assert.deepEqual(r.rows.map((x: { id: string }) => Number(x.id)), [510, 511, 512]);
        await dog.query("COMMIT");
      } finally {
        await dog.end();
      }
      await setup.reference.sql(
        "INSERT INTO users (id, email) VALUES (510, 't'), (511, 't'), (512, 't')",
        { database: "app" },
      );
      await assertPlaced(setup);
      await assertSameRows(setup);
    });

    await t.step("a transaction on one shard, then a split INSERT on the others", async () => {
      const first = 600;
      const others = [601, 602, 603, 604, 605, 606, 607, 608].filter((id) => s(id) !== s(first));
      const two = [others[0], others.find((id) => s(id) !== s(others[0]))!];
      const dog = await connectPg(setup.target);
      try {
        await dog.query("BEGIN");
        await dog.query(`INSERT INTO users (id, email) VALUES (${first}, 'tx')`);
        await dog.query(
          `INSERT INTO users (id, email) VALUES (${two[0]}, 'tx'), (${two[1]}, 'tx')`,
        );
        await dog.query("COMMIT");
      } finally {
        await dog.end();
      }
      await setup.reference.sql(
        `INSERT INTO users (id, email) VALUES (${first}, 'tx'), (${two[0]}, 'tx'), (${
          two[1]
        }, 'tx')`,
        { database: "app" },
      );
      await assertPlaced(setup);
      await assertSameRows(setup);
    });

    await t.step("pgdog.unique_id(): a fresh id per row, each on its shard", async () => {
      const dog = await connectPg(setup.target);
      try {
        const simple = await dog.query(
          "INSERT INTO users (id, email) VALUES (pgdog.unique_id(), 'u1'), (pgdog.unique_id(), " +
            "'u2'), (pgdog.unique_id(), 'u3'), (pgdog.unique_id(), 'u4') RETURNING id, email",
        );
        const extended = await dog.query(
          "INSERT INTO users (id, email) VALUES (pgdog.unique_id(), $1), (pgdog.unique_id(), " +
            "$2), (pgdog.unique_id(), $1), (pgdog.unique_id(), $2) RETURNING id, email",
          ["e1", "e2"],
        );
        // Executed again and again (each Bind its own ids, wherever the last ones went).
        const prepared = {
          name: "uid_split",
          text: "INSERT INTO users (id, email) VALUES (pgdog.unique_id(), $1), " +
            "(pgdog.unique_id(), $1) RETURNING id",
          values: ["p"],
        };
        const runs = [];
        for (let i = 0; i < 8; i++) runs.push(...(await dog.query(prepared)).rows);
        assert.deepEqual(simple.rows.map((r: { email: string }) => r.email), [
          "u1",
          "u2",
          "u3",
          "u4",
        ]);
        assert.deepEqual(extended.rows.map((r: { email: string }) => r.email), [
          "e1",
          "e2",
          "e1",
          "e2",
        ]);
        const ids = [...simple.rows, ...extended.rows, ...runs].map((r: { id: string }) => r.id);
        assert.equal(new Set(ids).size, 24, `ids repeat: ${ids}`);
        const placed = await setup.placement("SELECT id FROM users");
        for (const id of ids) assert.deepEqual(placed.get(id), [s(BigInt(id))], `id ${id}`);
        await dog.query("DELETE FROM users WHERE email IN ('u1','u2','u3','u4','e1','e2','p')");
        if (await psycopgAvailable()) {
          // psycopg pipelines executemany: split INSERTs and one-shard INSERTs in one
          // implicit transaction, each execution with its own ids.
          const count = await runPsycopg<number>(
            setup.target,
            `
with psycopg.connect(DSN, autocommit=True) as conn:
    cur = conn.cursor()
    cur.executemany("INSERT INTO users (id, email) VALUES (pgdog.unique_id(), %s), " +
        "(pgdog.unique_id(), %s)", [("py", "py"), ("py", "py"), ("py", "py"), ("py", "py")])
    cur.executemany("INSERT INTO users (id, email) VALUES (pgdog.unique_id(), %s)",
        [("py",), ("py",), ("py",)])
    print(json.dumps(conn.execute("SELECT count(*) FROM users WHERE email = 'py'").fetchone()[0]))
`,
          );
          assert.equal(count, 11);
          const rows = await setup.placement("SELECT id FROM users WHERE email = 'py'");
          assert.equal(rows.size, 11);
          for (const [id, shards] of rows) assert.deepEqual(shards, [s(BigInt(id))], `id ${id}`);
          await dog.query("DELETE FROM users WHERE email = 'py'");
        }
      } finally {
        await dog.end();
      }
      await assertPlaced(setup);
    });
  });
});

Deno.test("split INSERT and key UPDATE with a plugin hasher; enabled = false refuses; ignore", async (t) => {
  await using setup = await startSharded({
    shardedTables: [
      { name: "users", column: "id" },
      { name: "items", column: "id", hasher: "plugin:dir" },
    ],
    schema: SCHEMA + "CREATE TABLE items (id bigint PRIMARY KEY, v text);",
    extra: {
      rewrite: { enabled: true, split_inserts: "rewrite", shard_key: "rewrite" },
      plugins: [{ name: "dir", path: `${REPO_ROOT}/tests/plugins/directives.ts`, timeout: 10_000 }],
    },
    denoFlags: ["--allow-run"],
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    await t.step("plugin hasher: each row on the shard the plugin gives (id mod 3)", async () => {
      const dog = await connectPg(setup.target);
      try {
        const r = await dog.query(
          "INSERT INTO items (id, v) VALUES (3, 'a'), (4, 'b'), (5, 'c'), (7, 'd') RETURNING id",
        );
        assert.deepEqual(r.rows.map((x: { id: string }) => Number(x.id)), [3, 4, 5, 7]);
        await dog.query("INSERT INTO items (id, v) VALUES ($1, 'e'), ($2, 'f')", [9, 10]);
      } finally {
        await dog.end();
      }
      let placed = await setup.placement("SELECT id FROM items");
      for (const id of [3, 4, 5, 7, 9, 10]) {
        assert.deepEqual(placed.get(String(id)), [id % 3], `items id ${id}`);
      }
      // A key UPDATE asks the plugin too: 3 (shard 0) becomes 8 (shard 2).
      const dog2 = await connectPg(setup.target);
      try {
        const r = await dog2.query("UPDATE items SET id = $1 WHERE id = $2 RETURNING id, v", [
          8,
          3,
        ]);
        assert.deepEqual(r.rows, [{ id: "8", v: "a" }]);
      } finally {
        await dog2.end();
      }
      placed = await setup.placement("SELECT id FROM items");
      assert.deepEqual(placed.get("8"), [2]);
      assert.equal(placed.get("3"), undefined);
    });
  });
  await using refusing = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    schema: SCHEMA,
    extra: { rewrite: { enabled: false, split_inserts: "rewrite" } },
  });
  await t.step("enabled = false: refused, with advice", async () => {
    const message = await assertRefused(
      refusing,
      "INSERT INTO users (id) VALUES (1), (2), (3), (4)",
    );
    assert.match(message, /split_inserts = "rewrite"/);
  });
  await using ignoring = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    schema: SCHEMA,
    extra: { rewrite: { enabled: true, split_inserts: "ignore", shard_key: "ignore" } },
  });
  await t.step(
    "ignore: sent as written to the first row's shard (unsafe, as documented)",
    async () => {
      const ids = [1, 2, 3, 4, 5, 6];
      const dog = await connectPg(ignoring.target);
      try {
        await dog.query(`INSERT INTO users (id) VALUES ${ids.map((id) => `(${id})`).join(", ")}`);
        const other = ids.find((id) => s(id) !== s(1))!;
        await dog.query(`UPDATE users SET id = 100 + ${other} WHERE id = 1`);
      } finally {
        await dog.end();
      }
      const placed = await ignoring.placement("SELECT id FROM users");
      for (const [id, shards] of placed) assert.deepEqual(shards, [s(1)], `id ${id}`);
      assert.equal(placed.size, 6);
    },
  );
});
