/**
 * Many idle, authenticated client connections, opened with a minimal PostgreSQL wire-protocol
 * client over `Deno.connect` (10,000 psql processes would measure psql, not the pooler).
 *
 * Only what a login needs: StartupMessage, trust / cleartext / md5 authentication, then reading
 * until ReadyForQuery. Optionally each connection prepares one named statement of its own (Parse +
 * Sync), so the pooler holds that many distinct statements.
 *
 * @module
 */

import { createHash } from "node:crypto";

/** Whom to log in as. */
export interface IdleTarget {
  /** Host. */
  host: string;
  /** Port. */
  port: number;
  /** User. */
  user: string;
  /** Password (md5 or cleartext); none for trust. */
  password?: string;
  /** Database. */
  database: string;
}

/** Options for {@linkcode openIdleClients}. */
export interface IdleOptions {
  /** Logins in flight at once; 200 by default (more only overflows the listen backlog). */
  concurrency?: number;
  /** Give up on the whole batch after this many milliseconds; 120 000 by default. */
  timeoutMs?: number;
  /** Have client i prepare `SELECT i` as a named statement after logging in. */
  prepare?: boolean;
}

/** A batch of open idle connections. */
export interface IdleClients {
  /** How many are open. */
  readonly count: number;
  /** Milliseconds the batch took to log in. */
  readonly elapsedMs: number;
  /** Sends Terminate on each and closes them. */
  close(): Promise<void>;
}

const encoder = new TextEncoder();
const LOGIN_TIMEOUT_MS = 30_000;

function message(type: string, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + body.length);
  out[0] = type.charCodeAt(0);
  new DataView(out.buffer).setInt32(1, 4 + body.length);
  out.set(body, 5);
  return out;
}

function cstrings(...parts: string[]): Uint8Array {
  return encoder.encode(parts.map((p) => `${p}\0`).join(""));
}

function startupMessage(user: string, database: string): Uint8Array {
  const params = cstrings("user", user, "database", database, "application_name", "idle", "");
  const out = new Uint8Array(8 + params.length);
  const view = new DataView(out.buffer);
  view.setInt32(0, out.length);
  view.setInt32(4, 196608);
  out.set(params, 8);
  return out;
}

function md5Hex(data: Uint8Array | string): string {
  return createHash("md5").update(data).digest("hex");
}

/** Reads whole backend messages from a connection. */
class Reader {
  #conn: Deno.Conn;
  #buf = new Uint8Array(0);
  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  async next(): Promise<{ type: string; body: Uint8Array }> {
    while (true) {
      if (this.#buf.length >= 5) {
        const len = new DataView(this.#buf.buffer, this.#buf.byteOffset).getInt32(1);
        if (this.#buf.length >= 1 + len) {
          const type = String.fromCharCode(this.#buf[0]);
          const body = this.#buf.slice(5, 1 + len);
          this.#buf = this.#buf.slice(1 + len);
          return { type, body };
        }
      }
      const chunk = new Uint8Array(4096);
      const n = await this.#conn.read(chunk);
      if (n === null) throw new Error("connection closed by the server");
      const merged = new Uint8Array(this.#buf.length + n);
      merged.set(this.#buf);
      merged.set(chunk.subarray(0, n), this.#buf.length);
      this.#buf = merged;
    }
  }

  /** Reads until ReadyForQuery; throws on ErrorResponse. */
  async untilReady(): Promise<void> {
    while (true) {
      const { type, body } = await this.next();
      if (type === "Z") return;
      if (type === "E") throw new Error(`server error: ${errorText(body)}`);
    }
  }
}

function errorText(body: Uint8Array): string {
  const fields = new TextDecoder().decode(body).split("\0");
  return fields.filter((f) => f.startsWith("M")).map((f) => f.slice(1)).join("; ") ||
    fields.join(" ");
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

/** Opens one connection and logs in; returns it open and idle. */
async function login(target: IdleTarget, index: number, prepare: boolean): Promise<Deno.Conn> {
  const conn = await Deno.connect({ hostname: target.host, port: target.port });
  // A pooler out of file descriptors leaves the connection in its listen backlog, unanswered.
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    conn.close();
  }, LOGIN_TIMEOUT_MS);
  try {
    const reader = new Reader(conn);
    await writeAll(conn, startupMessage(target.user, target.database));
    while (true) {
      const { type, body } = await reader.next();
      if (type === "E") throw new Error(`login failed: ${errorText(body)}`);
      if (type !== "R") throw new Error(`unexpected message ${type} during login`);
      const code = new DataView(body.buffer, body.byteOffset).getInt32(0);
      if (code === 0) break;
      if (code === 3) {
        await writeAll(conn, message("p", cstrings(target.password ?? "")));
      } else if (code === 5) {
        const inner = md5Hex((target.password ?? "") + target.user);
        const outer = md5Hex(new Uint8Array([...encoder.encode(inner), ...body.subarray(4, 8)]));
        await writeAll(conn, message("p", cstrings(`md5${outer}`)));
      } else {
        throw new Error(`authentication method ${code} not supported (use md5, plain or trust)`);
      }
    }
    await reader.untilReady();
    if (prepare) {
      // Parse: name, query, no parameter types (Int16 0); then Sync.
      const parse = message(
        "P",
        new Uint8Array([...cstrings(`idle_${index}`, `SELECT ${index}`), 0, 0]),
      );
      await writeAll(conn, new Uint8Array([...parse, ...message("S", new Uint8Array(0))]));
      await reader.untilReady();
    }
    return conn;
  } catch (err) {
    if (timedOut) throw new Error(`no answer to the login within ${LOGIN_TIMEOUT_MS} ms`);
    conn.close();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Opens `count` authenticated connections and leaves them idle. Throws (after closing whatever it
 * opened) if any login fails.
 */
export async function openIdleClients(
  target: IdleTarget,
  count: number,
  options: IdleOptions = {},
): Promise<IdleClients> {
  const started = performance.now();
  const conns: Deno.Conn[] = [];
  const concurrency = Math.max(1, Math.min(options.concurrency ?? 200, count));
  const deadline = Date.now() + (options.timeoutMs ?? 120_000);
  let next = 0;
  let failure: unknown;
  const worker = async (): Promise<void> => {
    while (failure === undefined && next < count) {
      const i = next++;
      if (Date.now() > deadline) {
        failure = new Error(`only ${conns.length} of ${count} logged in before the timeout`);
        return;
      }
      try {
        conns.push(await login(target, i, options.prepare ?? false));
      } catch (err) {
        failure ??= new Error(`idle client ${i} (${conns.length} open): ${String(err)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const batch: IdleClients = {
    count: conns.length,
    elapsedMs: performance.now() - started,
    async close(): Promise<void> {
      const terminate = message("X", new Uint8Array(0));
      await Promise.all(conns.map(async (conn) => {
        try {
          await writeAll(conn, terminate);
        } catch {
          // Already gone.
        }
        try {
          conn.close();
        } catch {
          // Already closed.
        }
      }));
      conns.length = 0;
    },
  };
  if (failure !== undefined) {
    await batch.close();
    throw failure;
  }
  return batch;
}

/** Resident set size of a process in KiB (VmRSS from /proc/<pid>/status). */
export async function residentKiB(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const match = status.match(/^VmRSS:\s+(\d+) kB/m);
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]);
}

/** Soft and hard limits on open files of this process (from /proc/self/limits). */
export async function openFilesLimits(): Promise<{ soft: number; hard: number }> {
  const limits = await Deno.readTextFile("/proc/self/limits");
  const match = limits.match(/^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m);
  const value = (s: string | undefined): number =>
    s === undefined ? 1024 : s === "unlimited" ? Number.MAX_SAFE_INTEGER : Number(s);
  return { soft: value(match?.[1]), hard: value(match?.[2]) };
}
