import { deepEqual, equal, match, ok } from "node:assert/strict";
import { loadParser, QueryRouter } from "./mod.ts";
import { decideShard, type ShardDecision, type ShardingConfig, type ShardLookup } from "./shard.ts";
import { BUILTIN_AGGREGATES, isAggregateFunction, USER_AGGREGATES_SQL } from "./aggregates.ts";
import { startPostgres } from "../../tests/harness/mod.ts";
import type { Node } from "./analyze.ts";

await loadParser();

const config: ShardingConfig = {
  shards: 3,
  tables: [{ name: "users", column: "id", type: "bigint", mapping: [] }],
  schemas: new Map(),
  omni: new Set(["countries"]),
  merge: true,
};

const router = new QueryRouter({ cacheLimit: 1000 });

function decide(sql: string, aggregates?: ReadonlySet<string>): [ShardDecision, ShardLookup] {
  const lookup: ShardLookup = {
    found: [],
    pluginShards: new Map(),
    missing: [],
    aggregates,
    missingAggregates: false,
  };
  return [decideShard(router.analyze(sql), { config, lookup }), lookup];
}

const mine = new Set(["my_sum", "my_rank"]);

Deno.test("a user-defined aggregate across shards is refused, not answered per shard", () => {
  for (
    const sql of [
      "SELECT my_sum(age) FROM users",
      "SELECT country, my_sum(age) FROM users GROUP BY country",
      "SELECT public.my_sum(age) FROM users",
      "SELECT id FROM users WHERE age > (SELECT my_sum(age) FROM users)",
      "SELECT * FROM (SELECT my_sum(age) AS s FROM users) t",
    ]
  ) {
    const [d] = decide(sql, mine);
    ok(d.unsupported, `${sql}: should be refused, goes to ${JSON.stringify(d.target)}`);
  }
  match(
    decide("SELECT my_sum(age) FROM users", mine)[0].unsupported!,
    /pgdog can't combine an aggregate it doesn't know/,
  );
});

Deno.test("a user-defined aggregate whole on one shard runs there", () => {
  const [one] = decide("SELECT my_sum(age) FROM users WHERE id = 5", mine);
  ok(!one.unsupported, one.unsupported);
  equal(one.target.kind, "one");
  // Grouped on the sharding key: each group is on one shard, the shards compute it.
  const [grouped] = decide("SELECT id, my_sum(age) FROM users GROUP BY id ORDER BY id", mine);
  ok(!grouped.unsupported, grouped.unsupported);
  deepEqual(grouped.target, { kind: "all" });
  ok(grouped.merge, "merged: sorted");
  equal(grouped.merge!.aggregate, null);
});

Deno.test("the database's aggregates are asked for when a call may be one of them", () => {
  // Unknown: a plain function (the decision says it needs them, the proxy asks shard 0).
  const [d, lookup] = decide("SELECT my_sum(age) FROM users");
  ok(!d.unsupported);
  equal(lookup.missingAggregates, true);
  // Known, and not one of them: no question.
  const [plain, known] = decide("SELECT lower(name) FROM users", mine);
  ok(!plain.unsupported, plain.unsupported);
  equal(known.missingAggregates, false);
  // Only built-in aggregates or none at all: nothing to ask.
  for (const sql of ["SELECT count(*) FROM users", "SELECT id FROM users", "SELECT 1"]) {
    equal(decide(sql)[1].missingAggregates, false, sql);
  }
  equal(decide("SELECT pg_catalog.lower(name) FROM users")[1].missingAggregates, false);
});

Deno.test("the built-in aggregate names are PostgreSQL's, and the catalog query finds the user's", async () => {
  await using pg = await startPostgres();
  const builtin = await pg.sql(
    "SELECT DISTINCT proname FROM pg_proc WHERE prokind = 'a' AND " +
      "pronamespace = 'pg_catalog'::regnamespace ORDER BY 1",
  );
  const names = builtin.map((r) => r[0]);
  for (const n of names) ok(BUILTIN_AGGREGATES.has(n), `${n} is a built-in aggregate`);
  await pg.sql(
    "CREATE AGGREGATE my_sum (int4) (sfunc = int4_sum, stype = bigint); " +
      "CREATE SCHEMA s; CREATE AGGREGATE s.my_max (int4) (sfunc = int4larger, stype = int4); " +
      "CREATE FUNCTION not_agg(int) RETURNS int LANGUAGE sql AS 'SELECT $1'",
  );
  const user = (await pg.sql(`${USER_AGGREGATES_SQL} ORDER BY 1`)).map((r) => r[0]);
  deepEqual(user, ["my_max", "my_sum"]);
  const call = (sql: string): Node =>
    ((router.analyze(sql).info.ast!.stmts[0].stmt!.SelectStmt as Node).targetList as Node[])
      .map((t) => (t.ResTarget as { val: Node }).val.FuncCall as Node)[0];
  ok(isAggregateFunction(call("SELECT s.my_max(1)"), new Set(user)));
  ok(!isAggregateFunction(call("SELECT not_agg(1)"), new Set(user)));
});
