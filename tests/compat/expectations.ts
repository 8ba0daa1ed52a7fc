/**
 * The expected failures of the compatibility run (`expected_failures.toml`: per pooling mode, a
 * test name and why it differs through pgdog) and the verdict on a run against them.
 *
 * @module
 */

import { parse } from "smol-toml";
import type { TestOutcome } from "./regress.ts";

/** Pooling modes the compatibility run covers. */
export const MODES = ["session", "transaction"] as const;

/** A pooling mode pgdog runs the schedule in. */
export type PoolMode = typeof MODES[number];

/** Expected failures: per mode, test name → reason. */
export type ExpectedFailures = Record<PoolMode, Map<string, string>>;

/** The file listing the expected failures, beside this module. */
export const EXPECTED_FAILURES_FILE: string = decodeURIComponent(
  new URL("./expected_failures.toml", import.meta.url).pathname,
);

/**
 * Parse expected_failures.toml: a `[session]` and a `[transaction]` table of `test = "reason"`.
 * Throws on anything else, on an empty reason, and on a name that is not a test of `tests`.
 */
export function parseExpectedFailures(text: string, tests: readonly string[]): ExpectedFailures {
  const doc = parse(text) as Record<string, unknown>;
  const known = new Set(tests);
  const out = { session: new Map(), transaction: new Map() } as ExpectedFailures;
  for (const [section, entries] of Object.entries(doc)) {
    if (!(MODES as readonly string[]).includes(section)) {
      throw new Error(`expected_failures.toml: unknown section [${section}]`);
    }
    if (typeof entries !== "object" || entries === null || Array.isArray(entries)) {
      throw new Error(`expected_failures.toml: [${section}] must be a table of test = "reason"`);
    }
    for (const [name, reason] of Object.entries(entries)) {
      if (typeof reason !== "string" || reason.trim() === "") {
        throw new Error(
          `expected_failures.toml: [${section}] ${name}: the reason must be a string`,
        );
      }
      if (!known.has(name)) {
        throw new Error(
          `expected_failures.toml: [${section}] ${name} is not a test of the schedule`,
        );
      }
      out[section as PoolMode].set(name, reason);
    }
  }
  return out;
}

/** Read and parse {@linkcode EXPECTED_FAILURES_FILE}. */
export async function loadExpectedFailures(tests: readonly string[]): Promise<ExpectedFailures> {
  return parseExpectedFailures(await Deno.readTextFile(EXPECTED_FAILURES_FILE), tests);
}

/** A run's outcomes judged against the expected failures of its mode. */
export interface Verdict {
  /** Tests that passed. */
  passed: string[];
  /** Failed tests that are listed, with their reasons. */
  expected: { name: string; reason: string }[];
  /** Failed tests that are not listed: these fail the run. */
  unexpected: string[];
  /** Listed tests that passed: the list can shrink (a warning, not a failure). */
  nowPassing: string[];
  /** Listed tests whose reason starts with "sometimes:" that passed (as they sometimes do). */
  passedSometimes: string[];
  /** Tests of the schedule pg_regress did not report (it stopped early): these fail the run. */
  missing: string[];
  /**
   * Unlisted failures (or unreported tests) of a first run that a second run did not repeat
   * (see {@linkcode confirmFailures}): timing-dependent, a warning.
   */
  unconfirmed: string[];
  /** Whether the run is acceptable: no unexpected failure and nothing missing. */
  ok: boolean;
}

/** A reason starting with this marks a test that fails in some runs only. */
export const SOMETIMES = "sometimes:";

/**
 * Judge `outcomes` of a run of `tests` against the mode's expected failures. A listed test that
 * passes goes to `nowPassing`, or to `passedSometimes` when its reason starts with "sometimes:".
 */
export function judge(
  outcomes: readonly TestOutcome[],
  options: { tests: readonly string[]; expected: Map<string, string> },
): Verdict {
  const reported = new Map(outcomes.map((o) => [o.name, o]));
  const verdict: Verdict = {
    passed: [],
    expected: [],
    unexpected: [],
    nowPassing: [],
    passedSometimes: [],
    missing: [],
    unconfirmed: [],
    ok: false,
  };
  for (const name of options.tests) {
    const outcome = reported.get(name);
    const reason = options.expected.get(name);
    if (!outcome) verdict.missing.push(name);
    else if (outcome.passed) {
      verdict.passed.push(name);
      if (reason?.startsWith(SOMETIMES)) verdict.passedSometimes.push(name);
      else if (reason !== undefined) verdict.nowPassing.push(name);
    } else if (reason !== undefined) verdict.expected.push({ name, reason });
    else verdict.unexpected.push(name);
  }
  verdict.ok = verdict.unexpected.length === 0 && verdict.missing.length === 0;
  return verdict;
}

/**
 * Keep only the unlisted failures and unreported tests of `first` that `second` (a run of the
 * same schedule) repeats; the others become `unconfirmed`. Through a pooler, which server
 * connection a statement lands on depends on timing, so a test that another test's session state
 * can reach fails now and then; a defect fails every time.
 */
export function confirmFailures(first: Verdict, second: Verdict): Verdict {
  const again = new Set([...second.unexpected, ...second.missing]);
  const unexpected = first.unexpected.filter((name) => again.has(name));
  const missing = first.missing.filter((name) => again.has(name));
  const unconfirmed = [...first.unexpected, ...first.missing].filter((name) => !again.has(name));
  return {
    ...first,
    unexpected,
    missing,
    unconfirmed,
    ok: unexpected.length === 0 && missing.length === 0,
  };
}
