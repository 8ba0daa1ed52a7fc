/**
 * TLS on connections that start in plain text, as PostgreSQL's do: after an SSLRequest answered
 * `S`, the same TCP connection carries a TLS handshake. Deno has no server-side upgrade of a
 * `Deno.Conn`, so both directions go through node:tls over a small `stream.Duplex` that reads and
 * writes the connection, and {@linkcode TlsStream} makes the resulting `TLSSocket` a
 * {@linkcode ByteStream} again, so framing and forwarding code never knows the difference.
 *
 * @module
 */

import { isIP, type Socket } from "node:net";
import { Duplex } from "node:stream";
import * as tls from "node:tls";
import { type ByteStream, writeAll } from "./stream.ts";

/** How a server's certificate is checked (`[general] tls_verify`, minus `disabled`). */
export type TlsVerifyMode = "prefer" | "verify_ca" | "verify_full";

/** Plain-text bytes held past this make the stream stop reading from the TLS socket. */
const READ_HIGH_WATER_MARK = 256 << 10;
/** Size of each block raw reads are taken from. */
const SLAB_BYTES = 64 << 10;
/** A raw read gets at least this much room; a slab with less left is replaced. */
const MIN_READ_BYTES = 16 << 10;
/** How long a closing TLS connection may take to send its close_notify before it is dropped. */
const CLOSE_GRACE_MS = 1000;

/** A connection that can also shut down its sending side (`Deno.TcpConn`). */
interface HalfClosable extends ByteStream {
  closeWrite?(): Promise<void>;
}

/**
 * The raw connection as a Node stream, for `TLSSocket` to sit on. Reads go into slices of a large
 * block, never reused once handed over (the TLS layer may hold on to them), so a read costs no
 * allocation of its own; writes go straight to the connection.
 */
class ConnDuplex extends Duplex {
  readonly #conn: HalfClosable;
  #slab = new Uint8Array(SLAB_BYTES);
  #used = 0;
  #reading = false;

  constructor(conn: HalfClosable) {
    super({ allowHalfOpen: true });
    this.#conn = conn;
  }

  override _read(): void {
    if (this.#reading) return;
    this.#reading = true;
    if (this.#slab.length - this.#used < MIN_READ_BYTES) {
      this.#slab = new Uint8Array(SLAB_BYTES);
      this.#used = 0;
    }
    const start = this.#used;
    this.#conn.read(this.#slab.subarray(start)).then((n) => {
      this.#reading = false;
      if (n === null) {
        this.push(null);
        return;
      }
      this.#used = start + n;
      this.push(this.#slab.subarray(start, start + n));
    }, (e) => {
      this.#reading = false;
      this.destroy(asError(e));
    });
  }

  override _write(
    chunk: Uint8Array,
    _encoding: string,
    callback: (error?: Error | null) => void,
  ): void {
    writeAll(this.#conn, chunk).then(() => callback(), (e) => callback(asError(e)));
  }

  override _final(callback: (error?: Error | null) => void): void {
    const closeWrite = this.#conn.closeWrite;
    if (!closeWrite) {
      callback();
      return;
    }
    closeWrite.call(this.#conn).then(() => callback(), () => callback());
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
    callback(error);
  }
}

function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

interface PendingRead {
  p: Uint8Array;
  resolve: (n: number | null) => void;
  reject: (e: Error) => void;
}

/**
 * A `TLSSocket` seen as a {@linkcode ByteStream}. Decrypted data is copied straight into the
 * reader's buffer when a read is waiting, and held (up to a limit, then the socket is paused)
 * when none is. A write resolves once the TLS layer has taken the data (so the caller may reuse
 * its buffer) and the encrypted bytes waiting for the connection are below the raw stream's
 * high-water mark (its `drain`), so a slow peer slows the writer down instead of filling memory.
 */
export class TlsStream implements ByteStream {
  /** The node:tls socket. */
  readonly socket: tls.TLSSocket;
  /** The stream under it, carrying the encrypted bytes. */
  readonly #raw: Duplex;
  #chunks: Uint8Array[] = [];
  /** Bytes of `#chunks[0]` already read. */
  #offset = 0;
  #held = 0;
  #paused = false;
  #ended = false;
  #error: Error | null = null;
  #reader: PendingRead | null = null;
  #closing = false;

  /**
   * Takes over `socket`, which must have completed its handshake over `raw` (as
   * {@linkcode acceptTls} and {@linkcode connectTls} do).
   */
  constructor(socket: tls.TLSSocket, raw: Duplex) {
    this.socket = socket;
    this.#raw = raw;
    socket.on("data", (chunk: Uint8Array) => this.#onData(chunk));
    socket.on("end", () => this.#onEnd(null));
    socket.on("close", () => this.#onEnd(null));
    socket.on("error", (e: Error) => this.#onEnd(e));
    // A broken connection does not always reach the TLS socket: watch it directly.
    raw.on("error", () => {});
    raw.on("close", () => this.#onEnd(raw.errored));
  }

  /** The negotiated protocol, e.g. `TLSv1.3`. */
  get protocol(): string | null {
    return this.socket.getProtocol();
  }

  /** Reads into `p`; resolves to the byte count, or null once the peer closed the connection. */
  read(p: Uint8Array): Promise<number | null> {
    if (this.#held > 0) return Promise.resolve(this.#take(p));
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended) return Promise.resolve(null);
    if (this.#reader) return Promise.reject(new Error("concurrent reads on a TLS stream"));
    if (p.length === 0) return Promise.resolve(0);
    return new Promise((resolve, reject) => {
      this.#reader = { p, resolve, reject };
    });
  }

  /** Writes all of `p`; see the class description for when it resolves. */
  write(p: Uint8Array): Promise<number> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended || this.socket.destroyed || !this.socket.writable) {
      return Promise.reject(new Error("TLS connection is closed"));
    }
    return new Promise((resolve, reject) => {
      this.socket.write(p, (e?: Error | null) => {
        if (e) reject(e);
        else this.#rawDrained().then(() => resolve(p.length), reject);
      });
    });
  }

  /** Resolves when the raw stream takes more; rejects when it broke. */
  #rawDrained(): Promise<void> {
    const raw = this.#raw;
    if (raw.destroyed) {
      return Promise.reject(this.#error ?? raw.errored ?? new Error("TLS connection is closed"));
    }
    if (!raw.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const drained = (): void => {
        raw.off("close", closed);
        resolve();
      };
      const closed = (): void => {
        raw.off("drain", drained);
        reject(this.#error ?? raw.errored ?? new Error("TLS connection is closed"));
      };
      raw.once("drain", drained);
      raw.once("close", closed);
    });
  }

  /**
   * Closes the connection: the TLS close_notify is sent (with whatever was written before), then
   * the socket is closed; a peer that does not take it within a second is dropped.
   */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#onEnd(null);
    const socket = this.socket;
    if (socket.destroyed) return;
    const timer = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS);
    socket.once("close", () => clearTimeout(timer));
    socket.end(() => socket.destroy());
  }

  #onData(chunk: Uint8Array): void {
    const reader = this.#reader;
    if (reader && this.#held === 0) {
      this.#reader = null;
      const n = Math.min(chunk.length, reader.p.length);
      reader.p.set(n === chunk.length ? chunk : chunk.subarray(0, n));
      if (n < chunk.length) this.#hold(chunk.subarray(n));
      reader.resolve(n);
      return;
    }
    this.#hold(chunk);
  }

  #hold(chunk: Uint8Array): void {
    this.#chunks.push(chunk);
    this.#held += chunk.length;
    if (!this.#paused && this.#held >= READ_HIGH_WATER_MARK) {
      this.#paused = true;
      this.socket.pause();
    }
  }

  /** Copies held bytes into `p`. */
  #take(p: Uint8Array): number {
    let n = 0;
    while (n < p.length && this.#chunks.length > 0) {
      const chunk = this.#chunks[0];
      const count = Math.min(chunk.length - this.#offset, p.length - n);
      p.set(chunk.subarray(this.#offset, this.#offset + count), n);
      n += count;
      this.#offset += count;
      if (this.#offset === chunk.length) {
        this.#chunks.shift();
        this.#offset = 0;
      }
    }
    this.#held -= n;
    if (this.#paused && this.#held < READ_HIGH_WATER_MARK / 2) {
      this.#paused = false;
      this.socket.resume();
    }
    return n;
  }

  #onEnd(error: Error | null): void {
    if (error && !this.#error && !this.#ended) this.#error = error;
    this.#ended = true;
    const reader = this.#reader;
    if (!reader) return;
    this.#reader = null;
    if (this.#error) reader.reject(this.#error);
    else reader.resolve(null);
  }
}

/** Options of {@linkcode acceptTls}. */
export interface AcceptTlsOptions {
  /** The certificate chain (PEM). */
  cert: string;
  /** Its private key (PEM). */
  key: string;
}

/**
 * The server side of a handshake on `conn`, after pgdog answered `S` to an SSLRequest. Resolves
 * once the handshake completed; rejects (with `conn` closed) when it failed.
 */
export function acceptTls(conn: ByteStream, options: AcceptTlsOptions): Promise<TlsStream> {
  const raw = new ConnDuplex(conn);
  const socket = new tls.TLSSocket(raw as unknown as Socket, {
    isServer: true,
    cert: options.cert,
    key: options.key,
  });
  return handshake(socket, { raw, event: "secure" });
}

/** Options of {@linkcode connectTls}. */
export interface ConnectTlsOptions {
  /**
   * `prefer`: encrypt without checking the certificate; `verify_ca`: the chain must lead to a
   * trusted CA; `verify_full`: that, and the certificate must name `servername`.
   */
  mode: TlsVerifyMode;
  /** Trusted CA certificates (PEM); the built-in roots when left out. */
  ca?: string;
  /** The server's host name or IP address, as configured. */
  servername: string;
}

/**
 * The client side of a handshake on `conn`, after a PostgreSQL server answered `S` to an
 * SSLRequest. Rejects (with `conn` closed) when the handshake or the certificate check failed;
 * the error's message says why.
 */
export function connectTls(conn: ByteStream, options: ConnectTlsOptions): Promise<TlsStream> {
  const { mode, ca, servername } = options;
  const ip = isIP(servername) !== 0;
  const raw = new ConnDuplex(conn);
  const socket = tls.connect({
    socket: raw as unknown as Socket,
    // SNI carries host names only; an address is still checked against the certificate's SANs.
    ...(ip ? { host: servername } : { host: servername, servername }),
    ca,
    rejectUnauthorized: mode !== "prefer",
    ...(mode === "verify_ca" ? { checkServerIdentity: () => undefined } : {}),
  });
  return handshake(socket, { raw, event: "secureConnect" });
}

/** Waits for `event` (the handshake is done) or a failure: an error, or the peer hanging up. */
function handshake(
  socket: tls.TLSSocket,
  options: { raw: ConnDuplex; event: "secure" | "secureConnect" },
): Promise<TlsStream> {
  const { raw, event } = options;
  return new Promise((resolve, reject) => {
    const fail = (e: Error): void => {
      cleanup();
      // Late errors of a socket given up on must not go unhandled.
      socket.on("error", () => {});
      raw.on("error", () => {});
      socket.destroy();
      raw.destroy();
      reject(e);
    };
    const closed = (): void => fail(new Error("connection closed during the TLS handshake"));
    const done = (): void => {
      cleanup();
      resolve(new TlsStream(socket, raw));
    };
    const cleanup = (): void => {
      socket.off("error", fail);
      socket.off("close", closed);
      socket.off(event, done);
      raw.off("end", closed);
    };
    socket.on("error", fail);
    socket.on("close", closed);
    // The TLS socket reports the end of the raw stream only once read from; watch the raw side.
    raw.on("end", closed);
    socket.once(event, done);
  });
}
