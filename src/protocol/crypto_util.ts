/**
 * Small byte helpers shared by the authentication code (SCRAM and MD5).
 *
 * @module
 */

const BASE64_PATTERN = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

const textEncoder = new TextEncoder();

/**
 * Encodes bytes as standard base64 (RFC 4648 alphabet, with padding).
 *
 * @param bytes The bytes to encode.
 * @returns The base64 text.
 */
export function encodeBase64(bytes: Uint8Array): string {
  return bytes.toBase64();
}

/**
 * Decodes standard padded base64. Unlike `atob`, whitespace, a missing padding
 * and characters outside the alphabet are rejected.
 *
 * @param text The base64 text.
 * @returns The decoded bytes, or `undefined` when `text` is not valid base64.
 */
export function decodeBase64(text: string): Uint8Array | undefined {
  if (!BASE64_PATTERN.test(text)) return undefined;
  try {
    return Uint8Array.fromBase64(text);
  } catch {
    return undefined;
  }
}

/**
 * Encodes a string as UTF-8 bytes.
 *
 * @param text The string to encode.
 * @returns The UTF-8 bytes.
 */
export function utf8Encode(text: string): Uint8Array<ArrayBuffer> {
  return textEncoder.encode(text);
}

/**
 * Compares two byte arrays in time that depends only on their lengths, not on
 * their contents. Arrays of different lengths are unequal (the length itself
 * is not treated as secret).
 *
 * @param a First array.
 * @param b Second array.
 * @returns `true` when both arrays hold the same bytes.
 */
export function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/**
 * Returns `n` cryptographically secure random bytes.
 *
 * @param n How many bytes to return.
 * @returns Fresh random bytes.
 */
export function randomBytes(n: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(n);
  // getRandomValues fills at most 65536 bytes per call.
  for (let offset = 0; offset < n; offset += 65536) {
    crypto.getRandomValues(bytes.subarray(offset, Math.min(n, offset + 65536)));
  }
  return bytes;
}

/**
 * XORs two byte arrays of equal length into a new array.
 *
 * @param a First array.
 * @param b Second array, the same length as `a`.
 * @returns `a ^ b`, byte by byte.
 */
export function xorBytes(a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  if (a.length !== b.length) throw new RangeError("xorBytes: lengths differ");
  const out = new Uint8Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] ^ b[i];
  return out;
}
