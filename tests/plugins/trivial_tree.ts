/** Like trivial.ts, but receives the parse tree (what a plugin that reads the SQL costs). */

import { definePlugin } from "@pgdog/pgdog/plugin";

export default definePlugin({
  apiVersion: "1.0.0",
  route(ctx) {
    return ctx.statement === undefined ? { block: "no statement field" } : null;
  },
});
