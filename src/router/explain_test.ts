import { deepEqual, equal, ok } from "node:assert/strict";
import { loadParser } from "./mod.ts";
import { explainRoutes } from "./explain.ts";
import { resolveConfig } from "../config/load.ts";
import { shardForBigint } from "../sharding/hash.ts";

await loadParser();

const users = { users: [{ name: "u", password: "p", database: "app" }] };

Deno.test("pgdog route: roles as the proxy chooses them (comments, read-only transactions)", () => {
  const { config } = resolveConfig({
    databases: [
      { name: "app", host: "127.0.0.1", role: "primary" },
      { name: "app", host: "127.0.0.2", role: "replica" },
    ],
    ...users,
  });
  const routes = explainRoutes(
    "/* pgdog_role: primary */ SELECT 1; SELECT 2 /* pgdog_role: replica */; " +
      "START TRANSACTION READ ONLY; SELECT 3; UPDATE t SET x = 1",
    { config, database: "app" },
  );
  deepEqual(routes.map((r) => r.role), ["primary", "replica", "replica", "replica", "primary"]);
});

Deno.test("pgdog route: the same cross-shard rule as the proxy", () => {
  const { config } = resolveConfig({
    databases: [0, 1, 2].map((shard) => ({ name: "app", host: "127.0.0.1", shard })),
    sharded_tables: [
      { database: "app", name: "users", column: "id" },
      { database: "app", name: "orders", column: "user_id" },
    ],
    ...users,
  });
  const routes = explainRoutes(
    "SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = 7;\n" +
      "SELECT id FROM users WHERE id IN (SELECT max(id) FROM users);\n" +
      "SELECT u.id FROM users u JOIN orders o ON o.user_id = u.id;\n" +
      "/* pgdog_shard: 2 */ SELECT count(*) FROM users",
    { config, database: "app" },
  );
  deepEqual(routes.map((r) => [r.target, r.role]), [
    [`shard ${shardForBigint(7n, 3)}`, "replica"],
    ["refused", "replica"],
    ["all shards", "replica"],
    ["shard 2", "replica"],
  ]);
  const deep = "SELECT " + "abs(".repeat(3000) + "1" + ")".repeat(3000);
  deepEqual(
    explainRoutes(deep, { config, database: "app" }).map((r) => [r.target, r.role]),
    [["refused", "primary"]],
  );
});

Deno.test("pgdog route: a lone BEGIN is held back, as the proxy holds it back", () => {
  const { config } = resolveConfig({
    databases: [
      { name: "app", host: "127.0.0.1", role: "primary" },
      { name: "app", host: "127.0.0.2", role: "replica" },
    ],
    ...users,
  });
  const route = (sql: string): Array<[string | null, string | null]> =>
    explainRoutes(sql, { config, database: "app" }).map((r) => [r.role, r.target]);
  // The proxy answers BEGIN itself and sends it with the transaction's first statement.
  deepEqual(route("BEGIN"), [[null, "answered by pgdog"]]);
  // That statement picks the host for both: conservative routing keeps a transaction's reads
  // on the primary, while a SELECT alone goes to a replica.
  deepEqual(route("BEGIN; SELECT 1"), [[null, "answered by pgdog"], ["primary", null]]);
  deepEqual(route("SELECT 1"), [["replica", null]]);
  // After its first statement the transaction is on a server: COMMIT goes there.
  deepEqual(route("BEGIN; SELECT 1; COMMIT; BEGIN").map((r) => r[1]), [
    "answered by pgdog",
    null,
    null,
    "answered by pgdog",
  ]);
  // A transaction that reached no server ends without one.
  deepEqual(route("BEGIN; ROLLBACK"), [[null, "answered by pgdog"], [null, "answered by pgdog"]]);
  // Not held back: BEGIN READ ONLY goes with its reads, a BEGIN inside a transaction to the server.
  deepEqual(route("BEGIN READ ONLY").map((r) => r[0]), ["replica"]);
});

Deno.test("pgdog route: an unknown function across shards is a plain function, and says so", () => {
  const { config } = resolveConfig({
    databases: [0, 1, 2].map((shard) => ({ name: "app", host: "127.0.0.1", shard })),
    sharded_tables: [{ database: "app", name: "users", column: "id" }],
    ...users,
  });
  const [plain, mine, one] = explainRoutes(
    "SELECT id FROM users; SELECT my_sum(age) FROM users; SELECT my_sum(age) FROM users " +
      "WHERE id = 1",
    { config, database: "app" },
  );
  deepEqual([plain.target, mine.target], ["all shards", "all shards"]);
  ok(!plain.reason.includes("plain function"), plain.reason);
  ok(mine.reason.includes("counts as a plain function"), mine.reason);
  ok(!one.reason.includes("plain function"), one.reason);
});

Deno.test("pgdog route: a merged cross-shard statement shows its merge plan and shard SQL", () => {
  const { config } = resolveConfig({
    databases: [0, 1, 2].map((shard) => ({ name: "app", host: "127.0.0.1", shard })),
    sharded_tables: [{ database: "app", name: "users", column: "id" }],
    ...users,
  });
  const [sorted, counted, star, one] = explainRoutes(
    "SELECT id, email FROM users ORDER BY email LIMIT 5 OFFSET 2;\n" +
      "SELECT country, avg(age) FROM users GROUP BY country HAVING count(*) > 1;\n" +
      "SELECT * FROM users ORDER BY id;\n" +
      "SELECT count(*) FROM users WHERE id = 1",
    { config, database: "app" },
  );
  deepEqual(sorted.target, "all shards");
  deepEqual(sorted.merge, {
    steps: "merge: merge sorted by 2; offset 2; limit 5",
    shardSql: "SELECT id, email FROM users ORDER BY email LIMIT 7",
  });
  deepEqual(counted.merge, {
    steps: "merge: group by 1; aggregate avg(2, 3, 4), count(*); having",
    shardSql: "SELECT country, sum(age), count(age), avg(age), count(*) FROM users GROUP BY 1",
  });
  // SELECT * across shards: the proxy reads the table's column order first.
  deepEqual(
    [star.target, star.reason],
    [
      "decided by the table's column order",
      "SELECT * across shards: the proxy reads the column order of users from shard 0",
    ],
  );
  equal(star.merge, undefined);
  // One shard: nothing to merge.
  equal(one.merge, undefined);
});

Deno.test("pgdog route: cross_shard_disabled refuses what would run on several shards", () => {
  const { config } = resolveConfig({
    general: { cross_shard_disabled: true },
    databases: [0, 1, 2].map((shard) => ({ name: "app", host: "127.0.0.1", shard })),
    sharded_tables: [{ database: "app", name: "users", column: "id" }],
    omnisharded_tables: [{ database: "app", tables: ["countries"] }],
    ...users,
  });
  const routes = explainRoutes(
    "SELECT count(*) FROM users; SELECT * FROM users WHERE id = 1; " +
      "INSERT INTO countries VALUES ('fr'); SET application_name = 'x'; SELECT 1; " +
      "SHOW application_name",
    { config, database: "app" },
  );
  deepEqual(routes.map((r) => r.target), [
    "refused",
    `shard ${shardForBigint(1n, 3)}`,
    "all shards",
    "all shards",
    "any shard",
    // One of the session's servers answers (in the proxy: one of those the client holds).
    "any shard",
  ]);
  ok(routes[0].reason.startsWith("cross-shard queries are disabled"), routes[0].reason);
});

Deno.test("pgdog route: a split INSERT shows each shard's statement; a key move its two shards", () => {
  const { config } = resolveConfig({
    databases: [0, 1, 2].map((shard) => ({ name: "app", host: "127.0.0.1", shard })),
    sharded_tables: [{ database: "app", name: "users", column: "id" }],
    rewrite: { enabled: true, split_inserts: "rewrite", shard_key: "rewrite" },
    ...users,
  });
  const ids = [1, 2, 3, 4, 5, 6];
  const shards = new Set(ids.map((id) => shardForBigint(BigInt(id), 3)));
  const [insert, update] = explainRoutes(
    `INSERT INTO users (id, email) VALUES ${ids.map((id) => `(${id}, 'x')`).join(", ")};\n` +
      "UPDATE users SET id = 2 WHERE id = 1",
    { config, database: "app" },
  );
  ok(insert.reason.includes("split into shards"), insert.reason);
  deepEqual(insert.split!.map((p) => p.shard), [...shards].sort());
  for (const part of insert.split!) {
    ok(part.sql.startsWith("INSERT INTO users (id, email) VALUES ("), part.sql);
  }
  const moves = shardForBigint(1n, 3) !== shardForBigint(2n, 3);
  equal(update.split !== undefined, moves);
});
