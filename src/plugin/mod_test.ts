import { deepEqual, equal, match, rejects } from "node:assert/strict";
import { encodeFrame, FrameReader, FrameWriter } from "./frames.ts";
import { incompatibility } from "./api.ts";
import { DEFAULT_IMPORT_HOSTS, permissionFlags } from "./sandbox.ts";
import { PluginError, PluginSet, pluginsKey, type RouteStatement } from "./mod.ts";
import type { PluginConfig } from "../config/types.ts";

const fixture = (name: string): string =>
  new URL(`../../tests/plugins/${name}`, import.meta.url).pathname;

function config(name: string, file: string, extra: Partial<PluginConfig> = {}): PluginConfig {
  return {
    name,
    path: fixture(file),
    isolation: "process",
    timeout: 10_000,
    on_error: "fallback",
    memory_mb: 64,
    cache_size: 10_000,
    ...extra,
  };
}

Deno.test("frames: split anywhere, joined back in order", () => {
  const texts = ['{"id":1}', '{"id":2,"ok":"é ✓"}', "{}"];
  const bytes = new Uint8Array(texts.reduce((n, t) => n + encodeFrame(t).length, 0));
  let at = 0;
  for (const t of texts) {
    const f = encodeFrame(t);
    bytes.set(f, at);
    at += f.length;
  }
  for (let cut = 1; cut < bytes.length; cut += 3) {
    const reader = new FrameReader();
    const got = [...reader.push(bytes.subarray(0, cut)), ...reader.push(bytes.subarray(cut))];
    deepEqual(got, texts);
  }
});

Deno.test("API versions: same major, minor not newer", () => {
  equal(incompatibility("1.0.0", "1.0.0"), null);
  equal(incompatibility("1.0.3", "1.2.0"), null);
  equal(incompatibility("1.1", "1.2.0"), null);
  match(incompatibility("1.3.0", "1.2.0")!, /1\.3\.0, newer than pgdog's 1\.2\.0/);
  match(incompatibility("2.0.0", "1.2.0")!, /major versions differ/);
  match(incompatibility(undefined, "1.0.0")!, /apiVersion null is not a version/);
  match(incompatibility("one", "1.0.0")!, /"one" is not a version/);
});

Deno.test("a plugin process gets exactly its grants as flags", () => {
  deepEqual(
    permissionFlags({
      folder: "/p",
      grants: { read: [], write: [], net: [], env: [], import: [], sys: false },
    }),
    ["--no-prompt", "--allow-read=/p"],
  );
  deepEqual(
    permissionFlags({
      folder: null,
      grants: { read: ["/d"], write: ["/w"], net: ["h:1"], env: ["TZ"], import: [], sys: true },
    }),
    [
      "--no-prompt",
      "--allow-read=/d",
      "--allow-write=/w",
      "--allow-net=h:1",
      "--allow-env=TZ",
      "--allow-sys",
    ],
  );
  // Import grants keep Deno's default hosts.
  deepEqual(
    permissionFlags({
      folder: null,
      grants: { read: [], write: [], net: [], env: [], import: ["h:80"], sys: false },
    }),
    ["--no-prompt", `--allow-import=${[...DEFAULT_IMPORT_HOSTS, "h:80"].join(",")}`],
  );
  // The loopback port of its channel joins the net grants.
  deepEqual(
    permissionFlags({
      folder: "/p",
      grants: { read: [], write: [], net: ["h:1"], env: [], import: [], sys: false },
    }, { channel: 40001 }),
    ["--no-prompt", "--allow-read=/p", "--allow-net=h:1,127.0.0.1:40001"],
  );
});

Deno.test("DEFAULT_IMPORT_HOSTS are the hosts this Deno imports from without flags", async () => {
  const file = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(
      file,
      `for (const host of ${JSON.stringify(DEFAULT_IMPORT_HOSTS)}) {\n` +
        '  console.log(host, Deno.permissions.querySync({ name: "import", host }).state);\n}\n',
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--quiet", "--no-prompt", "--no-config", file],
      stdout: "piped",
    }).output();
    deepEqual(
      new TextDecoder().decode(out.stdout).trim().split("\n"),
      DEFAULT_IMPORT_HOSTS.map((host) => `${host} granted`),
    );
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("PluginSet: parseTree, merged answers, a missing module named", async () => {
  const set = await PluginSet.start([
    config("t", "trivial.ts"),
    config("d", "directives.ts"),
  ]);
  try {
    equal(set.needsTree, true);
    deepEqual(set.names, ["t", "d"]);
    const ctx = (query: string): RouteStatement => ({
      sql: query,
      shape: query,
      user: "u",
      database: "db",
      applicationName: "",
      shards: 2,
      replicas: false,
      context: () => JSON.stringify({ query }),
    });
    deepEqual(await set.route(ctx("/* plugin: shard=1 role=primary */")), {
      by: { shard: "d", role: "d" },
      shard: 1,
      role: "primary",
    });
  } finally {
    await set.close();
  }
  const lean = await PluginSet.start([config("t", "trivial.ts")]);
  equal(lean.needsTree, false);
  await lean.close();
  await rejects(
    PluginSet.start([config("gone", "no_such_plugin.ts")]),
    (e: Error) =>
      e instanceof PluginError && /plugin "gone" \(.*no_such_plugin\.ts\)/.test(e.message),
  );
});

Deno.test("PluginSet: kept route answers (cacheRoute, cache_size), dropped on restart", async () => {
  const statement = (sql: string, applicationName = ""): RouteStatement => ({
    sql,
    shape: sql,
    user: "u",
    database: "db",
    applicationName,
    shards: 1,
    replicas: false,
    context: () => JSON.stringify({ query: sql }),
  });
  const set = await PluginSet.start([
    config("c", "cached.ts", { cache_size: 2 }),
    config("off", "cached.ts", { cache_size: 0 }),
    config("t", "trivial.ts"),
  ]);
  const calls = () => set.stats().map((s) => [s.calls, s.cacheHits, s.cached]);
  try {
    for (let i = 0; i < 3; i++) deepEqual(await set.route(statement("select 1")), { by: {} });
    // Kept by "c" only: "off" has cache_size = 0, "t" does not declare cacheRoute.
    deepEqual(calls(), [[1, 2, 1], [3, 0, 0], [3, 0, 0]]);
    for (let i = 0; i < 2; i++) {
      deepEqual(await set.route(statement("select 'blocked'")), {
        by: { block: "c" },
        block: "blocked by a kept answer",
      });
    }
    deepEqual(calls()[0], [2, 3, 2]);
    // Another application_name is another key; the oldest key ("select 1") makes room.
    await set.route(statement("select 1", "other"));
    deepEqual(calls()[0], [3, 3, 2]);
    await set.route(statement("select 1"));
    deepEqual(calls()[0], [4, 3, 2]);
    // A failed call is not kept.
    for (let i = 0; i < 2; i++) await set.route(statement("select 'throw'"));
    deepEqual(calls()[0].slice(0, 2), [6, 3]);
    // A restarted plugin starts with nothing kept.
    await set.route(statement("select 'exit'"));
    for (
      let i = 0;
      i < 100 && !(set.stats()[0].state === "ready" && set.stats()[0].restarts);
      i++
    ) {
      await new Promise((r) => setTimeout(r, 50));
    }
    equal(set.stats()[0].restarts, 1);
    equal(set.stats()[0].cached, 0);
  } finally {
    await set.close();
  }
});

Deno.test('PluginSet: cacheRoute "shape" keeps answers per shape, rewrites not', async () => {
  const statement = (sql: string, shape: string): RouteStatement => ({
    sql,
    shape,
    user: "u",
    database: "db",
    applicationName: "",
    shards: 1,
    replicas: false,
    context: () => JSON.stringify({ query: sql }),
  });
  const set = await PluginSet.start([
    config("shape", "shape_cached.ts"),
    config("text", "cached.ts"),
  ]);
  const calls = () => set.stats().map((s) => [s.calls, s.cacheHits, s.cached]);
  try {
    for (const v of [1, 2, 3]) {
      deepEqual(await set.route(statement(`select ${v} as one`, "select $1 as one")), { by: {} });
    }
    // One shape, three texts.
    deepEqual(calls(), [[1, 2, 1], [3, 0, 3]]);
    for (const v of [1, 2]) {
      deepEqual(await set.route(statement(`select ${v} as secret`, "select $1 as secret")), {
        by: { block: "shape" },
        block: "secret is not to be read",
      });
    }
    deepEqual(calls()[0], [2, 3, 2]);
    for (const v of [5, 6]) {
      deepEqual(
        await set.route(statement(`select ${v} as rewrite_me`, "select $1 as rewrite_me")),
        { by: { rewrite: "shape" }, rewrite: `select ${v} as rewritten` },
      );
    }
    deepEqual(calls()[0], [4, 3, 2]);
  } finally {
    await set.close();
  }
});

Deno.test("PluginSet: kept shard answers (cacheShard), per key and shard context", async () => {
  const set = await PluginSet.start([
    config("c", "cached.ts", { cache_size: 2 }),
    config("d", "directives.ts"),
  ]);
  const ctx = { table: "t", column: "id", dataType: "bigint", shards: 3, database: "db" };
  try {
    for (const key of ["7", "7", "8", "7"]) {
      equal(await set.shard("c", key, ctx), Number(key) % 3);
      equal(await set.shard("d", key, ctx), Number(key) % 3);
    }
    equal(await set.shard("c", "7", { ...ctx, shards: 2 }), 1);
    const [c, d] = set.stats();
    // "c": 7 and 8 asked, then 7 for 2 shards; "d" does not declare cacheShard.
    deepEqual([c.calls, c.cacheHits, c.cached], [3, 2, 2]);
    deepEqual([d.calls, d.cacheHits, d.cached], [4, 0, 0]);
    // A failed call is not kept.
    await rejects(set.shard("c", "x", ctx));
    await rejects(set.shard("c", "x", ctx));
    equal(set.stats()[0].calls, 5);
  } finally {
    await set.close();
  }
});

Deno.test("FrameWriter.flushed waits for frames not yet handed to the write", async () => {
  const written: Uint8Array[] = [];
  const writer = new FrameWriter(async (bytes) => {
    await new Promise((r) => setTimeout(r, 5));
    written.push(bytes);
  });
  writer.send('{"id":0}');
  await writer.flushed();
  equal(written.length, 1);
  deepEqual(new FrameReader().push(written[0]), ['{"id":0}']);
});

Deno.test("pluginsKey: a plugin's files, its own deno.json and lockfile above it, count", () => {
  const dir = Deno.makeTempDirSync({ prefix: "pgdog-plugins-key-" });
  const touch = (path: string, text: string): void => Deno.writeTextFileSync(path, text);
  try {
    Deno.mkdirSync(`${dir}/plugins/own`, { recursive: true });
    touch(`${dir}/plugins/own/mod.ts`, "export const apiVersion = '1.0.0';\n");
    const configs = [config("own", "trivial.ts", { path: `${dir}/plugins/own/mod.ts` })];
    const keys = [pluginsKey(configs)];
    for (const [file, text] of [["deno.json", "{}"], ["deno.lock", "{}"], ["deno.json", "{ }"]]) {
      touch(`${dir}/${file}`, text);
      keys.push(pluginsKey(configs));
    }
    touch(`${dir}/plugins/own/mod.ts`, "export const apiVersion = '1.10.0';\n");
    keys.push(pluginsKey(configs));
    keys.push(pluginsKey(configs));
    // Each change makes a new key; nothing changed, the same key.
    equal(new Set(keys.slice(0, -1)).size, keys.length - 1);
    equal(keys.at(-1), keys.at(-2));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
