/**
 * Authentication end to end, with a real PostgreSQL cluster and real clients (psql, npm:pg).
 *
 * Client side: one proxy per `[general] auth_type` (scram, md5, plain, trust) in front of the
 * same cluster; right and wrong passwords, unknown users and databases, the method the proxy
 * asks for (read from a raw socket), and md5 passwords stored as `md5<hex>`.
 *
 * Server side: the proxy logs in to roles that PostgreSQL authenticates with scram-sha-256, md5,
 * password and trust; a wrong server password reaches the client as PostgreSQL's 28P01 (not a
 * hang) and other users are still served; server credentials come from [[databases]] first, then
 * users.toml's server_user/server_password, then the user's own name and password.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  connectPg,
  dumpLogsOnFailure,
  type PgTarget,
  type ProxyProcess,
  psql,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";

type PgError = Error & { code?: string; detail?: string };

/** Asserts that connecting with npm:pg fails with `code` and exactly `message`. */
async function assertPgRejects(target: PgTarget, code: string, message: string): Promise<void> {
  await assert.rejects(connectPg(target), (err: PgError) => {
    assert.equal(err.code, code, `SQLSTATE of: ${err.message}`);
    assert.equal(err.message, message);
    return true;
  });
}

/** Runs `sql` through npm:pg and returns the first row's values. */
async function pgRow(target: PgTarget, sql: string): Promise<unknown[]> {
  const client = await connectPg(target);
  try {
    const res = await client.query({ text: sql, rowMode: "array" });
    return res.rows[0] as unknown[];
  } finally {
    await client.end();
  }
}

/** psql's one-line answer to `sql` (asserting success). */
async function psqlValue(target: PgTarget, sql: string): Promise<string> {
  const r = await psql(target, sql);
  assert.equal(r.code, 0, `psql ${target.user}@${target.database}: ${r.stderr}`);
  return r.stdout.trim();
}

/** Asserts that psql cannot log in and says `fatal` (PostgreSQL's wording, after "FATAL:  "). */
async function assertPsqlFails(target: PgTarget, fatal: string): Promise<void> {
  const r = await psql(target, "SELECT 1");
  assert.notEqual(r.code, 0, `psql logged in as ${target.user}: ${r.stdout}`);
  assert.ok(
    r.stderr.includes(`FATAL:  ${fatal}`),
    `expected "FATAL:  ${fatal}" in psql's stderr:\n${r.stderr}`,
  );
}

/** A StartupMessage (protocol 3.0). */
function startupMessage(params: Record<string, string>): Uint8Array {
  const enc = new TextEncoder();
  const parts: number[] = [];
  for (const [k, v] of Object.entries(params)) parts.push(...enc.encode(k), 0, ...enc.encode(v), 0);
  parts.push(0);
  const out = new Uint8Array(8 + parts.length);
  const view = new DataView(out.buffer);
  view.setInt32(0, out.length);
  view.setInt32(4, 196608);
  out.set(parts, 8);
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

/** A backend message read from a raw socket. */
interface RawMessage {
  type: string;
  body: Uint8Array;
}

/** A raw client connection that reads whole backend messages (null at the end of the stream). */
class RawConn implements Disposable {
  readonly conn: Deno.TcpConn;
  #buf = new Uint8Array(0);

  private constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  static async open(proxy: ProxyProcess): Promise<RawConn> {
    return new RawConn(await Deno.connect({ hostname: proxy.host, port: proxy.port }));
  }

  async send(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (off < bytes.length) off += await this.conn.write(bytes.subarray(off));
  }

  async message(timeoutMs = 10_000): Promise<RawMessage | null> {
    for (;;) {
      if (this.#buf.length >= 5) {
        const len = new DataView(this.#buf.buffer).getInt32(1);
        if (this.#buf.length >= 1 + len) {
          const msg = {
            type: String.fromCharCode(this.#buf[0]),
            body: this.#buf.slice(5, 1 + len),
          };
          this.#buf = this.#buf.slice(1 + len);
          return msg;
        }
      }
      const chunk = new Uint8Array(4096);
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
        if (!(err instanceof Deno.errors.ConnectionReset)) throw err;
        n = null;
      } finally {
        clearTimeout(timer);
      }
      if (n === null) return null;
      const next = new Uint8Array(this.#buf.length + n);
      next.set(this.#buf);
      next.set(chunk.subarray(0, n), this.#buf.length);
      this.#buf = next;
    }
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

/** The authentication request code (0 ok, 3 cleartext, 5 md5, 10 SASL) and SASL mechanisms. */
function authRequest(msg: RawMessage | null): { code: number; mechanisms: string[] } {
  assert.equal(msg?.type, "R", "expected an Authentication message");
  const code = new DataView(msg.body.buffer).getInt32(0);
  const mechanisms = code === 10
    ? new TextDecoder().decode(msg.body.subarray(4)).split("\0").filter((m) => m !== "")
    : [];
  return { code, mechanisms };
}

/** The first message the proxy answers a StartupMessage with, as {@linkcode authRequest}. */
async function firstAuthRequest(
  proxy: ProxyProcess,
  user: string,
  database: string,
): Promise<{ code: number; mechanisms: string[] }> {
  using raw = await RawConn.open(proxy);
  await raw.send(startupMessage({ user, database }));
  return authRequest(await raw.message());
}

/** ErrorResponse fields by their one-letter code. */
function errorFields(body: Uint8Array): Record<string, string> {
  const fields: Record<string, string> = {};
  let p = 0;
  while (p < body.length && body[p] !== 0) {
    const end = body.indexOf(0, p + 1);
    fields[String.fromCharCode(body[p])] = new TextDecoder().decode(body.subarray(p + 1, end));
    p = end + 1;
  }
  return fields;
}

/**
 * Starts a login as alice, answers the authentication request with `reply` and returns the
 * ErrorResponse that follows (asserting the connection is closed after it).
 */
async function brokenExchange(
  proxy: ProxyProcess,
  reply: Uint8Array,
): Promise<Record<string, string>> {
  using raw = await RawConn.open(proxy);
  await raw.send(startupMessage({ user: "alice", database: "app" }));
  authRequest(await raw.message());
  await raw.send(reply);
  const msg = await raw.message();
  assert.equal(msg?.type, "E", `expected an ErrorResponse, got ${msg?.type}`);
  assert.equal(await raw.message(), null, "connection left open after a FATAL error");
  return errorFields(msg.body);
}

/** PostgreSQL's stored form of an md5 password. */
function md5Stored(user: string, password: string): string {
  return "md5" + createHash("md5").update(password + user).digest("hex");
}

/**
 * A password that SASLprep changes: the "fi" ligature becomes "fi" and the no-break space a space.
 * PostgreSQL, libpq and npm:pg normalize SCRAM passwords; so must the proxy, on both sides.
 */
const UNI_PW = "\uFB01x\u00A0p\u00E4ss";
/** The same password after SASLprep. */
const UNI_PW_PREPPED = "fix p\u00E4ss";

const PASSWORD_METHODS = ["scram", "md5", "plain"] as const;
const AUTH_TYPES = [...PASSWORD_METHODS, "trust"] as const;
/** The authentication request each auth_type must send. */
const AUTH_CODE = { scram: 10, md5: 5, plain: 3, trust: 0 } as const;

Deno.test("auth", async (t) => {
  await using pg = await startPostgres({
    roles: [
      { name: "alice", password: "alice-pw", auth: "scram" },
      { name: "carol", password: "carol-pw", auth: "md5" },
      { name: "uni", password: UNI_PW, auth: "scram" },
      { name: "nopw", auth: "trust" },
      { name: "bob", password: "bob-pw", auth: "scram" },
      { name: "u_scram", password: "pw-scram", auth: "scram" },
      { name: "u_md5", password: "pw-md5", auth: "md5" },
      { name: "u_password", password: "pw-password", auth: "password" },
      { name: "u_trust", auth: "trust" },
    ],
    databases: ["app"],
  });
  const database = { name: "app", host: pg.host, port: pg.port };

  await t.step("client side: one proxy per auth_type", async (t) => {
    const started = await Promise.allSettled(AUTH_TYPES.map((auth_type) =>
      startProxy({
        config: {
          general: { auth_type },
          databases: [database, { ...database, name: "app2", database_name: "app" }],
        },
        users: {
          users: [
            { name: "alice", password: "alice-pw", database: "app" },
            // PostgreSQL's stored md5 form; the server role is md5 too, so the proxy can also
            // log in to PostgreSQL with the hash alone.
            { name: "carol", password: md5Stored("carol", "carol-pw"), database: "app" },
            { name: "uni", password: UNI_PW, database: "app" },
            // No password: only trust can let it in.
            { name: "nopw", database: "app" },
            { name: "bob", password: "bob-pw", database: "app2" },
          ],
        },
      })
    ));
    const proxies = started.flatMap((r) => r.status === "fulfilled" ? [r.value] : []);
    try {
      for (const r of started) if (r.status === "rejected") throw r.reason;
      for (const [i, method] of AUTH_TYPES.entries()) {
        const proxy = proxies[i];
        const as = (user: string, password?: string, db = "app") =>
          proxy.target({ user, password, database: db });
        await t.step(`auth_type = ${method}`, () =>
          dumpLogsOnFailure(proxy, async () => {
            // The proxy asks for the configured method (libpq and npm:pg follow whatever is asked).
            const request = await firstAuthRequest(proxy, "alice", "app");
            assert.equal(request.code, AUTH_CODE[method]);
            if (method === "scram") assert.deepEqual(request.mechanisms, ["SCRAM-SHA-256"]);

            // Right password: psql and npm:pg, and the query runs on the server as that role.
            assert.equal(
              await psqlValue(as("alice", "alice-pw"), "SELECT current_user"),
              "alice",
            );
            assert.deepEqual(await pgRow(as("alice", "alice-pw"), "SELECT current_user"), [
              "alice",
            ]);

            if (method === "trust") {
              // trust asks for nothing: any password (or none) logs in a configured user.
              assert.equal(await psqlValue(as("alice", "wrong"), "SELECT current_user"), "alice");
              assert.deepEqual(await pgRow(as("alice"), "SELECT 1"), [1]);
              assert.equal(await psqlValue(as("nopw"), "SELECT current_user"), "nopw");
              // A user configured for another database only.
              await assertPgRejects(
                as("bob", "bob-pw", "app"),
                "28000",
                'user "bob" is not configured for database "app" in users.toml',
              );
              // An unknown user is refused without a password exchange.
              await assertPgRejects(
                as("mallory", "x"),
                "28000",
                'user "mallory" is not configured for database "app" in users.toml',
              );
              await assertPsqlFails(
                as("mallory"),
                'user "mallory" is not configured for database "app" in users.toml',
              );
            } else {
              // Wrong password.
              await assertPsqlFails(
                as("alice", "wrong"),
                'password authentication failed for user "alice"',
              );
              await assertPgRejects(
                as("alice", "wrong"),
                "28P01",
                'password authentication failed for user "alice"',
              );
              // The right password of another user is still wrong.
              await assertPgRejects(
                as("alice", "carol-pw"),
                "28P01",
                'password authentication failed for user "alice"',
              );
              // Unknown user: the same answer as a wrong password.
              await assertPsqlFails(
                as("mallory", "alice-pw"),
                'password authentication failed for user "mallory"',
              );
              await assertPgRejects(
                as("mallory", "alice-pw"),
                "28P01",
                'password authentication failed for user "mallory"',
              );
              // A user configured for another database only, with its own password there.
              await assertPgRejects(
                as("bob", "bob-pw", "app"),
                "28P01",
                'password authentication failed for user "bob"',
              );
              // A user without a password in users.toml cannot log in with a password method.
              await assertPgRejects(
                as("nopw", "x"),
                "28P01",
                'password authentication failed for user "nopw"',
              );
              await assertPsqlFails(
                as("nopw", "anything"),
                'password authentication failed for user "nopw"',
              );
              // The unknown user is asked for the same method (no hint that it does not exist).
              assert.equal((await firstAuthRequest(proxy, "mallory", "app")).code, request.code);
            }

            if (method !== "trust") {
              // A client that breaks the exchange gets 08P01 (PostgreSQL's code for it).
              const query = typed("Q", new TextEncoder().encode("SELECT 1\0"));
              const notPassword = await brokenExchange(proxy, query);
              assert.equal(notPassword.S, "FATAL");
              assert.equal(notPassword.C, "08P01");
              if (method === "scram") {
                const enc = new TextEncoder();
                const wrongMechanism = typed(
                  "p",
                  Uint8Array.from([
                    ...enc.encode("SCRAM-SHA-1\0"),
                    0,
                    0,
                    0,
                    3,
                    ...enc.encode("n,,"),
                  ]),
                );
                const refused = await brokenExchange(proxy, wrongMechanism);
                assert.equal(refused.C, "08P01");
                assert.match(refused.M, /SASL authentication mechanism/);
              }
              // A client that hangs up in the middle: the proxy carries on.
              {
                using raw = await RawConn.open(proxy);
                await raw.send(startupMessage({ user: "alice", database: "app" }));
                authRequest(await raw.message());
              }
              assert.deepEqual(await pgRow(as("alice", "alice-pw"), "SELECT 1"), [1]);
            }

            // Unknown database, whatever the method: told only once the password is right
            // (before that, the answer is a wrong password's, so names can't be probed).
            if (method !== "trust") {
              await assertPgRejects(
                as("alice", "wrong-pw", "nosuchdb"),
                "28P01",
                'password authentication failed for user "alice"',
              );
            }
            await assertPgRejects(
              as("alice", "alice-pw", "nosuchdb"),
              "3D000",
              'database "nosuchdb" does not exist',
            );
            await assertPsqlFails(
              as("alice", "alice-pw", "nosuchdb"),
              'database "nosuchdb" does not exist',
            );

            // A password that SASLprep normalizes: the proxy logs in to the SCRAM role with it
            // (every method), and a SCRAM client may send it in either form, as with PostgreSQL.
            assert.equal(await psqlValue(as("uni", UNI_PW), "SELECT current_user"), "uni");
            assert.deepEqual(await pgRow(as("uni", UNI_PW), "SELECT current_user"), ["uni"]);
            if (method === "scram") {
              const direct = { host: pg.host, port: pg.port, user: "uni", database: "app" };
              assert.equal(
                await psqlValue({ ...direct, password: UNI_PW_PREPPED }, "SELECT current_user"),
                "uni",
              );
              assert.equal(
                await psqlValue(as("uni", UNI_PW_PREPPED), "SELECT current_user"),
                "uni",
              );
            }

            if (method === "md5" || method === "trust") {
              // users.toml holds md5(password + user): the plain password is accepted (md5), and
              // the proxy logs in to the md5 server role with the hash alone (both).
              assert.equal(
                await psqlValue(as("carol", "carol-pw"), "SELECT current_user"),
                "carol",
              );
              assert.deepEqual(await pgRow(as("carol", "carol-pw"), "SELECT current_user"), [
                "carol",
              ]);
            }
            if (method === "md5") {
              await assertPgRejects(
                as("carol", "wrong"),
                "28P01",
                'password authentication failed for user "carol"',
              );
              // The stored hash itself is not a password.
              await assertPgRejects(
                as("carol", md5Stored("carol", "carol-pw")),
                "28P01",
                'password authentication failed for user "carol"',
              );
            }
          }));
      }
    } finally {
      await Promise.all(proxies.map((p) => p.stop()));
    }
  });

  await t.step("server side: every PostgreSQL method, wrong passwords, precedence", async (t) => {
    await using proxy = await startProxy({
      config: {
        general: { auth_type: "md5" },
        databases: [
          database,
          // [[databases]] user and password win over the user's server_user/server_password.
          {
            name: "app_dbcreds",
            host: pg.host,
            port: pg.port,
            database_name: "app",
            user: "u_password",
            password: "pw-password",
          },
          // Only the password: it wins over server_password.
          {
            name: "app_dbpass",
            host: pg.host,
            port: pg.port,
            database_name: "app",
            password: "pw-scram",
          },
          // Only the user: the password still comes from users.toml.
          {
            name: "app_dbuser",
            host: pg.host,
            port: pg.port,
            database_name: "app",
            user: "u_scram",
          },
        ],
      },
      users: {
        users: [
          // The client password doubles as the server password.
          { name: "u_scram", password: "pw-scram", database: "app" },
          { name: "u_md5", password: "pw-md5", database: "app" },
          { name: "u_password", password: "pw-password", database: "app" },
          { name: "u_trust", password: "client-trust", database: "app" },
          // Wrong server passwords for each password method.
          ...["u_scram", "u_md5", "u_password"].map((role) => ({
            name: `bad_${role.slice(2)}`,
            password: "client-bad",
            database: "app",
            server_user: role,
            server_password: "not-the-password",
          })),
          // server_user/server_password replace the name and client password on the server.
          {
            name: "alias",
            password: "alias-pw",
            database: "app",
            server_user: "u_md5",
            server_password: "pw-md5",
          },
          {
            name: "alias",
            password: "alias-pw",
            database: "app_dbcreds",
            server_user: "u_md5",
            server_password: "wrong-md5",
          },
          {
            name: "u_scram",
            password: "client-x",
            database: "app_dbpass",
            server_password: "also-wrong",
          },
          {
            name: "alias",
            password: "alias-pw",
            database: "app_dbuser",
            server_user: "u_md5",
            server_password: "pw-scram",
          },
        ],
      },
    });
    const as = (user: string, password: string, db = "app") =>
      proxy.target({ user, password, database: db });

    await dumpLogsOnFailure(proxy, async () => {
      await t.step("the proxy logs in to scram, md5, password and trust roles", async () => {
        const logins: Array<[string, string]> = [
          ["u_scram", "pw-scram"],
          ["u_md5", "pw-md5"],
          ["u_password", "pw-password"],
          ["u_trust", "client-trust"],
        ];
        for (const [user, password] of logins) {
          assert.equal(
            await psqlValue(as(user, password), "SELECT current_user || '/' || current_database()"),
            `${user}/app`,
          );
          assert.deepEqual(await pgRow(as(user, password), "SELECT current_user"), [user]);
        }
        // Each role really authenticates with its method in pg_hba.conf.
        const hba = await pg.sql(
          "SELECT user_name[1], auth_method FROM pg_hba_file_rules " +
            "WHERE user_name[1] LIKE 'u\\_%' ORDER BY 1",
        );
        assert.deepEqual(hba, [
          ["u_md5", "md5"],
          ["u_password", "password"],
          ["u_scram", "scram-sha-256"],
          ["u_trust", "trust"],
        ]);
      });

      await t.step("a wrong server password reaches the client as 28P01", async () => {
        for (const role of ["u_scram", "u_md5", "u_password"]) {
          const target = as(`bad_${role.slice(2)}`, "client-bad");
          // Twice: the second attempt finds the pool after a failure (backing off).
          for (let attempt = 0; attempt < 2; attempt++) {
            await assert.rejects(connectPg(target), (err: PgError) => {
              assert.equal(err.code, "28P01", `${role}: ${err.message}`);
              assert.equal(err.message, `password authentication failed for user "${role}"`);
              assert.match(err.detail ?? "", /server_password/);
              return true;
            });
          }
          await assertPsqlFails(target, `password authentication failed for user "${role}"`);
          // Other users keep working.
          assert.deepEqual(await pgRow(as("u_md5", "pw-md5"), "SELECT current_user"), ["u_md5"]);
        }
        assert.equal(proxy.exited, false);
      });

      await t.step("server credentials: [[databases]] > server_user/password > user", async () => {
        // users.toml server_user + server_password.
        assert.deepEqual(
          await pgRow(as("alias", "alias-pw"), "SELECT current_user, session_user"),
          ["u_md5", "u_md5"],
        );
        // [[databases]] user + password beat the user's (wrong) server_user/server_password.
        assert.deepEqual(
          await pgRow(
            as("alias", "alias-pw", "app_dbcreds"),
            "SELECT current_user, current_database()",
          ),
          ["u_password", "app"],
        );
        // [[databases]] password beats server_password and the user's password.
        assert.deepEqual(
          await pgRow(as("u_scram", "client-x", "app_dbpass"), "SELECT current_user"),
          ["u_scram"],
        );
        // [[databases]] user beats server_user; the password is still server_password.
        assert.deepEqual(
          await pgRow(as("alias", "alias-pw", "app_dbuser"), "SELECT current_user"),
          ["u_scram"],
        );
        // The client password is what users.toml says, not the server's.
        await assertPgRejects(
          as("alias", "pw-md5"),
          "28P01",
          'password authentication failed for user "alias"',
        );
      });
    });
  });
});
