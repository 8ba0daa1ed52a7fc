/**
 * COPY FROM STDIN input split into whole rows, for sending each row to its shard: the format a
 * COPY statement declares (its options, checked as PostgreSQL checks them: copy_format.ts,
 * re-exported here), and a splitter that turns the client's CopyData payloads into rows, each
 * kept byte for byte as the client sent it, with the value of the sharding key column decoded to
 * PostgreSQL's text form.
 *
 * The row boundaries follow PostgreSQL 15's COPY FROM (copyfromparse.c): text format with
 * backslash escapes (a backslash quotes the next byte, even a newline; `\.` ends the data), CSV
 * with quotes and escapes (newlines inside quotes; `\.` alone on a line ends the data), the line
 * ending (`\n`, `\r\n` or `\r`) fixed by the first line, and binary tuples. Pure: no I/O.
 *
 * @module
 */

import { type CopyFormat, DECODER_LABELS, encodingName } from "./copy_format.ts";

export { type CopyFormat, type CopyFormatInvalid, copyFormatOf } from "./copy_format.ts";

const LF = 10;
const CR = 13;
const BACKSLASH = 92;
const DOT = 46;

const utf8Encoder = new TextEncoder();

/** Rows a push completed. */
export interface CopyRows {
  /** Rows are data.subarray(starts[i], ends[i]), each whole (terminator included), forwarded unchanged. */
  data: Uint8Array;
  /** Where each row starts in `data`. */
  starts: number[];
  /** Where each row ends in `data` (exclusive). */
  ends: number[];
  /** Each row's key column in PostgreSQL's text form (binary ints/uuid/text decoded), null for SQL NULL; empty array when no key column. */
  keys: (string | null)[];
  /** Client row number (1-based data line/tuple, header excluded) of the first row. */
  firstRow: number;
  /**
   * The line PostgreSQL names in errors about the first row (`COPY t, line N`, its last line:
   * the header and, in CSV, newlines inside quotes count; binary: the tuple number). Set by push
   * and finish.
   */
  firstLine?: number;
  /**
   * Lines each row takes in PostgreSQL's count, when some row of this push takes more than one
   * (CSV newlines inside quotes): row i is named line firstLine + lines[1] + ... + lines[i].
   * Null when every row is one line. Set by push and finish.
   */
  lines?: number[] | null;
}

/** Malformed COPY data, as PostgreSQL would report it (SQLSTATE 22P04 mostly). */
export class CopyFormatError extends Error {
  /** SQLSTATE: 22P04 (bad copy file format), 22P03 (binary data), 22021 (encoding). */
  readonly code: string;
  /** The client's data row (1-based, header excluded) it is in; 0 for the header. */
  readonly row: number;
  /**
   * The line PostgreSQL would name (`COPY t, line N`): the header counts, and in CSV so do
   * newlines inside quotes; binary: the tuple (0 for the file header).
   */
  readonly line: number;

  constructor(message: string, options: { code?: string; row: number; line?: number }) {
    super(message);
    this.name = "CopyFormatError";
    this.code = options.code ?? "22P04";
    this.row = options.row;
    this.line = options.line ?? options.row;
  }
}

/** Options of {@linkcode CopyInSplitter}. */
export interface CopyInSplitterOptions {
  /** The key column's index in the COPY's column list; null when rows need no key. */
  keyColumn: number | null;
  /** How many columns the COPY has (binary tuples must have that many fields). */
  columns: number;
  /**
   * The key column's type, for binary COPY (a 4-byte field could be an int4 or 4 bytes of
   * text): `bigint` decodes 2/4/8-byte integers, `varchar` UTF-8 text, `uuid` 16 bytes. Unset:
   * guessed by width (2/4/8 bytes → integer, 16 → uuid, else text).
   */
  keyType?: "bigint" | "varchar" | "uuid";
  /** The COPY's column names: FORCE_NOT_NULL / FORCE_NULL lists apply to the key by name. */
  columnNames?: string[];
  /**
   * The session's client_encoding (PostgreSQL's name), the data's encoding when the COPY has no
   * ENCODING option; UTF-8 when unset. Encodings the splitter cannot decode count as UTF-8.
   */
  clientEncoding?: string;
}

const EOL_UNKNOWN = 0;
const EOL_NL = 1;
const EOL_CR = 2;
const EOL_CRNL = 3;

const INCOMPLETE = -1;
const LINE = 0;
const MARKER = 1;

const BINARY_SIGNATURE = [0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a, 0xff, 0x0d, 0x0a, 0x00];

const EMPTY = new Uint8Array(0);

/** Decodes bytes in an encoding to a string. */
type Decode = (bytes: Uint8Array) => string;

function decoderFor(encoding: string | null): { decode: Decode; utf8: boolean } {
  const canonical = encoding === null ? "UTF8" : encodingName(encoding) ?? "UTF8";
  if (canonical === "LATIN1") {
    return {
      decode: (b) => {
        let s = "";
        for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
        return s;
      },
      utf8: false,
    };
  }
  const label = DECODER_LABELS[canonical] ?? "utf-8";
  const d = new TextDecoder(label);
  return { decode: (b) => d.decode(b), utf8: label === "utf-8" };
}

/** Bytes of a multibyte character starting at `p` in encodings whose trailing bytes can be ASCII. */
type MbLen = (d: Uint8Array, p: number, len: number) => number;

function mbLenFor(encoding: string | null): MbLen | null {
  const canonical = encoding === null ? "UTF8" : encodingName(encoding) ?? "UTF8";
  switch (canonical) {
    case "SJIS":
    case "SHIFT_JIS_2004":
      return (d, p) => (d[p] >= 0xa1 && d[p] <= 0xdf ? 1 : 2);
    case "JOHAB":
      return (d, p) => (d[p] === 0x8f ? 3 : 2);
    case "BIG5":
    case "GBK":
    case "UHC":
      return () => 2;
    case "GB18030":
      return (d, p, len) => (p + 1 < len && d[p + 1] >= 0x30 && d[p + 1] <= 0x39 ? 4 : 2);
    default:
      return null;
  }
}

const utf8Decoder = new TextDecoder();

/** UTF-8 bytes as a string: short ASCII by hand (cheaper than a TextDecoder call). */
function textOf(d: Uint8Array, start: number, end: number): string {
  if (end - start <= 24) {
    let s = "";
    for (let i = start; i < end; i++) {
      const c = d[i];
      if (c >= 0x80) return utf8Decoder.decode(d.subarray(start, end));
      s += String.fromCharCode(c);
    }
    return s;
  }
  return utf8Decoder.decode(d.subarray(start, end));
}

function sameBytes(d: Uint8Array, start: number, b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (d[start + i] !== b[i]) return false;
  return true;
}

function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

const HEX = "0123456789abcdef";

/**
 * Splits a COPY FROM STDIN data stream (the CopyData payloads, in order) into whole rows, each
 * kept byte for byte, and decodes each row's key column.
 */
export class CopyInSplitter {
  #header: Uint8Array | null = null;
  #ended = false;

  readonly #format: CopyFormat;
  readonly #csv: boolean;
  readonly #binary: boolean;
  readonly #keyColumn: number;
  readonly #columns: number;
  readonly #keyType: "bigint" | "varchar" | "uuid" | undefined;
  readonly #columnNames: string[] | undefined;
  readonly #delim: number;
  readonly #quote: number;
  readonly #escape: number;
  readonly #null: Uint8Array;
  readonly #forceNotNull: boolean;
  readonly #forceNull: boolean;
  readonly #decode: Decode;
  /** Binary text keys: in the session's client_encoding (PostgreSQL's textrecv converts from it). */
  readonly #binaryDecode: Decode | null;
  readonly #mbLen: MbLen | null;
  /** Line content re-encoded to UTF-8 before fields are parsed (PostgreSQL converts lines first). */
  readonly #convert: boolean;

  #headerPending: boolean;
  #eol = EOL_UNKNOWN;
  /** Data rows completed so far. */
  #rows = 0;
  /** Bytes of an unfinished row (or header), from its start: #carry[0, #carryLen). */
  #carry: Uint8Array = EMPTY;
  #carryLen = 0;
  /** Where to resume scanning in the carry. */
  #resume = 0;
  /** Binary: carry length needed before parsing again. */
  #need = 0;
  #inQuote = false;
  #lastWasEsc = false;
  /** CSV: newlines inside quotes so far (PostgreSQL counts them as lines in its messages). */
  #extraLines = 0;
  /** #extraLines when the current row started. */
  #rowExtraStart = 0;
  /** Set by the line scanners: end of the line's content, and of the line with its terminator. */
  #contentEnd = 0;
  #lineEnd = 0;
  /** Positions of the next backslash, CR, quote, LF and escape at or after the scan position in the buffer being scanned (its length when none). */
  #nextBackslash = -1;
  #nextCr = -1;
  #nextQuote = -1;
  #nextLf = -1;
  #nextEscape = -1;

  /** Bytes every shard gets once before any row: the binary signature+flags+extension, or the text/CSV HEADER line; null until complete / when none. */
  get header(): Uint8Array | null {
    return this.#header;
  }

  /** True after the end marker (text/CSV `\.` line, binary trailer): later bytes are ignored. */
  get ended(): boolean {
    return this.#ended;
  }

  constructor(format: CopyFormat, options: CopyInSplitterOptions) {
    this.#format = format;
    this.#csv = format.format === "csv";
    this.#binary = format.format === "binary";
    const key = options.keyColumn;
    if (key !== null && (!Number.isInteger(key) || key < 0 || key >= options.columns)) {
      throw new RangeError(`key column ${key} is not one of the ${options.columns} columns`);
    }
    this.#keyColumn = key ?? -1;
    this.#columns = options.columns;
    this.#keyType = options.keyType;
    this.#columnNames = options.columnNames;
    this.#delim = format.delimiter.charCodeAt(0);
    this.#quote = this.#csv ? format.quote.charCodeAt(0) : -1;
    this.#escape = this.#csv ? format.escape.charCodeAt(0) : -1;
    this.#null = utf8Encoder.encode(format.null);
    const keyName = key === null ? undefined : options.columnNames?.[key];
    const listed = (list: string[] | "*"): boolean =>
      list === "*" || (keyName !== undefined && list.includes(keyName));
    this.#forceNotNull = this.#csv && listed(format.forceNotNull);
    this.#forceNull = this.#csv && listed(format.forceNull);
    const encoding = format.encoding ?? options.clientEncoding ?? null;
    const { decode, utf8 } = decoderFor(encoding);
    this.#decode = decode;
    this.#convert = !utf8;
    this.#mbLen = mbLenFor(encoding);
    const session = decoderFor(options.clientEncoding ?? null);
    this.#binaryDecode = session.utf8 ? null : session.decode;
    this.#headerPending = format.header !== false || this.#binary;
  }

  /** Feeds one CopyData payload; returns the rows completed by it (rows may span payloads). */
  push(chunk: Uint8Array): CopyRows {
    const firstRow = this.#rows + 1;
    if (this.#ended) {
      if (this.#binary && chunk.length > 0) {
        throw this.#error("received copy data after EOF marker");
      }
      return this.#noRows();
    }
    let data = chunk;
    let from = 0;
    const fromCarry = this.#carryLen > 0;
    if (fromCarry) {
      this.#append(chunk);
      // A view of exactly the carried bytes: scans never see the spare capacity.
      data = this.#carry.subarray(0, this.#carryLen);
      from = this.#resume;
      if (this.#binary && data.length < this.#need) return this.#noRows();
    }
    const out: CopyRows = { data, starts: [], ends: [], keys: [], firstRow, lines: null };
    const rest = this.#binary
      ? this.#splitBinary(data, data.length, out)
      : this.#splitLines(data, from, false, out);
    this.#keep(data, rest, fromCarry, out.starts.length > 0);
    // Binary rows are tuples, one line each; text and CSV rows set it as they come.
    if (out.firstLine === undefined) out.firstLine = this.#binary ? firstRow : this.#nextLine();
    return out;
  }

  #noRows(): CopyRows {
    const firstRow = this.#rows + 1;
    const firstLine = this.#nextLine();
    return { data: EMPTY, starts: [], ends: [], keys: [], firstRow, firstLine, lines: null };
  }

  /**
   * At CopyDone: a partial row left is an error (CopyFormatError), including a last text/CSV
   * line without its line terminator, which PostgreSQL takes as a row: use
   * {@linkcode CopyInSplitter.finish} to get that row instead.
   */
  end(): void {
    const last = this.finish();
    if (last.starts.length > 0) {
      throw new CopyFormatError("the last line of the COPY data has no line terminator", {
        row: last.firstRow,
      });
    }
  }

  /**
   * At CopyDone, instead of {@linkcode CopyInSplitter.end}: a last line without its terminator
   * is a row (PostgreSQL takes it), returned here, unterminated (the last bytes any shard gets);
   * anything else left unfinished (an open CSV quote, a partial binary tuple, an incomplete
   * binary header, a broken end marker) is a {@linkcode CopyFormatError}.
   */
  finish(): CopyRows {
    const firstRow = this.#rows + 1;
    const out: CopyRows = {
      data: EMPTY,
      starts: [],
      ends: [],
      keys: [],
      firstRow,
      firstLine: this.#nextLine(),
      lines: null,
    };
    if (this.#ended) return out;
    const data = this.#carry;
    const len = this.#carryLen;
    if (this.#binary) {
      if (this.#headerPending) {
        this.#binaryHeader(data, len, true);
      }
      // One stray byte is no field count: PostgreSQL takes it as the end.
      if (len >= 2) {
        throw new CopyFormatError("unexpected EOF in COPY data", { row: this.#rows + 1 });
      }
      this.#carryLen = 0;
      return out;
    }
    out.data = data.subarray(0, len);
    this.#splitLines(out.data, this.#resume, true, out);
    this.#carry = EMPTY;
    this.#carryLen = 0;
    return out;
  }

  /** Appends a chunk to the carry, growing it (never reusing a buffer handed out in rows). */
  #append(chunk: Uint8Array): void {
    const need = this.#carryLen + chunk.length;
    if (need > this.#carry.length) {
      const grown = new Uint8Array(Math.max(need, this.#carry.length * 2, 4096));
      grown.set(this.#carry.subarray(0, this.#carryLen));
      this.#carry = grown;
    }
    this.#carry.set(chunk, this.#carryLen);
    this.#carryLen = need;
  }

  /** Keeps data[rest, len) as the next carry (a fresh buffer when data was handed out). */
  #keep(data: Uint8Array, rest: number, fromCarry: boolean, handedOut: boolean): void {
    const len = data.length;
    if (rest >= len || this.#ended) {
      if (fromCarry && handedOut) this.#carry = EMPTY;
      this.#carryLen = 0;
      this.#resume = 0;
      return;
    }
    if (fromCarry && rest === 0 && !handedOut) return; // still one unfinished row
    const left = len - rest;
    const fresh = new Uint8Array(Math.max(left * 2, 4096));
    fresh.set(data.subarray(rest, len));
    this.#carry = fresh;
    this.#carryLen = left;
    this.#resume -= rest;
    this.#need -= rest;
  }

  // ---- text and CSV ----

  /**
   * Splits the lines of `d`, which starts at a row; scanning resumes at `from` (where the last
   * push stopped in that row). Returns where the unfinished rest starts.
   */
  #splitLines(d: Uint8Array, from: number, eof: boolean, out: CopyRows): number {
    const len = d.length;
    let rowStart = 0;
    let p = from;
    this.#nextBackslash = -1;
    this.#nextCr = -1;
    this.#nextQuote = -1;
    this.#nextLf = -1;
    this.#nextEscape = -1;
    const withKey = this.#keyColumn >= 0;
    const starts = out.starts;
    const ends = out.ends;
    const keys = out.keys;
    for (;;) {
      const r = this.#csv
        ? this.#scanCsv(d, rowStart, p, len, eof)
        : this.#scanText(d, p, len, eof);
      if (r === INCOMPLETE) {
        this.#resume = this.#lineEnd; // the scanners leave the resume point there
        return rowStart;
      }
      const contentEnd = this.#contentEnd;
      const lineEnd = this.#lineEnd;
      this.#inQuote = false;
      this.#lastWasEsc = false;
      if (r === MARKER) {
        this.#ended = true;
        if (this.#headerPending) {
          this.#header = d.slice(rowStart, contentEnd);
          this.#headerPending = false;
        } else if (contentEnd > rowStart) {
          // Text format: data before a `\.` on the same line is the last row.
          if (withKey) keys.push(this.#key(d, rowStart, contentEnd));
          this.#countLines(out);
          starts.push(rowStart);
          ends.push(lineEnd);
          this.#rows++;
        }
        this.#resume = 0;
        return len;
      }
      if (eof && lineEnd === rowStart) return len; // nothing left
      if (this.#headerPending) {
        this.#header = d.slice(rowStart, lineEnd);
        this.#headerPending = false;
        this.#rowExtraStart = this.#extraLines;
      } else {
        if (withKey) keys.push(this.#key(d, rowStart, contentEnd));
        this.#countLines(out);
        starts.push(rowStart);
        ends.push(lineEnd);
        this.#rows++;
      }
      rowStart = lineEnd;
      p = lineEnd;
      if (eof && p >= len) return len;
    }
  }

  /** Before a row is added to `out`: its PostgreSQL line count (and `out.firstLine` for the first). */
  #countLines(out: CopyRows): void {
    const n = out.starts.length;
    if (n === 0) out.firstLine = this.#nextLine();
    const rowLines = 1 + this.#extraLines - this.#rowExtraStart;
    this.#rowExtraStart = this.#extraLines;
    if (out.lines) out.lines.push(rowLines);
    else if (rowLines !== 1) {
      out.lines = new Array<number>(n).fill(1);
      out.lines.push(rowLines);
    }
  }

  /** PostgreSQL's line number for the row being read (its newlines inside quotes so far counted). */
  #nextLine(): number {
    if (this.#binary) return this.#rows + 1;
    const headerLine = this.#format.header !== false && !this.#headerPending ? 1 : 0;
    return this.#rows + headerLine + 1 + this.#extraLines;
  }

  #error(message: string, code = "22P04"): CopyFormatError {
    const row = this.#headerPending ? 0 : this.#rows + 1;
    return new CopyFormatError(message, { code, row, line: this.#binary ? row : this.#nextLine() });
  }

  /**
   * Text format: the end of the line starting at `s`, scanning from `p`. LINE or MARKER with
   * #contentEnd/#lineEnd set, or INCOMPLETE with #lineEnd = where to resume.
   */
  #scanText(d: Uint8Array, p: number, len: number, eof: boolean): number {
    const eol = this.#eol;
    if ((eol !== EOL_NL && eol !== EOL_CRNL) || this.#mbLen !== null) {
      return this.#scanTextSlow(d, p, len, eof);
    }
    // Fast path: jump between backslashes and line ends with indexOf; anything unusual (an end
    // marker, a byte to look ahead at past the end, a stray CR or LF) goes byte by byte.
    for (;;) {
      if (this.#nextBackslash < p) this.#nextBackslash = indexOrLen(d, BACKSLASH, p, len);
      if (this.#nextLf < p) this.#nextLf = indexOrLen(d, LF, p, len);
      if (this.#nextCr < p) this.#nextCr = indexOrLen(d, CR, p, len);
      const bs = this.#nextBackslash;
      const nl = this.#nextLf;
      const cr = this.#nextCr;
      if (bs < nl && bs < cr) {
        if (bs + 1 >= len || d[bs + 1] === DOT) return this.#scanTextSlow(d, bs, len, eof);
        p = bs + 2; // the escaped byte, a newline too
        continue;
      }
      if (eol === EOL_NL) {
        if (nl < cr) {
          this.#contentEnd = nl;
          this.#lineEnd = nl + 1;
          return LINE;
        }
      } else if (cr + 1 === nl && nl < len) {
        this.#contentEnd = cr;
        this.#lineEnd = nl + 1;
        return LINE;
      }
      if (nl < len || cr < len) return this.#scanTextSlow(d, nl < cr ? nl : cr, len, eof);
      return this.#incomplete(len, eof);
    }
  }

  #incomplete(p: number, eof: boolean): number {
    if (eof) {
      this.#contentEnd = p;
      this.#lineEnd = p;
      return LINE;
    }
    this.#lineEnd = p;
    return INCOMPLETE;
  }

  #scanTextSlow(d: Uint8Array, p: number, len: number, eof: boolean): number {
    const mbLen = this.#mbLen;
    for (;;) {
      if (p >= len) return this.#incomplete(len, eof);
      const c = d[p];
      if (c === LF) {
        if (this.#eol === EOL_CR || this.#eol === EOL_CRNL) {
          throw this.#error("literal newline found in data");
        }
        this.#eol = EOL_NL;
        this.#contentEnd = p;
        this.#lineEnd = p + 1;
        return LINE;
      }
      if (c === CR) {
        if (this.#eol === EOL_UNKNOWN || this.#eol === EOL_CRNL) {
          if (p + 1 >= len && !eof) return this.#incomplete(p, false);
          if (p + 1 < len && d[p + 1] === LF) {
            this.#eol = EOL_CRNL;
            this.#contentEnd = p;
            this.#lineEnd = p + 2;
            return LINE;
          }
          if (this.#eol === EOL_CRNL) throw this.#error("literal carriage return found in data");
          this.#eol = EOL_CR;
        } else if (this.#eol === EOL_NL) {
          throw this.#error("literal carriage return found in data");
        }
        this.#contentEnd = p;
        this.#lineEnd = p + 1;
        return LINE;
      }
      if (c === BACKSLASH) {
        if (p + 1 >= len) {
          if (!eof) return this.#incomplete(p, false);
          return this.#incomplete(len, true);
        }
        if (d[p + 1] === DOT) {
          let q = p + 2;
          if (this.#eol === EOL_CRNL) {
            if (q >= len && !eof) return this.#incomplete(p, false);
            const c2 = q < len ? d[q] : 0;
            q++;
            if (c2 === LF) {
              throw this.#error("end-of-copy marker does not match previous newline style");
            }
            if (c2 !== CR) throw this.#error("end-of-copy marker corrupt");
          }
          if (q >= len && !eof) return this.#incomplete(p, false);
          const c2 = q < len ? d[q] : 0;
          q++;
          if (c2 !== CR && c2 !== LF) throw this.#error("end-of-copy marker corrupt");
          if (
            (this.#eol === EOL_NL && c2 !== LF) || (this.#eol === EOL_CRNL && c2 !== LF) ||
            (this.#eol === EOL_CR && c2 !== CR)
          ) {
            throw this.#error("end-of-copy marker does not match previous newline style");
          }
          this.#contentEnd = p;
          this.#lineEnd = q;
          return MARKER;
        }
        p += 2; // a backslash quotes the next byte, a newline too
        continue;
      }
      if (mbLen !== null && c >= 0x80) {
        // The whole character must be here (its length may depend on its second byte).
        if (p + 1 >= len && !eof) return this.#incomplete(p, false);
        const n = mbLen(d, p, len);
        if (p + n > len && !eof) return this.#incomplete(p, false);
        p += n;
        continue;
      }
      p++;
    }
  }

  /** CSV: as #scanText, with quotes (newlines inside them are data) and `\.` alone on a line. */
  #scanCsv(d: Uint8Array, s: number, p: number, len: number, eof: boolean): number {
    const eol = this.#eol;
    if (
      eol === EOL_UNKNOWN || eol === EOL_CR || this.#mbLen !== null || this.#lastWasEsc ||
      (p === s && d[s] === BACKSLASH)
    ) {
      return this.#scanCsvSlow(d, s, p, len, eof);
    }
    // Fast path: jump from quote to quote and to the line end with indexOf.
    const quote = this.#quote;
    const escape = this.#escape === quote ? -1 : this.#escape;
    for (;;) {
      if (this.#inQuote) {
        if (this.#nextQuote < p) this.#nextQuote = indexOrLen(d, quote, p, len);
        if (escape >= 0) {
          if (this.#nextEscape < p) this.#nextEscape = indexOrLen(d, escape, p, len);
          const e = this.#nextEscape;
          if (e < this.#nextQuote) {
            this.#countQuotedNewlines(d, p, e);
            if (e + 1 >= len) {
              if (eof) throw this.#error("unterminated CSV quoted field");
              return this.#incomplete(e, false);
            }
            const next = d[e + 1];
            p = next === quote || next === escape ? e + 2 : e + 1;
            continue;
          }
        }
        const q = this.#nextQuote;
        this.#countQuotedNewlines(d, p, q);
        if (q >= len) {
          if (eof) throw this.#error("unterminated CSV quoted field");
          return this.#incomplete(len, false);
        }
        this.#inQuote = false;
        p = q + 1;
        continue;
      }
      if (this.#nextQuote < p) this.#nextQuote = indexOrLen(d, quote, p, len);
      if (this.#nextLf < p) this.#nextLf = indexOrLen(d, LF, p, len);
      if (this.#nextCr < p) this.#nextCr = indexOrLen(d, CR, p, len);
      const q = this.#nextQuote;
      const nl = this.#nextLf;
      const cr = this.#nextCr;
      if (q < nl && q < cr) {
        this.#inQuote = true;
        p = q + 1;
        continue;
      }
      if (nl < cr && eol === EOL_NL) {
        this.#contentEnd = nl;
        this.#lineEnd = nl + 1;
        return LINE;
      }
      // A CR, or a LF in a CRLF file: the byte-wise scanner decides (and checks).
      if (nl < len || cr < len) return this.#scanCsvSlow(d, s, nl < cr ? nl : cr, len, eof);
      return this.#incomplete(len, eof);
    }
  }

  /** Counts the line ends (LF, or CR in a CRLF file) in d[from, to), inside quotes. */
  #countQuotedNewlines(d: Uint8Array, from: number, to: number): void {
    const len = d.length;
    if (this.#eol === EOL_NL) {
      if (this.#nextLf < from) this.#nextLf = indexOrLen(d, LF, from, len);
      while (this.#nextLf < to) {
        this.#extraLines++;
        this.#nextLf = indexOrLen(d, LF, this.#nextLf + 1, len);
      }
    } else {
      if (this.#nextCr < from) this.#nextCr = indexOrLen(d, CR, from, len);
      while (this.#nextCr < to) {
        this.#extraLines++;
        this.#nextCr = indexOrLen(d, CR, this.#nextCr + 1, len);
      }
    }
  }

  #scanCsvSlow(d: Uint8Array, s: number, p: number, len: number, eof: boolean): number {
    const quote = this.#quote;
    // As PostgreSQL: an escape that is the quote is just a toggle.
    const escape = this.#escape === quote ? -1 : this.#escape;
    const mbLen = this.#mbLen;
    for (;;) {
      if (p >= len) {
        if (eof && this.#inQuote) throw this.#error("unterminated CSV quoted field");
        return this.#incomplete(len, eof);
      }
      const c = d[p];
      if (c === BACKSLASH && p === s) {
        // `\.` alone on a line ends the data; decided before any quote state changes.
        if (p + 1 >= len && !eof) return this.#incomplete(p, false);
        if (p + 1 < len && d[p + 1] === DOT) {
          let q = p + 2;
          let marker = true;
          if (this.#eol === EOL_CRNL) {
            if (q >= len && !eof) return this.#incomplete(p, false);
            const c2 = q < len ? d[q] : 0;
            q++;
            if (c2 !== CR) marker = false;
          }
          if (marker) {
            if (q >= len && !eof) return this.#incomplete(p, false);
            const c2 = q < len ? d[q] : 0;
            q++;
            if (c2 !== CR && c2 !== LF) marker = false;
            else if (
              (this.#eol === EOL_NL && c2 !== LF) || (this.#eol === EOL_CRNL && c2 !== LF) ||
              (this.#eol === EOL_CR && c2 !== CR)
            ) {
              throw this.#error("end-of-copy marker does not match previous newline style");
            }
          }
          if (marker) {
            this.#contentEnd = p;
            this.#lineEnd = q;
            return MARKER;
          }
        }
      }
      if (c === CR && p + 1 >= len && !eof) return this.#incomplete(p, false);
      if (mbLen !== null && c >= 0x80 && !eof) {
        // The whole character must be here before any state changes.
        if (p + 1 >= len || p + mbLen(d, p, len) > len) return this.#incomplete(p, false);
      }
      if (this.#inQuote && c === escape) this.#lastWasEsc = !this.#lastWasEsc;
      if (c === quote && !this.#lastWasEsc) this.#inQuote = !this.#inQuote;
      if (c !== escape) this.#lastWasEsc = false;
      if (this.#inQuote && c === (this.#eol === EOL_NL ? LF : CR)) this.#extraLines++;
      if (!this.#inQuote) {
        if (c === CR) {
          if (this.#eol === EOL_UNKNOWN || this.#eol === EOL_CRNL) {
            if (p + 1 < len && d[p + 1] === LF) {
              this.#eol = EOL_CRNL;
              this.#contentEnd = p;
              this.#lineEnd = p + 2;
              return LINE;
            }
            if (this.#eol === EOL_CRNL) throw this.#error("unquoted carriage return found in data");
            this.#eol = EOL_CR;
          } else if (this.#eol === EOL_NL) {
            throw this.#error("unquoted carriage return found in data");
          }
          this.#contentEnd = p;
          this.#lineEnd = p + 1;
          return LINE;
        }
        if (c === LF) {
          if (this.#eol === EOL_CR || this.#eol === EOL_CRNL) {
            throw this.#error("unquoted newline found in data");
          }
          this.#eol = EOL_NL;
          this.#contentEnd = p;
          this.#lineEnd = p + 1;
          return LINE;
        }
      }
      if (mbLen !== null && c >= 0x80) {
        p += mbLen(d, p, len);
        continue;
      }
      p++;
    }
  }

  // ---- keys of text and CSV rows ----

  /** The key column of the line d[s, e) (its content, without terminator). */
  #key(d: Uint8Array, s: number, e: number): string | null {
    if (this.#convert) {
      // PostgreSQL parses fields after converting the line to the server's encoding (UTF-8).
      d = utf8Encoder.encode(this.#decode(d.subarray(s, e)));
      s = 0;
      e = d.length;
    }
    return this.#csv ? this.#csvKey(d, s, e) : this.#textKey(d, s, e);
  }

  /** CopyReadAttributesText for the key column only. */
  #textKey(d: Uint8Array, s: number, e: number): string | null {
    const delim = this.#delim;
    let p = s;
    for (let f = 0; f < this.#keyColumn; f++) {
      for (;;) {
        if (p >= e) throw this.#missing(f + 1);
        const c = d[p++];
        if (c === delim) break;
        if (c === BACKSLASH) p++;
      }
    }
    const start = p;
    let escaped = false;
    while (p < e) {
      const c = d[p];
      if (c === delim) break;
      if (c === BACKSLASH) {
        // A backslash ending the line is dropped (and not part of the raw field).
        if (p + 1 >= e) break;
        escaped = true;
        p += 2;
      } else p++;
    }
    const end = p;
    const nul = this.#null;
    if (end - start === nul.length && sameBytes(d, start, nul)) return null;
    if (!escaped) return textOf(d, start, end);
    return utf8Decoder.decode(unescapeText(d, start, end));
  }

  /** PostgreSQL's error for a row that ends before column `index` (0-based). */
  #missing(index: number): CopyFormatError {
    const name = this.#columnNames?.[index];
    return this.#error(`missing data for column ${name === undefined ? index + 1 : `"${name}"`}`);
  }

  /** CopyReadAttributesCSV for the key column only, with FORCE_NOT_NULL / FORCE_NULL. */
  #csvKey(d: Uint8Array, s: number, e: number): string | null {
    const delim = this.#delim;
    const quote = this.#quote;
    const escape = this.#escape;
    let p = s;
    for (let f = 0; f < this.#keyColumn; f++) {
      let inQuote = false;
      for (;;) {
        if (p >= e) {
          if (inQuote) throw this.#error("unterminated CSV quoted field");
          throw this.#missing(f + 1);
        }
        const c = d[p++];
        if (inQuote) {
          if (c === escape && p < e && (d[p] === escape || d[p] === quote)) p++;
          else if (c === quote) inQuote = false;
        } else if (c === delim) break;
        else if (c === quote) inQuote = true;
      }
    }
    const start = p;
    while (p < e) {
      const c = d[p];
      if (c === delim || c === quote) break;
      p++;
    }
    let text: string;
    if (p >= e || d[p] === delim) {
      // Unquoted: the NULL string as a whole field is NULL.
      const nul = this.#null;
      if (p - start === nul.length && sameBytes(d, start, nul)) {
        return this.#forceNotNull ? this.#format.null : null;
      }
      text = textOf(d, start, p);
    } else {
      text = this.#quotedCsvKey(d, start, e);
    }
    if (this.#forceNull && text === this.#format.null) return null;
    return text;
  }

  /** A CSV field with quotes, from its start: its value; `"simple"` fields without indexOf-free scans. */
  #quotedCsvKey(d: Uint8Array, start: number, e: number): string {
    const quote = this.#quote;
    if (d[start] === quote) {
      const close = d.indexOf(quote, start + 1);
      if (
        close >= 0 && close < e && (close + 1 === e || d[close + 1] === this.#delim) &&
        (this.#escape === quote || !includes(d, this.#escape, start + 1, close))
      ) {
        return textOf(d, start + 1, close);
      }
    }
    return utf8Decoder.decode(this.#quotedCsv(d, start, e));
  }

  /** A CSV field with quotes, from its start: its value's bytes. */
  #quotedCsv(d: Uint8Array, p: number, e: number): Uint8Array {
    const delim = this.#delim;
    const quote = this.#quote;
    const escape = this.#escape;
    const out = new Uint8Array(e - p);
    let n = 0;
    for (;;) {
      // Unquoted part.
      for (;;) {
        if (p >= e) return out.subarray(0, n);
        const c = d[p++];
        if (c === delim) return out.subarray(0, n);
        if (c === quote) break;
        out[n++] = c;
      }
      // Quoted part.
      for (;;) {
        if (p >= e) throw this.#error("unterminated CSV quoted field");
        const c = d[p++];
        if (c === escape && p < e && (d[p] === escape || d[p] === quote)) {
          out[n++] = d[p++];
          continue;
        }
        if (c === quote) break;
        out[n++] = c;
      }
    }
  }

  // ---- binary ----

  /** Parses the binary header from d[0, len); false when more bytes are needed. */
  #binaryHeader(d: Uint8Array, len: number, eof: boolean): boolean {
    for (let i = 0; i < 11 && i < len; i++) {
      if (d[i] !== BINARY_SIGNATURE[i]) throw this.#error("COPY file signature not recognized");
    }
    if (len < 11) {
      if (eof) throw this.#error("COPY file signature not recognized");
      this.#need = 11;
      return false;
    }
    if (len < 15) {
      if (eof) throw this.#error("invalid COPY file header (missing flags)");
      this.#need = 15;
      return false;
    }
    const flags = int32(d, 11);
    if ((flags & (1 << 16)) !== 0) throw this.#error("invalid COPY file header (WITH OIDS)");
    if ((flags & ~(1 << 16)) >>> 16 !== 0) {
      throw this.#error("unrecognized critical flags in COPY file header");
    }
    if (len < 19) {
      if (eof) throw this.#error("invalid COPY file header (missing length)");
      this.#need = 19;
      return false;
    }
    const extension = int32(d, 15);
    if (extension < 0) throw this.#error("invalid COPY file header (missing length)");
    if (len < 19 + extension) {
      if (eof) throw this.#error("invalid COPY file header (wrong length)");
      this.#need = 19 + extension;
      return false;
    }
    this.#header = d.slice(0, 19 + extension);
    this.#headerPending = false;
    return true;
  }

  /** Splits binary tuples from d[0, len) (d starts at a tuple or the header); returns where the unfinished rest starts. */
  #splitBinary(d: Uint8Array, len: number, out: CopyRows): number {
    let p = 0;
    if (this.#headerPending) {
      if (!this.#binaryHeader(d, len, false)) return 0;
      p = this.#header!.length;
    }
    const columns = this.#columns;
    const key = this.#keyColumn;
    const starts = out.starts;
    const ends = out.ends;
    const keys = out.keys;
    while (p < len) {
      if (p + 2 > len) {
        this.#need = p + 2;
        return p;
      }
      const count = ((d[p] << 24) >> 16) | d[p + 1];
      if (count === -1) {
        this.#ended = true;
        if (p + 2 < len) {
          throw this.#error("received copy data after EOF marker");
        }
        return len;
      }
      if (count !== columns) {
        throw this.#error(`row field count is ${count}, expected ${columns}`);
      }
      let q = p + 2;
      let keyStart = -1;
      let keyLength = -1;
      let f = 0;
      for (; f < count; f++) {
        if (q + 4 > len) break;
        const size = int32(d, q);
        q += 4;
        if (size === -1) continue;
        if (size < 0) throw this.#error("invalid field size");
        if (f === key) {
          keyStart = q;
          keyLength = size;
        }
        q += size;
        if (q > len) break;
      }
      if (f < count || q > len) {
        this.#need = q > len ? q : q + 4;
        return p;
      }
      if (key >= 0) keys.push(keyLength < 0 ? null : this.#binaryKey(d, keyStart, keyLength));
      starts.push(p);
      ends.push(q);
      this.#rows++;
      p = q;
    }
    return len;
  }

  #binaryKey(d: Uint8Array, start: number, length: number): string {
    const type = this.#keyType;
    if (
      type === "varchar" ||
      (type === undefined && length !== 2 && length !== 4 && length !== 8 && length !== 16)
    ) {
      if (this.#binaryDecode !== null) {
        return this.#binaryDecode(d.subarray(start, start + length));
      }
      return textOf(d, start, start + length);
    }
    if (type === "uuid" || (type === undefined && length === 16)) {
      if (length !== 16) throw this.#error("incorrect binary data format", "22P03");
      let s = "";
      for (let i = 0; i < 16; i++) {
        if (i === 4 || i === 6 || i === 8 || i === 10) s += "-";
        const b = d[start + i];
        s += HEX[b >> 4] + HEX[b & 15];
      }
      return s;
    }
    if (length === 2) return String((d[start] << 24) >> 16 | d[start + 1]);
    if (length === 4) return String(int32(d, start));
    if (length === 8) {
      const hi = int32(d, start);
      const lo = int32(d, start + 4) >>> 0;
      if (hi >= -0x200000 && hi < 0x200000) return String(hi * 4294967296 + lo);
      return ((BigInt(hi) << 32n) | BigInt(lo)).toString();
    }
    throw this.#error("incorrect binary data format", "22P03");
  }
}

function int32(d: Uint8Array, p: number): number {
  return (d[p] << 24) | (d[p + 1] << 16) | (d[p + 2] << 8) | d[p + 3];
}

function includes(d: Uint8Array, byte: number, from: number, to: number): boolean {
  const i = d.indexOf(byte, from);
  return i >= 0 && i < to;
}

function indexOrLen(d: Uint8Array, byte: number, from: number, len: number): number {
  const i = d.indexOf(byte, from);
  return i < 0 || i > len ? len : i;
}

/** A text-format field's bytes with its backslash escapes decoded (CopyReadAttributesText). */
function unescapeText(d: Uint8Array, start: number, end: number): Uint8Array {
  const out = new Uint8Array(end - start);
  let n = 0;
  let p = start;
  while (p < end) {
    let c = d[p++];
    if (c === BACKSLASH) {
      if (p >= end) break;
      c = d[p++];
      switch (c) {
        case 48:
        case 49:
        case 50:
        case 51:
        case 52:
        case 53:
        case 54:
        case 55: {
          let v = c - 48;
          if (p < end && d[p] >= 48 && d[p] <= 55) {
            v = (v << 3) + (d[p++] - 48);
            if (p < end && d[p] >= 48 && d[p] <= 55) v = (v << 3) + (d[p++] - 48);
          }
          c = v & 0xff;
          break;
        }
        case 120: { // x
          if (p < end && hexDigit(d[p]) >= 0) {
            let v = hexDigit(d[p++]);
            if (p < end && hexDigit(d[p]) >= 0) v = (v << 4) + hexDigit(d[p++]);
            c = v & 0xff;
          }
          break;
        }
        case 98:
          c = 8;
          break; // b
        case 102:
          c = 12;
          break; // f
        case 110:
          c = 10;
          break; // n
        case 114:
          c = 13;
          break; // r
        case 116:
          c = 9;
          break; // t
        case 118:
          c = 11;
          break; // v
      }
    }
    out[n++] = c;
  }
  return out.subarray(0, n);
}
