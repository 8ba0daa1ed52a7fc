/**
 * The startup phase, over raw sockets with hand-built packets (and psql where a real client says
 * more): encryption requests, protocol versions, malformed packets, missing user, replication,
 * client_login_timeout, the messages a client gets at login, and startup parameters applied on
 * the shared server. Where PostgreSQL itself is the reference, the same packet is also sent to
 * the cluster directly and the answers are compared.
 */

import assert from "node:assert/strict";
import {
  connectPg,
  dumpLogsOnFailure,
  type PgCluster,
  type ProxyProcess,
  psql,
  sleep,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";

// ---- a tiny frontend/backend protocol codec -----------------------------------------------------

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const PROTOCOL_3_0 = 3 << 16;
const SSL_REQUEST_CODE = 80877103;
const GSSENC_REQUEST_CODE = 80877104;

/** A startup-phase packet: Int32 length, Int32 code, then the body. */
function startupPacket(code: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(8 + body.length);
  const view = new DataView(out.buffer);
  view.setInt32(0, out.length);
  view.setInt32(4, code);
  out.set(body, 8);
  return out;
}

/** name\0value\0...\0 */
function paramList(params: Record<string, string>, terminated = true): Uint8Array {
  const bytes: number[] = [];
  for (const [k, v] of Object.entries(params)) {
    bytes.push(...encoder.encode(k), 0, ...encoder.encode(v), 0);
  }
  if (terminated) bytes.push(0);
  return Uint8Array.from(bytes);
}

/** A StartupMessage for protocol `major.minor`. */
function startupMessage(params: Record<string, string>, major = 3, minor = 0): Uint8Array {
  return startupPacket((major << 16) | minor, paramList(params));
}

const sslRequest = (): Uint8Array => startupPacket(SSL_REQUEST_CODE);
const gssencRequest = (): Uint8Array => startupPacket(GSSENC_REQUEST_CODE);

/** Just an Int32 length, as the first bytes of a startup packet. */
function lengthOnly(len: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setInt32(0, len);
  return out;
}

/** A typed frontend message. */
function typed(type: string, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + body.length);
  out[0] = type.charCodeAt(0);
  new DataView(out.buffer).setInt32(1, 4 + body.length);
  out.set(body, 5);
  return out;
}

const queryMessage = (sql: string): Uint8Array =>
  typed("Q", Uint8Array.from([...encoder.encode(sql), 0]));
const terminateMessage = (): Uint8Array => typed("X", new Uint8Array(0));

interface Message {
  type: string;
  body: Uint8Array;
}

function int32(body: Uint8Array, at: number): number {
  return new DataView(body.buffer, body.byteOffset, body.byteLength).getInt32(at);
}

function cstrings(body: Uint8Array, from: number): string[] {
  const out: string[] = [];
  let p = from;
  while (p < body.length) {
    const end = body.indexOf(0, p);
    if (end < 0) break;
    out.push(decoder.decode(body.subarray(p, end)));
    p = end + 1;
  }
  return out;
}

/** ErrorResponse/NoticeResponse fields by their one-letter code (S, V, C, M, D, H, ...). */
function errorFields(body: Uint8Array): Record<string, string> {
  const fields: Record<string, string> = {};
  let p = 0;
  while (p < body.length && body[p] !== 0) {
    const code = String.fromCharCode(body[p]);
    const end = body.indexOf(0, p + 1);
    fields[code] = decoder.decode(body.subarray(p + 1, end));
    p = end + 1;
  }
  return fields;
}

/** A raw connection that reads whole backend messages. */
class Wire {
  readonly conn: Deno.TcpConn;
  #buf = new Uint8Array(0);
  #eof = false;

  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  static async open(port: number): Promise<Wire> {
    return new Wire(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  async send(...chunks: Uint8Array[]): Promise<void> {
    for (const chunk of chunks) {
      let off = 0;
      while (off < chunk.length) off += await this.conn.write(chunk.subarray(off));
    }
  }

  /** Reads more bytes; false at the end of the stream (a reset counts as the end). */
  async #fill(timeoutMs: number): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = new Uint8Array(16384);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      this.close();
    }, timeoutMs);
    let n: number | null;
    try {
      n = await this.conn.read(chunk);
    } catch (err) {
      if (timedOut) throw new Error(`no answer within ${timeoutMs} ms`);
      if (err instanceof Deno.errors.ConnectionReset) n = null;
      else throw err;
    } finally {
      clearTimeout(timer);
    }
    if (timedOut) throw new Error(`no answer within ${timeoutMs} ms`);
    if (n === null) {
      this.#eof = true;
      return false;
    }
    const next = new Uint8Array(this.#buf.length + n);
    next.set(this.#buf);
    next.set(chunk.subarray(0, n), this.#buf.length);
    this.#buf = next;
    return true;
  }

  /** One raw byte (the answer to SSLRequest/GSSENCRequest), or null at the end of the stream. */
  async byte(timeoutMs = 10_000): Promise<number | null> {
    while (this.#buf.length < 1) if (!(await this.#fill(timeoutMs))) return null;
    const b = this.#buf[0];
    this.#buf = this.#buf.slice(1);
    return b;
  }

  /** The next backend message, or null at the end of the stream. */
  async message(timeoutMs = 10_000): Promise<Message | null> {
    for (;;) {
      if (this.#buf.length >= 5) {
        const len = int32(this.#buf, 1);
        if (this.#buf.length >= 1 + len) {
          const msg = {
            type: String.fromCharCode(this.#buf[0]),
            body: this.#buf.slice(5, 1 + len),
          };
          this.#buf = this.#buf.slice(1 + len);
          return msg;
        }
      }
      if (!(await this.#fill(timeoutMs))) {
        assert.equal(this.#buf.length, 0, "the stream ended inside a message");
        return null;
      }
    }
  }

  /** Messages up to and including ReadyForQuery, or up to the end of the stream. */
  async untilReady(timeoutMs = 10_000): Promise<Message[]> {
    const out: Message[] = [];
    for (;;) {
      const msg = await this.message(timeoutMs);
      if (msg === null) return out;
      out.push(msg);
      if (msg.type === "Z") return out;
    }
  }

  /** Runs a simple query; rows as text. Throws with the SQLSTATE in the message on an error. */
  async query(sql: string, text: TextDecoder = decoder): Promise<(string | null)[][]> {
    await this.send(queryMessage(sql));
    const rows: (string | null)[][] = [];
    let error: Record<string, string> | undefined;
    for (const msg of await this.untilReady()) {
      if (msg.type === "E") error = errorFields(msg.body);
      if (msg.type !== "D") continue;
      const view = new DataView(msg.body.buffer, msg.body.byteOffset, msg.body.byteLength);
      const row: (string | null)[] = [];
      let p = 2;
      for (let i = 0; i < view.getInt16(0); i++) {
        const len = view.getInt32(p);
        p += 4;
        row.push(len < 0 ? null : text.decode(msg.body.subarray(p, p + len)));
        if (len > 0) p += len;
      }
      rows.push(row);
    }
    if (error) throw new Error(`${error.C}: ${error.M}`);
    return rows;
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** What a login attempt produced. */
interface LoginResult {
  messages: Message[];
  /** ParameterStatus values, in order. */
  params: Map<string, string>;
  /** BackendKeyData. */
  key?: { pid: number; secret: number };
  /** ReadyForQuery status. */
  status?: string;
  /** ErrorResponse fields. */
  error?: Record<string, string>;
  /** NegotiateProtocolVersion. */
  negotiate?: { version: number; options: string[] };
  /** Whether the connection was closed after the last message. */
  closed: boolean;
}

/** Reads a login's answer: everything up to ReadyForQuery, or up to the end after an error. */
async function readLogin(wire: Wire): Promise<LoginResult> {
  const result: LoginResult = { messages: [], params: new Map(), closed: false };
  for (;;) {
    const msg = await wire.message();
    if (msg === null) {
      result.closed = true;
      return result;
    }
    result.messages.push(msg);
    switch (msg.type) {
      case "S": {
        const [name, value] = cstrings(msg.body, 0);
        result.params.set(name, value);
        break;
      }
      case "K":
        result.key = { pid: int32(msg.body, 0), secret: int32(msg.body, 4) };
        break;
      case "E":
        result.error = errorFields(msg.body);
        break;
      case "v":
        result.negotiate = {
          version: int32(msg.body, 0),
          options: cstrings(msg.body, 8).slice(0, int32(msg.body, 4)),
        };
        break;
      case "Z":
        result.status = String.fromCharCode(msg.body[0]);
        return result;
    }
  }
}

/** Opens a connection, sends `packets`, and reads the login's answer. */
async function attempt(port: number, ...packets: Uint8Array[]): Promise<LoginResult> {
  using wire = await Wire.open(port);
  await wire.send(...packets);
  return await readLogin(wire);
}

/** The message types of a successful login, in order, as one string (e.g. "RSSSKZ"). */
function types(result: LoginResult): string {
  return result.messages.map((m) => m.type).join("");
}

/** Asserts a complete, successful login: AuthenticationOk, ParameterStatus*, BackendKeyData, 'I'. */
function assertLoggedIn(result: LoginResult, prefix = ""): void {
  assert.equal(result.error, undefined, `login failed: ${JSON.stringify(result.error)}`);
  assert.match(types(result), new RegExp(`^${prefix}RS+KZ$`));
  const auth = result.messages[prefix.length];
  assert.equal(int32(auth.body, 0), 0, "AuthenticationOk");
  assert.equal(result.status, "I");
}

/** Asserts a refused login: one FATAL ErrorResponse, then the connection closes. */
function assertRefused(result: LoginResult, code: string, message?: string | RegExp): void {
  assert.equal(types(result), "E", `expected only an ErrorResponse, got "${types(result)}"`);
  assert.equal(result.error?.S, "FATAL");
  assert.equal(result.error?.C, code, `SQLSTATE (${result.error?.M})`);
  if (typeof message === "string") assert.equal(result.error?.M, message);
  else if (message) assert.match(result.error?.M ?? "", message);
  assert.equal(result.closed, true, "connection left open after a FATAL error");
}

// ---- the tests ---------------------------------------------------------------------------------

const USER = "tu";
const LOGIN = { user: USER, database: "app" };

Deno.test("startup", async (t) => {
  await using pg = await startPostgres({
    roles: [{ name: USER, auth: "trust" }],
    databases: [{ name: "app", owner: USER }],
  });
  await pg.sql("CREATE SCHEMA myschema", { database: "app" });
  // One server connection: every client of this proxy shares it.
  await using proxy = await startProxy({
    config: {
      general: { auth_type: "trust" },
      databases: [{ name: "app", host: pg.host, port: pg.port, pool_size: 1 }],
    },
    users: { users: [{ name: USER, database: "app" }] },
  });
  const port = proxy.port;

  await dumpLogsOnFailure(proxy, async () => {
    await t.step("SSLRequest is answered N, then the same connection logs in", async () => {
      using wire = await Wire.open(port);
      await wire.send(sslRequest());
      assert.equal(await wire.byte(), "N".charCodeAt(0));
      await wire.send(startupMessage(LOGIN));
      assertLoggedIn(await readLogin(wire));
      assert.deepEqual(await wire.query("SELECT current_user, 1 + 1"), [[USER, "2"]]);
      await wire.send(terminateMessage());
      assert.equal(await wire.message(), null);
    });

    await t.step("GSSENCRequest is answered N, then the same connection logs in", async () => {
      using wire = await Wire.open(port);
      await wire.send(gssencRequest());
      assert.equal(await wire.byte(), "N".charCodeAt(0));
      await wire.send(startupMessage(LOGIN));
      assertLoggedIn(await readLogin(wire));
      assert.deepEqual(await wire.query("SELECT 'gss-fallback'"), [["gss-fallback"]]);
    });

    await t.step(
      "GSSENCRequest then SSLRequest (libpq with a Kerberos cache) logs in",
      async () => {
        // libpq with gssencmode=prefer and sslmode=prefer (the defaults) sends GSSENCRequest, and on
        // 'N' an SSLRequest on the same connection; PostgreSQL accepts one of each, in any order.
        for (const [first, second] of [[gssencRequest, sslRequest], [sslRequest, gssencRequest]]) {
          using wire = await Wire.open(port);
          await wire.send(first());
          assert.equal(await wire.byte(), "N".charCodeAt(0));
          await wire.send(second());
          assert.equal(await wire.byte(), "N".charCodeAt(0), `${first.name} then ${second.name}`);
          await wire.send(startupMessage(LOGIN));
          assertLoggedIn(await readLogin(wire));
        }
      },
    );

    await t.step("a second SSLRequest on one connection is refused", async () => {
      using wire = await Wire.open(port);
      await wire.send(sslRequest());
      assert.equal(await wire.byte(), "N".charCodeAt(0));
      await wire.send(sslRequest());
      const result = await readLogin(wire);
      assert.equal(types(result), "E");
      assert.equal(result.error?.S, "FATAL");
      assert.equal(result.closed, true);
    });

    await t.step("psql: sslmode=require fails, sslmode=prefer works", async () => {
      const target = proxy.target(LOGIN);
      const required = await psql(target, "SELECT 1", { sslmode: "require" });
      assert.notEqual(required.code, 0);
      assert.match(required.stderr, /server does not support SSL, but SSL was required/);
      const preferred = await psql(target, "SELECT 'plain text'", { sslmode: "prefer" });
      assert.equal(preferred.code, 0, preferred.stderr);
      assert.equal(preferred.stdout.trim(), "plain text");
    });

    await t.step("protocol 2.0 and 4.0 are refused with 0A000", async () => {
      for (const major of [2, 4]) {
        const result = await attempt(port, startupMessage(LOGIN, major, 0));
        assertRefused(
          result,
          "0A000",
          `unsupported frontend protocol ${major}.0: server supports 3.0 to 3.0`,
        );
      }
    });

    await t.step(
      "protocol 3.1 and _pq_ options get NegotiateProtocolVersion, then login",
      async () => {
        const minor = await attempt(port, startupMessage(LOGIN, 3, 1));
        assert.deepEqual(minor.negotiate, { version: PROTOCOL_3_0, options: [] });
        assertLoggedIn(minor, "v");

        using wire = await Wire.open(port);
        await wire.send(startupMessage({ ...LOGIN, "_pq_.x": "1", "_pq_.other": "y" }, 3, 2));
        const options = await readLogin(wire);
        assert.deepEqual(options.negotiate, {
          version: PROTOCOL_3_0,
          options: ["_pq_.x", "_pq_.other"],
        });
        assertLoggedIn(options, "v");
        // Protocol options are not session settings.
        assert.deepEqual(await wire.query("SELECT current_setting('_pq_.x', true)"), [[null]]);

        // PostgreSQL answers the same (3.0 with a _pq_ option).
        const direct = await attempt(pg.port, startupMessage({ ...LOGIN, "_pq_.x": "1" }));
        const viaProxy = await attempt(port, startupMessage({ ...LOGIN, "_pq_.x": "1" }));
        assert.deepEqual(viaProxy.negotiate, direct.negotiate);
        assert.deepEqual(direct.negotiate, { version: PROTOCOL_3_0, options: ["_pq_.x"] });
      },
    );

    await t.step(
      "bad startup packet lengths get a close without a word, like PostgreSQL; others are served",
      async () => {
        for (const len of [3, 0, -1, 10_005, 100_000]) {
          const result = await attempt(port, lengthOnly(len));
          assert.equal(result.messages.length, 0, `length ${len}: ${types(result)}`);
          assert.equal(result.closed, true);
        }
        // Malformed bodies: not terminated, a name without a value.
        const unterminated = startupPacket(PROTOCOL_3_0, paramList(LOGIN, false));
        assertRefused(await attempt(port, unterminated), "08P01");
        const noValue = startupPacket(
          PROTOCOL_3_0,
          Uint8Array.from([...paramList(LOGIN, false), ...encoder.encode("application_name"), 0]),
        );
        assertRefused(await attempt(port, noValue), "08P01");
        assertLoggedIn(await attempt(port, startupMessage(LOGIN)));
      },
    );

    await t.step("a StartupMessage without user gets 28000, like PostgreSQL", async () => {
      const packet = startupMessage({ database: "app" });
      const result = await attempt(port, packet);
      assertRefused(result, "28000", "no PostgreSQL user name specified in startup packet");
      const direct = await attempt(pg.port, packet);
      assert.equal(direct.error?.C, result.error?.C);
      assert.equal(direct.error?.M, result.error?.M);
    });

    await t.step("without database, the user name is the database, like PostgreSQL", async () => {
      const packet = startupMessage({ user: USER });
      assertRefused(await attempt(port, packet), "3D000", `database "${USER}" does not exist`);
      const direct = await attempt(pg.port, packet);
      assert.equal(direct.error?.C, "3D000");
      assert.equal(direct.error?.M, `database "${USER}" does not exist`);
    });

    await t.step(
      "replication connections get 0A000; replication=false is a normal login",
      async () => {
        for (const value of ["database", "true", "on", "1"]) {
          assertRefused(
            await attempt(port, startupMessage({ ...LOGIN, replication: value })),
            "0A000",
          );
        }
        // PostgreSQL parses the value as a boolean: these are ordinary connections there.
        for (const value of ["false", "off", "0", "no"]) {
          const result = await attempt(port, startupMessage({ ...LOGIN, replication: value }));
          assert.equal(result.error, undefined, `replication=${value}: ${result.error?.M}`);
          assertLoggedIn(result);
          assertLoggedIn(await attempt(pg.port, startupMessage({ ...LOGIN, replication: value })));
        }
      },
    );

    await t.step("a silent connection does not hold up other logins", async () => {
      using silent = await Wire.open(port);
      await silent.send(lengthOnly(100)); // half a startup packet, then nothing
      assertLoggedIn(await attempt(port, startupMessage(LOGIN)));
    });

    await t.step("ParameterStatus, BackendKeyData and ReadyForQuery after login", async () => {
      const params = { ...LOGIN, application_name: "startup-test" };
      using wire = await Wire.open(port);
      await wire.send(startupMessage(params));
      const login = await readLogin(wire);
      assertLoggedIn(login);
      const [[version]] = await pg.sql("SHOW server_version");
      assert.equal(login.params.get("server_version"), version);
      assert.equal(login.params.get("server_encoding"), "UTF8");
      assert.equal(login.params.get("client_encoding"), "UTF8");
      assert.equal(login.params.get("integer_datetimes"), "on");
      assert.equal(login.params.get("application_name"), "startup-test");
      assert.equal(login.params.get("TimeZone"), "UTC");
      // Exactly what PostgreSQL reports to the same startup packet.
      const direct = await attempt(pg.port, startupMessage(params));
      assertLoggedIn(direct);
      assert.deepEqual(
        Object.fromEntries([...login.params].sort()),
        Object.fromEntries([...direct.params].sort()),
      );

      // The key is the proxy's own: no backend has that pid.
      assert.ok(login.key);
      const backendPids = (await pg.sql("SELECT pid FROM pg_stat_activity")).map(([p]) =>
        Number(p)
      );
      const [[serverPid]] = await wire.query("SELECT pg_backend_pid()");
      assert.ok(backendPids.includes(Number(serverPid)));
      assert.ok(!backendPids.includes(login.key.pid), `pid ${login.key.pid} is a backend's`);
      // Every client gets its own key.
      const other = await attempt(port, startupMessage(LOGIN));
      assert.notEqual(other.key?.pid, login.key.pid);
    });

    await t.step("startup parameters apply on the shared server, per client", async () => {
      using a = await Wire.open(port);
      await a.send(startupMessage({
        ...LOGIN,
        application_name: "client-a",
        TimeZone: "America/New_York",
        options: "-c search_path=myschema --statement-timeout=4321",
      }));
      const loginA = await readLogin(a);
      assertLoggedIn(loginA);
      assert.equal(loginA.params.get("application_name"), "client-a");
      assert.equal(loginA.params.get("TimeZone"), "America/New_York");

      const b = await connectPg(proxy.target(LOGIN));
      try {
        const settings = "SELECT current_setting('search_path') AS search_path, " +
          "current_setting('application_name') AS app, current_setting('TimeZone') AS tz, " +
          "current_setting('statement_timeout') AS st, pg_backend_pid() AS pid";
        const fromB = async () => (await b.query(settings)).rows[0];
        const fromA = async () => {
          const [[search_path, app, tz, st, pid]] = await a.query(settings);
          return { search_path, app, tz, st, pid: Number(pid) };
        };
        const aSees = {
          search_path: "myschema",
          app: "client-a",
          tz: "America/New_York",
          st: "4321ms",
        };
        const bSees = { search_path: '"$user", public', app: "", tz: "UTC", st: "0" };
        // Interleaved on the one server connection: each client sees its own settings.
        const a1 = await fromA();
        const b1 = await fromB();
        const a2 = await fromA();
        const b2 = await fromB();
        for (const row of [a1, a2]) {
          assert.deepEqual({ ...row, pid: undefined }, { ...aSees, pid: undefined });
        }
        for (const row of [b1, b2]) {
          assert.deepEqual({ ...row, pid: undefined }, { ...bSees, pid: undefined });
        }
        assert.equal(
          new Set([a1.pid, a2.pid, b1.pid, b2.pid]).size,
          1,
          "not one server connection",
        );
      } finally {
        await b.end();
      }

      // client_encoding too: the server converts for one client and not for the next.
      using latin = await Wire.open(port);
      await latin.send(startupMessage({ ...LOGIN, client_encoding: "LATIN1" }));
      assertLoggedIn(await readLogin(latin));
      const utf8 = await connectPg(proxy.target(LOGIN));
      try {
        const latin1 = new TextDecoder("latin1");
        const accents = "SELECT chr(233) || chr(252), pg_backend_pid()";
        for (let i = 0; i < 2; i++) {
          const [[fromLatin, pidLatin]] = await latin.query(accents, latin1);
          const res = await utf8.query({ text: accents, rowMode: "array" });
          assert.equal(fromLatin, "\u00e9\u00fc", "LATIN1 bytes for the LATIN1 client");
          assert.deepEqual(res.rows, [["\u00e9\u00fc", Number(pidLatin)]]);
        }
      } finally {
        await utf8.end();
      }

      // psql's way of sending them: PGOPTIONS, PGAPPNAME and PGTZ.
      const r = await psql(
        proxy.target(LOGIN),
        "SELECT current_setting('search_path'), current_setting('application_name'), " +
          "current_setting('TimeZone')",
        { env: { PGOPTIONS: "-c search_path=myschema", PGAPPNAME: "x", PGTZ: "Asia/Tokyo" } },
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), "myschema|x|Asia/Tokyo");
      const plain = await psql(proxy.target(LOGIN), "SELECT current_setting('search_path')");
      assert.equal(plain.stdout.trim(), '"$user", public');
    });

    await t.step("startup parameters end up as PostgreSQL would set them", async (t) => {
      // Each packet goes to PostgreSQL directly and through the proxy (whose one server
      // connection is reused by every case): same error, or same ParameterStatus and settings.
      const cases: Array<Record<string, string>> = [
        {},
        { application_name: "caf\u00e9" },
        { options: "-c search_path=myschema,\\ public" },
        { options: "--search-path=myschema -cstatement_timeout=5s" },
        { DateStyle: "German, DMY", IntervalStyle: "iso_8601", extra_float_digits: "3" },
        { timezone: "Europe/Berlin" },
        { client_encoding: "LATIN1" },
        { "myapp.flag": "on" },
        // An explicit parameter wins over the same setting in options.
        { TimeZone: "Asia/Tokyo", options: "-c TimeZone=Europe/Paris" },
        { TimeZone: "Not/AZone" },
        { application_name: "bad-one", options: "-c statement_timeout=abc" },
        { foo: "bar" },
        {},
      ];
      const probe = "SELECT " + [
        "search_path",
        "application_name",
        "TimeZone",
        "DateStyle",
        "IntervalStyle",
        "extra_float_digits",
        "statement_timeout",
        "client_encoding",
      ].map((name) => `current_setting('${name}', true)`).join(", ");
      const run = async (target: number, extra: Record<string, string>) => {
        const packet = startupMessage({ ...LOGIN, ...extra });
        using wire = await Wire.open(target);
        await wire.send(packet);
        const login = await readLogin(wire);
        // A custom placeholder, once defined on a server, stays defined (as ''): only the
        // case that sets it looks at it.
        const custom = "myapp.flag" in extra ? ", current_setting('myapp.flag', true)" : "";
        const settings = login.error ? undefined : await wire.query(probe + custom);
        return { login, settings };
      };
      for (const extra of cases) {
        await t.step(JSON.stringify(extra), async () => {
          const direct = await run(pg.port, extra);
          const proxied = await run(port, extra);
          if (direct.login.error) {
            assertRefused(proxied.login, direct.login.error.C, direct.login.error.M);
            return;
          }
          assertLoggedIn(proxied.login);
          assert.deepEqual(
            Object.fromEntries([...proxied.login.params].sort()),
            Object.fromEntries([...direct.login.params].sort()),
          );
          assert.deepEqual(proxied.settings, direct.settings);
        });
      }
    });

    await t.step(
      "an invalid TimeZone from psql fails with 22023; the server is unharmed",
      async () => {
        const r = await psql(proxy.target(LOGIN), "SELECT 1", { env: { PGTZ: "Not/AZone" } });
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /FATAL: {2}invalid value for parameter "TimeZone": "Not\/AZone"/);
        const bad = await attempt(port, startupMessage({ ...LOGIN, TimeZone: "Not/AZone" }));
        assertRefused(bad, "22023", 'invalid value for parameter "TimeZone": "Not/AZone"');
        // The shared server is not left with any of it.
        const ok = await attempt(port, startupMessage(LOGIN));
        assertLoggedIn(ok);
        assert.equal(ok.params.get("TimeZone"), "UTC");
        assert.equal(ok.params.get("application_name"), "");
        const client = await connectPg(proxy.target(LOGIN));
        try {
          const res = await client.query(
            "SELECT current_setting('TimeZone') AS tz, current_setting('statement_timeout') AS st",
          );
          assert.deepEqual(res.rows, [{ tz: "UTC", st: "0" }]);
        } finally {
          await client.end();
        }
      },
    );
  });

  await t.step("client_login_timeout closes silent clients with an ErrorResponse", async () => {
    await using slow = await startProxy({
      config: {
        general: { auth_type: "trust", client_login_timeout: 500 },
        databases: [{ name: "app", host: pg.host, port: pg.port }],
      },
      users: { users: [{ name: USER, database: "app" }] },
    });
    await dumpLogsOnFailure(slow, () => loginTimeoutChecks(slow, pg));
  });
});

async function loginTimeoutChecks(proxy: ProxyProcess, pg: PgCluster): Promise<void> {
  const silently = async (packets: Uint8Array[], encryptionAnswer = false) => {
    using wire = await Wire.open(proxy.port);
    const start = performance.now();
    await wire.send(...packets);
    if (encryptionAnswer) assert.equal(await wire.byte(), "N".charCodeAt(0));
    const result = await readLogin(wire);
    return { result, elapsed: performance.now() - start };
  };
  // Nothing at all; half a startup packet; an SSLRequest and then nothing.
  const runs = await Promise.all([
    silently([]),
    silently([lengthOnly(40), encoder.encode("user")]),
    silently([sslRequest()], true),
  ]);
  for (const { result, elapsed } of runs) {
    assert.equal(types(result), "E", `expected one ErrorResponse, got "${types(result)}"`);
    assert.equal(result.error?.S, "FATAL");
    assert.match(result.error?.C ?? "", /^[0-9A-Z]{5}$/);
    assert.match(result.error?.M ?? "", /client_login_timeout/);
    assert.equal(result.closed, true);
    assert.ok(elapsed >= 450, `closed after ${elapsed} ms, before client_login_timeout`);
    assert.ok(elapsed < 5000, `closed only after ${elapsed} ms`);
  }
  // A client that logged in may stay idle longer than that.
  using wire = await Wire.open(proxy.port);
  await wire.send(startupMessage(LOGIN));
  assertLoggedIn(await readLogin(wire));
  await sleep(800);
  assert.deepEqual(await wire.query("SELECT current_database()"), [["app"]]);
  assert.equal(pg.running, true);
}
