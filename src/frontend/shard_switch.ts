/**
 * A client moving between the shards of its transaction: the attached server set aside (parked)
 * when a request goes to another shard, a batch left open by a Flush closed first; a failure on
 * one shard spread to the others; and the end of a split request's implicit transaction on every
 * server it reached.
 *
 * @module
 */

import { type ErrorFields, SYNC } from "../protocol/messages.ts";
import type { Server } from "../backend/server.ts";
import { Action, Expect } from "../backend/response_queue.ts";
import type { Pool } from "../backend/pool.ts";
import type { Cluster } from "../backend/databases.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import type { SessionState } from "./session.ts";
import type { ShardTransaction } from "./shard_transaction.ts";
import type { Checkout } from "./checkout.ts";
import type { OutBatch } from "./out_batch.ts";

/** The client's own fields switching shards reads and sets. */
export interface SwitchingClient {
  /** The attached server. */
  server: Server | null;
  state: "login" | "idle" | "waiting" | "active";
  transactions: number;
  readonly cluster: Cluster | null;
  readonly pool: Pool | null;
  readonly closed: boolean;
  readonly session: SessionState;
  readonly rbuf: MessageBuffer;
}

/** The client's request-handling state switching shards uses (see ClientView). */
export interface SwitchingParts {
  readonly txn: ShardTransaction;
  readonly out: OutBatch;
  readonly checkout: Checkout;
  /** The attached server got a Flush and no Sync since. */
  unsynced: boolean;
  deferredBegin: Uint8Array | null;
  /** Writes what the batch collected for the attached server. */
  send(): Promise<void>;
  /** Waits until the attached server has answered everything sent. */
  settle(): Promise<void>;
  /** The transaction ended. */
  transactionOver(): void;
}

/** One client's moves between the shards of its transaction. */
export class ShardSwitch {
  readonly #client: SwitchingClient;
  readonly #parts: SwitchingParts;

  constructor(client: SwitchingClient, parts: SwitchingParts) {
    this.#client = client;
    this.#parts = parts;
  }

  /**
   * The request goes to shard `n` alone: the attached server of another shard is parked (its
   * batch closed and answered first). "done" when the client left meanwhile.
   */
  async toShard(n: number): Promise<"go" | "done"> {
    const c = this.#client;
    const current = c.server;
    if (current !== null) {
      if (c.cluster!.shardOf(current.owner as Pool) === n) return "go";
      await this.closeBatch();
      await this.#parts.settle();
      if (c.closed) return "done";
      if (c.server !== null) this.park(c.server);
    }
    this.#parts.checkout.shard = n;
    return "go";
  }

  /** Sets the attached server aside (its transaction goes on) while another shard is used. */
  park(server: Server): void {
    this.#parts.txn.park(this.#client.cluster!, server);
    this.#client.server = null;
  }

  /** Ends a batch left open by a Flush (its answers are in) before the server is left. */
  async closeBatch(): Promise<void> {
    const server = this.#client.server;
    const parts = this.#parts;
    if (server === null || !parts.unsynced) return;
    parts.unsynced = false;
    parts.out.reset(this.#client.rbuf.buf);
    parts.out.addBytes(SYNC);
    server.expect(Expect.Sync, Action.Swallow);
    await parts.send();
  }

  /**
   * A transaction on several shards failed on one of them: it fails on the others too (a
   * statement of pgdog's raises an error there), so a later COMMIT rolls back everywhere, as
   * PostgreSQL would, instead of committing the shards that did not see the error.
   */
  async abortEverywhere(): Promise<void> {
    const c = this.#client;
    const healthy = this.#parts.txn.toAbort(c.server);
    if (healthy.length === 0) return;
    await this.#parts.send();
    await this.#parts.settle();
    await this.#parts.txn.abortOn(healthy, c.pool?.config.rollback_timeout ?? 5000);
  }

  /**
   * Ends the transaction pgdog opened for a split request (or, `explicit`, the client's own
   * multi-shard transaction at its COMMIT) on every server it reached, and gives them back. Returns the first error (a COMMIT can fail, e.g. a deferred constraint).
   */
  async endImplicit(
    commit: boolean,
    options: { explicit?: boolean } = {},
  ): Promise<ErrorFields | null> {
    const c = this.#client;
    const parts = this.#parts;
    parts.deferredBegin = null;
    const servers: Server[] = parts.txn.takeAll();
    const attached = c.server;
    if (attached !== null) {
      attached.detach();
      c.server = null;
      c.state = "idle";
      servers.unshift(attached);
    }
    parts.transactionOver();
    c.session.pgdogLocal.clear();
    const error = await parts.checkout.endImplicit(servers, commit, options);
    c.transactions++;
    return error;
  }
}
