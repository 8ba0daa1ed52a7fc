import { deepEqual, equal, throws } from "node:assert/strict";
import { channelBuffer, openChannel, POSTED, Ring, STOP } from "./ring.ts";

function ring(capacity: number): Ring {
  return new Ring(new SharedArrayBuffer(Ring.byteLength(capacity)), 0, capacity);
}

Deno.test("a ring passes frames in order and is empty after them", () => {
  const r = ring(64);
  equal(r.empty, true);
  equal(r.read(), null);
  equal(r.write("one"), true);
  equal(r.write(""), true);
  equal(r.write("three"), true);
  equal(r.seq, 3);
  equal(r.empty, false);
  deepEqual([r.read(), r.read(), r.read(), r.read()], ["one", "", "three", null]);
  equal(r.empty, true);
});

Deno.test("a full ring refuses a frame until the reader frees room", () => {
  const r = ring(64);
  // 4 + 12 bytes each: four fill the ring exactly.
  for (let i = 0; i < 4; i++) equal(r.write(`frame ${i}....`), true);
  equal(r.write("x"), false);
  equal(r.seq, 4);
  equal(r.read(), "frame 0....");
  equal(r.write("x"), true);
  deepEqual([r.read(), r.read(), r.read(), r.read(), r.read()], [
    "frame 1....",
    "frame 2....",
    "frame 3....",
    "x",
    null,
  ]);
});

Deno.test("a frame that would cross the end starts over at the beginning", () => {
  const r = ring(64);
  equal(r.write("a".repeat(36)), true); // 40 bytes: 24 left before the end
  equal(r.read(), "a".repeat(36));
  // 4 + 28 bytes do not fit before the end, and do at the start.
  equal(r.write("b".repeat(28)), true);
  equal(r.write("c".repeat(4)), true);
  equal(r.read(), "b".repeat(28));
  equal(r.read(), "c".repeat(4));
  equal(r.read(), null);
  // Room at the end and at the start, but neither alone holds the frame.
  const q = ring(64);
  equal(q.write("d".repeat(28)), true);
  equal(q.read(), "d".repeat(28));
  equal(q.write("e".repeat(12)), true); // 32..48
  equal(q.write("f".repeat(30)), false); // 16 at the end, 32 at the start, 34 needed
  equal(q.read(), "e".repeat(12));
  equal(q.write("f".repeat(30)), true);
  equal(q.read(), "f".repeat(30));
});

Deno.test("a ring never takes a frame larger than itself", () => {
  const r = ring(64);
  equal(r.write("x".repeat(61)), false);
  equal(r.write("x".repeat(60)), true);
  equal(r.read(), "x".repeat(60));
  equal(r.empty, true);
});

Deno.test("frames of many sizes and UTF-8 text survive many laps of the ring", () => {
  const r = ring(1024);
  const pieces = ["a", "é", "✓", "😀", "\u0000", "漢字"];
  const queue: string[] = [];
  let seed = 7;
  const random = (n: number): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
  let published = 0;
  for (let i = 0; i < 20_000; i++) {
    if (queue.length === 0 || random(3) > 0) {
      const size = random(3) === 0 ? random(500) : random(20);
      let text = "";
      while (text.length < size) text += pieces[random(pieces.length)];
      if (r.write(text)) queue.push(text);
      else equal(queue.length > 0 || new TextEncoder().encode(text).length > 508, true);
    } else {
      equal(r.read(), queue.shift());
    }
    published = r.seq;
  }
  while (queue.length > 0) equal(r.read(), queue.shift());
  equal(r.read(), null);
  equal(published > 5_000, true);
});

Deno.test("head and tail counters wrap past 2^31 without losing frames", () => {
  const buffer = new SharedArrayBuffer(Ring.byteLength(64));
  const control = new Int32Array(buffer, 0, 3);
  // Just short of wrapping: both counters at 2^31 - 8 (as Int32).
  control[0] = control[1] = 2 ** 31 - 8;
  const r = new Ring(buffer, 0, 64);
  for (let i = 0; i < 40; i++) {
    equal(r.write(`lap ${i}`), true);
    equal(r.write(`lap ${i}!`), true);
    equal(r.read(), `lap ${i}`);
    equal(r.read(), `lap ${i}!`);
  }
  equal(control[0] < 0, true);
});

Deno.test("a channel lays out two rings and its flags in one buffer", () => {
  const buffer = channelBuffer(1024);
  const main = openChannel(buffer);
  const worker = openChannel(buffer);
  equal(main.requests.write("request"), true);
  equal(main.requests.write("x".repeat(1020)), false);
  equal(worker.answers.write("answer"), true);
  equal(worker.requests.read(), "request");
  equal(main.answers.read(), "answer");
  Atomics.store(main.flags, STOP, 1);
  Atomics.add(main.flags, POSTED, 2);
  deepEqual([...worker.flags], [1, 2]);
});

Deno.test("a waiting reader wakes when a frame is published", async () => {
  // A pending Atomics.waitAsync does not keep Deno's event loop alive: a timer does.
  const alive = setTimeout(() => {}, 10_000);
  const r = ring(64);
  const seen = r.seq;
  equal(await r.waitAsync(seen, 1), "timed-out");
  const woke = r.waitAsync(seen, 5_000);
  r.write("wake");
  r.notify();
  equal(await woke, "ok");
  equal(r.waitSync(seen, 0), "not-equal");
  clearTimeout(alive);
});

Deno.test("a length word that can't be a frame is refused, not read past the ring", () => {
  const buffer = new SharedArrayBuffer(Ring.byteLength(64));
  const r = new Ring(buffer, 0, 64);
  equal(r.write("ok"), true);
  // The writer is another thread (a plugin's): its words are not trusted.
  const lengths = new Int32Array(buffer, 16, 16);
  for (const bad of [1_000_000, -7, 61]) {
    lengths[0] = bad;
    throws(() => r.read(), RangeError);
  }
  lengths[0] = 2;
  equal(r.read(), "ok");
});
