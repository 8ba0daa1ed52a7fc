/**
 * The client's output while a split request runs (see {@linkcode RequestUnits} in client.ts):
 * the request's statements run one by one, each answered up to its own ReadyForQuery, but the
 * client must see one answer, as if PostgreSQL had run the request whole. This writer stands in
 * for the client's socket writer meanwhile: it frames what servers and pgdog write, drops every
 * ReadyForQuery (pgdog sends the one that ends the request), notes errors, and passes the rest on.
 *
 * @module
 */

import { Msg, readInt32 } from "../protocol/messages.ts";
import type { SocketWriter } from "../net/writer.ts";
import { MessageFramer } from "../net/framer.ts";

/** A writer that passes messages on to `out`, without their ReadyForQuery. */
export class BlockWriter {
  readonly #out: SocketWriter;
  readonly #framer = new MessageFramer();
  /** An ErrorResponse went through since the last {@linkcode clearFailed}. */
  failed = false;

  constructor(out: SocketWriter) {
    this.#out = out;
  }

  /** The writer this one feeds. */
  get target(): SocketWriter {
    return this.#out;
  }

  get congested(): boolean {
    return this.#out.congested;
  }

  get error(): Error | null {
    return this.#out.error;
  }

  write(data: Uint8Array): Promise<void> {
    this.enqueue(data);
    return this.#out.flush();
  }

  enqueue(data: Uint8Array): void {
    const run = this.#framer.push(data);
    if (run !== null) this.#pass(run, 0, run.length);
  }

  flush(): Promise<void> {
    return this.#out.flush();
  }

  /** Passes the whole messages in data[p, end) on, except ReadyForQuery. */
  #pass(data: Uint8Array, p: number, end: number): void {
    let from = p;
    while (p < end) {
      const type = data[p];
      const next = p + readInt32(data, p + 1) + 1;
      if (type === Msg.ErrorResponse) this.failed = true;
      if (type === Msg.ReadyForQuery) {
        if (p > from) this.#out.enqueue(data.subarray(from, p));
        from = next;
      }
      p = next;
    }
    if (end > from) {
      this.#out.enqueue(from === 0 && end === data.length ? data : data.subarray(from, end));
    }
  }
}

/** A {@linkcode BlockWriter} where a {@linkcode SocketWriter} is expected. */
export function asSocketWriter(w: BlockWriter): SocketWriter {
  return w as unknown as SocketWriter;
}
