/**
 * The servers a client's request runs on: the attached one (the batch written to it, its answers
 * waited for), or while a request runs on several shards, its fan-out's legs. pgdog's own answers go in order with theirs; the first of them
 * answers for the client's transaction status; a cancel reaches those running the request; a
 * server kept only for a pin goes back once unpinned.
 *
 * @module
 */

import { TxStatus } from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { SocketWriter } from "../net/writer.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import { CopyState, type Server } from "../backend/server.ts";
import { Action, Expect, type LocalAnswer } from "../backend/response_queue.ts";
import { ClientFacingError, type Pool } from "../backend/pool.ts";
import type { FanOut } from "./fan_out.ts";
import { type Checkout, PIN_CLEANUP } from "./checkout.ts";
import type { SessionState } from "./session.ts";
import type { ShardTransaction } from "./shard_transaction.ts";
import type { OutBatch } from "./out_batch.ts";
import type { LostServers } from "./lost_server.ts";
import { errorMessage, log } from "../log.ts";

/** The client's own fields read and set here. */
export interface ServingClient {
  readonly id: number;
  readonly rbuf: MessageBuffer;
  /** The attached server. */
  server: Server | null;
  state: "login" | "idle" | "waiting" | "active";
  readonly pool: Pool | null;
  readonly session: SessionState;
  readonly writer: SocketWriter;
}

/** The client's request-handling state read here (see ClientView). */
export interface ServingParts {
  /** What the batch collects for the attached server. */
  readonly out: OutBatch;
  readonly lost: LostServers;
  readonly txn: ShardTransaction;
  readonly checkout: Checkout;
  readonly sessionMode: boolean;
  readonly deferredBegin: Uint8Array | null;
}

/** The servers one client's request runs on. */
export class RequestServers {
  readonly #client: ServingClient;
  readonly #parts: ServingParts;
  /** The request running on several shards, if any. */
  fan: FanOut | null = null;
  /** The servers of a COPY FROM running on several shards (copy_in_run.ts), if any. */
  copying: readonly Server[] | null = null;

  constructor(client: ServingClient, parts: ServingParts) {
    this.#client = client;
    this.#parts = parts;
  }

  /** Answers with bytes of pgdog's own, in order with whatever the server still owes. */
  answer(bytes: Uint8Array, dropped?: () => void): void {
    const legs = this.fan !== null && this.fan.queueing ? this.fan.servers : null;
    const server = this.#client.server;
    if (legs !== null) {
      // Every shard's answers carry it, so the merged answer has it once, in its place.
      legs.forEach((server, i) =>
        server.expect(
          Expect.Local,
          Action.Forward,
          {
            bytes,
            dropped: i === 0 ? dropped : undefined,
          } satisfies LocalAnswer,
        )
      );
    } else if (server) {
      server.expect(Expect.Local, Action.Forward, { bytes, dropped } satisfies LocalAnswer);
    } else this.#client.writer.enqueue(bytes);
  }

  /**
   * The client's transaction status, across shards: a BEGIN held back (sent with the
   * transaction's first statement) counts, even while an idle server is attached (session mode).
   */
  txStatus(): number {
    const server = this.lead();
    const txn = this.#parts.txn;
    if (txn.failedLocally) return TxStatus.Failed;
    const status = txn.empty ? server?.txStatus ?? TxStatus.Idle : txn.status(server);
    return status === TxStatus.Idle && this.#parts.deferredBegin !== null
      ? TxStatus.InTransaction
      : status;
  }

  /**
   * The server whose state answers for the client's: the attached one, or while a request runs
   * on several shards, the first shard's.
   */
  lead(): Server | null {
    const fan = this.fan;
    return fan !== null && fan.queueing ? fan.servers[0] : this.#client.server;
  }

  /** Writes what the batch collected for the attached server. */
  async send(): Promise<void> {
    const c = this.#client;
    const out = this.#parts.out;
    const server = c.server;
    if (!server || out.empty) {
      out.reset(c.rbuf.buf);
      return;
    }
    try {
      await out.writeTo(server.writer);
    } catch (e) {
      // The server's read loop reports the loss to this client (serverLost).
      log.debug(`client ${c.id}: write to ${server.label} failed: ${errorMessage(e)}`);
    } finally {
      out.reset(c.rbuf.buf);
    }
  }

  /**
   * Waits until the attached server has answered everything sent and any settings read-back is
   * in.
   */
  async settle(): Promise<void> {
    const server = this.#client.server;
    if (server !== null && server.queue.length > 0) await server.drain().catch(() => {});
    const parts = this.#parts;
    if (parts.lost.replaying) await parts.lost.replaying;
    if (parts.checkout.readBackDone) await parts.checkout.readBackDone;
  }

  /** The servers running the client's request now (null when none is). */
  running(): readonly Server[] | null {
    const server = this.#client.server;
    const fan = this.fan;
    return server && server.queue.length > 0
      ? [server]
      : fan !== null && fan.running
      ? fan.servers
      : this.copying;
  }

  /**
   * A CancelRequest for the client: the running request is cancelled on its servers, or the wait
   * for a pool ends.
   */
  cancel(): void {
    const server = this.#client.server;
    if (server && (server.queue.length > 0 || server.copy !== CopyState.None)) {
      server.sendCancel();
    } else if (this.fan !== null && this.fan.running) {
      for (const s of this.fan.servers) if (s.queue.length > 0 && !s.closed) s.sendCancel();
    } else if (this.copying !== null) {
      for (const s of this.copying) if (s.queue.length > 0 && !s.closed) s.sendCancel();
    } else if (this.#parts.checkout.waitAbort) {
      this.#parts.checkout.waitAbort.abort(
        new ClientFacingError({
          severity: "ERROR",
          code: SqlState.QueryCanceled,
          message: "canceling statement due to user request",
        }),
      );
    }
  }

  /** After an unpin, a server kept only for the pin goes back (cleaned) at once. */
  releaseIfUnpinned(): void {
    const c = this.#client;
    const server = c.server;
    if (
      !server || this.#parts.sessionMode || c.session.pinned || !server.clean ||
      c.session.needsReadBack || this.fan !== null
    ) return;
    c.server = null;
    c.state = "idle";
    this.#parts.checkout.pinnedThisHold = false;
    c.pool!.release(server, { resetSql: PIN_CLEANUP });
  }
}
