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
 * write is in flight, into one write: a burst of calls costs one write. Frames are encoded straight
 * into one of two buffers (one filling, one being written), so a frame allocates nothing.
 */
export class FrameWriter {
  readonly #write: (bytes: Uint8Array) => Promise<unknown>;
  #filling = new Uint8Array(16 * 1024);
  #spare = new Uint8Array(16 * 1024);
  #queued = 0;
  #busy = false;
  #scheduled = false;

  constructor(write: (bytes: Uint8Array) => Promise<unknown>) {
    this.#write = write;
  }

  /** Queues one JSON text as a frame. */
  send(json: string): void {
    // UTF-8 takes at most 3 bytes per UTF-16 code unit.
    const room = this.#queued + 4 + json.length * 3;
    if (room > this.#filling.length) {
      const bigger = new Uint8Array(Math.max(room, this.#filling.length * 2));
      bigger.set(this.#filling.subarray(0, this.#queued));
      this.#filling = bigger;
    }
    const { written } = encoder.encodeInto(json, this.#filling.subarray(this.#queued + 4));
    new DataView(this.#filling.buffer).setUint32(this.#queued, written);
    this.#queued += 4 + written;
    if (this.#busy || this.#scheduled) return;
    // After the current microtasks: calls made by other clients woken in the same turn (or
    // answers to frames read in one chunk) join this write.
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      if (!this.#busy) this.#drain();
    });
  }

  /** Resolves once everything queued is written (or the write failed). */
  async flushed(): Promise<void> {
    while (this.#busy || this.#scheduled || this.#queued > 0) {
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  async #drain(): Promise<void> {
    this.#busy = true;
    while (this.#queued > 0) {
      const bytes = this.#filling.subarray(0, this.#queued);
      // Frames sent during the write go to the other buffer.
      [this.#filling, this.#spare] = [this.#spare, this.#filling];
      this.#queued = 0;
      try {
        await this.#write(bytes);
      } catch {
        this.#queued = 0;
        break;
      }
    }
    this.#busy = false;
  }
}
