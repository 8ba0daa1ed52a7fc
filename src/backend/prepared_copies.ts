/**
 * What pgdog knows of the prepared statements a server holds (transaction mode): for each global
 * name (`__pgdog_<n>`), when pgdog prepared it there and how the server last described it. A
 * server's copy is planned against the schema of the moment it was parsed, so pgdog compares that
 * moment with a client's own Parse before letting the client use it (see
 * src/frontend/prepared.ts).
 *
 * @module
 */

let clock = 0;

/**
 * The next value of the process-wide clock that orders clients' Parses and the preparation of
 * server copies: a copy prepared after a client's Parse is at least as recent as the statement
 * PostgreSQL would have planned for that client.
 */
export function preparedClock(): number {
  return ++clock;
}

/** A prepared statement as one server holds it. */
export class StatementCopy {
  /** When pgdog sent the Parse that created it ({@linkcode preparedClock}). */
  readonly preparedAt: number;
  /**
   * Its result columns as the server described them (see {@linkcode describeRows}), or null until
   * described.
   */
  rows: string | null = null;
  /** Its parameter types as the server described them ({@linkcode describeParameters}), or null. */
  params: string | null = null;
  /** A Describe of it that pgdog sent has not been answered yet. */
  describing = false;
  /**
   * The server reported it stale (a table changed under it) or may have lost it (a DEALLOCATE
   * pgdog did not send): it is closed and parsed again before its next use.
   */
  stale = false;

  constructor(preparedAt: number = preparedClock()) {
    this.preparedAt = preparedAt;
  }
}

/** A server's copies by global name, least recently used first. */
export type StatementCopies = Map<string, StatementCopy>;

/** Records that `name` is being prepared on a server now (a new copy, most recently used). */
export function preparedNow(copies: StatementCopies, name: string): StatementCopy {
  const copy = new StatementCopy();
  copies.delete(name);
  copies.set(name, copy);
  return copy;
}

/** The copy of `name`, moved to the most recently used end (undefined when there is none). */
export function touchCopy(copies: StatementCopies, name: string): StatementCopy | undefined {
  const copy = copies.get(name);
  if (copy === undefined) return undefined;
  copies.delete(name);
  copies.set(name, copy);
  return copy;
}

/** A DEALLOCATE pgdog did not send ran on the server: any copy may be gone. */
export function allStale(copies: StatementCopies): void {
  for (const copy of copies.values()) copy.stale = true;
}

/** The parameter types of a ParameterDescription whose body starts at `start`, as a string. */
export function describeParameters(buf: Uint8Array, start: number): string {
  const view = new DataView(buf.buffer, buf.byteOffset);
  const n = view.getInt16(start);
  const types: number[] = [];
  for (let i = 0; i < n; i++) types.push(view.getInt32(start + 2 + 4 * i));
  return types.join(",");
}

/**
 * The result columns of a RowDescription whose body starts at `start` (null for NoData), as a
 * string that is equal for two descriptions exactly when PostgreSQL would call the result type
 * unchanged: each column's name, type and type modifier (not its table or format).
 */
export function describeRows(buf: Uint8Array, start: number | null): string {
  if (start === null) return "-";
  const view = new DataView(buf.buffer, buf.byteOffset);
  const n = view.getInt16(start);
  const columns: string[] = [];
  let q = start + 2;
  for (let i = 0; i < n; i++) {
    const nameEnd = buf.indexOf(0, q);
    const name = utf8.decode(buf.subarray(q, nameEnd));
    q = nameEnd + 1;
    // table oid (4), attnum (2), type oid (4), typlen (2), typmod (4), format (2)
    columns.push(`${name}:${view.getInt32(q + 6)}:${view.getInt32(q + 12)}`);
    q += 18;
  }
  return columns.join(",");
}

const utf8 = new TextDecoder();
