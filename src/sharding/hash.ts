/**
 * PostgreSQL `PARTITION BY HASH`, bit for bit: a row whose single key column
 * holds `value` lands in the partition `FOR VALUES WITH (MODULUS n, REMAINDER r)`
 * with `r = shardForX(value, n)`.
 *
 * PostgreSQL hashes the key with the type's extended hash function (seeded
 * with {@linkcode HASH_PARTITION_SEED}), folds it into a row hash with
 * `hash_combine64(0, h)` and takes the unsigned remainder:
 *
 * - bigint, integer, smallint: `hashint8extended` (int2/int4 are the same
 *   value sign-extended to int8, and hash identically);
 * - text, varchar: `hash_any_extended` over the UTF-8 bytes (deterministic
 *   collations only; a nondeterministic ICU collation hashes a sort key);
 * - uuid: `hash_any_extended` over the 16 raw bytes.
 *
 * The hash is Bob Jenkins' lookup3 as in PostgreSQL's `hashfn.c` on a
 * little-endian machine. The 32-bit mixing runs on plain numbers; BigInt is
 * used only to build the 64-bit results of the exported hash functions. The
 * `shardFor*` functions never allocate a BigInt for the hash itself.
 *
 * ```ts
 * import { shardForBigint, shardForText } from "./hash.ts";
 * shardForBigint(3n, 12); // 1
 * shardForText("apples", 12); // 1
 * ```
 *
 * @module
 */

/** Seed PostgreSQL uses for partition hashing (`HASH_PARTITION_SEED`). */
export const HASH_PARTITION_SEED: bigint = 0x7A5B22367996DCFDn;

/** Constant added by `hash_combine64` (from the golden ratio). */
const COMBINE_CONSTANT = 0x49a0f4dd15e5a8e3n;
const COMBINE_HI = 0x49a0f4dd;
const COMBINE_LO = 0x15e5a8e3;

/** lookup3's initial value: `0x9e3779b9 + 3923095`; the key length is added to it. */
const INIT = (0x9e3779b9 + 3923095) | 0;

const TWO_32 = 0x1_0000_0000;
/** Largest modulus for which the remainder is computed without BigInt (n² + 2³² < 2⁵³). */
const FAST_MODULUS_MAX = 1 << 26;
const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;

/** The 64-bit result of the last hash, as two unsigned 32-bit halves. */
let outHi = 0;
let outLo = 0;

/** A seed split into the two words lookup3 adds to its state. */
interface Seed {
  /** Whether the seed is non-zero (a zero seed skips the seeding mix). */
  readonly set: boolean;
  /** High 32 bits, as an int32. */
  readonly hi: number;
  /** Low 32 bits, as an int32. */
  readonly lo: number;
}

function splitSeed(seed: bigint): Seed {
  const u = BigInt.asUintN(64, seed);
  return {
    set: u !== 0n,
    hi: Number(u >> 32n) | 0,
    lo: Number(BigInt.asUintN(32, u)) | 0,
  };
}

const PARTITION_SEED = splitSeed(HASH_PARTITION_SEED);

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/**
 * lookup3 over one 32-bit word (`hash_uint32_extended`); leaves the result in
 * `outHi` (b) and `outLo` (c).
 */
function hashWord(k: number, seed: Seed): void {
  a = b = c = (INIT + 4) | 0;
  if (seed.set) {
    a = (a + seed.hi) | 0;
    b = (b + seed.lo) | 0;
    mix();
  }
  a = (a + k) | 0;
  final();
}

/**
 * lookup3 over `bytes[0, length)` (`hash_any_extended`, little-endian word
 * loads); leaves the result in `outHi` (b) and `outLo` (c).
 */
function hashBytes(bytes: Uint8Array, length: number, seed: Seed): void {
  a = b = c = (INIT + length) | 0;
  if (seed.set) {
    a = (a + seed.hi) | 0;
    b = (b + seed.lo) | 0;
    mix();
  }
  let i = 0;
  let left = length;
  while (left >= 12) {
    a = (a + (bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24))) | 0;
    b = (b + (bytes[i + 4] | (bytes[i + 5] << 8) | (bytes[i + 6] << 16) | (bytes[i + 7] << 24))) |
      0;
    c = (c + (bytes[i + 8] | (bytes[i + 9] << 8) | (bytes[i + 10] << 16) | (bytes[i + 11] << 24))) |
      0;
    mix();
    i += 12;
    left -= 12;
  }
  // The last 0..11 bytes: bytes 0-3 go into a and 4-7 into b, little-endian;
  // bytes 8-10 into c one byte higher (c's lowest byte is left to the length).
  for (let j = 0; j < left; j++) {
    if (j < 4) a = (a + (bytes[i + j] << (j << 3))) | 0;
    else if (j < 8) b = (b + (bytes[i + j] << ((j - 4) << 3))) | 0;
    else c = (c + (bytes[i + j] << ((j - 7) << 3))) | 0;
  }
  final();
}

/** The lookup3 state: three 32-bit words (module-level, so hashing allocates nothing). */
let a = 0;
let b = 0;
let c = 0;

/** lookup3's `mix(a, b, c)`. */
function mix(): void {
  a = (a - c) | 0;
  a ^= rotl(c, 4);
  c = (c + b) | 0;
  b = (b - a) | 0;
  b ^= rotl(a, 6);
  a = (a + c) | 0;
  c = (c - b) | 0;
  c ^= rotl(b, 8);
  b = (b + a) | 0;
  a = (a - c) | 0;
  a ^= rotl(c, 16);
  c = (c + b) | 0;
  b = (b - a) | 0;
  b ^= rotl(a, 19);
  a = (a + c) | 0;
  c = (c - b) | 0;
  c ^= rotl(b, 4);
  b = (b + a) | 0;
}

/** lookup3's `final(a, b, c)`; the result goes to `outHi` (b) and `outLo` (c). */
function final(): void {
  c ^= b;
  c = (c - rotl(b, 14)) | 0;
  a ^= c;
  a = (a - rotl(c, 11)) | 0;
  b ^= a;
  b = (b - rotl(a, 25)) | 0;
  c ^= b;
  c = (c - rotl(b, 16)) | 0;
  a ^= c;
  a = (a - rotl(c, 4)) | 0;
  b ^= a;
  b = (b - rotl(a, 14)) | 0;
  c ^= b;
  c = (c - rotl(b, 24)) | 0;
  outHi = b >>> 0;
  outLo = c >>> 0;
}

function result64(): bigint {
  return (BigInt(outHi) << 32n) | BigInt(outLo);
}

/**
 * `hash_combine64(0, hash) % modulus` for the hash in `outHi`/`outLo`:
 * the row hash of a single-column partition key, reduced to a remainder.
 */
function remainder(modulus: number): number {
  let lo = outLo + COMBINE_LO;
  let carry = 0;
  if (lo >= TWO_32) {
    lo -= TWO_32;
    carry = 1;
  }
  const hi = (outHi + COMBINE_HI + carry) >>> 0;
  if (modulus <= FAST_MODULUS_MAX) {
    return ((hi % modulus) * (TWO_32 % modulus) + lo) % modulus;
  }
  return Number(((BigInt(hi) << 32n) | BigInt(lo)) % BigInt(modulus));
}

function checkModulus(shards: number): void {
  if (!Number.isSafeInteger(shards) || shards < 1) {
    throw new RangeError(`the number of shards must be a positive integer, got ${shards}`);
  }
}

/**
 * Fold an int64 (given as its signed high and unsigned low 32-bit halves)
 * the way `hashint8extended` does, and hash it into `outHi`/`outLo`.
 */
function hashInt64Halves(hi: number, lo: number, seed: Seed): void {
  // lo ^= (value >= 0 ? hi : ~hi); the sign of the value is the sign of hi.
  hashWord(lo ^ (hi >= 0 ? hi : ~hi), seed);
}

/** Hash an int64 bigint into `outHi`/`outLo`; throws when out of range. */
function hashInt64(value: bigint, seed: Seed): void {
  if (value >= -0x20000000000000n && value <= 0x20000000000000n) {
    const n = Number(value);
    const hi = Math.floor(n / TWO_32);
    hashInt64Halves(hi, n - hi * TWO_32, seed);
    return;
  }
  if (value < INT64_MIN || value > INT64_MAX) {
    throw new RangeError(`${value} is out of range for type bigint`);
  }
  hashInt64Halves(Number(value >> 32n), Number(BigInt.asUintN(32, value)), seed);
}

/**
 * PostgreSQL's `hashint8extended(value, seed)`: the seeded 64-bit hash of an
 * int8 (also of an int2 or int4 of the same value).
 *
 * @param value A value in the int8 range (throws a RangeError otherwise).
 * @param seed The seed; only its low 64 bits count (a negative seed is taken
 *   as its two's complement, as the SQL function's int8 argument is).
 * @returns The hash as an unsigned 64-bit bigint (`BigInt.asIntN(64, h)`
 *   gives what the SQL function returns).
 */
export function hashInt8Extended(value: bigint, seed: bigint): bigint {
  hashInt64(value, splitSeed(seed));
  return result64();
}

/**
 * PostgreSQL's `hash_any_extended(bytes, length, seed)` (what
 * `hashtextextended` and `uuid_hash_extended` return).
 *
 * @param bytes The bytes to hash.
 * @param seed The seed; only its low 64 bits count.
 * @returns The hash as an unsigned 64-bit bigint.
 */
export function hashBytesExtended(bytes: Uint8Array, seed: bigint): bigint {
  hashBytes(bytes, bytes.length, splitSeed(seed));
  return result64();
}

/**
 * PostgreSQL's `hash_combine64(a, b)`: how the partition row hash folds in
 * each key column's hash (all arithmetic wraps at 64 bits).
 *
 * @param a The running row hash (0 for the first column).
 * @param b The column's hash.
 * @returns The combined hash, unsigned 64-bit.
 */
export function hashCombine64(a: bigint, b: bigint): bigint {
  const x = BigInt.asUintN(64, a);
  const sum = BigInt.asUintN(64, b) + COMBINE_CONSTANT + (x << 54n) + (x >> 7n);
  return BigInt.asUintN(64, x ^ sum);
}

/**
 * The hash partition (remainder) of an int8/int4/int2 key, as PostgreSQL
 * computes it for a table `PARTITION BY HASH` with `shards` partitions.
 *
 * @param value The key, in the int8 range (throws a RangeError otherwise).
 * @param shards The modulus (number of shards), a positive integer.
 * @returns The remainder, 0 ≤ r < shards.
 */
export function shardForBigint(value: bigint, shards: number): number {
  checkModulus(shards);
  hashInt64(value, PARTITION_SEED);
  return remainder(shards);
}

let textScratch = new Uint8Array(256);
const encoder = new TextEncoder();

/**
 * The hash partition (remainder) of a text/varchar key (its UTF-8 bytes; for
 * columns with a deterministic collation, which is every built-in one).
 *
 * A lone UTF-16 surrogate cannot be stored in PostgreSQL; it is encoded as
 * U+FFFD here.
 *
 * @param value The key.
 * @param shards The modulus (number of shards), a positive integer.
 * @returns The remainder, 0 ≤ r < shards.
 */
export function shardForText(value: string, shards: number): number {
  checkModulus(shards);
  const length = value.length;
  if (textScratch.length < length * 3) {
    textScratch = new Uint8Array(Math.max(length * 3, textScratch.length * 2));
  }
  // Short ASCII keys (the common case) are copied by hand: cheaper than a call to encodeInto.
  let written = 0;
  if (length <= 64) {
    while (written < length) {
      const code = value.charCodeAt(written);
      if (code >= 0x80) break;
      textScratch[written++] = code;
    }
  }
  if (written < length) written = encoder.encodeInto(value, textScratch).written;
  hashBytes(textScratch, written, PARTITION_SEED);
  return remainder(shards);
}

/**
 * The hash partition (remainder) of raw bytes hashed with `hash_any_extended`
 * (e.g. a text key already in UTF-8, or a bytea-like key).
 *
 * @param bytes The key's bytes.
 * @param shards The modulus (number of shards), a positive integer.
 * @returns The remainder, 0 ≤ r < shards.
 */
export function shardForBytes(bytes: Uint8Array, shards: number): number {
  checkModulus(shards);
  hashBytes(bytes, bytes.length, PARTITION_SEED);
  return remainder(shards);
}

function hexValue(code: number): number {
  if (code >= 48 && code <= 57) return code - 48; // 0-9
  const lower = code | 0x20;
  if (lower >= 97 && lower <= 102) return lower - 87; // a-f, A-F
  return -1;
}

/**
 * Parse the text form of a uuid into `out` exactly as PostgreSQL's `uuid_in`
 * does: 32 hex digits (either case), optionally wrapped in `{}`, with an
 * optional single `-` after any group of four digits (but not at the end).
 * No whitespace is allowed. Returns false on a syntax error.
 */
function parseUuidInto(text: string, out: Uint8Array): boolean {
  let p = 0;
  const braces = text.charCodeAt(0) === 123; // {
  if (braces) p++;
  for (let i = 0; i < 16; i++) {
    const hi = hexValue(text.charCodeAt(p));
    const lo = hexValue(text.charCodeAt(p + 1));
    if (hi < 0 || lo < 0) return false;
    out[i] = (hi << 4) | lo;
    p += 2;
    if ((i & 1) === 1 && i < 15 && text.charCodeAt(p) === 45) p++; // -
  }
  if (braces) {
    if (text.charCodeAt(p) !== 125) return false; // }
    p++;
  }
  return p === text.length;
}

/**
 * Parse a uuid's text form as PostgreSQL's `uuid_in` accepts it: canonical
 * `a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11`, upper or lower case, without
 * hyphens, with a hyphen after any group of four hex digits, optionally in
 * braces. No surrounding whitespace.
 *
 * @param text The text form.
 * @returns The 16 bytes, or null when PostgreSQL would reject the text.
 */
export function parseUuid(text: string): Uint8Array | null {
  const out = new Uint8Array(16);
  return parseUuidInto(text, out) ? out : null;
}

const uuidScratch = new Uint8Array(16);

/**
 * The hash partition (remainder) of a uuid key.
 *
 * @param value The uuid: its text form (anything {@linkcode parseUuid}
 *   accepts) or its 16 raw bytes (e.g. a binary-format bind parameter).
 * @param shards The modulus (number of shards), a positive integer.
 * @returns The remainder, 0 ≤ r < shards.
 * @throws {RangeError} When the text is not a valid uuid, or `value` is not 16 bytes.
 */
export function shardForUuid(value: string | Uint8Array, shards: number): number {
  checkModulus(shards);
  let bytes: Uint8Array;
  if (typeof value === "string") {
    if (!parseUuidInto(value, uuidScratch)) {
      throw new RangeError(`invalid input syntax for type uuid: "${value}"`);
    }
    bytes = uuidScratch;
  } else {
    if (value.length !== 16) {
      throw new RangeError(`a uuid has 16 bytes, got ${value.length}`);
    }
    bytes = value;
  }
  hashBytes(bytes, 16, PARTITION_SEED);
  return remainder(shards);
}

/** Characters C's isspace() accepts: space, \t, \n, \v, \f, \r. */
function isSpace(code: number): boolean {
  return code === 32 || (code >= 9 && code <= 13);
}

/**
 * Parse an int8 as PostgreSQL 15's `int8in` does: optional leading and
 * trailing whitespace, an optional `+` or `-`, then at least one decimal
 * digit. No underscores, no `0x`/`0o`/`0b` prefixes (PostgreSQL 16 added
 * those), no decimal point or exponent.
 *
 * @param text The text form.
 * @returns The value, or null when PostgreSQL would reject it (including out
 *   of range).
 */
export function parseBigint(text: string): bigint | null {
  const end = text.length;
  let p = 0;
  while (p < end && isSpace(text.charCodeAt(p))) p++;
  let negative = false;
  const sign = text.charCodeAt(p);
  if (sign === 45 || sign === 43) {
    negative = sign === 45;
    p++;
  }
  const start = p;
  while (p < end) {
    const code = text.charCodeAt(p);
    if (code < 48 || code > 57) break;
    p++;
  }
  const digitsEnd = p;
  if (digitsEnd === start) return null;
  while (p < end && isSpace(text.charCodeAt(p))) p++;
  if (p !== end) return null;
  if (digitsEnd - start <= 15) {
    // Exact as a double: avoid BigInt's string parser.
    const n = Number(text.slice(start, digitsEnd));
    return BigInt(negative ? -n : n);
  }
  const magnitude = BigInt(text.slice(start, digitsEnd));
  const value = negative ? -magnitude : magnitude;
  return value < INT64_MIN || value > INT64_MAX ? null : value;
}
