/**
 * The resharding copy group of `deno task bench` (`deno task bench --only reshard-copy`): one
 * table of `rows` rows copied between two local PostgreSQL clusters by resharding's table copy
 * (src/resharding/table_copy.ts: COPY out of the source, each row placed, COPY into the
 * destination), in text and in binary, into one shard and into two, against
 * `pg_dump -t t --data-only | psql` into one database. Each runs `rounds` times, interleaved,
 * into emptied tables; the table shows the median times, rows/s, MB/s (of the table's text COPY
 * data) and the ratio of each copy's rate to pg_dump | psql's.
 *
 * @module
 */

import { type PgCluster, pgTool, runCommand, startPostgres } from "../tests/harness/mod.ts";
import { resolveConfig } from "../src/config/load.ts";
import { PgConn, type ServerLogin } from "../src/resharding/pg_conn.ts";
import { RowPlacer } from "../src/resharding/placement.ts";
import { reshardingDatabase } from "../src/resharding/shards.ts";
import { copyTable, publicationTables } from "../src/resharding/table_copy.ts";

/** Options of {@linkcode runReshardCopyBench}. */
export interface ReshardCopyBenchOptions {
  /** Rows of the table. */
  rows: number;
  /** Timed copies per method (the median is shown; at least one). */
  rounds: number;
}

const USER = "bench";
const PASSWORD = "bench-pw";
const TABLE =
  "CREATE TABLE t (id bigint PRIMARY KEY, x bigint NOT NULL, payload text NOT NULL, at timestamptz NOT NULL);";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function run(login: ServerLogin, sql: string): Promise<(string | null)[][]> {
  const c = await PgConn.connect(login);
  try {
    return (await c.query(sql)).rows;
  } finally {
    c.close();
  }
}

/** `pg_dump -t t --data-only` of the source piped into psql on `database` of the destination. */
async function dumpAndRestore(
  source: PgCluster,
  destination: PgCluster,
  database: string,
): Promise<void> {
  const env = { PGPASSWORD: PASSWORD, PGSSLMODE: "disable", PGPASSFILE: "/nonexistent" };
  const q = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;
  const script = `set -o pipefail; ${q(pgTool("pg_dump"))} -h ${source.host} -p ${source.port} ` +
    `-U ${USER} -d src -t t --data-only | ${q(pgTool("psql"))} -X -q -v ON_ERROR_STOP=1 ` +
    `-h ${destination.host} -p ${destination.port} -U ${USER} -d ${database} > /dev/null`;
  const r = await runCommand("bash", ["-c", script], { env, timeoutMs: 600_000 });
  if (r.code !== 0) throw new Error(`pg_dump | psql failed: ${r.stderr}`);
}

/** Runs the group; returns its report (Markdown). */
export async function runReshardCopyBench(options: ReshardCopyBenchOptions): Promise<string> {
  const { rows } = options;
  const rounds = Math.max(1, options.rounds);
  const roles = [{ name: USER, password: PASSWORD, auth: "scram" as const, superuser: true }];
  await using source = await startPostgres({ roles, databases: ["src"] });
  await using destination = await startPostgres({ roles, databases: ["one", "d0", "d1"] });
  const login = (pg: PgCluster, database: string): ServerLogin => ({
    host: pg.host,
    port: pg.port,
    user: USER,
    password: PASSWORD,
    database,
  });
  const src = login(source, "src");
  await run(
    src,
    TABLE +
      `INSERT INTO t SELECT i, i * 7919 % ${rows}, 'payload-' || to_hex(i) || repeat('x', i % 40),
               timestamptz '2026-01-01' + i * interval '1 second'
               FROM generate_series(1, ${rows}) i;
             CREATE PUBLICATION pub FOR TABLE t`,
  );
  await run(src, "VACUUM ANALYZE t");
  for (const db of ["one", "d0", "d1"]) await run(login(destination, db), TABLE);
  const { config } = resolveConfig({
    databases: [
      { name: "src", host: source.host, port: source.port, database_name: "src" },
      { name: "one", host: destination.host, port: destination.port, database_name: "one" },
      ...["d0", "d1"].map((d, shard) => ({
        name: "two",
        host: destination.host,
        port: destination.port,
        database_name: d,
        shard,
      })),
    ],
    users: ["src", "one", "two"].map((database) => ({
      name: USER,
      database,
      password: PASSWORD,
    })),
    sharded_tables: ["one", "two"].map((database) => ({ database, name: "t", column: "id" })),
  });
  const [table] = await publicationTables(src, "pub");
  const targets = {
    one: reshardingDatabase(config, "one"),
    two: reshardingDatabase(config, "two"),
  };
  const copyTo = async (
    name: "one" | "two",
    format: "text" | "binary",
  ): Promise<{ rows: number; bytes: number }> => {
    const db = targets[name];
    return await copyTable({
      source: src,
      snapshot: null,
      table,
      destination: db,
      placer: new RowPlacer(db, { plugins: null }),
      shared: db.shards.map(() => -1),
      sourceShard: 0,
      format,
    });
  };
  const textBytes = (await copyTo("one", "text")).bytes;
  const methods: { name: string; run: () => Promise<void> }[] = [
    {
      name: "`pg_dump \\| psql` (1 database)",
      run: () => dumpAndRestore(source, destination, "one"),
    },
    ...(["text", "binary"] as const).flatMap((format) =>
      (["one", "two"] as const).map((shards) => ({
        name: `pgdog copy, ${format}, ${shards === "one" ? "1 shard" : "2 shards"}`,
        run: async () => {
          const r = await copyTo(shards, format);
          if (r.rows !== rows) throw new Error(`copied ${r.rows} rows, expected ${rows}`);
        },
      }))
    ),
  ];
  const times = methods.map(() => [] as number[]);
  for (let round = 0; round < rounds; round++) {
    for (const [i, method] of methods.entries()) {
      for (const db of ["one", "d0", "d1"]) {
        await run(login(destination, db), "TRUNCATE t; CHECKPOINT");
      }
      const started = performance.now();
      await method.run();
      times[i].push(performance.now() - started);
    }
  }
  const mb = textBytes / 2 ** 20;
  const base = median(times[0]);
  const lines = [
    `A table of ${rows.toLocaleString("en-US")} rows (bigint key, bigint, text, timestamptz; ` +
    `${mb.toFixed(0)} MB as text COPY data) copied between two PostgreSQL clusters on this ` +
    `machine, median of ${rounds}: resharding's table copy (each row placed by the destination's ` +
    "hash) against `pg_dump -t t --data-only | psql`. Ratio: rows/s ÷ pg_dump | psql's rows/s.",
    "",
    "| method | ms | rows/s | MB/s | ratio |",
    "| --- | ---: | ---: | ---: | ---: |",
  ];
  for (const [i, method] of methods.entries()) {
    const ms = median(times[i]);
    lines.push(
      `| ${method.name} | ${ms.toFixed(0)} | ${
        Math.round(rows / (ms / 1000)).toLocaleString("en-US")
      } | ${(mb / (ms / 1000)).toFixed(1)} | ${(base / ms).toFixed(2)} |`,
    );
  }
  return lines.join("\n");
}
