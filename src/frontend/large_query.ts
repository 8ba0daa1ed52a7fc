/**
 * query_size_limit in the logs: the warning for a large Query or Parse (action "warn"), and the
 * start of a message as logs show it.
 *
 * @module
 */

import { decodeText, Msg } from "../protocol/messages.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import { log } from "../log.ts";

/** The start of the message at `p` of the read buffer (from `start`), on one line, for logs. */
export function querySample(rbuf: MessageBuffer, p: number = rbuf.start): string {
  const text = decodeText(rbuf.buf, Math.min(p + 5, rbuf.end), Math.min(p + 5 + 200, rbuf.end));
  return text.replaceAll("\0", " ").replace(/\s+/g, " ").slice(0, 100);
}

/**
 * query_size_limit's warning (action "warn") for the message at [p, end) of the read buffer,
 * when it is a Query or Parse over the limit.
 */
export function warnLargeQuery(
  rbuf: MessageBuffer,
  message: { type: number; p: number; end: number },
  options: {
    settings: { query_size_limit?: number; query_size_limit_action: "warn" | "block" };
    database: string;
    user: string;
  },
): void {
  const { type, p, end } = message;
  const { query_size_limit: limit, query_size_limit_action: action } = options.settings;
  if (type !== Msg.Bind && limit !== undefined && end - p > limit && action === "warn") {
    log.warn(
      `[large_query] size=${end - p}B query_size_limit=${limit}B '${querySample(rbuf, p)}...' ` +
        `[database: ${options.database}, user: ${options.user}]`,
    );
  }
}
