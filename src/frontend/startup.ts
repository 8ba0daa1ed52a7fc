/**
 * The untyped packets a client sends before its first typed message: SSLRequest, GSSENCRequest,
 * CancelRequest and the StartupMessage.
 *
 * Malformed packets are treated as PostgreSQL's ProcessStartupPacket treats them: a length word out
 * of range, a packet cut short and a CancelRequest of the wrong size are only logged and the
 * connection closed without a word (they are not the start of a conversation: npm:pg, for one,
 * sends Terminate there when ended before it connected, and raises any answer as an error);
 * a packet of the right length whose contents are wrong gets a FATAL ErrorResponse.
 *
 * @module
 */

import { readCString, readInt32, StartupCode } from "../protocol/messages.ts";
import type { ByteStream } from "../net/stream.ts";

/** PostgreSQL's own limit on a startup packet, not counting its length word. */
export const MAX_STARTUP_PACKET = 10000;

/** A decoded startup-phase packet. */
export type StartupPacket =
  | { kind: "ssl" }
  | { kind: "gssenc" }
  | { kind: "cancel"; pid: number; secret: number }
  | { kind: "startup"; major: number; minor: number; params: Map<string, string> }
  | { kind: "invalid"; reason: string }
  /** Closed without an answer (PostgreSQL's COMMERROR: logged, nothing sent). */
  | { kind: "drop"; reason: string };

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
  if (len < 8 || len - 4 > MAX_STARTUP_PACKET) {
    return { kind: "drop", reason: `invalid length of startup packet: ${len}` };
  }
  const packet = new Uint8Array(len);
  packet.set(head);
  while (have < len) {
    const n = await conn.read(packet.subarray(have));
    if (n === null) return { kind: "drop", reason: "incomplete startup packet" };
    have += n;
  }
  return decodeStartupPacket(packet);
}

const BAD_LAYOUT = "invalid startup packet layout: expected terminator as last byte";

/** Decodes a complete startup-phase packet (length included). */
export function decodeStartupPacket(packet: Uint8Array): StartupPacket {
  const code = readInt32(packet, 4);
  switch (code) {
    // PostgreSQL does not look past the code of an encryption request.
    case StartupCode.SslRequest:
      return { kind: "ssl" };
    case StartupCode.GssEncRequest:
      return { kind: "gssenc" };
    case StartupCode.CancelRequest:
      if (packet.length !== 16) return { kind: "drop", reason: "invalid length of cancel request" };
      return { kind: "cancel", pid: readInt32(packet, 8), secret: readInt32(packet, 12) };
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  const params = new Map<string, string>();
  let p = 8;
  const end = packet.length;
  // Name/value pairs up to an empty name, which must be the packet's last byte.
  while (p < end && packet[p] !== 0) {
    const [name, afterName] = readCString(packet, p, end);
    if (afterName >= end) break;
    const [value, afterValue] = readCString(packet, afterName, end);
    if (afterValue > end) break;
    params.set(name, value);
    p = afterValue;
  }
  if (p !== end - 1 || packet[p] !== 0) return { kind: "invalid", reason: BAD_LAYOUT };
  return { kind: "startup", major, minor, params };
}
