/**
 * `deno task bench`: pgbench against direct PostgreSQL, pgdog and (when installed) PgBouncer, in
 * one run, interleaved (A, B, C, A, B, C) so that drift of the machine hits every target alike.
 * Then idle clients: pgdog's resident memory per idle client (and PgBouncer's), and whether
 * pgdog's per-query cost changes with many idle clients and cached statements.
 *
 * Prints one table (TPS, average and p99 latency, errors, ratios) and writes it, with the machine
 * and the versions, to bench/results/<timestamp>.md and bench/results/latest.md.
 *
 * Then the cross-shard group (bench/cross_shard.ts): 3 shards holding 1M rows behind pgdog
 * against one PostgreSQL holding them all, and pgdog's peak memory while streaming a full ORDER
 * BY; written to bench/results/<timestamp>-cross-shard.md and latest-cross-shard.md.
 * Then the two-phase commit group (bench/two_pc.ts): TPC-B style transactions touching two
 * shards through pgdog without and with two-phase commit; written to
 * bench/results/<timestamp>-two-pc.md and latest-two-pc.md.
 * Then the COPY group (bench/copy.ts): COPY FROM STDIN of 1M rows (text and binary) through
 * pgdog into 3 shards against one PostgreSQL directly, and pgdog's peak memory; written to
 * bench/results/<timestamp>-copy.md and latest-copy.md.
 * Then the resharding copy group (bench/reshard_copy.ts): a table of 1M rows copied between two
 * clusters by resharding's table copy against `pg_dump | psql`; written to
 * bench/results/<timestamp>-reshard-copy.md and latest-reshard-copy.md.
 * `--only pgbench`, `--only cross-shard`, `--only two-pc`, `--only copy` or
 * `--only reshard-copy` runs one group.
 *
 * ```
 * deno task bench [--seconds 5] [--rounds 1] [--clients 1,16,64,256]
 *   [--workloads select-simple,select-extended,select-prepared,tpcb,select-connect]
 *   [--targets direct,pgdog,pgbouncer] [--workers 1] [--idle 10000] [--out bench/results]
 *   [--only pgbench|cross-shard|two-pc|copy|reshard-copy] [--cross-shard-rows 1000000]
 *   [--copy-rows 1000000] [--reshard-copy-rows 1000000]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  freePort,
  pgbench,
  type PgTarget,
  pgTool,
  type ProxyProcess,
  REPO_ROOT,
  runCommand,
  startPostgres,
  startProxy,
} from "../tests/harness/mod.ts";
import { VERSION } from "../src/version.ts";
import { type LatencySummary, summariseLogDir } from "./latency.ts";
import { openFilesLimits, openIdleClients, residentKiB } from "./idle_clients.ts";
import { type Pgbouncer, startPgbouncer } from "./pgbouncer.ts";
import { connectInspector } from "./inspector.ts";
import { runCrossShardBench } from "./cross_shard.ts";
import { runTwoPcBench } from "./two_pc.ts";
import { runCopyBench } from "./copy.ts";
import { runReshardCopyBench } from "./reshard_copy.ts";
import { runReshardLagBench } from "./reshard_lag.ts";

/** One pgbench workload. */
interface Workload {
  /** Name for `--workloads`. */
  name: string;
  /** What the table shows. */
  label: string;
  /** pgbench arguments. */
  args: string[];
  /** Uses server-side prepared statements across transactions. */
  prepared?: boolean;
}

const WORKLOADS: Workload[] = [
  { name: "select-simple", label: "-S -M simple", args: ["-S", "-M", "simple"] },
  { name: "select-extended", label: "-S -M extended", args: ["-S", "-M", "extended"] },
  {
    name: "select-prepared",
    label: "-S -M prepared",
    args: ["-S", "-M", "prepared"],
    prepared: true,
  },
  { name: "tpcb", label: "TPC-B-like", args: ["-M", "simple"] },
  { name: "select-connect", label: "-C -S", args: ["-C", "-S", "-M", "simple"] },
];

/** A pooler or the database itself. */
interface Target {
  /** Column name: direct, pgdog, pgdog w2, pgbouncer. */
  name: string;
  /** Where pgbench connects. */
  target: PgTarget;
  /** A reason not to run this workload on this target, shown in the cell. */
  skip?: (workload: Workload) => string | undefined;
}

/** Results of one target in one cell, over the rounds. */
interface Cell {
  tps: number[];
  avgMs: number[];
  p99Ms: number[];
  errors: number;
  skipped?: string;
  problems: string[];
}

interface Row {
  workload: Workload;
  clients: number;
  cells: Map<string, Cell>;
}

const HELP = `deno task bench [options]

  --seconds N        length of each pgbench run (default 5)
  --rounds N         runs per target and cell, interleaved; the median is shown (default 1)
  --clients LIST     client counts (default 1,16,64,256)
  --workloads LIST   ${WORKLOADS.map((w) => w.name).join(",")} (default: all)
  --targets LIST     direct,pgdog,pgbouncer (default: all; pgbouncer when installed), and
                     pgdog-plugin: pgdog with a trivial route plugin in its own process
                     (tests/plugins/trivial.ts), pgdog-plugin-worker: the same plugin with
                     isolation = "worker", pgdog-plugin-cached: the same plugin in a process,
                     declaring cacheRoute: "shape"; each shown with its ratio to pgdog
  --workers LIST     pgdog [general] workers values, one pgdog target each (default 1)
  --idle N           idle clients for the memory and per-query cost checks (default 10000; 0: skip)
  --pool-size N      server connections per pool, pgdog and PgBouncer alike (default 10)
  --scale N          pgbench -i scale (default 10)
  --proxy-cpus LIST  run the poolers (pgdog, its plugin processes, PgBouncer) on these CPUs and
                     PostgreSQL and pgbench on the others, as on a host of their own (taskset;
                     default: everything shares every CPU)
  --out DIR          results directory (default bench/results)
  --only GROUP       pgbench (the pgbench table and the idle clients) or cross-shard (3 shards
                     behind pgdog against one PostgreSQL: ORDER BY LIMIT, count, GROUP BY, a
                     streamed full ORDER BY, and pgdog's peak memory) or two-pc (TPC-B style
                     transactions on two shards, without and with two-phase commit, --seconds
                     each, 1 and 8 clients); default: all
  --cross-shard-rows N  rows of the cross-shard group, in all (default 1000000)
  --only copy        COPY FROM STDIN through pgdog into 3 shards against one PostgreSQL (text
                     and binary), and pgdog's peak memory
  --copy-rows N      rows per COPY of the copy group (default 1000000)
  --only reshard-copy  resharding's table copy between two clusters (text and binary, into 1
                     and 2 shards) against pg_dump | psql, as rows/s, MB/s and a ratio
  --reshard-copy-rows N  rows of the reshard-copy group's table (default 1000000)
  --only reshard-lag  resharding's replication lag while pgbench writes to the source at fixed
                     rates (500 and 2000 tps, --seconds each): lag median, p95, max, catch-up
`;

const args = parseArgs({
  args: Deno.args,
  options: {
    seconds: { type: "string", default: "5" },
    rounds: { type: "string", default: "1" },
    clients: { type: "string", default: "1,16,64,256" },
    workloads: { type: "string", default: WORKLOADS.map((w) => w.name).join(",") },
    targets: { type: "string", default: "direct,pgdog,pgbouncer" },
    workers: { type: "string", default: "1" },
    idle: { type: "string", default: "10000" },
    "pool-size": { type: "string", default: "10" },
    scale: { type: "string", default: "10" },
    "proxy-cpus": { type: "string", default: "" },
    only: { type: "string", default: "" },
    "cross-shard-rows": { type: "string", default: "1000000" },
    "copy-rows": { type: "string", default: "1000000" },
    "reshard-copy-rows": { type: "string", default: "1000000" },
    out: {
      type: "string",
      default: decodeURIComponent(new URL("./results", import.meta.url).pathname),
    },
    help: { type: "boolean", short: "h", default: false },
  },
}).values;
if (args.help) {
  console.log(HELP);
  Deno.exit(0);
}

const list = (s: string): string[] => s.split(",").map((x) => x.trim()).filter((x) => x !== "");
const positive = (s: string, what: string, min = 1): number => {
  const n = Number(s);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${what}: expected an integer >= ${min}`);
  return n;
};
const seconds = positive(args.seconds, "seconds");
const rounds = positive(args.rounds, "rounds");
const clientCounts = list(args.clients).map((c) => positive(c, "clients"));
const workerCounts = list(args.workers).map((w) => positive(w, "workers"));
const poolSize = positive(args["pool-size"], "pool-size");
const scale = positive(args.scale, "scale");
let idleCount = positive(args.idle, "idle", 0);
const outDir = args.out;
/** Pause before reading memory, so that logins and closes have finished (shorter for short runs). */
const SETTLE_MS = Math.min(2, seconds) * 1000;
const wantTargets = new Set(list(args.targets));
/** Targets that run pgdog with a trivial route plugin, and how. */
const PLUGIN_TARGETS = ["pgdog-plugin", "pgdog-plugin-worker", "pgdog-plugin-cached"];
type PluginTarget = { isolation: "process" | "worker"; cached: boolean };
const pluginTarget = (name: string): PluginTarget => ({
  isolation: name === "pgdog-plugin-worker" ? "worker" : "process",
  cached: name === "pgdog-plugin-cached",
});
for (const t of wantTargets) {
  if (!["direct", "pgdog", "pgbouncer", ...PLUGIN_TARGETS].includes(t)) {
    throw new Error(`--targets: unknown ${t}`);
  }
}
const workloads = list(args.workloads).map((name) => {
  const w = WORKLOADS.find((w) => w.name === name);
  if (!w) throw new Error(`--workloads: unknown ${name} (${WORKLOADS.map((w) => w.name)})`);
  return w;
});

if (
  !["", "pgbench", "cross-shard", "two-pc", "copy", "reshard-copy", "reshard-lag"].includes(
    args.only,
  )
) {
  throw new Error(
    `--only: expected pgbench, cross-shard, two-pc, copy, reshard-copy or reshard-lag, not ${args.only}`,
  );
}
const copyRows = positive(args["copy-rows"], "copy-rows", 1000);
const reshardCopyRows = positive(args["reshard-copy-rows"], "reshard-copy-rows", 1000);

/** Prints a group's report and writes it to <stamp>-<suffix>.md and latest-<suffix>.md. */
async function writeGroupReport(
  report: { title: string; suffix: string; started: Date; text: string },
): Promise<void> {
  const { title, suffix, started, text } = report;
  console.log(`\n${text}`);
  const file = [
    `# pgdog ${title} benchmark, ${started.toISOString().slice(0, 19).replace("T", " ")} UTC`,
    "",
    `Command: \`deno task bench${Deno.args.map((a) => ` ${a}`).join("")}\``,
    "",
    text,
  ].join("\n");
  await Deno.mkdir(outDir, { recursive: true });
  const stamp = started.toISOString().slice(0, 19).replace(/[:]/g, "-");
  await Deno.writeTextFile(`${outDir}/${stamp}-${suffix}.md`, file);
  await Deno.writeTextFile(`${outDir}/latest-${suffix}.md`, file);
  console.error(`wrote ${outDir}/${stamp}-${suffix}.md and ${outDir}/latest-${suffix}.md`);
}

/** Runs the COPY group and writes its report next to the others. */
async function copyGroup(): Promise<void> {
  const started = new Date();
  const text = await runCopyBench({ rows: copyRows, rounds: Math.max(3, rounds) });
  await writeGroupReport({ title: "COPY", suffix: "copy", started, text });
}

if (args.only === "copy") {
  await copyGroup();
  Deno.exit(0);
}

/** Runs the resharding copy group and writes its report next to the others. */
async function reshardCopyGroup(): Promise<void> {
  const started = new Date();
  const text = await runReshardCopyBench({ rows: reshardCopyRows, rounds: Math.max(3, rounds) });
  await writeGroupReport({ title: "resharding copy", suffix: "reshard-copy", started, text });
}

if (args.only === "reshard-copy") {
  await reshardCopyGroup();
  Deno.exit(0);
}

/** Runs the replication lag group and writes its report next to the others. */
async function reshardLagGroup(): Promise<void> {
  const started = new Date();
  const text = await runReshardLagBench({ rates: [500, 2000], seconds: Math.max(5, seconds) });
  await writeGroupReport({
    title: "resharding replication lag",
    suffix: "reshard-lag",
    started,
    text,
  });
}

if (args.only === "reshard-lag") {
  await reshardLagGroup();
  Deno.exit(0);
}
const crossShardRows = positive(args["cross-shard-rows"], "cross-shard-rows", 1000);

/** Runs the cross-shard group and writes its report next to the others. */
async function crossShardGroup(): Promise<void> {
  const started = new Date();
  const text = await runCrossShardBench({
    rows: crossShardRows,
    smallRows: Math.max(1000, Math.floor(crossShardRows / 100)),
    rounds: Math.max(3, rounds),
  });
  await writeGroupReport({ title: "cross-shard", suffix: "cross-shard", started, text });
}

if (args.only === "cross-shard") {
  await crossShardGroup();
  Deno.exit(0);
}

/** Runs the two-phase commit group and writes its report next to the others. */
async function twoPcGroup(): Promise<void> {
  const started = new Date();
  const text = await runTwoPcBench({ seconds, clients: [1, 8], accounts: 10_000 });
  await writeGroupReport({ title: "two-phase commit", suffix: "two-pc", started, text });
}

if (args.only === "two-pc") {
  await twoPcGroup();
  Deno.exit(0);
}

const notes: string[] = [];
/** Extra seconds of -T per target and client count, for slow initial connections. */
const connectAllowance = new Map<string, number>();
const note = (line: string): void => {
  notes.push(line);
  console.error(`note: ${line}`);
};

// Deno cannot raise its own open files limit: when the soft limit is too low for the idle
// clients and the hard limit allows more, run again under a shell that raises it (pgdog and
// PgBouncer inherit it from this process).
const { soft: fdLimit, hard: fdHard } = await openFilesLimits();
if (idleCount + 200 > fdLimit && fdHard > fdLimit && !Deno.env.get("PGDOG_BENCH_RAISED_NOFILE")) {
  const child = new Deno.Command("sh", {
    args: [
      "-c",
      'ulimit -n "$(ulimit -Hn)" && exec "$@"',
      "sh",
      Deno.execPath(),
      "run",
      "--allow-all",
      new URL(import.meta.url).pathname,
      ...Deno.args,
    ],
    env: { PGDOG_BENCH_RAISED_NOFILE: "1" },
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  Deno.exit((await child.status).code);
}
if (idleCount > 0 && idleCount + 200 > fdLimit) {
  const fit = Math.max(0, fdLimit - 200);
  note(
    `open files limit is ${fdLimit} (ulimit -n): idle clients lowered from ${idleCount} to ${fit}`,
  );
  idleCount = fit;
}

/** CPUs of the poolers (--proxy-cpus) and of everything else; null: all share every CPU. */
const cpuSplit = splitCpus(args["proxy-cpus"]);
if (cpuSplit !== null) {
  // PostgreSQL and pgbench, started from here, inherit this process's CPUs.
  await pinCpus(Deno.pid, cpuSplit.rest);
}

const loadBefore = await loadAverage();
const startedAt = new Date();
const USER = { user: "bench", password: "bench", database: "bench" };

await using pg = await startPostgres({
  roles: [{ name: "bench", password: "bench", auth: "md5" }],
  databases: [{ name: "bench", owner: "bench" }],
  settings: {
    max_connections: Math.max(400, Math.max(...clientCounts) + 100),
    shared_buffers: "256MB",
  },
});
const direct: PgTarget = { host: pg.host, port: pg.port, ...USER };
console.error(`pgbench -i -s ${scale} ...`);
const init = await pgbench(direct, ["-i", "-s", String(scale), "-q"]);
if (init.code !== 0) throw new Error(`pgbench -i failed: ${init.stderr}`);

/** The route plugin of the pgdog-plugin targets: answers nothing, reads no parse tree. */
const trivialPlugin = (cached: boolean): string =>
  decodeURIComponent(
    new URL(`../tests/plugins/${cached ? "trivial_cached" : "trivial"}.ts`, import.meta.url)
      .pathname,
  );

/** pgdog's pgdog.toml for the benchmark; `workers` only when above 1 (see --workers). */
function pgdogConfig(
  workers: number,
  plugin: PluginTarget | null = null,
): Record<string, unknown> {
  return {
    ...(plugin !== null
      ? {
        plugins: [{
          name: "trivial",
          path: trivialPlugin(plugin.cached),
          timeout: 5000,
          isolation: plugin.isolation,
        }],
      }
      : {}),
    general: {
      default_pool_size: poolSize,
      auth_type: "md5",
      log_connections: false,
      log_disconnections: false,
      ...(workers > 1 ? { workers } : {}),
    },
    databases: [{ name: "bench", host: pg.host, port: pg.port }],
  };
}
const pgdogUsers = { users: [{ name: "bench", database: "bench", password: "bench" }] };

/** Starts pgdog, or returns why it cannot run with this many workers. */
async function startPgdog(
  workers: number,
  options: { denoFlags?: string[]; plugin?: PluginTarget } = {},
): Promise<ProxyProcess | string> {
  let proxy: ProxyProcess;
  const denoFlags = [...(options.denoFlags ?? []), ...(options.plugin ? ["--allow-run"] : [])];
  try {
    proxy = await startProxy({
      config: pgdogConfig(workers, options.plugin ?? null),
      users: pgdogUsers,
      denoFlags,
    });
  } catch (err) {
    return `pgdog did not start with workers = ${workers}: ${String(err).split("\n")[0]}`;
  }
  const refused = proxy.logs().split("\n").find((l) => /\bworkers\b.*not support/.test(l));
  if (refused) {
    await proxy.stop();
    return `pgdog ignores workers = ${workers}: ${refused.trim()}`;
  }
  if (cpuSplit !== null) {
    // Plugin processes started later (restarts) inherit pgdog's CPUs.
    for (const pid of [proxy.pid, ...childrenOf(proxy.pid)]) await pinCpus(pid, cpuSplit.proxies);
  }
  return proxy;
}

const targets: Target[] = [];
const proxies: ProxyProcess[] = [];
let bouncer: Pgbouncer | undefined;
try {
  if (wantTargets.has("direct")) targets.push({ name: "direct", target: direct });
  if (wantTargets.has("pgdog")) {
    for (const workers of workerCounts) {
      const started = await startPgdog(workers);
      if (typeof started === "string") {
        note(`target pgdog w${workers} skipped: ${started}`);
        continue;
      }
      proxies.push(started);
      targets.push({
        name: workers === 1 ? "pgdog" : `pgdog w${workers}`,
        target: started.target(USER),
      });
    }
  }
  for (const name of PLUGIN_TARGETS) {
    if (!wantTargets.has(name)) continue;
    const started = await startPgdog(1, { plugin: pluginTarget(name) });
    if (typeof started === "string") note(`target ${name} skipped: ${started}`);
    else {
      proxies.push(started);
      targets.push({ name, target: started.target(USER) });
    }
  }
  if (wantTargets.has("pgbouncer")) {
    const started = await startPgbouncer({
      host: pg.host,
      port: pg.port,
      ...USER,
      poolSize,
      maxClients: Math.max(2000, idleCount + 1000),
    });
    if (typeof started === "string") {
      note(`target pgbouncer skipped: ${started}`);
    } else {
      bouncer = started;
      if (cpuSplit !== null) await pinCpus(await started.pid(), cpuSplit.proxies);
      const why =
        `n/a: PgBouncer ${started.version} has no prepared statements in transaction mode`;
      targets.push({
        name: "pgbouncer",
        target: started.target,
        skip: (w) => w.prepared && !started.preparedStatements ? why : undefined,
      });
    }
  }

  // Warm up every target (JIT, pools) before anything is measured.
  for (const t of targets) {
    await runPgbench(t.target, ["-S", "-M", "simple"], 16, Math.min(2, seconds));
  }

  const rows: Row[] = [];
  const total = workloads.length * clientCounts.length * rounds * targets.length;
  let done = 0;
  for (const workload of workloads) {
    for (const clients of clientCounts) {
      const row: Row = { workload, clients, cells: new Map() };
      rows.push(row);
      for (const t of targets) {
        row.cells.set(t.name, { tps: [], avgMs: [], p99Ms: [], errors: 0, problems: [] });
      }
      for (let round = 0; round < rounds; round++) {
        for (const t of targets) {
          done++;
          const cell = row.cells.get(t.name)!;
          const skipped = t.skip?.(workload);
          if (skipped) {
            cell.skipped = skipped;
            continue;
          }
          const r = await measuredRun(t, workload.args, clients);
          addRun(cell, r);
          console.error(
            `[${done}/${total}] ${workload.name} c=${clients} ${t.name}: ${fmt(r.tps, 0)} tps, ` +
              `avg ${fmt(r.latency.avgMs, 3)} ms, p99 ${
                fmt(r.latency.p99Ms, 3)
              } ms, ${r.errors} errors`,
          );
        }
      }
    }
  }

  const idle = idleCount > 0 && proxies.length > 0 ? await idleChecks() : undefined;

  const loadAfter = await loadAverage();
  const names = targets.map((t) => t.name);
  const table = renderTable(rows, names);
  const idleText = idle ? renderIdle(idle) : "";
  console.log(`\n${table}\n\n${idleText}`);
  if (notes.length > 0) console.log(notes.map((n) => `- ${n}`).join("\n"));

  const machine = await describeMachine(loadBefore, loadAfter);
  const versions = await describeVersions(bouncer);
  const report = [
    `# pgdog benchmark, ${startedAt.toISOString().slice(0, 19).replace("T", " ")} UTC`,
    "",
    `Command: \`deno task bench${Deno.args.map((a) => ` ${a}`).join("")}\``,
    "",
    `Machine: ${machine}`,
    "",
    `Versions: ${versions}`,
    "",
    `Settings: pgbench scale ${scale}; ${seconds} s per run, ${rounds} round(s), targets ` +
    `interleaved per cell; \`-j 2\` (\`-j 1\` for one client); pool size ${poolSize} in pgdog and ` +
    `PgBouncer, transaction mode, md5 authentication; TPS is pgbench's (median over rounds); ` +
    `latency from pgbench's per-transaction log (\`-l\`); errors are failed transactions plus ` +
    `aborted clients.`,
    "",
    table,
    "",
    idleText,
    ...(notes.length > 0 ? ["Notes:", "", ...notes.map((n) => `- ${n}`), ""] : []),
  ].join("\n");
  await Deno.mkdir(outDir, { recursive: true });
  const stamp = startedAt.toISOString().slice(0, 19).replace(/[:]/g, "-");
  await Deno.writeTextFile(`${outDir}/${stamp}.md`, report);
  await Deno.writeTextFile(`${outDir}/latest.md`, report);
  console.error(`wrote ${outDir}/${stamp}.md and ${outDir}/latest.md`);
} finally {
  for (const p of proxies) await p.stop();
  await bouncer?.stop();
}
if (args.only === "") {
  await crossShardGroup();
  await twoPcGroup();
  await copyGroup();
  await reshardCopyGroup();
  await reshardLagGroup();
}

/** One pgbench run, summarised. */
interface Run {
  tps?: number;
  latency: LatencySummary;
  errors: number;
  problem?: string;
  /** pgbench's "initial connection time". */
  connectMs?: number;
  /** Transactions processed. */
  processed: number;
}

/**
 * pgbench's -T includes connecting the clients, and its TPS excludes that time; when connecting
 * takes a good part of -T (256 direct PostgreSQL backends, on a slow machine), -T is lengthened by
 * it so that every target is measured for about `seconds`, and the run is made again.
 */
async function measuredRun(t: Target, extra: string[], clients: number): Promise<Run> {
  const key = `${t.name}, ${clients} clients`;
  for (let attempt = 1;; attempt++) {
    const allowance = connectAllowance.get(key) ?? 0;
    const r = await runPgbench(t.target, extra, clients, seconds + allowance);
    // Nothing processed, no error: connecting took all of -T (pgbench then reports no time).
    const stalled = !r.processed && !r.problem?.startsWith("pgbench") && r.errors <= 1 &&
      !extra.includes("-C");
    const connectS = stalled ? Infinity : (r.connectMs ?? 0) / 1000;
    if (connectS <= allowance + 0.2 * seconds || attempt >= 3) {
      // Connecting went faster than allowed for (the machine got quieter): shrink the allowance.
      if (Number.isFinite(connectS) && allowance > 0) {
        const fit = connectS > 0.2 * seconds ? Math.ceil(connectS * 1.25) : 0;
        if (fit < allowance) connectAllowance.set(key, fit);
      }
      return r;
    }
    const more = Number.isFinite(connectS) ? Math.ceil(connectS * 1.25) : 2 * (allowance + seconds);
    connectAllowance.set(key, more);
    note(
      `${key}: connecting took ${
        Number.isFinite(connectS) ? `${connectS.toFixed(1)} s of` : "all of"
      } -T ${seconds + allowance}; runs against it use -T ${seconds + more} so that about ` +
        `${seconds} s are measured`,
    );
  }
}

/** Runs pgbench with a per-transaction log and reads latency from it. */
async function runPgbench(
  target: PgTarget,
  extra: string[],
  clients: number,
  secs: number,
): Promise<Run> {
  const logDir = await Deno.makeTempDir({ prefix: "pgdog-bench-log-" });
  try {
    const r = await pgbench(target, [
      ...extra,
      "-n",
      "-c",
      String(clients),
      "-j",
      String(Math.min(2, clients)),
      "-T",
      String(secs),
      "-l",
      `--log-prefix=${logDir}/tx`,
    ], { timeoutMs: secs * 1000 + 180_000 });
    const latency = await summariseLogDir(logDir);
    const aborted = (r.stderr.match(/client \d+ aborted/g) ?? []).length;
    const errors = (r.failed ?? latency.failed) + aborted;
    const connect = r.stdout.match(/initial connection time = ([\d.]+) ms/);
    let problem: string | undefined;
    if (r.code !== 0 || aborted > 0) {
      problem = r.stderr.split("\n").find((l) => /error|aborted|FATAL/i.test(l))?.trim() ??
        `pgbench exited with ${r.code}`;
    } else if (!r.processed) {
      problem = `no transaction finished within -T ${secs}`;
    }
    return {
      tps: r.processed ? r.tps : undefined,
      latency,
      errors: !r.processed && errors === 0 ? 1 : errors,
      problem,
      connectMs: connect ? Number(connect[1]) : undefined,
      processed: r.processed ?? 0,
    };
  } finally {
    await Deno.remove(logDir, { recursive: true }).catch(() => {});
  }
}

function addRun(cell: Cell, r: Run): void {
  if (r.tps !== undefined) {
    cell.tps.push(r.tps);
    cell.avgMs.push(r.latency.avgMs);
    cell.p99Ms.push(r.latency.p99Ms);
  }
  cell.errors += r.errors;
  if (r.problem && !cell.problems.includes(r.problem)) cell.problems.push(r.problem);
}

/** Memory of a pooler process before and after a batch of idle logins. */
interface MemoryStep {
  name: string;
  note?: string;
  loginMs: number;
  /** VmRSS, KiB, before and after the logins. */
  rss: [number, number];
  /** VmRSS, KiB, right after a full garbage collection, before and after (pgdog only). */
  rssAfterGc?: [number, number];
  /** JavaScript heap in use after a full garbage collection, bytes, before and after. */
  heapAfterGc?: [number, number];
  /** ArrayBuffer backing stores (outside the heap) after a full collection, bytes. */
  buffersAfterGc?: [number, number];
}

/** What the idle-client checks measured. */
interface IdleResult {
  count: number;
  memory: MemoryStep[];
  impact: Array<{ state: string; workload: string; run: Run }>;
}

/**
 * On a fresh pgdog: resident memory before and after `idleCount` idle logins (and with each of
 * them holding one prepared statement), and the 16-client select TPS with none, with the idle
 * clients, with the idle clients' statements cached, and with none again. Then PgBouncer's
 * resident memory for the same idle clients.
 */
async function idleChecks(): Promise<IdleResult> {
  const result: IdleResult = { count: idleCount, memory: [], impact: [] };
  const inspectPort = await freePort();
  const started = await startPgdog(1, { denoFlags: [`--inspect=127.0.0.1:${inspectPort}`] });
  if (typeof started === "string") throw new Error(started);
  const proxy = started;
  proxies.push(proxy);
  const target = proxy.target(USER);
  const impactWorkloads = [WORKLOADS[0], WORKLOADS[2]];
  const impact = async (state: string): Promise<void> => {
    for (const w of impactWorkloads) {
      const run = await runPgbench(target, w.args, 16, seconds);
      result.impact.push({ state, workload: w.label, run });
      console.error(`idle check, ${state}, ${w.label}: ${fmt(run.tps, 0)} tps`);
    }
  };
  /** RSS as is, then RSS and heap right after a full collection (asked for over the inspector). */
  const measure = async (): Promise<[number, number, number, number]> => {
    await settle();
    const rss = await residentKiB(proxy.pid);
    const session = await connectInspector(inspectPort);
    try {
      const heap = await session.collectAndMeasure();
      return [rss, await residentKiB(proxy.pid), heap.usedSize, heap.backingStorageSize ?? NaN];
    } finally {
      session.close();
    }
  };
  const step = async (prepare: boolean, note?: string): Promise<void> => {
    const before = await measure();
    const idle = await openIdleClients(target, idleCount, { prepare });
    const after = await measure();
    result.memory.push({
      name: "pgdog",
      note,
      loginMs: idle.elapsedMs,
      rss: [before[0], after[0]],
      rssAfterGc: [before[1], after[1]],
      heapAfterGc: [before[2], after[2]],
      buffersAfterGc: [before[3], after[3]],
    });
    console.error(
      `pgdog: RSS ${before[0]} -> ${after[0]} KiB, after GC ${before[1]} -> ${after[1]} KiB, ` +
        `heap ${before[2]} -> ${after[2]} bytes with ${idle.count} idle clients`,
    );
    await impact(`${idleCount} idle clients${prepare ? `, ${idleCount} statements cached` : ""}`);
    await idle.close();
  };
  // Warm-up, including a few logins, so that code paths are compiled before the baseline (in
  // the runs so far, the first baseline was the slowest of the eight).
  for (const w of impactWorkloads) await runPgbench(target, w.args, 16, Math.min(3, seconds));
  await (await openIdleClients(target, Math.min(200, idleCount))).close();
  await settle();
  await impact("no idle clients");
  await step(false);
  await step(true, "each prepared one statement of its own");
  await settle();
  await impact("no idle clients again");

  if (bouncer) {
    const pid = await bouncer.pid();
    await settle();
    const before = await residentKiB(pid);
    const idle = await openIdleClients(bouncer.target, idleCount);
    await settle();
    const after = await residentKiB(pid);
    result.memory.push({ name: "pgbouncer", loginMs: idle.elapsedMs, rss: [before, after] });
    await idle.close();
  }
  return result;
}

/** Gives the processes a moment to finish logins and closes. */
async function settle(): Promise<void> {
  await new Promise((r) => setTimeout(r, SETTLE_MS));
}

function median(xs: number[]): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function fmt(x: number | undefined, digits: number): string {
  return x !== undefined && Number.isFinite(x) ? x.toFixed(digits) : "n/a";
}

function renderTable(rows: Row[], names: string[]): string {
  const pgdogs = names.filter((n) => n.startsWith("pgdog") && !n.startsWith("pgdog-plugin"));
  const ratios: Array<[string, string]> = [];
  for (const p of pgdogs) {
    if (names.includes("pgbouncer")) ratios.push([p, "pgbouncer"]);
    if (names.includes("direct")) ratios.push([p, "direct"]);
  }
  for (const plugin of PLUGIN_TARGETS) {
    if (names.includes(plugin) && names.includes("pgdog")) ratios.push([plugin, "pgdog"]);
  }
  const head = [
    "workload",
    "clients",
    ...names.map((n) => `${n} TPS`),
    ...names.map((n) => `${n} avg / p99 ms`),
    `errors (${names.join(" / ")})`,
    ...ratios.map(([a, b]) => `${a}/${b}`),
  ];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`];
  const problems: string[] = [];
  for (const row of rows) {
    const tps = (n: string): number => median(row.cells.get(n)?.tps ?? []);
    const cells = [row.workload.label, String(row.clients)];
    for (const n of names) {
      const c = row.cells.get(n)!;
      cells.push(c.skipped ?? fmt(tps(n), 0));
    }
    for (const n of names) {
      const c = row.cells.get(n)!;
      cells.push(c.skipped ? "n/a" : `${fmt(median(c.avgMs), 2)} / ${fmt(median(c.p99Ms), 2)}`);
    }
    cells.push(
      names.map((n) => row.cells.get(n)!.skipped ? "-" : String(row.cells.get(n)!.errors)).join(
        " / ",
      ),
    );
    for (const [a, b] of ratios) cells.push(fmt(tps(a) / tps(b), 2));
    lines.push(`| ${cells.join(" | ")} |`);
    for (const n of names) {
      for (const p of row.cells.get(n)!.problems) {
        problems.push(`${row.workload.label}, ${row.clients} clients, ${n}: ${p}`);
      }
    }
  }
  if (problems.length > 0) {
    lines.push(
      "",
      "Errors reported by pgbench:",
      "",
      ...problems.map((p) => `- ${p}`),
    );
  }
  return lines.join("\n");
}

function renderIdle(idle: IdleResult): string {
  const perClient = (pair: [number, number] | undefined, unit: number): string =>
    pair ? fmt((pair[1] - pair[0]) / unit / idle.count, 1) : "n/a";
  const lines = [
    `Idle clients: ${idle.count} authenticated connections held open at once. VmRSS of the ` +
    `pooler process before and after the logins (${
      SETTLE_MS / 1000
    } s after the last one); for pgdog also after a ` +
    `full garbage collection (asked for over the V8 inspector), with the JavaScript heap then in ` +
    `use and the ArrayBuffer memory outside it (read buffers); the rest of the RSS is Deno's own ` +
    `per-socket state and allocator overhead.`,
    "",
    "| pooler | idle clients | RSS before → after (KiB) | RSS per idle client (KiB) | " +
    "after a full GC: RSS per client (KiB) | of which JS heap (KiB) | of which ArrayBuffers " +
    "(KiB) | logins took (s) |",
    "|---|---|---|---|---|---|---|---|",
  ];
  for (const m of idle.memory) {
    lines.push(
      `| ${m.name}${m.note ? ` (${m.note})` : ""} | ${idle.count} | ${m.rss[0]} → ${m.rss[1]} | ` +
        `${perClient(m.rss, 1)} | ${perClient(m.rssAfterGc, 1)} | ` +
        `${perClient(m.heapAfterGc, 1024)} | ${perClient(m.buffersAfterGc, 1024)} | ` +
        `${fmt(m.loginMs / 1000, 1)} |`,
    );
  }
  lines.push(
    "",
    `Per-query cost with idle clients and cached statements (pgdog, 16 clients, ${seconds} s each, in this order):`,
    "",
    "| state | workload | TPS | avg / p99 ms | errors |",
    "|---|---|---|---|---|",
  );
  for (const i of idle.impact) {
    lines.push(
      `| ${i.state} | ${i.workload} | ${fmt(i.run.tps, 0)} | ${fmt(i.run.latency.avgMs, 2)} / ` +
        `${fmt(i.run.latency.p99Ms, 2)} | ${i.run.errors} |`,
    );
  }
  return lines.join("\n") + "\n";
}

async function loadAverage(): Promise<string> {
  const text = await Deno.readTextFile("/proc/loadavg").catch(() => "");
  return text.split(" ").slice(0, 3).join(" ") || "unknown";
}

async function describeMachine(before: string, after: string): Promise<string> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const cpu = cpuinfo.match(/^model name\s*:\s*(.+)$/m)?.[1]?.trim() ?? Deno.build.arch;
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  const memKiB = Number(meminfo.match(/^MemTotal:\s+(\d+)/m)?.[1] ?? NaN);
  return `${cpu}, ${navigator.hardwareConcurrency} cores, ${fmt(memKiB / 1024 / 1024, 1)} GiB ` +
    `memory, ${Deno.build.os} ${Deno.osRelease()}; load average (1, 5, 15 min) ${before} before, ` +
    `${after} after; ` +
    (cpuSplit === null
      ? "pgbench, PostgreSQL and the poolers share these cores."
      : `the poolers run on CPU ${cpuSplit.proxies.join(",")}, pgbench and PostgreSQL on CPU ` +
        `${cpuSplit.rest.join(",")} (--proxy-cpus).`);
}

/** The CPUs `--proxy-cpus` gives the poolers, and the rest; null when it is not given. */
function splitCpus(option: string): { proxies: number[]; rest: number[] } | null {
  if (option === "") return null;
  const cores = navigator.hardwareConcurrency;
  const proxies = list(option).map((c) => {
    const n = Number(c);
    if (!Number.isInteger(n) || n < 0 || n >= cores) {
      throw new Error(`--proxy-cpus: ${c} is not a CPU of this machine (0 to ${cores - 1})`);
    }
    return n;
  });
  const rest = [...Array(cores).keys()].filter((c) => !proxies.includes(c));
  if (rest.length === 0) throw new Error("--proxy-cpus: no CPU is left for PostgreSQL and pgbench");
  return { proxies, rest };
}

/** Sets the CPUs of every thread of process `pid` (taskset, from util-linux). */
async function pinCpus(pid: number, cpus: number[]): Promise<void> {
  const r = await runCommand("taskset", ["-a", "-p", "-c", cpus.join(","), String(pid)]);
  if (r.code !== 0) throw new Error(`taskset failed for process ${pid}: ${r.stderr.trim()}`);
}

/** The processes whose parent is `pid` (a pgdog's plugin processes). */
function childrenOf(pid: number): number[] {
  const children: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) {
        children.push(Number(entry.name));
      }
    } catch {
      // Gone meanwhile.
    }
  }
  return children;
}

async function describeVersions(bouncer: Pgbouncer | undefined): Promise<string> {
  const first = async (program: string, argv: string[]): Promise<string> => {
    const r = await runCommand(program, argv).catch(() => undefined);
    return r?.stdout.split("\n")[0].trim() || "unknown";
  };
  const commit = await first("git", ["-C", REPO_ROOT, "rev-parse", "--short", "HEAD"]);
  return [
    `pgdog ${VERSION} (${commit})`,
    `deno ${Deno.version.deno} (V8 ${Deno.version.v8})`,
    await first(pgTool("postgres"), ["--version"]),
    await first(pgTool("pgbench"), ["--version"]),
    bouncer ? `PgBouncer ${bouncer.version}` : "PgBouncer not run",
  ].join("; ");
}
