/**
 * A test plugin driven by the statement's own comment, `/* plugin: role=replica shard=1 *\/`:
 * `block=<message>`, `rewrite=<sql>` (the rest of the comment) or `echo` (block with the context
 * as JSON, so a test can see exactly what the plugin was given). Also a modulo `shard` hook.
 */

import { definePlugin, type RouteAnswer } from "@pgdog/pgdog/plugin";

let config: Record<string, unknown> = {};

export default definePlugin({
  apiVersion: "1.0.0",
  init(c) {
    config = c;
  },
  route(ctx) {
    const m = /\/\* plugin: (.*?) \*\//s.exec(ctx.query);
    // `config.always`: the answer to statements without a directive.
    if (m === null) return (config.always as RouteAnswer | undefined) ?? null;
    const text = m[1];
    if (text === "echo") return { block: JSON.stringify({ ...ctx, config }) };
    const rewrite = /rewrite=(.*)$/s.exec(text);
    if (rewrite) return { rewrite: rewrite[1] };
    const block = /block=(.*)$/s.exec(text);
    if (block) return { block: block[1] };
    const answer: RouteAnswer = {};
    for (const [, k, v] of text.matchAll(/(\w+)=(\S+)/g)) {
      if (k === "role") answer.role = v as "primary" | "replica";
      if (k === "shard") answer.shard = v === "all" ? "all" : Number(v);
    }
    return answer;
  },
  shard(key, ctx) {
    const n = BigInt(key);
    return Number(((n % BigInt(ctx.shards)) + BigInt(ctx.shards)) % BigInt(ctx.shards));
  },
});
