import { deepEqual, equal, match, throws } from "node:assert/strict";
import { loadModule, parseSync } from "libpg-query";
import type { PluginTable, RouteAnswer, RouteContext } from "@pgdog/pgdog/plugin";
import plugin, { type TenantRouterConfig } from "./mod.ts";

await loadModule();

/** A route context for `query` as pgdog builds it: libpg-query's tree (through JSON), its tables. */
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
  return {
    query,
    statement,
    params: [],
    tables,
    shardingKeys: [],
    write: !/^\s*(\/\*.*?\*\/\s*)*select\b/is.test(query),
    inTransaction: false,
    cluster: { shards: 3, replicas: false },
    decision: { role: "primary", shard: "all" },
    user: "app",
    database: "app",
    applicationName: "",
    ...over,
  };
}

function setup(config: TenantRouterConfig): void {
  plugin.init!(config);
}

function route(query: string, applicationName = ""): RouteAnswer | undefined {
  return plugin.route!(context(query, { applicationName })) as RouteAnswer | undefined;
}

const TENANTS = { acme: 0, globex: 1, initech: 2, everyone: "all" as const };

Deno.test("a tenant comment picks the shard", () => {
  setup({ tenants: TENANTS });
  deepEqual(route("/* tenant: acme */ SELECT * FROM orders"), { shard: 0 });
  deepEqual(route("SELECT * FROM orders WHERE id = $1 /* tenant: globex */"), { shard: 1 });
  deepEqual(route("/*tenant:initech*/ UPDATE orders SET paid = true WHERE id = 3"), { shard: 2 });
  deepEqual(route("/* TENANT : acme */ SELECT 1 FROM orders"), { shard: 0 });
  deepEqual(route("/* tenant: everyone */ SELECT count(*) FROM orders"), { shard: "all" });
  // sqlcommenter style, among other keys.
  deepEqual(
    route("SELECT * FROM orders /*action='list',controller='orders',tenant='globex'*/"),
    { shard: 1 },
  );
  deepEqual(route('SELECT * FROM orders /* tenant="initech" */'), { shard: 2 });
  // The same tenant named twice (for example in each statement) is one tenant.
  deepEqual(
    route("/* tenant: acme */ SELECT 1 FROM a; /* tenant: acme */ SELECT 2 FROM b"),
    { shard: 0 },
  );
});

Deno.test("text in literals, identifiers and line comments never names a tenant", () => {
  setup({ tenants: TENANTS });
  equal(route("SELECT '/* tenant: acme */' FROM orders"), undefined);
  equal(route("SELECT E'it\\'s /* tenant: acme */' FROM orders"), undefined);
  equal(route("SELECT 'it''s /* tenant: acme */' FROM orders"), undefined);
  equal(route('SELECT 1 AS "/* tenant: acme */" FROM orders'), undefined);
  equal(route("SELECT $$ /* tenant: acme */ $$ FROM orders"), undefined);
  equal(route("SELECT $q$ $$ /* tenant: acme */ $q$ FROM orders"), undefined);
  equal(route("SELECT 1 FROM orders -- /* tenant: acme */"), undefined);
  equal(route("SELECT 1 FROM orders /* subtenant: acme, my_tenant: globex */"), undefined);
  // After a literal that ends properly, a real comment still counts.
  deepEqual(route("SELECT 'x''y', $1 FROM orders /* tenant: globex */"), { shard: 1 });
  deepEqual(route("SELECT $a$ ' $a$ FROM t /* tenant: initech */"), { shard: 2 });
  // Nested block comments are one comment.
  deepEqual(route("/* outer /* inner */ tenant: acme */ SELECT 1 FROM t"), { shard: 0 });
});

Deno.test("application_name names the tenant when no comment does", () => {
  setup({ tenants: TENANTS });
  deepEqual(route("SELECT * FROM orders", "tenant:globex"), { shard: 1 });
  deepEqual(route("SELECT * FROM orders", "tenant: initech"), { shard: 2 });
  equal(route("SELECT * FROM orders", "globex"), undefined); // prefix mode needs "tenant:"
  equal(route("SELECT * FROM orders", "tenant:"), undefined);
  // A comment overrides the connection's tenant.
  deepEqual(route("/* tenant: acme */ SELECT * FROM orders", "tenant:globex"), { shard: 0 });

  setup({ tenants: TENANTS, application_name: "exact" });
  deepEqual(route("SELECT * FROM orders", "globex"), { shard: 1 });
  equal(route("SELECT * FROM orders", "tenant:globex"), undefined);
  equal(route("SELECT * FROM orders", "Globex"), undefined); // names are case-sensitive

  setup({ tenants: TENANTS, application_name: "off" });
  equal(route("SELECT * FROM orders", "tenant:globex"), undefined);
  deepEqual(route("/* tenant: globex */ SELECT * FROM orders", "tenant:acme"), { shard: 1 });
});

Deno.test("unknown or missing tenants: no opinion, the default, or blocked", () => {
  setup({ tenants: TENANTS });
  equal(route("/* tenant: hooli */ SELECT * FROM orders"), undefined);
  equal(route("SELECT * FROM orders"), undefined);

  setup({ tenants: TENANTS, default: 2 });
  deepEqual(route("SELECT * FROM orders"), { shard: 2 });
  equal(route("/* tenant: hooli */ SELECT * FROM orders"), undefined);
  deepEqual(route("/* tenant: globex */ SELECT * FROM orders"), { shard: 1 });

  setup({ tenants: TENANTS, require_tenant: true });
  equal(
    route("SELECT * FROM orders")?.block,
    "no tenant given; add a /* tenant: <name> */ comment or connect with application_name " +
      "'tenant:<name>' (the tenant_router plugin requires one)",
  );
  equal(
    route("/* tenant: hooli */ DELETE FROM orders WHERE id = 1")?.block,
    'unknown tenant "hooli" (from a tenant comment); the tenant_router plugin has no shard for it',
  );
  match(route("SELECT * FROM orders", "tenant:hooli")!.block!, /"hooli" \(from application_name\)/);
  // Statements without tables (transaction control, settings, health checks) pass.
  for (
    const sql of ["BEGIN", "COMMIT", "SET statement_timeout = 1000", "SELECT 1", "SHOW TimeZone"]
  ) {
    equal(route(sql), undefined, sql);
  }
  deepEqual(route("SELECT * FROM orders", "tenant:acme"), { shard: 0 });
});

Deno.test("two different tenants in one query are refused", () => {
  setup({ tenants: TENANTS });
  equal(
    route("/* tenant: acme */ SELECT 1 FROM a; /* tenant: globex */ SELECT 2 FROM b")?.block,
    'the query names 2 tenants ("acme", "globex"); the tenant_router plugin routes each query ' +
      "to one tenant",
  );
});

Deno.test("a tenant mapped past the last shard is refused", () => {
  setup({ tenants: { acme: 0, big: 5 } });
  equal(
    route("/* tenant: big */ SELECT * FROM orders")?.block,
    'tenant "big" maps to shard 5, but database "app" has 3 shards (tenant_router plugin ' +
      "configuration)",
  );
  deepEqual(route("/* tenant: acme */ SELECT * FROM orders"), { shard: 0 });
});

Deno.test("odd input never throws", () => {
  setup({ tenants: TENANTS, require_tenant: true });
  deepEqual(route("/* tenant: acme */ SELEC * FROM"), { shard: 0 }); // unparsable, comment read
  equal(route("SELEC * FROM orders"), undefined); // unparsable: no tables known
  equal(route("/* tenant: acme "), undefined); // an unterminated comment is not read
  equal(route("SELECT 1 FROM t /* tenant: acme"), undefined);
  equal(route("SELECT 'unterminated /* tenant: acme */"), undefined);
  equal(route("SELECT $$ unterminated /* tenant: acme */"), undefined);
  const ctx = context("SELECT * FROM orders");
  equal(
    plugin.route!({ ...ctx, query: undefined as never, tables: undefined as never }),
    undefined,
  );
  match(
    (plugin.route!({ ...ctx, applicationName: undefined as never }) as RouteAnswer).block!,
    /^no tenant given/,
  );
  deepEqual(
    plugin.route!({ ...ctx, query: "/* tenant: globex */", cluster: undefined as never }),
    { shard: 1 },
  );
});

Deno.test("init refuses bad configuration", () => {
  throws(() => setup(undefined as never), /config\.tenants is required/);
  throws(() => setup({} as never), /config\.tenants must be a table/);
  throws(() => setup({ tenants: [] as never }), /config\.tenants must be a table/);
  throws(
    () => setup({ tenants: { a: -1 } }),
    /config\.tenants\.a must be a shard number .* got -1/,
  );
  throws(() => setup({ tenants: { a: "1" as never } }), /got "1"/);
  throws(() => setup({ tenants: { a: 1.5 } }), /got 1\.5/);
  throws(() => setup({ tenants: {}, default: "some" as never }), /config\.default must be/);
  throws(() => setup({ tenants: {}, application_name: "suffix" as never }), /"prefix", "exact"/);
  throws(() => setup({ tenants: {}, require_tenant: "yes" as never }), /true or false/);
  throws(() => setup({ tenants: {}, default: 0, require_tenant: true }), /cannot be combined/);
  setup({ tenants: {} });
  equal(route("/* tenant: acme */ SELECT * FROM orders"), undefined);
});
