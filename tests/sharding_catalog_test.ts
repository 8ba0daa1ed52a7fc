/**
 * Sharding that depends on what pgdog learns or keeps across statements:
 *
 * - RELOAD changing the shards (the cutover: MAINTENANCE ON, a new pgdog.toml, RELOAD,
 *   MAINTENANCE OFF) with clients that keep their connection and their prepared statements
 *   (psycopg after its prepare threshold, npm:pg named statements): every statement after the
 *   cutover, and one parked during it, routes by the new layout.
 * - INSERT without a column list: the sharding key's position comes from the table's column order
 *   (read from shard 0's catalog, kept per table and search_path, read again after DDL through
 *   pgdog and after RELOAD); rows are checked on each shard and against a reference database.
 *   A transaction's own DDL and a session's temporary tables are not shared with other clients;
 *   with workers = 2, DDL through one worker reaches the other.
 */

import assert from "node:assert/strict";
import type pg from "pg";
import { shardForBigint } from "../src/sharding/hash.ts";
import {
  assertRefused,
  compareAnswers,
  connectPg,
  dsn,
  dumpLogsOnFailure,
  psql,
  runPsycopg,
  SHARDED_DB,
  type ShardedSetup,
  startSharded,
  type TomlDocument,
  toToml,
} from "./harness/mod.ts";

const ADMIN_PASSWORD = "catalog-admin-pw";

/** pgdog.toml for the first `n` shards of `setup`, as startSharded writes it (with an admin password). */
function configFor(setup: ShardedSetup, n: number): TomlDocument {
  return {
    general: {
      host: "127.0.0.1",
      port: setup.proxy.port,
      idle_healthcheck_interval: 0,
      query_timeout: 10_000,
    },
    databases: setup.shards.slice(0, n).map((s, i) => ({
      name: SHARDED_DB,
      host: s.host,
      port: s.port,
      database_name: SHARDED_DB,
      shard: i,
    })),
    sharded_tables: [{ database: SHARDED_DB, name: "users", column: "id" }],
    admin: { password: ADMIN_PASSWORD },
  };
}

/** Runs an admin command with psql; throws when it fails. */
async function admin(setup: ShardedSetup, sql: string): Promise<void> {
  const r = await psql(
    setup.proxy.target({ user: "admin", password: ADMIN_PASSWORD, database: "admin" }),
    sql,
  );
  if (r.code !== 0) throw new Error(`${sql}: ${r.stderr}`);
}

/** Puts rows 1..count of users on the first `n` shards, each where its hash says (directly). */
async function placeRows(
  setup: ShardedSetup,
  options: { n: number; count: number },
): Promise<void> {
  const { n, count } = options;
  await Promise.all(setup.shards.map(async (_, i) => {
    const ids = Array.from({ length: count }, (_, k) => k + 1).filter((id) =>
      i < n && shardForBigint(BigInt(id), n) === i
    );
    const values = ids.map((id) => `(${id}, 'user${id}')`).join(",");
    await setup.onShard(
      i,
      `TRUNCATE users;${ids.length > 0 ? ` INSERT INTO users VALUES ${values};` : ""}`,
    );
  }));
}

/** The email of every row, by id, read from each shard directly: `id -> [shard, email][]`. */
async function emails(setup: ShardedSetup): Promise<Map<number, Array<[number, string]>>> {
  const out = new Map<number, Array<[number, string]>>();
  for (let i = 0; i < setup.shards.length; i++) {
    for (const [id, email] of await setup.onShard(i, "SELECT id, email FROM users")) {
      out.set(Number(id), [...(out.get(Number(id)) ?? []), [i, email]]);
    }
  }
  return out;
}

Deno.test("sharding catalog: prepared statements follow a RELOAD that changes the shards", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    schema: "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);",
    extra: { admin: { password: ADMIN_PASSWORD } },
  });
  const COUNT = 12;
  await dumpLogsOnFailure(setup.proxy, async () => {
    await t.step("psycopg, prepared: 1 shard, then 2", async () => {
      // The database starts on shard 0 alone; the rows already sit where 2 shards put them.
      await setup.proxy.writeConfig(configFor(setup, 1));
      await admin(setup, "RELOAD");
      await placeRows(setup, { n: 2, count: COUNT });
      const ids = Array.from({ length: COUNT }, (_, k) => k + 1);
      const onZero = ids.filter((id) => shardForBigint(BigInt(id), 2) === 0);
      const onOne = ids.filter((id) => shardForBigint(BigInt(id), 2) === 1);
      const result = await runPsycopg<{
        before: number[];
        parked: number;
        after: number[];
      }>(
        setup.target,
        `
import threading, time
conn = psycopg.connect(DSN, autocommit=True)
sql = "UPDATE users SET email = %s WHERE id = %s"
zero = json.loads(os.environ["ON_ZERO"])
before = [conn.execute(sql, ("before%d" % i, zero[i % len(zero)]), prepare=True).rowcount
          for i in range(3)]
admin = psycopg.connect(os.environ["ADMIN_DSN"], autocommit=True)
admin.execute("MAINTENANCE ON")
out = {}
def parked():
    out["parked"] = conn.execute(sql, ("parked", int(os.environ["PARKED"])), prepare=True).rowcount
thread = threading.Thread(target=parked)
thread.start()
time.sleep(0.5)
with open(os.environ["CONFIG_PATH"], "w") as f:
    f.write(os.environ["NEW_CONFIG"])
admin.execute("RELOAD")
admin.execute("MAINTENANCE OFF")
thread.join()
after = [conn.execute(sql, ("after%d" % i, i), prepare=True).rowcount
         for i in json.loads(os.environ["IDS"])]
print(json.dumps({"before": before, "parked": out["parked"], "after": after}))
`,
        {
          env: {
            ADMIN_DSN: dsn(
              setup.proxy.target({ user: "admin", password: ADMIN_PASSWORD, database: "admin" }),
            ),
            ON_ZERO: JSON.stringify(onZero),
            PARKED: String(onOne[0]),
            IDS: JSON.stringify(ids),
            CONFIG_PATH: setup.proxy.configPath,
            NEW_CONFIG: toToml(configFor(setup, 2)),
          },
        },
      );
      // Rowcounts: before the cutover, of the one parked during it, after it.
      assert.deepEqual(result, { before: [1, 1, 1], parked: 1, after: ids.map(() => 1) });
      const rows = await emails(setup);
      for (const id of ids) {
        const shard = shardForBigint(BigInt(id), 2);
        assert.deepEqual(rows.get(id), [[shard, `after${id}`]], `row ${id}`);
      }
    });

    await t.step("npm:pg named statements: 2 shards, then 3", async () => {
      await setup.proxy.writeConfig(configFor(setup, 2));
      await admin(setup, "RELOAD");
      await placeRows(setup, { n: 2, count: COUNT });
      const ids = Array.from({ length: COUNT }, (_, k) => k + 1);
      const client = await connectPg(setup.target);
      const parkedClient = await connectPg(setup.target);
      try {
        const update = (c: typeof client, id: number, email: string) =>
          c.query({
            name: "upd",
            text: "UPDATE users SET email = $1 WHERE id = $2",
            values: [email, id],
          });
        // Both clients prepare "upd" before the cutover (rows with ids on shard 0 of 2).
        for (const id of ids.filter((id) => shardForBigint(BigInt(id), 2) === 0).slice(0, 3)) {
          assert.equal((await update(client, id, `before${id}`)).rowCount, 1);
          assert.equal((await update(parkedClient, id, `before${id}`)).rowCount, 1);
        }
        await admin(setup, "MAINTENANCE ON");
        // The rows move to where 3 shards put them (the copy the cutover waits for).
        await placeRows(setup, { n: 3, count: COUNT });
        const parkedId = ids.find((id) =>
          shardForBigint(BigInt(id), 3) !== shardForBigint(BigInt(id), 2)
        )!;
        const parked = update(parkedClient, parkedId, "parked");
        await new Promise((r) => setTimeout(r, 500));
        await setup.proxy.writeConfig(configFor(setup, 3));
        await admin(setup, "RELOAD");
        await admin(setup, "MAINTENANCE OFF");
        const parkedCount = (await parked).rowCount;
        const after: number[] = [];
        for (const id of ids) after.push((await update(client, id, `after${id}`)).rowCount ?? -1);
        // Rowcounts of the UPDATE parked during the cutover, and of those after it.
        assert.deepEqual({ parked: parkedCount, after }, { parked: 1, after: ids.map(() => 1) });
        const rows = await emails(setup);
        for (const id of ids) {
          const shard = shardForBigint(BigInt(id), 3);
          assert.deepEqual(rows.get(id), [[shard, `after${id}`]], `row ${id}`);
        }
        assert.deepEqual(rows.get(parkedId)?.length, 1);
      } finally {
        await Promise.all([client.end(), parkedClient.end()]);
      }
    });
  });
});

const SCHEMA = `
CREATE TABLE users (id bigint PRIMARY KEY, email text);
CREATE TABLE events (note text, kind text, user_id bigint, seq int);
CREATE SCHEMA other;
CREATE TABLE other.events (user_id bigint, note text, kind text, seq int);
CREATE TABLE notes (user_id bigint DEFAULT 5, body text DEFAULT 'x');
`;

/** Where each value of the first column of `sql` is, by shard (read from every shard directly). */
async function placed(setup: ShardedSetup, sql: string): Promise<Record<string, number[]>> {
  return Object.fromEntries(await setup.placement(sql));
}

/** Where 3 shards put each of `keys`: each on the one shard its hash says. */
function byHash(keys: number[]): Record<string, number[]> {
  return Object.fromEntries(keys.map((k) => [String(k), [shardForBigint(BigInt(k), 3)]]));
}

Deno.test("sharding catalog: INSERT without a column list goes where its key belongs", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }, { column: "user_id" }],
    schema: SCHEMA,
    extra: { admin: { password: ADMIN_PASSWORD } },
  });
  const dog = await connectPg(setup.target);
  const ref = await connectPg(setup.referenceTarget);
  /** Runs a statement through pgdog and on the reference database. */
  const both = async (sql: string, values?: unknown[]): Promise<void> => {
    await ref.query(sql, values);
    await dog.query(sql, values);
  };
  try {
    await dumpLogsOnFailure(setup.proxy, async () => {
      await t.step("simple and extended protocol, key first", async () => {
        const ids = Array.from({ length: 12 }, (_, k) => k + 1);
        for (const id of ids.slice(0, 6)) await both(`INSERT INTO users VALUES (${id}, 'u${id}')`);
        for (const id of ids.slice(6)) {
          await both("INSERT INTO users VALUES ($1, $2)", [id, `u${id}`]);
        }
        assert.deepEqual(await placed(setup, "SELECT id FROM users"), byHash(ids));
        await compareAnswers(setup, "SELECT * FROM users", { unordered: true });
      });

      await t.step(
        "the key in the third column; search_path and schema-qualified names",
        async () => {
          await both("INSERT INTO events VALUES ('a', 'k', 21, 1), ('b', 'k', 21, 2)");
          await both("INSERT INTO events VALUES ($1, $2, $3, $4)", ["c", "k", 22, 3]);
          // The same name in another schema, its key first: the cache must not mix them up.
          await both("SET search_path TO other, public");
          await both("INSERT INTO events VALUES (23, 'd', 'k', 4)");
          await both("INSERT INTO events VALUES ($1, $2, $3, $4)", [24, "e", "k", 5]);
          await both("RESET search_path");
          await both("INSERT INTO other.events VALUES (25, 'f', 'k', 6)");
          await both("INSERT INTO events VALUES ('g', 'k', 26, 7)");
          assert.deepEqual(
            await placed(setup, "SELECT DISTINCT user_id FROM public.events"),
            byHash([21, 22, 26]),
          );
          assert.deepEqual(
            await placed(setup, "SELECT user_id FROM other.events"),
            byHash([23, 24, 25]),
          );
          await compareAnswers(setup, "SELECT * FROM public.events", { unordered: true });
          await compareAnswers(setup, "SELECT * FROM other.events", { unordered: true });
        },
      );

      await t.step("DEFAULT VALUES and DEFAULT keys go to one shard", async () => {
        await both("INSERT INTO notes DEFAULT VALUES");
        await both("INSERT INTO notes VALUES (DEFAULT, 'y')");
        await both("INSERT INTO notes VALUES (31, 'z')");
        const rows = await placed(setup, "SELECT body FROM notes");
        assert.equal(rows.x?.length, 1, JSON.stringify(rows));
        assert.equal(rows.y?.length, 1, JSON.stringify(rows));
        assert.deepEqual(rows.z, [shardForBigint(31n, 3)]);
      });

      await t.step("a table that does not exist: PostgreSQL's error", async () => {
        await compareAnswers(setup, "INSERT INTO nosuch VALUES (1, 2)");
        await compareAnswers(setup, "INSERT INTO other.nosuch VALUES (1, 2)");
      });

      await t.step("DDL through pgdog: the new column order is read again", async () => {
        await both("CREATE TABLE moved (pad text, user_id bigint, note text)");
        await both("INSERT INTO moved VALUES ('p', 41, 'n')");
        await both("ALTER TABLE moved DROP COLUMN pad");
        await both("INSERT INTO moved VALUES (42, 'n')");
        await both("ALTER TABLE moved ADD COLUMN pad text");
        await both("INSERT INTO moved VALUES (43, 'n', 'p')");
        // Inside a transaction: the table is created and filled before anyone else can see it.
        await both("BEGIN");
        await both("DROP TABLE moved");
        await both("CREATE TABLE moved (note text, user_id bigint)");
        await both("INSERT INTO moved VALUES ('n', 44)");
        await both("COMMIT");
        await both("INSERT INTO moved VALUES ('n', 45)");
        await both("ALTER TABLE moved RENAME TO gone");
        await both("CREATE TABLE moved (user_id bigint, note text)");
        await both("INSERT INTO moved VALUES (46, 'n')");
        assert.deepEqual(await placed(setup, "SELECT user_id FROM gone"), byHash([44, 45]));
        assert.deepEqual(await placed(setup, "SELECT user_id FROM moved"), byHash([46]));
        await compareAnswers(setup, "SELECT * FROM gone", { unordered: true });
      });

      await t.step("a transaction's own DDL stays its own until it commits", async () => {
        await both("CREATE TABLE own (pad text, user_id bigint, note text)");
        await both("INSERT INTO own VALUES ('p', 71, 'n')");
        const other = await connectPg(setup.target);
        try {
          await dog.query("BEGIN");
          await dog.query("ALTER TABLE own DROP COLUMN pad");
          await dog.query("INSERT INTO own VALUES (72, 'n')");
          // Another client routes by the committed table; its INSERT waits for the lock.
          const waiting = other.query("INSERT INTO own VALUES ('p', 73, 'n')").then(
            () => "inserted",
            (e: Error) => e.message,
          );
          await new Promise((r) => setTimeout(r, 300));
          await dog.query("ROLLBACK");
          assert.equal(await waiting, "inserted");
          await ref.query("INSERT INTO own VALUES ('p', 73, 'n')");
          await both("INSERT INTO own VALUES ('p', 74, 'n')");
        } finally {
          await other.end();
        }
        assert.deepEqual(await placed(setup, "SELECT user_id FROM own"), byHash([71, 73, 74]));
        await compareAnswers(setup, "SELECT * FROM own", { unordered: true });
        // In the same query as its DDL: the statements run one by one in one transaction, and
        // the INSERT reads the new column order from that transaction.
        await both(
          "CREATE TABLE same (note text, user_id bigint); INSERT INTO same VALUES ('n', 75)",
        );
        assert.deepEqual(await placed(setup, "SELECT user_id FROM same"), byHash([75]));
      });

      await t.step("DDL straight on the shards, then RELOAD", async () => {
        await both("CREATE TABLE direct (user_id bigint, note text)");
        await both("INSERT INTO direct VALUES (51, 'n')");
        // pgdog does not see this: RELOAD makes it read the column order again.
        await setup.everywhere(
          "DROP TABLE direct; CREATE TABLE direct (note text, user_id bigint)",
        );
        await admin(setup, "RELOAD");
        await both("INSERT INTO direct VALUES ('n', 52)");
        await both("INSERT INTO direct VALUES ('n', 53)");
        assert.deepEqual(await placed(setup, "SELECT user_id FROM direct"), byHash([52, 53]));
      });

      await t.step("psycopg, prepared", async () => {
        const ids = [61, 62, 63, 64, 65, 66];
        const counts = await runPsycopg<number[]>(
          setup.target,
          `
conn = psycopg.connect(DSN, autocommit=True)
out = []
for i in json.loads(os.environ["IDS"]):
    out.append(conn.execute("INSERT INTO events VALUES (%s, %s, %s, %s)", ("p", "k", i, i),
                            prepare=True).rowcount)
print(json.dumps(out))
`,
          { env: { IDS: JSON.stringify(ids) } },
        );
        assert.deepEqual(counts, ids.map(() => 1));
        const rows = await placed(setup, "SELECT user_id FROM public.events WHERE note = 'p'");
        assert.deepEqual(rows, byHash(ids));
      });
    });
  } finally {
    await Promise.all([dog.end(), ref.end()]);
  }
});

Deno.test("sharding catalog: the database's own aggregates are read from shard 0, again after DDL and RELOAD", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    schema: SCHEMA,
    extra: { admin: { password: ADMIN_PASSWORD } },
  });
  const dog = await connectPg(setup.target);
  const ref = await connectPg(setup.referenceTarget);
  const both = async (sql: string): Promise<void> => {
    await ref.query(sql);
    await dog.query(sql);
  };
  try {
    for (let id = 1; id <= 30; id++) await both(`INSERT INTO users VALUES (${id}, 'u${id}')`);
    await dumpLogsOnFailure(setup.proxy, async () => {
      await t.step("an aggregate created through pgdog: refused across shards", async () => {
        // The database's aggregates are read now (none of its own yet) and kept.
        await compareAnswers(setup, "SELECT upper(email) FROM users", { unordered: true });
        await both("CREATE AGGREGATE my_sum (int8) (sfunc = int8pl, stype = int8)");
        await assertRefused(setup, "SELECT my_sum(id) FROM users", {
          message: /pgdog can't combine an aggregate it doesn't know/,
        });
        await assertRefused(
          setup,
          "SELECT id FROM users WHERE id > (SELECT my_sum(id) FROM users)",
        );
        // Whole on one shard, or grouped by the sharding key: the shards compute it.
        await compareAnswers(setup, "SELECT my_sum(id) FROM users WHERE id = 7");
        await compareAnswers(setup, "SELECT id, my_sum(id) FROM users GROUP BY id ORDER BY id");
      });

      await t.step("an aggregate created straight on the shards: known after RELOAD", async () => {
        await setup.everywhere("CREATE AGGREGATE other_sum (int8) (sfunc = int8pl, stype = int8)");
        await admin(setup, "RELOAD");
        await assertRefused(setup, "SELECT other_sum(id) FROM users");
        await compareAnswers(setup, "SELECT other_sum(id) FROM users WHERE id = 8");
      });
    });
  } finally {
    await Promise.all([dog.end(), ref.end()]);
  }
});

Deno.test("sharding catalog: workers = 2, session mode: DDL reaches both workers, temporary tables stay in their session", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ column: "user_id" }],
    schema: "CREATE TABLE items (user_id bigint, note text); CREATE TABLE kept (user_id bigint);",
    general: { workers: 2, log_connections: true, default_pool_size: 24 },
    user: { pooler_mode: "session" },
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    const clients: pg.Client[] = await Promise.all(
      Array.from({ length: 8 }, () => connectPg(setup.target)),
    );
    try {
      /** The worker each client is on (from the login lines, by the client's port). */
      const workers = async (): Promise<number[]> => {
        let found: (number | undefined)[] = [];
        // Log lines arrive a little after the logins.
        for (let i = 0; i < 50; i++) {
          const logs = setup.proxy.logs();
          found = clients.map((c) => {
            const port = (c as unknown as { connection: { stream: { localPort: number } } })
              .connection.stream.localPort;
            const m = logs.match(
              new RegExp(`\\[worker (\\d)\\] client \\d+ \\(127\\.0\\.0\\.1:${port}\\) logged in`),
            );
            return m ? Number(m[1]) : undefined;
          });
          if (found.every((w) => w !== undefined)) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.ok(found.every((w) => w !== undefined), `workers: ${found}`);
        return found as number[];
      };
      const worker = await workers();

      await t.step("DDL through one worker: the other reads the column order again", async () => {
        assert.ok(worker.includes(0) && worker.includes(1), `clients' workers: ${worker}`);
        // Every client's worker learns the column order...
        for (const [i, c] of clients.entries()) {
          await c.query(`INSERT INTO items VALUES (${100 + i}, 'n')`);
        }
        // ...which DDL through one of them changes for all.
        await clients[0].query("DROP TABLE items; CREATE TABLE items (note text, user_id bigint)");
        for (const [i, c] of clients.entries()) {
          await c.query(`INSERT INTO items VALUES ('n', ${200 + i})`);
        }
        assert.deepEqual(
          await placed(setup, "SELECT user_id FROM items"),
          byHash(clients.map((_, i) => 200 + i)),
        );
      });

      await t.step("a temporary table's column order is its session's own", async () => {
        // Two clients of one worker, which keeps one cache for both.
        const i = worker.findIndex((w, k) => worker.indexOf(w, k + 1) > k);
        const [a, b] = [clients[i], clients[worker.indexOf(worker[i], i + 1)]];
        // A's temporary table hides the permanent one, with its key elsewhere.
        await a.query("CREATE TEMP TABLE kept (note text, user_id bigint)");
        await a.query("INSERT INTO kept VALUES ('n', 81)");
        await b.query("INSERT INTO kept VALUES (82)");
        await a.query("INSERT INTO kept VALUES ('n', 83)");
        for (const key of [81, 83]) {
          const shard = shardForBigint(BigInt(key), 3);
          const r = await a.query(
            `/* pgdog_shard: ${shard} */ SELECT user_id FROM kept WHERE user_id = ${key}`,
          );
          assert.deepEqual(r.rows, [{ user_id: String(key) }], `temporary row ${key}`);
        }
        assert.deepEqual(await placed(setup, "SELECT user_id FROM kept"), byHash([82]));
      });
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
  });
});
