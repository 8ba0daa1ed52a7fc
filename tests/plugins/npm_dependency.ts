/**
 * A plugin with an npm dependency, named in the import map of the deno.json it runs under (here
 * pgdog's): a statement `select '<toml>'` is blocked with the table the package parsed from it.
 */

import { parse } from "smol-toml";
import { definePlugin } from "@pgdog/pgdog/plugin";

export default definePlugin({
  apiVersion: "1.0.0",
  parseTree: false,
  route(ctx) {
    const toml = /^select '(.*)'$/.exec(ctx.query)?.[1];
    return toml === undefined ? null : { block: `toml: ${JSON.stringify(parse(toml))}` };
  },
});
