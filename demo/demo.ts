/**
 * `deno task demo`: a sharded database to try pgdog with, from nothing but Deno and the PostgreSQL
 * server binaries. Starts throwaway PostgreSQL shards (the test harness's clusters), creates the
 * demo schema on each (`users` sharded by `id`, `payments` by `user_id`), starts pgdog in front
 * of them in this process, prints how to connect, and removes everything on Ctrl-C.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startProxy } from "../mod.ts";
import { type PgCluster, startPostgres } from "../tests/harness/postgres.ts";

const DATABASE = "demo";
const USER = "demo";
const PASSWORD = "demo";

const SCHEMA = `
CREATE TABLE users (
  id bigint PRIMARY KEY,
  email text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE payments (
  id bigint PRIMARY KEY,
  user_id bigint NOT NULL,
  amount numeric(12, 2) NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_user_id ON payments (user_id);
`;

const USAGE = `deno task demo [--port 6432] [--shards 3]

Starts throwaway PostgreSQL shards and pgdog in front of them; Ctrl-C removes everything.`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string", default: "6432" },
      shards: { type: "string", default: "3" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const port = Number(values.port);
  const count = Number(values.shards);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`demo: --port ${values.port} is not a port number\n\n${USAGE}`);
    return 2;
  }
  if (!Number.isInteger(count) || count < 1 || count > 16) {
    console.error(`demo: --shards ${values.shards} must be 1 to 16\n\n${USAGE}`);
    return 2;
  }

  console.log(`starting ${count} PostgreSQL shards ...`);
  const shards: PgCluster[] = [];
  const cleanup = async (): Promise<void> => {
    await Promise.allSettled(shards.splice(0).map((s) => s[Symbol.asyncDispose]()));
  };
  try {
    const started = await Promise.allSettled(
      Array.from({ length: count }, () =>
        // Two-phase commit (on in the demo) needs prepared transactions on the shards.
        startPostgres({ databases: [DATABASE], settings: { max_prepared_transactions: 20 } })),
    );
    for (const r of started) if (r.status === "fulfilled") shards.push(r.value);
    const failed = started.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    await Promise.all(shards.map((s) => s.sql(SCHEMA, { database: DATABASE })));
  } catch (e) {
    await cleanup();
    console.error(`demo: could not start PostgreSQL: ${e instanceof Error ? e.message : e}`);
    return 1;
  }

  let proxy;
  try {
    proxy = await startProxy({
      general: { host: "127.0.0.1", port, shutdown_timeout: 5000, two_phase_commit: true },
      databases: shards.map((s, i) => ({
        name: DATABASE,
        host: s.host,
        port: s.port,
        database_name: DATABASE,
        user: "postgres",
        shard: i,
      })),
      users: [{ name: USER, password: PASSWORD, database: DATABASE }],
      sharded_tables: [
        { database: DATABASE, name: "users", column: "id" },
        { database: DATABASE, name: "payments", column: "user_id" },
      ],
    });
  } catch (e) {
    await cleanup();
    console.error(`demo: could not start pgdog: ${e instanceof Error ? e.message : e}`);
    return 1;
  }
  const bound = proxy.addr.port;

  console.log(`
pgdog is listening on 127.0.0.1:${bound}, in front of ${count} shards:
${
    shards.map((s, i) => `  shard ${i}: psql -h ${s.host} -p ${s.port} -U postgres ${DATABASE}`)
      .join("\n")
  }

Connect through pgdog:
  psql "postgres://${USER}:${PASSWORD}@127.0.0.1:${bound}/${DATABASE}"

and try:
  INSERT INTO users (id, email) VALUES (1, 'ann@example.com');
  INSERT INTO users (id, email) VALUES (2, 'bob@example.com');
  INSERT INTO users (id, email) VALUES (pgdog.unique_id(), 'cat@example.com');
  INSERT INTO payments (id, user_id, amount) VALUES (pgdog.unique_id(), 1, 9.99);
  SELECT * FROM users WHERE id = 1;           -- one shard
  SELECT * FROM payments WHERE user_id = 1;   -- the same shard as user 1
  SELECT * FROM users;                        -- every shard, one result
  SHOW pgdog.shards;

Ctrl-C stops pgdog and removes the shards.`);

  const { promise, resolve } = Promise.withResolvers<void>();
  const stop = (): void => resolve();
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  await promise;
  console.log("\nstopping ...");
  await proxy.shutdown();
  await cleanup();
  console.log("removed the demo shards");
  return 0;
}

if (import.meta.main) Deno.exit(await main());
