/**
 * Small helpers the integration tests share: waiting for a condition, reading errors' SQLSTATEs,
 * first rows.
 *
 * @module
 */

import type pg from "pg";
import { sleep } from "./net.ts";

/** The SQLSTATE of an error a driver raised, if it has one. */
export function codeOf(e: unknown): string | undefined {
  return (e as { code?: string })?.code;
}

/** Resolves with the error a promise rejects with, or null when it fulfils. */
export function failure<T>(p: Promise<T>): Promise<(Error & { code?: string }) | null> {
  return p.then(() => null, (e) => e as Error & { code?: string });
}

/** The first row of an npm:pg query. */
export async function row(c: pg.Client, sql: string): Promise<Record<string, unknown>> {
  return (await c.query(sql)).rows[0];
}

/** Polls `check` until it returns true; false when `timeoutMs` passes first. */
export async function waitUntil(
  check: () => Promise<boolean>,
  timeoutMs: number,
  intervalMs = 50,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await sleep(intervalMs);
  }
  return await check();
}
