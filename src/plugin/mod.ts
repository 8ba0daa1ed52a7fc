/**
 * The plugins of a running proxy: each `[[plugins]]` entry started in its sandbox, initialised
 * with its configuration, restarted when it crashes or passes its timeout, and asked for routing
 * answers that are merged in configuration order.
 *
 * @module
 */

import { parse as parseToml } from "smol-toml";
import type { Config, PluginConfig } from "../config/types.ts";
import { errorMessage, log } from "../log.ts";
import { LruMap } from "../lru.ts";
import type { RouteAnswer } from "./api.ts";
import type { HookName, RouteCaching } from "./guest.ts";
import {
  DEFAULT_IMPORT_HOSTS,
  type Grants,
  ownProject,
  type Sandbox,
  startProcess,
  startWorker,
} from "./sandbox.ts";

/** A plugin that could not be started, with a message naming it. */
export class PluginError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PluginError";
  }
}

/** The merged answer of every plugin to one statement. */
export interface RouteVerdict {
  shard?: number | "all";
  role?: "primary" | "replica";
  block?: string;
  rewrite?: string;
  /** Which plugin decided each field, for logs. */
  by: Partial<Record<"shard" | "role" | "block" | "rewrite", string>>;
  /** A call failed and its plugin has `on_error = "error"`: the statement fails with this. */
  error?: string;
}

/** Counters of one plugin (SHOW PLUGINS). */
export interface PluginStats {
  name: string;
  isolation: string;
  hooks: string;
  calls: number;
  errors: number;
  timeouts: number;
  restarts: number;
  /** Route and shard calls answered from kept answers, and how many are kept. */
  cacheHits: number;
  cached: number;
  state: string;
  /** "loopback" or "pipes" (process), "shared memory" (worker); empty while restarting. */
  channel: string;
}

/** How long `init` may take (it may load data). */
const INIT_TIMEOUT_MS = 10_000;
/** How long `shutdown` may take before the sandbox is stopped anyway. */
const SHUTDOWN_TIMEOUT_MS = 1_000;
/** A plugin that keeps failing is restarted no faster than this (at once, then from 100 ms up). */
const MAX_BACKOFF_MS = 10_000;
/** The first wait between restarts after the immediate one (doubling up to MAX_BACKOFF_MS). */
const FIRST_BACKOFF_MS = 100;

/** A call that found its plugin restarting and was not answered by the restarted one in time. */
class PluginRestarting extends Error {
  constructor(ms: number) {
    super(`it is restarting and was not back within its timeout (${ms} ms)`);
    this.name = "PluginRestarting";
  }
}

/** One configured plugin and its current sandbox. */
class RunningPlugin {
  readonly config: PluginConfig;
  #sandbox: Sandbox | null = null;
  #init: string;
  #closed = false;
  /** Wait before the next restart: none for the first, then growing (see #restartLater). */
  #backoff = 0;
  /** Settled when a sandbox runs again (or the plugin is closed): what calls meanwhile await. */
  #back: PromiseWithResolvers<void> | null = null;
  hooks: ReadonlySet<HookName> = new Set();
  parseTree = true;
  /** Route answers by statement (see {@linkcode routeCacheKey}); null when not kept. */
  answers: LruMap<string, RouteAnswer | null> | null = null;
  /** What `answers` are filed under: the statement's text, or its shape. */
  answersBy: RouteCaching = false;
  /** Shard answers by key and shard context; null when not kept. */
  shards: LruMap<string, number> | null = null;
  cacheHits = 0;
  calls = 0;
  errors = 0;
  timeouts = 0;
  restarts = 0;

  constructor(config: PluginConfig, initJson: string) {
    this.config = config;
    this.#init = initJson;
  }

  get name(): string {
    return this.config.name;
  }

  /** How pgdog talks to the running sandbox (null while restarting). */
  get channel(): string | null {
    return this.#sandbox?.channel ?? null;
  }

  get ready(): boolean {
    return this.#sandbox !== null;
  }

  /** Starts the sandbox and runs `init`; throws a {@linkcode PluginError} when it can't. */
  async start(): Promise<void> {
    const spec = sandboxSpec(this.config);
    if (spec.folder !== null && cwdOrNull()?.startsWith(spec.folder) && this.restarts === 0) {
      log.warn(
        `plugin "${this.name}" sits in ${spec.folder}, which it may read, and so pgdog's own ` +
          "directory (its configuration files too): give each plugin a folder of its own",
      );
    }
    const own = this.config.isolation === "worker" && this.restarts === 0
      ? ownProject(spec.folder)
      : null;
    if (own !== null) {
      log.warn(
        `plugin "${this.name}" has a deno.json of its own (${own.config}), which a worker does ` +
          "not use: its imports resolve with pgdog's; name its dependencies by full specifier, " +
          'or use isolation = "process"',
      );
    }
    const start = this.config.isolation === "worker" ? startWorker : startProcess;
    let sandbox: Sandbox;
    try {
      sandbox = await start(spec);
    } catch (e) {
      throw new PluginError(`plugin "${this.name}" (${this.config.path}): ${errorMessage(e)}`);
    }
    if (sandbox.channel === "pipes" && this.restarts === 0) {
      log.warn(
        `plugin "${this.name}" talks over pipes, about twice as slow: pgdog may not listen on ` +
          "127.0.0.1 (grant it with --allow-net)",
      );
    }
    this.hooks = new Set(sandbox.hello.hooks);
    this.parseTree = sandbox.hello.parseTree !== false;
    // A new sandbox starts with empty caches: a restarted plugin may answer differently.
    const keep = <V>(declared: boolean): LruMap<string, V> | null =>
      declared && this.config.cache_size > 0 ? new LruMap(this.config.cache_size) : null;
    this.answers = keep(sandbox.hello.cacheRoute !== false);
    this.answersBy = this.answers === null ? false : sandbox.hello.cacheRoute;
    this.shards = keep(sandbox.hello.cacheShard === true);
    try {
      if (this.hooks.has("init")) await sandbox.call("init", this.#init, INIT_TIMEOUT_MS);
    } catch (e) {
      sandbox.kill();
      throw new PluginError(`plugin "${this.name}": init failed: ${errorMessage(e)}`);
    }
    if (this.#closed) {
      sandbox.kill();
      return;
    }
    this.#sandbox = sandbox;
    this.#wake();
    const startedAt = Date.now();
    sandbox.ended.then((how) => {
      if (this.#sandbox !== sandbox) return;
      this.#sandbox = null;
      if (this.#closed) return;
      log.error(`plugin "${this.name}": its ${this.config.isolation} ${how}; restarting`);
      if (Date.now() - startedAt > 30_000) this.#backoff = 0;
      this.#restartLater();
    });
  }

  /** Lets the calls waiting for a running sandbox go on. */
  #wake(): void {
    this.#back?.resolve();
    this.#back = null;
  }

  /**
   * The running sandbox, or, while the plugin restarts, the restarted one if it is back within
   * `ms`; null when it is not (or the plugin is closed).
   */
  async #running(ms: number): Promise<Sandbox | null> {
    const deadline = Date.now() + ms;
    for (;;) {
      const sandbox = this.#sandbox;
      if (sandbox !== null && sandbox.alive) return sandbox;
      const left = deadline - Date.now();
      if (this.#closed || left <= 0) return null;
      this.#back ??= Promise.withResolvers<void>();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#back.promise,
        new Promise<void>((resolve) => timer = setTimeout(resolve, left)),
      ]);
      clearTimeout(timer);
    }
  }

  #restartLater(): void {
    const delay = this.#backoff;
    this.#backoff = Math.min(Math.max(delay * 2, FIRST_BACKOFF_MS), MAX_BACKOFF_MS);
    setTimeout(() => {
      if (this.#closed || this.#sandbox !== null) return;
      this.restarts++;
      this.start().then(
        () => log.info(`plugin "${this.name}": restarted`),
        (e) => {
          log.error(`${errorMessage(e)}; trying again`);
          this.#restartLater();
        },
      );
    }, delay);
  }

  /**
   * Calls a hook with `argsJson` (the JSON text of its arguments) within the timeout. A call that
   * finds the plugin restarting (after a timeout or a crash) waits for it, within the same
   * timeout, rather than fail at once: a plugin that blocks statements must not let them through
   * just because it was being replaced.
   */
  async call(op: HookName, argsJson: string): Promise<unknown> {
    this.calls++;
    const timeout = this.config.timeout;
    let sandbox = this.#sandbox;
    let left = timeout;
    if (sandbox === null || !sandbox.alive) {
      const waitedFrom = Date.now();
      sandbox = await this.#running(timeout);
      left = timeout - (Date.now() - waitedFrom);
      if (sandbox === null || left < 1) {
        this.errors++;
        this.timeouts++;
        throw new PluginRestarting(timeout);
      }
    }
    try {
      return await sandbox.call(op, argsJson, left);
    } catch (e) {
      this.errors++;
      if (e instanceof Error && e.name === "PluginTimeout") {
        this.timeouts++;
        // A process is killed by the timeout itself; its `ended` restarts it.
        if (this.#sandbox === sandbox) sandbox.kill();
      }
      throw e;
    }
  }

  /** Runs `shutdown` (briefly) and stops the sandbox. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#wake();
    const sandbox = this.#sandbox;
    this.#sandbox = null;
    if (sandbox === null) return;
    if (this.hooks.has("shutdown")) {
      await sandbox.call("shutdown", "[]", SHUTDOWN_TIMEOUT_MS).catch(() => {});
    }
    sandbox.kill();
    await sandbox.ended;
  }
}

/** The sandbox of a `[[plugins]]` entry: the module, its folder and the permissions granted. */
function sandboxSpec(config: PluginConfig) {
  const local = !/^[a-z][a-z0-9+.-]*:/i.test(config.path) || config.path.startsWith("file:");
  const file = local
    ? (config.path.startsWith("file:") ? new URL(config.path).pathname : absolute(config.path))
    : null;
  const perms = config.permissions;
  const own = moduleHost(config.path);
  const grants: Grants = {
    read: (perms?.read ?? []).map(absolute),
    write: (perms?.write ?? []).map(absolute),
    net: perms?.net ?? [],
    env: perms?.env ?? [],
    import: [...own, ...perms?.import ?? []],
    sys: perms?.sys ?? false,
  };
  // Once loaded, a plugin imports from no host but those its entry grants.
  const loadOnly = [...DEFAULT_IMPORT_HOSTS, ...own]
    .filter((host) => !perms?.import?.includes(host));
  return {
    name: config.name,
    specifier: file === null ? config.path : `file://${file}`,
    folder: file === null ? null : file.slice(0, file.lastIndexOf("/")) || "/",
    grants,
    loadOnly,
    memoryMb: config.memory_mb,
    onOutput: (line: string) => log.info(`plugin "${config.name}": ${line}`),
  };
}

/** The `host:port` of a module given by an http(s) URL, which its sandbox may import from. */
function moduleHost(path: string): string[] {
  if (!/^https?:\/\//i.test(path)) return [];
  try {
    const url = new URL(path);
    return [`${url.hostname}:${url.port || (url.protocol === "https:" ? 443 : 80)}`];
  } catch {
    return [];
  }
}

function cwdOrNull(): string | null {
  try {
    return Deno.cwd();
  } catch {
    return null;
  }
}

function absolute(path: string): string {
  if (path.startsWith("/")) return path;
  const cwd = Deno.cwd();
  const joined = `${cwd}/${path}`.split("/");
  const out: string[] = [];
  for (const part of joined) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return `/${out.join("/")}`;
}

/** The plugins of a configuration, started. */
export class PluginSet {
  readonly #plugins: RunningPlugin[];
  readonly #routers: RunningPlugin[];
  /** The configuration they were started from (to tell whether RELOAD changes them). */
  readonly key: string;

  private constructor(plugins: RunningPlugin[], key: string) {
    this.#plugins = plugins;
    this.#routers = plugins.filter((p) => p.hooks.has("route"));
    this.key = key;
  }

  /**
   * Starts every plugin of `configs` (all at once) and runs their `init`. Throws a
   * {@linkcode PluginError} naming the plugin when one cannot start (a missing module, an
   * incompatible API version, a failing init), after stopping the others.
   */
  static async start(
    configs: readonly PluginConfig[],
    options: { shardHooks?: readonly string[] } = {},
  ): Promise<PluginSet> {
    // Taken before the plugins load their code: a change meanwhile shows at the next RELOAD.
    const key = pluginsKey(configs);
    const plugins: RunningPlugin[] = [];
    for (const config of configs) {
      plugins.push(new RunningPlugin(config, JSON.stringify([await initConfig(config)])));
    }
    const results = await Promise.allSettled(plugins.map((p) => p.start()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    const set = new PluginSet(plugins, key);
    if (failed === undefined) {
      for (const name of options.shardHooks ?? []) {
        const plugin = plugins.find((p) => p.name === name);
        if (plugin && !plugin.hooks.has("shard")) {
          await set.close();
          throw new PluginError(
            `plugin "${name}" has no shard hook, but a [[sharded_tables]] hasher names it`,
          );
        }
      }
      for (const p of plugins) {
        log.info(
          `plugin "${p.name}" loaded (${p.config.isolation}; hooks: ${[...p.hooks].join(", ")})`,
        );
      }
      return set;
    }
    await set.close();
    throw failed.reason instanceof PluginError
      ? failed.reason
      : new PluginError(errorMessage(failed.reason));
  }

  /** Some plugin has a `route` hook. */
  get routes(): boolean {
    return this.#routers.length > 0;
  }

  /** Some `route` hook reads the parse tree (`parseTree` is not false). */
  get needsTree(): boolean {
    return this.#routers.some((p) => p.parseTree);
  }

  /** The plugins' names, in order. */
  get names(): string[] {
    return this.#plugins.map((p) => p.name);
  }

  /**
   * Asks every plugin with a `route` hook about one statement (its cluster's shard count bounds a
   * shard answer). All are asked at once, except a plugin that has an answer kept for the
   * statement; the first plugin (in configuration order) to set a field decides it.
   */
  async route(statement: RouteStatement): Promise<RouteVerdict> {
    const routers = this.#routers;
    // The kept answers as the calls start: a restart meanwhile starts a new, empty cache.
    const caches = routers.map((p) => p.answers);
    // Each key built once, and only when some plugin keeps answers by it.
    let textKey: string | null = null;
    let shapeKey: string | null = null;
    const keyOf = (p: RunningPlugin): string =>
      p.answersBy === "shape"
        ? shapeKey ??= routeCacheKey(statement, "shape")
        : textKey ??= routeCacheKey(statement, "text");
    let args: string | null = null;
    const answers = await Promise.allSettled(routers.map((p, i) => {
      const kept = caches[i]?.get(keyOf(p));
      if (kept !== undefined) {
        p.cacheHits++;
        return kept;
      }
      args ??= `[${statement.context()}]`;
      return p.call("route", args);
    }));
    const verdict: RouteVerdict = { by: {} };
    answers.forEach((result, i) => {
      const plugin = routers[i];
      let answer: RouteAnswer | null;
      try {
        if (result.status === "rejected") throw result.reason;
        answer = checkAnswer(result.value, statement.shards);
      } catch (e) {
        const why = `plugin "${plugin.name}": route failed: ${errorMessage(e)}`;
        if (plugin.config.on_error === "error") verdict.error ??= why;
        log.warn(
          `${why}; ${plugin.config.on_error === "error" ? "the statement fails" : "ignored"}`,
        );
        return;
      }
      const cache = caches[i];
      // A rewrite is the text of one statement: it stands for another only with the same text.
      const keeps = cache !== null &&
        (plugin.answersBy === "text" || answer === null || answer.rewrite === undefined);
      if (keeps && cache.peek(keyOf(plugin)) === undefined) cache.set(keyOf(plugin), answer);
      if (answer === null) return;
      for (const field of ["shard", "role", "block", "rewrite"] as const) {
        if (answer[field] === undefined || verdict[field] !== undefined) continue;
        (verdict as unknown as Record<string, unknown>)[field] = answer[field];
        verdict.by[field] = plugin.name;
      }
    });
    return verdict;
  }

  /** The shard of `key` by plugin `name`'s `shard` hook; throws when the call fails. */
  async shard(
    name: string,
    key: string,
    ctx: { table?: string; column: string; dataType: string; shards: number; database: string },
  ): Promise<number> {
    const plugin = this.#plugins.find((p) => p.name === name);
    if (plugin === undefined) throw new Error(`no plugin named "${name}"`);
    const cache = plugin.shards;
    const cacheKey = cache === null
      ? ""
      : `${key}\0${
        ctx.table ?? ""
      }\0${ctx.column}\0${ctx.dataType}\0${ctx.shards}\0${ctx.database}`;
    const kept = cache?.get(cacheKey);
    if (kept !== undefined) {
      plugin.cacheHits++;
      return kept;
    }
    let shard: unknown;
    try {
      shard = await plugin.call("shard", JSON.stringify([key, ctx]));
    } catch (e) {
      throw new Error(`plugin "${name}": shard failed: ${errorMessage(e)}`);
    }
    if (typeof shard !== "number" || !Number.isInteger(shard) || shard < 0 || shard >= ctx.shards) {
      throw new Error(
        `plugin "${name}": shard answered ${JSON.stringify(shard)} for ${JSON.stringify(key)}, ` +
          `not a shard number from 0 to ${ctx.shards - 1}`,
      );
    }
    cache?.set(cacheKey, shard);
    return shard;
  }

  /** The `on_error` of plugin `name`. */
  onError(name: string): "fallback" | "error" {
    return this.#plugins.find((p) => p.name === name)?.config.on_error ?? "fallback";
  }

  /** Counters for SHOW PLUGINS. */
  stats(): PluginStats[] {
    return this.#plugins.map((p) => ({
      name: p.name,
      isolation: p.config.isolation,
      hooks: [...p.hooks].join(","),
      calls: p.calls,
      errors: p.errors,
      timeouts: p.timeouts,
      restarts: p.restarts,
      cacheHits: p.cacheHits,
      cached: (p.answers?.size ?? 0) + (p.shards?.size ?? 0),
      state: p.ready ? "ready" : "restarting",
      channel: p.channel ?? "",
    }));
  }

  /** Runs every `shutdown` hook and stops the sandboxes. */
  async close(): Promise<void> {
    await Promise.all(this.#plugins.map((p) => p.close().catch(() => {})));
  }
}

/** A statement a `route` hook is asked about. */
export interface RouteStatement {
  /** The SQL text (the context's `query`). */
  sql: string;
  /** The text with its constants replaced by parameters and its comments removed. */
  shape: string;
  user: string;
  database: string;
  applicationName: string;
  /** The shape of the client's cluster. */
  shards: number;
  replicas: boolean;
  /** The RouteContext as JSON text (built only when some plugin is called). */
  context(): string;
}

/** What a kept route answer is filed under: everything `cacheRoute` lets the answer depend on. */
function routeCacheKey(s: RouteStatement, by: "text" | "shape"): string {
  return `${s.user}\0${s.database}\0${s.applicationName}\0${s.shards}\0${s.replicas}\0${
    by === "text" ? s.sql : s.shape
  }`;
}

/**
 * Identifies a `[[plugins]]` list and the files its plugins load: equal keys, nothing to restart
 * on RELOAD. A local plugin's folder, its own deno.json and lockfile, and a `config` file count by
 * their files' sizes and modification times, so editing a plugin's code or its config file and
 * reloading restarts it.
 */
export function pluginsKey(configs: readonly PluginConfig[]): string {
  return JSON.stringify(configs.map((config) => {
    const spec = sandboxSpec(config);
    const stamps: string[] = [];
    if (spec.folder !== null) stampFolder(spec.folder, stamps);
    if (typeof config.config === "string") stampFile(absolute(config.config), stamps);
    // The plugin's own deno.json and lockfile may sit above its folder.
    const own = ownProject(spec.folder);
    if (own !== null) stampFile(own.config, stamps);
    if (own?.lock) stampFile(own.lock, stamps);
    return [config, stamps];
  }));
}

/** Most files of a plugin's folder looked at for changes (a folder this big is not a plugin's). */
const STAMP_LIMIT = 2_000;

/** Appends `path size mtime` of each file under `folder` (not hidden ones, not node_modules). */
function stampFolder(folder: string, stamps: string[]): void {
  const dirs = [folder];
  while (dirs.length > 0 && stamps.length < STAMP_LIMIT) {
    const dir = dirs.pop()!;
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(dir)];
    } catch {
      stamps.push(`${dir} unreadable`);
      continue;
    }
    entries.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
    for (const entry of entries) {
      if (entry.name.startsWith(".") || entry.name === "node_modules") continue;
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory) dirs.push(path);
      else if (entry.isFile) stampFile(path, stamps);
    }
  }
}

function stampFile(path: string, stamps: string[]): void {
  try {
    const info = Deno.statSync(path);
    stamps.push(`${path} ${info.size} ${info.mtime?.getTime() ?? 0}`);
  } catch {
    stamps.push(`${path} missing`);
  }
}

/** What `init` receives: the inline table, or the TOML file's content. */
async function initConfig(config: PluginConfig): Promise<Record<string, unknown>> {
  if (config.config === undefined) return {};
  if (typeof config.config !== "string") return config.config;
  let text: string;
  try {
    text = await Deno.readTextFile(config.config);
  } catch (e) {
    throw new PluginError(
      `plugin "${config.name}": cannot read its config file ${config.config}: ${errorMessage(e)}`,
    );
  }
  try {
    return parseToml(text) as Record<string, unknown>;
  } catch (e) {
    throw new PluginError(
      `plugin "${config.name}": its config file ${config.config} is not valid TOML: ${
        errorMessage(e)
      }`,
    );
  }
}

/** Checks a route answer's shape; throws with what is wrong. */
function checkAnswer(value: unknown, shards: number): RouteAnswer | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new Error(`answered ${JSON.stringify(value)}, not an object`);
  }
  const a = value as Record<string, unknown>;
  for (const key of Object.keys(a)) {
    if (!["shard", "role", "block", "rewrite"].includes(key)) {
      throw new Error(`answered an unknown field "${key}" (shard, role, block, rewrite)`);
    }
  }
  if (
    a.shard !== undefined && a.shard !== "all" &&
    !(typeof a.shard === "number" && Number.isInteger(a.shard) && a.shard >= 0 &&
      a.shard < Math.max(1, shards))
  ) {
    throw new Error(`answered shard ${JSON.stringify(a.shard)}: not "all" or 0 to ${shards - 1}`);
  }
  if (a.role !== undefined && a.role !== "primary" && a.role !== "replica") {
    throw new Error(`answered role ${JSON.stringify(a.role)}: not "primary" or "replica"`);
  }
  if (a.block !== undefined && (typeof a.block !== "string" || a.block === "")) {
    throw new Error(`answered block ${JSON.stringify(a.block)}: not a message`);
  }
  if (a.rewrite !== undefined && (typeof a.rewrite !== "string" || a.rewrite.trim() === "")) {
    throw new Error(`answered rewrite ${JSON.stringify(a.rewrite)}: not SQL text`);
  }
  return a as RouteAnswer;
}

/** Starts the configuration's plugins (null when it has none). */
export async function startPlugins(
  config: Pick<Config, "plugins" | "sharded_tables">,
): Promise<PluginSet | null> {
  if (config.plugins.length === 0) return null;
  const shardHooks = config.sharded_tables.filter((t) => t.hasher.startsWith("plugin:"))
    .map((t) => t.hasher.slice("plugin:".length));
  return await PluginSet.start(config.plugins, { shardHooks });
}
