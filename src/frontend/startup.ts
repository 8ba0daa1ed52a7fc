/**
 * The untyped packets a client sends before its first typed message: SSLRequest, GSSENCRequest,
 * CancelRequest and the StartupMessage.
 *
 * @module
 */

import { readCString, readInt32, StartupCode } from "../protocol/messages.ts";
import type { ByteStream } from "../net/stream.ts";

/** PostgreSQL's own limit on a startup packet. */
export const MAX_STARTUP_PACKET = 10000;

/** A decoded startup-phase packet. */
export type StartupPacket =
  | { kind: "ssl" }
  | { kind: "gssenc" }
  | { kind: "cancel"; pid: number; secret: number }
  | { kind: "startup"; major: number; minor: number; params: Map<string, string> }
  | { kind: "invalid"; reason: string };

/** Reads one startup-phase packet; resolves null when the client closes before sending it all. */
export async function readStartupPacket(conn: ByteStream): Promise<StartupPacket | null> {
  const head = new Uint8Array(4);
  let have = 0;
  while (have < 4) {
    const n = await conn.read(head.subarray(have));
    if (n === null) return null;
    have += n;
  }
  const len = readInt32(head, 0);
  if (len < 8 || len > MAX_STARTUP_PACKET) {
    return { kind: "invalid", reason: `invalid length of startup packet: ${len}` };
  }
  const packet = new Uint8Array(len);
  packet.set(head);
  while (have < len) {
    const n = await conn.read(packet.subarray(have));
    if (n === null) return null;
    have += n;
  }
  return decodeStartupPacket(packet);
}

/** Decodes a complete startup-phase packet (length included). */
export function decodeStartupPacket(packet: Uint8Array): StartupPacket {
  const code = readInt32(packet, 4);
  switch (code) {
    case StartupCode.SslRequest:
      return packet.length === 8
        ? { kind: "ssl" }
        : { kind: "invalid", reason: "malformed SSLRequest" };
    case StartupCode.GssEncRequest:
      return packet.length === 8
        ? { kind: "gssenc" }
        : { kind: "invalid", reason: "malformed GSSENCRequest" };
    case StartupCode.CancelRequest:
      if (packet.length !== 16) return { kind: "invalid", reason: "malformed CancelRequest" };
      return { kind: "cancel", pid: readInt32(packet, 8), secret: readInt32(packet, 12) };
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  const params = new Map<string, string>();
  let p = 8;
  const end = packet.length;
  for (;;) {
    if (p >= end) return { kind: "invalid", reason: "startup packet is not terminated" };
    if (packet[p] === 0) break;
    const [name, afterName] = readCString(packet, p, end);
    if (afterName > end) return { kind: "invalid", reason: "startup packet is not terminated" };
    if (afterName >= end) {
      return { kind: "invalid", reason: `startup parameter "${name}" has no value` };
    }
    const [value, afterValue] = readCString(packet, afterName, end);
    if (afterValue > end) {
      return { kind: "invalid", reason: `startup parameter "${name}" has no value` };
    }
    params.set(name, value);
    p = afterValue;
  }
  return { kind: "startup", major, minor, params };
}
