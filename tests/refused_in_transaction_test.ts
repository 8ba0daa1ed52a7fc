/**
 * An error pgdog answers itself inside a transaction (a refused statement, cross_shard_disabled)
 * fails the transaction as PostgreSQL's own error would: ReadyForQuery 'E', 25P02 for what
 * follows, COMMIT answered ROLLBACK with nothing left on any shard, ROLLBACK TO SAVEPOINT
 * recovering; simple and extended protocol, npm:pg and psql, transaction and session pooling.
 */

import assert from "node:assert/strict";
import {
  dumpLogsOnFailure,
  type PgTarget,
  psql,
  type ShardedSetup,
  startSharded,
} from "./harness/mod.ts";
import { connectPg } from "./harness/clients.ts";
import { type BackendMessage, fe, summary, WireClient } from "./wire.ts";

/** Runs on several shards with a window over all rows: pgdog refuses it (0A000). */
const REFUSED = "SELECT id, row_number() OVER () FROM t";

/** One id per shard (read back from where rows land). */
async function idPerShard(setup: ShardedSetup): Promise<number[]> {
  await setup.everywhere("DELETE FROM t");
  const w = await WireClient.connect(setup.target);
  try {
    for (let id = 1; id <= 30; id++) {
      const answer = summary(await w.simple(`INSERT INTO t VALUES (${id}, 'x')`));
      assert.deepEqual(answer, ["C INSERT 0 1", "Z I"]);
    }
  } finally {
    await w.close();
  }
  const placement = await setup.placement("SELECT id FROM t");
  const ids: number[] = [];
  for (let shard = 0; shard < 3; shard++) {
    const id = [...placement].find(([, shards]) => shards[0] === shard)?.[0];
    assert.ok(id !== undefined, `no id on shard ${shard}`);
    ids.push(Number(id));
  }
  await setup.everywhere("DELETE FROM t");
  return ids;
}

/** Rows of t on each shard, asked directly. */
async function countsOnShards(setup: ShardedSetup): Promise<number[]> {
  const counts: number[] = [];
  for (let i = 0; i < 3; i++) {
    counts.push(Number((await setup.onShard(i, "SELECT count(*) FROM t"))[0][0]));
  }
  return counts;
}

/** An extended-protocol request (Parse, Bind, Execute, Sync); its answers summarized. */
async function extended(
  w: WireClient,
  sql: string,
  params: string[] = [],
): Promise<string[]> {
  await w.send(fe.parse("", sql), fe.bind("", "", params), fe.execute(""), fe.sync());
  return summary(await w.until("Z"));
}

function simpleOf(msgs: BackendMessage[]): string[] {
  return summary(msgs).filter((m) => m !== "T" && !m.startsWith("D "));
}

async function cases(
  t: Deno.TestContext,
  setup: ShardedSetup,
  target: PgTarget,
  ids: number[],
): Promise<void> {
  const writes = (n: number): string[] =>
    ids.slice(0, n).map((id) => `INSERT INTO t VALUES (${id}, 'a')`);
  for (const n of [0, 1, 3]) {
    await t.step(`simple protocol, ${n} shard(s) written before the refusal`, async () => {
      await setup.everywhere("DELETE FROM t");
      const w = await WireClient.connect(target);
      try {
        assert.deepEqual(simpleOf(await w.simple("BEGIN")), ["C BEGIN", "Z T"]);
        for (const sql of writes(n)) {
          assert.deepEqual(simpleOf(await w.simple(sql)), ["C INSERT 0 1", "Z T"]);
        }
        assert.deepEqual(simpleOf(await w.simple(REFUSED)), ["E 0A000", "Z E"]);
        assert.deepEqual(simpleOf(await w.simple("SELECT 1")), ["E 25P02", "Z E"]);
        assert.deepEqual(simpleOf(await w.simple(writes(1)[0])), ["E 25P02", "Z E"]);
        assert.deepEqual(simpleOf(await w.simple("COMMIT")), ["C ROLLBACK", "Z I"]);
        assert.deepEqual(simpleOf(await w.simple("SELECT 1")), ["C SELECT 1", "Z I"]);
      } finally {
        await w.close();
      }
      assert.deepEqual(await countsOnShards(setup), [0, 0, 0]);
    });
    await t.step(`extended protocol, ${n} shard(s) written before the refusal`, async () => {
      await setup.everywhere("DELETE FROM t");
      const w = await WireClient.connect(target);
      try {
        assert.deepEqual(await extended(w, "BEGIN"), ["1", "2", "C BEGIN", "Z T"]);
        for (const id of ids.slice(0, n)) {
          assert.deepEqual(
            await extended(w, "INSERT INTO t VALUES ($1, 'a')", [String(id)]),
            ["1", "2", "C INSERT 0 1", "Z T"],
          );
        }
        assert.deepEqual(
          await extended(w, `${REFUSED} WHERE v <> $1`, ["z"]),
          ["E 0A000", "Z E"],
        );
        assert.deepEqual(await extended(w, "SELECT $1::int", ["1"]), ["E 25P02", "Z E"]);
        assert.deepEqual(await extended(w, "COMMIT"), ["1", "2", "C ROLLBACK", "Z I"]);
        assert.deepEqual(await extended(w, "SELECT $1::int", ["1"]), [
          "1",
          "2",
          "D 1",
          "C SELECT 1",
          "Z I",
        ]);
      } finally {
        await w.close();
      }
      assert.deepEqual(await countsOnShards(setup), [0, 0, 0]);
    });
  }

  await t.step("ROLLBACK ends the failed transaction", async () => {
    await setup.everywhere("DELETE FROM t");
    const w = await WireClient.connect(target);
    try {
      await w.simple("BEGIN");
      await w.simple(writes(2).join("; "));
      assert.deepEqual(simpleOf(await w.simple(REFUSED)), ["E 0A000", "Z E"]);
      assert.deepEqual(simpleOf(await w.simple("ROLLBACK")), ["C ROLLBACK", "Z I"]);
      assert.deepEqual(simpleOf(await w.simple(REFUSED)), ["E 0A000", "Z I"]);
      assert.deepEqual(simpleOf(await w.simple("SELECT 1")), ["C SELECT 1", "Z I"]);
    } finally {
      await w.close();
    }
    assert.deepEqual(await countsOnShards(setup), [0, 0, 0]);
  });

  for (const before of [0, 2]) {
    await t.step(`ROLLBACK TO SAVEPOINT recovers (${before} shard(s) written)`, async () => {
      await setup.everywhere("DELETE FROM t");
      const w = await WireClient.connect(target);
      try {
        await w.simple("BEGIN");
        for (const sql of writes(before)) await w.simple(sql);
        assert.deepEqual(simpleOf(await w.simple("SAVEPOINT s")), ["C SAVEPOINT", "Z T"]);
        assert.deepEqual(simpleOf(await w.simple(REFUSED)), ["E 0A000", "Z E"]);
        assert.deepEqual(simpleOf(await w.simple("SAVEPOINT t")), ["E 25P02", "Z E"]);
        assert.deepEqual(simpleOf(await w.simple("ROLLBACK TO SAVEPOINT s")), [
          "C ROLLBACK",
          "Z T",
        ]);
        assert.deepEqual(
          simpleOf(await w.simple(`INSERT INTO t VALUES (${ids[2]}, 'b')`)),
          ["C INSERT 0 1", "Z T"],
        );
        assert.deepEqual(simpleOf(await w.simple("COMMIT")), ["C COMMIT", "Z I"]);
      } finally {
        await w.close();
      }
      const want = [0, 0, 1];
      for (let i = 0; i < before; i++) want[i] = 1;
      assert.deepEqual(await countsOnShards(setup), want);
    });
  }

  await t.step("multi-statement query: the rest is not run", async () => {
    await setup.everywhere("DELETE FROM t");
    const w = await WireClient.connect(target);
    try {
      // Outside a transaction: its implicit transaction is rolled back, the session is idle.
      const [a, b, c] = writes(3);
      assert.deepEqual(simpleOf(await w.simple(`${a}; ${REFUSED}; ${b}`)), [
        "C INSERT 0 1",
        "E 0A000",
        "Z I",
      ]);
      assert.deepEqual(await countsOnShards(setup), [0, 0, 0]);
      // Inside one: it fails.
      assert.deepEqual(simpleOf(await w.simple(`BEGIN; ${a}; ${REFUSED}; ${b}`)), [
        "C BEGIN",
        "C INSERT 0 1",
        "E 0A000",
        "Z E",
      ]);
      assert.deepEqual(simpleOf(await w.simple(c)), ["E 25P02", "Z E"]);
      assert.deepEqual(simpleOf(await w.simple("END")), ["C ROLLBACK", "Z I"]);
    } finally {
      await w.close();
    }
    assert.deepEqual(await countsOnShards(setup), [0, 0, 0]);
  });

  for (const mode of ["simple", "extended"] as const) {
    await t.step(`npm:pg (${mode}): COMMIT after the refusal rolls back`, async () => {
      await setup.everywhere("DELETE FROM t");
      const c = await connectPg(target);
      const code = async (sql: string, values?: unknown[]): Promise<string> => {
        try {
          const r = await c.query(
            mode === "extended" ? { text: sql, values, queryMode: "extended" } as never : sql,
          );
          return `ok ${(r as { command: string }).command}`;
        } catch (e) {
          return (e as { code?: string }).code ?? String(e);
        }
      };
      try {
        assert.equal(await code("BEGIN"), "ok BEGIN");
        for (const sql of writes(3)) assert.equal(await code(sql), "ok INSERT");
        assert.equal(await code(REFUSED), "0A000");
        assert.equal(await code("SELECT 1"), "25P02");
        assert.equal(await code("COMMIT"), "ok ROLLBACK");
        assert.equal(await code("SELECT 1"), "ok SELECT");
      } finally {
        await c.end();
      }
      assert.deepEqual(await countsOnShards(setup), [0, 0, 0]);
    });
  }

  await t.step("psql script without ON_ERROR_STOP, then COMMIT", async () => {
    await setup.everywhere("DELETE FROM t");
    const script = ["BEGIN;", ...writes(3).map((s) => `${s};`), `${REFUSED};`, "SELECT 42;"]
      .concat([`INSERT INTO t VALUES (${ids[0] + 1000}, 'c');`, "COMMIT;"]).join("\n");
    const r = await psql(target, "", { stdin: script, extraArgs: ["-v", "ON_ERROR_STOP=0"] });
    assert.match(r.stderr, /current transaction is aborted/);
    assert.doesNotMatch(r.stdout, /42/);
    assert.match(r.stdout.trim(), /ROLLBACK$/);
    assert.deepEqual(await countsOnShards(setup), [0, 0, 0]);
  });
}

Deno.test({
  name: "an error pgdog answers itself inside a transaction fails the transaction",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using setup = await startSharded({
      shardedTables: [{ name: "t", column: "id" }],
      schema: "CREATE TABLE t (id bigint PRIMARY KEY, v text);",
    });
    const ids = await idPerShard(setup);
    await dumpLogsOnFailure(setup.proxy, async () => {
      await t.step("transaction pooling", (t) => cases(t, setup, setup.target, ids));
    });
    const session = await setup.startProxy({ pooler_mode: "session" });
    try {
      await dumpLogsOnFailure(session.proxy, async () => {
        await t.step("session pooling", (t) => cases(t, setup, session.target, ids));
      });
    } finally {
      await session.proxy[Symbol.asyncDispose]();
    }
    const disabled = await setup.startProxy({ cross_shard_disabled: true });
    try {
      await dumpLogsOnFailure(disabled.proxy, async () => {
        await t.step("cross_shard_disabled (58000)", async () => {
          await setup.everywhere("DELETE FROM t");
          const w = await WireClient.connect(disabled.target);
          try {
            await w.simple("BEGIN");
            await w.simple(`INSERT INTO t VALUES (${ids[0]}, 'a')`);
            assert.deepEqual(simpleOf(await w.simple("SELECT * FROM t")), ["E 58000", "Z E"]);
            assert.deepEqual(await extended(w, "SELECT $1::int", ["1"]), ["E 25P02", "Z E"]);
            assert.deepEqual(simpleOf(await w.simple("COMMIT")), ["C ROLLBACK", "Z I"]);
          } finally {
            await w.close();
          }
          assert.deepEqual(await countsOnShards(setup), [0, 0, 0]);
        });
      });
    } finally {
      await disabled.proxy[Symbol.asyncDispose]();
    }
  },
});

Deno.test({
  name: "a plugin's block inside a sharded transaction fails it",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using setup = await startSharded({
      shardedTables: [{ name: "t", column: "id" }],
      schema: "CREATE TABLE t (id bigint PRIMARY KEY, v text);",
      extra: {
        plugins: [{
          name: "dir",
          path: new URL("./plugins/directives.ts", import.meta.url).pathname,
          timeout: 10_000,
        }],
      },
      denoFlags: ["--allow-run"],
    });
    const ids = await idPerShard(setup);
    await dumpLogsOnFailure(setup.proxy, async () => {
      for (const protocol of ["simple", "extended"] as const) {
        await t.step(`${protocol} protocol: 42501, then 25P02, COMMIT rolls back`, async () => {
          await setup.everywhere("DELETE FROM t");
          const w = await WireClient.connect(setup.target);
          try {
            assert.deepEqual(simpleOf(await w.simple("BEGIN")), ["C BEGIN", "Z T"]);
            for (const id of ids) await w.simple(`INSERT INTO t VALUES (${id}, 'a')`);
            const blocked = "/* plugin: block=not now */ SELECT v FROM t WHERE id = $1";
            const answer = protocol === "simple"
              ? simpleOf(await w.simple(blocked.replace("$1", String(ids[0]))))
              : await extended(w, blocked, [String(ids[0])]);
            assert.deepEqual(answer, ["E 42501", "Z E"]);
            assert.deepEqual(await extended(w, "SELECT $1::int", ["1"]), ["E 25P02", "Z E"]);
            assert.deepEqual(simpleOf(await w.simple("COMMIT")), ["C ROLLBACK", "Z I"]);
          } finally {
            await w.close();
          }
          assert.deepEqual(await countsOnShards(setup), [0, 0, 0]);
        });
      }
    });
  },
});
