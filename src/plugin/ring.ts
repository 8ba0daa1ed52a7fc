/**
 * A single-producer single-consumer ring of text frames in a SharedArrayBuffer: pgdog and a
 * plugin Worker pass calls through two of them (requests and answers, {@linkcode openChannel})
 * instead of postMessage, and wait for each other with `Atomics.wait` / `Atomics.waitAsync`.
 *
 * A ring is three Int32 control words (head: bytes written; tail: bytes read; seq: frames
 * published, the word waiters sleep on) and a data area of a power-of-two size. A frame is a
 * 4-byte length and that many bytes of UTF-8, padded to 4 bytes; a frame that would cross the end
 * of the data area starts at its beginning instead, after a length word of -1.
 *
 * @module
 */

const HEAD = 0;
const TAIL = 1;
const SEQ = 2;
/** Bytes of control words before a ring's data (four words: the data stays 16-byte aligned). */
const CONTROL_BYTES = 16;
/** A length word meaning "the next frame is at the start of the data area". */
const WRAP = -1;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Pads a frame's byte length to whole 4-byte words, so every length word is aligned. */
function padded(bytes: number): number {
  return (bytes + 3) & ~3;
}

/** One direction of a channel: frames written by one thread and read by another. */
export class Ring {
  /** Bytes of SharedArrayBuffer a ring of `capacity` data bytes takes. */
  static byteLength(capacity: number): number {
    return CONTROL_BYTES + capacity;
  }

  readonly #control: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #words: Int32Array;
  readonly #capacity: number;
  /** Where frames are copied before decoding: TextDecoder reads a shared view 20x slower. */
  #scratch = new Uint8Array(4096);

  /**
   * The ring at `byteOffset` in `buffer` (a multiple of 4), with `capacity` data bytes (a power
   * of two, at least 16, at most 2^30). A fresh (zeroed) buffer is an empty ring.
   */
  constructor(buffer: SharedArrayBuffer, byteOffset: number, capacity: number) {
    if (capacity < 16 || capacity > 2 ** 30 || (capacity & (capacity - 1)) !== 0) {
      throw new RangeError(`a ring's capacity must be a power of two, not ${capacity}`);
    }
    if (byteOffset % 4 !== 0) throw new RangeError(`a ring must start at a multiple of 4 bytes`);
    this.#control = new Int32Array(buffer, byteOffset, 3);
    this.#bytes = new Uint8Array(buffer, byteOffset + CONTROL_BYTES, capacity);
    this.#words = new Int32Array(buffer, byteOffset + CONTROL_BYTES, capacity / 4);
    this.#capacity = capacity;
  }

  /** Frames published so far (wrapping at 2^31): what {@linkcode Ring.waitSync} compares. */
  get seq(): number {
    return Atomics.load(this.#control, SEQ);
  }

  /** No frame is waiting to be read. */
  get empty(): boolean {
    return Atomics.load(this.#control, HEAD) === Atomics.load(this.#control, TAIL);
  }

  /**
   * Producer: appends `text` as a frame and publishes it. False when it does not fit now (the
   * ring is too full) or ever (a text of more than half the capacity may never fit); nothing is
   * written then. Call {@linkcode Ring.notify} to wake the reader.
   */
  write(text: string): boolean {
    const head = this.#control[HEAD];
    const free = this.#capacity - ((head - Atomics.load(this.#control, TAIL)) >>> 0);
    // UTF-8 takes at least one byte per UTF-16 code unit.
    if (4 + text.length > free) return false;
    let at = head & (this.#capacity - 1);
    const toEnd = this.#capacity - at;
    let skipped = 0;
    let room = Math.min(free, toEnd) - 4;
    let { read, written } = encoder.encodeInto(text, this.#bytes.subarray(at + 4, at + 4 + room));
    if (read < text.length) {
      // Too long for the space before the end of the data area: try its start.
      if (free <= toEnd) return false;
      room = free - toEnd - 4;
      if (room < text.length) return false;
      ({ read, written } = encoder.encodeInto(text, this.#bytes.subarray(4, 4 + room)));
      if (read < text.length) return false;
      this.#words[at >> 2] = WRAP;
      skipped = toEnd;
      at = 0;
    }
    this.#words[at >> 2] = written;
    // The frame's bytes are written before the head moves past them (Atomics order the stores).
    Atomics.store(this.#control, HEAD, (head + skipped + 4 + padded(written)) | 0);
    Atomics.add(this.#control, SEQ, 1);
    return true;
  }

  /** Consumer: the next frame's text, or null when the ring is empty. */
  read(): string | null {
    let tail = this.#control[TAIL];
    if (tail === Atomics.load(this.#control, HEAD)) return null;
    let at = tail & (this.#capacity - 1);
    let length = this.#words[at >> 2];
    if (length === WRAP) {
      tail = (tail + this.#capacity - at) | 0;
      at = 0;
      length = this.#words[0];
    }
    // The other side is a plugin's thread: a length that can't be a frame is not trusted.
    if (length < 0 || at + 4 + length > this.#capacity) {
      throw new RangeError(`a frame of ${length} bytes at ${at} is not in the ring`);
    }
    if (length > this.#scratch.length) {
      this.#scratch = new Uint8Array(Math.max(length, this.#scratch.length * 2));
    }
    this.#scratch.set(this.#bytes.subarray(at + 4, at + 4 + length));
    // The bytes are copied out before the tail frees them for the producer.
    Atomics.store(this.#control, TAIL, (tail + 4 + padded(length)) | 0);
    return decoder.decode(this.#scratch.subarray(0, length));
  }

  /** Wakes every thread waiting on this ring's sequence word. */
  notify(): void {
    Atomics.notify(this.#control, SEQ);
  }

  /**
   * Blocks this thread (a Worker; the main thread must not) until the sequence word is no longer
   * `seen`, or `timeoutMs` passes.
   */
  waitSync(seen: number, timeoutMs: number): "ok" | "not-equal" | "timed-out" {
    return Atomics.wait(this.#control, SEQ, seen, timeoutMs);
  }

  /**
   * Resolves when the sequence word is no longer `seen`, or `timeoutMs` passes; the event loop
   * runs meanwhile.
   */
  waitAsync(seen: number, timeoutMs: number): Promise<unknown> {
    const waited = Atomics.waitAsync(this.#control, SEQ, seen, timeoutMs);
    return waited.async ? waited.value : Promise.resolve(waited.value);
  }
}

/** Index in {@linkcode Channel.flags}: set to 1 when the Worker must stop. */
export const STOP = 0;
/** Index in {@linkcode Channel.flags}: requests sent by postMessage (too large for the ring). */
export const POSTED = 1;
/** Bytes of the channel's own control words. */
const FLAGS_BYTES = 16;

/** pgdog's two rings with one Worker, and the words beside them. */
export interface Channel {
  /** {@linkcode STOP} and {@linkcode POSTED}. */
  flags: Int32Array;
  /** pgdog to the Worker. */
  requests: Ring;
  /** The Worker to pgdog. */
  answers: Ring;
}

/** Data bytes of each ring of a channel: a frame of up to half of it always fits an empty ring. */
export const CHANNEL_RING_BYTES = 256 * 1024;

/** A zeroed buffer for {@linkcode openChannel}, to be shared with the Worker. */
export function channelBuffer(capacity: number = CHANNEL_RING_BYTES): SharedArrayBuffer {
  return new SharedArrayBuffer(FLAGS_BYTES + 2 * Ring.byteLength(capacity));
}

/** The channel laid out in `buffer` (from {@linkcode channelBuffer}); each side opens its own. */
export function openChannel(buffer: SharedArrayBuffer): Channel {
  const capacity = (buffer.byteLength - FLAGS_BYTES) / 2 - CONTROL_BYTES;
  return {
    flags: new Int32Array(buffer, 0, 2),
    requests: new Ring(buffer, FLAGS_BYTES, capacity),
    answers: new Ring(buffer, FLAGS_BYTES + Ring.byteLength(capacity), capacity),
  };
}
