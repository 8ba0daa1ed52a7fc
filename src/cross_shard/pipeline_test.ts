import { deepEqual, equal, throws } from "node:assert/strict";
import { MessageBuilder, Msg } from "../protocol/messages.ts";
import { MergeError } from "./errors.ts";
import { describeMerged, MergePipeline, type MergePipelineOptions } from "./pipeline.ts";
import type { AggregateSpec, MergePlan, SortKey } from "./plan.ts";
import { buildDataRow, parseDataRow, parseRowDescription } from "./rows.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

type Col = [name: string, oid: number, format?: number];

function rowDescription(cols: Col[]): Uint8Array {
  const b = new MessageBuilder().begin(Msg.RowDescription).int16(cols.length);
  for (const [name, oid, format] of cols) {
    b.cstring(name).int32(16400).int16(1).int32(oid).int16(oid === 25 ? -1 : 4).int32(-1)
      .int16(format ?? 0);
  }
  return b.end().build();
}

function row(...values: (string | number | null)[]): Uint8Array {
  return buildDataRow(values.map((v) => v === null ? null : enc.encode(String(v))));
}

/** The DataRows in `bytes`, each as its text fields. */
function rowsOf(bytes: Uint8Array): (string | null)[][] {
  const out: (string | null)[][] = [];
  for (let p = 0; p < bytes.length;) {
    const size = new DataView(bytes.buffer, bytes.byteOffset + p + 1).getInt32(0) + 1;
    const msg = bytes.subarray(p, p + size);
    out.push(parseDataRow(msg).map((f) => f === null ? null : dec.decode(f)));
    p += size;
  }
  return out;
}

function pull(p: MergePipeline, max?: number): (string | null)[][] {
  const b = new MessageBuilder();
  const n = p.pull(b, max);
  const rows = rowsOf(b.view());
  equal(rows.length, n);
  return rows;
}

function plan(overrides: Partial<MergePlan>): MergePlan {
  return {
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
    ...overrides,
  };
}

function asc(column: number, more: Partial<SortKey> = {}): SortKey {
  return { column, descending: false, nullsFirst: false, collation: null, ...more };
}

function desc(column: number, more: Partial<SortKey> = {}): SortKey {
  return { column, descending: true, nullsFirst: true, collation: null, ...more };
}

function pipeline(
  p: MergePlan,
  options: Partial<MergePipelineOptions> & { cols?: Col[] } = {},
): MergePipeline {
  const pipe = new MergePipeline(p, {
    shards: 3,
    bufferLimit: 1 << 20,
    ...options,
  });
  const cols = options.cols ?? [["id", 23], ["name", 25]];
  for (let s = 0; s < (options.shards ?? 3); s++) pipe.rowDescription(s, rowDescription(cols));
  return pipe;
}

function code(c: string): (e: unknown) => boolean {
  return (e) => e instanceof MergeError && e.code === c;
}

Deno.test("no ORDER BY: rows go out as they arrive, bytes unchanged", () => {
  const p = pipeline(plan({}));
  const r1 = row(1, "a");
  p.row(2, r1);
  p.row(0, row(2, "b"));
  const b = new MessageBuilder();
  equal(p.pull(b), 2);
  deepEqual(b.view().subarray(0, r1.length), r1);
  deepEqual(rowsOf(b.view()), [["1", "a"], ["2", "b"]]);
  p.shardDone(0);
  p.shardDone(2);
  equal(p.finished, false);
  p.row(1, row(3, "c"));
  p.shardDone(1);
  deepEqual(pull(p), [["3", "c"]]);
  equal(p.finished, true);
  equal(p.rowCount, 3);
});

Deno.test("the first RowDescription decides, hidden columns are cut from it", () => {
  const p = new MergePipeline(plan({ visible: 1, orderBy: [asc(1)] }), {
    shards: 2,
    bufferLimit: 1 << 20,
  });
  const first = p.rowDescription(0, rowDescription([["name", 25], ["k", 23]]));
  deepEqual(parseRowDescription(first!).map((f) => [f.name, f.typeOid]), [["name", 25]]);
  equal(p.rowDescription(1, rowDescription([["name", 25], ["k", 23]])), null);
});

Deno.test("ORDER BY the shards sort by: a streaming merge, rows out before every shard is done", () => {
  const p = pipeline(plan({ orderBy: [asc(0)] }));
  p.row(0, row(1, "a"));
  p.row(0, row(4, "d"));
  p.row(1, row(2, "b"));
  deepEqual(pull(p), []); // shard 2 may still send a smaller id
  p.row(2, row(3, "c"));
  deepEqual(pull(p), [["1", "a"], ["2", "b"]]); // shard 1 may still send something below 3
  p.shardDone(1);
  deepEqual(pull(p), [["3", "c"]]);
  p.row(2, row(5, "e"));
  deepEqual(pull(p), [["4", "d"]]);
  equal(p.finished, false);
  p.shardDone(0);
  p.shardDone(2);
  deepEqual(pull(p), [["5", "e"]]);
  equal(p.finished, true);
  equal(p.held, 0);
});

Deno.test("sort keys: DESC, NULLS FIRST/LAST, several keys, ties in arrival order", () => {
  const rows: [number, number | null, string][] = [
    [0, 1, "a"],
    [1, null, "b"],
    [2, 1, "c"],
    [0, 2, "d"],
    [1, 2, "e"],
  ];
  const run = (keys: SortKey[]): string[] => {
    const p = pipeline(plan({ orderBy: keys, shardsSorted: false }));
    for (const [s, k, v] of rows) p.row(s, row(k, v));
    for (let s = 0; s < 3; s++) p.shardDone(s);
    return pull(p).map((r) => r[1]!);
  };
  deepEqual(run([asc(0)]), ["a", "c", "d", "e", "b"]);
  deepEqual(run([asc(0, { nullsFirst: true })]), ["b", "a", "c", "d", "e"]);
  deepEqual(run([desc(0)]), ["b", "d", "e", "a", "c"]);
  deepEqual(run([desc(0, { nullsFirst: false })]), ["d", "e", "a", "c", "b"]);
  deepEqual(run([desc(0, { nullsFirst: false }), desc(1)]), ["e", "d", "c", "a", "b"]);
});

Deno.test("text sorts in the pipeline's collation, or the key's COLLATE", () => {
  const words = ["b", "B", "a", "A", "é", "e", ""];
  const run = (options: Partial<MergePipelineOptions>, key: SortKey): string[] => {
    const p = pipeline(plan({ orderBy: [key], shardsSorted: false }), options);
    words.forEach((w, i) => p.row(i % 3, row(i, w)));
    for (let s = 0; s < 3; s++) p.shardDone(s);
    return pull(p).map((r) => r[1]!);
  };
  deepEqual(run({}, asc(1)), ["", "A", "B", "a", "b", "e", "é"]);
  const icu = { collation: { kind: "icu" as const, locale: "en-US" } };
  deepEqual(run(icu, asc(1)), ["", "a", "A", "b", "B", "e", "é"]);
  deepEqual(run(icu, asc(1, { collation: "C" })), ["", "A", "B", "a", "b", "e", "é"]);
  throws(() => run(icu, asc(1, { collation: "fr_FR" })), code("0A000"));
});

Deno.test("OFFSET and LIMIT on the merge: rows after the limit are dropped and the caller told", () => {
  const p = pipeline(plan({ orderBy: [asc(0)], offset: { value: 1 }, limit: { value: 2 } }));
  p.row(0, row(1, "a"));
  p.row(1, row(2, "b"));
  p.row(2, row(3, "c"));
  p.row(0, row(4, "d"));
  equal(p.limitReached, false);
  deepEqual(pull(p), [["2", "b"]]);
  p.row(1, row(5, "e"));
  deepEqual(pull(p), [["3", "c"]]);
  equal(p.limitReached, true);
  equal(p.finished, true);
  equal(p.held, 0);
  p.row(2, row(6, "f")); // dropped at once
  equal(p.held, 0);
  deepEqual(pull(p), []);
  equal(p.rowCount, 2);
});

Deno.test("LIMIT and OFFSET from parameters; negative ones are PostgreSQL's errors", () => {
  const mk = (params: (string | null)[]) =>
    pipeline(plan({ limit: { param: 1 }, offset: { param: 2 } }), { params });
  const p = mk(["1", "1"]);
  for (let i = 0; i < 4; i++) p.row(i % 3, row(i, "x"));
  deepEqual(pull(p), [["1", "x"]]);
  equal(p.limitReached, true);
  const all = mk([null, null]); // LIMIT NULL: no limit; OFFSET NULL: 0
  for (let i = 0; i < 4; i++) all.row(i % 3, row(i, "x"));
  equal(pull(all).length, 4);
  throws(() => mk(["-1", "0"]), code("2201W"));
  throws(() => mk(["1", "-1"]), code("2201X"));
  throws(() => pipeline(plan({ limit: { value: -3 } })), code("2201W"));
  throws(() => mk(["ten", "0"]), code("22P02"));
  const zero = pipeline(plan({ limit: { value: 0 } }));
  equal(zero.limitReached, true);
  zero.row(0, row(1, "a"));
  deepEqual(pull(zero), []);
  equal(zero.finished, true);
});

Deno.test("Execute with a row limit: pull at most N, later the rest", () => {
  const p = pipeline(plan({ orderBy: [asc(0)], shardsSorted: false }));
  for (let i = 0; i < 7; i++) p.row(i % 3, row(i, "x"));
  for (let s = 0; s < 3; s++) p.shardDone(s);
  deepEqual(pull(p, 3).map((r) => r[0]), ["0", "1", "2"]);
  equal(p.finished, false);
  deepEqual(pull(p, 3).map((r) => r[0]), ["3", "4", "5"]);
  deepEqual(pull(p, 3).map((r) => r[0]), ["6"]);
  equal(p.finished, true);
  deepEqual(pull(p, 3), []);
});

Deno.test("ORDER BY the shards don't sort by: held until every shard is done, stable", () => {
  const p = pipeline(plan({ orderBy: [asc(0)], shardsSorted: false }));
  p.row(0, row(2, "a"));
  p.row(1, row(1, "b"));
  p.row(2, row(2, "c"));
  p.row(1, row(2, "d"));
  p.shardDone(0);
  p.shardDone(1);
  deepEqual(pull(p), []);
  equal(p.held > 0, true);
  p.shardDone(2);
  deepEqual(pull(p).map((r) => r[1]), ["b", "a", "c", "d"]);
});

Deno.test("rows held past bufferLimit fail with 53200 naming cross_shard_buffer_limit", () => {
  const p = pipeline(plan({ orderBy: [asc(0)], shardsSorted: false }), { bufferLimit: 100 });
  p.row(0, row(1, "a"));
  let error: unknown;
  try {
    for (let i = 0; i < 20; i++) p.row(i % 3, row(i, "some text"));
  } catch (e) {
    error = e;
  }
  equal(error instanceof MergeError, true);
  equal((error as MergeError).code, "53200");
  equal((error as MergeError).message.includes("cross_shard_buffer_limit"), true);
  equal((error as MergeError).message.includes("100 bytes"), true);
  // The pipeline is done with: it takes and gives nothing more.
  p.row(0, row(99, "z"));
  equal(p.finished, true);
  deepEqual(pull(p), []);
  equal(p.held, 0);
});

Deno.test("a streaming merge: waiting rows are not held (the caller bounds them), until countWaiting", () => {
  const p = pipeline(plan({ orderBy: [asc(0)] }), { bufferLimit: 200 });
  for (let i = 0; i < 50; i++) p.row(0, row(i, "waiting for shards 1 and 2"));
  equal(p.held, 0);
  equal(p.waitingBytes > 200, true);
  equal(p.waiting(0), 50);
  equal(p.waiting(1), 0);
  equal(p.blocked, true); // shard 0 is ahead: its reader may pause
  p.row(1, row(100, "b"));
  equal(p.blocked, true);
  p.shardDone(2);
  equal(p.blocked, false);
  equal(pull(p, 10).length, 10);
  equal(p.waiting(0), 40);
  // Fetched in parts while the shards run to completion: waiting rows count from now on.
  throws(() => p.countWaiting(), code("53200"));
  // Without ORDER BY, every shard's waiting rows can go next.
  const s = pipeline(plan({}));
  s.row(0, row(1, "a"));
  s.row(1, row(2, "b"));
  equal(s.waiting(2), 2);
  equal(s.blocked, false);
});

Deno.test("DISTINCT without ORDER BY streams, keeping only keys", () => {
  const p = pipeline(plan({ distinct: [] }));
  p.row(0, row(1, "a"));
  p.row(1, row(1, "a"));
  p.row(2, row(1, null));
  p.row(2, row(1, null));
  deepEqual(pull(p), [["1", "a"], ["1", null]]);
  p.row(0, row(2, "a"));
  deepEqual(pull(p), [["2", "a"]]);
});

Deno.test("DISTINCT ON (the leading ORDER BY columns) on the merge keeps the first in order", () => {
  // DISTINCT ON (id) ... ORDER BY id, name DESC
  const p = pipeline(plan({ distinct: [0], orderBy: [asc(0), desc(1)] }));
  p.row(0, row(1, "a"));
  p.row(1, row(1, "c"));
  p.row(2, row(1, "b"));
  p.row(2, row(2, "x"));
  p.row(0, row(3, "y"));
  p.row(1, row(2, "z"));
  for (let s = 0; s < 3; s++) p.shardDone(s);
  deepEqual(pull(p), [["1", "c"], ["2", "z"], ["3", "y"]]);
});

Deno.test("DISTINCT on columns the ORDER BY doesn't lead with, merged", () => {
  // SELECT DISTINCT id, name ... ORDER BY id: equal rows need not be adjacent.
  const p = pipeline(plan({ distinct: [], orderBy: [asc(0)] }));
  p.row(0, row(1, "a"));
  p.row(0, row(1, "b"));
  p.row(1, row(1, "b"));
  p.row(1, row(1, "a"));
  p.row(2, row(1, "a"));
  for (let s = 0; s < 3; s++) p.shardDone(s);
  deepEqual(pull(p), [["1", "a"], ["1", "b"]]);
});

Deno.test("DISTINCT ON with a sort the shards don't do keeps the first in sort order", () => {
  const p = pipeline(plan({ distinct: [0], orderBy: [asc(0), asc(1)], shardsSorted: false }));
  p.row(0, row(2, "q"));
  p.row(1, row(1, "m"));
  p.row(2, row(2, "b"));
  p.row(0, row(1, "k"));
  p.row(2, row(1, "k"));
  for (let s = 0; s < 3; s++) p.shardDone(s);
  deepEqual(pull(p), [["1", "k"], ["2", "b"]]);
});

function agg(fn: AggregateSpec["fn"], partials: number[], more: Partial<AggregateSpec> = {}) {
  return { fn, partials, distinct: false, star: false, orderBy: [], ...more };
}

Deno.test("aggregates without GROUP BY: one group, even when no shard has a row", () => {
  // SELECT count(*), max(id) FROM t
  const mk = () =>
    pipeline(
      plan({
        aggregate: {
          groupBy: [],
          aggregates: [agg("count", [0], { star: true }), agg("max", [1])],
          output: [{ aggregate: 0 }, { aggregate: 1 }],
        },
      }),
      { cols: [["count", 20], ["max", 23]] },
    );
  const p = mk();
  p.row(0, row(2, 7));
  p.row(1, row(3, 9));
  p.row(2, row(0, null));
  deepEqual(pull(p), []);
  for (let s = 0; s < 3; s++) p.shardDone(s);
  deepEqual(pull(p), [["5", "9"]]);
  const empty = mk();
  for (let s = 0; s < 3; s++) empty.shardDone(s);
  deepEqual(pull(empty), [["0", null]]);
});

Deno.test("GROUP BY, HAVING, ORDER BY an aggregate, LIMIT, hidden group column", () => {
  // SELECT count(*) FROM t GROUP BY g HAVING count(*) > 1 ORDER BY count(*) DESC, g LIMIT 2
  // shard rows: (g, count)
  const p = pipeline(
    plan({
      aggregate: {
        groupBy: [0],
        aggregates: [agg("count", [1], { star: true })],
        output: [{ aggregate: 0 }, { group: 0 }],
      },
      having: { op: ">", args: [{ column: 0 }, { constant: "1", type: "int" }] },
      orderBy: [desc(0), asc(1)],
      limit: { value: 2 },
      visible: 1,
    }),
    { cols: [["g", 25], ["count", 20]] },
  );
  const b = new MessageBuilder();
  const shardRows: [number, string, number][] = [
    [0, "x", 1],
    [0, "y", 2],
    [1, "x", 2],
    [1, "z", 1],
    [2, "w", 3],
    [2, "y", 1],
    [2, null as unknown as string, 5],
  ];
  for (const [s, g, n] of shardRows) p.row(s, row(g, n));
  for (let s = 0; s < 3; s++) p.shardDone(s);
  p.pull(b);
  // groups: x 3, y 3, z 1 (dropped by HAVING), w 3, NULL 5
  deepEqual(rowsOf(b.view()), [["5"], ["3"]]);
  equal(p.limitReached, true);
});

Deno.test("GROUP BY keeps groups in first-arrival order and the first row's group bytes", () => {
  const p = pipeline(
    plan({
      aggregate: {
        groupBy: [0],
        aggregates: [agg("sum", [1])],
        output: [{ group: 0 }, { aggregate: 0 }],
      },
    }),
    { cols: [["g", 23], ["sum", 20]] },
  );
  p.row(1, row("+7", 1));
  p.row(0, row(3, 2));
  p.row(2, row(7, 4));
  for (let s = 0; s < 3; s++) p.shardDone(s);
  deepEqual(pull(p), [["+7", "5"], ["3", "2"]]);
});

Deno.test("aggregate result types replace the partials' in the RowDescription", () => {
  const pl = plan({
    aggregate: {
      groupBy: [0],
      aggregates: [agg("sum", [1])],
      output: [{ group: 0 }, { aggregate: 0 }],
    },
  });
  const shard = rowDescription([["g", 23], ["total", 20]]);
  const p = new MergePipeline(pl, { shards: 1, bufferLimit: 1000 });
  const out = parseRowDescription(p.rowDescription(0, shard)!);
  deepEqual(out.map((f) => [f.name, f.typeOid, f.size, f.tableOid]), [
    ["g", 23, 4, 16400],
    ["total", 20, 8, 0],
  ]);
  deepEqual(describeMerged(pl, shard), buildOut(out));
});

function buildOut(fields: ReturnType<typeof parseRowDescription>): Uint8Array {
  const b = new MessageBuilder().begin(Msg.RowDescription).int16(fields.length);
  for (const f of fields) {
    b.cstring(f.name).int32(f.tableOid).int16(f.attnum).int32(f.typeOid).int16(f.size)
      .int32(f.typmod).int16(f.format);
  }
  return b.end().build();
}

Deno.test("DISTINCT aggregates: values sent by several shards count once", () => {
  // SELECT count(DISTINCT x) FROM t: shards send their distinct x
  const p = pipeline(
    plan({
      shardColumns: 1,
      visible: 1,
      aggregate: {
        groupBy: [],
        aggregates: [agg("count", [0], { distinct: true })],
        output: [{ aggregate: 0 }],
      },
    }),
    { cols: [["x", 23]] },
  );
  for (const [s, x] of [[0, 1], [0, 2], [1, 2], [1, 3], [2, 1]] as const) p.row(s, row(x));
  for (let s = 0; s < 3; s++) p.shardDone(s);
  deepEqual(pull(p), [["3"]]);
});

Deno.test("set operations: each row as many times as UNION/INTERSECT/EXCEPT [ALL] say", () => {
  // shard rows: (v, left count, right count)
  const run = (op: "union" | "intersect" | "except", all: boolean): string[] => {
    const p = pipeline(
      plan({
        shardColumns: 3,
        visible: 1,
        aggregate: {
          groupBy: [0],
          aggregates: [agg("sum", [1]), agg("sum", [2])],
          output: [{ group: 0 }],
        },
        setOperation: { op, all, left: 0, right: 1 },
        orderBy: [asc(0)],
        shardsSorted: false,
      }),
      { cols: [["v", 25], ["l", 20], ["r", 20]] },
    );
    const data: [number, string, number, number][] = [
      [0, "a", 2, 0],
      [1, "a", 1, 1],
      [0, "b", 1, 0],
      [2, "c", 0, 2],
      [1, "d", 2, 0],
      [2, "d", 0, 3],
    ];
    for (const [s, v, l, r] of data) p.row(s, row(v, l, r));
    for (let s = 0; s < 3; s++) p.shardDone(s);
    const rows = pull(p, 4).concat(pull(p));
    return rows.map((r) => r[0]!);
  };
  deepEqual(run("union", false), ["a", "b", "c", "d"]);
  deepEqual(run("union", true), ["a", "a", "a", "a", "b", "c", "c", "d", "d", "d", "d", "d"]);
  deepEqual(run("intersect", false), ["a", "d"]);
  deepEqual(run("intersect", true), ["a", "d", "d"]);
  deepEqual(run("except", false), ["b"]);
  deepEqual(run("except", true), ["a", "a", "b"]);
});

Deno.test("result formats: a column the shards send in text goes out in binary when asked", () => {
  const p = pipeline(plan({ orderBy: [asc(0)], shardsSorted: false }), { resultFormats: [1, 0] });
  p.row(0, row(258, "a"));
  for (let s = 0; s < 3; s++) p.shardDone(s);
  const b = new MessageBuilder();
  p.pull(b);
  const fields = parseDataRow(b.view());
  deepEqual(fields[0], Uint8Array.of(0, 0, 1, 2));
  deepEqual(fields[1], enc.encode("a"));
});

Deno.test("a type the merge can't decode passes through, but can't be a sort key (0A000)", () => {
  const cols: Col[] = [["p", 600], ["id", 23]];
  const p = pipeline(plan({ orderBy: [asc(1)] }), { cols });
  p.row(0, row("(1,2)", 2));
  p.row(1, row("(3,4)", 1));
  for (let s = 0; s < 3; s++) p.shardDone(s);
  deepEqual(pull(p), [["(3,4)", "1"], ["(1,2)", "2"]]);
  throws(() => pipeline(plan({ orderBy: [asc(0)] }), { cols }), code("0A000"));
});

Deno.test("ORDER BY ... LIMIT the shards don't sort by holds only OFFSET + LIMIT rows", () => {
  const pl = plan({
    orderBy: [desc(0)],
    shardsSorted: false,
    offset: { value: 1 },
    limit: { value: 2 },
  });
  const p = pipeline(pl, { bufferLimit: 100 }); // 3 rows of ~20 bytes fit, 1000 would not
  for (let i = 0; i < 1000; i++) p.row(i % 3, row((i * 7919) % 1000, "r"));
  equal(p.held <= 3 * 20, true);
  for (let s = 0; s < 3; s++) p.shardDone(s);
  deepEqual(pull(p).map((r) => r[0]), ["998", "997"]);
  // Ties keep arrival order there too.
  const t = pipeline(plan({ orderBy: [asc(0)], shardsSorted: false, limit: { value: 2 } }));
  t.row(0, row(1, "a"));
  t.row(1, row(0, "b"));
  t.row(2, row(1, "c"));
  t.row(0, row(1, "d"));
  for (let s = 0; s < 3; s++) t.shardDone(s);
  deepEqual(pull(t).map((r) => r[1]), ["b", "a"]);
});

Deno.test("avg from shard sums and counts: exact numeric, named as the client's column", () => {
  // SELECT g AS grp, avg(x) FROM t GROUP BY g ORDER BY g; shard rows: (g, sum(x), count(x))
  const pl = plan({
    shardColumns: 3,
    aggregate: {
      groupBy: [0],
      aggregates: [agg("avg", [1, 2])],
      output: [{ group: 0 }, { aggregate: 0 }],
    },
    orderBy: [asc(0)],
    shardsSorted: false,
    columnNames: ["grp", "avg"],
  });
  const p = new MergePipeline(pl, { shards: 2, bufferLimit: 1 << 20 });
  const shardDescription = rowDescription([["g", 25], ["sum", 20], ["count", 20]]);
  const t = parseRowDescription(p.rowDescription(0, shardDescription)!);
  deepEqual(t.map((f) => [f.name, f.typeOid, f.size, f.typmod]), [
    ["grp", 25, -1, -1],
    ["avg", 1700, -1, -1],
  ]);
  deepEqual(describeMerged(pl, shardDescription), buildOut(t));
  p.row(0, row("b", 1, 1));
  p.row(0, row("a", 3, 2));
  p.row(1, row("a", 7, 2));
  p.row(1, row("c", null, 0));
  p.shardDone(0);
  p.shardDone(1);
  deepEqual(pull(p), [["a", "2.5000000000000000"], ["b", "1.00000000000000000000"], ["c", null]]);
});

Deno.test("aggregates go out in the client's result format; count is binary int8 when asked", () => {
  const p = pipeline(
    plan({
      shardColumns: 1,
      visible: 1,
      aggregate: {
        groupBy: [],
        aggregates: [agg("count", [0], { star: true })],
        output: [{ aggregate: 0 }],
      },
    }),
    { cols: [["count", 20]], resultFormats: [1] },
  );
  p.row(0, row(2));
  p.row(1, row(3));
  for (let s = 0; s < 3; s++) p.shardDone(s);
  const b = new MessageBuilder();
  p.pull(b);
  deepEqual(parseDataRow(b.view()), [Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 5)]);
});

Deno.test("an error while aggregating (sum overflows bigint: 22003) fails the statement once", () => {
  const p = pipeline(
    plan({
      shardColumns: 1,
      visible: 1,
      aggregate: { groupBy: [], aggregates: [agg("sum", [0])], output: [{ aggregate: 0 }] },
    }),
    { cols: [["sum", 20]] },
  );
  let error: unknown = null;
  try {
    p.row(0, row("9223372036854775807"));
    p.row(1, row(1));
    for (let s = 0; s < 3; s++) p.shardDone(s);
    pull(p);
  } catch (e) {
    error = e;
  }
  equal((error as MergeError).code, "22003");
  equal(p.finished, true);
  deepEqual(pull(p), []);
  p.row(2, row(1)); // ignored
});
