/**
 * A read buffer that frames PostgreSQL messages in place: bytes are read into one reusable
 * array and messages are handed out as offsets into it, so nothing is copied or decoded that
 * the caller does not ask for.
 *
 * @module
 */

import { describeMessageType, Msg, readInt32 } from "../protocol/messages.ts";
import type { ByteStream } from "./stream.ts";

/** Thrown when a peer declares a message length that is impossible or over the limit. */
export class MessageSizeError extends Error {
  /** The declared total size (type byte + length field). */
  readonly declared: number;
  /** The message type byte. */
  readonly type: number;
  constructor(type: number, declared: number, limit: number) {
    super(
      declared < 5
        ? `invalid message length ${declared - 1} for message type ${describeMessageType(type)}`
        : `message of ${declared} bytes (type ${
          describeMessageType(type)
        }) exceeds the limit of ${limit} bytes`,
    );
    this.name = "MessageSizeError";
    this.declared = declared;
    this.type = type;
  }
}

/**
 * Thrown when a Query or Parse message declares more bytes than `query_size_limit` allows with
 * `query_size_limit_action = "block"`: refused before its body is read.
 */
export class QueryTooLargeError extends Error {
  /** The declared total size (type byte + length field + body). */
  readonly size: number;
  readonly limit: number;
  constructor(size: number, limit: number) {
    super("query size exceeds query_size_limit");
    this.name = "QueryTooLargeError";
    this.size = size;
    this.limit = limit;
  }
}

/** Framing read buffer for typed protocol messages. */
export class MessageBuffer {
  /** The backing array; valid offsets are [start, end). */
  buf: Uint8Array;
  /** Offset of the first unconsumed byte. */
  start = 0;
  /** Offset after the last byte read. */
  end = 0;
  /** Largest Query or Parse message accepted (`query_size_limit` with `block`). */
  queryLimit = Infinity;
  readonly #initial: number;
  readonly #max: number;

  /**
   * @param initial starting capacity (also what the buffer shrinks back to when empty)
   * @param max largest message accepted, in bytes, including type and length
   */
  constructor(initial: number, max: number) {
    this.#initial = initial;
    this.#max = max;
    this.buf = new Uint8Array(initial);
  }

  /** Bytes read but not consumed. */
  get available(): number {
    return this.end - this.start;
  }

  /**
   * Size (type + length + body) of the complete message at `start`, or 0 when more bytes are
   * needed. Never moves bytes, so offsets taken earlier stay valid until {@linkcode fill}.
   * Throws {@linkcode MessageSizeError} for a bad declared length, and
   * {@linkcode QueryTooLargeError} for a Query or Parse over `queryLimit`, before any of it is
   * buffered.
   */
  nextMessageSize(): number {
    const avail = this.end - this.start;
    if (avail < 5) return 0;
    const len = readInt32(this.buf, this.start + 1);
    const size = len + 1;
    if (len < 4 || size > this.#max) {
      throw new MessageSizeError(this.buf[this.start], size, this.#max);
    }
    if (size > this.queryLimit) {
      const type = this.buf[this.start];
      if (type === Msg.Query || type === Msg.Parse) {
        throw new QueryTooLargeError(size, this.queryLimit);
      }
    }
    return avail >= size ? size : 0;
  }

  /**
   * Reads more bytes from `stream`, first making room for the whole of the partial message at
   * `start` (compacting or growing up to the limit). Resolves false at end of stream.
   */
  async fill(stream: ByteStream): Promise<boolean> {
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
    }
    const avail = this.end - this.start;
    let need = avail + 1;
    if (avail >= 5) {
      const size = readInt32(this.buf, this.start + 1) + 1;
      if (size > avail && size <= this.#max) need = size;
    }
    this.#makeRoom(Math.max(need, 5));
    const n = await stream.read(this.end === 0 ? this.buf : this.buf.subarray(this.end));
    if (n === null) return false;
    this.end += n;
    return true;
  }

  /** Marks `n` bytes as consumed; resets (and shrinks an oversized buffer) when it empties. */
  consume(n: number): void {
    this.start += n;
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
      if (this.buf.length > this.#initial) this.buf = new Uint8Array(this.#initial);
    }
  }

  /**
   * Replaces bytes [from, to) (complete messages at or after `start`) with `bytes`, keeping what
   * follows. Offsets past `to` move by the difference; `buf` may be a new array afterwards.
   */
  replace(from: number, to: number, bytes: Uint8Array): void {
    const tail = this.end - to;
    const size = from + bytes.length + tail;
    if (size > this.buf.length) {
      const next = new Uint8Array(size);
      next.set(this.buf.subarray(0, from));
      next.set(this.buf.subarray(to, this.end), from + bytes.length);
      this.buf = next;
    } else {
      this.buf.copyWithin(from + bytes.length, to, this.end);
    }
    this.buf.set(bytes, from);
    this.end = size;
  }

  /** Moves unconsumed bytes to the front so the tail has room. */
  #compact(): void {
    if (this.start === 0) return;
    this.buf.copyWithin(0, this.start, this.end);
    this.end -= this.start;
    this.start = 0;
  }

  /** Ensures a message of `size` bytes starting at `start` fits. */
  #makeRoom(size: number): void {
    if (this.start + size <= this.buf.length) return;
    if (size <= this.buf.length) {
      this.#compact();
      return;
    }
    let cap = this.buf.length * 2;
    while (cap < size) cap *= 2;
    if (cap > this.#max) cap = Math.max(size, this.#max);
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(this.start, this.end));
    this.end -= this.start;
    this.start = 0;
    this.buf = next;
  }
}
