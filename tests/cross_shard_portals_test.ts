/**
 * Issue #19, a cross-shard statement's portal as PostgreSQL keeps one: Execute with a row limit
 * across requests (a Flush-ended request outside a transaction, as postgres.js `.cursor()` does;
 * Sync-ended requests inside a transaction with other statements in between, as pg-cursor and
 * JDBC's fetch size do), with OFFSET, with a merge that holds rows (GROUP BY, DISTINCT); an error
 * in a Flush-ended request; EXPLAIN of a merged query with and without `expanded_explain`; and
 * backpressure: a shard far ahead of the others in a streaming merge, and a client that does not
 * read, stop pgdog reading those shards (their backends wait in ClientWrite).
 */

import assert from "node:assert/strict";
import type pg from "pg";
import { connectPg, dumpLogsOnFailure, type PgTarget, startSharded } from "./harness/mod.ts";
import { loadData, OMNISHARDED, SHARDED_TABLES, USER_COUNT, userIds } from "./cross_shard_data.ts";
import {
  type BackendMessage,
  commandTag,
  dataRow,
  errorFields,
  fe,
  summary,
  WireClient,
} from "./wire.ts";

/** The messages a request of `messages` gets, up to (and with) the first answer of `until`. */
async function answered(
  w: WireClient,
  messages: Uint8Array[],
  until: string,
): Promise<string[]> {
  await w.send(...messages);
  const got: BackendMessage[] = [];
  for (;;) {
    const m = await w.next();
    got.push(m);
    if (until.includes(m.type)) return summary(got);
  }
}

/** The same exchanges on pgdog and on the reference database must get the same answers. */
async function sameOnBoth(
  targets: { dog: PgTarget; ref: PgTarget },
  exchanges: Array<{ messages: Uint8Array[]; until: string }>,
): Promise<string[][]> {
  const run = async (target: PgTarget): Promise<string[][]> => {
    const w = await WireClient.connect(target);
    try {
      const out: string[][] = [];
      for (const e of exchanges) out.push(await answered(w, e.messages, e.until));
      out.push(summary(await w.simple("SELECT 1")));
      return out;
    } finally {
      await w.close();
    }
  };
  const want = await run(targets.ref);
  const got = await run(targets.dog);
  assert.deepEqual(got, want);
  return got;
}

Deno.test({
  name: "cross-shard portals: row-limited Executes across requests; EXPLAIN",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using setup = await startSharded({
      shardedTables: SHARDED_TABLES,
      omnisharded: OMNISHARDED,
    });
    await loadData(setup);
    const targets = { dog: setup.target, ref: setup.referenceTarget };
    await dumpLogsOnFailure(setup.proxy, async () => {
      await t.step("Flush-ended requests outside a transaction (postgres.js cursor)", async () => {
        for (
          const sql of [
            "SELECT id, name FROM users ORDER BY name, id OFFSET 7 LIMIT 40",
            "SELECT id FROM users WHERE id % 7 = 0 ORDER BY id DESC",
            "SELECT country, count(*) FROM users GROUP BY country ORDER BY country",
          ]
        ) {
          const got = await sameOnBoth(targets, [
            {
              messages: [fe.parse("", sql), fe.bind("", ""), fe.execute("", 6), fe.flush()],
              until: "sCE",
            },
            { messages: [fe.execute("", 6), fe.flush()], until: "sCE" },
            { messages: [fe.execute("", 6), fe.flush()], until: "sCE" },
            { messages: [fe.close("P", ""), fe.sync()], until: "Z" },
          ]);
          assert.equal(got[0].filter((m) => m.startsWith("D")).length, 6, sql);
        }
      });

      await t.step(
        "a concatenated cross-shard SELECT fetched in parts: at most N rows a batch",
        async () => {
          // No ORDER BY: pgdog concatenates the shards' rows, but a row-limited Execute still gets
          // at most the rows it asks for, then PortalSuspended, and every row exactly once.
          const w = await WireClient.connect(setup.target);
          try {
            const ids = new Set<string>();
            let batches = 0;
            let first = true;
            for (;;) {
              await w.send(
                ...(first ? [fe.parse("", "SELECT id FROM users"), fe.bind("", "")] : []),
                fe.execute("", 500),
                fe.flush(),
              );
              first = false;
              const got: BackendMessage[] = [];
              while (!"sCE".includes(got.at(-1)?.type ?? "-")) got.push(await w.next(10_000));
              const last = got[got.length - 1];
              assert.notEqual(last.type, "E", "no error");
              const rows = got.filter((m) => m.type === "D");
              assert.ok(rows.length <= 500, `batch of ${rows.length} rows, asked for 500`);
              for (const r of rows) {
                const id = dataRow(r.body)[0]!;
                assert.ok(!ids.has(id), `row ${id} twice`);
                ids.add(id);
              }
              batches++;
              if (last.type === "C") {
                assert.equal(commandTag(last.body), `SELECT ${rows.length}`);
                break;
              }
              assert.equal(rows.length, 500, "a suspended batch is full");
              assert.ok(batches < 100);
            }
            assert.equal(ids.size, USER_COUNT);
            assert.equal(batches, Math.ceil((USER_COUNT + 1) / 500));
            await w.send(fe.sync());
            assert.deepEqual(summary(await w.untilReady(1, 5000)), ["Z I"]);
          } finally {
            await w.close();
          }
        },
      );

      await t.step(
        "in a transaction, other statements between the fetches (pg-cursor, JDBC)",
        async () => {
          const sql = "SELECT status, user_id, id FROM orders ORDER BY status DESC, user_id, id";
          const got = await sameOnBoth(targets, [
            { messages: [fe.query("BEGIN")], until: "Z" },
            {
              messages: [fe.parse("", sql), fe.bind("c1", ""), fe.execute("c1", 25), fe.sync()],
              until: "Z",
            },
            { messages: [fe.query("SELECT count(*) FROM users")], until: "Z" },
            {
              messages: [
                fe.parse("", "SELECT DISTINCT status FROM orders ORDER BY status"),
                fe.bind("c2", ""),
                fe.execute("c2", 2),
                fe.sync(),
              ],
              until: "Z",
            },
            { messages: [fe.execute("c1", 25), fe.sync()], until: "Z" },
            { messages: [fe.execute("c2", 2), fe.execute("c2", 100), fe.sync()], until: "Z" },
            { messages: [fe.describe("P", "c1"), fe.execute("c1", 3), fe.sync()], until: "Z" },
            { messages: [fe.close("P", "c1"), fe.sync()], until: "Z" },
            { messages: [fe.query("COMMIT")], until: "Z" },
          ]);
          assert.ok(got[1].includes("s"), got[1].join(" "));
        },
      );

      await t.step("an error in a Flush-ended request; the Sync after it", async () => {
        const sql = `SELECT id, 100 / (id - ${userIds()[5]}) FROM users`;
        const w = await WireClient.connect(setup.target);
        try {
          await w.send(fe.parse("", sql), fe.bind("", ""), fe.execute("", 0), fe.flush());
          const first = await w.until("E", 5000);
          assert.equal(first.filter((m) => m.type === "E").length, 1);
          assert.equal(errorFields(first[first.length - 1].body).C, "22012");
          await w.send(fe.sync());
          assert.deepEqual(summary(await w.untilReady(1, 5000)), ["Z I"]);
          assert.deepEqual(await w.rows("SELECT count(*) FROM users"), [[String(USER_COUNT)]]);
        } finally {
          await w.close();
        }
      });

      await t.step(
        "a merge error inside a transaction aborts it, as PostgreSQL's would",
        async () => {
          for (const target of [setup.referenceTarget, setup.target]) {
            const c = await connectPg(target);
            try {
              await c.query("BEGIN");
              await c.query("UPDATE users SET name = 'aborted' WHERE id = $1", [userIds()[3]]);
              await assert.rejects(
                c.query("SELECT count(*) FROM users HAVING count(*) * 9223372036854775807 > 0"),
                (e: { code?: string }) => e.code === "22003",
              );
              await assert.rejects(
                c.query("SELECT 1"),
                (e: { code?: string }) => e.code === "25P02",
                "the transaction is aborted",
              );
              const end = await c.query("COMMIT");
              assert.equal(end.command, "ROLLBACK");
              const r = await c.query("SELECT name FROM users WHERE id = $1", [userIds()[3]]);
              assert.notEqual(r.rows[0].name, "aborted");
            } finally {
              await c.end();
            }
          }
        },
      );

      const explained = async (target: PgTarget, sql: string): Promise<BackendMessage[]> => {
        const w = await WireClient.connect(target);
        try {
          return await w.simple(sql);
        } finally {
          await w.close();
        }
      };
      const planOf = (msgs: BackendMessage[]): string =>
        msgs.filter((m) => m.type === "D").map((m) => new TextDecoder().decode(m.body.subarray(6)))
          .join("\n");

      await t.step(
        "EXPLAIN without expanded_explain: one plan, as one database gives",
        async () => {
          const sql = "EXPLAIN (COSTS OFF) SELECT country, count(*) FROM users GROUP BY country";
          const plan = planOf(await explained(setup.target, sql));
          assert.equal((plan.match(/Scan on users/g) ?? []).length, 1, plan);
          assert.doesNotMatch(plan, /Shard|PgDog/);
          // The shard ran the explained statement, not the statement itself.
          assert.match(plan, /Aggregate/);
          const json = await explained(setup.target, `EXPLAIN (FORMAT JSON) ${sql.slice(20)}`);
          const error = json.find((m) => m.type === "E");
          assert.equal(error && errorFields(error.body).C, "0A000");
        },
      );

      await t.step(
        "EXPLAIN ANALYZE with expanded_explain: every shard's plan, then pgdog's",
        async () => {
          const { proxy, target } = await setup.startProxy({ expanded_explain: true });
          try {
            const msgs = await explained(
              target,
              "EXPLAIN ANALYZE SELECT id FROM users ORDER BY name, id LIMIT 5",
            );
            const plan = planOf(msgs);
            assert.equal((plan.match(/^Shard \d:$/gm) ?? []).length, 3, plan);
            assert.equal((plan.match(/actual time/g) ?? []).length >= 3, true, plan);
            assert.match(plan, /PgDog merge: .*merge sorted by/);
            assert.deepEqual(summary(msgs).slice(-2), ["C EXPLAIN", "Z I"]);
          } finally {
            await proxy.stop();
          }
        },
      );
    });
  },
});

/** Resident memory of process `pid`, in bytes. */
function rssBytes(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) * 1024;
}

Deno.test({
  name: "cross-shard backpressure: a shard far ahead, or a slow client, is not read meanwhile",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using setup = await startSharded({
      shardedTables: [{ name: "big", column: "id" }],
      schema: "CREATE TABLE big (id bigint, pad text)",
    });
    // Rows on shards 0 and 2 only (placement doesn't matter to a keyless ORDER BY): ~24 MB each,
    // far more than the sockets between them and pgdog hold.
    for (const i of [0, 2]) {
      await setup.onShard(
        i,
        `INSERT INTO big SELECT g * 3 + ${i}, repeat('x', 200) FROM generate_series(1, 100000) g`,
      );
    }
    const waitEvents = async (): Promise<string[]> =>
      (await Promise.all([0, 2].map((i) =>
        setup.onShard(
          i,
          "SELECT coalesce(wait_event, '-') FROM pg_stat_activity " +
            "WHERE query LIKE '%FROM big ORDER BY%' AND pid <> pg_backend_pid()",
        )
      ))).map((rows) => rows.map((r) => r[0]).join(","));
    const waitFor = async (want: (events: string[]) => boolean): Promise<string[]> => {
      let events: string[] = [];
      for (let n = 0; n < 100; n++) {
        events = await waitEvents();
        if (want(events)) return events;
        await new Promise((r) => setTimeout(r, 100));
      }
      return events;
    };
    await dumpLogsOnFailure(setup.proxy, async () => {
      await t.step(
        "a streaming merge waits for shard 1 without reading shards 0 and 2",
        async () => {
          // Shard 1 can't answer until its table is unlocked.
          const locker = await WireClient.connect({
            host: setup.shards[1].host,
            port: setup.shards[1].port,
            user: "postgres",
            database: "app",
          });
          const dog = await connectPg(setup.target);
          try {
            await locker.simple("BEGIN");
            await locker.simple("LOCK TABLE big IN ACCESS EXCLUSIVE MODE");
            const before = rssBytes(setup.proxy.pid);
            const rows = dog.query("SELECT id, pad FROM big ORDER BY id").then(
              (r: pg.QueryResult) => r,
              (e: unknown) => e as Error,
            );
            const events = await waitFor((e) => e.every((x) => x === "ClientWrite"));
            assert.deepEqual(events, ["ClientWrite", "ClientWrite"]);
            // They stay paused: pgdog doesn't hold their ~48 MB of rows meanwhile.
            await new Promise((r) => setTimeout(r, 2000));
            assert.deepEqual(await waitEvents(), ["ClientWrite", "ClientWrite"]);
            const grown = rssBytes(setup.proxy.pid) - before;
            assert.ok(grown < 24 << 20, `pgdog grew by ${grown} bytes while shard 1 was locked`);
            await locker.simple("COMMIT");
            const r = await rows;
            if (r instanceof Error) throw r;
            assert.equal(r.rows.length, 200000);
            assert.equal(Number(r.rows[0].id), 3);
            assert.equal(Number(r.rows[199999].id), 300002);
          } finally {
            await locker.close();
            await dog.end();
          }
        },
      );

      await t.step("a client that doesn't read: the shards wait to write", async () => {
        const w = await WireClient.connect(setup.target);
        try {
          await w.send(fe.query("SELECT id, pad FROM big ORDER BY id"));
          // Nothing read: the shards' backends end up waiting on pgdog.
          const events = await waitFor((e) => e.every((x) => x === "ClientWrite"));
          assert.deepEqual(events, ["ClientWrite", "ClientWrite"]);
        } finally {
          await w.close();
        }
      });
    });
  },
});
