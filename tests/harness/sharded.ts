/**
 * Differential testing of sharding: the same schema and rows in one plain PostgreSQL database
 * (the reference) and across N shards behind pgdog. A statement is run on both and the answers
 * compared (rows, columns, command tags, errors), over the simple protocol, the extended
 * protocol with text results and with binary results; rows can also be read from each shard
 * directly, to check where they landed.
 *
 * @module
 */

import assert from "node:assert/strict";
import type pg from "pg";
import { connectPg, type PgTarget } from "./clients.ts";
import { type PgCluster, startPostgres } from "./postgres.ts";
import { type ProxyProcess, startProxy, type TomlDocument } from "./proxy.ts";
import {
  type BackendMessage,
  commandTag,
  dataRowRaw,
  errorFields,
  fe,
  WireClient,
} from "../wire.ts";

/** The user and database every sharded setup uses. */
export const SHARDED_USER = "postgres";
export const SHARDED_PASSWORD = "differential-pw";
export const SHARDED_DB = "app";

/** Options for {@linkcode startSharded}. */
export interface ShardedOptions {
  /** Number of shards; 3 by default. */
  shards?: number;
  /** `[[sharded_tables]]` entries (`database` is filled in). */
  shardedTables: TomlDocument[];
  /** `[[omnisharded_tables]]` table names. */
  omnisharded?: string[];
  /** More `[general]` settings. */
  general?: TomlDocument;
  /** More top-level pgdog.toml sections (e.g. `sharded_schemas`). */
  extra?: TomlDocument;
  /** More user settings (users.toml). */
  user?: TomlDocument;
  /** postgresql.conf settings for every cluster (e.g. max_prepared_transactions). */
  settings?: Record<string, string | number | boolean>;
  /** Schema (DDL) created on every shard and on the reference before pgdog starts. */
  schema?: string;
  /**
   * An ICU locale (e.g. "en-US") for the default collation of the database, on the shards and
   * on the reference alike; the C locale by default.
   */
  icuLocale?: string;
  /** More deno flags for pgdog (e.g. `--allow-run` for plugins). */
  denoFlags?: string[];
}

/** Shards behind pgdog, and a plain database holding the same rows. */
export interface ShardedSetup extends AsyncDisposable {
  readonly shards: PgCluster[];
  readonly reference: PgCluster;
  readonly proxy: ProxyProcess;
  /** Through pgdog. */
  readonly target: PgTarget;
  /** The reference database, directly. */
  readonly referenceTarget: PgTarget;
  /** Runs SQL (psql) on the reference database and on every shard directly. */
  everywhere(sql: string): Promise<void>;
  /** Runs SQL (psql) on shard `i` directly; rows as text. */
  onShard(i: number, sql: string): Promise<string[][]>;
  /** For each value of the first column of `sql`, the shards that return it (asked directly). */
  placement(sql: string): Promise<Map<string, number[]>>;
  /**
   * Starts another pgdog in front of the same shards, with the same configuration plus these
   * `[general]` settings (stop it, or dispose of it, yourself); with its target.
   */
  startProxy(general: TomlDocument): Promise<{ proxy: ProxyProcess; target: PgTarget }>;
}

/** Starts the reference database, the shards and pgdog in front of the shards. */
export async function startSharded(options: ShardedOptions): Promise<ShardedSetup> {
  const n = options.shards ?? 3;
  const database = { name: SHARDED_DB, icuLocale: options.icuLocale };
  const clusters = await Promise.all(
    Array.from(
      { length: n + 1 },
      () => startPostgres({ databases: [database], settings: options.settings }),
    ),
  );
  const shards = clusters.slice(0, n);
  const reference = clusters[n];
  const everywhere = async (sql: string): Promise<void> => {
    await Promise.all(clusters.map((c) => c.sql(sql, { database: SHARDED_DB })));
  };
  const launch = (general: TomlDocument | undefined): Promise<ProxyProcess> =>
    startProxy({
      config: {
        general: { idle_healthcheck_interval: 0, query_timeout: 10_000, ...general },
        databases: shards.map((s, i) => ({
          name: SHARDED_DB,
          host: s.host,
          port: s.port,
          database_name: SHARDED_DB,
          shard: i,
        })),
        sharded_tables: options.shardedTables.map((t) => ({ database: SHARDED_DB, ...t })),
        omnisharded_tables: options.omnisharded?.length
          ? [{ database: SHARDED_DB, tables: options.omnisharded }]
          : undefined,
        ...options.extra,
      },
      users: {
        users: [{
          name: SHARDED_USER,
          password: SHARDED_PASSWORD,
          database: SHARDED_DB,
          ...options.user,
        }],
      },
      denoFlags: options.denoFlags,
    });
  const login = { user: SHARDED_USER, password: SHARDED_PASSWORD, database: SHARDED_DB };
  let proxy: ProxyProcess;
  try {
    if (options.schema) await everywhere(options.schema);
    proxy = await launch(options.general);
  } catch (e) {
    await Promise.all(clusters.map((c) => c[Symbol.asyncDispose]()));
    throw e;
  }
  const target = proxy.target(login);
  return {
    shards,
    reference,
    proxy,
    target,
    referenceTarget: {
      host: reference.host,
      port: reference.port,
      user: "postgres",
      database: SHARDED_DB,
    },
    everywhere,
    onShard: (i, sql) => shards[i].sql(sql, { database: SHARDED_DB }),
    async placement(sql: string): Promise<Map<string, number[]>> {
      const out = new Map<string, number[]>();
      for (let i = 0; i < shards.length; i++) {
        for (const [key] of await shards[i].sql(sql, { database: SHARDED_DB })) {
          out.set(key, [...(out.get(key) ?? []), i]);
        }
      }
      return out;
    },
    async startProxy(general: TomlDocument): Promise<{ proxy: ProxyProcess; target: PgTarget }> {
      const other = await launch({ ...options.general, ...general });
      return { proxy: other, target: other.target(login) };
    },
    async [Symbol.asyncDispose](): Promise<void> {
      await proxy.stop().catch(() => {});
      await Promise.all(clusters.map((c) => c[Symbol.asyncDispose]()));
    },
  };
}

/**
 * How a statement is sent: the simple protocol; the extended protocol (unnamed statement) with
 * text or binary results; or a named prepared statement executed twice (the second Bind and
 * Execute reuse it; its answer counts), binary results.
 */
export type Protocol = "simple" | "extended" | "binary" | "prepared";

/** What one database answered, in a form that compares across databases. */
export interface Answer {
  /** Column names and type OIDs. */
  columns?: Array<[string, number]>;
  /** Rows, each value as text (binary values as hex). */
  rows?: string[][];
  command?: string;
  rowCount?: number | null;
  /** SQLSTATE of the error, when it failed. */
  error?: string;
  message?: string;
}

let preparedNames = 0;

/**
 * Runs one statement with npm:pg on `client`, in the given protocol. npm:pg decodes binary
 * values as UTF-8 before handing them over, which loses bytes that aren't valid UTF-8: compare
 * binary results with {@linkcode wireAnswerOf} (as {@linkcode compareAnswers} does).
 */
export async function answerOf(
  client: pg.Client,
  sql: string,
  options: { protocol: Protocol; values?: unknown[] },
): Promise<Answer> {
  const { protocol, values } = options;
  const config: pg.QueryArrayConfig = {
    text: sql,
    rowMode: "array",
    // Values as PostgreSQL sends them, so both sides compare as text.
    types: { getTypeParser: () => (v: string | Buffer) => v } as unknown as pg.CustomTypesConfig,
  };
  if (protocol !== "simple") {
    config.values = values ?? [];
    // Without it npm:pg sends a statement without parameters in the simple protocol.
    (config as unknown as { queryMode: string }).queryMode = "extended";
  }
  if (protocol === "binary" || protocol === "prepared") {
    (config as unknown as { binary: boolean }).binary = true;
  }
  if (protocol === "prepared") config.name = `difftest_${++preparedNames}`;
  try {
    if (protocol === "prepared") await client.query(config);
    const r = await client.query(config);
    const result = (Array.isArray(r) ? r[r.length - 1] : r) as pg.QueryArrayResult;
    return {
      columns: result.fields.map((f: pg.FieldDef): [string, number] => [f.name, f.dataTypeID]),
      rows: result.rows.map((row: unknown[]) => row.map(valueText)),
      command: result.command,
      rowCount: result.rowCount,
    };
  } catch (e) {
    const err = e as { code?: string; message?: string };
    return { error: err.code ?? "?", message: err.message };
  }
}

/** The answer in the messages of one exchange (up to ReadyForQuery). */
function answerFromMessages(msgs: BackendMessage[]): Answer {
  const answer: Answer = { rows: [] };
  for (const m of msgs) {
    if (m.type === "T") answer.columns = rowDescriptionColumns(m.body);
    else if (m.type === "D") {
      answer.rows!.push(dataRowRaw(m.body).map((v) => v === null ? "NULL" : valueText(v)));
    } else if (m.type === "C") {
      const tag = commandTag(m.body).split(" ");
      answer.command = tag[0];
      answer.rowCount = tag.length > 1 ? Number(tag[tag.length - 1]) : null;
    } else if (m.type === "E") {
      const fields = errorFields(m.body);
      return { error: fields.C, message: fields.M };
    }
  }
  answer.columns ??= [];
  return answer;
}

function rowDescriptionColumns(body: Uint8Array): Array<[string, number]> {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const columns: Array<[string, number]> = [];
  let at = 2;
  for (let i = 0; i < view.getInt16(0); i++) {
    const end = body.indexOf(0, at);
    columns.push([new TextDecoder().decode(body.subarray(at, end)), view.getInt32(end + 7)]);
    at = end + 19;
  }
  return columns;
}

/**
 * Runs one statement on a raw protocol connection in the extended protocol with every result
 * column in binary, or in `resultFormats` (values kept byte for byte, shown as hex): `binary` with the unnamed
 * statement; `prepared` with a named statement executed twice (the second answer counts).
 * Parameters are sent as text.
 */
export async function wireAnswerOf(
  w: WireClient,
  sql: string,
  options: {
    protocol: "binary" | "prepared";
    values?: unknown[];
    /** Result format per column (0 text, 1 binary), as Bind sends them; `[1]` by default. */
    resultFormats?: number[];
  },
): Promise<Answer> {
  const params = (options.values ?? []).map((v) =>
    v === null || v === undefined ? null : String(v)
  );
  const name = options.protocol === "prepared" ? `difftest_${++preparedNames}` : "";
  const run = [
    fe.bind("", name, params, { resultFormats: options.resultFormats ?? [1] }),
    fe.describe("P", ""),
    fe.execute("", 0),
    fe.sync(),
  ];
  if (name === "") {
    await w.send(fe.parse("", sql), ...run);
    return answerFromMessages(await w.untilReady());
  }
  await w.send(fe.parse(name, sql), ...run);
  const first = answerFromMessages(await w.untilReady());
  if (first.error !== undefined) return first;
  await w.send(...run, fe.close("S", name), fe.sync());
  return answerFromMessages(await w.untilReady(2));
}

function valueText(v: unknown): string {
  if (v === null || v === undefined) return "NULL";
  if (v instanceof Uint8Array) {
    return `\\x${[...v].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
  }
  return String(v);
}

/** Options for {@linkcode compareAnswers} and {@linkcode differenceOf}. */
export interface CompareOptions {
  /** Protocols to try: simple, extended and binary by default. */
  protocols?: Protocol[];
  values?: unknown[];
  /** Rows may come back in any order (no ORDER BY): compare them sorted. */
  unordered?: boolean;
  /**
   * float4 and float8 columns are equal within rounding (a relative 1e-10 for float8, 1e-4 for
   * float4; NaN equals NaN): sums of floats depend on the order they are added in.
   */
  floats?: boolean;
}

const FLOAT4 = 700;
const FLOAT8 = 701;

/** A float column's value, text ("NaN", "-Infinity"...) or binary (hex of 4 or 8 bytes). */
function floatOf(text: string, oid: number): number {
  if (!text.startsWith("\\x")) return Number(text);
  const bytes = new Uint8Array(text.slice(2).match(/../g)!.map((h) => parseInt(h, 16)));
  const view = new DataView(bytes.buffer);
  return oid === FLOAT4 ? view.getFloat32(0) : view.getFloat64(0);
}

function floatsClose(a: string, b: string, oid: number): boolean {
  if (a === b) return true;
  if (a === "NULL" || b === "NULL") return false;
  const x = floatOf(a, oid);
  const y = floatOf(b, oid);
  if (Number.isNaN(x) || Number.isNaN(y)) return Number.isNaN(x) && Number.isNaN(y);
  if (!Number.isFinite(x) || !Number.isFinite(y)) return x === y;
  const tolerance = oid === FLOAT4 ? 1e-4 : 1e-10;
  return Math.abs(x - y) <= tolerance * Math.max(Math.abs(x), Math.abs(y), 1e-300);
}

/**
 * How `actual` (pgdog's answer) differs from `expected` (the reference's), or null when it
 * doesn't: the same SQLSTATE when the reference failed (messages may name pgdog's own
 * statements), else the same columns, rows, command and row count.
 */
export function differenceOf(
  expected: Answer,
  actual: Answer,
  options: Pick<CompareOptions, "unordered" | "floats"> = {},
): string | null {
  if (expected.error !== undefined || actual.error !== undefined) {
    if (actual.error === expected.error) return null;
    return expected.error !== undefined
      ? `expected error ${expected.error} (${expected.message}), got ${
        actual.error !== undefined
          ? `error ${actual.error} (${actual.message})`
          : `${actual.rows?.length} rows`
      }`
      : `expected ${expected.rows?.length} rows, got error ${actual.error} (${actual.message})`;
  }
  try {
    assert.deepEqual(actual.columns, expected.columns);
  } catch {
    return `columns: expected ${JSON.stringify(expected.columns)}, got ${
      JSON.stringify(actual.columns)
    }`;
  }
  if (actual.command !== expected.command || actual.rowCount !== expected.rowCount) {
    return `command: expected ${expected.command} ${expected.rowCount}, got ${actual.command} ${actual.rowCount}`;
  }
  const want = [...(expected.rows ?? [])];
  const got = [...(actual.rows ?? [])];
  if (options.unordered) {
    want.sort(compareRows);
    got.sort(compareRows);
  }
  if (want.length !== got.length) {
    return `expected ${want.length} rows, got ${got.length}: first expected ${
      JSON.stringify(want.slice(0, 3))
    }, first got ${JSON.stringify(got.slice(0, 3))}`;
  }
  const oids = (expected.columns ?? []).map(([, oid]) => oid);
  for (let r = 0; r < want.length; r++) {
    const same = want[r].length === got[r].length && want[r].every((v, c) =>
      v === got[r][c] ||
      (options.floats === true && (oids[c] === FLOAT4 || oids[c] === FLOAT8) &&
        floatsClose(v, got[r][c], oids[c]))
    );
    if (!same) {
      return `row ${r}: expected ${JSON.stringify(want[r])}, got ${JSON.stringify(got[r])}`;
    }
  }
  return null;
}

/**
 * Runs `sql` on the reference and through pgdog, in each protocol, and asserts the same answer
 * (rows in order unless `unordered`). Returns pgdog's answer in the last text protocol (simple
 * or extended; binary values are hex), else in the last protocol.
 */
export async function compareAnswers(
  setup: ShardedSetup,
  sql: string,
  options: CompareOptions = {},
): Promise<Answer> {
  const ref = await connectPg(setup.referenceTarget);
  const dog = await connectPg(setup.target);
  const refWire = await WireClient.connect(setup.referenceTarget);
  const dogWire = await WireClient.connect(setup.target);
  let last: Answer | undefined;
  try {
    for (const protocol of options.protocols ?? ["simple", "extended", "binary"]) {
      const run = { protocol, values: options.values };
      const wire = protocol === "binary" || protocol === "prepared";
      const expected = wire
        ? await wireAnswerOf(refWire, sql, { ...run, protocol })
        : await answerOf(ref, sql, run);
      const actual = wire
        ? await wireAnswerOf(dogWire, sql, { ...run, protocol })
        : await answerOf(dog, sql, run);
      const difference = differenceOf(expected, actual, options);
      if (difference !== null) assert.fail(`${protocol}: ${sql}\n${difference}`);
      if (!wire || last === undefined) last = actual;
    }
  } finally {
    await ref.end();
    await dog.end();
    await refWire.close();
    await dogWire.close();
  }
  return last ?? {};
}

/** Asserts that pgdog refuses `sql` with 0A000 (in each protocol) and returns the message. */
export async function assertRefused(
  setup: ShardedSetup,
  sql: string,
  options: { protocols?: Protocol[]; values?: unknown[]; message?: RegExp } = {},
): Promise<string> {
  const dog = await connectPg(setup.target);
  let message = "";
  try {
    for (const protocol of options.protocols ?? ["simple", "extended"]) {
      const a = await answerOf(dog, sql, { protocol, values: options.values });
      assert.equal(a.error, "0A000", `${protocol}: ${sql} answered ${JSON.stringify(a)}`);
      if (options.message) assert.match(a.message ?? "", options.message, sql);
      message = a.message ?? "";
    }
  } finally {
    await dog.end();
  }
  return message;
}

function compareRows(a: string[], b: string[]): number {
  const x = JSON.stringify(a);
  const y = JSON.stringify(b);
  return x < y ? -1 : x > y ? 1 : 0;
}
