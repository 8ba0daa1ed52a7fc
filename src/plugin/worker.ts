/**
 * The entry of a plugin's Worker (`isolation = "worker"`): the same calls as the process runner,
 * over postMessage. Requests arrive as JSON text (cheaper to pass than objects).
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { callHook, describeError, loadGuest } from "./guest.ts";

let loaded: Awaited<ReturnType<typeof loadGuest>> | null = null;

self.onmessage = (event: MessageEvent<string>): void => {
  let request: { id: number; op: string; args: unknown[] };
  try {
    request = JSON.parse(event.data);
  } catch (e) {
    const id = Number(/^\{"id":(\d+)/.exec(event.data)?.[1] ?? 0);
    self.postMessage(JSON.stringify({ id, error: describeError(e) }));
    return;
  }
  if (request.op === "load") {
    loadGuest(request.args[0] as string).then(
      (guest) => {
        loaded = guest;
        self.postMessage(JSON.stringify({ id: request.id, ok: guest.hello }));
      },
      (e) =>
        self.postMessage(
          JSON.stringify({ id: request.id, error: e instanceof Error ? e.message : String(e) }),
        ),
    );
    return;
  }
  callHook(loaded!.plugin, request.op, request.args).then(
    (value) => self.postMessage(`{"id":${request.id},"ok":${JSON.stringify(value ?? null)}}`),
    (e) => self.postMessage(JSON.stringify({ id: request.id, error: describeError(e) })),
  );
};
