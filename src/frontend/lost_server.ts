/**
 * What a client does when its server dies under it: the request runs again on another server
 * when none of its answer went out (a read whose replica died, a request whose server refused the
 * client's settings), the client goes on with another server when nothing of its session was
 * lost, and otherwise its connection ends.
 *
 * @module
 */

import {
  appendError,
  type ErrorFields,
  MessageBuilder,
  Msg,
  readyForQuery,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { replayable } from "../protocol/frontend_messages.ts";
import type { SocketWriter } from "../net/writer.ts";
import { CopyState, type Server, SettingsSyncError } from "../backend/server.ts";
import type { Pool } from "../backend/pool.ts";
import type { Cluster } from "../backend/databases.ts";
import type { Role } from "../router/route.ts";
import { errorMessage, log } from "../log.ts";
import type { SessionState } from "./session.ts";
import type { ShardTransaction } from "./shard_transaction.ts";
import type { Forwarder } from "./forward.ts";
import type { OutBatch } from "./out_batch.ts";
import { RoutedMessage } from "./routed_message.ts";

/** A request kept to re-run elsewhere; `begin` is the held-back BEGIN that went ahead of it. */
interface KeptRequest {
  bytes: Uint8Array;
  role: Role;
  begin: Uint8Array | null;
}

/** What handling a lost server reads of the client and asks of it. */
export interface LostServerClient {
  readonly id: number;
  readonly cluster: Cluster | null;
  readonly sessionMode: boolean;
  readonly session: SessionState;
  readonly writer: SocketWriter;
  readonly txn: ShardTransaction;
  readonly forwarder: Forwarder;
  /** What the client's batch collects for its server. */
  readonly out: OutBatch;
  /** The server attached to the client. */
  readonly attached: Server | null;
  deferredBegin: Uint8Array | null;
  skipUntilSync: boolean;
  /** Takes a server for the next request; false (the error queued) on failure. */
  acquire(role: Role): Promise<boolean>;
  /** Writes what the batch collected for the server. */
  send(): Promise<void>;
  /** Ends the connection with a FATAL error. */
  terminate(fields: ErrorFields): void;
  /** Ends the connection once what the client is owed is written (it has the server's FATAL). */
  end(): void;
}

/** One client's requests kept to re-run, and what a server's loss means to it. */
export class LostServers {
  readonly #client: LostServerClient;
  /**
   * The request a replica is answering (or one behind a settings sync), kept until its answer
   * starts, to re-run it elsewhere.
   */
  #kept: KeptRequest | null = null;
  /** A request was re-run after a settings sync failed, and has not completed since. */
  #syncRetried = false;
  /** A server's FATAL went to the client unchanged: its connection ends without another word. */
  #fatalForwarded = false;
  /** A re-run in progress: new requests wait for it. */
  replaying: Promise<void> | null = null;

  constructor(client: LostServerClient) {
    this.#client = client;
  }

  /** Keeps the request at [from, to) of `buf` to re-run on another server (when it is whole). */
  keep(buf: Uint8Array, from: number, to: number, options: KeptOptions): void {
    this.#kept = from >= 0 && replayable(buf, from, to)
      ? { bytes: buf.slice(from, to), role: options.role, begin: options.begin }
      : null;
  }

  /** The server went back after a ReadyForQuery: its requests are answered. */
  released(): void {
    this.#kept = null;
    this.#syncRetried = false;
  }

  /** What a server's FATAL means to this client (see ServerLink.onServerFatal). */
  onServerFatal(server: Server): "replay" | "downgrade" | "keep" {
    if (this.#kept?.role === "replica" && !server.dataForwarded) return "replay";
    if (this.#survives(server)) return "downgrade";
    // The client has the server's FATAL, as PostgreSQL sends it: nothing follows but the close.
    this.#fatalForwarded = true;
    return "keep";
  }

  /** Outside a transaction (and unpinned) a lost server is simply replaced. */
  #survives(server: Server): boolean {
    return !this.#client.sessionMode && !this.#client.session.pinned &&
      server.txStatus === TxStatus.Idle && server.copy === CopyState.None;
  }

  /** The client's attached server died (it is no longer attached) and the client is open. */
  lost(server: Server, error: Error): void {
    const c = this.#client;
    const replay = this.#kept;
    this.#kept = null;
    const syncFailed = error instanceof SettingsSyncError;
    if (
      replay && !server.dataForwarded && !c.session.pinned && c.cluster &&
      (syncFailed ? !this.#syncRetried : replay.role === "replica")
    ) {
      if (syncFailed) {
        // The server skipped the request: it runs on another server, with the settings applied.
        this.#syncRetried = true;
        log.info(`client ${c.id}: running the request on another server`);
      } else {
        // A read lost before any of its answer went out: run it again on another host.
        c.cluster.banPool(server.owner as Pool, `server lost: ${error.message}`);
        log.info(
          `client ${c.id}: ${server.label} lost before answering a read; running it on another host`,
        );
      }
      this.replaying = this.#rerun(replay, server.answered).catch((e) => {
        log.warn(
          `client ${c.id}: re-running a read failed: ${errorMessage(e)}`,
        );
      }).finally(() => {
        this.replaying = null;
      });
      return;
    }
    const fields: ErrorFields = syncFailed
      ? {
        ...error.fields,
        severity: "ERROR",
        message:
          `pgdog could not apply this session's settings on a server: ${error.fields.message}`,
        detail: "The request did not run.",
      }
      : {
        severity: "ERROR",
        code: SqlState.ConnectionFailure,
        message: `server connection lost: ${error.message}`,
        detail:
          `${server.address.host}:${server.address.port} closed the connection while this client used it`,
      };
    log.warn(`client ${c.id}: ${server.label} lost: ${error.message}`);
    if (syncFailed && this.#syncRetried) {
      // Two servers in a row refused the session's settings: no server can take this session.
      c.terminate({ ...fields, severity: "FATAL" });
      return;
    }
    if (this.#fatalForwarded) {
      c.end();
      return;
    }
    if (!this.#survives(server)) {
      // A transaction or session state is gone with the server: the client must start over.
      c.terminate({ ...fields, severity: "FATAL" });
      return;
    }
    const b = new MessageBuilder(128);
    for (let i = 0; i < server.pendingReady; i++) {
      // The request being answered may already have its error (the server's own FATAL).
      if (i > 0 || !server.errorForwarded) appendError(b, fields);
      b.bytes(readyForQuery(TxStatus.Idle));
    }
    if (server.openRequest) {
      appendError(b, fields);
      c.skipUntilSync = true;
    }
    c.writer.enqueue(b.view());
  }

  /**
   * Re-runs a request lost before any of its answer went out (a read whose replica died, or one
   * whose server failed to take the client's settings) on another server.
   */
  async #rerun(replay: KeptRequest, answered: number): Promise<void> {
    const c = this.#client;
    const bytes = replay.bytes;
    if (replay.begin !== null) {
      // The held-back BEGIN goes ahead of it again (once in a sharded transaction's prelude).
      if (c.txn.prelude[0] === replay.begin) c.txn.prelude.shift();
      c.deferredBegin = replay.begin;
    }
    if (!(await c.acquire(replay.role))) {
      // The error is queued; each request in it still needs its ReadyForQuery.
      for (let p = 0; p < bytes.length;) {
        const type = bytes[p];
        if (type === Msg.Query || type === Msg.Sync) {
          c.writer.enqueue(readyForQuery(TxStatus.Idle));
        }
        p += 1 + ((bytes[p + 1] << 24) | (bytes[p + 2] << 16) | (bytes[p + 3] << 8) | bytes[p + 4]);
      }
      return;
    }
    c.out.useSource(bytes);
    // Not the request loop's message: a re-run may start while that one waits.
    const msg = new RoutedMessage();
    for (let p = 0; p < bytes.length;) {
      const end = p + 1 +
        ((bytes[p + 1] << 24) | (bytes[p + 2] << 16) | (bytes[p + 3] << 8) | bytes[p + 4]);
      c.forwarder.forward(msg.at(bytes[p], bytes, p, end), c.attached!, c.out);
      p = end;
    }
    // The client already has the first answers (ParseComplete, BindComplete, ...): not again.
    c.attached?.queue.swallowFirst(answered);
    await c.send();
  }
}

/** How a kept request re-runs: with the role it took, after the BEGIN that went ahead of it. */
export interface KeptOptions {
  role: Role;
  /** The held-back BEGIN sent with the server's first request, or null. */
  begin: Uint8Array | null;
}
