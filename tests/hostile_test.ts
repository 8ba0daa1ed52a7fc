/**
 * Hostile input. A seeded, bounded fuzz run throws malformed startup packets, impossible and
 * oversized message lengths, unknown message types, truncated and malformed messages, random
 * bytes, floods of pipelined messages, connections that leave in the middle of a transaction, and
 * half-open connections at the proxy, while pgbench (-M simple, then -M extended) runs through the
 * same pool. Every hostile connection must end with an ErrorResponse (08P01 for protocol
 * violations) and a close, or a plain close where PostgreSQL sends nothing, within a bound;
 * pgbench must see no error; afterwards the proxy is alive, every pooled server is clean and the
 * proxy's memory stayed bounded although clients declared multi-gigabyte messages.
 *
 * A focused test checks `max_message_size`: a declared length above it is refused right after the
 * 5-byte header, messages up to it work, and with a larger limit a 150 MiB query goes through.
 *
 * FUZZ_SEED (decimal or 0x-hex) replays a run; FUZZ_CASES changes the number of connections;
 * FUZZ_ONLY and FUZZ_SKIP are regular expressions on a case's label (`#12 oversized [...]`) that
 * keep or drop planned cases (the plan itself depends only on the seed and count).
 */

import assert from "node:assert/strict";
import {
  dumpLogsOnFailure,
  pgbench,
  type PgbenchResult,
  type ProxyProcess,
  runCommand,
  sleep,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";
import { dataRow, errorFields, fe } from "./wire.ts";

// ---- settings ----------------------------------------------------------------------------------

const USER = "tu";
const DB = "app";
const POOL_SIZE = 4;
const LOGIN_TIMEOUT_MS = 1000;
const MAX_MESSAGE = 1 << 20;
/** pgbench -T per mode; the fuzz connections of each half run meanwhile. */
const PGBENCH_SECONDS = 8;
/** The hostile connections of each half start over this long (pgbench runs meanwhile). */
const FUZZ_SPREAD_MS = (PGBENCH_SECONDS - 2) * 1000;
/** Proxy peak RSS allowed during the fuzz run. */
const RSS_LIMIT_BYTES = 200 * 1024 * 1024;

/** Hostile connections open at once, per lane. */
const LANES = { normal: 12, idle: 24, heavy: 1 } as const;
type Lane = keyof typeof LANES;

/** How long a hostile connection may take to be closed, after its last byte was sent. */
const CLOSE_BOUND_MS = 3000;
/** The proxy's checkout_timeout: how long a request may wait for a server of the busy pool. */
const CHECKOUT_TIMEOUT_MS = 5000;
/** The same, where the hostile bytes follow a request that needs a server. */
const SERVER_BOUND_MS = CHECKOUT_TIMEOUT_MS + 2000;
/** A login through the proxy (the pool may be busy with pgbench). */
const LOGIN_BOUND_MS = 7000;
/** A flood of 10 000 messages, answered or refused. */
const FLOOD_BOUND_MS = 40_000;

function envValue(name: string): string | undefined {
  if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
    return undefined;
  }
  return Deno.env.get(name) || undefined;
}

// ---- a seeded PRNG -----------------------------------------------------------------------------

/** mulberry32: small, fast, good enough to pick test cases. */
class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)];
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = Math.floor(this.next() * 256);
    return out;
  }
  /** Printable ASCII, no NUL. */
  text(n: number): string {
    let s = "";
    for (let i = 0; i < n; i++) s += String.fromCharCode(this.int(0x20, 0x7e));
    return s;
  }
}

// ---- frontend bytes ----------------------------------------------------------------------------

const encoder = new TextEncoder();

function cat(...parts: Uint8Array[]): Uint8Array {
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

/** Big-endian 32 bits of `n` (negative numbers and 2^31 as their two's complement). */
function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0);
  return b;
}

function u16(n: number): Uint8Array {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, n & 0xffff);
  return b;
}

function cstr(s: string | Uint8Array): Uint8Array {
  return cat(typeof s === "string" ? encoder.encode(s) : s, Uint8Array.of(0));
}

/** A typed message; `declared` overrides the length field. */
function typed(type: number | string, body: Uint8Array, declared?: number): Uint8Array {
  const t = typeof type === "string" ? type.charCodeAt(0) : type;
  return cat(Uint8Array.of(t), u32(declared ?? body.length + 4), body);
}

const PROTOCOL_3_0 = 3 << 16;
const SSL_CODE = 80877103;
const GSSENC_CODE = 80877104;
const CANCEL_CODE = 80877102;

/** A startup-phase packet: length, code, body. */
function startupPacket(code: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  return cat(u32(8 + body.length), u32(code), body);
}

type Param = [string | Uint8Array, string | Uint8Array];

function startupMessage(params: Param[], code = PROTOCOL_3_0): Uint8Array {
  return startupPacket(
    code,
    cat(...params.map(([k, v]) => cat(cstr(k), cstr(v))), Uint8Array.of(0)),
  );
}

const LOGIN: Param[] = [["user", USER], ["database", DB]];
const query = (sql: string): Uint8Array => typed("Q", cstr(sql));
const SYNC = typed("S", new Uint8Array(0));
const FLUSH = typed("H", new Uint8Array(0));
const TERMINATE = typed("X", new Uint8Array(0));

/** Message types a client may send after login (the proxy refuses every other). */
const FRONTEND = "BCdcfDEHFPQSX";
/** Types that are not frontend messages, with the ones a confused client would likely send. */
const BAD_TYPES = [
  0x00,
  0xff,
  0x80,
  0x7f,
  ..."AZpTRNKIz1 vWGt".split("").map((c) => c.charCodeAt(0)),
];

function badType(rng: Rng): number {
  if (rng.chance(0.6)) return rng.pick(BAD_TYPES);
  for (;;) {
    const t = rng.int(0, 255);
    if (!FRONTEND.includes(String.fromCharCode(t))) return t;
  }
}

/** `select length('xxx…')` as one Query message of exactly `size` bytes (type and length included). */
function lengthQuery(size: number): { bytes: Uint8Array; xs: number } {
  const head = encoder.encode("select length('");
  const tail = encoder.encode("')");
  const xs = size - 5 - head.length - tail.length - 1;
  const out = new Uint8Array(size);
  out[0] = 0x51;
  new DataView(out.buffer).setUint32(1, size - 1);
  out.set(head, 5);
  out.fill(0x78, 5 + head.length, 5 + head.length + xs);
  out.set(tail, 5 + head.length + xs);
  out[size - 1] = 0;
  return { bytes: out, xs };
}

// ---- a raw connection --------------------------------------------------------------------------

type End = "eof" | "reset" | "local";

interface Msg {
  type: string;
  body: Uint8Array;
}

/**
 * A raw TCP connection that reads only when asked to (so a test can leave the proxy's answers
 * unread), splitting what arrives into backend messages. The first `prefix` bytes are single-byte
 * answers to SSLRequest/GSSENCRequest.
 */
class Raw {
  readonly conn: Deno.TcpConn;
  /** When the connection was initiated: the proxy cannot have seen it earlier. */
  readonly opened: number;
  readonly msgs: Msg[] = [];
  readonly prefix: number[] = [];
  #mark = 0;
  #zMark = 0;
  end: End | null = null;
  endAt = 0;
  /** When the first ErrorResponse arrived. */
  errorAt = 0;
  #zCount = 0;
  #prefix: number;
  #buf = new Uint8Array(1 << 16);
  #start = 0;
  #len = 0;
  #chunk = new Uint8Array(1 << 16);
  #pending: Promise<void> | null = null;
  #closed = false;

  private constructor(conn: Deno.TcpConn, prefix: number, opened: number) {
    this.conn = conn;
    this.#prefix = prefix;
    this.opened = opened;
  }

  static async open(port: number, prefix = 0): Promise<Raw> {
    const opened = performance.now();
    return new Raw(await Deno.connect({ hostname: "127.0.0.1", port }), prefix, opened);
  }

  /** Writes everything; false when the proxy closed first (that can be the expected outcome). */
  async send(...chunks: Uint8Array[]): Promise<boolean> {
    try {
      for (const chunk of chunks) {
        let o = 0;
        while (o < chunk.length) o += await this.conn.write(chunk.subarray(o));
      }
      return true;
    } catch {
      return false;
    }
  }

  /** Half-close: the proxy reads end of stream; we can still read its answer. */
  async closeWrite(): Promise<void> {
    try {
      await this.conn.closeWrite();
    } catch {
      // Already reset.
    }
  }

  #read(): Promise<void> {
    this.#pending ??= (async () => {
      try {
        const n = await this.conn.read(this.#chunk);
        if (n === null) this.#finish("eof");
        else this.#append(this.#chunk.subarray(0, n));
      } catch (e) {
        this.#finish(
          this.#closed ? "local" : e instanceof Deno.errors.ConnectionReset ? "reset" : "local",
        );
      } finally {
        this.#pending = null;
      }
    })();
    return this.#pending;
  }

  #finish(end: End): void {
    if (this.end !== null) return;
    this.end = end;
    this.endAt = performance.now();
  }

  #append(data: Uint8Array): void {
    let i = 0;
    while (this.#prefix > 0 && i < data.length) {
      this.prefix.push(data[i++]);
      this.#prefix--;
    }
    data = data.subarray(i);
    const need = this.#len + data.length;
    if (this.#start + need > this.#buf.length) {
      if (need > this.#buf.length) {
        const next = new Uint8Array(Math.max(need, this.#buf.length * 2));
        next.set(this.#buf.subarray(this.#start, this.#start + this.#len));
        this.#buf = next;
      } else {
        this.#buf.copyWithin(0, this.#start, this.#start + this.#len);
      }
      this.#start = 0;
    }
    this.#buf.set(data, this.#start + this.#len);
    this.#len += data.length;
    const view = new DataView(this.#buf.buffer);
    while (this.#len >= 5) {
      const size = view.getInt32(this.#start + 1) + 1;
      if (size < 5 || this.#len < size) break;
      const type = String.fromCharCode(this.#buf[this.#start]);
      this.msgs.push({ type, body: this.#buf.slice(this.#start + 5, this.#start + size) });
      if (type === "E" && this.errorAt === 0) this.errorAt = performance.now();
      if (type === "Z") this.#zCount++;
      this.#start += size;
      this.#len -= size;
    }
    if (this.#len === 0) this.#start = 0;
  }

  /** Reads until `pred` holds (true), the stream ends or `ms` pass (then `pred` once more). */
  async waitFor(pred: () => boolean, ms: number): Promise<boolean> {
    const deadline = performance.now() + ms;
    for (;;) {
      if (pred()) return true;
      if (this.end !== null) return false;
      const left = deadline - performance.now();
      if (left <= 0) return false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), left)));
      const won = await Promise.race([this.#read().then(() => "read" as const), timeout]);
      clearTimeout(timer);
      if (won === "timeout") return pred();
    }
  }

  /** Reads to the end of the stream; "timeout" when it is still open after `ms`. */
  async waitEnd(ms: number): Promise<End | "timeout"> {
    await this.waitFor(() => this.end !== null, ms);
    return this.end ?? "timeout";
  }

  /** Index in `msgs` where the part of interest starts (after login). */
  get mark(): number {
    return this.#mark;
  }

  set mark(index: number) {
    this.#mark = index;
    this.#zMark = this.msgs.slice(0, index).filter((m) => m.type === "Z").length;
  }

  /** ReadyForQuery messages after the mark. */
  get readies(): number {
    return this.#zCount - this.#zMark;
  }

  /** Messages after the mark. */
  get tail(): Msg[] {
    return this.msgs.slice(this.mark);
  }

  has(type: string): boolean {
    for (let i = this.mark; i < this.msgs.length; i++) if (this.msgs[i].type === type) return true;
    return false;
  }

  /** A short description of what arrived, for failure messages. */
  describe(from = 0): string {
    const parts: string[] = [];
    const msgs = this.msgs.slice(from);
    let run = "";
    const flush = () => {
      if (run) {
        parts.push(run.length > 40 ? `${run.slice(0, 20)}…(${run.length})…${run.slice(-10)}` : run);
      }
      run = "";
    };
    for (const m of msgs) {
      if (m.type === "E") {
        flush();
        const f = errorFields(m.body);
        parts.push(`E[${f.S} ${f.C} ${f.M}]`);
      } else run += m.type;
    }
    flush();
    const pre = this.prefix.length
      ? `prefix ${JSON.stringify(String.fromCharCode(...this.prefix))} `
      : "";
    return `${pre}${parts.join(" ") || "(nothing)"} <${this.end ?? "open"}>`;
  }

  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.conn.close();
      } catch {
        // Closed already.
      }
    }
    await this.#pending;
  }
}

function errorsOf(msgs: Msg[]): Record<string, string>[] {
  return msgs.filter((m) => m.type === "E").map((m) => errorFields(m.body));
}

// ---- cases -------------------------------------------------------------------------------------

interface Ctx {
  port: number;
}

interface Verdict {
  /** Null when the proxy behaved. */
  problem: string | null;
  /** SQLSTATEs received. */
  codes: string[];
  /** Milliseconds from the hostile bytes to the ErrorResponse, where that is measured. */
  latency?: number;
}

interface Plan {
  index: number;
  kind: string;
  lane: Lane;
  /** What exactly is sent (for a failure report). */
  info: string;
  run(ctx: Ctx): Promise<Verdict>;
}

/** SQLSTATEs a refused login may carry, as PostgreSQL uses them. */
const STARTUP_CODES = [
  "08P01", // protocol violation: bad length, unterminated packet, client_login_timeout
  "0A000", // unsupported protocol version, replication connection
  "28000", // no user name, user not configured
  "3D000", // database does not exist
];

/** Codes from applying hostile startup parameters on a server, as PostgreSQL reports them. */
const PARAM_CODES = [
  ...STARTUP_CODES,
  "22023", // invalid parameter value (including replication=garbage)
  "42704", // unrecognized configuration parameter
  "42501", // permission denied to set parameter (superuser-only, role, session_authorization)
  "55P02", // parameter cannot be changed now (port, max_connections)
  "22P02", // invalid input syntax
];

/** Codes PostgreSQL itself answers to malformed or meaningless extended-protocol messages. */
const SERVER_JUDGED_CODES = [
  "08P01", // insufficient data left in message, invalid string in message, invalid message format
  "08006", // the server connection was lost under the client
  "26000", // prepared statement does not exist
  "34000", // portal does not exist
  "42883", // function with OID … does not exist
  "22P03", // invalid binary format
  "42601", // syntax error
  "42P18", // could not determine data type
];

/** Everything ended: eof or reset (the proxy closed); "local" would be our own doing. */
function closedByProxy(raw: Raw, end: End | "timeout"): string | null {
  if (end === "timeout") return `not closed within the bound; got ${raw.describe()}`;
  if (end === "local") return `read failed locally; got ${raw.describe()}`;
  return null;
}

/** The proxy closed the connection without a word, as PostgreSQL does (a log line only). */
function silentClose(raw: Raw, end: End | "timeout"): string | null {
  const closed = closedByProxy(raw, end);
  if (closed) return closed;
  return raw.msgs.length === 0 ? null : `expected a close without an answer, got ${raw.describe()}`;
}

/** PostgreSQL's range for a startup packet's length word (length word included). */
function startupLengthOk(len: number): boolean {
  return len >= 8 && len <= 10004;
}

/**
 * The proxy answered with a FATAL ErrorResponse (SQLSTATE in `codes`, message matching `message`)
 * as its last message, and closed the connection.
 */
function fatalThenClose(
  raw: Raw,
  end: End | "timeout",
  codes: readonly string[],
  message?: RegExp,
): string | null {
  const closed = closedByProxy(raw, end);
  if (closed) return closed;
  const tail = raw.tail.filter((m) => m.type !== "N");
  const last = tail.at(-1);
  if (!last || last.type !== "E") {
    return `expected an ErrorResponse as the last message before the close, got ${raw.describe()}`;
  }
  const f = errorFields(last.body);
  if (f.S !== "FATAL") return `expected severity FATAL, got ${raw.describe()}`;
  if (!codes.includes(f.C)) return `SQLSTATE ${f.C} not in [${codes}]: ${raw.describe()}`;
  if (message && !message.test(f.M)) return `message ${JSON.stringify(f.M)} !~ ${message}`;
  return null;
}

function codesOf(raw: Raw): string[] {
  return errorsOf(raw.msgs).map((f) => f.C);
}

/** Opens, sends, reads to the end; checks with `check`. */
async function oneShot(
  ctx: Ctx,
  packets: Uint8Array[],
  check: (raw: Raw, end: End | "timeout", elapsed: number) => string | null,
  options: { prefix?: number; closeWrite?: boolean; bound?: number } = {},
): Promise<Verdict> {
  const raw = await Raw.open(ctx.port, options.prefix ?? 0);
  try {
    await raw.send(...packets);
    const sent = performance.now();
    if (options.closeWrite) await raw.closeWrite();
    const end = await raw.waitEnd(options.bound ?? LOGIN_TIMEOUT_MS + CLOSE_BOUND_MS);
    const elapsed = (raw.endAt || performance.now()) - raw.opened;
    return {
      problem: check(raw, end, elapsed),
      codes: codesOf(raw),
      latency: raw.errorAt ? raw.errorAt - sent : undefined,
    };
  } finally {
    await raw.close();
  }
}

/** Logs in (trust); on success the mark is set after the ReadyForQuery. */
async function loggedIn(ctx: Ctx): Promise<Raw | string> {
  const raw = await Raw.open(ctx.port);
  await raw.send(startupMessage(LOGIN));
  const ok = await raw.waitFor(() => raw.has("Z") || raw.has("E"), LOGIN_BOUND_MS);
  if (!ok || !raw.has("Z")) {
    const why = `login failed: ${raw.describe()}`;
    await raw.close();
    return why;
  }
  raw.mark = raw.msgs.length;
  return raw;
}

/** Runs `body` on a logged-in connection; a failed login is the problem. */
async function afterLogin(
  ctx: Ctx,
  body: (raw: Raw) => Promise<string | null | Verdict>,
): Promise<Verdict> {
  const raw = await loggedIn(ctx);
  if (typeof raw === "string") return { problem: raw, codes: [] };
  try {
    const r = await body(raw);
    if (r !== null && typeof r === "object") return r;
    return { problem: r, codes: codesOf(raw) };
  } finally {
    await raw.close();
  }
}

/**
 * The session still works: `select '<word>'` is answered, then Terminate closes it. (Terminate is
 * sent only after the answer: pipelining it is checked on its own.)
 */
async function stillWorks(raw: Raw, word: string): Promise<string | null> {
  raw.mark = raw.msgs.length;
  await raw.send(query(`select '${word}'`));
  await raw.waitFor(() => raw.readies > 0, SERVER_BOUND_MS);
  const rows = raw.tail.filter((m) => m.type === "D").map((m) => dataRow(m.body)[0]);
  if (rows.length !== 1 || rows[0] !== word || raw.readies !== 1) {
    return `select '${word}' got ${raw.describe(raw.mark)}`;
  }
  await raw.send(TERMINATE);
  const end = await raw.waitEnd(CLOSE_BOUND_MS);
  return closedByProxy(raw, end) ??
    (raw.msgs.length > raw.mark + 4 ? `after Terminate: ${raw.describe(raw.mark)}` : null);
}

/** Sends `bytes` after login, expects a FATAL 08P01 (matching `message`) and the close. */
function protocolViolation(
  ctx: Ctx,
  bytes: Uint8Array[],
  message: RegExp,
  bound = CLOSE_BOUND_MS,
): Promise<Verdict> {
  return afterLogin(ctx, async (raw) => {
    const sent = performance.now();
    await raw.send(...bytes);
    const end = await raw.waitEnd(bound);
    return {
      problem: fatalThenClose(raw, end, ["08P01"], message),
      codes: codesOf(raw),
      latency: raw.errorAt ? raw.errorAt - sent : undefined,
    };
  });
}

/** Garbage that makes the proxy refuse a logged-in client with 08P01, and what it says. */
function violation(rng: Rng): { bytes: Uint8Array; message: RegExp; what: string } {
  switch (rng.int(0, 4)) {
    case 0: {
      const t = badType(rng);
      return {
        bytes: typed(t, rng.bytes(rng.int(0, 16))),
        message: /invalid frontend message type/,
        what: `type 0x${t.toString(16)}`,
      };
    }
    case 1: {
      const len = rng.pick([0, 1, 2, 3, -1, 0x80000000]);
      return {
        bytes: cat(Uint8Array.of(rng.pick([0x51, 0x50, 0x53, 0x00])), u32(len)),
        message: /invalid message length/,
        what: `length ${len}`,
      };
    }
    case 2: {
      const len = rng.pick([MAX_MESSAGE, 0x7fffffff, 0x40000000]);
      return {
        bytes: cat(Uint8Array.of(0x51), u32(len)),
        message: /exceeds the limit/,
        what: `declared ${len}`,
      };
    }
    case 3:
      return {
        bytes: typed("Q", encoder.encode("select 1")),
        message: /malformed 'Q'/,
        what: "Query without NUL",
      };
    default:
      return {
        bytes: typed("B", encoder.encode("portal-without-nul")),
        message: /malformed 'B'/,
        what: "Bind without NUL",
      };
  }
}

const hex = (b: Uint8Array, max = 24): string =>
  [...b.subarray(0, max)].map((x) => x.toString(16).padStart(2, "0")).join("") +
  (b.length > max ? `…(${b.length} bytes)` : "");

// Each generator uses the PRNG only while planning, so a seed always plans the same cases.
type Generator = (rng: Rng, index: number) => Omit<Plan, "index">;

const GENERATORS: Array<[number, string, Generator]> = [
  [8, "startup-length", (rng) => {
    const len = rng.pick([
      0,
      3,
      4,
      7,
      -1,
      0x80000000,
      0x7fffffff,
      10005,
      1 << 20,
      rng.int(10005, 0x7fffffff),
    ]);
    const tail = rng.chance(0.5) ? new Uint8Array(0) : rng.bytes(rng.int(1, 32));
    return {
      kind: "startup-length",
      lane: "normal",
      info: `length ${len} + ${tail.length} bytes`,
      run: (ctx) =>
        oneShot(
          ctx,
          [u32(len), tail],
          // PostgreSQL only logs it ("invalid length of startup packet") and closes.
          (raw, end) => silentClose(raw, end),
        ),
    };
  }],
  [7, "startup-random", (rng) => {
    let bytes: Uint8Array;
    if (rng.chance(0.5)) {
      bytes = rng.bytes(rng.int(1, 64));
    } else {
      // A plausible length (the packet is complete) with a random code and body.
      const n = rng.int(8, 64);
      bytes = cat(u32(n), rng.bytes(n - 4));
    }
    if (bytes.length >= 8) {
      const code = new DataView(bytes.buffer).getUint32(4);
      // Encryption and cancel requests are cases of their own.
      if ([SSL_CODE, GSSENC_CODE, CANCEL_CODE].includes(code)) bytes[4] ^= 0x40;
    }
    const len = bytes.length >= 4 ? new DataView(bytes.buffer).getInt32(0) : -1;
    const waits = bytes.length < 4 || (startupLengthOk(len) && len > bytes.length);
    return {
      kind: "startup-random",
      lane: waits ? "idle" : "normal",
      info: hex(bytes),
      run: (ctx) =>
        oneShot(ctx, [bytes], (raw, end, elapsed) => {
          if (waits) {
            const p = fatalThenClose(raw, end, ["08P01"], /client_login_timeout/);
            if (p) return p;
            return elapsed < LOGIN_TIMEOUT_MS * 0.9 ? `closed after ${elapsed} ms` : null;
          }
          if (!startupLengthOk(len)) return silentClose(raw, end);
          return fatalThenClose(raw, end, STARTUP_CODES);
        }),
    };
  }],
  [8, "startup-params", (rng) => {
    const variant = rng.int(0, 3);
    if (variant === 0) {
      // A 3.0 StartupMessage whose body is random bytes.
      const body = rng.bytes(rng.int(0, 200));
      for (let i = 0; i < body.length; i++) if (rng.chance(0.1)) body[i] = 0;
      const packet = startupPacket(
        PROTOCOL_3_0,
        cat(body, rng.chance(0.5) ? Uint8Array.of(0, 0) : new Uint8Array(0)),
      );
      return {
        kind: "startup-params",
        lane: "normal",
        info: `random body ${hex(packet, 40)}`,
        run: (ctx) =>
          oneShot(ctx, [packet], (raw, end) => fatalThenClose(raw, end, ["08P01", "28000"])),
      };
    }
    if (variant === 1) {
      // user and database, then parameters with hostile values.
      const params: Param[] = [...LOGIN];
      const n = rng.int(1, 3);
      for (let i = 0; i < n; i++) params.push([rng.pick(GUC_NAMES), hostileValue(rng)]);
      const packet = startupMessage(params);
      return {
        kind: "startup-params",
        lane: "normal",
        info: JSON.stringify(
          params.slice(2).map((
            [k, v],
          ) => [String(k), typeof v === "string" ? v.slice(0, 60) : hex(v)]),
        ),
        run: (ctx) => loginOrRefusal(ctx, [packet]),
      };
    }
    if (variant === 2) {
      // Wrong or missing user/database, a name with invalid UTF-8.
      const params = rng.pick<Param[]>([
        [["database", DB]],
        [["user", "nobody"], ["database", DB]],
        [["user", USER], ["database", "nowhere"]],
        [["user", Uint8Array.of(0x74, 0x75, 0xff)], ["database", DB]],
        [["user", USER], ["database", Uint8Array.of(0xc3, 0x28)]],
        [["user", ""], ["database", DB]],
        [["user", "x".repeat(rng.int(100, 9000))], ["database", DB]],
      ]);
      const packet = startupMessage(params);
      return {
        kind: "startup-params",
        lane: "normal",
        info: hex(packet, 48),
        run: (ctx) =>
          oneShot(
            ctx,
            [packet],
            (raw, end) => fatalThenClose(raw, end, ["28000", "3D000", "08P01"]),
          ),
      };
    }
    // Protocol versions.
    const major = rng.pick([0, 1, 2, 4, 0xffff]);
    const minor = rng.int(0, 0xffff);
    const packet = startupMessage(LOGIN, (major << 16) | minor);
    return {
      kind: "startup-params",
      lane: "normal",
      info: `protocol ${major}.${minor}`,
      run: (ctx) => oneShot(ctx, [packet], (raw, end) => fatalThenClose(raw, end, ["0A000"])),
    };
  }],
  [5, "ssl-garbage", (rng) => {
    const first = rng.pick([SSL_CODE, GSSENC_CODE]);
    const variant = rng.int(0, 4);
    const packets = [startupPacket(first)];
    let prefix = 1;
    let check: (raw: Raw, end: End | "timeout", elapsed: number) => string | null;
    let what: string;
    if (variant === 0) {
      packets.push(startupPacket(first));
      what = "the same request twice";
      // PostgreSQL reads it as a startup packet of protocol 1234.5679 (or 1234.5680).
      check = (raw, end) => fatalThenClose(raw, end, ["0A000"], /unsupported frontend protocol/);
    } else if (variant === 1) {
      // A TLS ClientHello where the startup packet should be.
      packets.push(
        cat(
          Uint8Array.of(0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03),
          rng.bytes(rng.int(0, 200)),
        ),
      );
      what = "a TLS ClientHello";
      check = silentClose;
    } else if (variant === 2) {
      packets.push(cat(u32(rng.int(8, 64)), rng.bytes(rng.int(0, 3))));
      what = "half a startup packet";
      check = (raw, end) => fatalThenClose(raw, end, ["08P01"], /client_login_timeout/);
    } else if (variant === 3) {
      packets.push(
        startupPacket(first === SSL_CODE ? GSSENC_CODE : SSL_CODE),
        u32(rng.pick([0, 3, -1, 0x80000000])),
      );
      prefix = 2;
      what = "both requests, then a bad length";
      check = silentClose;
    } else {
      packets.push(startupMessage(LOGIN));
      what = "a proper login";
      check = () => null;
    }
    return {
      kind: "ssl-garbage",
      lane: variant === 2 ? "idle" : "normal",
      info: `${first === SSL_CODE ? "SSLRequest" : "GSSENCRequest"}, then ${what}`,
      run: (ctx) =>
        variant === 4
          ? loginOrRefusal(ctx, packets, prefix)
          : oneShot(ctx, packets, (raw, end, elapsed) => {
            if (raw.prefix.some((b) => b !== 0x4e)) return `encryption answers ${raw.prefix}`;
            if (
              raw.prefix.length !== prefix
            ) return `expected ${prefix} 'N' answers, got ${raw.describe()}`;
            return check(raw, end, elapsed);
          }, { prefix }),
    };
  }],
  [5, "half-open", (rng) => {
    const bytes = rng.bytes(rng.pick([0, 0, 1, 2, 3]));
    return {
      kind: "half-open",
      lane: "idle",
      info: `${bytes.length} bytes, then silence`,
      run: (ctx) =>
        oneShot(ctx, [bytes], (raw, end, elapsed) => {
          const p = fatalThenClose(raw, end, ["08P01"], /client_login_timeout/);
          if (p) return p;
          if (elapsed < LOGIN_TIMEOUT_MS * 0.9) return `closed after ${elapsed.toFixed(0)} ms`;
          return null;
        }),
    };
  }],
  [4, "partial-startup-stall", (rng) => {
    const packet = startupMessage([...LOGIN, ["application_name", rng.text(rng.int(0, 200))]]);
    const cut = rng.int(4, packet.length - 1);
    return {
      kind: "partial-startup-stall",
      lane: "idle",
      info: `${cut} of ${packet.length} bytes`,
      run: (ctx) =>
        oneShot(ctx, [packet.subarray(0, cut)], (raw, end, elapsed) => {
          const p = fatalThenClose(raw, end, ["08P01"], /client_login_timeout/);
          if (p) return p;
          if (elapsed < LOGIN_TIMEOUT_MS * 0.9) return `closed after ${elapsed.toFixed(0)} ms`;
          return null;
        }),
    };
  }],
  [4, "partial-startup-eof", (rng) => {
    const packet = startupMessage(LOGIN);
    const cut = rng.int(0, packet.length - 1);
    return {
      kind: "partial-startup-eof",
      lane: "normal",
      info: `${cut} of ${packet.length} bytes, then end of stream`,
      // Like PostgreSQL ("incomplete startup packet"): nothing to answer, just close.
      run: (ctx) =>
        oneShot(ctx, [packet.subarray(0, cut)], (raw, end) => {
          const closed = closedByProxy(raw, end);
          if (closed) return closed;
          return raw.msgs.length === 0 ? null : `expected a plain close, got ${raw.describe()}`;
        }, { closeWrite: true, bound: CLOSE_BOUND_MS }),
    };
  }],
  [3, "cancel-garbage", (rng) => {
    const malformed = rng.chance(0.3);
    const packet = malformed
      ? startupPacket(CANCEL_CODE, rng.bytes(rng.pick([0, 4, 12])))
      : startupPacket(CANCEL_CODE, rng.bytes(8));
    return {
      kind: "cancel-garbage",
      lane: "normal",
      info: hex(packet),
      run: (ctx) =>
        oneShot(ctx, [packet], (raw, end) => {
          if (!malformed) {
            const closed = closedByProxy(raw, end);
            if (closed) return closed;
            return raw.msgs.length === 0 ? null : `expected a plain close, got ${raw.describe()}`;
          }
          // PostgreSQL only logs a malformed CancelRequest.
          return silentClose(raw, end);
        }),
    };
  }],
  [3, "abandon-at-login", (rng) => {
    const readFirst = rng.chance(0.5);
    return {
      kind: "abandon-at-login",
      lane: "normal",
      info: readFirst ? "close after AuthenticationOk" : "close right after the StartupMessage",
      run: async (ctx) => {
        const raw = await Raw.open(ctx.port);
        try {
          await raw.send(startupMessage(LOGIN));
          if (readFirst) await raw.waitFor(() => raw.msgs.length > 0, LOGIN_BOUND_MS);
          return { problem: null, codes: [] };
        } finally {
          await raw.close();
        }
      },
    };
  }],
  [7, "unknown-type", (rng) => {
    const t = badType(rng);
    const body = rng.bytes(rng.int(0, 32));
    const before = rng.chance(0.3) ? [query("select 1")] : [];
    return {
      kind: "unknown-type",
      lane: "normal",
      info: `${before.length ? "select 1, then " : ""}type 0x${
        t.toString(16)
      } + ${body.length} bytes`,
      run: (ctx) =>
        protocolViolation(
          ctx,
          [...before, typed(t, body)],
          /invalid frontend message type/,
          before.length ? SERVER_BOUND_MS : CLOSE_BOUND_MS,
        ),
    };
  }],
  [5, "short-length", (rng) => {
    const t = rng.chance(0.7) ? rng.pick([...FRONTEND].map((c) => c.charCodeAt(0))) : badType(rng);
    const len = rng.pick([0, 1, 2, 3, -1, -4, 0x80000000, 0xfffffffc]);
    const tail = rng.chance(0.5) ? new Uint8Array(0) : rng.bytes(rng.int(1, 16));
    return {
      kind: "short-length",
      lane: "normal",
      info: `type 0x${t.toString(16)} length ${len | 0} + ${tail.length} bytes`,
      run: (ctx) =>
        protocolViolation(ctx, [cat(Uint8Array.of(t), u32(len), tail)], /invalid message length/),
    };
  }],
  [7, "oversized", (rng) => {
    const t = rng.pick([..."QPBEdFSXDCH"].map((c) => c.charCodeAt(0)));
    const len = rng.pick([
      MAX_MESSAGE,
      MAX_MESSAGE + 1,
      MAX_MESSAGE * 4,
      0x7fffffff,
      0x40000000,
      100 << 20,
      rng.int(MAX_MESSAGE, 0x7fffffff),
    ]);
    const some = rng.chance(0.3) ? rng.bytes(rng.int(1, 100)) : new Uint8Array(0);
    return {
      kind: "oversized",
      lane: "normal",
      info: `type '${String.fromCharCode(t)}' declaring ${len} bytes, ${some.length} sent`,
      // Only the header (and maybe a little) is sent: a proxy that waited for the body would hang.
      run: (ctx) =>
        protocolViolation(
          ctx,
          [cat(Uint8Array.of(t), u32(len), some)],
          new RegExp(`message of ${len + 1} bytes .*exceeds the limit of ${MAX_MESSAGE} bytes`),
        ),
    };
  }],
  [5, "truncated", (rng) => {
    const t = rng.pick([..."QPBEDCdfF"].map((c) => c.charCodeAt(0)));
    const bodyLen = rng.chance(0.2) ? rng.int(4096, 200_000) : rng.int(1, 300);
    const msg = typed(t, rng.bytes(bodyLen));
    const cut = rng.int(1, msg.length - 1);
    return {
      kind: "truncated",
      lane: "normal",
      info: `type '${String.fromCharCode(t)}', ${cut} of ${msg.length} bytes, then end of stream`,
      // PostgreSQL closes on EOF inside a message without answering.
      run: (ctx) =>
        afterLogin(ctx, async (raw) => {
          await raw.send(msg.subarray(0, cut));
          await raw.closeWrite();
          const end = await raw.waitEnd(CLOSE_BOUND_MS);
          const closed = closedByProxy(raw, end);
          if (closed) return closed;
          const errs = errorsOf(raw.tail);
          return errs.every((f) => f.C === "08P01") && raw.tail.every((m) => m.type === "E")
            ? null
            : `expected a plain close, got ${raw.describe(raw.mark)}`;
        }),
    };
  }],
  [6, "random-after-login", (rng) => {
    let bytes: Uint8Array;
    let what: string;
    if (rng.chance(0.4)) {
      bytes = rng.bytes(rng.int(1, 2048));
      what = "random bytes";
    } else {
      // Well-framed messages of random types with random bodies.
      const msgs: Uint8Array[] = [];
      const n = rng.int(1, 6);
      for (let i = 0; i < n; i++) {
        const t = rng.chance(0.7)
          ? rng.pick([..."BCdcfDEHPQS"].map((c) => c.charCodeAt(0)))
          : rng.int(0, 255);
        msgs.push(typed(t, rng.bytes(rng.int(0, 64))));
      }
      bytes = cat(...msgs);
      what = `${n} framed messages`;
    }
    // A random FunctionCall could call any function: keep those out.
    if (bytes[0] === 0x46) bytes[0] = 0x51;
    for (let p = 0; p + 5 <= bytes.length;) {
      if (bytes[p] === 0x46) bytes[p] = 0x51;
      const len = new DataView(bytes.buffer, bytes.byteOffset).getInt32(p + 1);
      if (len < 4) break;
      p += len + 1;
    }
    return {
      kind: "random-after-login",
      lane: "normal",
      info: `${what}: ${hex(bytes, 40)}`,
      run: (ctx) =>
        afterLogin(ctx, async (raw) => {
          await raw.send(bytes);
          await raw.closeWrite();
          const end = await raw.waitEnd(SERVER_BOUND_MS);
          const closed = closedByProxy(raw, end);
          if (closed) return closed;
          const bad = errorsOf(raw.tail).find((f) => /^(XX|58)/.test(f.C));
          return bad ? `internal error ${bad.C}: ${bad.M}` : null;
        }),
    };
  }],
  [6, "malformed-strings", (rng) => {
    const cases: Array<[string, Uint8Array, RegExp]> = [
      ["Query without NUL", typed("Q", encoder.encode("select 1")), /malformed 'Q'/],
      ["empty Query", typed("Q", new Uint8Array(0)), /malformed 'Q'/],
      ["Parse without NUL", typed("P", encoder.encode("stmt")), /malformed 'P'/],
      [
        "Parse, query without NUL",
        typed("P", cat(cstr("s"), encoder.encode("select 1"))),
        /malformed 'P'/,
      ],
      ["Parse, no type count", typed("P", cat(cstr(""), cstr("select 1"))), /malformed 'P'/],
      [
        "Parse, 65535 types",
        typed("P", cat(cstr(""), cstr("select $1"), u16(0xffff), u32(23))),
        /malformed 'P'/,
      ],
      [
        "Parse, trailing bytes",
        typed("P", cat(cstr(""), cstr("select 1"), u16(0), rng.bytes(3))),
        /malformed 'P'/,
      ],
      ["Bind, portal without NUL", typed("B", encoder.encode("portal")), /malformed 'B'/],
      [
        "Bind, statement without NUL",
        typed("B", cat(cstr(""), encoder.encode("stmt"))),
        /malformed 'B'/,
      ],
      ["Describe 'X'", typed("D", cat(encoder.encode("X"), cstr(""))), /malformed 'D'/],
      ["Describe without NUL", typed("D", encoder.encode("Sname")), /malformed 'D'/],
      [
        "Describe, bytes after NUL",
        typed("D", cat(encoder.encode("P"), cstr("a"), encoder.encode("b"))),
        /malformed 'D'/,
      ],
      ["empty Describe", typed("D", new Uint8Array(0)), /malformed 'D'/],
      ["Close 'Z'", typed("C", cat(encoder.encode("Z"), cstr("x"))), /malformed 'C'/],
      ["Close without NUL", typed("C", encoder.encode("Sname")), /malformed 'C'/],
      // PostgreSQL would answer with an ERROR nothing waits for, then skip to a Sync.
      ["Flush with a body", typed("H", encoder.encode("xy")), /malformed 'H'/],
    ];
    const [what, bytes, message] = rng.pick(cases);
    const before = rng.chance(0.3) ? [query("select 1")] : [];
    return {
      kind: "malformed-strings",
      lane: "normal",
      info: `${before.length ? "select 1, then " : ""}${what}`,
      run: (ctx) =>
        protocolViolation(
          ctx,
          [...before, bytes],
          message,
          before.length ? SERVER_BOUND_MS : CLOSE_BOUND_MS,
        ),
    };
  }],
  [4, "server-judged", (rng) => {
    // Messages pgdog passes on for PostgreSQL to judge: it answers with an ERROR and skips to Sync.
    const cases: Array<[string, Uint8Array[]]> = [
      // PostgreSQL reads the first string and finds bytes left over: ERROR 08P01, not FATAL.
      ["Query with NUL inside", [typed("Q", cstr("select 1\0select 2; junk"))]],
      ["Execute without NUL", [typed("E", encoder.encode("portal"))]],
      ["Execute without row count", [typed("E", cstr(""))]],
      ["Bind with a short parameter count", [typed("B", cat(cstr(""), cstr(""), u16(1)))]],
      ["Bind of a missing statement", [fe.bind("", "fuzz_missing")]],
      ["Parse, Bind with a negative parameter length", [
        fe.parse("", "select $1::int"),
        typed("B", cat(cstr(""), cstr(""), u16(0), u16(1), u32(-7), u16(0))),
      ]],
      ["Parse, Bind, binary int4 of 3 bytes", [
        fe.parse("", "select $1::int"),
        fe.bind("", "", [Uint8Array.of(1, 2, 3)], { paramFormats: [1] }),
        fe.execute(""),
      ]],
      ["Execute of a missing portal", [fe.execute("fuzz_missing")]],
      ["FunctionCall of OID 0", [fe.functionCall(0, [])]],
      ["FunctionCall, truncated arguments", [typed("F", cat(u32(0), u16(0), u16(3)))]],
      ["Describe of a missing statement", [fe.describe("S", "fuzz_missing")]],
      ["CopyFail without NUL outside COPY", [typed("f", encoder.encode("oops"))]],
      ["CopyData outside COPY", [fe.copyData(rng.bytes(20))]],
    ];
    const [what, msgs] = rng.pick(cases);
    return {
      kind: "server-judged",
      lane: "normal",
      info: what,
      run: (ctx) =>
        afterLogin(ctx, async (raw) => {
          // Query and FunctionCall end with a ReadyForQuery of their own, then the Sync's.
          const owed = 1 + msgs.filter((m) => m[0] === 0x51 || m[0] === 0x46).length;
          await raw.send(...msgs, SYNC);
          if (
            !(await raw.waitFor(() => raw.readies >= owed || raw.end !== null, SERVER_BOUND_MS))
          ) {
            return `${raw.readies} of ${owed} ReadyForQuery: ${raw.describe(raw.mark)}`;
          }
          const errs = errorsOf(raw.tail);
          const bad = errs.find((f) => !SERVER_JUDGED_CODES.includes(f.C));
          if (bad) return `unexpected ${bad.S} ${bad.C}: ${bad.M}`;
          if (raw.end !== null) return `closed after ${raw.describe(raw.mark)}`;
          // The connection goes on, as with PostgreSQL.
          return await stillWorks(raw, "after");
        }),
    };
  }],
  [7, "dirty-then-garbage", (rng) => {
    const dirty: Array<[string, Uint8Array[]]> = [
      ["BEGIN; INSERT", [query("BEGIN; INSERT INTO fuzz_t VALUES (1)")]],
      ["BEGIN, INSERT", [query("BEGIN"), query("INSERT INTO fuzz_t VALUES (1)")]],
      ["SET default_transaction_read_only", [query("SET default_transaction_read_only = on")]],
      ["SET search_path", [query("SET search_path = fuzz_nowhere")]],
      ["SET statement_timeout", [query("SET statement_timeout = '1ms'")]],
      ["set_config(lock_timeout)", [query("SELECT set_config('lock_timeout', '1ms', false)")]],
      ["pg_advisory_lock", [query("SELECT pg_advisory_lock(4242)")]],
      ["BEGIN; pg_advisory_xact_lock", [query("BEGIN; SELECT pg_advisory_xact_lock(4243)")]],
      ["BEGIN ISOLATION LEVEL SERIALIZABLE", [
        query("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM fuzz_t"),
      ]],
      ["extended INSERT without Sync", [
        fe.parse("", "INSERT INTO fuzz_t VALUES (2)"),
        fe.bind("", ""),
        fe.execute(""),
      ]],
      ["extended BEGIN + INSERT", [
        fe.parse("", "BEGIN"),
        fe.bind("", ""),
        fe.execute(""),
        SYNC,
        fe.parse("", "INSERT INTO fuzz_t VALUES (3)"),
        fe.bind("", ""),
        fe.execute(""),
        FLUSH,
      ]],
      ["named statement + SET", [
        fe.parse("fuzz_s", "SET search_path = fuzz_nowhere"),
        fe.bind("", "fuzz_s"),
        fe.execute(""),
        SYNC,
      ]],
    ];
    const [what, msgs] = rng.pick(dirty);
    const wait = rng.chance(0.5);
    const ending = rng.int(0, 3);
    const v = violation(rng);
    return {
      kind: "dirty-then-garbage",
      lane: "normal",
      info: `${what}${wait ? ", answer read" : ""}, then ${
        [
          "garbage: " + v.what,
          "garbage: " + v.what,
          "half a message + end of stream",
          "an abrupt close",
        ][ending]
      }`,
      run: (ctx) =>
        afterLogin(ctx, async (raw) => {
          if (wait) {
            await raw.send(...msgs);
            const ends = msgs.filter((m) => m[0] === 0x51 || m[0] === 0x53).length;
            await raw.waitFor(() => raw.readies >= ends, ends > 0 ? 2000 : 100);
          }
          const head = wait ? [] : msgs;
          if (ending <= 1) {
            await raw.send(...head, v.bytes);
            const end = await raw.waitEnd(SERVER_BOUND_MS);
            return fatalThenClose(raw, end, ["08P01"], v.message);
          }
          if (ending === 2) {
            await raw.send(...head, query("select 1").subarray(0, 7));
            await raw.closeWrite();
            const end = await raw.waitEnd(SERVER_BOUND_MS);
            return closedByProxy(raw, end);
          }
          await raw.send(...head);
          return null; // closed by afterLogin, possibly with answers unread (a reset)
        }),
    };
  }],
  [2, "large-valid", (rng) => {
    const size = rng.chance(0.3) ? MAX_MESSAGE : rng.int(64 << 10, MAX_MESSAGE);
    const chunked = rng.chance(0.5);
    return {
      kind: "large-valid",
      lane: "normal",
      info: `a ${size}-byte Query${chunked ? " in small pieces" : ""}`,
      run: (ctx) =>
        afterLogin(ctx, async (raw) => {
          const { bytes, xs } = lengthQuery(size);
          if (chunked) {
            for (let o = 0; o < bytes.length; o += 50_000) {
              await raw.send(bytes.subarray(o, o + 50_000));
              await sleep(1);
            }
          } else await raw.send(bytes);
          await raw.waitFor(() => raw.readies > 0, 10_000);
          const rows = raw.tail.filter((m) => m.type === "D").map((m) => dataRow(m.body)[0]);
          return rows.length === 1 && rows[0] === String(xs)
            ? null
            : `expected length ${xs}, got ${raw.describe(raw.mark)}`;
        }),
    };
  }],
  [2, "flood", (rng) => {
    // 10 000 pipelined messages: simple queries, Syncs, Flushes and extended-protocol requests.
    // The client that never reads asks for 2 kB rows, so that the proxy's writes to it block.
    const mode = rng.pick(["read", "abandon", "garbage", "terminate"] as const);
    const select = query(mode === "abandon" ? "select repeat('x', 2000)" : "select 1");
    const parts: Uint8Array[] = [];
    let count = 0;
    let readies = 0;
    while (count < 10_000) {
      const r = rng.next();
      if (r < 0.45) {
        parts.push(select);
        readies++;
        count++;
      } else if (r < 0.75) {
        parts.push(SYNC);
        readies++;
        count++;
      } else if (r < 0.8) {
        parts.push(FLUSH);
        count++;
      } else {
        parts.push(fe.parse("", "select 2"), fe.bind("", ""), fe.execute(""), SYNC);
        readies++;
        count += 4;
      }
    }
    const flood = cat(...parts);
    const v = violation(rng);
    const hold = rng.int(200, 2000);
    return {
      kind: `flood-${mode}`,
      lane: "heavy",
      info: `${count} messages (${readies} ReadyForQuery owed${
        mode === "abandon" ? `, 2 kB rows, left unread for ${hold} ms` : ""
      })${mode === "garbage" ? `, then ${v.what}` : ""}`,
      run: (ctx) =>
        afterLogin(ctx, async (raw) => {
          if (mode === "abandon") {
            // Never read: the proxy's writes to us block (and it stops reading us). Stay like that
            // for a while, then close with everything unread.
            const writing = raw.send(flood);
            await sleep(hold);
            await raw.close();
            await writing;
            return null;
          }
          const last = mode === "garbage"
            ? v.bytes
            : mode === "terminate"
            ? TERMINATE
            : new Uint8Array(0);
          const writing = raw.send(flood, last);
          if (mode === "terminate") {
            // PostgreSQL answers everything before the Terminate, then closes.
            const end = await raw.waitEnd(FLOOD_BOUND_MS);
            await writing;
            return closedByProxy(raw, end) ??
              (raw.readies === readies && !raw.has("E")
                ? null
                : `${raw.readies} of ${readies} ReadyForQuery before the close, ${
                  raw.describe(raw.mark)
                }`);
          }
          if (mode === "read") {
            const done = await raw.waitFor(() => raw.readies >= readies, FLOOD_BOUND_MS);
            await writing;
            if (!done) {
              return `${raw.readies} of ${readies} ReadyForQuery, ${raw.describe(raw.mark)}`;
            }
            if (raw.has("E")) return `errors: ${raw.describe(raw.mark)}`;
            await raw.send(TERMINATE);
            return closedByProxy(raw, await raw.waitEnd(CLOSE_BOUND_MS));
          }
          const end = await raw.waitEnd(FLOOD_BOUND_MS);
          await writing;
          const p = fatalThenClose(raw, end, ["08P01"], v.message);
          return p ??
            (raw.readies > readies ? `${raw.readies} ReadyForQuery for ${readies}` : null);
        }),
    };
  }],
];

const GUC_NAMES = [
  "application_name",
  "statement_timeout",
  "search_path",
  "default_transaction_read_only",
  "client_encoding",
  "DateStyle",
  "TimeZone",
  "work_mem",
  "lock_timeout",
  "port",
  "max_connections",
  "log_statement",
  "session_authorization",
  "role",
  "options",
  "replication",
  "fuzz.custom",
  "_pq_.fuzz",
  "pgdog.fuzz",
  "transaction_isolation",
  "IntervalStyle",
  "bytea_output",
  "standard_conforming_strings",
  "nonexistent_setting",
];

function hostileValue(rng: Rng): string | Uint8Array {
  switch (rng.int(0, 4)) {
    case 0:
      return rng.pick([
        "",
        "1",
        "0",
        "on",
        "off",
        "-1",
        "1ms",
        "fuzz_nowhere",
        "LATIN1",
        "SQL_ASCII",
        "UTF8",
        "postgres",
        USER,
        "serializable",
        "\\",
        "'",
        '"',
        "database",
        "-c statement_timeout=1",
        "-c search_path=fuzz_nowhere",
        "-c default_transaction_read_only=on",
        "--work_mem=-1",
        "-c port=1",
        "-c",
      ]);
    case 1:
      return rng.text(rng.int(1, 40));
    case 2: {
      const b = rng.bytes(rng.int(1, 12));
      for (let i = 0; i < b.length; i++) b[i] = b[i] === 0 ? 0xff : b[i] | 0x80;
      return b;
    }
    case 3:
      return "x".repeat(rng.int(100, 3000));
    default:
      return `-c ${rng.pick(GUC_NAMES)}=${rng.text(rng.int(0, 10)).replaceAll(" ", "_")}`;
  }
}

/**
 * A StartupMessage with hostile parameters: either a refusal PostgreSQL would also give (FATAL,
 * then close), or a working session.
 */
async function loginOrRefusal(ctx: Ctx, packets: Uint8Array[], prefix = 0): Promise<Verdict> {
  const raw = await Raw.open(ctx.port, prefix);
  try {
    await raw.send(...packets);
    await raw.waitFor(() => raw.has("Z") || raw.has("E"), LOGIN_BOUND_MS);
    let problem: string | null;
    if (raw.prefix.length !== prefix || raw.prefix.some((b) => b !== 0x4e)) {
      problem = `expected ${prefix} 'N' answers, got ${raw.describe()}`;
    } else if (raw.has("Z")) {
      // Whatever the parameters set (even default_transaction_read_only), a select works.
      problem = await stillWorks(raw, "ok");
    } else {
      problem = fatalThenClose(raw, await raw.waitEnd(CLOSE_BOUND_MS), PARAM_CODES);
    }
    return { problem, codes: codesOf(raw) };
  } finally {
    await raw.close();
  }
}

function planCases(seed: number, count: number): Plan[] {
  const rng = new Rng(seed);
  const total = GENERATORS.reduce((s, [w]) => s + w, 0);
  const plans: Plan[] = [];
  for (let index = 0; index < count; index++) {
    let r = rng.next() * total;
    let gen = GENERATORS[0][2];
    for (const [w, , g] of GENERATORS) {
      if ((r -= w) < 0) {
        gen = g;
        break;
      }
    }
    plans.push({ index, ...gen(rng, index) });
  }
  return plans;
}

/** A FIFO semaphore. */
class Gate {
  #free: number;
  #queue: Array<() => void> = [];
  constructor(size: number) {
    this.#free = size;
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((r) => this.#queue.push(r));
    try {
      return await fn();
    } finally {
      const next = this.#queue.shift();
      if (next) next();
      else this.#free++;
    }
  }
}

interface Outcome extends Verdict {
  plan: Plan;
  ms: number;
}

/**
 * Runs the cases, at most LANES[lane] at once per lane, their starts spread evenly over
 * `spreadMs` so that they keep coming for the whole pgbench run.
 */
async function runCases(ctx: Ctx, plans: Plan[], spreadMs: number): Promise<Outcome[]> {
  const gates = Object.fromEntries(
    Object.entries(LANES).map(([lane, n]) => [lane, new Gate(n)]),
  ) as Record<Lane, Gate>;
  return await Promise.all(plans.map(async (plan, i) => {
    await sleep((spreadMs * i) / plans.length);
    return await gates[plan.lane].run(async () => {
      const start = performance.now();
      let verdict: Verdict;
      try {
        verdict = await plan.run(ctx);
      } catch (e) {
        verdict = { problem: `threw: ${e instanceof Error ? e.stack : e}`, codes: [] };
      }
      return { ...verdict, plan, ms: performance.now() - start };
    });
  }));
}

// ---- proxy inspection --------------------------------------------------------------------------

async function memoryOf(pid: number): Promise<{ rss: number; hwm: number }> {
  const r = await runCommand("cat", [`/proc/${pid}/status`], { timeoutMs: 10_000 });
  const kb = (name: string) =>
    Number(r.stdout.match(new RegExp(`${name}:\\s+(\\d+) kB`))?.[1] ?? NaN) * 1024;
  return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
}

const MB = (n: number): string => `${(n / 1048576).toFixed(1)} MB`;

/** Log lines that mean the proxy itself broke. */
const CRASH =
  /Uncaught|panicked|RangeError|TypeError|ReferenceError|SyntaxError|is not a function|Cannot read prop|\bERROR\b|Maximum call stack/;

function summarize(outcomes: Outcome[]): string {
  const byKind = new Map<
    string,
    { n: number; codes: Map<string, number>; maxMs: number; maxLatency: number }
  >();
  for (const o of outcomes) {
    const k = byKind.get(o.plan.kind) ?? { n: 0, codes: new Map(), maxMs: 0, maxLatency: 0 };
    k.n++;
    for (const c of o.codes) k.codes.set(c, (k.codes.get(c) ?? 0) + 1);
    k.maxMs = Math.max(k.maxMs, o.ms);
    if (o.latency !== undefined && o.plan.kind === "oversized") {
      k.maxLatency = Math.max(k.maxLatency, o.latency);
    }
    byKind.set(o.plan.kind, k);
  }
  return [...byKind].sort(([a], [b]) => a.localeCompare(b)).map(([kind, k]) =>
    `  ${kind.padEnd(22)} ${String(k.n).padStart(4)}  max ${k.maxMs.toFixed(0).padStart(5)} ms  ${
      [...k.codes].map(([c, n]) => `${c}×${n}`).join(" ")
    }${k.maxLatency ? `  (error ${k.maxLatency.toFixed(0)} ms after the header)` : ""}`
  ).join("\n");
}

// ---- the fuzz run ------------------------------------------------------------------------------

Deno.test("hostile input: seeded fuzz run next to pgbench", async () => {
  const seed = Number(envValue("FUZZ_SEED") ?? Math.floor(Math.random() * 0xffffffff)) >>> 0;
  const count = Number(envValue("FUZZ_CASES") ?? 600);
  console.log(`hostile fuzz: FUZZ_SEED=0x${seed.toString(16)} FUZZ_CASES=${count}`);
  const only = envValue("FUZZ_ONLY");
  const skip = envValue("FUZZ_SKIP");
  const label = (p: Plan) => `#${p.index} ${p.kind} [${p.info}]`;
  const plans = planCases(seed, count).filter((p) =>
    (!only || new RegExp(only).test(label(p))) && (!skip || !new RegExp(skip).test(label(p)))
  );
  const tag = (s: string) => `${s} (FUZZ_SEED=0x${seed.toString(16)})`;

  await using pg = await startPostgres({
    roles: [{ name: USER, auth: "trust" }],
    databases: [{ name: DB, owner: USER }],
    settings: { max_connections: 40 },
  });
  await pg.sql("CREATE TABLE fuzz_t (v int)", { database: DB, user: USER });
  const direct = { host: pg.host, port: pg.port, user: USER, database: DB };
  const init = await pgbench(direct, ["-i", "-s", "1", "-q"], { timeoutMs: 60_000 });
  assert.equal(init.code, 0, `pgbench -i: ${init.stderr}`);

  await using proxy = await startProxy({
    config: {
      general: {
        auth_type: "trust",
        client_login_timeout: LOGIN_TIMEOUT_MS,
        max_message_size: MAX_MESSAGE,
        shutdown_timeout: 5000,
        checkout_timeout: CHECKOUT_TIMEOUT_MS,
      },
      databases: [{ name: DB, host: pg.host, port: pg.port, pool_size: POOL_SIZE }],
    },
    users: { users: [{ name: USER, database: DB }] },
  });
  const ctx: Ctx = { port: proxy.port };

  await dumpLogsOnFailure(proxy, async () => {
    const before = await memoryOf(proxy.pid);
    const started = performance.now();
    const half = Math.ceil(plans.length / 2);
    const target = proxy.target({ user: USER, database: DB });
    const outcomes: Outcome[] = [];
    const benches: Array<[string, PgbenchResult]> = [];
    for (
      const [mode, part] of [["simple", plans.slice(0, half)], [
        "extended",
        plans.slice(half),
      ]] as const
    ) {
      const [bench, results] = await Promise.all([
        pgbench(target, ["-n", "-c", "8", "-j", "2", "-T", String(PGBENCH_SECONDS), "-M", mode], {
          timeoutMs: 120_000,
        }),
        (async () => {
          const t0 = performance.now();
          const results = await runCases(ctx, part, FUZZ_SPREAD_MS);
          console.log(
            `${part.length} hostile connections took ${
              ((performance.now() - t0) / 1000).toFixed(1)
            } s`,
          );
          return results;
        })(),
      ]);
      benches.push([mode, bench]);
      outcomes.push(...results);
    }
    const elapsed = performance.now() - started;
    const after = await memoryOf(proxy.pid);

    console.log(
      `${outcomes.length} hostile connections in ${(elapsed / 1000).toFixed(1)} s; proxy RSS ${
        MB(before.rss)
      } -> ${MB(after.rss)}, peak ${MB(after.hwm)}\n${summarize(outcomes)}`,
    );
    for (const [mode, b] of benches) {
      console.log(
        `pgbench -M ${mode}: ${b.processed} transactions, ${b.failed ?? 0} failed, tps ${b.tps}`,
      );
    }

    const failures = outcomes.filter((o) => o.problem !== null);
    const failureReport = `${failures.length} hostile connections misbehaved:\n` +
      failures.slice(0, 40).map((o) =>
        `  #${o.plan.index} ${o.plan.kind} [${o.plan.info}]: ${o.problem}`
      )
        .join("\n");
    if (failures.length > 0) console.log(tag(failureReport));

    // pgbench on other connections saw no error at all.
    for (const [mode, b] of benches) {
      assert.equal(b.code, 0, tag(`pgbench -M ${mode} failed:\n${b.stdout}\n${b.stderr}`));
      assert.equal(b.failed ?? 0, 0, tag(`pgbench -M ${mode}:\n${b.stdout}`));
      assert.ok((b.processed ?? 0) > 0, tag(`pgbench -M ${mode} processed nothing:\n${b.stdout}`));
    }

    // The proxy is alive, logged no crash, and its memory stayed bounded.
    assert.equal(proxy.exited, false, tag("the proxy exited"));
    const crashes = proxy.logs().split("\n").filter((l) => CRASH.test(l));
    assert.deepEqual(crashes, [], tag("the proxy logged errors"));
    assert.ok(after.hwm < RSS_LIMIT_BYTES, tag(`proxy peak RSS ${MB(after.hwm)}`));

    // No server was left dirty: no transaction open, nothing running, no more than pool_size.
    let activity: string[][] = [];
    const deadline = Date.now() + 8000;
    for (;;) {
      activity = await pg.sql(
        `SELECT pid, state, coalesce(left(query, 60), '') FROM pg_stat_activity WHERE usename = '${USER}'`,
      );
      const busy = activity.filter(([, state]) => state !== "idle");
      if ((busy.length === 0 && activity.length <= POOL_SIZE) || Date.now() > deadline) break;
      await sleep(100);
    }
    assert.deepEqual(
      activity.filter(([, state]) => state !== "idle"),
      [],
      tag("busy servers left"),
    );
    assert.ok(activity.length <= POOL_SIZE, tag(`${activity.length} server connections`));
    const [[locks]] = await pg.sql(
      `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.usename = '${USER}' AND l.locktype = 'advisory'`,
    );
    assert.equal(locks, "0", tag("advisory locks held by pooled servers"));
    const [[rows]] = await pg.sql("SELECT count(*) FROM fuzz_t", { database: DB });
    assert.equal(rows, "0", tag("a hostile client's unfinished transaction was committed"));

    // Fresh clients work, on every server of the pool at once, and none inherited a setting.
    const clients = await Promise.all(Array.from({ length: POOL_SIZE }, () => loggedIn(ctx)));
    try {
      for (const c of clients) assert.ok(typeof c !== "string", tag(String(c)));
      const sessions = clients as Raw[];
      const sql = "BEGIN; SELECT pg_backend_pid(), current_setting('statement_timeout'), " +
        "current_setting('search_path'), current_setting('default_transaction_read_only'), " +
        "current_setting('lock_timeout'), current_setting('client_encoding'), " +
        "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())";
      for (const c of sessions) await c.send(query(sql));
      const seen = new Set<string>();
      for (const c of sessions) {
        assert.ok(
          await c.waitFor(() => c.readies >= 1, 10_000),
          tag(`no answer: ${c.describe(c.mark)}`),
        );
        const row = c.tail.filter((m) => m.type === "D").map((m) => dataRow(m.body));
        assert.equal(row.length, 1, tag(c.describe(c.mark)));
        const [pid, ...settings] = row[0];
        seen.add(pid!);
        assert.deepEqual(
          settings,
          ["0", '"$user", public', "off", "0", "UTF8", "0"],
          tag(`server ${pid}`),
        );
      }
      assert.equal(seen.size, POOL_SIZE, tag("expected every pooled server"));
      for (const c of sessions) await c.send(query("ROLLBACK"), TERMINATE);
    } finally {
      for (const c of clients) if (typeof c !== "string") await c.close();
    }

    // And it still shuts down cleanly.
    const exit = await proxy.stop({ timeoutMs: 10_000 });
    assert.equal(exit.code, 0, tag(`exit code ${exit.code}`));

    // Every hostile connection got its answer and was closed within its bound (checked last, so
    // that a misbehaving case does not hide what the checks above say).
    assert.equal(failures.length, 0, tag(failureReport));
  });
});

// ---- max_message_size --------------------------------------------------------------------------

Deno.test("hostile input: max_message_size bounds what a client may send", async (t) => {
  await using pg = await startPostgres({
    roles: [{ name: USER, auth: "trust" }],
    databases: [{ name: DB, owner: USER }],
  });
  const proxyWith = (max: number): Promise<ProxyProcess> =>
    startProxy({
      config: {
        general: { auth_type: "trust", max_message_size: max },
        databases: [{ name: DB, host: pg.host, port: pg.port, pool_size: 2 }],
      },
      users: { users: [{ name: USER, database: DB }] },
    });

  await t.step("1 MiB: a declared 100 MiB Query is refused after its header", async () => {
    await using proxy = await proxyWith(MAX_MESSAGE);
    await dumpLogsOnFailure(proxy, async () => {
      const ctx = { port: proxy.port };
      const raw = await loggedIn(ctx);
      assert.ok(typeof raw !== "string", String(raw));
      try {
        const declared = (100 << 20) + 4;
        const sent = performance.now();
        assert.ok(await raw.send(Uint8Array.of(0x51), u32(declared)));
        // Nothing more is sent: a proxy that waited for (or buffered) the body would never answer.
        const end = await raw.waitEnd(5000);
        const problem = fatalThenClose(
          raw,
          end,
          ["08P01"],
          /message of 104857605 bytes .*exceeds the limit of 1048576 bytes/,
        );
        assert.equal(problem, null);
        const latency = raw.errorAt - sent;
        console.log(
          `100 MiB declared: 08P01 ${latency.toFixed(1)} ms after the 5-byte header, closed ${
            (raw.endAt - sent).toFixed(1)
          } ms after it`,
        );
        assert.ok(latency < 2000, `refused only after ${latency} ms`);
      } finally {
        await raw.close();
      }

      // Clients that declare a gigabyte and then really stream their body: nothing is kept.
      const base = await memoryOf(proxy.pid);
      await Promise.all(Array.from({ length: 16 }, async () => {
        const c = await loggedIn(ctx);
        assert.ok(typeof c !== "string", String(c));
        try {
          const chunk = new Uint8Array(1 << 20).fill(0x78);
          await c.send(Uint8Array.of(0x51), u32(1 << 30));
          for (let i = 0; i < 16; i++) if (!(await c.send(chunk))) break;
          assert.equal(
            fatalThenClose(c, await c.waitEnd(5000), ["08P01"], /exceeds the limit/),
            null,
          );
        } finally {
          await c.close();
        }
      }));
      const streamed = await memoryOf(proxy.pid);
      console.log(
        `16 clients streaming 1 GiB messages: proxy RSS ${MB(base.rss)} -> ${MB(streamed.rss)}`,
      );
      assert.ok(streamed.hwm - base.hwm < 64 << 20, `peak RSS grew ${MB(streamed.hwm - base.hwm)}`);

      // Up to the limit works: 900 KiB, and exactly max_message_size bytes; one byte more does not.
      for (const size of [900 << 10, MAX_MESSAGE]) {
        const c = await loggedIn(ctx);
        assert.ok(typeof c !== "string", String(c));
        try {
          const { bytes, xs } = lengthQuery(size);
          await c.send(bytes);
          assert.ok(await c.waitFor(() => c.readies > 0, 10_000), c.describe(c.mark));
          const rows = c.tail.filter((m) => m.type === "D").map((m) => dataRow(m.body)[0]);
          assert.deepEqual(rows, [String(xs)], `${size}-byte Query`);
        } finally {
          await c.close();
        }
      }
      const c = await loggedIn(ctx);
      assert.ok(typeof c !== "string", String(c));
      try {
        await c.send(lengthQuery(MAX_MESSAGE + 1).bytes.subarray(0, 5));
        const problem = fatalThenClose(
          c,
          await c.waitEnd(5000),
          ["08P01"],
          /message of 1048577 bytes/,
        );
        assert.equal(problem, null);
      } finally {
        await c.close();
      }
    });
  });

  await t.step("200 MiB: a 150 MiB Query works end to end", async () => {
    await using proxy = await proxyWith(200 << 20);
    await dumpLogsOnFailure(proxy, async () => {
      const base = await memoryOf(proxy.pid);
      const raw = await loggedIn({ port: proxy.port });
      assert.ok(typeof raw !== "string", String(raw));
      try {
        const { bytes, xs } = lengthQuery(150 << 20);
        const start = performance.now();
        assert.ok(await raw.send(bytes));
        assert.ok(await raw.waitFor(() => raw.readies > 0, 60_000), raw.describe(raw.mark));
        const rows = raw.tail.filter((m) => m.type === "D").map((m) => dataRow(m.body)[0]);
        assert.deepEqual(rows, [String(xs)]);
        const mem = await memoryOf(proxy.pid);
        console.log(
          `150 MiB Query: ${(performance.now() - start).toFixed(0)} ms; proxy RSS ${
            MB(base.rss)
          } -> peak ${MB(mem.hwm)}`,
        );
        // The one buffer holding it is at most max_message_size bytes.
        assert.ok(mem.hwm - base.rss < (200 << 20) + (32 << 20), `peak RSS ${MB(mem.hwm)}`);
        // The buffer shrinks back afterwards and the connection goes on.
        raw.mark = raw.msgs.length;
        await raw.send(query("select 'small'"));
        assert.ok(await raw.waitFor(() => raw.readies > 0, 10_000));
        assert.deepEqual(raw.tail.filter((m) => m.type === "D").map((m) => dataRow(m.body)[0]), [
          "small",
        ]);
      } finally {
        await raw.close();
      }
    });
  });
});
