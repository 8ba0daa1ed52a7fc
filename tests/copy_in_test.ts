/**
 * COPY FROM STDIN through pgdog into a sharded database (issue #20, COPY):
 *
 * - every row lands exactly once, on the shard its key maps to (text, CSV, binary; with and
 *   without a column list), and the client gets one `COPY n`;
 * - tables on every shard (omnisharded) get every row on every shard, `COPY n` counted once;
 * - the options (DELIMITER, NULL, HEADER, HEADER MATCH, QUOTE, ESCAPE, FORCE_NULL,
 *   FORCE_NOT_NULL) give the rows the reference database gets from the same data;
 * - CopyData split at odd places (one byte at a time, rows across messages) is the same COPY;
 * - all or nothing: a duplicate key on one shard mid-stream, a row without a key, a malformed
 *   row, or the client's CopyFail leave nothing on any shard, the error names the client's line,
 *   and the connection goes on;
 * - inside the client's transaction: ROLLBACK leaves nothing, COMMIT keeps every row.
 */

import assert from "node:assert/strict";
import {
  dumpLogsOnFailure,
  psql,
  sendCancelRequest,
  type ShardedSetup,
  startSharded,
} from "./harness/mod.ts";
import { commandTag, errorFields, fe, WireClient } from "./wire.ts";
import { shardForBigint } from "../src/sharding/hash.ts";

const SCHEMA = `
  CREATE TABLE users (id bigint PRIMARY KEY, email text, note text);
  CREATE TABLE countries (code text PRIMARY KEY, name text);
  CREATE TABLE regions (code bigint, name text);
  CREATE TABLE gen (g int GENERATED ALWAYS AS (1) STORED, id bigint, v text);
`;

const shardOf = (id: number | bigint): number => shardForBigint(BigInt(id), 3);

/** Every row of `sql` through pgdog equals the reference's (both sorted). */
async function sameRows(setup: ShardedSetup, sql: string): Promise<void> {
  const got = await psql(setup.target, sql);
  const want = await psql(setup.referenceTarget, sql);
  assert.equal(got.code, 0, got.stderr);
  assert.equal(want.code, 0, want.stderr);
  assert.deepEqual(got.stdout.split("\n").sort(), want.stdout.split("\n").sort(), sql);
}

/** Each users row is on exactly the shard of its id. */
async function placedByKey(setup: ShardedSetup, expected: number): Promise<void> {
  const placed = await setup.placement("SELECT id FROM users");
  assert.equal(placed.size, expected);
  for (const [id, shards] of placed) assert.deepEqual(shards, [shardOf(BigInt(id))], `id ${id}`);
}

/** Runs COPY FROM STDIN with `data` through pgdog and on the reference; both succeed. */
async function copyBoth(setup: ShardedSetup, sql: string, data: string): Promise<string> {
  const got = await psql(setup.target, sql, { stdin: data });
  const want = await psql(setup.referenceTarget, sql, { stdin: data });
  assert.equal(want.code, 0, want.stderr);
  assert.equal(got.code, 0, got.stderr);
  assert.equal(got.stdout, want.stdout);
  return got.stdout.trim();
}

async function truncate(setup: ShardedSetup): Promise<void> {
  await setup.everywhere("TRUNCATE users, countries, regions");
}

/** A wire connection through pgdog, after its first ReadyForQuery. */
async function wire(setup: ShardedSetup): Promise<WireClient> {
  return await WireClient.connect({ ...setup.target, password: "differential-pw" });
}

Deno.test("COPY FROM STDIN into a sharded database", async (t) => {
  await using setup = await startSharded({
    shardedTables: [
      { name: "users", column: "id" },
      { name: "gen", column: "id" },
      {
        name: "regions",
        column: "code",
        mapping: [
          { values: [1, 2, 3], shard: 2 },
          { start: 100, end: 200, shard: 1 },
          { shard: 0 },
        ],
      },
    ],
    omnisharded: ["countries"],
    schema: SCHEMA,
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    await t.step("text: each row on its key's shard, one COPY n", async () => {
      await truncate(setup);
      const data = Array.from({ length: 2000 }, (_, i) => `${i * 7 - 500}\tu${i}@x\t\\N\n`)
        .join("");
      assert.equal(
        await copyBoth(setup, "COPY users (id, email, note) FROM STDIN", data),
        "COPY 2000",
      );
      await placedByKey(setup, 2000);
      await sameRows(setup, "SELECT id, email, note IS NULL FROM users");
      // Without a column list: the table's own column order (note first here).
      const rest = "100000\tz@x\tn1\n100001\ty@x\tn2\n";
      assert.equal(await copyBoth(setup, "COPY users FROM STDIN", rest), "COPY 2");
      await placedByKey(setup, 2002);
      // The key not first, other columns left to their defaults.
      assert.equal(
        await copyBoth(setup, "COPY users (note, id) FROM STDIN", "a\t200000\nb\t200001\n"),
        "COPY 2",
      );
      await placedByKey(setup, 2004);
      await sameRows(setup, "SELECT * FROM users");
      // A generated column takes no data: without a column list pgdog can't place the rows.
      const gen = await psql(setup.target, "COPY gen FROM STDIN", { stdin: "1\ta\n" });
      assert.match(gen.stderr, /generated columns/);
      assert.equal(
        await copyBoth(setup, "COPY gen (id, v) FROM STDIN", "1\ta\n2\tb\n3\tc\n"),
        "COPY 3",
      );
      const genPlaced = await setup.placement("SELECT id FROM gen");
      for (const [id, shards] of genPlaced) assert.deepEqual(shards, [shardOf(BigInt(id))]);
      assert.equal(genPlaced.size, 3);
    });

    await t.step("8 clients COPY at once: every row once, on its shard", async () => {
      await truncate(setup);
      const results = await Promise.all(
        Array.from(
          { length: 8 },
          (_, c) =>
            psql(setup.target, "COPY users (id, email) FROM STDIN", {
              stdin: Array.from({ length: 2000 }, (_, i) => `${c * 10000 + i}\tc${c}\n`).join(""),
            }),
        ),
      );
      for (const r of results) assert.equal(r.stdout.trim(), "COPY 2000", r.stderr);
      await placedByKey(setup, 16000);
    });

    await t.step("a table on every shard gets every row, COPY n once", async () => {
      await truncate(setup);
      const data = "fr\tFrance\nde\tGermany\nit\tItaly\n";
      assert.equal(await copyBoth(setup, "COPY countries FROM STDIN", data), "COPY 3");
      for (let i = 0; i < 3; i++) {
        assert.deepEqual(
          await setup.onShard(i, "SELECT code, name FROM countries ORDER BY code"),
          [["de", "Germany"], ["fr", "France"], ["it", "Italy"]],
        );
      }
      assert.equal(
        await copyBoth(
          setup,
          "COPY countries FROM STDIN (FORMAT csv, HEADER)",
          "code,name\nes,Spain\n",
        ),
        "COPY 1",
      );
      assert.deepEqual(await setup.onShard(2, "SELECT count(*) FROM countries"), [["4"]]);
      // A row one shard refuses (it has that code already): no shard keeps any row.
      await setup.onShard(2, "INSERT INTO countries VALUES ('xx', 'only here')");
      const bad = await psql(setup.target, "COPY countries FROM STDIN", {
        stdin: "pt\tPortugal\nxx\tdup\n",
      });
      assert.match(bad.stderr, /duplicate key/);
      for (let i = 0; i < 3; i++) {
        assert.deepEqual(
          await setup.onShard(i, "SELECT count(*) FROM countries WHERE code = 'pt'"),
          [["0"]],
        );
      }
    });

    await t.step("mapping rules (list, range, default) place COPY rows", async () => {
      await truncate(setup);
      const data = [1, 2, 3, 100, 150, 199, 200, 5, 0].map((c) => `${c}\tr${c}\n`).join("");
      assert.equal(await copyBoth(setup, "COPY regions (code, name) FROM STDIN", data), "COPY 9");
      const placed = await setup.placement("SELECT code FROM regions");
      const want: Record<string, number> = {
        "1": 2,
        "2": 2,
        "3": 2,
        "100": 1,
        "150": 1,
        "199": 1,
        "200": 0,
        "5": 0,
        "0": 0,
      };
      for (const [code, shards] of placed) assert.deepEqual(shards, [want[code]], code);
      assert.equal(placed.size, 9);
    });

    await t.step("CSV options: the rows the reference gets", async () => {
      const cases: Array<[string, string]> = [
        [
          "COPY users (id, email, note) FROM STDIN (FORMAT csv)",
          '1,a@x,"multi\nline"\n2,"b,x",\n3,"q""uote",""\n',
        ],
        [
          "COPY users (id, email, note) FROM STDIN (FORMAT csv, HEADER true, DELIMITER ';')",
          "id;email;note\r\n4;d@x;n\r\n5;e@x;\r\n",
        ],
        [
          "COPY users (id, email, note) FROM STDIN (FORMAT csv, HEADER match)",
          'id,email,note\n6,f@x,"a,b"\n',
        ],
        [
          "COPY users (id, email, note) FROM STDIN (FORMAT csv, QUOTE '''', ESCAPE '\\', NULL 'NIL')",
          "7,'g\\'s',NIL\n8,'h,x',\n",
        ],
        [
          "COPY users (id, email, note) FROM STDIN (FORMAT csv, FORCE_NULL (note), FORCE_NOT_NULL (email))",
          '9,,""\n10,"j",x\n',
        ],
        [
          "COPY users (id, email, note) FROM STDIN (FORMAT text, DELIMITER '|', NULL 'none')",
          "11|k\\|x|none\n12|l\\\\|\\t\n",
        ],
        ["COPY users (id, email) FROM STDIN (FORMAT csv)", '"13",m\n"1"4,n\n'],
        ["COPY users (id, email) FROM STDIN", "15\tend\n\\.\n"],
        ["COPY public.users (id, email) FROM STDIN (FORMAT csv) WHERE id > 5", "1,a\n7,b\n9,c\n"],
        ["COPY public.users FROM STDIN (FORMAT csv, ENCODING 'LATIN1')", "16,\xe9t\xe9,x\n"],
      ];
      for (const [sql, data] of cases) {
        await truncate(setup);
        await copyBoth(setup, sql, data);
        await sameRows(setup, "SELECT id, email, note, note IS NULL, email IS NULL FROM users");
        const placed = await setup.placement("SELECT id FROM users");
        for (const [id, shards] of placed) assert.deepEqual(shards, [shardOf(BigInt(id))], sql);
      }
      // HEADER MATCH with a header that does not match: the shards' error, nothing kept.
      await truncate(setup);
      const bad = await psql(
        setup.target,
        "COPY users (id, email) FROM STDIN (FORMAT csv, HEADER match)",
        { stdin: "id,mail\n1,a\n" },
      );
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /header/i);
      await placedByKey(setup, 0);
    });

    await t.step("binary: one signature and trailer per shard, rows on their shards", async () => {
      await truncate(setup);
      const dir = await Deno.makeTempDir({ prefix: "pgdog-copy-in-" });
      try {
        await setup.reference.sql(
          "CREATE TABLE IF NOT EXISTS source (id bigint, email text, note text); TRUNCATE source; " +
            "INSERT INTO source SELECT g, 'b' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' END " +
            "FROM generate_series(-300, 700) g",
          { database: "app" },
        );
        const file = `${dir}/users.bin`;
        const out = await psql(
          setup.referenceTarget,
          `\\copy source to '${file}' with (format binary)`,
        );
        assert.equal(out.code, 0, out.stderr);
        const load = await psql(setup.target, `\\copy users from '${file}' with (format binary)`);
        assert.equal(load.code, 0, load.stderr);
        assert.equal(load.stdout.trim(), "COPY 1001");
        await placedByKey(setup, 1001);
        const got = await psql(setup.target, "SELECT id, email, note FROM users ORDER BY id");
        const want = await psql(setup.referenceTarget, "SELECT * FROM source ORDER BY id");
        assert.equal(got.stdout, want.stdout);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });

    await t.step("CopyData split at odd places is the same COPY", async () => {
      await truncate(setup);
      const c = await wire(setup);
      try {
        const text = Array.from({ length: 300 }, (_, i) => `${i}\te${i}\tn\n`).join("");
        const bytes = new TextEncoder().encode(text);
        await c.send(fe.query("COPY users (id, email, note) FROM STDIN"));
        await c.until("G");
        // One byte, then pieces of growing odd sizes.
        let at = 0;
        let step = 1;
        const messages: Uint8Array[] = [];
        while (at < bytes.length) {
          messages.push(fe.copyData(bytes.subarray(at, at + step)));
          at += step;
          step = step * 3 % 97 + 1;
        }
        await c.send(...messages, fe.copyDone());
        const answer = await c.untilReady();
        const complete = answer.find((m) => m.type === "C");
        assert.ok(complete, JSON.stringify(answer.map((m) => m.type)));
        assert.equal(commandTag(complete.body), "COPY 300");
        // Binary tuples across messages too.
        await c.send(fe.query("COPY users (id, email) FROM STDIN (FORMAT binary)"));
        await c.until("G");
        const tuples: Uint8Array[] = [
          Uint8Array.from([
            ...new TextEncoder().encode("PGCOPY\n"),
            0xff,
            0x0d,
            0x0a,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
          ]),
        ];
        for (let id = 1000; id < 1100; id++) tuples.push(binaryTuple(id, `b${id}`));
        tuples.push(Uint8Array.of(0xff, 0xff));
        const all = concatBytes(tuples);
        const parts: Uint8Array[] = [];
        for (let p = 0; p < all.length; p += 7) parts.push(fe.copyData(all.subarray(p, p + 7)));
        await c.send(...parts, fe.copyDone());
        const binary = await c.untilReady();
        const done = binary.find((m) => m.type === "C");
        assert.ok(done, JSON.stringify(binary.map((m) => m.type)));
        assert.equal(commandTag(done.body), "COPY 100");
        // The last line without its line end is a row, as PostgreSQL takes it; a row larger than
        // a batch goes whole.
        await c.send(fe.query("COPY users (id, email, note) FROM STDIN"));
        await c.until("G");
        const big = "b".repeat(300_000);
        await c.send(
          fe.copyData(`2000\tbig\t${big}\n2001\tx\t`),
          fe.copyData(`y\n2002\tlast\tno-newline`),
          fe.copyDone(),
        );
        const last = await c.untilReady();
        const lastDone = last.find((m) => m.type === "C");
        assert.ok(lastDone, JSON.stringify(last.map((m) => m.type)));
        assert.equal(commandTag(lastDone.body), "COPY 3");
      } finally {
        await c.close();
      }
      await placedByKey(setup, 403);
      assert.deepEqual(
        await setup.onShard(shardOf(2000), "SELECT length(note) FROM users WHERE id = 2000"),
        [["300000"]],
      );
      assert.deepEqual(
        await setup.onShard(shardOf(2002), "SELECT note FROM users WHERE id = 2002"),
        [["no-newline"]],
      );
    });

    await t.step(
      "a duplicate key on one shard mid-stream: nothing anywhere, the client's line",
      async () => {
        await truncate(setup);
        await setup.onShard(
          shardOf(777_777),
          "INSERT INTO users (id, email) VALUES (777777, 'old')",
        );
        const lines: string[] = [];
        for (let i = 1; i <= 3000; i++) lines.push(i === 2500 ? "777777\tdup" : `${i}\tu${i}`);
        const r = await psql(setup.target, "COPY users (id, email) FROM STDIN", {
          stdin: lines.join("\n") + "\n",
        });
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /duplicate key value violates unique constraint/);
        assert.match(r.stderr, /COPY users, line 2500\b/);
        const placed = await setup.placement("SELECT id FROM users");
        assert.deepEqual([...placed.keys()], ["777777"]);
        // With a header line, lines count it (as PostgreSQL's do).
        const csv = await psql(
          setup.target,
          "COPY users (id, email) FROM STDIN (FORMAT csv, HEADER)",
          {
            stdin: "id,email\n1,a\n2,b\n777777,c\n4,d\n",
          },
        );
        assert.match(csv.stderr, /COPY users, line 4\b/);
        // Rows of several lines (CSV newlines inside quotes) count as PostgreSQL counts them: the
        // same line as the reference names.
        const multi = "id,email,note\n" +
          Array.from({ length: 40 }, (_, i) => `${i + 1},a,"x\n${"y\n".repeat(i % 4)}z"\n`).join(
            "",
          ) +
          '777777,c,"1\n2"\n41,d,e\n';
        const sql = "COPY users (id, email, note) FROM STDIN (FORMAT csv, HEADER)";
        await setup.reference.sql("INSERT INTO users (id, email) VALUES (777777, 'old')", {
          database: "app",
        });
        const want = await psql(setup.referenceTarget, sql, { stdin: multi });
        const got = await psql(setup.target, sql, { stdin: multi });
        await setup.reference.sql("TRUNCATE users", { database: "app" });
        const context = (stderr: string) => /CONTEXT: {2}(.*)/.exec(stderr)?.[1];
        assert.ok(context(want.stderr), want.stderr);
        assert.equal(context(got.stderr), context(want.stderr));
        assert.deepEqual([...(await setup.placement("SELECT id FROM users")).keys()], ["777777"]);
        assert.equal((await psql(setup.target, "SELECT count(*) FROM users")).stdout.trim(), "1");
      },
    );

    await t.step("bad rows: a NULL key, a malformed row, a bad key value", async () => {
      await truncate(setup);
      const cases: Array<[string, string, RegExp, RegExp]> = [
        ["COPY users (id, email) FROM STDIN", "1\ta\n\\N\tb\n3\tc\n", /NULL/, /line 2\b/],
        ["COPY users (id, email) FROM STDIN (FORMAT csv)", '1,a\n2,"unterminated\n', /./, /line/],
        ["COPY users (id, email) FROM STDIN", "1\ta\n2\tb\nnot-a-number\tc\n", /./, /line 3\b/],
      ];
      for (const [sql, data, message, line] of cases) {
        const r = await psql(setup.target, sql, { stdin: data });
        assert.notEqual(r.code, 0, sql);
        assert.match(r.stderr, message, r.stderr);
        assert.match(r.stderr, line, r.stderr);
        await placedByKey(setup, 0);
      }
      assert.equal((await psql(setup.target, "SELECT 1")).stdout.trim(), "1");
      // Refused: the key not among the columns, a server-side file, the extended protocol.
      for (
        const sql of [
          "COPY users (email) FROM STDIN",
          "COPY users FROM '/etc/hostname'",
          "COPY users FROM PROGRAM 'true'",
        ]
      ) {
        const r = await psql(setup.target, sql, { stdin: "x\n" });
        assert.notEqual(r.code, 0, sql);
        assert.match(r.stderr, /not supported|needs its sharding key/, r.stderr);
      }
      const c = await wire(setup);
      try {
        await c.send(
          fe.parse("", "COPY users (id, email) FROM STDIN"),
          fe.bind("", ""),
          fe.execute(""),
          fe.sync(),
        );
        const answer = await c.untilReady();
        const error = answer.find((m) => m.type === "E");
        assert.ok(error, JSON.stringify(answer.map((m) => m.type)));
        assert.equal(errorFields(error.body).C, "0A000");
        await c.send(fe.query("SELECT 1"));
        assert.ok((await c.untilReady()).some((m) => m.type === "D"));
      } finally {
        await c.close();
      }
      await placedByKey(setup, 0);
    });

    await t.step("the client's CopyFail: nothing anywhere, the connection goes on", async () => {
      await truncate(setup);
      const c = await wire(setup);
      try {
        await c.send(fe.query("COPY users (id, email) FROM STDIN"));
        await c.until("G");
        const data = Array.from({ length: 5000 }, (_, i) => `${i}\tx\n`).join("");
        await c.send(fe.copyData(data), fe.copyFail("changed my mind"));
        const answer = await c.untilReady();
        const error = answer.find((m) => m.type === "E");
        assert.ok(error);
        assert.equal(errorFields(error.body).C, "57014");
        assert.match(errorFields(error.body).M, /changed my mind/);
        assert.equal(answer[answer.length - 1].body[0], "I".charCodeAt(0));
        await c.send(fe.query("SELECT count(*) FROM users"));
        const rows = await c.untilReady();
        assert.ok(rows.some((m) => m.type === "D"));
      } finally {
        await c.close();
      }
      await placedByKey(setup, 0);
      // A shard's error while the client still sends: the rest of its data is ignored.
      await setup.onShard(shardOf(5), "INSERT INTO users (id, email) VALUES (5, 'old')");
      const c2 = await wire(setup);
      try {
        await c2.send(fe.query("COPY users (id, email) FROM STDIN"));
        await c2.until("G");
        await c2.send(fe.copyData("5\tdup\n"));
        for (let i = 0; i < 20; i++) {
          await c2.send(
            fe.copyData(
              Array.from({ length: 2000 }, (_, j) => `${i * 2000 + j + 10}\tx\n`).join(""),
            ),
          );
        }
        await c2.send(fe.copyDone());
        const answer = await c2.untilReady();
        const error = answer.find((m) => m.type === "E");
        assert.ok(error, JSON.stringify(answer.map((m) => m.type)));
        assert.equal(errorFields(error.body).C, "23505");
        await c2.send(fe.query("SELECT 1"));
        const after = await c2.untilReady();
        assert.ok(after.some((m) => m.type === "D"), JSON.stringify(after.map((m) => m.type)));
      } finally {
        await c2.close();
      }
      assert.deepEqual([...(await setup.placement("SELECT id FROM users")).keys()], ["5"]);
      // No shard's server was handed back inside a transaction or a COPY.
      for (let i = 0; i < 3; i++) {
        assert.deepEqual(
          await setup.onShard(
            i,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND " +
              "(state LIKE 'idle in transaction%' OR query LIKE 'COPY%' AND state <> 'idle')",
          ),
          [["0"]],
        );
      }
    });

    await t.step("a shard lost mid-COPY: an error, nothing on the others", async () => {
      await truncate(setup);
      const c = await wire(setup);
      try {
        await c.send(fe.query("COPY users (id, email) FROM STDIN"));
        await c.until("G");
        await c.send(fe.copyData(Array.from({ length: 3000 }, (_, i) => `${i}\tx\n`).join("")));
        const killed = await setup.onShard(
          1,
          "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity " +
            "WHERE query LIKE 'COPY users%' AND pid <> pg_backend_pid()",
        );
        assert.deepEqual(killed, [["1"]]);
        for (let i = 1; i <= 5; i++) {
          await c.send(
            fe.copyData(Array.from({ length: 3000 }, (_, j) => `${i * 3000 + j}\tx\n`).join("")),
          );
        }
        await c.send(fe.copyDone());
        const answer = await c.untilReady();
        const error = answer.find((m) => m.type === "E");
        assert.ok(error, JSON.stringify(answer.map((m) => m.type)));
        await c.send(fe.query("SELECT count(*) FROM users"));
        const after = await c.untilReady();
        assert.ok(after.some((m) => m.type === "D"), JSON.stringify(after.map((m) => m.type)));
      } finally {
        await c.close();
      }
      await placedByKey(setup, 0);
    });

    await t.step("inside a transaction: ROLLBACK leaves nothing, COMMIT keeps all", async () => {
      await truncate(setup);
      const data = Array.from({ length: 100 }, (_, i) => `${i}\tt${i}`).join("\n") + "\n";
      const rolled = await psql(setup.target, "", {
        stdin: `BEGIN;\nINSERT INTO users (id, email) VALUES (5000, 'before');\n` +
          `COPY users (id, email) FROM STDIN;\n${data}\\.\nSELECT count(*) FROM users;\nROLLBACK;\n`,
      });
      assert.equal(rolled.code, 0, rolled.stderr);
      assert.match(rolled.stdout, /^101$/m);
      await placedByKey(setup, 0);
      const committed = await psql(setup.target, "", {
        stdin: `BEGIN;\nINSERT INTO users (id, email) VALUES (5000, 'before');\n` +
          `COPY users (id, email) FROM STDIN;\n${data}\\.\nCOMMIT;\n`,
      });
      assert.equal(committed.code, 0, committed.stderr);
      await placedByKey(setup, 101);
      // A failed COPY fails the transaction everywhere: COMMIT rolls back.
      await truncate(setup);
      const failed = await psql(setup.target, "", {
        stdin: `BEGIN;\nINSERT INTO users (id, email) VALUES (5000, 'before');\n` +
          `COPY users (id, email) FROM STDIN;\n1\ta\n5000\tdup\n\\.\nCOMMIT;\n`,
        extraArgs: ["-v", "ON_ERROR_STOP=0"],
      });
      assert.match(failed.stderr, /duplicate key/);
      assert.match(failed.stdout + failed.stderr, /ROLLBACK/);
      await placedByKey(setup, 0);
    });
  });
});

function binaryTuple(id: number, email: string): Uint8Array {
  const text = new TextEncoder().encode(email);
  const out = new Uint8Array(2 + 4 + 8 + 4 + text.length);
  const v = new DataView(out.buffer);
  v.setInt16(0, 2);
  v.setInt32(2, 8);
  v.setBigInt64(6, BigInt(id));
  v.setInt32(14, text.length);
  out.set(text, 18);
  return out;
}

function concatBytes(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

Deno.test("COPY FROM STDIN with a plugin hasher: each row where the plugin says", async () => {
  await using setup = await startSharded({
    shardedTables: [{ name: "items", column: "id", hasher: "plugin:dir" }],
    extra: {
      plugins: [{
        name: "dir",
        path: new URL("./plugins/directives.ts", import.meta.url).pathname,
        timeout: 10_000,
      }],
    },
    schema: "CREATE TABLE items (id bigint PRIMARY KEY, v text);",
    denoFlags: ["--allow-run"],
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    // The directives plugin's shard hook: id modulo the number of shards.
    const ids = Array.from({ length: 5000 }, (_, i) => i * 13 - 2000);
    for (const format of ["text", "csv"]) {
      await setup.everywhere("TRUNCATE items");
      const sep = format === "csv" ? "," : "\t";
      const r = await psql(setup.target, `COPY items (id, v) FROM STDIN (FORMAT ${format})`, {
        stdin: ids.map((id) => `${id}${sep}v${id}\n`).join(""),
      });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), "COPY 5000");
      const placed = await setup.placement("SELECT id FROM items");
      assert.equal(placed.size, ids.length);
      for (const [id, shards] of placed) {
        assert.deepEqual(shards, [((Number(id) % 3) + 3) % 3], `${format}: id ${id}`);
      }
    }
  });
});

Deno.test("a slow COPY FROM on several shards is activity, not an idle client", async () => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    schema: SCHEMA,
    general: { client_idle_timeout: 1000 },
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    const c = await wire(setup);
    try {
      await c.send(fe.query("COPY users (id, email) FROM STDIN"));
      await c.until("G");
      // A row every 300 ms for about 3 s: longer than client_idle_timeout in all.
      for (let i = 0; i < 10; i++) {
        await c.send(fe.copyData(`${i}\tslow\n`));
        await new Promise((resolve) => setTimeout(resolve, 300));
      }
      await c.send(fe.copyDone());
      const answer = await c.untilReady();
      const done = answer.find((m) => m.type === "C");
      assert.ok(
        done,
        JSON.stringify(answer.map((m) => [m.type, m.type === "E" ? errorFields(m.body).M : ""])),
      );
      assert.equal(commandTag(done.body), "COPY 10");
    } finally {
      await c.close();
    }
  });
});

Deno.test("a COPY FROM on several shards is cancelled by a CancelRequest and query_timeout", async () => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    schema: SCHEMA,
    general: { query_timeout: 1500 },
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    for (const how of ["cancel", "query_timeout"]) {
      const c = await wire(setup);
      try {
        await c.send(fe.query("COPY users (id, email) FROM STDIN"));
        await c.until("G");
        await c.send(fe.copyData(Array.from({ length: 1000 }, (_, i) => `${i}\tx\n`).join("")));
        if (how === "cancel") {
          await new Promise((resolve) => setTimeout(resolve, 200));
          await sendCancelRequest(setup.proxy, c.backendPid, c.backendSecret);
        }
        // The client goes on sending until it sees the error, as a client copying a file does.
        let error: Record<string, string> | null = null;
        for (let i = 1; i < 100 && error === null; i++) {
          await c.send(fe.copyData(`${i * 1000}\ty\n`));
          if (await c.hasMessageWithin(100)) {
            const m = await c.next();
            if (m.type === "E") error = errorFields(m.body);
          }
        }
        assert.ok(error, `${how}: no error`);
        assert.equal(error.C, "57014", JSON.stringify(error));
        if (how === "query_timeout") assert.match(error.M, /query_timeout/);
        await c.untilReady();
        await c.send(fe.copyDone(), fe.query("SELECT 1"));
        assert.ok((await c.untilReady()).some((m) => m.type === "D"));
      } finally {
        await c.close();
      }
      assert.equal((await setup.placement("SELECT id FROM users")).size, 0, how);
    }
  });
});

Deno.test("COPY FROM on several shards in session mode: all or nothing, in and out of BEGIN", async () => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    schema: SCHEMA,
    user: { pooler_mode: "session" },
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    const r = await psql(setup.target, "", {
      stdin: "SET application_name = 'copier';\n" +
        "COPY users (id, email) FROM STDIN;\n1\ta\n2\tb\n3\tc\n\\.\n" +
        "BEGIN;\nCOPY users (id, email) FROM STDIN;\n4\td\n5\te\n6\tf\n\\.\nCOMMIT;\n" +
        "COPY users (id, email) FROM STDIN;\n7\tg\n8\th\n9\ti\n1\tdup\n\\.\n" +
        "BEGIN;\nCOPY users (id, email) FROM STDIN;\n10\tj\n11\tk\n12\tl\n\\.\nROLLBACK;\n",
      extraArgs: ["-v", "ON_ERROR_STOP=0"],
    });
    assert.equal(r.stdout, "SET\nCOPY 3\nBEGIN\nCOPY 3\nCOMMIT\nBEGIN\nCOPY 3\nROLLBACK\n");
    // Only the failed COPY's error: no shard ran a COPY outside the transaction.
    assert.equal(r.stderr.match(/ERROR|WARNING/g)?.length, 1, r.stderr);
    assert.match(r.stderr, /duplicate key/);
    await placedByKey(setup, 6);
  });
});

Deno.test("COPY FROM on several shards with two_phase_commit: committed everywhere or nowhere", async () => {
  await using setup = await startSharded({
    shardedTables: [{ name: "users", column: "id" }],
    schema: SCHEMA,
    settings: { max_prepared_transactions: 10 },
    general: { two_phase_commit: true },
  });
  await dumpLogsOnFailure(setup.proxy, async () => {
    const data = Array.from({ length: 3000 }, (_, i) => `${i}\tt${i}\n`).join("");
    const ok = await psql(setup.target, "COPY users (id, email) FROM STDIN", { stdin: data });
    assert.equal(ok.stdout.trim(), "COPY 3000", ok.stderr);
    await placedByKey(setup, 3000);
    const bad = await psql(setup.target, "COPY users (id, email) FROM STDIN", {
      stdin: "5000\tnew\n5001\tnew\n7\tdup\n",
    });
    assert.match(bad.stderr, /duplicate key/);
    await placedByKey(setup, 3000);
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(await setup.onShard(i, "SELECT count(*) FROM pg_prepared_xacts"), [["0"]]);
    }
  });
});
