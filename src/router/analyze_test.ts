import { deepEqual, equal } from "node:assert/strict";
import { analyzeSql, loadParser } from "./analyze.ts";

await loadParser();

Deno.test("reads and writes", () => {
  const reads = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "SELECT * FROM a JOIN b ON a.id = b.a_id WHERE a.x = 1",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "EXPLAIN SELECT * FROM t",
    "EXPLAIN DELETE FROM t",
    "COPY t TO STDOUT",
    "COPY (SELECT * FROM t) TO STDOUT",
    "SELECT now(), lower(name) FROM t",
    "",
  ];
  for (const sql of reads) equal(analyzeSql(sql).write, false, sql);
  const writes = [
    "INSERT INTO t VALUES (1)",
    "UPDATE t SET a = 1",
    "DELETE FROM t",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
    "CREATE TABLE t (a int)",
    "COPY t FROM STDIN",
    "VACUUM t",
    "DO $$ BEGIN END $$",
    "CALL p()",
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t FOR SHARE",
    "SELECT * FROM t FOR NO KEY UPDATE",
    "SELECT * FROM t FOR KEY SHARE",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "SELECT nextval('s')",
    "SELECT setval('s', 1)",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_try_advisory_xact_lock(1)",
    "SELECT * INTO t2 FROM t",
    "EXPLAIN ANALYZE DELETE FROM t",
    "SHOW work_mem",
    "selec 1",
  ];
  for (const sql of writes) equal(analyzeSql(sql).write, true, sql);
});

Deno.test("transaction control", () => {
  equal(analyzeSql("BEGIN").transaction, "begin");
  equal(analyzeSql("BEGIN READ ONLY").transaction, "begin_read_only");
  equal(
    analyzeSql("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY").transaction,
    "begin_read_only",
  );
  equal(analyzeSql("BEGIN READ WRITE").transaction, "begin");
  equal(analyzeSql("SET TRANSACTION READ ONLY").transaction, "set_read_only");
  equal(analyzeSql("COMMIT").transaction, "commit");
  equal(analyzeSql("END").transaction, "commit");
  equal(analyzeSql("ROLLBACK").transaction, "rollback");
  equal(analyzeSql("SELECT 1").transaction, null);
  equal(analyzeSql("BEGIN; SET TRANSACTION READ ONLY; SELECT 1").readOnlyTransaction, true);
  equal(analyzeSql("BEGIN; SELECT 1").readOnlyTransaction, false);
  equal(analyzeSql("SELECT 1; SELECT 2").statements, 2);
});

Deno.test("tables, qualified or not, in reads and writes", () => {
  deepEqual(analyzeSql("SELECT * FROM s.a JOIN b ON true").tables, [{ schema: "s", name: "a" }, {
    name: "b",
  }]);
  deepEqual(analyzeSql("INSERT INTO s.t (a) VALUES (1)").tables, [{ schema: "s", name: "t" }]);
  deepEqual(analyzeSql("UPDATE t SET a = (SELECT 1 FROM u)").tables, [{ name: "t" }, {
    name: "u",
  }]);
});

Deno.test("syntax errors are kept", () => {
  const r = analyzeSql("selec 1");
  equal(r.ast, null);
  equal(r.error, 'syntax error at or near "selec"');
});
