/**
 * What logical replication delivers, decoded from `pgoutput` (protocol version 1, values in text):
 * the contract between the stream (replication.ts, pgoutput.ts) and whoever applies the changes
 * (apply.ts). LSNs are bigints.
 *
 * @module
 */

/** A WAL position. */
export type Lsn = bigint;

/** `X/Y` (PostgreSQL's text form of an LSN) as a bigint; throws on anything else. */
export function parseLsn(text: string): Lsn {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text.trim());
  if (!m) throw new Error(`not an LSN: ${JSON.stringify(text)}`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/** An LSN in PostgreSQL's text form (`16/B374D848`). */
export function formatLsn(lsn: Lsn): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${
    (lsn & 0xffffffffn).toString(16).toUpperCase()
  }`;
}

/** A column of a replicated table, as its Relation message describes it. */
export interface RelationColumn {
  name: string;
  /** The source's type OID (user types differ between clusters: apply leaves types to the server). */
  typeOid: number;
  typmod: number;
  /** Part of the replica identity (the key UPDATE and DELETE find the row by). */
  key: boolean;
}

/** A table's description; it precedes the first change of the table in a session. */
export interface Relation {
  kind: "relation";
  /** The source's relation OID (how changes name the table). */
  oid: number;
  schema: string;
  name: string;
  /** d: default (primary key), n: nothing, f: full (all columns), i: index. */
  replicaIdentity: "d" | "n" | "f" | "i";
  columns: RelationColumn[];
}

/** An unchanged TOASTed value: UPDATE did not touch it and the stream does not carry it. */
export const UNCHANGED: unique symbol = Symbol("unchanged TOAST value");

/** One value of a tuple: its text form, SQL NULL, or {@linkcode UNCHANGED}. */
export type TupleValue = string | null | typeof UNCHANGED;

/** A change, in stream order. */
export type Change =
  | {
    kind: "begin";
    /** The LSN of the transaction's commit record. */
    finalLsn: Lsn;
    /** Commit time, microseconds since 2000-01-01. */
    commitTime: bigint;
    xid: number;
  }
  | {
    kind: "commit";
    commitLsn: Lsn;
    /** The end of the commit record: the position to confirm once applied. */
    endLsn: Lsn;
    commitTime: bigint;
  }
  | Relation
  | { kind: "insert"; relation: number; tuple: TupleValue[] }
  | {
    kind: "update";
    relation: number;
    /** K: the old key columns (others null); O: the whole old row (REPLICA IDENTITY FULL). */
    old: TupleValue[] | null;
    oldKind: "K" | "O" | null;
    tuple: TupleValue[];
  }
  | { kind: "delete"; relation: number; old: TupleValue[]; oldKind: "K" | "O" }
  | { kind: "truncate"; relations: number[]; cascade: boolean; restartIdentity: boolean }
  /** Type, Origin and logical decoding messages: nothing to apply. */
  | { kind: "other"; tag: number };

/** A change with the WAL position of the message that carried it (XLogData's start). */
export interface StreamedChange {
  lsn: Lsn;
  change: Change;
}
