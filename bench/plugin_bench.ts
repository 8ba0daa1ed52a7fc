/**
 * `deno bench -A bench/plugin_bench.ts`: what one call to a trivial `route` plugin costs, for
 * each isolation: a sequential round trip (what one client waits) and 16 calls in flight at once
 * (what many clients see; divide by 16 for the cost per call). Goals: under 60 µs median for a process, under 30 µs for a worker.
 *
 * Before the benchmarks run, the file prints the median and p99 of 5,000 sequential calls per
 * isolation (`deno bench` itself reports the average, p75 and p99), and pgdog's CPU time per call
 * with 1 and 16 calls in flight.
 *
 * @module
 */

import { PluginSet, type RouteStatement } from "../src/plugin/mod.ts";
import type { PluginConfig } from "../src/config/types.ts";
import { routeContextJson } from "../src/frontend/plugin_context.ts";
import { processCpuMs } from "./cpu_time.ts";

const TRIVIAL = new URL("../tests/plugins/trivial.ts", import.meta.url).pathname;
const CTX = JSON.stringify({
  query: "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
  statement: null,
  params: ["48213"],
  tables: [{ name: "pgbench_accounts" }],
  shardingKeys: [],
  write: false,
  inTransaction: false,
  cluster: { shards: 1, replicas: false },
  decision: { role: "primary", shard: null },
  user: "bench",
  database: "bench",
  applicationName: "pgbench",
});
const STATEMENT: RouteStatement = {
  sql: "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
  shape: "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
  user: "bench",
  database: "bench",
  applicationName: "pgbench",
  shards: 1,
  replicas: false,
  context: () => CTX,
};

function config(isolation: "process" | "worker"): PluginConfig {
  return {
    name: `trivial-${isolation}`,
    path: TRIVIAL,
    isolation,
    timeout: 5000,
    on_error: "fallback",
    memory_mb: 64,
    cache_size: 0,
  };
}

const sets = {
  process: await PluginSet.start([config("process")]),
  worker: await PluginSet.start([config("worker")]),
};

for (const [isolation, set] of Object.entries(sets)) {
  for (let i = 0; i < 500; i++) await set.route(STATEMENT);
  const times: number[] = [];
  for (let i = 0; i < 5000; i++) {
    const t = performance.now();
    await set.route(STATEMENT);
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  const us = (q: number) => (times[Math.floor(q * (times.length - 1))] * 1000).toFixed(1);
  console.log(`${isolation}: median ${us(0.5)} µs, p99 ${us(0.99)} µs (5,000 sequential calls)`);
  // This process's CPU per call (a worker's thread included): a lone call pays a whole wake-up
  // and send, calls in flight together share them (bench/profile.md).
  for (const inFlight of [1, 16]) {
    const cpu = processCpuMs();
    const start = performance.now();
    let calls = 0;
    while (performance.now() - start < 1000) {
      await Promise.all(Array.from({ length: inFlight }, () => set.route(STATEMENT)));
      calls += inFlight;
    }
    const perCall = ((processCpuMs() - cpu) * 1000 / calls).toFixed(1);
    console.log(`${isolation}: ${perCall} µs of pgdog's CPU per call, ${inFlight} in flight`);
  }
}

for (const isolation of ["process", "worker"] as const) {
  const set = sets[isolation];
  Deno.bench(`route call, ${isolation}, sequential`, { group: isolation }, async () => {
    await set.route(STATEMENT);
  });
  Deno.bench(`route calls, ${isolation}, 16 in flight (time for all 16)`, {
    group: isolation,
    n: 200,
  }, async (b) => {
    b.start();
    await Promise.all(Array.from({ length: 16 }, () => set.route(STATEMENT)));
    b.end();
  });
}

// Two pieces of the JavaScript pgdog runs per call, in a hot loop (the router's analysis of the
// text is in bench/router_bench.ts); in the running proxy a call costs far more (bench/profile.md).
const aid = new TextEncoder().encode("48213");
let id = 0;
Deno.bench("the context's JSON (a Bind with one value)", { group: "pgdog's side" }, () => {
  routeContextJson({
    sql: STATEMENT.sql,
    treeJson: "null",
    bind: { values: [aid], formats: [] },
    tablesJson: '[{"name":"pgbench_accounts"}]',
    keys: [],
    write: false,
    inTransaction: false,
    shards: 1,
    replicas: false,
    role: "primary",
    shard: null,
    user: "bench",
    database: "bench",
    applicationName: "pgbench",
  });
});
Deno.bench("the answer's frame parsed", { group: "pgdog's side" }, () => {
  JSON.parse(`{"id":${id++},"ok":null}`);
});

globalThis.addEventListener("unload", () => {
  for (const set of Object.values(sets)) set.close();
});
