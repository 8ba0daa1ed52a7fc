/**
 * UPDATEs that change a row's sharding key, with `[rewrite] shard_key = "rewrite"`: the row moves
 * to its new key's shard (SET expressions see the old row), `UPDATE 1` and the RETURNING row (the
 * new one), in the simple and extended protocols, outside and inside a transaction (ROLLBACK
 * undoes the move); the same shard is a plain UPDATE; no row → `UPDATE 0`; several rows → an
 * error and nothing changed; `error` refuses.
 */

import assert from "node:assert/strict";
import {
  assertRefused,
  connectPg,
  dumpLogsOnFailure,
  type ShardedSetup,
  startSharded,
} from "./harness/mod.ts";
import { shardForBigint } from "../src/sharding/hash.ts";

const SCHEMA = `
  CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, n int, tags text[]);
  CREATE TABLE events (user_id bigint, v text);
  CREATE TABLE audit (op text);
  CREATE FUNCTION log_op() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN INSERT INTO audit VALUES (TG_OP); RETURN NULL; END $$;
  CREATE TRIGGER users_audit AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION log_op();
`;
const s = (id: number | bigint) => shardForBigint(BigInt(id), 3);
/** The next id after `from` on another shard than `id`'s (or on the same one). */
function idFor(id: number, options: { from: number; sameShard?: boolean }): number {
  let x = options.from;
  while ((s(x) === s(id)) !== (options.sameShard === true)) x++;
  return x;
}

/** Where each id of users is, and its row, read from the shards directly. */
async function rowsOnShards(setup: ShardedSetup): Promise<Map<string, number[]>> {
  return await setup.placement("SELECT id FROM users");
}

Deno.test("sharding-key UPDATE: the row moves to its new shard", async (t) => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }, { name: "events", column: "user_id" }],
    schema: SCHEMA,
    extra: { rewrite: { enabled: true, shard_key: "rewrite" } },
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    const dog = await connectPg(setup.target);
    try {
      await dog.query(
        "INSERT INTO users (id, email, n, tags) VALUES (1, 'a', 10, '{x,y}')",
      );
      await dog.query("INSERT INTO users (id, email, n) VALUES (2, 'b', 20)");

      await t.step("simple protocol: moved, SET sees the old row, RETURNING the new", async () => {
        const to = idFor(1, { from: 100 });
        const r = await dog.query(
          `UPDATE users SET id = ${to}, n = n + 1, email = email || '!' WHERE id = 1 ` +
            "RETURNING id, email, n, tags",
        );
        assert.equal(r.command, "UPDATE");
        assert.equal(r.rowCount, 1);
        assert.deepEqual(r.rows, [{ id: String(to), email: "a!", n: 11, tags: ["x", "y"] }]);
        const placed = await rowsOnShards(setup);
        assert.deepEqual(placed.get(String(to)), [s(to)]);
        assert.equal(placed.get("1"), undefined);
        // And back, in the extended protocol with parameters.
        const back = await dog.query(
          "UPDATE users SET id = $1, n = $3 WHERE id = $2 RETURNING id, n, $4::text AS note",
          [1, to, 5, "moved"],
        );
        assert.equal(back.rowCount, 1);
        assert.deepEqual(back.rows, [{ id: "1", n: 5, note: "moved" }]);
        const again = await rowsOnShards(setup);
        assert.deepEqual(again.get("1"), [s(1)]);
        assert.equal(again.get(String(to)), undefined);
        // The shards saw a DELETE and an INSERT, never an UPDATE of the row.
        const ops: string[] = [];
        for (let i = 0; i < 3; i++) {
          ops.push(...(await setup.onShard(i, "SELECT op FROM audit")).map((r) => r[0]));
        }
        assert.deepEqual(ops.sort(), [
          "DELETE",
          "DELETE",
          "INSERT",
          "INSERT",
          "INSERT",
          "INSERT",
        ]);
      });

      await t.step("same shard: a plain UPDATE; no row: UPDATE 0", async () => {
        const same = idFor(2, { from: 200, sameShard: true });
        const r = await dog.query(`UPDATE users SET id = ${same} WHERE id = 2`);
        assert.equal(r.rowCount, 1);
        assert.deepEqual((await rowsOnShards(setup)).get(String(same)), [s(2)]);
        await dog.query(`UPDATE users SET id = 2 WHERE id = ${same}`);
        const none = await dog.query(
          `UPDATE users SET id = ${idFor(3, { from: 300 })} WHERE id = 3`,
        );
        assert.equal(none.rowCount, 0);
      });

      await t.step("inside a transaction: ROLLBACK undoes the move, COMMIT keeps it", async () => {
        const to = idFor(2, { from: 400 });
        await dog.query("BEGIN");
        const r = await dog.query(`UPDATE users SET id = ${to} WHERE id = 2 RETURNING id`);
        assert.deepEqual(r.rows, [{ id: String(to) }]);
        assert.equal((await dog.query(`SELECT n FROM users WHERE id = ${to}`)).rows[0].n, 20);
        await dog.query("ROLLBACK");
        let placed = await rowsOnShards(setup);
        assert.deepEqual(placed.get("2"), [s(2)]);
        assert.equal(placed.get(String(to)), undefined);
        await dog.query("BEGIN");
        await dog.query("UPDATE users SET id = $1 WHERE id = $2", [to, 2]);
        await dog.query("COMMIT");
        placed = await rowsOnShards(setup);
        assert.deepEqual(placed.get(String(to)), [s(to)]);
        assert.equal(placed.get("2"), undefined);
        await dog.query(`UPDATE users SET id = 2 WHERE id = ${to}`);
      });

      await t.step("several rows matched: error, nothing changed; conflicts fail it", async () => {
        await dog.query("INSERT INTO users (id, email) VALUES (5, 'dup')");
        const to = idFor(5, { from: 500 });
        await dog.query("INSERT INTO events (user_id, v) VALUES (5, 'a'), (5, 'b')");
        await assert.rejects(dog.query(`UPDATE events SET user_id = ${to} WHERE user_id = 5`), {
          code: "21000",
        });
        await dog.query("BEGIN");
        await assert.rejects(
          dog.query("UPDATE events SET user_id = $1 WHERE user_id = $2", [
            to,
            5,
          ]),
          { code: "21000" },
        );
        await assert.rejects(dog.query("SELECT 1"), { code: "25P02" });
        await dog.query("ROLLBACK");
        const events = await setup.placement("SELECT user_id FROM events");
        assert.deepEqual(events.get("5"), [s(5), s(5)]);
        assert.equal(events.get(String(to)), undefined);
        assert.deepEqual(await setup.onShard(s(5), "SELECT count(*) FROM events"), [["2"]]);
        // The new key exists on its shard: the INSERT fails there; the row stays where it was.
        await dog.query(`INSERT INTO users (id, email) VALUES (${to}, 'taken')`);
        await assert.rejects(dog.query(`UPDATE users SET id = ${to} WHERE id = 5`), {
          code: "23505",
        });
        const placed = await rowsOnShards(setup);
        assert.deepEqual(placed.get("5"), [s(5)]);
        assert.deepEqual(placed.get(String(to)), [s(to)]);
        const left = await setup.onShard(s(to), `SELECT email FROM users WHERE id = ${to}`);
        assert.deepEqual(left, [["taken"]]);
      });
    } finally {
      await dog.end();
    }
  });
});

Deno.test("sharding-key UPDATE: refused with shard_key = error", async () => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    schema: SCHEMA,
  });
  const message = await assertRefused(
    setup,
    `UPDATE users SET id = ${idFor(1, { from: 100 })} WHERE id = 1`,
  );
  assert.match(message, /shard_key = "rewrite"/);
});
