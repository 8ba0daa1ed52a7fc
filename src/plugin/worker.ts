/**
 * The entry of a plugin's Worker (`isolation = "worker"`): the same calls as the process runner.
 * pgdog first posts a SharedArrayBuffer (./ring.ts) and the load request; once the plugin is
 * loaded, calls arrive as JSON text frames in the request ring, and answers go back in the answer
 * ring. The Worker sleeps in `Atomics.wait` between calls (a wake-up costs a fraction of a
 * message's), and lets its event loop run whenever a hook is async, a request came by postMessage
 * (too large for the ring), or it has been idle a while (so the plugin's own timers run).
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { describeError, invokeHook, loadGuest } from "./guest.ts";
import type { Plugin } from "./api.ts";
import { type Channel, openChannel, POSTED, STOP } from "./ring.ts";

/** How long the Worker sleeps in `Atomics.wait` before it lets its event loop run once. */
const IDLE_WAIT_MS = 20;
/** How long a turn of the event loop may last when idle (a request ends it at once). */
const YIELD_MS = 1;
/**
 * How long the Worker watches for the next request after answering before it sleeps: a client's
 * next statement often comes sooner than a sleeping thread wakes up.
 */
const SPIN_MS = 0.05;
/** Microtask turns given to async hooks before waiting in the event loop (most need a few). */
const MICROTASK_TURNS = 8;

let channel: Channel | null = null;
let plugin: Plugin | null = null;
/** Requests taken from postMessage, against the channel's count of those posted. */
let taken = 0;
/** Resolves the serving loop's wait for a posted request. */
let tookMessage: (() => void) | null = null;
/** Answers written to the ring since the reader was last woken. */
let unannounced = 0;
/** Some answer was sent since the serving loop last slept (so another request may be near). */
let answered = false;
/** Hook calls that returned a promise and have not settled. */
let inFlight = 0;
/** Resolves the serving loop's wait while async hooks are in flight, when the last settles. */
let allSettled: (() => void) | null = null;

/** Sends one answer: in the ring, or by postMessage when it does not fit there. */
function reply(json: string): void {
  answered = true;
  if (channel?.answers.write(json)) unannounced++;
  else self.postMessage(json);
}

/** Wakes pgdog's reader for the answers written since it was last woken. */
function announce(): void {
  if (unannounced === 0) return;
  unannounced = 0;
  channel!.answers.notify();
}

function ok(id: number, value: unknown): void {
  let json: string;
  try {
    json = `{"id":${id},"ok":${JSON.stringify(value ?? null)}}`;
  } catch (e) {
    json = JSON.stringify({ id, error: describeError(e) });
  }
  reply(json);
}

function failed(id: number, e: unknown): void {
  reply(JSON.stringify({ id, error: describeError(e) }));
}

/** An async hook's answer, sent as soon as it settles. */
function settled(): void {
  inFlight--;
  announce();
  if (inFlight === 0) allSettled?.();
}

/** Answers one request; a synchronous hook at once, an async one when it settles. */
function handle(text: string): void {
  let request: { id: number; op: string; args: unknown[] };
  try {
    request = JSON.parse(text);
  } catch (e) {
    failed(Number(/^\{"id":(\d+)/.exec(text)?.[1] ?? 0), e);
    return;
  }
  const id = request.id;
  let value: unknown;
  try {
    value = invokeHook(plugin!, request.op, request.args);
  } catch (e) {
    failed(id, e);
    return;
  }
  if (!(value instanceof Promise)) {
    ok(id, value);
    return;
  }
  inFlight++;
  value.then((v) => {
    ok(id, v);
    settled();
  }, (e) => {
    failed(id, e);
    settled();
  });
}

/** Answers after which the Worker sleeps without watching, since the last watch found nothing. */
let skipSpins = 0;
/** The next value of skipSpins after a watch that finds nothing (doubles, up to 64). */
let spinBackoff = 1;

/**
 * Watches the request ring for up to {@linkcode SPIN_MS}; true when a request came. Adaptive:
 * when requests come further apart than that (many clients, spread out), a watch only burns CPU
 * that PostgreSQL and pgdog need, so after each that finds nothing the next few are skipped.
 */
function spin(c: Channel, seen: number): boolean {
  if (skipSpins > 0) {
    skipSpins--;
    return false;
  }
  const until = performance.now() + SPIN_MS;
  while (performance.now() < until) {
    if (c.requests.seq !== seen) {
      spinBackoff = 1;
      return true;
    }
  }
  skipSpins = spinBackoff;
  spinBackoff = Math.min(spinBackoff * 2, 64);
  return false;
}

/** Waits in the event loop (where async hooks and their timers run) while any is in flight. */
async function awaitHooks(c: Channel, seen: number): Promise<void> {
  for (let turn = 0; turn < MICROTASK_TURNS && inFlight > 0; turn++) await null;
  if (inFlight === 0) return;
  // A request or the last hook to settle ends the wait.
  const request = c.requests.waitAsync(seen, IDLE_WAIT_MS).then(() => true);
  const hooks = new Promise<boolean>((resolve) => allSettled = () => resolve(false));
  const woken = await Promise.race([request, hooks]);
  allSettled = null;
  // Wakes the waiter left behind, so pgdog's next notify finds no one to post a task to.
  if (!woken) c.requests.notify();
}

/** Takes requests from the ring until pgdog sets the stop word. */
async function serve(c: Channel): Promise<void> {
  for (;;) {
    // Read before the ring is drained: a request written after it changes the word, so the
    // waits below return at once instead of sleeping through it.
    const seen = c.requests.seq;
    if (Atomics.load(c.flags, STOP) !== 0) break;
    for (let text = c.requests.read(); text !== null; text = c.requests.read()) handle(text);
    announce();
    if (Atomics.load(c.flags, POSTED) !== taken) {
      // A request too large for the ring waits in the message queue (onmessage takes it).
      await new Promise<void>((resolve) => tookMessage = resolve);
      tookMessage = null;
    } else if (inFlight > 0) {
      await awaitHooks(c, seen);
    } else {
      const busy = answered;
      answered = false;
      if (busy && spin(c, seen)) continue;
      if (c.requests.waitSync(seen, IDLE_WAIT_MS) === "timed-out") {
        // Idle: one turn of the event loop, for the plugin's own timers and intervals.
        await c.requests.waitAsync(seen, YIELD_MS);
      }
    }
  }
  self.close();
}

self.onmessage = (event: MessageEvent<string | SharedArrayBuffer>): void => {
  if (typeof event.data !== "string") {
    channel = openChannel(event.data);
    return;
  }
  const text = event.data;
  if (plugin !== null) {
    // A request that did not fit in the ring.
    taken++;
    handle(text);
    announce();
    tookMessage?.();
    return;
  }
  // The load request, and its answer, go by postMessage.
  let request: { id: number; op: string; args: unknown[] };
  try {
    request = JSON.parse(text);
  } catch (e) {
    self.postMessage(JSON.stringify({ id: 0, error: describeError(e) }));
    return;
  }
  loadGuest(request.args[0] as string, { loadOnly: request.args[1] as string[] }).then(
    (guest) => {
      plugin = guest.plugin;
      self.postMessage(JSON.stringify({ id: request.id, ok: guest.hello }));
      if (channel !== null) serve(channel);
    },
    (e) =>
      self.postMessage(
        JSON.stringify({ id: request.id, error: e instanceof Error ? e.message : String(e) }),
      ),
  );
};
