/**
 * Cancelling a query on a server: PostgreSQL takes a CancelRequest on a separate connection.
 *
 * @module
 */

import { cancelRequest } from "../protocol/messages.ts";
import { closeQuietly, writeAll } from "../net/stream.ts";

/** Sends a CancelRequest for a server's backend key; errors are ignored (cancel is best effort). */
export async function sendCancel(
  address: { host: string; port: number },
  key: { pid: number; secret: number },
): Promise<void> {
  let conn: Deno.TcpConn | null = null;
  try {
    conn = await Deno.connect({ hostname: address.host, port: address.port });
    await writeAll(conn, cancelRequest(key.pid, key.secret));
    // PostgreSQL closes the connection once it has read the request.
    await conn.read(new Uint8Array(1)).catch(() => null);
  } catch {
    // Best effort: the query may already be over.
  } finally {
    if (conn) closeQuietly(conn);
  }
}
