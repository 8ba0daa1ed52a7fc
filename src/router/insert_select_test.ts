import assert from "node:assert/strict";
import { loadParser } from "./analyze.ts";
import {
  BATCH_ROWS,
  type InsertSelect,
  insertSelectOf,
  insertStatements,
} from "./insert_select.ts";
import type { ShardingConfig } from "./shard_keys.ts";

await loadParser();

const config: ShardingConfig = {
  shards: 3,
  tables: [{ name: "users", column: "id", type: "bigint", mapping: [] }],
  schemas: new Map(),
  omni: new Set(["src"]),
  splitInserts: "rewrite",
};

function planOf(sql: string): InsertSelect {
  const plan = insertSelectOf(sql, config);
  assert.ok(plan !== null && !("refusal" in plan), JSON.stringify(plan));
  return plan;
}

Deno.test("insertSelectOf: the SELECT as its own statement, the columns, ON CONFLICT", () => {
  const plan = planOf(
    "WITH g AS (SELECT x FROM generate_series(1, 3) x) INSERT INTO public.users AS u (email, id) " +
      "SELECT 'g' || x, x FROM g ON CONFLICT (id) DO UPDATE SET email = excluded.email;",
  );
  assert.deepEqual(plan.table, { schema: "public", name: "users", alias: "u" });
  assert.deepEqual(plan.columns, ["email", "id"]);
  assert.match(plan.selectSql, /^WITH g AS \(SELECT x FROM generate_series\(1, 3\) AS x\) SELECT/);
  assert.equal(plan.onConflict, "ON CONFLICT (id) DO UPDATE SET email = excluded.email");
  assert.equal(planOf("INSERT INTO users SELECT * FROM src").columns, null);
});

Deno.test("insertSelectOf: other statements are not its business; refusals say why", () => {
  for (
    const sql of [
      "INSERT INTO users VALUES (1, 'a')",
      "INSERT INTO src SELECT * FROM users",
      "INSERT INTO users DEFAULT VALUES",
      "SELECT 1",
      "INSERT INTO users SELECT 1; SELECT 2",
    ]
  ) assert.equal(insertSelectOf(sql, config), null, sql);
  const refused = insertSelectOf("INSERT INTO users SELECT $1 RETURNING $2", config, {
    params: ["1", "2"],
  });
  assert.ok(refused !== null && "refusal" in refused && /RETURNING/.test(refused.refusal));
  const plan = planOf(
    "INSERT INTO users (id) SELECT id FROM src ON CONFLICT (id) DO UPDATE SET email = 'u' " +
      "/* c */ RETURNING id AS returning_id, *;",
  );
  assert.equal(plan.onConflict, "ON CONFLICT (id) DO UPDATE SET email = 'u' /* c */");
  assert.equal(plan.returning, "RETURNING id AS returning_id, *");
  // A shard may skip rows: the order of the rows returned can't be known.
  for (
    const sql of [
      "INSERT INTO users (id) SELECT id FROM src ON CONFLICT DO NOTHING RETURNING id",
      "INSERT INTO users (id) SELECT id FROM src ON CONFLICT (id) DO UPDATE SET email = 'u' " +
      "WHERE users.email IS NULL RETURNING id",
    ]
  ) {
    const skips = insertSelectOf(sql, config);
    assert.ok(
      skips !== null && "refusal" in skips && /order of the rows returned/.test(skips.refusal),
      sql,
    );
  }
});

Deno.test("insertStatements: one INSERT per shard, in shard order, batched, literals quoted", () => {
  const plan = planOf(
    "INSERT INTO users (id, email) SELECT id, email FROM src ON CONFLICT DO NOTHING",
  );
  const rows = [["1", "a'b"], ["2", null], ["3", "c"]];
  const out = insertStatements(plan, rows, { columns: ["id", "email"], shards: [2, 0, 2] });
  assert.deepEqual(out, [
    {
      shard: 0,
      sql: `INSERT INTO "users" ("id", "email") VALUES ('2', NULL) ON CONFLICT DO NOTHING`,
      rows: 1,
      positions: [1],
    },
    {
      shard: 2,
      sql:
        `INSERT INTO "users" ("id", "email") VALUES ('1', 'a''b'), ('3', 'c') ON CONFLICT DO NOTHING`,
      rows: 2,
      positions: [0, 2],
    },
  ]);
  const many = Array.from({ length: BATCH_ROWS + 1 }, (_, i) => [String(i), "x"]);
  const batched = insertStatements(plan, many, {
    columns: ["id", "email"],
    shards: many.map(() => 1),
  });
  assert.deepEqual(batched.map((s) => s.rows), [BATCH_ROWS, 1]);
});
