/**
 * Real PostgreSQL clients for tests: psql, pgbench and npm:pg.
 *
 * @module
 */

import pg from "pg";
import postgres from "postgres";
import { NO_PGPASS, pgTool, runCommand } from "./command.ts";

/** Where and as whom a client connects. */
export interface PgTarget {
  /** Host, e.g. "127.0.0.1". */
  host: string;
  /** TCP port. */
  port: number;
  /** User name. */
  user: string;
  /** Password; none by default (and ~/.pgpass is ignored). */
  password?: string;
  /** Database name. */
  database: string;
}

/** Options for {@linkcode psql}. */
export interface PsqlOptions {
  /** Extra psql arguments, placed before `-c`/`-f`. */
  extraArgs?: string[];
  /** Standard input; with an empty `sql` it is the script (`-f -`). */
  stdin?: string;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** PGSSLMODE; "disable" by default. */
  sslmode?: string;
  /** Kill psql after this many milliseconds; 60 000 by default. */
  timeoutMs?: number;
}

/** Outcome of a client program run. */
export interface ClientResult {
  /** Exit code (non-zero on failure; 128 + signal when killed). */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
}

function clientEnv(
  target: PgTarget,
  sslmode: string | undefined,
  extra: Record<string, string> | undefined,
): Record<string, string> {
  const env: Record<string, string> = {
    PGCONNECT_TIMEOUT: "10",
    PGSSLMODE: sslmode ?? "disable",
    PGPASSFILE: NO_PGPASS,
  };
  if (target.password !== undefined) env.PGPASSWORD = target.password;
  // An inherited PGPASSWORD must not leak into a run that has no password.
  else env.PGPASSWORD = "";
  return { ...env, ...extra };
}

/**
 * Run psql (`-X -A -t -w -v ON_ERROR_STOP=1`) against `target` with `-c sql`,
 * or with the script on standard input when `sql` is empty and
 * `options.stdin` is given. Never throws on a non-zero exit.
 */
export async function psql(
  target: PgTarget,
  sql: string,
  options: PsqlOptions = {},
): Promise<ClientResult> {
  const args = [
    "-X",
    "-A",
    "-t",
    "-w",
    "-v",
    "ON_ERROR_STOP=1",
    "-h",
    target.host,
    "-p",
    String(target.port),
    "-U",
    target.user,
    "-d",
    target.database,
    ...(options.extraArgs ?? []),
  ];
  if (sql === "" && options.stdin !== undefined) args.push("-f", "-");
  else args.push("-c", sql);
  const result = await runCommand(pgTool("psql"), args, {
    env: clientEnv(target, options.sslmode, options.env),
    stdin: options.stdin,
    timeoutMs: options.timeoutMs ?? 60_000,
  });
  return { code: result.code, stdout: result.stdout, stderr: result.stderr };
}

/** Options for {@linkcode pgbench}. */
export interface PgbenchOptions {
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Kill pgbench after this many milliseconds; 300 000 by default. */
  timeoutMs?: number;
}

/** pgbench's outcome, with the summary numbers parsed when present. */
export interface PgbenchResult extends ClientResult {
  /** Transactions per second (without initial connection time). */
  tps?: number;
  /** Transactions actually processed. */
  processed?: number;
  /** Failed transactions. */
  failed?: number;
  /** Average latency in milliseconds. */
  latencyAvgMs?: number;
}

/** Parse the summary of pgbench 15's output. */
export function parsePgbenchOutput(stdout: string): Omit<PgbenchResult, keyof ClientResult> {
  const parsed: Omit<PgbenchResult, keyof ClientResult> = {};
  const processed = stdout.match(/number of transactions actually processed:\s*(\d+)/);
  if (processed) parsed.processed = Number(processed[1]);
  const failed = stdout.match(/number of failed transactions:\s*(\d+)/);
  if (failed) parsed.failed = Number(failed[1]);
  const tps = stdout.match(/tps = ([\d.]+) \(without initial connection time\)/) ??
    stdout.match(/tps = ([\d.]+)/);
  if (tps) parsed.tps = Number(tps[1]);
  const latency = stdout.match(/latency average = ([\d.]+) ms/);
  if (latency) parsed.latencyAvgMs = Number(latency[1]);
  return parsed;
}

/**
 * Run `pgbench -h -p -U <args> <database>` against `target`. Never throws on
 * a non-zero exit.
 */
export async function pgbench(
  target: PgTarget,
  args: string[],
  options: PgbenchOptions = {},
): Promise<PgbenchResult> {
  const result = await runCommand(
    pgTool("pgbench"),
    ["-h", target.host, "-p", String(target.port), "-U", target.user, ...args, target.database],
    {
      env: clientEnv(target, undefined, options.env),
      timeoutMs: options.timeoutMs ?? 300_000,
    },
  );
  return {
    code: result.code,
    stdout: result.stdout,
    stderr: result.stderr,
    ...parsePgbenchOutput(result.stdout),
  };
}

/** Options for {@linkcode connectPg}. */
export interface ConnectPgOptions {
  /** Connection timeout in milliseconds; 10 000 by default. */
  connectionTimeoutMillis?: number;
  /** application_name to send. */
  applicationName?: string;
  /** Called with errors the connection reports after connecting (they are swallowed otherwise). */
  onError?: (err: Error) => void;
}

/**
 * Connect with npm:pg. An error handler is installed so a connection killed
 * under the client does not crash the test; call `client.end()` when done.
 */
export async function connectPg(
  target: PgTarget,
  options: ConnectPgOptions = {},
): Promise<pg.Client> {
  const client = new pg.Client({
    host: target.host,
    port: target.port,
    user: target.user,
    password: target.password,
    database: target.database,
    connectionTimeoutMillis: options.connectionTimeoutMillis ?? 10_000,
    application_name: options.applicationName,
    ssl: false,
  });
  client.on("error", (err: Error) => options.onError?.(err));
  await client.connect();
  return client;
}

/**
 * A postgres.js client of `target` (no TLS, notices ignored); end it with `sql.end()`. Prepared
 * statements by default, as postgres.js does.
 */
export function connectPostgresJs(
  target: PgTarget,
  options: { prepare?: boolean; max?: number } = {},
): postgres.Sql {
  return postgres({
    host: target.host,
    port: target.port,
    user: target.user,
    password: target.password,
    database: target.database,
    prepare: options.prepare ?? true,
    max: options.max ?? 1,
    ssl: false,
    connect_timeout: 10,
    onnotice: () => {},
  });
}
