/**
 * One client message on its way to a server, with what handling it decided: the bytes that
 * replace it, what its statement does to the session, its analysis. Filled by the steps that
 * look at the message (local answers, plugins) and read by the step that sends it
 * (forward.ts), so nothing one message decided is left in a field for another to find. One
 * object per client, reset at each message (no allocation per message).
 *
 * @module
 */

import type { RunTicket } from "../backend/response_queue.ts";
import type { Analysis } from "../router/mod.ts";
import type { SessionScan } from "../router/scan.ts";
import type { ClientStatement } from "./prepared.ts";

const EMPTY = new Uint8Array(0);

/** A client message (bytes [p, end) of `buf`) and what routing decided about it. */
export class RoutedMessage {
  /** The message type byte. */
  type = 0;
  buf: Uint8Array = EMPTY;
  p = 0;
  end = 0;
  /**
   * Bytes sent instead of the message: a rewritten Query or Parse (pgdog.unique_id() calls, a
   * plugin's rewrite, a DEALLOCATE run as a no-op, an error raised on the server).
   */
  substitute: Uint8Array | null = null;
  /** What the substitute Query's entry carries (a rewritten DEALLOCATE, an error to raise). */
  ticket: RunTicket | null = null;
  /** What the statement does to the session, noted when it reaches a server. */
  scan: SessionScan | null = null;
  /** The analysis of a Query or Parse's statement, when routing made one (null: not yet). */
  analysis: Analysis | null = null;
  /** A Parse of a name the client has already: sent for the server to fail with 42P05. */
  duplicate: ClientStatement | null = null;

  /** Takes the next message; nothing is decided about it yet. */
  at(type: number, buf: Uint8Array, p: number, end: number): this {
    this.type = type;
    this.buf = buf;
    this.p = p;
    this.end = end;
    this.substitute = null;
    this.ticket = null;
    this.scan = null;
    this.analysis = null;
    this.duplicate = null;
    return this;
  }
}
