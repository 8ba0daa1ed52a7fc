/**
 * `deno task bench`: pgbench against direct PostgreSQL, pgdog and (when installed) PgBouncer, in
 * one run, interleaved (A, B, C, A, B, C) so that machine drift hits every target alike. Prints
 * one table with TPS, latency and the ratios pgdog/PgBouncer and pgdog/direct, and writes it to
 * bench/results/.
 *
 * Options: --seconds N (per run, default 5), --rounds N (default 2), --clients 1,16.
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
import { VERSION } from "../src/version.ts";

interface Target {
  name: string;
  target: PgTarget;
}

interface Row {
  workload: string;
  clients: number;
  results: Map<string, { tps: number[]; latency: number[]; failed: number }>;
}

const args = parseArgs({
  args: Deno.args,
  options: {
    seconds: { type: "string", default: "5" },
    rounds: { type: "string", default: "2" },
    clients: { type: "string", default: "1,16" },
  },
}).values;
const seconds = Number(args.seconds);
const rounds = Number(args.rounds);
const clientCounts = args.clients!.split(",").map(Number);
const POOL_SIZE = 10;

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

await using proxy = await startProxy({
  config: {
    general: { default_pool_size: POOL_SIZE, auth_type: "md5" },
    databases: [{ name: "bench", host: pg.host, port: pg.port }],
  },
  users: { users: [{ name: "bench", database: "bench", password: "bench" }] },
});
const targets: Target[] = [
  { name: "direct", target: direct },
  { name: "pgdog", target: proxy.target({ user: "bench", password: "bench", database: "bench" }) },
];
const bouncer = await startPgbouncer(pg.host, pg.port);
if (bouncer) targets.push({ name: "pgbouncer", target: bouncer.target });

const workloads: Array<{ name: string; args: string[] }> = [
  { name: "-S simple", args: ["-S", "-M", "simple"] },
  { name: "-S extended", args: ["-S", "-M", "extended"] },
  { name: "tpcb simple", args: ["-M", "simple"] },
];
const rows: Row[] = [];
try {
  for (const workload of workloads) {
    for (const clients of clientCounts) {
      const row: Row = { workload: workload.name, clients, results: new Map() };
      rows.push(row);
      for (let round = 0; round < rounds; round++) {
        for (const t of targets) {
          const r = await pgbench(t.target, [
            ...workload.args,
            "-n",
            "-c",
            String(clients),
            "-j",
            String(Math.min(2, clients)),
            "-T",
            String(seconds),
          ]);
          const entry = row.results.get(t.name) ?? { tps: [], latency: [], failed: 0 };
          if (r.code === 0 && r.tps !== undefined) {
            entry.tps.push(r.tps);
            entry.latency.push(r.latencyAvgMs ?? NaN);
          }
          entry.failed += r.code === 0 ? (r.failed ?? 0) : 1;
          row.results.set(t.name, entry);
        }
      }
    }
  }
} finally {
  await bouncer?.stop();
}

const table = render(rows, targets.map((t) => t.name));
console.log(table);
const stamp = new Date().toISOString().replace(/[:.]/g, "-");
await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
const machine =
  `${Deno.build.os} ${Deno.build.arch}, ${navigator.hardwareConcurrency} cores, deno ${Deno.version.deno}`;
await Deno.writeTextFile(
  new URL(`./results/${stamp}.md`, import.meta.url),
  `# pgdog ${VERSION} benchmark, ${
    new Date().toISOString()
  }\n\n${machine}; pool_size ${POOL_SIZE}; ` +
    `${seconds} s per run, ${rounds} rounds, interleaved.\n\n${table}\n`,
);

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function render(rows: Row[], names: string[]): string {
  const head = [
    "workload",
    "clients",
    ...names.map((n) => `${n} tps`),
    ...names.map((n) => `${n} ms`),
  ];
  if (names.includes("pgbouncer")) head.push("pgdog/pgbouncer");
  head.push("pgdog/direct");
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`];
  for (const row of rows) {
    const tps = (n: string) => median(row.results.get(n)?.tps ?? []);
    const lat = (n: string) => median(row.results.get(n)?.latency ?? []);
    const cells = [row.workload, String(row.clients)];
    for (const n of names) cells.push(fmt(tps(n), 0) + failures(row, n));
    for (const n of names) cells.push(fmt(lat(n), 3));
    if (names.includes("pgbouncer")) cells.push(fmt(tps("pgdog") / tps("pgbouncer"), 2));
    cells.push(fmt(tps("pgdog") / tps("direct"), 2));
    lines.push(`| ${cells.join(" | ")} |`);
  }
  return lines.join("\n");
}

function failures(row: Row, name: string): string {
  const f = row.results.get(name)?.failed ?? 0;
  return f > 0 ? ` (${f} failed)` : "";
}

function fmt(x: number, digits: number): string {
  return Number.isFinite(x) ? x.toFixed(digits) : "n/a";
}

/** Starts Debian's PgBouncer in transaction mode with the same pool size, if it is installed. */
async function startPgbouncer(
  host: string,
  port: number,
): Promise<{ target: PgTarget; stop: () => Promise<void> } | null> {
  const which = await runCommand("sh", ["-c", "command -v pgbouncer || ls /usr/sbin/pgbouncer"]);
  const bin = which.stdout.trim().split("\n")[0];
  if (which.code !== 0 || !bin) {
    console.error(
      "pgbouncer not installed (apt-get install -y pgbouncer): comparing with direct only",
    );
    return null;
  }
  const dir = await Deno.makeTempDir({ prefix: "pgdog-bench-pgbouncer-" });
  const listen = await freePort();
  await Deno.writeTextFile(`${dir}/userlist.txt`, `"bench" "bench"\n`);
  await Deno.writeTextFile(
    `${dir}/pgbouncer.ini`,
    `[databases]\nbench = host=${host} port=${port} dbname=bench\n[pgbouncer]\nlisten_addr = 127.0.0.1\n` +
      `listen_port = ${listen}\nauth_type = md5\nauth_file = ${dir}/userlist.txt\npool_mode = transaction\n` +
      `default_pool_size = ${POOL_SIZE}\nmax_client_conn = 2000\nunix_socket_dir =\nlogfile = ${dir}/pgbouncer.log\n` +
      `pidfile = ${dir}/pgbouncer.pid\n`,
  );
  const uid = Deno.uid();
  if (uid === 0) await runCommand("chown", ["-R", "postgres", dir]);
  const cmd = uid === 0
    ? ["runuser", "-u", "postgres", "--", bin, "-d", `${dir}/pgbouncer.ini`]
    : [bin, "-d", `${dir}/pgbouncer.ini`];
  const started = await runCommand(cmd[0], cmd.slice(1));
  if (started.code !== 0) {
    console.error(`pgbouncer failed to start: ${started.stderr}`);
    return null;
  }
  await new Promise((r) => setTimeout(r, 500));
  return {
    target: {
      host: "127.0.0.1",
      port: listen,
      user: "bench",
      password: "bench",
      database: "bench",
    },
    async stop() {
      const pid = (await Deno.readTextFile(`${dir}/pgbouncer.pid`).catch(() => "")).trim();
      if (pid) await runCommand("kill", [pid]);
      await new Promise((r) => setTimeout(r, 200));
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
