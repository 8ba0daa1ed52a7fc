import { deepEqual, equal, throws } from "node:assert/strict";
import { loadModule, parseSync } from "libpg-query";
import type { PluginTable, RouteAnswer, RouteContext } from "@pgdog/pgdog/plugin";
import plugin, { type LimitRewriterConfig } from "./mod.ts";

await loadModule();

/** libpg-query's tree for `query` (through JSON, as it reaches a plugin), or null. */
function parse(query: string): RouteContext["statement"] {
  try {
    return JSON.parse(JSON.stringify(parseSync(query)));
  } catch {
    return null;
  }
}

/** A route context for `query` as pgdog builds it: the tree, its tables, a one-shard decision. */
function context(query: string, over: Partial<RouteContext> = {}): RouteContext {
  const statement = parse(query);
  const tables: PluginTable[] = [];
  const collect = (node: unknown): void => {
    if (Array.isArray(node)) return node.forEach(collect);
    if (typeof node !== "object" || node === null) return;
    for (const [key, value] of Object.entries(node)) {
      if (key === "RangeVar" || key === "relation") {
        const rv = value as { schemaname?: string; relname: string };
        tables.push(
          rv.schemaname ? { schema: rv.schemaname, name: rv.relname } : { name: rv.relname },
        );
      }
      collect(value);
    }
  };
  collect(statement);
  return {
    query,
    statement,
    params: [],
    tables,
    shardingKeys: [],
    write: false,
    inTransaction: false,
    cluster: { shards: 1, replicas: true },
    decision: { role: "replica", shard: null },
    user: "app",
    database: "app",
    applicationName: "",
    ...over,
  };
}

function setup(config: LimitRewriterConfig): void {
  plugin.init!(config);
}

function rewrite(query: string, over: Partial<RouteContext> = {}): string | undefined {
  const answer = plugin.route!(context(query, over)) as RouteAnswer | undefined;
  if (answer === undefined) return undefined;
  deepEqual(Object.keys(answer), ["rewrite"]);
  // Every rewrite is one SELECT that PostgreSQL's parser accepts, now with the LIMIT.
  const stmts = parse(answer.rewrite!)?.stmts ?? [];
  equal(stmts.length, 1, answer.rewrite);
  const select = (stmts[0].stmt as { SelectStmt: { limitCount: unknown } }).SelectStmt;
  deepEqual(
    (select.limitCount as { A_Const: { ival: { ival: number } } }).A_Const.ival.ival,
    LIMIT,
    answer.rewrite,
  );
  return answer.rewrite;
}

const LIMIT = 1000;

Deno.test("unbounded SELECTs on configured tables get the LIMIT", () => {
  setup({ tables: ["events", "audit.log"], limit: LIMIT });
  equal(rewrite("SELECT * FROM events"), "SELECT * FROM events LIMIT 1000");
  equal(
    rewrite("SELECT id, kind FROM events WHERE kind = $1 ORDER BY id DESC"),
    "SELECT id, kind FROM events WHERE kind = $1 ORDER BY id DESC LIMIT 1000",
  );
  equal(rewrite("select * from public.events e"), "select * from public.events e LIMIT 1000");
  equal(rewrite("SELECT * FROM audit.log"), "SELECT * FROM audit.log LIMIT 1000");
  equal(
    rewrite("SELECT u.name, e.* FROM users u JOIN events e ON e.user_id = u.id"),
    "SELECT u.name, e.* FROM users u JOIN events e ON e.user_id = u.id LIMIT 1000",
  );
  equal(
    rewrite("SELECT * FROM events OFFSET 50"),
    "SELECT * FROM events OFFSET 50 LIMIT 1000",
  );
  equal(
    rewrite("WITH recent AS (SELECT 1) SELECT * FROM events, recent"),
    "WITH recent AS (SELECT 1) SELECT * FROM events, recent LIMIT 1000",
  );
  equal(rewrite("(SELECT * FROM events)"), "(SELECT * FROM events) LIMIT 1000");
  equal(rewrite("SELECT count(*) FROM events"), "SELECT count(*) FROM events LIMIT 1000");
});

Deno.test("trailing semicolons, whitespace and comments are handled", () => {
  setup({ tables: ["events"], limit: LIMIT });
  equal(rewrite("SELECT * FROM events;"), "SELECT * FROM events LIMIT 1000");
  equal(rewrite("SELECT * FROM events ;  \n"), "SELECT * FROM events LIMIT 1000");
  equal(rewrite("SELECT * FROM events;;"), "SELECT * FROM events LIMIT 1000");
  equal(
    rewrite("SELECT * FROM events -- all of them"),
    "SELECT * FROM events LIMIT 1000 -- all of them",
  );
  equal(
    rewrite("SELECT * FROM events -- all; of them\n;"),
    "SELECT * FROM events LIMIT 1000 -- all; of them",
  );
  equal(
    rewrite("/* tenant: acme */ SELECT * FROM events /* trailing */ ; -- done"),
    "/* tenant: acme */ SELECT * FROM events LIMIT 1000 /* trailing */ -- done",
  );
  equal(
    rewrite("SELECT * FROM events -- one\n-- two\n/* three */"),
    "SELECT * FROM events LIMIT 1000 -- one\n -- two\n /* three */",
  );
  // Semicolons and comment markers inside literals are part of the statement.
  equal(
    rewrite("SELECT * FROM events WHERE note = ';' AND tag = '--x'"),
    "SELECT * FROM events WHERE note = ';' AND tag = '--x' LIMIT 1000",
  );
  equal(
    rewrite("SELECT * FROM events WHERE body = $$;--$$"),
    "SELECT * FROM events WHERE body = $$;--$$ LIMIT 1000",
  );
  equal(
    rewrite("SELECT * FROM events WHERE note = E'it\\'s; -- x'; "),
    "SELECT * FROM events WHERE note = E'it\\'s; -- x' LIMIT 1000",
  );
  equal(
    rewrite("SELECT \"a;b\" FROM events WHERE x = 'é';"),
    "SELECT \"a;b\" FROM events WHERE x = 'é' LIMIT 1000",
  );
});

Deno.test("bounded, locking, set-operation and non-SELECT statements are left alone", () => {
  setup({ tables: ["events"], limit: LIMIT });
  for (
    const sql of [
      "SELECT * FROM events LIMIT 10",
      "SELECT * FROM events LIMIT $1",
      "SELECT * FROM events LIMIT ALL",
      "SELECT * FROM events ORDER BY id FETCH FIRST 5 ROWS ONLY",
      "SELECT * FROM events FOR UPDATE",
      "SELECT * FROM events FOR SHARE SKIP LOCKED",
      "SELECT * FROM events UNION SELECT * FROM events",
      "SELECT * FROM events EXCEPT SELECT * FROM events WHERE false",
      "SELECT * INTO TEMP copy FROM events",
      "VALUES (1), (2)",
      "INSERT INTO events SELECT * FROM staging",
      "DELETE FROM events WHERE id = 1",
      "EXPLAIN SELECT * FROM events",
      "DECLARE c CURSOR FOR SELECT * FROM events",
      "COPY (SELECT * FROM events) TO STDOUT",
      "SELECT * FROM events; SELECT * FROM events",
      "SELEC * FROM events",
      "",
    ]
  ) {
    equal(rewrite(sql), undefined, sql);
  }
});

Deno.test("only tables in the statement's own FROM list count", () => {
  setup({ tables: ["events", "audit.log"], limit: LIMIT });
  for (
    const sql of [
      "SELECT * FROM users",
      "SELECT * FROM users WHERE id IN (SELECT user_id FROM events)",
      "SELECT * FROM (SELECT * FROM events) e",
      "SELECT *, (SELECT count(*) FROM events) FROM users",
      "WITH e AS (SELECT * FROM events) SELECT * FROM e",
      "WITH events AS (SELECT 1 AS x) SELECT * FROM events", // the WITH query, not the table
      "SELECT * FROM log", // bare name; the entry names schema audit
      "SELECT * FROM public.log",
      'SELECT * FROM "Events"',
      "SELECT * FROM generate_series(1, 10)",
      "SELECT 'events'",
    ]
  ) {
    equal(rewrite(sql), undefined, sql);
  }
  equal(
    rewrite("WITH events AS (SELECT 1 AS x) SELECT * FROM public.events"),
    "WITH events AS (SELECT 1 AS x) SELECT * FROM public.events LIMIT 1000",
  );
  equal(rewrite("SELECT * FROM EVENTS"), "SELECT * FROM EVENTS LIMIT 1000");
});

Deno.test("statements sent to every shard are left alone; one shard is fine", () => {
  setup({ tables: ["events"], limit: LIMIT });
  const sql = "SELECT * FROM events";
  equal(
    rewrite(sql, {
      cluster: { shards: 4, replicas: false },
      decision: { role: "primary", shard: "all" },
    }),
    undefined,
  );
  equal(
    rewrite(sql, {
      cluster: { shards: 4, replicas: false },
      decision: { role: "primary", shard: 2 },
    }),
    "SELECT * FROM events LIMIT 1000",
  );
  equal(
    rewrite(sql, {
      cluster: { shards: 1, replicas: false },
      decision: { role: "primary", shard: "all" },
    }),
    "SELECT * FROM events LIMIT 1000",
  );
});

Deno.test("the limit is configurable and defaults to 1000", () => {
  setup({ tables: ["events"], limit: 25 });
  equal(
    (plugin.route!(context("SELECT * FROM events")) as RouteAnswer).rewrite,
    "SELECT * FROM events LIMIT 25",
  );
  setup({ tables: ["events"] });
  equal(rewrite("SELECT * FROM events"), "SELECT * FROM events LIMIT 1000");
});

Deno.test("odd input never throws", () => {
  setup({ tables: ["events"], limit: LIMIT });
  const ctx = context("SELECT * FROM events");
  equal(plugin.route!({ ...ctx, statement: null }), undefined);
  equal(plugin.route!({ ...ctx, query: undefined as never }), undefined);
  equal(plugin.route!({ ...ctx, statement: { version: 1, stmts: [{}] } }), undefined);
  equal(
    plugin.route!({ ...ctx, statement: { version: 1, stmts: [{ stmt: { SelectStmt: {} } }] } }),
    undefined,
  );
  equal(
    plugin.route!({
      ...ctx,
      statement: {
        version: 1,
        stmts: [{ stmt: { SelectStmt: { fromClause: [null, { RangeVar: {} }] } } }],
      },
    }),
    undefined,
  );
  equal(
    plugin.route!({ ...ctx, decision: undefined as never, cluster: undefined as never }) !==
      undefined,
    true,
  );
});

Deno.test("init refuses bad configuration", () => {
  throws(() => setup(undefined as never), /config\.tables must be an array/);
  throws(() => setup({ tables: "events" as never }), /config\.tables must be an array/);
  throws(() => setup({ tables: [""] }), /must hold table names, got ""/);
  throws(() => setup({ tables: ["events"], limit: 0 }), /config\.limit must be .* got 0/);
  throws(() => setup({ tables: ["events"], limit: 2.5 }), /got 2\.5/);
  throws(() => setup({ tables: ["events"], limit: "10" as never }), /got "10"/);
  setup({ tables: [] });
  equal(plugin.route!(context("SELECT * FROM events")), undefined);
});
