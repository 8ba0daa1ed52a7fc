/**
 * PostgreSQL wire protocol (version 3) message codes, and builders for the messages the proxy
 * writes itself. Forwarded traffic never goes through here: it is passed on as byte ranges.
 *
 * @module
 */

/** Message type bytes, named after the protocol documentation. */
export const Msg = {
  // Sent by servers.
  Authentication: 0x52, // R
  BackendKeyData: 0x4b, // K
  BindComplete: 0x32, // 2
  CloseComplete: 0x33, // 3
  CommandComplete: 0x43, // C
  CopyBothResponse: 0x57, // W
  CopyInResponse: 0x47, // G
  CopyOutResponse: 0x48, // H
  DataRow: 0x44, // D
  EmptyQueryResponse: 0x49, // I
  ErrorResponse: 0x45, // E
  FunctionCallResponse: 0x56, // V
  NegotiateProtocolVersion: 0x76, // v
  NoData: 0x6e, // n
  NoticeResponse: 0x4e, // N
  NotificationResponse: 0x41, // A
  ParameterDescription: 0x74, // t
  ParameterStatus: 0x53, // S
  ParseComplete: 0x31, // 1
  PortalSuspended: 0x73, // s
  ReadyForQuery: 0x5a, // Z
  RowDescription: 0x54, // T
  // Sent by clients.
  Bind: 0x42, // B
  Close: 0x43, // C
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyFail: 0x66, // f
  Describe: 0x44, // D
  Execute: 0x45, // E
  Flush: 0x48, // H
  FunctionCall: 0x46, // F
  Parse: 0x50, // P
  Password: 0x70, // p
  Query: 0x51, // Q
  Sync: 0x53, // S
  Terminate: 0x58, // X
} as const;

/** Codes in the first int32 after the length of an untyped startup-phase packet. */
export const StartupCode = {
  Protocol30: 196608,
  SslRequest: 80877103,
  GssEncRequest: 80877104,
  CancelRequest: 80877102,
} as const;

/** Authentication request codes (the int32 after `R`). */
export const AuthCode = {
  Ok: 0,
  CleartextPassword: 3,
  Md5Password: 5,
  Sasl: 10,
  SaslContinue: 11,
  SaslFinal: 12,
} as const;

/** Transaction status carried by ReadyForQuery. */
export type TxStatus = 0x49 | 0x54 | 0x45; // 'I' idle, 'T' in transaction, 'E' failed transaction

/** ReadyForQuery status bytes. */
export const TxStatus = { Idle: 0x49, InTransaction: 0x54, Failed: 0x45 } as const;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A message type byte for error messages: `'Q'`, or hex when not printable. */
export function describeMessageType(t: number): string {
  return t >= 0x20 && t < 0x7f
    ? `'${String.fromCharCode(t)}'`
    : `0x${t.toString(16).padStart(2, "0")}`;
}

/** Reads a big-endian int32 at `offset`. */
export function readInt32(buf: Uint8Array, offset: number): number {
  return (buf[offset] << 24) | (buf[offset + 1] << 16) | (buf[offset + 2] << 8) | buf[offset + 3];
}

/** Reads a big-endian int16 at `offset` (signed). */
export function readInt16(buf: Uint8Array, offset: number): number {
  const v = (buf[offset] << 8) | buf[offset + 1];
  return v & 0x8000 ? v - 0x10000 : v;
}

/** Writes a big-endian int32 at `offset`. */
export function writeInt32(buf: Uint8Array, offset: number, value: number): void {
  buf[offset] = (value >>> 24) & 0xff;
  buf[offset + 1] = (value >>> 16) & 0xff;
  buf[offset + 2] = (value >>> 8) & 0xff;
  buf[offset + 3] = value & 0xff;
}

/** Reads a NUL-terminated UTF-8 string starting at `offset`; returns it and the offset after the NUL. */
export function readCString(buf: Uint8Array, offset: number, end: number): [string, number] {
  let i = offset;
  while (i < end && buf[i] !== 0) i++;
  return [decoder.decode(buf.subarray(offset, i)), i + 1];
}

/**
 * Builds one or more messages into a growable buffer. The proxy's own messages (errors, auth,
 * parameter statuses) are built here and written with one call.
 */
export class MessageBuilder {
  #buf: Uint8Array;
  #len = 0;
  #msgStart = -1;

  constructor(capacity = 256) {
    this.#buf = new Uint8Array(capacity);
  }

  #reserve(n: number): void {
    if (this.#len + n <= this.#buf.length) return;
    let cap = this.#buf.length * 2;
    while (cap < this.#len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.#buf.subarray(0, this.#len));
    this.#buf = next;
  }

  /** Starts a typed message; pass 0 for the untyped startup-phase packets. */
  begin(type: number): this {
    if (type !== 0) {
      this.#reserve(1);
      this.#buf[this.#len++] = type;
    }
    this.#msgStart = this.#len;
    this.#reserve(4);
    this.#len += 4;
    return this;
  }

  /** Appends a byte. */
  byte(v: number): this {
    this.#reserve(1);
    this.#buf[this.#len++] = v;
    return this;
  }

  /** Appends a big-endian int16. */
  int16(v: number): this {
    this.#reserve(2);
    this.#buf[this.#len++] = (v >>> 8) & 0xff;
    this.#buf[this.#len++] = v & 0xff;
    return this;
  }

  /** Appends a big-endian int32. */
  int32(v: number): this {
    this.#reserve(4);
    writeInt32(this.#buf, this.#len, v);
    this.#len += 4;
    return this;
  }

  /** Appends raw bytes. */
  bytes(v: Uint8Array): this {
    this.#reserve(v.length);
    this.#buf.set(v, this.#len);
    this.#len += v.length;
    return this;
  }

  /** Appends a string followed by NUL. */
  cstring(v: string): this {
    // A UTF-8 encoding takes at most 3 bytes per UTF-16 unit.
    this.#reserve(v.length * 3 + 1);
    const { written } = encoder.encodeInto(v, this.#buf.subarray(this.#len));
    this.#len += written;
    this.#buf[this.#len++] = 0;
    return this;
  }

  /** Appends a string without a terminator. */
  string(v: string): this {
    this.#reserve(v.length * 3);
    const { written } = encoder.encodeInto(v, this.#buf.subarray(this.#len));
    this.#len += written;
    return this;
  }

  /** Finishes the current message by filling in its length. */
  end(): this {
    writeInt32(this.#buf, this.#msgStart, this.#len - this.#msgStart);
    this.#msgStart = -1;
    return this;
  }

  /** Number of bytes built so far. */
  get length(): number {
    return this.#len;
  }

  /** A copy of the built bytes. */
  build(): Uint8Array {
    return this.#buf.slice(0, this.#len);
  }

  /** The built bytes without copying; valid until the next change. */
  view(): Uint8Array {
    return this.#buf.subarray(0, this.#len);
  }

  /** Empties the builder for reuse. */
  reset(): void {
    this.#len = 0;
    this.#msgStart = -1;
  }
}

/** Fields of an ErrorResponse or NoticeResponse. */
export interface ErrorFields {
  /** Localized severity (ERROR, FATAL, PANIC, WARNING, NOTICE, ...). */
  severity: string;
  /** SQLSTATE code. */
  code: string;
  message: string;
  detail?: string;
  hint?: string;
  /** Any other fields, keyed by their one-letter code. */
  other?: Record<string, string>;
}

/** Appends an ErrorResponse (or, with `type` Msg.NoticeResponse, a notice) to a builder. */
export function appendError(
  b: MessageBuilder,
  fields: ErrorFields,
  type: number = Msg.ErrorResponse,
): void {
  b.begin(type);
  b.byte(0x53).cstring(fields.severity); // S
  b.byte(0x56).cstring(fields.severity); // V
  b.byte(0x43).cstring(fields.code); // C
  b.byte(0x4d).cstring(fields.message); // M
  if (fields.detail) b.byte(0x44).cstring(fields.detail); // D
  if (fields.hint) b.byte(0x48).cstring(fields.hint); // H
  if (fields.other) {
    // Position, where, file, line, routine, ...: drivers read some of them (postgres.js decides by
    // the routine whether to prepare a statement again).
    for (const [code, value] of Object.entries(fields.other)) {
      if (code.length === 1) b.byte(code.charCodeAt(0)).cstring(value);
    }
  }
  b.byte(0);
  b.end();
}

/** An ErrorResponse message. */
export function errorResponse(fields: ErrorFields): Uint8Array {
  const b = new MessageBuilder(64 + fields.message.length * 3);
  appendError(b, fields);
  return b.build();
}

/** Decodes the fields of an ErrorResponse/NoticeResponse body (after the 5-byte header). */
export function parseErrorFields(buf: Uint8Array, start: number, end: number): ErrorFields {
  const out: ErrorFields = { severity: "ERROR", code: "XX000", message: "" };
  let p = start;
  let localized = "";
  while (p < end && buf[p] !== 0) {
    const field = buf[p];
    const [value, next] = readCString(buf, p + 1, end);
    p = next;
    switch (field) {
      case 0x53: // S
        localized = value;
        break;
      case 0x56: // V
        out.severity = value;
        break;
      case 0x43: // C
        out.code = value;
        break;
      case 0x4d: // M
        out.message = value;
        break;
      case 0x44: // D
        out.detail = value;
        break;
      case 0x48: // H
        out.hint = value;
        break;
      default:
        (out.other ??= {})[String.fromCharCode(field)] = value;
    }
  }
  if (localized && out.severity === "ERROR" && localized !== "ERROR") out.severity = localized;
  return out;
}

/** ReadyForQuery with the given status. */
export function readyForQuery(status: number): Uint8Array {
  return status === TxStatus.Idle
    ? READY_IDLE
    : status === TxStatus.InTransaction
    ? READY_IN_TX
    : READY_FAILED;
}

const READY_IDLE = Uint8Array.of(Msg.ReadyForQuery, 0, 0, 0, 5, TxStatus.Idle);
const READY_IN_TX = Uint8Array.of(Msg.ReadyForQuery, 0, 0, 0, 5, TxStatus.InTransaction);
const READY_FAILED = Uint8Array.of(Msg.ReadyForQuery, 0, 0, 0, 5, TxStatus.Failed);

/** AuthenticationOk. */
export const AUTH_OK: Uint8Array = Uint8Array.of(Msg.Authentication, 0, 0, 0, 8, 0, 0, 0, 0);

/** A simple-protocol Query message. */
export function queryMessage(sql: string): Uint8Array {
  return new MessageBuilder(sql.length * 3 + 8).begin(Msg.Query).cstring(sql).end().build();
}

/** The Sync message. */
export const SYNC: Uint8Array = Uint8Array.of(Msg.Sync, 0, 0, 0, 4);

/** The Terminate message. */
export const TERMINATE: Uint8Array = Uint8Array.of(Msg.Terminate, 0, 0, 0, 4);

/** A CopyFail message. */
export function copyFail(reason: string): Uint8Array {
  return new MessageBuilder(reason.length * 3 + 8).begin(Msg.CopyFail).cstring(reason).end()
    .build();
}

/** The 16-byte CancelRequest packet for a server's backend key. */
export function cancelRequest(pid: number, secret: number): Uint8Array {
  const b = new Uint8Array(16);
  writeInt32(b, 0, 16);
  writeInt32(b, 4, StartupCode.CancelRequest);
  writeInt32(b, 8, pid);
  writeInt32(b, 12, secret);
  return b;
}

/** The 8-byte SSLRequest packet. */
export function sslRequest(): Uint8Array {
  const b = new Uint8Array(8);
  writeInt32(b, 0, 8);
  writeInt32(b, 4, StartupCode.SslRequest);
  return b;
}

/** A StartupMessage (protocol 3.0) with the given parameters. */
export function startupMessage(params: Record<string, string>): Uint8Array {
  const b = new MessageBuilder(256).begin(0).int32(StartupCode.Protocol30);
  for (const [k, v] of Object.entries(params)) b.cstring(k).cstring(v);
  return b.byte(0).end().build();
}

/** Appends a ParameterStatus message. */
export function appendParameterStatus(b: MessageBuilder, name: string, value: string): void {
  b.begin(Msg.ParameterStatus).cstring(name).cstring(value).end();
}

/** Appends BackendKeyData. */
export function appendBackendKeyData(b: MessageBuilder, pid: number, secret: number): void {
  b.begin(Msg.BackendKeyData).int32(pid).int32(secret).end();
}

/** Decodes a UTF-8 byte range. */
export function decodeText(buf: Uint8Array, start: number, end: number): string {
  return decoder.decode(buf.subarray(start, end));
}

/** Encodes a string as UTF-8. */
export function encodeText(s: string): Uint8Array {
  return encoder.encode(s);
}
