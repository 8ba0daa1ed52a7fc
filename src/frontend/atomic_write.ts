/**
 * `two_phase_commit_auto`: a single statement that writes on several shards outside a
 * transaction (an UPDATE or DELETE without its key, a write to an omnisharded table, DDL that
 * can run in a transaction block) runs as a split request of one statement: in an implicit
 * transaction on each shard, ended through Checkout.endImplicit, which commits it on every shard
 * or none (two-phase commit). Statements that can't run in a transaction block (VACUUM, CREATE
 * INDEX CONCURRENTLY, CREATE DATABASE, ALTER SYSTEM, ...) run as before.
 *
 * @module
 */

import { decodeText, Msg, readInt32, TxStatus } from "../protocol/messages.ts";
import { bindValues } from "../protocol/frontend_messages.ts";
import type { Analysis } from "../router/mod.ts";
import { type BindValues, decideShard, type ShardLookup } from "../router/shard.ts";
import type { Cluster } from "../backend/cluster.ts";
import { twoPhaseCommits } from "../two_pc/mod.ts";
import { bindStatementName, parseName, parseQuery } from "./prepared.ts";
import type { SplitClient, SplitPlan } from "./split_request.ts";

/** What planning an atomic write reads of the client. */
export interface AtomicWriteClient extends SplitClient {
  readonly cluster: Cluster | null;
  readonly deferredBegin: Uint8Array | null;
  txStatus(): number;
}

/** Writes of rows: never CONCURRENTLY. */
const DML = new Set(["InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"]);

/** Statements (by parse-tree node) that write and may run inside a transaction block. */
const IN_BLOCK = new Set([
  "InsertStmt",
  "UpdateStmt",
  "DeleteStmt",
  "MergeStmt",
  "CreateStmt",
  "AlterTableStmt",
  "DropStmt",
  "IndexStmt",
  "CreateSeqStmt",
  "AlterSeqStmt",
  "ViewStmt",
  "CreateFunctionStmt",
  "RenameStmt",
  "CommentStmt",
  "GrantStmt",
  "CreateSchemaStmt",
  "TruncateStmt",
  "CreateEnumStmt",
  "CompositeTypeStmt",
  "CreateTableAsStmt",
  "DefineStmt",
  "CreateTrigStmt",
  "CreatePolicyStmt",
  "AlterObjectSchemaStmt",
  "AlterOwnerStmt",
  "CreateDomainStmt",
]);

/** The text at `at` starts (after blanks) with "sel" (any case). */
function startsWithSelect(buf: Uint8Array, at: number): boolean {
  while (buf[at] === 0x20 || buf[at] === 0x0a || buf[at] === 0x09 || buf[at] === 0x0d) at++;
  return (buf[at] | 0x20) === 0x73 && (buf[at + 1] | 0x20) === 0x65 &&
    (buf[at + 2] | 0x20) === 0x6c;
}

/**
 * A one-statement split plan for a write on several shards outside a transaction, when the
 * client's user has `two_phase_commit_auto`; null otherwise (the request runs as before).
 */
export function planAtomicWrite(
  request: { type: number; buf: Uint8Array; p: number; end: number; bufferEnd: number },
  client: AtomicWriteClient,
): SplitPlan | null {
  const cluster = client.cluster;
  const config = client.sharding;
  if (cluster === null || config === null) return null;
  if (client.deferredBegin !== null || client.txStatus() !== TxStatus.Idle) return null;
  if (!twoPhaseCommits.enabled(cluster.user, cluster.name, { auto: true })) return null;
  const { type, buf, p, end } = request;
  // Cheap test first: a SELECT is not a write (WITH ... UPDATE is looked at).
  if (
    (type === Msg.Query && startsWithSelect(buf, p + 5)) || (type === Msg.Parse &&
      startsWithSelect(buf, buf.indexOf(0, p + 5) + 1))
  ) return null;
  let analysis: Analysis | null = null;
  let bind: BindValues | null = null;
  // The Bind's values are decoded only once the statement is known to be a write.
  let bindAt: [number, number] | null = null;
  let requestEnd: number;
  if (type === Msg.Query) {
    analysis = client.router.analyze(decodeText(buf, p + 5, end - 1));
    requestEnd = end;
  } else {
    // Parse?, Bind, Describe?, Execute, Sync: one statement run once.
    let q = p;
    let executes = 0;
    let parsed: Analysis | null = null;
    requestEnd = -1;
    while (request.bufferEnd - q >= 5) {
      const t = buf[q];
      const next = q + readInt32(buf, q + 1) + 1;
      if (next > request.bufferEnd) return null;
      if (t === Msg.Sync) {
        requestEnd = next;
        break;
      }
      if (t === Msg.Parse) {
        if (parseName(buf, q, next) !== "" && q !== p) return null;
        parsed = client.router.analyze(parseQuery(buf, q, next));
      } else if (t === Msg.Bind) {
        const name = bindStatementName(buf, q, next);
        analysis = parsed ?? client.statementAnalysis(name);
        bindAt = [q, next];
      } else if (t === Msg.Execute) executes++;
      else if (t !== Msg.Describe) return null;
      q = next;
    }
    if (requestEnd < 0 || executes !== 1) return null;
  }
  if (analysis === null || analysis.info.ast === null || analysis.directives !== null) return null;
  if (analysis.info.statements !== 1) return null;
  const stmt = analysis.info.ast.stmts[0]?.stmt;
  if (stmt === undefined) return null;
  const kind = Object.keys(stmt)[0];
  if (!IN_BLOCK.has(kind)) return null;
  // CREATE INDEX CONCURRENTLY, DROP INDEX CONCURRENTLY, DETACH PARTITION CONCURRENTLY (DDL is
  // rare: the tree is looked through only for it, not for every INSERT, UPDATE or DELETE).
  if (!DML.has(kind) && JSON.stringify(stmt).includes('"concurrent":true')) return null;
  if (bindAt !== null) bind = bindValues(buf, bindAt[0], bindAt[1]);
  const lookup: ShardLookup = { found: [], pluginShards: new Map(), missing: [] };
  const d = decideShard(analysis, {
    config,
    session: client.shardSession(),
    bind: bind ?? undefined,
    lookup,
  });
  if (d.unsupported !== undefined || lookup.missing.length > 0 || d.merge !== undefined) {
    return null;
  }
  const t = d.target;
  const shards = t.kind === "all"
    ? Array.from({ length: config.shards }, (_, i) => i)
    : t.kind === "some"
    ? [...t.shards].sort((a, b) => a - b)
    : [];
  if (shards.length < 2) return null;
  const bytes = buf.slice(p, requestEnd);
  return { from: p, to: requestEnd, bytes, ends: [p + bytes.length], shards };
}
