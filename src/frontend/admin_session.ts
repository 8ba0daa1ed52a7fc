/**
 * A client of the admin database: its greeting at login, then simple queries, each one admin
 * command (see src/admin), answered until it leaves.
 *
 * @module
 */

import {
  appendBackendKeyData,
  appendParameterStatus,
  AUTH_OK,
  decodeText,
  type ErrorFields,
  MessageBuilder,
  Msg,
  readyForQuery,
  TxStatus,
} from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { wellFormed } from "../protocol/frontend_messages.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import type { ByteStream } from "../net/stream.ts";
import type { SocketWriter } from "../net/writer.ts";
import { adminCommand, type AdminHost, encodeAnswer } from "../admin/mod.ts";

/** What serving the admin database needs of the client connection. */
export interface AdminClient {
  readonly rbuf: MessageBuffer;
  readonly conn: ByteStream;
  readonly writer: SocketWriter;
  readonly console: AdminHost;
  /** The client closed, or pgdog shuts down. */
  isOver(): boolean;
  /** Sends a FATAL error. */
  fatal(fields: ErrorFields): Promise<void>;
  /** A message arrived. */
  received(): void;
  /** A query runs (counted in SHOW CLIENTS). */
  countQuery(): void;
}

/** What an admin database client is told about the "server" at login. */
const ADMIN_PARAMETERS: Array<[string, string]> = [
  ["server_version", "15.0 (pgdog admin)"],
  ["server_encoding", "UTF8"],
  ["client_encoding", "UTF8"],
  ["DateStyle", "ISO, MDY"],
  ["TimeZone", "UTC"],
  ["integer_datetimes", "on"],
  ["standard_conforming_strings", "on"],
  ["is_superuser", "on"],
];

/** AuthenticationOk and what follows it for an admin database client, up to ReadyForQuery. */
export function adminGreeting(
  client: { applicationName: string; pid: number; secret: number },
): Uint8Array {
  const b = new MessageBuilder(256);
  b.bytes(AUTH_OK);
  for (const [name, value] of ADMIN_PARAMETERS) appendParameterStatus(b, name, value);
  appendParameterStatus(b, "application_name", client.applicationName);
  appendBackendKeyData(b, client.pid, client.secret);
  b.bytes(readyForQuery(TxStatus.Idle));
  return b.view();
}

/** The admin database: simple queries only, each one command (see src/admin). */
export async function serveAdmin(client: AdminClient): Promise<void> {
  const rb = client.rbuf;
  let skipping = false;
  for (;;) {
    let size: number;
    while ((size = rb.nextMessageSize()) > 0) {
      const buf = rb.buf;
      const p = rb.start;
      const type = buf[p];
      rb.start = p + size;
      client.received();
      if (type === Msg.Terminate) return;
      if (type === Msg.Query) {
        if (!wellFormed(type, buf, p, p + size)) {
          await client.fatal({
            severity: "FATAL",
            code: SqlState.ProtocolViolation,
            message: "malformed 'Q' message",
          });
          return;
        }
        client.countQuery();
        const sql = decodeText(buf, p + 5, p + size - 1);
        await client.writer.flush();
        client.writer.enqueue(encodeAnswer(await adminCommand(sql, client.console)));
        client.writer.enqueue(readyForQuery(TxStatus.Idle));
        continue;
      }
      if (type === Msg.Sync) {
        skipping = false;
        client.writer.enqueue(readyForQuery(TxStatus.Idle));
        continue;
      }
      if (skipping || type === Msg.Flush) continue;
      skipping = true;
      client.writer.enqueue(encodeAnswer({
        error: {
          severity: "ERROR",
          code: SqlState.FeatureNotSupported,
          message: "the admin database accepts simple queries only (psql -c, or psql's prompt)",
        },
      }));
    }
    rb.consume(0);
    await client.writer.flush();
    if (client.isOver()) return;
    if (!(await rb.fill(client.conn))) return;
  }
}
