/**
 * Small networking helpers for tests.
 *
 * @module
 */

/**
 * Find a free TCP port on 127.0.0.1 by binding port 0, reading the port the
 * kernel picked and closing the listener again.
 *
 * The port is free at the time of the call only: whoever binds it next may
 * lose a race against another process, so callers that bind later should be
 * ready to retry with a new port.
 */
export function freePort(): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return Promise.resolve(port);
}

/** Options for {@linkcode waitForPort}. */
export interface WaitForPortOptions {
  /** Host to connect to; "127.0.0.1" by default. */
  host?: string;
  /** Give up after this many milliseconds; 10 000 by default. */
  timeoutMs?: number;
}

/**
 * Wait until a TCP connection to `port` succeeds (the connection is closed at
 * once). Throws when `timeoutMs` passes first.
 */
export async function waitForPort(port: number, options: WaitForPortOptions = {}): Promise<void> {
  const host = options.host ?? "127.0.0.1";
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const conn = await Deno.connect({ hostname: host, port });
      conn.close();
      return;
    } catch (err) {
      lastError = err;
      await sleep(50);
    }
  }
  throw new Error(`nothing listens on ${host}:${port}: ${String(lastError)}`);
}

/** Resolve after `ms` milliseconds (the timer is never left behind). */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
