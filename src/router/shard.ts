/**
 * Which shards a statement goes to, and why. Sources, strongest first: a `pgdog_shard` or
 * `pgdog_sharding_key` comment, `SET pgdog.shard` / `SET pgdog.sharding_key`, a schema-qualified
 * table or the session's search_path (schema sharding), and then the statement itself, decided by
 * the cross-shard rule (see {@linkcode routeStatement} in cross_shard.ts): one shard when its keys
 * confine it there, several when their answers concatenate into the right one, refused otherwise.
 *
 * @module
 */

import type { Analysis } from "./mod.ts";
import type { Config } from "../config/types.ts";
import type { Node } from "./analyze.ts";
import { routeStatement } from "./cross_shard.ts";
import { errorMessage } from "../log.ts";
import {
  type BindValues,
  type KeyMapping,
  type ShardDecision,
  type ShardedTable,
  type ShardingConfig,
  type ShardLookup,
  type ShardTarget,
  type ValueContext,
  valueOf,
  valueShard,
} from "./shard_keys.ts";

export {
  type BindValues,
  type KeyMapping,
  type KeyType,
  pluginKey,
  type ShardDecision,
  type ShardedTable,
  type ShardingConfig,
  type ShardLookup,
  type ShardTarget,
  valueShard,
} from "./shard_keys.ts";

/** What the session adds: manual routing and the search_path. */
export interface ShardSession {
  /** `SET pgdog.shard` */
  shard?: string;
  /** `SET pgdog.sharding_key` */
  shardingKey?: string;
  /** The client's search_path, as written (e.g. `"$user", public`). */
  searchPath?: string;
}

/** Decides the shards for an analyzed statement. */
export function decideShard(
  analysis: Analysis,
  options: {
    config: ShardingConfig;
    session?: ShardSession;
    bind?: BindValues;
    lookup?: ShardLookup;
  },
): ShardDecision {
  const { config, lookup } = options;
  const session = options.session ?? {};
  const one = (shard: number, reason: string): ShardDecision => ({
    target: { kind: "one", shard },
    reason,
    omniWrite: false,
  });
  const fail = (message: string): ShardDecision => ({
    target: { kind: "all" },
    reason: message,
    omniWrite: false,
    unsupported: message,
  });

  // Manual routing: comments, then SET.
  const commentShard = analysis.directives?.get("shard");
  if (commentShard !== undefined) {
    const n = manualShard(commentShard, config.shards);
    return n === null
      ? fail(`pgdog_shard ${commentShard} is not a shard number below ${config.shards}`)
      : one(n, "pgdog_shard comment");
  }
  const commentKey = analysis.directives?.get("sharding_key");
  if (commentKey !== undefined) {
    return one(keyShard(commentKey, config, lookup), "pgdog_sharding_key comment");
  }
  if (session.shard !== undefined) {
    const n = manualShard(session.shard, config.shards);
    return n === null
      ? fail(`pgdog.shard ${session.shard} is not a shard number below ${config.shards}`)
      : one(n, "SET pgdog.shard");
  }
  if (session.shardingKey !== undefined) {
    return one(keyShard(session.shardingKey, config, lookup), "SET pgdog.sharding_key");
  }

  const info = analysis.info;
  if (info.tooLarge !== undefined) {
    // Routed on what is known of it, a statement could reach the wrong shard: refused instead.
    return fail(
      `${info.tooLarge}: a sharded database cannot route it; send it in smaller pieces, or ` +
        "choose the shard with /* pgdog_shard: n */ or SET pgdog.shard",
    );
  }
  if (info.tooDeep) {
    return fail(
      "the statement is nested too deeply for pgdog to prove where it can run across shards: " +
        "route it with /* pgdog_shard: N */ (or simplify it)",
    );
  }
  if (info.ast === null) {
    return {
      target: { kind: "any" },
      reason: "does not parse: any shard reports the error",
      omniWrite: false,
    };
  }
  const stmts = info.ast.stmts.map((s) => s.stmt).filter((s): s is Node => s !== undefined);
  if (stmts.length === 0) {
    return { target: { kind: "any" }, reason: "empty query", omniWrite: false };
  }

  // Schema sharding: a qualified table, else the first mapped schema in search_path.
  if (config.schemas.size > 0 || config.defaultSchemaShard !== undefined) {
    for (const t of info.tables) {
      if (t.schema === undefined) continue;
      const s = config.schemas.get(t.schema);
      if (s !== undefined) return one(s, `schema ${t.schema}`);
    }
    for (const schema of searchPath(session.searchPath)) {
      const s = config.schemas.get(schema);
      if (s !== undefined) return one(s, `search_path schema ${schema}`);
    }
    if (config.defaultSchemaShard !== undefined && config.tables.length === 0) {
      return one(config.defaultSchemaShard, "default schema shard");
    }
  }

  const ctx = {
    config,
    values: { analysis, bind: options.bind, lookup } satisfies ValueContext,
  };
  try {
    return stmts.length === 1 ? routeStatement(stmts[0], ctx) : combine(stmts, ctx);
  } catch (e) {
    // A parse tree the rule can't walk (a bug, or a stack too small): refused, never a guess.
    return fail(
      `pgdog could not prove where the statement may run (${errorMessage(e)}): route it with ` +
        "/* pgdog_shard: N */",
    );
  }
}

/**
 * The statements of one request go to the same shards together: to one shard when each is
 * proven there (or anywhere), to every shard when each is proven correct there (answers
 * concatenated), to every shard answering once when each writes omnisharded tables only.
 */
function combine(stmts: Node[], ctx: Parameters<typeof routeStatement>[1]): ShardDecision {
  const decisions = stmts.map((stmt) => routeStatement(stmt, ctx));
  const refused = decisions.find((d) => d.unsupported);
  if (refused) return refused;
  // BEGIN, SET, COMMIT: they go wherever the others go.
  const active = decisions.filter((_, i) => !isControl(stmts[i]));
  if (active.length === 0) {
    return { ...decisions[0], reason: `every statement: ${decisions[0].reason}` };
  }
  if (active.every((d) => d.omniWrite)) {
    return { ...active[0], reason: `every statement: ${active[0].reason}` };
  }
  const different = "statements in one query that need different shards are not supported: " +
    "send them one at a time";
  if (!active.some((d) => d.omniWrite)) {
    const shards = new Set<number>();
    for (const d of active) {
      if (d.target.kind === "one") shards.add(d.target.shard);
      else if (d.target.kind !== "any") shards.add(-1);
    }
    if (shards.size <= 1 && !shards.has(-1)) {
      const first = active.find((d) => d.target.kind === "one") ?? active[0];
      return { ...first, reason: `every statement: ${first.reason}` };
    }
    // Several shards: every statement runs on each of them, so each must be correct there.
    const everywhere = stmts.filter((stmt) => !isControl(stmt)).map((stmt, i) =>
      active[i].concatenates ? active[i] : routeStatement(stmt, ctx, { everyShard: true })
    );
    const bad = everywhere.find((d) => d.unsupported || !d.concatenates);
    if (!bad) {
      return {
        target: { kind: "all" },
        reason: "statements for several shards, each correct on every shard",
        omniWrite: false,
        concatenates: true,
      };
    }
    return {
      target: { kind: "all" },
      reason: different,
      omniWrite: false,
      unsupported: bad.unsupported ? `${different} (${bad.unsupported})` : different,
    };
  }
  return { target: { kind: "all" }, reason: different, omniWrite: false, unsupported: different };
}

function isControl(stmt: Node): boolean {
  const type = Object.keys(stmt)[0];
  return type === "TransactionStmt" || type === "VariableSetStmt";
}

function manualShard(text: string, shards: number): number | null {
  const n = Number(text.trim());
  return Number.isInteger(n) && n >= 0 && n < shards ? n : null;
}

/** A bare sharding key (comment or SET): hashed with the database's sharding function. */
function keyShard(key: string, config: ShardingConfig, lookup?: ShardLookup): number {
  const table = config.tables[0];
  if (table === undefined) return 0;
  return valueShard({ text: key, binary: null }, table, { shards: config.shards, lookup }) ?? 0;
}

function searchPath(value: string | undefined): string[] {
  if (!value) return [];
  return value.split(",").map((s) => s.trim()).map((s) =>
    s.startsWith('"') ? s.slice(1, -1).replaceAll('""', '"') : s.toLowerCase()
  )
    .filter((s) => s !== "" && s !== "$user");
}

/**
 * The routing view of a sharded database's configuration: its `[[sharded_tables]]`,
 * `[[sharded_schemas]]` and `[[omnisharded_tables]]` entries, for `shards` shards.
 */
export function shardingConfigFor(
  config:
    & Pick<Config, "sharded_tables" | "sharded_schemas" | "omnisharded_tables">
    & Partial<Pick<Config, "rewrite">>,
  database: string,
  options: { shards: number; crossShardDisabled?: boolean },
): ShardingConfig {
  // With the rewrites off, split_inserts and shard_key act as "error".
  const rewrite = config.rewrite?.enabled ? config.rewrite : undefined;
  const tables: ShardedTable[] = config.sharded_tables.filter((t) => t.database === database)
    .map((t) => ({
      name: t.name,
      schema: t.schema,
      column: t.column,
      type: t.data_type,
      mapping: t.mapping.map((m): KeyMapping =>
        m.kind === "list"
          ? { kind: "list", values: m.values, shard: m.shard }
          : m.kind === "range"
          ? { kind: "range", start: m.start, end: m.end, shard: m.shard }
          : { kind: "default", shard: m.shard }
      ),
      plugin: t.hasher.startsWith("plugin:") ? t.hasher.slice("plugin:".length) : undefined,
    }));
  const schemas = new Map<string, number>();
  let defaultSchemaShard: number | undefined;
  for (const s of config.sharded_schemas) {
    if (s.database !== database || s.all) continue;
    if (s.name === undefined) defaultSchemaShard = s.shard;
    else schemas.set(s.name, s.shard);
  }
  const omni = new Set<string>();
  for (const o of config.omnisharded_tables) {
    if (o.database === database) { for (const t of o.tables) omni.add(t); }
  }
  // Cross-shard statements whose answers need merging get a merge plan (src/cross_shard/).
  return {
    shards: options.shards,
    tables,
    schemas,
    defaultSchemaShard,
    omni,
    merge: true,
    crossShardDisabled: options.crossShardDisabled === true,
    splitInserts: rewrite?.split_inserts ?? "error",
    shardKey: rewrite?.shard_key ?? "error",
    nonDeterministic: rewrite?.non_deterministic_functions === "rewrite",
  };
}

/**
 * A single statement that changes the session or the transaction (BEGIN, SET): it goes to every
 * shard in use. (SHOW only reads: one of them answers.)
 */
export function isSessionControl(analysis: Analysis): boolean {
  const stmts = analysis.info.ast?.stmts ?? [];
  if (stmts.length !== 1 || !stmts[0].stmt) return false;
  const type = Object.keys(stmts[0].stmt)[0];
  return type === "TransactionStmt" || type === "VariableSetStmt";
}

/** The value a `SET [LOCAL] search_path` statement gives, as written; null for other statements. */
export function searchPathSet(analysis: Analysis): string | null {
  const stmts = analysis.info.ast?.stmts ?? [];
  if (stmts.length !== 1) return null;
  const set = stmts[0].stmt?.VariableSetStmt as
    | { name?: string; kind?: string; args?: Node[] }
    | undefined;
  if (!set || set.name !== "search_path") return null;
  if (set.kind !== "VAR_SET_VALUE") return "";
  const ctx: ValueContext = { analysis };
  const parts: string[] = [];
  for (const arg of set.args ?? []) {
    const v = valueOf(arg, ctx);
    if (v?.text == null) return null;
    parts.push(v.text.includes(",") ? `"${v.text}"` : v.text);
  }
  return parts.join(", ");
}

/** True when two targets name the same shards. */
export function sameTarget(a: ShardTarget, b: ShardTarget): boolean {
  if (a.kind !== b.kind) return false;
  if (a.kind === "one" && b.kind === "one") return a.shard === b.shard;
  if (a.kind === "some" && b.kind === "some") return a.shards.join() === b.shards.join();
  return true;
}
