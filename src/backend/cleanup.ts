/**
 * Making a server safe to reuse after its client left or ended a session: finish or abort what
 * is outstanding, roll back an open transaction, and reset the session when asked. A server that
 * cannot be brought back to a known clean state within `rollback_timeout` is closed instead, so
 * no client ever receives a dirty connection.
 *
 * @module
 */

import { copyFail, SYNC, TxStatus } from "../protocol/messages.ts";
import { Action, Expect } from "./response_queue.ts";
import { errorMessage, log } from "../log.ts";
import { CopyState, type Server } from "./server.ts";

/** How long outstanding queries may run on after their client left before they are cancelled. */
const CANCEL_AFTER_MS = 500;

/**
 * Brings `server` back to idle. Resolves true when it is clean; false when it was (or must be)
 * closed. `resetSql` (DISCARD ALL in session mode, the unpin cleanup) runs last.
 */
export async function cleanServer(
  server: Server,
  options: { resetSql: string | null; timeoutMs: number },
): Promise<boolean> {
  if (server.closed) return false;
  // The client sent part of an extended-protocol request: a Sync would commit it, so let the
  // server abort it by closing the connection, exactly as if that client had talked to it directly.
  if (server.openRequest) {
    server.close("client left in the middle of an extended-protocol request");
    return false;
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    server.close(`cleanup took longer than rollback_timeout (${options.timeoutMs} ms)`);
  }, options.timeoutMs);
  try {
    if (server.queue.length > 0 || server.copy !== CopyState.None) {
      const cancelTimer = setTimeout(() => {
        log.debug(`${server.label}: cancelling the query its departed client left running`);
        server.sendCancel();
      }, CANCEL_AFTER_MS);
      try {
        let extra: Uint8Array | undefined;
        if (server.copy === CopyState.In && !server.copyEnded) {
          // End the COPY FROM STDIN the client left open. Started by Execute, the server then
          // skips to a Sync (the client's own Syncs were ignored during the copy), so add one.
          if (server.queue.headKind === Expect.Execute) {
            server.copyEnded = true;
            server.expect(Expect.Sync, Action.Swallow);
            extra = COPY_FAIL_SYNC;
          } else {
            extra = COPY_FAIL;
          }
        }
        await server.drain(extra);
      } finally {
        clearTimeout(cancelTimer);
      }
    }
    if (server.txStatus !== TxStatus.Idle) {
      const r = await server.query("ROLLBACK");
      if (r.error) throw new Error(`ROLLBACK failed: ${r.error.message}`);
    }
    if (options.resetSql !== null) {
      const r = await server.query(options.resetSql);
      if (r.error) throw new Error(`${options.resetSql} failed: ${r.error.message}`);
      // Both resets return every setting to the server's defaults; DISCARD ALL also drops statements.
      server.applied.clear();
      if (/discard all/i.test(options.resetSql)) server.statements.clear();
    }
    return !timedOut && server.clean && !server.discard && !server.cancelPending;
  } catch (e) {
    if (!timedOut && !server.closed) {
      log.warn(
        `${server.label}: cleanup failed (${errorMessage(e)}); closing it`,
      );
      server.close("cleanup failed");
    }
    return false;
  } finally {
    clearTimeout(timer);
  }
}

const COPY_FAIL = copyFail("client disconnected during COPY");
const COPY_FAIL_SYNC = new Uint8Array([...COPY_FAIL, ...SYNC]);
