/**
 * A client's session bookkeeping as its statements pass: what they changed of the session (and
 * whether later pipelined messages must wait for it to settle), DISCARD ALL, pgdog's own settings
 * (`SET pgdog.<name>`, the manual pin), and the reported parameters the client was told.
 *
 * @module
 */

import { type MessageBuilder, TxStatus } from "../protocol/messages.ts";
import type { Server } from "../backend/server.ts";
import type { SessionScan } from "../router/scan.ts";
import type { SessionState } from "./session.ts";
import type { ClientStatements } from "./prepared.ts";
import type { Forwarder } from "./forward.ts";
import { ReportedParameters } from "./reported_parameters.ts";
import type { Checkout } from "./checkout.ts";

/** What session bookkeeping reads of the client and asks of it. */
export interface BookkeepingClient {
  readonly session: SessionState;
  readonly statements: ClientStatements;
  readonly forwarder: Forwarder;
  readonly checkout: Checkout;
  /** The server whose state answers for the client's (see LocalClient.server). */
  readonly server: Server | null;
  /** The transaction status the client is told. */
  txStatus(): number;
  /** After an unpin, a server kept only for the pin goes back (cleaned) at once. */
  releaseIfUnpinned(): void;
}

/** One client's session bookkeeping. */
export class SessionBookkeeping {
  readonly #client: BookkeepingClient;
  /** What this client was told of reported parameters (ParameterStatus). */
  readonly reported: ReportedParameters = new ReportedParameters();
  /** A forwarded message may change the session: later pipelined messages wait for it to settle. */
  holdRest = false;

  constructor(client: BookkeepingClient) {
    this.#client = client;
  }

  /** Session bookkeeping for a statement that reached `server`. */
  noteScan(scan: SessionScan, server: Server): void {
    const c = this.#client;
    c.session.note(scan);
    if (scan.settings.length > 0 || scan.resetAll || scan.unknownSetting || scan.advisoryLocks) {
      this.holdRest = true;
    }
    this.reported.noteResets(scan);
    if (scan.discardAll) {
      // DISCARD ALL on the server drops its prepared statements, and the client's.
      server.statements.clear();
      c.statements.clear();
      c.forwarder.uniqueIds?.clear();
    }
  }

  /** DISCARD ALL without a server (see LocalClient.resetSession). */
  resetSession(b: MessageBuilder): void {
    const c = this.#client;
    c.session.reset();
    c.statements.clear();
    // As PostgreSQL does, report the parameters that go back to their startup values.
    this.reported.backToStartup(b);
  }

  /** `SET [LOCAL] pgdog.<name> TO <value>` and `RESET pgdog.<name>`. */
  setPgdog([name, value, local]: [string, string, boolean]): void {
    const c = this.#client;
    const session = c.session;
    if (local) {
      if (c.txStatus() === TxStatus.Idle) return;
      // Lasts until the transaction ends.
      if (value === "") session.pgdogLocal.delete(name);
      else session.pgdogLocal.set(name, value);
      return;
    }
    if (name === "pin") {
      const on = /^(true|on|yes|1)$/i.test(value);
      session.manualPin = on;
      if (on) c.checkout.pinnedThisHold = c.server !== null;
      else c.releaseIfUnpinned();
      return;
    }
    if (value === "") session.pgdog.delete(name);
    else session.pgdog.set(name, value);
  }
}
