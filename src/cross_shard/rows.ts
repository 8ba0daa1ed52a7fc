/**
 * RowDescription and DataRow bytes, as the merge reads and writes them. Decoding a DataRow makes
 * no copies: each field is a view into the message (NULL, length -1 on the wire, is `null`).
 *
 * @module
 */

import { MessageBuilder, Msg, readCString, readInt16, readInt32 } from "../protocol/messages.ts";
import { MergeError } from "./errors.ts";

/** One column of a RowDescription. */
export interface FieldDescription {
  name: string;
  /** OID of the table the column comes from, or 0. */
  tableOid: number;
  /** Attribute number in that table, or 0. */
  attnum: number;
  typeOid: number;
  /** pg_type.typlen: a positive width, or -1 (varlena) / -2 (C string). */
  size: number;
  typmod: number;
  /** 0 text, 1 binary (a statement's Describe always says 0). */
  format: number;
}

/** A decoded DataRow: one view per column, `null` for SQL NULL. */
export type Fields = (Uint8Array | null)[];

function malformed(what: string): MergeError {
  return new MergeError("08P01", `malformed ${what} from a shard`);
}

/** Decodes a RowDescription message (type byte included). */
export function parseRowDescription(msg: Uint8Array): FieldDescription[] {
  if (msg.length < 7 || msg[0] !== Msg.RowDescription) throw malformed("RowDescription");
  const end = 1 + readInt32(msg, 1);
  if (end > msg.length) throw malformed("RowDescription");
  const count = readInt16(msg, 5);
  const fields: FieldDescription[] = [];
  let p = 7;
  for (let i = 0; i < count; i++) {
    const [name, next] = readCString(msg, p, end);
    p = next;
    if (p + 18 > end) throw malformed("RowDescription");
    fields.push({
      name,
      tableOid: readInt32(msg, p) >>> 0,
      attnum: readInt16(msg, p + 4),
      typeOid: readInt32(msg, p + 6) >>> 0,
      size: readInt16(msg, p + 10),
      typmod: readInt32(msg, p + 12),
      format: readInt16(msg, p + 16),
    });
    p += 18;
  }
  return fields;
}

/** Builds a RowDescription message. */
export function buildRowDescription(fields: readonly FieldDescription[]): Uint8Array {
  const b = new MessageBuilder(16 + fields.length * 40);
  b.begin(Msg.RowDescription).int16(fields.length);
  for (const f of fields) {
    b.cstring(f.name).int32(f.tableOid).int16(f.attnum).int32(f.typeOid).int16(f.size);
    b.int32(f.typmod).int16(f.format);
  }
  return b.end().build();
}

/** pg_type.typlen of the types an aggregate can return (-1, variable, for the others). */
export function typeSize(oid: number): number {
  switch (oid) {
    case 16: // bool
    case 18: // char
      return 1;
    case 21: // int2
      return 2;
    case 23: // int4
    case 26: // oid
    case 700: // float4
    case 1082: // date
      return 4;
    case 20: // int8
    case 701: // float8
    case 790: // money
    case 1083: // time
    case 1114: // timestamp
    case 1184: // timestamptz
      return 8;
    case 1266: // timetz
      return 12;
    case 1186: // interval
    case 2950: // uuid
      return 16;
    default:
      return -1;
  }
}

/**
 * The RowDescription the client gets: the first `visible` fields; a field with an entry in
 * `resultTypes` is an aggregate's result (its type, size, typmod -1, no table column; name and
 * format kept). `formats`, when given, sets each column's format code.
 */
export function projectRowDescription(
  fields: readonly FieldDescription[],
  options: {
    visible: number;
    resultTypes?: readonly (number | null | undefined)[];
    formats?: readonly number[];
  },
): FieldDescription[] {
  const out: FieldDescription[] = [];
  for (let i = 0; i < options.visible; i++) {
    const f = fields[i];
    const oid = options.resultTypes?.[i];
    const format = options.formats?.[i] ?? f.format;
    out.push(
      oid === null || oid === undefined
        ? { ...f, format }
        : { ...f, tableOid: 0, attnum: 0, typeOid: oid, size: typeSize(oid), typmod: -1, format },
    );
  }
  return out;
}

/**
 * Decodes a DataRow message (type byte included) into views of its fields. `out` is filled and
 * returned when given (its length set to the column count).
 */
export function parseDataRow(msg: Uint8Array, out: Fields = []): Fields {
  if (msg.length < 7 || msg[0] !== Msg.DataRow) throw malformed("DataRow");
  const end = 1 + readInt32(msg, 1);
  if (end > msg.length) throw malformed("DataRow");
  const count = readInt16(msg, 5);
  out.length = count;
  let p = 7;
  for (let i = 0; i < count; i++) {
    if (p + 4 > end) throw malformed("DataRow");
    const len = readInt32(msg, p);
    p += 4;
    if (len < 0) {
      out[i] = null;
      continue;
    }
    if (p + len > end) throw malformed("DataRow");
    out[i] = msg.subarray(p, p + len);
    p += len;
  }
  return out;
}

/** Appends a DataRow of the first `count` fields (all when omitted) to a builder. */
export function appendDataRow(
  b: MessageBuilder,
  fields: readonly (Uint8Array | null)[],
  count: number = fields.length,
): void {
  b.begin(Msg.DataRow).int16(count);
  for (let i = 0; i < count; i++) {
    const f = fields[i];
    if (f === null) b.int32(-1);
    else b.int32(f.length).bytes(f);
  }
  b.end();
}

/** A DataRow message of the given fields. */
export function buildDataRow(fields: readonly (Uint8Array | null)[]): Uint8Array {
  let size = 7;
  for (const f of fields) size += 4 + (f === null ? 0 : f.length);
  const b = new MessageBuilder(size);
  appendDataRow(b, fields);
  return b.build();
}

/**
 * Result-format codes per column from a Bind's list: none means all text, one applies to every
 * column, otherwise one per column (PostgreSQL's rule).
 */
export function formatsPerColumn(codes: readonly number[], columns: number): (0 | 1)[] {
  const out: (0 | 1)[] = [];
  for (let i = 0; i < columns; i++) {
    const code = codes.length === 0 ? 0 : codes.length === 1 ? codes[0] : codes[i] ?? 0;
    out.push(code === 1 ? 1 : 0);
  }
  return out;
}
