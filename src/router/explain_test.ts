import { deepEqual } from "node:assert/strict";
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
