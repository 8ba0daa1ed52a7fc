/**
 * The trivial plugin, declaring that its answer may be kept per statement text (`cacheRoute`):
 * the cost of a plugin whose calls pgdog can skip (deno task bench's pgdog-plugin-cached).
 */

import { definePlugin } from "@pgdog/pgdog/plugin";
import trivial from "./trivial.ts";

export default definePlugin({ ...trivial, apiVersion: "1.1.0", cacheRoute: true });
