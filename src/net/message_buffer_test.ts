import { deepEqual, equal, throws } from "node:assert/strict";
import { MessageBuffer, MessageSizeError } from "./message_buffer.ts";
import type { ByteStream } from "./stream.ts";

/** A stream that returns the given chunks one read at a time. */
function chunks(...parts: number[][]): ByteStream {
  const queue = parts.map((p) => Uint8Array.from(p));
  return {
    read(p: Uint8Array): Promise<number | null> {
      const next = queue.shift();
      if (!next) return Promise.resolve(null);
      if (next.length > p.length) {
        p.set(next.subarray(0, p.length));
        queue.unshift(next.subarray(p.length));
        return Promise.resolve(p.length);
      }
      p.set(next);
      return Promise.resolve(next.length);
    },
    write: (p) => Promise.resolve(p.length),
    close: () => {},
  };
}

function msg(type: string, body: number[]): number[] {
  const len = body.length + 4;
  return [
    type.charCodeAt(0),
    len >>> 24,
    (len >>> 16) & 255,
    (len >>> 8) & 255,
    len & 255,
    ...body,
  ];
}

Deno.test("frames messages split across reads and batched in one read", async () => {
  const a = msg("Q", [65, 0]);
  const b = msg("S", []);
  const c = msg("P", new Array(20).fill(7));
  const stream = chunks(a.slice(0, 3), [...a.slice(3), ...b, ...c.slice(0, 8)], c.slice(8));
  const rb = new MessageBuffer(8, 1024);
  const seen: Array<[string, number]> = [];
  while (await rb.fill(stream)) {
    let size: number;
    while ((size = rb.nextMessageSize()) > 0) {
      seen.push([String.fromCharCode(rb.buf[rb.start]), size]);
      rb.consume(size);
    }
  }
  deepEqual(seen, [["Q", 7], ["S", 5], ["P", 25]]);
  equal(rb.available, 0);
});

Deno.test("offsets stay valid until the next fill, even with a partial message behind them", async () => {
  const a = msg("Q", [1, 2, 3]);
  const b = msg("Q", new Array(100).fill(9));
  const rb = new MessageBuffer(16, 1024);
  const stream = chunks([...a, ...b.slice(0, 6)], b.slice(6));
  await rb.fill(stream);
  const size = rb.nextMessageSize();
  const first = rb.buf.subarray(rb.start, rb.start + size);
  rb.start += size;
  equal(rb.nextMessageSize(), 0); // partial: must not move bytes yet
  deepEqual([...first], a);
  await rb.fill(stream);
  equal(rb.nextMessageSize(), 105);
});

Deno.test("refuses a declared length over the limit before buffering it", async () => {
  const rb = new MessageBuffer(16, 100);
  await rb.fill(chunks([0x51, 0, 0, 1, 0]));
  throws(() => rb.nextMessageSize(), MessageSizeError);
});

Deno.test("refuses lengths below 4 and negative lengths", async () => {
  for (const head of [[0x51, 0, 0, 0, 3], [0x51, 0x80, 0, 0, 0], [0x51, 0, 0, 0, 0]]) {
    const rb = new MessageBuffer(16, 1 << 30);
    await rb.fill(chunks(head));
    throws(() => rb.nextMessageSize(), MessageSizeError);
  }
});

Deno.test("grows for a large message and shrinks back once it is consumed", async () => {
  const big = msg("d", new Array(5000).fill(1));
  const rb = new MessageBuffer(64, 1 << 20);
  const stream = chunks(big);
  while (rb.nextMessageSize() === 0) await rb.fill(stream);
  equal(rb.nextMessageSize(), 5005);
  rb.consume(5005);
  equal(rb.buf.length, 64);
});

Deno.test("replace swaps complete messages in place, growing when needed", () => {
  const rb = new MessageBuffer(16, 1 << 20);
  rb.buf.set([...msg("S", []), ...msg("Q", [65, 0])]);
  rb.end = 12;
  rb.replace(0, 5, Uint8Array.from([...msg("Q", [66, 0]), ...msg("S", [])]));
  deepEqual([...rb.buf.subarray(rb.start, rb.end)], [
    ...msg("Q", [66, 0]),
    ...msg("S", []),
    ...msg("Q", [65, 0]),
  ]);
  equal(rb.end, 19);
  rb.replace(7, 12, Uint8Array.of());
  deepEqual([...rb.buf.subarray(0, rb.end)], [...msg("Q", [66, 0]), ...msg("Q", [65, 0])]);
});
