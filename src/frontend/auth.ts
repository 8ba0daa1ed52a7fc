/**
 * Client authentication: trust, cleartext password, md5 and SCRAM-SHA-256, checked against
 * users.toml. Unknown users go through the same exchange with a secret nobody knows, so the
 * answer does not reveal which user names exist.
 *
 * @module
 */

import type { AuthType } from "../config/types.ts";
import { AuthCode, MessageBuilder, Msg, readCString, readInt32 } from "../protocol/messages.ts";
import {
  cachedScramSecret,
  SCRAM_DEFAULT_ITERATIONS,
  type ScramSecret,
  ScramServerSession,
} from "../protocol/scram.ts";
import { md5Verify } from "../protocol/md5.ts";
import { randomBytes, timingSafeEqual, utf8Encode } from "../protocol/crypto_util.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import type { ByteStream } from "../net/stream.ts";
import type { SocketWriter } from "../net/writer.ts";

/** The client connection as authentication sees it. */
export interface AuthIo {
  conn: ByteStream;
  writer: SocketWriter;
  rbuf: MessageBuffer;
}

/** Outcome of authentication; `protocol` is set when the client broke the exchange. */
export type AuthOutcome = { ok: true } | { ok: false; protocol?: string };

/** Thrown when the client hangs up during authentication. */
export class ClientGoneError extends Error {
  constructor() {
    super("client closed the connection");
    this.name = "ClientGoneError";
  }
}

const UNKNOWN_USER_SECRET = crypto.randomUUID();
const decoder = new TextDecoder();

/**
 * Runs the exchange for `method`. `known` says whether the user is configured; `password` is its
 * configured password. Without both, password methods still run the exchange and then fail.
 */
export async function authenticateClient(
  io: AuthIo,
  options: { method: AuthType; user: string; known: boolean; password: string | undefined },
): Promise<AuthOutcome> {
  const { method, user } = options;
  const known = options.known && options.password !== undefined;
  const password = known ? options.password : undefined;
  const b = new MessageBuilder(128);
  switch (method) {
    case "trust":
      return { ok: options.known };
    case "plain": {
      b.begin(Msg.Authentication).int32(AuthCode.CleartextPassword).end();
      await io.writer.write(b.view());
      const body = await readPasswordMessage(io);
      if (typeof body === "string") return { ok: false, protocol: body };
      const given = readCString(body, 0, body.length)[0];
      const expected = password ?? UNKNOWN_USER_SECRET;
      const ok = timingSafeEqual(
        new TextEncoder().encode(given),
        new TextEncoder().encode(expected),
      );
      return { ok: ok && known };
    }
    case "md5": {
      const salt = randomBytes(4);
      b.begin(Msg.Authentication).int32(AuthCode.Md5Password).bytes(salt).end();
      await io.writer.write(b.view());
      const body = await readPasswordMessage(io);
      if (typeof body === "string") return { ok: false, protocol: body };
      const response = readCString(body, 0, body.length)[0];
      const ok = md5Verify({ user, password: password ?? UNKNOWN_USER_SECRET, salt, response });
      return { ok: ok && known };
    }
    case "scram": {
      const secret = password === undefined
        ? await mockScramSecret(user)
        : await cachedScramSecret(user, password);
      const session = new ScramServerSession(secret, user);
      b.begin(Msg.Authentication).int32(AuthCode.Sasl).cstring("SCRAM-SHA-256").byte(0).end();
      await io.writer.write(b.view());
      const initial = await readPasswordMessage(io);
      if (typeof initial === "string") return { ok: false, protocol: initial };
      const [mechanism, afterMech] = readCString(initial, 0, initial.length);
      if (mechanism !== "SCRAM-SHA-256") {
        return {
          ok: false,
          protocol: `client selected an invalid SASL authentication mechanism "${mechanism}"`,
        };
      }
      if (afterMech + 4 > initial.length) {
        return { ok: false, protocol: "malformed SASLInitialResponse" };
      }
      const len = readInt32(initial, afterMech);
      const first = len < 0
        ? ""
        : decoder.decode(initial.subarray(afterMech + 4, afterMech + 4 + len));
      const r1 = session.handleClientFirst(first);
      if ("error" in r1) return { ok: false, protocol: r1.error };
      b.reset();
      b.begin(Msg.Authentication).int32(AuthCode.SaslContinue).string(r1.serverFirst).end();
      await io.writer.write(b.view());
      const finalMsg = await readPasswordMessage(io);
      if (typeof finalMsg === "string") return { ok: false, protocol: finalMsg };
      const r2 = await session.handleClientFinal(decoder.decode(finalMsg));
      if (!r2.ok) {
        return r2.error.startsWith("password authentication failed")
          ? { ok: false }
          : { ok: false, protocol: r2.error };
      }
      if (!known) return { ok: false };
      b.reset();
      b.begin(Msg.Authentication).int32(AuthCode.SaslFinal).string(r2.serverFinal).end();
      await io.writer.write(b.view());
      return { ok: true };
    }
  }
}

/** Makes each user name's mock salt the same on every attempt, as a real user's is. */
let mockSaltKey: Promise<CryptoKey> | null = null;

/**
 * A SCRAM secret for a login that must fail (unknown user or database): a salt that is stable per
 * name and keys nobody has, made without PBKDF2 so it takes as long as a configured user's cached
 * secret (and without touching that cache).
 */
async function mockScramSecret(user: string): Promise<ScramSecret> {
  mockSaltKey ??= crypto.subtle.importKey(
    "raw",
    randomBytes(32),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = await crypto.subtle.sign("HMAC", await mockSaltKey, utf8Encode(user));
  return {
    iterations: SCRAM_DEFAULT_ITERATIONS,
    salt: new Uint8Array(mac, 0, 16),
    storedKey: randomBytes(32),
    serverKey: randomBytes(32),
  };
}

/** Reads the next message, which must be a PasswordMessage; returns its body or a protocol complaint. */
async function readPasswordMessage(io: AuthIo): Promise<Uint8Array | string> {
  let size: number;
  while ((size = io.rbuf.nextMessageSize()) === 0) {
    if (!(await io.rbuf.fill(io.conn))) throw new ClientGoneError();
  }
  const type = io.rbuf.buf[io.rbuf.start];
  const body = io.rbuf.buf.slice(io.rbuf.start + 5, io.rbuf.start + size);
  io.rbuf.consume(size);
  if (type !== Msg.Password) {
    return `expected password response, got message type '${String.fromCharCode(type)}'`;
  }
  return body;
}
