/**
 * `deno task demo` as a user runs it: it prints how to connect, rows inserted through it land on
 * the shard PostgreSQL's hash partitioning picks (payments with their user), keyless reads see
 * every shard, and Ctrl-C (SIGINT) stops pgdog and removes the shards.
 */

import assert from "node:assert/strict";
import { connectPg, psql } from "./harness/mod.ts";
import { shardForBigint } from "../src/sharding/hash.ts";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("deno task demo: three shards behind pgdog, removed on Ctrl-C", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "demo", "--port", "0"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  const deadline = Date.now() + 90_000;
  try {
    while (!out.includes("Ctrl-C stops")) {
      assert.ok(Date.now() < deadline, `the demo did not get ready:\n${out}`);
      const { value, done } = await reader.read();
      if (done) assert.fail(`the demo ended early:\n${out}\n${await stderr}`);
      out += value;
    }
    const url = /psql "(postgres:\/\/[^"]+)"/.exec(out)?.[1];
    assert.ok(url, out);
    const u = new URL(url);
    const shardPorts = [...out.matchAll(/shard \d+: psql -h \S+ -p (\d+)/g)].map((m) =>
      Number(m[1])
    );
    assert.equal(shardPorts.length, 3);

    const c = await connectPg({
      host: u.hostname,
      port: Number(u.port),
      user: u.username,
      password: u.password,
      database: u.pathname.slice(1),
    });
    try {
      for (let id = 1; id <= 30; id++) {
        await c.query("INSERT INTO users (id, email) VALUES ($1, $2)", [id, `u${id}@example.com`]);
        // pgdog.unique_id() is replaced in simple-protocol queries (no parameters).
        await c.query(
          `INSERT INTO payments (id, user_id, amount) VALUES (pgdog.unique_id(), ${id}, 1.5)`,
        );
      }
      assert.equal((await c.query("SELECT id FROM users")).rows.length, 30);
      const shards = (await c.query("SHOW pgdog.shards")).rows[0].shards;
      assert.equal(Number(shards), 3);
    } finally {
      await c.end();
    }
    for (let i = 0; i < 3; i++) {
      const r = await psql(
        { host: "127.0.0.1", port: shardPorts[i], user: "postgres", database: "demo" },
        "SELECT 'u' || id FROM users UNION ALL SELECT 'p' || user_id FROM payments",
      );
      assert.equal(r.code, 0, r.stderr);
      const rows = r.stdout.trim().split("\n").filter((l) => l !== "");
      for (const row of rows) {
        assert.equal(shardForBigint(BigInt(row.slice(1)), 3), i, `${row} on shard ${i}`);
      }
    }

    child.kill("SIGINT");
    const status = await child.status;
    if (status.code !== 0) assert.fail(`the demo exited with ${status.code}:\n${await stderr}`);
    for (const port of shardPorts) {
      await assert.rejects(
        Deno.connect({ hostname: "127.0.0.1", port }).then((conn) => conn.close()),
        `shard on port ${port} still listens`,
      );
    }
  } finally {
    reader.releaseLock();
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
    await child.stdout.cancel().catch(() => {});
  }
});
