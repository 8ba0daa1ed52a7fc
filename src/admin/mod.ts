/**
 * The admin database: operators connect with psql to database `admin` (PgDog's `[admin]` name,
 * user and password) and run commands with PgDog's (and PgBouncer's) column names, so dashboards
 * and scripts written for them keep working. Commands are case-insensitive, a trailing `;` is
 * allowed; any other `SHOW x` answers one empty column named x, so client probes don't fail.
 *
 * @module
 */

import type { PluginStats } from "../plugin/mod.ts";
import type { Config } from "../config/types.ts";
import type { Databases, HostPlace as PoolPlace } from "../backend/databases.ts";
import type { Pool, PoolTotals } from "../backend/pool.ts";
import type { Server } from "../backend/server.ts";
import type { QueryRouter } from "../router/mod.ts";
import { appendError, type ErrorFields, MessageBuilder, Msg } from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { VERSION } from "../version.ts";
import type { Gate } from "./gate.ts";
import { errorMessage } from "../log.ts";
import { twoPhaseCommits } from "../two_pc/mod.ts";
import type { ReshardingHost } from "../resharding/tasks.ts";
import { isReshardingCommand, RESHARDING_COMMANDS, reshardingCommand } from "./resharding.ts";

/** What SHOW CLIENTS reads of a connected client. */
export interface ClientView {
  readonly id: number;
  readonly user: string;
  readonly database: string;
  readonly addr: string;
  readonly state: string;
  readonly connectedAt: number;
  readonly lastActivity: number;
  readonly queries: number;
  readonly transactions: number;
  readonly applicationName: string;
  /** Why it keeps its server between transactions (advisory locks, temporary objects, ...), or "". */
  readonly pinned: string;
  /** The admin console's own clients are listed too, as PgBouncer does. */
  readonly admin: boolean;
}

/** What the admin console reads and changes. */
export interface AdminHost {
  readonly config: Config;
  readonly databases: Databases;
  readonly clients: ReadonlySet<ClientView>;
  readonly router: QueryRouter;
  readonly prepared: { values(): IterableIterator<{ name: string; query: string; refs: number }> };
  /** Graceful shutdown (SHUTDOWN). */
  shutdown(): Promise<void>;
  /** Re-reads the configuration files (RELOAD); throws ConfigError when they are invalid. */
  reload(): Promise<void>;
  /** Makes changed `config.general` values take effect (SET). */
  applySettings(): void;
  /** The two latest snapshots of pool counters, `stats_period` apart (SHOW STATS averages). */
  readonly stats: StatsWindow;
  /** PAUSE / RESUME / MAINTENANCE. */
  readonly gate: Gate;
  /** The running plugins (SHOW PLUGINS). */
  readonly plugins: { stats(): PluginStats[] } | null;
  /**
   * With several workers (`[general] workers`): passes a command that changes state to the other
   * workers, which run it too (SHOW commands describe the worker that answers). Resolves (never
   * rejects) once every other worker has started it.
   */
  relay?(sql: string): Promise<void>;
  /** What resharding tasks use (RESHARD, COPY_DATA, CUTOVER, ...). */
  readonly resharding?: ReshardingHost;
}

/** Admin commands (first word) that change state: with several workers, every worker runs them. */
const RELAYED = new Set([
  "pause",
  "resume",
  "maintenance",
  "reconnect",
  "healthcheck",
  "set",
  "reset",
  "ban",
  "unban",
]);

/** Pool counters at the ends of the last full `stats_period`. */
export class StatsWindow {
  #previous = new Map<number, PoolTotals>();
  #current = new Map<number, PoolTotals>();
  #seconds = 0;
  #at = 0;

  /** Takes a snapshot when a period has passed since the last one. */
  tick(now: number, options: { period: number; pools: () => Iterable<Pool> }): void {
    if (this.#at !== 0 && now - this.#at < options.period) return;
    this.#previous = this.#current;
    this.#current = new Map();
    for (const pool of options.pools()) this.#current.set(pool.id, pool.totals());
    this.#seconds = this.#at === 0 ? 0 : (now - this.#at) / 1000;
    this.#at = now;
  }

  /** What happened in pool `id` during the last full period, and its length in seconds. */
  delta(id: number): { d: PoolTotals; seconds: number } | null {
    const a = this.#previous.get(id);
    const b = this.#current.get(id);
    if (!a || !b || this.#seconds <= 0) return null;
    const d = { ...b };
    for (const k of Object.keys(d) as (keyof PoolTotals)[]) d[k] = b[k] - a[k];
    return { d, seconds: this.#seconds };
  }
}

/** A command's answer: rows under columns and a command tag, or an error. */
export type AdminAnswer =
  | {
    columns: string[];
    rows: (string | number | boolean | null)[][];
    tag: string;
    /** Column type OIDs (text when left out); only int8 (20) and text (25) are used. */
    types?: number[];
  }
  | { error: ErrorFields };

/** The commands the console knows, for the error that lists them. */
export const ADMIN_COMMANDS = [
  "SHOW POOLS",
  "SHOW CLIENTS",
  "SHOW SERVERS",
  "SHOW CONFIG",
  "SHOW LISTS",
  "SHOW VERSION",
  "SHOW BANS",
  "SHOW QUERY_CACHE",
  "SHOW PREPARED",
  "SHOW REPLICATION",
  "SHOW STATS",
  "SHOW PLUGINS",
  "SHOW TRANSACTIONS",
  "RESET QUERY_CACHE",
  "BAN [id]",
  "UNBAN [id]",
  "RELOAD",
  "RECONNECT",
  "HEALTHCHECK [id]",
  "SET <setting> TO <value>",
  "PAUSE [db]",
  "RESUME [db]",
  "MAINTENANCE ON|OFF",
  "SHUTDOWN",
  ...RESHARDING_COMMANDS,
];

/** How long PAUSE waits for running transactions before it says they are still running. */
const PAUSE_WAIT_MS = 60_000;

const time = (ms: number): string => new Date(ms).toISOString();

/**
 * Runs one admin command. With several workers, a command that changes state is passed on to
 * the other workers first; the answer waits until each of them has started it (a PAUSE has
 * closed every worker's gate).
 */
export async function adminCommand(sql: string, host: AdminHost): Promise<AdminAnswer> {
  const text = sql.trim().replace(/;\s*$/, "").trim();
  const words = text.split(/\s+/).map((w) => w.toLowerCase());
  const relayed = RELAYED.has(words[0]) ? host.relay?.(text) : undefined;
  const answer = await runCommand(text, words, host);
  await relayed;
  return answer;
}

async function runCommand(text: string, words: string[], host: AdminHost): Promise<AdminAnswer> {
  // Database names keep their case.
  const arg = text.split(/\s+/)[1];
  if (words[0] === "pause" && words.length <= 2) return await pause(arg, host);
  if (words.length === 1 && words[0] === "reload") return await reload(host);
  if (words.length === 1 && words[0] === "reconnect") {
    for (const { pool } of poolsWithPlace(host)) pool.reconnect();
    return { columns: [], rows: [], tag: "RECONNECT" };
  }
  if (words[0] === "healthcheck" && words.length <= 2) return await healthcheck(arg, host);
  const set = /^set\s+([a-z_]+)\s*(?:to|=)\s*'?([^']*?)'?$/i.exec(text);
  if (set) return setting(set[1].toLowerCase(), set[2], host);
  if (words[0] === "resume" && words.length <= 2) {
    host.gate.resume(arg);
    return { columns: [], rows: [], tag: "RESUME" };
  }
  if (
    words[0] === "maintenance" && words.length === 2 && (words[1] === "on" || words[1] === "off")
  ) {
    host.gate.maintenance(words[1] === "on");
    return { columns: [], rows: [], tag: "MAINTENANCE" };
  }
  if (isReshardingCommand(words)) {
    return await reshardingCommand(text.split(/\s+/), host.resharding);
  }
  if (words[0] === "show" && words.length === 2) return show(words[1], host);
  if (words.length === 2 && words[0] === "reset" && words[1] === "query_cache") {
    host.router.clear();
    return { columns: [], rows: [], tag: "RESET" };
  }
  if ((words[0] === "ban" || words[0] === "unban") && words.length <= 2) {
    return banCommand(words[0], words[1], host);
  }
  if (words.length === 1 && words[0] === "shutdown") {
    // Answered first: the shutdown then ends this session with the others.
    setTimeout(() => host.shutdown(), 0);
    return { columns: [], rows: [], tag: "SHUTDOWN" };
  }
  return {
    error: {
      severity: "ERROR",
      code: SqlState.SyntaxError,
      message: text === ""
        ? "empty admin command"
        : `unknown admin command: ${text.length > 80 ? `${text.slice(0, 80)}...` : text}`,
      hint: `The admin database knows: ${ADMIN_COMMANDS.join(", ")}.`,
    },
  };
}

function show(what: string, host: AdminHost): AdminAnswer {
  switch (what) {
    case "pools":
      return showPools(host);
    case "clients":
      return showClients(host);
    case "servers":
      return showServers(host);
    case "config":
      return {
        columns: ["name", "value"],
        rows: Object.entries(host.config.general).map(([k, v]) => [k, formatValue(v)]),
        tag: "SHOW",
      };
    case "lists":
      return showLists(host);
    case "version":
      return {
        columns: ["version"],
        rows: [[`pgdog ${VERSION} (Deno ${Deno.version.deno})`]],
        tag: "SHOW",
      };
    case "bans":
      return showBans(host);
    case "query_cache":
      return {
        columns: ["query", "hits", "direct", "multi"],
        rows: [...host.router.entries()].map((e) => [e.query, e.hits, e.direct, e.multi]),
        tag: "SHOW",
      };
    case "replication":
      return showReplication(host);
    case "stats":
      return showStats(host);
    case "plugins":
      return {
        columns: [
          "name",
          "isolation",
          "hooks",
          "state",
          "calls",
          "errors",
          "timeouts",
          "restarts",
          "channel",
          "cache_hits",
          "cached",
        ],
        rows: (host.plugins?.stats() ?? []).map((p) => [
          p.name,
          p.isolation,
          p.hooks,
          p.state,
          p.calls,
          p.errors,
          p.timeouts,
          p.restarts,
          p.channel,
          p.cacheHits,
          p.cached,
        ]),
        tag: "SHOW",
      };
    case "transactions":
      return showTransactions();
    case "prepared":
      return {
        columns: ["name", "statement", "used_by"],
        rows: [...host.prepared.values()].map((p) => [p.name, p.query, p.refs]),
        tag: "SHOW",
      };
    default:
      // Client probes (SHOW server_version, ...) get an answer rather than an error.
      return { columns: [what], rows: [], tag: "SHOW" };
  }
}

/**
 * The two-phase commits in progress (preparing, committing, rolling back) and those whose second
 * phase waits for a shard (retried in the background), one row per transaction.
 */
function showTransactions(): AdminAnswer {
  const rows = [...twoPhaseCommits.transactions.values()].map((t) => [
    t.database,
    t.user,
    t.gid,
    t.state,
    t.shards.join(","),
    time(t.at),
  ]);
  return {
    columns: ["database", "user", "transaction", "state", "shards", "started"],
    rows,
    tag: "SHOW",
  };
}

function formatValue(v: unknown): string {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** Every host with where it sits. */
function poolsWithPlace(host: AdminHost): Generator<PoolPlace> {
  return host.databases.hosts();
}

/** The columns that say which pool a row is about (SHOW POOLS, SHOW BANS). */
const POOL_COLUMNS = ["id", "database", "user", "addr", "port", "shard", "role"];

function poolIdentity(place: PoolPlace): (string | number)[] {
  const { cluster, shard, target, pool } = place;
  return [
    pool.id,
    cluster.name,
    cluster.user,
    pool.login.host,
    pool.login.port,
    shard,
    target.role,
  ];
}

function showPools(host: AdminHost): AdminAnswer {
  const now = Date.now();
  const rows = [];
  for (const place of poolsWithPlace(host)) {
    const { target, pool } = place;
    const wait = pool.maxWait(now);
    const active = pool.servers.size - pool.idle.length;
    rows.push([
      ...poolIdentity(place),
      pool.waiting,
      pool.idle.length,
      active,
      0,
      pool.total,
      Math.floor(wait / 1000),
      (wait % 1000) * 1000,
      pool.config.pooler_mode,
      host.gate.paused(place.cluster.name),
      target.ban !== null,
      target.healthy,
      pool.errors,
      0,
      0,
      0,
      !pool.closed,
      false,
    ]);
  }
  return {
    columns: [
      ...POOL_COLUMNS,
      "cl_waiting",
      "sv_idle",
      "sv_active",
      "sv_idle_xact",
      "sv_total",
      "maxwait",
      "maxwait_us",
      "pool_mode",
      "paused",
      "banned",
      "healthy",
      "errors",
      "re_synced",
      "out_of_sync",
      "force_closed",
      "online",
      "schema_admin",
    ],
    rows,
    tag: "SHOW",
  };
}

function showClients(host: AdminHost): AdminAnswer {
  const rows = [...host.clients].map((c) => {
    const [addr, port] = splitAddr(c.addr);
    return [
      c.id,
      c.user,
      c.database,
      addr,
      port,
      c.state,
      false,
      time(c.connectedAt),
      time(c.lastActivity),
      c.queries,
      c.transactions,
      c.applicationName,
      c.pinned,
    ];
  });
  return {
    columns: [
      "id",
      "user",
      "database",
      "addr",
      "port",
      "state",
      "replication",
      "connect_time",
      "last_request",
      "queries",
      "transactions",
      "application_name",
      "pinned",
    ],
    rows,
    tag: "SHOW",
  };
}

function splitAddr(addr: string): [string, string] {
  const i = addr.lastIndexOf(":");
  return i < 0 ? [addr, ""] : [addr.slice(0, i), addr.slice(i + 1)];
}

function showServers(host: AdminHost): AdminAnswer {
  const now = Date.now();
  const rows = [];
  for (const { cluster, pool } of poolsWithPlace(host)) {
    for (const server of pool.servers) {
      const link = server.link as { id?: number } | null;
      rows.push([
        pool.id,
        cluster.name,
        cluster.user,
        pool.login.host,
        pool.login.port,
        serverState(server),
        time(server.createdAt),
        server.requestStart > 0 ? time(server.requestStart) : null,
        server.backendPid,
        link?.id ?? null,
        server.transactions,
        server.statements.size,
        server.bytesReceived,
        server.writer.bytesWritten,
        Math.floor((now - server.createdAt) / 1000),
      ]);
    }
  }
  return {
    columns: [
      "pool_id",
      "database",
      "user",
      "addr",
      "port",
      "state",
      "connect_time",
      "request_time",
      "remote_pid",
      "client_id",
      "transactions",
      "prepared_statements",
      "bytes_received",
      "bytes_sent",
      "age",
    ],
    rows,
    tag: "SHOW",
  };
}

function serverState(server: Server): string {
  if (server.link !== null) return "active";
  return server.clean ? "idle" : "cleaning";
}

const STAT_NAMES = [
  "xact_count",
  "query_count",
  "server_assignment_count",
  "received",
  "sent",
  "xact_time",
  "query_time",
  "wait_time",
  "errors",
];

/** Totals since start, and averages over the last stats_period (per second; times in µs). */
function showStats(host: AdminHost): AdminAnswer {
  const rows = [];
  for (const place of poolsWithPlace(host)) {
    const t = place.pool.totals();
    const totals = [
      t.transactions,
      t.queries,
      t.assignments,
      t.received,
      t.sent,
      t.xactTimeMs * 1000,
      t.queryTimeMs * 1000,
      t.waitTimeMs * 1000,
      t.errors,
    ];
    const w = host.stats.delta(place.pool.id);
    const rate = (n: number): number => w ? Math.round(n / w.seconds) : 0;
    const per = (us: number, n: number): number => n > 0 ? Math.round(us / n) : 0;
    const averages = w
      ? [
        rate(w.d.transactions),
        rate(w.d.queries),
        rate(w.d.assignments),
        rate(w.d.received),
        rate(w.d.sent),
        per(w.d.xactTimeMs * 1000, w.d.transactions),
        per(w.d.queryTimeMs * 1000, w.d.queries),
        per(w.d.waitTimeMs * 1000, w.d.assignments),
        rate(w.d.errors),
      ]
      : STAT_NAMES.map(() => 0);
    rows.push([...poolIdentity(place), ...totals, ...averages]);
  }
  return {
    columns: [
      ...POOL_COLUMNS,
      ...STAT_NAMES.map((n) => `total_${n}`),
      ...STAT_NAMES.map((n) => `avg_${n}`),
    ],
    rows,
    tag: "SHOW",
  };
}

/** RELOAD: the new configuration, or the reasons it was refused (the old one keeps serving). */
async function reload(host: AdminHost): Promise<AdminAnswer> {
  try {
    await host.reload();
    return { columns: [], rows: [], tag: "RELOAD" };
  } catch (e) {
    const problems = (e as { problems?: string[] }).problems;
    return {
      error: {
        severity: "ERROR",
        code: SqlState.InvalidParameterValue,
        message: problems
          ? `configuration is invalid (${problems.length} problem${
            problems.length === 1 ? "" : "s"
          }); the running configuration stays`
          : `reload failed: ${errorMessage(e)}`,
        detail: problems?.join("\n"),
      },
    };
  }
}

/** HEALTHCHECK [id]: an empty query on each host (or one) now; their health after it. */
async function healthcheck(idText: string | undefined, host: AdminHost): Promise<AdminAnswer> {
  const id = idText === undefined ? null : Number(idText);
  const places = [...poolsWithPlace(host)].filter((p) => id === null || p.pool.id === id);
  if (places.length === 0) {
    return {
      error: {
        severity: "ERROR",
        code: SqlState.UndefinedObject,
        message: `no pool with id ${idText} (see SHOW POOLS)`,
      },
    };
  }
  const rows = await Promise.all(places.map(async (place) => {
    const monitor = host.databases.monitors.find((m) => m.shard.targets.includes(place.target));
    const healthy = monitor ? await monitor.check(place.target) : false;
    place.target.healthy = healthy;
    return [...poolIdentity(place), healthy];
  }));
  return { columns: [...POOL_COLUMNS, "healthy"], rows, tag: "HEALTHCHECK" };
}

/** Settings SET may change while running, with the values each accepts. */
const RUNTIME_SETTINGS: Record<string, readonly string[] | "ms" | "count"> = {
  query_timeout: "ms",
  checkout_timeout: "ms",
  client_idle_timeout: "ms",
  client_idle_in_transaction_timeout: "ms",
  query_cache_limit: "count",
  read_write_strategy: ["conservative", "aggressive"],
  read_write_split: [
    "include_primary",
    "exclude_primary",
    "include_primary_if_replica_banned",
    "prefer_primary",
  ],
  load_balancing_strategy: [
    "random",
    "round_robin",
    "least_active_connections",
    "weighted_round_robin",
  ],
};

/** SET <setting> TO <value>: changes a [general] setting until the next RELOAD. */
function setting(name: string, value: string, host: AdminHost): AdminAnswer {
  const kind = RUNTIME_SETTINGS[name];
  const refuse = (message: string): AdminAnswer => ({
    error: { severity: "ERROR", code: SqlState.InvalidParameterValue, message },
  });
  if (kind === undefined) {
    return refuse(
      `${name} can't be changed at run time (edit pgdog.toml and RELOAD); SET takes ` +
        Object.keys(RUNTIME_SETTINGS).join(", "),
    );
  }
  const general = host.config.general as unknown as Record<string, unknown>;
  if (kind === "ms" || kind === "count") {
    const n = Number(value);
    if (!Number.isInteger(n) || n < (kind === "count" ? 1 : 0)) {
      return refuse(
        `${name} takes ${
          kind === "ms" ? "milliseconds (0 or more)" : "a count (1 or more)"
        }, not "${value}"`,
      );
    }
    general[name] = n;
  } else {
    const v = value.toLowerCase();
    if (!kind.includes(v)) return refuse(`${name} is one of ${kind.join(", ")}, not "${value}"`);
    general[name] = v;
  }
  host.applySettings();
  return { columns: [], rows: [], tag: "SET" };
}

/** PAUSE [db]: new transactions wait; answers once the running ones have finished. */
async function pause(database: string | undefined, host: AdminHost): Promise<AdminAnswer> {
  if (database !== undefined && !host.config.databases.some((d) => d.name === database)) {
    return {
      error: {
        severity: "ERROR",
        code: SqlState.UndefinedObject,
        message: `no database "${database}" to pause`,
      },
    };
  }
  host.gate.pause(database);
  const deadline = Date.now() + PAUSE_WAIT_MS;
  for (;;) {
    let active = 0;
    for (const { cluster, pool } of poolsWithPlace(host)) {
      if (database === undefined || cluster.name === database) {
        active += pool.servers.size - pool.idle.length;
      }
    }
    if (active === 0) return { columns: [], rows: [], tag: "PAUSE" };
    if (Date.now() >= deadline || !host.gate.paused(database ?? "")) {
      return {
        error: {
          severity: "ERROR",
          code: SqlState.QueryCanceled,
          message: `paused, but ${active} server connections are still in use`,
          hint: "New transactions wait until RESUME; the running ones are still going.",
        },
      };
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

function showReplication(host: AdminHost): AdminAnswer {
  const now = Date.now();
  const rows = [];
  for (const place of poolsWithPlace(host)) {
    const t = place.target;
    const checked = t.lsnCheckedAt > 0;
    rows.push([
      ...poolIdentity(place),
      checked && t.role === "replica" ? t.lagMs : null,
      checked && t.role === "replica" ? t.lagBytes : null,
      checked ? lsnText(t.lsn) : null,
      checked ? now - t.lsnCheckedAt : null,
      t.inRecovery,
    ]);
  }
  return {
    columns: [
      ...POOL_COLUMNS,
      "replica_lag",
      "replica_lag_bytes",
      "pg_lsn",
      "lsn_age",
      "pg_is_in_recovery",
    ],
    rows,
    tag: "SHOW",
  };
}

/** An LSN as PostgreSQL writes it (`16/B374D848`). */
function lsnText(lsn: number): string {
  const hi = Math.floor(lsn / 2 ** 32);
  const lo = lsn % 2 ** 32;
  return `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`;
}

/** BAN / UNBAN a pool by id (SHOW POOLS), or every pool with none given. */
function banCommand(verb: string, idText: string | undefined, host: AdminHost): AdminAnswer {
  const id = idText === undefined ? null : Number(idText);
  if (id !== null && !Number.isInteger(id)) {
    return {
      error: {
        severity: "ERROR",
        code: SqlState.SyntaxError,
        message: `${verb.toUpperCase()} takes a pool id from SHOW POOLS, not "${idText}"`,
      },
    };
  }
  let matched = 0;
  let alone = 0;
  for (const { cluster, shard, target, pool } of poolsWithPlace(host)) {
    if (id !== null && pool.id !== id) continue;
    matched++;
    const s = cluster.shards.find((x) => x.number === shard)!;
    if (verb === "unban") s.unban(target);
    else if (s.targets.length < 2) alone++;
    else s.ban(target, { reason: "banned by an admin", kind: "manual", ms: 0 });
  }
  if (id !== null && alone > 0) {
    return {
      error: {
        severity: "ERROR",
        code: SqlState.FeatureNotSupported,
        message: `pool ${id} is its shard's only host: pgdog never bans it`,
      },
    };
  }
  if (id !== null && matched === 0) {
    return {
      error: {
        severity: "ERROR",
        code: SqlState.UndefinedObject,
        message: `no pool with id ${id} (see SHOW POOLS)`,
      },
    };
  }
  return { columns: [], rows: [], tag: verb.toUpperCase() };
}

function showLists(host: AdminHost): AdminAnswer {
  let pools = 0;
  let free = 0;
  let used = 0;
  for (const { pool } of poolsWithPlace(host)) {
    pools++;
    free += pool.idle.length;
    used += pool.servers.size - pool.idle.length;
  }
  const users = new Set(host.config.users.map((u) => u.name)).size;
  const databases = new Set(host.config.databases.map((d) => d.name)).size;
  return {
    columns: ["databases", "users", "pools", "used_clients", "free_servers", "used_servers"],
    rows: [[databases, users, pools, host.clients.size, free, used]],
    tag: "SHOW",
  };
}

function showBans(host: AdminHost): AdminAnswer {
  const now = Date.now();
  const rows = [];
  for (const place of poolsWithPlace(host)) {
    const ban = place.target.ban;
    if (ban === null) continue;
    rows.push([
      ...poolIdentity(place),
      ban.reason,
      ban.kind === "error" ? Math.max(0, ban.until - now) : null,
    ]);
  }
  return {
    columns: [...POOL_COLUMNS, "ban_reason", "ban_time_left"],
    rows,
    tag: "SHOW",
  };
}

const TEXT_OID = 25;
const INT8_OID = 20;

/**
 * The wire answer to a simple query: RowDescription (text columns unless `types` says int8), DataRows and
 * CommandComplete (`SHOW`, or `SELECT n`-style tags as given), or an ErrorResponse.
 */
export function encodeAnswer(answer: AdminAnswer): Uint8Array {
  const b = new MessageBuilder(256);
  if ("error" in answer) {
    appendError(b, answer.error);
    return b.build();
  }
  if (answer.columns.length > 0) {
    b.begin(Msg.RowDescription).int16(answer.columns.length);
    answer.columns.forEach((c, i) => {
      const int8 = answer.types?.[i] === INT8_OID;
      b.cstring(c).int32(0).int16(0).int32(int8 ? INT8_OID : TEXT_OID).int16(int8 ? 8 : -1)
        .int32(-1).int16(0);
    });
    b.end();
    const enc = new TextEncoder();
    for (const row of answer.rows) {
      b.begin(Msg.DataRow).int16(row.length);
      for (const v of row) {
        if (v === null) b.int32(-1);
        else {
          const bytes = enc.encode(typeof v === "boolean" ? (v ? "t" : "f") : String(v));
          b.int32(bytes.length).bytes(bytes);
        }
      }
      b.end();
    }
  }
  b.begin(Msg.CommandComplete).cstring(answer.tag).end();
  return b.build();
}
