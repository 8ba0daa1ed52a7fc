import { deepEqual, equal } from "node:assert/strict";
import { decodeStartupPacket } from "./startup.ts";
import { cancelRequest, startupMessage } from "../protocol/messages.ts";

Deno.test("decodes startup, SSL, GSSENC and cancel packets", () => {
  const s = decodeStartupPacket(startupMessage({ user: "u", database: "d" }));
  equal(s.kind, "startup");
  if (s.kind === "startup") {
    equal(s.major, 3);
    equal(s.minor, 0);
    deepEqual([...s.params], [["user", "u"], ["database", "d"]]);
  }
  deepEqual(decodeStartupPacket(Uint8Array.of(0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f)), { kind: "ssl" });
  deepEqual(decodeStartupPacket(Uint8Array.of(0, 0, 0, 8, 4, 0xd2, 0x16, 0x30)), {
    kind: "gssenc",
  });
  deepEqual(decodeStartupPacket(cancelRequest(42, -7)), { kind: "cancel", pid: 42, secret: -7 });
});

Deno.test("rejects unterminated and value-less startup packets", () => {
  const good = startupMessage({ user: "u" });
  const cut = good.slice(0, good.length - 1);
  equal(decodeStartupPacket(cut).kind, "invalid");
  const noValue = Uint8Array.of(0, 0, 0, 11, 0, 3, 0, 0, 0x75, 0, 0);
  equal(decodeStartupPacket(noValue).kind, "invalid");
});

Deno.test("malformed packets PostgreSQL only logs are dropped; a bad layout is invalid", () => {
  // PostgreSQL does not look past an encryption request's code.
  deepEqual(decodeStartupPacket(Uint8Array.of(0, 0, 0, 12, 4, 0xd2, 0x16, 0x2f, 1, 2, 3, 4)), {
    kind: "ssl",
  });
  equal(decodeStartupPacket(cancelRequest(1, 2).slice(0, 12)).kind, "drop");
  const good = startupMessage({ user: "u" });
  const trailing = new Uint8Array(good.length + 2);
  trailing.set(good);
  new DataView(trailing.buffer).setInt32(0, trailing.length);
  trailing[good.length] = 0x61;
  const bad = decodeStartupPacket(trailing);
  deepEqual(bad, {
    kind: "invalid",
    reason: "invalid startup packet layout: expected terminator as last byte",
  });
});
