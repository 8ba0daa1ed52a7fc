/**
 * The live status page in a real browser (Debian's chromium, driven by npm:playwright-core):
 * while pgbench runs through the proxy, the page shows the pool, the clients and a plot of
 * transactions per second that updates itself; a screenshot is taken.
 */

import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { dumpLogsOnFailure, pgbench, startPostgres, startProxy } from "./harness/mod.ts";

const CHROMIUM = "/usr/bin/chromium";

Deno.test("status page: pools, clients and a live TPS plot in headless Chromium", async () => {
  try {
    await Deno.stat(CHROMIUM);
  } catch {
    throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)`);
  }
  await using pg = await startPostgres({ databases: ["app"] });
  const init = await pgbench(
    { host: pg.host, port: pg.port, user: "postgres", database: "app" },
    ["-i", "-s", "1", "-q"],
  );
  assert.equal(init.code, 0, init.stderr);
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  await using proxy = await startProxy({
    config: {
      general: { healthcheck_port: port },
      databases: [{ name: "app", host: pg.host, port: pg.port, pool_size: 4 }],
    },
    users: { users: [{ name: "postgres", password: "x", database: "app" }] },
  });
  const app = proxy.target({ user: "postgres", password: "x", database: "app" });
  await dumpLogsOnFailure(proxy, async () => {
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    try {
      const bench = pgbench(app, ["-n", "-c", "4", "-T", "6"], { timeoutMs: 60_000 });
      const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
      const response = await page.goto(`http://127.0.0.1:${port}/`);
      assert.equal(response?.status(), 200);
      await page.waitForSelector("#pools tbody tr", { timeout: 10_000 });
      const row = await page.textContent("#pools tbody tr");
      assert.match(row ?? "", /app/);
      assert.match(row ?? "", /online/);
      // The plot fills in while pgbench runs, and the page says so without a reload.
      // (Expressions evaluated in the page, where `document` exists.)
      await page.waitForFunction(
        "(document.getElementById('line')?.getAttribute('points') ?? '').split(' ').length >= 3",
        undefined,
        { timeout: 15_000 },
      );
      await page.waitForFunction(
        "Number(document.querySelector('[data-name=tps] b')?.textContent ?? '0') > 0",
        undefined,
        { timeout: 10_000 },
      );
      const clients = Number(await page.textContent('[data-name="clients"] b'));
      assert.ok(clients >= 4, `clients card shows ${clients}`);
      const shot = await Deno.makeTempFile({ prefix: "pgdog-status-", suffix: ".png" });
      await page.screenshot({ path: shot, fullPage: true });
      assert.ok((await Deno.stat(shot)).size > 10_000, "the screenshot is empty");
      console.log(`status page screenshot: ${shot}`);
      const run = await bench;
      assert.equal(run.code, 0, run.stderr);
    } finally {
      await browser.close();
    }
  });
});
