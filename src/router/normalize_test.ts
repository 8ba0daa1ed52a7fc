import { deepEqual, equal } from "node:assert/strict";
import { normalize } from "./normalize.ts";

Deno.test("literals become parameters and are kept in order", () => {
  const a = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 17");
  const b = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 42");
  equal(a.key, "SELECT abalance FROM pgbench_accounts WHERE aid = $1");
  equal(a.key, b.key);
  deepEqual(b.literals, [{ kind: "number", value: "42" }]);
  const c = normalize("UPDATE t SET a = 'it''s', b = -1.5e3 WHERE c IN (1, 2) AND d = E'x\\ny'");
  equal(c.key, "UPDATE t SET a = $1, b = -$2 WHERE c IN ($3, $4) AND d = $5");
  deepEqual(c.literals.map((l) => l.value), ["it's", "1.5e3", "1", "2", "x\ny"]);
});

Deno.test("identifiers, typed literals, parameters and dollar quotes", () => {
  const r = normalize(
    `SELECT t1.col2, "x 3", interval '1 day', date '2024-01-01' FROM t1 WHERE a = $1 AND b = 5`,
  );
  equal(
    r.key,
    `SELECT t1.col2, "x 3", interval '1 day', date '2024-01-01' FROM t1 WHERE a = $1 AND b = $2`,
  );
  equal(r.firstParam, 2);
  equal(normalize("SELECT $$a 'b'$$, $tag$x$tag$").key, "SELECT $1, $2");
});

Deno.test("comments leave the key and leave their directives", () => {
  const r = normalize("/* pgdog_role: replica */ SELECT 1 -- pgdog_shard: 3\n");
  equal(r.key, "SELECT $1");
  deepEqual([...r.directives!], [["role", "replica"], ["shard", "3"]]);
  equal(normalize("SELECT 1 /* trace=abc */").key, normalize("SELECT 2 /* trace=xyz */").key);
  equal(normalize("/* app: web */\n  SELECT 1 -- end").key, normalize("SELECT 2").key);
  deepEqual([...normalize("/* pgdog_sharding_key: 'us-east-1' */ select 1").directives!], [[
    "sharding_key",
    "us-east-1",
  ]]);
});

Deno.test("a query without literals or comments is its own key", () => {
  const sql = "SELECT * FROM users WHERE id = $1";
  const r = normalize(sql);
  equal(r.key, sql);
  equal(r.literals.length, 0);
  equal(r.directives, null);
});

Deno.test("a query whose literals match a cached parameterized text keeps its literal values", async () => {
  const { loadParser, QueryRouter } = await import("./mod.ts");
  await loadParser();
  const router = new QueryRouter({ cacheLimit: 10 });
  const withParams = router.analyze("INSERT INTO t (id, name) VALUES ($1, $2)");
  deepEqual(withParams.literals, []);
  const withLiterals = router.analyze("INSERT INTO t (id, name) VALUES (42, 'x')");
  equal(withLiterals.entry, withParams.entry);
  deepEqual(withLiterals.literals.map((l) => l.value), ["42", "x"]);
});
