/**
 * The sharder never answers wrong: every statement pgdog answers equals the answer of one
 * PostgreSQL database holding all the rows (the reference), in the simple, extended and binary
 * protocols; a shape it can't prove is refused with 0A000 and a message (issue #17, items 4-11
 * and 15).
 *
 * - provable shapes are answered (keys, co-located joins, correlated subqueries, UNION ALL,
 *   writes), writes to omnisharded tables answer once (RETURNING included);
 * - IN lists over several shards with ORDER BY/LIMIT/aggregates, UNION/INTERSECT/EXCEPT,
 *   subqueries and CTEs without their key, window functions, joins not on the keys,
 *   data-modifying CTEs, COPY of a query that needs merging: equal to the reference or refused;
 * - a request of several statements for different shards is refused, not run everywhere;
 * - COPY TO across shards: one CSV header; binary COPY is one valid stream (loaded back into the
 *   reference with COPY FROM);
 * - deeply nested SQL gets a result or an error and the connection goes on, with shards and with
 *   a primary and a replica.
 */

import assert from "node:assert/strict";
import {
  answerOf,
  compareAnswers,
  connectPg,
  dumpLogsOnFailure,
  type PgCluster,
  type Protocol,
  psql,
  type ShardedSetup,
  startPostgres,
  startProxy,
  startReplica,
  startSharded,
} from "./harness/mod.ts";
import { shardForBigint } from "../src/sharding/hash.ts";

const SCHEMA = `
  CREATE TABLE users (id bigint PRIMARY KEY, email text, country text);
  CREATE TABLE orders (id bigint, user_id bigint, amount int);
  CREATE TABLE countries (code text PRIMARY KEY, name text);
  CREATE TABLE audit (note text);
`;

const USERS = Array.from({ length: 12 }, (_, i) => i + 1);
const COUNTRIES = ["fr", "de", "it"];

/**
 * The same statement through pgdog and on the reference, in each protocol: pgdog either refuses
 * it (0A000, with a message, in every protocol) or answers exactly what the reference answers.
 * Returns whether it was refused.
 */
async function equalOrRefused(
  setup: ShardedSetup,
  sql: string,
  options: { unordered?: boolean; protocols?: Protocol[] } = {},
): Promise<boolean> {
  const dog = await connectPg(setup.target);
  const ref = await connectPg(setup.referenceTarget);
  const outcomes: boolean[] = [];
  try {
    for (const protocol of options.protocols ?? ["simple", "extended", "binary"]) {
      const actual = await answerOf(dog, sql, { protocol });
      if (actual.error === "0A000") {
        assert.ok((actual.message ?? "").length > 20, `${protocol}: ${sql}: no message`);
        outcomes.push(true);
        continue;
      }
      outcomes.push(false);
      const expected = await answerOf(ref, sql, { protocol });
      if (options.unordered) {
        actual.rows?.sort();
        expected.rows?.sort();
      }
      assert.deepEqual(actual, expected, `${protocol}: ${sql}`);
    }
    assert.ok(outcomes.every((r) => r === outcomes[0]), `refused in some protocols only: ${sql}`);
    // The connection goes on after a refusal (which fails a transaction the statement opened, as
    // PostgreSQL's error would: ROLLBACK ends it; outside one it only warns).
    await dog.query("ROLLBACK");
    assert.equal((await dog.query("SELECT 1 AS one")).rows[0].one, 1);
  } finally {
    await dog.end();
    await ref.end();
  }
  return outcomes[0];
}

Deno.test("cross-shard: answered exactly as one database, or refused", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }, { name: "orders", column: "user_id" }],
    omnisharded: ["countries", "audit"],
    schema: SCHEMA,
  });
  const shardOf = (id: number) => shardForBigint(BigInt(id), 3);
  // Rows: through pgdog (each to its shard) and into the reference.
  const rows: string[] = [];
  for (const id of USERS) {
    rows.push(
      `INSERT INTO users (id, email, country) VALUES (${id}, 'u${id}@x', '${COUNTRIES[id % 3]}')`,
    );
    // One order whose amount is another user's id, one cheap, one above 100.
    rows.push(
      `INSERT INTO orders (id, user_id, amount) VALUES (${id * 10 + 1}, ${id}, ${(id % 12) + 1})`,
    );
    rows.push(
      `INSERT INTO orders (id, user_id, amount) VALUES (${id * 10 + 2}, ${id}, ${50 + id})`,
    );
    rows.push(
      `INSERT INTO orders (id, user_id, amount) VALUES (${id * 10 + 3}, ${id}, ${150 + id})`,
    );
  }
  const dog = await connectPg(setup.target);
  try {
    for (const sql of rows) await dog.query(sql);
  } finally {
    await dog.end();
  }
  await setup.reference.sql(rows.join(";\n"), { database: "app" });
  await setup.everywhere(
    "INSERT INTO countries VALUES ('fr', 'France'), ('de', 'Germany'), ('it', 'Italy')",
  );
  for (const id of USERS) {
    const placed = await setup.placement(`SELECT id FROM users WHERE id = ${id}`);
    assert.deepEqual(placed.get(String(id)), [shardOf(id)]);
  }
  // Keys on one shard, and the largest id of a shard that doesn't hold the largest of all.
  const sameShard = USERS.filter((id) => shardOf(id) === shardOf(1));
  const notMax = Math.max(...USERS.filter((id) => shardOf(id) !== shardOf(12)));

  await dumpLogsOnFailure(setup.proxy, async () => {
    await t.step("provable shapes are answered, equal to the reference", async () => {
      const unordered = [
        "SELECT id, email FROM users",
        "SELECT u.id, o.id, o.amount FROM users u JOIN orders o ON o.user_id = u.id",
        "SELECT u.id, o.amount FROM users u LEFT JOIN orders o ON o.user_id = u.id " +
        "AND o.amount > 100",
        "SELECT u.id, o.id FROM users u FULL JOIN orders o ON o.user_id = u.id",
        "SELECT u.id, (SELECT count(*) FROM orders o WHERE o.user_id = u.id) FROM users u",
        "SELECT id FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id " +
        "AND o.amount > 155)",
        "SELECT id FROM users WHERE id IN (SELECT user_id FROM orders WHERE amount < 5)",
        "SELECT id FROM users UNION ALL SELECT user_id FROM orders",
        "SELECT u.id, c.name FROM users u JOIN countries c ON c.code = u.country",
        "SELECT u.id, m.top FROM users u, LATERAL (SELECT max(amount) AS top FROM orders o " +
        "WHERE o.user_id = u.id) m",
        "SELECT s.id, o.amount FROM (SELECT id, email FROM users) s JOIN orders o " +
        "ON o.user_id = s.id",
        `SELECT id FROM users WHERE id IN (${USERS.join(", ")}) AND email LIKE 'u1%'`,
        "UPDATE users SET email = email WHERE id IN (SELECT user_id FROM orders " +
        "WHERE amount > 160) RETURNING id",
        "UPDATE countries SET name = name RETURNING code, name",
        // Groups and window partitions on the sharding key are whole on one shard.
        "SELECT user_id, count(*), sum(amount), percentile_cont(0.5) WITHIN GROUP (ORDER BY " +
        "amount) FROM orders GROUP BY user_id HAVING count(*) > 1",
        "SELECT id, user_id, rank() OVER (PARTITION BY user_id ORDER BY amount DESC) FROM orders",
        "SELECT * FROM (SELECT id, user_id, row_number() OVER (PARTITION BY user_id ORDER BY " +
        "amount DESC) AS rn FROM orders) s WHERE rn = 1",
        "SELECT u.email, t.n FROM users u JOIN (SELECT user_id, sum(amount) AS n FROM orders " +
        "GROUP BY user_id) t ON t.user_id = u.id",
        "SELECT id FROM users WHERE id IN (SELECT user_id FROM orders GROUP BY user_id HAVING " +
        "max(amount) > 155)",
      ];
      for (const sql of unordered) await compareAnswers(setup, sql, { unordered: true });
      const ordered = [
        "SELECT * FROM users WHERE id = 5",
        `SELECT count(*), max(email) FROM users WHERE id IN (${sameShard.join(", ")})`,
        "SELECT id, amount, row_number() OVER (ORDER BY amount DESC) FROM orders " +
        "WHERE user_id = 3 ORDER BY id",
        "WITH t AS (SELECT * FROM users) SELECT count(*) FROM t WHERE id = 7",
        "SELECT count(*) FROM orders WHERE user_id = 2 AND amount > (SELECT avg(amount) " +
        "FROM orders WHERE user_id = 2)",
        "WITH d AS (UPDATE orders SET amount = amount WHERE user_id = 3 RETURNING id) " +
        "SELECT count(*) FROM d",
        "SELECT name FROM countries ORDER BY code LIMIT 2",
        "SELECT 1 + 1 AS two",
      ];
      for (const sql of ordered) await compareAnswers(setup, sql);
    });

    await t.step("item 4: INSERT ... RETURNING into an omnisharded table, one row", async () => {
      const a = await compareAnswers(setup, "INSERT INTO audit (note) VALUES ('x') RETURNING note");
      assert.deepEqual(a.rows, [["x"]]);
      await compareAnswers(setup, "DELETE FROM audit WHERE note = 'x' RETURNING note");
    });

    await t.step(
      "item 5: an IN list over several shards with ORDER BY, LIMIT or count",
      async () => {
        for (
          const sql of [
            "SELECT id FROM users WHERE id IN (1, 2, 3, 4, 5, 6) ORDER BY id",
            "SELECT id FROM users WHERE id IN (1, 2, 3, 4, 5, 6) ORDER BY id LIMIT 3",
            "SELECT count(*) FROM users WHERE id IN (1, 2, 3, 4, 5, 6)",
            "SELECT email FROM users WHERE id IN (1, 2, 3) ORDER BY email DESC",
          ]
        ) await equalOrRefused(setup, sql);
      },
    );

    await t.step("item 6: UNION, INTERSECT, EXCEPT over sharded tables", async () => {
      for (
        const sql of [
          "SELECT id FROM users UNION SELECT user_id FROM orders",
          "SELECT id FROM users INTERSECT SELECT user_id FROM orders WHERE amount > 155",
          "SELECT id FROM users EXCEPT SELECT user_id FROM orders WHERE amount > 155",
        ]
      ) await equalOrRefused(setup, sql, { unordered: true });
    });

    await t.step("item 7: subqueries and CTEs over a sharded table without its key", async () => {
      for (
        const sql of [
          "SELECT * FROM (SELECT count(*) FROM users) s",
          "WITH t AS (SELECT count(*) AS c FROM users) SELECT c FROM t",
          "SELECT id FROM users WHERE id IN (SELECT max(id) FROM users)",
          `SELECT id FROM users WHERE id = ${notMax} AND id IN (SELECT max(id) FROM users)`,
          "SELECT (SELECT count(*) FROM users)",
          "SELECT code FROM countries c WHERE EXISTS (SELECT 1 FROM users u " +
          "WHERE u.country = c.code AND u.id > 10)",
        ]
      ) await equalOrRefused(setup, sql, { unordered: true });
    });

    await t.step("item 8: window functions over sharded tables", async () => {
      for (
        const sql of [
          "SELECT id, row_number() OVER (ORDER BY id) FROM users",
          "SELECT id, sum(id) OVER () FROM users",
        ]
      ) await equalOrRefused(setup, sql, { unordered: true });
    });

    await t.step("item 9: a join of sharded tables not on their keys", async () => {
      for (
        const sql of [
          "SELECT u.id, o.id FROM users u JOIN orders o ON o.amount = u.id",
          "SELECT u.id, o.id FROM users u, orders o WHERE o.amount = u.id",
          "SELECT c.code, u.id FROM countries c LEFT JOIN users u ON u.country = c.code " +
          "AND u.id > 100",
        ]
      ) await equalOrRefused(setup, sql, { unordered: true });
    });

    await t.step("item 10: a data-modifying CTE without the key", async () => {
      await equalOrRefused(
        setup,
        "WITH d AS (UPDATE orders SET amount = amount WHERE amount > 100 RETURNING *) " +
          "SELECT count(*) FROM d",
      );
    });

    await t.step(
      "several statements for different shards run each on its shard, not everywhere",
      async () => {
        // Two new keys on different shards.
        const ids = Array.from({ length: 20 }, (_, i) => 101 + i);
        const x = ids[0];
        const y = ids.find((id) => shardOf(id) !== shardOf(x))!;
        assert.ok(y !== undefined);
        const refused = await equalOrRefused(
          setup,
          `BEGIN; INSERT INTO users (id, email) VALUES (${x}, 'a'); ` +
            `INSERT INTO users (id, email) VALUES (${y}, 'b'); COMMIT`,
          { protocols: ["simple"] },
        );
        assert.ok(!refused);
        await equalOrRefused(setup, "SELECT 1; SELECT count(*) FROM users WHERE id = 1", {
          protocols: ["simple"],
        });
        // Each row once, on the shard of its key.
        const placed = await setup.placement("SELECT id FROM users WHERE id > 100");
        assert.deepEqual(
          [...placed].sort(([a], [b]) => Number(a) - Number(b)),
          [[String(x), [shardOf(x)]], [String(y), [shardOf(y)]]],
        );
        await setup.everywhere("DELETE FROM users WHERE id > 100");
      },
    );

    await t.step("item 11: COPY TO across shards, CSV with one header", async () => {
      for (
        const [sql, header] of [
          ["\\copy users to stdout with csv header", true],
          [
            "\\copy (SELECT id, email FROM users WHERE id > 3) to stdout with (format csv, header)",
            true,
          ],
          ["COPY users (id, email) TO STDOUT (FORMAT text, HEADER)", true],
          ["COPY orders TO STDOUT", false],
        ] as const
      ) {
        const got = await psql(setup.target, sql);
        const want = await psql(setup.referenceTarget, sql);
        assert.equal(got.code, 0, got.stderr);
        assert.equal(want.code, 0, want.stderr);
        const gotLines = got.stdout.trimEnd().split("\n");
        const wantLines = want.stdout.trimEnd().split("\n");
        if (header) assert.equal(gotLines.shift(), wantLines.shift(), sql);
        assert.deepEqual(gotLines.sort(), wantLines.sort(), sql);
      }
      // A COPY of a query that needs merging: refused, or the reference's rows.
      const limited = await psql(
        setup.target,
        "COPY (SELECT id FROM users ORDER BY id LIMIT 10) TO STDOUT",
      );
      if (limited.code === 0) {
        assert.equal(limited.stdout.trim(), USERS.slice(0, 10).join("\n"));
      } else assert.match(limited.stderr, /not supported/);
      assert.equal((await psql(setup.target, "SELECT 1")).stdout.trim(), "1");
    });

    await t.step("item 11: binary COPY TO across shards is one valid stream", async () => {
      const dir = await Deno.makeTempDir({ prefix: "pgdog-test-copy-" });
      try {
        await setup.reference.sql(
          "CREATE TABLE users_check (id bigint, email text); " +
            "CREATE TABLE orders_check (id bigint, user_id bigint, amount int)",
          { database: "app" },
        );
        for (
          const [source, table, where] of [
            ["users (id, email)", "users_check", ""],
            ["orders", "orders_check", ""],
            ["(SELECT id, email FROM users WHERE id < 0)", "users_check", "WHERE id < 0"],
          ]
        ) {
          const file = `${dir}/${table}.bin`;
          const out = await psql(
            setup.target,
            `\\copy ${source} to '${file}' with (format binary)`,
          );
          assert.equal(out.code, 0, out.stderr);
          await setup.reference.sql(`TRUNCATE ${table}`, { database: "app" });
          const load = await psql(
            setup.referenceTarget,
            `\\copy ${table} from '${file}' with (format binary)`,
          );
          assert.equal(load.code, 0, `${source}: ${load.stderr}`);
          const columns = table === "users_check" ? "id, email" : "id, user_id, amount";
          const base = table === "users_check" ? "users" : "orders";
          assert.deepEqual(
            await setup.reference.sql(`SELECT ${columns} FROM ${table} ORDER BY id`, {
              database: "app",
            }),
            await setup.reference.sql(`SELECT ${columns} FROM ${base} ${where} ORDER BY id`, {
              database: "app",
            }),
            source,
          );
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });

    await t.step("item 15: deeply nested SQL is answered or refused, with shards", async () => {
      await deepQueries(setup.target, { sharded: true });
    });
  });
});

/** Nested as deeply as PostgreSQL accepts (its own limits allow these). */
const DEEP = [
  { sql: "SELECT " + "abs(".repeat(3000) + "1" + ")".repeat(3000) + " AS v", value: "1" },
  { sql: "SELECT " + "NOT ".repeat(5000) + "true AS v", value: "t" },
  { sql: "SELECT " + "(SELECT ".repeat(1000) + "1" + ")".repeat(1000) + " AS v", value: "1" },
];

/**
 * Deep queries through pgdog: the client gets the real result or an error (sharded: a 0A000
 * refusal is fine), and the connection goes on.
 */
async function deepQueries(
  target: Parameters<typeof connectPg>[0],
  options: { sharded: boolean },
): Promise<void> {
  const c = await connectPg(target);
  try {
    for (const { sql, value } of DEEP) {
      for (const protocol of ["simple", "extended"] as const) {
        const a = await answerOf(c, sql, { protocol });
        const what = `${protocol}: ${sql.slice(0, 30)}...`;
        if (options.sharded) {
          if (a.error) assert.equal(a.error, "0A000", `${what}: ${a.message}`);
          else assert.deepEqual(a.rows, [[value]], what);
        } else {
          // With replicas only, pgdog routes it to the primary: the real result.
          assert.equal(a.error, undefined, `${what}: ${a.message}`);
          assert.deepEqual(a.rows, [[value]], what);
        }
        assert.equal((await c.query("SELECT 1 AS one")).rows[0].one, 1, `after ${what}`);
      }
    }
  } finally {
    await c.end();
  }
}

Deno.test("deeply nested SQL with a primary and a replica, and with query_parser on", async () => {
  await using primary = await startPostgres({ databases: ["app"] });
  await using replica = await startReplica(primary);
  const entry = (node: PgCluster, role: string) => ({
    name: "app",
    host: node.host,
    port: node.port,
    database_name: "app",
    role,
  });
  const users = { users: [{ name: "postgres", password: "deep-pw", database: "app" }] };
  for (
    const [general, databases] of [
      [{}, [entry(primary, "primary"), entry(replica, "replica")]],
      [{ query_parser: "on" }, [entry(primary, "primary")]],
    ] as const
  ) {
    await using proxy = await startProxy({
      config: { general: { idle_healthcheck_interval: 0, ...general }, databases },
      users,
    });
    await dumpLogsOnFailure(proxy, async () => {
      await deepQueries(proxy.target({ user: "postgres", password: "deep-pw", database: "app" }), {
        sharded: false,
      });
    });
  }
});
