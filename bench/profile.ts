/**
 * Quick A/B runs and CPU profiles of pgdog under pgbench (see bench/profile.md).
 *
 * ```sh
 * # TPS of this checkout and of another one, interleaved, 3 rounds of 5 s per workload:
 * deno run -A bench/profile.ts --entry mod.ts --entry /tmp/pgdog-base/mod.ts --rounds 3
 * # a CPU profile of pgdog (written when it exits) for each workload:
 * deno run -A bench/profile.ts --cpu-prof /tmp/pgdog-prof --rounds 1
 * ```
 *
 * Options: --entry PATH (repeatable; default this checkout), --pgbouncer (also PgBouncer),
 * --workload NAME (repeatable: "-S simple", "-S extended", "-S prepared", "tpcb simple"),
 * --clients N (16), --jobs N (2), --seconds N (5), --rounds N (2), --workers N[,N...] (1),
 * --plugin none|process|worker[,...] (none: pgdog without plugins; process, worker: with the
 * trivial route plugin of tests/plugins/trivial.ts in that isolation), --cpu-prof DIR.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  freePort,
  pgbench,
  type PgTarget,
  runCommand,
  startPostgres,
  startProxy,
} from "../tests/harness/mod.ts";

const WORKLOADS: Record<string, string[]> = {
  "-S simple": ["-S", "-M", "simple"],
  "-S extended": ["-S", "-M", "extended"],
  "-S prepared": ["-S", "-M", "prepared"],
  "tpcb simple": ["-M", "simple"],
};

const args = parseArgs({
  args: Deno.args,
  options: {
    entry: { type: "string", multiple: true },
    workload: { type: "string", multiple: true },
    clients: { type: "string", default: "16" },
    jobs: { type: "string", default: "2" },
    seconds: { type: "string", default: "5" },
    rounds: { type: "string", default: "2" },
    workers: { type: "string", default: "1" },
    "pool-size": { type: "string", default: "10" },
    pgbouncer: { type: "boolean", default: false },
    "cpu-prof": { type: "string" },
    plugin: { type: "string", default: "none" },
  },
}).values;
const entries = (args.entry ?? [new URL("../mod.ts", import.meta.url).pathname]).map((e) =>
  e.startsWith("/") ? e : `${Deno.cwd()}/${e}`
);
const workloads = args.workload ?? ["-S simple", "-S extended"];
for (const w of workloads) if (!(w in WORKLOADS)) throw new Error(`unknown workload "${w}"`);
const poolSize = Number(args["pool-size"]);

await using pg = await startPostgres({
  roles: [{ name: "bench", password: "bench", auth: "md5" }],
  databases: [{ name: "bench", owner: "bench" }],
  settings: { max_connections: 400 },
});
const direct: PgTarget = {
  host: pg.host,
  port: pg.port,
  user: "bench",
  password: "bench",
  database: "bench",
};
const init = await pgbench(direct, ["-i", "-s", "10", "-q"]);
if (init.code !== 0) throw new Error(`pgbench -i failed: ${init.stderr}`);

const targets: Array<{ name: string; target: PgTarget; stop: () => Promise<unknown> }> = [];
const workerCounts = args.workers!.split(",").map(Number);
const pluginModes = args.plugin!.split(",");
for (const mode of pluginModes) {
  if (!["none", "process", "worker"].includes(mode)) throw new Error(`--plugin: unknown ${mode}`);
}
const trivial = new URL("../tests/plugins/trivial.ts", import.meta.url).pathname;
for (const [i, entry] of entries.entries()) {
  for (const workers of workerCounts) {
    for (const mode of pluginModes) {
      // Another checkout's files (and its node_modules) must be readable too.
      const flags = [`--allow-read=${entry.slice(0, entry.lastIndexOf("/"))}`];
      if (args["cpu-prof"]) flags.push("--cpu-prof", `--cpu-prof-dir=${args["cpu-prof"]}`);
      if (mode !== "none") flags.push("--allow-run");
      const proxy = await startProxy({
        entry,
        denoFlags: flags,
        config: {
          ...(mode === "none"
            ? {}
            : { plugins: [{ name: "trivial", path: trivial, timeout: 5000, isolation: mode }] }),
          general: {
            default_pool_size: poolSize,
            auth_type: "md5",
            workers,
            log_connections: false,
            log_disconnections: false,
          },
          databases: [{ name: "bench", host: pg.host, port: pg.port }],
        },
        users: { users: [{ name: "bench", database: "bench", password: "bench" }] },
      });
      targets.push({
        name: `pgdog${entries.length > 1 ? `#${i}` : ""}${
          workerCounts.length > 1 ? ` w=${workers}` : ""
        }${pluginModes.length > 1 || mode !== "none" ? ` plugin=${mode}` : ""}`,
        target: proxy.target({ user: "bench", password: "bench", database: "bench" }),
        stop: () => proxy.stop({ timeoutMs: 30_000 }),
      });
    }
  }
}
if (args.pgbouncer) {
  const bouncer = await pgbouncer(pg, poolSize);
  targets.push({ name: "pgbouncer", target: bouncer.target, stop: () => bouncer.stop() });
}

try {
  for (const workload of workloads) {
    const tps = new Map<string, number[]>();
    for (let round = 0; round < Number(args.rounds); round++) {
      for (const t of targets) {
        const r = await pgbench(t.target, [
          ...WORKLOADS[workload],
          "-n",
          "-c",
          args.clients!,
          "-j",
          args.jobs!,
          "-T",
          args.seconds!,
        ]);
        if (r.code !== 0 || (r.failed ?? 0) > 0) {
          console.log(`${workload} ${t.name}: failed (${r.failed ?? "exit " + r.code})`);
          console.log(r.stderr.slice(-2000));
        }
        const list = tps.get(t.name) ?? [];
        list.push(r.tps ?? 0);
        tps.set(t.name, list);
      }
    }
    for (const [name, list] of tps) {
      const sorted = [...list].sort((a, b) => a - b);
      const median = sorted[Math.floor(sorted.length / 2)];
      console.log(
        `${workload.padEnd(12)} c=${args.clients} ${name}: median ${median.toFixed(0)} tps ` +
          `(${list.map((x) => x.toFixed(0)).join(", ")})`,
      );
    }
  }
} finally {
  for (const t of targets) await t.stop();
}

/** PgBouncer (transaction mode, md5, the same pool size) in front of `pg`, as a daemon. */
async function pgbouncer(
  pg: { host: string; port: number },
  size: number,
): Promise<{ target: PgTarget; stop: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "pgdog-profile-pgbouncer-" });
  const port = await freePort();
  const ini = [
    "[databases]",
    `bench = host=${pg.host} port=${pg.port} dbname=bench`,
    "[pgbouncer]",
    "listen_addr = 127.0.0.1",
    `listen_port = ${port}`,
    "auth_type = md5",
    `auth_file = ${dir}/users.txt`,
    "pool_mode = transaction",
    `default_pool_size = ${size}`,
    "max_client_conn = 2000",
    "unix_socket_dir =",
    `logfile = ${dir}/pgbouncer.log`,
    `pidfile = ${dir}/pgbouncer.pid`,
  ];
  await Deno.writeTextFile(`${dir}/users.txt`, `"bench" "bench"\n`);
  await Deno.writeTextFile(`${dir}/pgbouncer.ini`, ini.join("\n") + "\n");
  const root = Deno.uid() === 0;
  if (root) await runCommand("chown", ["-R", "postgres", dir]);
  const cmd = root
    ? ["runuser", "-u", "postgres", "--", "pgbouncer", "-d", `${dir}/pgbouncer.ini`]
    : ["pgbouncer", "-d", `${dir}/pgbouncer.ini`];
  const started = await runCommand(cmd[0], cmd.slice(1));
  if (started.code !== 0) throw new Error(`pgbouncer failed to start: ${started.stderr}`);
  await new Promise((r) => setTimeout(r, 500));
  return {
    target: { host: "127.0.0.1", port, user: "bench", password: "bench", database: "bench" },
    stop: async () => {
      const pid = (await Deno.readTextFile(`${dir}/pgbouncer.pid`).catch(() => "")).trim();
      if (pid) await runCommand("kill", [pid]);
      await new Promise((r) => setTimeout(r, 200));
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
