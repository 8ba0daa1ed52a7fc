import { deepEqual, equal, throws } from "node:assert/strict";
import { MessageBuilder, Msg } from "../protocol/messages.ts";
import { MergeError } from "./errors.ts";
import {
  appendDataRow,
  buildDataRow,
  buildRowDescription,
  type FieldDescription,
  formatsPerColumn,
  parseDataRow,
  parseRowDescription,
  projectRowDescription,
} from "./rows.ts";

const enc = new TextEncoder();

/** A RowDescription written field by field, as PostgreSQL lays it out. */
function rowDescriptionBytes(fields: FieldDescription[]): Uint8Array {
  const b = new MessageBuilder().begin(Msg.RowDescription).int16(fields.length);
  for (const f of fields) {
    b.cstring(f.name).int32(f.tableOid).int16(f.attnum).int32(f.typeOid).int16(f.size)
      .int32(f.typmod).int16(f.format);
  }
  return b.end().build();
}

const ID: FieldDescription = {
  name: "id",
  tableOid: 16384,
  attnum: 1,
  typeOid: 23,
  size: 4,
  typmod: -1,
  format: 1,
};
const NAME: FieldDescription = {
  name: "name",
  tableOid: 16384,
  attnum: 2,
  typeOid: 1043,
  size: -1,
  typmod: 36,
  format: 0,
};
const COUNT: FieldDescription = {
  name: "count",
  tableOid: 0,
  attnum: 0,
  typeOid: 20,
  size: 8,
  typmod: -1,
  format: 0,
};

Deno.test("parseRowDescription reads every field attribute", () => {
  const bytes = rowDescriptionBytes([ID, NAME, { ...COUNT, tableOid: 0xfffffff0 }]);
  deepEqual(parseRowDescription(bytes), [ID, NAME, { ...COUNT, tableOid: 0xfffffff0 }]);
});

Deno.test("buildRowDescription writes what PostgreSQL writes", () => {
  deepEqual(buildRowDescription([ID, NAME]), rowDescriptionBytes([ID, NAME]));
  deepEqual(buildRowDescription([]), Uint8Array.of(0x54, 0, 0, 0, 6, 0, 0));
  // deno-fmt-ignore
  deepEqual(buildRowDescription([ID]), Uint8Array.of(
    0x54, 0, 0, 0, 27, 0, 1, 0x69, 0x64, 0,
    0, 0, 0x40, 0, 0, 1, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 1,
  ));
});

Deno.test("projectRowDescription cuts hidden columns and gives aggregates their result type", () => {
  const avg = { ...NAME, name: "avg", typeOid: 1700, typmod: 5, format: 1 };
  const out = projectRowDescription([ID, avg, COUNT], { visible: 2, resultTypes: [null, 1700] });
  deepEqual(out, [ID, { ...avg, tableOid: 0, attnum: 0, size: -1, typmod: -1 }]);
  const sum = projectRowDescription([COUNT], { visible: 1, resultTypes: [1700], formats: [1] });
  deepEqual(sum, [{ ...COUNT, typeOid: 1700, size: -1, format: 1 }]);
  const count = projectRowDescription([{ ...ID, name: "n" }], { visible: 1, resultTypes: [20] });
  deepEqual(count, [{ ...ID, name: "n", tableOid: 0, attnum: 0, typeOid: 20, size: 8 }]);
});

Deno.test("parseDataRow gives views into the message, null for NULL, and no copies", () => {
  const msg = new MessageBuilder().begin(Msg.DataRow).int16(4)
    .int32(2).bytes(enc.encode("42"))
    .int32(-1)
    .int32(0)
    .int32(3).bytes(enc.encode("abc"))
    .end().build();
  const fields = parseDataRow(msg);
  deepEqual(fields, [enc.encode("42"), null, new Uint8Array(0), enc.encode("abc")]);
  equal(fields[0]!.buffer, msg.buffer);
  equal(fields[3]!.byteOffset, msg.length - 3);
  // A reused array is resized to the row.
  const reused: (Uint8Array | null)[] = [null, null, null, null, null, null];
  deepEqual(parseDataRow(msg, reused), fields);
  equal(reused.length, 4);
});

Deno.test("buildDataRow and appendDataRow round-trip with parseDataRow", () => {
  const fields = [enc.encode("x"), null, new Uint8Array(0)];
  const msg = buildDataRow(fields);
  deepEqual(
    msg,
    Uint8Array.of(0x44, 0, 0, 0, 19, 0, 3, 0, 0, 0, 1, 0x78, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0),
  );
  deepEqual(parseDataRow(msg), fields);
  const b = new MessageBuilder();
  appendDataRow(b, fields, 1);
  appendDataRow(b, fields, 0);
  deepEqual(
    b.build(),
    Uint8Array.of(0x44, 0, 0, 0, 11, 0, 1, 0, 0, 0, 1, 0x78, 0x44, 0, 0, 0, 6, 0, 0),
  );
});

Deno.test("malformed rows are refused with 08P01, not read past their end", () => {
  const short = Uint8Array.of(0x44, 0, 0, 0, 14, 0, 1, 0, 0, 0, 9, 1, 2, 3, 4);
  const code08P01 = (e: unknown) => e instanceof MergeError && e.code === "08P01";
  throws(() => parseDataRow(short), code08P01);
  throws(() => parseDataRow(Uint8Array.of(0x54, 0, 0, 0, 6, 0, 0)), code08P01);
  throws(() => parseRowDescription(Uint8Array.of(0x54, 0, 0, 0, 9, 0, 1, 0x61, 0)), code08P01);
});

Deno.test("formatsPerColumn follows Bind's rule", () => {
  deepEqual(formatsPerColumn([], 3), [0, 0, 0]);
  deepEqual(formatsPerColumn([1], 3), [1, 1, 1]);
  deepEqual(formatsPerColumn([0, 1, 0], 3), [0, 1, 0]);
});
