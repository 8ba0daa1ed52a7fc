/**
 * The client's output while a split request runs (see `#startSplit` in client.ts): the request's
 * statements run one by one, each answered up to its own ReadyForQuery, but the client must see
 * one answer, as if PostgreSQL had run the request whole. This writer stands in for the client's
 * socket writer meanwhile: it drops every ReadyForQuery (pgdog sends the one that ends the
 * request), notes errors, and passes the rest on.
 *
 * @module
 */

import { Msg, readInt32 } from "../protocol/messages.ts";
import type { SocketWriter } from "../net/writer.ts";
import { FramedWriter } from "../net/framer.ts";

const decoder = new TextDecoder();

/** A writer that passes messages on to `out`, without their ReadyForQuery. */
export class BlockWriter extends FramedWriter {
  /** An ErrorResponse went through. */
  failed = false;
  /** With `sumInserts`: the rows of the `INSERT 0 n` tags held back, summed; else null. */
  inserted: number | null;

  /** RowDescriptions still passed on (the rest are dropped); null: all. */
  #rowDescriptions: number | null;

  constructor(
    out: SocketWriter,
    options: { sumInserts?: boolean; rowDescriptions?: number } = {},
  ) {
    super(out);
    this.inserted = options.sumInserts ? 0 : null;
    this.#rowDescriptions = options.rowDescriptions ?? null;
  }

  /** The writer this one feeds. */
  get target(): SocketWriter {
    return this.out;
  }

  /** Passes the whole messages of `run` on, except ReadyForQuery. */
  protected messages(run: Uint8Array): void {
    let from = 0;
    let p = 0;
    while (p < run.length) {
      const type = run[p];
      const next = p + readInt32(run, p + 1) + 1;
      if (type === Msg.ErrorResponse) this.failed = true;
      if (
        type === Msg.ReadyForQuery || (type === Msg.CommandComplete && this.#heldTag(run, p)) ||
        (type === Msg.RowDescription && this.#rowDescriptions !== null &&
          this.#rowDescriptions-- <= 0)
      ) {
        if (p > from) this.out.enqueue(run.subarray(from, p));
        from = next;
      }
      p = next;
    }
    if (run.length > from) this.out.enqueue(from === 0 ? run : run.subarray(from));
  }

  /** An `INSERT 0 n` tag at `p`, counted and held back (with `sumInserts`). */
  #heldTag(run: Uint8Array, p: number): boolean {
    if (this.inserted === null) return false;
    const tag = decoder.decode(run.subarray(p + 5, p + readInt32(run, p + 1)));
    const m = /^INSERT 0 (\d+)$/.exec(tag);
    if (m === null) return false;
    this.inserted += Number(m[1]);
    return true;
  }
}
