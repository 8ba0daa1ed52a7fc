import { deepEqual, equal, ok } from "node:assert/strict";
import { loadParser, QueryRouter } from "./mod.ts";
import {
  changesTables,
  columnOrderKey,
  ColumnOrders,
  columnOrderSql,
  columnsFromRows,
  createsTemporaryTable,
} from "./columns.ts";

await loadParser();

const router = new QueryRouter({ cacheLimit: 100 });

Deno.test("column orders: unqualified names are kept per search_path and user", () => {
  const alice = { user: "alice" };
  const other = { user: "alice", searchPath: "other, public" };
  equal(columnOrderKey({ name: "t" }, alice), columnOrderKey({ name: "t" }, { user: "alice" }));
  ok(columnOrderKey({ name: "t" }, alice) !== columnOrderKey({ name: "t" }, other));
  ok(columnOrderKey({ name: "t" }, alice) !== columnOrderKey({ name: "t" }, { user: "bob" }));
  ok(
    columnOrderKey({ name: "t" }, alice) !== columnOrderKey({ schema: "public", name: "t" }, alice),
  );
  equal(
    columnOrderKey({ schema: "s", name: "t" }, alice),
    columnOrderKey({ schema: "s", name: "t" }, other),
  );

  const cache = new ColumnOrders();
  cache.set({ name: "t" }, { ...alice, columns: ["a", "id"], generation: cache.generation });
  cache.set({ name: "t" }, { ...other, columns: ["id", "a"], generation: cache.generation });
  deepEqual(cache.get({ name: "t" }, alice), ["a", "id"]);
  deepEqual(cache.get({ name: "t" }, other), ["id", "a"]);
  equal(cache.get({ schema: "public", name: "t" }, alice), undefined);
});

Deno.test("column orders: DDL clears them; a read DDL overtook is not kept", () => {
  const cache = new ColumnOrders();
  const ctx = { user: "u" };
  const started = cache.generation;
  cache.set({ name: "t" }, { ...ctx, columns: ["id"], generation: started });
  equal(cache.size, 1);
  cache.clear();
  equal(cache.get({ name: "t" }, ctx), undefined);
  // Read before the clear, answered after it: stale, not kept.
  cache.set({ name: "t" }, { ...ctx, columns: ["id"], generation: started });
  equal(cache.get({ name: "t" }, ctx), undefined);
  cache.set({ name: "t" }, { ...ctx, columns: ["x", "id"], generation: cache.generation });
  deepEqual(cache.get({ name: "t" }, ctx), ["x", "id"]);

  const bounded = new ColumnOrders({ limit: 2 });
  for (const name of ["a", "b", "c"]) {
    bounded.set({ name }, { ...ctx, columns: [name], generation: bounded.generation });
  }
  equal(bounded.size, 2);
  equal(bounded.get({ name: "a" }, ctx), undefined);
});

Deno.test("column orders: the catalog query quotes names and the search_path", () => {
  const own = columnOrderSql({ schema: 'My"Schema', name: "it's" }, { ownTransaction: false });
  ok(own.includes(`to_regclass(E'"My""Schema"."it''s"')`), own);
  ok(own.includes("a.attnum > 0 AND NOT a.attisdropped"), own);
  ok(own.includes("ORDER BY a.attnum"), own);
  ok(!own.includes("BEGIN"), own);
  const pooled = columnOrderSql({ name: "t" }, { ownTransaction: true, searchPath: "a\\b', x" });
  ok(pooled.startsWith("BEGIN;"), pooled);
  ok(pooled.endsWith(";COMMIT"), pooled);
  ok(pooled.includes(`set_config('search_path', E'a\\\\b'', x', true)`), pooled);
  ok(
    columnOrderSql({ name: "t" }, { ownTransaction: true }).includes(
      "SET LOCAL search_path TO DEFAULT",
    ),
  );
  equal(columnsFromRows([]), null);
  deepEqual(columnsFromRows([[null, "f"]]), { columns: [], temporary: false });
  deepEqual(columnsFromRows([["id", "t"], ["name", "t"]]), {
    columns: ["id", "name"],
    temporary: true,
  });
});

Deno.test("column orders: which statements make pgdog read them again", () => {
  for (
    const sql of [
      "CREATE TABLE t (id bigint)",
      "ALTER TABLE t ADD COLUMN x int",
      "ALTER TABLE t RENAME TO u",
      "ALTER TABLE t SET SCHEMA s",
      "DROP TABLE t",
      "CREATE VIEW v AS SELECT 1",
      "SELECT 1 INTO newtable",
      "CREATE TABLE t2 AS SELECT 1",
      "DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$",
      "CALL p()",
      "SELECT 1; DROP TABLE t",
      "EXPLAIN ANALYZE CREATE TABLE t3 AS SELECT 1",
    ]
  ) ok(changesTables(router.analyze(sql)), sql);
  for (
    const sql of [
      "SELECT * FROM t",
      "INSERT INTO t VALUES (1)",
      "UPDATE t SET x = 1",
      "DELETE FROM t",
      "BEGIN",
      "SET search_path TO s",
      "CREATE INDEX ON t (x)",
      "TRUNCATE t",
      "EXPLAIN SELECT 1",
      "not sql at all",
    ]
  ) ok(!changesTables(router.analyze(sql)), sql);
});

Deno.test("column orders: statements that create temporary tables", () => {
  for (
    const sql of [
      "CREATE TEMP TABLE t (a int)",
      "CREATE TEMPORARY TABLE t AS SELECT 1",
      "SELECT 1 INTO TEMP t",
      "CREATE TABLE pg_temp.t (a int)",
      "CREATE TEMP VIEW v AS SELECT 1",
      "SELECT 1; CREATE TEMP TABLE t (a int)",
    ]
  ) ok(createsTemporaryTable(router.analyze(sql)), sql);
  for (const sql of ["CREATE TABLE t (a int)", "SELECT 1 INTO t", "INSERT INTO t VALUES (1)"]) {
    ok(!createsTemporaryTable(router.analyze(sql)), sql);
  }
});
