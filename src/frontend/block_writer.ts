/**
 * The client's output while a split request runs (see `#startSplit` in client.ts): the request's
 * statements run one by one, each answered up to its own ReadyForQuery, but the client must see
 * one answer, as if PostgreSQL had run the request whole. This writer stands in for the client's
 * socket writer meanwhile: it drops every ReadyForQuery (pgdog sends the one that ends the
 * request), notes errors, and passes the rest on.
 *
 * @module
 */

import { type ErrorFields, Msg, readInt32 } from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { SocketWriter } from "../net/writer.ts";
import { FramedWriter } from "../net/framer.ts";

const decoder = new TextDecoder();

/**
 * The RETURNING rows of INSERTs pgdog wrote for one statement, held to be put back in the
 * statement's order: for each INSERT (in the order they run), the position of each row it lists.
 */
export interface HeldReturning {
  order: number[][];
  /** Bytes of rows that may be held (`cross_shard_buffer_limit`). */
  limit: number;
  /** The client's Execute asks for this many rows (0: all); the portal is suspended after them. */
  maxRows?: number;
}

/** A writer that passes messages on to `out`, without their ReadyForQuery. */
export class BlockWriter extends FramedWriter {
  /** An ErrorResponse went through. */
  failed = false;
  /** With `sumInserts`: the rows of the `INSERT 0 n` tags held back, summed; else null. */
  inserted: number | null;

  /**
   * The held rows can't be answered (too many bytes, or an INSERT returned other rows than it
   * listed): the statement must fail with this error. Set once; the runner takes it.
   */
  abort: ErrorFields | null = null;

  /** RowDescriptions still passed on (the rest are dropped); null: all. */
  #rowDescriptions: number | null;
  /** See {@linkcode HeldReturning}; null: rows are passed on as they come. */
  readonly #returning: HeldReturning | null;
  /** The rows held, by position; null once aborted (rows are dropped). */
  #held: (Uint8Array | undefined)[] | null = null;
  #heldBytes = 0;
  /** The INSERT answering now (index into the order) and its rows so far. */
  #statement = 0;
  #statementRows = 0;

  constructor(
    out: SocketWriter,
    options: { sumInserts?: boolean; rowDescriptions?: number; returning?: HeldReturning } = {},
  ) {
    super(out);
    this.inserted = options.sumInserts ? 0 : null;
    this.#rowDescriptions = options.rowDescriptions ?? null;
    this.#returning = options.returning ?? null;
    if (this.#returning !== null) this.#held = [];
  }

  /**
   * The rows held, in order, as one run of DataRows (empty when none or aborted): all of them, or
   * the first max rows of the client's Execute, the portal then suspended as PostgreSQL's is when
   * its rows reach the limit.
   */
  takeRows(): { rows: Uint8Array; suspended: boolean } {
    const held = this.#held ?? [];
    const max = this.#returning?.maxRows ?? 0;
    const out = new Uint8Array(this.#heldBytes);
    let at = 0;
    let count = 0;
    for (const row of held) {
      if (row === undefined) continue;
      if (max > 0 && count === max) break;
      out.set(row, at);
      at += row.length;
      count++;
    }
    this.#held = this.#returning === null ? null : [];
    this.#heldBytes = 0;
    return { rows: out.subarray(0, at), suspended: max > 0 && count === max };
  }

  /** The writer this one feeds. */
  get target(): SocketWriter {
    return this.out;
  }

  /** Passes the whole messages of `run` on, except ReadyForQuery. */
  protected messages(run: Uint8Array): void {
    let from = 0;
    let p = 0;
    while (p < run.length) {
      const type = run[p];
      const next = p + readInt32(run, p + 1) + 1;
      if (type === Msg.ErrorResponse) this.failed = true;
      if (
        type === Msg.ReadyForQuery || (type === Msg.CommandComplete && this.#heldTag(run, p)) ||
        (type === Msg.DataRow && this.#returning !== null && this.#hold(run, p, next)) ||
        (type === Msg.RowDescription && this.#rowDescriptions !== null &&
          this.#rowDescriptions-- <= 0)
      ) {
        if (p > from) this.out.enqueue(run.subarray(from, p));
        from = next;
      }
      p = next;
    }
    if (run.length > from) this.out.enqueue(from === 0 ? run : run.subarray(from));
  }

  /** An `INSERT 0 n` tag at `p`, counted and held back (with `sumInserts`). */
  #heldTag(run: Uint8Array, p: number): boolean {
    if (this.inserted === null) return false;
    const tag = decoder.decode(run.subarray(p + 5, p + readInt32(run, p + 1)));
    const m = /^INSERT 0 (\d+)$/.exec(tag);
    if (m === null) return false;
    this.inserted += Number(m[1]);
    if (this.#returning !== null) {
      const listed = this.#returning.order[this.#statement]?.length ?? 0;
      if (this.#held !== null && this.#statementRows !== listed) {
        this.#fail(
          SqlState.FeatureNotSupported,
          `INSERT ... SELECT ... RETURNING: a shard returned ${this.#statementRows} rows for the ` +
            `${listed} it was given (a trigger skipped or added rows), so the order of the rows ` +
            "returned can't be known: drop RETURNING",
        );
      }
      this.#statement++;
      this.#statementRows = 0;
    }
    return true;
  }

  /** A RETURNING row at [p, next) of `run`: held at its position (always dropped from the run). */
  #hold(run: Uint8Array, p: number, next: number): boolean {
    const order = this.#returning!;
    const k = this.#statementRows++;
    if (this.#held === null) return true;
    const position = order.order[this.#statement]?.[k];
    if (position === undefined) {
      this.#fail(
        SqlState.FeatureNotSupported,
        "INSERT ... SELECT ... RETURNING: a shard returned more rows than it was given (a " +
          "trigger added rows), so the order of the rows returned can't be known: drop RETURNING",
      );
      return true;
    }
    this.#heldBytes += next - p;
    if (this.#heldBytes > order.limit) {
      this.#fail(
        "53200",
        "INSERT ... SELECT: the rows of its RETURNING are more than cross_shard_buffer_limit " +
          `(${order.limit} bytes), which pgdog holds to return them in the SELECT's order`,
        "Insert them in parts (a WHERE on ranges of the key), or drop RETURNING.",
      );
      return true;
    }
    this.#held[position] = run.slice(p, next);
    return true;
  }

  /** The held rows can't be answered: dropped, and the statement fails with this error. */
  #fail(code: string, message: string, hint?: string): void {
    this.#held = null;
    this.#heldBytes = 0;
    this.abort ??= { severity: "ERROR", code, message, ...(hint ? { hint } : {}) };
  }
}
