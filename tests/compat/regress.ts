/**
 * One run of PostgreSQL's regression schedule: a throwaway cluster, pgdog in front of it in one
 * pooling mode (or nothing, for a baseline), and pg_regress pointed at it; the outcome of each test
 * and its diff.
 *
 * @module
 */

import { type PgCluster, startPostgres, startProxy } from "../harness/mod.ts";
import type { RegressSuite } from "./suite.ts";

/** How pg_regress reaches PostgreSQL: through pgdog in a pooling mode, or directly. */
export type CompatTarget = "session" | "transaction" | "direct";

/** Outcome of one test of the schedule. */
export interface TestOutcome {
  /** Test name, e.g. "boolean". */
  name: string;
  /** Whether its output matched the expected one. */
  passed: boolean;
  /** pg_regress's words after "...": "ok", "FAILED", "FAILED (test process exited ...)". */
  status: string;
  /** Duration pg_regress printed. */
  ms: number;
}

/** Result of {@linkcode runSchedule}. */
export interface ScheduleRun {
  /** Where pg_regress connected. */
  target: CompatTarget;
  /** Outcome of every test pg_regress reported, in order. */
  outcomes: TestOutcome[];
  /** Unified diff of each failed test (from regression.diffs). */
  diffs: Map<string, string>;
  /** pg_regress's exit code (0 all passed, 1 some failed, 2 could not run). */
  code: number;
  /** Everything pg_regress printed. */
  output: string;
  /** Wall-clock time of the pg_regress run, in milliseconds. */
  elapsedMs: number;
  /** pgdog's output (empty for "direct"). */
  proxyLogs: string;
}

/** Options for {@linkcode runSchedule}. */
export interface RunScheduleOptions {
  /** Where pg_regress connects. */
  target: CompatTarget;
  /** Each line pg_regress prints, as it prints it. */
  onLine?: (line: string) => void;
  /** Keep pg_regress's output directory (results/, regression.diffs) here instead of a temp dir. */
  outputDir?: string;
  /** Only these tests (pg_regress runs them one after another), instead of the schedule. */
  only?: string[];
  /** Kill pg_regress after this long; 30 minutes by default. */
  timeoutMs?: number;
}

/** Server connections per pool: a parallel group has up to 20 tests, each one psql session. */
const POOL_SIZE = 30;
const PASSWORD = "compat";
const DATABASE = "regression";

/**
 * The settings a pg_regress temporary instance adds (pg_regress.c), where they matter to the
 * tests: prepared_xacts needs prepared transactions.
 */
const SERVER_SETTINGS = { max_prepared_transactions: 2 };

/** Parse pg_regress's per-test lines (`test x ... ok 12 ms`, `     x ... FAILED 12 ms`). */
export function parseRegressOutput(output: string): TestOutcome[] {
  const outcomes: TestOutcome[] = [];
  const line =
    /^(?:test | {5})(\S+)\s+\.\.\. (ok|FAILED|failed \(ignored\))\s*(\([^)]*\))?\s+(\d+) ms$/gm;
  for (const m of output.matchAll(line)) {
    outcomes.push({
      name: m[1],
      passed: m[2] === "ok",
      status: m[3] ? `${m[2]} ${m[3]}` : m[2],
      ms: Number(m[4]),
    });
  }
  return outcomes;
}

/** Split regression.diffs into one diff per test (named by its results/<test>.out file). */
export function splitDiffs(diffs: string): Map<string, string> {
  const byTest = new Map<string, string>();
  const parts = diffs.split(/^(?=diff )/m).filter((p) => p.startsWith("diff "));
  for (const part of parts) {
    const name = part.match(/\/results\/([^/\s]+)\.out/)?.[1];
    if (name) byTest.set(name, (byTest.get(name) ?? "") + part);
  }
  return byTest;
}

/** CREATE DATABASE regression the way pg_regress does without --use-existing (create_database). */
async function createRegressionDatabase(pg: PgCluster): Promise<void> {
  await pg.sql(`CREATE DATABASE ${DATABASE} TEMPLATE=template0`);
  for (
    const setting of [
      "lc_messages TO 'C'",
      "lc_monetary TO 'C'",
      "lc_numeric TO 'C'",
      "lc_time TO 'C'",
      "bytea_output TO 'hex'",
      "timezone_abbreviations TO 'Default'",
    ]
  ) {
    await pg.sql(`ALTER DATABASE ${DATABASE} SET ${setting}`);
  }
}

/** Run pg_regress to completion, passing each output line to `onLine`. */
async function runPgRegress(
  program: string,
  args: string[],
  options: { env: Record<string, string>; onLine: (line: string) => void; timeoutMs: number },
): Promise<{ code: number; output: string }> {
  const child = new Deno.Command(program, {
    args,
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Gone.
    }
  }, options.timeoutMs);
  let output = "";
  const pump = async (stream: ReadableStream<Uint8Array>): Promise<void> => {
    let pending = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      pending += text;
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        output += line + "\n";
        options.onLine(line);
      }
    }
    if (pending) {
      output += pending + "\n";
      options.onLine(pending);
    }
  };
  try {
    const [status] = await Promise.all([child.status, pump(child.stdout), pump(child.stderr)]);
    return { code: status.signal ? 128 + 9 : status.code, output };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Run the regression schedule (or `only` tests) against a fresh cluster, through pgdog in the
 * target's pooling mode, or directly.
 */
export async function runSchedule(
  suite: RegressSuite,
  options: RunScheduleOptions,
): Promise<ScheduleRun> {
  await using pg = await startPostgres({ settings: SERVER_SETTINGS });
  await createRegressionDatabase(pg);

  let proxy: Awaited<ReturnType<typeof startProxy>> | undefined;
  if (options.target !== "direct") {
    proxy = await startProxy({
      config: {
        general: {
          pooler_mode: options.target,
          default_pool_size: POOL_SIZE,
          // An idle pool keeps no server connection: DROP DATABASE in the tests needs none open.
          min_pool_size: 0,
          log_connections: false,
          log_disconnections: false,
        },
        databases: [{ name: DATABASE, host: pg.host, port: pg.port }],
      },
      users: { users: [{ name: "postgres", database: DATABASE, password: PASSWORD }] },
    });
  }
  const host = proxy?.host ?? pg.host;
  const port = proxy?.port ?? pg.port;

  const outputDir = options.outputDir ?? await Deno.makeTempDir({ prefix: "pgdog-compat-" });
  try {
    await Deno.mkdir(`${outputDir}/results`, { recursive: true });
    // The server (user postgres) writes files there (COPY TO, lo_export).
    await Deno.chmod(outputDir, 0o755);
    await Deno.chmod(`${outputDir}/results`, 0o777);

    const args = [
      "--use-existing",
      `--host=${host}`,
      `--port=${port}`,
      "--user=postgres",
      `--dbname=${DATABASE}`,
      `--bindir=${suite.binDir}`,
      `--inputdir=${suite.regressDir}`,
      `--outputdir=${outputDir}`,
      `--dlpath=${suite.libDir}`,
      ...(options.only ?? [`--schedule=${suite.regressDir}/parallel_schedule`]),
    ];
    const started = Date.now();
    const { code, output } = await runPgRegress(suite.pgRegress, args, {
      env: {
        PGPASSWORD: PASSWORD,
        PGPASSFILE: "/nonexistent/pgdog-compat-pgpass",
        PGSSLMODE: "disable",
        PGCONNECT_TIMEOUT: "30",
      },
      onLine: options.onLine ?? (() => {}),
      timeoutMs: options.timeoutMs ?? 30 * 60_000,
    });
    const elapsedMs = Date.now() - started;
    let diffs = "";
    try {
      diffs = await Deno.readTextFile(`${outputDir}/regression.diffs`);
    } catch {
      // No failures, no file.
    }
    return {
      target: options.target,
      outcomes: parseRegressOutput(output),
      diffs: splitDiffs(diffs),
      code,
      output,
      elapsedMs,
      proxyLogs: proxy?.logs() ?? "",
    };
  } finally {
    await proxy?.stop();
    if (!options.outputDir) await Deno.remove(outputDir, { recursive: true }).catch(() => {});
  }
}
