/**
 * The replication lag group of `deno task bench` (`deno task bench --only reshard-lag`): a source
 * database is copied onto two shards and its changes streamed (src/resharding/data_sync.ts, as
 * COPY_DATA runs it), while pgbench writes to the source at fixed rates (`-R`, a transaction of an
 * INSERT and an UPDATE). The lag (the source's WAL not yet applied on the destination, in bytes) is
 * sampled every 100 ms; the table shows its median, 95th percentile and maximum per rate, and how
 * long the stream took to catch up once the load stopped.
 *
 * @module
 */

import { pgTool, runCommand, startPostgres } from "../tests/harness/mod.ts";
import { resolveConfig } from "../src/config/load.ts";
import { PgConn } from "../src/resharding/pg_conn.ts";
import { DataSync } from "../src/resharding/data_sync.ts";
import { reshardingDatabase, sharedShards } from "../src/resharding/shards.ts";

/** Options of {@linkcode runReshardLagBench}. */
export interface ReshardLagBenchOptions {
  /** Transactions per second pgbench is held to, one run each. */
  rates: number[];
  /** Seconds of load per rate. */
  seconds: number;
}

const USER = "bench";
const PASSWORD = "bench-pw";

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s[Math.min(s.length - 1, Math.floor(s.length * p))];
}

/** Runs the group; returns its report (Markdown). */
export async function runReshardLagBench(options: ReshardLagBenchOptions): Promise<string> {
  const roles = [{ name: USER, password: PASSWORD, auth: "scram" as const, superuser: true }];
  await using pg = await startPostgres({
    roles,
    databases: ["src", "d0", "d1"],
    settings: { wal_level: "logical", max_replication_slots: 10, max_wal_senders: 10 },
  });
  const login = (database: string) => ({
    host: pg.host,
    port: pg.port,
    user: USER,
    password: PASSWORD,
    database,
  });
  const table = "CREATE TABLE t (id bigint PRIMARY KEY, n bigint NOT NULL, payload text)";
  for (const db of ["src", "d0", "d1"]) {
    const c = await PgConn.connect(login(db));
    await c.query(
      db === "src"
        ? `${table}; INSERT INTO t SELECT i, 0, 'row ' || i FROM generate_series(1, 100000) i;
           CREATE PUBLICATION pub FOR ALL TABLES`
        : table,
    );
    c.close();
  }
  const { config } = resolveConfig({
    databases: [
      { name: "src", host: pg.host, port: pg.port, database_name: "src" },
      ...["d0", "d1"].map((d, shard) => ({
        name: "dst",
        host: pg.host,
        port: pg.port,
        database_name: d,
        shard,
      })),
    ],
    users: ["src", "dst"].map((database) => ({ name: USER, database, password: PASSWORD })),
    sharded_tables: [{ database: "dst", name: "t", column: "id" }],
  });
  const source = reshardingDatabase(config, "src");
  const destination = reshardingDatabase(config, "dst");
  const abort = new AbortController();
  const data = new DataSync({
    source,
    destination,
    publication: "pub",
    slot: "bench_lag",
    replicateOnly: false,
    shared: sharedShards(source, destination),
    plugins: null,
    format: "binary",
    parallelCopies: 1,
    copyAttempts: 1,
    copyRetryDelayMs: 1000,
    replicationAttempts: 1,
    replicationRetryDelayMs: 1000,
    signal: abort.signal,
    status: () => {},
  });
  const running = data.run();
  running.catch(() => {});
  await data.copied;
  const script = await Deno.makeTempFile({ suffix: ".sql" });
  await Deno.writeTextFile(
    script,
    `\\set id random(1, 100000)
\\set nid random(200000, 100000000)
BEGIN;
UPDATE t SET n = n + 1 WHERE id = :id;
INSERT INTO t VALUES (:nid, 1, 'new') ON CONFLICT (id) DO UPDATE SET n = t.n + 1;
COMMIT;
`,
  );
  const lines = [
    `A source table of 100,000 rows copied onto two shards, then pgbench writing to the source at ` +
    `a fixed rate for ${options.seconds} s (a transaction: an UPDATE and an INSERT ... ON CONFLICT ` +
    "on random keys) while pgdog streams the changes onto the shards. Lag: the source's WAL not yet " +
    "applied, sampled every 100 ms; catch-up: from the end of the load to zero lag.",
    "",
    "| rate (tps) | achieved tps | lag median | lag p95 | lag max | catch-up |",
    "| ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  try {
    for (const rate of options.rates) {
      const samples: number[] = [];
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          await data.refreshPositions();
          data.poke();
          samples.push(data.lag());
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      const r = await runCommand(pgTool("pgbench"), [
        "-n",
        "-h",
        pg.host,
        "-p",
        String(pg.port),
        "-U",
        USER,
        "-c",
        "4",
        "-j",
        "2",
        "-R",
        String(rate),
        "-T",
        String(options.seconds),
        "-f",
        script,
        "src",
      ], { env: { PGPASSWORD: PASSWORD }, timeoutMs: options.seconds * 1000 + 60_000 });
      const ended = performance.now();
      const tps = /tps = ([\d.]+)/.exec(r.stdout)?.[1] ?? "?";
      let caughtUp = NaN;
      for (let i = 0; i < 600; i++) {
        await data.refreshPositions();
        data.poke();
        await new Promise((r) => setTimeout(r, 50));
        if (data.lag() === 0) {
          caughtUp = performance.now() - ended;
          break;
        }
      }
      sampling = false;
      await sampler;
      const kb = (n: number) => `${(n / 1024).toFixed(0)} KiB`;
      lines.push(
        `| ${rate} | ${Number(tps).toFixed(0)} | ${kb(percentile(samples, 0.5))} | ${
          kb(percentile(samples, 0.95))
        } | ${kb(Math.max(0, ...samples))} | ${
          Number.isNaN(caughtUp) ? "> 30 s" : `${caughtUp.toFixed(0)} ms`
        } |`,
      );
    }
  } finally {
    abort.abort();
    data.stop();
    await running.catch(() => {});
    await data.dropSlots();
    await Deno.remove(script);
  }
  return lines.join("\n");
}
