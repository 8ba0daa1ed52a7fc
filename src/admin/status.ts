/**
 * The live status page on `healthcheck_port`: `/` is a small HTML page (its HTTP status is the
 * health answer, 200 or 502) that polls `/status.json` every second and shows pools, clients,
 * servers, bans and shards, with a plot of transactions per second over the last minutes.
 *
 * @module
 */

import type { AdminHost } from "./mod.ts";
import { VERSION } from "../version.ts";

/** How many one-second samples the transactions-per-second plot keeps (five minutes). */
const TPS_SAMPLES = 300;

/** Transactions per second, sampled once a second from the pools' counters. */
export class TpsSeries {
  #last: { at: number; xacts: number } | null = null;
  readonly points: Array<[number, number]> = [];

  /** Takes a sample when a second has passed since the last one. */
  tick(now: number, xacts: () => number): void {
    if (this.#last !== null && now - this.#last.at < 1000) return;
    const total = xacts();
    if (this.#last !== null) {
      const tps = (total - this.#last.xacts) * 1000 / (now - this.#last.at);
      this.points.push([now, Math.max(0, Math.round(tps))]);
      if (this.points.length > TPS_SAMPLES) this.points.shift();
    }
    this.#last = { at: now, xacts: total };
  }
}

/** True while some pool's host is online (the health answer). */
export function healthy(host: AdminHost): boolean {
  for (const { target: t } of host.databases.hosts()) {
    if (!t.pool.closed && t.healthy && t.ban === null) return true;
  }
  return false;
}

/** What the status page shows, as JSON. */
export function statusJson(host: AdminHost, tps: TpsSeries): unknown {
  const now = Date.now();
  const pools = [];
  const shards = [];
  for (const cluster of host.databases.clusters()) {
    shards.push({
      database: cluster.name,
      user: cluster.user,
      shards: cluster.shards.length,
      hosts: cluster.shards.reduce((n, s) => n + s.targets.length, 0),
      sharded: cluster.sharding !== null,
    });
    for (const shard of cluster.shards) {
      for (const t of shard.targets) {
        const p = t.pool;
        pools.push({
          id: p.id,
          database: cluster.name,
          user: cluster.user,
          host: `${p.login.host}:${p.login.port}`,
          shard: shard.number,
          role: t.role,
          active: p.servers.size - p.idle.length,
          idle: p.idle.length,
          waiting: p.waiting,
          maxwait_ms: p.maxWait(now),
          size: p.config.pool_size,
          healthy: t.healthy,
          ban: t.ban?.reason ?? null,
          paused: host.gate.paused(cluster.name),
        });
      }
    }
  }
  const clients: Record<string, number> = {};
  for (const c of host.clients) clients[c.state] = (clients[c.state] ?? 0) + 1;
  return {
    version: VERSION,
    healthy: healthy(host),
    maintenance: host.gate.inMaintenance,
    clients,
    pools,
    shards,
    tps: tps.points,
  };
}

/** The page itself: static HTML that renders `/status.json`. */
export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgdog status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; background: #f6f7f9; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 15px; margin: 24px 0 8px; }
  .muted { color: #667; }
  .cards { display: flex; gap: 12px; flex-wrap: wrap; }
  .card { background: #fff; border: 1px solid #dde; border-radius: 8px; padding: 10px 14px; min-width: 120px; }
  .card b { display: block; font-size: 22px; }
  table { border-collapse: collapse; background: #fff; width: 100%; }
  th, td { border-bottom: 1px solid #e4e6ea; padding: 6px 10px; text-align: left; }
  th { background: #eef0f4; font-weight: 600; }
  .ok { color: #137333; } .bad { color: #b3261e; font-weight: 600; }
  svg { background: #fff; border: 1px solid #dde; border-radius: 8px; width: 100%; height: 160px; }
</style>
</head>
<body>
<h1>pgdog <span id="version" class="muted"></span></h1>
<div id="health" class="muted">loading…</div>
<div class="cards" id="cards"></div>
<h2>Transactions per second (last minutes)</h2>
<svg id="plot" viewBox="0 0 600 160" preserveAspectRatio="none"><polyline id="line" fill="none" stroke="#3367d6" stroke-width="2" points=""/></svg>
<h2>Pools</h2>
<table id="pools"><thead><tr><th>id</th><th>database</th><th>user</th><th>host</th><th>shard</th><th>role</th><th>active</th><th>idle</th><th>waiting</th><th>max wait</th><th>size</th><th>state</th></tr></thead><tbody></tbody></table>
<h2>Shards</h2>
<table id="shards"><thead><tr><th>database</th><th>user</th><th>shards</th><th>hosts</th><th>sharded</th></tr></thead><tbody></tbody></table>
<script>
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
function rows(id, list, cells) {
  document.querySelector("#" + id + " tbody").innerHTML =
    list.map((x) => "<tr>" + cells(x).map((c) => "<td>" + c + "</td>").join("") + "</tr>").join("");
}
async function refresh() {
  let s;
  try { s = await (await fetch("/status.json", { cache: "no-store" })).json(); }
  catch { document.getElementById("health").textContent = "pgdog is not answering"; return; }
  document.getElementById("version").textContent = s.version;
  const h = document.getElementById("health");
  h.className = s.healthy ? "ok" : "bad";
  h.textContent = (s.healthy ? "healthy" : "no pool online") + (s.maintenance ? " · maintenance on" : "");
  const clients = Object.values(s.clients).reduce((a, b) => a + b, 0);
  const servers = s.pools.reduce((a, p) => a + p.active + p.idle, 0);
  const waiting = s.pools.reduce((a, p) => a + p.waiting, 0);
  const bans = s.pools.filter((p) => p.ban).length;
  const last = s.tps.length ? s.tps[s.tps.length - 1][1] : 0;
  document.getElementById("cards").innerHTML = [["clients", clients], ["servers", servers],
    ["waiting", waiting], ["bans", bans], ["tps", last]]
    .map(([k, v]) => '<div class="card" data-name="' + k + '"><span class="muted">' + k + "</span><b>" + v + "</b></div>").join("");
  rows("pools", s.pools, (p) => [p.id, esc(p.database), esc(p.user), esc(p.host), p.shard, p.role,
    p.active, p.idle, p.waiting, p.maxwait_ms + " ms", p.size,
    p.ban ? '<span class="bad">banned: ' + esc(p.ban) + "</span>" : p.paused ? "paused" :
    p.healthy ? '<span class="ok">online</span>' : '<span class="bad">unhealthy</span>']);
  rows("shards", s.shards, (c) => [esc(c.database), esc(c.user), c.shards, c.hosts, c.sharded ? "yes" : "no"]);
  const pts = s.tps, max = Math.max(1, ...pts.map((p) => p[1]));
  const t0 = pts.length ? pts[0][0] : 0, span = Math.max(1, (pts.length ? pts[pts.length - 1][0] : 1) - t0);
  document.getElementById("line").setAttribute("points",
    pts.map(([t, v]) => ((t - t0) / span * 600).toFixed(1) + "," + (155 - v / max * 145).toFixed(1)).join(" "));
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
`;
