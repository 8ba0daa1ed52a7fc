/**
 * Non-deterministic function calls in a write that runs on several shards (`[rewrite]
 * non_deterministic_functions = "rewrite"`): `now()`, `current_timestamp`, `random()`,
 * `gen_random_uuid()` and the like would give each shard its own value, so pgdog asks one shard
 * for the values once ({@linkcode valuesQuery}) and writes each call as a typed literal
 * ({@linkcode substituteCalls}) in the text every shard runs.
 *
 * The time functions all come from two instants: the transaction's (`now()`, `current_date`,
 * `localtimestamp`...: the same for every statement of a transaction, see the caller) and the
 * statement's (`statement_timestamp()`). They are written as that instant in UTC
 * (`'2026-12-07 10:00:00.123456+00'::timestamptz`), cast where the call's type differs
 * (`::date`, `::timestamp(3)`), so the shard's own session (its TimeZone) makes the local date
 * or time, as the call would have. `clock_timestamp()`, `random()`, `gen_random_uuid()`,
 * `uuid_generate_v4()` and `timeofday()` get a value per call.
 *
 * Only calls in expressions count: not a function in FROM (`FROM generate_series(...)` is a
 * table), nor one in a statement other than INSERT, UPDATE, DELETE, MERGE or a lone SELECT (the
 * caller asks for writes only; DDL keeps `DEFAULT now()` a function). In a text of several
 * statements, the calls of every INSERT, UPDATE, DELETE and MERGE count.
 *
 * ```ts
 * import { loadParser } from "./analyze.ts";
 * import { findNonDeterministicCalls, substituteCalls, valuesQuery } from "./non_deterministic.ts";
 * await loadParser();
 * const sql = "INSERT INTO t VALUES (now(), random())";
 * const calls = findNonDeterministicCalls(sql);
 * valuesQuery(calls); // SELECT to_char(now() AT TIME ZONE 'UTC', ...), random()::text
 * substituteCalls(sql, calls, { transaction: "2026-12-07 10:00:00.123456+00", perCall: ["0.5"] });
 * // "INSERT INTO t VALUES ('2026-12-07 10:00:00.123456+00'::timestamptz, '0.5'::float8)"
 * ```
 *
 * @module
 */

import { parseSync } from "libpg-query";
import { skipBlanks } from "./lex.ts";
import { MAX_NESTING, nestingEstimate } from "./depth.ts";
import { walkTree } from "./tree.ts";
import { byteOffsetsToIndexes } from "./unique_id_calls.ts";

/** What a call's value comes from. */
export type CallSource = "transaction" | "statement" | "call";

/** One non-deterministic call in a statement's text. */
export interface NonDeterministicCall {
  /** [start, end) in UTF-16 code units, from the name to the closing `)` or the keyword's end. */
  start: number;
  end: number;
  source: CallSource;
  /**
   * The literal's type after `'<value>'::`: for the time calls, the cast applied to the instant
   * (`timestamptz`, `timestamptz::date`, `timestamptz::timestamp(3)`...).
   */
  type: string;
  /** For "call": the expression that computes its value as text on a shard. */
  valueSql: string;
}

/** The values a statement's calls get (see {@linkcode valuesQuery}). */
export interface CallValues {
  /** The transaction's instant, UTC (`YYYY-MM-DD HH:MM:SS.ffffff+00`). */
  transaction?: string;
  /** The statement's instant, UTC. */
  statement?: string;
  /** One value per "call" call, in text order. */
  perCall: (string | null)[];
}

const MAYBE = /now|current_|local|_timestamp|random|uuid|timeofday/i;

/** Time calls written as keywords (SQLValueFunction): the cast of the transaction's instant. */
const SQL_VALUE_FUNCTIONS: Record<string, { type: string; typmod: boolean }> = {
  SVFOP_CURRENT_DATE: { type: "date", typmod: false },
  SVFOP_CURRENT_TIME: { type: "timetz", typmod: false },
  SVFOP_CURRENT_TIME_N: { type: "timetz", typmod: true },
  SVFOP_CURRENT_TIMESTAMP: { type: "timestamptz", typmod: false },
  SVFOP_CURRENT_TIMESTAMP_N: { type: "timestamptz", typmod: true },
  SVFOP_LOCALTIME: { type: "time", typmod: false },
  SVFOP_LOCALTIME_N: { type: "time", typmod: true },
  SVFOP_LOCALTIMESTAMP: { type: "timestamp", typmod: false },
  SVFOP_LOCALTIMESTAMP_N: { type: "timestamp", typmod: true },
};

/** Functions without arguments, by name (schema pg_catalog or none, except as noted). */
const FUNCTIONS: Record<string, { source: CallSource; type: string; anySchema?: boolean }> = {
  now: { source: "transaction", type: "timestamptz" },
  transaction_timestamp: { source: "transaction", type: "timestamptz" },
  statement_timestamp: { source: "statement", type: "timestamptz" },
  clock_timestamp: { source: "call", type: "timestamptz" },
  random: { source: "call", type: "float8" },
  gen_random_uuid: { source: "call", type: "uuid" },
  // uuid-ossp lives in whatever schema the extension was created in.
  uuid_generate_v4: { source: "call", type: "uuid", anySchema: true },
  timeofday: { source: "call", type: "text" },
};

/** How an instant is read as text: UTC, microseconds, whatever the session's DateStyle. */
function instantSql(expression: string): string {
  return `to_char(${expression} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'`;
}

/** False when `sql` certainly calls none of the functions (a cheap test before parsing). */
export function mayCallNonDeterministic(sql: string): boolean {
  return MAYBE.test(sql);
}

/**
 * The non-deterministic calls of `sql`, in text order; empty when there is none, when no
 * statement is a write this applies to, or when the text does not parse.
 */
export function findNonDeterministicCalls(sql: string): NonDeterministicCall[] {
  if (!mayCallNonDeterministic(sql) || nestingEstimate(sql) > MAX_NESTING) return [];
  let tree: { stmts?: Array<{ stmt?: Record<string, unknown> }> };
  try {
    tree = parseSync(sql);
  } catch {
    return [];
  }
  const stmts = tree.stmts ?? [];
  // One SELECT is one the caller knows writes; among several, only the plain writes count.
  const writes = stmts.map((s) => s.stmt).filter((stmt) =>
    stmt !== undefined && WRITES.has(Object.keys(stmt)[0]) &&
    (stmts.length === 1 || Object.keys(stmt)[0] !== "SelectStmt")
  );
  if (writes.length === 0) return [];
  const found: Array<{ location: number; source: CallSource; type: string; paren: boolean }> = [];
  walkTree(writes, (key, value) => {
    // A function in FROM is a table (FROM generate_series(...)): its calls stay.
    if (key === "RangeFunction") return false;
    if (key === "SQLValueFunction") {
      const v = value as { op?: string; typmod?: number; location?: number };
      const spec = v.op === undefined ? undefined : SQL_VALUE_FUNCTIONS[v.op];
      if (spec === undefined || typeof v.location !== "number") return;
      const typmod = spec.typmod && typeof v.typmod === "number" && v.typmod >= 0
        ? `(${v.typmod})`
        : "";
      const type = spec.type === "timestamptz"
        ? `timestamptz${typmod}`
        : `timestamptz::${spec.type}${typmod}`;
      found.push({ location: v.location, source: "transaction", type, paren: spec.typmod });
    } else if (key === "FuncCall") {
      const spec = functionSpec(value);
      if (spec === null) return;
      found.push({
        location: (value as { location: number }).location,
        source: spec.source,
        type: spec.type,
        paren: true,
      });
    }
  });
  if (found.length === 0) return [];
  found.sort((a, b) => a.location - b.location);
  const indexes = byteOffsetsToIndexes(sql, found.map((f) => f.location));
  const calls: NonDeterministicCall[] = [];
  found.forEach((f, i) => {
    const start = indexes[i];
    const end = callEnd(sql, start, f.paren);
    if (end <= start) return;
    const text = sql.slice(start, end);
    calls.push({ start, end, source: f.source, type: f.type, valueSql: `(${text})::text` });
  });
  return calls;
}

const WRITES = new Set(["InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "SelectStmt"]);

function functionSpec(value: unknown): { source: CallSource; type: string } | null {
  const call = value as {
    funcname?: Array<{ String?: { sval?: string } }>;
    args?: unknown[];
    agg_star?: boolean;
    agg_distinct?: boolean;
    agg_order?: unknown;
    agg_filter?: unknown;
    over?: unknown;
    location?: number;
  };
  const name = call.funcname;
  if (name === undefined || name.length < 1 || name.length > 2) return null;
  const fn = name[name.length - 1].String?.sval;
  const spec = fn === undefined ? undefined : FUNCTIONS[fn];
  if (spec === undefined || !Object.hasOwn(FUNCTIONS, fn!)) return null;
  if (name.length === 2 && !spec.anySchema && name[0].String?.sval !== "pg_catalog") return null;
  if ((call.args?.length ?? 0) !== 0 || call.agg_star || call.agg_distinct) return null;
  if (call.agg_order !== undefined || call.agg_filter !== undefined || call.over !== undefined) {
    return null;
  }
  if (typeof call.location !== "number") return null;
  return spec;
}

/**
 * The query that computes the values of `calls` on one shard, one text column each: the
 * transaction's instant (when a call needs it), the statement's, then each "call" call's value.
 * Null when there is nothing to compute.
 */
export function valuesQuery(calls: readonly NonDeterministicCall[]): string | null {
  if (calls.length === 0) return null;
  const columns: string[] = [];
  if (calls.some((c) => c.source === "transaction")) columns.push(instantSql("now()"));
  if (calls.some((c) => c.source === "statement")) {
    columns.push(instantSql("statement_timestamp()"));
  }
  for (const c of calls) {
    if (c.source !== "call") continue;
    columns.push(
      c.type === "timestamptz" ? instantSql(c.valueSql.replace(/::text$/, "")) : c.valueSql,
    );
  }
  return `SELECT ${columns.join(", ")}`;
}

/** Reads the row of {@linkcode valuesQuery} back as values. */
export function valuesFromRow(
  calls: readonly NonDeterministicCall[],
  row: readonly (string | null)[],
): CallValues {
  let i = 0;
  const values: CallValues = { perCall: [] };
  if (calls.some((c) => c.source === "transaction")) values.transaction = row[i++] ?? undefined;
  if (calls.some((c) => c.source === "statement")) values.statement = row[i++] ?? undefined;
  for (const c of calls) if (c.source === "call") values.perCall.push(row[i++] ?? null);
  return values;
}

/** `sql` with each call replaced by its value as a typed literal. */
export function substituteCalls(
  sql: string,
  calls: readonly NonDeterministicCall[],
  values: CallValues,
): string {
  let out = "";
  let from = 0;
  let perCall = 0;
  for (const c of calls) {
    const value = c.source === "transaction"
      ? values.transaction
      : c.source === "statement"
      ? values.statement
      : values.perCall[perCall++];
    out += sql.slice(from, c.start) +
      (value === undefined || value === null ? "NULL" : `'${value.replaceAll("'", "''")}'`) +
      `::${c.type}`;
    from = c.end;
  }
  return out + sql.slice(from);
}

/**
 * The end of the call whose name starts at `start`: the name (words, dots, quoted names), then,
 * when `paren`, `(` ... `)` (optional for the keywords with a precision).
 */
function callEnd(sql: string, start: number, paren: boolean): number {
  let i = start;
  for (;;) {
    if (sql[i] === '"') {
      const close = sql.indexOf('"', i + 1);
      if (close < 0) return start;
      i = close + 1;
      if (sql[i] === '"') continue;
    } else {
      const from = i;
      while (i < sql.length && /[\p{L}\p{N}_$]/u.test(sql[i])) i++;
      if (i === from) return start;
    }
    const next = skipBlanks(sql, i);
    if (sql[next] !== ".") break;
    i = skipBlanks(sql, next + 1);
  }
  if (!paren) return i;
  const open = skipBlanks(sql, i);
  if (sql[open] !== "(") return i;
  const close = sql.indexOf(")", open);
  return close < 0 ? start : close + 1;
}
