import { deepEqual, equal, ok } from "node:assert/strict";
import { loadParser, QueryRouter } from "./mod.ts";
import {
  type BindValues,
  decideShard,
  pluginKey,
  type ShardingConfig,
  type ShardLookup,
  type ShardTarget,
} from "./shard.ts";
import { shardForBigint, shardForText } from "../sharding/hash.ts";

await loadParser();

const config: ShardingConfig = {
  shards: 4,
  tables: [
    { name: "users", column: "id", type: "bigint", mapping: [] },
    { name: "notes", column: "author", type: "varchar", mapping: [] },
    {
      name: "regions",
      column: "code",
      type: "bigint",
      mapping: [
        { kind: "list", values: [1n, 2n], shard: 3 },
        { kind: "range", start: 100n, end: 200n, shard: 1 },
      ],
    },
    { column: "user_id", type: "bigint", mapping: [] },
  ],
  schemas: new Map([["tenant_a", 2]]),
  omni: new Set(["countries"]),
};

const router = new QueryRouter({ cacheLimit: 100 });

function target(
  sql: string,
  options: { bind?: BindValues; searchPath?: string } = {},
): ShardTarget {
  const d = decideShard(router.analyze(sql), {
    config,
    bind: options.bind,
    session: { searchPath: options.searchPath },
  });
  ok(!d.unsupported, `${sql}: ${d.unsupported}`);
  return d.target;
}

function refused(sql: string): string {
  const d = decideShard(router.analyze(sql), { config });
  ok(d.unsupported, `${sql} should be refused`);
  return d.unsupported!;
}

const one = (id: bigint) => ({ kind: "one", shard: shardForBigint(id, 4) });

Deno.test("keys in WHERE: =, reversed, IN, IS NOT DISTINCT FROM, aliases, AND; OR goes everywhere", () => {
  deepEqual(target("SELECT * FROM users WHERE id = 42"), one(42n));
  deepEqual(target("SELECT * FROM users WHERE 42 = id"), one(42n));
  deepEqual(target("SELECT * FROM users u WHERE u.id = -7 AND u.name = 'x'"), one(-7n));
  deepEqual(target("SELECT * FROM users WHERE id IS NOT DISTINCT FROM 9"), one(9n));
  const shards = [...new Set([1n, 2n, 3n, 4n, 5n].map((v) => shardForBigint(v, 4)))].sort();
  const inList = target("SELECT * FROM users WHERE id IN (1, 2, 3, 4, 5)");
  if (shards.length === 1) deepEqual(inList, { kind: "one", shard: shards[0] });
  else if (shards.length === 4) deepEqual(inList, { kind: "all" });
  else deepEqual(inList, { kind: "some", shards });
  deepEqual(target("SELECT * FROM users WHERE id = 1 OR id = 2"), { kind: "all" });
  deepEqual(target("SELECT * FROM notes WHERE author = 'ann'"), {
    kind: "one",
    shard: shardForText("ann", 4),
  });
});

Deno.test("Bind values, text and binary, and joins on a sharded column", () => {
  const text = { formats: [0], values: [new TextEncoder().encode("1234")] };
  deepEqual(target("SELECT * FROM users WHERE id = $1", { bind: text }), one(1234n));
  const bin = new Uint8Array(8);
  new DataView(bin.buffer).setBigInt64(0, -99n);
  deepEqual(
    target("SELECT * FROM users WHERE id = $1", { bind: { formats: [1], values: [bin] } }),
    one(-99n),
  );
  deepEqual(
    target("SELECT * FROM users u JOIN payments p ON p.user_id = u.id WHERE p.user_id = 77"),
    one(77n),
  );
});

Deno.test("INSERT, UPDATE and DELETE", () => {
  deepEqual(target("INSERT INTO users (name, id) VALUES ('a', 5)"), one(5n));
  deepEqual(target("UPDATE users SET name = 'b' WHERE id = 6"), one(6n));
  deepEqual(target("DELETE FROM users WHERE id = 8"), one(8n));
  deepEqual(target("DELETE FROM users WHERE name = 'z'"), { kind: "all" });
  ok(/sharding key id/.test(refused("UPDATE users SET id = 1 WHERE id = 2")));
  const [a, b] = [1n, 2n].map((v) => shardForBigint(v, 4));
  if (a !== b) refused("INSERT INTO users (id) VALUES (1), (2)");
});

Deno.test("mappings: list, then range, then hash; DDL, omnisharded tables, schemas", () => {
  deepEqual(target("SELECT * FROM regions WHERE code = 2"), { kind: "one", shard: 3 });
  deepEqual(target("SELECT * FROM regions WHERE code = 150"), { kind: "one", shard: 1 });
  // No rule matches and the table has rules: every shard.
  deepEqual(target("SELECT * FROM regions WHERE code = 5000"), { kind: "all" });
  deepEqual(target("CREATE TABLE t (x int)"), { kind: "all" });
  deepEqual(target("SELECT * FROM countries"), { kind: "any" });
  const omni = decideShard(router.analyze("INSERT INTO countries VALUES ('fr')"), { config });
  equal(omni.omniWrite, true);
  deepEqual(target("SELECT * FROM tenant_a.items"), { kind: "one", shard: 2 });
  deepEqual(target("SELECT * FROM items", { searchPath: '"$user", tenant_a' }), {
    kind: "one",
    shard: 2,
  });
});

Deno.test("results that need merging are refused, comments route by hand", () => {
  for (
    const sql of [
      "SELECT * FROM users ORDER BY id",
      "SELECT * FROM users LIMIT 3",
      "SELECT count(*) FROM users",
      "SELECT name FROM users GROUP BY name",
      "SELECT DISTINCT name FROM users",
    ]
  ) ok(/not supported yet/.test(refused(sql)), sql);
  deepEqual(target("/* pgdog_shard: 3 */ SELECT * FROM users ORDER BY id"), {
    kind: "one",
    shard: 3,
  });
  deepEqual(target("/* pgdog_sharding_key: 42 */ SELECT * FROM users"), one(42n));
});

Deno.test("plugin hashers: keys found first, then decided with the plugin's answers", () => {
  const plugged: ShardingConfig = {
    ...config,
    tables: [
      { name: "events", column: "id", type: "bigint", mapping: [], plugin: "mod" },
      {
        name: "zones",
        column: "z",
        type: "bigint",
        mapping: [{ kind: "list", values: [7n], shard: 2 }],
        plugin: "mod",
      },
    ],
  };
  const lookup: ShardLookup = { found: [], pluginShards: new Map(), missing: [] };
  const analysis = router.analyze("select * from events where id in (10, 11)");
  decideShard(analysis, { config: plugged, lookup });
  deepEqual(lookup.found.map((k) => k.value), ["10", "11"]);
  deepEqual(lookup.missing.map((m) => [m.plugin, m.value]), [["mod", "10"], ["mod", "11"]]);
  // The plugin's answers (here: 3 and 1) decide the second pass.
  lookup.pluginShards.set(pluginKey("mod", "10"), 3);
  lookup.pluginShards.set(pluginKey("mod", "11"), 1);
  lookup.found = [];
  lookup.missing = [];
  const d = decideShard(analysis, { config: plugged, lookup });
  deepEqual(d.target, { kind: "some", shards: [1, 3] });
  deepEqual(lookup.missing, []);
  // A mapping rule still comes first: no plugin call for 7.
  const z: ShardLookup = { found: [], pluginShards: new Map(), missing: [] };
  deepEqual(
    decideShard(router.analyze("select * from zones where z = 7"), {
      config: plugged,
      lookup: z,
    }).target,
    { kind: "one", shard: 2 },
  );
  deepEqual(z.missing, []);
});

Deno.test("INSERT without a column list: the key's position from the column order", () => {
  const orders = new Map([
    ["users", ["id", "name"]],
    ["events", ["note", "kind", "user_id"]],
    ["s.events", ["user_id", "note"]],
  ]);
  const decide = (sql: string, known = orders) => {
    const lookup: ShardLookup = {
      found: [],
      pluginShards: new Map(),
      missing: [],
      columns: (t) => known.get(t.schema ? `${t.schema}.${t.name}` : t.name),
      missingColumns: [],
    };
    return { decision: decideShard(router.analyze(sql), { config, lookup }), lookup };
  };
  deepEqual(decide("INSERT INTO users VALUES (9, 'x')").decision.target, one(9n));
  deepEqual(decide("INSERT INTO events VALUES ('n', 'k', 42)").decision.target, one(42n));
  deepEqual(decide("INSERT INTO s.events VALUES (43, 'n')").decision.target, one(43n));
  deepEqual(
    decide("INSERT INTO events VALUES ('a', 'k', 7), ('b', 'k', 7)").decision.target,
    one(7n),
  );
  // A short row or DEFAULT leaves the key to the column default: any one shard.
  equal(decide("INSERT INTO events VALUES ('n')").decision.target.kind, "any");
  equal(decide("INSERT INTO events VALUES ('n', 'k', DEFAULT)").decision.target.kind, "any");
  equal(decide("INSERT INTO events (user_id) VALUES (DEFAULT)").decision.target.kind, "any");
  deepEqual(
    decide("INSERT INTO events VALUES ('a', 'k', DEFAULT), ('b', 'k', 8)").decision.target,
    one(8n),
  );
  // DEFAULT VALUES needs no column order.
  const defaults = decide("INSERT INTO events DEFAULT VALUES", new Map());
  equal(defaults.decision.target.kind, "any");
  deepEqual(defaults.lookup.missingColumns, []);
  // Unknown column order: noted for the caller to look up; refused if it can't.
  const unknown = decide("INSERT INTO s.other VALUES (1, 2)");
  deepEqual(unknown.lookup.missingColumns, [{ schema: "s", name: "other" }]);
  ok(unknown.decision.unsupported?.includes("without a column list"));
  // With a column list, or INSERT ... SELECT, nothing is looked up.
  const listed = decide("INSERT INTO nosuch (user_id) VALUES (5)", new Map());
  deepEqual(listed.decision.target, one(5n));
  deepEqual(listed.lookup.missingColumns, []);
  const select = decide("INSERT INTO nosuch SELECT 1", new Map());
  ok(select.decision.unsupported?.includes("INSERT ... SELECT"));
  deepEqual(select.lookup.missingColumns, []);
});

Deno.test("several statements: any one refused refuses them all", () => {
  ok(refused("DELETE FROM users; SELECT * FROM users ORDER BY id").includes("ORDER BY"));
  ok(refused("SELECT * FROM users ORDER BY id; DELETE FROM users").includes("ORDER BY"));
});
