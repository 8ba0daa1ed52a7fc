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
  const request = JSON.parse(event.data) as { id: number; op: string; args: unknown[] };
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
