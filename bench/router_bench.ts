/**
 * `deno bench bench/router_bench.ts`: what routing costs per query. A cache hit is the lexical
 * normalization plus a map lookup; a miss adds PostgreSQL's parser (WebAssembly) and the
 * analysis. Goals: under 5 µs for a hit, under 40 µs for a miss on typical OLTP statements.
 *
 * @module
 */

import { loadParser, QueryRouter } from "../src/router/mod.ts";
import { chooseRole } from "../src/router/route.ts";

await loadParser();

const OLTP = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213";
const UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + -4211 WHERE aid = 48213";
const JOIN =
  "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id " +
  "WHERE o.customer_id = 42 AND o.created_at > '2024-01-01' ORDER BY o.created_at DESC LIMIT 20";
const route = { override: null, strategy: "conservative" as const, deferredBegin: false };

const hits = new QueryRouter({ cacheLimit: 1000 });
hits.analyze(OLTP);
hits.analyze(UPDATE);
hits.analyze(JOIN);
let n = 0;

Deno.bench("cache hit: pgbench SELECT (literal differs each time)", {
  group: "hit",
  baseline: true,
}, () => {
  chooseRole(
    hits.analyze(`SELECT abalance FROM pgbench_accounts WHERE aid = ${n++ % 100000}`),
    route,
  );
});

Deno.bench("cache hit: pgbench UPDATE", { group: "hit" }, () => {
  chooseRole(
    hits.analyze(`UPDATE pgbench_accounts SET abalance = abalance + ${n++ % 5000} WHERE aid = 7`),
    route,
  );
});

Deno.bench("cache hit: join with ORDER BY and LIMIT", { group: "hit" }, () => {
  chooseRole(hits.analyze(JOIN), route);
});

// A limit of one entry and alternating texts: every call is a miss (parse + analysis).
const misses = new QueryRouter({ cacheLimit: 1 });
let flip = 0;

Deno.bench("cache miss: pgbench SELECT", { group: "miss", baseline: true }, () => {
  flip ^= 1;
  chooseRole(misses.analyze(flip ? OLTP : `${OLTP} FOR SHARE`), route);
});

Deno.bench("cache miss: pgbench UPDATE", { group: "miss" }, () => {
  flip ^= 1;
  chooseRole(misses.analyze(flip ? UPDATE : `${UPDATE} RETURNING aid`), route);
});

Deno.bench("cache miss: join with ORDER BY and LIMIT", { group: "miss" }, () => {
  flip ^= 1;
  chooseRole(misses.analyze(flip ? JOIN : `${JOIN} OFFSET 5`), route);
});
