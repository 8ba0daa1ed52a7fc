import { deepEqual, equal, rejects } from "node:assert/strict";
import { SocketWriter } from "./writer.ts";
import type { ByteStream } from "./stream.ts";

/** A sink that accepts at most `max` bytes per write call, slowly. */
function sink(max: number): ByteStream & { data: number[] } {
  const data: number[] = [];
  return {
    data,
    read: () => Promise.resolve(null),
    async write(p: Uint8Array): Promise<number> {
      await new Promise((r) => setTimeout(r, 1));
      const n = Math.min(max, p.length);
      data.push(...p.subarray(0, n));
      return n;
    },
    close: () => {},
  };
}

Deno.test("keeps order across direct writes and queued copies, with partial writes", async () => {
  const s = sink(3);
  const w = new SocketWriter(s);
  const a = Uint8Array.of(1, 2, 3, 4, 5);
  const first = w.write(a);
  w.enqueue(Uint8Array.of(6, 7));
  const scratch = Uint8Array.of(8, 9);
  w.enqueue(scratch);
  scratch.fill(0); // enqueue copied it
  const last = w.write(Uint8Array.of(10));
  await Promise.all([first, last, w.flush()]);
  deepEqual(s.data, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  equal(w.bytesWritten, 10);
});

Deno.test("a write error is remembered and fails later writes", async () => {
  const broken: ByteStream = {
    read: () => Promise.resolve(null),
    write: () => Promise.reject(new Deno.errors.BrokenPipe("gone")),
    close: () => {},
  };
  const w = new SocketWriter(broken);
  await rejects(w.write(Uint8Array.of(1)), Deno.errors.BrokenPipe);
  await rejects(w.write(Uint8Array.of(2)), Deno.errors.BrokenPipe);
  w.enqueue(Uint8Array.of(3)); // dropped quietly
  await rejects(w.flush(), Deno.errors.BrokenPipe);
});
