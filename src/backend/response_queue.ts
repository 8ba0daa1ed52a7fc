/**
 * What a server still owes: one entry per request message sent to it (or answered by the proxy
 * itself), in order. The server's responses are matched against the head entry, so the proxy
 * always knows which response belongs to which message: where a transaction ends, which answers
 * to drop (its own injected messages), where to insert answers it gives itself, and which
 * messages PostgreSQL skips after an error.
 *
 * @module
 */

import type { ErrorFields } from "../protocol/messages.ts";
import type { StatementCopies } from "./prepared_copies.ts";

/** What a queued entry stands for. */
export const Expect = {
  /** Simple Query: everything up to and including ReadyForQuery. */
  Query: 1,
  /** FunctionCall: FunctionCallResponse or ErrorResponse, then ReadyForQuery. */
  Function: 2,
  /** Parse: ParseComplete or ErrorResponse. */
  Parse: 3,
  /** Bind: BindComplete or ErrorResponse. */
  Bind: 4,
  /** Describe of a statement: ParameterDescription, then RowDescription or NoData. */
  DescribeStatement: 5,
  /** Describe of a portal: RowDescription or NoData. */
  DescribePortal: 6,
  /** Execute: rows, then CommandComplete, EmptyQueryResponse or PortalSuspended. */
  Execute: 7,
  /** Close: CloseComplete. */
  Close: 8,
  /** Sync: ReadyForQuery. */
  Sync: 9,
  /** Answered by the proxy: its bytes go to the client when the entry reaches the head. */
  Local: 10,
  /** The client ended COPY FROM STDIN (CopyDone/CopyFail); no answer of its own. */
  CopyEnd: 11,
} as const;

/** What happens to the responses of an entry. */
export const Action = {
  /** Passed on to the attached client. */
  Forward: 0,
  /** Dropped (the proxy's own pipelined messages); errors are logged. */
  Swallow: 1,
  /** Decoded and kept for the proxy (its own queries). */
  Collect: 2,
  /** The proxy's message standing in for the client's (a Parse it injected): success is dropped,
   * errors go to the client, since they are the answer to what the client asked. */
  Inject: 3,
} as const;

/** What a Parse entry carries: the statement's server-side name and what to do on its outcome. */
export interface ParseTicket {
  readonly name: string;
  /** ParseComplete arrived. */
  succeeded(): void;
  /** It failed, or the server skipped it after an earlier error: the statement does not exist. */
  failed(): void;
}

/** What a Local entry carries: the bytes pgdog answers with, and what to undo if it is skipped. */
export interface LocalAnswer {
  readonly bytes: Uint8Array | null;
  /** The server skipped to the next Sync before reaching it: PostgreSQL would not have answered. */
  dropped?(): void;
}

/**
 * What a Bind or a statement Describe of a shared prepared statement carries: its outcome tells
 * pgdog about the server's copy of the statement.
 */
export interface StatementTicket {
  /**
   * The server answered it with an error (`copies` are that server's statements): a stale or lost
   * copy is noted.
   */
  failed(copies: StatementCopies, fields: ErrorFields): void;
  /**
   * Describe only: a message of the answer ('t', 'T' or 'n'; the body starts at `start`), seen
   * whole.
   */
  described?(type: number, buf: Uint8Array, start: number): void;
  /** The server skipped it (after an earlier error). */
  dropped?(): void;
}

/** What an Execute or simple Query entry carries when pgdog changed what it runs. */
export interface RunTicket {
  /** The server fails it on pgdog's request: the client gets this error instead of the server's. */
  readonly raise?: ErrorFields;
  /**
   * A CommandComplete whose tag starts with "D" (DO, DEALLOCATE, ...): the message to send the
   * client instead, or null for the server's own.
   */
  completed?(tag: string): Uint8Array | null;
  /** The server skipped it (after an earlier error) or it failed: what pgdog did for it is undone. */
  dropped?(): void;
}

/** Entry kinds that end with ReadyForQuery. */
export function endsWithReady(kind: number): boolean {
  return kind === Expect.Query || kind === Expect.Function || kind === Expect.Sync;
}

/** A first-in first-out queue of expected responses, stored in parallel ring arrays. */
export class ResponseQueue {
  #kinds = new Uint8Array(16);
  #actions = new Uint8Array(16);
  #payloads: unknown[] = new Array(16).fill(null);
  #head = 0;
  #size = 0;

  /** Number of entries. */
  get length(): number {
    return this.#size;
  }

  /** Kind of the head entry, or 0 when empty. */
  get headKind(): number {
    return this.#size === 0 ? 0 : this.#kinds[this.#head];
  }

  /** Action of the head entry (Forward when empty). */
  get headAction(): number {
    return this.#size === 0 ? Action.Forward : this.#actions[this.#head];
  }

  /** What the head entry carries: a Local entry's bytes, a Parse entry's statement. */
  get headPayload(): unknown {
    return this.#size === 0 ? null : this.#payloads[this.#head];
  }

  /** Appends an entry. */
  push(kind: number, action: number, payload: unknown = null): void {
    if (this.#size === this.#kinds.length) this.#grow();
    const i = (this.#head + this.#size) & (this.#kinds.length - 1);
    this.#kinds[i] = kind;
    this.#actions[i] = action;
    this.#payloads[i] = payload;
    this.#size++;
  }

  /** Removes the head entry. */
  shift(): void {
    if (this.#size === 0) return;
    this.#payloads[this.#head] = null;
    this.#head = (this.#head + 1) & (this.#kinds.length - 1);
    this.#size--;
  }

  /** Kind of the entry at position `n` from the head. */
  kindAt(n: number): number {
    return this.#kinds[(this.#head + n) & (this.#kinds.length - 1)];
  }

  /** True when some entry ends with ReadyForQuery. */
  hasReady(): boolean {
    for (let n = 0; n < this.#size; n++) if (endsWithReady(this.kindAt(n))) return true;
    return false;
  }

  /**
   * After an error in an extended-protocol message, PostgreSQL skips everything up to the next
   * Sync: drops the entries before the first Sync, calling `dropped` with each one's kind and
   * payload. Returns false when no Sync is queued yet.
   */
  dropUntilSync(dropped?: (kind: number, payload: unknown) => void): boolean {
    while (this.#size > 0 && this.#kinds[this.#head] !== Expect.Sync) {
      dropped?.(this.#kinds[this.#head], this.#payloads[this.#head]);
      this.shift();
    }
    return this.#size > 0;
  }

  /**
   * COPY FROM STDIN started: PostgreSQL ignores Syncs until the client ends the copy, so the Sync
   * entries queued after the head and before the first CopyEnd are removed. Returns how many.
   */
  removeSyncsBeforeCopyEnd(): number {
    const keptKinds: number[] = [];
    const keptActions: number[] = [];
    const keptPayloads: unknown[] = [];
    let removed = 0;
    let inCopy = true;
    for (let n = 1; n < this.#size; n++) {
      const i = (this.#head + n) & (this.#kinds.length - 1);
      const kind = this.#kinds[i];
      if (kind === Expect.CopyEnd) inCopy = false;
      if (inCopy && kind === Expect.Sync) {
        removed++;
        continue;
      }
      keptKinds.push(kind);
      keptActions.push(this.#actions[i]);
      keptPayloads.push(this.#payloads[i]);
    }
    if (removed === 0) return 0;
    const head = this.#head;
    const headKind = this.#kinds[head];
    const headAction = this.#actions[head];
    const headPayload = this.#payloads[head];
    this.clear();
    this.push(headKind, headAction, headPayload);
    for (let k = 0; k < keptKinds.length; k++) {
      this.push(keptKinds[k], keptActions[k], keptPayloads[k]);
    }
    return removed;
  }

  /**
   * Makes the first `count` Forward entries swallow their answers (Local ones give none): a
   * re-run request whose first answers the client already has.
   */
  swallowFirst(count: number): void {
    for (let n = 0; n < this.#size && count > 0; n++) {
      const i = (this.#head + n) & (this.#kinds.length - 1);
      if (this.#actions[i] !== Action.Forward) continue;
      if (this.#kinds[i] === Expect.Local) this.#payloads[i] = null;
      else this.#actions[i] = Action.Swallow;
      count--;
    }
  }

  /** Empties the queue. */
  clear(): void {
    this.#payloads.fill(null);
    this.#head = 0;
    this.#size = 0;
  }

  #grow(): void {
    const cap = this.#kinds.length * 2;
    const kinds = new Uint8Array(cap);
    const actions = new Uint8Array(cap);
    const payloads: unknown[] = new Array(cap).fill(null);
    for (let n = 0; n < this.#size; n++) {
      const i = (this.#head + n) & (this.#kinds.length - 1);
      kinds[n] = this.#kinds[i];
      actions[n] = this.#actions[i];
      payloads[n] = this.#payloads[i];
    }
    this.#kinds = kinds;
    this.#actions = actions;
    this.#payloads = payloads;
    this.#head = 0;
  }
}
