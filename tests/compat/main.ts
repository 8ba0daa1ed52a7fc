/**
 * `deno task compat`: PostgreSQL's own regression schedule (parallel_schedule of Debian's
 * source package of the installed PostgreSQL) run by pg_regress through pgdog, in session and/or
 * transaction mode, judged against tests/compat/expected_failures.toml. Exits 1 when a test fails
 * that the file does not list for that mode (or pg_regress stops early); listed tests that pass
 * are reported, so the list can shrink.
 *
 * ```
 * deno task compat [--mode session|transaction|both|direct] [--keep DIR] [--quiet]
 * ```
 *
 * `direct` runs the schedule against PostgreSQL without pgdog, a baseline where every test passes.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  confirmFailures,
  EXPECTED_FAILURES_FILE,
  judge,
  loadExpectedFailures,
  MODES,
  type PoolMode,
  type Verdict,
} from "./expectations.ts";
import { type CompatTarget, runSchedule, type ScheduleRun } from "./regress.ts";
import { prepareSuite, type RegressSuite } from "./suite.ts";

/** Options of {@linkcode runCompat}. */
export interface CompatOptions {
  /** Targets to run, one after another. */
  targets: CompatTarget[];
  /** Keep each run's pg_regress output directory in `<keepDir>/<target>`. */
  keepDir?: string;
  /** Progress and report lines; the console by default. */
  print?: (line: string) => void;
  /** Print each line pg_regress prints, as it runs. */
  verbose?: boolean;
}

/** One target's run and its verdict. */
export interface CompatResult {
  /** The run. */
  run: ScheduleRun;
  /** Its verdict against the expected failures (for "direct": no failure expected). */
  verdict: Verdict;
  /** Number of tests in the schedule. */
  total: number;
}

/** Lines of a diff worth printing for an unexpected failure. */
const DIFF_LINES = 60;

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(0)} s`;
}

/** Print the verdict of one run: unexpected failures with their diffs, listed ones that pass. */
function report(
  result: CompatResult,
  suite: RegressSuite,
  print: (line: string) => void,
): void {
  const { run, verdict } = result;
  const printDiff = (name: string, maxLines: number) => {
    const lines = (run.diffs.get(name) ?? "(no diff)").split("\n");
    for (const line of lines.slice(0, maxLines)) print(`  ${line}`);
    if (lines.length > maxLines) print(`  ... (${lines.length - maxLines} more lines)`);
  };
  for (const name of verdict.unexpected) {
    print(`compat: ${run.target}: ${name} FAILED and is not in expected_failures.toml; its diff:`);
    printDiff(name, DIFF_LINES);
  }
  if (verdict.missing.length > 0) {
    print(
      `compat: ${run.target}: pg_regress (exit ${run.code}) did not report ` +
        `${verdict.missing.length} tests: ${verdict.missing.join(", ")}`,
    );
    print(run.output.split("\n").slice(-30).join("\n"));
  }
  if (verdict.unconfirmed.length > 0) {
    print(
      `compat: ${run.target}: warning: failed, but passed when the schedule ran again ` +
        `(timing: list them if they fail again): ${verdict.unconfirmed.join(", ")}`,
    );
    for (const name of verdict.unconfirmed) {
      print(`compat: ${run.target}: ${name}'s diff in the first run:`);
      printDiff(name, DIFF_LINES / 2);
    }
  }
  if (verdict.nowPassing.length > 0) {
    print(
      `compat: ${run.target}: warning: listed in expected_failures.toml but passed this time ` +
        `(remove them if they pass again): ${verdict.nowPassing.join(", ")}`,
    );
  }
  if (verdict.passedSometimes.length > 0) {
    print(
      `compat: ${run.target}: listed as failing "sometimes:" and passed this time: ` +
        verdict.passedSometimes.join(", "),
    );
  }
  print(
    `compat: ${run.target}: ${counts(verdict, suite.tests.length)}, in ${seconds(run.elapsedMs)}`,
  );
}

/** "214 of 217 passed, 3 failed as listed, 0 failed unlisted" and the rarer counts. */
function counts(verdict: Verdict, total: number): string {
  const parts = [
    `${verdict.passed.length} of ${total} passed`,
    `${verdict.expected.length} failed as listed`,
    `${verdict.unexpected.length} failed unlisted`,
  ];
  if (verdict.unconfirmed.length > 0) {
    parts.push(`${verdict.unconfirmed.length} failed once but not on a second run`);
  }
  if (verdict.missing.length > 0) parts.push(`${verdict.missing.length} not run`);
  return parts.join(", ");
}

/** Run the schedule for each target and judge it; prints a report per target. */
export async function runCompat(options: CompatOptions): Promise<CompatResult[]> {
  const print = options.print ?? ((line: string) => console.log(line));
  const suite = await prepareSuite({ log: print });
  const expected = await loadExpectedFailures(suite.tests);
  print(
    `compat: PostgreSQL ${suite.debianVersion} regression suite, ${suite.tests.length} tests ` +
      `(parallel_schedule); expected failures: ${EXPECTED_FAILURES_FILE}`,
  );
  const results: CompatResult[] = [];
  for (const target of options.targets) {
    const run = (attempt: string) => {
      print(
        `compat: ${target}: running pg_regress ${
          target === "direct" ? "against PostgreSQL" : `through pgdog (${target} mode)`
        }${attempt}`,
      );
      return runSchedule(suite, {
        target,
        outputDir: options.keepDir
          ? `${options.keepDir}/${target}${attempt ? "-again" : ""}`
          : undefined,
        onLine: options.verbose ? print : undefined,
      });
    };
    const judgeRun = (r: ScheduleRun) =>
      judge(r.outcomes, {
        tests: suite.tests,
        expected: target === "direct" ? new Map() : expected[target as PoolMode],
      });
    const first = await run("");
    let verdict = judgeRun(first);
    if (!verdict.ok) {
      const suspects = [...verdict.unexpected, ...verdict.missing];
      print(
        `compat: ${target}: ${suspects.length} failures not in expected_failures.toml ` +
          `(${suspects.join(", ")}); running the schedule again to tell a defect (fails again) ` +
          "from timing (passes)",
      );
      verdict = confirmFailures(verdict, judgeRun(await run(" again")));
    }
    const result = { run: first, verdict, total: suite.tests.length };
    report(result, suite, print);
    results.push(result);
  }
  return results;
}

/** The one-line summary of all runs. */
export function summaryLine(results: CompatResult[], total: number): string {
  const parts = results.map(({ run, verdict }) => `${run.target}: ${counts(verdict, total)}`);
  const ok = results.every((r) => r.verdict.ok);
  return `compat ${ok ? "ok" : "FAILED"}: ${parts.join("; ")}`;
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      mode: { type: "string", default: "both" },
      keep: { type: "string" },
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(
      "deno task compat [--mode session|transaction|both|direct] [--keep DIR] [--quiet]\n\n" +
        "Runs PostgreSQL's regression schedule through pgdog and compares the failures with\n" +
        "tests/compat/expected_failures.toml. --keep DIR keeps pg_regress's results and\n" +
        "regression.diffs in DIR/<mode>; --quiet hides pg_regress's per-test lines.",
    );
    return 0;
  }
  const targets: CompatTarget[] = values.mode === "both"
    ? [...MODES]
    : ["session", "transaction", "direct"].includes(values.mode)
    ? [values.mode as CompatTarget]
    : [];
  if (targets.length === 0) {
    console.error(
      `compat: --mode must be session, transaction, both or direct, not ${values.mode}`,
    );
    return 2;
  }
  const started = Date.now();
  const results = await runCompat({
    targets,
    keepDir: values.keep,
    verbose: !values.quiet,
  });
  console.log(`${summaryLine(results, results[0].total)}; ${seconds(Date.now() - started)} in all`);
  return results.every((r) => r.verdict.ok) ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
