/**
 * A small raw PostgreSQL protocol (v3) client for tests: it logs in (trust, cleartext, md5 or
 * SCRAM-SHA-256), sends arbitrary frontend messages in one write, and hands back every backend
 * message as `{ type, body }`, so a test can compare exact message sequences.
 *
 * Independent of the proxy's own protocol code on purpose: a bug there must not hide itself.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash, createHmac, pbkdf2Sync, randomBytes } from "node:crypto";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One backend message. */
export interface BackendMessage {
  /** Type character, e.g. "T", "D", "Z". */
  type: string;
  /** Payload after the length field. */
  body: Uint8Array;
}

/** Where and as whom {@linkcode WireClient.connect} logs in. */
export interface WireTarget {
  host: string;
  port: number;
  user: string;
  database: string;
  password?: string;
  /** Extra startup parameters. */
  params?: Record<string, string>;
}

// ---------------------------------------------------------------------------------------------
// Frontend message builders

class Builder {
  #parts: Uint8Array[] = [];
  #len = 0;

  byte(b: number): this {
    return this.bytes(Uint8Array.of(b));
  }

  int16(n: number): this {
    const b = new Uint8Array(2);
    new DataView(b.buffer).setInt16(0, n);
    return this.bytes(b);
  }

  int32(n: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setInt32(0, n);
    return this.bytes(b);
  }

  cstring(s: string): this {
    this.bytes(encoder.encode(s));
    return this.byte(0);
  }

  bytes(b: Uint8Array): this {
    this.#parts.push(b);
    this.#len += b.length;
    return this;
  }

  /** The message: type byte (unless null), int32 length, payload. */
  message(type: string | null): Uint8Array {
    const head = type === null ? 4 : 5;
    const out = new Uint8Array(head + this.#len);
    const view = new DataView(out.buffer);
    if (type !== null) out[0] = type.charCodeAt(0);
    view.setInt32(head - 4, this.#len + 4);
    let o = head;
    for (const p of this.#parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

/** A parameter value: text, raw bytes (sent as is) or NULL. */
export type ParamValue = string | Uint8Array | null;

/** Frontend messages. */
export const fe = {
  query(sql: string): Uint8Array {
    return new Builder().cstring(sql).message("Q");
  },
  parse(name: string, sql: string, types: number[] = []): Uint8Array {
    const b = new Builder().cstring(name).cstring(sql).int16(types.length);
    for (const t of types) b.int32(t);
    return b.message("P");
  },
  bind(
    portal: string,
    statement: string,
    params: ParamValue[] = [],
    options: { paramFormats?: number[]; resultFormats?: number[] } = {},
  ): Uint8Array {
    const b = new Builder().cstring(portal).cstring(statement);
    const pf = options.paramFormats ?? [];
    b.int16(pf.length);
    for (const f of pf) b.int16(f);
    b.int16(params.length);
    for (const p of params) {
      if (p === null) b.int32(-1);
      else {
        const bytes = typeof p === "string" ? encoder.encode(p) : p;
        b.int32(bytes.length).bytes(bytes);
      }
    }
    const rf = options.resultFormats ?? [];
    b.int16(rf.length);
    for (const f of rf) b.int16(f);
    return b.message("B");
  },
  describe(kind: "S" | "P", name: string): Uint8Array {
    return new Builder().byte(kind.charCodeAt(0)).cstring(name).message("D");
  },
  execute(portal: string, maxRows = 0): Uint8Array {
    return new Builder().cstring(portal).int32(maxRows).message("E");
  },
  close(kind: "S" | "P", name: string): Uint8Array {
    return new Builder().byte(kind.charCodeAt(0)).cstring(name).message("C");
  },
  sync(): Uint8Array {
    return new Builder().message("S");
  },
  flush(): Uint8Array {
    return new Builder().message("H");
  },
  copyData(data: Uint8Array | string): Uint8Array {
    return new Builder().bytes(typeof data === "string" ? encoder.encode(data) : data).message(
      "d",
    );
  },
  copyDone(): Uint8Array {
    return new Builder().message("c");
  },
  copyFail(message: string): Uint8Array {
    return new Builder().cstring(message).message("f");
  },
  /** FunctionCall with binary arguments and the given result format. */
  functionCall(oid: number, args: ParamValue[], resultFormat = 1): Uint8Array {
    const b = new Builder().int32(oid).int16(1).int16(1).int16(args.length);
    for (const a of args) {
      if (a === null) b.int32(-1);
      else {
        const bytes = typeof a === "string" ? encoder.encode(a) : a;
        b.int32(bytes.length).bytes(bytes);
      }
    }
    return b.int16(resultFormat).message("F");
  },
  terminate(): Uint8Array {
    return new Builder().message("X");
  },
};

/** Big-endian int4 bytes (binary parameter or argument). */
export function int4(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, n);
  return b;
}

/** Concatenate byte arrays. */
export function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Backend message decoding

function readInt32(b: Uint8Array, o: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getInt32(o);
}

function readInt16(b: Uint8Array, o: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getInt16(o);
}

/** Fields of an ErrorResponse/NoticeResponse, by field code ("C" = SQLSTATE, "M" = message). */
export function errorFields(body: Uint8Array): Record<string, string> {
  const out: Record<string, string> = {};
  let o = 0;
  while (o < body.length && body[o] !== 0) {
    const code = String.fromCharCode(body[o]);
    const end = body.indexOf(0, o + 1);
    out[code] = decoder.decode(body.subarray(o + 1, end));
    o = end + 1;
  }
  return out;
}

/** The raw column values of a DataRow (null for NULL). */
export function dataRowRaw(body: Uint8Array): (Uint8Array | null)[] {
  const n = readInt16(body, 0);
  const out: (Uint8Array | null)[] = [];
  let o = 2;
  for (let i = 0; i < n; i++) {
    const len = readInt32(body, o);
    o += 4;
    if (len < 0) out.push(null);
    else {
      out.push(body.subarray(o, o + len));
      o += len;
    }
  }
  return out;
}

/** The column values of a DataRow as text. */
export function dataRow(body: Uint8Array): (string | null)[] {
  return dataRowRaw(body).map((v) => v === null ? null : decoder.decode(v));
}

/** A CommandComplete tag. */
export function commandTag(body: Uint8Array): string {
  return decoder.decode(body.subarray(0, body.indexOf(0)));
}

/** A NotificationResponse. */
export function notification(body: Uint8Array): { pid: number; channel: string; payload: string } {
  const pid = readInt32(body, 0);
  const chEnd = body.indexOf(0, 4);
  const channel = decoder.decode(body.subarray(4, chEnd));
  const payload = decoder.decode(body.subarray(chEnd + 1, body.indexOf(0, chEnd + 1)));
  return { pid, channel, payload };
}

/**
 * A readable one-line-per-message summary: `T`, `D 1|x`, `C SELECT 1`, `E 22012`, `Z I`, ...
 * Payloads that identify a session (NotificationResponse pid) are left out.
 */
export function summary(msgs: BackendMessage[]): string[] {
  return msgs.map((m) => {
    switch (m.type) {
      case "D":
        return `D ${dataRow(m.body).map((v) => v === null ? "NULL" : v).join("|")}`;
      case "C":
        return `C ${commandTag(m.body)}`;
      case "E":
      case "N":
        return `${m.type} ${errorFields(m.body).C}`;
      case "Z":
        return `Z ${String.fromCharCode(m.body[0])}`;
      default:
        return m.type;
    }
  });
}

/** Every message as `type:hex(body)`, for exact comparisons. */
export function fingerprint(msgs: BackendMessage[]): string[] {
  return msgs.map((m) => `${m.type}:${hex(m.body)}`);
}

function hex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

// ---------------------------------------------------------------------------------------------
// The client

/** A raw protocol connection. */
export class WireClient {
  readonly conn: Deno.TcpConn;
  /** ParameterStatus values seen at login. */
  readonly parameters: Map<string, string> = new Map();
  /** BackendKeyData. */
  backendPid = 0;
  backendSecret = 0;
  #buf = new Uint8Array(64 << 10);
  #start = 0;
  #end = 0;
  #queue: BackendMessage[] = [];
  #waiter: (() => void) | null = null;
  #ended: Error | null = null;
  #pump: Promise<void>;
  #closed = false;

  private constructor(conn: Deno.TcpConn) {
    this.conn = conn;
    this.#pump = this.#readLoop();
  }

  /** Connects and logs in; resolves after the first ReadyForQuery. */
  static async connect(target: WireTarget, timeoutMs = 10_000): Promise<WireClient> {
    const conn = await Deno.connect({ hostname: target.host, port: target.port });
    const client = new WireClient(conn);
    try {
      await client.#startup(target, timeoutMs);
    } catch (e) {
      await client.close();
      throw e;
    }
    return client;
  }

  async #startup(target: WireTarget, timeoutMs: number): Promise<void> {
    const b = new Builder().int32(196608);
    const params = { user: target.user, database: target.database, ...target.params };
    for (const [k, v] of Object.entries(params)) b.cstring(k).cstring(v);
    b.byte(0);
    await this.send(b.message(null));
    let scram: { nonce: string; bare: string; serverSignature?: string } | null = null;
    for (;;) {
      const m = await this.next(timeoutMs);
      if (m.type === "E") {
        const f = errorFields(m.body);
        throw new Error(`login failed: ${f.C} ${f.M}`);
      }
      if (m.type === "S") {
        const [name, value] = decoder.decode(m.body).split("\0");
        this.parameters.set(name, value);
        continue;
      }
      if (m.type === "K") {
        this.backendPid = readInt32(m.body, 0);
        this.backendSecret = readInt32(m.body, 4);
        continue;
      }
      if (m.type === "Z") return;
      if (m.type !== "R") continue;
      const code = readInt32(m.body, 0);
      const password = target.password ?? "";
      if (code === 0) continue;
      if (code === 3) {
        await this.send(new Builder().cstring(password).message("p"));
      } else if (code === 5) {
        const salt = m.body.subarray(4, 8);
        const inner = createHash("md5").update(password + target.user).digest("hex");
        const outer = createHash("md5").update(inner).update(salt).digest("hex");
        await this.send(new Builder().cstring(`md5${outer}`).message("p"));
      } else if (code === 10) {
        const nonce = randomBytes(18).toString("base64");
        const bare = `n=,r=${nonce}`;
        scram = { nonce, bare };
        const first = encoder.encode(`n,,${bare}`);
        await this.send(
          new Builder().cstring("SCRAM-SHA-256").int32(first.length).bytes(first).message("p"),
        );
      } else if (code === 11 && scram) {
        const serverFirst = decoder.decode(m.body.subarray(4));
        const attrs = Object.fromEntries(
          serverFirst.split(",").map((kv) => [kv[0], kv.slice(2)]),
        );
        if (!attrs.r.startsWith(scram.nonce)) throw new Error("SCRAM: bad server nonce");
        const salted = pbkdf2Sync(
          password,
          Buffer.from(attrs.s, "base64"),
          Number(attrs.i),
          32,
          "sha256",
        );
        const clientKey = createHmac("sha256", salted).update("Client Key").digest();
        const storedKey = createHash("sha256").update(clientKey).digest();
        const withoutProof = `c=biws,r=${attrs.r}`;
        const authMessage = `${scram.bare},${serverFirst},${withoutProof}`;
        const signature = createHmac("sha256", storedKey).update(authMessage).digest();
        const proof = Buffer.alloc(32);
        for (let i = 0; i < 32; i++) proof[i] = clientKey[i] ^ signature[i];
        const serverKey = createHmac("sha256", salted).update("Server Key").digest();
        scram.serverSignature = createHmac("sha256", serverKey).update(authMessage).digest(
          "base64",
        );
        await this.send(
          new Builder().bytes(encoder.encode(`${withoutProof},p=${proof.toString("base64")}`))
            .message("p"),
        );
      } else if (code === 12 && scram) {
        const final = decoder.decode(m.body.subarray(4));
        if (final !== `v=${scram.serverSignature}`) throw new Error("SCRAM: bad server signature");
      } else {
        throw new Error(`unsupported authentication request ${code}`);
      }
    }
  }

  async #readLoop(): Promise<void> {
    try {
      for (;;) {
        if (this.#end === this.#buf.length) this.#makeRoom(this.#end - this.#start + 1);
        const n = await this.conn.read(this.#buf.subarray(this.#end));
        if (n === null) throw new Error("connection closed by the peer");
        this.#end += n;
        this.#parse();
      }
    } catch (e) {
      this.#ended = this.#closed
        ? new Error("client closed")
        : e instanceof Error
        ? e
        : new Error(String(e));
      this.#wake();
    }
  }

  #makeRoom(need: number): void {
    const avail = this.#end - this.#start;
    if (this.#start > 0 && need <= this.#buf.length) {
      this.#buf.copyWithin(0, this.#start, this.#end);
    } else {
      let cap = this.#buf.length;
      while (cap < need) cap *= 2;
      const next = new Uint8Array(cap);
      next.set(this.#buf.subarray(this.#start, this.#end));
      this.#buf = next;
    }
    this.#start = 0;
    this.#end = avail;
  }

  #parse(): void {
    let got = false;
    while (this.#end - this.#start >= 5) {
      const len = readInt32(this.#buf, this.#start + 1);
      const size = len + 1;
      if (this.#end - this.#start < size) {
        // Make sure the whole message will fit.
        if (this.#start + size > this.#buf.length) this.#makeRoom(size);
        break;
      }
      const type = String.fromCharCode(this.#buf[this.#start]);
      const body = this.#buf.slice(this.#start + 5, this.#start + size);
      this.#queue.push({ type, body });
      this.#start += size;
      got = true;
    }
    if (this.#start === this.#end) {
      this.#start = 0;
      this.#end = 0;
    }
    if (got) this.#wake();
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  /** Writes the messages in one write. */
  async send(...msgs: Uint8Array[]): Promise<void> {
    const data = msgs.length === 1 ? msgs[0] : concat(msgs);
    let o = 0;
    while (o < data.length) o += await this.conn.write(data.subarray(o));
  }

  /** The next backend message; rejects after `timeoutMs` or when the connection ends. */
  async next(timeoutMs = 10_000): Promise<BackendMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.#queue.shift();
      if (m) return m;
      if (this.#ended) throw this.#ended;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no backend message within ${timeoutMs} ms`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
      this.#waiter = null;
    }
  }

  /** Whether a message arrives within `ms` (it is kept for {@linkcode next}). */
  async hasMessageWithin(ms: number): Promise<boolean> {
    try {
      const m = await this.next(ms);
      this.#queue.unshift(m);
      return true;
    } catch (e) {
      if (this.#ended) throw e;
      return false;
    }
  }

  /** Reads messages up to and including the `count`-th ReadyForQuery. */
  async untilReady(count = 1, timeoutMs = 30_000): Promise<BackendMessage[]> {
    const out: BackendMessage[] = [];
    let seen = 0;
    const deadline = Date.now() + timeoutMs;
    while (seen < count) {
      const m = await this.next(Math.max(1, deadline - Date.now()));
      out.push(m);
      if (m.type === "Z") seen++;
    }
    return out;
  }

  /** Reads messages until one of type `type` (included). */
  async until(type: string, timeoutMs = 30_000): Promise<BackendMessage[]> {
    const out: BackendMessage[] = [];
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = await this.next(Math.max(1, deadline - Date.now()));
      out.push(m);
      if (m.type === type) return out;
    }
  }

  /** Simple query; returns every message up to ReadyForQuery. */
  async simple(sql: string, timeoutMs = 30_000): Promise<BackendMessage[]> {
    await this.send(fe.query(sql));
    return await this.untilReady(1, timeoutMs);
  }

  /** Simple query that must succeed; returns its rows as text. */
  async rows(sql: string): Promise<(string | null)[][]> {
    const msgs = await this.simple(sql);
    const err = msgs.find((m) => m.type === "E");
    if (err) {
      const f = errorFields(err.body);
      throw new Error(`${sql}: ${f.C} ${f.M}`);
    }
    return msgs.filter((m) => m.type === "D").map((m) => dataRow(m.body));
  }

  /** Sends Terminate (best effort) and closes. Idempotent. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        await this.send(fe.terminate());
      } catch {
        // Gone already.
      }
      try {
        this.conn.close();
      } catch {
        // Closed already.
      }
    }
    await this.#pump;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
