/**
 * INSERT ... SELECT into a sharded table (`[rewrite] enabled = true`, `split_inserts =
 * "rewrite"`): pgdog runs the SELECT (from an omnisharded table, generate_series, one shard or
 * every shard of another sharded table) and sends each row to its shard. Every row is on
 * exactly one shard, the one the router sends its key to, and the tables equal the reference
 * database's after the same statements. Inside a transaction the SELECT sees the transaction's
 * rows and ROLLBACK undoes the insert; a failing row fails the whole statement (nothing
 * inserted); a plugin hasher places each row where the plugin says. What is not done is refused
 * with 0A000 saying so; without the settings, the refusal names them.
 */

import assert from "node:assert/strict";
import type pg from "pg";
import {
  compareAnswers,
  connectPg,
  connectPostgresJs,
  dumpLogsOnFailure,
  startSharded,
} from "./harness/mod.ts";
import type { ShardedSetup } from "./harness/sharded.ts";
import { fe, summary, WireClient } from "./wire.ts";

const SCHEMA = `
CREATE TABLE users (id bigint PRIMARY KEY, email text);
CREATE TABLE archive (id bigint PRIMARY KEY, email text, note text);
CREATE TABLE src (id bigint, email text);
CREATE TABLE pusers (id bigint PRIMARY KEY, email text);
INSERT INTO src SELECT g, 'src' || g FROM generate_series(1, 40) g;
CREATE SCHEMA other;
CREATE TABLE other.src2 (id bigint, email text, at date);
INSERT INTO other.src2 SELECT g, 'other' || g, date '2026-01-02' + g FROM generate_series(1, 5) g;
CREATE TABLE events (id bigint PRIMARY KEY, at date, span interval);
CREATE TABLE stats (id bigint PRIMARY KEY, v text, n bigint);
CREATE TABLE skipping (id bigint PRIMARY KEY);
CREATE FUNCTION skip_odd() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN IF NEW.id % 2 = 1 THEN RETURN NULL; END IF; RETURN NEW; END $$;
CREATE TRIGGER skip_odd BEFORE INSERT ON skipping FOR EACH ROW EXECUTE FUNCTION skip_odd();
`;

const HERE = new URL(".", import.meta.url).pathname;

/** Runs `sql` through pgdog and on the reference; asserts the same command tag. */
async function both(
  dog: pg.Client,
  ref: pg.Client,
  sql: string,
): Promise<number | null> {
  const a = await dog.query(sql);
  const b = await ref.query(sql);
  assert.equal(a.command, b.command, sql);
  assert.equal(a.rowCount, b.rowCount, sql);
  return a.rowCount;
}

/** Every row of `table` is on exactly one shard, and pgdog finds it by its key there. */
async function placedOnce(setup: ShardedSetup, dog: pg.Client, table: string): Promise<number> {
  const placement = await setup.placement(`SELECT id FROM ${table}`);
  for (const [id, shards] of placement) {
    assert.equal(shards.length, 1, `${table} id ${id} is on shards ${shards}`);
    const r = await dog.query(`SELECT id FROM ${table} WHERE id = $1`, [id]);
    assert.equal(r.rows.length, 1, `${table} id ${id} is not on its key's shard`);
  }
  return placement.size;
}

Deno.test("INSERT ... SELECT into a sharded table: each row on its shard", async (t) => {
  await using setup = await startSharded({
    shardedTables: [
      { name: "users", column: "id" },
      { name: "archive", column: "id" },
      { name: "events", column: "id" },
      { name: "stats", column: "id" },
      { name: "skipping", column: "id" },
      { name: "pusers", column: "id", hasher: "plugin:modulo" },
    ],
    omnisharded: ["src"],
    schema: SCHEMA,
    extra: {
      rewrite: { enabled: true, split_inserts: "rewrite", shard_key: "rewrite" },
      plugins: [{ name: "modulo", path: `${HERE}plugins/cached.ts`, timeout: 10_000 }],
    },
    denoFlags: ["--allow-run"],
  });
  const dog = await connectPg(setup.target);
  const ref = await connectPg(setup.referenceTarget);
  try {
    await dumpLogsOnFailure(setup.proxy, async () => {
      await t.step("from an omnisharded table", async () => {
        assert.equal(
          await both(dog, ref, "INSERT INTO users (id, email) SELECT id, email FROM src"),
          40,
        );
        assert.equal(await placedOnce(setup, dog, "users"), 40);
        await compareAnswers(setup, "SELECT id, email FROM users ORDER BY id");
      });

      await t.step("from generate_series, with a WITH clause", async () => {
        await both(
          dog,
          ref,
          "WITH g AS (SELECT x FROM generate_series(100, 160) x) " +
            "INSERT INTO users (email, id) SELECT 'g' || x, x FROM g",
        );
        assert.equal(await placedOnce(setup, dog, "users"), 40 + 61);
        await compareAnswers(setup, "SELECT id, email FROM users ORDER BY id");
      });

      await t.step("from another sharded table, across shards; without a column list", async () => {
        assert.equal(
          await both(
            dog,
            ref,
            "INSERT INTO archive (id, email) SELECT id, email FROM users WHERE id < 150",
          ),
          90,
        );
        await both(
          dog,
          ref,
          "INSERT INTO archive SELECT id + 1000, email, 'copy' FROM users WHERE id = 7",
        );
        assert.equal(await placedOnce(setup, dog, "archive"), 91);
        await compareAnswers(setup, "SELECT id, email, note FROM archive ORDER BY id");
      });

      await t.step("no rows: INSERT 0 0; ON CONFLICT DO NOTHING is carried", async () => {
        assert.equal(
          await both(dog, ref, "INSERT INTO users SELECT id, email FROM src WHERE false"),
          0,
        );
        assert.equal(
          await both(
            dog,
            ref,
            "INSERT INTO users (id, email) SELECT id, 'again' FROM src ON CONFLICT DO NOTHING",
          ),
          0,
        );
        await both(
          dog,
          ref,
          "INSERT INTO users (id, email) SELECT id, 'upd' FROM src WHERE id <= 3 " +
            "ON CONFLICT (id) DO UPDATE SET email = excluded.email",
        );
        await compareAnswers(setup, "SELECT id, email FROM users ORDER BY id");
      });

      await t.step("a row failing on one shard: nothing is inserted anywhere", async () => {
        const sql =
          "INSERT INTO users (id, email) SELECT g, 'x' FROM generate_series(2000, 2010) g " +
          "UNION ALL SELECT 1, 'duplicate'";
        await assert.rejects(dog.query(sql), (e: { code?: string }) => e.code === "23505");
        const left = await setup.placement("SELECT id FROM users WHERE id >= 2000");
        assert.equal(left.size, 0);
      });

      await t.step("inside a transaction: sees its rows, ROLLBACK undoes", async () => {
        for (const c of [dog, ref]) {
          await c.query("BEGIN");
          await c.query("INSERT INTO users (id, email) VALUES (500, 'tx')");
          await c.query(
            "INSERT INTO archive (id, email, note) SELECT id, email, 'tx' FROM users WHERE id = 500",
          );
          await c.query(
            "INSERT INTO archive (id, email, note) SELECT id + 3000, email, 'tx' FROM users WHERE id < 10",
          );
          await c.query("COMMIT");
        }
        await compareAnswers(setup, "SELECT id, email, note FROM archive ORDER BY id");
        await dog.query("BEGIN");
        await dog.query("INSERT INTO archive (id, email) SELECT id + 5000, email FROM src");
        await dog.query("ROLLBACK");
        assert.equal((await setup.placement("SELECT id FROM archive WHERE id >= 5000")).size, 0);
        await placedOnce(setup, dog, "archive");
      });

      await t.step("a plugin hasher: each row where the plugin says", async () => {
        assert.equal(
          (await dog.query("INSERT INTO pusers SELECT id, email FROM src")).rowCount,
          40,
        );
        const placement = await setup.placement("SELECT id FROM pusers");
        assert.equal(placement.size, 40);
        for (const [id, shards] of placement) {
          assert.deepEqual(shards, [Number(id) % 3], `id ${id}`);
        }
      });

      await t.step("extended protocol: Bind parameters, unnamed and named statements", async () => {
        const text =
          "INSERT INTO archive (id, email, note) SELECT id + $1, email, $2 FROM src WHERE id <= $3";
        for (const c of [dog, ref]) {
          assert.equal((await c.query(text, [9000, "ext", 5])).rowCount, 5);
          assert.equal(
            (await c.query({ name: "ins_sel", text, values: [9100, null, 40] })).rowCount,
            40,
          );
          assert.equal(
            (await c.query({ name: "ins_sel", text, values: [9200, "again", 2] })).rowCount,
            2,
          );
          assert.equal((await c.query(text, [9300, "none", 0])).rowCount, 0);
        }
        assert.equal((await placedOnce(setup, dog, "archive")) > 47, true);
        await compareAnswers(setup, "SELECT id, email, note FROM archive ORDER BY id");
        const pjs = connectPostgresJs(setup.target, { prepare: true, max: 1 });
        try {
          const r =
            await pjs`INSERT INTO archive (id, email) SELECT id + ${9400}, email FROM src WHERE id <= ${3}`;
          assert.equal(r.count, 3);
        } finally {
          await pjs.end();
        }
        await ref.query(
          "INSERT INTO archive (id, email) SELECT id + 9400, email FROM src WHERE id <= 3",
        );
        await compareAnswers(setup, "SELECT id, email, note FROM archive ORDER BY id");
      });

      await t.step("the client's search_path and DateStyle", async () => {
        const conn = await connectPg(setup.target);
        const direct = await connectPg(setup.referenceTarget);
        try {
          for (const c of [conn, direct]) {
            await c.query("SET search_path TO other, public");
            await c.query("SET DateStyle = 'SQL, DMY'");
            await c.query("SET IntervalStyle = 'sql_standard'");
            const r = await c.query(
              "INSERT INTO events SELECT id, at, make_interval(days => id::int, secs => 1.5) FROM src2",
            );
            assert.equal(r.rowCount, 5);
          }
        } finally {
          await conn.end();
          await direct.end();
        }
        await compareAnswers(setup, "SELECT id, at::text, span::text FROM events ORDER BY id");
        assert.equal(await placedOnce(setup, dog, "events"), 5);
      });

      await t.step(
        "a SELECT merged across shards: ORDER BY LIMIT, aggregates, GROUP BY",
        async () => {
          for (
            const sql of [
              "INSERT INTO stats (id, v) SELECT id + 20000, email FROM users ORDER BY id DESC LIMIT 3",
              "INSERT INTO stats (id, v) SELECT id + 30000, email FROM users ORDER BY email LIMIT 4 OFFSET 2",
              "INSERT INTO stats (id, v) SELECT count(*), max(email) FROM users",
              "INSERT INTO stats (id, n) SELECT length(email), count(*) FROM users GROUP BY length(email)",
            ]
          ) await both(dog, ref, sql);
          assert.equal(await placedOnce(setup, dog, "stats") > 8, true);
          await compareAnswers(setup, "SELECT id, v, n FROM stats ORDER BY id");
        },
      );

      await t.step("routed by hand: /* pgdog_shard: N */ goes where it is told", async () => {
        await dog.query(
          "/* pgdog_shard: 1 */ INSERT INTO stats (id, v) SELECT id + 60000, email FROM src",
        );
        const placement = await setup.placement("SELECT id FROM stats WHERE id >= 60000");
        assert.equal(placement.size, 40);
        for (const shards of placement.values()) assert.deepEqual(shards, [1]);
        // (Off their keys' shards by design: gone again, for the checks that follow.)
        await setup.onShard(1, "DELETE FROM stats WHERE id >= 60000 AND id < 61000");
      });

      await t.step("more rows than cross_shard_buffer_limit: 53200, nothing inserted", async () => {
        const small = await setup.startProxy({ cross_shard_buffer_limit: 1024 });
        try {
          const c = await connectPg(small.target);
          try {
            await assert.rejects(
              c.query(
                "INSERT INTO stats (id, v) SELECT g + 70000, repeat('x', 100) FROM generate_series(1, 100) g",
              ),
              (e: { code?: string }) => e.code === "53200",
            );
            await assert.rejects(
              c.query(
                "INSERT INTO stats (id, v) SELECT id + 71000, repeat(email, 100) FROM users ORDER BY id",
              ),
              (e: { code?: string }) => e.code === "53200",
            );
            assert.equal((await c.query("INSERT INTO stats (id) SELECT 72000")).rowCount, 1);
          } finally {
            await c.end();
          }
        } finally {
          await small.proxy.stop();
        }
        assert.equal(
          (await setup.placement("SELECT id FROM stats WHERE id > 70000 AND id < 72000")).size,
          0,
        );
        await ref.query("INSERT INTO stats (id) SELECT 72000");
      });

      await t.step("RETURNING: every row in the SELECT's order, simple and extended", async () => {
        const cases: Array<[string, unknown[] | undefined]> = [
          [
            "INSERT INTO stats (id, v) SELECT id + 80000, email FROM src RETURNING id, v",
            undefined,
          ],
          [
            "INSERT INTO stats AS s (id, v) SELECT id + 81000, email FROM src WHERE id <= $1 " +
            "ON CONFLICT (id) DO UPDATE SET v = excluded.v RETURNING s.id * 2 AS twice, *",
            [7],
          ],
          ["INSERT INTO stats (id) SELECT id + 82000 FROM src WHERE false RETURNING id", undefined],
          ["INSERT INTO stats (id) SELECT id + 83000 FROM src WHERE id < $1 RETURNING id", [0]],
          [
            "INSERT INTO stats (id, n) SELECT length(email) + 84000, count(*) FROM users " +
            "GROUP BY length(email) RETURNING n, id",
            undefined,
          ],
        ];
        for (const [sql, values] of cases) {
          const a = await dog.query({ text: sql, values });
          const b = await ref.query({ text: sql, values });
          assert.equal(a.command, b.command, sql);
          assert.equal(a.rowCount, b.rowCount, sql);
          const names = (r: { fields: { name: string }[] }): string[] =>
            r.fields.map((f: { name: string }) => f.name);
          assert.deepEqual(names(a), names(b), sql);
          // (GROUP BY gives its groups in no defined order: the reference's may differ.)
          const grouped = /GROUP BY/.test(sql);
          const rows = (rs: unknown[]): string[] => {
            const out = rs.map((r) => JSON.stringify(r));
            return grouped ? out.sort() : out;
          };
          assert.deepEqual(rows(a.rows), rows(b.rows), sql);
        }
        // The SELECT's order crosses the shards back and forth; repeatable (DO UPDATE), so every
        // protocol inserts the same rows; past one INSERT of BATCH_ROWS rows per shard. (Binary
        // results are refused: see README.)
        const ordered = [
          "INSERT INTO stats (id, v) SELECT id + 86000, email FROM src ORDER BY id DESC " +
          "ON CONFLICT (id) DO UPDATE SET v = excluded.v RETURNING id, v",
          "INSERT INTO stats (id, v) SELECT g + 87000, 'g' || g FROM generate_series(1, 3500) g " +
          "ON CONFLICT (id) DO UPDATE SET v = stats.v || '+' RETURNING *",
          "INSERT INTO stats AS s (id, n) SELECT id + 88000, id FROM users WHERE id < 200 " +
          "ORDER BY email DESC, id ON CONFLICT (id) DO UPDATE SET n = s.n + 1 " +
          "RETURNING s.n, s.id, s.v",
        ];
        for (const sql of ordered) {
          await compareAnswers(setup, sql, { protocols: ["simple", "extended"] });
        }
        const pjs = connectPostgresJs(setup.target, { prepare: true, max: 1 });
        try {
          const r =
            await pjs`INSERT INTO stats (id) SELECT id + ${85000} FROM src WHERE id <= 4 ORDER BY id DESC RETURNING id`;
          assert.deepEqual(r.map((x) => Number(x.id)), [85004, 85003, 85002, 85001]);
        } finally {
          await pjs.end();
        }
        await ref.query(
          "INSERT INTO stats (id) SELECT id + 85000 FROM src WHERE id <= 4 RETURNING id",
        );
        await placedOnce(setup, dog, "stats");
        await compareAnswers(setup, "SELECT id, v, n FROM stats ORDER BY id");
      });

      await t.step(
        "RETURNING rows past cross_shard_buffer_limit: 53200, nothing inserted",
        async () => {
          const small = await setup.startProxy({ cross_shard_buffer_limit: 1024 });
          try {
            const c = await connectPg(small.target);
            try {
              // (The SELECT's rows fit; the rows RETURNING makes of them don't.)
              const sql = "INSERT INTO stats (id, v) SELECT g + 74000, 'x' FROM " +
                "generate_series(1, 30) g RETURNING repeat(v, 200)";
              await assert.rejects(c.query(sql), (e: { code?: string }) => e.code === "53200");
              await c.query("BEGIN");
              await assert.rejects(c.query(sql), (e: { code?: string }) => e.code === "53200");
              // The transaction failed, as PostgreSQL's would.
              await assert.rejects(
                c.query("SELECT 1"),
                (e: { code?: string }) => e.code === "25P02",
              );
              await c.query("ROLLBACK");
            } finally {
              await c.end();
            }
          } finally {
            await small.proxy.stop();
          }
          assert.equal(
            (await setup.placement("SELECT id FROM stats WHERE id > 74000 AND id < 75000")).size,
            0,
          );
        },
      );

      await t.step(
        "a row-limited Execute of RETURNING: PostgreSQL's answer outside a transaction",
        async () => {
          const dogWire = await WireClient.connect(setup.target);
          const refWire = await WireClient.connect(setup.referenceTarget);
          try {
            const run = async (w: WireClient, sql: string, maxRows: number): Promise<string[]> => {
              await w.send(fe.parse("", sql), fe.bind("", ""), fe.execute("", maxRows), fe.sync());
              return summary(await w.untilReady());
            };
            const selectSql = (base: number): string =>
              `INSERT INTO stats (id) SELECT id + ${base} FROM src WHERE id <= 3 ORDER BY id DESC ` +
              "RETURNING id";
            const splitSql = (base: number): string =>
              `INSERT INTO users (id, email) VALUES (${base + 1}, 'a'), (${base + 2}, 'b'), ` +
              `(${base + 3}, 'c'), (${base + 4}, 'd') RETURNING id, email`;
            // As many rows as the Execute asks for, or more: PostgreSQL inserts every row, returns
            // the ones asked for and leaves the portal suspended (ended by the Sync, outside a
            // transaction). So does pgdog, the rows in order.
            for (
              const [sql, maxRows] of [
                [selectSql(76000), 2],
                [selectSql(76100), 3],
                [splitSql(76200), 2],
                [splitSql(76300), 4],
              ] as const
            ) {
              const expected = await run(refWire, sql, maxRows);
              assert.deepEqual(expected.filter((m) => m !== "D").slice(-2), ["s", "Z I"]);
              assert.deepEqual(await run(dogWire, sql, maxRows), expected, sql);
            }
            // A row's move to another shard returns one row: a limit of 1 suspends it.
            const move = (from: number, to: number): string =>
              `UPDATE users SET id = ${to} WHERE id = ${from} RETURNING id, email`;
            assert.deepEqual(
              await run(dogWire, move(1, 79001), 1),
              await run(refWire, move(1, 79001), 1),
            );
            assert.deepEqual(
              await run(dogWire, move(2, 79002), 2),
              await run(refWire, move(2, 79002), 2),
            );
            // Inside a transaction the portal outlives the request, and its next Execute would ask
            // for more rows: refused, nothing of it kept.
            for (const sql of [selectSql(76400), splitSql(76500), move(3, 79003)]) {
              await dogWire.simple("BEGIN");
              const answer = await run(dogWire, sql, 1);
              // (Z E from PostgreSQL; pgdog says Z I while the held-back BEGIN reached no shard.)
              assert.equal(answer.at(-2), "E 0A000", sql);
              await dogWire.simple("ROLLBACK");
            }
            // Executed twice in one request: refused.
            await dogWire.send(
              fe.parse("", splitSql(76600)),
              fe.bind("", ""),
              fe.execute("", 2),
              fe.execute("", 2),
              fe.sync(),
            );
            assert.deepEqual(summary(await dogWire.untilReady()).slice(-2), ["E 0A000", "Z I"]);
            for (const table of ["stats", "users"]) {
              const left = await setup.placement(
                `SELECT id FROM ${table} WHERE id > 76400 AND id < 77000`,
              );
              assert.equal(left.size, 0, table);
            }
            assert.equal((await setup.placement("SELECT id FROM users WHERE id = 79003")).size, 0);
            // Fewer rows than asked for, or no RETURNING: PostgreSQL's answer, rows in order.
            for (
              const [sql, maxRows] of [
                [selectSql(77000), 4],
                [splitSql(77000), 5],
                ["INSERT INTO stats (id) SELECT id + 77100 FROM src WHERE id <= 3", 1],
              ] as const
            ) assert.deepEqual(await run(dogWire, sql, maxRows), await run(refWire, sql, maxRows));
          } finally {
            await dogWire.close();
            await refWire.close();
          }
          await placedOnce(setup, dog, "stats");
          await placedOnce(setup, dog, "users");
          await compareAnswers(setup, "SELECT id, v, n FROM stats ORDER BY id");
          await compareAnswers(setup, "SELECT id, email FROM users ORDER BY id");
        },
      );

      await t.step("refused with 0A000, saying why", async () => {
        const refused = async (sql: string, why: RegExp, values?: unknown[]): Promise<void> => {
          await assert.rejects(dog.query(sql, values), (e: { code?: string; message?: string }) => {
            assert.equal(e.code, "0A000", `${sql}: ${e.message}`);
            assert.match(e.message ?? "", why);
            return true;
          });
        };
        await refused(
          "INSERT INTO archive (id) SELECT row_number() OVER (ORDER BY id) + 40000 FROM users",
          /SELECT of an INSERT \.\.\. SELECT: .*window function/,
        );
        await refused(
          "INSERT INTO archive (id, email) SELECT id + $1, email FROM src RETURNING id + $2",
          /RETURNING/,
          [80000, 1],
        );
        // A trigger skipping rows: which rows came back, and so their order, can't be known.
        await refused(
          "INSERT INTO skipping SELECT id FROM src ORDER BY id RETURNING id",
          /a shard returned \d+ rows for the \d+ it was given/,
        );
        assert.equal((await setup.placement("SELECT id FROM skipping")).size, 0);
        // So is a split multi-row INSERT's.
        await refused(
          "INSERT INTO skipping VALUES (101), (102), (103), (104), (105), (106) RETURNING id",
          /a shard returned \d+ rows for the \d+ it was given/,
        );
        await refused(
          "INSERT INTO skipping VALUES ($1), ($2), ($3), ($4), ($5), ($6) RETURNING id",
          /a shard returned \d+ rows for the \d+ it was given/,
          [111, 112, 113, 114, 115, 116],
        );
        assert.equal((await setup.placement("SELECT id FROM skipping")).size, 0);
        assert.equal(await both(dog, ref, "INSERT INTO skipping SELECT id FROM src"), 20);
        await compareAnswers(setup, "SELECT id FROM skipping ORDER BY id");
        // A shard may skip rows: the order of the rows returned can't be known.
        await refused(
          "INSERT INTO archive (id, email) SELECT id, email FROM src ON CONFLICT DO NOTHING " +
            "RETURNING id",
          /ON CONFLICT that may skip rows .*order of the rows returned/,
        );
        await refused(
          "INSERT INTO archive (id, email) SELECT id, email FROM src ON CONFLICT (id) DO UPDATE " +
            "SET note = 'u' WHERE archive.note IS NULL RETURNING id",
          /ON CONFLICT that may skip rows .*order of the rows returned/,
        );
      });
    });
  } finally {
    await dog.end();
    await ref.end();
  }
});

Deno.test("INSERT ... SELECT without split_inserts = rewrite: refused, naming the settings", async () => {
  await using setup = await startSharded({
    shards: 2,
    shardedTables: [{ name: "users", column: "id" }],
    omnisharded: ["src"],
    schema: SCHEMA,
  });
  const dog = await connectPg(setup.target);
  try {
    await assert.rejects(
      dog.query("INSERT INTO users (id, email) SELECT id, email FROM src"),
      (e: { code?: string; message?: string }) =>
        e.code === "0A000" && /split_inserts = "rewrite"/.test(e.message ?? ""),
    );
  } finally {
    await dog.end();
  }
});
