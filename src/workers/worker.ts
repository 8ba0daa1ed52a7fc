/**
 * The entry point of workers 1..N-1 (`[general] workers`): runs a proxy with this worker's
 * share of the pools on the main thread's port, and follows the main thread's messages.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { Proxy } from "../proxy.ts";
import { applyLogLevelFromEnv, errorMessage, log } from "../log.ts";
import { fromReloadError, type FromWorker, reloadError, type ToWorker } from "./mod.ts";

let proxy: Proxy | null = null;
let nextId = 1;
const pending = new Map<number, PromiseWithResolvers<void>>();

function post(msg: FromWorker): void {
  self.postMessage(msg);
}

async function start(msg: Extract<ToWorker, { type: "start" }>): Promise<void> {
  applyLogLevelFromEnv();
  try {
    const p = new Proxy(msg.config, {
      worker: { index: msg.index, count: msg.count },
      port: msg.port,
    });
    await p.start();
    proxy = p;
  } catch (e) {
    post({ type: "failed", message: errorMessage(e) });
    return;
  }
  let shutdownAsked = false;
  proxy.group = {
    // The main thread reads the files and sends them to every worker, this one included.
    reload: (options) => {
      const id = nextId++;
      const answer = Promise.withResolvers<void>();
      pending.set(id, answer);
      post({ type: "reload", id, swap: options?.swap });
      return answer.promise;
    },
    shutdown: () => {
      if (shutdownAsked) return;
      shutdownAsked = true;
      post({ type: "shutdown" });
    },
    cancel: (pid, secret) => post({ type: "cancel", pid, secret }),
    tablesChanged: (database) => post({ type: "tables-changed", database }),
    admin: (sql) => {
      const id = nextId++;
      const answer = Promise.withResolvers<void>();
      pending.set(id, answer);
      post({ type: "admin", id, sql });
      return answer.promise;
    },
  };
  proxy.finished.then(() => post({ type: "stopped" }));
  post({ type: "started" });
}

self.onmessage = (e: MessageEvent<ToWorker>) => {
  const msg = e.data;
  switch (msg.type) {
    case "start":
      start(msg);
      break;
    case "reload":
      if (proxy === null) break;
      proxy.apply(msg.config).then(
        () => post({ type: "reloaded", id: msg.id }),
        (err) => {
          log.error(`reload failed: ${errorMessage(err)}`);
          post({ type: "reloaded", id: msg.id, error: reloadError(err) });
        },
      );
      break;
    case "reload-result": {
      const answer = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error === undefined) answer?.resolve();
      else answer?.reject(fromReloadError(msg.error));
      break;
    }
    case "shutdown":
      proxy?.shutdown();
      break;
    case "cancel":
      proxy?.cancelHere(msg.pid, msg.secret);
      break;
    case "admin":
      // The command's state change is made within this call; then the main thread hears of it.
      proxy?.runRelayed(msg.sql);
      post({ type: "admin-started", id: msg.id });
      break;
    case "tables-changed":
      proxy?.forgetColumns(msg.database);
      break;
    case "admin-relayed":
      pending.get(msg.id)?.resolve();
      pending.delete(msg.id);
      break;
  }
};
