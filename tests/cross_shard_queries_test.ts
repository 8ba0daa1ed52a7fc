/**
 * Issue #19: every cross-shard SELECT answers exactly as one PostgreSQL database would, or is
 * refused with a reason. The same schema and rows (tests/cross_shard_data.ts: users sharded by
 * id, orders and order_items by user_id, omnisharded products and countries; several thousand
 * rows of awkward values) in one plain database (the reference) and across 3 shards behind
 * pgdog; each query of tests/cross_shard_cases.ts runs on both, through the simple protocol,
 * the extended protocol with text and with binary results (and, for some, a named prepared
 * statement executed twice), and the answers must be equal: columns (names and type OIDs),
 * rows (in order when the ORDER BY is total, else as multisets; floats within rounding where
 * sums of floats are compared), command tags, and the SQLSTATE of errors.
 *
 * Also: the refusals (0A000 with a reason, the connection goes on); ORDER BY text under an ICU
 * default collation and under "C"; Execute with a row limit (PortalSuspended) on cross-shard
 * statements; result formats chosen per column; Describe shows no hidden columns; an error on
 * one shard reaches the client once and the connection works afterwards; EXPLAIN (with
 * `expanded_explain`) shows every shard's plan; `cross_shard_buffer_limit` makes a big GROUP BY
 * and a big DISTINCT fail with 53200 while other clients (and streamed merges) carry on.
 *
 * Binary results are read over a raw connection (tests/wire.ts), byte for byte.
 *
 * `CROSS_SHARD_AGAINST=reference deno test --allow-all tests/cross_shard_queries_test.ts` runs
 * the cases with the reference on both sides (every case must pass: checks the suite itself);
 * the refusals are then only checked to be valid SQL, and the buffer limit is skipped.
 */

import assert from "node:assert/strict";
import type pg from "pg";
import {
  type Answer,
  answerOf,
  connectPg,
  connectPostgresJs,
  differenceOf,
  dumpLogsOnFailure,
  type PgTarget,
  type Protocol,
  type ShardedSetup,
  startSharded,
  wireAnswerOf,
} from "./harness/mod.ts";
import {
  loadData,
  OMNISHARDED,
  SHARDED_TABLES,
  shardOfUser,
  USER_COUNT,
  userIds,
} from "./cross_shard_data.ts";
import { type Case, CASE_GROUPS, cases, COLLATION, REFUSALS } from "./cross_shard_cases.ts";
import { type BackendMessage, errorFields, fe, summary, WireClient } from "./wire.ts";

/** Run the suite with the reference on both sides, to check the suite itself. */
const AGAINST_REFERENCE = Deno.env.get("CROSS_SHARD_AGAINST") === "reference";
const ONLY = Deno.env.get("CROSS_SHARD_ONLY");
/** How long one statement may take before the case counts as hung. */
const STATEMENT_TIMEOUT_MS = 20_000;

/** Where the "pgdog" side of a comparison connects. */
function pgdogSide(setup: ShardedSetup): PgTarget {
  return AGAINST_REFERENCE ? setup.referenceTarget : setup.target;
}

async function within<T>(p: Promise<T>, ms: number): Promise<T | "timeout"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Whether `client` still answers a trivial query. */
async function alive(client: pg.Client): Promise<boolean> {
  const r = await within(
    client.query("SELECT 1 AS one").then((r: pg.QueryResult) => r.rows[0]?.one === 1, () => false),
    5_000,
  );
  return r === true;
}

/**
 * Connections to one side (npm:pg for the simple and extended text protocols, a raw one for
 * binary results), replaced when they break or hang.
 */
class Connection {
  #client: pg.Client | null = null;
  #wire: WireClient | null = null;
  constructor(readonly target: PgTarget) {}

  async client(): Promise<pg.Client> {
    this.#client ??= await connectPg(this.target);
    return this.#client;
  }

  async wire(): Promise<WireClient> {
    this.#wire ??= await WireClient.connect(this.target);
    return this.#wire;
  }

  /** Runs `sql` in `protocol`. */
  async answer(sql: string, protocol: Protocol, values?: unknown[]): Promise<Answer> {
    if (protocol === "binary" || protocol === "prepared") {
      return await wireAnswerOf(await this.wire(), sql, { protocol, values });
    }
    return await answerOf(await this.client(), sql, { protocol, values });
  }

  /** Drops the connections (not waiting for a hung one); the next use connects again. */
  drop(): void {
    this.#client?.end().catch(() => {});
    this.#wire?.close().catch(() => {});
    this.#client = null;
    this.#wire = null;
  }

  async end(): Promise<void> {
    const c = this.#client;
    const w = this.#wire;
    this.#client = null;
    this.#wire = null;
    if (c) await within(c.end().catch(() => {}), 5_000);
    if (w) await within(w.close().catch(() => {}), 5_000);
  }
}

/** The protocols a case runs in. */
function protocolsOf(c: Case): Protocol[] {
  const list: Protocol[] = c.values ? [] : ["simple"];
  list.push("extended", "binary");
  if (c.prepared) list.push("prepared");
  return list;
}

/**
 * Runs `cases` on the reference and on `target`, every protocol; returns one line per
 * difference (all of them, so one failure doesn't hide the others).
 */
async function runCases(
  referenceTarget: PgTarget,
  target: PgTarget,
  cases: Case[],
): Promise<string[]> {
  const failures: string[] = [];
  const ref = new Connection(referenceTarget);
  const dog = new Connection(target);
  try {
    for (const c of cases) {
      const refused: Protocol[] = [];
      const protocols = protocolsOf(c);
      for (const protocol of protocols) {
        const expected = await ref.answer(c.sql, protocol, c.values);
        const actual = await within(
          dog.answer(c.sql, protocol, c.values).catch((e): Answer => ({
            error: "connection",
            message: String(e),
          })),
          STATEMENT_TIMEOUT_MS,
        );
        if (actual === "timeout") {
          failures.push(`${protocol}: ${c.sql}\n    no answer in ${STATEMENT_TIMEOUT_MS} ms`);
          dog.drop();
          continue;
        }
        if (c.orRefused && actual.error === "0A000") {
          refused.push(protocol);
          if ((actual.message ?? "").length < 20) {
            failures.push(`${protocol}: ${c.sql}\n    refused without a reason`);
          }
          continue;
        }
        const difference = differenceOf(expected, actual, c);
        if (difference !== null) failures.push(`${protocol}: ${c.sql}\n    ${difference}`);
        if (actual.error === "connection") dog.drop();
        else if (actual.error !== undefined && !(await alive(await dog.client()))) {
          failures.push(`${protocol}: ${c.sql}\n    the connection broke after the error`);
          dog.drop();
        }
      }
      if (refused.length > 0 && refused.length !== protocols.length) {
        failures.push(`${c.sql}\n    refused in ${refused.join(", ")} only`);
      }
    }
  } finally {
    await ref.end();
    await dog.end();
  }
  return failures;
}

/** Fails with every failure listed, or passes. */
function report(what: string, total: number, failures: string[]): void {
  if (failures.length === 0) return;
  const cut = failures.map((f) => f.length > 600 ? `${f.slice(0, 600)}...` : f);
  assert.fail(`${what}: ${failures.length} differences over ${total} cases\n${cut.join("\n")}`);
}

/** Checks each statement is refused with 0A000 and a reason, and the connection goes on. */
async function checkRefusals(setup: ShardedSetup): Promise<string[]> {
  const failures: string[] = [];
  const dog = new Connection(pgdogSide(setup));
  try {
    for (const sql of REFUSALS) {
      for (const protocol of ["simple", "extended", "binary"] as Protocol[]) {
        const a = await within(
          dog.answer(sql, protocol).catch((e): Answer => ({
            error: "connection",
            message: String(e),
          })),
          20_000,
        );
        if (a === "timeout") {
          failures.push(`${protocol}: ${sql}\n    no answer`);
          dog.drop();
          continue;
        }
        if (a.error === "connection") dog.drop();
        if (AGAINST_REFERENCE) {
          // The reference answers them: the statement must at least be valid SQL.
          if (a.error !== undefined) failures.push(`${protocol}: ${sql}\n    ${a.message}`);
          continue;
        }
        if (a.error !== "0A000") {
          failures.push(
            `${protocol}: ${sql}\n    not refused: ${
              a.error ? `error ${a.error} ${a.message}` : `${a.rows?.length} rows`
            }`,
          );
        } else if ((a.message ?? "").length < 20) {
          failures.push(`${protocol}: ${sql}\n    refused without a reason: ${a.message}`);
        }
        if (!(await alive(await dog.client()))) {
          failures.push(`${protocol}: ${sql}\n    the connection broke after the refusal`);
          dog.drop();
        }
      }
    }
  } finally {
    await dog.end();
  }
  return failures;
}

/** RowDescription as [name, type OID, type size, type modifier, format] per column. */
function rowDescription(body: Uint8Array): string {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const count = view.getInt16(0);
  const columns: string[] = [];
  let at = 2;
  for (let i = 0; i < count; i++) {
    const end = body.indexOf(0, at);
    const name = new TextDecoder().decode(body.subarray(at, end));
    at = end + 1;
    const type = view.getInt32(at + 6);
    const size = view.getInt16(at + 10);
    const modifier = view.getInt32(at + 12);
    const format = view.getInt16(at + 16);
    columns.push(`${name}:${type}/${size}/${modifier}/${format}`);
    at += 18;
  }
  return columns.join(", ");
}

/** Messages of one exchange, comparable across databases (RowDescription without table OIDs). */
function describeMessages(msgs: BackendMessage[]): string[] {
  return msgs.map((m, i) => {
    if (m.type === "T") return `T ${rowDescription(m.body)}`;
    if (m.type === "t") return `t ${[...m.body].join(",")}`;
    return summary([msgs[i]])[0];
  });
}

/** Runs `messages` on a fresh raw connection to `target`, up to ReadyForQuery. */
async function exchange(target: PgTarget, messages: Uint8Array[]): Promise<BackendMessage[]> {
  const w = await WireClient.connect(target);
  try {
    await w.send(...messages);
    return await w.untilReady();
  } finally {
    await w.close();
  }
}

Deno.test({
  name: "cross-shard queries: equal to one database, or refused (issue #19)",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    // CROSS_SHARD_ONLY=<part of a step's name> runs only the steps that match (when debugging).
    const step = (name: string, fn: (t: Deno.TestContext) => Promise<void>): Promise<boolean> =>
      ONLY !== undefined && !name.includes(ONLY) ? Promise.resolve(true) : t.step(name, fn);
    await using setup = await startSharded({
      shardedTables: SHARDED_TABLES,
      omnisharded: OMNISHARDED,
    });
    await loadData(setup);
    const target = pgdogSide(setup);

    await dumpLogsOnFailure(setup.proxy, async () => {
      await step("pgdog routes a key to the shard holding its row", async () => {
        const dog = await connectPg(setup.target);
        try {
          for (const id of userIds().filter((_, i) => i % 97 === 0)) {
            const r = await dog.query("SELECT id::text AS id FROM users WHERE id = $1", [id]);
            assert.deepEqual(r.rows, [{ id: String(id) }], `user ${id}`);
          }
        } finally {
          await dog.end();
        }
      });

      for (const [name, cases] of CASE_GROUPS) {
        await step(`${name} (${cases.length} queries)`, async () => {
          report(name, cases.length, await runCases(setup.referenceTarget, target, cases));
        });
      }

      await step(`refusals (${REFUSALS.length} queries)`, async () => {
        report("refusals", REFUSALS.length, await checkRefusals(setup));
      });

      await step("Execute with a row limit: PortalSuspended, batches as asked", async () => {
        const ref = connectPostgresJs(setup.referenceTarget);
        const dog = connectPostgresJs(target);
        try {
          for (
            const [query, batch] of [
              ["SELECT id, name FROM users ORDER BY name, id", 100],
              ["SELECT country, count(*) AS n FROM users GROUP BY country ORDER BY country", 3],
              ["SELECT id FROM users ORDER BY id LIMIT 250", 64],
              ["SELECT DISTINCT status FROM orders ORDER BY status", 4],
            ] as const
          ) {
            const collect = async (sql: typeof ref): Promise<string[][]> => {
              const batches: string[][] = [];
              for await (const rows of sql.unsafe(query).cursor(batch)) {
                batches.push(rows.map((r) => JSON.stringify(Object.values(r))));
              }
              return batches;
            };
            assert.deepEqual(await collect(dog), await collect(ref), query);
          }
          // Stopping after the first batch closes the portal; the connection goes on.
          for await (const rows of dog.unsafe("SELECT id FROM users ORDER BY id").cursor(10)) {
            assert.deepEqual(rows.map((r) => Number(r.id)), userIds().slice(0, 10));
            break;
          }
          assert.equal((await dog`SELECT 1 AS one`)[0].one, 1);
        } finally {
          await ref.end();
          await dog.end();
        }
        // The exact messages: rows, PortalSuspended, rows, PortalSuspended, the rest.
        const sql = "SELECT id, name FROM users ORDER BY age DESC NULLS LAST, id LIMIT 25";
        const messages = [
          fe.parse("", sql),
          fe.bind("p", ""),
          fe.execute("p", 10),
          fe.execute("p", 10),
          fe.execute("p", 0),
          fe.sync(),
        ];
        const got = summary(await exchange(target, messages));
        assert.deepEqual(got, summary(await exchange(setup.referenceTarget, messages)));
        assert.equal(got.filter((m) => m === "s").length, 2);
      });

      await step("result formats chosen per column (text and binary mixed)", async () => {
        const problems: string[] = [];
        const ref = await WireClient.connect(setup.referenceTarget);
        const dog = await WireClient.connect(target);
        try {
          for (
            const [sql, formats] of [
              ["SELECT id, name, balance FROM users ORDER BY name, id LIMIT 50", [1, 0, 1]],
              ["SELECT country, avg(age), count(*) FROM users GROUP BY country ORDER BY 1", [
                0,
                1,
                0,
              ]],
              ["SELECT DISTINCT status, placed_on FROM orders ORDER BY 2, 1 LIMIT 30", [0, 1]],
              ["SELECT sum(big), stddev(rating), max(created_at) FROM users WHERE age > 0", [
                1,
                0,
                1,
              ]],
            ] as const
          ) {
            const run = { protocol: "binary" as const, resultFormats: [...formats] };
            const difference = differenceOf(
              await wireAnswerOf(ref, sql, run),
              await wireAnswerOf(dog, sql, run),
            );
            if (difference !== null) problems.push(`${sql} (${formats})\n    ${difference}`);
          }
        } finally {
          await ref.close();
          await dog.close();
        }
        report("per-column formats", 4, problems);
      });

      await step("Describe answers the columns the client gets, no hidden ones", async () => {
        const problems: string[] = [];
        for (
          const [sql, params] of [
            ["SELECT name FROM users ORDER BY age, id", []],
            [
              "SELECT country, avg(age) FROM users GROUP BY country HAVING count(*) > 1 " +
              "ORDER BY max(age), country",
              [],
            ],
            [
              "SELECT DISTINCT ON (status) status, id FROM orders ORDER BY status, amount DESC, id",
              [],
            ],
            ["SELECT id, name FROM users WHERE age > $1 ORDER BY created_at LIMIT $2", ["50", "5"]],
            ["SELECT sum(age), avg(big), count(*), stddev(small) FROM users", []],
          ] as const
        ) {
          const messages = [
            fe.parse("s", sql),
            fe.describe("S", "s"),
            fe.bind("", "s", [...params]),
            fe.describe("P", ""),
            fe.execute("", 0),
            fe.sync(),
          ];
          const got = describeMessages(await exchange(target, messages));
          const want = describeMessages(await exchange(setup.referenceTarget, messages));
          if (JSON.stringify(got) !== JSON.stringify(want)) {
            problems.push(
              `${sql}\n    expected ${want.slice(0, 6).join("; ")}...\n    got ${
                got.slice(0, 6).join("; ")
              }...`,
            );
          }
        }
        report("Describe", 5, problems);
      });

      await step(
        "an error on one shard reaches the client once; the connection goes on",
        async () => {
          // A user on shard 1 only: dividing by (id - x) fails there alone.
          const x = userIds().find((id) => id > 0 && shardOfUser(id, 3) === 1)!;
          const statements = [
            `SELECT id, 100 / (id - ${x}) FROM users`,
            `SELECT id, 100 / (id - ${x}) FROM users ORDER BY id`,
            `SELECT sum(100 / (id - ${x})) FROM users`,
            `SELECT country, sum(100 / (id - ${x})) FROM users GROUP BY country ORDER BY country`,
            "SELECT id / (id - id) FROM users ORDER BY id",
          ];
          const problems: string[] = [];
          const w = await WireClient.connect(target);
          try {
            for (const sql of statements) {
              for (const extended of [false, true]) {
                await w.send(
                  ...(extended
                    ? [fe.parse("", sql), fe.bind("", ""), fe.execute("", 0), fe.sync()]
                    : [fe.query(sql)]),
                );
                const msgs = await w.untilReady();
                const errors = msgs.filter((m) => m.type === "E").map((m) => errorFields(m.body).C);
                const what = `${extended ? "extended" : "simple"}: ${sql}`;
                const end = summary(msgs.slice(-1))[0];
                if (errors.length !== 1 || errors[0] !== "22012" || end !== "Z I") {
                  problems.push(`${what}\n    errors ${errors.join(", ")}, then ${end}`);
                }
                await w.send(fe.query("SELECT count(*) FROM users"));
                const after = summary(await w.untilReady());
                if (!after.includes(`D ${USER_COUNT}`)) {
                  problems.push(`${what}\n    then count(*) answered ${after.join(", ")}`);
                }
              }
            }
          } finally {
            await w.close();
          }
          report("errors", statements.length * 2, problems);
          // Every server went back clean: several clients at once get right answers.
          const failures = await Promise.all(
            Array.from({ length: 4 }, () =>
              runCases(setup.referenceTarget, target, [
                { sql: "SELECT count(*), sum(age) FROM users" },
                { sql: "SELECT id FROM users ORDER BY id LIMIT 3" },
                { sql: "SELECT status, count(*) FROM orders GROUP BY status ORDER BY status" },
              ])),
          );
          report("after errors", 12, failures.flat());
        },
      );

      await step(
        "EXPLAIN with expanded_explain shows every shard's plan",
        async () => {
          if (AGAINST_REFERENCE) return;
          const sql =
            "EXPLAIN SELECT country, count(*) FROM users GROUP BY country ORDER BY country";
          const { proxy, target: explained } = await setup.startProxy({ expanded_explain: true });
          const c = await connectPg(explained);
          try {
            await dumpLogsOnFailure(proxy, async () => {
              for (const protocol of ["simple", "extended"] as const) {
                const a = await answerOf(c, sql, { protocol });
                assert.equal(a.error, undefined, `${protocol}: ${a.message}`);
                const text = (a.rows ?? []).map((r) => r[0]).join("\n");
                // Every shard's own plan, and the shards named.
                assert.ok((text.match(/Scan on users/g) ?? []).length >= 3, text);
                for (const shard of [0, 1, 2]) {
                  assert.match(text, new RegExp(`shard\\W*${shard}\\b`, "i"));
                }
              }
            });
          } finally {
            await c.end();
            await proxy.stop();
          }
        },
      );

      await step("cross_shard_buffer_limit: 53200 for that query, others carry on", async () => {
        if (AGAINST_REFERENCE) return;
        const { proxy, target: limited } = await setup.startProxy({
          cross_shard_buffer_limit: 16_384,
        });
        const a = await connectPg(limited);
        const b = await connectPg(limited);
        try {
          await dumpLogsOnFailure(proxy, async () => {
            const [big, other] = await Promise.all([
              answerOf(a, "SELECT md5(id::text) AS h, count(*) FROM orders GROUP BY 1", {
                protocol: "simple",
              }),
              answerOf(b, "SELECT count(*) FROM users", { protocol: "extended" }),
            ]);
            assert.equal(big.error, "53200", JSON.stringify(big).slice(0, 300));
            assert.match(big.message ?? "", /cross_shard_buffer_limit/);
            assert.deepEqual(other.rows, [[String(USER_COUNT)]]);
            const distinct: Answer = await answerOf(
              a,
              "SELECT DISTINCT md5(order_id::text || line) FROM order_items",
              { protocol: "binary" },
            );
            assert.equal(distinct.error, "53200", JSON.stringify(distinct).slice(0, 300));
            // The same connection goes on; what fits, and a streamed merge, are answered.
            const failures = await runCases(setup.referenceTarget, limited, [
              { sql: "SELECT country, count(*) FROM users GROUP BY country ORDER BY country" },
              { sql: "SELECT * FROM orders ORDER BY user_id, id" },
              { sql: "SELECT id, name FROM users ORDER BY name, id LIMIT 10" },
            ]);
            report("under the limit", 3, failures);
            assert.ok(await alive(a));
            assert.ok(await alive(b));
          });
        } finally {
          await a.end();
          await b.end();
          await proxy.stop();
        }
      });
    });
  },
});

Deno.test({
  name: 'cross-shard ORDER BY text under an ICU default collation, and COLLATE "C"',
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using setup = await startSharded({
      shardedTables: SHARDED_TABLES,
      omnisharded: OMNISHARDED,
      icuLocale: "en-US",
    });
    for (const i of [0, 1, 2]) {
      assert.deepEqual(
        await setup.onShard(
          i,
          "SELECT datlocprovider, daticulocale FROM pg_database WHERE datname = 'app'",
        ),
        [["i", "en-US"]],
      );
    }
    await loadData(setup);
    await dumpLogsOnFailure(setup.proxy, async () => {
      report(
        "ICU collation",
        COLLATION.length,
        await runCases(setup.referenceTarget, pgdogSide(setup), COLLATION),
      );
      // A column with a collation of its own (added through pgdog, which reads the columns'
      // collations again after DDL): sorted by it, not by the database's.
      const label = 'ALTER TABLE order_items ADD COLUMN label text COLLATE "C"';
      const fill = "UPDATE order_items SET label = (ARRAY['b', 'B', 'a', 'A', 'é', 'e', '_', " +
        "'1'])[1 + (line + order_id::int) % 8] || line";
      for (const target of [setup.referenceTarget, pgdogSide(setup)]) {
        const c = await connectPg(target);
        try {
          await c.query(label);
          await c.query(fill);
        } finally {
          await c.end();
        }
      }
      const columnCollation = cases([
        "SELECT label, order_id, line FROM order_items ORDER BY label, order_id, line LIMIT 300",
        "SELECT label, count(*) FROM order_items GROUP BY label ORDER BY label",
        "SELECT DISTINCT label FROM order_items ORDER BY label DESC",
        // Which column a shard's max() came from can't be known: refused, never answered wrong.
        { sql: "SELECT max(label), min(label) FROM order_items", orRefused: true },
      ]);
      report(
        "column collation",
        columnCollation.length,
        await runCases(setup.referenceTarget, pgdogSide(setup), columnCollation),
      );
    });
  },
});
