/**
 * The two-phase commit group of `deno task bench` (`deno task bench --only two-pc`): TPC-B style
 * transactions that each touch two shards (an UPDATE of an account on shard 0, one on shard 1,
 * an INSERT into the history on each, then COMMIT), through pgdog without and with two-phase
 * commit (with its log fsynced in a temporary folder), pgbench with a script of its own; and
 * the same transaction on one PostgreSQL holding both accounts, as the reference.
 *
 * @module
 */

import { pgbench, type PgbenchResult, startSharded } from "../tests/harness/mod.ts";

/** Options of {@linkcode runTwoPcBench}. */
export interface TwoPcBenchOptions {
  /** Seconds of each pgbench run. */
  seconds: number;
  /** Client counts. */
  clients: number[];
  /** Accounts per shard. */
  accounts: number;
}

/** Account ids of shard 1 start here (a range mapping puts the rest on shard 0). */
const SHARD_1_FROM = 10_000_000;

const SCHEMA = `
  CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL DEFAULT 0);
  CREATE TABLE history (id bigint NOT NULL, delta int NOT NULL, at timestamptz DEFAULT now());
`;

function script(accounts: number): string {
  return `\\set a1 random(1, ${accounts})
\\set a2 random(${SHARD_1_FROM + 1}, ${SHARD_1_FROM + accounts})
\\set delta random(-5000, 5000)
BEGIN;
UPDATE accounts SET balance = balance + :delta WHERE id = :a1;
UPDATE accounts SET balance = balance - :delta WHERE id = :a2;
INSERT INTO history (id, delta) VALUES (:a1, :delta);
INSERT INTO history (id, delta) VALUES (:a2, 0 - :delta);
COMMIT;
`;
}

/** Runs the group; returns its report (markdown). */
export async function runTwoPcBench(options: TwoPcBenchOptions): Promise<string> {
  const { accounts } = options;
  const walDir = await Deno.makeTempDir({ prefix: "pgdog-bench-2pc-" });
  const scriptFile = await Deno.makeTempFile({ suffix: ".sql" });
  await Deno.writeTextFile(scriptFile, script(accounts));
  const mapping = [
    { start: SHARD_1_FROM + 1, end: 2 * SHARD_1_FROM, shard: 1 },
    { shard: 0 },
  ];
  await using setup = await startSharded({
    shards: 2,
    shardedTables: [
      { name: "accounts", column: "id", data_type: "bigint", mapping },
      { name: "history", column: "id", data_type: "bigint", mapping },
    ],
    schema: SCHEMA,
    settings: { max_prepared_transactions: 100, max_connections: 200 },
    general: { default_pool_size: 20 },
  });
  try {
    await setup.shards[0].sql(
      `INSERT INTO accounts (id) SELECT g FROM generate_series(1, ${accounts}) g`,
      { database: "app" },
    );
    await setup.shards[1].sql(
      `INSERT INTO accounts (id) SELECT g FROM generate_series(${SHARD_1_FROM + 1}, ${
        SHARD_1_FROM + accounts
      }) g`,
      { database: "app" },
    );
    await setup.reference.sql(
      `INSERT INTO accounts (id) SELECT g FROM generate_series(1, ${accounts}) g
       UNION ALL SELECT g FROM generate_series(${SHARD_1_FROM + 1}, ${SHARD_1_FROM + accounts}) g`,
      { database: "app" },
    );
    const twoPc = await setup.startProxy({
      two_phase_commit: true,
      two_phase_commit_wal_dir: walDir,
    });
    const targets = [
      { name: "direct (one PostgreSQL)", target: setup.referenceTarget },
      { name: "pgdog, 2 shards", target: setup.target },
      { name: "pgdog, 2 shards, two-phase commit", target: twoPc.target },
    ];
    const rows: string[] = [];
    try {
      for (const clients of options.clients) {
        const results: PgbenchResult[] = [];
        for (const t of targets) {
          results.push(
            await pgbench(t.target, [
              "-n",
              "-f",
              scriptFile,
              "-T",
              String(options.seconds),
              "-c",
              String(clients),
              "-j",
              String(Math.min(clients, 4)),
            ]),
          );
        }
        const base = results[1].tps ?? 0;
        for (const [i, r] of results.entries()) {
          const tps = r.tps ?? 0;
          const problem = r.code !== 0
            ? ` (exit ${r.code}: ${r.stderr.trim().split("\n").pop()})`
            : "";
          rows.push(
            `| ${targets[i].name} | ${clients} | ${tps.toFixed(0)} | ${
              r.latencyAvgMs?.toFixed(2) ?? "-"
            } | ${r.failed ?? 0} | ${
              i === 0 || base === 0 ? "" : (tps / base).toFixed(2)
            }${problem} |`,
          );
        }
      }
      // Every transaction kept the accounts balanced.
      const sums = await Promise.all(
        setup.shards.map((s) =>
          s.sql("SELECT coalesce(sum(balance), 0) FROM accounts", {
            database: "app",
          })
        ),
      );
      const total = sums.reduce((n, r) => n + Number(r[0][0]), 0);
      const left = await Promise.all(
        setup.shards.map((s) =>
          s.sql("SELECT count(*) FROM pg_prepared_xacts", { database: "app" })
        ),
      );
      return [
        "## Two-phase commit: TPC-B style transactions on two shards",
        "",
        `Each transaction updates an account on shard 0 and one on shard 1 and inserts a history row ` +
        `on each (${accounts} accounts per shard), pgbench -T ${options.seconds}. Ratio: to pgdog ` +
        "without two-phase commit. With it, pgdog fsyncs its log twice per transaction and each " +
        "shard runs PREPARE TRANSACTION and COMMIT PREPARED (two more round trips).",
        "",
        "| target | clients | TPS | avg latency (ms) | failed | ratio |",
        "| ------ | ------- | --- | ---------------- | ------ | ----- |",
        ...rows,
        "",
        `Sum of every balance afterwards: ${total} (0: every transfer committed on both shards or ` +
        `neither); prepared transactions left: ${left.map((r) => r[0][0]).join(", ")}.`,
      ].join("\n");
    } finally {
      await twoPc.proxy.stop();
    }
  } finally {
    await Deno.remove(walDir, { recursive: true }).catch(() => {});
    await Deno.remove(scriptFile).catch(() => {});
  }
}
