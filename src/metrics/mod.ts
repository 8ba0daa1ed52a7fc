/**
 * `GET /metrics` on `openmetrics_port`: OpenMetrics from the proxy's own state, read when scraped
 * (nothing is counted on the query path for it), names prefixed by `openmetrics_namespace`, and
 * labelled by user, database, host, port, shard and role.
 *
 * @module
 */

import client from "prom-client";
import type { Databases, Target } from "../backend/databases.ts";
import { Pool } from "../backend/pool.ts";
import type { ClientView } from "../admin/mod.ts";
import type { PluginStats } from "../plugin/mod.ts";
import { type TwoPcStats, twoPhaseCommits } from "../two_pc/mod.ts";

/** What the metrics read. */
export interface MetricsSource {
  readonly databases: Databases;
  readonly clients: ReadonlySet<ClientView>;
  /** The running `[[plugins]]` (null when none is configured). */
  readonly plugins: { stats(): PluginStats[] } | null;
}

const POOL_LABELS = ["user", "database", "host", "port", "shard", "role"] as const;
type PoolLabels = Record<(typeof POOL_LABELS)[number], string | number>;

function labelsOf(pool: Pool, shard: number, target: Target): PoolLabels {
  return {
    user: pool.user,
    database: pool.database,
    host: pool.login.host,
    port: pool.login.port,
    shard,
    role: target.role,
  };
}

/** A registry whose metrics are computed from `source` at each scrape. */
export function metricsRegistry(
  source: MetricsSource,
  options: { namespace: string },
): client.Registry<client.OpenMetricsContentType> {
  const registry = new client.Registry<client.OpenMetricsContentType>();
  registry.setContentType(client.openMetricsContentType);
  const ns = options.namespace;
  const places = () => source.databases.hosts();
  /** A metric read from pgdog's state at each scrape: one value per labelled row. */
  const fromState = <T>(
    spec: { name: string; help: string; labelNames: readonly string[]; kind: "gauge" | "counter" },
    rows: () => Iterable<T>,
    labels: (row: T) => Record<string, string | number>,
    value: (row: T) => number,
  ): void => {
    const Metric = spec.kind === "gauge" ? client.Gauge : client.Counter;
    new Metric({
      name: `${ns}${spec.name}`,
      help: spec.help,
      labelNames: spec.labelNames,
      registers: [registry],
      collect(this: client.Gauge<string> | client.Counter<string>) {
        this.reset();
        for (const row of rows()) {
          if (this instanceof client.Gauge) this.set(labels(row), value(row));
          else this.inc(labels(row), value(row));
        }
      },
    });
  };
  const perPool = (
    name: string,
    help: string,
    value: (pool: Pool, target: Target) => number,
    kind: "gauge" | "counter" = "gauge",
  ): void =>
    fromState(
      { name, help, labelNames: POOL_LABELS, kind },
      places,
      ({ pool, shard, target }) => labelsOf(pool, shard, target),
      ({ pool, target }) => value(pool, target),
    );

  new client.Gauge({
    name: `${ns}clients`,
    help: "Connected clients, by state.",
    labelNames: ["user", "database", "state"],
    registers: [registry],
    collect() {
      this.reset();
      const counts = new Map<
        string,
        { user: string; database: string; state: string; n: number }
      >();
      for (const c of source.clients) {
        const key = `${c.user}\u0000${c.database}\u0000${c.state}`;
        const e = counts.get(key) ?? { user: c.user, database: c.database, state: c.state, n: 0 };
        e.n++;
        counts.set(key, e);
      }
      for (const e of counts.values()) {
        this.set({ user: e.user, database: e.database, state: e.state }, e.n);
      }
    },
  });
  perPool(
    "sv_active",
    "Server connections in use by clients.",
    (p) => p.servers.size - p.idle.length,
  );
  perPool("sv_idle", "Idle server connections.", (p) => p.idle.length);
  perPool("cl_waiting", "Clients waiting for a server connection.", (p) => p.waiting);
  perPool(
    "maxwait_seconds",
    "The longest current wait for a server, in seconds.",
    (p) => p.maxWait(Date.now()) / 1000,
  );
  perPool(
    "pool_size",
    "The pool's maximum number of server connections.",
    (p) => p.config.pool_size,
  );
  perPool("banned", "1 while the host is banned from reads.", (_p, t) => t.ban === null ? 0 : 1);
  perPool("healthy", "1 while the host passes its health checks.", (_p, t) => t.healthy ? 1 : 0);
  perPool(
    "replica_lag_seconds",
    "Replica lag behind its primary, in seconds.",
    (_p, t) => t.role === "replica" ? t.lagMs / 1000 : 0,
  );
  perPool(
    "replica_lag_bytes",
    "Replica lag behind its primary, in bytes.",
    (_p, t) => t.role === "replica" ? t.lagBytes : 0,
  );
  perPool("xact_count", "Transactions run.", (p) => p.totals().transactions, "counter");
  perPool("query_count", "Queries run.", (p) => p.totals().queries, "counter");
  perPool("server_assignment_count", "Server checkouts.", (p) => p.totals().assignments, "counter");
  perPool("errors", "Server connection errors.", (p) => p.totals().errors, "counter");
  perPool("received_bytes", "Bytes received from servers.", (p) => p.totals().received, "counter");
  perPool("sent_bytes", "Bytes sent to servers.", (p) => p.totals().sent, "counter");
  perPool(
    "xact_time_seconds",
    "Time servers were held by clients, summed.",
    (p) => p.totals().xactTimeMs / 1000,
    "counter",
  );
  perPool(
    "wait_time_seconds",
    "Time clients waited for a server, summed.",
    (p) => p.totals().waitTimeMs / 1000,
    "counter",
  );
  perPool(
    "query_time_seconds",
    "Time from each request to its answer, summed.",
    (p) => p.totals().queryTimeMs / 1000,
    "counter",
  );
  const perPlugin = (
    name: string,
    help: string,
    value: (p: PluginStats) => number,
    kind: "gauge" | "counter" = "counter",
  ): void =>
    fromState(
      { name: `plugin_${name}`, help, labelNames: ["plugin", "isolation"], kind },
      () => source.plugins?.stats() ?? [],
      (p) => ({ plugin: p.name, isolation: p.isolation }),
      value,
    );
  perPlugin("calls", "Hook calls sent to the plugin.", (p) => p.calls);
  perPlugin(
    "errors",
    "Hook calls that failed (thrown, timed out, ended, bad answers).",
    (p) => p.errors,
  );
  perPlugin("timeouts", "Hook calls that passed the plugin's timeout.", (p) => p.timeouts);
  perPlugin("restarts", "Times the plugin's sandbox was replaced.", (p) => p.restarts);
  perPlugin("cache_hits", "Hook calls answered from kept answers.", (p) => p.cacheHits);
  perPlugin("cached", "Answers kept (cacheRoute, cacheShard).", (p) => p.cached, "gauge");
  perPlugin(
    "ready",
    "1 while the plugin's sandbox runs, 0 while it restarts.",
    (p) => p.state === "ready" ? 1 : 0,
    "gauge",
  );
  const perTwoPc = (
    name: string,
    help: string,
    value: (s: TwoPcStats) => number,
  ): void =>
    fromState(
      { name, help, labelNames: ["user", "database"], kind: "counter" },
      () => twoPhaseCommits.stats(),
      (s) => ({ user: s.user, database: s.database }),
      value,
    );
  perTwoPc("xact_2pc_count", "Transactions committed with two-phase commit.", (s) => s.committed);
  perTwoPc(
    "two_pc_failed",
    "Two-phase commits that failed (the transaction rolled back on every shard).",
    (s) => s.failed,
  );
  perTwoPc(
    "two_pc_recovered",
    "Transactions left by a crash or a lost shard that pgdog finished later.",
    (s) => s.recovered,
  );
  new client.Gauge({
    name: `${ns}two_pc_unfinished`,
    help: "Second phases (COMMIT PREPARED, ROLLBACK PREPARED) waiting for a shard, retried.",
    registers: [registry],
    collect() {
      this.set(twoPhaseCommits.unfinished);
    },
  });
  const waits = new client.Histogram({
    name: `${ns}checkout_wait_seconds`,
    help: "How long each checkout waited for a server connection.",
    labelNames: ["user", "database", "host", "port"],
    buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers: [registry],
  });
  Pool.observeWait = (pool, ms) =>
    waits.observe({
      user: pool.user,
      database: pool.database,
      host: pool.login.host,
      port: pool.login.port,
    }, ms / 1000);
  return registry;
}

/** Serves `registry` at `GET /metrics` on `port` until the returned server is shut down. */
export function serveMetrics(
  registry: client.Registry<client.OpenMetricsContentType>,
  options: { hostname: string; port: number; onListen?: (addr: Deno.NetAddr) => void },
): Deno.HttpServer {
  return Deno.serve({
    hostname: options.hostname,
    port: options.port,
    onListen: (a) => options.onListen?.(a),
  }, async (req) => {
    if (new URL(req.url).pathname !== "/metrics") {
      return new Response("not found\n", { status: 404 });
    }
    return new Response(await registry.metrics(), {
      headers: { "content-type": registry.contentType },
    });
  });
}
