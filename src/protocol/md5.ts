/**
 * PostgreSQL's MD5 password authentication (`AuthenticationMD5Password`).
 *
 * MD5 comes from `node:crypto`, since WebCrypto does not offer it.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { timingSafeEqual, utf8Encode } from "./crypto_util.ts";

const STORED_MD5 = /^md5[0-9a-f]{32}$/;

/**
 * Hex MD5 digest.
 *
 * @param data Bytes to hash; strings are hashed as UTF-8.
 * @returns 32 lowercase hex digits.
 */
export function md5Hex(data: string | Uint8Array): string {
  return createHash("md5").update(data).digest("hex");
}

/**
 * Whether a configured password is already PostgreSQL's stored MD5 form
 * (`"md5"` followed by 32 lowercase hex digits), as found in `pg_authid`.
 *
 * @param password The configured password.
 * @returns `true` for a stored MD5 hash.
 */
export function isMd5StoredPassword(password: string): boolean {
  return STORED_MD5.test(password);
}

/**
 * PostgreSQL's stored MD5 form of a password: `"md5" + md5hex(password + user)`.
 * A password that is already in that form is returned as is.
 *
 * @param user The user name (the salt of the stored form).
 * @param password The plaintext password.
 * @returns The stored hash, `md5` followed by 32 hex digits.
 */
export function md5StoredPassword(user: string, password: string): string {
  if (isMd5StoredPassword(password)) return password;
  return "md5" + md5Hex(password + user);
}

/**
 * What a client answers to AuthenticationMD5Password:
 * `"md5" + md5hex(md5hex(password + user) + salt)`, where the inner digest is
 * hashed as its ASCII hex text followed by the 4 raw salt bytes.
 *
 * `password` may also be the stored form (`md5...`), in which case the inner
 * hash is taken from it; this lets the proxy log in to a server knowing only
 * the hash from `pg_authid`.
 *
 * @param user The user name from the startup packet.
 * @param password The plaintext password, or its stored MD5 form.
 * @param salt The 4 salt bytes from AuthenticationMD5Password.
 * @returns The PasswordMessage payload, `md5` followed by 32 hex digits.
 */
export function md5PasswordHash(user: string, password: string, salt: Uint8Array): string {
  const inner = md5StoredPassword(user, password).slice(3);
  const hexBytes = utf8Encode(inner);
  const data = new Uint8Array(hexBytes.length + salt.length);
  data.set(hexBytes);
  data.set(salt, hexBytes.length);
  return "md5" + md5Hex(data);
}

/** Options for {@link md5Verify}. */
export interface Md5VerifyOptions {
  /** The user name from the startup packet. */
  user: string;
  /** The configured password: plaintext or stored MD5 form (`md5...`). */
  password: string;
  /** The 4 salt bytes sent in AuthenticationMD5Password. */
  salt: Uint8Array;
  /** The client's PasswordMessage payload (without the trailing NUL). */
  response: string;
}

/**
 * Checks a client's answer to AuthenticationMD5Password, in constant time.
 *
 * @param options User, configured password, salt and the client's response.
 * @returns `true` when the response matches the password.
 */
export function md5Verify(options: Md5VerifyOptions): boolean {
  const { user, password, salt, response } = options;
  const expected = utf8Encode(md5PasswordHash(user, password, salt));
  return timingSafeEqual(utf8Encode(response), expected);
}
