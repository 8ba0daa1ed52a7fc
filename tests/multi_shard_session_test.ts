/**
 * A client holding servers on several shards (session mode once it touched them; transaction
 * mode inside a transaction that reached them):
 * - SHOW answers once (one row), in the simple and the extended protocol, while SET reaches
 *   every held shard (alone, or with a SHOW in one query);
 * - session mode: a multi-statement query whose statements go to different shards is atomic as
 *   PostgreSQL's implicit transaction is; after it, a split INSERT, a COPY FROM and the client's
 *   own COMMIT across shards (two-phase commit on and off), the session keeps its servers on
 *   every shard (same backend, its SET and temp table there, not shared with another client);
 * - session mode: a BEGIN pgdog holds back while an idle server is attached opens the
 *   transaction on that server too (a ROLLBACK undoes what ran there).
 */

import assert from "node:assert/strict";
import type pg from "pg";
import {
  connectPg,
  connectPostgresJs,
  dumpLogsOnFailure,
  type PgTarget,
  psql,
} from "./harness/mod.ts";
import { SHARDED_PASSWORD, type ShardedSetup, startSharded } from "./harness/sharded.ts";
import { fe, WireClient } from "./wire.ts";
import { shardForBigint } from "../src/sharding/hash.ts";

const SCHEMA = "CREATE TABLE t (id bigint PRIMARY KEY, v text);";

/** The first ids of each shard. */
function idsByShard(count = 3): number[][] {
  const out: number[][] = Array.from({ length: count }, () => []);
  for (let i = 1; out.some((l) => l.length < 10); i++) {
    const s = shardForBigint(BigInt(i), count);
    if (out[s].length < 10) out[s].push(i);
  }
  return out;
}

const IDS = idsByShard();

async function setupOf(general: Record<string, unknown> = {}): Promise<ShardedSetup> {
  return await startSharded({
    shardedTables: [{ name: "t", column: "id", data_type: "bigint" }],
    schema: SCHEMA,
    settings: { max_prepared_transactions: 10 },
    general,
    extra: { rewrite: { enabled: true, split_inserts: "rewrite" } },
  });
}

/** Rows of `sql` through `c`, in the simple or the extended protocol. */
async function rows(
  c: pg.Client,
  sql: string,
  extended = false,
): Promise<unknown[][]> {
  const config = { text: sql, rowMode: "array" } as pg.QueryArrayConfig;
  if (extended) (config as unknown as { queryMode: string }).queryMode = "extended";
  const r = await c.query(config);
  return (Array.isArray(r) ? r[r.length - 1] : r).rows;
}

/** SHOW answers once; each held shard has the setting. */
async function checkShow(c: pg.Client, expected: string): Promise<void> {
  assert.deepEqual(await rows(c, "SHOW application_name"), [[expected]], "simple");
  assert.deepEqual(await rows(c, "SHOW application_name", true), [[expected]], "extended");
  const named = await c.query({ name: "show_app", text: "SHOW application_name" });
  assert.deepEqual(named.rows, [{ application_name: expected }], "named statement");
  for (let n = 0; n < 3; n++) {
    assert.deepEqual(
      await rows(c, `/* pgdog_shard: ${n} */ SHOW application_name`),
      [[expected]],
      `shard ${n}`,
    );
  }
}

async function showOnce(target: PgTarget, mode: "session" | "transaction"): Promise<void> {
  const c = await connectPg(target);
  try {
    await c.query("SET application_name = 'one'");
    if (mode === "transaction") await c.query("BEGIN");
    for (const ids of IDS) await c.query("INSERT INTO t VALUES ($1, 'a')", [ids[0]]);
    await checkShow(c, "one");
    await c.query("SET application_name = 'two'");
    await checkShow(c, "two");
    // A SET with a SHOW in one query: the SET on every held shard, the SHOW once.
    const r = await c.query("SET application_name = 'three'; SHOW application_name");
    assert.ok(Array.isArray(r));
    assert.deepEqual(r[1].rows, [{ application_name: "three" }]);
    await checkShow(c, "three");
    if (mode === "transaction") await c.query("ROLLBACK");
  } finally {
    await c.end();
  }
}

Deno.test("SHOW answers once on several shards; SET reaches each (session, transaction)", async () => {
  await using setup = await setupOf();
  await dumpLogsOnFailure(setup.proxy, async () => {
    await showOnce(setup.target, "transaction");
    const session = await setup.startProxy({ pooler_mode: "session" });
    try {
      await dumpLogsOnFailure(session.proxy, () => showOnce(session.target, "session"));
    } finally {
      await session.proxy.stop();
    }
  });
});

/** Where the rows of ids are (shard numbers), asked of each shard directly. */
async function placed(setup: ShardedSetup, ids: number[]): Promise<number[]> {
  const found = await setup.placement(`SELECT id FROM t WHERE id IN (${ids.join(",")})`);
  return ids.filter((id) => found.has(String(id)));
}

/** The session's backend per shard, with its setting and temp table (through pgdog). */
async function sessionState(c: pg.Client): Promise<string[][]> {
  const out: string[][] = [];
  for (let n = 0; n < 3; n++) {
    const r = await rows(
      c,
      `/* pgdog_shard: ${n} */ SELECT pg_backend_pid()::text, ` +
        "current_setting('application_name'), (SELECT count(*)::text FROM tmp)",
    );
    out.push(r[0] as string[]);
  }
  return out;
}

async function sessionKept(
  setup: ShardedSetup,
  target: PgTarget,
  twoPhase: boolean,
): Promise<void> {
  const [a, b, c3] = IDS;
  const c = await connectPg(target);
  const other = await connectPg(target);
  try {
    await c.query("SET application_name = 'kept'");
    // On each shard alone: two-phase commit can't PREPARE a transaction that made a temp table.
    for (let n = 0; n < 3; n++) {
      await c.query(`/* pgdog_shard: ${n} */ CREATE TEMP TABLE tmp (x int)`);
    }
    await c.query("INSERT INTO t VALUES ($1, 'dup')", [c3[1]]);
    const before = await sessionState(c);
    assert.deepEqual(before.map((r) => r.slice(1)), [["kept", "0"], ["kept", "0"], ["kept", "0"]]);
    const still = async (what: string): Promise<void> => {
      assert.deepEqual(await sessionState(c), before, what);
      assert.deepEqual(await rows(c, "SELECT 1"), [[1]], what);
    };

    // Atomic like PostgreSQL's implicit transaction: the first two are undone.
    await assert.rejects(
      c.query(
        `INSERT INTO t VALUES (${a[2]}, 'x'); INSERT INTO t VALUES (${b[2]}, 'y'); ` +
          `INSERT INTO t VALUES (${c3[1]}, 'again')`,
      ),
      /duplicate key/,
    );
    assert.deepEqual(await placed(setup, [a[2], b[2]]), []);
    await still("after the failed multi-statement query");
    await c.query(`INSERT INTO t VALUES (${a[3]}, 'x'); INSERT INTO t VALUES (${b[3]}, 'y')`);
    assert.deepEqual(await placed(setup, [a[3], b[3]]), [a[3], b[3]]);
    await still("after a multi-statement query");

    // The same as a pipeline (Parse/Bind/Execute of each, one Sync) on another session.
    const w = await WireClient.connect({ ...target, password: SHARDED_PASSWORD });
    try {
      await w.rows("SET application_name = 'piped'");
      for (const ids of IDS) await w.rows(`INSERT INTO t VALUES (${ids[7] + 1000}, 'hold')`);
      const pids = [];
      for (let n = 0; n < 3; n++) {
        pids.push(await w.rows(`/* pgdog_shard: ${n} */ SELECT pg_backend_pid()`));
      }
      const insert = (id: number): Uint8Array[] => [
        fe.parse("", "INSERT INTO t VALUES ($1, 'p')"),
        fe.bind("", "", [String(id)]),
        fe.execute(""),
      ];
      await w.send(...insert(a[8]), ...insert(b[8]), ...insert(c3[1]), fe.sync());
      const answer = await w.untilReady();
      assert.ok(answer.some((m) => m.type === "E"));
      assert.deepEqual(await placed(setup, [a[8], b[8]]), []);
      for (let n = 0; n < 3; n++) {
        assert.deepEqual(await w.rows(`/* pgdog_shard: ${n} */ SELECT pg_backend_pid()`), pids[n]);
        assert.deepEqual(await w.rows(`/* pgdog_shard: ${n} */ SHOW application_name`), [[
          "piped",
        ]]);
      }
    } finally {
      await w.close();
    }

    // A split INSERT.
    await c.query(`INSERT INTO t VALUES (${a[4]}, 'x'), (${b[4]}, 'y')`);
    await assert.rejects(
      c.query(`INSERT INTO t VALUES (${a[5]}, 'x'), (${c3[1]}, 'y')`),
      /duplicate key/,
    );
    assert.deepEqual(await placed(setup, [a[4], b[4], a[5]]), [a[4], b[4]]);
    await still("after split INSERTs");

    // The client's own COMMIT across shards.
    await c.query("BEGIN");
    await c.query("INSERT INTO t VALUES ($1, 'x')", [a[6]]);
    await c.query("INSERT INTO t VALUES ($1, 'y')", [b[6]]);
    await c.query("COMMIT");
    assert.deepEqual(await placed(setup, [a[6], b[6]]), [a[6], b[6]]);
    await still("after a COMMIT across shards");

    // Another client gets other servers: none of the first one's went back to the pool.
    const theirs: string[] = [];
    await other.query("SET application_name = 'other'");
    for (let n = 0; n < 3; n++) {
      theirs.push(
        (await rows(other, `/* pgdog_shard: ${n} */ SELECT pg_backend_pid()::text`))[0][
          0
        ] as string,
      );
    }
    for (let n = 0; n < 3; n++) assert.notEqual(theirs[n], before[n][0], `shard ${n} shared`);
  } finally {
    await c.end();
    await other.end();
  }
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(await setup.onShard(i, "SELECT count(*) FROM pg_prepared_xacts"), [["0"]]);
  }
  void twoPhase;
}

/** COPY FROM across shards in a psql session: atomic, and the session's servers stay. */
async function copyKept(setup: ShardedSetup, target: PgTarget): Promise<void> {
  const [a, b, c3] = IDS;
  const state = [0, 1, 2].map((n) =>
    `/* pgdog_shard: ${n} */ SELECT pg_backend_pid(), current_setting('application_name'), ` +
    "(SELECT count(*) FROM tmp);\n"
  ).join("");
  const r = await psql(target, "", {
    stdin: "SET application_name = 'copier';\n" +
      [0, 1, 2].map((n) => `/* pgdog_shard: ${n} */ CREATE TEMP TABLE tmp (x int);\n`).join("") +
      `INSERT INTO t VALUES (${c3[2]}, 'dup');\n` +
      state +
      `COPY t (id, v) FROM STDIN;\n${a[7]}\tx\n${b[7]}\ty\n\\.\n` + state +
      `COPY t (id, v) FROM STDIN;\n${a[0] + 100000}\tx\n${c3[2]}\tdup\n\\.\n` + state,
    extraArgs: ["-v", "ON_ERROR_STOP=0", "-A", "-t"],
  });
  assert.match(r.stderr, /duplicate key/);
  const lines = r.stdout.trim().split("\n").filter((l) => l.includes("|"));
  assert.equal(lines.length, 9, r.stdout);
  for (let n = 0; n < 3; n++) {
    assert.match(lines[n], /\|copier\|0$/);
    assert.equal(lines[n + 3], lines[n], "after a COPY");
    assert.equal(lines[n + 6], lines[n], "after a failed COPY");
  }
  assert.deepEqual(await placed(setup, [a[7], b[7], a[0] + 100000]), [a[7], b[7]]);
}

for (const twoPhase of [false, true]) {
  Deno.test(`session mode: atomic across shards, the session keeps its servers (two_phase_commit ${twoPhase})`, async () => {
    await using setup = await setupOf({ pooler_mode: "session", two_phase_commit: twoPhase });
    await dumpLogsOnFailure(setup.proxy, async () => {
      await sessionKept(setup, setup.target, twoPhase);
      await copyKept(setup, setup.target);
    });
  });
}

Deno.test("session mode: a transaction reaches every shard it touches, also its first", async () => {
  await using setup = await setupOf({ pooler_mode: "session" });
  const [a, b] = IDS;
  await dumpLogsOnFailure(setup.proxy, async () => {
    // A BEGIN in a query that pgdog splits (held back while shard 0's idle server is attached).
    const c = await connectPg(setup.target);
    try {
      await c.query("INSERT INTO t VALUES ($1, 'a')", [a[0]]);
      await c.query(
        `BEGIN; INSERT INTO t VALUES (${a[1]}, 'x'); INSERT INTO t VALUES (${b[1]}, 'y')`,
      );
      await c.query("ROLLBACK");
      assert.deepEqual(await placed(setup, [a[1], b[1]]), []);
      await c.query(
        `BEGIN; INSERT INTO t VALUES (${a[1]}, 'x'); INSERT INTO t VALUES (${b[1]}, 'y')`,
      );
      await c.query("COMMIT");
      assert.deepEqual(await placed(setup, [a[1], b[1]]), [a[1], b[1]]);
      // A BEGIN sent to the held shard, then a shard the session has no server on yet.
      const c3 = IDS[2];
      await c.query("BEGIN");
      await c.query("INSERT INTO t VALUES ($1, 'x')", [c3[1]]);
      await c.query("ROLLBACK");
      assert.deepEqual(await placed(setup, [c3[1]]), []);
    } finally {
      await c.end();
    }
    // The shard reached later starts the transaction as the BEGIN said.
    const d = await connectPg(setup.target);
    try {
      await d.query("INSERT INTO t VALUES ($1, 'a')", [a[5]]);
      await d.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
      assert.deepEqual(
        await rows(d, "/* pgdog_shard: 2 */ SHOW transaction_isolation"),
        [["repeatable read"]],
      );
      await d.query("ROLLBACK");
    } finally {
      await d.end();
    }
    // postgres.js: BEGIN goes to the held shard, then a statement reaches another shard.
    const sql = connectPostgresJs(setup.target);
    try {
      await sql`INSERT INTO t VALUES (${a[2]}, 'a')`;
      await assert.rejects(
        sql.begin(async (tx) => {
          await tx`INSERT INTO t VALUES (${a[3]}, 'x')`;
          await tx`INSERT INTO t VALUES (${b[3]}, 'y')`;
          throw new Error("roll back");
        }),
        /roll back/,
      );
      assert.deepEqual(await placed(setup, [a[3], b[3]]), []);
      await sql.begin(async (tx) => {
        await tx`INSERT INTO t VALUES (${b[4]}, 'x')`;
        await tx`INSERT INTO t VALUES (${a[4]}, 'y')`;
      });
      assert.deepEqual(await placed(setup, [a[4], b[4]]), [a[4], b[4]]);
    } finally {
      await sql.end();
    }
  });
});
