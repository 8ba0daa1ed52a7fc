/**
 * The parked servers of a transaction that runs on several shards: while the client uses one
 * shard's server, the servers of the other shards it reached wait here with their part of the
 * transaction open. Also what opened the transaction (BEGIN, SET LOCAL search_path, savepoints),
 * replayed on each shard it reaches later, so every shard runs it as the first did.
 *
 * @module
 */

import { queryMessage, TxStatus } from "../protocol/messages.ts";
import type { Server } from "../backend/server.ts";
import type { Pool } from "../backend/pool.ts";
import type { Cluster } from "../backend/databases.ts";
import type { Analysis } from "../router/mod.ts";
import type { Role } from "../router/route.ts";

/** Fails a shard's part of a transaction that failed on another shard. */
const ABORT_ELSEWHERE =
  "DO $pgdog$ BEGIN RAISE EXCEPTION 'the transaction failed on another shard'; END $pgdog$";

/** Opens a server's part of a transaction whose own BEGIN pgdog did not keep. */
const PLAIN_BEGIN = queryMessage("BEGIN");

/** One client's transaction across shards: the servers it holds aside, and its prelude. */
export class ShardTransaction {
  /** Servers of other shards the open transaction holds, by shard. */
  readonly parked: Map<number, Server> = new Map();
  /** What opened the transaction (BEGIN, then SET LOCAL ...): replayed on each shard it reaches. */
  prelude: Uint8Array[] = [];
  /** The BEGIN pgdog sent to the servers held (not held back): what opens it on others. */
  opener: Uint8Array | null = null;
  /** search_path set inside the open transaction (it decides schema-sharded routing). */
  searchPath: string | null = null;
  /** The savepoint each SAVEPOINT message of the prelude takes. */
  readonly #savepointMarks = new Map<Uint8Array, string>();
  /**
   * pgdog answered an error of its own inside the transaction: it failed, as PostgreSQL's would
   * (see failed_transaction.ts), though its servers did not see the error.
   */
  failedLocally = false;
  /** Spreads statements any shard can answer. */
  #nextAnyShard = 0;

  /** No server is parked. */
  get empty(): boolean {
    return this.parked.size === 0;
  }

  /** Shards whose servers the client holds now (the attached one first). */
  heldShards(cluster: Cluster, attached: Server | null): number[] {
    const held: number[] = [];
    if (attached !== null) held.push(cluster.shardOf(attached.owner as Pool));
    for (const n of this.parked.keys()) if (!held.includes(n)) held.push(n);
    return held;
  }

  /** Sets a server aside (detached; its transaction goes on) while another shard is used. */
  park(cluster: Cluster, server: Server): void {
    server.detach();
    this.parked.set(cluster.shardOf(server.owner as Pool), server);
  }

  /** Keeps a detached server of this transaction. */
  keep(cluster: Cluster, server: Server): void {
    this.parked.set(cluster.shardOf(server.owner as Pool), server);
  }

  /** The parked server of shard `n`, taken out (undefined when none). */
  take(n: number): Server | undefined {
    const server = this.parked.get(n);
    if (server !== undefined) this.parked.delete(n);
    return server;
  }

  /**
   * A server of shard `n` for a request that runs on several: a parked one, the attached one
   * (detached; `attached` says the caller lets go of it), or one checked out (`fresh`).
   */
  async leg(
    cluster: Cluster,
    n: number,
    options: { role: Role; attached: Server | null },
  ): Promise<{ server: Server; fresh: boolean; attached: boolean }> {
    const parked = this.take(n);
    if (parked !== undefined) return { server: parked, fresh: false, attached: false };
    const current = options.attached;
    if (current !== null && cluster.shardOf(current.owner as Pool) === n) {
      current.detach();
      return { server: current, fresh: false, attached: true };
    }
    const server = await cluster.checkout(options.role, { shard: n });
    return { server, fresh: true, attached: false };
  }

  /** Every parked server, taken out. */
  takeAll(): Server[] {
    const servers = [...this.parked.values()];
    this.parked.clear();
    return servers;
  }

  /**
   * The transaction status across shards, given the attached server's: failed when any part
   * failed, idle when no server is in a transaction (a session's servers kept between them).
   */
  status(attached: Server | null): number {
    let status: number = attached?.txStatus ?? TxStatus.Idle;
    for (const s of this.parked.values()) {
      if (s.txStatus === TxStatus.Failed) return TxStatus.Failed;
      if (s.txStatus === TxStatus.InTransaction && status === TxStatus.Idle) {
        status = TxStatus.InTransaction;
      }
    }
    return status;
  }

  /**
   * What a server joining the open transaction (idle: checked out now, or a session's kept
   * between transactions) runs first: the prelude, or (what opened the transaction went to the
   * servers directly) that BEGIN, a plain one when pgdog did not keep it. Empty outside a
   * transaction.
   */
  joining(attached: Server | null): Uint8Array[] {
    if (this.prelude.length > 0) return this.prelude;
    if (
      (attached !== null && attached.txStatus !== TxStatus.Idle) ||
      this.status(null) !== TxStatus.Idle
    ) this.prelude.push(this.opener ?? PLAIN_BEGIN);
    return this.prelude;
  }

  /**
   * The servers to fail with ABORT_ELSEWHERE (see {@linkcode abortOn}) because the transaction
   * failed on another of its shards; empty when none failed.
   */
  toAbort(attached: Server | null): Server[] {
    const servers = [...this.parked.values()];
    if (attached !== null) servers.push(attached);
    if (!servers.some((s) => s.txStatus === TxStatus.Failed)) return [];
    return servers.filter((s) => s.txStatus === TxStatus.InTransaction && !s.closed);
  }

  /**
   * A transaction on several shards failed on one of them: it fails on the others too (a
   * statement of pgdog's raises an error there), so a later COMMIT rolls back everywhere, as
   * PostgreSQL would, instead of committing the shards that did not see the error.
   */
  async abortOn(servers: Server[], timeoutMs: number): Promise<void> {
    await Promise.all(
      servers.map((s) => s.query(ABORT_ELSEWHERE, { timeoutMs }).catch(() => {})),
    );
  }

  /**
   * A shard for a statement any shard can answer: the next in turn with an idle server, so the
   * client does not wait for a busy shard while another is free (a client program that waits
   * for this answer may be what keeps the busy shard's servers busy).
   */
  anyShard(cluster: Cluster, shards: number): number {
    for (let i = 0; i < shards; i++) {
      const n = this.#nextAnyShard++ % shards;
      if (cluster.pool(n).idle.length > 0) return n;
    }
    return this.#nextAnyShard++ % shards;
  }

  /**
   * Keeps the transaction's savepoints in the statements replayed on each shard it reaches
   * later, so a ROLLBACK TO finds them there. With `local`, answers for a transaction that has
   * not reached a server (returns the tag, or null when the savepoint is unknown: the server
   * then reports it). Returns the command tag.
   */
  noteSavepoint(analysis: Analysis, local: boolean): string | null {
    const stmt = analysis.info.ast?.stmts[0]?.stmt?.TransactionStmt as
      | { kind?: string; savepoint_name?: string }
      | undefined;
    const name = stmt?.savepoint_name;
    if (stmt === undefined || name === undefined) return null;
    const prelude = this.prelude;
    const marks = this.#savepointMarks;
    let at = -1;
    for (let i = prelude.length - 1; i >= 0 && at < 0; i--) {
      if (marks.get(prelude[i]) === name) at = i;
    }
    switch (stmt.kind) {
      case "TRANS_STMT_SAVEPOINT": {
        const msg = queryMessage(`SAVEPOINT "${name.replaceAll('"', '""')}"`);
        marks.set(msg, name);
        prelude.push(msg);
        return "SAVEPOINT";
      }
      case "TRANS_STMT_RELEASE":
        if (at < 0) return local ? null : "RELEASE";
        // Releasing a savepoint also releases those taken after it; what ran since stays.
        this.prelude = prelude.filter((m, i) => i < at || !marks.has(m));
        return "RELEASE";
      case "TRANS_STMT_ROLLBACK_TO":
        if (at < 0) return local ? null : "ROLLBACK";
        // Everything after the savepoint is undone; the savepoint itself stays.
        prelude.length = at + 1;
        return "ROLLBACK";
    }
    return null;
  }

  /** The transaction ended: nothing of it is replayed on later shards. */
  over(): void {
    this.failedLocally = false;
    if (this.prelude.length > 0) this.prelude = [];
    this.opener = null;
    if (this.#savepointMarks.size > 0) this.#savepointMarks.clear();
    this.searchPath = null;
  }

  /** The client is gone: every parked server goes back to its pool. */
  releaseAll(resetSql: string | null): void {
    for (const parked of this.parked.values()) {
      parked.detach();
      (parked.owner as Pool).release(parked, { resetSql });
    }
    this.parked.clear();
  }
}
