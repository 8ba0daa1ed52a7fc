import { deepEqual, equal } from "node:assert/strict";
import { Action, endsWithReady, Expect, ResponseQueue } from "./response_queue.ts";

function kinds(q: ResponseQueue): number[] {
  return Array.from({ length: q.length }, (_, n) => q.kindAt(n));
}

Deno.test("keeps order across growth and wrap-around", () => {
  const q = new ResponseQueue();
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 40; i++) q.push(Expect.Parse + (i % 3), Action.Forward);
    for (let i = 0; i < 40; i++) {
      equal(q.headKind, Expect.Parse + (i % 3));
      q.shift();
    }
  }
  equal(q.length, 0);
  equal(q.headKind, 0);
});

Deno.test("after an error, entries before the next Sync are dropped, locals included", () => {
  const q = new ResponseQueue();
  q.push(Expect.Bind, Action.Forward);
  q.push(Expect.Local, Action.Forward, Uint8Array.of(0x31, 0, 0, 0, 4));
  q.push(Expect.Execute, Action.Forward);
  q.push(Expect.Sync, Action.Forward);
  q.push(Expect.Parse, Action.Forward);
  equal(q.dropUntilSync(), true);
  deepEqual(kinds(q), [Expect.Sync, Expect.Parse]);
  const open = new ResponseQueue();
  open.push(Expect.Execute, Action.Forward);
  equal(open.dropUntilSync(), false);
  equal(open.length, 0);
});

Deno.test("COPY FROM STDIN: Syncs before the copy's end are removed, later ones kept", () => {
  const q = new ResponseQueue();
  q.push(Expect.Execute, Action.Forward);
  q.push(Expect.Sync, Action.Forward);
  q.push(Expect.CopyEnd, Action.Forward);
  q.push(Expect.Sync, Action.Forward);
  equal(q.removeSyncsBeforeCopyEnd(), 1);
  deepEqual(kinds(q), [Expect.Execute, Expect.CopyEnd, Expect.Sync]);
  equal(q.headAction, Action.Forward);
});

Deno.test("which entries end with ReadyForQuery", () => {
  deepEqual(
    [Expect.Query, Expect.Function, Expect.Sync, Expect.Parse, Expect.Execute, Expect.Local].map(
      endsWithReady,
    ),
    [true, true, true, false, false, false],
  );
});
