/**
 * `deno task compat` as part of the test suite: PostgreSQL's own regression schedule
 * (parallel_schedule of Debian's source package of the installed PostgreSQL, run by pg_regress)
 * through pgdog in session mode and in transaction mode. A test failing that
 * tests/compat/expected_failures.toml does not list for the mode fails; listed tests that pass are
 * printed as a warning (the list should shrink).
 *
 * Needs what `.ci/run` installs: apt (the suite is fetched at run time into .cache/compat), make,
 * gcc and postgresql-server-dev-<major> (to build the suite's regress.so).
 */

import { runCompat } from "./compat/main.ts";
import type { PoolMode } from "./compat/expectations.ts";

async function runMode(mode: PoolMode): Promise<void> {
  const lines: string[] = [];
  const [result] = await runCompat({ targets: [mode], print: (line) => lines.push(line) });
  // The verdict's lines (counts, warnings) go to the log either way.
  console.log(lines.filter((l) => l.startsWith(`compat: ${mode}:`)).join("\n"));
  if (!result.verdict.ok) {
    throw new Error(
      `${result.verdict.unexpected.length} unexpected failures in ${mode} mode ` +
        `(${result.verdict.unexpected.join(", ")}), ${result.verdict.missing.length} tests ` +
        `not run:\n${lines.join("\n")}\n----- pgdog output (end) -----\n` +
        result.run.proxyLogs.slice(-4000),
    );
  }
}

Deno.test("compat: PostgreSQL's regression schedule through pgdog in session mode", async () => {
  await runMode("session");
});

Deno.test("compat: PostgreSQL's regression schedule through pgdog in transaction mode", async () => {
  await runMode("transaction");
});
