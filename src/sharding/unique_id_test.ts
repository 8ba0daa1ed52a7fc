import assert from "node:assert/strict";
import {
  decodeUniqueId,
  MAX_NODE_ID,
  MAX_SEQUENCE,
  MAX_TIMESTAMP,
  nodeIdFromEnv,
  PGDOG_EPOCH,
  UniqueIdGenerator,
} from "./unique_id.ts";

/** A clock that returns `readings` one per call, then repeats the last one; counts its calls. */
function fakeClock(readings: number[]): { now: () => number; calls: () => number } {
  let index = 0;
  return {
    now: () => readings[Math.min(index++, readings.length - 1)],
    calls: () => index,
  };
}

Deno.test("PGDOG_EPOCH is 2025-11-26 19:13:15 UTC", () => {
  assert.equal(new Date(PGDOG_EPOCH).toISOString(), "2025-11-26T19:13:15.000Z");
});

Deno.test("ids are laid out as [0][41 bits ms][10 bits node][12 bits sequence]", () => {
  // The same values as PgDog's own regression test.
  const now = 1_775_590_268_126;
  const clock = fakeClock([now, now, now + 1]);
  const ids = new UniqueIdGenerator({ nodeId: 42, now: clock.now });
  const first = ids.next();
  const second = ids.next();
  const third = ids.next();
  assert.equal(first, 47_839_699_276_046_336n);
  assert.equal(second, 47_839_699_276_046_337n);
  assert.equal(third, 47_839_699_280_240_640n);
  assert.deepEqual(decodeUniqueId(first), {
    timestamp: now,
    elapsed: 11_405_873_126,
    nodeId: 42,
    sequence: 0,
  });
  assert.deepEqual(decodeUniqueId(second), {
    timestamp: now,
    elapsed: 11_405_873_126,
    nodeId: 42,
    sequence: 1,
  });
  assert.deepEqual(decodeUniqueId(third), {
    timestamp: now + 1,
    elapsed: 11_405_873_127,
    nodeId: 42,
    sequence: 0,
  });
  assert.equal(first, (11_405_873_126n << 22n) | (42n << 12n));
});

Deno.test("the largest fields keep the sign bit clear", () => {
  const ids = new UniqueIdGenerator({
    nodeId: MAX_NODE_ID,
    now: () => PGDOG_EPOCH + MAX_TIMESTAMP,
  });
  let id = 0n;
  for (let i = 0; i <= MAX_SEQUENCE; i++) id = ids.next();
  assert.equal(id, (1n << 63n) - 1n);
  assert.deepEqual(decodeUniqueId(id), {
    timestamp: PGDOG_EPOCH + MAX_TIMESTAMP,
    elapsed: MAX_TIMESTAMP,
    nodeId: MAX_NODE_ID,
    sequence: MAX_SEQUENCE,
  });
});

Deno.test("the offset (unique_id_min) is added after packing", () => {
  const ids = new UniqueIdGenerator({
    nodeId: 3,
    now: () => PGDOG_EPOCH + 321,
    offset: 1_000_000n,
  });
  const id = ids.next();
  assert.equal(id, 1_347_383_872n);
  assert.equal(decodeUniqueId(id, { offset: 1_000_000n }).elapsed, 321);
  assert.throws(() => new UniqueIdGenerator({ nodeId: 0, offset: -1n }), RangeError);
  assert.throws(() => new UniqueIdGenerator({ nodeId: 0, offset: 1n << 63n }), RangeError);
  // An offset that would push today's ids past int8 is refused when an id is made.
  const t = 1_775_590_268_126;
  const room = (1n << 63n) - 1n - ((BigInt(t - PGDOG_EPOCH) << 22n) | BigInt(MAX_SEQUENCE));
  assert.equal(new UniqueIdGenerator({ nodeId: 0, now: () => t, offset: room }).next() > 0n, true);
  const over = new UniqueIdGenerator({ nodeId: 0, now: () => t, offset: room + 1n });
  assert.throws(() => over.next(), RangeError);
});

Deno.test("ids strictly increase, without duplicates, over 100k calls", () => {
  const ids = new UniqueIdGenerator({ nodeId: 5 });
  const seen = new Set<bigint>();
  let previous = 0n;
  const start = Date.now();
  for (let i = 0; i < 100_000; i++) {
    const id = ids.next();
    assert.ok(id > previous, `id ${id} after ${previous}`);
    previous = id;
    seen.add(id);
  }
  assert.equal(seen.size, 100_000);
  const last = decodeUniqueId(previous);
  assert.equal(last.nodeId, 5);
  assert.ok(last.timestamp >= start && last.timestamp <= Date.now());
});

Deno.test("when the sequence runs out, the next id waits for the next millisecond", () => {
  const t = PGDOG_EPOCH + 99;
  // 4096 ids at t, then the clock reads t three more times before ticking.
  const readings = [...Array(MAX_SEQUENCE + 1).fill(t), t, t, t, t + 1];
  const clock = fakeClock(readings);
  const ids = new UniqueIdGenerator({ nodeId: 7, now: clock.now });
  let id = 0n;
  for (let i = 0; i <= MAX_SEQUENCE; i++) id = ids.next();
  assert.equal(id, 415_268_863n); // PgDog's value: elapsed 99, node 7, sequence 4095
  const next = ids.next();
  assert.equal(next, 419_459_072n); // elapsed 100, node 7, sequence 0
  assert.equal(clock.calls(), readings.length, "it polled the clock until it ticked");
  assert.deepEqual(decodeUniqueId(next), {
    timestamp: t + 1,
    elapsed: 100,
    nodeId: 7,
    sequence: 0,
  });
});

Deno.test("a clock going backwards never repeats or decreases ids", () => {
  const t = PGDOG_EPOCH + 1_000_000;
  let now = t;
  const ids = new UniqueIdGenerator({ nodeId: 1, now: () => now });
  const issued: bigint[] = [ids.next(), ids.next()];
  now = t - 5_000; // NTP stepped the clock back 5 s
  issued.push(ids.next());
  assert.deepEqual(decodeUniqueId(issued[2]), {
    timestamp: t,
    elapsed: 1_000_000,
    nodeId: 1,
    sequence: 2,
  }, "it keeps issuing from the last timestamp");
  // Run the sequence out while the clock is still behind: it moves on without blocking.
  for (let i = 0; i < 3 * (MAX_SEQUENCE + 1); i++) issued.push(ids.next());
  const moved = decodeUniqueId(issued.at(-1)!);
  assert.equal(moved.timestamp, t + 3);
  // The clock catches up: back to real time.
  now = t + 10;
  issued.push(ids.next());
  assert.deepEqual(decodeUniqueId(issued.at(-1)!), {
    timestamp: t + 10,
    elapsed: 1_000_010,
    nodeId: 1,
    sequence: 0,
  });
  for (let i = 1; i < issued.length; i++) {
    assert.ok(issued[i] > issued[i - 1], `id #${i} ${issued[i]} after ${issued[i - 1]}`);
  }
  assert.equal(new Set(issued).size, issued.length);
});

Deno.test("a clock before PGDOG_EPOCH is an error", () => {
  const ids = new UniqueIdGenerator({ nodeId: 1, now: () => PGDOG_EPOCH - 1 });
  assert.throws(() => ids.next(), RangeError);
  const late = new UniqueIdGenerator({ nodeId: 1, now: () => PGDOG_EPOCH + MAX_TIMESTAMP + 1 });
  assert.throws(() => late.next(), RangeError);
});

Deno.test("fractional clocks are truncated to the millisecond", () => {
  const ids = new UniqueIdGenerator({ nodeId: 2, now: () => PGDOG_EPOCH + 10.9 });
  assert.equal(decodeUniqueId(ids.next()).elapsed, 10);
});

Deno.test("nextText is the decimal form", () => {
  const ids = new UniqueIdGenerator({ nodeId: 42, now: () => 1_775_590_268_126 });
  assert.equal(ids.nextText(), "47839699276046336");
  assert.equal(ids.nextText(), "47839699276046337");
});

Deno.test("node ids out of range are rejected", () => {
  for (const nodeId of [-1, 1024, 1.5, NaN]) {
    assert.throws(() => new UniqueIdGenerator({ nodeId }), RangeError, String(nodeId));
  }
  assert.equal(new UniqueIdGenerator({ nodeId: 1023 }).nodeId, 1023);
});

Deno.test("nodeIdFromEnv reads the number after the last hyphen", () => {
  assert.equal(nodeIdFromEnv("pgdog-prod-3"), 3);
  assert.equal(nodeIdFromEnv("7"), 7);
  assert.equal(nodeIdFromEnv("0"), 0);
  assert.equal(nodeIdFromEnv("pgdog-1023"), 1023);
  assert.equal(nodeIdFromEnv("pgdog-007"), 7);
  assert.equal(nodeIdFromEnv(" pgdog-12\n"), 12);
  // Unset or empty: node 0 (documented choice).
  assert.equal(nodeIdFromEnv(undefined), 0);
  assert.equal(nodeIdFromEnv(""), 0);
  for (const bad of ["pgdog", "pgdog-", "pgdog7", "pgdog-3a", "pgdog-1024", "-", "1e3", "-+1"]) {
    assert.throws(() => nodeIdFromEnv(bad), Error, bad);
  }
  assert.throws(() => nodeIdFromEnv("pgdog-1024"), /exceeds the maximum \(1023\)/);
  assert.throws(() => nodeIdFromEnv("pgdog"), /NODE_ID "pgdog" is not a node id/);
});

Deno.test("lanes: workers of one node never issue the same id", () => {
  const now = PGDOG_EPOCH + 5000;
  const lanes = [0, 1, 2].map((index) =>
    new UniqueIdGenerator({
      nodeId: 3,
      now: fakeClock([now, now, now, now + 1]).now,
      lane: {
        index,
        count: 3,
      },
    })
  );
  const seen = new Set<bigint>();
  for (const ids of lanes) {
    const issued = [ids.next(), ids.next(), ids.next(), ids.next()];
    assert.deepEqual(
      issued.map((id) => decodeUniqueId(id).sequence % 3),
      [0, 1, 2, 3].map(() => lanes.indexOf(ids)),
    );
    for (const id of issued) seen.add(id);
  }
  assert.equal(seen.size, 12);
  // A lane runs out after 4096 / count ids in one millisecond, then moves on.
  const clock = fakeClock([now, ...Array(2047).fill(now), now + 1]);
  const last = new UniqueIdGenerator({ nodeId: 0, now: clock.now, lane: { index: 1, count: 2 } });
  const ids = Array.from({ length: 2049 }, () => last.next());
  assert.equal(decodeUniqueId(ids[2047]).sequence, MAX_SEQUENCE);
  assert.equal(decodeUniqueId(ids[2048]).elapsed, 5001);
  assert.equal(decodeUniqueId(ids[2048]).sequence, 1);
  assert.throws(
    () => new UniqueIdGenerator({ nodeId: 0, lane: { index: 2, count: 2 } }),
    RangeError,
  );
});
