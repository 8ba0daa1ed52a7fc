/**
 * How a client connection ends: the answers a server still owes reach the client before the close
 * (as with PostgreSQL), and the error that ended the connection becomes a FATAL for the client or
 * a log line.
 *
 * @module
 */

import { type ErrorFields, Msg } from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { type MessageBuffer, MessageSizeError, QueryTooLargeError } from "../net/message_buffer.ts";
import type { SocketWriter } from "../net/writer.ts";
import type { Server } from "../backend/server.ts";
import { errorMessage, log } from "../log.ts";
import { ClientGoneError } from "./auth.ts";
import { LoginRefused } from "./login.ts";
import { querySample } from "./large_query.ts";

/** Flush: asks the server for the answers it holds back until Sync. */
const FLUSH_MESSAGE = Uint8Array.of(Msg.Flush, 0, 0, 0, 4);

/**
 * Waits (bounded by `timeoutMs`, rollback_timeout) until `server` has answered everything the
 * client sent before, so those answers reach the client ahead of a close, as with PostgreSQL.
 */
export async function finishOwed(
  server: Server | null,
  options: { writer: SocketWriter; timeoutMs: number },
): Promise<void> {
  if (server === null || server.queue.length === 0) return;
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    // A Flush: PostgreSQL holds answers to extended-protocol messages until Sync or Flush.
    server.drain(FLUSH_MESSAGE),
    new Promise<void>((resolve) => timer = setTimeout(resolve, options.timeoutMs)),
  ]).catch(() => {});
  clearTimeout(timer);
  await options.writer.flush().catch(() => {});
}

/**
 * The FATAL error a client is told when `e` ended its connection (a message too large), or null
 * (then `e` is logged unless it is an ordinary end: the client left, or its login was refused).
 */
export function endingError(
  e: unknown,
  client: {
    readonly id: number;
    readonly user: string;
    readonly database: string;
    readonly addr: string;
    readonly closed: boolean;
    readonly rbuf: MessageBuffer;
  },
): ErrorFields | null {
  if (e instanceof QueryTooLargeError) {
    log.error(
      `client ${client.id} (${client.user}@${client.database}): [large_query] refused a message ` +
        `of ${e.size} bytes (query_size_limit is ${e.limit} bytes): '${
          querySample(client.rbuf)
        }...'`,
    );
    return {
      severity: "FATAL",
      code: SqlState.ProgramLimitExceeded,
      message: e.message,
      detail: `message is ${e.size} bytes, query_size_limit is ${e.limit} bytes`,
    };
  }
  if (e instanceof MessageSizeError) {
    return { severity: "FATAL", code: SqlState.ProtocolViolation, message: e.message };
  }
  if (
    !(e instanceof ClientGoneError) && !(e instanceof LoginRefused) && !client.closed &&
    !isConnectionReset(e)
  ) {
    log.warn(`client ${client.id} (${client.addr}): ${errorMessage(e)}`);
  }
  return null;
}

function isConnectionReset(e: unknown): boolean {
  return e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe ||
    e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted;
}
