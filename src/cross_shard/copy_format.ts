/**
 * A COPY statement's data format from its options (libpg-query's `CopyStmt.options`), with
 * PostgreSQL's defaults, checked as PostgreSQL 15 checks a COPY FROM's options; and the encoding
 * names PostgreSQL knows, for decoding keys.
 *
 * @module
 */

/** A COPY's data format, from its options, with PostgreSQL's defaults filled in. */
export interface CopyFormat {
  /** FORMAT. */
  format: "text" | "csv" | "binary";
  /** DELIMITER: one byte (tab in text, `,` in CSV; empty in binary). */
  delimiter: string;
  /** NULL: the string that stands for SQL NULL (`\N` in text, empty in CSV). */
  null: string;
  /** HEADER: the first line is a header (skipped; with `match` PostgreSQL checks its names). */
  header: boolean | "match";
  /** QUOTE (CSV; `"` by default, empty otherwise). */
  quote: string;
  /** ESCAPE (CSV; the quote by default, empty otherwise). */
  escape: string;
  /** FORCE_NOT_NULL column names, or `*` for all (CSV). */
  forceNotNull: string[] | "*";
  /** FORCE_NULL column names, or `*` for all (CSV). */
  forceNull: string[] | "*";
  /** ENCODING (PostgreSQL's name, as written); null: the client's, UTF-8 assumed. */
  encoding: string | null;
}

/** COPY's defaults: text format, tab-delimited, `\N` for NULL, no header, no options. */
export const TEXT_COPY_FORMAT: CopyFormat = {
  format: "text",
  delimiter: "\t",
  null: "\\N",
  header: false,
  quote: "",
  escape: "",
  forceNotNull: [],
  forceNull: [],
  encoding: null,
};

/** A COPY statement's options PostgreSQL refuses: its message and SQLSTATE. */
export interface CopyFormatInvalid {
  /** PostgreSQL's message. */
  error: string;
  /** SQLSTATE (42601, 22023, 0A000, 42P10). */
  code: string;
}

interface DefElemNode {
  defname?: string;
  arg?: Record<string, unknown>;
}

/** `defGetString`: the option's argument as text; undefined when it has none. */
function argString(arg: Record<string, unknown> | undefined): string | undefined {
  if (arg === undefined || arg === null) return undefined;
  const s = arg.String as { sval?: string } | undefined;
  if (s) return s.sval ?? "";
  const i = arg.Integer as { ival?: number } | undefined;
  if (i) return String(i.ival ?? 0);
  const f = arg.Float as { fval?: string } | undefined;
  if (f) return f.fval ?? "0";
  const b = arg.Boolean as { boolval?: boolean } | undefined;
  if (b) return b.boolval ? "true" : "false";
  if (arg.A_Star) return "*";
  const l = arg.List as { items?: Record<string, unknown>[] } | undefined;
  if (l) return (l.items ?? []).map((x) => argString(x) ?? "").join(".");
  return "";
}

const ENCODINGS: Record<string, string> = {
  // clean_encoding_name (lower case, alphanumerics only) → PostgreSQL's canonical name.
  utf8: "UTF8",
  unicode: "UTF8",
  sqlascii: "SQL_ASCII",
  latin1: "LATIN1",
  iso88591: "LATIN1",
  latin2: "LATIN2",
  iso88592: "LATIN2",
  latin3: "LATIN3",
  iso88593: "LATIN3",
  latin4: "LATIN4",
  iso88594: "LATIN4",
  latin5: "LATIN5",
  iso88599: "LATIN5",
  latin6: "LATIN6",
  iso885910: "LATIN6",
  latin7: "LATIN7",
  iso885913: "LATIN7",
  latin8: "LATIN8",
  iso885914: "LATIN8",
  latin9: "LATIN9",
  iso885915: "LATIN9",
  latin10: "LATIN10",
  iso885916: "LATIN10",
  iso88595: "ISO_8859_5",
  iso88596: "ISO_8859_6",
  iso88597: "ISO_8859_7",
  iso88598: "ISO_8859_8",
  win1250: "WIN1250",
  windows1250: "WIN1250",
  win1251: "WIN1251",
  windows1251: "WIN1251",
  win: "WIN1251",
  win1252: "WIN1252",
  windows1252: "WIN1252",
  win1253: "WIN1253",
  windows1253: "WIN1253",
  win1254: "WIN1254",
  windows1254: "WIN1254",
  win1255: "WIN1255",
  windows1255: "WIN1255",
  win1256: "WIN1256",
  windows1256: "WIN1256",
  win1257: "WIN1257",
  windows1257: "WIN1257",
  win1258: "WIN1258",
  windows1258: "WIN1258",
  abc: "WIN1258",
  tcvn: "WIN1258",
  tcvn5712: "WIN1258",
  vscii: "WIN1258",
  win866: "WIN866",
  windows866: "WIN866",
  alt: "WIN866",
  win874: "WIN874",
  windows874: "WIN874",
  koi8: "KOI8R",
  koi8r: "KOI8R",
  koi8u: "KOI8U",
  eucjp: "EUC_JP",
  euccn: "EUC_CN",
  euckr: "EUC_KR",
  euctw: "EUC_TW",
  eucjis2004: "EUC_JIS_2004",
  sjis: "SJIS",
  shiftjis: "SJIS",
  mskanji: "SJIS",
  shiftjis2004: "SHIFT_JIS_2004",
  big5: "BIG5",
  gbk: "GBK",
  cp936: "GBK",
  gb18030: "GB18030",
  uhc: "UHC",
  cp949: "UHC",
  johab: "JOHAB",
  muleinternal: "MULE_INTERNAL",
};

/** PostgreSQL encoding → WHATWG TextDecoder label ("latin1" is decoded by hand: WHATWG's is 1252). */
export const DECODER_LABELS: Record<string, string> = {
  UTF8: "utf-8",
  SQL_ASCII: "utf-8",
  LATIN2: "iso-8859-2",
  LATIN3: "iso-8859-3",
  LATIN4: "iso-8859-4",
  LATIN5: "windows-1254", // WHATWG maps iso-8859-9 to windows-1254
  LATIN6: "iso-8859-10",
  LATIN7: "iso-8859-13",
  LATIN8: "iso-8859-14",
  LATIN9: "iso-8859-15",
  LATIN10: "iso-8859-16",
  ISO_8859_5: "iso-8859-5",
  ISO_8859_6: "iso-8859-6",
  ISO_8859_7: "iso-8859-7",
  ISO_8859_8: "iso-8859-8",
  WIN1250: "windows-1250",
  WIN1251: "windows-1251",
  WIN1252: "windows-1252",
  WIN1253: "windows-1253",
  WIN1254: "windows-1254",
  WIN1255: "windows-1255",
  WIN1256: "windows-1256",
  WIN1257: "windows-1257",
  WIN1258: "windows-1258",
  WIN866: "ibm866",
  WIN874: "windows-874",
  KOI8R: "koi8-r",
  KOI8U: "koi8-u",
  EUC_JP: "euc-jp",
  EUC_CN: "gbk",
  EUC_KR: "euc-kr",
  SJIS: "shift_jis",
  BIG5: "big5",
  GBK: "gbk",
  GB18030: "gb18030",
  UHC: "euc-kr", // WHATWG's euc-kr is windows-949, i.e. UHC
};

/** PostgreSQL's canonical encoding name for an ENCODING option, or null when it knows none. */
export function encodingName(name: string): string | null {
  const clean = name.toLowerCase().replace(/[^a-z0-9]/g, "");
  return ENCODINGS[clean] ?? null;
}

const DELIMITERS_REFUSED_IN_TEXT = "\\.abcdefghijklmnopqrstuvwxyz0123456789";
const utf8Encoder = new TextEncoder();

function byteLength(s: string): number {
  return utf8Encoder.encode(s).length;
}

/**
 * The format of a COPY statement from its options as libpg-query parses them
 * (`CopyStmt.options`, DefElem nodes), checked as PostgreSQL 15's ProcessCopyOptions checks a
 * COPY FROM; `{ error, code }` with PostgreSQL's message when it would refuse them.
 *
 * @param options CopyStmt.options (undefined entries and non-DefElem nodes are skipped).
 * @param columns The COPY's columns (its list, or the table's): FORCE_NOT_NULL and FORCE_NULL
 *   names must be among them (not checked when empty).
 */
export function copyFormatOf(
  options: unknown[],
  columns: string[],
): CopyFormat | CopyFormatInvalid {
  let format: CopyFormat["format"] | undefined;
  let delimiter: string | undefined;
  let nullString: string | undefined;
  let header: boolean | "match" | undefined;
  let quote: string | undefined;
  let escape: string | undefined;
  let forceQuote = false;
  let forceNotNull: string[] | "*" | undefined;
  let forceNull: string[] | "*" | undefined;
  let encoding: string | undefined;
  let freeze = false;
  const conflicting = { error: "conflicting or redundant options", code: "42601" };
  for (const o of options ?? []) {
    const d = (o as { DefElem?: DefElemNode } | undefined)?.DefElem;
    if (!d) continue;
    const name = d.defname ?? "";
    const value = argString(d.arg);
    const needsValue = { error: `${name} requires a parameter`, code: "42601" };
    switch (name) {
      case "format":
        if (format !== undefined) return conflicting;
        if (value === undefined) return needsValue;
        if (value !== "text" && value !== "csv" && value !== "binary") {
          return { error: `COPY format "${value}" not recognized`, code: "22023" };
        }
        format = value;
        break;
      case "freeze": {
        if (freeze) return conflicting;
        freeze = true;
        const b = booleanOf(d.arg);
        if (b === null) return { error: `${name} requires a Boolean value`, code: "42601" };
        break;
      }
      case "delimiter":
        if (delimiter !== undefined) return conflicting;
        if (value === undefined) return needsValue;
        delimiter = value;
        break;
      case "null":
        if (nullString !== undefined) return conflicting;
        if (value === undefined) return needsValue;
        nullString = value;
        break;
      case "header": {
        if (header !== undefined) return conflicting;
        const h = headerOf(d.arg);
        if (h === null) {
          return { error: `${name} requires a Boolean value or "match"`, code: "42601" };
        }
        header = h;
        break;
      }
      case "quote":
        if (quote !== undefined) return conflicting;
        if (value === undefined) return needsValue;
        quote = value;
        break;
      case "escape":
        if (escape !== undefined) return conflicting;
        if (value === undefined) return needsValue;
        escape = value;
        break;
      case "force_quote":
        if (forceQuote) return conflicting;
        if (!d.arg || !(d.arg.A_Star || d.arg.List)) return listNeeded(name);
        forceQuote = true;
        break;
      case "force_not_null":
      case "force_null": {
        const list = columnList(d.arg);
        if (list === null) return listNeeded(name);
        if (name === "force_not_null") {
          if (forceNotNull !== undefined) return conflicting;
          forceNotNull = list;
        } else {
          if (forceNull !== undefined) return conflicting;
          forceNull = list;
        }
        break;
      }
      case "encoding":
        if (encoding !== undefined) return conflicting;
        if (value === undefined) return needsValue;
        if (encodingName(value) === null) {
          return {
            error: `argument to option "${name}" must be a valid encoding name`,
            code: "22023",
          };
        }
        encoding = value;
        break;
      default:
        // DEFAULT is PostgreSQL 16's; the shards run 15.
        return { error: `option "${name}" not recognized`, code: "42601" };
    }
  }
  const binary = format === "binary";
  const csv = format === "csv";
  if (binary && delimiter !== undefined) {
    return { error: "cannot specify DELIMITER in BINARY mode", code: "42601" };
  }
  if (binary && nullString !== undefined) {
    return { error: "cannot specify NULL in BINARY mode", code: "42601" };
  }
  const delim = delimiter ?? (csv ? "," : "\t");
  const nul = nullString ?? (csv ? "" : "\\N");
  if (byteLength(delim) !== 1) {
    return { error: "COPY delimiter must be a single one-byte character", code: "0A000" };
  }
  if (delim === "\r" || delim === "\n") {
    return { error: "COPY delimiter cannot be newline or carriage return", code: "22023" };
  }
  if (nul.includes("\r") || nul.includes("\n")) {
    return {
      error: "COPY null representation cannot use newline or carriage return",
      code: "22023",
    };
  }
  if (!csv && DELIMITERS_REFUSED_IN_TEXT.includes(delim)) {
    return { error: `COPY delimiter cannot be "${delim}"`, code: "22023" };
  }
  if (binary && header) {
    return { error: "cannot specify HEADER in BINARY mode", code: "0A000" };
  }
  if (!csv && quote !== undefined) {
    return { error: "COPY quote available only in CSV mode", code: "0A000" };
  }
  const q = quote ?? (csv ? '"' : "");
  if (csv && byteLength(q) !== 1) {
    return { error: "COPY quote must be a single one-byte character", code: "0A000" };
  }
  if (csv && delim === q) {
    return { error: "COPY delimiter and quote must be different", code: "22023" };
  }
  if (!csv && escape !== undefined) {
    return { error: "COPY escape available only in CSV mode", code: "0A000" };
  }
  const e = escape ?? q;
  if (csv && byteLength(e) !== 1) {
    return { error: "COPY escape must be a single one-byte character", code: "0A000" };
  }
  if (!csv && forceQuote) {
    return { error: "COPY force quote available only in CSV mode", code: "0A000" };
  }
  if (forceQuote) {
    return { error: "COPY force quote only available using COPY TO", code: "0A000" };
  }
  if (!csv && forceNotNull !== undefined) {
    return { error: "COPY force not null available only in CSV mode", code: "0A000" };
  }
  if (!csv && forceNull !== undefined) {
    return { error: "COPY force null available only in CSV mode", code: "0A000" };
  }
  if (nul.includes(delim)) {
    return {
      error: "COPY delimiter must not appear in the NULL specification",
      code: "0A000",
    };
  }
  if (csv && nul.includes(q)) {
    return {
      error: "CSV quote character must not appear in the NULL specification",
      code: "0A000",
    };
  }
  for (const [option, list] of [["FORCE_NOT_NULL", forceNotNull], ["FORCE_NULL", forceNull]]) {
    if (!Array.isArray(list) || columns.length === 0) continue;
    for (const c of list) {
      if (!columns.includes(c)) {
        return { error: `${option} column "${c}" not referenced by COPY`, code: "42P10" };
      }
    }
  }
  if (encoding !== undefined) {
    const canonical = encodingName(encoding)!;
    if (canonical !== "LATIN1" && DECODER_LABELS[canonical] === undefined) {
      return { error: `COPY with ENCODING ${canonical} is not supported by pgdog`, code: "0A000" };
    }
  }
  return {
    format: format ?? "text",
    delimiter: binary ? "" : delim,
    null: binary ? "" : nul,
    header: header ?? false,
    quote: csv ? q : "",
    escape: csv ? e : "",
    forceNotNull: forceNotNull ?? [],
    forceNull: forceNull ?? [],
    encoding: encoding ?? null,
  };
}

function listNeeded(name: string): CopyFormatInvalid {
  return { error: `argument to option "${name}" must be a list of column names`, code: "22023" };
}

function columnList(arg: Record<string, unknown> | undefined): string[] | "*" | null {
  if (!arg) return null;
  if (arg.A_Star) return "*";
  const l = arg.List as { items?: Record<string, unknown>[] } | undefined;
  if (!l) return null;
  return (l.items ?? []).map((x) => argString(x) ?? "");
}

/** `defGetBoolean`. */
function booleanOf(arg: Record<string, unknown> | undefined): boolean | null {
  if (!arg) return true;
  const i = arg.Integer as { ival?: number } | undefined;
  if (i) return (i.ival ?? 0) === 0 ? false : i.ival === 1 ? true : null;
  const s = (argString(arg) ?? "").toLowerCase();
  if (s === "true" || s === "on") return true;
  if (s === "false" || s === "off") return false;
  return null;
}

/** `defGetCopyHeaderChoice` (COPY FROM). */
function headerOf(arg: Record<string, unknown> | undefined): boolean | "match" | null {
  if (!arg) return true;
  const i = arg.Integer as { ival?: number } | undefined;
  if (i) return (i.ival ?? 0) === 0 ? false : i.ival === 1 ? true : null;
  const s = (argString(arg) ?? "").toLowerCase();
  if (s === "true" || s === "on") return true;
  if (s === "false" || s === "off") return false;
  if (s === "match") return "match";
  return null;
}
