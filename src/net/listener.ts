/**
 * The TCP listener: accepts connections and hands each to a callback until closed.
 *
 * @module
 */

import { errorMessage, log } from "../log.ts";
import { tuneTcp } from "./stream.ts";

/** A listening socket and its accept loop. */
export class Listener {
  readonly #listener: Deno.TcpListener;
  #closed = false;
  /** Resolves when the accept loop has ended. */
  readonly done: Promise<void>;

  /**
   * Listens on `hostname:port` and calls `onConnection` for every accepted connection. With
   * `reusePort`, other listeners (workers) may bind the same port and the kernel spreads new
   * connections among them (needs `--unstable-net`).
   */
  constructor(
    address: { hostname: string; port: number; reusePort?: boolean },
    onConnection: (conn: Deno.TcpConn) => void,
  ) {
    this.#listener = Deno.listen({
      hostname: address.hostname,
      port: address.port,
      transport: "tcp",
      ...(address.reusePort ? { reusePort: true } : {}),
    });
    this.done = this.#accept(onConnection);
  }

  /** The bound address (the real port when 0 was asked for). */
  get addr(): Deno.NetAddr {
    return this.#listener.addr;
  }

  async #accept(onConnection: (conn: Deno.TcpConn) => void): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch (e) {
        if (this.#closed || e instanceof Deno.errors.BadResource) return;
        // Out of file descriptors and the like: wait a moment instead of spinning.
        log.error(`accept failed: ${errorMessage(e)}`);
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      tuneTcp(conn);
      onConnection(conn);
    }
  }

  /** Stops accepting. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
  }
}
