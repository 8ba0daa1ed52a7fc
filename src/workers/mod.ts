/**
 * `[general] workers`: several event loops serving one port. The main thread loads the
 * configuration and runs worker 0 (with the admin database, the healthcheck and OpenMetrics
 * ports); workers 1..N-1 are Deno Workers running the same proxy core. Every worker binds the
 * port with `reusePort`, so the kernel spreads new connections among them, and has its own pools
 * with its share of every `pool_size` and `min_pool_size` (see `workerShare`).
 *
 * The main thread relays what must reach every worker: RELOAD and SIGHUP (the main thread reads
 * the files once and sends the configuration to each worker), SHUTDOWN and SIGTERM/SIGINT,
 * cancel requests for a client of another worker, and DDL (each worker forgets the column orders
 * it read for that database).
 *
 * @module
 */

import type { Config } from "../config/types.ts";
import { resolvePoolSettings } from "../config/pool_settings.ts";
import { ConfigError } from "../config/load.ts";
import type { ConfigSwap, Proxy } from "../proxy.ts";
import { errorMessage, log } from "../log.ts";

/** Messages the main thread sends a worker. */
export type ToWorker =
  | { type: "start"; config: Config; index: number; count: number; port: number }
  | { type: "reload"; id: number; config: Config }
  | { type: "reload-result"; id: number; error?: ReloadError }
  | { type: "shutdown" }
  | { type: "cancel"; pid: number; secret: number }
  | { type: "admin"; id: number; sql: string }
  | { type: "admin-relayed"; id: number }
  | { type: "tables-changed"; database: string };

/** Messages a worker sends the main thread. */
export type FromWorker =
  | { type: "started" }
  | { type: "failed"; message: string }
  | { type: "reloaded"; id: number; error?: ReloadError }
  | { type: "reload"; id: number; swap?: ConfigSwap }
  | { type: "shutdown" }
  | { type: "cancel"; pid: number; secret: number }
  | { type: "admin"; id: number; sql: string }
  | { type: "admin-started"; id: number }
  | { type: "tables-changed"; database: string }
  | { type: "stopped" };

/** A failed reload as it crosses threads. */
export interface ReloadError {
  /** The error's message. */
  message: string;
  /** A ConfigError's problems. */
  problems?: string[];
}

/** Turns an error into a message that can cross threads. */
export function reloadError(e: unknown): ReloadError {
  if (e instanceof ConfigError) return { message: e.message, problems: e.problems };
  return { message: errorMessage(e) };
}

/** The error a {@linkcode ReloadError} stands for. */
export function fromReloadError(e: ReloadError): Error {
  return e.problems !== undefined ? new ConfigError(e.problems) : new Error(e.message);
}

/** One Deno Worker and what the main thread waits for from it. */
interface Member {
  readonly index: number;
  readonly worker: Worker;
  stopped: boolean;
  readonly done: PromiseWithResolvers<void>;
}

/** Workers 1..N-1 as seen from the main thread (worker 0). */
export class WorkerGroup {
  readonly #proxy: Proxy;
  readonly #members: Member[] = [];
  readonly #pending = new Map<
    number,
    { member: Member; answer: PromiseWithResolvers<ReloadError | undefined> }
  >();
  #nextId = 1;
  #shuttingDown = false;

  private constructor(proxy: Proxy) {
    this.#proxy = proxy;
  }

  /**
   * Starts workers 1..`count`-1 next to `proxy` (worker 0, started already, whose port they
   * share) and links them; resolves once every worker listens. Throws when one can't start (the
   * ones started are stopped again).
   */
  static async start(proxy: Proxy, options: { count: number }): Promise<WorkerGroup> {
    const group = new WorkerGroup(proxy);
    const port = proxy.addr.port;
    const started: Promise<void>[] = [];
    for (let index = 1; index < options.count; index++) {
      started.push(group.#spawn({ index, count: options.count, port }));
    }
    try {
      await Promise.all(started);
    } catch (e) {
      for (const m of group.#members) m.worker.terminate();
      throw e;
    }
    proxy.group = {
      reload: (options) => group.reload(options),
      shutdown: () => group.#shutdown(),
      cancel: (pid, secret) => group.#cancel(pid, secret, null),
      admin: (sql) => group.#admin(sql, null),
      tablesChanged: (database) => group.#tablesChanged(database, null),
    };
    return group;
  }

  /** Resolves once every worker has finished its shutdown (or died). */
  get finished(): Promise<void> {
    return Promise.all(this.#members.map((m) => m.done.promise)).then(() => {});
  }

  #spawn(options: { index: number; count: number; port: number }): Promise<void> {
    const worker = new Worker(new URL("./worker.ts", import.meta.url), {
      type: "module",
      name: `pgdog worker ${options.index}`,
    });
    const member: Member = {
      index: options.index,
      worker,
      stopped: false,
      done: Promise.withResolvers<void>(),
    };
    this.#members.push(member);
    const ready = Promise.withResolvers<void>();
    worker.onmessage = (e: MessageEvent<FromWorker>) => {
      const msg = e.data;
      if (msg.type === "started") ready.resolve();
      else if (msg.type === "failed") {
        ready.reject(new Error(`worker ${options.index}: ${msg.message}`));
      } else this.#onMessage(member, msg);
    };
    worker.onerror = (e: ErrorEvent) => {
      // A bug in a worker: it is gone (its listener with it); the others keep serving.
      e.preventDefault();
      log.error(`worker ${options.index} failed: ${e.message}`);
      ready.reject(new Error(`worker ${options.index}: ${e.message}`));
      this.#stop(member);
    };
    worker.postMessage(
      { type: "start", config: this.#proxy.config, ...options } satisfies ToWorker,
    );
    return ready.promise;
  }

  #stop(member: Member): void {
    if (member.stopped) return;
    member.stopped = true;
    member.worker.terminate();
    member.done.resolve();
    for (const [id, pending] of this.#pending) {
      if (pending.member !== member) continue;
      this.#pending.delete(id);
      pending.answer.resolve({ message: "the worker stopped" });
    }
  }

  #post(member: Member, msg: ToWorker): void {
    if (!member.stopped) member.worker.postMessage(msg);
  }

  #onMessage(member: Member, msg: FromWorker): void {
    switch (msg.type) {
      case "admin-started":
      case "reloaded": {
        const pending = this.#pending.get(msg.id);
        this.#pending.delete(msg.id);
        pending?.answer.resolve(msg.type === "reloaded" ? msg.error : undefined);
        break;
      }
      case "reload":
        this.reload({ swap: msg.swap }).then(
          () => this.#post(member, { type: "reload-result", id: msg.id }),
          (e) => this.#post(member, { type: "reload-result", id: msg.id, error: reloadError(e) }),
        );
        break;
      case "shutdown":
        this.#proxy.shutdown();
        break;
      case "cancel":
        this.#cancel(msg.pid, msg.secret, member);
        break;
      case "admin":
        this.#admin(msg.sql, member).then(() =>
          this.#post(member, { type: "admin-relayed", id: msg.id })
        );
        break;
      case "tables-changed":
        this.#tablesChanged(msg.database, member);
        break;
      case "stopped":
        this.#stop(member);
        break;
    }
  }

  /**
   * RELOAD or SIGHUP anywhere: reads the files once (in the main thread), applies them here and
   * sends them to every worker. Throws (and changes nothing) when the files are invalid.
   */
  async reload(options: { swap?: ConfigSwap } = {}): Promise<void> {
    const proxy = this.#proxy;
    const next = await proxy.nextConfig(options);
    await proxy.apply(next);
    const answers = this.#members.filter((m) => !m.stopped).map((m) => {
      const id = this.#nextId++;
      const answer = Promise.withResolvers<ReloadError | undefined>();
      this.#pending.set(id, { member: m, answer });
      this.#post(m, { type: "reload", id, config: next });
      return answer.promise.then((error) => ({ index: m.index, error }));
    });
    const failed = (await Promise.all(answers)).filter((a) => a.error !== undefined);
    if (failed.length > 0) {
      // The files were valid here; a worker failing on them is a bug or a file that changed.
      throw new Error(
        failed.map((f) => `worker ${f.index}: ${f.error!.message}`).join("; "),
      );
    }
  }

  #shutdown(): void {
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    for (const m of this.#members) this.#post(m, { type: "shutdown" });
  }

  /**
   * An admin command that changes state, run on one worker: every other worker runs it too.
   * Resolves once each has started it (its state change made).
   */
  #admin(sql: string, from: Member | null): Promise<void> {
    if (from !== null) this.#proxy.runRelayed(sql);
    const started = this.#members.filter((m) => m !== from && !m.stopped).map((m) => {
      const id = this.#nextId++;
      const answer = Promise.withResolvers<ReloadError | undefined>();
      this.#pending.set(id, { member: m, answer });
      this.#post(m, { type: "admin", id, sql });
      return answer.promise;
    });
    return Promise.all(started).then(() => {});
  }

  /** DDL passed through one worker: every other one forgets the database's column orders. */
  #tablesChanged(database: string, from: Member | null): void {
    if (from !== null) this.#proxy.forgetColumns(database);
    for (const m of this.#members) {
      if (m !== from) this.#post(m, { type: "tables-changed", database });
    }
  }

  /** A cancel request nobody here knew: every other worker checks its clients. */
  #cancel(pid: number, secret: number, from: Member | null): void {
    if (from !== null && this.#proxy.cancelHere(pid, secret)) return;
    for (const m of this.#members) {
      if (m !== from) this.#post(m, { type: "cancel", pid, secret });
    }
  }
}

/**
 * Warnings for pools smaller than the number of workers: each worker still gets one connection
 * (so every worker can serve the pool's clients), so such a pool may open `workers` connections.
 */
export function smallPoolWarnings(config: Config): string[] {
  const count = config.general.workers;
  if (count <= 1) return [];
  const out: string[] = [];
  for (const user of config.users) {
    for (const database of config.databases) {
      if (database.name !== user.database) continue;
      const { pool_size } = resolvePoolSettings(config, { database, user });
      if (pool_size >= count) continue;
      out.push(
        `pool of user "${user.name}" on database "${database.name}" (${database.host}): ` +
          `pool_size ${pool_size} is below workers (${count}); each worker opens up to 1 ` +
          `connection, so up to ${count} in all`,
      );
    }
  }
  return out;
}
