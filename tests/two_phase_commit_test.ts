/**
 * Two-phase commit through the real proxy into three real PostgreSQL shards
 * (max_prepared_transactions = 10, every statement logged):
 * - a transaction writing on two shards commits on both, with PREPARE TRANSACTION and COMMIT
 *   PREPARED (read in the shards' logs); a shard that only read gets a plain COMMIT; nothing is
 *   left in pg_prepared_xacts;
 * - a deferred constraint failing on one shard at COMMIT: the client gets PostgreSQL's error and
 *   no shard kept anything (with and without two-phase commit: without it, deferred constraints
 *   are checked on every shard before any COMMIT);
 * - a failed transaction's COMMIT answers ROLLBACK; COMMIT in the extended protocol (npm:pg,
 *   postgres.js) and through psycopg;
 * - two_phase_commit_auto: a write without key fanned out to every shard, and a write to an
 *   omnisharded table, commit through two-phase commit;
 * - SHOW TRANSACTIONS and the OpenMetrics counters;
 * - without two-phase commit: the client's COMMIT and a split request's implicit transaction
 *   check deferred constraints on every shard before any COMMIT;
 * - session mode: the client keeps its servers after a multi-shard commit.
 */

import assert from "node:assert/strict";
import postgres from "postgres";
import { shardForBigint } from "../src/sharding/hash.ts";
import {
  connectPg,
  dumpLogsOnFailure,
  freePort,
  psql,
  runPsycopg,
  type ShardedSetup,
  startSharded,
} from "./harness/mod.ts";

const SCHEMA = `
CREATE TABLE accounts (id bigint PRIMARY KEY, balance int NOT NULL);
CREATE TABLE items (
  id bigint PRIMARY KEY,
  ref bigint REFERENCES items (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE settings (name text PRIMARY KEY, value text);
`;

/** Ids on shard 0, 1 and 2 (of 3). */
function idsByShard(count = 3): bigint[][] {
  const out: bigint[][] = Array.from({ length: count }, () => []);
  for (let i = 1n; out.some((l) => l.length < 4); i++) {
    const s = shardForBigint(i, count);
    if (out[s].length < 4) out[s].push(i);
  }
  return out;
}

async function rowsOn(setup: ShardedSetup, sql: string): Promise<string[][][]> {
  return await Promise.all(setup.shards.map((_, i) => setup.onShard(i, sql)));
}

async function noPrepared(setup: ShardedSetup): Promise<void> {
  const left = await rowsOn(setup, "SELECT gid FROM pg_prepared_xacts");
  assert.deepEqual(left, [[], [], []], "nothing is left prepared");
}

Deno.test({
  name: "two-phase commit across shards",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const metricsPort = await freePort();
    await using setup = await startSharded({
      shardedTables: [
        { name: "accounts", column: "id", data_type: "bigint" },
        { name: "items", column: "id", data_type: "bigint" },
      ],
      omnisharded: ["settings"],
      schema: SCHEMA,
      settings: { max_prepared_transactions: 10, log_statement: "all" },
      general: { two_phase_commit: true, openmetrics_port: metricsPort },
      extra: { admin: { password: "admin-pw" } },
    });
    await dumpLogsOnFailure(setup.proxy, () => steps(t, { setup, metricsPort }));
  },
});

async function steps(
  t: Deno.TestContext,
  { setup, metricsPort }: { setup: ShardedSetup; metricsPort: number },
): Promise<void> {
  {
    const [s0, s1, s2] = idsByShard();
    const logs = async (i: number): Promise<string> => await setup.shards[i].log();

    await t.step("a transaction writing on two shards commits on both, prepared", async () => {
      const before = await Promise.all([0, 1, 2].map(async (i) => (await logs(i)).length));
      const r = await psql(
        setup.target,
        `BEGIN;
         INSERT INTO accounts VALUES (${s0[0]}, 10);
         INSERT INTO accounts VALUES (${s1[0]}, 20);
         SELECT count(*) FROM accounts WHERE id = ${s2[0]};
         COMMIT;`,
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /COMMIT/);
      assert.deepEqual(await setup.onShard(0, `SELECT balance FROM accounts`), [["10"]]);
      assert.deepEqual(await setup.onShard(1, `SELECT balance FROM accounts`), [["20"]]);
      const after = await Promise.all([0, 1, 2].map(async (i) => (await logs(i)).slice(before[i])));
      for (const i of [0, 1]) {
        assert.match(after[i], /PREPARE TRANSACTION '__pgdog_2pc_0_0_[0-9a-f]+_\d'/, `shard ${i}`);
        assert.match(after[i], /COMMIT PREPARED '__pgdog_2pc_0_0_[0-9a-f]+_\d'/, `shard ${i}`);
      }
      // Shard 2 only read: a plain COMMIT.
      assert.doesNotMatch(after[2], /PREPARE TRANSACTION/);
      assert.match(after[2], /statement: COMMIT/);
      await noPrepared(setup);
    });

    await t.step("a deferred constraint failing on one shard: nothing commits", async () => {
      const r = await psql(
        setup.target,
        `BEGIN;
         INSERT INTO items VALUES (${s0[1]}, ${s0[1]});
         INSERT INTO items VALUES (${s1[1]}, 999999);
         COMMIT;`,
      );
      assert.match(r.stderr, /violates foreign key constraint/);
      assert.deepEqual(await rowsOn(setup, "SELECT id FROM items"), [[], [], []]);
      await noPrepared(setup);
    });

    await t.step("a failed transaction's COMMIT is a ROLLBACK", async () => {
      const client = await connectPg(setup.target);
      try {
        await client.query("BEGIN");
        await client.query(`INSERT INTO accounts VALUES (${s0[2]}, 1)`);
        await client.query(`INSERT INTO accounts VALUES (${s1[2]}, 1)`);
        await assert.rejects(client.query("SELECT 1/0"), /division by zero/);
        assert.equal((await client.query("COMMIT")).command, "ROLLBACK");
      } finally {
        await client.end();
      }
      const ids = await rowsOn(setup, `SELECT id FROM accounts WHERE balance = 1`);
      assert.deepEqual(ids, [[], [], []]);
      await noPrepared(setup);
    });

    await t.step("npm:pg (extended protocol) BEGIN ... COMMIT across shards", async () => {
      const client = await connectPg(setup.target);
      try {
        await client.query("BEGIN");
        await client.query("INSERT INTO accounts VALUES ($1, $2)", [String(s0[3]), 30]);
        await client.query("INSERT INTO accounts VALUES ($1, $2)", [String(s2[3]), 30]);
        // A named statement for COMMIT goes through Parse/Bind/Execute.
        const r = await client.query({ text: "COMMIT", name: "c", values: [] });
        assert.equal(r.command, "COMMIT");
        await client.query("BEGIN");
        await client.query("INSERT INTO items VALUES ($1, $1)", [String(s0[3])]);
        await client.query("INSERT INTO items VALUES ($1, 424242)", [String(s2[3])]);
        await assert.rejects(client.query({ text: "COMMIT", values: [] }), /foreign key/);
        // The connection goes on.
        assert.equal((await client.query("SELECT 1 AS x")).rows[0].x, 1);
      } finally {
        await client.end();
      }
      assert.deepEqual(await setup.onShard(2, `SELECT balance FROM accounts`), [["30"]]);
      assert.deepEqual(await rowsOn(setup, "SELECT id FROM items"), [[], [], []]);
      await noPrepared(setup);
    });

    await t.step("postgres.js sql.begin across shards (prepared statements)", async () => {
      const sql = postgres({
        host: setup.target.host,
        port: setup.target.port,
        user: setup.target.user,
        password: setup.target.password,
        database: setup.target.database,
        max: 1,
        onnotice: () => {},
      });
      try {
        await sql.begin(async (tx) => {
          await tx`INSERT INTO accounts VALUES (${String(s0[1])}, 50)`;
          await tx`INSERT INTO accounts VALUES (${String(s1[1])}, 50)`;
        });
        await assert.rejects(
          sql.begin(async (tx) => {
            await tx`INSERT INTO items VALUES (${String(s0[2])}, ${String(s0[2])})`;
            await tx`INSERT INTO items VALUES (${String(s1[2])}, 31337)`;
          }),
          /foreign key/,
        );
      } finally {
        await sql.end();
      }
      const on = await rowsOn(setup, "SELECT id FROM accounts WHERE balance = 50");
      assert.deepEqual(on, [[[String(s0[1])]], [[String(s1[1])]], []]);
      assert.deepEqual(await rowsOn(setup, "SELECT id FROM items"), [[], [], []]);
      await noPrepared(setup);
    });

    await t.step("psycopg BEGIN ... COMMIT across shards", async () => {
      const out = await runPsycopg(
        setup.target,
        `
import json, os, psycopg
with psycopg.connect(os.environ["DSN"]) as conn:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO accounts VALUES (%s, 40)", (${s1[3]},))
        cur.execute("INSERT INTO accounts VALUES (%s, 40)", (${s2[2]},))
    conn.commit()
    ok = True
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (%s, 7777)", (${s1[3]},))
            cur.execute("INSERT INTO items VALUES (%s, %s)", (${s2[2]}, ${s2[2]}))
        conn.commit()
    except psycopg.errors.ForeignKeyViolation:
        ok = False
print(json.dumps({"second": ok}))
`,
      );
      assert.deepEqual(out, { second: false });
      assert.deepEqual(await setup.onShard(1, `SELECT id FROM accounts WHERE balance = 40`), [[
        String(s1[3]),
      ]]);
      assert.deepEqual(await setup.onShard(2, `SELECT id FROM accounts WHERE balance = 40`), [[
        String(s2[2]),
      ]]);
      assert.deepEqual(await rowsOn(setup, "SELECT id FROM items"), [[], [], []]);
      await noPrepared(setup);
    });

    await t.step(
      "two_phase_commit_auto: a write on every shard outside a transaction",
      async () => {
        const before = await Promise.all([0, 1, 2].map(async (i) => (await logs(i)).length));
        const r = await psql(setup.target, "UPDATE accounts SET balance = balance + 1");
        assert.equal(r.code, 0, r.stderr);
        const o = await psql(setup.target, "INSERT INTO settings VALUES ('a', 'b')");
        assert.equal(o.code, 0, o.stderr);
        assert.deepEqual(await rowsOn(setup, "SELECT value FROM settings"), [[["b"]], [["b"]], [[
          "b",
        ]]]);
        const after = await Promise.all(
          [0, 1, 2].map(async (i) => (await logs(i)).slice(before[i])),
        );
        for (const i of [0, 1, 2]) assert.match(after[i], /PREPARE TRANSACTION/, `shard ${i}`);
        // An omnisharded write failing on one shard leaves none changed.
        await setup.onShard(1, "INSERT INTO settings VALUES ('only1', 'x')");
        const f = await psql(setup.target, "INSERT INTO settings VALUES ('only1', 'y')");
        assert.match(f.stderr, /duplicate key/);
        assert.deepEqual(
          await rowsOn(setup, "SELECT value FROM settings WHERE name = 'only1'"),
          [[], [["x"]], []],
        );
        await noPrepared(setup);
      },
    );

    await t.step("SHOW TRANSACTIONS and the counters", async () => {
      const admin = await psql(
        { ...setup.target, user: "admin", password: "admin-pw", database: "admin" },
        "SHOW TRANSACTIONS",
      );
      assert.equal(admin.code, 0, admin.stderr);
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      const committed = text.match(/xact_2pc_count_total\{[^}]*\} (\d+)/);
      assert.ok(committed !== null && Number(committed[1]) >= 3, text);
      const failed = text.match(/two_pc_failed_total\{[^}]*\} (\d+)/);
      assert.ok(failed !== null && Number(failed[1]) >= 2, text);
    });
  }
}

Deno.test({
  name: "without two-phase commit: deferred constraints are checked on every shard first",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    await using setup = await startSharded({
      shardedTables: [{ name: "items", column: "id", data_type: "bigint" }],
      schema: SCHEMA,
      settings: { log_statement: "all" },
    });
    const [s0, s1] = idsByShard();
    await dumpLogsOnFailure(setup.proxy, async () => {
      await t.step("the client's COMMIT", async () => {
        const r = await psql(
          setup.target,
          `BEGIN;
           INSERT INTO items VALUES (${s0[0]}, ${s0[0]});
           INSERT INTO items VALUES (${s1[0]}, 999999);
           COMMIT;`,
        );
        assert.match(r.stderr, /violates foreign key constraint/);
        assert.deepEqual(await rowsOn(setup, "SELECT id FROM items"), [[], [], []]);
        const log = await setup.shards[0].log();
        assert.match(log, /SET CONSTRAINTS ALL IMMEDIATE/);
        assert.doesNotMatch(log, /PREPARE TRANSACTION/);
      });
      await t.step("a split request's implicit transaction", async () => {
        const r = await psql(
          setup.target,
          `INSERT INTO items VALUES (${s0[1]}, ${s0[1]}); INSERT INTO items VALUES (${
            s1[1]
          }, 999999)`,
        );
        assert.match(r.stderr, /violates foreign key constraint/);
        assert.deepEqual(await rowsOn(setup, "SELECT id FROM items"), [[], [], []]);
        const ok = await psql(
          setup.target,
          `INSERT INTO items VALUES (${s0[1]}, ${s0[1]}); INSERT INTO items VALUES (${s1[1]}, ${
            s1[1]
          })`,
        );
        assert.equal(ok.code, 0, ok.stderr);
        assert.deepEqual(await rowsOn(setup, "SELECT id FROM items"), [
          [[String(s0[1])]],
          [[String(s1[1])]],
          [],
        ]);
      });
    });
  },
});

Deno.test({
  name: "two-phase commit in session mode: the client keeps its servers",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await using setup = await startSharded({
      shardedTables: [{ name: "accounts", column: "id", data_type: "bigint" }],
      schema: SCHEMA,
      settings: { max_prepared_transactions: 10, log_statement: "all" },
      general: { two_phase_commit: true, pooler_mode: "session" },
    });
    const [s0, s1] = idsByShard();
    await dumpLogsOnFailure(setup.proxy, async () => {
      const out = await runPsycopg(
        setup.target,
        `
import json, os, psycopg
with psycopg.connect(os.environ["DSN"]) as conn:
    pid = lambda: conn.execute("/* pgdog_shard: 0 */ SELECT pg_backend_pid()").fetchone()[0]
    conn.execute("SET application_name = 'kept'")
    conn.commit()
    before = pid()
    conn.commit()
    conn.execute("INSERT INTO accounts VALUES (%s, 1)", (${s0[0]},))
    conn.execute("INSERT INTO accounts VALUES (%s, 1)", (${s1[0]},))
    conn.commit()
    status = int(conn.info.transaction_status)
    after = pid()
    name = conn.execute("SHOW application_name").fetchone()[0]
    conn.commit()
    # Another client gets another server: the first one's was not given back.
    with psycopg.connect(os.environ["DSN"]) as other:
        theirs = other.execute("/* pgdog_shard: 0 */ SELECT pg_backend_pid()").fetchone()[0]
        other.commit()
print(json.dumps({"same": before == after, "status": status, "name": name,
                  "shared": theirs == after}))
`,
      );
      assert.deepEqual(out, { same: true, status: 0, name: "kept", shared: false });
      assert.match(await setup.shards[0].log(), /PREPARE TRANSACTION/);
      assert.deepEqual(await rowsOn(setup, "SELECT id FROM accounts"), [
        [[String(s0[0])]],
        [[String(s1[0])]],
        [],
      ]);
      await noPrepared(setup);
    });
  },
});
