/**
 * What pgdog keeps per idle client: heap snapshots (over the V8 inspector) before and after N idle
 * logins, grouped by object type and constructor, printed as bytes and objects per client, largest
 * first. A diagnostic for the memory figure of `deno task bench`, not part of it (taking snapshots
 * inflates the resident memory, which is why RSS is not shown here).
 *
 * ```
 * deno run --allow-all bench/idle_heap.ts [--idle 2000] [--top 25]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { freePort, startPostgres, startProxy } from "../tests/harness/mod.ts";
import { connectInspector } from "./inspector.ts";
import { openIdleClients } from "./idle_clients.ts";

/** Object type and name (constructor, or the string's kind) to total self size and count. */
type Census = Map<string, { bytes: number; count: number }>;

/** Groups a V8 heap snapshot's nodes by type and name. */
function census(snapshotText: string): Census {
  const snap = JSON.parse(snapshotText) as {
    snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
    nodes: number[];
    strings: string[];
  };
  const fields = snap.snapshot.meta.node_fields;
  const width = fields.length;
  const typeAt = fields.indexOf("type");
  const nameAt = fields.indexOf("name");
  const sizeAt = fields.indexOf("self_size");
  const types = snap.snapshot.meta.node_types[0];
  const out: Census = new Map();
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + typeAt]];
    // Strings and code are grouped by type only; objects by constructor name.
    const name = type === "object" || type === "closure" || type === "native"
      ? snap.strings[snap.nodes[i + nameAt]]
      : "";
    const key = name ? `${type} ${name.slice(0, 60)}` : type;
    const entry = out.get(key) ?? { bytes: 0, count: 0 };
    entry.bytes += snap.nodes[i + sizeAt];
    entry.count++;
    out.set(key, entry);
  }
  return out;
}

const args = parseArgs({
  args: Deno.args,
  options: { idle: { type: "string", default: "2000" }, top: { type: "string", default: "25" } },
}).values;
const idle = Number(args.idle);

await using pg = await startPostgres({
  roles: [{ name: "bench", password: "bench", auth: "md5" }],
  databases: [{ name: "bench", owner: "bench" }],
});
const inspectPort = await freePort();
await using proxy = await startProxy({
  config: {
    general: { auth_type: "md5", log_connections: false, log_disconnections: false },
    databases: [{ name: "bench", host: pg.host, port: pg.port }],
  },
  users: { users: [{ name: "bench", database: "bench", password: "bench" }] },
  denoFlags: [`--inspect=127.0.0.1:${inspectPort}`],
});
const target = proxy.target({ user: "bench", password: "bench", database: "bench" });
// Warm up the login path so that compiled code and caches are in the "before" snapshot.
await (await openIdleClients(target, 100)).close();
await new Promise((r) => setTimeout(r, 1000));

const session = await connectInspector(inspectPort);
try {
  const before = census(await session.heapSnapshot());
  const usageBefore = await session.collectAndMeasure();
  const clients = await openIdleClients(target, idle);
  await new Promise((r) => setTimeout(r, 1000));
  const after = census(await session.heapSnapshot());
  const usageAfter = await session.collectAndMeasure();
  await clients.close();

  const per = (x: number): string => (x / idle).toFixed(1);
  console.log(
    `${idle} idle clients, per client: JS heap ${
      per(usageAfter.usedSize - usageBefore.usedSize)
    } ` +
      `bytes; ArrayBuffers ` +
      `${per((usageAfter.backingStorageSize ?? 0) - (usageBefore.backingStorageSize ?? 0))}`,
  );
  const rows = [...new Set([...before.keys(), ...after.keys()])].map((key) => {
    const a = before.get(key) ?? { bytes: 0, count: 0 };
    const b = after.get(key) ?? { bytes: 0, count: 0 };
    return { key, bytes: b.bytes - a.bytes, count: b.count - a.count };
  }).sort((x, y) => y.bytes - x.bytes);
  console.log("\n| bytes per client | objects per client | type and constructor |");
  console.log("|---|---|---|");
  for (const r of rows.slice(0, Number(args.top))) {
    console.log(`| ${per(r.bytes)} | ${per(r.count)} | ${r.key} |`);
  }
  const total = rows.reduce((s, r) => s + r.bytes, 0);
  console.log(`\nall snapshot nodes: ${per(total)} bytes per client`);
} finally {
  session.close();
}
