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
}

/** Starts the reference database, the shards and pgdog in front of the shards. */
export async function startSharded(options: ShardedOptions): Promise<ShardedSetup> {
  const n = options.shards ?? 3;
  const clusters = await Promise.all(
    Array.from(
      { length: n + 1 },
      () => startPostgres({ databases: [SHARDED_DB], settings: options.settings }),
    ),
  );
  const shards = clusters.slice(0, n);
  const reference = clusters[n];
  const everywhere = async (sql: string): Promise<void> => {
    await Promise.all(clusters.map((c) => c.sql(sql, { database: SHARDED_DB })));
  };
  let proxy: ProxyProcess;
  try {
    if (options.schema) await everywhere(options.schema);
    proxy = await startProxy({
      config: {
        general: { idle_healthcheck_interval: 0, query_timeout: 10_000, ...options.general },
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
    });
  } catch (e) {
    await Promise.all(clusters.map((c) => c[Symbol.asyncDispose]()));
    throw e;
  }
  const target = proxy.target({
    user: SHARDED_USER,
    password: SHARDED_PASSWORD,
    database: SHARDED_DB,
  });
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
    async [Symbol.asyncDispose](): Promise<void> {
      await proxy.stop().catch(() => {});
      await Promise.all(clusters.map((c) => c[Symbol.asyncDispose]()));
    },
  };
}

/** How a statement is sent. */
export type Protocol = "simple" | "extended" | "binary";

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

/** Runs one statement with npm:pg on `client`, in the given protocol. */
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
  if (protocol !== "simple") config.values = values ?? [];
  if (protocol === "binary") (config as unknown as { binary: boolean }).binary = true;
  try {
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

function valueText(v: unknown): string {
  if (v === null || v === undefined) return "NULL";
  if (v instanceof Uint8Array) {
    return `\\x${[...v].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
  }
  return String(v);
}

/** Options for {@linkcode compareAnswers}. */
export interface CompareOptions {
  /** Protocols to try; all three by default. */
  protocols?: Protocol[];
  values?: unknown[];
  /** Rows may come back in any order (no ORDER BY): compare them sorted. */
  unordered?: boolean;
}

/**
 * Runs `sql` on the reference and through pgdog, in each protocol, and asserts the same answer
 * (rows in order unless `unordered`). Returns pgdog's answer in the last protocol.
 */
export async function compareAnswers(
  setup: ShardedSetup,
  sql: string,
  options: CompareOptions = {},
): Promise<Answer> {
  const ref = await connectPg(setup.referenceTarget);
  const dog = await connectPg(setup.target);
  let last: Answer = {};
  try {
    for (const protocol of options.protocols ?? ["simple", "extended", "binary"]) {
      const expected = await answerOf(ref, sql, { protocol, values: options.values });
      const actual = await answerOf(dog, sql, { protocol, values: options.values });
      if (options.unordered) {
        expected.rows?.sort(compareRows);
        actual.rows?.sort(compareRows);
      }
      if (expected.error) {
        // The same SQLSTATE is enough: messages may name pgdog's own statement names.
        assert.equal(actual.error, expected.error, `${protocol}: ${sql}\n${actual.message ?? ""}`);
      } else {
        assert.deepEqual(actual, expected, `${protocol}: ${sql}`);
      }
      last = actual;
    }
  } finally {
    await ref.end();
    await dog.end();
  }
  return last;
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
