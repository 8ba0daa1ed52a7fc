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

/** A writer that passes messages on to `out`, without their ReadyForQuery. */
export class BlockWriter {
  readonly #out: SocketWriter;
  #buf = new Uint8Array(256);
  #len = 0;
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
    if (this.#len === 0 && wholeMessages(data)) {
      // The common case: whole messages, no copy needed unless one is dropped.
      this.#pass(data, 0, data.length);
      return;
    }
    if (this.#len + data.length > this.#buf.length) {
      let cap = this.#buf.length * 2;
      while (cap < this.#len + data.length) cap *= 2;
      const next = new Uint8Array(cap);
      next.set(this.#buf.subarray(0, this.#len));
      this.#buf = next;
    }
    this.#buf.set(data, this.#len);
    this.#len += data.length;
    let p = 0;
    while (this.#len - p >= 5) {
      const size = readInt32(this.#buf, p + 1) + 1;
      if (this.#len - p < size) break;
      p += size;
    }
    if (p === 0) return;
    this.#pass(this.#buf.slice(0, p), 0, p);
    this.#buf.copyWithin(0, p, this.#len);
    this.#len -= p;
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

/** True when `data` is a run of whole messages. */
function wholeMessages(data: Uint8Array): boolean {
  let p = 0;
  while (data.length - p >= 5) p += readInt32(data, p + 1) + 1;
  return p === data.length;
}

/** A {@linkcode BlockWriter} where a {@linkcode SocketWriter} is expected. */
export function asSocketWriter(w: BlockWriter): SocketWriter {
  return w as unknown as SocketWriter;
}
