/**
 * The byte stream every connection is seen through: a plain `Deno.Conn` satisfies it, and TLS
 * connections are adapted to it, so framing and forwarding code never cares which it has.
 *
 * @module
 */

/** A bidirectional byte stream with Deno.Conn's read/write/close contract. */
export interface ByteStream {
  /** Reads into `p`; resolves to the byte count, or null at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes some of `p`; resolves to the number of bytes written. */
  write(p: Uint8Array): Promise<number>;
  /** Closes both directions; safe to call more than once through {@linkcode closeQuietly}. */
  close(): void;
}

/** Writes all of `data`, looping over partial writes. */
export async function writeAll(stream: ByteStream, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) {
    off += await stream.write(off === 0 ? data : data.subarray(off));
  }
}

/** Closes a stream, ignoring "already closed" and similar errors. */
export function closeQuietly(stream: ByteStream): void {
  try {
    stream.close();
  } catch {
    // Already closed: nothing to do.
  }
}

/** Tunes a TCP connection for request/response traffic. */
export function tuneTcp(conn: Deno.Conn): void {
  const tcp = conn as Deno.TcpConn;
  try {
    tcp.setNoDelay?.(true);
    tcp.setKeepAlive?.(true);
  } catch {
    // Not a TCP socket (or already closed): nothing to tune.
  }
}
