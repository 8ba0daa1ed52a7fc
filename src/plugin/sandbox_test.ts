import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { acceptChannel, ownProject, type Sandbox, startProcess, startWorker } from "./sandbox.ts";

const encoder = new TextEncoder();

async function dial(port: number, first: string): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(encoder.encode(first));
  return conn;
}

Deno.test("a plugin channel takes only the connection that sends the token first", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const token = crypto.randomUUID();
  const accepted = acceptChannel(listener, token);
  // Another local process, with a wrong token: pgdog closes it.
  const stranger = await dial(port, `${crypto.randomUUID()}\n`);
  equal(await stranger.read(new Uint8Array(8)), null);
  stranger.close();
  const plugin = await dial(port, `${token}\n{"id":0}`);
  const { conn, rest } = await accepted;
  deepEqual(new TextDecoder().decode(rest), '{"id":0}');
  await plugin.write(encoder.encode("more"));
  const buf = new Uint8Array(8);
  equal(new TextDecoder().decode(buf.subarray(0, (await conn.read(buf))!)), "more");
  plugin.close();
  conn.close();
  listener.close();
});

Deno.test("a plugin process answers over loopback, and over pipes where it must", async () => {
  for (const pipes of [false, true]) {
    const sandbox = await startProcess({
      name: "trivial",
      specifier: new URL("../../tests/plugins/directives.ts", import.meta.url).href,
      folder: new URL("../../tests/plugins", import.meta.url).pathname,
      grants: { read: [], write: [], net: [], env: [], import: [], sys: false },
      loadOnly: [],
      memoryMb: 64,
      onOutput: () => {},
      pipes,
    });
    equal(sandbox.channel, pipes ? "pipes" : "loopback");
    // Frames larger than one read, and many in flight at once, each get their own answer.
    const padding = "x".repeat(300_000);
    const answers = await Promise.all(
      [0, 1, 2, 3].map((shard) =>
        sandbox.call(
          "route",
          JSON.stringify([{ query: `/* plugin: shard=${shard} */ select '${padding}'` }]),
          10_000,
        )
      ),
    );
    deepEqual(answers, [{ shard: 0 }, { shard: 1 }, { shard: 2 }, { shard: 3 }]);
    sandbox.kill();
    await sandbox.ended;
  }
});

const FIXTURES = new URL("../../tests/plugins/", import.meta.url);

function channelWorker(): Promise<Sandbox> {
  return startWorker({
    name: "worker_channel",
    specifier: new URL("worker_channel.ts", FIXTURES).href,
    folder: FIXTURES.pathname,
    grants: { read: [], write: [], net: [], env: [], import: [], sys: false },
    loadOnly: [],
    memoryMb: 64,
    onOutput: () => {},
  });
}

/** Runs `body` with a fresh channel worker, and stops the worker afterwards. */
async function withChannelWorker(body: (sandbox: Sandbox) => Promise<void>): Promise<void> {
  const sandbox = await channelWorker();
  try {
    await body(sandbox);
  } finally {
    sandbox.kill();
    await sandbox.ended;
  }
}

/** One route call with `query` as the whole context. */
function route(sandbox: Sandbox, query: string, timeoutMs = 10_000): Promise<unknown> {
  return sandbox.call("route", JSON.stringify([{ query }]), timeoutMs);
}

Deno.test("a plugin worker answers through shared memory, async hooks too", () =>
  withChannelWorker(async (sandbox) => {
    equal(sandbox.channel, "shared memory");
    deepEqual(await route(sandbox, "abc"), { block: "3" });
    // Async hooks need the worker's event loop; quick calls go on meanwhile.
    const slow = [route(sandbox, "sleep 30"), route(sandbox, "sleep 10")];
    deepEqual(await route(sandbox, "abcd"), { block: "4" });
    deepEqual(await Promise.all(slow), [{ block: "slept 30" }, { block: "slept 10" }]);
    deepEqual(await route(sandbox, "abcde"), { block: "5" });
  }));

Deno.test("a plugin worker's own timers run while it waits for calls", () =>
  withChannelWorker(async (sandbox) => {
    const before = Number((await route(sandbox, "ticks") as { block: string }).block);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const after = Number((await route(sandbox, "ticks") as { block: string }).block);
    // A 10 ms interval: the idle worker lets its event loop run every 20 ms or so (0 if never).
    ok(after - before >= 5, `${after - before} ticks in 300 ms`);
  }));

Deno.test("a plugin worker takes frames larger than its rings, and more than fit at once", () =>
  withChannelWorker(async (sandbox) => {
    // 1 MB each way: four times a ring.
    const big = `echo ${"x".repeat(1024 * 1024)}`;
    deepEqual(await route(sandbox, big), { rewrite: big });
    // 64 calls of 20 kB in flight: more than a ring holds, so some wait for room or go as messages.
    const queries = Array.from({ length: 64 }, (_, i) => "y".repeat(20_000 + i));
    const answers = await Promise.all(queries.map((q) => route(sandbox, q)));
    deepEqual(answers, queries.map((q) => ({ block: String(q.length) })));
    // Mixed with async calls and small ones, in any order.
    const mixed = await Promise.all([
      route(sandbox, "sleep 5"),
      route(sandbox, big),
      route(sandbox, "z"),
    ]);
    deepEqual(mixed, [{ block: "slept 5" }, { rewrite: big }, { block: "1" }]);
  }));

Deno.test("a plugin worker waiting for calls ends when stopped, and one past its timeout too", async () => {
  const sandbox = await channelWorker();
  deepEqual(await route(sandbox, "abc"), { block: "3" });
  // Idle: blocked in Atomics.wait. The test's sanitizers fail it if the worker lives on.
  await new Promise((resolve) => setTimeout(resolve, 100));
  sandbox.kill();
  equal(await sandbox.ended, "was stopped");
  await rejects(route(sandbox, "abc"), /has ended/);
  const late = await channelWorker();
  await rejects(route(late, "sleep 2000", 50), /no answer within 50 ms/);
  equal(await late.ended, "gave no answer within 50 ms");
});

Deno.test("a plugin worker that sends what is not an answer is ended, pgdog goes on", async () => {
  const sandbox = await channelWorker();
  await rejects(route(sandbox, "garble"), /sent an unreadable answer/);
  match(await sandbox.ended, /^sent an unreadable answer: /);
});

Deno.test("a plugin's own project is the nearest deno.json above it, outside pgdog's", () => {
  const dir = Deno.makeTempDirSync({ prefix: "pgdog-own-config-" });
  const folder = `${dir}/project/plugins/guard`;
  try {
    Deno.mkdirSync(folder, { recursive: true });
    equal(ownProject(folder), null);
    Deno.writeTextFileSync(`${dir}/project/deno.jsonc`, "{}");
    deepEqual(ownProject(folder), { config: `${dir}/project/deno.jsonc`, lock: null });
    Deno.writeTextFileSync(`${folder}/deno.json`, "{}");
    Deno.writeTextFileSync(`${folder}/deno.lock`, "{}");
    deepEqual(ownProject(folder), { config: `${folder}/deno.json`, lock: `${folder}/deno.lock` });
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
  // A plugin in pgdog's folder runs in pgdog's workspace, even with a deno.json of its own.
  const guard = decodeURIComponent(new URL("../../plugins/guard", import.meta.url).pathname);
  ok(Deno.statSync(`${guard}/deno.json`).isFile);
  equal(ownProject(guard), null);
});
