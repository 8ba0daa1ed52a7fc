/**
 * A test plugin whose answers depend only on the statement's shape, and that says so
 * (`cacheRoute: "shape"`): a column named `secret` blocks; `as rewrite_me` is rewritten to
 * `as rewritten`, values kept (a rewrite pgdog must not reuse for other values); anything else has
 * no opinion.
 */

import { definePlugin } from "@pgdog/pgdog/plugin";

export default definePlugin({
  apiVersion: "1.2.0",
  parseTree: false,
  cacheRoute: "shape",
  route(ctx) {
    if (/\bas secret\b/.test(ctx.query)) return { block: "secret is not to be read" };
    if (ctx.query.includes(" as rewrite_me")) {
      return { rewrite: ctx.query.replace(" as rewrite_me", " as rewritten") };
    }
    return null;
  },
});
