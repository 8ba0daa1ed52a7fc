/**
 * TLS end to end, with certificates made by the openssl CLI (a CA, a leaf for 127.0.0.1 and
 * localhost, a leaf for another host name, and an unrelated CA), real PostgreSQL clusters and
 * real clients.
 *
 * Client side (`tls_certificate`, `tls_private_key`, `tls_client_required`): psql with
 * sslmode=require, verify-ca and verify-full, npm:pg with a CA, a raw SSLRequest answered `S`
 * and a handshake with node:tls, plain text allowed or refused, and a broken handshake that
 * leaves the proxy serving.
 *
 * Server side (`tls_verify`, `tls_server_ca_certificate`): a cluster with ssl = on and a user
 * that pg_hba.conf admits over TLS only; every mode, a wrong CA, a certificate for another host,
 * a server that does not offer TLS, cancel requests, and pgbench over TLS on both sides.
 */

import assert from "node:assert/strict";
import * as net from "node:net";
import * as tls from "node:tls";
import pg from "pg";
import {
  dumpLogsOnFailure,
  pgbench,
  type PgTarget,
  type ProxyProcess,
  psql,
  runCommand,
  runPgdog,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";

// ---- certificates ------------------------------------------------------------------------------

/** Paths of the generated PEM files. */
interface Certs {
  dir: string;
  /** The test CA. */
  ca: string;
  /** Leaf signed by the CA, for IP 127.0.0.1 and DNS localhost, and its key. */
  cert: string;
  key: string;
  /** Leaf signed by the CA for db.example.com only, and its key. */
  otherCert: string;
  otherKey: string;
  /** An unrelated self-signed CA. */
  wrongCa: string;
}

const OPENSSL_SCRIPT = `
set -e
cd "$1"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \\
  -subj "/CN=pgdog test CA" -addext "basicConstraints=critical,CA:TRUE" \\
  -addext "keyUsage=critical,keyCertSign,cRLSign"
leaf() {
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
  printf 'basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature,keyEncipherment\\nextendedKeyUsage=serverAuth\\nsubjectAltName=%s\\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \\
    -extfile "$1.ext" -out "$1.pem"
}
leaf server localhost "IP:127.0.0.1,DNS:localhost"
leaf other db.example.com "DNS:db.example.com"
openssl req -x509 -newkey rsa:2048 -nodes -keyout wrong-ca.key -out wrong-ca.pem -days 2 \\
  -subj "/CN=some other CA"
`;

async function makeCerts(): Promise<Certs & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "pgdog-test-tls-" });
  const made = await runCommand("sh", ["-c", OPENSSL_SCRIPT, "sh", dir], { timeoutMs: 60_000 });
  if (made.code !== 0) {
    await Deno.remove(dir, { recursive: true });
    throw new Error(`openssl failed: ${made.stderr}`);
  }
  return {
    dir,
    ca: `${dir}/ca.pem`,
    cert: `${dir}/server.pem`,
    key: `${dir}/server.key`,
    otherCert: `${dir}/other.pem`,
    otherKey: `${dir}/other.key`,
    wrongCa: `${dir}/wrong-ca.pem`,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

// ---- helpers -----------------------------------------------------------------------------------

const PASSWORD = "secret";

/** psql's answer to `sql` (asserting success). */
async function psqlValue(
  target: PgTarget,
  sql: string,
  options: { sslmode?: string; env?: Record<string, string> } = {},
): Promise<string> {
  const r = await psql(target, sql, options);
  assert.equal(r.code, 0, `psql ${target.user} (sslmode=${options.sslmode}): ${r.stderr}`);
  return r.stdout.trim();
}

/** Asserts that psql fails and its error output matches `pattern`. */
async function psqlFails(
  target: PgTarget,
  pattern: RegExp,
  options: { sslmode?: string } = {},
): Promise<string> {
  const r = await psql(target, "SELECT 1", options);
  assert.notEqual(r.code, 0, `psql ${target.user} succeeded: ${r.stdout}`);
  assert.match(r.stderr, pattern);
  return r.stderr;
}

/** Reads exactly one byte from a node socket. */
function oneByte(socket: net.Socket): Promise<number> {
  return new Promise((resolve, reject) => {
    const onData = (chunk: Uint8Array): void => {
      socket.off("error", reject);
      if (chunk.length > 1) socket.unshift(chunk.subarray(1));
      resolve(chunk[0]);
    };
    socket.once("data", onData);
    socket.once("error", reject);
  });
}

function sslRequest(): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setInt32(0, 8);
  v.setInt32(4, 80877103);
  return b;
}

function startupMessage(params: Record<string, string>): Uint8Array {
  const enc = new TextEncoder();
  const parts = Object.entries(params).flatMap((
    [k, v],
  ) => [enc.encode(`${k}\0`), enc.encode(`${v}\0`)]);
  const len = 8 + parts.reduce((n, p) => n + p.length, 0) + 1;
  const b = new Uint8Array(len);
  const v = new DataView(b.buffer);
  v.setInt32(0, len);
  v.setInt32(4, 3 << 16);
  let o = 8;
  for (const p of parts) {
    b.set(p, o);
    o += p.length;
  }
  return b;
}

/** Connects with npm:pg and returns the first row of `sql`. */
async function pgRow(
  target: PgTarget,
  sql: string,
  ssl: pg.ClientConfig["ssl"],
): Promise<unknown[]> {
  const client = new pg.Client({ ...target, ssl, connectionTimeoutMillis: 10_000 });
  client.on("error", () => {});
  await client.connect();
  try {
    const res = await client.query({ text: sql, rowMode: "array" });
    return res.rows[0] as unknown[];
  } finally {
    await client.end();
  }
}

// ---- client side -------------------------------------------------------------------------------

Deno.test("TLS between clients and pgdog", async (t) => {
  await using certs = await makeCerts();
  await using pg = await startPostgres({
    roles: [{ name: "alice", password: PASSWORD, auth: "scram" }],
    databases: [{ name: "app", owner: "alice" }],
  });
  const config = (general: Record<string, unknown>) => ({
    general: { tls_verify: "disabled", ...general },
    databases: [{ name: "app", host: pg.host, port: pg.port }],
  });
  const users = { users: [{ name: "alice", database: "app", password: PASSWORD }] };
  // Relative paths are read from the working directory.
  await using proxy = await startProxy({
    config: config({ tls_certificate: "server.pem", tls_private_key: "server.key" }),
    users,
    cwd: certs.dir,
  });
  await using required = await startProxy({
    config: config({
      tls_certificate: certs.cert,
      tls_private_key: certs.key,
      tls_client_required: true,
    }),
    users,
    cwd: certs.dir,
  });
  const target = proxy.target({ user: "alice", password: PASSWORD, database: "app" });
  const rootCert = { PGSSLROOTCERT: certs.ca };

  await dumpLogsOnFailure(proxy, async () => {
    await t.step("psql sslmode=require: the session is encrypted", async () => {
      const info = await psqlValue(target, "\\conninfo", { sslmode: "require" });
      assert.match(info, /SSL connection \(protocol: TLSv1\.[23]/);
      assert.equal(await psqlValue(target, "SELECT 40 + 2", { sslmode: "require" }), "42");
    });

    await t.step("psql sslmode=verify-ca and verify-full with the CA", async () => {
      for (const sslmode of ["verify-ca", "verify-full"]) {
        assert.equal(
          await psqlValue(target, "SELECT current_user", { sslmode, env: rootCert }),
          "alice",
        );
      }
      const byName = { ...target, host: "localhost" };
      assert.equal(
        await psqlValue(byName, "SELECT 'by name'", { sslmode: "verify-full", env: rootCert }),
        "by name",
      );
    });

    await t.step("psql verify-ca with another CA is refused by psql", async () => {
      const r = await psql(target, "SELECT 1", {
        sslmode: "verify-ca",
        env: { PGSSLROOTCERT: certs.wrongCa },
      });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /certificate verify failed/);
    });

    await t.step("psql sslmode=disable works when TLS is not required", async () => {
      assert.equal(await psqlValue(target, "SELECT 'plain'", { sslmode: "disable" }), "plain");
    });

    await t.step("npm:pg with ssl: { ca }", async () => {
      const ca = await Deno.readTextFile(certs.ca);
      assert.deepEqual(await pgRow(target, "SELECT 'pg over tls'", { ca }), ["pg over tls"]);
    });

    await t.step("raw SSLRequest: S, a verified handshake, then the login goes on", async () => {
      const socket = net.connect({ host: proxy.host, port: proxy.port });
      await new Promise<void>((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("error", reject);
      });
      socket.write(sslRequest());
      assert.equal(await oneByte(socket), "S".charCodeAt(0));
      const secure = tls.connect({
        socket,
        ca: await Deno.readTextFile(certs.ca),
        servername: "localhost",
      });
      try {
        await new Promise<void>((resolve, reject) => {
          secure.once("secureConnect", resolve);
          secure.once("error", reject);
        });
        assert.equal(secure.authorized, true);
        secure.write(startupMessage({ user: "alice", database: "app" }));
        // Authentication request: SASL (SCRAM-SHA-256), over TLS.
        const first = await oneByte(secure as unknown as net.Socket);
        assert.equal(String.fromCharCode(first), "R");
      } finally {
        secure.destroy();
      }
    });

    await t.step("a client whose handshake fails does not disturb the proxy", async () => {
      const conn = await Deno.connect({ hostname: proxy.host, port: proxy.port });
      await conn.write(sslRequest());
      const answer = new Uint8Array(1);
      assert.equal(await conn.read(answer), 1);
      assert.equal(answer[0], "S".charCodeAt(0));
      await conn.write(new TextEncoder().encode("this is not a TLS ClientHello at all\n"));
      // The proxy hangs up.
      const rest = new Uint8Array(1024);
      while ((await conn.read(rest).catch(() => null)) !== null) {
        // Whatever alert it sends first.
      }
      conn.close();
      assert.equal(
        await psqlValue(target, "SELECT 'still here'", { sslmode: "require" }),
        "still here",
      );
      assert.match(proxy.logs(), /client TLS handshake failed/);
    });
  });

  await dumpLogsOnFailure(required, async () => {
    const strict = required.target({ user: "alice", password: PASSWORD, database: "app" });
    await t.step("tls_client_required: plain text is refused with 28000", async () => {
      const stderr = await psqlFails(strict, /FATAL: {2}pgdog requires TLS/, {
        sslmode: "disable",
      });
      assert.match(stderr, /tls_client_required/);
      await assert.rejects(pgRow(strict, "SELECT 1", false), (e: Error & { code?: string }) => {
        assert.equal(e.code, "28000");
        return true;
      });
    });

    await t.step("tls_client_required: TLS clients are served", async () => {
      assert.equal(
        await psqlValue(strict, "SELECT 'required'", { sslmode: "require" }),
        "required",
      );
      // sslmode=prefer tries TLS first.
      assert.equal(
        await psqlValue(strict, "SELECT 'preferred'", { sslmode: "prefer" }),
        "preferred",
      );
    });
  });
});

Deno.test("TLS configuration errors name the key and the file", async () => {
  await using certs = await makeCerts();
  const databases = [{ name: "app", host: "127.0.0.1", port: 1 }];
  const users = { users: [{ name: "alice", database: "app", password: PASSWORD }] };
  // `run` (the default command) in the certificates' directory, which it may read.
  const run = (general: Record<string, unknown>, cwd: string | null = certs.dir) =>
    runPgdog([], {
      config: { general, databases },
      users,
      cwd: cwd ?? undefined,
      timeoutMs: 30_000,
    });

  const missing = await run({
    tls_certificate: "/nonexistent/cert.pem",
    tls_private_key: certs.key,
  }, null);
  assert.equal(missing.code, 1);
  assert.match(
    missing.stderr,
    /pgdog\.toml:\d+: \[general\] tls_certificate: cannot read "\/nonexistent\/cert\.pem"/,
  );
  // The proxy may read only its own directories: a certificate elsewhere needs --allow-read.
  assert.match(
    missing.stderr,
    /tls_private_key: cannot read ".*server\.key": Requires read access/,
  );
  assert.doesNotMatch(missing.stderr, /\n\s+at /, "a stack trace");

  const swapped = await run({ tls_certificate: "server.key", tls_private_key: "server.pem" });
  assert.equal(swapped.code, 1);
  assert.match(swapped.stderr, /tls_certificate: "server\.key" holds no PEM certificate/);
  assert.match(
    swapped.stderr,
    /tls_private_key: "server\.pem" holds no PEM private key \(it holds a certificate\)/,
  );

  const valid = await runPgdog(["configcheck"], {
    config: {
      general: {
        tls_certificate: "server.pem",
        tls_private_key: "server.key",
        tls_verify: "verify_full",
        tls_server_ca_certificate: "ca.pem",
      },
      databases,
    },
    users,
    cwd: certs.dir,
  });
  assert.equal(valid.code, 0, valid.stderr);

  const wrongKey = await runPgdog(["configcheck"], {
    config: {
      general: { tls_certificate: "server.pem", tls_private_key: "other.key" },
      databases,
    },
    users,
    cwd: certs.dir,
  });
  assert.equal(wrongKey.code, 1);
  assert.match(
    wrongKey.stderr,
    /tls_private_key: "other\.key" is not the private key of the certificate in "server\.pem"/,
  );

  const half = await run({ tls_certificate: "server.pem", tls_client_required: true });
  assert.equal(half.code, 1);
  assert.match(half.stderr, /tls_certificate: tls_private_key must be set too/);
  assert.match(half.stderr, /tls_client_required: requires tls_certificate and tls_private_key/);
});

// ---- server side -------------------------------------------------------------------------------

Deno.test("TLS between pgdog and PostgreSQL", async (t) => {
  await using certs = await makeCerts();
  await using pg = await startPostgres({
    roles: [{ name: "alice", password: PASSWORD, auth: "scram" }],
    // bob gets in over TLS only.
    hba: [
      "hostssl all bob 127.0.0.1/32 scram-sha-256",
      "hostnossl all bob 127.0.0.1/32 reject",
    ],
    databases: [{ name: "app", owner: "alice" }],
    tls: { cert: await Deno.readTextFile(certs.cert), key: await Deno.readTextFile(certs.key) },
  });
  await pg.sql(`CREATE ROLE bob LOGIN PASSWORD '${PASSWORD}'; GRANT ALL ON DATABASE app TO bob`);
  await pg.sql("GRANT ALL ON SCHEMA public TO bob", { database: "app" });

  const users = {
    users: [
      { name: "alice", database: "app", password: PASSWORD },
      { name: "bob", database: "app", password: PASSWORD },
    ],
  };
  const proxyWith = (general: Record<string, unknown>, query_timeout = 0) =>
    startProxy({
      config: {
        general: { min_pool_size: 0, query_timeout, ...general },
        databases: [{ name: "app", host: pg.host, port: pg.port }],
      },
      users,
      cwd: certs.dir,
    });
  const bob = (proxy: ProxyProcess): PgTarget =>
    proxy.target({ user: "bob", password: PASSWORD, database: "app" });
  const alice = (proxy: ProxyProcess): PgTarget =>
    proxy.target({ user: "alice", password: PASSWORD, database: "app" });
  const SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

  // tls_verify = prefer (the default), with TLS offered to clients too for pgbench.
  await using prefer = await proxyWith({
    tls_certificate: "server.pem",
    tls_private_key: "server.key",
  });
  await using disabled = await proxyWith({ tls_verify: "disabled" });
  await using verifyCa = await proxyWith(
    { tls_verify: "verify_ca", tls_server_ca_certificate: "ca.pem" },
    1500,
  );
  await using wrongCa = await proxyWith({
    tls_verify: "verify_ca",
    tls_server_ca_certificate: "wrong-ca.pem",
  });
  await using verifyFull = await proxyWith({
    tls_verify: "verify_full",
    tls_server_ca_certificate: "ca.pem",
  });

  await t.step("prefer: server connections use TLS", async () => {
    await dumpLogsOnFailure(prefer, async () => {
      assert.equal(await psqlValue(bob(prefer), SSL_IN_USE), "t");
      assert.equal(await psqlValue(alice(prefer), SSL_IN_USE), "t");
    });
  });

  await t.step("disabled: plain text, so PostgreSQL refuses the TLS-only user", async () => {
    await dumpLogsOnFailure(disabled, async () => {
      assert.equal(await psqlValue(alice(disabled), SSL_IN_USE), "f");
      await psqlFails(
        bob(disabled),
        /FATAL: {2}pg_hba\.conf rejects connection for host "127\.0\.0\.1", user "bob", database "app", no encryption/,
      );
    });
  });

  await t.step("verify_ca with the right CA", async () => {
    await dumpLogsOnFailure(verifyCa, async () => {
      assert.equal(await psqlValue(bob(verifyCa), SSL_IN_USE), "t");
    });
  });

  await t.step("cancel requests reach TLS servers (query_timeout)", async () => {
    await dumpLogsOnFailure(verifyCa, async () => {
      const started = Date.now();
      const r = await psql(bob(verifyCa), "SELECT pg_sleep(30)");
      assert.notEqual(r.code, 0, "pg_sleep(30) was not cancelled");
      assert.match(r.stderr, /ERROR: {2}canceling statement due to query_timeout \(1500 ms\)/);
      assert.ok(Date.now() - started < 25_000, "the cancel took too long");
    });
  });

  await t.step("verify_ca with another CA fails with the reason", async () => {
    await dumpLogsOnFailure(wrongCa, async () => {
      const stderr = await psqlFails(alice(wrongCa), /TLS handshake failed/);
      assert.match(stderr, new RegExp(`server 127\\.0\\.0\\.1:${pg.port}`));
      assert.match(stderr, /tls_verify = "verify_ca"/);
      assert.match(stderr, /unable to verify the first certificate/);
    });
  });

  await t.step("verify_full: the certificate names 127.0.0.1", async () => {
    await dumpLogsOnFailure(verifyFull, async () => {
      assert.equal(await psqlValue(bob(verifyFull), SSL_IN_USE), "t");
    });
  });

  await t.step("pgbench over TLS from the client and to the servers", async () => {
    await dumpLogsOnFailure(prefer, async () => {
      const env = { PGSSLMODE: "require" };
      const init = await pgbench(bob(prefer), ["-i", "-s", "1", "-q"], { env });
      assert.equal(init.code, 0, `pgbench -i: ${init.stderr}`);
      const run = await pgbench(bob(prefer), ["-n", "-c", "4", "-j", "2", "-t", "50"], { env });
      assert.equal(run.code, 0, `pgbench: ${run.stdout}\n${run.stderr}`);
      assert.equal(run.failed ?? 0, 0);
      assert.equal(run.processed, 200);
      console.log(`pgbench over TLS: tps ${run.tps}`);
    });
  });

  await t.step("verify_full with a certificate for another host fails", async () => {
    // PostgreSQL re-reads its certificate on SIGHUP: switch to the db.example.com one.
    await Deno.writeTextFile(
      `${pg.configDir}/server.crt`,
      await Deno.readTextFile(certs.otherCert),
    );
    await Deno.writeTextFile(`${pg.configDir}/server.key`, await Deno.readTextFile(certs.otherKey));
    await pg.reload();
    const direct: PgTarget = {
      host: pg.host,
      port: pg.port,
      user: "alice",
      password: PASSWORD,
      database: "app",
    };
    const deadline = Date.now() + 20_000;
    const env = { PGSSLROOTCERT: certs.ca };
    while ((await psql(direct, "SELECT 1", { sslmode: "verify-full", env })).code === 0) {
      assert.ok(Date.now() < deadline, "PostgreSQL kept its old certificate");
      await new Promise((r) => setTimeout(r, 100));
    }
    await using fresh = await proxyWith({
      tls_verify: "verify_full",
      tls_server_ca_certificate: "ca.pem",
    });
    await dumpLogsOnFailure(fresh, async () => {
      const stderr = await psqlFails(alice(fresh), /TLS handshake failed/);
      assert.match(stderr, /tls_verify = "verify_full"/);
      assert.match(stderr, /does not match certificate's altnames/);
    });
    // The chain is still good.
    await using chainOnly = await proxyWith({
      tls_verify: "verify_ca",
      tls_server_ca_certificate: "ca.pem",
    });
    assert.equal(await psqlValue(bob(chainOnly), SSL_IN_USE), "t");
  });

  await t.step(
    "a server without TLS fails verify_*; an error instead of S is passed on",
    async () => {
      const enc = new TextEncoder();
      const fields = enc.encode("SFATAL\0C53300\0Msorry, too many clients already\0\0");
      const error = new Uint8Array(5 + fields.length);
      error[0] = "E".charCodeAt(0);
      new DataView(error.buffer).setInt32(1, 4 + fields.length);
      error.set(fields, 5);
      for (
        const [answer, pattern] of [
          [Uint8Array.of(0x4e), /does not support TLS, but tls_verify = "verify_full" requires it/],
          [error, /FATAL: {2}sorry, too many clients already/],
        ] as const
      ) {
        // A stand-in for PostgreSQL that answers the SSLRequest and hangs up.
        const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
        const port = (listener.addr as Deno.NetAddr).port;
        const serve = (async () => {
          for await (const conn of listener) {
            const head = new Uint8Array(8);
            if ((await conn.read(head).catch(() => null)) === 8) {
              await conn.write(answer).catch(() => {});
            }
            conn.close();
          }
        })();
        try {
          await using standIn = await startProxy({
            config: {
              general: { min_pool_size: 0, tls_verify: "verify_full" },
              databases: [{ name: "app", host: "127.0.0.1", port }],
            },
            users,
          });
          await psqlFails(alice(standIn), pattern);
        } finally {
          listener.close();
          await serve.catch(() => {});
        }
      }
    },
  );
});
