/**
 * PostgreSQL's `numeric`, exactly: an unscaled BigInt and a display scale (`dscale`), plus NaN
 * and ±Infinity. Text and binary (send/recv) formats, comparison, and the arithmetic the merge
 * needs with PostgreSQL's result scales (add/sub: the larger scale; mul: the sum of scales; div:
 * `select_div_scale`; sqrt: `numeric_sqrt`'s rule), rounding half away from zero as it does.
 *
 * @module
 */

import { MergeError } from "./errors.ts";

/** A numeric value: `unscaled × 10^-scale`, or a special value (then unscaled is 0n). */
export interface Numeric {
  readonly special: "nan" | "inf" | "-inf" | null;
  readonly unscaled: bigint;
  /** Digits after the decimal point as PostgreSQL prints them (dscale), ≥ 0. */
  readonly scale: number;
}

/** NaN. */
export const NUMERIC_NAN: Numeric = { special: "nan", unscaled: 0n, scale: 0 };
/** +Infinity. */
export const NUMERIC_INF: Numeric = { special: "inf", unscaled: 0n, scale: 0 };
/** -Infinity. */
export const NUMERIC_NEG_INF: Numeric = { special: "-inf", unscaled: 0n, scale: 0 };
/** 0 (scale 0). */
export const NUMERIC_ZERO: Numeric = { special: null, unscaled: 0n, scale: 0 };

const MAX_DISPLAY_SCALE = 1000;
const MIN_SIG_DIGITS = 16;

const POW10: bigint[] = [];
/** 10^n as a BigInt (cached for small n). */
function pow10(n: number): bigint {
  if (n < 64) {
    let p = POW10[n];
    if (p === undefined) p = POW10[n] = 10n ** BigInt(n);
    return p;
  }
  return 10n ** BigInt(n);
}

function abs(v: bigint): bigint {
  return v < 0n ? -v : v;
}

/** A finite numeric from a BigInt and a scale. */
export function numeric(unscaled: bigint, scale = 0): Numeric {
  return { special: null, unscaled, scale };
}

/** Parse numeric_in's input: `[+-]digits[.digits][e[+-]digits]`, NaN, [+-]Infinity/inf. */
export function parseNumeric(text: string): Numeric {
  const s = text.trim();
  const lower = s.toLowerCase();
  if (lower === "nan") return NUMERIC_NAN;
  if (lower === "infinity" || lower === "+infinity" || lower === "inf" || lower === "+inf") {
    return NUMERIC_INF;
  }
  if (lower === "-infinity" || lower === "-inf") return NUMERIC_NEG_INF;
  const m = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/.exec(s);
  if (m === null || (m[2] === "" && (m[3] ?? "") === "")) {
    throw new MergeError("22P02", `invalid input syntax for type numeric: "${text}"`);
  }
  const frac = m[3] ?? "";
  let unscaled = BigInt((m[2] || "0") + frac);
  let scale = frac.length;
  if (m[4] !== undefined) {
    const exp = Number(m[4]);
    if (!Number.isSafeInteger(exp) || Math.abs(exp) > 100000) {
      throw new MergeError("22003", "value overflows numeric format");
    }
    // PostgreSQL: dscale = max(0, fraction digits - exponent), the digits shifted exactly.
    const newScale = Math.max(0, scale - exp);
    const shift = newScale - (scale - exp);
    unscaled *= pow10(shift);
    scale = newScale;
  }
  if (m[1] === "-") unscaled = -unscaled;
  return { special: null, unscaled, scale };
}

/** numeric_out. */
export function formatNumeric(n: Numeric): string {
  if (n.special !== null) {
    return n.special === "nan" ? "NaN" : n.special === "inf" ? "Infinity" : "-Infinity";
  }
  const neg = n.unscaled < 0n;
  let digits = abs(n.unscaled).toString();
  if (n.scale === 0) return neg ? "-" + digits : digits;
  if (digits.length <= n.scale) digits = "0".repeat(n.scale - digits.length + 1) + digits;
  const point = digits.length - n.scale;
  return (neg ? "-" : "") + digits.slice(0, point) + "." + digits.slice(point);
}

/** Base-10000 digits (most significant first, no leading or trailing zero digits) and weight. */
function toBase10000(n: Numeric): { digits: number[]; weight: number } {
  if (n.unscaled === 0n) return { digits: [], weight: 0 };
  const fracGroups = Math.ceil(n.scale / 4);
  let v = abs(n.unscaled) * pow10(fracGroups * 4 - n.scale);
  const digits: number[] = [];
  while (v > 0n) {
    digits.push(Number(v % 10000n));
    v /= 10000n;
  }
  digits.reverse();
  const weight = digits.length - fracGroups - 1;
  let end = digits.length;
  while (end > 0 && digits[end - 1] === 0) end--;
  return { digits: digits.slice(0, end), weight };
}

/** numeric_send: ndigits, weight, sign, dscale (int16 each), then base-10000 digits. */
export function numericToBinary(n: Numeric): Uint8Array {
  if (n.special !== null) {
    const out = new Uint8Array(8);
    const sign = n.special === "nan" ? 0xc000 : n.special === "inf" ? 0xd000 : 0xf000;
    new DataView(out.buffer).setUint16(4, sign);
    // numeric_send reads dscale from the special header's bits: 32 for ±Infinity, 0 for NaN.
    new DataView(out.buffer).setUint16(6, sign === 0xc000 ? 0 : 32);
    return out;
  }
  const { digits, weight } = toBase10000(n);
  const out = new Uint8Array(8 + digits.length * 2);
  const view = new DataView(out.buffer);
  view.setInt16(0, digits.length);
  view.setInt16(2, weight);
  view.setUint16(4, n.unscaled < 0n ? 0x4000 : 0);
  view.setUint16(6, n.scale);
  for (let i = 0; i < digits.length; i++) view.setInt16(8 + i * 2, digits[i]);
  return out;
}

/** numeric_recv. */
export function numericFromBinary(bytes: Uint8Array): Numeric {
  if (bytes.length < 8) throw new MergeError("08P01", "insufficient data left in message");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ndigits = view.getInt16(0);
  const weight = view.getInt16(2);
  const sign = view.getUint16(4);
  const dscale = view.getUint16(6);
  if (sign === 0xc000) return NUMERIC_NAN;
  if (sign === 0xd000) return NUMERIC_INF;
  if (sign === 0xf000) return NUMERIC_NEG_INF;
  if ((sign !== 0 && sign !== 0x4000) || bytes.length < 8 + ndigits * 2) {
    throw new MergeError("22P03", 'invalid external "numeric" value');
  }
  // value = Σ digit_i × 10000^(weight - i); unscaled = value × 10^dscale.
  let v = 0n;
  for (let i = 0; i < ndigits; i++) v = v * 10000n + BigInt(view.getInt16(8 + i * 2));
  const exp10 = (weight - ndigits + 1) * 4 + dscale;
  const unscaled = exp10 >= 0 ? v * pow10(exp10) : v / pow10(-exp10);
  return { special: null, unscaled: sign === 0x4000 ? -unscaled : unscaled, scale: dscale };
}

/** `unscaled` brought to `scale` (≥ n.scale), exactly. */
function rescaled(n: Numeric, scale: number): bigint {
  return scale === n.scale ? n.unscaled : n.unscaled * pow10(scale - n.scale);
}

/** Order: -Infinity < finite < +Infinity < NaN; NaN = NaN; 1.0 = 1.00. */
export function compareNumeric(a: Numeric, b: Numeric): number {
  const ra = rank(a);
  const rb = rank(b);
  if (ra !== rb || ra !== 1) return ra - rb;
  const scale = Math.max(a.scale, b.scale);
  const x = rescaled(a, scale);
  const y = rescaled(b, scale);
  return x < y ? -1 : x > y ? 1 : 0;
}

function rank(n: Numeric): number {
  return n.special === null ? 1 : n.special === "-inf" ? 0 : n.special === "inf" ? 2 : 3;
}

/** A key equal for equal values whatever their scale (trailing zeros dropped). */
export function numericKey(n: Numeric): string {
  if (n.special !== null) return n.special;
  if (n.unscaled === 0n) return "0";
  let u = n.unscaled;
  let scale = n.scale;
  while (scale > 0 && u % 10n === 0n) {
    u /= 10n;
    scale--;
  }
  return scale === 0 ? u.toString() : `${u}e-${scale}`;
}

/** The sign of a finite value, or of an infinity (NaN: 0). */
function signOf(n: Numeric): number {
  if (n.special === "inf") return 1;
  if (n.special === "-inf") return -1;
  if (n.special === "nan") return 0;
  return n.unscaled < 0n ? -1 : n.unscaled > 0n ? 1 : 0;
}

/** numeric_add. */
export function addNumeric(a: Numeric, b: Numeric): Numeric {
  if (a.special !== null || b.special !== null) {
    if (a.special === "nan" || b.special === "nan") return NUMERIC_NAN;
    if (a.special !== null && b.special !== null) return a.special === b.special ? a : NUMERIC_NAN;
    return a.special !== null ? a : b;
  }
  const scale = Math.max(a.scale, b.scale);
  return { special: null, unscaled: rescaled(a, scale) + rescaled(b, scale), scale };
}

/** numeric_sub. */
export function subNumeric(a: Numeric, b: Numeric): Numeric {
  return addNumeric(a, negateNumeric(b));
}

/** numeric_uminus. */
export function negateNumeric(n: Numeric): Numeric {
  if (n.special === "inf") return NUMERIC_NEG_INF;
  if (n.special === "-inf") return NUMERIC_INF;
  if (n.special === "nan") return n;
  return { special: null, unscaled: -n.unscaled, scale: n.scale };
}

/** numeric_mul: exact, scale = the sum of the scales. */
export function mulNumeric(a: Numeric, b: Numeric): Numeric {
  if (a.special !== null || b.special !== null) {
    if (a.special === "nan" || b.special === "nan") return NUMERIC_NAN;
    const s = signOf(a) * signOf(b);
    return s === 0 ? NUMERIC_NAN : s > 0 ? NUMERIC_INF : NUMERIC_NEG_INF;
  }
  return { special: null, unscaled: a.unscaled * b.unscaled, scale: a.scale + b.scale };
}

/** `n` rounded (half away from zero) to `scale` digits after the point. */
export function roundNumeric(n: Numeric, scale: number): Numeric {
  if (n.special !== null || scale >= n.scale) {
    return n.special !== null ? n : { special: null, unscaled: rescaled(n, scale), scale };
  }
  return { special: null, unscaled: divRound(n.unscaled, pow10(n.scale - scale)), scale };
}

/** num / den rounded half away from zero (den > 0 or < 0). */
function divRound(num: bigint, den: bigint): bigint {
  const neg = (num < 0n) !== (den < 0n);
  const n = abs(num);
  const d = abs(den);
  let q = n / d;
  if ((n % d) * 2n >= d) q += 1n;
  return neg ? -q : q;
}

/** PostgreSQL's select_div_scale: at least 16 significant digits, no less than either scale. */
export function selectDivScale(a: Numeric, b: Numeric): number {
  const x = toBase10000(a);
  const y = toBase10000(b);
  const w1 = x.digits.length === 0 ? 0 : x.weight;
  const w2 = y.digits.length === 0 ? 0 : y.weight;
  const f1 = x.digits[0] ?? 0;
  const f2 = y.digits[0] ?? 0;
  let qweight = w1 - w2;
  if (f1 <= f2) qweight--;
  let rscale = MIN_SIG_DIGITS - qweight * 4;
  rscale = Math.max(rscale, a.scale, b.scale, 0);
  return Math.min(rscale, MAX_DISPLAY_SCALE);
}

/** numeric_div (22012 on division by zero). */
export function divNumeric(a: Numeric, b: Numeric, scale?: number): Numeric {
  if (a.special !== null || b.special !== null) {
    if (a.special === "nan" || b.special === "nan") return NUMERIC_NAN;
    if (a.special !== null) {
      if (b.special !== null) return NUMERIC_NAN;
      const s = signOf(b);
      if (s === 0) throw new MergeError("22012", "division by zero");
      return signOf(a) * s > 0 ? NUMERIC_INF : NUMERIC_NEG_INF;
    }
    return NUMERIC_ZERO;
  }
  if (b.unscaled === 0n) throw new MergeError("22012", "division by zero");
  const rscale = scale ?? selectDivScale(a, b);
  // a/b × 10^rscale = a.u × 10^(rscale + b.scale - a.scale) / b.u
  const e = rscale + b.scale - a.scale;
  const num = e >= 0 ? a.unscaled * pow10(e) : a.unscaled;
  const den = e >= 0 ? b.unscaled : b.unscaled * pow10(-e);
  return { special: null, unscaled: divRound(num, den), scale: rscale };
}

/** numeric_mod: the remainder truncated toward zero, scale the larger of the two. */
export function modNumeric(a: Numeric, b: Numeric): Numeric {
  if (a.special !== null || b.special !== null) {
    if (a.special === "nan" || b.special === "nan") return NUMERIC_NAN;
    if (a.special !== null) {
      if (signOf(b) === 0 && b.special === null) {
        throw new MergeError("22012", "division by zero");
      }
      return NUMERIC_NAN;
    }
    return a;
  }
  if (b.unscaled === 0n) throw new MergeError("22012", "division by zero");
  const scale = Math.max(a.scale, b.scale);
  return { special: null, unscaled: rescaled(a, scale) % rescaled(b, scale), scale };
}

function isqrt(v: bigint): bigint {
  if (v < 2n) return v;
  let x = BigInt(Math.floor(Math.sqrt(Number(v))));
  if (x === 0n) x = 1n;
  // Newton from a float estimate; then settle on floor(sqrt(v)).
  for (;;) {
    const y = (x + v / x) >> 1n;
    if (y >= x) break;
    x = y;
  }
  while (x * x > v) x--;
  while ((x + 1n) * (x + 1n) <= v) x++;
  return x;
}

/** The scale numeric_sqrt gives its result: ≥ 16 significant digits, ≥ the input's scale. */
export function sqrtScale(n: Numeric): number {
  const { digits, weight } = toBase10000(n);
  const w = digits.length === 0 ? 0 : weight;
  const sweight = Math.trunc(((w + 1) * 4) / 2) - 1;
  const rscale = Math.max(MIN_SIG_DIGITS - sweight, n.scale, 0);
  return Math.min(rscale, MAX_DISPLAY_SCALE);
}

/** numeric_sqrt (or to a given scale), correctly rounded half away from zero. */
export function sqrtNumeric(n: Numeric, scale?: number): Numeric {
  if (n.special === "nan" || n.special === "inf") return n;
  if (n.special === "-inf" || n.unscaled < 0n) {
    throw new MergeError("2201F", "cannot take square root of a negative number");
  }
  const rscale = scale ?? sqrtScale(n);
  // sqrt(u × 10^-s) × 10^(rscale+1) = sqrt(u × 10^(2(rscale+1) - s))
  const e = 2 * (rscale + 1) - n.scale;
  const root = e >= 0 ? isqrt(n.unscaled * pow10(e)) : isqrt(n.unscaled / pow10(-e));
  const q = root / 10n + (root % 10n >= 5n ? 1n : 0n);
  return { special: null, unscaled: q, scale: rscale };
}

/** A numeric from an integer. */
export function numericFromBigInt(v: bigint): Numeric {
  return { special: null, unscaled: v, scale: 0 };
}

/** The nearest float8 (numeric → float8 cast). */
export function numericToNumber(n: Numeric): number {
  if (n.special !== null) {
    return n.special === "nan" ? NaN : n.special === "inf" ? Infinity : -Infinity;
  }
  return Number(formatNumeric(n));
}
