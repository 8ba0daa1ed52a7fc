/**
 * Pooling must never let one client see another's identity, settings or temporary objects, and
 * connection edge cases must look like PostgreSQL to drivers.
 *
 * - Identity and settings: a client's `SET SESSION AUTHORIZATION`, `SET ROLE` and superuser-only
 *   settings never reach the next client of its server; a settings sync that fails never lets the
 *   request run on that server (it re-runs on another one, or fails when no server accepts it).
 * - Temporary objects and `WITH HOLD` cursors pin the client's server until they are gone; the
 *   server is cleaned before anyone else gets it; SHOW CLIENTS says who is pinned and why.
 * - Startup packets PostgreSQL drops silently are dropped silently (npm:pg's `connect(); end()`).
 * - `idle_timeout` counts from the last client's use: health checks don't keep a pool open.
 * - A server's FATAL is forwarded once, and then the connection closes (no second FATAL).
 * - An unknown database is refused like a wrong password until the client has authenticated.
 */

import assert from "node:assert/strict";
import pg from "pg";
import { connectPg, dumpLogsOnFailure, sleep, startPostgres, startProxy } from "./harness/mod.ts";
import { errorFields } from "./wire.ts";

const PASSWORD = "isolation-pw";

// ---------------------------------------------------------------------------------------------
// Helpers

/** The SQLSTATE of a driver error. */
function codeOf(e: unknown): string | undefined {
  return (e as { code?: string })?.code;
}

/** Resolves with the error a promise rejects with, or null when it fulfils. */
function failure<T>(p: Promise<T>): Promise<(Error & { code?: string }) | null> {
  return p.then(() => null, (e) => e as Error & { code?: string });
}

/**
 * Sends raw bytes on a new connection (then optionally ends its write side) and reads until the
 * peer closes: what a client that sends them is answered, as a short description ("" when
 * nothing at all). The first `encryptionAnswers` bytes are single-byte answers to SSLRequests.
 */
async function rawAnswer(
  port: number,
  bytes: Uint8Array | Uint8Array[],
  options: { closeWrite?: boolean; encryptionAnswers?: number } = {},
): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    // Pieces go out as separate writes, apart (PostgreSQL refuses data sent with an SSLRequest).
    for (const [i, piece] of (Array.isArray(bytes) ? bytes : [bytes]).entries()) {
      if (i > 0) await sleep(200);
      await conn.write(piece).catch(() => 0);
    }
    if (options.closeWrite) await conn.closeWrite().catch(() => {});
    const got: number[] = [];
    const buf = new Uint8Array(4096);
    const deadline = Date.now() + 10_000;
    let timedOut = false;
    for (;;) {
      const timer = setTimeout(() => {
        timedOut = true;
        conn.close();
      }, Math.max(1, deadline - Date.now()));
      const n = await conn.read(buf).catch(() => null);
      clearTimeout(timer);
      if (n === null) break;
      got.push(...buf.subarray(0, n));
    }
    if (timedOut) return "no close within 10 s";
    return describeAnswer(Uint8Array.from(got), options.encryptionAnswers ?? 0);
  } finally {
    try {
      conn.close();
    } catch {
      // Closed already.
    }
  }
}

/** Encryption answers, then each message as `E <severity> <code> <message>` or its type. */
function describeAnswer(b: Uint8Array, encryptionAnswers: number): string {
  const parts: string[] = [];
  let p = 0;
  for (; p < encryptionAnswers && p < b.length; p++) parts.push(String.fromCharCode(b[p]));
  while (p + 5 <= b.length) {
    const type = String.fromCharCode(b[p]);
    const len = new DataView(b.buffer, b.byteOffset + p + 1, 4).getInt32(0);
    const body = b.subarray(p + 5, p + 1 + len);
    if (type === "E") {
      const f = errorFields(body);
      parts.push(`E ${f.S} ${f.C} ${f.M}`);
    } else parts.push(type);
    p += 1 + len;
  }
  if (p < b.length) parts.push(`${b.length - p} stray bytes`);
  return parts.join(" | ");
}

function int32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, n);
  return b;
}

function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A startup-phase packet: length, code, body. */
function packet(code: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  return cat(int32(8 + body.length), int32(code), body);
}

/** name\0value\0... for a StartupMessage body. */
function params(p: Record<string, string>, terminator = true): Uint8Array {
  const text = Object.entries(p).map(([k, v]) => `${k}\0${v}\0`).join("") +
    (terminator ? "\0" : "");
  return new TextEncoder().encode(text);
}

const PROTOCOL_3 = 196608;
const SSL_REQUEST = 80877103;
const CANCEL_REQUEST = 80877102;

// ---------------------------------------------------------------------------------------------

Deno.test("startup packets PostgreSQL drops silently are dropped silently", async (t) => {
  await using cluster = await startPostgres({
    roles: [{ name: "starter", password: PASSWORD, auth: "scram" }],
    databases: ["app"],
  });
  await using proxy = await startProxy({
    config: { databases: [{ name: "app", host: cluster.host, port: cluster.port }] },
    users: { users: [{ name: "starter", password: PASSWORD, database: "app" }] },
  });
  const target = proxy.target({ user: "starter", password: PASSWORD, database: "app" });
  await dumpLogsOnFailure(proxy, async () => {
    await t.step(
      "npm:pg connect() then end() raises no error event, as with PostgreSQL",
      async () => {
        for (const port of [cluster.port, proxy.port]) {
          const seen: string[] = [];
          const client = new pg.Client({ ...target, port, ssl: false });
          client.on("error", (e: Error) => seen.push(String(e)));
          // Against PostgreSQL the connect() promise never settles: the connection just ends. An
          // answer would reject it (unhandled, that ends a Node process) or raise an error event.
          let rejected: string | null = null;
          client.connect().catch((e: unknown) => rejected = String(e));
          await client.end();
          await sleep(500);
          const where = port === proxy.port ? "pgdog" : "PostgreSQL";
          assert.deepEqual({ events: seen, rejected }, { events: [], rejected: null }, where);
        }
      },
    );

    await t.step(
      "each malformed startup packet is answered exactly as PostgreSQL answers it",
      async () => {
        const login = params({ user: "starter", database: "app" });
        const enc = new TextEncoder();
        const cases: Array<
          [string, Uint8Array | Uint8Array[], { closeWrite?: boolean; encryptionAnswers?: number }]
        > = [
          [
            "Terminate before the startup packet (npm:pg ended before it connected)",
            cat(Uint8Array.of(0x58, 0, 0, 0, 4), packet(PROTOCOL_3, login)),
            {},
          ],
          ["length 3", int32(3), {}],
          ["length 7", cat(int32(7), new Uint8Array(3)), {}],
          ["length 10005", cat(int32(10005), new Uint8Array(32)), {}],
          ["negative length", cat(int32(-1), new Uint8Array(8)), {}],
          ["a packet cut short", cat(int32(100), new Uint8Array(20)), { closeWrite: true }],
          ["a CancelRequest of 12 bytes", packet(CANCEL_REQUEST, int32(1)), {}],
          ["a second SSLRequest", [packet(SSL_REQUEST), packet(SSL_REQUEST)], {
            encryptionAnswers: 1,
          }],
          ["protocol 4.0", packet(4 << 16, login), {}],
          [
            "parameters without terminator",
            packet(PROTOCOL_3, params({ user: "starter" }, false)),
            {},
          ],
          [
            "bytes after the terminator",
            packet(PROTOCOL_3, cat(login, Uint8Array.of(0x61, 0))),
            {},
          ],
          [
            "a name without a value",
            packet(PROTOCOL_3, cat(params({ user: "starter" }, false), enc.encode("database\0"))),
            {},
          ],
        ];
        for (const [what, bytes, options] of cases) {
          const direct = await rawAnswer(cluster.port, bytes, options);
          const viaProxy = await rawAnswer(proxy.port, bytes, options);
          assert.equal(viaProxy, direct, what);
        }
      },
    );
  });
});

Deno.test("an unknown database is refused like a wrong password until the client authenticated", async (t) => {
  await using cluster = await startPostgres({
    roles: [{ name: "known", password: PASSWORD, auth: "scram" }],
    databases: ["app"],
  });
  for (const authType of ["scram", "md5", "plain"]) {
    await t.step(`auth_type = "${authType}"`, async () => {
      await using proxy = await startProxy({
        config: {
          general: { auth_type: authType },
          databases: [{ name: "app", host: cluster.host, port: cluster.port }],
        },
        users: { users: [{ name: "known", password: PASSWORD, database: "app" }] },
      });
      await dumpLogsOnFailure(proxy, async () => {
        const attempt = async (user: string, password: string, database: string) => {
          const e = await failure(connectPg({ ...proxy.target({ user, password, database }) }));
          return e === null ? "logged in" : `${codeOf(e)} ${e.message}`;
        };
        const wrongPassword = 'password authentication failed for user "known"';
        // Before the password is proven, a database that does not exist is not told apart.
        assert.equal(await attempt("known", "wrong", "nosuchdb"), `28P01 ${wrongPassword}`);
        assert.equal(await attempt("known", "wrong", "app"), `28P01 ${wrongPassword}`);
        assert.equal(
          await attempt("nobody", PASSWORD, "nosuchdb"),
          '28P01 password authentication failed for user "nobody"',
        );
        // After it, the client learns what PostgreSQL would tell it.
        assert.equal(
          await attempt("known", PASSWORD, "nosuchdb"),
          '3D000 database "nosuchdb" does not exist',
        );
        assert.equal(await attempt("known", PASSWORD, "app"), "logged in");
        // The log says more than the client is told.
        assert.match(proxy.logs(), /database "nosuchdb" does not exist \(user "known"\)/);
      });
    });
  }
});
