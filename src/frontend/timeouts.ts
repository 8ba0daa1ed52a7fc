/**
 * A client's time limits: query_timeout on the servers running its request (cancelled, then
 * closed if the cancel is ignored), client_idle_timeout and client_idle_in_transaction_timeout
 * on the client between requests.
 *
 * @module
 */

import type { ErrorFields } from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { Server } from "../backend/server.ts";

/** The limits in force (ms; 0 disables one), and how long a cancel may be ignored. */
export interface TimeLimits {
  query: number;
  idle: number;
  idleInTransaction: number;
  grace: number;
}

/**
 * query_timeout on the servers running a request: a server past it is cancelled (its error says
 * why), and closed when it ignores the cancel for `grace` ms.
 */
export function enforceQueryTimeout(
  running: readonly Server[],
  options: { now: number; limits: TimeLimits },
): void {
  const { now, limits } = options;
  if (limits.query <= 0) return;
  for (const s of running) {
    if (s.queue.length === 0 || s.closed) continue;
    const elapsed = now - s.requestStart;
    if (s.cancelNote === null && elapsed >= limits.query) {
      s.cancelNote = `canceling statement due to query_timeout (${limits.query} ms)`;
      s.sendCancel();
    } else if (s.cancelNote !== null && elapsed >= limits.query + limits.grace) {
      s.close(`query_timeout: the server ignored the cancel for ${limits.grace} ms`);
    }
  }
}

/**
 * The FATAL that ends a client idle since `idleSince` (inside a transaction or not) past its
 * limit, or null.
 */
export function idleTimeout(
  idleSince: number,
  options: { now: number; inTransaction: boolean; limits: TimeLimits },
): ErrorFields | null {
  const { now, inTransaction, limits } = options;
  if (
    inTransaction && limits.idleInTransaction > 0 && now - idleSince >= limits.idleInTransaction
  ) {
    return {
      severity: "FATAL",
      code: SqlState.IdleInTransactionSessionTimeout,
      message:
        `terminating connection due to client_idle_in_transaction_timeout (${limits.idleInTransaction} ms)`,
    };
  }
  if (!inTransaction && limits.idle > 0 && now - idleSince >= limits.idle) {
    return {
      severity: "FATAL",
      code: SqlState.IdleSessionTimeout,
      message: `terminating connection due to client_idle_timeout (${limits.idle} ms)`,
    };
  }
  return null;
}
