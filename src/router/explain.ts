/**
 * `pgdog route`: where each statement of a SQL text would go, and why, decided by the same code
 * the proxy runs, without connecting to anything.
 *
 * @module
 */

import type { Config } from "../config/types.ts";
import { QueryRouter } from "./mod.ts";
import { analyzeSql } from "./analyze.ts";
import { isSessionControl, shardingConfigFor, type ShardLookup } from "./shard.ts";
import type { Role } from "./route.ts";
import { crossShardDisabled, routeStatement, type TransactionView } from "./request_route.ts";
import { describeMergePlan } from "./merge_plan.ts";

/** One statement's route. */
export interface ExplainedRoute {
  /** The statement as written. */
  sql: string;
  /**
   * `primary` (writes) or `replica` (reads the replicas may serve); null when pgdog answers the
   * statement itself (a held-back BEGIN).
   */
  role: Role | null;
  /**
   * `shard N`, `shards 0,2`, `all shards`, `any shard`, `refused`, `decided by a plugin`,
   * `decided by the table's column order` or `answered by pgdog`.
   */
  target: string | null;
  /** Why. */
  reason: string;
  /**
   * A cross-shard statement whose answers pgdog merges: the merge steps (see
   * describeMergePlan) and the statement each shard runs.
   */
  merge?: { steps: string; shardSql: string };
  /**
   * A multi-row INSERT split by shard (`[rewrite] split_inserts = "rewrite"`): the statement each
   * shard runs; an UPDATE that moves a row: what runs on each of its two shards.
   */
  split?: Array<{ shard: number; sql: string }>;
}

/**
 * Routes each statement of `sql` for database `options.database` of `config` (the parser must be
 * loaded first), as the proxy routes them one after another on one connection (see
 * request_route.ts, which the proxy uses too).
 */
export function explainRoutes(
  sql: string,
  options: { config: Config; database: string },
): ExplainedRoute[] {
  const { config, database } = options;
  const shardCount = new Set(
    config.databases.filter((d) => d.name === database).map((d) => d.shard),
  ).size;
  const sharding = shardCount > 1
    ? shardingConfigFor(config, database, {
      shards: shardCount,
      crossShardDisabled: config.general.cross_shard_disabled,
    })
    : null;
  const router = new QueryRouter({ cacheLimit: 1000 });
  const out: ExplainedRoute[] = [];
  const tx: TransactionView = { inTransaction: false, deferredBegin: false };
  for (const text of splitStatements(sql)) {
    const analysis = router.analyze(text);
    const lookup: ShardLookup = {
      found: [],
      pluginShards: new Map(),
      missing: [],
      // Column orders are not known here: the decision says which it would read.
      columns: () => undefined,
      missingColumns: [],
      missingAggregates: false,
    };
    // As the proxy routes a statement that starts a request (comments included).
    const route = routeStatement(analysis, {
      strategy: config.general.read_write_strategy,
      override: null,
      tx,
      sharding,
      lookup,
    });
    const role = route.role;
    if (route.local !== null) {
      out.push({
        sql: text,
        role,
        target: "answered by pgdog",
        reason: route.local === "BEGIN"
          ? "a plain BEGIN is held back: it goes with the transaction's first statement, which " +
            "picks the host"
          : `the transaction reached no server: pgdog answers ${route.local} itself`,
      });
      continue;
    }
    if (analysis.info.error && !analysis.info.tooDeep) {
      out.push({ sql: text, role, target: null, reason: `does not parse: ${analysis.info.error}` });
      continue;
    }
    if (sharding === null) {
      out.push({
        sql: text,
        role,
        target: null,
        reason: analysis.info.write ? "writes" : "reads",
      });
      continue;
    }
    const d = route.decision!;
    if (lookup.missingColumns!.length > 0) {
      // The proxy reads the column order from shard 0's catalog.
      const names = [
        ...new Set(lookup.missingColumns!.map((t) => t.schema ? `${t.schema}.${t.name}` : t.name)),
      ];
      const insert = analysis.info.ast?.stmts[0]?.stmt?.InsertStmt !== undefined;
      out.push({
        sql: text,
        role,
        target: "decided by the table's column order",
        reason: `${insert ? "INSERT without a column list" : "SELECT * across shards"}: the ` +
          `proxy reads the column order of ${names.join(", ")} from shard 0`,
      });
      continue;
    }
    if (lookup.missing.length > 0) {
      // Plugins run only inside the proxy.
      const names = [...new Set(lookup.missing.map((m) => m.plugin))].join(", ");
      out.push({
        sql: text,
        role,
        target: "decided by a plugin",
        reason: `hasher plugin:${names} (plugins run only in the proxy)`,
      });
      continue;
    }
    const t = d.target;
    const several = t.kind === "all" ? shardCount : t.kind === "some" ? t.shards.length : 1;
    const control = analysis.info.ast?.stmts.length === 1 && isSessionControl(analysis);
    const disabled = d.unsupported
      ? null
      : crossShardDisabled(d, { config: sharding, shards: several, control });
    if (disabled !== null) {
      out.push({
        sql: text,
        role,
        target: "refused",
        reason: `${disabled.message}: ${disabled.detail}`,
      });
      continue;
    }
    const target = d.unsupported
      ? "refused"
      : t.kind === "one"
      ? `shard ${t.shard}`
      : t.kind === "some"
      ? `shards ${t.shards.join(",")}`
      : t.kind === "all"
      ? "all shards"
      : "any shard";
    // Without a database, a function that is not a built-in aggregate is a plain function.
    const unknown = lookup.missingAggregates && !d.unsupported &&
        (t.kind === "all" || t.kind === "some")
      ? "; a function of a name that is not a built-in aggregate counts as a plain function " +
        "here (the proxy reads the database's own aggregates from shard 0 and refuses them " +
        "across shards)"
      : "";
    const explained: ExplainedRoute = {
      sql: text,
      role,
      target,
      reason: (d.unsupported ?? d.reason) + unknown,
    };
    if (d.merge && !d.unsupported && t.kind !== "one" && t.kind !== "any") {
      explained.merge = {
        steps: describeMergePlan({ ...d.merge, shardSql: null }),
        shardSql: d.merge.shardSql ?? text,
      };
    }
    if (d.splitInsert && !d.unsupported) {
      explained.split = d.splitInsert.statements.map((st) => ({ shard: st.shard, sql: st.sql }));
    } else if (d.keyUpdate && !d.unsupported) {
      const k = d.keyUpdate;
      explained.split = [
        { shard: k.from, sql: `${k.selectSql}; then DELETE of the row by its ctid` },
        { shard: k.to, sql: "INSERT of the new row (the SET list applied to the old one)" },
      ];
    }
    out.push(explained);
  }
  return out;
}

/** The statements of a SQL text, as written (PostgreSQL's parser finds the boundaries). */
export function splitStatements(sql: string): string[] {
  const info = analyzeSql(sql);
  if (info.ast === null) return sql.trim() === "" ? [] : [sql.trim()];
  const bytes = new TextEncoder().encode(sql);
  const decoder = new TextDecoder();
  const out: string[] = [];
  // A statement's location is its first token: it starts right after the previous one's `;`, so
  // the comments before it stay with it (they may route it, as they do in the proxy).
  let start = 0;
  for (const s of info.ast.stmts) {
    const location = s.stmt_location ?? 0;
    const end = s.stmt_len ? location + s.stmt_len : bytes.length;
    const text = decoder.decode(bytes.subarray(start, end)).trim();
    if (text !== "") out.push(text);
    start = end + 1;
  }
  return out;
}
