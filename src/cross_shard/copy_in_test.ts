import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { loadModule, parseSync } from "libpg-query";
import {
  type CopyFormat,
  CopyFormatError,
  copyFormatOf,
  CopyInSplitter,
  type CopyInSplitterOptions,
} from "./copy_in.ts";

await loadModule();

const enc = new TextEncoder();
const dec = new TextDecoder();

/** The format of a COPY statement's options (asserting it is valid). */
function fmt(options: string, columns: string[] = ["a", "b", "c"]): CopyFormat {
  const f = formatOrError(options, columns);
  if ("error" in f) throw new Error(f.error);
  return f;
}

function formatOrError(
  options: string,
  columns: string[] = ["a", "b", "c"],
): ReturnType<typeof copyFormatOf> {
  const tree = parseSync(`COPY t FROM STDIN ${options}`) as {
    stmts: { stmt: { CopyStmt: { options?: unknown[] } } }[];
  };
  return copyFormatOf(tree.stmts[0].stmt.CopyStmt.options ?? [], columns);
}

interface Split {
  header: string | null;
  rows: string[];
  /** The line PostgreSQL names for each row (from firstLine and lines). */
  rowLines: number[];
  keys: (string | null)[];
  firstRows: number[];
  ended: boolean;
}

/** Feeds `input` in the given pieces (cut positions) and collects what comes out. */
function split(
  format: CopyFormat,
  options: CopyInSplitterOptions,
  input: Uint8Array,
  cuts: number[] = [],
): Split {
  const s = new CopyInSplitter(format, options);
  const rows: string[] = [];
  const keys: (string | null)[] = [];
  const firstRows: number[] = [];
  const rowLines: number[] = [];
  let expectRow = 1;
  const take = (r: ReturnType<CopyInSplitter["push"]>): void => {
    equal(r.firstRow, expectRow);
    for (let i = 0; i < r.starts.length; i++) {
      rows.push(latin1(r.data.subarray(r.starts[i], r.ends[i])));
    }
    expectRow += r.starts.length;
    ok(r.firstLine !== undefined && r.lines !== undefined);
    if (r.lines !== null) equal(r.lines.length, r.starts.length);
    let line = r.firstLine;
    for (let i = 0; i < r.starts.length; i++) {
      if (i > 0) line += r.lines === null ? 1 : r.lines[i];
      rowLines.push(line);
    }
    if (r.starts.length) firstRows.push(r.firstRow);
    keys.push(...r.keys);
    if (options.keyColumn !== null) equal(r.keys.length, r.starts.length);
    else equal(r.keys.length, 0);
  };
  let at = 0;
  for (const c of [...cuts, input.length]) {
    take(s.push(input.slice(at, c)));
    at = c;
  }
  take(s.finish());
  return {
    header: s.header === null ? null : latin1(s.header),
    rows,
    rowLines,
    keys,
    firstRows,
    ended: s.ended,
  };
}

function latin1(b: Uint8Array): string {
  let s = "";
  for (const c of b) s += String.fromCharCode(c);
  return s;
}

/** The same result whole, cut at every position, and byte by byte; returns it. */
function splitEverywhere(
  format: CopyFormat,
  options: CopyInSplitterOptions,
  input: Uint8Array | string,
): Split {
  const bytes = typeof input === "string" ? enc.encode(input) : input;
  const whole = split(format, options, bytes);
  const norm = (s: Split): unknown => ({ ...s, firstRows: undefined });
  for (let i = 0; i <= bytes.length; i++) {
    deepEqual(norm(split(format, options, bytes, [i])), norm(whole), `cut at ${i}`);
  }
  for (let i = 0; i + 3 <= bytes.length; i++) {
    deepEqual(norm(split(format, options, bytes, [i, i + 1, i + 3])), norm(whole), `cuts ${i}`);
  }
  const each = Array.from({ length: bytes.length }, (_, i) => i);
  deepEqual(norm(split(format, options, bytes, each)), norm(whole), "byte by byte");
  // Whole rows plus header reproduce the input up to the end marker.
  return whole;
}

function throwsCopy(fn: () => unknown, message: string | RegExp, row?: number): void {
  throws(fn, (e: unknown) => {
    ok(e instanceof CopyFormatError, String(e));
    if (typeof message === "string") equal(e.message, message);
    else ok(message.test(e.message), e.message);
    if (row !== undefined) equal(e.row, row);
    return true;
  });
}

/** Errors at every cut position too. */
function throwsEverywhere(
  format: CopyFormat,
  options: CopyInSplitterOptions,
  input: string | Uint8Array,
  message: string | RegExp,
  row?: number,
): void {
  const bytes = typeof input === "string" ? enc.encode(input) : input;
  for (let i = 0; i <= bytes.length; i++) {
    throwsCopy(() => split(format, options, bytes, [i]), message, row);
  }
}

const key0 = { keyColumn: 0, columns: 3 };

Deno.test("copyFormatOf: defaults and old syntax", () => {
  deepEqual(fmt(""), {
    format: "text",
    delimiter: "\t",
    null: "\\N",
    header: false,
    quote: "",
    escape: "",
    forceNotNull: [],
    forceNull: [],
    encoding: null,
  });
  deepEqual(fmt("WITH CSV HEADER DELIMITER ';'"), {
    format: "csv",
    delimiter: ";",
    null: "",
    header: true,
    quote: '"',
    escape: '"',
    forceNotNull: [],
    forceNull: [],
    encoding: null,
  });
  deepEqual(fmt("WITH CSV FORCE NOT NULL a, b QUOTE AS '''' ESCAPE AS '\\' NULL AS 'n'"), {
    format: "csv",
    delimiter: ",",
    null: "n",
    header: false,
    quote: "'",
    escape: "\\",
    forceNotNull: ["a", "b"],
    forceNull: [],
    encoding: null,
  });
  equal(fmt("BINARY").format, "binary");
  equal(fmt("WITH BINARY").format, "binary");
  equal(fmt("(FORMAT binary, HEADER false)").header, false);
  equal(fmt("(FORMAT csv, HEADER match)").header, "match");
  equal(fmt("(HEADER)").header, true);
  equal(fmt("(HEADER 1)").header, true);
  equal(fmt("(HEADER 0)").header, false);
  equal(fmt("(HEADER on)").header, true);
  equal(fmt("(HEADER off)").header, false);
  equal(fmt("(FORMAT csv, FORCE_NULL *)").forceNull, "*");
  equal(fmt("(FORMAT csv, FORCE_NOT_NULL *)").forceNotNull, "*");
  deepEqual(fmt("(FORMAT csv, FORCE_NULL (a, c))").forceNull, ["a", "c"]);
  equal(fmt("(ENCODING 'LATIN1')").encoding, "LATIN1");
  equal(fmt("(FREEZE)").format, "text");
  equal(fmt("(FREEZE false, FORMAT text, DELIMITER '|', NULL '')").delimiter, "|");
  equal(fmt("(FORMAT csv, QUOTE '''', ESCAPE '\\')").escape, "\\");
});

Deno.test("copyFormatOf: refuses what PostgreSQL 15 refuses, with its message", () => {
  const cases: [string, string, string][] = [
    ["(FORMAT 'fixed')", 'COPY format "fixed" not recognized', "22023"],
    ["(FORMAT csv, FORMAT csv)", "conflicting or redundant options", "42601"],
    ["(FORMAT binary, HEADER)", "cannot specify HEADER in BINARY mode", "0A000"],
    ["(FORMAT binary, DELIMITER ',')", "cannot specify DELIMITER in BINARY mode", "42601"],
    ["(FORMAT binary, NULL 'x')", "cannot specify NULL in BINARY mode", "42601"],
    ["(DELIMITER '||')", "COPY delimiter must be a single one-byte character", "0A000"],
    ["(DELIMITER 'é')", "COPY delimiter must be a single one-byte character", "0A000"],
    ["(DELIMITER E'\\n')", "COPY delimiter cannot be newline or carriage return", "22023"],
    ["(NULL E'a\\rb')", "COPY null representation cannot use newline or carriage return", "22023"],
    ["(DELIMITER '\\')", 'COPY delimiter cannot be "\\"', "22023"],
    ["(DELIMITER 'a')", 'COPY delimiter cannot be "a"', "22023"],
    ["(DELIMITER '.')", 'COPY delimiter cannot be "."', "22023"],
    ["(QUOTE '\"')", "COPY quote available only in CSV mode", "0A000"],
    ["(FORMAT csv, QUOTE '')", "COPY quote must be a single one-byte character", "0A000"],
    ["(FORMAT csv, DELIMITER '\"')", "COPY delimiter and quote must be different", "22023"],
    ["(ESCAPE '\\')", "COPY escape available only in CSV mode", "0A000"],
    ["(FORMAT csv, ESCAPE 'ab')", "COPY escape must be a single one-byte character", "0A000"],
    ["(FORMAT csv, FORCE_QUOTE *)", "COPY force quote only available using COPY TO", "0A000"],
    ["(FORCE_QUOTE (a))", "COPY force quote available only in CSV mode", "0A000"],
    ["(FORCE_NOT_NULL (a))", "COPY force not null available only in CSV mode", "0A000"],
    ["(FORCE_NULL (a))", "COPY force null available only in CSV mode", "0A000"],
    ["(NULL 'a\tb')", "COPY delimiter must not appear in the NULL specification", "0A000"],
    [
      "(FORMAT csv, NULL 'a\"')",
      "CSV quote character must not appear in the NULL specification",
      "0A000",
    ],
    ["(FORMAT csv, FORCE_NULL (x))", 'FORCE_NULL column "x" not referenced by COPY', "42P10"],
    [
      "(FORMAT csv, FORCE_NOT_NULL (y))",
      'FORCE_NOT_NULL column "y" not referenced by COPY',
      "42P10",
    ],
    ["(HEADER 2)", 'header requires a Boolean value or "match"', "42601"],
    ["(HEADER maybe)", 'header requires a Boolean value or "match"', "42601"],
    ["(FREEZE 2)", "freeze requires a Boolean value", "42601"],
    ["(DEFAULT 'x')", 'option "default" not recognized', "42601"],
    ["(ENCODING 'nope')", 'argument to option "encoding" must be a valid encoding name', "22023"],
    [
      "(FORMAT csv, FORCE_NULL 'a')",
      'argument to option "force_null" must be a list of column names',
      "22023",
    ],
  ];
  for (const [options, error, code] of cases) {
    deepEqual(formatOrError(options), { error, code }, options);
  }
});

Deno.test("text: rows, keys, escapes, NULL", () => {
  const f = fmt("");
  const input = "1\ta\tb\n" +
    "2\tx\\ty\t\\N\n" +
    "\\N\t\\\\\t\n" +
    "4\\t5\tq\tr\n" +
    "\\x41\\101\\n\\r\\b\\f\\v\\z\\\\\t\t\n" +
    "caf\xc3\xa9\t\t\n" +
    "ab\\\ncd\t\t\n";
  const bytes = Uint8Array.from(input, (c) => c.charCodeAt(0));
  const r = splitEverywhere(f, key0, bytes);
  deepEqual(r.rows, input.split(/(?<=[^\\]\n)/));
  deepEqual(r.keys, ["1", "2", null, "4\t5", "AA\n\r\b\f\vz\\", "café", "ab\ncd"]);
  equal(r.header, null);
  equal(r.ended, false);
  // The key in another column.
  const r1 = splitEverywhere(f, { keyColumn: 1, columns: 3 }, bytes);
  deepEqual(r1.keys, ["a", "x\ty", "\\", "q", "", "", ""]);
  const r2 = splitEverywhere(f, { keyColumn: 2, columns: 3 }, bytes);
  deepEqual(r2.keys, ["b", null, "", "r", "", "", ""]);
  // No key column: no keys.
  deepEqual(splitEverywhere(f, { keyColumn: null, columns: 3 }, bytes).keys, []);
});

Deno.test("text: custom delimiter and NULL string; a quoted delimiter", () => {
  const f = fmt("(DELIMITER '|', NULL 'nil')");
  const r = splitEverywhere(f, { keyColumn: 1, columns: 2 }, "a|nil\nb\\|c|d\\|e\nnil|nilx\n");
  deepEqual(r.keys, [null, "d|e", "nilx"]);
  const r0 = splitEverywhere(f, { keyColumn: 0, columns: 2 }, "a|nil\nb\\|c|d\\|e\nnil|nilx\n");
  deepEqual(r0.keys, ["a", "b|c", null]);
  // A backslash ending the last line is dropped, and not part of the raw field: NULL.
  const n = fmt("(NULL 'N')");
  deepEqual(splitEverywhere(n, { keyColumn: 1, columns: 2 }, "a\tN\\").keys, [null]);
  deepEqual(splitEverywhere(n, { keyColumn: 1, columns: 2 }, "a\tNN\\").keys, ["NN"]);
  // An empty NULL string.
  const e = fmt("(NULL '')");
  deepEqual(splitEverywhere(e, { keyColumn: 0, columns: 2 }, "\tx\n\\N\tx\n").keys, [null, "N"]);
});

Deno.test("text: \\r\\n and \\r line endings, mixed endings refused", () => {
  const f = fmt("");
  const crlf = splitEverywhere(f, key0, "1\ta\r\n2\tb\r\n\\.\r\nignored");
  deepEqual(crlf.rows, ["1\ta\r\n", "2\tb\r\n"]);
  deepEqual(crlf.keys, ["1", "2"]);
  equal(crlf.ended, true);
  const cr = splitEverywhere(f, key0, "1\ta\r2\tb\r");
  deepEqual(cr.rows, ["1\ta\r", "2\tb\r"]);
  // A last line without terminator is a row; a lone \r at the very end is a CR line end.
  deepEqual(splitEverywhere(f, key0, "1\ta\n2\tb").rows, ["1\ta\n", "2\tb"]);
  deepEqual(splitEverywhere(f, key0, "1\ta\r").rows, ["1\ta\r"]);
  throwsEverywhere(f, key0, "1\ta\n2\r\n", "literal carriage return found in data", 2);
  throwsEverywhere(f, key0, "1\ta\r\n2\n", "literal newline found in data", 2);
  throwsEverywhere(f, key0, "1\ta\r2\n", "literal newline found in data", 2);
  throwsEverywhere(f, key0, "1\ta\r\n2\rx\r\n", "literal carriage return found in data", 2);
});

Deno.test("text: the end marker, anywhere on a line", () => {
  const f = fmt("");
  const r = splitEverywhere(f, key0, "1\ta\n\\.\n2\tb\n");
  deepEqual(r.rows, ["1\ta\n"]);
  equal(r.ended, true);
  // Data before \. on the same line is the last row (PostgreSQL 15).
  const mid = splitEverywhere(f, key0, "1\ta\n2\tb\\.\nx");
  deepEqual(mid.rows, ["1\ta\n", "2\tb\\.\n"]);
  deepEqual(mid.keys, ["1", "2"]);
  // \\. is an escaped backslash and a dot.
  deepEqual(splitEverywhere(f, key0, "\\\\.\t\n").keys, ["\\."]);
  throwsEverywhere(f, key0, "1\ta\n\\.x\n", "end-of-copy marker corrupt", 2);
  throwsEverywhere(f, key0, "1\ta\n\\.", "end-of-copy marker corrupt", 2);
  throwsEverywhere(
    f,
    key0,
    "1\ta\r\n\\.\n",
    "end-of-copy marker does not match previous newline style",
    2,
  );
  throwsEverywhere(
    f,
    key0,
    "1\ta\n\\.\r",
    "end-of-copy marker does not match previous newline style",
  );
});

Deno.test("text: HEADER is the first line", () => {
  const f = fmt("(HEADER)");
  const r = splitEverywhere(f, key0, "id\tname\n1\ta\n2\tb\n");
  equal(r.header, "id\tname\n");
  deepEqual(r.rows, ["1\ta\n", "2\tb\n"]);
  deepEqual(r.keys, ["1", "2"]);
  const empty = splitEverywhere(f, key0, "");
  equal(empty.header, null);
  deepEqual(empty.rows, []);
  equal(splitEverywhere(f, key0, "only header").header, "only header");
});

Deno.test("text: missing key column", () => {
  throwsEverywhere(fmt(""), { keyColumn: 2, columns: 3 }, "1\t2\n", "missing data for column 3", 1);
  throwsEverywhere(
    fmt(""),
    { keyColumn: 2, columns: 3, columnNames: ["a", "b", "c"] },
    "1\t2\t3\n4\n",
    'missing data for column "b"',
    2,
  );
});

Deno.test("CSV: quotes, escapes, quoted newlines, NULL", () => {
  const f = fmt("(FORMAT csv)");
  const input = '1,a,b\n"2","x,y",\n,"",""\n"4""5","line1\nline2\r\nline3",z\n"",,\n' +
    '"a""b"c"d",1,2\n';
  const r = splitEverywhere(f, key0, input);
  deepEqual(r.rows, [
    "1,a,b\n",
    '"2","x,y",\n',
    ',"",""\n',
    '"4""5","line1\nline2\r\nline3",z\n',
    '"",,\n',
    '"a""b"c"d",1,2\n',
  ]);
  deepEqual(r.keys, ["1", "2", null, '4"5', "", 'a"bcd']);
  const r1 = splitEverywhere(f, { keyColumn: 1, columns: 3 }, input);
  deepEqual(r1.keys, ["a", "x,y", "", "line1\nline2\r\nline3", null, "1"]);
  const r2 = splitEverywhere(f, { keyColumn: 2, columns: 3 }, input);
  deepEqual(r2.keys, ["b", null, "", "z", null, "2"]);
});

Deno.test("CSV: custom delimiter, quote, escape, NULL", () => {
  const f = fmt("(FORMAT csv, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL 'NULL')");
  const input = "'a;b';NULL\n'it\\'s';'NULL'\nNULL;'x\\\\y'\n'\\x';\"q\n";
  const r = splitEverywhere(f, { keyColumn: 0, columns: 2 }, input);
  deepEqual(r.rows, ["'a;b';NULL\n", "'it\\'s';'NULL'\n", "NULL;'x\\\\y'\n", "'\\x';\"q\n"]);
  deepEqual(r.keys, ["a;b", "it's", null, "\\x"]);
  const r1 = splitEverywhere(f, { keyColumn: 1, columns: 2 }, input);
  deepEqual(r1.keys, [null, "NULL", "x\\y", '"q']);
});

Deno.test("CSV: FORCE_NOT_NULL and FORCE_NULL on the key", () => {
  const names = ["a", "b"];
  const input = ',1\n"",2\nx,3\n';
  const plain = fmt("(FORMAT csv)", names);
  deepEqual(splitEverywhere(plain, { keyColumn: 0, columns: 2, columnNames: names }, input).keys, [
    null,
    "",
    "x",
  ]);
  const notNull = fmt("(FORMAT csv, FORCE_NOT_NULL (a))", names);
  deepEqual(
    splitEverywhere(notNull, { keyColumn: 0, columns: 2, columnNames: names }, input).keys,
    ["", "", "x"],
  );
  const forceNull = fmt("(FORMAT csv, FORCE_NULL (a))", names);
  deepEqual(
    splitEverywhere(forceNull, { keyColumn: 0, columns: 2, columnNames: names }, input).keys,
    [null, null, "x"],
  );
  const star = fmt("(FORMAT csv, FORCE_NULL *, NULL 'x')", names);
  deepEqual(splitEverywhere(star, { keyColumn: 0, columns: 2 }, input).keys, ["", "", null]);
  // Another column in the list: the key is untouched.
  const other = fmt("(FORMAT csv, FORCE_NOT_NULL (b))", names);
  deepEqual(
    splitEverywhere(other, { keyColumn: 0, columns: 2, columnNames: names }, input).keys,
    [null, "", "x"],
  );
});

Deno.test("CSV: line endings, end marker alone on a line, header", () => {
  const f = fmt("(FORMAT csv, HEADER)");
  const r = splitEverywhere(f, key0, 'id,"na\r\nme"\r\n1,a\r\n"\\.",x\r\n\\.x,y\r\n\\.\r\nrest');
  equal(r.header, 'id,"na\r\nme"\r\n');
  deepEqual(r.rows, ["1,a\r\n", '"\\.",x\r\n', "\\.x,y\r\n"]);
  deepEqual(r.keys, ["1", "\\.", "\\.x"]);
  equal(r.ended, true);
  const cr = splitEverywhere(fmt("(FORMAT csv)"), key0, '1,"a\rb"\r2,c\r');
  deepEqual(cr.rows, ['1,"a\rb"\r', "2,c\r"]);
  // \. at the very end without a newline is data in CSV.
  const last = splitEverywhere(fmt("(FORMAT csv)"), key0, "1\n\\.");
  deepEqual(last.rows, ["1\n", "\\."]);
  equal(last.ended, false);
  throwsEverywhere(
    fmt("(FORMAT csv)"),
    key0,
    "1\n2\r\n",
    "unquoted carriage return found in data",
    2,
  );
  throwsEverywhere(fmt("(FORMAT csv)"), key0, "1\r\n2\n", "unquoted newline found in data", 2);
});

Deno.test("CSV: an unterminated quote at the end", () => {
  throwsEverywhere(fmt("(FORMAT csv)"), key0, '1,a\n"2,b\n', "unterminated CSV quoted field", 2);
  throwsEverywhere(
    fmt("(FORMAT csv)"),
    { keyColumn: 1, columns: 2 },
    '1,a\n"2,b',
    "unterminated CSV quoted field",
    2,
  );
});

Deno.test("ENCODING: keys decoded from the file's encoding; SJIS trailing bytes are not ASCII", () => {
  const latin1 = fmt("(ENCODING 'LATIN1')");
  const r = splitEverywhere(
    latin1,
    key0,
    Uint8Array.from([0xe9, 0x9, 0x61, 0xa, 0x5c, 0x78, 0x34, 0x31, 0xa]),
  );
  deepEqual(r.keys, ["é", "A"]);
  // The session's client_encoding when the COPY names none.
  const session = splitEverywhere(
    fmt(""),
    { ...key0, clientEncoding: "LATIN1" },
    Uint8Array.from([0xe9, 0xa]),
  );
  deepEqual(session.keys, ["é"]);
  const named = splitEverywhere(
    fmt("(ENCODING 'UTF8')"),
    { ...key0, clientEncoding: "LATIN1" },
    Uint8Array.from([0xc3, 0xa9, 0xa]),
  );
  deepEqual(named.keys, ["é"]);
  const win = fmt("(FORMAT csv, ENCODING 'WIN1252')");
  deepEqual(splitEverywhere(win, key0, Uint8Array.from([0x80, 0x2c, 0x31, 0xa])).keys, ["€"]);
  // SJIS "表" is 0x95 0x5C: its second byte is a backslash.
  const sjis = fmt("(ENCODING 'SJIS')");
  const bytes = Uint8Array.from([0x95, 0x5c, 0x09, 0x31, 0x0a, 0x32, 0x09, 0x95, 0x5c, 0x0a]);
  const s = splitEverywhere(sjis, { keyColumn: 0, columns: 2 }, bytes);
  deepEqual(s.keys, ["表", "2"]);
  deepEqual(s.rows.length, 2);
  // GB18030 four-byte characters and JOHAB three-byte ones cut anywhere.
  const gb = Uint8Array.from([0x81, 0x30, 0x81, 0x30, 0x5c, 0x0a, 0x31, 0x0a, 0x32, 0x0a]);
  for (const f of [fmt("(ENCODING 'GB18030')"), fmt("(FORMAT csv, ENCODING 'GB18030')")]) {
    const g = splitEverywhere(f, { keyColumn: 0, columns: 1 }, gb);
    deepEqual(g.rows.length, f.format === "csv" ? 3 : 2);
    equal(g.keys[0], f.format === "csv" ? "\u0080\\" : "\u0080\n1");
  }
  const johab = Uint8Array.from([0x8f, 0xa1, 0xa1, 0x0a, 0x31, 0x0a]);
  deepEqual(
    splitEverywhere(fmt(""), { keyColumn: null, columns: 1, clientEncoding: "JOHAB" }, johab).rows
      .length,
    2,
  );
  const sCsv = splitEverywhere(fmt("(FORMAT csv, ENCODING 'SJIS', QUOTE '\\')"), key0, bytes);
  deepEqual(sCsv.keys, ["表\t1", "2\t表"]);
});

/** A binary COPY file: header, tuples of fields (null = SQL NULL), trailer. */
function binaryFile(
  tuples: (Uint8Array | null)[][],
  options: { trailer?: boolean; extension?: number } = {},
): Uint8Array {
  const parts: number[] = [0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a, 0xff, 0x0d, 0x0a, 0x00];
  const int = (v: number, n: number): void => {
    for (let i = n - 1; i >= 0; i--) parts.push((v >> (8 * i)) & 0xff);
  };
  int(0, 4);
  const ext = options.extension ?? 0;
  int(ext, 4);
  for (let i = 0; i < ext; i++) parts.push(7);
  for (const t of tuples) {
    int(t.length, 2);
    for (const f of t) {
      if (f === null) int(-1, 4);
      else {
        int(f.length, 4);
        for (const b of f) parts.push(b);
      }
    }
  }
  if (options.trailer !== false) int(-1, 2);
  return Uint8Array.from(parts);
}

function be(v: bigint, n: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = BigInt.asUintN(n * 8, v);
  for (let i = n - 1; i >= 0; i--) {
    out[i] = Number(x & 0xffn);
    x >>= 8n;
  }
  return out;
}

Deno.test("binary: header, tuples, keys by type, trailer", () => {
  const f = fmt("(FORMAT binary)");
  const uuid = Uint8Array.from(Array.from({ length: 16 }, (_, i) => i * 17));
  const file = binaryFile([
    [be(1n, 8), enc.encode("a")],
    [be(-2n, 8), null],
    [null, enc.encode("x")],
    [be(9007199254740993n, 8), new Uint8Array(0)],
    [be(-9223372036854775808n, 8), new Uint8Array(0)],
  ], { extension: 3 });
  const r = splitEverywhere(f, { keyColumn: 0, columns: 2, keyType: "bigint" }, file);
  equal(r.header!.length, 19 + 3);
  equal(r.rows.length, 5);
  deepEqual(r.keys, ["1", "-2", null, "9007199254740993", "-9223372036854775808"]);
  equal(r.ended, true);
  equal(latin1(file), r.header! + r.rows.join("") + "\xff\xff");
  const ints = binaryFile([[be(-5n, 2)], [be(70000n, 4)], [be(-1n, 4)]]);
  deepEqual(split(f, { keyColumn: 0, columns: 1, keyType: "bigint" }, ints).keys, [
    "-5",
    "70000",
    "-1",
  ]);
  deepEqual(split(f, { keyColumn: 0, columns: 1 }, ints).keys, ["-5", "70000", "-1"]);
  const texts = binaryFile([[enc.encode("abcd")], [enc.encode("héllo")], [uuid]]);
  deepEqual(split(f, { keyColumn: 0, columns: 1, keyType: "varchar" }, texts).keys, [
    "abcd",
    "héllo",
    dec.decode(uuid),
  ]);
  deepEqual(split(f, { keyColumn: 0, columns: 1, keyType: "uuid" }, binaryFile([[uuid]])).keys, [
    "00112233-4455-6677-8899-aabbccddeeff",
  ]);
  deepEqual(split(f, { keyColumn: 0, columns: 1 }, binaryFile([[uuid]])).keys, [
    "00112233-4455-6677-8899-aabbccddeeff",
  ]);
  // Text in binary COPY is in the session's client_encoding.
  deepEqual(
    split(
      f,
      { keyColumn: 0, columns: 1, keyType: "varchar", clientEncoding: "LATIN1" },
      binaryFile([[Uint8Array.from([0xe9])]]),
    )
      .keys,
    ["é"],
  );
  // No trailer: PostgreSQL takes the end of data as the end.
  const noTrailer = splitEverywhere(
    f,
    { keyColumn: 1, columns: 2 },
    binaryFile([[null, be(3n, 4)]], { trailer: false }),
  );
  deepEqual(noTrailer.keys, ["3"]);
  equal(noTrailer.ended, false);
});

Deno.test("binary: malformed input", () => {
  const f = fmt("(FORMAT binary)");
  const o = { keyColumn: 0, columns: 2 };
  throwsEverywhere(f, o, "PGCOPY\n\xff\r\n\x01", "COPY file signature not recognized", 0);
  throwsEverywhere(f, o, "", "COPY file signature not recognized", 0);
  const good = binaryFile([[be(1n, 8), null]]);
  throwsEverywhere(f, o, good.slice(0, 13), "invalid COPY file header (missing flags)", 0);
  throwsEverywhere(f, o, good.slice(0, 17), "invalid COPY file header (missing length)", 0);
  const oids = good.slice();
  oids[12] = 1;
  throwsEverywhere(f, o, oids, "invalid COPY file header (WITH OIDS)", 0);
  throwsEverywhere(f, o, binaryFile([[be(1n, 8)]]), "row field count is 1, expected 2", 1);
  throwsEverywhere(
    f,
    o,
    binaryFile([[be(1n, 8), null], [be(1n, 8), null, null]]),
    "row field count is 3, expected 2",
    2,
  );
  const truncated = binaryFile([[be(1n, 8), null], [be(2n, 8), null]], { trailer: false });
  for (let cut = 1; cut < 4 + 8 + 4; cut++) {
    throwsEverywhere(
      f,
      o,
      truncated.slice(0, truncated.length - cut),
      "unexpected EOF in COPY data",
      2,
    );
  }
  // One stray byte is taken as the end, as PostgreSQL does.
  const stray = new Uint8Array([...truncated, 0]);
  deepEqual(split(f, o, stray).keys, ["1", "2"]);
  throwsEverywhere(f, o, new Uint8Array([...good, 1]), "received copy data after EOF marker");
  const badSize = binaryFile([[be(1n, 8), null]], { trailer: false });
  badSize[badSize.length - 1] = 0xfe; // length -2
  throwsEverywhere(f, o, badSize, "invalid field size", 1);
  throwsCopy(
    () =>
      split(
        f,
        { keyColumn: 0, columns: 2, keyType: "bigint" },
        binaryFile([[enc.encode("abc"), null]]),
      ),
    "incorrect binary data format",
  );
});

Deno.test("rows handed out stay intact while later pushes arrive", () => {
  const s = new CopyInSplitter(fmt(""), key0);
  const kept: Uint8Array[] = [];
  const take = (r: ReturnType<CopyInSplitter["push"]>): void => {
    for (let i = 0; i < r.starts.length; i++) kept.push(r.data.subarray(r.starts[i], r.ends[i]));
  };
  const rows = Array.from({ length: 200 }, (_, i) => `${i}\t${"x".repeat(i % 37)}\n`);
  const all = enc.encode(rows.join(""));
  for (let at = 0; at < all.length; at += 7) take(s.push(all.subarray(at, at + 7)));
  take(s.finish());
  deepEqual(kept.map((b) => dec.decode(b)), rows);
});

Deno.test("end() refuses a last line without terminator, finish() returns it", () => {
  const s = new CopyInSplitter(fmt(""), key0);
  deepEqual(s.push(enc.encode("1\ta\n2\tb")).keys, ["1"]);
  throwsCopy(() => s.end(), "the last line of the COPY data has no line terminator", 2);
  const t = new CopyInSplitter(fmt(""), key0);
  t.push(enc.encode("1\ta\n"));
  t.end();
  const u = new CopyInSplitter(fmt("(FORMAT csv)"), key0);
  u.push(enc.encode('1,a\n"2'));
  throwsCopy(() => u.end(), "unterminated CSV quoted field", 2);
});

Deno.test("a row of megabytes in small pieces is scanned once (no quadratic rescans)", () => {
  const big = "x".repeat(8 << 20);
  const cases: [CopyFormat, Uint8Array][] = [
    [fmt(""), enc.encode(`1\t${big}\n2\ty\n`)],
    [fmt("(FORMAT csv)"), enc.encode(`1,"${big}\n${big}"\n2,y\n`)],
    [fmt("(FORMAT binary)"), binaryFile([[be(1n, 8), enc.encode(big)], [be(2n, 8), null]])],
  ];
  for (const [f, bytes] of cases) {
    const started = Date.now();
    const s = new CopyInSplitter(f, { keyColumn: 0, columns: 2 });
    const keys: (string | null)[] = [];
    for (let at = 0; at < bytes.length; at += 1024) {
      keys.push(...s.push(bytes.subarray(at, at + 1024)).keys);
    }
    s.end();
    deepEqual(keys, ["1", "2"]);
    // Linear: well under a second here; a rescan per piece would take minutes.
    ok(Date.now() - started < 20_000, `${f.format}: ${Date.now() - started} ms`);
  }
});

Deno.test("constructor refuses a key column outside the columns", () => {
  throws(() => new CopyInSplitter(fmt(""), { keyColumn: 3, columns: 3 }), RangeError);
});

// ---- A reference: PostgreSQL 15's CopyReadLineText and CopyReadAttributes{Text,CSV}, written
// plainly over the whole input, against which random inputs are compared. ----

type Reference =
  | {
    header: string | null;
    rows: string[];
    rowLines: number[];
    keys: (string | null)[];
    ended: boolean;
  }
  | { error: string; row: number; line: number };

function reference(f: CopyFormat, d: Uint8Array, keyColumn: number): Reference {
  const csv = f.format === "csv";
  const quote = csv ? f.quote.charCodeAt(0) : -1;
  const escape = csv ? f.escape.charCodeAt(0) : -1;
  const lineEscape = escape === quote ? -1 : escape;
  const len = d.length;
  let eol: "unknown" | "nl" | "cr" | "crnl" = "unknown";
  let pos = 0;
  let lineNo = 0; // PostgreSQL's cur_lineno
  class Fail extends Error {}
  const fail = (m: string): never => {
    throw new Fail(m);
  };
  /** One line: content end, line end, whether it ended the data. */
  const readLine = (): { content: number; end: number; marker: boolean } => {
    let p = pos;
    let inQuote = false;
    let lastWasEsc = false;
    let first = true;
    lineNo++;
    for (;;) {
      if (p >= len) {
        if (csv && inQuote) fail("unterminated CSV quoted field");
        return { content: len, end: len, marker: false };
      }
      const at = p;
      const c = d[p++];
      if (csv) {
        if (inQuote && c === lineEscape) lastWasEsc = !lastWasEsc;
        if (c === quote && !lastWasEsc) inQuote = !inQuote;
        if (c !== lineEscape) lastWasEsc = false;
        if (inQuote && c === (eol === "nl" ? 10 : 13)) lineNo++;
      }
      if (c === 13 && (!csv || !inQuote)) {
        if (eol === "unknown" || eol === "crnl") {
          if (p < len && d[p] === 10) {
            eol = "crnl";
            return { content: at, end: p + 1, marker: false };
          }
          if (eol === "crnl") {
            fail(
              csv
                ? "unquoted carriage return found in data"
                : "literal carriage return found in data",
            );
          }
          eol = "cr";
        } else if (eol === "nl") {
          fail(
            csv
              ? "unquoted carriage return found in data"
              : "literal carriage return found in data",
          );
        }
        return { content: at, end: p, marker: false };
      }
      if (c === 10 && (!csv || !inQuote)) {
        if (eol === "cr" || eol === "crnl") {
          fail(csv ? "unquoted newline found in data" : "literal newline found in data");
        }
        eol = "nl";
        return { content: at, end: p, marker: false };
      }
      if (c === 92 && (!csv || first)) {
        if (p >= len) return { content: len, end: len, marker: false };
        if (d[p] === 46) {
          let q = p + 1;
          let marker = true;
          if (eol === "crnl") {
            const c2 = q < len ? d[q] : 0;
            q++;
            if (c2 === 10) {
              if (!csv) fail("end-of-copy marker does not match previous newline style");
              marker = false;
            } else if (c2 !== 13) {
              if (!csv) fail("end-of-copy marker corrupt");
              marker = false;
            }
          }
          if (marker) {
            const c2 = q < len ? d[q] : 0;
            q++;
            if (c2 !== 13 && c2 !== 10) {
              if (!csv) fail("end-of-copy marker corrupt");
              marker = false;
            } else if (
              (eol === "nl" && c2 !== 10) || (eol === "crnl" && c2 !== 10) ||
              (eol === "cr" && c2 !== 13)
            ) {
              fail("end-of-copy marker does not match previous newline style");
            }
          }
          if (marker) return { content: at, end: Math.min(q, len), marker: true };
        } else if (!csv) p++;
      }
      first = false;
    }
  };
  const fields = (s: number, e: number): (Uint8Array | null)[] => {
    const out: (Uint8Array | null)[] = [];
    const delim = f.delimiter.charCodeAt(0);
    const nul = enc.encode(f.null);
    let p = s;
    for (;;) {
      const start = p;
      const bytes: number[] = [];
      let sawQuote = false;
      let foundDelim = false;
      let rawEnd = p;
      if (!csv) {
        for (;;) {
          rawEnd = p;
          if (p >= e) break;
          let c = d[p++];
          if (c === delim) {
            foundDelim = true;
            break;
          }
          if (c === 92) {
            if (p >= e) break;
            c = d[p++];
            if (c >= 48 && c <= 55) {
              let v = c - 48;
              if (p < e && d[p] >= 48 && d[p] <= 55) {
                v = v * 8 + d[p++] - 48;
                if (p < e && d[p] >= 48 && d[p] <= 55) v = v * 8 + d[p++] - 48;
              }
              c = v & 255;
            } else if (c === 120 && p < e && /[0-9a-fA-F]/.test(String.fromCharCode(d[p]))) {
              let v = parseInt(String.fromCharCode(d[p++]), 16);
              if (p < e && /[0-9a-fA-F]/.test(String.fromCharCode(d[p]))) {
                v = v * 16 + parseInt(String.fromCharCode(d[p++]), 16);
              }
              c = v;
            } else {
              c = ({ 98: 8, 102: 12, 110: 10, 114: 13, 116: 9, 118: 11 } as Record<number, number>)[
                c
              ] ?? c;
            }
          }
          bytes.push(c);
        }
      } else {
        let inQuote = false;
        for (;;) {
          rawEnd = p;
          if (p >= e) {
            if (inQuote) fail("unterminated CSV quoted field");
            break;
          }
          const c = d[p++];
          if (inQuote) {
            if (c === escape && p < e && (d[p] === escape || d[p] === quote)) bytes.push(d[p++]);
            else if (c === quote) inQuote = false;
            else bytes.push(c);
          } else if (c === delim) {
            foundDelim = true;
            break;
          } else if (c === quote) {
            sawQuote = true;
            inQuote = true;
          } else bytes.push(c);
        }
      }
      const raw = d.subarray(start, rawEnd);
      const isNull = !sawQuote && raw.length === nul.length && raw.every((b, i) => b === nul[i]);
      out.push(isNull ? null : Uint8Array.from(bytes));
      if (!foundDelim) return out;
    }
  };
  const rows: string[] = [];
  const rowLines: number[] = [];
  const keys: (string | null)[] = [];
  let header: string | null = null;
  let ended = false;
  let inHeader = f.header !== false;
  try {
    if (inHeader) {
      const l = readLine();
      inHeader = false;
      if (l.end > pos || l.marker) header = latin1(d.subarray(pos, l.marker ? l.content : l.end));
      pos = l.end;
      if (l.marker) ended = true;
    }
    while (!ended) {
      if (pos >= len) break;
      const l = readLine();
      if (l.marker) {
        ended = true;
        if (l.content === pos) break;
      }
      const fs = fields(pos, l.content);
      if (fs.length <= keyColumn) fail(`missing data for column ${fs.length + 1}`);
      const k = fs[keyColumn];
      keys.push(k === null ? null : dec.decode(k));
      rows.push(latin1(d.subarray(pos, l.end)));
      rowLines.push(lineNo);
      pos = l.end;
    }
  } catch (e) {
    if (e instanceof Fail) {
      return {
        error: e.message,
        row: inHeader ? 0 : rows.length + 1,
        line: lineNo,
      };
    }
    throw e;
  }
  return { header, rows, rowLines, keys, ended };
}

Deno.test("random input: the splitter at any cuts agrees with a plain reference of PostgreSQL's parser", () => {
  const alphabet = [
    "a",
    "b",
    ",",
    "\t",
    '"',
    "'",
    "\\",
    ".",
    "\n",
    "\r",
    "\r\n",
    "N",
    "\\.\n",
    "\\N",
    "é",
    "0",
  ];
  const formats = [
    fmt(""),
    fmt("(DELIMITER ',', NULL 'N')"),
    fmt("(HEADER)"),
    fmt("(FORMAT csv)"),
    fmt("(FORMAT csv, QUOTE '''', ESCAPE '\\', NULL 'N')"),
    fmt("(FORMAT csv, ESCAPE '\\', HEADER)"),
  ];
  let seed = 7;
  const rand = (): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x80000000;
  };
  let compared = 0;
  for (const f of formats) {
    for (let i = 0; i < 2000; i++) {
      let text = "";
      const n = Math.floor(rand() * 24);
      for (let j = 0; j < n; j++) text += alphabet[Math.floor(rand() * alphabet.length)];
      const bytes = enc.encode(text);
      const keyColumn = Math.floor(rand() * 2);
      const want = reference(f, bytes, keyColumn);
      const cutSets = [
        [],
        [Math.floor(rand() * bytes.length)],
        Array.from({ length: bytes.length }, (_, k) => k),
      ];
      for (const cuts of cutSets) {
        let got: Reference;
        try {
          const s = split(f, { keyColumn, columns: 2 }, bytes, cuts);
          got = {
            header: s.header,
            rows: s.rows,
            rowLines: s.rowLines,
            keys: s.keys,
            ended: s.ended,
          };
        } catch (e) {
          if (!(e instanceof CopyFormatError)) throw e;
          got = { error: e.message, row: e.row, line: e.line };
        }
        deepEqual(got, want, `${JSON.stringify(f)} ${JSON.stringify(text)} cuts ${cuts.length}`);
        compared++;
      }
    }
  }
  ok(compared > 20000);
});
