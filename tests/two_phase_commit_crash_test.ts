/**
 * Two-phase commit survives a crash: pgdog is killed (SIGKILL, by the test-only fault point
 * PGDOG_2PC_CRASH_AT) at each step of a commit across two shards (after the first PREPARE,
 * after every PREPARE, after the decision is logged, after the first COMMIT PREPARED), then
 * started again on the same log: before it accepts clients, the transaction is rolled back
 * (undecided) or committed (decided) on every shard, and nothing is left in pg_prepared_xacts.
 * Also: a shard stopped during the second phase (PGDOG_2PC_PAUSE_AT holds pgdog there) gets
 * its COMMIT PREPARED from the background retries once it is back; the client was told COMMIT.
 */

import assert from "node:assert/strict";
import {
  connectPg,
  dumpLogsOnFailure,
  psql,
  type ShardedSetup,
  startSharded,
} from "./harness/mod.ts";
import { shardForBigint } from "../src/sharding/hash.ts";

const SCHEMA = "CREATE TABLE accounts (id bigint PRIMARY KEY, balance int NOT NULL);";

/** Ids on each shard (of `count`). */
function idsByShard(count: number): bigint[][] {
  const out: bigint[][] = Array.from({ length: count }, () => []);
  for (let i = 1n; out.some((l) => l.length < 12); i++) {
    const s = shardForBigint(i, count);
    if (out[s].length < 12) out[s].push(i);
  }
  return out;
}

async function rowsOn(setup: ShardedSetup, sql: string): Promise<string[][][]> {
  return await Promise.all(setup.shards.map((_, i) => setup.onShard(i, sql)));
}

async function prepared(setup: ShardedSetup): Promise<number[]> {
  const rows = await rowsOn(setup, "SELECT count(*) FROM pg_prepared_xacts");
  return rows.map((r) => Number(r[0][0]));
}

Deno.test({
  name: "two-phase commit: pgdog killed at each step, then recovered",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const walDir = await Deno.makeTempDir({ prefix: "pgdog-2pc-wal-" });
    await using setup = await startSharded({
      shards: 2,
      shardedTables: [{ name: "accounts", column: "id", data_type: "bigint" }],
      schema: SCHEMA,
      settings: { max_prepared_transactions: 10 },
      general: { two_phase_commit: true },
    });
    const [s0, s1] = idsByShard(2);
    const cases: Array<{ step: string; committed: boolean; preparedBefore: number[] }> = [
      { step: "first_prepare", committed: false, preparedBefore: [1, 0] },
      { step: "prepared", committed: false, preparedBefore: [1, 1] },
      { step: "decided", committed: true, preparedBefore: [1, 1] },
      { step: "first_commit", committed: true, preparedBefore: [0, 1] },
    ];
    try {
      await t.step("prepared transactions the log doesn't know", async () => {
        // Prepared before the log existed: rolled back at startup; another node's: left alone.
        const prepare = (gid: string, id: bigint): Promise<string[][]> =>
          setup.onShard(
            0,
            `BEGIN; INSERT INTO accounts VALUES (${id}, 0); PREPARE TRANSACTION '${gid}'`,
          );
        await prepare("__pgdog_2pc_0_0_00000000000a_0", s0[10]);
        await prepare("__pgdog_2pc_7_0_00000000000b_0", s0[11]);
        await new Promise((r) => setTimeout(r, 50));
        const first = await setup.startProxy({ two_phase_commit_wal_dir: walDir });
        await first.proxy.stop();
        const gids = async (): Promise<string[]> =>
          (await setup.onShard(0, "SELECT gid FROM pg_prepared_xacts ORDER BY gid")).map((r) =>
            r[0]
          );
        assert.deepEqual(await gids(), ["__pgdog_2pc_7_0_00000000000b_0"]);
        // Prepared after the log was created and not in it: left alone, with a warning.
        await prepare("__pgdog_2pc_0_0_00000000000c_0", s0[10]);
        const second = await setup.startProxy({ two_phase_commit_wal_dir: walDir });
        const exit = await second.proxy.stop();
        assert.match(exit.logs, /__pgdog_2pc_0_0_00000000000c_0.*not in the log/);
        assert.deepEqual(await gids(), [
          "__pgdog_2pc_0_0_00000000000c_0",
          "__pgdog_2pc_7_0_00000000000b_0",
        ]);
        for (const gid of await gids()) await setup.onShard(0, `ROLLBACK PREPARED '${gid}'`);
        assert.deepEqual(await rowsOn(setup, "SELECT id FROM accounts"), [[], []]);
      });
      for (const [i, c] of cases.entries()) {
        await t.step(`killed at ${c.step}`, async () => {
          const general = { two_phase_commit_wal_dir: walDir };
          const crashing = await setup.startProxy(general, {
            env: { PGDOG_2PC_CRASH_AT: c.step },
          });
          const a = s0[i];
          const b = s1[i];
          const r = await psql(
            crashing.target,
            `BEGIN;
             INSERT INTO accounts VALUES (${a}, ${i});
             INSERT INTO accounts VALUES (${b}, ${i});
             COMMIT;`,
          );
          assert.notEqual(r.code, 0, "the connection broke");
          const exit = await crashing.proxy.waitForExit({ timeoutMs: 10_000 });
          assert.match(exit.logs, new RegExp(`PGDOG_2PC_CRASH_AT=${c.step}`));
          // (Which shard comes first depends on the order the transaction reached them.)
          assert.deepEqual(
            (await prepared(setup)).sort(),
            c.preparedBefore.sort(),
            "left prepared by the crash",
          );
          // Started again on the same log: it finishes the transaction before it listens.
          const again = await setup.startProxy(general);
          try {
            await dumpLogsOnFailure(again.proxy, async () => {
              assert.deepEqual(await prepared(setup), [0, 0], "nothing is left prepared");
              const rows = await rowsOn(
                setup,
                `SELECT id FROM accounts WHERE id IN (${a}, ${b})`,
              );
              assert.deepEqual(
                rows,
                c.committed ? [[[String(a)]], [[String(b)]]] : [[], []],
                "all or nothing",
              );
              // And it serves.
              const ok = await psql(
                again.target,
                `BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = ${a};
                 UPDATE accounts SET balance = balance + 1 WHERE id = ${b}; COMMIT;`,
              );
              assert.equal(ok.code, 0, ok.stderr);
            });
          } finally {
            await again.proxy.stop();
          }
        });
      }
      await t.step("killed after the decision, a shard down at the restart", async () => {
        const general = { two_phase_commit_wal_dir: walDir };
        const crashing = await setup.startProxy(general, {
          env: { PGDOG_2PC_CRASH_AT: "decided" },
        });
        const [a, b] = [s0[8], s1[8]];
        const r = await psql(
          crashing.target,
          `BEGIN; INSERT INTO accounts VALUES (${a}, 8); INSERT INTO accounts VALUES (${b}, 8);
           COMMIT;`,
        );
        assert.notEqual(r.code, 0);
        await crashing.proxy.waitForExit({ timeoutMs: 10_000 });
        await setup.shards[1].stop();
        // It starts all the same (shard 0 finished now, shard 1 retried in the background).
        const again = await setup.startProxy({ ...general, checkout_timeout: 1000 });
        try {
          await dumpLogsOnFailure(again.proxy, async () => {
            assert.deepEqual(await setup.onShard(0, `SELECT id FROM accounts WHERE id = ${a}`), [[
              String(a),
            ]]);
            await setup.shards[1].start();
            const deadline = Date.now() + 20_000;
            while ((await prepared(setup))[1] !== 0) {
              if (Date.now() > deadline) assert.fail("shard 1 was not finished");
              await new Promise((r) => setTimeout(r, 250));
            }
            assert.deepEqual(await setup.onShard(1, `SELECT id FROM accounts WHERE id = ${b}`), [[
              String(b),
            ]]);
          });
        } finally {
          await again.proxy.stop();
        }
      });
      await t.step("workers = 2: each worker has its own log, killed and recovered", async () => {
        const general = { two_phase_commit_wal_dir: walDir, workers: 2 };
        const crashing = await setup.startProxy(general, {
          env: { PGDOG_2PC_CRASH_AT: "decided" },
        });
        const files = [...Deno.readDirSync(walDir)].map((e) => e.name);
        assert.ok(files.some((n) => n.startsWith("w1-")), `worker 1's log: ${files}`);
        // Several connections: the kernel spreads them over the workers; the first to commit
        // across shards kills the process.
        const results = await Promise.all([9, 10, 11].map((k) =>
          psql(
            crashing.target,
            `BEGIN; INSERT INTO accounts VALUES (${s0[k]}, 9); INSERT INTO accounts VALUES (${
              s1[k]
            }, 9); COMMIT;`,
          )
        ));
        assert.ok(results.some((r) => r.code !== 0));
        await crashing.proxy.waitForExit({ timeoutMs: 10_000 });
        const again = await setup.startProxy(general);
        try {
          await dumpLogsOnFailure(again.proxy, async () => {
            assert.deepEqual(await prepared(setup), [0, 0]);
            const ids = [9, 10, 11].map((k) => `${s0[k]}, ${s1[k]}`).join(", ");
            const rows = await rowsOn(setup, `SELECT id FROM accounts WHERE id IN (${ids})`);
            // Each transfer on both shards or neither.
            const on0 = new Set(rows[0].map((r) => r[0]));
            const on1 = new Set(rows[1].map((r) => r[0]));
            for (const k of [9, 10, 11]) {
              assert.equal(on0.has(String(s0[k])), on1.has(String(s1[k])), `transfer ${k}`);
            }
          });
        } finally {
          await again.proxy.stop();
        }
      });
      await t.step("the log does not grow: finished segments are deleted", async () => {
        const again = await setup.startProxy({
          two_phase_commit_wal_dir: walDir,
          two_phase_commit_wal_checkpoint_interval: 200,
        });
        try {
          await new Promise((r) => setTimeout(r, 1000));
          const files = [...Deno.readDirSync(walDir)].map((e) => e.name).filter((n) =>
            n.endsWith(".wal")
          );
          assert.deepEqual(files.length, 1, `only the current segment is left: ${files}`);
        } finally {
          await again.proxy.stop();
        }
      });
    } finally {
      await Deno.remove(walDir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "two-phase commit: a shard stopped during the second phase is finished in the background",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const walDir = await Deno.makeTempDir({ prefix: "pgdog-2pc-wal-" });
    await using setup = await startSharded({
      shards: 2,
      shardedTables: [{ name: "accounts", column: "id", data_type: "bigint" }],
      schema: SCHEMA,
      settings: { max_prepared_transactions: 10 },
      general: { two_phase_commit: true },
      extra: { admin: { password: "admin-pw" } },
    });
    const [s0, s1] = idsByShard(2);
    const pausing = await setup.startProxy({ two_phase_commit_wal_dir: walDir }, {
      env: { PGDOG_2PC_PAUSE_AT: "decided", PGDOG_2PC_PAUSE_MS: "4000" },
    });
    try {
      await dumpLogsOnFailure(pausing.proxy, async () => {
        const client = await connectPg(pausing.target);
        try {
          await client.query("BEGIN");
          await client.query(`INSERT INTO accounts VALUES (${s0[0]}, 1)`);
          await client.query(`INSERT INTO accounts VALUES (${s1[0]}, 1)`);
          const commit = client.query("COMMIT");
          await pausing.proxy.waitForLog(/PGDOG_2PC_PAUSE_AT=decided/, { timeoutMs: 10_000 });
          await setup.shards[1].stop();
          // Decided: the client is told COMMIT although shard 1 can't take it now.
          assert.equal((await commit).command, "COMMIT");
        } finally {
          await client.end().catch(() => {});
        }
        assert.deepEqual(await setup.onShard(0, "SELECT id FROM accounts"), [[String(s0[0])]]);
        const admin = await psql(
          { ...pausing.target, user: "admin", password: "admin-pw", database: "admin" },
          "SHOW TRANSACTIONS",
        );
        assert.match(admin.stdout, /retrying commit/);
        await setup.shards[1].start();
        // The background retries (every second) finish it.
        const deadline = Date.now() + 20_000;
        for (;;) {
          const rows = await setup.onShard(1, "SELECT id FROM accounts");
          const left = await setup.onShard(1, "SELECT count(*) FROM pg_prepared_xacts");
          if (rows.length === 1 && left[0][0] === "0") break;
          if (Date.now() > deadline) assert.fail(`not finished: ${rows} ${left}`);
          await new Promise((r) => setTimeout(r, 250));
        }
        assert.deepEqual(await setup.onShard(1, "SELECT id FROM accounts"), [[String(s1[0])]]);
      });
    } finally {
      await pausing.proxy.stop();
      await Deno.remove(walDir, { recursive: true }).catch(() => {});
    }
  },
});
