/**
 * The bytes a client sends a server in one write.
 *
 * @module
 */

import type { SocketWriter } from "../net/writer.ts";

/**
 * What goes to a server in one write: ranges of the client's read buffer and bytes pgdog made
 * (rewritten or injected messages). A single range is written without copying.
 */
export class OutBatch {
  #src: Uint8Array = new Uint8Array(0);
  #starts: number[] = [];
  #ends: number[] = [];
  #bytes: (Uint8Array | null)[] = [];

  /** Nothing is queued. */
  get empty(): boolean {
    return this.#starts.length === 0;
  }

  /** Empties the batch; later ranges are of `src`. */
  reset(src: Uint8Array): void {
    this.#src = src;
    this.#starts.length = 0;
    this.#ends.length = 0;
    this.#bytes.length = 0;
  }

  /** Takes later ranges from `src` (only bytes, no ranges, may be queued so far). */
  useSource(src: Uint8Array): void {
    if (this.#bytes.some((b) => b === null)) {
      throw new Error("internal error: ranges of another buffer are queued");
    }
    this.#src = src;
  }

  /** Queues bytes [start, end) of the source buffer (joined to the previous range when adjacent). */
  addRange(start: number, end: number): void {
    const n = this.#starts.length;
    if (n > 0 && this.#bytes[n - 1] === null && this.#ends[n - 1] === start) {
      this.#ends[n - 1] = end;
      return;
    }
    this.#starts.push(start);
    this.#ends.push(end);
    this.#bytes.push(null);
  }

  /** Queues bytes of pgdog's own. */
  addBytes(bytes: Uint8Array): void {
    this.#starts.push(0);
    this.#ends.push(bytes.length);
    this.#bytes.push(bytes);
  }

  /** Writes everything queued, in order. */
  writeTo(writer: SocketWriter): Promise<void> {
    const n = this.#starts.length;
    if (n === 1) {
      const bytes = this.#bytes[0];
      return writer.write(bytes ?? this.#src.subarray(this.#starts[0], this.#ends[0]));
    }
    for (let i = 0; i < n; i++) {
      const bytes = this.#bytes[i];
      writer.enqueue(bytes ?? this.#src.subarray(this.#starts[i], this.#ends[i]));
    }
    return writer.flush();
  }
}
