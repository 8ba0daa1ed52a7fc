/**
 * The error a cross-shard merge raises (an overflow, a value it can't compare, a buffer past its
 * limit): it fails that query with the SQLSTATE PostgreSQL would send, and nothing else.
 *
 * @module
 */

/** A merge failure the client gets as an ErrorResponse. */
export class MergeError extends Error {
  /** SQLSTATE, e.g. `22003` (numeric value out of range), `53200` (out of memory), `0A000`. */
  readonly code: string;
  /** ErrorResponse detail (D field), if any. */
  readonly detail: string | undefined;
  /** ErrorResponse hint (H field), if any. */
  readonly hint: string | undefined;

  constructor(code: string, message: string, options: { detail?: string; hint?: string } = {}) {
    super(message);
    this.code = code;
    this.detail = options.detail;
    this.hint = options.hint;
  }
}
