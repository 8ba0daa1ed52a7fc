import { equal, throws } from "node:assert/strict";
import type { ShardContext } from "@pgdog/pgdog/plugin";
import plugin from "./mod.ts";

/** The hook is synchronous; the API's type allows a promise. */
const shard = (key: string, ctx: ShardContext): number => plugin.shard!(key, ctx) as number;

function ctx(dataType: ShardContext["dataType"], shards: number): ShardContext {
  return { table: "users", column: "id", dataType, shards, database: "app" };
}

Deno.test("bigint keys go to the non-negative remainder", () => {
  const c = ctx("bigint", 4);
  equal(shard("0", c), 0);
  equal(shard("1", c), 1);
  equal(shard("7", c), 3);
  equal(shard("8", c), 0);
  equal(shard("+9", c), 1);
  equal(shard(" 10 ", c), 2);
  equal(shard("-1", c), 3);
  equal(shard("-4", c), 0);
  equal(shard("-5", c), 3);
  equal(shard("1", ctx("bigint", 1)), 0);
});

Deno.test("bigint keys at and beyond 64 bits keep exact arithmetic", () => {
  const c = ctx("bigint", 10);
  equal(shard("9223372036854775807", c), 7);
  equal(shard("-9223372036854775808", c), 2);
  // 2^53 + 1 is not a safe JavaScript number; as a float it would round to 2^53 (…992, shard 2).
  equal(shard("9007199254740993", c), 3);
  equal(shard("123456789012345678901234567890123", c), 3);
  equal(shard("-123456789012345678901234567890123", c), 7);
  equal(shard("18446744073709551617", ctx("bigint", 3)), 2); // 2^64 + 1
});

Deno.test("non-integer bigint keys throw an error naming the key and column", () => {
  const c = ctx("bigint", 4);
  for (const bad of ["abc", "", "1.5", "1e3", "0x10", "--1", "1 2", "NaN"]) {
    throws(() => shard(bad, c), (e: Error) => {
      equal(
        e.message,
        `modulo_sharding: ${JSON.stringify(bad)} is not an integer ` +
          `(users.id is a bigint column)`,
      );
      return true;
    });
  }
});

Deno.test("varchar keys: 32-bit FNV-1a of the UTF-8 bytes", () => {
  // With 2^32 shards the answer is the hash itself: the published FNV-1a test vectors.
  const whole = ctx("varchar", 2 ** 32);
  equal(shard("", whole), 0x811c9dc5);
  equal(shard("a", whole), 0xe40c292c);
  equal(shard("foobar", whole), 0xbf9cf968);
  const c = ctx("varchar", 3);
  equal(shard("foobar", c), 0xbf9cf968 % 3);
  equal(shard("a", c), 0xe40c292c % 3);
  // Non-ASCII text hashes its UTF-8 bytes, not UTF-16 code units.
  equal(shard("é", whole), fnvReference([0xc3, 0xa9]));
  // Text keys are taken as they are: case and spaces matter.
  equal(shard("Foobar", whole) === shard("foobar", whole), false);
});

Deno.test("uuid keys: every spelling of a UUID goes to the same shard", () => {
  const canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
  const c = ctx("uuid", 7);
  const expected = shard(canonical, ctx("varchar", 7));
  for (
    const spelling of [
      canonical,
      "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
      "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
      "a0eebc999c0b4ef8bb6d6bb9bd380a11",
      "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
      "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
    ]
  ) {
    equal(shard(spelling, c), expected, spelling);
  }
});

Deno.test("malformed uuid keys throw", () => {
  const c = ctx("uuid", 7);
  for (
    const bad of [
      "",
      "a0eebc99",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
      "a0eebc9-99c0b-4ef8-bb6d-6bb9bd380a11",
      "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
      "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ]
  ) {
    throws(() => shard(bad, c), /is not a UUID \(users\.id is a uuid column\)/, bad);
  }
});

Deno.test("answers are deterministic and in range", () => {
  for (const shards of [1, 2, 3, 5, 16]) {
    for (let i = -50; i < 50; i++) {
      for (const [type, key] of [["bigint", `${i * 7919}`], ["varchar", `user-${i}`]] as const) {
        const s = shard(key, ctx(type, shards));
        equal(Number.isInteger(s) && s >= 0 && s < shards, true, `${type} ${key} -> ${s}`);
        equal(shard(key, ctx(type, shards)), s);
      }
    }
  }
});

Deno.test("a bad shard count or data type throws", () => {
  throws(() => shard("1", ctx("bigint", 0)), /shard count must be a positive integer, got 0/);
  throws(() => shard("1", ctx("bigint", 1.5)), /got 1\.5/);
  throws(
    () => shard("1", { ...ctx("bigint", 2), dataType: "int4" as "bigint" }),
    /unknown data type "int4" for users\.id/,
  );
});

Deno.test("declares API version 1.1.0, kept answers (cacheShard) and no route hook", () => {
  equal(plugin.apiVersion, "1.1.0");
  equal(plugin.cacheShard, true);
  equal(plugin.route, undefined);
});

function fnvReference(bytes: number[]): number {
  let h = 0x811c9dc5n;
  for (const b of bytes) h = ((h ^ BigInt(b)) * 0x01000193n) % 2n ** 32n;
  return Number(h);
}
