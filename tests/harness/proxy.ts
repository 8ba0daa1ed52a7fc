/**
 * The proxy as a subprocess, started the way users run it:
 * `deno run ... mod.ts -c pgdog.toml -u users.toml`.
 *
 * ```ts
 * await using proxy = await startProxy({
 *   config: { databases: [{ name: "app", host: pg.host, port: pg.port }] },
 *   users: { users: [{ name: "alice", password: "secret", database: "app" }] },
 * });
 * const out = await psql(proxy.target({ user: "alice", password: "secret", database: "app" }), "SELECT 1");
 * ```
 *
 * @module
 */

import { stringify } from "smol-toml";
import { exitCode, runCommand } from "./command.ts";
import type { PgTarget } from "./clients.ts";
import { savedPathsOf } from "../../src/config/read_grants.ts";

/** Root of the repository (two levels up from tests/harness). */
export const REPO_ROOT: string = decodeURIComponent(new URL("../../", import.meta.url).pathname)
  .replace(/\/$/, "");

/** Entry point of the proxy. */
export const PROXY_ENTRY: string = `${REPO_ROOT}/mod.ts`;

const MAX_LOG_CHARS = 2 * 1024 * 1024;

/** A TOML document as a plain object. */
export type TomlDocument = Record<string, unknown>;

/** Options for {@linkcode startProxy}. */
export interface ProxyOptions {
  /**
   * pgdog.toml as an object (`{ general, databases, admin, ... }`);
   * `general.host` defaults to "127.0.0.1" and `general.port` to 0.
   */
  config?: TomlDocument;
  /** users.toml as an object (`{ users: [...] }`). */
  users?: TomlDocument;
  /** Raw pgdog.toml, written as is (instead of `config`). */
  configText?: string;
  /** Raw users.toml, written as is (instead of `users`). */
  usersText?: string;
  /** Extra CLI arguments after `-c ... -u ...`. */
  args?: string[];
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Extra `deno run` flags (e.g. more permissions), before the entry point. */
  denoFlags?: string[];
  /** Working directory; the temp dir holding the config files by default. */
  cwd?: string;
  /** How long to wait for the `listening on host:port` line; 30 000 ms by default. */
  startTimeoutMs?: number;
  /** Script to run instead of the repository's mod.ts (for testing the harness itself). */
  entry?: string;
}

/** Options for {@linkcode ProxyProcess.url} and {@linkcode ProxyProcess.target}. */
export interface ProxyUrlOptions {
  /** User name. */
  user: string;
  /** Password. */
  password?: string;
  /** Database (pool) name. */
  database: string;
}

/** Options for {@linkcode ProxyProcess.stop}. */
export interface ProxyStopOptions {
  /** Signal to send; SIGTERM by default. */
  signal?: Deno.Signal;
  /** SIGKILL after this many milliseconds; 10 000 by default. */
  timeoutMs?: number;
}

/** Options for {@linkcode ProxyProcess.waitForLog}. */
export interface WaitForLogOptions {
  /** Only consider output after this offset (from {@linkcode ProxyProcess.logOffset}); 0 by default. */
  since?: number;
  /** Give up after this many milliseconds; 10 000 by default. */
  timeoutMs?: number;
}

/** How the proxy process ended. */
export interface ProxyExit {
  /** Exit code; 128 + signal number when killed by a signal. */
  code: number;
  /** Signal that ended it, if any. */
  signal: Deno.Signal | null;
  /** Everything it printed (the last 2 MB). */
  logs: string;
}

/** A running proxy subprocess. */
export interface ProxyProcess extends AsyncDisposable {
  /** Host it listens on. */
  readonly host: string;
  /** Port parsed from its `listening on` line. */
  readonly port: number;
  /** Process id. */
  readonly pid: number;
  /** Temp directory holding pgdog.toml and users.toml. */
  readonly dir: string;
  /** Path of the pgdog.toml it was started with. */
  readonly configPath: string;
  /** Path of the users.toml it was started with. */
  readonly usersPath: string;
  /** A postgres:// URL to connect through the proxy. */
  url(options: ProxyUrlOptions): string;
  /** A target for {@linkcode psql}, {@linkcode pgbench} or {@linkcode connectPg}. */
  target(options: ProxyUrlOptions): PgTarget;
  /** Stdout and stderr so far, interleaved (the last 2 MB). */
  logs(): string;
  /** Current end of the output, for {@linkcode WaitForLogOptions.since}. */
  logOffset(): number;
  /** Wait until the output (after `since`) matches `pattern`; returns the match. */
  waitForLog(pattern: RegExp, options?: WaitForLogOptions): Promise<RegExpMatchArray>;
  /**
   * Rewrite pgdog.toml (same defaults as at start, except `general.port`
   * defaults to the port it listens on), e.g. before SIGHUP.
   */
  writeConfig(config: TomlDocument): Promise<void>;
  /** Rewrite users.toml. */
  writeUsers(users: TomlDocument): Promise<void>;
  /** Send a signal. */
  signal(sig: Deno.Signal): void;
  /** Whether it has exited. */
  readonly exited: boolean;
  /** Stop it (SIGTERM, SIGKILL after the timeout) and return its exit and logs. */
  stop(options?: ProxyStopOptions): Promise<ProxyExit>;
  /** Wait until it exits by itself (SIGKILL after `timeoutMs`, 30 000 by default). */
  waitForExit(options?: { timeoutMs?: number }): Promise<ProxyExit>;
}

/** Remove `undefined` members, which TOML cannot represent. */
function pruneUndefined(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(pruneUndefined);
  if (value !== null && typeof value === "object" && !(value instanceof Date)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      if (v !== undefined) out[k] = pruneUndefined(v);
    }
    return out;
  }
  return value;
}

/** Serialize a TOML document (members that are `undefined` are left out). */
export function toToml(doc: TomlDocument): string {
  return stringify(pruneUndefined(doc) as Record<string, unknown>);
}

function withGeneralDefaults(config: TomlDocument, port: number): TomlDocument {
  const general = (config.general ?? {}) as Record<string, unknown>;
  return { ...config, general: { host: "127.0.0.1", port, ...general } };
}

const liveProxies = new Set<ProxyChild>();
let unloadHandlerInstalled = false;

function installUnloadHandler(): void {
  if (unloadHandlerInstalled) return;
  unloadHandlerInstalled = true;
  globalThis.addEventListener("unload", () => {
    for (const proxy of liveProxies) {
      try {
        Deno.kill(proxy.pid, "SIGKILL");
      } catch {
        // Gone.
      }
      try {
        Deno.removeSync(proxy.dir, { recursive: true });
      } catch {
        // Best effort.
      }
    }
  });
}

const OWNER_FILE = "harness-owner.json";
let janitorPromise: Promise<void> | undefined;

/**
 * Once per process: SIGKILL proxies whose test process died without stopping
 * them (they would run on, orphaned), and remove their temp dirs.
 */
function reapAbandoned(): Promise<void> {
  janitorPromise ??= (async () => {
    const root = Deno.env.get("TMPDIR") || "/tmp";
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(root)];
    } catch {
      return;
    }
    for (const entry of entries) {
      if (!entry.isDirectory || !entry.name.startsWith("pgdog-test-proxy-")) continue;
      const dir = `${root}/${entry.name}`;
      let owner: { owner: number; pid: number };
      try {
        owner = JSON.parse(Deno.readTextFileSync(`${dir}/${OWNER_FILE}`));
      } catch {
        continue;
      }
      if (owner.owner === Deno.pid || processExists(owner.owner)) continue;
      // Make sure the pid still is that proxy before killing it.
      const cmdline = await runCommand("cat", [`/proc/${owner.pid}/cmdline`], {
        timeoutMs: 10_000,
      });
      if (cmdline.code === 0 && cmdline.stdout.includes(dir)) {
        try {
          Deno.kill(owner.pid, "SIGKILL");
        } catch {
          // Gone.
        }
      }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  })();
  return janitorPromise;
}

/** Whether a process exists (SIGCONT does nothing to a running process). */
function processExists(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT");
    return true;
  } catch {
    return false;
  }
}

interface LogWaiter {
  pattern: RegExp;
  since: number;
  resolve: (m: RegExpMatchArray) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

class ProxyChild implements ProxyProcess {
  host = "127.0.0.1";
  port = 0;
  readonly pid: number;
  readonly dir: string;
  readonly configPath: string;
  readonly usersPath: string;
  exited = false;
  #child: Deno.ChildProcess;
  #log = "";
  #dropped = 0;
  #waiters = new Set<LogWaiter>();
  #status: Promise<Deno.CommandStatus>;
  #pumps: Promise<void>;
  #exit?: ProxyExit;
  #dirRemoved = false;

  constructor(child: Deno.ChildProcess, dir: string) {
    this.#child = child;
    this.pid = child.pid;
    this.dir = dir;
    this.configPath = `${dir}/pgdog.toml`;
    this.usersPath = `${dir}/users.toml`;
    this.#pumps = Promise.all([this.#pump(child.stdout), this.#pump(child.stderr)]).then(
      () => {},
    );
    this.#status = child.status.then(async (status) => {
      await this.#pumps;
      this.exited = true;
      liveProxies.delete(this);
      for (const waiter of this.#waiters) {
        clearTimeout(waiter.timer);
        waiter.reject(new Error(`proxy exited before printing ${waiter.pattern}:\n${this.logs()}`));
      }
      this.#waiters.clear();
      return status;
    });
  }

  async #pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of stream) this.#append(decoder.decode(chunk, { stream: true }));
      this.#append(decoder.decode());
    } catch {
      // Stream broke: the process is gone.
    }
  }

  #append(text: string): void {
    if (!text) return;
    this.#log += text;
    if (this.#log.length > MAX_LOG_CHARS) {
      const cut = this.#log.length - MAX_LOG_CHARS;
      this.#log = this.#log.slice(cut);
      this.#dropped += cut;
    }
    for (const waiter of this.#waiters) {
      const match = this.#match(waiter.pattern, waiter.since);
      if (match) {
        clearTimeout(waiter.timer);
        this.#waiters.delete(waiter);
        waiter.resolve(match);
      }
    }
  }

  #match(pattern: RegExp, since: number): RegExpMatchArray | null {
    const start = Math.max(0, since - this.#dropped);
    return this.#log.slice(start).match(pattern);
  }

  url(options: ProxyUrlOptions): string {
    const user = encodeURIComponent(options.user);
    const auth = options.password === undefined
      ? user
      : `${user}:${encodeURIComponent(options.password)}`;
    return `postgres://${auth}@${this.host}:${this.port}/${encodeURIComponent(options.database)}`;
  }

  target(options: ProxyUrlOptions): PgTarget {
    return { host: this.host, port: this.port, ...options };
  }

  logs(): string {
    return this.#log;
  }

  logOffset(): number {
    return this.#dropped + this.#log.length;
  }

  waitForLog(pattern: RegExp, options: WaitForLogOptions = {}): Promise<RegExpMatchArray> {
    const since = options.since ?? 0;
    const match = this.#match(pattern, since);
    if (match) return Promise.resolve(match);
    if (this.exited) {
      return Promise.reject(new Error(`proxy exited before printing ${pattern}:\n${this.logs()}`));
    }
    return new Promise((resolve, reject) => {
      const waiter: LogWaiter = {
        pattern,
        since,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#waiters.delete(waiter);
          reject(
            new Error(`timed out waiting for ${pattern} in the proxy output:\n${this.logs()}`),
          );
        }, options.timeoutMs ?? 10_000),
      };
      this.#waiters.add(waiter);
    });
  }

  async writeConfig(config: TomlDocument): Promise<void> {
    await Deno.writeTextFile(this.configPath, toToml(withGeneralDefaults(config, this.port)));
  }

  async writeUsers(users: TomlDocument): Promise<void> {
    await Deno.writeTextFile(this.usersPath, toToml(users));
  }

  signal(sig: Deno.Signal): void {
    if (this.exited) return;
    try {
      this.#child.kill(sig);
    } catch {
      // Exited meanwhile.
    }
  }

  async #finish(): Promise<ProxyExit> {
    const status = await this.#status;
    this.#exit ??= { code: exitCode(status), signal: status.signal, logs: this.logs() };
    if (!this.#dirRemoved) {
      this.#dirRemoved = true;
      await Deno.remove(this.dir, { recursive: true }).catch(() => {});
    }
    return this.#exit;
  }

  async #waitOrKill(timeoutMs: number): Promise<ProxyExit> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    });
    try {
      const first = await Promise.race([this.#status.then(() => "exited" as const), timeout]);
      if (first === "timeout") this.signal("SIGKILL");
    } finally {
      clearTimeout(timer);
    }
    return await this.#finish();
  }

  async stop(options: ProxyStopOptions = {}): Promise<ProxyExit> {
    if (!this.exited) this.signal(options.signal ?? "SIGTERM");
    return await this.#waitOrKill(options.timeoutMs ?? 10_000);
  }

  async waitForExit(options: { timeoutMs?: number } = {}): Promise<ProxyExit> {
    return await this.#waitOrKill(options.timeoutMs ?? 30_000);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

function hasFlag(args: string[], short: string, long: string): boolean {
  return args.some((a) =>
    a === short || a === long || a.startsWith(`${long}=`) ||
    (a.startsWith(short) && !a.startsWith("--") && a.length > short.length)
  );
}

/**
 * Start the proxy as a subprocess and wait for its `listening on host:port`
 * line. Throws with its output when it exits first or does not listen within
 * `startTimeoutMs`.
 */
export async function startProxy(options: ProxyOptions = {}): Promise<ProxyProcess> {
  await reapAbandoned();
  const dir = await Deno.makeTempDir({ prefix: "pgdog-test-proxy-" });
  const configText = options.configText ??
    toToml(withGeneralDefaults(options.config ?? {}, 0));
  const usersText = options.usersText ?? toToml(options.users ?? {});
  await Deno.writeTextFile(`${dir}/pgdog.toml`, configText);
  await Deno.writeTextFile(`${dir}/users.toml`, usersText);
  const readable = [REPO_ROOT, dir];
  if (options.cwd) readable.push(options.cwd);
  // The two-phase commit log's folder: pgdog reads and writes it.
  const walDir = (options.config?.general as Record<string, unknown> | undefined)
    ?.two_phase_commit_wal_dir;
  const writable = typeof walDir === "string" ? [walDir] : [];
  // A resharding cutover with cutover_save_config rewrites the files (as `deno task start` grants).
  writable.push(...[`${dir}/pgdog.toml`, `${dir}/users.toml`].flatMap(savedPathsOf));
  readable.push(...writable);
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-prompt",
        "--allow-net",
        `--allow-read=${readable.join(",")}`,
        "--allow-env=PGDOG_*,NODE_ID",
        ...(writable.length > 0 ? [`--allow-write=${writable.join(",")}`] : []),
        ...(options.denoFlags ?? []),
        options.entry ?? PROXY_ENTRY,
        "-c",
        `${dir}/pgdog.toml`,
        "-u",
        `${dir}/users.toml`,
        ...(options.args ?? []),
      ],
      cwd: options.cwd ?? dir,
      env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...options.env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw err;
  }
  const proxy = new ProxyChild(child, dir);
  liveProxies.add(proxy);
  installUnloadHandler();
  await Deno.writeTextFile(
    `${dir}/${OWNER_FILE}`,
    JSON.stringify({ owner: Deno.pid, pid: child.pid }),
  );
  try {
    // Not the V8 inspector's "Debugger listening on ws://..." (with --inspect in denoFlags).
    const match = await proxy.waitForLog(/listening on (?!ws:\/\/)(\S+):(\d+)/, {
      timeoutMs: options.startTimeoutMs ?? 30_000,
    });
    proxy.host = match[1].replace(/^\[(.*)\]$/, "$1");
    proxy.port = Number(match[2]);
    return proxy;
  } catch (err) {
    const exit = await proxy.stop({ signal: "SIGKILL", timeoutMs: 5_000 });
    const why = err instanceof Error && err.message.startsWith("timed out")
      ? `did not print "listening on host:port" within ${options.startTimeoutMs ?? 30_000} ms`
      : `exited with code ${exit.code} before listening`;
    throw new Error(`proxy ${why}; its output:\n${exit.logs}`);
  }
}

/** Options for {@linkcode runPgdog}. */
export interface RunPgdogOptions {
  /** pgdog.toml text; written to a temp dir and passed with `-c` unless `args` has one. */
  configText?: string;
  /** users.toml text; written to a temp dir and passed with `-u` unless `args` has one. */
  usersText?: string;
  /** pgdog.toml as an object (instead of `configText`; no defaults are added). */
  config?: TomlDocument;
  /** users.toml as an object (instead of `usersText`). */
  users?: TomlDocument;
  /** Working directory; the temp dir by default. */
  cwd?: string;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Extra `deno run` flags. */
  denoFlags?: string[];
  /** SIGKILL after this many milliseconds; 60 000 by default. */
  timeoutMs?: number;
  /** Script to run instead of the repository's mod.ts (for testing the harness itself). */
  entry?: string;
}

/** Result of {@linkcode runPgdog}. */
export interface RunPgdogResult {
  /** Exit code. */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
}

/**
 * Run the proxy's CLI once to completion (`configcheck`, `--help`,
 * `--version`, ...), with the same permissions as {@linkcode startProxy}.
 */
export async function runPgdog(
  args: string[],
  options: RunPgdogOptions = {},
): Promise<RunPgdogResult> {
  const dir = await Deno.makeTempDir({ prefix: "pgdog-test-cli-" });
  try {
    const configText = options.configText ??
      (options.config ? toToml(options.config) : undefined);
    const usersText = options.usersText ?? (options.users ? toToml(options.users) : undefined);
    const fileArgs: string[] = [];
    if (configText !== undefined) {
      await Deno.writeTextFile(`${dir}/pgdog.toml`, configText);
      if (!hasFlag(args, "-c", "--config")) fileArgs.push("-c", `${dir}/pgdog.toml`);
    }
    if (usersText !== undefined) {
      await Deno.writeTextFile(`${dir}/users.toml`, usersText);
      if (!hasFlag(args, "-u", "--users")) fileArgs.push("-u", `${dir}/users.toml`);
    }
    const readable = [REPO_ROOT, dir];
    if (options.cwd) readable.push(options.cwd);
    const result = await runCommand(
      Deno.execPath(),
      [
        "run",
        "--no-prompt",
        "--allow-net",
        `--allow-read=${readable.join(",")}`,
        "--allow-env=PGDOG_*,NODE_ID",
        ...(options.denoFlags ?? []),
        options.entry ?? PROXY_ENTRY,
        ...fileArgs,
        ...args,
      ],
      {
        cwd: options.cwd ?? dir,
        env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...options.env },
        timeoutMs: options.timeoutMs ?? 60_000,
      },
    );
    return { code: result.code, stdout: result.stdout, stderr: result.stderr };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Run `fn`; when it throws, print the proxy's output (to stderr) before
 * rethrowing, so a failing test shows what the proxy said.
 */
export async function dumpLogsOnFailure<T>(
  proxy: { logs(): string },
  fn: () => Promise<T>,
): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    console.error(`----- proxy output -----\n${proxy.logs()}----- end of proxy output -----`);
    throw err;
  }
}

/**
 * Sends a raw CancelRequest (built here byte by byte, not with pgdog's codec) for `pid` and
 * `secret`, and waits until the proxy closes the connection.
 */
export async function sendCancelRequest(
  proxy: { host: string; port: number },
  pid: number,
  secret: number,
): Promise<void> {
  const conn = await Deno.connect({ hostname: proxy.host, port: proxy.port });
  try {
    const msg = new Uint8Array(16);
    const dv = new DataView(msg.buffer);
    dv.setInt32(0, 16);
    dv.setInt32(4, 80877102);
    dv.setInt32(8, pid);
    dv.setInt32(12, secret);
    await conn.write(msg);
    await conn.read(new Uint8Array(1)).catch(() => null);
  } finally {
    conn.close();
  }
}
