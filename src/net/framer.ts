/**
 * Whole protocol messages out of a byte stream written in arbitrary pieces (a server's output
 * passed on range by range): what stands between the server and a consumer that must see
 * messages whole (a request run on several shards, a request cut into statements).
 *
 * @module
 */

import { readInt32 } from "../protocol/messages.ts";
import type { SocketWriter } from "./writer.ts";

/** Reassembles whole messages from the chunks pushed into it. */
export class MessageFramer {
  #buf = new Uint8Array(256);
  #len = 0;

  /**
   * Adds `data`; returns the messages now complete, as one run of whole messages (`data` itself
   * when nothing was held back and it is whole, else a copy), or null when none is complete.
   */
  push(data: Uint8Array): Uint8Array | null {
    if (this.#len === 0 && wholeMessages(data)) return data;
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
    if (p === 0) return null;
    const run = this.#buf.slice(0, p);
    this.#buf.copyWithin(0, p, this.#len);
    this.#len -= p;
    return run;
  }
}

/** True when `data` is a run of whole messages. */
export function wholeMessages(data: Uint8Array): boolean {
  let p = 0;
  while (data.length - p >= 5) p += readInt32(data, p + 1) + 1;
  return p === data.length;
}

/**
 * Stands in for a {@linkcode SocketWriter} where a server's output must be seen message by
 * message: takes it in pieces, hands whole messages to {@linkcode FramedWriter.messages}, and
 * leaves the writing (and its backpressure) to `out`.
 */
export abstract class FramedWriter {
  /** Where what passes goes. */
  protected readonly out: SocketWriter;
  readonly #framer = new MessageFramer();

  constructor(out: SocketWriter) {
    this.out = out;
  }

  /** As {@linkcode SocketWriter.congested}. */
  get congested(): boolean {
    return this.out.congested;
  }

  /** As {@linkcode SocketWriter.error}. */
  get error(): Error | null {
    return this.out.error;
  }

  /** As {@linkcode SocketWriter.write}: waits only while `out` is congested. */
  write(data: Uint8Array): Promise<void> {
    this.enqueue(data);
    return this.out.congested ? this.out.flush() : Promise.resolve();
  }

  /** As {@linkcode SocketWriter.enqueue}. */
  enqueue(data: Uint8Array): void {
    const run = this.#framer.push(data);
    if (run !== null) this.messages(run);
  }

  /** As {@linkcode SocketWriter.flush}. */
  flush(): Promise<void> {
    return this.out.flush();
  }

  /** Whole messages, one run of them. */
  protected abstract messages(run: Uint8Array): void;
}

/** A {@linkcode FramedWriter} where a {@linkcode SocketWriter} is expected. */
export function asSocketWriter(w: FramedWriter): SocketWriter {
  return w as unknown as SocketWriter;
}
