/**
 * pgdog's side of a plugin sandbox: a Deno process started with exactly the plugin's permissions
 * (`isolation = "process"`), or a Worker with them (`isolation = "worker"`). Both carry JSON calls
 * with ids, so many are in flight at once, and give up on a call after its timeout.
 *
 * @module
 */

import type { Hello } from "./guest.ts";
import { FrameReader, FrameWriter } from "./frames.ts";
import { writeAll } from "../net/stream.ts";
import { channelBuffer, openChannel, POSTED, STOP } from "./ring.ts";
import { errorMessage } from "../log.ts";

/** What a plugin may do, as `[[plugins]].permissions` grants it (resolved to absolute paths). */
export interface Grants {
  read: string[];
  write: string[];
  net: string[];
  env: string[];
  /** Hosts it may import modules from, besides {@linkcode DEFAULT_IMPORT_HOSTS}. */
  import: string[];
  sys: boolean;
}

/**
 * The hosts Deno lets any program import from when it is given no `--allow-import`; an
 * `--allow-import` list replaces them, so a plugin granted more keeps these too.
 */
export const DEFAULT_IMPORT_HOSTS: readonly string[] = [
  "deno.land:443",
  "jsr.io:443",
  "esm.sh:443",
  "cdn.jsdelivr.net:443",
  "raw.githubusercontent.com:443",
  "gist.githubusercontent.com:443",
];

/** How to start a sandbox. */
export interface SandboxSpec {
  /** The plugin's name, for logs. */
  name: string;
  /** The module to import (a file URL or any specifier Deno imports). */
  specifier: string;
  /** The plugin's own folder (for a local module), readable by it. */
  folder: string | null;
  grants: Grants;
  /**
   * Import grants for loading only, given up once the module is loaded (so its code cannot carry
   * data out in an import's URL): Deno's default hosts and the host of a module given by URL,
   * those `permissions.import` names aside.
   */
  loadOnly: string[];
  /** Heap limit of a plugin process, in MiB. */
  memoryMb: number;
  /** Called with each line the plugin writes to stderr (or console). */
  onOutput: (line: string) => void;
  /** A process talks over its stdin and stdout even when pgdog could listen on loopback. */
  pipes?: boolean;
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
  /** False once it was stopped or has ended (before `ended` settles, too). */
  readonly alive: boolean;
  /** How calls travel: "loopback" (a TCP connection), "pipes" (stdin/stdout), "shared memory". */
  readonly channel: string;
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

  /** Settles the call an answer frame names; throws when the frame is not an answer. */
  settle(text: string): void {
    let message: { id: number; ok?: unknown; error?: string };
    try {
      message = JSON.parse(text);
    } catch {
      throw new Error(`sent an unreadable answer: ${text.slice(0, 80)}`);
    }
    const pending = this.#pending.get(message.id);
    if (pending === undefined) return;
    this.#pending.delete(message.id);
    if (message.error !== undefined) pending.reject(new Error(message.error));
    else pending.resolve(message.ok ?? null);
    // The sweep stays while calls keep coming; it stops at its next run once none is left.
  }

  /** Calls waiting for their answer. */
  get pending(): number {
    return this.#pending.size;
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

/**
 * The `deno run` flags that grant a plugin process what its configuration allows, no more, plus
 * the loopback port it talks to pgdog over (`channel`), where pgdog accepts only its connection.
 */
export function permissionFlags(
  spec: Pick<SandboxSpec, "folder" | "grants">,
  options: { channel?: number } = {},
): string[] {
  const g = spec.grants;
  const read = spec.folder === null ? [...g.read] : [spec.folder, ...g.read];
  const net = options.channel === undefined ? g.net : [...g.net, `127.0.0.1:${options.channel}`];
  const flags = ["--no-prompt"];
  if (read.length > 0) flags.push(`--allow-read=${read.join(",")}`);
  if (g.write.length > 0) flags.push(`--allow-write=${g.write.join(",")}`);
  if (net.length > 0) flags.push(`--allow-net=${net.join(",")}`);
  if (g.env.length > 0) flags.push(`--allow-env=${g.env.join(",")}`);
  if (g.import.length > 0) {
    flags.push(`--allow-import=${[...DEFAULT_IMPORT_HOSTS, ...g.import].join(",")}`);
  }
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

/**
 * A loopback listener for one plugin process: a socket read with `conn.read` into a reused buffer
 * costs a fraction of the child's pipes (web streams here; stdin read on a blocking thread there).
 * Null when pgdog may not listen on loopback: the plugin then talks over pipes.
 */
function channelListener(): Deno.TcpListener | null {
  try {
    return Deno.listen({ hostname: "127.0.0.1", port: 0 });
  } catch {
    return null;
  }
}

/** Length of the token a plugin process sends first on its channel (a UUID and a newline). */
const TOKEN_BYTES = 37;

/**
 * The first connection to `listener` that sends `token` first: any other local process may
 * connect to a loopback port, only the plugin process was given the token (on its stdin).
 * Resolves with the connection and the bytes that followed the token.
 */
export function acceptChannel(
  listener: Deno.TcpListener,
  token: string,
): Promise<{ conn: Deno.TcpConn; rest: Uint8Array }> {
  const expected = new TextEncoder().encode(`${token}\n`);
  return new Promise((resolve, reject) => {
    let done = false;
    const check = async (conn: Deno.TcpConn): Promise<void> => {
      const buf = new Uint8Array(64 * 1024);
      let got = 0;
      const giveUp = setTimeout(() => conn.close(), 5_000);
      try {
        while (got < TOKEN_BYTES) {
          const n = await conn.read(buf.subarray(got));
          if (n === null) throw new Error("closed");
          got += n;
        }
        clearTimeout(giveUp);
        if (done || expected.some((byte, i) => buf[i] !== byte)) throw new Error("wrong token");
        done = true;
        conn.setNoDelay(true);
        resolve({ conn, rest: buf.slice(TOKEN_BYTES, got) });
      } catch {
        clearTimeout(giveUp);
        try {
          conn.close();
        } catch {
          // Closed by the timer.
        }
      }
    };
    (async () => {
      try {
        for (;;) check(await listener.accept());
      } catch (e) {
        if (!done) reject(e);
      }
    })();
  });
}

/** pgdog's own folder (null when pgdog is not run from files). */
const PGDOG_ROOT = CONFIG.protocol === "file:"
  ? decodeURIComponent(new URL(".", CONFIG).pathname).replace(/\/$/, "")
  : null;

/** A local plugin's own Deno project: its deno.json, and the lockfile beside it if any. */
export interface OwnProject {
  config: string;
  lock: string | null;
}

/**
 * The project of a local plugin: the nearest deno.json (or deno.jsonc) above its folder, the one
 * its own `deno test` uses. Null for a plugin in pgdog's folder (pgdog's workspace has it), for one
 * with none, and where pgdog may not look.
 */
export function ownProject(folder: string | null): OwnProject | null {
  for (let dir = folder; dir !== null;) {
    if (PGDOG_ROOT !== null && (dir === PGDOG_ROOT || dir.startsWith(`${PGDOG_ROOT}/`))) {
      return null;
    }
    for (const name of ["deno.json", "deno.jsonc"]) {
      try {
        if (Deno.statSync(`${dir}/${name}`).isFile) {
          return { config: `${dir}/${name}`, lock: fileOrNull(`${dir}/deno.lock`) };
        }
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) return null;
      }
    }
    dir = dir === "/" ? null : dir.slice(0, dir.lastIndexOf("/")) || "/";
  }
  return null;
}

function fileOrNull(path: string): string | null {
  try {
    return Deno.statSync(path).isFile ? path : null;
  } catch {
    return null;
  }
}

/**
 * The `deno run` flags that choose a plugin process's configuration: its own project's deno.json
 * and lockfile (used as it is: `--frozen`), else pgdog's deno.json without its lockfile. npm
 * packages come from Deno's cache either way, never installed into a node_modules folder.
 */
function configFlags(folder: string | null): string[] {
  const flags = ["--node-modules-dir=none"];
  const own = ownProject(folder);
  if (own !== null) {
    flags.push(`--config=${own.config}`, own.lock !== null ? "--frozen" : "--no-lock");
    return flags;
  }
  // pgdog's lockfile is not the sandbox's to write. Without a deno.json beside pgdog (an installed
  // copy), plugins use full specifiers.
  flags.push("--no-lock");
  const pgdogConfig = CONFIG.protocol === "file:" ? fileOrNull(CONFIG.pathname) : null;
  if (pgdogConfig !== null) flags.push(`--config=${pgdogConfig}`);
  return flags;
}

/** Starts a plugin in its own Deno process and waits until the module is loaded. */
export async function startProcess(spec: SandboxSpec): Promise<Sandbox> {
  const channel = spec.pipes ? null : channelListener();
  const port = channel === null ? undefined : (channel.addr as Deno.NetAddr).port;
  const args = ["run", "--quiet", ...permissionFlags(spec, { channel: port })];
  args.push(`--v8-flags=--max-old-space-size=${spec.memoryMb}`);
  args.push(...configFlags(spec.folder));
  args.push(RUNNER.href, spec.specifier);
  // Revoking 127.0.0.1:<port> would also revoke a grant of all of 127.0.0.1.
  const covered = spec.grants.net.some((n) => n === "127.0.0.1" || n === `127.0.0.1:${port}`);
  args.push(port === undefined ? "pipes" : String(port), covered ? "keep" : "revoke");
  args.push(...spec.loadOnly);
  const child = new Deno.Command(denoCommand(), {
    args,
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const calls = new Calls();
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
  const timer = setTimeout(() => {
    helloFailed(new Error(`the plugin did not load within ${LOAD_TIMEOUT_MS} ms`));
    kill();
  }, LOAD_TIMEOUT_MS);
  const reader = new FrameReader();
  const received = (chunk: Uint8Array): void => {
    try {
      for (const text of reader.push(chunk)) {
        if (text.startsWith('{"id":0,')) {
          const m = JSON.parse(text) as { ok?: Hello; error?: string };
          if (m.error !== undefined) helloFailed(new Error(m.error));
          else hello(m.ok);
        } else calls.settle(text);
      }
    } catch (e) {
      const why = errorMessage(e);
      throw new Error(why.startsWith("sent") ? why : `sent an unreadable answer: ${why}`);
    }
  };
  /** Why pgdog ended the process itself (an unreadable answer), for `ended`. */
  let misbehaved: string | null = null;
  let outOfMemory = false;
  const onLine = (line: string): void => {
    if (line.includes("out of memory")) outOfMemory = true;
    spec.onOutput(line);
  };
  const output = pipeLines(child.stderr, onLine);
  /** A read that failed: the process is gone, or it sent what is not an answer (then it goes). */
  const unreadable = (e: unknown): void => {
    if (!alive || !(e instanceof Error) || !e.message.startsWith("sent an unreadable")) return;
    misbehaved = e.message;
    kill();
  };
  let send: FrameWriter;
  let readLoop: Promise<void>;
  let closeChannel = (): void => {};
  if (channel === null) {
    const stdinWriter = child.stdin.getWriter();
    // A copy: the stream may hold the bytes after the write resolves, and the writer reuses them.
    send = new FrameWriter((bytes) => stdinWriter.write(bytes.slice()));
    readLoop = (async () => {
      try {
        for await (const chunk of child.stdout) received(chunk);
      } catch (e) {
        unreadable(e);
      }
    })();
  } else {
    // What the plugin prints on stdout (the runner sends console output to stderr) is logged too.
    const printed = pipeLines(child.stdout, onLine);
    const token = crypto.randomUUID();
    const stdin = child.stdin.getWriter();
    stdin.write(new TextEncoder().encode(`${token}\n`)).then(() => stdin.close()).catch(() => {});
    const connected = await Promise.race([
      acceptChannel(channel, token).catch(() => null),
      child.status.then(() => null),
      loaded.then(() => null, () => null),
    ]);
    // The listener stays open (accepting nothing more) while the process lives, so the port it
    // may connect to stays pgdog's.
    const conn = connected?.conn ?? null;
    closeChannel = () => {
      channel.close();
      conn?.close();
    };
    send = new FrameWriter((bytes) =>
      conn === null ? Promise.reject(new Error("not connected")) : writeAll(conn, bytes)
    );
    readLoop = (async () => {
      if (connected !== null) {
        const buf = new Uint8Array(64 * 1024);
        try {
          received(connected.rest);
          for (;;) {
            const n = await connected.conn.read(buf);
            if (n === null) break;
            received(buf.subarray(0, n));
          }
        } catch (e) {
          unreadable(e);
        }
      }
      await printed;
    })();
  }
  const ended = child.status.then(async (status) => {
    alive = false;
    try {
      closeChannel();
    } catch {
      // Closed already.
    }
    await readLoop;
    await output;
    const how = misbehaved !== null
      ? misbehaved
      : outOfMemory
      ? `ran out of memory (memory_mb = ${spec.memoryMb})`
      : status.signal !== null
      ? `was killed (${status.signal})`
      : `exited with code ${status.code}`;
    calls.failAll(`the plugin process ${how}`);
    helloFailed(new Error(`the plugin process ${how} before it loaded`));
    return how;
  });
  try {
    const answer = await loaded as Hello;
    return {
      hello: answer,
      ended,
      get alive() {
        return alive;
      },
      call(op, argsJson, timeoutMs) {
        if (!alive) return Promise.reject(new Error("the plugin process has ended"));
        const { id, answer } = calls.start(timeoutMs, kill);
        send.send(`{"id":${id},"op":"${op}","args":${argsJson}}`);
        return answer;
      },
      kill,
      channel: channel === null ? "pipes" : "loopback",
    };
  } catch (e) {
    kill();
    await ended;
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** The hosts of {@linkcode DEFAULT_IMPORT_HOSTS} pgdog itself may import from. */
function heldImportHosts(): string[] {
  return DEFAULT_IMPORT_HOSTS.filter((host) =>
    Deno.permissions.querySync({ name: "import", host }).state === "granted"
  );
}

/** Longest sleep of a Worker's answer pump between checks that calls are still waiting. */
const PUMP_WAIT_MS = 50;

/** Starts a plugin in a Worker with its permissions and waits until the module is loaded. */
export async function startWorker(spec: SandboxSpec): Promise<Sandbox> {
  const g = spec.grants;
  const read = spec.folder === null ? [...g.read] : [spec.folder, ...g.read];
  const imports = [...heldImportHosts(), ...g.import];
  let worker: Worker;
  try {
    worker = new Worker(WORKER.href, {
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
          // Unset, a Worker may import from no host at all (not even jsr.io, which a `jsr:`
          // plugin needs): the default hosts pgdog holds, and the granted ones.
          import: imports.length > 0 ? imports : false,
        },
      },
    });
  } catch (e) {
    if (!/escalate/i.test(errorMessage(e))) throw e;
    // A Worker may hold no permission its parent lacks.
    throw new Error(
      "a worker plugin can be granted only what pgdog itself was granted: run pgdog with " +
        `${permissionFlags(spec).slice(1).join(" ")} too, or use isolation = "process"`,
    );
  }
  // Calls and answers travel through two rings in shared memory (see ./ring.ts and ./worker.ts);
  // the load handshake, and frames too large for a ring, by postMessage.
  const buffer = channelBuffer();
  const { flags, requests, answers } = openChannel(buffer);
  const calls = new Calls();
  let alive = true;
  let endedWith: (how: string) => void = () => {};
  const ended = new Promise<string>((resolve) => endedWith = resolve);
  const end = (how: string): void => {
    if (!alive) return;
    alive = false;
    // terminate() acts when the Worker's event loop next runs (every 20 ms while it sleeps in
    // Atomics.wait; never while a hook is busy): the stop word ends its loop at once.
    Atomics.store(flags, STOP, 1);
    requests.notify();
    worker.terminate();
    calls.failAll(`the plugin worker ${how}`);
    // The pump, if waiting, sees that no call is left.
    answers.notify();
    endedWith(how);
  };
  /** Settles calls with answers; a Worker that sends what is not an answer is ended. */
  const settle = (read: () => void): void => {
    try {
      read();
    } catch (e) {
      end(
        e instanceof Error && e.message.startsWith("sent") ? e.message : `broke its channel: ${e}`,
      );
    }
  };
  worker.onmessage = (event: MessageEvent<string>) => settle(() => calls.settle(event.data));
  worker.onerror = (event: ErrorEvent) => {
    event.preventDefault();
    spec.onOutput(`uncaught: ${event.message}`);
    end("failed with an uncaught error");
  };
  let pumping = false;
  /** Reads answers while calls are in flight; stops when none is left. */
  const pump = async (): Promise<void> => {
    pumping = true;
    while (calls.pending > 0) {
      // Read before the ring is drained: an answer written after it ends the wait at once.
      const seen = answers.seq;
      settle(() => {
        for (let text = answers.read(); text !== null; text = answers.read()) calls.settle(text);
      });
      // Bounded: an answer that came by postMessage settles its call without waking the pump.
      if (calls.pending > 0) await answers.waitAsync(seen, PUMP_WAIT_MS);
    }
    pumping = false;
  };
  const start = (timeoutMs: number): { id: number; answer: Promise<unknown> } =>
    calls.start(timeoutMs, () => end(`gave no answer within ${timeoutMs} ms`));
  const call = (op: string, argsJson: string, timeoutMs: number): Promise<unknown> => {
    if (!alive) return Promise.reject(new Error("the plugin worker has ended"));
    const { id, answer } = start(timeoutMs);
    const json = `{"id":${id},"op":"${op}","args":${argsJson}}`;
    if (!requests.write(json)) {
      // Too large for the ring, or the ring is full: the Worker takes it from its messages.
      // Counted first, so the Worker never takes more messages than it has been told of.
      Atomics.add(flags, POSTED, 1);
      worker.postMessage(json);
    }
    requests.notify();
    if (!pumping) pump();
    return answer;
  };
  worker.postMessage(buffer);
  try {
    const { id, answer } = start(LOAD_TIMEOUT_MS);
    worker.postMessage(
      JSON.stringify({ id, op: "load", args: [spec.specifier, spec.loadOnly] }),
    );
    const hello = await answer as Hello;
    return {
      hello,
      ended,
      call,
      kill: () => end("was stopped"),
      get alive() {
        return alive;
      },
      channel: "shared memory",
    };
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
