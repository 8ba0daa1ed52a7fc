/**
 * The parameters a client is shown (ParameterStatus), kept as PostgreSQL would show them although
 * the client's transactions run on servers shared with others: what it was told of each, what
 * its startup values were (what RESET and DISCARD ALL return to), and which are being reset.
 *
 * @module
 */

import { appendParameterStatus, MessageBuilder } from "../protocol/messages.ts";
import type { Server } from "../backend/server.ts";
import type { SessionScan } from "../router/scan.ts";

/** A replacement meaning "send nothing". */
const NOTHING = new Uint8Array(0);

/** One client's reported parameters. */
export class ReportedParameters {
  /** What this client was told of each reported parameter (ParameterStatus). */
  readonly #told = new Map<string, string>();
  /** The values reported at login: what RESET returns reported parameters to. */
  readonly #loginReported = new Map<string, string>();
  /** Parameters being reset (lower-case names, or all), until their read-back answers. */
  #resetting: Set<string> | "all" | null = null;
  /** A settings sync went out with the request being answered (see owed). */
  #owed = false;

  /** The client is told `value` at login. */
  login(name: string, value: string): void {
    this.#told.set(name, value);
    this.#loginReported.set(name, value);
  }

  /** The resets a statement makes (until the session's read-back answers, see `resetDone`). */
  noteResets(scan: SessionScan): void {
    if (scan.resetAll) this.#resetting = "all";
    else if (scan.resets.length > 0 && this.#resetting !== "all") {
      this.#resetting ??= new Set();
      for (const name of scan.resets) this.#resetting.add(name);
    }
  }

  /** The session's settings were read back: nothing is being reset any more. */
  resetDone(): void {
    this.#resetting = null;
  }

  /** A settings sync goes out with the request (see {@linkcode owed}). */
  syncSent(): void {
    this.#owed = true;
  }

  /** DISCARD ALL: the parameters that go back to their startup values are reported into `b`. */
  backToStartup(b: MessageBuilder): void {
    for (const [name, value] of this.#loginReported) {
      if (this.#told.get(name) === value) continue;
      this.#told.set(name, value);
      appendParameterStatus(b, name, value);
    }
  }

  /**
   * Keeps the client's view of reported parameters what PostgreSQL would have shown it. A reset
   * parameter shows the client's startup value (the server itself resets to its own default
   * until pgdog syncs it); a sync's change is shown only when the client was told something
   * else. Returns the message to send instead (NOTHING: none), or null to forward the server's.
   */
  parameterStatus(options: { name: string; value: string; own: boolean }): Uint8Array | null {
    const { name, own } = options;
    let value = options.value;
    if (own) {
      const r = this.#resetting;
      const startup = this.#loginReported.get(name);
      if (r !== null && startup !== undefined && (r === "all" || r.has(name.toLowerCase()))) {
        value = startup;
      }
    }
    // PostgreSQL reports a parameter only when the client's value changes.
    if (this.#told.get(name) === value) return NOTHING;
    this.#told.set(name, value);
    return value === options.value && own ? null : parameterStatusMessage(name, value);
  }

  /**
   * A settings sync and the client's request share one ReadyForQuery, and PostgreSQL reports a
   * parameter there only when its value differs from what it last reported on that connection:
   * a sync that set it back and a client SET that set it again report nothing, though this
   * client was told otherwise (libpq's string escaping relies on standard_conforming_strings).
   * So after such a request the client is told what differs.
   */
  owed(server: Server): Uint8Array | null {
    if (!this.#owed) return null;
    this.#owed = false;
    let b: MessageBuilder | null = null;
    const resetting = this.#resetting;
    for (const [name, value] of server.reported) {
      const told = this.#told.get(name);
      if (told === undefined || told === value) continue;
      // A RESET shows the client's startup value (see parameterStatus).
      if (resetting === "all" || resetting?.has(name.toLowerCase())) continue;
      this.#told.set(name, value);
      b ??= new MessageBuilder(64);
      appendParameterStatus(b, name, value);
    }
    return b === null ? null : b.build();
  }
}

function parameterStatusMessage(name: string, value: string): Uint8Array {
  const b = new MessageBuilder(32);
  appendParameterStatus(b, name, value);
  return b.build();
}
