/**
 * The plugin's side of the sandbox, shared by the process runner and the Worker: imports the
 * plugin module, checks what it exports, and answers calls to its hooks.
 *
 * @module
 */

import { API_VERSION, incompatibility, type Plugin } from "./api.ts";

/** The hooks a sandbox can be asked to call. */
export type HookName = "init" | "route" | "shard" | "shutdown";

/** What the sandbox reports once the module is loaded. */
export interface Hello {
  apiVersion: string;
  hooks: HookName[];
  /** `route` reads `ctx.statement`. */
  parseTree: boolean;
  /** `route`'s answers may be kept per statement text or shape (see `Plugin.cacheRoute`). */
  cacheRoute: RouteCaching;
  /** `shard`'s answers may be kept per key and shard context. */
  cacheShard: boolean;
}

/** What a kept `route` answer is filed under: no keeping, the text, or the text's shape. */
export type RouteCaching = false | "text" | "shape";

const HOOKS: HookName[] = ["init", "route", "shard", "shutdown"];

/**
 * Imports the plugin at `specifier` and checks its API version; throws with the reason. Then
 * gives up the import grants of `loadOnly` (hosts), which were for loading it.
 */
export async function loadGuest(
  specifier: string,
  options: { loadOnly?: readonly string[] } = {},
): Promise<{ plugin: Plugin; hello: Hello }> {
  const module = await import(specifier);
  for (const host of options.loadOnly ?? []) {
    Deno.permissions.revokeSync({ name: "import", host });
  }
  const exported = module.default !== null && typeof module.default === "object"
    ? module.default
    : module;
  const apiVersion = exported.apiVersion ?? module.apiVersion;
  const why = incompatibility(apiVersion, API_VERSION);
  if (why !== null) throw new Error(why);
  const hooks = HOOKS.filter((h) => typeof exported[h] === "function");
  const plugin = { ...exported, apiVersion } as Plugin;
  for (const h of hooks) {
    (plugin as unknown as Record<string, unknown>)[h] = exported[h].bind(exported);
  }
  const parseTree = (exported.parseTree ?? module.parseTree) !== false;
  const declared = exported.cacheRoute ?? module.cacheRoute;
  const cacheRoute: RouteCaching = declared === true
    ? "text"
    : declared === "shape"
    ? "shape"
    : false;
  const cacheShard = (exported.cacheShard ?? module.cacheShard) === true;
  return {
    plugin,
    hello: { apiVersion: String(apiVersion), hooks, parseTree, cacheRoute, cacheShard },
  };
}

/**
 * Calls one hook with its arguments: its answer (undefined becomes null), or a promise of it when
 * the hook is async. A synchronous answer skips the promise hops (the sandboxes answer it at once).
 */
export function invokeHook(plugin: Plugin, op: string, args: unknown[]): unknown {
  const hook = (plugin as unknown as Record<string, unknown>)[op];
  if (!HOOKS.includes(op as HookName)) throw new Error(`unknown hook ${op}`);
  if (typeof hook !== "function") return null;
  const answer = hook(...args);
  if (answer instanceof Promise) return answer.then((a) => a === undefined ? null : a);
  return answer === undefined ? null : answer;
}

/** Calls one hook with its arguments and returns its answer (undefined becomes null). */
export async function callHook(plugin: Plugin, op: string, args: unknown[]): Promise<unknown> {
  return await invokeHook(plugin, op, args);
}

/** An error as one line of text for the host's log. */
export function describeError(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}
