import { loadParser, QueryRouter } from "./src/router/mod.ts";
import { decideShard } from "./src/router/shard.ts";
import { describeMergePlan } from "./src/router/merge_plan.ts";
await loadParser();
const config = { shards: 3, tables: [{ name: "users", column: "id", type: "bigint", mapping: [] }, { name: "orders", column: "user_id", type: "bigint", mapping: [] }], schemas: new Map(), omni: new Set(["countries"]), merge: true } as any;
const r = new QueryRouter({ cacheLimit: 10 });
for (const sql of Deno.args) {
  const d = decideShard(r.analyze(sql), { config, lookup: { found: [], pluginShards: new Map(), missing: [], columns: () => ["id", "email", "country"], missingColumns: [] } });
  console.log(sql, "\n  ", d.unsupported ?? d.reason);
  if (d.merge) { console.log("  ", describeMergePlan(d.merge)); console.log("  ", JSON.stringify(d.merge)); }
}
