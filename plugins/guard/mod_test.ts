import { equal, match, rejects, throws } from "node:assert/strict";
import { loadModule, parseSync } from "libpg-query";
import type { PluginTable, RouteAnswer, RouteContext } from "@pgdog/pgdog/plugin";
import plugin, { type GuardConfig } from "./mod.ts";

await loadModule();

/** A route context for `query` as pgdog builds it: libpg-query's tree, the tables it names. */
function context(query: string): RouteContext {
  let statement: RouteContext["statement"] = null;
  try {
    // Through JSON, as the tree reaches a plugin.
    statement = JSON.parse(JSON.stringify(parseSync(query)));
  } catch {
    // Unparsable text: pgdog passes statement = null.
  }
  const tables: PluginTable[] = [];
  // An explicit stack: expression trees can be deeper than the call stack.
  const stack: unknown[] = [statement];
  while (stack.length > 0) {
    const node = stack.pop();
    if (typeof node !== "object" || node === null) continue;
    for (const [key, value] of Object.entries(node)) {
      if (key === "RangeVar" || key === "relation") {
        const rv = value as { schemaname?: string; relname: string };
        tables.push(
          rv.schemaname ? { schema: rv.schemaname, name: rv.relname } : { name: rv.relname },
        );
      }
      stack.push(value);
    }
  }
  return {
    query,
    statement,
    params: [],
    tables,
    shardingKeys: [],
    write: !/^\s*select\b/i.test(query),
    inTransaction: false,
    cluster: { shards: 1, replicas: true },
    decision: { role: "primary", shard: null },
    user: "app",
    database: "app",
    applicationName: "",
  };
}

function setup(config: GuardConfig = {}): void {
  plugin.init!(config);
}

function route(query: string): RouteAnswer | undefined {
  return plugin.route!(context(query)) as RouteAnswer | undefined;
}

function blocked(query: string): string | undefined {
  return route(query)?.block;
}

Deno.test("DELETE and UPDATE without WHERE are blocked with a message naming them", () => {
  setup();
  equal(
    blocked("DELETE FROM t"),
    'DELETE without WHERE on table "t" is blocked by the guard plugin; add a WHERE clause ' +
      "(WHERE true to mean every row)",
  );
  equal(
    blocked("update billing.invoices set paid = true"),
    'UPDATE without WHERE on table "billing.invoices" is blocked by the guard plugin; add a ' +
      "WHERE clause (WHERE true to mean every row)",
  );
  match(blocked("DELETE FROM ONLY t")!, /^DELETE without WHERE on table "t"/);
  match(blocked("UPDATE t AS x SET a = 1 FROM u")!, /^UPDATE without WHERE on table "t"/);
  match(blocked("DELETE FROM t USING u RETURNING *")!, /^DELETE without WHERE on table "t"/);
  match(blocked('DELETE FROM "Mixed Case"')!, /on table "Mixed Case"/);
});

Deno.test("statements with a WHERE clause pass, WHERE true included", () => {
  setup();
  equal(route("DELETE FROM t WHERE id = 1"), undefined);
  equal(route("UPDATE t SET a = 1 WHERE true"), undefined);
  equal(route("UPDATE t SET a = $1 WHERE id = $2"), undefined);
  equal(route("DELETE FROM t WHERE CURRENT OF c"), undefined);
  equal(route("DELETE FROM t USING u WHERE t.id = u.id"), undefined);
  equal(route("SELECT * FROM t"), undefined);
  equal(route("INSERT INTO t VALUES (1)"), undefined);
  equal(route("TRUNCATE t"), undefined);
});

Deno.test("every statement of a multi-statement query is checked", () => {
  setup();
  equal(
    blocked("SELECT 1; DELETE FROM t WHERE a = 1; UPDATE u SET b = 2"),
    'UPDATE without WHERE on table "u" (statement 3 of 3) is blocked by the guard plugin; add ' +
      "a WHERE clause (WHERE true to mean every row)",
  );
  match(
    blocked("BEGIN; DELETE FROM t; COMMIT")!,
    /^DELETE without WHERE on table "t" \(statement 2/,
  );
  equal(route("BEGIN; DELETE FROM t WHERE a = 1; COMMIT"), undefined);
});

Deno.test("data-modifying WITH queries and nested WITH are checked", () => {
  setup();
  match(
    blocked("WITH gone AS (DELETE FROM s.t RETURNING *) SELECT count(*) FROM gone")!,
    /^DELETE without WHERE on table "s\.t" is blocked/,
  );
  match(
    blocked(
      "WITH a AS (UPDATE t SET x = 1 WHERE id = 1 RETURNING id), " +
        "b AS (UPDATE u SET y = 2 RETURNING id) SELECT * FROM a, b",
    )!,
    /^UPDATE without WHERE on table "u"/,
  );
  match(
    blocked(
      "INSERT INTO log SELECT * FROM (WITH d AS (DELETE FROM q RETURNING *) SELECT * FROM d) s",
    )!,
    /^DELETE without WHERE on table "q"/,
  );
  equal(
    route("WITH d AS (DELETE FROM q WHERE done RETURNING *) INSERT INTO log SELECT * FROM d"),
    undefined,
  );
});

Deno.test("EXPLAIN ANALYZE and PREPARE are checked, plain EXPLAIN and rule bodies are not", () => {
  setup();
  match(blocked("EXPLAIN ANALYZE DELETE FROM t")!, /^DELETE without WHERE on table "t"/);
  match(blocked("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1")!, /^UPDATE without WHERE/);
  match(blocked("EXPLAIN (ANALYZE true) DELETE FROM t")!, /^DELETE without WHERE/);
  match(blocked("PREPARE wipe AS DELETE FROM t")!, /^DELETE without WHERE on table "t"/);
  equal(route("EXPLAIN DELETE FROM t"), undefined);
  equal(route("EXPLAIN (ANALYZE false) DELETE FROM t"), undefined);
  equal(route("EXPLAIN (ANALYZE off, VERBOSE) UPDATE t SET a = 1"), undefined);
  equal(route("CREATE RULE r AS ON INSERT TO v DO INSTEAD DELETE FROM t"), undefined);
});

Deno.test("tables in except may be changed without WHERE; schema rules apply", () => {
  setup({ except: ["scratch", "staging.import_rows"] });
  equal(route("DELETE FROM scratch"), undefined);
  equal(route("DELETE FROM tmp.scratch"), undefined);
  equal(route("UPDATE staging.import_rows SET done = true"), undefined);
  // A qualified entry does not cover the bare name, which may resolve to another schema.
  match(blocked("DELETE FROM import_rows")!, /on table "import_rows"/);
  match(blocked("DELETE FROM public.import_rows")!, /on table "public\.import_rows"/);
  match(
    blocked("DELETE FROM scratch; DELETE FROM other")!,
    /on table "other" \(statement 2 of 2\)/,
  );
  // Unquoted identifiers are folded to lower case by PostgreSQL before matching.
  equal(route("DELETE FROM SCRATCH"), undefined);
  setup();
  match(blocked("DELETE FROM scratch")!, /on table "scratch"/);
});

/**
 * `query`'s context with the first select-list or SET value replaced by an expression `depth`
 * levels deep (built here: serializing such a tree recursively can itself run out of stack).
 */
function deepContext(query: string, depth: number): RouteContext {
  const ctx = context(query);
  let expr: unknown = { ColumnRef: { fields: [{ String: { sval: "a" } }] } };
  for (let i = 0; i < depth; i++) {
    expr = {
      A_Expr: {
        kind: "AEXPR_OP",
        name: [{ String: { sval: "+" } }],
        lexpr: expr,
        rexpr: { ColumnRef: { fields: [{ String: { sval: "a" } }] } },
      },
    };
  }
  const stmt = ctx.statement!.stmts[0].stmt as Record<string, { targetList: unknown[] }>;
  const target = Object.values(stmt)[0].targetList[0] as { ResTarget: { val: unknown } };
  target.ResTarget.val = expr;
  return ctx;
}

Deno.test("deeply nested trees are walked without exhausting the stack", () => {
  setup();
  const depth = 50_000;
  equal(plugin.route!(deepContext("UPDATE t SET x = 1 WHERE id = 1", depth)), undefined);
  const update = plugin.route!(deepContext("UPDATE t SET x = 1", depth)) as RouteAnswer;
  match(update.block!, /^UPDATE without WHERE on table "t"/);
  const second = plugin.route!(deepContext("SELECT 1; DELETE FROM t", depth)) as RouteAnswer;
  match(second.block!, /\(statement 2 of 2\)/);
});

Deno.test("the first offending statement is reported, outer before nested", () => {
  setup();
  match(
    blocked("WITH a AS (DELETE FROM first RETURNING 1) UPDATE second SET x = 1")!,
    /^UPDATE without WHERE on table "second"/,
  );
  match(
    blocked("WITH a AS (DELETE FROM first RETURNING 1) UPDATE second SET x = 1 WHERE id = 1")!,
    /^DELETE without WHERE on table "first"/,
  );
  match(
    blocked("UPDATE outer_t SET x = 1 FROM (SELECT 1) s; DELETE FROM later")!,
    /^UPDATE without WHERE on table "outer_t" \(statement 1 of 2\)/,
  );
});

Deno.test("odd input never throws and has no opinion", () => {
  setup();
  equal(route("DELETE FROM"), undefined); // does not parse: statement is null
  equal(route(""), undefined);
  equal(route("-- just a comment"), undefined);
  const ctx = context("DELETE FROM t");
  equal(plugin.route!({ ...ctx, statement: null }), undefined);
  equal(
    plugin.route!({ ...ctx, statement: { version: 1, stmts: [{}, { stmt: null }] } }),
    undefined,
  );
  equal(plugin.route!({ ...ctx, statement: { version: 1, stmts: null as never } }), undefined);
  // A DeleteStmt missing its relation still blocks, without a table name to show.
  match(
    (plugin.route!({
      ...ctx,
      statement: { version: 1, stmts: [{ stmt: { DeleteStmt: {} } }] },
    }) as RouteAnswer).block!,
    /^DELETE without WHERE on table "\?"/,
  );
});

Deno.test("bad configuration is refused by init", async () => {
  throws(() => setup({ except: "scratch" as never }), /config\.except must be an array/);
  throws(() => setup({ except: [1 as never] }), /array of table names, got 1/);
  await rejects(async () => await plugin.init!({ except: [""] }), /got ""/);
  setup({});
  setup(undefined as never);
  match(blocked("DELETE FROM t")!, /^DELETE without WHERE/);
});
