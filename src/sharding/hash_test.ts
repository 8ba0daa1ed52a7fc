import assert from "node:assert/strict";
import {
  HASH_PARTITION_SEED,
  hashBytesExtended,
  hashCombine64,
  hashInt8Extended,
  parseBigint,
  parseUuid,
  shardForBigint,
  shardForBytes,
  shardForText,
  shardForUuid,
} from "./hash.ts";

const MODULI = [2, 3, 4, 12];
const INT64_MAX = (1n << 63n) - 1n;
const INT64_MIN = -(1n << 63n);

/** Remainders for moduli 2/3/4/12, checked against PostgreSQL 15 partitions. */
const BIGINT_VECTORS: [bigint, string][] = [
  [0n, "0/2/0/8"],
  [1n, "0/2/0/8"],
  [2n, "0/0/2/6"],
  [3n, "1/1/1/1"],
  [4n, "1/0/3/3"],
  [5n, "1/2/1/5"],
  [10n, "1/1/3/7"],
  [100n, "1/2/1/5"],
  [1000n, "0/2/0/8"],
  [-1n, "1/2/1/5"],
  [-100n, "1/0/3/3"],
  [123456789n, "1/1/1/1"],
  [INT64_MAX, "0/0/2/6"],
];

const TEXT_VECTORS: [string, string][] = [
  ["", "0/2/2/2"],
  ["a", "0/2/2/2"],
  ["apples", "1/1/1/1"],
  ["us-east-1", "0/2/2/2"],
  ["hello world", "0/1/0/4"],
  ["tenant_a", "0/0/2/6"],
  ["b", "0/0/2/6"],
  ["c", "0/2/2/2"],
  ["0123456789abcdef", "0/2/2/2"],
];

const UUID_VECTORS: [string, string][] = [
  ["00000000-0000-0000-0000-000000000000", "1/0/1/9"],
  ["11111111-1111-1111-1111-111111111111", "0/1/0/4"],
  ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "0/1/0/4"],
];

function shards<T>(value: T, shardFor: (value: T, shards: number) => number): string {
  return MODULI.map((m) => shardFor(value, m)).join("/");
}

Deno.test("hashInt8Extended(1, HASH_PARTITION_SEED) is PostgreSQL's value", () => {
  assert.equal(HASH_PARTITION_SEED, 0x7A5B22367996DCFDn);
  assert.equal(BigInt.asIntN(64, hashInt8Extended(1n, HASH_PARTITION_SEED)), 5968994663651403477n);
  // A negative seed is its two's complement, as in SQL.
  assert.equal(
    hashInt8Extended(1n, BigInt.asIntN(64, HASH_PARTITION_SEED)),
    hashInt8Extended(1n, HASH_PARTITION_SEED),
  );
});

Deno.test("shardForBigint matches PostgreSQL's partitions", () => {
  for (const [value, expected] of BIGINT_VECTORS) {
    assert.equal(shards(value, shardForBigint), expected, `value ${value}`);
  }
});

Deno.test("int8 values outside the safe-integer range hash like PostgreSQL's folding", () => {
  // The fast path (|v| ≤ 2^53) and the BigInt path must agree at the boundary.
  for (const v of [2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, -(2n ** 53n), -(2n ** 53n) - 1n]) {
    const lo = BigInt.asUintN(32, v);
    const hi = BigInt.asUintN(32, v >> 32n);
    const folded = lo ^ (v >= 0n ? hi : BigInt.asUintN(32, ~hi));
    assert.equal(
      hashInt8Extended(v, HASH_PARTITION_SEED),
      hashInt8Extended(folded, HASH_PARTITION_SEED),
      `value ${v}`,
    );
  }
  assert.equal(typeof shardForBigint(INT64_MIN, 7), "number");
  assert.throws(() => shardForBigint(INT64_MAX + 1n, 2), RangeError);
  assert.throws(() => shardForBigint(INT64_MIN - 1n, 2), RangeError);
});

Deno.test("negative values fold with the complement of the high half", () => {
  // -1: lo = 0xffffffff, hi = 0xffffffff, lo ^ ~hi = 0xffffffff: the same word as 4294967295.
  assert.equal(hashInt8Extended(-1n, 0n), hashInt8Extended(0xffffffffn, 0n));
  assert.notEqual(hashInt8Extended(-2n, 0n), hashInt8Extended(2n, 0n));
});

Deno.test("shardForText matches PostgreSQL's partitions", () => {
  for (const [value, expected] of TEXT_VECTORS) {
    assert.equal(shards(value, shardForText), expected, JSON.stringify(value));
    assert.equal(
      shards(new TextEncoder().encode(value), shardForBytes),
      expected,
      JSON.stringify(value),
    );
  }
});

Deno.test("shardForText grows its scratch buffer for long and multi-byte strings", () => {
  const long = "ünïcødé €uro 日本語 🐘".repeat(500);
  const bytes = new TextEncoder().encode(long);
  for (const m of [7, 12, 1000]) assert.equal(shardForText(long, m), shardForBytes(bytes, m));
  // A short string after a long one hashes only its own bytes.
  assert.equal(shards("apples", shardForText), "1/1/1/1");
});

Deno.test("shardForUuid matches PostgreSQL's partitions", () => {
  for (const [value, expected] of UUID_VECTORS) {
    assert.equal(shards(value, shardForUuid), expected, value);
    assert.equal(shards(parseUuid(value)!, shardForUuid), expected, value);
  }
});

Deno.test("parseUuid accepts what uuid_in accepts", () => {
  const bytes = parseUuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")!;
  assert.deepEqual(
    [...bytes],
    [
      0xa0,
      0xee,
      0xbc,
      0x99,
      0x9c,
      0x0b,
      0x4e,
      0xf8,
      0xbb,
      0x6d,
      0x6b,
      0xb9,
      0xbd,
      0x38,
      0x0a,
      0x11,
    ],
  );
  for (
    const text of [
      "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
      "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
      "a0eebc999c0b4ef8bb6d6bb9bd380a11",
      "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
      "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
    ]
  ) {
    assert.deepEqual(parseUuid(text), bytes, text);
  }
  for (
    const text of [
      "",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
      "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
      " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ",
      "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
      "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ]
  ) {
    assert.equal(parseUuid(text), null, JSON.stringify(text));
  }
  assert.throws(() => shardForUuid("not-a-uuid", 2), RangeError);
  assert.throws(() => shardForUuid(new Uint8Array(15), 2), RangeError);
});

Deno.test("parseBigint follows PostgreSQL 15's int8in", () => {
  const good: [string, bigint][] = [
    ["0", 0n],
    ["-0", 0n],
    ["+42", 42n],
    ["  -17 ", -17n],
    ["\t\n\v\f\r5\r\n", 5n],
    ["000000000000000000000000001", 1n],
    ["9223372036854775807", INT64_MAX],
    ["-9223372036854775808", INT64_MIN],
    ["123456789012345", 123456789012345n],
    ["1234567890123456", 1234567890123456n],
  ];
  for (const [text, value] of good) assert.equal(parseBigint(text), value, JSON.stringify(text));
  for (
    const text of [
      "",
      " ",
      "-",
      "+",
      "--1",
      "+-1",
      "1_000",
      "0x10",
      "0o17",
      "0b1",
      "1.0",
      "1e3",
      "1 2",
      "- 1",
      "١٢",
      "9223372036854775808",
      "-9223372036854775809",
      "99999999999999999999999",
    ]
  ) {
    assert.equal(parseBigint(text), null, JSON.stringify(text));
  }
});

Deno.test("hashBytesExtended over each tail length is consistent with shardForBytes", () => {
  // Every tail length 0..11 and more than one 12-byte block.
  const bytes = Uint8Array.from({ length: 40 }, (_, i) => (i * 37 + 11) & 0xff);
  const seen = new Set<bigint>();
  for (let n = 0; n <= bytes.length; n++) {
    const slice = bytes.subarray(0, n);
    const h = hashBytesExtended(slice, HASH_PARTITION_SEED);
    seen.add(h);
    const combined = hashCombine64(0n, h);
    for (const m of [2, 3, 12, 97, 1 << 27]) {
      assert.equal(shardForBytes(slice, m), Number(combined % BigInt(m)), `length ${n} mod ${m}`);
    }
  }
  assert.equal(seen.size, bytes.length + 1);
});

Deno.test("hashCombine64(0, h) adds the golden-ratio constant", () => {
  assert.equal(hashCombine64(0n, 1n), 0x49a0f4dd15e5a8e4n);
  assert.equal(hashCombine64(0n, 0xffffffffffffffffn), 0x49a0f4dd15e5a8e2n);
});

Deno.test("remainders agree with BigInt arithmetic for large moduli", () => {
  for (const v of [0n, 1n, -1n, 123456789n, INT64_MAX, INT64_MIN]) {
    const combined = hashCombine64(0n, hashInt8Extended(v, HASH_PARTITION_SEED));
    for (const m of [1, 5, 1 << 26, (1 << 26) + 1, 2 ** 40 + 7, Number.MAX_SAFE_INTEGER]) {
      assert.equal(shardForBigint(v, m), Number(combined % BigInt(m)), `value ${v} mod ${m}`);
    }
  }
});

Deno.test("invalid shard counts are rejected", () => {
  for (const n of [0, -1, 1.5, NaN, Infinity]) {
    assert.throws(() => shardForBigint(1n, n), RangeError);
    assert.throws(() => shardForText("a", n), RangeError);
    assert.throws(() => shardForUuid(new Uint8Array(16), n), RangeError);
  }
});
