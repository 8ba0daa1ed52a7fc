/**
 * `deno bench bench/sharding_bench.ts`: what sharding costs per routed query (hashing a key into
 * a shard number) and how fast unique ids are issued. Goals: well under 1 µs per key for
 * bigint and short text/uuid keys; at least 1 million ids per second (the layout caps one node
 * at 4096 ids per millisecond, 4.096 million per second).
 *
 * @module
 */

import {
  decodeUniqueId,
  parseBigint,
  parseUuid,
  shardForBigint,
  shardForText,
  shardForUuid,
  UniqueIdGenerator,
} from "../src/sharding/mod.ts";

const SHARDS = 12;
const KEYS = 1024; // a power of two, for cheap cycling
const bigints = Array.from({ length: KEYS }, (_, i) => BigInt(i * 7919 - 4_000_000));
const bigintTexts = bigints.map(String);
const largeBigints = bigints.map((v) => v * 2_000_000_000_000n);
const shortTexts = Array.from({ length: KEYS }, (_, i) => `tenant_${i}`);
const longTexts = Array.from({ length: KEYS }, (_, i) => `${"customer-é-日本-".repeat(8)}${i}`);
const uuidTexts = Array.from({ length: KEYS }, (_, i) => {
  const h = (i * 2654435761 >>> 0).toString(16).padStart(8, "0");
  return `${h}-9c0b-4ef8-bb6d-6bb9bd38${h.slice(0, 4)}`;
});
const uuidBytes = uuidTexts.map((t) => parseUuid(t)!);
let i = 0;
let sink = 0;

Deno.bench("shardForBigint (|v| < 2^53)", { group: "shard", baseline: true }, () => {
  sink ^= shardForBigint(bigints[i++ & (KEYS - 1)], SHARDS);
});

Deno.bench("shardForBigint (|v| > 2^53)", { group: "shard" }, () => {
  sink ^= shardForBigint(largeBigints[i++ & (KEYS - 1)], SHARDS);
});

Deno.bench("parseBigint + shardForBigint (key from SQL text)", { group: "shard" }, () => {
  sink ^= shardForBigint(parseBigint(bigintTexts[i++ & (KEYS - 1)])!, SHARDS);
});

Deno.bench("shardForText (short ASCII, ~10 bytes)", { group: "shard" }, () => {
  sink ^= shardForText(shortTexts[i++ & (KEYS - 1)], SHARDS);
});

Deno.bench("shardForText (long non-ASCII, ~200 bytes)", { group: "shard" }, () => {
  sink ^= shardForText(longTexts[i++ & (KEYS - 1)], SHARDS);
});

Deno.bench("shardForUuid (text form)", { group: "shard" }, () => {
  sink ^= shardForUuid(uuidTexts[i++ & (KEYS - 1)], SHARDS);
});

Deno.bench("shardForUuid (16 raw bytes)", { group: "shard" }, () => {
  sink ^= shardForUuid(uuidBytes[i++ & (KEYS - 1)], SHARDS);
});

const ids = new UniqueIdGenerator({ nodeId: 3 });
let lastId = 0n;

Deno.bench("UniqueIdGenerator.next() (iter/s = ids/s)", { group: "unique id" }, () => {
  lastId = ids.next();
});

Deno.bench("UniqueIdGenerator.next() x 10,000 (ids/s = 10,000 / time)", {
  group: "unique id",
}, () => {
  for (let k = 0; k < 10_000; k++) lastId = ids.next();
});

Deno.bench("UniqueIdGenerator.nextText()", { group: "unique id" }, () => {
  sink ^= ids.nextText().length;
});

globalThis.addEventListener("unload", () => {
  // Keep the results observable so nothing is optimized away.
  if (sink === 0x7fffffff) console.log(sink, decodeUniqueId(lastId));
});
