import { deepEqual, equal, ok } from "node:assert/strict";
import { loadParser, QueryRouter } from "./mod.ts";
import { type BindValues, decideShard, type ShardingConfig } from "./shard.ts";
import { shardForBigint } from "../sharding/hash.ts";
import { describeSplitInsert } from "./split_insert.ts";

await loadParser();

const base: ShardingConfig = {
  shards: 3,
  tables: [{ name: "users", column: "id", type: "bigint", mapping: [] }],
  schemas: new Map(),
  omni: new Set(),
  splitInserts: "rewrite",
};

const router = new QueryRouter({ cacheLimit: 100 });
const s = (id: number) => shardForBigint(BigInt(id), 3);
// Three ids, one per shard.
const ids: number[] = [];
for (let id = 1; ids.length < 3; id++) if (!ids.some((x) => s(x) === s(id))) ids.push(id);
const [a, b, c] = ids;

function decide(sql: string, options: { config?: ShardingConfig; bind?: BindValues } = {}) {
  return decideShard(router.analyze(sql), { config: options.config ?? base, bind: options.bind });
}

Deno.test("split INSERT: one statement per shard, rows in order, literals and DEFAULT kept", () => {
  const d = decide(
    `INSERT INTO users (id, email) VALUES (${a}, 'x'), (${b}, 'it''s'), (${a}, DEFAULT), ` +
      `(${c}, lower('Q') || 'r')`,
  );
  ok(!d.unsupported, d.unsupported);
  const plan = d.splitInsert!;
  ok(plan);
  equal(plan.rowCount, 4);
  equal(plan.returning, false);
  deepEqual(plan.statements.map((st) => st.shard), [s(a), s(b), s(c)].sort());
  const ofA = plan.statements.find((st) => st.shard === s(a))!;
  deepEqual(ofA.rows, [0, 2]);
  equal(ofA.sql, `INSERT INTO users (id, email) VALUES (${a}, 'x'), (${a}, DEFAULT)`);
  const ofB = plan.statements.find((st) => st.shard === s(b))!;
  equal(ofB.sql, `INSERT INTO users (id, email) VALUES (${b}, 'it''s')`);
  const ofC = plan.statements.find((st) => st.shard === s(c))!;
  ok(ofC.sql.includes("lower('Q') || 'r'"), ofC.sql);
  ok(describeSplitInsert(plan).includes("split INSERT into users"));
});

Deno.test("split INSERT: Bind parameters renumbered per statement", () => {
  const text = (v: string) => new TextEncoder().encode(v);
  const bind: BindValues = {
    formats: [0],
    values: [text(String(a)), text("x"), text(String(b)), text("y"), text("tag")],
  };
  const d = decide(
    "INSERT INTO users (id, email, note) VALUES ($1, $2, $5), ($3, $4, $5) " +
      "ON CONFLICT (id) DO UPDATE SET email = excluded.email RETURNING id, $5::text",
    { bind },
  );
  ok(!d.unsupported, d.unsupported);
  const plan = d.splitInsert!;
  equal(plan.returning, true);
  const ofA = plan.statements.find((st) => st.shard === s(a))!;
  deepEqual(ofA.params, [1, 2, 5]);
  ok(ofA.sql.startsWith("INSERT INTO users (id, email, note) VALUES ($1, $2, $3) ON CONFLICT"));
  ok(ofA.sql.endsWith("RETURNING id, CAST($3 AS text)"), ofA.sql);
  const ofB = plan.statements.find((st) => st.shard === s(b))!;
  deepEqual(ofB.params, [3, 4, 5]);
  ok(ofB.sql.includes("VALUES ($1, $2, $3)"));
});

Deno.test("split INSERT: refused when RETURNING rows may be skipped; error and ignore modes", () => {
  const sql = `INSERT INTO users (id) VALUES (${a}), (${b})`;
  const skip = decide(`${sql} ON CONFLICT DO NOTHING RETURNING id`);
  ok(skip.unsupported?.includes("order of the rows returned"), skip.unsupported);
  ok(!decide(`${sql} ON CONFLICT DO NOTHING`).unsupported);
  const refused = decide(sql, { config: { ...base, splitInserts: "error" } });
  ok(refused.unsupported?.includes('split_inserts = "rewrite"'), refused.unsupported);
  const ignored = decide(sql, { config: { ...base, splitInserts: "ignore" } });
  deepEqual(ignored.target, { kind: "one", shard: s(a) });
  // Rows on one shard are not split.
  equal(decide(`INSERT INTO users (id) VALUES (${a}), (${a})`).splitInsert, undefined);
});
