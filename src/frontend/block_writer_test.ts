import { deepEqual, equal } from "node:assert/strict";
import { Msg } from "../protocol/messages.ts";
import type { SocketWriter } from "../net/writer.ts";
import { BlockWriter } from "./block_writer.ts";

function msg(type: number, body: number[] = []): number[] {
  const len = body.length + 4;
  return [type, len >>> 24, (len >>> 16) & 255, (len >>> 8) & 255, len & 255, ...body];
}

/** Collects what reaches the client's writer. */
function sink(): { writer: SocketWriter; bytes: () => number[] } {
  const out: number[] = [];
  const writer = {
    enqueue: (d: Uint8Array) => out.push(...d),
    flush: () => Promise.resolve(),
    congested: false,
    error: null,
  } as unknown as SocketWriter;
  return { writer, bytes: () => out };
}

Deno.test("BlockWriter drops ReadyForQuery, passes the rest, notes errors, reframes pieces", async () => {
  const s = sink();
  const w = new BlockWriter(s.writer);
  const row = msg(Msg.DataRow, [0, 1, 0, 0, 0, 1, 55]);
  const done = msg(Msg.CommandComplete, [0x53, 0]);
  const ready = msg(Msg.ReadyForQuery, [0x54]);
  w.enqueue(Uint8Array.from([...row, ...done, ...ready]));
  deepEqual(s.bytes(), [...row, ...done]);
  equal(w.failed, false);
  // Messages split across writes arrive whole.
  const error = msg(Msg.ErrorResponse, [0x43, 0x78, 0, 0]);
  const both = [...error, ...ready, ...row];
  await w.write(Uint8Array.from(both.slice(0, 3)));
  w.enqueue(Uint8Array.from(both.slice(3, 12)));
  w.enqueue(Uint8Array.from(both.slice(12)));
  deepEqual(s.bytes(), [...row, ...done, ...error, ...row]);
  equal(w.failed, true);
  equal(w.target, s.writer);
});
