/**
 * pgdog's side of a plugin sandbox: a Deno process started with exactly the plugin's permissions
 * (`isolation = "process"`), or a Worker with them (`isolation = "worker"`). Both carry JSON calls
 * with ids, so many are in flight at once, and give up on a call after its timeout.
 *
 * @module
 */

import type { Hello } from "./guest.ts";
import { FrameReader, FrameWriter } from "./frames.ts";

/** What a plugin may do, as `[[plugins]].permissions` grants it (resolved to absolute paths). */
export interface Grants {
  read: string[];
  write: string[];
  net: string[];
  env: string[];
  sys: boolean;
}

/** How to start a sandbox. */
export interface SandboxSpec {
  /** The plugin's name, for logs. */
  name: string;
  /** The module to import (a file URL or any specifier Deno imports). */
  specifier: string;
  /** The plugin's own folder (for a local module), readable by it. */
  folder: string | null;
  grants: Grants;
  /** Heap limit of a plugin process, in MiB. */
  memoryMb: number;
  /** Called with each line the plugin writes to stderr (or console). */
  onOutput: (line: string) => void;
}

/** A running sandbox. */
export interface Sandbox {
  /** What the plugin exports, once loaded. */
  readonly hello: Hello;
  /** Resolves when the sandbox has ended, with a description of how. */
  readonly ended: Promise<string>;
  /** Calls a hook; `argsJson` is the JSON text of its argument array. */
  call(op: string, argsJson: string, timeoutMs: number): Promise<unknown>;
  /** Stops it at once (a busy plugin too, for a process). */
  kill(): void;
}

/** A call that passed its timeout. */
export class PluginTimeout extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
    this.name = "PluginTimeout";
  }
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (e: Error) => void;
  /** Date.now() after which the call has failed. */
  deadline: number;
  timeoutMs: number;
  onTimeout: () => void;
}

/** How often calls in flight are checked against their deadlines (one timer, not one per call). */
const SWEEP_MS = 5;

/** Calls in flight over one channel, by id. */
class Calls {
  #next = 1;
  readonly #pending = new Map<number, Pending>();
  #sweep: ReturnType<typeof setInterval> | null = null;

  start(timeoutMs: number, onTimeout: () => void): { id: number; answer: Promise<unknown> } {
    const id = this.#next++;
    const answer = new Promise<unknown>((resolve, reject) => {
      const deadline = Date.now() + timeoutMs;
      this.#pending.set(id, { resolve, reject, deadline, timeoutMs, onTimeout });
    });
    this.#sweep ??= setInterval(() => this.#expire(), Math.min(SWEEP_MS, timeoutMs));
    return { id, answer };
  }

  #expire(): void {
    const now = Date.now();
    for (const [id, pending] of this.#pending) {
      if (pending.deadline >= now) continue;
      this.#pending.delete(id);
      pending.reject(new PluginTimeout(pending.timeoutMs));
      pending.onTimeout();
    }
    this.#idle();
  }

  #idle(): void {
    if (this.#pending.size > 0 || this.#sweep === null) return;
    clearInterval(this.#sweep);
    this.#sweep = null;
  }

  settle(text: string): void {
    const message = JSON.parse(text) as { id: number; ok?: unknown; error?: string };
    const pending = this.#pending.get(message.id);
    if (pending === undefined) return;
    this.#pending.delete(message.id);
    if (message.error !== undefined) pending.reject(new Error(message.error));
    else pending.resolve(message.ok ?? null);
    // The sweep stays while calls keep coming; it stops at its next run once none is left.
  }

  failAll(why: string): void {
    for (const pending of this.#pending.values()) pending.reject(new Error(why));
    this.#pending.clear();
    this.#idle();
  }
}

const RUNNER = new URL("./runner.ts", import.meta.url);
const WORKER = new URL("./worker.ts", import.meta.url);
const CONFIG = new URL("../../deno.json", import.meta.url);
/** How long a sandbox may take to load its plugin. */
const LOAD_TIMEOUT_MS = 30_000;

/** The `deno run` flags that grant a plugin process what its configuration allows, no more. */
export function permissionFlags(spec: Pick<SandboxSpec, "folder" | "grants">): string[] {
  const g = spec.grants;
  const read = spec.folder === null ? [...g.read] : [spec.folder, ...g.read];
  const flags = ["--no-prompt"];
  if (read.length > 0) flags.push(`--allow-read=${read.join(",")}`);
  if (g.write.length > 0) flags.push(`--allow-write=${g.write.join(",")}`);
  if (g.net.length > 0) flags.push(`--allow-net=${g.net.join(",")}`);
  if (g.env.length > 0) flags.push(`--allow-env=${g.env.join(",")}`);
  if (g.sys) flags.push("--allow-sys");
  return flags;
}

/**
 * The Deno to run plugins with: this one, when pgdog may run it by path; else `deno` from PATH
 * (what `--allow-run=deno` grants).
 */
function denoCommand(): string {
  const path = Deno.execPath();
  const allowed = Deno.permissions.querySync({ name: "run", command: path }).state === "granted";
  return allowed ? path : "deno";
}

/** Starts a plugin in its own Deno process and waits until the module is loaded. */
export async function startProcess(spec: SandboxSpec): Promise<Sandbox> {
  const args = ["run", "--quiet", ...permissionFlags(spec)];
  args.push(`--v8-flags=--max-old-space-size=${spec.memoryMb}`);
  try {
    if (CONFIG.protocol === "file:" && Deno.statSync(CONFIG).isFile) {
      args.push(`--config=${CONFIG.pathname}`);
    }
  } catch {
    // No configuration beside pgdog (an installed copy): plugins use full specifiers.
  }
  args.push(RUNNER.href, spec.specifier);
  const child = new Deno.Command(denoCommand(), {
    args,
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const calls = new Calls();
  const stdinWriter = child.stdin.getWriter();
  const stdin = new FrameWriter((bytes) => stdinWriter.write(bytes));
  let alive = true;
  const kill = (): void => {
    if (!alive) return;
    alive = false;
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  };
  let hello: (value: unknown) => void = () => {};
  let helloFailed: (e: Error) => void = () => {};
  const loaded = new Promise<unknown>((resolve, reject) => {
    hello = resolve;
    helloFailed = reject;
  });
  const reader = new FrameReader();
  const readLoop = (async () => {
    try {
      for await (const chunk of child.stdout) {
        for (const text of reader.push(chunk)) {
          if (text.startsWith('{"id":0,')) {
            const m = JSON.parse(text) as { ok?: Hello; error?: string };
            if (m.error !== undefined) helloFailed(new Error(m.error));
            else hello(m.ok);
          } else calls.settle(text);
        }
      }
    } catch {
      // The process is gone; `ended` says how.
    }
  })();
  let outOfMemory = false;
  const output = pipeLines(child.stderr, (line) => {
    if (line.includes("out of memory")) outOfMemory = true;
    spec.onOutput(line);
  });
  const ended = child.status.then(async (status) => {
    alive = false;
    await readLoop;
    await output;
    const how = outOfMemory
      ? `ran out of memory (memory_mb = ${spec.memoryMb})`
      : status.signal !== null
      ? `was killed (${status.signal})`
      : `exited with code ${status.code}`;
    calls.failAll(`the plugin process ${how}`);
    helloFailed(new Error(`the plugin process ${how} before it loaded`));
    return how;
  });
  const timer = setTimeout(() => {
    helloFailed(new Error(`the plugin did not load within ${LOAD_TIMEOUT_MS} ms`));
    kill();
  }, LOAD_TIMEOUT_MS);
  try {
    const answer = await loaded as Hello;
    return {
      hello: answer,
      ended,
      call(op, argsJson, timeoutMs) {
        if (!alive) return Promise.reject(new Error("the plugin process has ended"));
        const { id, answer } = calls.start(timeoutMs, kill);
        stdin.send(`{"id":${id},"op":"${op}","args":${argsJson}}`);
        return answer;
      },
      kill,
    };
  } catch (e) {
    kill();
    await ended;
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** Starts a plugin in a Worker with its permissions and waits until the module is loaded. */
export async function startWorker(spec: SandboxSpec): Promise<Sandbox> {
  const g = spec.grants;
  const read = spec.folder === null ? [...g.read] : [spec.folder, ...g.read];
  const worker = new Worker(WORKER.href, {
    type: "module",
    name: `plugin ${spec.name}`,
    deno: {
      permissions: {
        read: read.length > 0 ? read : false,
        write: g.write.length > 0 ? g.write : false,
        net: g.net.length > 0 ? g.net : false,
        env: g.env.length > 0 ? g.env : false,
        sys: g.sys,
        run: false,
        ffi: false,
      },
    },
  });
  const calls = new Calls();
  let alive = true;
  let endedWith: (how: string) => void = () => {};
  const ended = new Promise<string>((resolve) => endedWith = resolve);
  const end = (how: string): void => {
    if (!alive) return;
    alive = false;
    worker.terminate();
    calls.failAll(`the plugin worker ${how}`);
    endedWith(how);
  };
  worker.onmessage = (event: MessageEvent<string>) => calls.settle(event.data);
  worker.onerror = (event: ErrorEvent) => {
    event.preventDefault();
    spec.onOutput(`uncaught: ${event.message}`);
    end("failed with an uncaught error");
  };
  const send = (op: string, argsJson: string, timeoutMs: number): Promise<unknown> => {
    if (!alive) return Promise.reject(new Error("the plugin worker has ended"));
    const { id, answer } = calls.start(
      timeoutMs,
      () => end(`gave no answer within ${timeoutMs} ms`),
    );
    worker.postMessage(`{"id":${id},"op":"${op}","args":${argsJson}}`);
    return answer;
  };
  try {
    const hello = await send("load", JSON.stringify([spec.specifier]), LOAD_TIMEOUT_MS) as Hello;
    return { hello, ended, call: send, kill: () => end("was stopped") };
  } catch (e) {
    end("failed to load");
    throw e;
  }
}

/** Passes each line of a byte stream to `onLine`, until the stream ends. */
async function pipeLines(
  stream: ReadableStream<Uint8Array>,
  onLine: (line: string) => void,
): Promise<void> {
  const decoder = new TextDecoder();
  let rest = "";
  try {
    for await (const chunk of stream) {
      rest += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = rest.indexOf("\n")) >= 0) {
        const line = rest.slice(0, nl).trimEnd();
        rest = rest.slice(nl + 1);
        if (line !== "") onLine(line);
      }
      if (rest.length > 8192) {
        onLine(rest);
        rest = "";
      }
    }
  } catch {
    // The process is gone.
  }
  if (rest.trim() !== "") onLine(rest.trimEnd());
}
