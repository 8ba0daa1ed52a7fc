/**
 * Sharding that depends on what pgdog learns or keeps across statements:
 *
 * - RELOAD changing the shards (the cutover: MAINTENANCE ON, a new pgdog.toml, RELOAD,
 *   MAINTENANCE OFF) with clients that keep their connection and their prepared statements
 *   (psycopg after its prepare threshold, npm:pg named statements): every statement after the
 *   cutover, and one parked during it, routes by the new layout.
 */

import assert from "node:assert/strict";
import { shardForBigint } from "../src/sharding/hash.ts";
import {
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
