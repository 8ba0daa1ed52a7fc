/**
 * PostgreSQL values as the merge sees them: decoded from a DataRow field (text or binary
 * format), compared in the type's btree order, grouped by equality, and encoded back exactly as
 * PostgreSQL 15 sends them (send/recv for binary; the default DateStyle ISO, IntervalStyle
 * postgres, bytea_output hex and extra_float_digits ≥ 1 for text).
 *
 * Values are opaque to callers; SQL NULL never reaches these functions (callers keep it as a
 * null field).
 *
 * @module
 */

import { MergeError } from "./errors.ts";
import {
  compareNumeric,
  formatNumeric,
  type Numeric,
  numericFromBinary,
  numericKey,
  numericToBinary,
  parseNumeric,
} from "./numeric.ts";

/** A decoded value (never SQL NULL). */
export type Value = unknown;

/** How text compares: byte order ("C", "POSIX", "C.UTF-8") or an ICU locale. */
export type Collation = { kind: "bytes" } | { kind: "icu"; locale: string };

/** What the merge can do with values of one type. */
export interface TypeOps {
  /** The type's OID. */
  readonly oid: number;
  /** One DataRow field (not NULL), in text (0) or binary (1) format. */
  decode(field: Uint8Array, format: 0 | 1): Value;
  /** The field bytes PostgreSQL would send for this value. */
  encode(value: Value, format: 0 | 1): Uint8Array;
  /** PostgreSQL's btree order for the type (negative, 0, positive). */
  compare(a: Value, b: Value): number;
  /** Equal keys exactly when PostgreSQL's `=` says the values are equal. */
  groupKey(value: Value): string;
}

/** Type OIDs pgdog knows. */
export const OID = {
  bool: 16,
  bytea: 17,
  char: 18,
  name: 19,
  int8: 20,
  int2: 21,
  int4: 23,
  text: 25,
  oid: 26,
  json: 114,
  float4: 700,
  float8: 701,
  bpchar: 1042,
  varchar: 1043,
  date: 1082,
  time: 1083,
  timestamp: 1114,
  timestamptz: 1184,
  interval: 1186,
  timetz: 1266,
  numeric: 1700,
  uuid: 2950,
  jsonb: 3802,
} as const;

/** Array type OID → element type OID. */
export const ARRAY_ELEMENT: ReadonlyMap<number, number> = new Map([
  [1000, OID.bool],
  [1001, OID.bytea],
  [1002, OID.char],
  [1003, OID.name],
  [1016, OID.int8],
  [1005, OID.int2],
  [1007, OID.int4],
  [1009, OID.text],
  [1028, OID.oid],
  [199, OID.json],
  [1021, OID.float4],
  [1022, OID.float8],
  [1014, OID.bpchar],
  [1015, OID.varchar],
  [1182, OID.date],
  [1183, OID.time],
  [1115, OID.timestamp],
  [1185, OID.timestamptz],
  [1187, OID.interval],
  [1270, OID.timetz],
  [1231, OID.numeric],
  [2951, OID.uuid],
  [3807, OID.jsonb],
]);

const FIXED_SIZE: ReadonlyMap<number, number> = new Map([
  [OID.bool, 1],
  [OID.char, 1],
  [OID.name, 64],
  [OID.int8, 8],
  [OID.int2, 2],
  [OID.int4, 4],
  [OID.oid, 4],
  [OID.float4, 4],
  [OID.float8, 8],
  [OID.date, 4],
  [OID.time, 8],
  [OID.timestamp, 8],
  [OID.timestamptz, 8],
  [OID.interval, 16],
  [OID.timetz, 12],
  [OID.uuid, 16],
]);

/** pg_type.typlen of a type pgdog knows (RowDescription's type size): -1 for varlena types. */
export function typeSize(oid: number): number {
  return FIXED_SIZE.get(oid) ?? -1;
}

/** Element type OID → its array type OID. */
export function arrayTypeOf(elementOid: number): number | null {
  for (const [array, element] of ARRAY_ELEMENT) if (element === elementOid) return array;
  return null;
}

const utf8 = new TextDecoder();
const utf8Encoder = new TextEncoder();

function text(field: Uint8Array): string {
  return utf8.decode(field);
}

function bytesOf(s: string): Uint8Array {
  return utf8Encoder.encode(s);
}

function view(field: Uint8Array): DataView {
  return new DataView(field.buffer, field.byteOffset, field.byteLength);
}

function expectLength(field: Uint8Array, n: number, type: string): void {
  if (field.length !== n) {
    throw new MergeError("22P03", `invalid binary value for type ${type}: ${field.length} bytes`);
  }
}

function badText(type: string, s: string): MergeError {
  return new MergeError("0A000", `pgdog can't read this ${type} value: "${s}"`, {
    hint: "pgdog reads PostgreSQL's default output formats (DateStyle ISO, IntervalStyle postgres)",
  });
}

function cmp<T extends number | bigint | string>(a: T, b: T): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// ---------------------------------------------------------------- integers, bool, oid, char

/** A decimal integer's text as a number, without building a string (up to 15 digits), else
 * NaN. */
function asciiInt(field: Uint8Array): number {
  const n = field.length;
  if (n === 0 || n > 16) return NaN;
  let i = 0;
  let neg = false;
  if (field[0] === 0x2d) {
    neg = true;
    i = 1;
    if (n === 1) return NaN;
  }
  if (n - i > 15) return NaN;
  let v = 0;
  for (; i < n; i++) {
    const d = field[i] - 0x30;
    if (d < 0 || d > 9) return NaN;
    v = v * 10 + d;
  }
  return neg ? -v : v;
}

function intOps(oid: number, bytes: 2 | 4): TypeOps {
  const type = bytes === 2 ? "smallint" : "integer";
  return {
    oid,
    decode(field, format) {
      if (format === 0) {
        const v = asciiInt(field);
        return Number.isNaN(v) ? Number(text(field)) : v;
      }
      expectLength(field, bytes, type);
      return bytes === 2 ? view(field).getInt16(0) : view(field).getInt32(0);
    },
    encode(value, format) {
      if (format === 0) return bytesOf(String(value));
      const out = new Uint8Array(bytes);
      if (bytes === 2) view(out).setInt16(0, value as number);
      else view(out).setInt32(0, value as number);
      return out;
    },
    compare: (a, b) => (a as number) - (b as number),
    groupKey: (v) => String(v),
  };
}

function int8Ops(): TypeOps {
  return {
    oid: OID.int8,
    decode(field, format) {
      if (format === 0) {
        const v = asciiInt(field);
        return Number.isNaN(v) ? BigInt(text(field)) : BigInt(v);
      }
      expectLength(field, 8, "bigint");
      return view(field).getBigInt64(0);
    },
    encode(value, format) {
      if (format === 0) return bytesOf(String(value));
      const out = new Uint8Array(8);
      view(out).setBigInt64(0, value as bigint);
      return out;
    },
    compare: (a, b) => cmp(a as bigint, b as bigint),
    groupKey: (v) => String(v),
  };
}

function oidOps(): TypeOps {
  return {
    oid: OID.oid,
    decode(field, format) {
      if (format === 0) return Number(text(field));
      expectLength(field, 4, "oid");
      return view(field).getUint32(0);
    },
    encode(value, format) {
      if (format === 0) return bytesOf(String(value));
      const out = new Uint8Array(4);
      view(out).setUint32(0, value as number);
      return out;
    },
    compare: (a, b) => (a as number) - (b as number),
    groupKey: (v) => String(v),
  };
}

function boolOps(): TypeOps {
  return {
    oid: OID.bool,
    decode(field, format) {
      if (format === 1) {
        expectLength(field, 1, "boolean");
        return field[0] !== 0;
      }
      return field[0] === 0x74; // 't'
    },
    encode(value, format) {
      if (format === 1) return Uint8Array.of(value ? 1 : 0);
      return Uint8Array.of(value ? 0x74 : 0x66);
    },
    compare: (a, b) => Number(a) - Number(b),
    groupKey: (v) => (v ? "t" : "f"),
  };
}

/** "char": one byte, compared unsigned; charout prints high-bit bytes as \ooo. */
function charOps(): TypeOps {
  return {
    oid: OID.char,
    decode(field, format) {
      if (format === 1) return field.length === 0 ? 0 : field[0];
      if (field.length === 4 && field[0] === 0x5c) {
        return parseInt(String.fromCharCode(field[1], field[2], field[3]), 8);
      }
      return field.length === 0 ? 0 : field[0];
    },
    encode(value, format) {
      const b = value as number;
      if (format === 1) return Uint8Array.of(b);
      if (b === 0) return new Uint8Array(0);
      if (b >= 0x80) return bytesOf("\\" + b.toString(8).padStart(3, "0"));
      return Uint8Array.of(b);
    },
    compare: (a, b) => (a as number) - (b as number),
    groupKey: (v) => String(v),
  };
}

// ---------------------------------------------------------------- floats

/** float4out/float8out with extra_float_digits ≥ 1: shortest round-trip digits, %g-like form. */
export function formatFloat(x: number, single: boolean): string {
  if (Number.isNaN(x)) return "NaN";
  if (x === Infinity) return "Infinity";
  if (x === -Infinity) return "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0" : "0";
  const neg = x < 0;
  const { digits, exp } = single ? shortestFloat4(Math.abs(x)) : decimalDigits(String(Math.abs(x)));
  let out: string;
  if (exp >= -4 && exp < (single ? 6 : 15)) {
    if (exp < 0) out = "0." + "0".repeat(-exp - 1) + digits;
    else if (digits.length <= exp + 1) out = digits + "0".repeat(exp + 1 - digits.length);
    else out = digits.slice(0, exp + 1) + "." + digits.slice(exp + 1);
  } else {
    const abs = Math.abs(exp);
    out = digits[0] + (digits.length > 1 ? "." + digits.slice(1) : "") + "e" +
      (exp < 0 ? "-" : "+") + (abs < 10 ? "0" : "") + abs;
  }
  return neg ? "-" + out : out;
}

/** A positive number's JS text (shortest round-trip, ties to even) → significant digits and
 * the decimal exponent of the first one. */
function decimalDigits(s: string): { digits: string; exp: number } {
  const [mantissa, e] = s.split("e");
  const point = mantissa.indexOf(".");
  let digits = mantissa.replace(".", "");
  let exp = (point < 0 ? mantissa.length : point) - 1 + Number(e ?? 0);
  const lead = digits.length - digits.replace(/^0+/, "").length;
  digits = digits.slice(lead).replace(/0+$/, "") || "0";
  exp -= lead;
  return { digits, exp };
}

/**
 * Ryu's shortest float4 digits: the fewest digits whose decimal lies strictly inside the float's
 * rounding interval, the nearest such, ties to even.
 * Exact BigInt arithmetic: no double rounding through float8.
 */
function shortestFloat4(x: number): { digits: string; exp: number } {
  const bits = new DataView(new ArrayBuffer(4));
  bits.setFloat32(0, x);
  const raw = bits.getUint32(0);
  const field = (raw >>> 23) & 0xff;
  const m = BigInt(field === 0 ? raw & 0x7fffff : (raw & 0x7fffff) | 0x800000);
  const e = (field === 0 ? 1 : field) - 150;
  // In units of 2^(e-2): the value, and the bounds of its rounding interval.
  const value = 4n * m;
  const high = value + 2n;
  const low = m === 0x800000n && field > 1 ? value - 1n : value - 2n;
  // PostgreSQL's f2s keeps the interval's bounds out (53112832 prints as 5.3112832e+07).
  const inclusive = false;
  for (let p = 1; p <= 9; p++) {
    const [mant, ex] = x.toExponential(p - 1).split("e");
    const d = BigInt(mant.replace(".", ""));
    const k = Number(ex) - (p - 1);
    // candidate c = D × 10^k; compare c / 2^(e-2) with the bounds: scale both to integers.
    const scaleC = (D: bigint): [bigint, bigint] => {
      let num = D;
      let den = 1n;
      if (k >= 0) num *= 10n ** BigInt(k);
      else den *= 10n ** BigInt(-k);
      const shift = 2 - e;
      if (shift >= 0) num *= 1n << BigInt(shift);
      else den *= 1n << BigInt(-shift);
      return [num, den];
    };
    let best: { d: bigint; dist: bigint; den: bigint } | null = null;
    for (const cand of [d - 1n, d, d + 1n]) {
      if (cand <= 0n) continue;
      const [num, den] = scaleC(cand);
      const inside = inclusive
        ? num >= low * den && num <= high * den
        : num > low * den && num < high * den;
      if (!inside) continue;
      const diff = num - value * den;
      const dist = diff < 0n ? -diff : diff;
      // All candidates share one denominator (same k).
      if (
        best === null || dist < best.dist || (dist === best.dist && cand % 2n === 0n)
      ) best = { d: cand, dist, den };
    }
    if (best !== null) {
      const text = best.d.toString();
      const digits = text.replace(/0+$/, "");
      return { digits, exp: k + text.length - 1 };
    }
  }
  return decimalDigits(x.toExponential());
}

function floatOps(oid: number, single: boolean): TypeOps {
  const size = single ? 4 : 8;
  return {
    oid,
    decode(field, format) {
      if (format === 0) {
        const v = Number(text(field));
        return single ? Math.fround(v) : v;
      }
      expectLength(field, size, single ? "real" : "double precision");
      return single ? view(field).getFloat32(0) : view(field).getFloat64(0);
    },
    encode(value, format) {
      if (format === 0) return bytesOf(formatFloat(value as number, single));
      const out = new Uint8Array(size);
      if (single) view(out).setFloat32(0, value as number);
      else view(out).setFloat64(0, value as number);
      return out;
    },
    compare: (a, b) => compareFloat(a as number, b as number),
    groupKey: (v) => (Number.isNaN(v) ? "NaN" : v === 0 ? "0" : String(v)),
  };
}

/** float8 btree order: NaN above everything and equal to itself; -0 = 0. */
export function compareFloat(a: number, b: number): number {
  if (a < b) return -1;
  if (a > b) return 1;
  if (a === b) return 0;
  const na = Number.isNaN(a);
  const nb = Number.isNaN(b);
  return na === nb ? 0 : na ? 1 : -1;
}

// ---------------------------------------------------------------- numeric

function numericOps(): TypeOps {
  return {
    oid: OID.numeric,
    decode: (field, format) => format === 0 ? parseNumeric(text(field)) : numericFromBinary(field),
    encode: (value, format) =>
      format === 0 ? bytesOf(formatNumeric(value as Numeric)) : numericToBinary(value as Numeric),
    compare: (a, b) => compareNumeric(a as Numeric, b as Numeric),
    groupKey: (v) => numericKey(v as Numeric),
  };
}

// ---------------------------------------------------------------- text

/** Compare two strings by Unicode code point (= UTF-8 byte order). */
export function compareCodePoints(a: string, b: string): number {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x !== y) {
      // Surrogates (U+D800..DFFF) encode code points above U+FFFF: move them above U+E000..FFFF.
      if (x >= 0xd800) x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
      if (y >= 0xd800) y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
      return x - y;
    }
  }
  return a.length - b.length;
}

const collators = new Map<string, Intl.Collator>();

function collator(locale: string): Intl.Collator {
  let c = collators.get(locale);
  if (c === undefined) {
    c = new Intl.Collator(locale === "und" ? "en-US" : locale);
    collators.set(locale, c);
  }
  return c;
}

/** The comparison of strings under a collation (deterministic: ties broken by bytes). */
export function textComparator(collation: Collation): (a: string, b: string) => number {
  if (collation.kind === "bytes") return compareCodePoints;
  const c = collator(collation.locale);
  return (a, b) => {
    if (a === b) return 0;
    return c.compare(a, b) || compareCodePoints(a, b);
  };
}

/** Length without trailing ASCII spaces (bpchar's bcTruelen). */
function trimSpaces(s: string): string {
  let end = s.length;
  while (end > 0 && s.charCodeAt(end - 1) === 0x20) end--;
  return end === s.length ? s : s.slice(0, end);
}

function textOps(oid: number, collation: Collation): TypeOps {
  const compare = textComparator(oid === OID.name ? { kind: "bytes" } : collation);
  const blank = oid === OID.bpchar;
  return {
    oid,
    decode: (field) => text(field),
    encode: (value) => bytesOf(value as string),
    compare: blank
      ? (a, b) => compare(trimSpaces(a as string), trimSpaces(b as string))
      : (a, b) => compare(a as string, b as string),
    groupKey: blank ? (v) => trimSpaces(v as string) : (v) => v as string,
  };
}

// ---------------------------------------------------------------- bytea, uuid

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

function hex(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += HEX[bytes[i]];
  return s;
}

function unhex(s: string, type: string): Uint8Array {
  if (s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) throw badText(type, s);
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** byteain: hex (`\x..`) or escape format. */
function parseBytea(field: Uint8Array): Uint8Array {
  if (field.length >= 2 && field[0] === 0x5c && field[1] === 0x78) {
    return unhex(text(field.subarray(2)), "bytea");
  }
  const out: number[] = [];
  for (let i = 0; i < field.length; i++) {
    if (field[i] !== 0x5c) out.push(field[i]);
    else if (field[i + 1] === 0x5c) {
      out.push(0x5c);
      i++;
    } else {
      out.push(parseInt(String.fromCharCode(field[i + 1], field[i + 2], field[i + 3]), 8));
      i += 3;
    }
  }
  return Uint8Array.from(out);
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function byteaOps(): TypeOps {
  return {
    oid: OID.bytea,
    decode: (field, format) => format === 0 ? parseBytea(field) : field.slice(),
    encode: (value, format) =>
      format === 0 ? bytesOf("\\x" + hex(value as Uint8Array)) : (value as Uint8Array),
    compare: (a, b) => compareBytes(a as Uint8Array, b as Uint8Array),
    groupKey: (v) => hex(v as Uint8Array),
  };
}

function uuidOps(): TypeOps {
  return {
    oid: OID.uuid,
    decode(field, format) {
      if (format === 1) {
        expectLength(field, 16, "uuid");
        return hex(field);
      }
      const s = text(field).replace(/[-{}]/g, "").toLowerCase();
      if (!/^[0-9a-f]{32}$/.test(s)) throw badText("uuid", text(field));
      return s;
    },
    encode(value, format) {
      const s = value as string;
      if (format === 1) return unhex(s, "uuid");
      return bytesOf(
        `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20)}`,
      );
    },
    compare: (a, b) => cmp(a as string, b as string),
    groupKey: (v) => v as string,
  };
}

// ---------------------------------------------------------------- dates and times

const USECS_PER_DAY = 86_400_000_000n;
const POSTGRES_EPOCH_JDATE = 2451545;
const DATE_NEG_INF = -0x80000000;
const DATE_POS_INF = 0x7fffffff;
const TS_NEG_INF = -0x8000000000000000n;
const TS_POS_INF = 0x7fffffffffffffffn;

/** PostgreSQL's date2j (proleptic Gregorian, astronomical years: 1 BC = 0). */
function date2j(year: number, month: number, day: number): number {
  let y = year;
  let m = month;
  if (m > 2) {
    m += 1;
    y += 4800;
  } else {
    m += 13;
    y += 4799;
  }
  const century = Math.floor(y / 100);
  let julian = y * 365 - 32167;
  julian += Math.floor(y / 4) - century + Math.floor(century / 4);
  julian += Math.floor((7834 * m) / 256) + day;
  return julian;
}

/** PostgreSQL's j2date. */
function j2date(jd: number): [number, number, number] {
  let julian = jd + 32044;
  let quad = Math.floor(julian / 146097);
  const extra = (julian - quad * 146097) * 4 + 3;
  julian += 60 + quad * 3 + Math.floor(extra / 146097);
  quad = Math.floor(julian / 1461);
  julian -= quad * 1461;
  let y = Math.floor((julian * 4) / 1461);
  julian = y !== 0 ? (julian + 305) % 365 : (julian + 306) % 366;
  julian += 123;
  y += quad * 4;
  quad = Math.floor((julian * 2141) / 65536);
  const day = julian - Math.floor((7834 * quad) / 256);
  const month = ((quad + 10) % 12) + 1;
  return [y - 4800, month, day];
}

function pad(n: number | bigint, width: number): string {
  return String(n).padStart(width, "0");
}

/** "YYYY-MM-DD" (and the year for a " BC" suffix). */
function formatDays(days: number): { date: string; bc: boolean } {
  const [y, m, d] = j2date(days + POSTGRES_EPOCH_JDATE);
  const bc = y <= 0;
  return { date: `${pad(bc ? 1 - y : y, 4)}-${pad(m, 2)}-${pad(d, 2)}`, bc };
}

/** "HH:MM:SS[.ffffff]" with the fraction's trailing zeros dropped. */
function formatTimeOfDay(us: number): string {
  const sec = Math.floor(us / 1_000_000);
  const frac = us - sec * 1_000_000;
  let s = `${pad(Math.floor(sec / 3600), 2)}:${pad(Math.floor(sec / 60) % 60, 2)}:${
    pad(sec % 60, 2)
  }`;
  if (frac !== 0) s += "." + pad(frac, 6).replace(/0+$/, "");
  return s;
}

function parseFraction(f: string | undefined): number {
  if (f === undefined || f === "") return 0;
  return Math.round(Number("0." + f) * 1_000_000);
}

function parseDate(s: string): number {
  if (s === "infinity") return DATE_POS_INF;
  if (s === "-infinity") return DATE_NEG_INF;
  const m = /^(\d{4,})-(\d\d)-(\d\d)( BC)?$/.exec(s);
  if (m === null) throw badText("date", s);
  const y = m[4] ? 1 - Number(m[1]) : Number(m[1]);
  return date2j(y, Number(m[2]), Number(m[3])) - POSTGRES_EPOCH_JDATE;
}

function dateOps(): TypeOps {
  return {
    oid: OID.date,
    decode(field, format) {
      if (format === 0) return parseDate(text(field));
      expectLength(field, 4, "date");
      return view(field).getInt32(0);
    },
    encode(value, format) {
      const days = value as number;
      if (format === 1) {
        const out = new Uint8Array(4);
        view(out).setInt32(0, days);
        return out;
      }
      if (days === DATE_POS_INF) return bytesOf("infinity");
      if (days === DATE_NEG_INF) return bytesOf("-infinity");
      const { date, bc } = formatDays(days);
      return bytesOf(bc ? date + " BC" : date);
    },
    compare: (a, b) => (a as number) - (b as number),
    groupKey: (v) => String(v),
  };
}

function parseTime(s: string): number {
  const m = /^(\d\d):(\d\d):(\d\d)(?:\.(\d+))?$/.exec(s);
  if (m === null) throw badText("time", s);
  return (Number(m[1]) * 3600 + Number(m[2]) * 60 + Number(m[3])) * 1_000_000 +
    parseFraction(m[4]);
}

function timeOps(): TypeOps {
  return {
    oid: OID.time,
    decode(field, format) {
      if (format === 0) return parseTime(text(field));
      expectLength(field, 8, "time");
      return Number(view(field).getBigInt64(0));
    },
    encode(value, format) {
      if (format === 0) return bytesOf(formatTimeOfDay(value as number));
      const out = new Uint8Array(8);
      view(out).setBigInt64(0, BigInt(value as number));
      return out;
    },
    compare: (a, b) => (a as number) - (b as number),
    groupKey: (v) => String(v),
  };
}

/** A UTC offset "+HH[:MM[:SS]]" → seconds east of UTC. */
function parseOffset(s: string): number {
  const m = /^([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?$/.exec(s);
  if (m === null) throw badText("time zone offset", s);
  const secs = Number(m[2]) * 3600 + Number(m[3] ?? 0) * 60 + Number(m[4] ?? 0);
  return m[1] === "-" ? -secs : secs;
}

/** Seconds east of UTC → "+HH[:MM[:SS]]". */
function formatOffset(east: number): string {
  const a = Math.abs(east);
  const h = Math.floor(a / 3600);
  const m = Math.floor(a / 60) % 60;
  const s = a % 60;
  let out = (east < 0 ? "-" : "+") + pad(h, 2);
  if (m !== 0 || s !== 0) out += ":" + pad(m, 2);
  if (s !== 0) out += ":" + pad(s, 2);
  return out;
}

/** timetz: time of day and zone (seconds WEST of UTC, as PostgreSQL stores it). */
interface TimeTz {
  time: number;
  zone: number;
}

function timetzOps(): TypeOps {
  return {
    oid: OID.timetz,
    decode(field, format): TimeTz {
      if (format === 1) {
        expectLength(field, 12, "time with time zone");
        return { time: Number(view(field).getBigInt64(0)), zone: view(field).getInt32(8) };
      }
      const s = text(field);
      const m = /^(\d\d:\d\d:\d\d(?:\.\d+)?)([+-].*)$/.exec(s);
      if (m === null) throw badText("timetz", s);
      return { time: parseTime(m[1]), zone: -parseOffset(m[2]) };
    },
    encode(value, format) {
      const v = value as TimeTz;
      if (format === 0) return bytesOf(formatTimeOfDay(v.time) + formatOffset(-v.zone));
      const out = new Uint8Array(12);
      view(out).setBigInt64(0, BigInt(v.time));
      view(out).setInt32(8, v.zone);
      return out;
    },
    compare(a, b) {
      const x = a as TimeTz;
      const y = b as TimeTz;
      // timetz_cmp: the UTC instant first, then the zone.
      return (x.time + x.zone * 1_000_000) - (y.time + y.zone * 1_000_000) || x.zone - y.zone;
    },
    groupKey: (v) => `${(v as TimeTz).time}/${(v as TimeTz).zone}`,
  };
}

const TS_RE =
  /^(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d+))?([+-]\d\d(?::\d\d){0,2})?( BC)?$/;

/** A timestamp text → microseconds since 2000-01-01 (local), and the offset if any. */
function parseTimestamp(s: string, type: string): { us: bigint; east: number | null } {
  if (s === "infinity") return { us: TS_POS_INF, east: null };
  if (s === "-infinity") return { us: TS_NEG_INF, east: null };
  const m = TS_RE.exec(s);
  if (m === null) throw badText(type, s);
  const y = m[9] ? 1 - Number(m[1]) : Number(m[1]);
  const days = date2j(y, Number(m[2]), Number(m[3])) - POSTGRES_EPOCH_JDATE;
  const secs = Number(m[4]) * 3600 + Number(m[5]) * 60 + Number(m[6]);
  const us = BigInt(days) * USECS_PER_DAY + BigInt(secs * 1_000_000 + parseFraction(m[7]));
  return { us, east: m[8] === undefined ? null : parseOffset(m[8]) };
}

/** A timestamp (local µs) → "YYYY-MM-DD HH:MM:SS[.f]" + offset + " BC". */
function formatTimestamp(us: bigint, offset: string): string {
  if (us === TS_POS_INF) return "infinity";
  if (us === TS_NEG_INF) return "-infinity";
  let days = us / USECS_PER_DAY;
  let rest = us % USECS_PER_DAY;
  if (rest < 0n) {
    days -= 1n;
    rest += USECS_PER_DAY;
  }
  const { date, bc } = formatDays(Number(days));
  return `${date} ${formatTimeOfDay(Number(rest))}${offset}${bc ? " BC" : ""}`;
}

function int64(field: Uint8Array, type: string): bigint {
  expectLength(field, 8, type);
  return view(field).getBigInt64(0);
}

function int64Bytes(v: bigint): Uint8Array {
  const out = new Uint8Array(8);
  view(out).setBigInt64(0, v);
  return out;
}

function timestampOps(): TypeOps {
  return {
    oid: OID.timestamp,
    decode: (field, format) =>
      format === 0 ? parseTimestamp(text(field), "timestamp").us : int64(field, "timestamp"),
    encode: (value, format) =>
      format === 0 ? bytesOf(formatTimestamp(value as bigint, "")) : int64Bytes(value as bigint),
    compare: (a, b) => cmp(a as bigint, b as bigint),
    groupKey: (v) => String(v),
  };
}

/** timestamptz: the UTC instant, and the shard's text when it came as text (its TimeZone). */
interface TimestampTz {
  us: bigint;
  text: string | null;
}

function timestamptzOps(): TypeOps {
  return {
    oid: OID.timestamptz,
    decode(field, format): TimestampTz {
      if (format === 1) return { us: int64(field, "timestamptz"), text: null };
      const s = text(field);
      const { us, east } = parseTimestamp(s, "timestamptz");
      if (east === null) return { us, text: s };
      return { us: us - BigInt(east) * 1_000_000n, text: s };
    },
    encode(value, format) {
      const v = value as TimestampTz;
      if (format === 1) return int64Bytes(v.us);
      // The session's TimeZone is the shard's: its own text is what PostgreSQL would send.
      return bytesOf(v.text ?? formatTimestamp(v.us, "+00"));
    },
    compare: (a, b) => cmp((a as TimestampTz).us, (b as TimestampTz).us),
    groupKey: (v) => String((v as TimestampTz).us),
  };
}

/** An interval's three fields. */
export interface Interval {
  months: number;
  days: number;
  /** Microseconds. */
  time: bigint;
}

const INTERVAL_PART = /^([+-]?\d+) (year|mon|day)s?$/;
const INTERVAL_TIME = /^([+-])?(\d+):(\d\d):(\d\d)(?:\.(\d+))?$/;

/** An interval in IntervalStyle postgres (what interval_out prints by default). */
function parseInterval(s: string): Interval {
  const v: Interval = { months: 0, days: 0, time: 0n };
  const words = s.split(" ");
  for (let i = 0; i < words.length; i++) {
    const t = INTERVAL_TIME.exec(words[i]);
    if (t !== null) {
      const us = BigInt(Number(t[2])) * 3_600_000_000n +
        BigInt((Number(t[3]) * 60 + Number(t[4])) * 1_000_000 + parseFraction(t[5]));
      v.time = t[1] === "-" ? -us : us;
      continue;
    }
    const p = INTERVAL_PART.exec(`${words[i]} ${words[i + 1] ?? ""}`);
    if (p === null) throw badText("interval", s);
    const n = Number(p[1]);
    if (p[2] === "year") v.months += n * 12;
    else if (p[2] === "mon") v.months += n;
    else v.days += n;
    i++;
  }
  return v;
}

/** interval_out, IntervalStyle postgres. */
function formatInterval(v: Interval): string {
  const parts: string[] = [];
  let isBefore = false;
  const add = (value: number, unit: string): void => {
    if (value === 0) return;
    parts.push(`${isBefore && value > 0 ? "+" : ""}${value} ${unit}${value !== 1 ? "s" : ""}`);
    isBefore = value < 0;
  };
  add(Math.trunc(v.months / 12), "year");
  add(v.months % 12, "mon");
  add(v.days, "day");
  if (parts.length === 0 || v.time !== 0n) {
    const minus = v.time < 0n;
    const t = minus ? -v.time : v.time;
    const hours = t / 3_600_000_000n;
    const rest = Number(t % 3_600_000_000n);
    const min = Math.floor(rest / 60_000_000);
    const sec = Math.floor(rest / 1_000_000) % 60;
    const frac = rest % 1_000_000;
    let s = `${minus ? "-" : isBefore ? "+" : ""}${pad(hours, 2)}:${pad(min, 2)}:${pad(sec, 2)}`;
    if (frac !== 0) s += "." + pad(frac, 6).replace(/0+$/, "");
    parts.push(s);
  }
  return parts.join(" ");
}

/** interval_cmp_value: the span in microseconds, a month counting 30 days. */
export function intervalSpan(v: Interval): bigint {
  return (BigInt(v.months) * 30n + BigInt(v.days)) * USECS_PER_DAY + v.time;
}

function intervalOps(): TypeOps {
  return {
    oid: OID.interval,
    decode(field, format): Interval {
      if (format === 0) return parseInterval(text(field));
      expectLength(field, 16, "interval");
      const d = view(field);
      return { time: d.getBigInt64(0), days: d.getInt32(8), months: d.getInt32(12) };
    },
    encode(value, format) {
      const v = value as Interval;
      if (format === 0) return bytesOf(formatInterval(v));
      const out = new Uint8Array(16);
      const d = view(out);
      d.setBigInt64(0, v.time);
      d.setInt32(8, v.days);
      d.setInt32(12, v.months);
      return out;
    },
    compare: (a, b) => cmp(intervalSpan(a as Interval), intervalSpan(b as Interval)),
    groupKey: (v) => String(intervalSpan(v as Interval)),
  };
}

// ---------------------------------------------------------------- json, jsonb

function refuseOrder(type: string): never {
  throw new MergeError("0A000", `pgdog can't sort ${type} values across shards`, {
    hint: "sort by a column of another type, or cast it (e.g. ::text)",
  });
}

/** jsonb's text output is canonical (keys sorted and unique), so equal texts = equal values,
 * except numbers: 1.0 and 1.00 are equal jsonb; the key normalizes them. */
function jsonbKey(s: string): string {
  return s.replace(
    /("(?:[^"\\]|\\.)*")|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g,
    (m, str) => str !== undefined ? m : numericKey(parseNumeric(m)),
  );
}

/** A parsed jsonb value (numbers exact). */
type JsonNode =
  | { t: 0 }
  | { t: 1; s: string }
  | { t: 2; n: Numeric }
  | { t: 3; b: boolean }
  | { t: 4; items: JsonNode[] }
  | { t: 5; pairs: [string, JsonNode][] };

/** Parse JSON text (jsonb's output: keys already in storage order). */
function parseJson(text: string): JsonNode {
  let i = 0;
  const ws = (): void => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const fail = (): never => {
    throw badText("jsonb", text);
  };
  const str = (): string => {
    const m = /^"(?:[^"\\]|\\.)*"/.exec(text.slice(i));
    if (m === null) fail();
    i += m![0].length;
    return JSON.parse(m![0]);
  };
  const value = (): JsonNode => {
    ws();
    const c = text[i];
    let node: JsonNode;
    if (c === "{") {
      i++;
      const pairs: [string, JsonNode][] = [];
      ws();
      if (text[i] === "}") i++;
      else {
        for (;;) {
          ws();
          const k = str();
          ws();
          if (text[i++] !== ":") fail();
          pairs.push([k, value()]);
          ws();
          const d = text[i++];
          if (d === "}") break;
          if (d !== ",") fail();
        }
      }
      node = { t: 5, pairs };
    } else if (c === "[") {
      i++;
      const items: JsonNode[] = [];
      ws();
      if (text[i] === "]") i++;
      else {
        for (;;) {
          items.push(value());
          ws();
          const d = text[i++];
          if (d === "]") break;
          if (d !== ",") fail();
        }
      }
      node = { t: 4, items };
    } else if (c === '"') node = { t: 1, s: str() };
    else if (text.startsWith("true", i)) {
      i += 4;
      node = { t: 3, b: true };
    } else if (text.startsWith("false", i)) {
      i += 5;
      node = { t: 3, b: false };
    } else if (text.startsWith("null", i)) {
      i += 4;
      node = { t: 0 };
    } else {
      const m = /^-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(text.slice(i));
      if (m === null) fail();
      i += m![0].length;
      node = { t: 2, n: parseNumeric(m![0]) };
    }
    ws();
    return node;
  };
  const root = value();
  if (i !== text.length) fail();
  return root;
}

/**
 * compareJsonbContainers: Null < String < Number < Boolean < Array < Object; arrays by length
 * then elements; objects by pair count then key, value... in storage order; strings by the
 * database collation. At the top level a scalar sorts below any array but an empty one.
 */
function jsonbComparator(text: (a: string, b: string) => number): (a: string, b: string) => number {
  const cmp = (a: JsonNode, b: JsonNode): number => {
    if (a.t !== b.t) return a.t - b.t;
    switch (a.t) {
      case 0:
        return 0;
      case 1:
        return text(a.s, (b as { s: string }).s);
      case 2:
        return compareNumeric(a.n, (b as { n: Numeric }).n);
      case 3:
        return Number(a.b) - Number((b as { b: boolean }).b);
      case 4: {
        const y = (b as { items: JsonNode[] }).items;
        if (a.items.length !== y.length) return a.items.length - y.length;
        for (let i = 0; i < y.length; i++) {
          const c = cmp(a.items[i], y[i]);
          if (c !== 0) return c;
        }
        return 0;
      }
      case 5: {
        const y = (b as { pairs: [string, JsonNode][] }).pairs;
        if (a.pairs.length !== y.length) return a.pairs.length - y.length;
        for (let i = 0; i < y.length; i++) {
          const c = text(a.pairs[i][0], y[i][0]) || cmp(a.pairs[i][1], y[i][1]);
          if (c !== 0) return c;
        }
        return 0;
      }
    }
  };
  return (x, y) => {
    if (x === y) return 0;
    const a = parseJson(x);
    const b = parseJson(y);
    const scalarA = a.t < 4;
    const scalarB = b.t < 4;
    // A top-level scalar is a one-element "raw scalar" array to PostgreSQL.
    if (scalarA && b.t === 4) return b.items.length === 0 ? 1 : -1;
    if (scalarB && a.t === 4) return a.items.length === 0 ? -1 : 1;
    return cmp(a, b);
  };
}

function jsonOps(oid: number, collation: Collation): TypeOps {
  const binary = oid === OID.jsonb;
  const compareJsonb = binary ? jsonbComparator(textComparator(collation)) : null;
  return {
    oid,
    decode(field, format) {
      if (format === 1 && binary) {
        if (field[0] !== 1) throw new MergeError("22P03", "unsupported jsonb version number");
        return text(field.subarray(1));
      }
      return text(field);
    },
    encode(value, format) {
      const b = bytesOf(value as string);
      if (format === 0 || !binary) return b;
      const out = new Uint8Array(b.length + 1);
      out[0] = 1;
      out.set(b, 1);
      return out;
    },
    compare: compareJsonb === null
      ? () => refuseOrder("json")
      : (a, b) => compareJsonb(a as string, b as string),
    groupKey: binary ? (v) => jsonbKey(v as string) : () => {
      throw new MergeError("0A000", "could not identify an equality operator for type json");
    },
  };
}

// ---------------------------------------------------------------- arrays

/** An array: dimensions, lower bounds, elements in row-major order (null = NULL). */
export interface ArrayValue {
  dims: number[];
  lbounds: number[];
  items: (Value | null)[];
}

function needsQuote(s: string): boolean {
  if (s === "" || s.toUpperCase() === "NULL") return true;
  return /["\\{},\s]/.test(s);
}

function formatArray(v: ArrayValue, element: TypeOps): string {
  if (v.dims.length === 0) return "{}";
  let prefix = "";
  if (v.lbounds.some((l) => l !== 1)) {
    prefix = v.dims.map((d, i) => `[${v.lbounds[i]}:${v.lbounds[i] + d - 1}]`).join("") + "=";
  }
  let k = 0;
  const level = (depth: number): string => {
    const parts: string[] = [];
    for (let i = 0; i < v.dims[depth]; i++) {
      if (depth + 1 < v.dims.length) parts.push(level(depth + 1));
      else {
        const item = v.items[k++];
        if (item === null) parts.push("NULL");
        else {
          const s = text(element.encode(item, 0));
          parts.push(needsQuote(s) ? `"${s.replace(/["\\]/g, "\\$&")}"` : s);
        }
      }
    }
    return "{" + parts.join(",") + "}";
  };
  return prefix + level(0);
}

function parseArray(s: string, element: TypeOps): ArrayValue {
  let pos = 0;
  let lbounds: number[] | null = null;
  if (s[0] === "[") {
    const m = /^((?:\[-?\d+:-?\d+\])+)=/.exec(s);
    if (m === null) throw badText("array", s);
    lbounds = [...m[1].matchAll(/\[(-?\d+):/g)].map((x) => Number(x[1]));
    pos = m[0].length;
  }
  const dims: number[] = [];
  const items: (Value | null)[] = [];
  const fail = (): never => {
    throw badText("array", s);
  };
  const parseLevel = (depth: number): void => {
    if (s[pos] !== "{") fail();
    pos++;
    let count = 0;
    if (s[pos] === "}") {
      pos++;
      if (depth !== 0) fail();
      return;
    }
    for (;;) {
      if (s[pos] === "{") parseLevel(depth + 1);
      else {
        let raw = "";
        let quoted = false;
        if (s[pos] === '"') {
          quoted = true;
          pos++;
          while (pos < s.length && s[pos] !== '"') {
            if (s[pos] === "\\") pos++;
            raw += s[pos++];
          }
          pos++;
        } else {
          while (pos < s.length && s[pos] !== "," && s[pos] !== "}") {
            if (s[pos] === "\\") pos++;
            raw += s[pos++];
          }
          raw = raw.trim();
        }
        if (!quoted && raw.toUpperCase() === "NULL") items.push(null);
        else items.push(element.decode(bytesOf(raw), 0));
        if (dims.length <= depth) dims.length = depth + 1;
      }
      count++;
      if (s[pos] === ",") pos++;
      else if (s[pos] === "}") {
        pos++;
        break;
      } else fail();
    }
    if (dims[depth] === undefined) dims[depth] = count;
    else if (dims[depth] !== count) fail();
  };
  parseLevel(0);
  if (dims.length === 0) return { dims: [], lbounds: [], items: [] };
  return { dims, lbounds: lbounds ?? dims.map(() => 1), items };
}

function arrayOps(oid: number, elementOid: number, element: TypeOps): TypeOps {
  return {
    oid,
    decode(field, format): ArrayValue {
      if (format === 0) return parseArray(text(field), element);
      const d = view(field);
      const ndim = d.getInt32(0);
      const dims: number[] = [];
      const lbounds: number[] = [];
      let off = 12;
      for (let i = 0; i < ndim; i++) {
        dims.push(d.getInt32(off));
        lbounds.push(d.getInt32(off + 4));
        off += 8;
      }
      const n = ndim === 0 ? 0 : dims.reduce((a, b) => a * b, 1);
      const items: (Value | null)[] = [];
      for (let i = 0; i < n; i++) {
        const len = d.getInt32(off);
        off += 4;
        if (len < 0) items.push(null);
        else {
          items.push(element.decode(field.subarray(off, off + len), 1));
          off += len;
        }
      }
      return { dims, lbounds, items };
    },
    encode(value, format) {
      const v = value as ArrayValue;
      if (format === 0) return bytesOf(formatArray(v, element));
      const encoded = v.items.map((x) => (x === null ? null : element.encode(x, 1)));
      let size = 12 + v.dims.length * 8;
      for (const e of encoded) size += 4 + (e === null ? 0 : e.length);
      const out = new Uint8Array(size);
      const d = view(out);
      d.setInt32(0, v.dims.length);
      d.setInt32(4, encoded.includes(null) ? 1 : 0);
      d.setUint32(8, elementOid);
      let off = 12;
      for (let i = 0; i < v.dims.length; i++) {
        d.setInt32(off, v.dims[i]);
        d.setInt32(off + 4, v.lbounds[i]);
        off += 8;
      }
      for (const e of encoded) {
        d.setInt32(off, e === null ? -1 : e.length);
        off += 4;
        if (e !== null) {
          out.set(e, off);
          off += e.length;
        }
      }
      return out;
    },
    compare(a, b) {
      // array_cmp: elements in order (NULL above everything), then count, ndims, dims, bounds.
      const x = a as ArrayValue;
      const y = b as ArrayValue;
      const n = Math.min(x.items.length, y.items.length);
      for (let i = 0; i < n; i++) {
        const p = x.items[i];
        const q = y.items[i];
        if (p === null || q === null) {
          if (p === null && q === null) continue;
          return p === null ? 1 : -1;
        }
        const c = element.compare(p, q);
        if (c !== 0) return c;
      }
      if (x.items.length !== y.items.length) return x.items.length - y.items.length;
      if (x.dims.length !== y.dims.length) return x.dims.length - y.dims.length;
      for (let i = 0; i < x.dims.length; i++) {
        if (x.dims[i] !== y.dims[i]) return x.dims[i] - y.dims[i];
      }
      for (let i = 0; i < x.dims.length; i++) {
        if (x.lbounds[i] !== y.lbounds[i]) return x.lbounds[i] - y.lbounds[i];
      }
      return 0;
    },
    groupKey(value) {
      const v = value as ArrayValue;
      let key = `${v.dims.join(",")}|${v.lbounds.join(",")}|`;
      for (const item of v.items) {
        if (item === null) key += "N";
        else {
          const k = element.groupKey(item);
          key += `${k.length}:${k}`;
        }
      }
      return key;
    },
  };
}

// ---------------------------------------------------------------- lookup

function scalarOps(oid: number, collation: Collation): TypeOps | null {
  switch (oid) {
    case OID.bool:
      return boolOps();
    case OID.bytea:
      return byteaOps();
    case OID.char:
      return charOps();
    case OID.int2:
      return intOps(oid, 2);
    case OID.int4:
      return intOps(oid, 4);
    case OID.int8:
      return int8Ops();
    case OID.oid:
      return oidOps();
    case OID.float4:
      return floatOps(oid, true);
    case OID.float8:
      return floatOps(oid, false);
    case OID.numeric:
      return numericOps();
    case OID.text:
    case 705: // unknown: a literal's type in a shard's result, text in PostgreSQL 10+
    case OID.varchar:
    case OID.bpchar:
    case OID.name:
      return textOps(oid, collation);
    case OID.date:
      return dateOps();
    case OID.time:
      return timeOps();
    case OID.timetz:
      return timetzOps();
    case OID.timestamp:
      return timestampOps();
    case OID.timestamptz:
      return timestamptzOps();
    case OID.interval:
      return intervalOps();
    case OID.uuid:
      return uuidOps();
    case OID.json:
    case OID.jsonb:
      return jsonOps(oid, collation);
    default:
      return null;
  }
}

const cache = new Map<string, TypeOps | null>();

/**
 * The operations for a type, or null when pgdog can't compare/compute it (the caller refuses
 * with 0A000). json (which PostgreSQL can't compare either) decodes and encodes, but its
 * `compare` and `groupKey` throw MergeError 0A000; pass `ordering: true` to get null for it.
 */
export function typeOps(
  oid: number,
  options: { collation: Collation; ordering?: boolean },
): TypeOps | null {
  if (options.ordering && (oid === OID.json || oid === 199)) {
    return null;
  }
  const key = `${oid}/${options.collation.kind === "icu" ? options.collation.locale : ""}`;
  const cached = cache.get(key);
  if (cached !== undefined) return cached;
  let ops: TypeOps | null;
  const elementOid = ARRAY_ELEMENT.get(oid);
  if (elementOid !== undefined) {
    const element = scalarOps(elementOid, options.collation);
    ops = element === null ? null : arrayOps(oid, elementOid, element);
  } else ops = scalarOps(oid, options.collation);
  cache.set(key, ops);
  return ops;
}

/** Where a database's collation comes from: its pg_database row. */
export interface DatabaseLocale {
  /** `datlocprovider`: "c" (libc) or "i" (ICU). */
  provider: string;
  /** `datcollate`. */
  collate: string;
  /** `daticulocale` (ICU databases). */
  icuLocale: string | null;
}

const BYTE_ORDER = new Set(["c", "posix", "c.utf8", "c.utf-8", "ucs_basic"]);

/** An ICU locale Intl.Collator implements as asked, else null. */
function icuCollation(locale: string): Collation | null {
  const requested = locale.replace(/_/g, "-");
  if (requested === "" || requested === "und" || requested === "root") {
    return { kind: "icu", locale: "und" };
  }
  try {
    const canonical = Intl.getCanonicalLocales(requested)[0];
    const resolved = new Intl.Collator(canonical).resolvedOptions().locale;
    const want = new Intl.Locale(canonical);
    const got = new Intl.Locale(resolved);
    // Unicode extensions Intl ignores (e.g. -u-ks-level2) would change the order: refuse.
    const extensions = (l: string): string => l.split("-u-")[1] ?? "";
    if (want.language !== got.language || extensions(canonical) !== extensions(resolved)) {
      return null;
    }
    return { kind: "icu", locale: canonical };
  } catch {
    return null;
  }
}

/**
 * The collation of a database (from pg_database) or of a `COLLATE "name"`; null when pgdog
 * can't compare text the same way (a libc locale other than C/POSIX/C.UTF-8, an ICU locale
 * Intl.Collator doesn't implement, a nondeterministic collation).
 */
export function collationFor(source: DatabaseLocale | string): Collation | null {
  if (typeof source === "string") {
    if (BYTE_ORDER.has(source.toLowerCase())) return { kind: "bytes" };
    const m = /^(.*)-x-icu$/.exec(source);
    return m === null ? null : icuCollation(m[1]);
  }
  if (source.provider === "i") return icuCollation(source.icuLocale ?? "");
  return BYTE_ORDER.has(source.collate.toLowerCase()) ? { kind: "bytes" } : null;
}
