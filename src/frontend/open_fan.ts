/**
 * What requests run on several shards leave open on their legs for the client's next requests:
 * portals of merged statements (a row-limited Execute suspended them: postgres.js `.cursor()`,
 * pg-cursor, JDBC's fetch size), or a request that ended with a Flush instead of a Sync (its
 * implicit transaction and unnamed portal live until the Sync). A later request that executes,
 * describes or closes one of those portals, or syncs that request, goes to the same legs, with
 * the merge run that holds the portal. Portals end with the transaction (or with the Sync
 * outside one), when closed, or when bound again.
 *
 * @module
 */

import { Msg, TxStatus } from "../protocol/messages.ts";
import type { FanOut, LegRun } from "./fan_out.ts";

const decoder = new TextDecoder();

/** Where a request that goes on goes: the legs' shards, and the run of its portal (if any). */
export interface OpenLegs {
  shards: number[];
  run: LegRun | null;
}

/** Legs a client's next requests may have to go back to. */
export class OpenFan {
  /** Runs with live portals, newest first, with their legs' shards. */
  readonly #runs: OpenLegs[];
  /** The last request ended with a Flush on these legs: its Sync is still to come. */
  readonly #unsynced: OpenLegs | null;

  constructor(runs: OpenLegs[], unsynced: OpenLegs | null) {
    this.#runs = runs;
    this.#unsynced = unsynced;
  }

  /**
   * What stays open after `fan` ran on `shards`: null when nothing does (the transaction is
   * over, and with it every portal).
   */
  static after(
    fan: FanOut,
    options: { shards: number[]; previous: OpenFan | null; closed: boolean },
  ): OpenFan | null {
    const { shards, previous } = options;
    if (options.closed) return null;
    if (fan.synced && fan.status === TxStatus.Idle) return null;
    const runs: OpenLegs[] = [];
    const run = fan.merge;
    if (run !== null && run.portals > 0) runs.push({ shards, run });
    for (const old of previous === null ? [] : previous.#runs) {
      if (old.run === run) continue;
      // A portal bound again by the newer run is that run's now.
      if (run !== null) { for (const name of run.portalNames()) old.run!.forget(name); }
      if (old.run!.portals > 0) runs.push(old);
    }
    const unsynced = fan.synced ? null : { shards, run };
    return runs.length === 0 && unsynced === null ? null : new OpenFan(runs, unsynced);
  }

  /** Where the request starting with the message at [p, end) of `buf` goes on; null: routed. */
  continuedBy(type: number, buf: Uint8Array, p: number, end: number): OpenLegs | null {
    let portal: string;
    switch (type) {
      case Msg.Sync:
      case Msg.Flush:
        return this.#unsynced;
      case Msg.Execute:
        portal = decoder.decode(buf.subarray(p + 5, buf.indexOf(0, p + 5)));
        break;
      case Msg.Describe:
      case Msg.Close:
        if (buf[p + 5] !== 0x50) return null;
        portal = decoder.decode(buf.subarray(p + 6, end - 1));
        break;
      default:
        return null;
    }
    return this.#runs.find((r) => r.run!.holds(portal)) ?? null;
  }
}
