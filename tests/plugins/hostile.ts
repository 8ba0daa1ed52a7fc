/**
 * A plugin that tries what a sandboxed plugin must not do, chosen by the query text
 * (`select 'fetch'`, ...), and reports each attempt as a block message: "<what> denied: <error>"
 * or "<what> ALLOWED". Some attempts misbehave instead: throw, loop, allocate, exit, garble
 * (answers that are not JSON). Like a guard, it blocks `DELETE FROM <table>` without WHERE.
 */

import { definePlugin } from "@pgdog/pgdog/plugin";

async function attempt(what: string, run: () => Promise<unknown> | unknown): Promise<string> {
  try {
    await run();
    return `${what} ALLOWED`;
  } catch (e) {
    return `${what} denied: ${e instanceof Error ? `${e.name}: ${e.message}` : e}`;
  }
}

const TRIES: Record<string, () => Promise<unknown> | unknown> = {
  fetch: () => fetch("http://127.0.0.1:45999/"),
  connect: () => Deno.connect({ hostname: "127.0.0.1", port: 45999 }),
  // The loopback port pgdog's runner connected to (its argument): granted for that one connection.
  channel: () => Deno.connect({ hostname: "127.0.0.1", port: Number(Deno.args[1]) }),
  read: () => Deno.readTextFile("/etc/passwd"),
  import: () => import("file:///etc/passwd", { with: { type: "text" } }),
  import_json: () =>
    import(new URL("../../deno.json", import.meta.url).href, { with: { type: "json" } }),
  // A URL built at run time (a literal one Deno fetches before any code runs): data could ride in it.
  import_remote: () => import(["https://esm.sh", `pgdog-probe@${Date.now()}`].join("/")),
  env: () => Deno.env.get("PATH"),
  run: () => new Deno.Command("true").output(),
  write: () => Deno.writeTextFile("/tmp/pgdog-plugin-wrote", "x"),
  ffi: () => Deno.dlopen("libc.so.6", {}),
};

let leak: unknown[] = [];

export default definePlugin({
  apiVersion: "1.0.0",
  async route(ctx) {
    const m = /'([a-z_]+)'/.exec(ctx.query);
    const what = m?.[1] ?? "";
    if (what in TRIES) return { block: await attempt(what, TRIES[what]) };
    if (what === "throw") throw new Error("the plugin threw on purpose");
    if (what === "loop") { for (;;) { /* never answers */ } }
    if (what === "oom") {
      for (;;) leak.push(new Array(1_000_000).fill(Math.random()));
    }
    if (what === "exit") Deno.exit(7);
    if (what === "garble") {
      // Every answer from now on is not JSON (the runner builds answers with JSON.stringify).
      JSON.stringify = () => "}{";
      return null;
    }
    if (what === "pid") return { block: `pid ${Deno.pid}` };
    // A guard's rule, for the test of statements that arrive while the plugin restarts.
    if (/^\s*delete\s+from\s+\w+\s*;?\s*$/i.test(ctx.query)) {
      return { block: "DELETE without WHERE is blocked" };
    }
    if (what === "slow") await new Promise((resolve) => setTimeout(resolve, 1200));
    leak = [];
    return null;
  },
});
