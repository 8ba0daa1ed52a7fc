/**
 * Committing a transaction that runs on several shards, all or nothing.
 *
 * With two-phase commit: each shard says whether its part wrote (a transaction id assigned);
 * those that did get PREPARE TRANSACTION (a shard that only read gets a plain COMMIT, and with
 * one writer no two-phase commit is needed: it commits last, alone). The participants are logged
 * before the first PREPARE, the decision (fsynced) before the first COMMIT PREPARED; a PREPARE
 * that fails rolls every shard back (ROLLBACK PREPARED for those prepared). A second phase a
 * shard can't take now (it went down) is retried in the background: the client was told the
 * outcome already, which the log makes certain.
 *
 * Without it: `SET CONSTRAINTS ALL IMMEDIATE` on every shard first (deferred constraints are
 * checked everywhere, so a violation on one shard rolls all of them back), then COMMIT on each.
 * A crash between the commits can still leave some shards committed (the README says so).
 *
 * @module
 */

import type { ErrorFields } from "../protocol/messages.ts";
import type { Server } from "../backend/server.ts";
import { errorMessage } from "../log.ts";
import type { TwoPcManager } from "./manager.ts";
import type { WalTransaction } from "./wal.ts";

/** One shard's part of the transaction. */
export interface Participant {
  server: Server;
  shard: number;
}

/** How to commit. */
export interface CommitOptions {
  /** Use two-phase commit. */
  twoPhase: boolean;
  /** Limit of each statement pgdog runs (rollback_timeout). */
  timeoutMs: number;
  database: string;
  user: string;
  manager: TwoPcManager;
}

/** Asks a shard whether its part of the transaction wrote (was given a transaction id). */
const WROTE_SQL = "SELECT pg_catalog.pg_current_xact_id_if_assigned() IS NOT NULL";
const IMMEDIATE_SQL = "SET CONSTRAINTS ALL IMMEDIATE";

/** The outcome of one statement of pgdog's on one server. */
interface Outcome {
  error: ErrorFields | null;
  rows: (string | null)[][];
  tags: string[];
  /** The server was lost. */
  lost: boolean;
}

function run(server: Server, sql: string, timeoutMs: number): Promise<Outcome> {
  return server.query(sql, { timeoutMs }).then(
    (r) => ({ error: r.error, rows: r.rows, tags: r.tags, lost: false }),
    (e) => ({
      error: {
        severity: "ERROR",
        code: "08006",
        message: `server connection lost: ${errorMessage(e)}`,
      },
      rows: [],
      tags: [],
      lost: true,
    }),
  );
}

/** Ends the transaction with ROLLBACK on every server that is still there. */
async function rollbackAll(servers: Server[], timeoutMs: number): Promise<void> {
  await Promise.all(servers.map((s) => s.closed ? null : run(s, "ROLLBACK", timeoutMs)));
}

/**
 * Commits the transaction on every participant, or none. Returns the error the client gets
 * (null when committed). Every server is idle afterwards (or closed).
 */
export async function commitAll(
  parts: Participant[],
  options: CommitOptions,
): Promise<ErrorFields | null> {
  const { timeoutMs } = options;
  const servers = parts.map((p) => p.server);
  if (parts.length < 2) {
    const results = await Promise.all(servers.map((s) => run(s, "COMMIT", timeoutMs)));
    return results.find((r) => r.error !== null)?.error ?? null;
  }
  if (!options.twoPhase) return await commitChecked(servers, timeoutMs);
  const wrote = await Promise.all(servers.map((s) => run(s, WROTE_SQL, timeoutMs)));
  const failed = wrote.find((r) => r.error !== null);
  if (failed !== undefined) {
    await rollbackAll(servers, timeoutMs);
    return failed.error;
  }
  const writers = parts.filter((_, i) => wrote[i].rows[0]?.[0] === "t");
  const readers = parts.filter((_, i) => wrote[i].rows[0]?.[0] !== "t");
  if (writers.length < 2) {
    // One shard wrote: its COMMIT decides; the readers commit after it (or roll back).
    const last = writers[0]?.server ?? null;
    if (last !== null) {
      const r = await run(last, "COMMIT", timeoutMs);
      if (r.error !== null) {
        await rollbackAll(readers.map((p) => p.server), timeoutMs);
        return r.error;
      }
    }
    const results = await Promise.all(readers.map((p) => run(p.server, "COMMIT", timeoutMs)));
    return results.find((r) => r.error !== null)?.error ?? null;
  }
  return await twoPhaseCommit({ writers, readers }, options);
}

/** Deferred constraints checked on every shard, then COMMIT on each; any error rolls all back. */
async function commitChecked(servers: Server[], timeoutMs: number): Promise<ErrorFields | null> {
  const checked = await Promise.all(servers.map((s) => run(s, IMMEDIATE_SQL, timeoutMs)));
  const failed = checked.find((r) => r.error !== null);
  if (failed !== undefined) {
    await rollbackAll(servers, timeoutMs);
    return failed.error;
  }
  const results = await Promise.all(servers.map((s) => run(s, "COMMIT", timeoutMs)));
  return results.find((r) => r.error !== null)?.error ?? null;
}

async function twoPhaseCommit(
  shards: { writers: Participant[]; readers: Participant[] },
  options: CommitOptions,
): Promise<ErrorFields | null> {
  const { manager, timeoutMs } = options;
  const { writers, readers } = shards;
  const tx: WalTransaction = {
    gid: manager.newGid(),
    database: options.database,
    user: options.user,
    shards: writers.map((p) => p.shard),
    at: Date.now(),
  };
  const gidOf = (p: Participant): string => `${tx.gid}_${p.shard}`;
  try {
    await manager.begin(tx);
  } catch (e) {
    await rollbackAll([...writers, ...readers].map((p) => p.server), timeoutMs);
    manager.finished(tx, { commit: false, pending: [] });
    return {
      severity: "ERROR",
      code: "58030",
      message: `could not write the two-phase commit log: ${errorMessage(e)}`,
    };
  }
  // A shard that only read has nothing to prepare: its COMMIT goes along with the PREPAREs.
  const readersDone = Promise.all(readers.map((p) => run(p.server, "COMMIT", timeoutMs)));
  let prepared: Outcome[];
  if (manager.crashAt === null) {
    prepared = await Promise.all(
      writers.map((p) => run(p.server, `PREPARE TRANSACTION '${gidOf(p)}'`, timeoutMs)),
    );
  } else {
    // Under a test's fault point, one after the other (each step is a moment of its own).
    prepared = [];
    for (const p of writers) {
      prepared.push(await run(p.server, `PREPARE TRANSACTION '${gidOf(p)}'`, timeoutMs));
      if (prepared.length === 1) manager.crashPoint("first_prepare");
    }
  }
  await readersDone;
  // PREPARE TRANSACTION answers ROLLBACK (no error) when the transaction had failed.
  const ok = prepared.map((r) => r.error === null && r.tags.includes("PREPARE TRANSACTION"));
  if (ok.some((x) => !x)) {
    manager.rollingBack(tx);
    const error = prepared.find((r) => r.error !== null && !r.lost)?.error ??
      prepared.find((r) => r.error !== null)?.error ?? {
      severity: "ERROR",
      code: "40000",
      message: "the transaction was rolled back on a shard while it was being prepared",
    };
    const pending: number[] = [];
    await Promise.all(writers.map(async (p, i) => {
      // Refused: PostgreSQL rolled that part back already.
      if (!ok[i] && !prepared[i].lost) return;
      if (p.server.closed) {
        pending.push(p.shard); // prepared or not: ROLLBACK PREPARED will tell
        return;
      }
      const r = await run(p.server, `ROLLBACK PREPARED '${gidOf(p)}'`, timeoutMs);
      if (r.lost || (r.error !== null && r.error.code !== "42704")) pending.push(p.shard);
    }));
    manager.finished(tx, { commit: false, pending });
    return error;
  }
  manager.crashPoint("prepared");
  try {
    await manager.decide(tx);
  } catch (e) {
    // Not decided: roll back everywhere.
    manager.rollingBack(tx);
    const pending: number[] = [];
    await Promise.all(writers.map(async (p) => {
      const r = await run(p.server, `ROLLBACK PREPARED '${gidOf(p)}'`, timeoutMs);
      if (r.lost || (r.error !== null && r.error.code !== "42704")) pending.push(p.shard);
    }));
    manager.finished(tx, { commit: false, pending });
    return {
      severity: "ERROR",
      code: "58030",
      message: `could not write the two-phase commit log: ${errorMessage(e)}`,
    };
  }
  manager.crashPoint("decided");
  await manager.pausePoint("decided");
  const pending: number[] = [];
  const commitOne = async (p: Participant): Promise<void> => {
    const r = p.server.closed
      ? null
      : await run(p.server, `COMMIT PREPARED '${gidOf(p)}'`, timeoutMs);
    if (r === null || r.lost || (r.error !== null && r.error.code !== "42704")) {
      pending.push(p.shard);
    }
  };
  if (manager.crashAt === null) await Promise.all(writers.map(commitOne));
  else {
    for (const [i, p] of writers.entries()) {
      await commitOne(p);
      if (i === 0) manager.crashPoint("first_commit");
    }
  }
  // Decided: the transaction commits, on the shards that could not take it now later.
  manager.finished(tx, { commit: true, pending });
  return null;
}
