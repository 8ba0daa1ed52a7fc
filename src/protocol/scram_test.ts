import assert from "node:assert/strict";
import {
  cachedScramSecret,
  formatScramVerifier,
  makeScramVerifier,
  parseScramVerifier,
  saslprep,
  ScramClientSession,
  type ScramSecret,
  scramSecretFromPassword,
  ScramServerSession,
} from "./scram.ts";
import { decodeBase64, encodeBase64, timingSafeEqual } from "./crypto_util.ts";

// RFC 7677 section 3.
const RFC = {
  user: "user",
  password: "pencil",
  clientNonce: "rOprNGfwEbeRWgbNEkqO",
  serverNonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
  salt: "W22ZaJ0SNY7soEsUEjb6gQ==",
  clientFirst: "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
  serverFirst:
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
  clientFinal: "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0," +
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
  serverFinal: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
};

function rfcSecret(): Promise<ScramSecret> {
  return scramSecretFromPassword(RFC.password, {
    salt: decodeBase64(RFC.salt)!,
    iterations: 4096,
  });
}

/** Runs a whole exchange; returns what each side concluded. */
async function roundTrip(
  secret: ScramSecret,
  password: string,
): Promise<{ serverOk: boolean; clientOk: boolean; error?: string }> {
  const client = new ScramClientSession(password);
  const server = new ScramServerSession(secret, "alice");
  const first = server.handleClientFirst(client.clientFirst());
  assert.ok("serverFirst" in first, JSON.stringify(first));
  const clientFinal = await client.handleServerFirst(first.serverFirst);
  const final = await server.handleClientFinal(clientFinal);
  if (!final.ok) return { serverOk: false, clientOk: false, error: final.error };
  return { serverOk: true, clientOk: client.verifyServerFinal(final.serverFinal) };
}

Deno.test("scram client reproduces the RFC 7677 exchange", async () => {
  const client = new ScramClientSession(RFC.password, { nonce: RFC.clientNonce, user: RFC.user });
  assert.equal(client.clientFirst(), RFC.clientFirst);
  assert.equal(await client.handleServerFirst(RFC.serverFirst), RFC.clientFinal);
  assert.equal(client.verifyServerFinal(RFC.serverFinal), true);
});

Deno.test("scram client sends an empty user name by default", () => {
  const client = new ScramClientSession("pw", { nonce: "abc" });
  assert.equal(client.clientFirst(), "n,,n=,r=abc");
  const random = new ScramClientSession("pw").clientFirst();
  assert.match(random, /^n,,n=,r=[A-Za-z0-9+/]{24}$/);
});

Deno.test("scram client escapes the user name", () => {
  const client = new ScramClientSession("pw", { nonce: "abc", user: "a,b=c" });
  assert.equal(client.clientFirst(), "n,,n=a=2Cb=3Dc,r=abc");
});

Deno.test("scram server reproduces the RFC 7677 exchange", async () => {
  const server = new ScramServerSession(await rfcSecret(), RFC.user, { nonce: RFC.serverNonce });
  assert.deepEqual(server.handleClientFirst(RFC.clientFirst), { serverFirst: RFC.serverFirst });
  assert.deepEqual(await server.handleClientFinal(RFC.clientFinal), {
    ok: true,
    serverFinal: RFC.serverFinal,
  });
});

Deno.test("scram server ignores the user name in the message and an authzid", async () => {
  const secret = await rfcSecret();
  for (const header of ["n,,", "y,,", "n,a=someone,"]) {
    const server = new ScramServerSession(secret, "alice", { nonce: "srv" });
    const first = server.handleClientFirst(`${header}n=bob,r=cli`);
    assert.deepEqual(first, { serverFirst: `r=clisrv,s=${RFC.salt},i=4096` });
    // A proof built from the same password over this exchange is accepted.
    const client = new ScramClientSession(RFC.password, { nonce: "cli", user: "bob" });
    client.clientFirst();
    const final = await client.handleServerFirst(`r=clisrv,s=${RFC.salt},i=4096`);
    // The client always sends c=biws ("n,,"); rewrite it for the other headers.
    const binding = `c=${btoa(header)}`;
    const result = await server.handleClientFinal(final.replace("c=biws", binding));
    if (header === "n,,") {
      assert.equal(result.ok, true);
    } else {
      // The AuthMessage now differs from what the client signed, so the
      // proof fails, but the binding check itself passed.
      assert.deepEqual(result, {
        ok: false,
        error: 'password authentication failed for user "alice"',
      });
    }
  }
});

Deno.test("scram round trip with the right and a wrong password", async () => {
  const secret = await scramSecretFromPassword("s3cret");
  assert.deepEqual(await roundTrip(secret, "s3cret"), { serverOk: true, clientOk: true });
  assert.deepEqual(await roundTrip(secret, "s3cret!"), {
    serverOk: false,
    clientOk: false,
    error: 'password authentication failed for user "alice"',
  });
  assert.deepEqual(await roundTrip(secret, ""), {
    serverOk: false,
    clientOk: false,
    error: 'password authentication failed for user "alice"',
  });
});

Deno.test("scram round trip with a non-ASCII password", async () => {
  // U+2168 ROMAN NUMERAL NINE normalizes to "IX" under SASLprep.
  const secret = await scramSecretFromPassword("p\u2168w\u00e9");
  assert.deepEqual(await roundTrip(secret, "p\u2168w\u00e9"), { serverOk: true, clientOk: true });
  assert.deepEqual(await roundTrip(secret, "pIXw\u00e9"), { serverOk: true, clientOk: true });
  assert.deepEqual(await roundTrip(secret, "pIXw"), {
    serverOk: false,
    clientOk: false,
    error: 'password authentication failed for user "alice"',
  });
});

Deno.test("scram client rejects a forged server signature", async () => {
  const client = new ScramClientSession(RFC.password, { nonce: RFC.clientNonce, user: RFC.user });
  client.clientFirst();
  await client.handleServerFirst(RFC.serverFirst);
  assert.equal(client.verifyServerFinal("v=" + encodeBase64(new Uint8Array(32))), false);
  // The session is finished after one verdict.
  assert.equal(client.verifyServerFinal(RFC.serverFinal), false);
});

Deno.test("scram client reports server errors in server-final", async () => {
  const client = new ScramClientSession(RFC.password, { nonce: RFC.clientNonce, user: RFC.user });
  client.clientFirst();
  await client.handleServerFirst(RFC.serverFirst);
  assert.equal(client.verifyServerFinal("e=invalid-proof"), false);
  assert.equal(client.serverError, "invalid-proof");
});

Deno.test("scram client rejects bad server-first messages", async () => {
  const bad: [string, RegExp][] = [
    ["", /expected nonce/],
    ["garbage", /expected nonce/],
    ["r=otherNonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", /does not extend/],
    ["r=abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", /does not extend/],
    ["r=abcd,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", /iteration count/],
    ["r=abcd,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1", /iteration count/],
    ["r=abcd,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1e3", /iteration count/],
    ["r=abcd,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999", /iteration count/],
    ["r=abcd,s=W22ZaJ0SNY7soEsUEjb6gQ==", /iteration count/],
    ["r=abcd,s=!!!,i=4096", /invalid salt/],
    ["r=abcd,s=,i=4096", /invalid salt/],
    ["r=abcd,i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ==", /invalid salt/],
    ["m=ext,r=abcd,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", /unsupported extension/],
    ["e=other-error", /server error: other-error/],
  ];
  for (const [message, pattern] of bad) {
    const client = new ScramClientSession("pw", { nonce: "abc" });
    client.clientFirst();
    await assert.rejects(client.handleServerFirst(message), pattern, message);
    assert.equal(client.verifyServerFinal("v=AAAA"), false);
  }
});

Deno.test("scram client enforces message order", async () => {
  const client = new ScramClientSession("pw", { nonce: "abc" });
  await assert.rejects(client.handleServerFirst("r=abcd,s=AAAA,i=1"), /unexpected/);
  assert.equal(client.verifyServerFinal("v=AAAA"), false);
});

Deno.test("scram client accepts server-first extensions", async () => {
  const client = new ScramClientSession(RFC.password, { nonce: RFC.clientNonce, user: RFC.user });
  client.clientFirst();
  const final = await client.handleServerFirst(`${RFC.serverFirst},x=ext`);
  assert.match(final, /^c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj\)hNlF\$k0,p=/);
});

Deno.test("scram server rejects malformed client-first messages", async () => {
  const secret = await rfcSecret();
  const cases: [string, RegExp][] = [
    ["", /GS2 header/],
    ["x,,n=,r=abc", /GS2 header/],
    ["n", /GS2 header/],
    ["n,", /GS2 header/],
    ["p=tls-server-end-point,,n=,r=abc", /channel binding is not supported/],
    ["n,b=x,n=,r=abc", /authorization identity/],
    ["n,,r=abc", /user name/],
    ["n,,n=", /nonce/],
    ["n,,n=,r=", /nonce/],
    ["n,,n=,x=abc", /nonce/],
    ["n,,n=,r=a\u00e9", /nonce/],
    ["n,,n=,r=abc,garbage", /invalid attribute/],
    ["n,,m=ext,n=,r=abc", /unsupported SCRAM extension/],
  ];
  for (const [message, pattern] of cases) {
    const server = new ScramServerSession(secret, "alice");
    const result = server.handleClientFirst(message);
    assert.ok("error" in result, message);
    assert.match(result.error, pattern, message);
    // A failed session does not continue.
    assert.equal((await server.handleClientFinal(RFC.clientFinal)).ok, false);
  }
  // Extensions after the nonce are ignored.
  const server = new ScramServerSession(secret, "alice", { nonce: "s" });
  assert.deepEqual(server.handleClientFirst("n,,n=,r=abc,x=1"), {
    serverFirst: `r=abcs,s=${RFC.salt},i=4096`,
  });
});

Deno.test("scram server rejects malformed client-final messages", async () => {
  const secret = await rfcSecret();
  const nonce = `${RFC.clientNonce}${RFC.serverNonce}`;
  const proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
  const cases: [string, RegExp][] = [
    ["", /expected proof/],
    [`c=biws,r=${nonce}`, /expected proof/],
    [`c=biws,r=${nonce},p=AAAA`, /invalid proof/],
    [`c=biws,r=${nonce},p=not base64!`, /invalid proof/],
    [`c=biws,r=${nonce},${proof},x=1`, /invalid proof/],
    [`r=${nonce},${proof}`, /expected channel binding/],
    [`c=eSws,r=${nonce},${proof}`, /channel binding check failed/],
    [`c=!!!,r=${nonce},${proof}`, /channel binding check failed/],
    [`c=biws,${proof}`, /expected nonce/],
    [`c=biws,r=${RFC.clientNonce},${proof}`, /nonce mismatch/],
    [`c=biws,r=${nonce}x,${proof}`, /nonce mismatch/],
    [`c=biws,r=${nonce},garbage,${proof}`, /invalid attribute/],
  ];
  for (const [message, pattern] of cases) {
    const server = new ScramServerSession(secret, RFC.user, { nonce: RFC.serverNonce });
    assert.ok("serverFirst" in server.handleClientFirst(RFC.clientFirst));
    const result = await server.handleClientFinal(message);
    assert.equal(result.ok, false, message);
    assert.match(!result.ok ? result.error : "", pattern, message);
  }
});

Deno.test("scram server enforces message order", async () => {
  const secret = await rfcSecret();
  const server = new ScramServerSession(secret, RFC.user, { nonce: RFC.serverNonce });
  assert.equal((await server.handleClientFinal(RFC.clientFinal)).ok, false);
  assert.ok("error" in server.handleClientFirst(RFC.clientFirst));

  const again = new ScramServerSession(secret, RFC.user, { nonce: RFC.serverNonce });
  assert.ok("serverFirst" in again.handleClientFirst(RFC.clientFirst));
  assert.ok("error" in again.handleClientFirst(RFC.clientFirst));
});

Deno.test("scram server sessions use fresh nonces", async () => {
  const secret = await rfcSecret();
  const nonces = new Set<string>();
  for (let i = 0; i < 20; i++) {
    const result = new ScramServerSession(secret, "u").handleClientFirst("n,,n=,r=c");
    assert.ok("serverFirst" in result);
    const nonce = result.serverFirst.split(",")[0];
    assert.match(nonce, /^r=c[A-Za-z0-9+/]{24}$/);
    nonces.add(nonce);
  }
  assert.equal(nonces.size, 20);
});

Deno.test("scram secret defaults", async () => {
  const a = await scramSecretFromPassword("pw");
  const b = await scramSecretFromPassword("pw");
  assert.equal(a.iterations, 4096);
  assert.equal(a.salt.length, 16);
  assert.equal(a.storedKey.length, 32);
  assert.equal(a.serverKey.length, 32);
  assert.notDeepEqual(a.salt, b.salt);
  assert.notDeepEqual(a.storedKey, b.storedKey);
  await assert.rejects(scramSecretFromPassword("pw", { iterations: 0 }), RangeError);
  await assert.rejects(scramSecretFromPassword("pw", { iterations: 1.5 }), RangeError);
});

Deno.test("scram verifier round trip", async () => {
  const verifier = await makeScramVerifier(RFC.password, {
    salt: decodeBase64(RFC.salt)!,
    iterations: 4096,
  });
  assert.match(verifier, /^SCRAM-SHA-256\$4096:W22ZaJ0SNY7soEsUEjb6gQ==\$[A-Za-z0-9+/=]{44}:/);
  const secret = parseScramVerifier(verifier);
  assert.ok(secret);
  assert.deepEqual(secret, await rfcSecret());
  assert.equal(formatScramVerifier(secret), verifier);

  const random = await makeScramVerifier("other");
  const parsed = parseScramVerifier(random)!;
  assert.equal(parsed.iterations, 4096);
  assert.deepEqual(await roundTrip(parsed, "other"), { serverOk: true, clientOk: true });
  assert.equal((await roundTrip(parsed, "wrong")).serverOk, false);
});

Deno.test("scram verifier parsing rejects malformed text", () => {
  const key = encodeBase64(new Uint8Array(32));
  const good = `SCRAM-SHA-256$4096:c2FsdA==$${key}:${key}`;
  assert.ok(parseScramVerifier(good));
  for (
    const text of [
      "",
      "pencil",
      "md50098e7fab7b4d8d091067152a80b3f12",
      `SCRAM-SHA-1$4096:c2FsdA==$${key}:${key}`,
      `SCRAM-SHA-256$0:c2FsdA==$${key}:${key}`,
      `SCRAM-SHA-256$-1:c2FsdA==$${key}:${key}`,
      `SCRAM-SHA-256$99999999999:c2FsdA==$${key}:${key}`,
      `SCRAM-SHA-256$4096:$${key}:${key}`,
      `SCRAM-SHA-256$4096:c2FsdA=$${key}:${key}`,
      `SCRAM-SHA-256$4096:c2FsdA==$${key}:AAAA`,
      `SCRAM-SHA-256$4096:c2FsdA==$${key}`,
      `${good}:x`,
      ` ${good}`,
    ]
  ) {
    assert.equal(parseScramVerifier(text), undefined, text);
  }
});

Deno.test("cachedScramSecret derives once and keeps the salt per user", async () => {
  const a = await cachedScramSecret("cache-user", "pw1");
  assert.equal(await cachedScramSecret("cache-user", "pw1"), a);
  const b = await cachedScramSecret("cache-user", "pw2");
  assert.notEqual(b, a);
  assert.deepEqual(b.salt, a.salt);
  assert.notDeepEqual(b.storedKey, a.storedKey);
  assert.deepEqual(await roundTrip(b, "pw2"), { serverOk: true, clientOk: true });
  const other = await cachedScramSecret("cache-user-2", "pw1");
  assert.notDeepEqual(other.salt, a.salt);
});

Deno.test("cachedScramSecret accepts a stored SCRAM verifier", async () => {
  const verifier = await makeScramVerifier("hunter2");
  const secret = await cachedScramSecret("verifier-user", verifier);
  assert.equal(formatScramVerifier(secret), verifier);
  assert.deepEqual(await roundTrip(secret, "hunter2"), { serverOk: true, clientOk: true });
});

Deno.test("scram client caches the salted password", async () => {
  const salt = encodeBase64(crypto.getRandomValues(new Uint8Array(16)));
  const iterations = 200_000; // slow enough (tens of ms) to notice a cache miss
  const run = async (): Promise<number> => {
    const client = new ScramClientSession("cached", { nonce: "abc" });
    client.clientFirst();
    const start = performance.now();
    await client.handleServerFirst(`r=abcd,s=${salt},i=${iterations}`);
    return performance.now() - start;
  };
  const cold = await run();
  const warm = await run();
  assert.ok(warm * 4 < cold, `cold ${cold} ms, warm ${warm} ms`);
});

Deno.test("saslprep", () => {
  // ASCII passes through untouched, even control characters (as in PostgreSQL).
  assert.equal(saslprep("pencil"), "pencil");
  assert.equal(saslprep(""), "");
  assert.equal(saslprep("a\u0007b"), "a\u0007b");
  // RFC 4013 section 3 examples.
  assert.equal(saslprep("I\u00adX"), "IX");
  assert.equal(saslprep("\u00aa"), "a");
  assert.equal(saslprep("\u2168"), "IX");
  // Non-ASCII spaces become SPACE; NFKC composes.
  assert.equal(saslprep("a\u00a0b\u3000c\u00e9"), "a b c\u00e9");
  assert.equal(saslprep("e\u0301"), "\u00e9");
  // Prohibited or unnormalizable input falls back to the raw password.
  assert.equal(saslprep("\u00e9\u0007"), "\u00e9\u0007");
  assert.equal(saslprep("\u00e9\ue000"), "\u00e9\ue000");
  assert.equal(saslprep("\u00ad"), "\u00ad");
  assert.equal(saslprep("\u00e9\u{10ffff}"), "\u00e9\u{10ffff}");
  assert.equal(saslprep("\u00e9\ud800"), "\u00e9\ud800");
  // Code points unassigned in Unicode 3.2 (here an emoji) are prohibited too.
  assert.equal(saslprep("\u2168\u{1f600}"), "\u2168\u{1f600}");
  assert.equal(saslprep("\u2168\u00e9"), "IX\u00e9");
  // The checks look at the mapped input, not the NFKC output.
  assert.equal(saslprep("\u2474\u00e9"), "(1)\u00e9");
  // Bidi rules.
  assert.equal(saslprep("\u0627\u0031\u0628"), "\u0627\u0031\u0628");
  assert.equal(saslprep("\u0627\u0031"), "\u0627\u0031");
  assert.equal(saslprep("\u0627a\u0628"), "\u0627a\u0628");
  assert.equal(saslprep("\ufb50\u0031\u0628"), "\u0671\u0031\u0628");
  assert.equal(saslprep("\ufb50\u0031"), "\ufb50\u0031");
  assert.equal(saslprep("\u05d0\u05b0\u05d1"), "\u05d0\u05b0\u05d1");
  assert.equal(saslprep("\u05d0\u0e01\u05d1"), "\u05d0\u0e01\u05d1");
});

Deno.test("crypto_util helpers", () => {
  assert.equal(encodeBase64(new Uint8Array([0xfb, 0xff])), "+/8=");
  assert.deepEqual(decodeBase64("+/8="), new Uint8Array([0xfb, 0xff]));
  assert.deepEqual(decodeBase64(""), new Uint8Array());
  for (const bad of ["+/8", "+/8=x", " +/8=", "-_8=", "====", "A==="]) {
    assert.equal(decodeBase64(bad), undefined, bad);
  }
  assert.equal(timingSafeEqual(new Uint8Array([1, 2]), new Uint8Array([1, 2])), true);
  assert.equal(timingSafeEqual(new Uint8Array([1, 2]), new Uint8Array([1, 3])), false);
  assert.equal(timingSafeEqual(new Uint8Array([1, 2]), new Uint8Array([1])), false);
});
