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
import postgres from "postgres";
import {
  codeOf,
  connectPg,
  dumpLogsOnFailure,
  failure,
  type PgTarget,
  psycopgAvailable,
  row,
  runPsycopg,
  sleep,
  startPostgres,
  startProxy,
  waitUntil,
} from "./harness/mod.ts";
import { type BackendMessage, errorFields, fe, summary, WireClient } from "./wire.ts";

const PASSWORD = "isolation-pw";
const ADMIN_PASSWORD = "isolation-admin-pw";

// ---------------------------------------------------------------------------------------------
// Helpers

/** Closes everything opened through it at the end of the scope. */
class Closer implements AsyncDisposable {
  readonly #all: Array<() => Promise<unknown>> = [];

  add<T extends { end(): Promise<unknown> }>(c: T): T {
    this.#all.push(() => c.end());
    return c;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.#all.map((f) => f().catch(() => {})));
    this.#all.length = 0;
  }
}

/** Every backend message until the server closes the connection (or `timeoutMs` passes). */
async function untilClosed(c: WireClient, timeoutMs = 10_000): Promise<BackendMessage[]> {
  const out: BackendMessage[] = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      out.push(await c.next(Math.max(1, deadline - Date.now())));
    } catch (e) {
      if (/closed|reset|broken pipe/i.test(String(e))) return out;
      throw e;
    }
  }
}

/** `(code) message` of each ErrorResponse among `msgs`. */
function errors(msgs: BackendMessage[]): string[] {
  return msgs.filter((m) => m.type === "E").map((m) => {
    const f = errorFields(m.body);
    return `${f.S} ${f.C} ${f.M}`;
  });
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

Deno.test("a server's FATAL reaches the client once, then the connection closes", async (t) => {
  await using cluster = await startPostgres({
    roles: [
      { name: "sess", password: PASSWORD, auth: "scram", superuser: true },
      { name: "txn", password: PASSWORD, auth: "scram", superuser: true },
    ],
    databases: ["app"],
  });
  await using proxy = await startProxy({
    config: { databases: [{ name: "app", host: cluster.host, port: cluster.port }] },
    users: {
      users: [
        { name: "sess", password: PASSWORD, database: "app", pool_size: 2, pooler_mode: "session" },
        { name: "txn", password: PASSWORD, database: "app", pool_size: 2 },
      ],
    },
  });
  const direct = (user: string) => ({
    host: cluster.host,
    port: cluster.port,
    user,
    password: PASSWORD,
    database: "app",
  });
  const via = (user: string) => proxy.target({ user, password: PASSWORD, database: "app" });
  const step = (name: string, fn: () => Promise<void>) =>
    t.step(name, () => dumpLogsOnFailure(proxy, fn));
  const TERMINATED = "FATAL 57P01 terminating connection due to administrator command";

  /** What a client running `sqls` (one simple query each) receives until the connection ends. */
  const terminatedBySelf = async (target: PgTarget, sqls: string[]): Promise<string[]> => {
    const c = await WireClient.connect(target);
    try {
      for (const sql of sqls.slice(0, -1)) await c.rows(sql);
      await c.send(fe.query(sqls.at(-1)!));
      return errors(await untilClosed(c));
    } finally {
      await c.close();
    }
  };

  await step("session mode: pg_terminate_backend(pg_backend_pid())", async () => {
    const sql = ["select pg_terminate_backend(pg_backend_pid())"];
    assert.deepEqual(await terminatedBySelf(direct("sess"), sql), [TERMINATED]);
    assert.deepEqual(await terminatedBySelf(via("sess"), sql), [TERMINATED]);
  });

  await step("transaction mode inside a transaction: one FATAL", async () => {
    const sql = ["begin", "select pg_terminate_backend(pg_backend_pid())"];
    assert.deepEqual(await terminatedBySelf(direct("txn"), sql), [TERMINATED]);
    assert.deepEqual(await terminatedBySelf(via("txn"), sql), [TERMINATED]);
  });

  await step("session mode: the backend terminated from elsewhere while idle", async () => {
    for (const target of [direct("sess"), via("sess")]) {
      const c = await WireClient.connect(target);
      try {
        const [[pid]] = await c.rows("select pg_backend_pid()");
        await cluster.sql(`select pg_terminate_backend(${pid})`);
        assert.deepEqual(errors(await untilClosed(c)), [TERMINATED], `port ${target.port}`);
      } finally {
        await c.close();
      }
    }
  });

  await step("npm:pg's pool sees the error once, as with PostgreSQL", async () => {
    const events = async (target: PgTarget): Promise<string[]> => {
      const seen: string[] = [];
      const pool = new pg.Pool({ ...target, max: 1, ssl: false });
      pool.on("error", (e: Error) => seen.push(`pool: ${codeOf(e)}`));
      try {
        const e = await failure(pool.query("select pg_terminate_backend(pg_backend_pid())"));
        seen.push(`query: ${codeOf(e)}`);
        await sleep(500);
        return seen;
      } finally {
        await pool.end().catch(() => {});
      }
    };
    assert.deepEqual(await events(via("sess")), await events(direct("sess")));
  });
});

Deno.test("idle_timeout empties a min_pool_size = 0 pool although health checks run", async () => {
  await using cluster = await startPostgres({
    roles: [{ name: "idler", password: PASSWORD, auth: "scram" }],
    databases: ["app"],
  });
  await using proxy = await startProxy({
    config: {
      general: {
        min_pool_size: 0,
        idle_timeout: 3000,
        idle_healthcheck_interval: 1000,
        idle_healthcheck_delay: 0,
      },
      databases: [{ name: "app", host: cluster.host, port: cluster.port }],
    },
    users: { users: [{ name: "idler", password: PASSWORD, database: "app" }] },
  });
  await dumpLogsOnFailure(proxy, async () => {
    const serverConnections = async () =>
      Number(
        (await cluster.sql("select count(*) from pg_stat_activity where usename = 'idler'"))[0][0],
      );
    const client = await connectPg(
      proxy.target({ user: "idler", password: PASSWORD, database: "app" }),
    );
    await client.query("select 1");
    await client.end();
    assert.equal(await serverConnections(), 1);
    // Health checks every second use the idle connection; they are not use by a client.
    assert.ok(
      await waitUntil(async () => (await serverConnections()) === 0, 15_000, 250),
      "the idle connection outlived idle_timeout",
    );
  });
});

Deno.test("no client runs with another client's identity or settings", async (t) => {
  await using cluster = await startPostgres({
    roles: [{ name: "su", password: PASSWORD, auth: "scram", superuser: true }],
    databases: ["app"],
  });
  await cluster.sql(
    "create role lo_user nologin; create role r_gone nologin; create table sync_log (v text)",
    { database: "app" },
  );
  // One server: every client of the pool takes turns on it (or on its replacement).
  await using proxy = await startProxy({
    config: { databases: [{ name: "app", host: cluster.host, port: cluster.port }] },
    users: { users: [{ name: "su", password: PASSWORD, database: "app", pool_size: 1 }] },
  });
  const target = proxy.target({ user: "su", password: PASSWORD, database: "app" });
  const step = (name: string, fn: () => Promise<void>) =>
    t.step(name, () => dumpLogsOnFailure(proxy, fn));
  const logged = async (): Promise<string[][]> =>
    await cluster.sql("select v from sync_log order by v", { database: "app" });

  await step(
    "SET SESSION AUTHORIZATION and a superuser-only setting do not reach the next client",
    async () => {
      const first = await connectPg(target);
      await first.query("SET lo_compat_privileges = true");
      await first.query("SET SESSION AUTHORIZATION lo_user");
      assert.equal((await row(first, "select current_user as u")).u, "lo_user");
      await first.end();
      const next = await connectPg(target);
      try {
        assert.deepEqual(
          await row(next, "select current_user as u, current_setting('lo_compat_privileges') as l"),
          { u: "su", l: "off" },
        );
      } finally {
        await next.end();
      }
      assert.doesNotMatch(proxy.logs(), /a statement pgdog sent failed/);
    },
  );

  await step(
    "a client's SET of a reported parameter is reported to it, before ReadyForQuery",
    async () => {
      // Another client left the server with the same value: the settings sync puts it back, the
      // client's SET sets it again, and PostgreSQL, seeing no change, reports nothing itself.
      const a = await WireClient.connect(target);
      const b = await WireClient.connect(target);
      try {
        for (
          const [name, value] of [["standard_conforming_strings", "off"], [
            "TimeZone",
            "Asia/Tokyo",
          ]]
        ) {
          await b.simple(`SET ${name} = '${value}'`);
          const msgs = await a.simple(`SET ${name} = '${value}'`);
          const reported = msgs.findIndex((m) =>
            m.type === "S" && new TextDecoder().decode(m.body) === `${name}\0${value}\0`
          );
          assert.ok(reported >= 0, `${name}: ${msgs.map((m) => m.type).join(" ")}`);
          assert.ok(reported < msgs.findIndex((m) => m.type === "Z"));
          await a.simple(`RESET ${name}`);
          await b.simple(`RESET ${name}`);
        }
      } finally {
        await a.close();
        await b.close();
      }
    },
  );

  await step(
    "the unnamed statement is each client's own, across requests and servers",
    async () => {
      const a = await WireClient.connect(target);
      const b = await WireClient.connect(target);
      const c = await WireClient.connect(target);
      try {
        await a.rows(
          "create table if not exists unnamed_t (x int); truncate unnamed_t; " +
            "insert into unnamed_t values (7)",
        );
        // a parses, b parses its own on the same (only) server, a executes and describes its own.
        await a.send(fe.parse("", "select 3 as x"), fe.sync());
        await a.untilReady();
        await b.send(fe.parse("", "delete from unnamed_t returning x"), fe.sync());
        await b.untilReady();
        await a.send(fe.bind("", ""), fe.execute(""), fe.sync());
        assert.deepEqual(summary(await a.untilReady()), ["2", "D 3", "C SELECT 1", "Z I"]);
        await a.send(fe.describe("S", ""), fe.sync());
        const described = await a.untilReady();
        assert.deepEqual(summary(described), ["t", "T", "Z I"]);
        assert.deepEqual(await a.rows("select x from unnamed_t"), [["7"]]);
        // A client that never parsed one gets PostgreSQL's error, not another client's statement.
        await c.send(fe.bind("", ""), fe.execute(""), fe.sync());
        const none = await c.untilReady();
        assert.deepEqual(summary(none), ["E 26000", "Z I"]);
        assert.deepEqual(await a.rows("select x from unnamed_t"), [["7"]]);
      } finally {
        await Promise.all([a.close(), b.close(), c.close()]);
      }
    },
  );

  await step("SET ROLE does not reach the next client (postgres.js)", async () => {
    const first = postgres({ ...target, username: target.user, max: 1, onnotice: () => {} });
    const next = postgres({ ...target, username: target.user, max: 1, onnotice: () => {} });
    try {
      await first`set role lo_user`;
      assert.deepEqual([...await first`select current_user as u`], [{ u: "lo_user" }]);
      assert.deepEqual([...await next`select current_user as u`], [{ u: "su" }]);
      assert.deepEqual([...await first`select current_user as u`], [{ u: "lo_user" }]);
    } finally {
      await Promise.all([first.end(), next.end()]);
    }
  });

  await step("the cleanup after a pin undoes SET ROLE before the next client", async () => {
    const first = await connectPg(target);
    await first.query("SET ROLE lo_user");
    await first.query("SET pgdog.pin TO true");
    await first.query("select 1");
    await first.query("SET pgdog.pin TO false"); // the server goes back, cleaned
    const next = await connectPg(target);
    try {
      assert.deepEqual(await row(next, "select current_user as u"), { u: "su" });
    } finally {
      await Promise.all([first.end(), next.end()]);
    }
  });

  await step(
    "a login is not refused because the server's last client became someone else",
    async () => {
      const first = await connectPg(target);
      try {
        await first.query("SET lo_compat_privileges = on");
        await first.query("SET SESSION AUTHORIZATION lo_user");
        // New startup parameters: pgdog applies them on the server to show the login its values.
        const next = await connectPg(target, { applicationName: `fresh-${crypto.randomUUID()}` });
        try {
          assert.deepEqual(
            await row(
              next,
              "select current_user as u, current_setting('lo_compat_privileges') as l",
            ),
            { u: "su", l: "off" },
          );
        } finally {
          await next.end();
        }
        assert.deepEqual(
          await row(
            first,
            "select current_user as u, current_setting('lo_compat_privileges') as l",
          ),
          { u: "lo_user", l: "on" },
        );
      } finally {
        await first.end();
      }
    },
  );

  await step("a settings sync that fails on one server runs the request on another", async () => {
    await cluster.sql("truncate sync_log", { database: "app" });
    const b = await connectPg(target);
    const a = await connectPg(target);
    try {
      // Accepted as a placeholder where auto_explain is not loaded...
      await b.query("SET auto_explain.log_format = 'bogus'");
      // ...and refused on the server once another client loaded it there.
      await a.query("LOAD 'auto_explain'");
      await b.query("insert into sync_log values (current_setting('auto_explain.log_format'))");
      assert.deepEqual(await logged(), [["bogus"]]);
      assert.deepEqual(
        await row(b, "select current_setting('auto_explain.log_format') as v"),
        { v: "bogus" },
      );
      assert.match(proxy.logs(), /applying a client's settings failed .*"bogus"/);
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });

  await step(
    "re-run after a failed sync, a transaction's first statement keeps its BEGIN",
    async () => {
      // With query_parser = "on", pgdog holds BEGIN back until the first statement picks a host.
      await using routing = await startProxy({
        config: {
          general: { query_parser: "on" },
          databases: [{ name: "app", host: cluster.host, port: cluster.port }],
        },
        users: { users: [{ name: "su", password: PASSWORD, database: "app", pool_size: 1 }] },
      });
      await cluster.sql("truncate sync_log", { database: "app" });
      const at = routing.target({ user: "su", password: PASSWORD, database: "app" });
      const b = await connectPg(at);
      const a = await connectPg(at);
      try {
        await b.query("SET auto_explain.log_format = 'bogus'");
        await a.query("LOAD 'auto_explain'");
        await b.query("begin");
        await b.query("insert into sync_log values (current_setting('auto_explain.log_format'))");
        assert.deepEqual(await logged(), [], "the insert ran outside the transaction");
        await b.query("commit");
        assert.deepEqual(await logged(), [["bogus"]]);
        assert.match(routing.logs(), /applying a client's settings failed/);
      } finally {
        await Promise.all([a.end(), b.end()]);
      }
    },
  );

  await step(
    "a setting no server accepts any more fails the request instead of running it",
    async () => {
      await cluster.sql("truncate sync_log", { database: "app" });
      const b = await connectPg(target);
      const a = await connectPg(target);
      try {
        await b.query("SET ROLE r_gone");
        await a.query("select 1"); // the server is the login's again
        await cluster.sql("drop role r_gone");
        const e = await failure(b.query("insert into sync_log values ('ran as ' || current_user)"));
        assert.match(String(e?.message), /role "r_gone" does not exist/);
        assert.deepEqual(await logged(), []);
        // Others are not affected.
        assert.deepEqual(await row(a, "select current_user as u"), { u: "su" });
      } finally {
        await Promise.all([a.end(), b.end()]);
      }
    },
  );
});

Deno.test("temporary objects and WITH HOLD cursors keep their server; nobody else sees them", async (t) => {
  await using cluster = await startPostgres({
    roles: [
      { name: "tmp2", password: PASSWORD, auth: "scram" },
      { name: "tmp1", password: PASSWORD, auth: "scram" },
    ],
    databases: ["app"],
  });
  await cluster.sql(
    "create table person (x int); insert into person values (1), (2), (3); " +
      "grant all on person to tmp2, tmp1; create table stat_base (a int, b int); " +
      "alter table stat_base owner to tmp1",
    { database: "app" },
  );
  await using proxy = await startProxy({
    config: {
      // A client that should be kept waiting gives up quickly (53300).
      general: { checkout_timeout: 1000 },
      databases: [{ name: "app", host: cluster.host, port: cluster.port }],
      admin: { password: ADMIN_PASSWORD },
    },
    users: {
      users: [
        { name: "tmp2", password: PASSWORD, database: "app", pool_size: 2 },
        { name: "tmp1", password: PASSWORD, database: "app", pool_size: 1 },
      ],
    },
  });
  const via = (user: string) => proxy.target({ user, password: PASSWORD, database: "app" });
  const step = (name: string, fn: () => Promise<void>) =>
    t.step(name, () => dumpLogsOnFailure(proxy, fn));
  const count = async (c: pg.Client, sql: string): Promise<number> =>
    Number((await c.query(sql)).rows[0].n);
  /**
   * SHOW CLIENTS' pinned column for an npm:pg client (its pid is pgdog's client id), once it says
   * `expected` (pgdog counts what pins after the transaction's answer went out) or a second passed.
   */
  const pinnedOf = async (c: pg.Client, expected = ""): Promise<string> => {
    let seen = "";
    await waitUntil(async () => (seen = await showPinned(c)) === expected, 1000, 50);
    return seen;
  };
  const showPinned = async (c: pg.Client): Promise<string> => {
    const admin = await connectPg(
      proxy.target({ user: "admin", password: ADMIN_PASSWORD, database: "admin" }),
    );
    try {
      const rows: Array<Record<string, string>> = (await admin.query("SHOW CLIENTS")).rows;
      const pid = (c as unknown as { processID: number }).processID;
      const mine = rows.find((r) => Number(r.id) === pid);
      assert.ok(mine, JSON.stringify(rows));
      return mine.pinned;
    } finally {
      await admin.end();
    }
  };

  await step(
    "a temporary table shadows nothing for other clients and keeps its server until dropped",
    async () => {
      await using closer = new Closer();
      const a = closer.add(await connectPg(via("tmp2")));
      const b = closer.add(await connectPg(via("tmp2")));
      await a.query("create temp table person (x int)");
      assert.equal(await pinnedOf(a, "temporary objects"), "temporary objects");
      // b's statements reach the regular table, never a's temporary one.
      assert.equal(await count(b, "select count(*) as n from person"), 3);
      await b.query("insert into person values (4)");
      assert.equal(await count(a, "select count(*) as n from person"), 0);
      await a.query("insert into person values (100)");
      assert.equal(await count(b, "select count(*) as n from person"), 4);
      assert.equal(await count(a, "select count(*) as n from person"), 1);
      assert.equal(await pinnedOf(b, ""), "");
      await a.query("drop table person");
      assert.equal(await pinnedOf(a, ""), "");
      assert.equal(await count(a, "select count(*) as n from person"), 4);
      await cluster.sql("delete from person where x = 4", { database: "app" });
    },
  );

  await step(
    "two clients create the same temporary table, each its own (postgres.js)",
    async () => {
      const one = postgres({ ...via("tmp2"), username: "tmp2", max: 1, onnotice: () => {} });
      const two = postgres({ ...via("tmp2"), username: "tmp2", max: 1, onnotice: () => {} });
      try {
        await one`create temp table scratch (who text)`;
        await two`create temp table scratch (who text)`;
        await one`insert into scratch values ('one')`;
        await two`insert into scratch values ('two')`;
        assert.deepEqual([...await one`select who from scratch`], [{ who: "one" }]);
        assert.deepEqual([...await two`select who from scratch`], [{ who: "two" }]);
      } finally {
        await Promise.all([one.end(), two.end()]);
      }
    },
  );

  await step(
    "each way to create a temporary object pins; dropping it unpins and cleans",
    async () => {
      await using closer = new Closer();
      const b = closer.add(await connectPg(via("tmp1")));
      /** Whether b can get the pool's one server now. */
      const free = async (): Promise<boolean> => {
        const e = await failure(b.query("select 1"));
        if (e === null) return true;
        assert.equal(codeOf(e), "53300", String(e));
        return false;
      };
      const tempObjects =
        "select count(*) as n from pg_class where relnamespace = pg_my_temp_schema()";
      const cases: Array<[string, string, string]> = [
        ["create temp table t (a int)", "drop table t", "temporary objects"],
        ["create temporary sequence s", "drop sequence s", "temporary objects"],
        ["create temp view v as select 1 as a", "discard temp", "temporary objects"],
        ["create table pg_temp.t (a int)", "discard all", "temporary objects"],
        ["select 1 as a into temp table t", "drop table t", "temporary objects"],
        ["create temp table t as select 1 as a", "drop table t", "temporary objects"],
        [
          "create function pg_temp.f() returns int language sql as 'select 1'",
          "drop function pg_temp.f()",
          "temporary objects",
        ],
        [
          "set search_path = pg_temp, public; create table t (a int)",
          "drop table t; reset search_path",
          "temporary objects",
        ],
        [
          "create statistics pg_temp.s1 on a, b from stat_base",
          "drop statistics pg_temp.s1",
          "temporary objects",
        ],
        ["declare c cursor with hold for select 1", "close c", "WITH HOLD cursors"],
        ["declare c cursor with hold for select 1", "close all", "WITH HOLD cursors"],
      ];
      for (const [create, undo, why] of cases) {
        const a = await connectPg(via("tmp1"));
        try {
          await a.query(create);
          assert.equal(await pinnedOf(a, why), why, create);
          assert.equal(await free(), false, `${create}: another client got the server`);
          await a.query(undo);
          assert.equal(await pinnedOf(a, ""), "", `${create}; ${undo}`);
          assert.equal(await free(), true, `${create}; ${undo}: still pinned`);
          assert.equal(await count(b, tempObjects), 0);
        } finally {
          await a.end();
        }
      }
      // A client that leaves with its temporary table leaves nothing behind.
      const leaver = await connectPg(via("tmp1"));
      await leaver.query("create temp table person (x int)");
      await leaver.end();
      assert.ok(await waitUntil(free, 5000), "the server did not come back");
      assert.equal(await count(b, tempObjects), 0);
      assert.equal(await count(b, "select count(*) as n from person"), 3);
    },
  );

  await step("a custom setting RESET stays in the session, empty, on every server", async () => {
    await using closer = new Closer();
    const a = closer.add(await connectPg(via("tmp2")));
    const b = closer.add(await connectPg(via("tmp2")));
    const c = closer.add(await connectPg(via("tmp2")));
    await b.query("begin");
    await a.query("set custom.my_guc = 42");
    await a.query("reset custom.my_guc");
    // c takes the server a ran on, b gives back the other: a's next statement runs there.
    await c.query("begin");
    await b.query("commit");
    assert.deepEqual((await a.query("show custom.my_guc")).rows, [{ "custom.my_guc": "" }]);
    await c.query("commit");
  });

  await step("temporary objects gone by the end of the transaction do not pin", async () => {
    await using closer = new Closer();
    const a = closer.add(await connectPg(via("tmp1")));
    const b = closer.add(await connectPg(via("tmp1")));
    await a.query("begin");
    await a.query("create temp table t (a int)");
    await a.query("rollback");
    await a.query("create temp table t (a int) on commit drop");
    await a.query(
      "begin; create temp table t (a int) on commit drop; insert into t values (1); commit",
    );
    assert.equal(await pinnedOf(a, ""), "");
    await b.query("select 1");
  });

  await step("a WITH HOLD cursor keeps its server until closed (psycopg)", async () => {
    if (!(await psycopgAvailable())) throw new Error("psycopg 3 is not installed");
    const result = await runPsycopg<{ first: number[]; rest: number[] }>(
      via("tmp2"),
      `
c1 = psycopg.connect(DSN)
c2 = psycopg.connect(DSN)
cur = c1.cursor(name="held", withhold=True)
cur.execute("select generate_series(1, 10)")
c1.commit()
# c2 opens a transaction: it takes a server and keeps it.
c2.execute("select 1")
first = [r[0] for r in cur.fetchmany(3)]
c1.commit()
c2.commit()
rest = [r[0] for r in cur.fetchall()]
cur.close()
c1.commit()
print(json.dumps({"first": first, "rest": rest}))
`,
    );
    assert.deepEqual(result, { first: [1, 2, 3], rest: [4, 5, 6, 7, 8, 9, 10] });
  });
});
