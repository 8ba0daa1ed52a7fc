import assert from "node:assert/strict";
import {
  ANALYZE_MAX,
  ANALYZE_ON_LOOP_MAX,
  loadParser,
  QueryRouter,
  TREE_MAX_CHARS,
} from "./mod.ts";

await loadParser();

/** `count` one-row SELECTs in one text. */
function selects(count: number): string {
  return "SELECT 1;".repeat(count);
}

Deno.test("large texts: analyzed in the worker, whole, never cached", async () => {
  const router = new QueryRouter({ cacheLimit: 10 });
  try {
    const sql = selects(2000);
    assert.ok(sql.length > ANALYZE_ON_LOOP_MAX);
    assert.equal(router.needsPreparing(sql), true);
    await router.prepare(sql);
    assert.equal(router.offloaded, 1);
    assert.equal(router.needsPreparing(sql), false);
    const a = router.analyze(sql);
    assert.equal(a.info.statements, 2000);
    assert.equal(a.info.write, false);
    assert.equal(a.info.tooLarge, undefined);
    // The whole tree, for callers that route statement by statement.
    const stmts = a.info.ast!.stmts;
    assert.equal(stmts.length, 2000);
    // Positions in the text that was parsed (its constants replaced by parameters).
    const last = stmts[1999];
    const text = a.entry.query.slice(last.stmt_location, last.stmt_location! + last.stmt_len!);
    assert.equal(text, "SELECT $2000");
    assert.deepEqual(Object.keys(stmts[0].stmt!), ["SelectStmt"]);
    // Analyzing it again finds the same answer; the parse cache holds nothing of it.
    assert.equal(router.analyze(sql), a);
    assert.equal(router.size, 0);
    assert.equal(router.misses, 0);
  } finally {
    router.close();
  }
});

Deno.test("large texts: the event loop keeps running while one is parsed", async () => {
  const router = new QueryRouter({ cacheLimit: 10 });
  try {
    // A short one first: the worker starts (module and parser load) outside the measurement.
    await router.prepare(selects(1000));
    const sql = selects(90_000); // 810 KB: about a second of parsing
    let last = performance.now();
    let worst = 0;
    const ticks = setInterval(() => {
      const now = performance.now();
      worst = Math.max(worst, now - last);
      last = now;
    }, 5);
    const started = performance.now();
    try {
      await router.prepare(sql);
    } finally {
      clearInterval(ticks);
    }
    const took = performance.now() - started;
    const a = router.analyze(sql);
    assert.equal(a.info.statements, 90_000);
    // Its tree is far larger than TREE_MAX_CHARS: the facts, without the tree.
    assert.equal(a.info.ast, null);
    assert.match(a.info.tooLarge!, /too large to route by its parse tree/);
    // Loose bounds (a shared machine): the timer kept firing while the parse took its time.
    assert.ok(worst < Math.max(250, took / 4), `the loop stalled ${worst} ms of ${took} ms`);
  } finally {
    router.close();
  }
});

Deno.test("large texts: beyond ANALYZE_MAX, not parsed: a write, with its leading directives", async () => {
  const router = new QueryRouter({ cacheLimit: 10 });
  try {
    const sql = "/* pgdog_shard: 1 */ " + selects(Math.ceil(ANALYZE_MAX / 9) + 10);
    assert.ok(sql.length > ANALYZE_MAX);
    await router.prepare(sql);
    assert.equal(router.offloaded, 0);
    const a = router.analyze(sql);
    assert.equal(a.info.write, true);
    assert.equal(a.info.ast, null);
    assert.match(a.info.tooLarge!, /too large to analyze/);
    assert.equal(a.directives?.get("shard"), "1");
    // Without prepare() (another caller), the same answer, still without parsing.
    const other = new QueryRouter({ cacheLimit: 10 });
    assert.equal(other.analyze(sql).info.tooLarge, a.info.tooLarge);
    other.close();
  } finally {
    router.close();
  }
});

Deno.test("large texts: a tree just over the limit is not brought back", async () => {
  const router = new QueryRouter({ cacheLimit: 10 });
  try {
    // About 200 bytes of tree per statement.
    const sql = selects(Math.ceil(TREE_MAX_CHARS / 150));
    await router.prepare(sql);
    const a = router.analyze(sql);
    assert.equal(a.info.ast, null);
    assert.equal(a.info.statements, Math.ceil(TREE_MAX_CHARS / 150));
  } finally {
    router.close();
  }
});

Deno.test("large texts: pgdog.unique_id() calls replaced off the event loop too", async () => {
  const router = new QueryRouter({ cacheLimit: 10 });
  try {
    const rows = Array.from(
      { length: 400 },
      (_, i) => `(pgdog.unique_id(), 'pgdog.unique_id() ${i}')`,
    );
    const sql = `INSERT INTO t (id, v) VALUES ${rows.join(", ")}`;
    assert.ok(sql.length > ANALYZE_ON_LOOP_MAX);
    let n = 0;
    await router.prepare(sql, { uniqueIds: () => `${++n}` });
    assert.equal(n, 400);
    const rewritten = router.rewriteUniqueIds(sql, () => "again");
    assert.ok(rewritten !== null);
    assert.ok(rewritten.startsWith("INSERT INTO t (id, v) VALUES (1, 'pgdog.unique_id() 0'), (2,"));
    // Both texts were analyzed in the worker; the rewritten one is found without parsing.
    assert.equal(router.offloaded, 2);
    const a = router.analyze(rewritten);
    assert.equal(a.info.write, true);
    assert.deepEqual(a.info.tables, [{ name: "t" }]);
    assert.equal(a.literals.length, 800);
    // A replacement is used once: the next identical query gets ids of its own.
    assert.equal(router.needsPreparing(sql), true);
  } finally {
    router.close();
  }
});
