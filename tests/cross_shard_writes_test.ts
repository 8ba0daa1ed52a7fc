/**
 * The differential write suite: the same writes on the reference database and through pgdog on
 * 3 shards (`[rewrite] split_inserts` and `shard_key` = "rewrite"): multi-row INSERTs (literals,
 * parameters, RETURNING, ON CONFLICT, DEFAULT, expressions), sharding-key UPDATEs, UPDATE and
 * DELETE without a key, each compared answer by answer; then every table compared (the
 * reference against the union of the shards) and each row checked to sit exactly once, on the
 * shard its key maps to. npm:pg, postgres.js and psycopg each run a multi-row INSERT with
 * parameters and a key UPDATE.
 */

import assert from "node:assert/strict";
import postgres from "postgres";
import {
  compareAnswers,
  connectPg,
  dumpLogsOnFailure,
  psql,
  psycopgAvailable,
  runPsycopg,
  type ShardedSetup,
  startSharded,
} from "./harness/mod.ts";
import { shardForBigint, shardForText } from "../src/sharding/hash.ts";

const SCHEMA = `
  CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL DEFAULT 'nobody',
    balance numeric(12, 2) NOT NULL DEFAULT 0, created date DEFAULT '2024-01-01');
  CREATE TABLE notes (author text NOT NULL, seq int NOT NULL, body text,
    PRIMARY KEY (author, seq));
`;
const TABLES: Array<{ table: string; key: string; text: boolean; order: string }> = [
  { table: "accounts", key: "id", text: false, order: "id" },
  { table: "notes", key: "author", text: true, order: "author, seq" },
];

/** Every table: the reference's rows equal the union of the shards'; each row on its key's shard. */
async function assertTablesMatch(setup: ShardedSetup): Promise<void> {
  for (const { table, key, text, order } of TABLES) {
    const sql = `SELECT * FROM ${table} ORDER BY ${order}`;
    const reference = await setup.reference.sql(sql, { database: "app" });
    const union: string[][] = [];
    for (let i = 0; i < 3; i++) union.push(...await setup.onShard(i, sql));
    const sort = (rows: string[][]) => rows.map((r) => JSON.stringify(r)).sort();
    assert.deepEqual(sort(union), sort(reference), `${table}: shards differ from the reference`);
    const placed = await setup.placement(`SELECT ${key} FROM ${table}`);
    for (const [value, shards] of placed) {
      const home = text ? shardForText(value, 3) : shardForBigint(BigInt(value), 3);
      assert.ok(
        shards.every((n) => n === home),
        `${table} ${key}=${value} on ${shards}, not ${home}`,
      );
    }
  }
}

/** Runs one write on both (in the given protocol) and compares the answers. */
async function both(
  setup: ShardedSetup,
  sql: string,
  options: {
    protocol?: "simple" | "extended" | "binary";
    values?: unknown[];
    /** The SQLSTATE both must fail with (else neither may fail). */
    error?: string;
  } = {},
): Promise<void> {
  const answer = await compareAnswers(setup, sql, {
    protocols: [options.protocol ?? "simple"],
    values: options.values,
  });
  assert.equal(answer.error, options.error, `${sql}: ${answer.message}`);
}

Deno.test("cross-shard writes: the reference and 3 shards stay the same", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ name: "accounts", column: "id" }, {
      name: "notes",
      column: "author",
      data_type: "varchar",
    }],
    schema: SCHEMA,
    extra: { rewrite: { enabled: true, split_inserts: "rewrite", shard_key: "rewrite" } },
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    await t.step("multi-row INSERTs", async () => {
      await both(
        setup,
        "INSERT INTO accounts (id, owner, balance) VALUES (1, 'ann', 10), (2, 'bob', 20.5), " +
          "(3, DEFAULT, DEFAULT), (4, upper('dan'), 2 * 21), (5, 'eve', -1) RETURNING *",
      );
      await both(
        setup,
        "INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, $3), ($4, $5, $3), " +
          "($6, $2, 0) RETURNING id, owner, balance * 2 AS twice",
        { protocol: "extended", values: [11, "x", "7.25", 12, "y", 13] },
      );
      await both(
        setup,
        "INSERT INTO accounts (id, owner) VALUES ($1, $2), ($3, $2), ($4, $2) RETURNING id, created",
        { protocol: "binary", values: [21, "bin", 22, 23] },
      );
      await both(
        setup,
        "INSERT INTO notes (author, seq, body) VALUES ('ann', 1, 'a'), ('bob', 1, 'b'), " +
          "('cat', 1, NULL), ('ann', 2, 'c'), ('dan', 1, 'd'), ('eve', 1, 'e')",
      );
      await both(
        setup,
        "INSERT INTO accounts (id, owner) VALUES (1, 'again'), (2, 'again'), (31, 'new') " +
          "ON CONFLICT (id) DO UPDATE SET owner = accounts.owner || '+' || excluded.owner " +
          "RETURNING id, owner",
      );
      await both(
        setup,
        "INSERT INTO accounts (id) VALUES (3), (4), (32), (33) ON CONFLICT DO NOTHING",
        { protocol: "extended" },
      );
      // Without a column list (pgdog reads the table's column order).
      await both(
        setup,
        "INSERT INTO accounts VALUES (51, 'n', 1.5, '2024-02-02'), (52, 'm', 2, DEFAULT), " +
          "(53, 'o', 3, NULL) RETURNING id, owner",
      );
      // A failing row: nothing of the statement anywhere, on either side.
      await both(setup, "INSERT INTO accounts (id) VALUES (41), (1), (42), (43)", {
        error: "23505",
      });
      await both(setup, "INSERT INTO accounts (id, owner) VALUES (44, NULL), (45, 'x')", {
        error: "23502",
      });
      await assertTablesMatch(setup);
    });

    await t.step("sharding-key UPDATEs", async () => {
      await both(
        setup,
        "UPDATE accounts SET id = 101, balance = balance + 1 WHERE id = 1 RETURNING *",
      );
      await both(setup, "UPDATE accounts SET id = $1 WHERE id = $2 RETURNING id, owner", {
        protocol: "extended",
        values: [102, 2],
      });
      await both(setup, "UPDATE accounts SET id = $1, owner = $3 WHERE id = $2", {
        protocol: "binary",
        values: [103, 3, "moved"],
      });
      await both(
        setup,
        "UPDATE notes SET author = 'zed' WHERE author = 'ann' AND seq = 2 RETURNING *",
      );
      await both(setup, "UPDATE accounts SET id = 104 WHERE id = 999");
      // The new key is taken on its shard: an error, nothing moved.
      await both(setup, "UPDATE accounts SET id = 12 WHERE id = 11", { error: "23505" });
      await assertTablesMatch(setup);
    });

    await t.step("a transaction's write on one shard outlives a read of other shards", async () => {
      const first = 700;
      const shard = (id: number) => shardForBigint(BigInt(id), 3);
      const rest = [701, 702, 703, 704, 705, 706, 707, 708].filter((id) =>
        shard(id) !== shard(first)
      );
      // Two ids on the two other shards: the read runs there, not where the INSERT is.
      const others = [rest[0], rest.find((id) => shard(id) !== shard(rest[0]))!];
      for (const target of [setup.referenceTarget, setup.target]) {
        const c = await connectPg(target);
        try {
          await c.query("BEGIN");
          await c.query(`INSERT INTO accounts (id, owner) VALUES (${first}, 'tx')`);
          await c.query(`SELECT id FROM accounts WHERE id IN (${others.join(", ")})`);
          await c.query("COMMIT");
        } finally {
          await c.end();
        }
      }
      await assertTablesMatch(setup);
    });

    await t.step("UPDATE and DELETE without a key", async () => {
      await both(setup, "UPDATE accounts SET balance = balance * 2 WHERE owner = 'x'");
      await both(setup, "UPDATE notes SET body = coalesce(body, '') || '!'");
      await both(setup, "DELETE FROM accounts WHERE balance < 0");
      await both(setup, "DELETE FROM notes WHERE seq > 1", { protocol: "extended" });
      await assertTablesMatch(setup);
    });

    await t.step("COPY FROM (CSV and text) and INSERT ... SELECT", async () => {
      const csv = Array.from({ length: 300 }, (_, i) => `${1000 + i},copy${i % 7},${i}.5`);
      const text = Array.from({ length: 100 }, (_, i) => `${1500 + i}\ttext\\t${i}\t\\N`);
      for (const target of [setup.referenceTarget, setup.target]) {
        const r = await psql(target, "", {
          stdin: "\\copy accounts (id, owner, balance) FROM STDIN WITH (FORMAT csv)\n" +
            `${csv.join("\n")}\n\\.\n` +
            "\\copy accounts (id, owner, created) FROM STDIN\n" + `${text.join("\n")}\n\\.\n`,
        });
        assert.equal(r.code, 0, r.stderr);
      }
      // Rows read across shards, each inserted on the shard of its new key.
      await both(
        setup,
        "INSERT INTO notes (author, seq, body) SELECT owner, id::int, 'from accounts' " +
          "FROM accounts WHERE id >= 1000 AND id < 1050 ON CONFLICT DO NOTHING",
      );
      await both(
        setup,
        "INSERT INTO accounts (id, owner) SELECT g, $1 FROM generate_series(2000, 2099) g",
        { protocol: "extended", values: ["series"] },
      );
      await assertTablesMatch(setup);
    });

    await t.step(
      "npm:pg, postgres.js, psycopg: multi-row INSERT with parameters, key UPDATE",
      async () => {
        const ref = await connectPg(setup.referenceTarget);
        const dog = await connectPg(setup.target);
        try {
          for (const c of [ref, dog]) {
            const r = await c.query(
              "INSERT INTO accounts (id, owner) VALUES ($1, $2), ($3, $2), ($4, $2) RETURNING id",
              [201, "pg", 202, 203],
            );
            assert.deepEqual(r.rows.map((x: { id: string }) => x.id), ["201", "202", "203"]);
            const u = await c.query("UPDATE accounts SET id = $1 WHERE id = $2", [204, 201]);
            assert.equal(u.rowCount, 1);
          }
        } finally {
          await ref.end();
          await dog.end();
        }
        for (const target of [setup.referenceTarget, setup.target]) {
          const sql = postgres({ ...target, username: target.user, max: 1, onnotice: () => {} });
          try {
            const rows = await sql`INSERT INTO accounts ${
              sql([{ id: 301, owner: "js" }, { id: 302, owner: "js" }, { id: 303, owner: "js" }])
            } RETURNING id`;
            assert.deepEqual(rows.map((r) => String(r.id)), ["301", "302", "303"]);
            const moved = await sql`UPDATE accounts SET id = ${304} WHERE id = ${301} RETURNING id`;
            assert.deepEqual(moved.map((r) => String(r.id)), ["304"]);
          } finally {
            await sql.end();
          }
        }
        if (await psycopgAvailable()) {
          for (const target of [setup.referenceTarget, setup.target]) {
            const result = await runPsycopg<{ ids: number[]; moved: number }>(
              target,
              `
with psycopg.connect(DSN, autocommit=True) as conn:
    cur = conn.execute(
        "INSERT INTO accounts (id, owner) VALUES (%s, %s), (%s, %s), (%s, %s) RETURNING id",
        (401, "py", 402, "py", 403, "py"))
    ids = [r[0] for r in cur.fetchall()]
    moved = conn.execute("UPDATE accounts SET id = %s WHERE id = %s", (404, 401)).rowcount
    print(json.dumps({"ids": ids, "moved": moved}))
`,
            );
            assert.deepEqual(result, { ids: [401, 402, 403], moved: 1 });
          }
          // executemany, a pipeline and a transaction mixing split INSERTs and key moves.
          const answers = [];
          for (const target of [setup.referenceTarget, setup.target]) {
            answers.push(
              await runPsycopg(
                target,
                `
with psycopg.connect(DSN, autocommit=True) as conn:
    cur = conn.cursor()
    cur.executemany("INSERT INTO accounts (id, owner) VALUES (%s, %s), (%s, %s), (%s, %s)",
        [(501, "a", 502, "b", 503, "c"), (504, "d", 505, "e", 506, "f")])
    with conn.pipeline():
        c1 = conn.execute("INSERT INTO accounts (id) VALUES (%s), (%s) RETURNING id", (507, 508))
        c2 = conn.execute("UPDATE accounts SET id = %s WHERE id = %s RETURNING id, owner", (509, 501))
        c3 = conn.execute("SELECT count(*) FROM accounts WHERE id > 500")
    out = [c1.fetchall(), c2.fetchall(), c3.fetchall()]
    with conn.transaction():
        conn.execute("INSERT INTO accounts (id) VALUES (%s), (%s)", (520, 521))
        conn.execute("UPDATE accounts SET id = %s WHERE id = %s", (522, 520))
    print(json.dumps(out))
`,
              ),
            );
          }
          assert.deepEqual(answers[1], answers[0]);
        }
        await assertTablesMatch(setup);
      },
    );
  });
});
