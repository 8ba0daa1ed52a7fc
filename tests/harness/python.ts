/**
 * psycopg 3 (Debian's python3-psycopg) as a test client: a Python script gets the connection
 * string in `DSN` and prints one JSON value, which the test reads back.
 *
 * @module
 */

import { existsSync } from "node:fs";
import type { PgTarget } from "./clients.ts";
import { NO_PGPASS, runCommand } from "./command.ts";

/** The Python that has psycopg: Debian's, not one a version manager put first on PATH. */
export const PYTHON: string = existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3";

/** A libpq connection string for `target`. */
export function dsn(target: PgTarget): string {
  const q = (v: string): string => `'${v.replaceAll("\\", "\\\\").replaceAll("'", "\\'")}'`;
  let s = `host=${q(target.host)} port=${target.port} user=${q(target.user)} ` +
    `dbname=${q(target.database)} sslmode=disable connect_timeout=10`;
  if (target.password !== undefined) s += ` password=${q(target.password)}`;
  return s;
}

/**
 * Runs a Python script with psycopg against `target`; the script reads `os.environ["DSN"]` and
 * prints its result as JSON on the last line of standard output. Throws with the script's stderr
 * when it fails.
 */
export async function runPsycopg<T = unknown>(
  target: PgTarget,
  script: string,
  options: { timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<T> {
  const prelude = "import os, sys, json\nimport psycopg\nDSN = os.environ['DSN']\n";
  const r = await runCommand(PYTHON, ["-c", prelude + script], {
    env: { DSN: dsn(target), PGPASSFILE: NO_PGPASS, ...options.env },
    timeoutMs: options.timeoutMs ?? 60_000,
  });
  if (r.code !== 0) {
    throw new Error(`python (psycopg) failed with ${r.code}:\n${r.stderr}\n${r.stdout}`);
  }
  const lines = r.stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]) as T;
}

/** True when psycopg 3 can be imported (Debian's python3-psycopg is installed). */
export async function psycopgAvailable(): Promise<boolean> {
  try {
    const r = await runCommand(PYTHON, ["-c", "import psycopg"], { timeoutMs: 20_000 });
    return r.code === 0;
  } catch {
    return false;
  }
}
