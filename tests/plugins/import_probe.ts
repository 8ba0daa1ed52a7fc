/**
 * A plugin that reports whether it may import from jsr.io (one of Deno's default hosts) while its
 * module loads and afterwards, when asked `select 'import_probe'`.
 */

import { definePlugin } from "@pgdog/pgdog/plugin";

const state = (): string =>
  Deno.permissions.querySync({ name: "import", host: "jsr.io:443" }).state;
const atLoad = state();

export default definePlugin({
  apiVersion: "1.0.0",
  parseTree: false,
  route(ctx) {
    if (ctx.query.includes("import_probe")) return { block: `at load ${atLoad}, now ${state()}` };
  },
});
