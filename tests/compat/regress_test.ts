import { deepStrictEqual } from "node:assert/strict";
import { parseRegressOutput, splitDiffs } from "./regress.ts";

Deno.test("parseRegressOutput: single tests, parallel groups, crashes and ignored failures", () => {
  const output = [
    "(using postmaster on 127.0.0.1, port 34309)",
    "============== running regression test queries        ==============",
    "test test_setup                   ... ok          197 ms",
    "test tablespace                   ... FAILED      420 ms",
    "parallel group (3 tests):  varchar char boolean",
    "     boolean                      ... ok          959 ms",
    "     char                         ... FAILED (test process exited with exit code 2)      497 ms",
    "     varchar                      ... failed (ignored)      468 ms",
    "test stats                        ... FAILED (test process was terminated by signal 9: Killed)" +
    "     12 ms",
    "test fast_default                 ... ok     (test process exited with exit code 1)      104 ms",
    "========================",
    " 3 of 7 tests failed. ",
  ].join("\n");
  deepStrictEqual(parseRegressOutput(output), [
    { name: "test_setup", passed: true, status: "ok", ms: 197 },
    { name: "tablespace", passed: false, status: "FAILED", ms: 420 },
    { name: "boolean", passed: true, status: "ok", ms: 959 },
    {
      name: "char",
      passed: false,
      status: "FAILED (test process exited with exit code 2)",
      ms: 497,
    },
    { name: "varchar", passed: false, status: "failed (ignored)", ms: 468 },
    {
      name: "stats",
      passed: false,
      status: "FAILED (test process was terminated by signal 9: Killed)",
      ms: 12,
    },
    {
      name: "fast_default",
      passed: true,
      status: "ok (test process exited with exit code 1)",
      ms: 104,
    },
  ]);
});

Deno.test("splitDiffs: one diff per test, named by its results file (also for _1.out variants)", () => {
  const diffs = [
    "diff -U3 /s/expected/temp.out /o/results/temp.out",
    "--- /s/expected/temp.out\t2026-05-11",
    "+++ /o/results/temp.out\t2026-12-07",
    "@@ -409,4 +409,3 @@",
    "-ERROR:  cannot PREPARE a transaction that has operated on temporary objects",
    "diff -U3 /s/expected/prepared_xacts_1.out /o/results/prepared_xacts.out",
    "--- /s/expected/prepared_xacts_1.out\t2026-05-11",
    "+++ /o/results/prepared_xacts.out\t2026-12-07",
    "@@ -1 +1 @@",
    "-a",
    "+b",
    "",
  ].join("\n");
  const byTest = splitDiffs(diffs);
  deepStrictEqual([...byTest.keys()], ["temp", "prepared_xacts"]);
  deepStrictEqual(byTest.get("prepared_xacts")?.split("\n").at(-2), "+b");
  deepStrictEqual(byTest.get("temp")?.split("\n").length, 6);
});
