/**
 * A test plugin whose answers depend only on the statement's text, and that says so
 * (`cacheRoute`): `'blocked'` in the text blocks, `'rewrite me'` rewrites, `'throw'` throws,
 * `'exit'` ends its process; anything else has no opinion. Its `shard` hook (kept too,
 * `cacheShard`) is the key modulo the shard count.
 */

import { definePlugin } from "@pgdog/pgdog/plugin";

export default definePlugin({
  apiVersion: "1.1.0",
  parseTree: false,
  cacheRoute: true,
  cacheShard: true,
  route(ctx) {
    if (ctx.query.includes("'blocked'")) return { block: "blocked by a kept answer" };
    if (ctx.query.includes("'rewrite me'")) return { rewrite: "select 'rewritten' as r" };
    if (ctx.query.includes("'throw'")) throw new Error("the cached plugin threw");
    if (ctx.query.includes("'exit'")) Deno.exit(3);
    return null;
  },
  shard(key, ctx) {
    return Number(BigInt(key) % BigInt(ctx.shards));
  },
});
