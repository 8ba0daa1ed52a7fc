import { deepEqual, equal, ok } from "node:assert/strict";
import { loadParser, QueryRouter } from "./mod.ts";
import { type BindValues, decideShard, type ShardingConfig } from "./shard.ts";
import { shardForBigint } from "../sharding/hash.ts";
import { keyMoveDelete, keyMoveInsert } from "./key_update.ts";

await loadParser();

const config: ShardingConfig = {
  shards: 3,
  tables: [{ name: "users", column: "id", type: "bigint", mapping: [] }],
  schemas: new Map(),
  omni: new Set(),
  shardKey: "rewrite",
};
const router = new QueryRouter({ cacheLimit: 100 });
const s = (id: number) => shardForBigint(BigInt(id), 3);
let other = 2;
while (s(other) === s(1)) other++;
let same = 2;
while (s(same) !== s(1)) same++;

function decide(sql: string, options: { config?: ShardingConfig; bind?: BindValues } = {}) {
  return decideShard(router.analyze(sql), { config: options.config ?? config, bind: options.bind });
}

Deno.test("key UPDATE: a move plan when the new key maps to another shard", () => {
  const d = decide(
    `UPDATE users u SET id = ${other}, email = u.email || 'x' WHERE id = 1 AND email <> 'it''s' ` +
      "RETURNING u.id, email",
  );
  ok(!d.unsupported, d.unsupported);
  const plan = d.keyUpdate!;
  equal(plan.from, s(1));
  equal(plan.to, s(other));
  deepEqual(d.target, { kind: "some", shards: [s(1), s(other)].sort() });
  equal(
    plan.selectSql,
    "SELECT ctid::text, (to_json(u.*))::text FROM users AS u WHERE id = 1 AND email <> 'it''s' " +
      "FOR UPDATE",
  );
  equal(plan.returning, "u.id, email");
  equal(
    keyMoveInsert(plan, '{"id":1,"email":"a","n":null}'),
    'INSERT INTO "users" AS "u" ("id", "email", "n") SELECT ' + other +
      ', u.email || \'x\', "u"."n" FROM json_populate_record(NULL::"users", ' +
      '$pgdog${"id":1,"email":"a","n":null}$pgdog$::json) AS "u" RETURNING u.id, email',
  );
  equal(keyMoveDelete(plan, "(0,1)"), `DELETE FROM "users" WHERE ctid = '(0,1)'::tid RETURNING 1`);
});

Deno.test("key UPDATE: parameters; same shard is a plain UPDATE; error, ignore, refusals", () => {
  const text = (v: string) => new TextEncoder().encode(v);
  const d = decide("UPDATE users SET id = $1, n = $3 WHERE id = $2 RETURNING id, $3::int AS k", {
    bind: { formats: [], values: [text(String(other)), text("1"), text("7")] },
  });
  ok(!d.unsupported, d.unsupported);
  equal(
    d.keyUpdate!.selectSql,
    "SELECT ctid::text, (to_json(users.*))::text FROM users WHERE id = $1 FOR UPDATE",
  );
  deepEqual(d.keyUpdate!.selectParams, [2]);
  deepEqual(d.keyUpdate!.set, { id: "$1", n: "$2" });
  equal(d.keyUpdate!.returning, "id, CAST($2 AS int) AS k");
  deepEqual(d.keyUpdate!.insertParams, [1, 3]);
  ok(
    decide(`UPDATE users SET id = ${other}, n = (SELECT 1) WHERE id = 1`).unsupported?.includes(
      "subquery",
    ),
  );
  const plain = decide(`UPDATE users SET id = ${same} WHERE id = 1`);
  deepEqual(plain.target, { kind: "one", shard: s(1) });
  equal(plain.keyUpdate, undefined);
  ok(decide(`UPDATE users SET id = ${other} WHERE email = 'x'`).unsupported?.includes("one shard"));
  ok(decide("UPDATE users SET id = id + 1 WHERE id = 1").unsupported?.includes("constant"));
  const refused = decide(`UPDATE users SET id = ${other} WHERE id = 1`, {
    config: { ...config, shardKey: "error" },
  });
  ok(refused.unsupported?.includes('shard_key = "rewrite"'), refused.unsupported);
  const ignored = decide(`UPDATE users SET id = ${other} WHERE id = 1`, {
    config: { ...config, shardKey: "ignore" },
  });
  deepEqual(ignored.target, { kind: "one", shard: s(1) });
});
