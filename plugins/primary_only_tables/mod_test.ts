import { deepEqual, equal, throws } from "node:assert/strict";
import { loadModule, parseSync } from "libpg-query";
import type { PluginTable, RouteAnswer, RouteContext } from "@pgdog/pgdog/plugin";
import plugin, { type PrimaryOnlyTablesConfig } from "./mod.ts";

await loadModule();

/**
 * A route context for `query` as pgdog builds it: libpg-query's tree (through JSON), every table
 * the tree names, and `write` unless every statement is a plain SELECT.
 */
function context(query: string, over: Partial<RouteContext> = {}): RouteContext {
  let statement: RouteContext["statement"] = null;
  try {
    statement = JSON.parse(JSON.stringify(parseSync(query)));
  } catch {
    // Unparsable text: pgdog passes statement = null.
  }
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
  const reads = statement !== null && statement.stmts.every(({ stmt }) => {
    const select = (stmt as { SelectStmt?: Record<string, unknown> }).SelectStmt;
    return select !== undefined && !select.lockingClause && !select.intoClause;
  });
  return {
    query,
    statement,
    params: [],
    tables,
    shardingKeys: [],
    write: !reads,
    inTransaction: false,
    cluster: { shards: 1, replicas: true },
    decision: { role: reads ? "replica" : "primary", shard: null },
    user: "app",
    database: "app",
    applicationName: "",
    ...over,
  };
}

function setup(config: PrimaryOnlyTablesConfig): void {
  plugin.init!(config);
}

function route(query: string, over: Partial<RouteContext> = {}): RouteAnswer | undefined {
  return plugin.route!(context(query, over)) as RouteAnswer | undefined;
}

const PRIMARY = { role: "primary" };

Deno.test("reads of a listed table go to the primary", () => {
  setup({ tables: ["orders", "billing.invoices"] });
  deepEqual(route("SELECT * FROM orders WHERE id = $1"), PRIMARY);
  deepEqual(route("SELECT o.* FROM customers c JOIN orders o ON o.customer_id = c.id"), PRIMARY);
  deepEqual(route("SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders)"), PRIMARY);
  deepEqual(route("WITH recent AS (SELECT * FROM orders) SELECT count(*) FROM recent"), PRIMARY);
  deepEqual(route("SELECT 1; SELECT * FROM orders"), PRIMARY);
  deepEqual(route("SELECT * FROM billing.invoices"), PRIMARY);
});

Deno.test("reads of other tables, and queries naming no table, get no opinion", () => {
  setup({ tables: ["orders", "billing.invoices"] });
  equal(route("SELECT * FROM customers"), undefined);
  equal(route("SELECT * FROM orders_archive"), undefined);
  equal(route("SELECT 'orders' AS name"), undefined);
  equal(route("SELECT now()"), undefined);
  equal(route("SELECT * FROM order_lines"), undefined);
});

Deno.test("schema rules: bare entries match any schema, qualified entries only that schema", () => {
  setup({ tables: ["orders", "billing.invoices"] });
  deepEqual(route("SELECT * FROM sales.orders"), PRIMARY);
  deepEqual(route("SELECT * FROM public.orders"), PRIMARY);
  equal(route("SELECT * FROM invoices"), undefined);
  equal(route("SELECT * FROM archive.invoices"), undefined);
  // Listing both forms covers search_path users too.
  setup({ tables: ["billing.invoices", "invoices"] });
  deepEqual(route("SELECT * FROM invoices"), PRIMARY);
  deepEqual(route("SELECT * FROM archive.invoices"), PRIMARY);
});

Deno.test("names compare as PostgreSQL stores them", () => {
  setup({ tables: ["orders", "Audit Log"] });
  deepEqual(route("SELECT * FROM ORDERS"), PRIMARY); // unquoted: folded to lower case
  equal(route('SELECT * FROM "Orders"'), undefined); // quoted: a different table
  deepEqual(route('SELECT * FROM "Audit Log"'), PRIMARY);
});

Deno.test("writes are left alone: pgdog sends them to the primary already", () => {
  setup({ tables: ["orders"] });
  equal(route("INSERT INTO orders (id) VALUES (1)"), undefined);
  equal(route("UPDATE orders SET paid = true WHERE id = 1"), undefined);
  equal(route("SELECT * FROM orders FOR UPDATE"), undefined);
  equal(route("SELECT * FROM customers", { write: true }), undefined);
});

Deno.test("odd input never throws", () => {
  setup({ tables: ["orders"] });
  equal(route("SELEC * FROM orders"), undefined); // unparsable: no tables
  equal(route(""), undefined);
  const ctx = context("SELECT * FROM orders");
  equal(plugin.route!({ ...ctx, tables: undefined as never }), undefined);
  deepEqual(plugin.route!({ ...ctx, tables: [null as never, { name: "orders" }] }), PRIMARY);
  equal(plugin.route!({ ...ctx, tables: [{ schema: "x" } as never] }), undefined);
});

Deno.test("init refuses bad configuration", () => {
  throws(() => setup({} as never), /config\.tables must be an array of table names/);
  throws(() => setup({ tables: "orders" as never }), /must be an array/);
  throws(() => setup({ tables: ["orders", 3 as never] }), /must hold table names, got 3/);
  throws(() => setup(undefined as never), /must be an array/);
  setup({ tables: [] });
  equal(route("SELECT * FROM orders"), undefined);
});
