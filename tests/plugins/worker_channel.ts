/**
 * A test plugin for the Worker's shared-memory channel (src/plugin/sandbox_test.ts): `sleep <ms>`
 * answers after a timer (an async hook), `ticks` tells how often its own interval has run,
 * `echo <text>` answers with the whole query as a rewrite (a large answer for a large query), and
 * `garble` breaks every later answer, and anything else is answered at once with the query's
 * length.
 */

import { definePlugin, type RouteAnswer } from "@pgdog/pgdog/plugin";

let ticks = 0;
setInterval(() => ticks++, 10);

export default definePlugin({
  apiVersion: "1.0.0",
  parseTree: false,
  route(ctx): RouteAnswer | Promise<RouteAnswer> {
    const sleep = /^sleep (\d+)$/.exec(ctx.query);
    if (sleep !== null) {
      return new Promise((resolve) =>
        setTimeout(() => resolve({ block: `slept ${sleep[1]}` }), Number(sleep[1]))
      );
    }
    if (ctx.query === "ticks") return { block: String(ticks) };
    if (ctx.query === "garble") {
      // Every answer from now on is not JSON (the Worker builds answers with JSON.stringify).
      JSON.stringify = () => "}{";
      return {};
    }
    if (ctx.query.startsWith("echo ")) return { rewrite: ctx.query };
    return { block: String(ctx.query.length) };
  },
});
