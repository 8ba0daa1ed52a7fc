import { deepStrictEqual, throws } from "node:assert/strict";
import { confirmFailures, judge, parseExpectedFailures } from "./expectations.ts";

const TESTS = ["test_setup", "guc", "stats", "temp", "prepare"];

Deno.test("parseExpectedFailures: per mode, test name and reason", () => {
  const parsed = parseExpectedFailures(
    [
      "[session]",
      'stats = "a reused server connection"',
      "[transaction]",
      'temp = "temp tables"',
      'prepare = "SQL PREPARE"',
    ].join("\n"),
    TESTS,
  );
  deepStrictEqual([...parsed.session], [["stats", "a reused server connection"]]);
  deepStrictEqual([...parsed.transaction.keys()], ["temp", "prepare"]);
});

Deno.test("parseExpectedFailures: refuses unknown sections and tests and empty reasons", () => {
  throws(() => parseExpectedFailures('[statement]\nguc = "x"', TESTS), /unknown section/);
  throws(() => parseExpectedFailures('[session]\ngcu = "x"', TESTS), /gcu is not a test/);
  throws(() => parseExpectedFailures('[session]\nguc = " "', TESTS), /reason must be/);
  throws(() => parseExpectedFailures("[session]\nguc = 1", TESTS), /reason must be/);
  throws(() => parseExpectedFailures('session = "x"', TESTS), /must be a table/);
});

Deno.test("judge: unlisted failures and unreported tests fail the run; listed passes are noted", () => {
  const outcome = (name: string, passed: boolean) => ({
    name,
    passed,
    status: passed ? "ok" : "FAILED",
    ms: 1,
  });
  const expected = new Map([
    ["stats", "reused"],
    ["guc", "reused"],
    ["prepare", "sometimes: timing"],
  ]);
  const verdict = judge(
    [
      outcome("test_setup", true),
      outcome("guc", true),
      outcome("stats", false),
      outcome("temp", false),
      outcome("prepare", true),
    ],
    { tests: TESTS, expected },
  );
  deepStrictEqual(verdict, {
    passed: ["test_setup", "guc", "prepare"],
    expected: [{ name: "stats", reason: "reused" }],
    unexpected: ["temp"],
    nowPassing: ["guc"],
    passedSometimes: ["prepare"],
    missing: [],
    unconfirmed: [],
    ok: false,
  });
  const unreported = judge([outcome("test_setup", true)], { tests: TESTS, expected });
  deepStrictEqual(unreported.missing, ["guc", "stats", "temp", "prepare"]);
  const clean = judge(TESTS.map((t) => outcome(t, t !== "stats")), { tests: TESTS, expected });
  deepStrictEqual([clean.ok, clean.unexpected, clean.missing], [true, [], []]);
});

Deno.test("confirmFailures: only unlisted failures a second run repeats fail the run", () => {
  const outcome = (name: string, passed: boolean) => ({
    name,
    passed,
    status: passed ? "ok" : "FAILED",
    ms: 1,
  });
  const options = { tests: TESTS, expected: new Map([["stats", "reused"]]) };
  const first = judge(
    [outcome("test_setup", true), outcome("guc", false), outcome("stats", false)],
    options,
  );
  deepStrictEqual([first.unexpected, first.missing], [["guc"], ["temp", "prepare"]]);

  // guc and temp fail again, prepare passes: prepare was timing.
  const second = judge(
    [outcome("test_setup", true), outcome("guc", false), outcome("prepare", true)],
    options,
  );
  const confirmed = confirmFailures(first, second);
  deepStrictEqual(
    [confirmed.unexpected, confirmed.missing, confirmed.unconfirmed, confirmed.ok],
    [["guc"], ["temp"], ["prepare"], false],
  );
  // The counts stay those of the first run.
  deepStrictEqual([confirmed.passed, confirmed.expected], [first.passed, first.expected]);

  const allPass = judge(TESTS.map((t) => outcome(t, true)), options);
  const cleared = confirmFailures(first, allPass);
  deepStrictEqual(
    [cleared.unexpected, cleared.missing, cleared.unconfirmed, cleared.ok],
    [[], [], ["guc", "temp", "prepare"], true],
  );
});
