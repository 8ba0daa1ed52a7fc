/**
 * The pipeline against a real PostgreSQL 15: one table whose rows are split into three "shards"
 * by a column (each shard's statement reads its part, `WHERE s = k`), in a database with an ICU
 * collation. Each shard's messages (text, and binary results) are fed to a MergePipeline as
 * they'd arrive, interleaved; its RowDescription and DataRows must be byte for byte what
 * PostgreSQL sends for the client's statement over the whole table.
 */

import { deepEqual, equal } from "node:assert/strict";
import { startPostgres } from "../../tests/harness/mod.ts";
import { type BackendMessage, fe, WireClient } from "../../tests/wire.ts";
import { MessageBuilder } from "../protocol/messages.ts";
import { MergePipeline } from "./pipeline.ts";
import type { AggregateSpec, MergePlan, SortKey } from "./plan.ts";

const SCHEMA = `
CREATE TABLE t (id int PRIMARY KEY, s int, i int4, tx text, n numeric);
INSERT INTO t
SELECT g, g % 3, CASE WHEN g % 7 = 0 THEN NULL ELSE (g * 37) % 101 - 50 END,
  (ARRAY['abc','ABC','Abc','','a b','é','e','E','f','10','9','a10','a9','ä','z','Z','_a',
    '-a','résumé','resume'])[g % 20 + 1],
  CASE WHEN g % 5 = 0 THEN NULL ELSE round(((g * 17) % 89) / 7.0, g % 4) END
FROM generate_series(1, 200) g;
`;

/** A whole message (type byte, length, body) as the fan-out hands it over. */
function whole(m: BackendMessage): Uint8Array {
  const out = new Uint8Array(5 + m.body.length);
  out[0] = m.type.charCodeAt(0);
  new DataView(out.buffer).setInt32(1, 4 + m.body.length);
  out.set(m.body, 5);
  return out;
}

/** RowDescription and DataRows of one statement run with the extended protocol. */
async function run(
  c: WireClient,
  sql: string,
  resultFormats: number[],
): Promise<{ description: Uint8Array; rows: Uint8Array[] }> {
  await c.send(
    fe.parse("", sql),
    fe.bind("", "", [], { resultFormats }),
    fe.describe("P", ""),
    fe.execute(""),
    fe.sync(),
  );
  const msgs = await c.untilReady();
  const error = msgs.find((m) => m.type === "E");
  if (error) throw new Error(`${sql}: ${new TextDecoder().decode(error.body)}`);
  return {
    description: whole(msgs.find((m) => m.type === "T")!),
    rows: msgs.filter((m) => m.type === "D").map(whole),
  };
}

/** The DataRows of a builder's bytes, one message each. */
function split(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let p = 0; p < bytes.length;) {
    const size = new DataView(bytes.buffer, bytes.byteOffset + p + 1).getInt32(0) + 1;
    out.push(bytes.slice(p, p + size));
    p += size;
  }
  return out;
}

const asc = (column: number): SortKey => ({
  column,
  descending: false,
  nullsFirst: false,
  collation: null,
});
const agg = (fn: AggregateSpec["fn"], partials: number[], star = false): AggregateSpec => ({
  fn,
  partials,
  distinct: false,
  star,
  orderBy: [],
});
const BASE: MergePlan = {
  shardSql: null,
  shardColumns: 2,
  aggregate: null,
  having: null,
  setOperation: null,
  distinct: null,
  orderBy: [],
  shardsSorted: true,
  limit: null,
  offset: null,
  visible: 2,
};

interface Case {
  name: string;
  client: string;
  /** The shard statement; `$S` is the shard's number. */
  shard: string;
  plan: Partial<MergePlan>;
}

const CASES: Case[] = [
  {
    name: "ORDER BY text (ICU), id: streamed merge",
    client: "SELECT id, tx FROM t ORDER BY tx, id",
    shard: "SELECT id, tx FROM t WHERE s = $S ORDER BY tx, id",
    plan: { orderBy: [asc(1), asc(0)] },
  },
  {
    name: "ORDER BY a hidden column DESC NULLS LAST, LIMIT/OFFSET",
    client: "SELECT tx, n FROM t ORDER BY i DESC NULLS LAST, id LIMIT 17 OFFSET 5",
    shard: "SELECT tx, n, i, id FROM t WHERE s = $S ORDER BY i DESC NULLS LAST, id LIMIT 22",
    plan: {
      shardColumns: 4,
      orderBy: [{ ...asc(2), descending: true }, asc(3)],
      limit: { value: 17 },
      offset: { value: 5 },
    },
  },
  {
    name: "GROUP BY text with count, sum, avg, max; ORDER BY the group key",
    client: "SELECT tx, count(*), sum(i), avg(i), max(n) FROM t GROUP BY tx ORDER BY tx",
    shard: "SELECT tx, count(*), sum(i), sum(i), count(i), max(n) FROM t WHERE s = $S GROUP BY tx",
    plan: {
      shardColumns: 6,
      visible: 5,
      aggregate: {
        groupBy: [0],
        aggregates: [agg("count", [1], true), agg("sum", [2]), agg("avg", [3, 4]), agg("max", [5])],
        output: [{ group: 0 }, { aggregate: 0 }, { aggregate: 1 }, { aggregate: 2 }, {
          aggregate: 3,
        }],
      },
      orderBy: [asc(0)],
      shardsSorted: false,
      columnNames: ["tx", "count", "sum", "avg", "max"],
    },
  },
  {
    name: "HAVING, ORDER BY a hidden aggregate DESC then the key, LIMIT",
    client: "SELECT tx, count(*) FROM t GROUP BY tx HAVING sum(i) > 0 " +
      "ORDER BY sum(i) DESC, tx LIMIT 4",
    shard: "SELECT tx, count(*), sum(i) FROM t WHERE s = $S GROUP BY tx",
    plan: {
      shardColumns: 3,
      aggregate: {
        groupBy: [0],
        aggregates: [agg("count", [1], true), agg("sum", [2])],
        output: [{ group: 0 }, { aggregate: 0 }, { aggregate: 1 }],
      },
      having: { op: ">", args: [{ column: 2 }, { constant: "0", type: "int" }] },
      orderBy: [{ ...asc(2), descending: true, nullsFirst: true }, asc(0)],
      shardsSorted: false,
      limit: { value: 4 },
    },
  },
  {
    name: "INTERSECT ALL: each row min(left, right) times",
    client: "SELECT tx FROM t WHERE i > 0 INTERSECT ALL SELECT tx FROM t WHERE id % 4 = 0 " +
      "ORDER BY tx",
    shard: "SELECT *, 1::int8 AS pgdog_left, 0::int8 AS pgdog_right FROM " +
      "(SELECT tx FROM t WHERE s = $S AND i > 0) pgdog_l UNION ALL " +
      "SELECT *, 0::int8, 1::int8 FROM (SELECT tx FROM t WHERE s = $S AND id % 4 = 0) pgdog_r",
    plan: {
      shardColumns: 3,
      visible: 1,
      aggregate: {
        groupBy: [0],
        aggregates: [agg("count", [1], true), agg("count", [2], true)],
        output: [{ group: 0 }, { aggregate: 0 }, { aggregate: 1 }],
      },
      setOperation: { op: "intersect", all: true, left: 0, right: 1 },
      orderBy: [asc(0)],
      shardsSorted: false,
    },
  },
  {
    name: "EXCEPT: rows of the left side only, once",
    client: "SELECT tx FROM t WHERE i > 0 EXCEPT SELECT tx FROM t WHERE id % 9 = 0 ORDER BY tx",
    shard: "SELECT *, 1::int8 AS pgdog_left, 0::int8 AS pgdog_right FROM " +
      "(SELECT tx FROM t WHERE s = $S AND i > 0) pgdog_l UNION ALL " +
      "SELECT *, 0::int8, 1::int8 FROM (SELECT tx FROM t WHERE s = $S AND id % 9 = 0) pgdog_r",
    plan: {
      shardColumns: 3,
      visible: 1,
      aggregate: {
        groupBy: [0],
        aggregates: [agg("count", [1], true), agg("count", [2], true)],
        output: [{ group: 0 }, { aggregate: 0 }, { aggregate: 1 }],
      },
      setOperation: { op: "except", all: false, left: 0, right: 1 },
      orderBy: [asc(0)],
      shardsSorted: false,
    },
  },
  {
    name: "aggregates of no rows: one row, count 0 and sum NULL",
    client: "SELECT count(*), sum(n) FROM t WHERE id < 0",
    shard: "SELECT count(*), sum(n) FROM t WHERE s = $S AND id < 0",
    plan: {
      aggregate: {
        groupBy: [],
        aggregates: [agg("count", [0], true), agg("sum", [1])],
        output: [{ aggregate: 0 }, { aggregate: 1 }],
      },
    },
  },
  {
    name: "DISTINCT text ORDER BY it: merged, adjacent duplicates dropped",
    client: "SELECT DISTINCT tx FROM t ORDER BY tx",
    shard: "SELECT DISTINCT tx FROM t WHERE s = $S ORDER BY tx",
    plan: { shardColumns: 1, visible: 1, distinct: [], orderBy: [asc(0)] },
  },
];

Deno.test("pipeline: merged shard answers are byte for byte PostgreSQL's answer", async (t) => {
  await using pg = await startPostgres({});
  await pg.sql(
    "CREATE DATABASE icu LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0",
  );
  await pg.sql(SCHEMA, { database: "icu" });
  const c = await WireClient.connect({
    host: pg.host,
    port: pg.port,
    user: "postgres",
    database: "icu",
  });
  try {
    for (const k of CASES) {
      for (const formats of [[], [1]]) {
        await t.step(`${k.name} (${formats.length ? "binary" : "text"})`, async () => {
          const expected = await run(c, k.client, formats);
          const shards = [];
          for (let s = 0; s < 3; s++) {
            shards.push(await run(c, k.shard.replaceAll("$S", String(s)), formats));
          }
          const p = new MergePipeline({ ...BASE, ...k.plan }, {
            shards: 3,
            bufferLimit: 1 << 20,
            collation: { kind: "icu", locale: "en-US" },
            shardFormats: formats,
            resultFormats: formats,
          });
          let description: Uint8Array | null = null;
          for (let s = 0; s < 3; s++) {
            description ??= p.rowDescription(s, shards[s].description);
          }
          deepEqual(description, expected.description);
          // Rows interleaved, output pulled as it comes.
          const out = new MessageBuilder();
          const most = Math.max(...shards.map((x) => x.rows.length));
          for (let r = 0; r <= most; r++) {
            for (let s = 0; s < 3; s++) {
              if (r < shards[s].rows.length) p.row(s, shards[s].rows[r]);
              else if (r === shards[s].rows.length) p.shardDone(s);
            }
            p.pull(out, 3);
          }
          while (p.pull(out) > 0);
          equal(p.finished, true);
          deepEqual(split(out.view()), expected.rows);
          equal(p.rowCount, expected.rows.length);
        });
      }
    }
  } finally {
    await c.close();
  }
});
