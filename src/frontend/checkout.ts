/**
 * Taking a server for a client's next request: a parked server of its transaction on that shard,
 * or one from the pool (checked first when idle past healthcheck_interval), then readied with
 * what must go ahead of the request: excess prepared statements closed, the client's settings,
 * and the held-back BEGIN or the transaction's prelude. And giving it back: at the end of a
 * transaction (after reading back the settings it may have changed) unless pinned or in session
 * mode, cleaned when a pin may have left something on it.
 *
 * @module
 */

import {
  appendError,
  type ErrorFields,
  MessageBuilder,
  Msg,
  SYNC,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import type { SocketWriter } from "../net/writer.ts";
import type { Server } from "../backend/server.ts";
import { Action, Expect } from "../backend/response_queue.ts";
import { ClientFacingError, type Pool, WaitAbort } from "../backend/pool.ts";
import type { Cluster } from "../backend/databases.ts";
import { ServerConnectError } from "../backend/connect.ts";
import type { Role } from "../router/route.ts";
import { emptyScan, type SessionScan } from "../router/scan.ts";
import { errorMessage, log } from "../log.ts";
import type { ShardingConfig } from "../router/shard.ts";
import { markApplied, paramSyncStatements } from "./params.ts";
import { sameParams, type SessionState } from "./session.ts";
import { statementMessage } from "./prepared.ts";
import type { ShardTransaction } from "./shard_transaction.ts";
import type { ReportedParameters } from "./reported_parameters.ts";
import type { OutBatch } from "./out_batch.ts";
import { commitAcross } from "../two_pc/mod.ts";

/**
 * Cleans a server a client pinned (or left in a state pgdog does not know) before others use it:
 * the identity first (RESET ALL keeps it, and another identity may not reset everything).
 */
export const PIN_CLEANUP = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; " +
  "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP";

/** What taking a server and giving it back read of the client and ask of it. */
export interface CheckoutClient {
  readonly id: number;
  readonly sessionMode: boolean;
  /** The pool of the client's server (rollback_timeout). */
  readonly pool: Pool | null;
  readonly cluster: Cluster | null;
  readonly sharding: ShardingConfig | null;
  readonly session: SessionState;
  readonly renaming: boolean;
  readonly closed: boolean;
  readonly writer: SocketWriter;
  readonly rbuf: MessageBuffer;
  readonly txn: ShardTransaction;
  /** What the client's batch collects for its server. */
  readonly out: OutBatch;
  /** What the client was told of reported parameters. */
  readonly reported: ReportedParameters;
  /** prepared_statements_limit. */
  readonly statementsLimit: number;
  deferredBegin: Uint8Array | null;
  /** Set true: later pipelined messages wait until the request's answer is in. */
  set holdRest(hold: boolean);
  /** Set "waiting" while the pool is waited on, "idle" when that failed. */
  set state(state: "idle" | "waiting");
  /** The gate (PAUSE, MAINTENANCE, RELOAD) would let a new transaction through as it is. */
  gateOpen(): boolean;
  /** Waits at the gate; false when the client was told to go (and closed). */
  atGate(): Promise<boolean>;
  /** Attaches `server` to the client (`fresh`: from the pool, not a parked one). */
  attach(server: Server, fresh: boolean): void;
  /** The transaction ended. */
  transactionOver(): void;
}

/** One client's checkouts, and the settings its servers carry. */
export class Checkout {
  readonly #client: CheckoutClient;
  /** The shard the next checkout is for. */
  shard = 0;
  /** The next checkout is for a request that runs nothing: no transaction starts there. */
  outsideTransaction = false;
  /** The held-back BEGIN sent with the current server's first request (to re-run with it). */
  sentBegin: Uint8Array | null = null;
  /** The server's settings may lag behind the client's (session mode, after a read-back). */
  needsSync = false;
  /** A settings sync went ahead of the request being sent. */
  syncSent = false;
  /** Aborts the wait for a pool (a cancel, the client leaving). */
  waitAbort: WaitAbort | null = null;
  /** The server was pinned at some point since it was taken. */
  pinnedThisHold = false;
  /** A settings read-back was sent and has not answered yet. */
  #readBackPending = false;
  /** Resolves when the pending read-back has answered. */
  readBackDone: Promise<void> | null = null;

  constructor(client: CheckoutClient) {
    this.#client = client;
  }

  /** Takes a server for the next request. False (error already queued) on failure. */
  async acquire(role: Role): Promise<boolean> {
    const c = this.#client;
    if (c.txn.empty && !c.gateOpen() && !(await c.atGate())) return false;
    const cluster = c.cluster!;
    let server: Server;
    const shard = this.shard;
    const parked = c.sharding !== null ? c.txn.take(shard) : undefined;
    if (parked !== undefined) {
      // The client holds a server there: in its transaction, or (session mode) idle, to join it.
      c.attach(parked, false);
      this.sentBegin = null;
      if (this.outsideTransaction) this.outsideTransaction = false;
      else this.join(parked);
      return true;
    }
    const fast = role === "primary" || !cluster.hasReplicas
      ? cluster.pool(shard).tryCheckout()
      : null;
    if (fast !== null && !this.#needsHealthcheck(fast)) {
      server = fast;
    } else {
      if (fast !== null) fast.owner?.checkin(fast);
      c.state = "waiting";
      const abort = new WaitAbort();
      this.waitAbort = abort;
      try {
        server = await cluster.checkout(role, { abort, shard });
      } catch (e) {
        c.state = "idle";
        if (c.closed) return false;
        const fields = e instanceof ClientFacingError || e instanceof ServerConnectError
          ? e.fields
          : { severity: "ERROR", code: SqlState.InternalError, message: String(e) };
        const b = new MessageBuilder(128);
        appendError(b, {
          ...fields,
          severity: fields.severity === "FATAL" ? "ERROR" : fields.severity,
        });
        c.writer.enqueue(b.view());
        return false;
      } finally {
        this.waitAbort = null;
      }
      if (c.closed) {
        server.owner?.checkin(server);
        return false;
      }
    }
    if (server.closed) {
      // Lost between checkout and attach: nothing will report it to this client; take another.
      return await this.acquire(role);
    }
    c.attach(server, true);
    const out = c.out;
    if (c.renaming) this.#evictStatements(server, out);
    // Last before the request: nothing with a Sync may come between (see Server.settingsSync).
    this.syncParams(server, out);
    this.sentBegin = this.outsideTransaction ? null : c.deferredBegin;
    if (this.outsideTransaction) {
      this.outsideTransaction = false;
    } else if (c.deferredBegin !== null && c.sharding === null) {
      // The transaction's first statement chose the host: the BEGIN goes first, answered already.
      out.addBytes(c.deferredBegin);
      server.expect(Expect.Query, Action.Swallow);
      c.deferredBegin = null;
    } else if (c.sharding !== null) this.join(server);
    return true;
  }

  /**
   * A transaction reaching a server of the client's that is idle (checked out now, or a
   * session's kept between transactions): it starts there as it did on the first (BEGIN, then
   * what was held back or must be replayed: SET LOCAL search_path, savepoints).
   */
  join(server: Server): void {
    const c = this.#client;
    if (c.deferredBegin !== null) {
      c.txn.prelude.unshift(c.deferredBegin);
      c.deferredBegin = null;
    }
    if (server.txStatus !== TxStatus.Idle) return;
    for (const msg of c.txn.joining(null)) {
      c.out.addBytes(msg);
      server.expect(Expect.Query, Action.Swallow);
    }
  }

  /**
   * At each ReadyForQuery that leaves the server idle (see ServerLink.shouldRelease): if the
   * transaction may have changed the session, its state is read back first (the server stays until
   * that answer is in); in transaction mode the server then goes back unless pinned.
   */
  shouldRelease(server: Server): boolean | string {
    const c = this.#client;
    const session = c.session;
    // Map#clear allocates a new table even when the map is empty: once per transaction here.
    if (session.pgdogLocal.size > 0) session.pgdogLocal.clear();
    // (A session's other servers, kept idle, are in no transaction.)
    if (c.txn.status(null) === TxStatus.Idle) c.transactionOver();
    if (session.needsReadBack) {
      this.#readBack(server);
      return false;
    }
    if (session.pinned) {
      this.pinnedThisHold = true;
      return false;
    }
    if (c.sessionMode) return false;
    // Unpinned now (locks released): the server still gets the cleanup a pin promises.
    return this.pinnedThisHold ? PIN_CLEANUP : true;
  }

  #readBack(server: Server): void {
    const c = this.#client;
    const sql = c.session.readBackSql();
    this.#readBackPending = true;
    let done!: () => void;
    this.readBackDone = new Promise((resolve) => done = resolve);
    const finish = (): void => {
      this.#readBackPending = false;
      this.readBackDone = null;
      c.reported.resetDone();
      done();
    };
    server.query(sql, {
      timeoutMs: c.pool!.config.rollback_timeout,
      onDone: (r) => {
        finish();
        if (r.error) {
          log.warn(`client ${c.id}: reading back session settings failed: ${r.error.message}`);
          server.discard = true;
          c.session.note(FORGET_SCAN);
          return;
        }
        c.session.applyReadBack(r.rows, server);
        this.needsSync = !sameParams(c.session.params, server.applied);
      },
    }).catch(() => {
      // The server was lost; serverLost() tells the client.
      finish();
    });
  }

  /** What runs on the client's server when it goes back at the client's end. */
  leavingSql(): string | null {
    const c = this.#client;
    if (c.sessionMode) return "DISCARD ALL";
    // Until the read-back has answered, settings or advisory locks the client left are unknown:
    // reset everything rather than hand them to someone else.
    const unknownState = this.pinnedThisHold || c.session.pinned || c.session.needsReadBack ||
      this.#readBackPending;
    return unknownState ? PIN_CLEANUP : null;
  }

  /**
   * Ends the implicit transaction of a split request on `servers` (detached, taken from the
   * client), reads back the settings its statements may have changed, and gives them back.
   * A commit on several shards is all or nothing: two-phase commit when enabled
   * (`two_phase_commit_auto`, or `two_phase_commit` for the client's own COMMIT: `explicit`),
   * else deferred constraints checked everywhere before any COMMIT. Returns the first error (a
   * COMMIT can fail, e.g. a deferred constraint).
   */
  async endImplicit(
    servers: Server[],
    commit: boolean,
    options: { explicit?: boolean } = {},
  ): Promise<ErrorFields | null> {
    const c = this.#client;
    const limit = c.pool?.config.rollback_timeout ?? 5000;
    let error: ErrorFields | null = null;
    // A session's servers the transaction did not reach have nothing to end.
    const ending = servers.filter((s) => s.txStatus !== TxStatus.Idle || s.closed);
    if (commit && ending.length > 1 && c.cluster !== null) {
      // Several shards: all or nothing (see src/two_pc/coordinator.ts).
      error = await commitAcross(ending, {
        cluster: c.cluster,
        explicit: options.explicit ?? false,
        timeoutMs: limit,
      });
    } else {
      const sql = commit ? "COMMIT" : "ROLLBACK";
      const results = await Promise.all(
        ending.map((s) => s.query(sql, { timeoutMs: limit }).catch((e) => ({ error: lost(e) }))),
      );
      for (const r of results) error ??= r.error;
    }
    if (servers.length > 0 && c.session.needsReadBack && !servers[0].closed) {
      // The statements may have changed settings: every server ran them; read them from one.
      const r = await servers[0].query(c.session.readBackSql(), { timeoutMs: limit })
        .catch(() => null);
      if (r !== null && r.error === null) {
        c.session.applyReadBack(r.rows, servers[0]);
        this.needsSync = true;
      }
      c.reported.resetDone();
    }
    for (const s of servers) {
      // In session mode the client keeps its servers (parked, as after a request on several).
      if (c.sessionMode && !s.closed && c.cluster !== null) c.txn.keep(c.cluster, s);
      else (s.owner as Pool).release(s, { resetSql: null });
    }
    return error === null ? null : { ...error, severity: "ERROR" };
  }

  /** A server idle longer than healthcheck_interval is checked before use (by the cluster). */
  #needsHealthcheck(server: Server): boolean {
    return Date.now() - server.idleSince >= this.#client.cluster!.settings.healthcheckInterval;
  }

  /**
   * Pipelines the settings difference ahead of the request; its answer is swallowed. Should it
   * fail, the server skips the request and is closed (serverLost re-runs it elsewhere); later
   * requests of the batch wait until this one is answered.
   */
  syncParams(server: Server, out: OutBatch): void {
    this.needsSync = false;
    this.syncSent = false;
    const c = this.#client;
    const params = c.session.params;
    const statements = paramSyncStatements(params, server.applied);
    if (statements === null) return;
    out.addBytes(server.settingsSync(statements));
    markApplied(server.applied, params);
    this.syncSent = true;
    c.reported.syncSent();
    c.holdRest = true;
  }

  /** Closes the least recently used statements beyond prepared_statements_limit, pipelined. */
  #evictStatements(server: Server, out: OutBatch): void {
    let excess = server.statements.size - this.#client.statementsLimit;
    if (excess <= 0) return;
    for (const name of server.statements.keys()) {
      if (excess-- <= 0) break;
      server.statements.delete(name);
      out.addBytes(statementMessage(Msg.Close, name));
      server.expect(Expect.Close, Action.Swallow);
    }
    out.addBytes(SYNC);
    server.expect(Expect.Sync, Action.Swallow);
  }
}

/** A read-back failed: keep asking next time (settings unknown). */
const FORGET_SCAN: SessionScan = {
  ...emptyScan(),
  unknownSetting: true,
  advisoryLocks: true,
  tempObjects: true,
};

/** A server lost while pgdog ran its own statement on it. */
function lost(e: unknown): ErrorFields {
  return {
    severity: "ERROR",
    code: SqlState.ConnectionFailure,
    message: `server connection lost: ${errorMessage(e)}`,
  };
}
