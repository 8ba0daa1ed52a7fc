/**
 * Latency from pgbench's per-transaction logs (`pgbench -l --log-prefix DIR/tx`): one file per
 * thread, one line per transaction, `client_id transaction_no time script_no time_epoch time_us`,
 * where `time` is the transaction's latency in microseconds, or `failed` / `skipped`.
 *
 * @module
 */

/** Latency summary of one pgbench run, in milliseconds. */
export interface LatencySummary {
  /** Transactions that finished (a number in the `time` column). */
  count: number;
  /** Mean latency. */
  avgMs: number;
  /** 99th percentile (nearest rank). */
  p99Ms: number;
  /** Lines whose `time` is `failed`. */
  failed: number;
}

/** Summarises the latencies in pgbench's log text (the contents of one or more log files). */
export function summariseLatencies(texts: string[]): LatencySummary {
  let n = 0;
  let failed = 0;
  let cap = 1024;
  let values = new Float64Array(cap);
  for (const text of texts) {
    let start = 0;
    while (start < text.length) {
      let end = text.indexOf("\n", start);
      if (end < 0) end = text.length;
      // Third field: skip two spaces.
      const a = text.indexOf(" ", start);
      const b = a < 0 || a > end ? -1 : text.indexOf(" ", a + 1);
      if (b >= 0 && b < end) {
        const c = text.indexOf(" ", b + 1);
        const field = text.slice(b + 1, c < 0 || c > end ? end : c);
        const us = Number(field);
        if (field !== "" && Number.isFinite(us)) {
          if (n === cap) {
            cap *= 2;
            const grown = new Float64Array(cap);
            grown.set(values);
            values = grown;
          }
          values[n++] = us;
        } else if (field === "failed") {
          failed++;
        }
      }
      start = end + 1;
    }
  }
  if (n === 0) return { count: 0, avgMs: NaN, p99Ms: NaN, failed };
  const sorted = values.subarray(0, n).sort();
  let sum = 0;
  for (let i = 0; i < n; i++) sum += sorted[i];
  return {
    count: n,
    avgMs: sum / n / 1000,
    p99Ms: sorted[Math.max(0, Math.ceil(0.99 * n) - 1)] / 1000,
    failed,
  };
}

/** Reads every pgbench log file in `dir` and summarises them. */
export async function summariseLogDir(dir: string): Promise<LatencySummary> {
  const texts: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile) texts.push(await Deno.readTextFile(`${dir}/${entry.name}`));
  }
  return summariseLatencies(texts);
}
