/**
 * The cross-shard group of `deno task bench` (`deno task bench --only cross-shard`): 3 shards
 * holding `rows` rows in all behind pgdog, and one PostgreSQL holding all of them (direct).
 * Each query runs on both, interleaved, several times; the table shows the median times and
 * pgdog's time / direct time. Then pgdog's peak resident memory (VmHWM) while it streams a full
 * `ORDER BY` to the client, for a small table and for the big one: it must not grow with the rows
 * streamed.
 *
 * A query pgdog refuses (0A000) is reported as "refused", one it answers differently from the
 * direct database as "WRONG"; neither stops the run.
 *
 * @module
 */

import type pg from "pg";
import { connectPg, type PgTarget, type ProxyProcess, startSharded } from "../tests/harness/mod.ts";

/** Options of {@linkcode runCrossShardBench}. */
export interface CrossShardBenchOptions {
  /** Rows in all (split across 3 shards by id). */
  rows: number;
  /** Rows of the small table of the memory check. */
  smallRows: number;
  /** Timed runs of each query per target (the median is shown; at least one). */
  rounds: number;
}

/** One measured query. */
interface QueryResult {
  name: string;
  sql: string;
  directMs: number;
  pgdogMs: number | null;
  /** "refused: ...", "WRONG: ...", or "" when pgdog answered as the direct database did. */
  problem: string;
}

/** What the memory check measured (KiB). */
interface MemoryResult {
  afterStart: number;
  afterSmall: number;
  afterBig: number;
  smallRows: number;
  bigRows: number;
  problem: string;
}

const TABLE = `
  CREATE TABLE items (id bigint PRIMARY KEY, x bigint NOT NULL, grp int NOT NULL,
    amount numeric(12, 2) NOT NULL, payload text NOT NULL);
  CREATE INDEX ON items (x);
  CREATE TABLE small_items (LIKE items INCLUDING ALL);
  -- Rows of shard r: satisfies_hash_partition is PostgreSQL's hash partitioning, which pgdog's
  -- sharding function is bit for bit.
  CREATE TABLE shard_probe (id bigint) PARTITION BY HASH (id);
`;

/** Rows 1..n of `table`, those of shard `shard` of `shards` only (all when shard is null). */
function fill(table: string, n: number, shard: number | null, shards: number): string {
  const where = shard === null
    ? ""
    : `WHERE satisfies_hash_partition('shard_probe'::regclass, ${shards}, ${shard}, g::bigint)`;
  // x: a permutation of 1..n (7919 is prime, coprime with n unless n is a multiple of it).
  return `INSERT INTO ${table}
    SELECT g, (g::bigint * 7919) % ${n} + 1, g % 100, (g % 10000) / 100.0,
      'payload-' || md5(g::text)
    FROM generate_series(1, ${n}) AS g ${where};
    ANALYZE ${table};`;
}

const QUERIES: Array<{ name: string; sql: string }> = [
  { name: "ORDER BY x LIMIT 10", sql: "SELECT id, x FROM items ORDER BY x LIMIT 10" },
  { name: "count(*)", sql: "SELECT count(*) FROM items" },
  {
    name: "GROUP BY (100 groups), avg",
    sql: "SELECT grp, avg(amount), count(*) FROM items GROUP BY grp ORDER BY grp",
  },
  { name: "full ORDER BY, streamed", sql: "SELECT id, x, payload FROM items ORDER BY x" },
];

/** Runs `sql` on `client`: elapsed ms and a digest of the answer (or the error). */
async function timed(
  client: pg.Client,
  sql: string,
): Promise<{ ms: number; digest: string; error?: { code: string; message: string } }> {
  const started = performance.now();
  try {
    const r = await client.query({
      text: sql,
      rowMode: "array",
      types: { getTypeParser: () => (v: string) => v } as unknown as pg.CustomTypesConfig,
    });
    const ms = performance.now() - started;
    const rows = r.rows as string[][];
    // Small answers compare whole; big ones by count and first and last rows.
    const digest = rows.length <= 200
      ? JSON.stringify(rows)
      : JSON.stringify([rows.length, rows[0], rows[rows.length - 1]]);
    return { ms, digest };
  } catch (e) {
    const err = e as { code?: string; message?: string };
    return {
      ms: performance.now() - started,
      digest: "",
      error: { code: err.code ?? "?", message: err.message ?? String(e) },
    };
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Peak resident memory of a process in KiB (VmHWM from /proc/<pid>/status). */
async function peakKiB(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const match = status.match(/^VmHWM:\s+(\d+) kB/m);
  if (!match) throw new Error(`no VmHWM in /proc/${pid}/status`);
  return Number(match[1]);
}

async function measureQueries(
  direct: PgTarget,
  proxied: PgTarget,
  rounds: number,
): Promise<QueryResult[]> {
  const a = await connectPg(direct);
  const b = await connectPg(proxied);
  const results: QueryResult[] = [];
  try {
    for (const q of QUERIES) {
      const directMs: number[] = [];
      const pgdogMs: number[] = [];
      let problem = "";
      // One untimed run each (caches, JIT), then the timed rounds, interleaved.
      const want = await timed(a, q.sql);
      if (want.error) throw new Error(`${q.sql} failed on PostgreSQL: ${want.error.message}`);
      const first = await timed(b, q.sql);
      if (first.error) {
        problem = first.error.code === "0A000"
          ? `refused: ${first.error.message}`
          : `error ${first.error.code}: ${first.error.message}`;
      } else if (first.digest !== want.digest) {
        problem = `WRONG: ${first.digest.slice(0, 120)} instead of ${want.digest.slice(0, 120)}`;
      }
      // Quick queries run more often, so that their medians mean something.
      const repeat = Math.max(rounds, Math.min(50, Math.floor(1000 / Math.max(want.ms, 1))));
      for (let i = 0; i < repeat; i++) {
        directMs.push((await timed(a, q.sql)).ms);
        if (!problem) pgdogMs.push((await timed(b, q.sql)).ms);
      }
      const result: QueryResult = {
        name: q.name,
        sql: q.sql,
        directMs: median(directMs),
        pgdogMs: problem ? null : median(pgdogMs),
        problem,
      };
      results.push(result);
      console.error(
        `cross-shard ${q.name}: direct ${result.directMs.toFixed(2)} ms, pgdog ${
          result.pgdogMs === null ? problem.slice(0, 80) : `${result.pgdogMs.toFixed(2)} ms`
        }`,
      );
    }
  } finally {
    await a.end();
    await b.end();
  }
  return results;
}

/** A fresh pgdog: its VmHWM after start, after streaming the small table, then the big one. */
async function measureMemory(
  proxy: ProxyProcess,
  target: PgTarget,
  options: CrossShardBenchOptions,
): Promise<MemoryResult> {
  const c = await connectPg(target);
  try {
    await c.query("SELECT 1");
    const afterStart = await peakKiB(proxy.pid);
    const problems: string[] = [];
    const stream = async (table: string, rows: number): Promise<number> => {
      const r = await timed(c, `SELECT id, x, payload FROM ${table} ORDER BY x`);
      if (r.error) problems.push(`${table}: ${r.error.code} ${r.error.message}`);
      else if (!r.digest.startsWith(`[${rows},`) && rows > 200) {
        problems.push(`${table}: WRONG row count ${r.digest.slice(0, 40)}`);
      }
      return await peakKiB(proxy.pid);
    };
    const afterSmall = await stream("small_items", options.smallRows);
    const afterBig = await stream("items", options.rows);
    return {
      afterStart,
      afterSmall,
      afterBig,
      smallRows: options.smallRows,
      bigRows: options.rows,
      problem: problems.join("; "),
    };
  } finally {
    await c.end();
  }
}

/** Starts the shards, the direct database and pgdog, loads the rows and measures. */
export async function runCrossShardBench(options: CrossShardBenchOptions): Promise<string> {
  const shards = 3;
  console.error(`cross-shard: starting 3 shards and one PostgreSQL, ${options.rows} rows...`);
  await using setup = await startSharded({
    shards,
    shardedTables: [
      { name: "items", column: "id" },
      { name: "small_items", column: "id" },
    ],
    schema: TABLE,
    settings: { shared_buffers: "256MB" },
    general: { query_timeout: 600_000 },
  });
  const loadStarted = performance.now();
  await Promise.all([
    setup.reference.sql(
      fill("items", options.rows, null, shards) +
        fill("small_items", options.smallRows, null, shards),
      { database: "app", timeoutMs: 1_200_000 },
    ),
    ...setup.shards.map((s, i) =>
      s.sql(
        fill("items", options.rows, i, shards) + fill("small_items", options.smallRows, i, shards),
        { database: "app", timeoutMs: 1_200_000 },
      )
    ),
  ]);
  console.error(
    `cross-shard: loaded in ${((performance.now() - loadStarted) / 1000).toFixed(1)} s`,
  );
  const queries = await measureQueries(setup.referenceTarget, setup.target, options.rounds);
  const fresh = await setup.startProxy({});
  let memory: MemoryResult;
  try {
    memory = await measureMemory(fresh.proxy, fresh.target, options);
  } finally {
    await fresh.proxy.stop();
  }
  return render(queries, memory, options);
}

function render(
  queries: QueryResult[],
  memory: MemoryResult,
  options: CrossShardBenchOptions,
): string {
  const mib = (kib: number): string => (kib / 1024).toFixed(1);
  const lines = [
    `## Cross-shard queries`,
    "",
    `${options.rows} rows in \`items\` (id bigint key, x a permutation of the ids with an index, ` +
    `100 groups, numeric amount, 41-byte text), split across 3 shards by id behind pgdog, and the ` +
    `same rows in one PostgreSQL (direct). npm:pg, simple protocol, one connection each; the ` +
    `median of at least ${options.rounds} runs per target, interleaved (quick queries more often).`,
    "",
    "| query | direct ms | pgdog ms | pgdog / direct |",
    "|---|---|---|---|",
  ];
  const notes: string[] = [];
  for (const q of queries) {
    const pgdog = q.pgdogMs === null ? q.problem.split(":")[0] : q.pgdogMs.toFixed(2);
    const ratio = q.pgdogMs === null ? "n/a" : (q.pgdogMs / q.directMs).toFixed(2);
    lines.push(`| ${q.name} (\`${q.sql}\`) | ${q.directMs.toFixed(2)} | ${pgdog} | ${ratio} |`);
    if (q.problem) notes.push(`- ${q.name}: ${q.problem}`);
  }
  if (memory.problem) {
    lines.push("", `pgdog's peak memory while streaming: not measured (${memory.problem}).`);
    notes.push(`- memory check: ${memory.problem}`);
    return [...lines, "", "Problems:", "", ...notes].join("\n") + "\n";
  }
  lines.push(
    "",
    `pgdog's peak resident memory (VmHWM of a fresh pgdog process) while it streams a full ` +
      `\`SELECT id, x, payload FROM ... ORDER BY x\` to the client:`,
    "",
    "| after | VmHWM MiB |",
    "|---|---|",
    `| start and one query | ${mib(memory.afterStart)} |`,
    `| streaming ${memory.smallRows} rows | ${mib(memory.afterSmall)} |`,
    `| then streaming ${memory.bigRows} rows | ${mib(memory.afterBig)} |`,
    "",
    `Growth from ${memory.smallRows} to ${memory.bigRows} rows: ${
      mib(memory.afterBig - memory.afterSmall)
    } MiB.`,
  );
  if (notes.length > 0) lines.push("", "Problems:", "", ...notes);
  return lines.join("\n") + "\n";
}
