/**
 * COPY FROM STDIN through pgdog into 3 shards keeps pgdog's memory flat (issue #20): 300 MB of
 * rows streamed as fast as the client can send them while one shard stalls now and then (a
 * trigger sleeps there every 10,000th row): pgdog stops reading the client instead of buffering
 * that shard's rows, so its resident memory stays within a loose bound of where it started, and
 * every row lands.
 */

import assert from "node:assert/strict";
import { dumpLogsOnFailure, startSharded } from "./harness/mod.ts";
import { commandTag, fe, WireClient } from "./wire.ts";

/** Resident memory of process `pid`, in bytes. */
function rssBytes(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) * 1024;
}

const TOTAL_BYTES = 300 << 20;
/** Loose (measured: about +35 MB; without backpressure, about +95 MB: the stalled shard's rows). */
const GROWTH_LIMIT = 70 << 20;

Deno.test({
  name: "COPY FROM STDIN of 300 MB: pgdog's memory stays flat",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using setup = await startSharded({
      shardedTables: [{ name: "big", column: "id" }],
      schema: "CREATE UNLOGGED TABLE big (id bigint, pad text);",
      settings: { fsync: "off", synchronous_commit: "off" },
      // The COPY takes longer than the harness's query_timeout.
      general: { query_timeout: 0 },
    });
    await setup.onShard(
      0,
      "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN " +
        "IF NEW.id % 10000 = 0 THEN PERFORM pg_sleep(0.2); END IF; RETURN NEW; END $$; " +
        "CREATE TRIGGER stall BEFORE INSERT ON big FOR EACH ROW EXECUTE FUNCTION stall()",
    );
    await dumpLogsOnFailure(setup.proxy, async () => {
      const pid = setup.proxy.pid;
      const c = await WireClient.connect({ ...setup.target, password: "differential-pw" });
      try {
        await c.send(fe.query("COPY big (id, pad) FROM STDIN"));
        await c.until("G");
        const before = rssBytes(pid);
        let peak = before;
        const sampler = setInterval(() => peak = Math.max(peak, rssBytes(pid)), 100);
        const pad = "x".repeat(90);
        let sent = 0;
        let id = 0;
        try {
          while (sent < TOTAL_BYTES) {
            const lines: string[] = [];
            for (let i = 0; i < 600; i++) lines.push(`${id++}\t${pad}\n`);
            const chunk = fe.copyData(lines.join(""));
            await c.send(chunk);
            sent += chunk.length;
          }
          await c.send(fe.copyDone());
          const answer = await c.untilReady(1, 170_000);
          const done = answer.find((m) => m.type === "C");
          assert.ok(done, JSON.stringify(answer.map((m) => m.type)));
          assert.equal(commandTag(done.body), `COPY ${id}`);
        } finally {
          clearInterval(sampler);
        }
        peak = Math.max(peak, rssBytes(pid));
        console.log(
          `rows ${id}, ${(sent / 2 ** 20).toFixed(0)} MB: pgdog RSS ${
            (before / 2 ** 20).toFixed(0)
          } MB before, peak ${(peak / 2 ** 20).toFixed(0)} MB`,
        );
        assert.ok(
          peak - before < GROWTH_LIMIT,
          `RSS grew by ${((peak - before) / 2 ** 20).toFixed(0)} MB`,
        );
        let total = 0;
        for (let i = 0; i < 3; i++) {
          total += Number((await setup.onShard(i, "SELECT count(*) FROM big"))[0][0]);
        }
        assert.equal(total, id);
      } finally {
        await c.close();
      }
    });
  },
});
