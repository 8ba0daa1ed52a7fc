/**
 * The route of a statement that starts a request: whether pgdog holds it back (a plain BEGIN
 * waits for the transaction's first statement), the host role it needs and the shards it runs
 * on. The proxy (src/frontend/client.ts) and `pgdog route` (explain.ts) decide with these same
 * functions. Pure: no connection, no I/O.
 *
 * @module
 */

import type { Analysis } from "./mod.ts";
import { chooseRole, type ReadWriteStrategy, type Role } from "./route.ts";
import { decideShard, type ShardDecision, type ShardingConfig, type ShardLookup } from "./shard.ts";

/** Where the client's transaction stands when a statement is routed. */
export interface TransactionView {
  /** A transaction is open (on a server, or behind a held-back BEGIN). */
  inTransaction: boolean;
  /** A plain BEGIN is held back: this statement is the transaction's first. */
  deferredBegin: boolean;
}

/**
 * A lone plain BEGIN outside a transaction: pgdog answers it at once and sends it later, ahead
 * of the transaction's first statement, which picks the host (and the shards) for both.
 */
export function holdsBackBegin(analysis: Analysis, tx: TransactionView): boolean {
  const info = analysis.info;
  return info.statements === 1 && analysis.directives === null && info.transaction === "begin" &&
    !tx.deferredBegin && !tx.inTransaction;
}

/**
 * The shards a request runs on, from its shard decision and the shards the client's transaction
 * holds (the attached one first): a failed transaction is answered by a shard it holds (25P02,
 * as PostgreSQL would); session and transaction control goes to every held shard; a statement
 * any shard can answer stays on a held one, or (none held) "any": the caller picks one.
 */
export function shardsFor(
  decision: ShardDecision,
  options: {
    shards: number;
    held: number[];
    control: boolean;
    failed: boolean;
  },
): number[] | "any" {
  const { held, control } = options;
  const t = decision.target;
  if (held.length > 0 && !control && options.failed) return [held[0]];
  if (t.kind === "one") return [t.shard];
  if (t.kind === "some") return t.shards;
  if (t.kind === "any" || control) {
    return held.length === 0 ? "any" : control ? held : [held[0]];
  }
  return Array.from({ length: options.shards }, (_, i) => i);
}

/**
 * Why a request is refused under `cross_shard_disabled` (PgDog's 58000 "cross-shard queries are
 * disabled"), or null: it would run on several shards and is neither a write to omnisharded
 * tables (one answer) nor session or transaction control.
 */
export function crossShardDisabled(
  decision: ShardDecision,
  options: { config: ShardingConfig; shards: number; control: boolean },
): { code: string; message: string; detail: string } | null {
  if (!options.config.crossShardDisabled || options.shards <= 1) return null;
  if (decision.omniWrite || options.control) return null;
  return {
    code: "58000",
    message: "cross-shard queries are disabled",
    detail: `the query doesn't have a sharding key (${decision.reason}); cross_shard_disabled ` +
      "is on: add the sharding key, or route it with /* pgdog_shard: N */",
  };
}

/** One statement's route, as `pgdog route` shows it. */
export interface StatementRoute {
  /** The host the statement reaches; null when pgdog answers it (see `local`). */
  role: Role | null;
  /**
   * The command tag pgdog answers with itself: a held-back BEGIN (sent later, with the
   * transaction's first statement), or COMMIT / ROLLBACK of a transaction that reached no server.
   */
  local: "BEGIN" | "COMMIT" | "ROLLBACK" | null;
  /** Its shard decision (sharded databases, statements that reach a server; null otherwise). */
  decision: ShardDecision | null;
}

/**
 * Routes one statement as the proxy routes a request that starts with it; `tx` is updated as
 * the proxy's state would be after it (a held-back BEGIN makes the next statement the
 * transaction's first).
 */
export function routeStatement(
  analysis: Analysis,
  options: {
    strategy: ReadWriteStrategy;
    override: Role | null;
    tx: TransactionView;
    sharding: ShardingConfig | null;
    lookup: ShardLookup;
  },
): StatementRoute {
  const { tx } = options;
  const info = analysis.info;
  if (holdsBackBegin(analysis, tx)) {
    tx.deferredBegin = true;
    tx.inTransaction = true;
    return { role: null, local: "BEGIN", decision: null };
  }
  const ends = info.transaction === "commit" || info.transaction === "rollback";
  if (
    tx.deferredBegin && ends && info.statements === 1 && analysis.directives === null
  ) {
    // The transaction never reached a server: nothing to end there.
    tx.deferredBegin = false;
    tx.inTransaction = false;
    return {
      role: null,
      local: info.transaction === "commit" ? "COMMIT" : "ROLLBACK",
      decision: null,
    };
  }
  const role = chooseRole(analysis, {
    override: options.override,
    strategy: options.strategy,
    deferredBegin: tx.deferredBegin,
  });
  tx.deferredBegin = false;
  if (ends) tx.inTransaction = false;
  else if (info.transaction === "begin" || info.transaction === "begin_read_only") {
    tx.inTransaction = true;
  }
  const decision = options.sharding === null
    ? null
    : decideShard(analysis, { config: options.sharding, lookup: options.lookup });
  return { role, local: null, decision };
}
