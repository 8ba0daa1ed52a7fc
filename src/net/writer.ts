/**
 * Serialized writes to one socket. Two parties write to a client (the server it holds forwarding
 * results, and the proxy's own messages), so every write goes through one queue that keeps order
 * and never interleaves partial writes.
 *
 * @module
 */

import type { ByteStream } from "./stream.ts";

/** Bytes queued beyond this make {@linkcode SocketWriter.congested} true. */
const HIGH_WATER_MARK = 1 << 20;
/** A queue buffer larger than this is dropped once drained, so idle connections stay small. */
const KEEP_BUFFER_BYTES = 16 << 10;

/** Ordered, non-interleaving writer over a {@linkcode ByteStream}. */
export class SocketWriter {
  #stream: ByteStream;
  #tail: Promise<void> | null = null;
  #queue: Uint8Array | null = null;
  #queued = 0;
  #drainScheduled = false;
  /** Changes whenever #tail does, so a direct write knows whether it is still the tail. */
  #generation = 0;
  #error: Error | null = null;
  /** Total bytes handed to the socket. */
  bytesWritten = 0;

  constructor(stream: ByteStream) {
    this.#stream = stream;
  }

  /** The first write error, once one happened; later writes fail with it. */
  get error(): Error | null {
    return this.#error;
  }

  /** True when a lot is queued and the reader feeding this writer should wait for {@linkcode flush}. */
  get congested(): boolean {
    return this.#queued > HIGH_WATER_MARK;
  }

  /**
   * Writes `data` after everything already queued, without copying it. The caller must not change
   * `data` until the returned promise settles.
   */
  write(data: Uint8Array): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#tail === null && this.#queued === 0) {
      // Nothing in flight (the usual case): one async call, no promise chain.
      const p = this.#writeDirect(data, ++this.#generation);
      this.#tail = p;
      return p;
    }
    this.#scheduleDrain();
    const prev = this.#tail!;
    const p = prev.then(() => this.#writeNow(data));
    this.#setTail(p);
    return p;
  }

  /** Copies `data` into the queue; it is written in order, soon, without the caller waiting. */
  enqueue(data: Uint8Array): void {
    if (this.#error) return;
    const need = this.#queued + data.length;
    if (this.#queue === null || this.#queue.length < need) {
      let cap = Math.max(this.#queue?.length ?? 0, 1024);
      while (cap < need) cap *= 2;
      const next = new Uint8Array(cap);
      if (this.#queue && this.#queued) next.set(this.#queue.subarray(0, this.#queued));
      this.#queue = next;
    }
    this.#queue.set(data, this.#queued);
    this.#queued = need;
    this.#scheduleDrain();
  }

  /** Resolves once everything queued or written so far is on the socket; rejects on a write error. */
  flush(): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    this.#scheduleDrain();
    return this.#tail ?? Promise.resolve();
  }

  #scheduleDrain(): void {
    if (this.#drainScheduled || this.#queued === 0) return;
    this.#drainScheduled = true;
    const prev = this.#tail ?? Promise.resolve();
    this.#setTail(prev.then(() => this.#drain()));
  }

  /** Makes `p` the tail, cleared once it settles (unless something was queued after it). */
  #setTail(p: Promise<void>): void {
    this.#tail = p;
    const generation = ++this.#generation;
    const clear = (): void => {
      if (this.#generation === generation) this.#tail = null;
    };
    p.then(clear, clear);
  }

  /** A write with nothing before it; clears the tail when done, unless more came meanwhile. */
  async #writeDirect(data: Uint8Array, generation: number): Promise<void> {
    try {
      const stream = this.#stream;
      let off = 0;
      while (off < data.length) {
        off += await stream.write(off === 0 ? data : data.subarray(off));
      }
      this.bytesWritten += data.length;
    } catch (e) {
      this.#error = e instanceof Error ? e : new Error(String(e));
      throw this.#error;
    } finally {
      if (this.#generation === generation) this.#tail = null;
    }
  }

  async #drain(): Promise<void> {
    this.#drainScheduled = false;
    if (this.#queued === 0 || this.#queue === null) return;
    const data = this.#queue.subarray(0, this.#queued);
    const keep = this.#queue.length <= KEEP_BUFFER_BYTES;
    // Hand the filled buffer to the socket; new enqueues go to a fresh one.
    this.#queue = null;
    this.#queued = 0;
    await this.#writeNow(data);
    if (keep && this.#queue === null) {
      this.#queue = new Uint8Array(data.buffer, 0, data.buffer.byteLength);
    }
  }

  async #writeNow(data: Uint8Array): Promise<void> {
    if (this.#error) throw this.#error;
    try {
      // writeAll, inline: one async frame less per write.
      const stream = this.#stream;
      let off = 0;
      while (off < data.length) {
        off += await stream.write(off === 0 ? data : data.subarray(off));
      }
      this.bytesWritten += data.length;
    } catch (e) {
      this.#error = e instanceof Error ? e : new Error(String(e));
      throw this.#error;
    }
  }
}
