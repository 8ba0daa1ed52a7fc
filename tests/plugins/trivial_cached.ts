/**
 * The trivial plugin, declaring that its answer may be kept per statement shape
 * (`cacheRoute: "shape"`): the cost of a plugin whose calls pgdog can skip, for prepared
 * statements and for simple queries whose constants change (deno task bench's
 * pgdog-plugin-cached).
 */

import { definePlugin } from "@pgdog/pgdog/plugin";
import trivial from "./trivial.ts";

export default definePlugin({ ...trivial, apiVersion: "1.2.0", cacheRoute: "shape" });
