/**
 * Self-test of the harness's streaming replicas: base backup, replay,
 * pause/resume, lag, promotion and cleanup.
 */

import assert from "node:assert/strict";
import { type PgCluster, psql, startPostgres, startReplica } from "./harness/mod.ts";

/** Whether a path exists, through a subprocess: Deno refuses /dev/shm without --allow-all. */
async function existsOutsideDeno(path: string): Promise<boolean> {
  const { code } = await new Deno.Command("test", { args: ["-e", path] }).output();
  return code === 0;
}

/** Run SQL with psql as postgres; the result with verbose errors (SQLSTATE included). */
function psqlVerbose(pg: PgCluster, sql: string): ReturnType<typeof psql> {
  return psql({ host: pg.host, port: pg.port, user: "postgres", database: "postgres" }, sql, {
    extraArgs: ["-v", "VERBOSITY=verbose"],
  });
}

Deno.test("replica: streams, is read-only, pauses and resumes replay", async () => {
  await using primary = await startPostgres();
  await primary.sql("CREATE TABLE t (x int)");
  await using replica = await startReplica(primary);

  assert.notEqual(replica.port, primary.port);
  assert.notEqual(replica.dataDir, primary.dataDir);
  assert.notEqual(replica.logFile, primary.logFile);
  assert.equal(await replica.isInRecovery(), true);
  assert.equal(await primary.isInRecovery(), false);
  assert.equal((await replica.sql("SHOW hot_standby"))[0][0], "on");
  const senders = await primary.sql("SELECT state FROM pg_stat_replication");
  assert.deepEqual(senders, [["streaming"]]);

  // A table made before the backup is there; a row inserted afterwards arrives.
  await primary.sql("INSERT INTO t VALUES (1)");
  await replica.waitForReplay();
  assert.deepEqual(await replica.sql("SELECT x FROM t ORDER BY x"), [["1"]]);
  assert.equal(await replica.lagBytes(), 0);

  const write = await psqlVerbose(replica, "INSERT INTO t VALUES (2)");
  assert.notEqual(write.code, 0);
  assert.match(write.stderr, /25006/);

  await replica.pauseReplay();
  await primary.sql("INSERT INTO t VALUES (3)");
  await assert.rejects(replica.waitForReplay({ timeoutMs: 300 }), /timed out after 300 ms/);
  assert.deepEqual(await replica.sql("SELECT x FROM t ORDER BY x"), [["1"]]);
  assert.ok(await replica.lagBytes() > 0);

  await replica.resumeReplay();
  await replica.waitForReplay();
  assert.deepEqual(await replica.sql("SELECT x FROM t ORDER BY x"), [["1"], ["3"]]);
  assert.equal(await replica.lagBytes(), 0);

  // Destroying it removes its directories and the slot the harness made for it.
  assert.match(replica.slot, /^pgdog_replica_/);
  assert.deepEqual(await primary.sql("SELECT slot_name FROM pg_replication_slots"), [[
    replica.slot,
  ]]);
  await replica.destroy();
  assert.equal(await existsOutsideDeno(replica.dataDir), false);
  assert.equal(await existsOutsideDeno(replica.configDir), false);
  assert.deepEqual(await primary.sql("SELECT slot_name FROM pg_replication_slots"), []);
});

Deno.test("replica: promoted after its primary stops, accepts writes", async () => {
  await using primary = await startPostgres({ settings: { max_connections: 200 } });
  await primary.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
  await using replica = await startReplica(primary);
  // Settings are inherited from the primary (hot standby needs max_connections >= the primary's).
  assert.equal((await replica.sql("SHOW max_connections"))[0][0], "200");
  await replica.waitForReplay();
  await primary.stop();

  await replica.promote();
  assert.equal(await replica.isInRecovery(), false);
  await replica.sql("INSERT INTO t VALUES (2)");
  assert.deepEqual(await replica.sql("SELECT x FROM t ORDER BY x"), [["1"], ["2"]]);

  // Restarted, it stays a primary.
  await replica.stop();
  await replica.start();
  assert.equal(await replica.isInRecovery(), false);
});

Deno.test("replica: two at once, one with a slot; both stop after the primary is killed", async () => {
  await using primary = await startPostgres();
  const [a, b] = await Promise.all([
    startReplica(primary),
    startReplica(primary, { slot: "replica_b", applicationName: "replica_b" }),
  ]);
  await using _a = a;
  await using _b = b;
  assert.notEqual(a.port, b.port);

  await primary.sql("CREATE TABLE t AS SELECT 42 AS x");
  await Promise.all([a.waitForReplay(), b.waitForReplay()]);
  assert.deepEqual(await a.sql("SELECT x FROM t"), [["42"]]);
  assert.deepEqual(await b.sql("SELECT x FROM t"), [["42"]]);
  assert.equal(b.slot, "replica_b");
  const slots = await primary.sql(
    "SELECT slot_name, active FROM pg_replication_slots ORDER BY slot_name = 'replica_b'",
  );
  assert.deepEqual(slots, [[a.slot, "t"], ["replica_b", "t"]]);
  const names = await primary.sql(
    "SELECT application_name FROM pg_stat_replication ORDER BY application_name",
  );
  assert.ok(names.some(([name]) => name === "replica_b"), JSON.stringify(names));

  // Pausing one does not hold back the other.
  await a.pauseReplay();
  await primary.sql("INSERT INTO t VALUES (43)");
  await b.waitForReplay();
  assert.equal((await b.sql("SELECT count(*) FROM t"))[0][0], "2");
  assert.equal((await a.sql("SELECT count(*) FROM t"))[0][0], "1");

  await primary.kill();
  assert.equal(await a.isInRecovery(), true);
  await a.stop();
  assert.equal(a.running, false);
  await b.destroy();
  assert.equal(await existsOutsideDeno(b.dataDir), false);
});
