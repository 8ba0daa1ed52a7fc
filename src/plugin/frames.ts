/**
 * The wire between pgdog and a plugin process: frames of a 4-byte big-endian length and that many
 * bytes of UTF-8 JSON. Requests are `{"id":n,"op":"route","args":[...]}`; answers are
 * `{"id":n,"ok":value}` or `{"id":n,"error":"message"}`. Ids let many calls be in flight at once.
 *
 * @module
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Largest frame either side accepts (a parse tree of a very long statement fits). */
export const MAX_FRAME = 64 * 1024 * 1024;

/** One JSON text as a frame. */
export function encodeFrame(json: string): Uint8Array {
  const body = encoder.encode(json);
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, 4);
  return frame;
}

/** Splits a byte stream into frames' JSON texts; keeps a partial frame until the rest arrives. */
export class FrameReader {
  #buf = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;

  /** Adds bytes read from the stream and returns the complete frames' texts. */
  push(chunk: Uint8Array): string[] {
    if (this.#end + chunk.length > this.#buf.length) {
      const pending = this.#end - this.#start;
      const size = Math.max(this.#buf.length, (pending + chunk.length) * 2);
      const next = size > this.#buf.length ? new Uint8Array(size) : this.#buf;
      next.set(this.#buf.subarray(this.#start, this.#end), 0);
      this.#buf = next;
      this.#start = 0;
      this.#end = pending;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
    const texts: string[] = [];
    const view = new DataView(this.#buf.buffer);
    while (this.#end - this.#start >= 4) {
      const length = view.getUint32(this.#start);
      if (length > MAX_FRAME) throw new Error(`frame of ${length} bytes is over the limit`);
      if (this.#end - this.#start - 4 < length) break;
      texts.push(decoder.decode(this.#buf.subarray(this.#start + 4, this.#start + 4 + length)));
      this.#start += 4 + length;
    }
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return texts;
  }
}

/**
 * Writes frames in order, coalescing those queued in the same turn of the event loop, or while a
 * write is in flight, into one write: a burst of calls costs one write.
 */
export class FrameWriter {
  readonly #write: (bytes: Uint8Array) => Promise<unknown>;
  #queue: Uint8Array[] = [];
  #queued = 0;
  #busy = false;

  constructor(write: (bytes: Uint8Array) => Promise<unknown>) {
    this.#write = write;
  }

  /** Queues one JSON text as a frame. */
  send(json: string): void {
    const frame = encodeFrame(json);
    this.#queue.push(frame);
    this.#queued += frame.length;
    if (this.#busy || this.#scheduled) return;
    // After the current microtasks: calls made by other clients woken in the same turn (or
    // answers to frames read in one chunk) join this write.
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      if (!this.#busy) this.#drain();
    });
  }

  #scheduled = false;

  /** Resolves once everything queued is written (or the write failed). */
  async flushed(): Promise<void> {
    while (this.#busy || this.#scheduled || this.#queue.length > 0) {
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  async #drain(): Promise<void> {
    this.#busy = true;
    while (this.#queue.length > 0) {
      let bytes: Uint8Array;
      if (this.#queue.length === 1) bytes = this.#queue[0];
      else {
        bytes = new Uint8Array(this.#queued);
        let at = 0;
        for (const f of this.#queue) {
          bytes.set(f, at);
          at += f.length;
        }
      }
      this.#queue = [];
      this.#queued = 0;
      try {
        await this.#write(bytes);
      } catch {
        this.#queue = [];
        this.#queued = 0;
        break;
      }
    }
    this.#busy = false;
  }
}
