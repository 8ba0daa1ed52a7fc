import assert from "node:assert/strict";
import {
  isMd5StoredPassword,
  md5Hex,
  md5PasswordHash,
  md5StoredPassword,
  md5Verify,
} from "./md5.ts";

const SALT = new Uint8Array([0x01, 0x02, 0x03, 0x04]);

Deno.test("md5Hex", () => {
  assert.equal(md5Hex(""), "d41d8cd98f00b204e9800998ecf8427e");
  assert.equal(md5Hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
  assert.equal(md5Hex(new TextEncoder().encode("abc")), "900150983cd24fb0d6963f7d28e17f72");
  // Strings hash as UTF-8.
  assert.equal(md5Hex("\u00e9"), md5Hex(new Uint8Array([0xc3, 0xa9])));
});

Deno.test("md5StoredPassword matches PostgreSQL", () => {
  assert.equal(md5StoredPassword("md5user", "pencil"), "md50098e7fab7b4d8d091067152a80b3f12");
  assert.equal(md5StoredPassword("postgres", "postgres"), "md53175bce1d3201d16594cebf9d7eb3f9d");
  // Already hashed passwords are kept.
  assert.equal(
    md5StoredPassword("other", "md50098e7fab7b4d8d091067152a80b3f12"),
    "md50098e7fab7b4d8d091067152a80b3f12",
  );
  assert.equal(isMd5StoredPassword("md50098e7fab7b4d8d091067152a80b3f12"), true);
  assert.equal(isMd5StoredPassword("md50098E7FAB7B4D8D091067152A80B3F12"), false);
  assert.equal(isMd5StoredPassword("md50098e7fab7b4d8d091067152a80b3f1"), false);
  assert.equal(isMd5StoredPassword("pencil"), false);
});

Deno.test("md5PasswordHash hashes the hex digest with the raw salt", () => {
  const inner = md5Hex("pencilmd5user");
  const bytes = new Uint8Array([...new TextEncoder().encode(inner), ...SALT]);
  const expected = "md5" + md5Hex(bytes);
  assert.equal(md5PasswordHash("md5user", "pencil", SALT), expected);
  assert.equal(md5PasswordHash("md5user", "md50098e7fab7b4d8d091067152a80b3f12", SALT), expected);
  assert.match(expected, /^md5[0-9a-f]{32}$/);
  // Salt bytes >= 0x80 are appended raw, not UTF-8 encoded.
  const highSalt = new Uint8Array([0xff, 0x80, 0x00, 0x7f]);
  const raw = new Uint8Array([...new TextEncoder().encode(inner), ...highSalt]);
  assert.equal(md5PasswordHash("md5user", "pencil", highSalt), "md5" + md5Hex(raw));
  assert.notEqual(md5PasswordHash("md5user", "pencil", highSalt), expected);
});

Deno.test("md5Verify", () => {
  const response = md5PasswordHash("alice", "secret", SALT);
  assert.equal(md5Verify({ user: "alice", password: "secret", salt: SALT, response }), true);
  const stored = md5StoredPassword("alice", "secret");
  assert.equal(md5Verify({ user: "alice", password: stored, salt: SALT, response }), true);

  assert.equal(md5Verify({ user: "alice", password: "Secret", salt: SALT, response }), false);
  assert.equal(md5Verify({ user: "bob", password: "secret", salt: SALT, response }), false);
  const salt2 = new Uint8Array([4, 3, 2, 1]);
  assert.equal(md5Verify({ user: "alice", password: "secret", salt: salt2, response }), false);
  for (const bad of ["", "md5", response.slice(0, -1), response + "0", response.toUpperCase()]) {
    assert.equal(
      md5Verify({ user: "alice", password: "secret", salt: SALT, response: bad }),
      false,
    );
  }
});
