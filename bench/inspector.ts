/**
 * Just enough of the V8 inspector protocol to ask a Deno process started with
 * `--inspect=127.0.0.1:PORT` for a full garbage collection and its JavaScript heap usage, so that
 * memory held per idle client can be told apart from garbage not yet collected.
 *
 * @module
 */

import { sleep } from "../tests/harness/mod.ts";

/** JavaScript heap usage of the inspected process, in bytes. */
export interface HeapUsage {
  /** Bytes in live objects (after the collection, when one was asked for). */
  usedSize: number;
  /** Bytes the heap has reserved. */
  totalSize: number;
  /**
   * Bytes of ArrayBuffer backing stores (outside the heap: read buffers and such), when this V8
   * reports it.
   */
  backingStorageSize?: number;
}

/** A connected inspector session. */
export interface InspectorSession {
  /** Runs a full garbage collection and returns the heap usage after it. */
  collectAndMeasure(): Promise<HeapUsage>;
  /** Takes a heap snapshot (after a full collection) and returns its JSON text. */
  heapSnapshot(): Promise<string>;
  /** Closes the session. */
  close(): void;
}

/** Connects to the inspector listening on `port` (retrying while it starts). */
export async function connectInspector(port: number): Promise<InspectorSession> {
  let url: string | undefined;
  const deadline = Date.now() + 10_000;
  while (!url && Date.now() < deadline) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/json/list`);
      const targets = await res.json() as Array<{ webSocketDebuggerUrl?: string }>;
      url = targets.find((t) => t.webSocketDebuggerUrl)?.webSocketDebuggerUrl;
    } catch {
      // Not listening yet.
    }
    if (!url) await sleep(100);
  }
  if (!url) throw new Error(`no inspector target on port ${port}`);
  const ws = new WebSocket(url);
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error(`cannot open ${url}`));
  });
  let nextId = 1;
  const chunks: string[] = [];
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  ws.onmessage = (event) => {
    const msg = JSON.parse(String(event.data)) as {
      id?: number;
      method?: string;
      params?: { chunk?: string };
      result?: unknown;
      error?: { message: string };
    };
    if (msg.method === "HeapProfiler.addHeapSnapshotChunk") chunks.push(msg.params?.chunk ?? "");
    if (msg.id === undefined) return;
    const waiter = pending.get(msg.id);
    pending.delete(msg.id);
    if (msg.error) waiter?.reject(new Error(msg.error.message));
    else waiter?.resolve(msg.result);
  };
  const call = (method: string, params: Record<string, unknown> = {}): Promise<unknown> => {
    const id = nextId++;
    ws.send(JSON.stringify({ id, method, params }));
    return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
  };
  return {
    async collectAndMeasure(): Promise<HeapUsage> {
      await call("HeapProfiler.collectGarbage");
      const usage = await call("Runtime.getHeapUsage") as HeapUsage;
      return {
        usedSize: usage.usedSize,
        totalSize: usage.totalSize,
        backingStorageSize: usage.backingStorageSize,
      };
    },
    async heapSnapshot(): Promise<string> {
      chunks.length = 0;
      await call("HeapProfiler.collectGarbage");
      await call("HeapProfiler.takeHeapSnapshot", { reportProgress: false });
      const text = chunks.join("");
      chunks.length = 0;
      return text;
    },
    close(): void {
      ws.close();
    },
  };
}
