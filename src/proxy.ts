/**
 * The proxy: the listener, the pools built from the configuration, the registry of connected
 * clients (for cancel requests), the periodic upkeep, and graceful shutdown.
 *
 * @module
 */

import type { Config, GeneralConfig } from "./config/types.ts";
import { ConfigError } from "./config/load.ts";
import { readTlsFiles, type TlsFiles } from "./config/tls_files.ts";
import { balancerSettings, Databases } from "./backend/databases.ts";
import { Client } from "./frontend/client.ts";
import type { ClientHost } from "./frontend/client_host.ts";
import { PreparedCache } from "./frontend/prepared.ts";
import { loadParser, QueryRouter } from "./router/mod.ts";
import { type PluginSet, pluginsKey, startPlugins } from "./plugin/mod.ts";
import { Listener } from "./net/listener.ts";
import { configureLogging, errorMessage, log, setLogWorker } from "./log.ts";
import { adminCommand, type AdminHost, StatsWindow } from "./admin/mod.ts";
import { Gate } from "./admin/gate.ts";
import { metricsRegistry, serveMetrics } from "./metrics/mod.ts";
import { healthy, STATUS_PAGE, statusJson, TpsSeries } from "./admin/status.ts";
import { nodeIdFromEnv, UniqueIdGenerator } from "./sharding/unique_id.ts";
import { SqlState } from "./protocol/sqlstate.ts";
import { closeQuietly } from "./net/stream.ts";
import type { WorkerShare } from "./config/pool_settings.ts";
import { twoPhaseCommits } from "./two_pc/mod.ts";
import type { ReshardingHost } from "./resharding/tasks.ts";
import { saveSwapped, swapDatabases } from "./resharding/config_swap.ts";
import type { ServerTls } from "./backend/connect.ts";

/** How often pools are maintained (waiter deadlines, idle and lifetime limits). */
function buildDatabases(
  config: Config,
  options: { previous?: Databases; worker?: WorkerShare },
): Databases {
  const g = config.general;
  return new Databases(config, {
    serverTls: serverTlsOf(g),
    previous: options.previous,
    worker: options.worker,
  });
}

/** TLS toward servers (`[general] tls_verify`), or undefined when disabled. */
function serverTlsOf(g: GeneralConfig): ServerTls | undefined {
  return g.tls_verify === "disabled" ? undefined : { mode: g.tls_verify, ca: tlsFiles(g).serverCa };
}

function routingSettings(config: Config): ClientHost["routing"] {
  return {
    query_parser: config.general.query_parser,
    read_write_strategy: config.general.read_write_strategy,
  };
}

function clientSettings(config: Config): ClientHost["settings"] {
  const g = config.general;
  return {
    tls: tlsFiles(g).acceptor,
    tls_client_required: g.tls_client_required,
    auth_type: g.auth_type,
    client_login_timeout: g.client_login_timeout,
    max_message_size: g.max_message_size,
    query_size_limit: g.query_size_limit,
    query_size_limit_action: g.query_size_limit_action,
    prepared_statements: g.prepared_statements,
    prepared_statements_limit: g.prepared_statements_limit,
    cross_shard_buffer_limit: g.cross_shard_buffer_limit,
    expanded_explain: g.expanded_explain,
    log_connections: g.log_connections,
    log_disconnections: g.log_disconnections,
  };
}

const MAINTENANCE_INTERVAL_MS = 100;

/**
 * How one worker of several (`[general]` workers > 1) reaches the others: RELOAD, SHUTDOWN and
 * cancel requests arriving at one worker must reach all of them.
 */
export interface WorkerGroupLink {
  /**
   * Re-reads the configuration files and applies them in every worker; with `swap`, applies the
   * running configuration with two databases' names swapped instead (a resharding cutover).
   */
  reload(options?: { swap?: ConfigSwap }): Promise<void>;
  /** Starts the shutdown of every worker. */
  shutdown(): void;
  /** Passes a cancel request this worker has no client for to the other workers. */
  cancel(pid: number, secret: number): void;
  /**
   * Passes an admin command that changes state (PAUSE, SET, BAN, ...) to the other workers;
   * resolves (never rejects) once each has started it.
   */
  admin(sql: string): Promise<void>;
  /** DDL on `database` passed through this worker: the others forget its column orders too. */
  tablesChanged(database: string): void;
}

/** A cutover's change of the configuration: databases `a` and `b` trade names. */
export interface ConfigSwap {
  a: string;
  b: string;
  /** Written to the configuration files too (with backups), then read back. */
  save: boolean;
}

/** Options for {@linkcode Proxy}. */
export interface ProxyOptions {
  /** This proxy is one worker of several: its pools get this worker's share of every size. */
  worker?: WorkerShare;
  /** Listen on this port instead of `[general]` port (workers after the first use its port). */
  port?: number;
}

/** A running proxy. */
export class Proxy implements ClientHost {
  config: Config;
  databases: Databases;
  settings: ClientHost["settings"];
  /** Every distinct prepared statement clients use (transaction mode). */
  readonly prepared: PreparedCache = new PreparedCache();
  /** Parsed queries, by normalized text. */
  readonly router: QueryRouter;
  /** Ids for `pgdog.unique_id()`, from this node's NODE_ID. */
  readonly uniqueIds: UniqueIdGenerator;
  routing: ClientHost["routing"];
  /** The `[[plugins]]`, running (null when none is configured). */
  plugins: PluginSet | null = null;
  /** Reads the configuration files again (set by the CLI; RELOAD and SIGHUP use it). */
  reloader: (() => Promise<Config>) | null = null;
  /** The configuration files (set by the CLI; a cutover with cutover_save_config writes them). */
  configFiles: { configPath: string; usersPath: string } | null = null;
  shuttingDown = false;
  /** Set when this proxy is one of several workers (see {@linkcode WorkerGroupLink}). */
  group: WorkerGroupLink | null = null;
  /** Which worker this is, when there are several. */
  readonly worker: WorkerShare | undefined;
  readonly #port: number | undefined;
  readonly #clients = new Set<Client>();
  readonly #byPid = new Map<number, Client>();
  #listener: Listener | null = null;
  #maintenance: ReturnType<typeof setInterval> | null = null;
  #stopped: Promise<void> | null = null;

  constructor(config: Config, options: ProxyOptions = {}) {
    this.config = config;
    this.worker = options.worker !== undefined && options.worker.count > 1
      ? options.worker
      : undefined;
    this.#port = options.port;
    if (this.worker !== undefined) setLogWorker(this.worker.index);
    const g = config.general;
    configureLogging({ level: g.log_level, format: g.log_format });
    this.databases = buildDatabases(config, { worker: this.worker });
    this.router = new QueryRouter({ cacheLimit: g.query_cache_limit });
    let nodeId: string | undefined;
    try {
      nodeId = Deno.env.get("NODE_ID");
    } catch {
      // No permission to read it: node 0.
    }
    this.uniqueIds = new UniqueIdGenerator({ nodeId: nodeIdFromEnv(nodeId), lane: this.worker });
    twoPhaseCommits.nodeId = nodeIdFromEnv(nodeId);
    twoPhaseCommits.worker = this.worker?.index ?? 0;
    twoPhaseCommits.workers = this.worker?.count ?? 1;
    this.routing = routingSettings(config);
    this.settings = clientSettings(config);
  }

  /** Makes `config.general` values changed at run time (admin SET) take effect. */
  applySettings(): void {
    const g = this.config.general;
    this.routing = routingSettings(this.config);
    const balance = balancerSettings(this.config);
    for (const cluster of this.databases.clusters()) cluster.settings = balance;
    for (const pool of this.databases.pools()) {
      pool.config = { ...pool.config, checkout_timeout: g.checkout_timeout };
    }
    this.router.setLimit(g.query_cache_limit);
  }

  /**
   * Applies the configuration files as they are now: hosts that keep their address and
   * credentials keep their pools and server connections (pool settings change in place), new
   * databases and users appear, removed pools drain. Connected clients stay; their next
   * transaction uses the new configuration. Throws (ConfigError with the problems, as at
   * startup) and changes nothing when the files are invalid. With several workers, every worker
   * applies the new configuration.
   */
  async reload(options: { swap?: ConfigSwap } = {}): Promise<void> {
    if (this.group !== null) return await this.group.reload(options);
    await this.apply(await this.nextConfig(options));
  }

  /**
   * The configuration a reload applies: the files as they are now, or (a cutover) the running
   * one with two databases' names swapped, written to the files first when `save`.
   */
  async nextConfig(options: { swap?: ConfigSwap }): Promise<Config> {
    const swap = options.swap;
    if (swap && !swap.save) return swapDatabases(this.config, swap.a, swap.b);
    if (this.reloader === null || this.configFiles === null) {
      throw new Error("pgdog was started without configuration files: nothing to reload");
    }
    if (swap) await saveSwapped({ ...this.configFiles, a: swap.a, b: swap.b });
    return await this.reloader();
  }

  /** Applies a configuration read (and validated) already: the second half of a reload. */
  async apply(next: Config): Promise<void> {
    // Changed plugins start before anything switches: one that can't start refuses the reload.
    const oldPlugins = this.plugins;
    const samePlugins = pluginsKey(next.plugins) === (oldPlugins?.key ?? pluginsKey([]));
    const plugins = samePlugins ? oldPlugins : await startPlugins(next);
    if (plugins !== null) await loadParser();
    const previous = this.databases;
    const databases = buildDatabases(next, { previous, worker: this.worker });
    const clusters = [...databases.clusters()];
    if (
      next.general.query_parser !== "off" &&
        clusters.some((c) => c.hasReplicas || c.sharding !== null) ||
      next.general.query_parser === "on" || clusters.some((c) => c.sharding !== null)
    ) await loadParser();
    this.config = next;
    this.databases = databases;
    this.plugins = plugins;
    twoPhaseCommits.configure(next, { databases });
    if (!samePlugins) oldPlugins?.close();
    this.routing = routingSettings(next);
    this.settings = clientSettings(next);
    configureLogging({ level: next.general.log_level, format: next.general.log_format });
    this.router.setLimit(next.general.query_cache_limit);
    databases.retire(previous);
    databases.startMonitors();
    log.info("configuration reloaded");
  }

  /**
   * Loads the query parser when some database needs it, binds the listening socket, starts
   * upkeep and the monitors, and opens `min_pool_size` connections.
   */
  async start(): Promise<void> {
    const parser = this.config.general.query_parser;
    const clusters = [...this.databases.clusters()];
    // A sharded database can't find its shards without the parser, whatever query_parser says.
    const needsParser = parser === "on" || clusters.some((c) => c.sharding !== null) ||
      (parser === "auto" && clusters.some((c) => c.hasReplicas));
    if (needsParser || this.config.plugins.length > 0) await loadParser();
    this.plugins = await startPlugins(this.config);
    this.databases.startMonitors();
    // Transactions the last run left half committed are finished before clients come in.
    twoPhaseCommits.configure(this.config, { databases: this.databases });
    await twoPhaseCommits.start();
    const { host } = this.config.general;
    const port = this.#port ?? this.config.general.port;
    this.#listener = new Listener(
      { hostname: host, port, reusePort: this.worker !== undefined },
      (conn) => this.#accept(conn),
    );
    this.#maintenance = setInterval(
      () => this.#maintain(Date.now()),
      MAINTENANCE_INTERVAL_MS,
    );
    this.#maintain(Date.now());
    // With several workers, the HTTP endpoints are the first worker's (the main thread's).
    const first = this.worker === undefined || this.worker.index === 0;
    const metricsPort = this.config.general.openmetrics_port;
    if (metricsPort !== undefined && first) {
      const registry = metricsRegistry(this, {
        namespace: this.config.general.openmetrics_namespace,
      });
      this.#metrics = serveMetrics(registry, {
        hostname: host,
        port: metricsPort,
        onListen: (a) => log.info(`metrics on http://${a.hostname}:${a.port}/metrics`),
      });
    }
    const healthPort = this.config.general.healthcheck_port;
    if (healthPort !== undefined && first) {
      this.#health = Deno.serve({
        hostname: host,
        port: healthPort,
        onListen: (a) => log.info(`healthcheck on http://${a.hostname}:${a.port}/`),
      }, (req) => this.#healthResponse(req));
    }
    const addr = this.#listener.addr;
    if (this.worker === undefined) log.always(`listening on ${addr.hostname}:${addr.port}`);
    else log.info(`accepting connections on port ${addr.port}`);
  }

  #health: Deno.HttpServer | null = null;
  #metrics: Deno.HttpServer | null = null;

  /**
   * healthcheck_port: `/` is the status page, `/status.json` its data, `/health` plain text; the
   * page and `/health` answer 200 while some pool is online, 502 otherwise.
   */
  #healthResponse(req: Request): Response {
    const path = new URL(req.url).pathname;
    if (path === "/status.json") {
      return Response.json(statusJson(this, this.#tps), {
        headers: { "cache-control": "no-store" },
      });
    }
    const status = healthy(this) ? 200 : 502;
    if (path === "/") {
      return new Response(STATUS_PAGE, {
        status,
        headers: { "content-type": "text/html; charset=utf-8" },
      });
    }
    if (path === "/health") return new Response(status === 200 ? "up\n" : "down\n", { status });
    return new Response("not found\n", { status: 404 });
  }

  readonly #tps = new TpsSeries();

  #maintain(now: number): void {
    this.databases.maintain(now);
    if (this.#health !== null) {
      this.#tps.tick(now, () => {
        let n = 0;
        for (const p of this.databases.pools()) n += p.totals().transactions;
        return n;
      });
    }
    this.stats.tick(now, {
      period: this.config.general.stats_period,
      pools: () => this.databases.pools(),
    });
    const g = this.config.general;
    if (
      g.query_timeout > 0 || g.client_idle_timeout > 0 || g.client_idle_in_transaction_timeout > 0
    ) {
      const limits = {
        query: g.query_timeout,
        idle: g.client_idle_timeout,
        idleInTransaction: g.client_idle_in_transaction_timeout,
        grace: g.rollback_timeout,
      };
      for (const client of this.#clients) client.checkTimeouts(now, limits);
    }
  }

  /** Pool counters for SHOW STATS averages. */
  readonly stats: StatsWindow = new StatsWindow();
  /** PAUSE / RESUME / MAINTENANCE: whether new transactions may start. */
  readonly gate: Gate = new Gate();

  /** Part of {@linkcode AdminHost}: with several workers, the others run the command too. */
  relay(sql: string): Promise<void> {
    if (this.#relaying || this.group === null) return Promise.resolve();
    return this.group.admin(sql);
  }

  #relaying = false;

  /**
   * Runs an admin command another worker passed on (without passing it on again). Its state
   * change is made when this returns; the promise settles when the command is done (never
   * rejects).
   */
  async runRelayed(sql: string): Promise<void> {
    let answer: ReturnType<typeof adminCommand>;
    this.#relaying = true;
    try {
      answer = adminCommand(sql, this); // relays (or not) before its first await
    } finally {
      this.#relaying = false;
    }
    try {
      const result = await answer;
      if ("error" in result) throw new Error(result.error.message);
    } catch (e) {
      log.warn(`admin command from another worker (${sql}): ${errorMessage(e)}`);
    }
  }

  /** Part of {@linkcode AdminHost}: what resharding tasks use of this proxy. */
  get resharding(): ReshardingHost {
    return {
      config: () => this.config,
      plugins: () => this.plugins,
      serverTls: () => serverTlsOf(this.config.general),
      maintenance: async (on) => {
        this.gate.maintenance(on);
        await this.relay(on ? "MAINTENANCE ON" : "MAINTENANCE OFF");
      },
      activeServers: (database) => {
        let n = 0;
        for (const pool of this.databases.pools()) {
          // Servers in use, and clients that passed the gate and wait for one.
          if (pool.database === database) {
            n += pool.servers.size - pool.idle.length + pool.waiting;
          }
        }
        return n;
      },
      swapConfig: (swap) => this.reload({ swap }),
    };
  }

  /** Part of the client host: the admin database reads this proxy. */
  get console(): AdminHost {
    return this;
  }

  /** The address the proxy listens on. */
  get addr(): Deno.NetAddr {
    if (!this.#listener) throw new Error("proxy not started");
    return this.#listener.addr;
  }

  /** Connected clients (logging in or logged in). */
  get clients(): ReadonlySet<Client> {
    return this.#clients;
  }

  #accept(conn: Deno.TcpConn): void {
    if (this.shuttingDown) {
      closeQuietly(conn);
      return;
    }
    const remote = conn.remoteAddr as Deno.NetAddr;
    const client = new Client(conn, { host: this, addr: `${remote.hostname}:${remote.port}` });
    this.#clients.add(client);
    client.run().finally(() => this.#clients.delete(client));
  }

  /** Part of {@linkcode ClientHost}: a client finished logging in. */
  register(client: Client): void {
    this.#byPid.set(client.id, client);
  }

  /** Part of {@linkcode ClientHost}: a client left. */
  unregister(client: Client): void {
    if (this.#byPid.get(client.id) === client) this.#byPid.delete(client.id);
  }

  /**
   * Part of {@linkcode ClientHost}: a CancelRequest arrived. Only the exact key cancels anything;
   * with several workers, a key this worker doesn't know goes to the others.
   */
  cancel(pid: number, secret: number): void {
    if (!this.cancelHere(pid, secret)) this.group?.cancel(pid, secret);
  }

  /**
   * Part of {@linkcode ClientHost}: DDL on `database` passed through pgdog, so the column orders
   * known for it are read again, in every worker.
   */
  tablesChanged(database: string): void {
    this.forgetColumns(database);
    this.group?.tablesChanged(database);
  }

  /** Forgets the column orders this worker knows for `database`. */
  forgetColumns(database: string): void {
    for (const cluster of this.databases.clusters()) {
      if (cluster.name === database) cluster.columns.clear();
    }
  }

  /** Cancels the request of this worker's client with that key; false when there is none. */
  cancelHere(pid: number, secret: number): boolean {
    const client = this.#byPid.get(pid);
    if (!client || client.secret !== secret) return false;
    client.cancel();
    return true;
  }

  /**
   * Stops accepting, lets running transactions finish for up to `shutdown_timeout`, then closes
   * every client and server connection. Idempotent; resolves when everything is closed. With
   * several workers, every worker shuts down.
   */
  shutdown(): Promise<void> {
    this.group?.shutdown();
    this.#stopped ??= this.#shutdown().finally(() => this.#finished.resolve());
    return this.#stopped;
  }

  readonly #finished = Promise.withResolvers<void>();

  /** Settles once a shutdown (by signal, SHUTDOWN in the admin database, or a call) is over. */
  get finished(): Promise<void> {
    return this.#finished.promise;
  }

  async #shutdown(): Promise<void> {
    this.shuttingDown = true;
    this.#listener?.close();
    await this.#health?.shutdown();
    await this.#metrics?.shutdown();
    log.info(
      `shutting down: waiting up to ${this.config.general.shutdown_timeout} ms for transactions to finish`,
    );
    const deadline = Date.now() + this.config.general.shutdown_timeout;
    for (;;) {
      for (const client of this.#clients) {
        // Idle clients go now; clients inside a transaction go when it ends.
        if (client.server === null || client.server.clean) client.terminate(SHUTDOWN);
      }
      if (this.#clients.size === 0 || Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    if (this.#clients.size > 0) {
      log.warn(
        `shutdown_timeout reached with ${this.#clients.size} client(s) still in a transaction; closing them`,
      );
      for (const client of this.#clients) client.terminate(SHUTDOWN);
    }
    if (this.#maintenance !== null) clearInterval(this.#maintenance);
    this.#maintenance = null;
    // Servers being cleaned up get a moment to finish, then everything closes.
    const settle = Date.now() + 1000;
    while (this.databases.pools().some((p) => p.active > 0) && Date.now() < settle) {
      await new Promise((r) => setTimeout(r, 20));
    }
    this.databases.close();
    for (const pool of this.databases.pools()) {
      for (const s of [...pool.servers]) s.close("shutdown");
    }
    await this.#listener?.done;
    await this.plugins?.close();
    this.router.close();
    twoPhaseCommits.stop();
    log.info("shutdown complete");
  }
}

/**
 * Reads the certificate files the configuration names (checked once already when it was
 * loaded; this catches a file that changed since).
 */
function tlsFiles(general: GeneralConfig): TlsFiles {
  const verifies = general.tls_verify === "verify_ca" || general.tls_verify === "verify_full";
  const { files, problems } = readTlsFiles({
    tls_certificate: general.tls_certificate,
    tls_private_key: general.tls_private_key,
    tls_server_ca_certificate: verifies ? general.tls_server_ca_certificate : undefined,
  });
  if (problems.length > 0) {
    throw new ConfigError(problems.map(({ key, message }) => `[general] ${key}: ${message}`));
  }
  return files;
}

const SHUTDOWN = {
  severity: "FATAL",
  code: SqlState.AdminShutdown,
  message: "pgdog is shutting down",
};
