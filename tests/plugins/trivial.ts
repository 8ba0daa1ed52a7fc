/**
 * A plugin that answers every route call with no opinion and reads no parse tree: the cost of a
 * call itself (bench/plugin_bench.ts, deno task bench).
 */

import { definePlugin } from "@pgdog/pgdog/plugin";

export default definePlugin({
  apiVersion: "1.0.0",
  parseTree: false,
  route() {
    return null;
  },
});
