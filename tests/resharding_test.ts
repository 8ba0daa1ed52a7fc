/**
 * Online resharding end to end: a source database behind pgdog with a live workload writing to it
 * (inserts, updates of key and non-key columns, deletes, in transactions), resharded onto more
 * shards with the admin commands, cut over, and cut back; afterwards every table holds the same
 * rows on both sides, each row on the shard its key maps to and nowhere else.
 */

import assert from "node:assert/strict";
import type pg from "npm:pg@8";
import {
  connectPg,
  type PgCluster,
  type ProxyProcess,
  sleep,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";
import { shardForBigint } from "../src/sharding/hash.ts";

const USER = "resharder";
const PASSWORD = "reshard-pw";
const ADMIN = "admin-pw";
const PUBLICATION = "pgdog_pub";

const SCHEMA = `
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, bio text);
CREATE TABLE orders (
  id bigint PRIMARY KEY,
  user_id bigint NOT NULL,
  amount numeric(10,2) NOT NULL,
  note text
);
CREATE INDEX orders_user ON orders (user_id);
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
CREATE SEQUENCE ticket_seq;
CREATE PUBLICATION ${PUBLICATION} FOR ALL TABLES;
`;

/** One PostgreSQL cluster holding every shard (a database each), with logical replication. */
async function cluster(databases: string[]): Promise<PgCluster> {
  return await startPostgres({
    settings: {
      wal_level: "logical",
      max_replication_slots: 20,
      max_wal_senders: 20,
      max_connections: 200,
    },
    roles: [{ name: USER, password: PASSWORD, auth: "scram", superuser: true }],
    hba: [`host replication ${USER} 127.0.0.1/32 scram-sha-256`],
    databases: databases.map((name) => ({ name, owner: USER })),
  });
}

function sharding(database: string): Record<string, unknown>[] {
  return [
    { database, name: "users", column: "id", data_type: "bigint" },
    { database, name: "orders", column: "user_id", data_type: "bigint" },
  ];
}

async function proxyFor(
  pg: PgCluster,
  options: { source: string[]; destination: string[]; general?: Record<string, unknown> },
): Promise<ProxyProcess> {
  const db = (name: string, list: string[]) =>
    list.map((database_name, shard) => ({
      name,
      host: pg.host,
      port: pg.port,
      database_name,
      shard,
    }));
  return await startProxy({
    // As `deno task start` runs it: resharding's schema sync runs pg_dump.
    denoFlags: ["--allow-run=deno,pg_dump"],
    config: {
      general: {
        cutover_timeout: 60_000,
        resharding_copy_retry_min_delay: 200,
        resharding_replication_retry_min_delay: 200,
        ...options.general,
      },
      admin: { password: ADMIN },
      rewrite: { enabled: true, shard_key: "rewrite", split_inserts: "rewrite" },
      databases: [...db("app", options.source), ...db("app_new", options.destination)],
      sharded_tables: [
        ...sharding("app"),
        ...sharding("app_new"),
      ],
      omnisharded_tables: [
        { database: "app", tables: ["countries"] },
        { database: "app_new", tables: ["countries"] },
      ],
    },
    users: {
      users: [
        { name: USER, password: PASSWORD, database: "app", schema_admin: true },
        { name: USER, password: PASSWORD, database: "app_new", schema_admin: true },
      ],
    },
  });
}

/** Runs an admin command; rows as objects. */
async function admin(proxy: ProxyProcess, sql: string): Promise<Record<string, unknown>[]> {
  const c = await connectPg(proxy.target({ user: "admin", password: ADMIN, database: "admin" }));
  try {
    const r = await c.query(sql);
    return r.rows;
  } finally {
    await c.end();
  }
}

/** Waits until task `id` has `status` (fails on "failed"). */
async function waitTask(
  proxy: ProxyProcess,
  id: number,
  options: { status: string; timeoutMs?: number },
): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 120_000);
  for (;;) {
    const tasks = await admin(proxy, "SHOW TASKS");
    const t = tasks.find((t) => Number(t.id) === id);
    if (t?.status === options.status) return;
    if (t?.status === "failed") throw new Error(`task ${id} failed: ${t.inner_status}`);
    if (Date.now() > deadline) {
      throw new Error(`task ${id} is still ${JSON.stringify(t)}\n${proxy.logs().slice(-4000)}`);
    }
    await sleep(300);
  }
}

/** A workload writing through pgdog until stopped; counts its errors. */
function workload(proxy: ProxyProcess): { stop(): Promise<string[]>; writes(): number } {
  let running = true;
  let writes = 0;
  const errors: string[] = [];
  const run = async (lane: number): Promise<void> => {
    let c: pg.Client | null = null;
    let i = 0;
    while (running) {
      try {
        c ??= await connectPg(proxy.target({ user: USER, password: PASSWORD, database: "app" }));
        const id = 100_000 + lane * 100_000 + i++;
        await c.query("BEGIN");
        await c.query("INSERT INTO users (id, email, bio) VALUES ($1, $2, $3)", [
          id,
          `u${id}@x`,
          i % 10 === 0 ? "x".repeat(5000) : null,
        ]);
        await c.query("INSERT INTO orders (id, user_id, amount) VALUES ($1, $1, 1.5)", [id]);
        await c.query("COMMIT");
        await c.query("UPDATE users SET email = $2 WHERE id = $1", [id - 1, `v${id}@x`]);
        await c.query("UPDATE orders SET amount = amount + 1 WHERE user_id = $1", [id - 2]);
        if (i % 3 === 0) await c.query("DELETE FROM orders WHERE user_id = $1", [id - 3]);
        // The sharding key changes: the row moves between the destination's shards.
        if (i % 5 === 0) {
          await c.query("UPDATE orders SET user_id = $2 WHERE user_id = $1", [
            id - 4,
            id - 4 + 5_000_000,
          ]);
        }
        if (i % 7 === 0) {
          await c.query("INSERT INTO countries VALUES ($1, $2) ON CONFLICT DO NOTHING", [
            `c${lane}-${i}`,
            "Somewhere",
          ]);
        }
        writes++;
      } catch (e) {
        errors.push(String(e));
        await c?.end().catch(() => {});
        c = null;
        await sleep(100);
      }
    }
    await c?.end().catch(() => {});
  };
  const lanes = [run(0), run(1)];
  return {
    writes: () => writes,
    async stop(): Promise<string[]> {
      running = false;
      await Promise.all(lanes);
      return errors;
    },
  };
}

/** Every table's rows in a database, sorted, as text. */
async function rowsOf(pg: PgCluster, database: string): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const t of ["users", "orders", "countries"]) {
    const rows = await pg.sql(`SELECT t::text FROM ${t} t ORDER BY 1`, { database });
    out[t] = rows.map((r) => r[0]);
  }
  return out;
}

/** The union of a sharded layout's rows (omnisharded tables from shard 0, checked equal). */
async function layoutRows(pg: PgCluster, shards: string[]): Promise<Record<string, string[]>> {
  const per = await Promise.all(shards.map((d) => rowsOf(pg, d)));
  for (const p of per.slice(1)) assert.deepEqual(p.countries, per[0].countries);
  return {
    users: per.flatMap((p) => p.users).sort(),
    orders: per.flatMap((p) => p.orders).sort(),
    countries: per[0].countries,
  };
}

/** Each row of a sharded table is on the shard its key maps to. */
async function assertPlaced(pg: PgCluster, shards: string[]): Promise<void> {
  for (let s = 0; s < shards.length; s++) {
    for (const [table, column] of [["users", "id"], ["orders", "user_id"]]) {
      const keys = await pg.sql(`SELECT ${column} FROM ${table}`, { database: shards[s] });
      for (const [k] of keys) {
        assert.equal(
          shardForBigint(BigInt(k), shards.length),
          s,
          `${table} ${column} = ${k} is on shard ${s} of ${shards.join(",")}`,
        );
      }
    }
  }
}

async function seed(pg: PgCluster, shards: string[]): Promise<void> {
  for (const d of shards) await pg.sql(SCHEMA, { database: d, user: "postgres" });
  // Rows loaded through the source's own layout (each on its shard).
  for (let s = 0; s < shards.length; s++) {
    const ids = [];
    for (let id = 1; id <= 3000; id++) if (shardForBigint(BigInt(id), shards.length) === s) ids.push(id);
    await pg.sql(
      `INSERT INTO users SELECT id, 'user' || id || '@x', CASE WHEN id % 50 = 0 THEN repeat('b', 9000) END
         FROM unnest('{${ids.join(",")}}'::bigint[]) id;
       INSERT INTO orders SELECT id, id, id % 100, NULL FROM unnest('{${ids.join(",")}}'::bigint[]) id;
       INSERT INTO countries VALUES ('fr', 'France'), ('de', 'Germany');
       SELECT setval('ticket_seq', 500);`,
      { database: shards[s] },
    );
  }
}

Deno.test({
  name: "resharding 1 -> 2 with a live workload: RESHARD, cutover, then CUTOVER back",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const source = ["src0"];
    const destination = ["dst0", "dst1"];
    await using pg = await cluster([...source, ...destination]);
    await seed(pg, source);
    await using proxy = await proxyFor(pg, { source, destination });
    const load = workload(proxy);
    try {
      await sleep(1000);
      const [{ task_id }] = await admin(proxy, `RESHARD app app_new ${PUBLICATION}`);
      await waitTask(proxy, Number(task_id), { status: "done", timeoutMs: 180_000 });
      // Traffic runs on the new shards now; let it write there for a while.
      await sleep(1500);
      const errors = await load.stop();
      assert.deepEqual(errors, [], "the workload saw errors");
      assert.ok(load.writes() > 20, `only ${load.writes()} writes`);
      await assertPlaced(pg, destination);
      // Replication runs back: once it has caught up, the old source has every write.
      const reverse = (await admin(proxy, "SHOW TASKS")).find((t) =>
        t.type === "replicate" && t.status === "running"
      );
      assert.ok(reverse, "no reverse replication task");
      const deadline = Date.now() + 60_000;
      for (;;) {
        const [a, b] = [await layoutRows(pg, destination), await layoutRows(pg, source)];
        try {
          assert.deepEqual(b, a);
          break;
        } catch (e) {
          if (Date.now() > deadline) {
            console.error(await admin(proxy, "SHOW TASKS"), await admin(proxy, "SHOW REPLICATION_SLOTS"));
            console.error(proxy.logs().split("\n").filter((l) => !/ client \d+ /.test(l)).join("\n"));
            throw e;
          }
          await sleep(500);
        }
      }
      // And the sequence moved past the source's value.
      for (const d of destination) {
        const [[v]] = await pg.sql("SELECT last_value FROM ticket_seq", { database: d });
        assert.ok(Number(v) >= 500, `ticket_seq on ${d} is ${v}`);
      }
      // CUTOVER back: traffic returns to the old database.
      const [{ task_id: back }] = await admin(proxy, `CUTOVER ${reverse.id}`);
      await waitTask(proxy, Number(back), { status: "done" });
      const c = await connectPg(proxy.target({ user: USER, password: PASSWORD, database: "app" }));
      try {
        await c.query("INSERT INTO users (id, email) VALUES (999999, 'back@x')");
      } finally {
        await c.end();
      }
      const [[n]] = await pg.sql("SELECT count(*) FROM users WHERE id = 999999", {
        database: "src0",
      });
      assert.equal(n, "1");
    } finally {
      await load.stop();
    }
  },
});
