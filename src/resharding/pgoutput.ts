/**
 * Decodes `pgoutput` messages (logical replication protocol version 1, values in text): the body
 * of one XLogData message of a `START_REPLICATION ... LOGICAL` stream, as PostgreSQL's
 * "Logical Replication Message Formats" describes it. Pure: bytes in, a {@linkcode Change} out.
 *
 * @module
 */

import {
  type Change,
  type Lsn,
  type Relation,
  type RelationColumn,
  type TupleValue,
  UNCHANGED,
} from "./changes.ts";

/** A pgoutput message that does not follow the format (truncated, an unknown tuple kind...). */
export class PgoutputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PgoutputError";
  }
}

const decoder = new TextDecoder();

/** Reads a message front to back, checking every read against its end. */
class Reader {
  readonly #view: DataView;
  readonly #bytes: Uint8Array;
  #pos = 0;
  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get tag(): number {
    return this.#bytes[0];
  }

  #need(n: number): number {
    const at = this.#pos;
    if (at + n > this.#bytes.length) {
      throw new PgoutputError(
        `pgoutput message '${
          String.fromCharCode(this.tag)
        }' is truncated (${this.#bytes.length} bytes)`,
      );
    }
    this.#pos += n;
    return at;
  }

  byte(): number {
    return this.#bytes[this.#need(1)];
  }

  int16(): number {
    return this.#view.getInt16(this.#need(2));
  }

  int32(): number {
    return this.#view.getInt32(this.#need(4));
  }

  uint32(): number {
    return this.#view.getUint32(this.#need(4));
  }

  int64(): bigint {
    return this.#view.getBigInt64(this.#need(8));
  }

  lsn(): Lsn {
    return this.#view.getBigUint64(this.#need(8));
  }

  cstring(): string {
    const start = this.#pos;
    const nul = this.#bytes.indexOf(0, start);
    if (nul < 0) this.#need(this.#bytes.length - start + 1);
    this.#pos = nul + 1;
    return decoder.decode(this.#bytes.subarray(start, nul));
  }

  text(length: number): string {
    const at = this.#need(length);
    return decoder.decode(this.#bytes.subarray(at, at + length));
  }

  /** TupleData: per column 'n' (NULL), 'u' (unchanged TOAST), 't' (text). */
  tuple(): TupleValue[] {
    const n = this.int16();
    const values: TupleValue[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const kind = this.byte();
      if (kind === 0x6e) values[i] = null; // 'n'
      else if (kind === 0x75) values[i] = UNCHANGED; // 'u'
      else if (kind === 0x74) values[i] = this.text(this.int32()); // 't'
      else {
        // 'b' needs `binary 'true'`, which the stream never asks for.
        throw new PgoutputError(
          `pgoutput column ${i} has kind ${
            JSON.stringify(String.fromCharCode(kind))
          } (only text values are expected)`,
        );
      }
    }
    return values;
  }

  /** Fails when bytes are left over (a format this decoder does not know). */
  end(): void {
    if (this.#pos !== this.#bytes.length) {
      throw new PgoutputError(
        `pgoutput message '${String.fromCharCode(this.tag)}' has ${
          this.#bytes.length - this.#pos
        } unexpected trailing bytes`,
      );
    }
  }
}

/**
 * Decodes one pgoutput message (the payload after XLogData's 25-byte header). Begin, Commit,
 * Relation, Insert, Update, Delete and Truncate are decoded; Origin, Type and logical decoding
 * messages become `{kind: "other"}`. Throws {@linkcode PgoutputError} on a malformed message or a
 * kind it does not know (streamed in-progress transactions and two-phase messages are never
 * asked for).
 */
export function decodePgoutput(payload: Uint8Array): Change {
  if (payload.length === 0) throw new PgoutputError("empty pgoutput message");
  const r = new Reader(payload);
  const tag = r.byte();
  let change: Change;
  switch (tag) {
    case 0x42: // 'B'
      change = { kind: "begin", finalLsn: r.lsn(), commitTime: r.int64(), xid: r.uint32() };
      break;
    case 0x43: { // 'C'
      r.byte(); // flags, unused
      change = { kind: "commit", commitLsn: r.lsn(), endLsn: r.lsn(), commitTime: r.int64() };
      break;
    }
    case 0x52: // 'R'
      change = relation(r);
      break;
    case 0x49: { // 'I'
      const relation = r.uint32();
      expectByte(r, 0x4e, "Insert");
      change = { kind: "insert", relation, tuple: r.tuple() };
      break;
    }
    case 0x55: { // 'U'
      const relation = r.uint32();
      let kind = r.byte();
      let old: TupleValue[] | null = null;
      let oldKind: "K" | "O" | null = null;
      if (kind === 0x4b || kind === 0x4f) {
        oldKind = kind === 0x4b ? "K" : "O";
        old = r.tuple();
        kind = r.byte();
      }
      if (kind !== 0x4e) throw unexpected("Update", kind);
      change = { kind: "update", relation, old, oldKind, tuple: r.tuple() };
      break;
    }
    case 0x44: { // 'D'
      const relation = r.uint32();
      const kind = r.byte();
      if (kind !== 0x4b && kind !== 0x4f) throw unexpected("Delete", kind);
      change = { kind: "delete", relation, old: r.tuple(), oldKind: kind === 0x4b ? "K" : "O" };
      break;
    }
    case 0x54: { // 'T'
      const n = r.int32();
      const options = r.byte();
      const relations: number[] = [];
      for (let i = 0; i < n; i++) relations.push(r.uint32());
      change = {
        kind: "truncate",
        relations,
        cascade: (options & 1) !== 0,
        restartIdentity: (options & 2) !== 0,
      };
      break;
    }
    case 0x4f: // 'O' Origin
    case 0x59: // 'Y' Type
    case 0x4d: // 'M' logical decoding message
      return { kind: "other", tag };
    default:
      throw new PgoutputError(
        `unknown pgoutput message ${JSON.stringify(String.fromCharCode(tag))} (byte ${tag})`,
      );
  }
  r.end();
  return change;
}

function relation(r: Reader): Relation {
  const oid = r.uint32();
  // An empty namespace is pg_catalog.
  const schema = r.cstring() || "pg_catalog";
  const name = r.cstring();
  const identity = String.fromCharCode(r.byte());
  if (identity !== "d" && identity !== "n" && identity !== "f" && identity !== "i") {
    throw new PgoutputError(`relation ${schema}.${name} has replica identity ${identity}`);
  }
  const n = r.int16();
  const columns: RelationColumn[] = [];
  for (let i = 0; i < n; i++) {
    const flags = r.byte();
    const name = r.cstring();
    columns.push({ name, typeOid: r.uint32(), typmod: r.int32(), key: (flags & 1) !== 0 });
  }
  return { kind: "relation", oid, schema, name, replicaIdentity: identity, columns };
}

function expectByte(r: Reader, want: number, what: string): void {
  const got = r.byte();
  if (got !== want) throw unexpected(what, got);
}

function unexpected(what: string, got: number): PgoutputError {
  return new PgoutputError(
    `pgoutput ${what} has tuple kind ${JSON.stringify(String.fromCharCode(got))} (byte ${got})`,
  );
}
