/**
 * RELOAD (admin database) and SIGHUP with clients connected throughout: a new database and user
 * appear, a changed pool keeps its server connections, a removed user can't log in and its
 * connected client is told at its next transaction, and an invalid file is refused with the same
 * messages as at startup while the old configuration keeps serving.
 */

import assert from "node:assert/strict";
import { connectPg, dumpLogsOnFailure, psql, startPostgres, startProxy } from "./harness/mod.ts";

const ADMIN = { user: "admin", password: "reload-admin-pw", database: "admin" };

Deno.test("RELOAD and SIGHUP with clients connected", async () => {
  await using pg = await startPostgres({ databases: ["app", "app2"] });
  const db = (name: string) => ({ name, host: pg.host, port: pg.port });
  const general = (pool: number) => ({ default_pool_size: pool });
  await using proxy = await startProxy({
    config: { general: general(2), databases: [db("app")], admin: { password: ADMIN.password } },
    users: {
      users: [
        { name: "postgres", password: "p1", database: "app" },
        { name: "leaving", password: "p2", database: "app", server_user: "postgres" },
      ],
    },
  });
  const at = { host: "127.0.0.1", port: proxy.port };
  const admin = (sql: string) => psql({ ...at, ...ADMIN }, sql);

  await dumpLogsOnFailure(proxy, async () => {
    const stays = await connectPg(
      proxy.target({ user: "postgres", password: "p1", database: "app" }),
    );
    const leaves = await connectPg(
      proxy.target({ user: "leaving", password: "p2", database: "app" }),
    );
    leaves.on("error", () => {});
    try {
      const pid = (await stays.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
      await leaves.query("SELECT 1");

      // A new database and user, a bigger pool, one user removed.
      await proxy.writeConfig({
        general: general(3),
        databases: [db("app"), db("app2")],
        admin: { password: ADMIN.password },
      });
      await proxy.writeUsers({
        users: [
          { name: "postgres", password: "p1", database: "app" },
          { name: "postgres", password: "p1", database: "app2" },
        ],
      });
      const reloaded = await admin("RELOAD");
      assert.equal(reloaded.code, 0, reloaded.stderr);

      // The connected client goes on, on the very same server connection.
      assert.equal((await stays.query("SELECT pg_backend_pid() AS pid")).rows[0].pid, pid);
      const config = await admin("SHOW CONFIG");
      assert.match(config.stdout, /default_pool_size\|3/);
      const app2 = await psql(
        proxy.target({ user: "postgres", password: "p1", database: "app2" }),
        "SELECT current_database()",
      );
      assert.equal(app2.code, 0, app2.stderr);
      assert.equal(app2.stdout.trim(), "app2");
      const refused = await psql(
        proxy.target({ user: "leaving", password: "p2", database: "app" }),
        "SELECT 1",
      );
      assert.notEqual(refused.code, 0);
      await assert.rejects(leaves.query("SELECT 1"), /no longer in the configuration/);

      // An invalid file: refused with startup's messages, the running configuration stays.
      await proxy.writeConfig({
        general: { ...general(3), pooler_mode: "statement" },
        databases: [db("app")],
        admin: { password: ADMIN.password },
      });
      const bad = await admin("RELOAD");
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /configuration is invalid/);
      assert.match(
        bad.stderr,
        /pgdog\.toml:\d+: \[general\] pooler_mode: "statement" is not allowed/,
      );
      assert.equal((await stays.query("SELECT 2 AS n")).rows[0].n, 2);
      const still = await psql(
        proxy.target({ user: "postgres", password: "p1", database: "app2" }),
        "SELECT 1",
      );
      assert.equal(still.code, 0, still.stderr);

      // SIGHUP does the same as RELOAD.
      await proxy.writeConfig({
        general: general(4),
        databases: [db("app"), db("app2")],
        admin: { password: ADMIN.password },
      });
      const since = proxy.logOffset();
      proxy.signal("SIGHUP");
      await proxy.waitForLog(/configuration reloaded/, { since, timeoutMs: 10_000 });
      assert.match((await admin("SHOW CONFIG")).stdout, /default_pool_size\|4/);
      assert.equal((await stays.query("SELECT pg_backend_pid() AS pid")).rows[0].pid, pid);
    } finally {
      await stays.end();
      await leaves.end().catch(() => {});
    }
  });
});
