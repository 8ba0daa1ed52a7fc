import { deepEqual, equal } from "node:assert/strict";
import { resolveConfig } from "./load.ts";
import { resolvePoolSettings, workerShare } from "./pool_settings.ts";
import type { Config } from "./types.ts";

function config(): Config {
  return resolveConfig({
    general: {
      default_pool_size: 10,
      min_pool_size: 2,
      pooler_mode: "transaction",
      idle_timeout: 11,
      server_lifetime: 12,
      checkout_timeout: 13,
      connect_timeout: 14,
      rollback_timeout: 15,
    },
    databases: [
      { name: "plain", host: "h" },
      {
        name: "tuned",
        host: "h",
        pool_size: 20,
        min_pool_size: 5,
        pooler_mode: "session",
        user: "db_login",
        password: "db_secret",
      },
    ],
    users: [
      { name: "bare", database: "plain" },
      { name: "bare", database: "tuned" },
      {
        name: "tuned",
        database: "tuned",
        password: "client_pw",
        pool_size: 30,
        min_pool_size: 40,
        pooler_mode: "transaction",
        server_user: "srv_login",
        server_password: "srv_pw",
      },
      { name: "pw_only", database: "plain", password: "client_pw" },
      {
        name: "srv",
        database: "plain",
        password: "client_pw",
        server_user: "s",
        server_password: "sp",
      },
    ],
  }).config;
}

Deno.test("resolvePoolSettings: [general] when neither user nor database sets a value", () => {
  const c = config();
  deepEqual(resolvePoolSettings(c, { database: c.databases[0], user: c.users[0] }), {
    pool_size: 10,
    min_pool_size: 2,
    pooler_mode: "transaction",
    server_user: "bare",
    idle_timeout: 11,
    server_lifetime: 12,
    checkout_timeout: 13,
    connect_timeout: 14,
    rollback_timeout: 15,
  });
});

Deno.test("resolvePoolSettings: the database overrides [general]", () => {
  const c = config();
  const settings = resolvePoolSettings(c, { database: c.databases[1], user: c.users[1] });
  equal(settings.pool_size, 20);
  equal(settings.min_pool_size, 5);
  equal(settings.pooler_mode, "session");
  equal(settings.server_user, "db_login");
  equal(settings.server_password, "db_secret");
});

Deno.test("resolvePoolSettings: the user overrides the database; min is clamped to size", () => {
  const c = config();
  const settings = resolvePoolSettings(c, { database: c.databases[1], user: c.users[2] });
  equal(settings.pool_size, 30);
  equal(settings.min_pool_size, 30);
  equal(settings.pooler_mode, "transaction");
  // The database's user/password win over server_user/server_password.
  equal(settings.server_user, "db_login");
  equal(settings.server_password, "db_secret");
});

Deno.test("resolvePoolSettings: server login falls back to server_user, then the user", () => {
  const c = config();
  const pwOnly = resolvePoolSettings(c, { database: c.databases[0], user: c.users[3] });
  equal(pwOnly.server_user, "pw_only");
  equal(pwOnly.server_password, "client_pw");
  const srv = resolvePoolSettings(c, { database: c.databases[0], user: c.users[4] });
  equal(srv.server_user, "s");
  equal(srv.server_password, "sp");
  const bare = resolvePoolSettings(c, { database: c.databases[0], user: c.users[0] });
  equal("server_password" in bare, false);
});

Deno.test("workerShare: the shares add up to the total, the first workers get the remainder", () => {
  for (const total of [0, 1, 2, 3, 7, 10, 64]) {
    for (const count of [1, 2, 3, 4, 8]) {
      const shares = Array.from(
        { length: count },
        (_, index) => workerShare(total, { index, count }),
      );
      equal(shares.reduce((a, b) => a + b, 0), total, `${total} over ${count}`);
      equal(Math.max(...shares) - Math.min(...shares) <= 1, true);
    }
  }
  deepEqual([0, 1, 2].map((index) => workerShare(7, { index, count: 3 })), [3, 2, 2]);
  // A pool smaller than the number of workers: every worker still gets one connection.
  deepEqual([0, 1, 2].map((index) => workerShare(2, { index, count: 3, atLeastOne: true })), [
    1,
    1,
    1,
  ]);
});

Deno.test("resolvePoolSettings: a worker's share of pool_size and min_pool_size", () => {
  const c = config();
  const tuned = { database: c.databases[1], user: c.users[2] }; // pool_size 30, min 40 -> 30
  const shares = [0, 1, 2, 3].map((index) =>
    resolvePoolSettings(c, { ...tuned, worker: { index, count: 4 } })
  );
  deepEqual(shares.map((s) => s.pool_size), [8, 8, 7, 7]);
  deepEqual(shares.map((s) => s.min_pool_size), [8, 8, 7, 7]);
  const plain = resolvePoolSettings(c, {
    database: c.databases[0],
    user: c.users[0],
    worker: { index: 1, count: 2 },
  });
  equal(plain.pool_size, 5);
  equal(plain.min_pool_size, 1);
});
