/**
 * Smoke test of `deno task bench`: a one-second run against direct PostgreSQL, pgdog and pgdog with
 * a plugin (pgdog-plugin-cached) writes a results file with real, non-zero TPS, and the idle-client
 * memory and per-query cost checks run.
 */

import { ok } from "node:assert/strict";
import { REPO_ROOT, runCommand } from "./harness/mod.ts";

Deno.test("bench/run.ts: a short run writes a results table with real numbers", async () => {
  const out = await Deno.makeTempDir({ prefix: "pgdog-bench-test-" });
  try {
    const run = await runCommand(Deno.execPath(), [
      "run",
      "--allow-all",
      `${REPO_ROOT}/bench/run.ts`,
      "--seconds",
      "1",
      "--clients",
      "2",
      "--workloads",
      "select-simple",
      "--targets",
      "direct,pgdog,pgdog-plugin-cached",
      "--idle",
      "200",
      "--scale",
      "1",
      "--only",
      "pgbench",
      // The poolers on CPU 1, PostgreSQL and pgbench on the rest (with two CPUs or more).
      ...(navigator.hardwareConcurrency >= 2 ? ["--proxy-cpus", "1"] : []),
      "--out",
      out,
    ], { timeoutMs: 120_000, env: { NO_COLOR: "1" } });
    ok(run.code === 0, `bench exited with ${run.code}:\n${run.stderr}`);
    const report = await Deno.readTextFile(`${out}/latest.md`);
    const files = [...Deno.readDirSync(out)].map((e) => e.name);
    ok(files.length === 2, `expected <timestamp>.md and latest.md, got ${files}`);

    const row = report.split("\n").find((l) => l.startsWith("| -S -M simple | 2 |"));
    ok(row, `no -S -M simple row in:\n${report}`);
    const cells = row.split("|").map((c) => c.trim()).slice(1, -1);
    // workload, clients, TPS (direct, pgdog, pgdog-plugin-cached), latencies, errors,
    // pgdog/direct, pgdog-plugin-cached/pgdog
    ok(cells.slice(2, 5).every((c) => Number(c) > 0), `TPS not positive: ${row}`);
    ok(/^[\d.]+ \/ [\d.]+$/.test(cells[6]), `pgdog latency cell: ${cells[6]}`);
    ok(cells[8] === "0 / 0 / 0", `errors: ${cells[8]}`);
    ok(Number(cells[9]) > 0 && Number(cells[10]) > 0, `ratios: ${cells[9]}, ${cells[10]}`);

    const idle = report.split("\n").find((l) => l.startsWith("| pgdog | 200 |"));
    ok(idle, `no idle-client row in:\n${report}`);
    ok(Number.isFinite(Number(idle.split("|")[4].trim())), `RSS per client: ${idle}`);
    const impact = report.split("\n").filter((l) => /^\| (no )?.*idle clients.* \| -S -M /.test(l));
    ok(impact.length === 8, `expected 8 per-query cost rows, got ${impact.length}`);
    for (const line of impact) ok(Number(line.split("|")[3]) > 0, `no TPS: ${line}`);
    ok(/Machine: .+cores.+load average/.test(report), "machine description");
    if (navigator.hardwareConcurrency >= 2) {
      ok(/the poolers run on CPU 1, pgbench and PostgreSQL on CPU 0/.test(report), "CPU split");
    }
    ok(/Versions: pgdog .+deno .+PostgreSQL.+pgbench/.test(report), "versions");
  } finally {
    await Deno.remove(out, { recursive: true }).catch(() => {});
  }
});

Deno.test("bench/run.ts --only cross-shard: a small run writes ratios and pgdog's peak memory", async () => {
  const report = await benchReport(
    ["--only", "cross-shard", "--cross-shard-rows", "3000"],
    "latest-cross-shard.md",
  );
  const rows = report.split("\n").filter((l) =>
    /^\| (ORDER BY|count|GROUP BY|full ORDER BY)/.test(l)
  );
  ok(rows.length === 4, `expected 4 query rows in:\n${report}`);
  for (const row of rows) {
    const ratio = Number(row.split("|").at(-2)!.trim());
    ok(ratio > 0, `no ratio (refused or wrong?): ${row}`);
  }
  ok(
    /\| then streaming 3000 rows \| [\d.]+ \|/.test(report),
    `no peak memory row in:\n${report}`,
  );
});

/** Runs `bench/run.ts` with `args` into a fresh folder; the report `file` written there. */
async function benchReport(args: string[], file: string): Promise<string> {
  const out = await Deno.makeTempDir({ prefix: "pgdog-bench-test-" });
  try {
    const run = await runCommand(Deno.execPath(), [
      "run",
      "--allow-all",
      `${REPO_ROOT}/bench/run.ts`,
      ...args,
      "--out",
      out,
    ], { timeoutMs: 180_000, env: { NO_COLOR: "1" } });
    ok(run.code === 0, `bench exited with ${run.code}:\n${run.stderr}`);
    return await Deno.readTextFile(`${out}/${file}`);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
}

Deno.test("bench/run.ts --only two-pc: pgbench transfers across two shards stay balanced, with and without two-phase commit", async () => {
  const report = await benchReport(["--only", "two-pc", "--seconds", "1"], "latest-two-pc.md");
  const rows = report.split("\n").filter((l) => /^\| (direct|pgdog)/.test(l));
  ok(rows.length === 6, `expected 6 rows in:\n${report}`);
  for (const row of rows) {
    const cells = row.split("|").map((c) => c.trim());
    ok(Number(cells[3]) > 0, `no transactions: ${row}`);
    ok(cells[5] === "0", `failed transactions: ${row}`);
  }
  ok(
    /Sum of every balance afterwards: 0 .*prepared transactions left: 0, 0\./.test(report),
    `unbalanced or left prepared:\n${report}`,
  );
});

Deno.test("bench/run.ts --only copy: a small COPY through pgdog into 3 shards gives ratios", async () => {
  const report = await benchReport(["--only", "copy", "--copy-rows", "20000"], "latest-copy.md");
  const rows = report.split("\n").filter((l) => /^\| (text|binary) \|/.test(l));
  ok(rows.length === 2, `expected 2 format rows in:\n${report}`);
  for (const row of rows) {
    const ratio = Number(row.split("|").at(-2)!.trim());
    ok(ratio > 0, `no ratio: ${row}`);
  }
  ok(/peak \(VmHWM\) \d+ MiB/.test(report), `no peak memory in:\n${report}`);
});
