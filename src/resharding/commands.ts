/**
 * The resharding commands (PgDog's): SCHEMA_SYNC, COPY_DATA, REPLICATE, RESHARD (all of it,
 * ending in a cutover) and CUTOVER, each started as a task (tasks.ts), shared by the admin
 * database and the CLI.
 *
 * @module
 */

import { DataSync, dataSyncSettings } from "./data_sync.ts";
import { schemaSync } from "./schema_sync.ts";
import { cutover } from "./cutover.ts";
import {
  databasesOf,
  randomSuffix,
  type ReshardingHost,
  reshardingTasks,
  type Task,
} from "./tasks.ts";

/** SCHEMA_SYNC <phase> src dst pub. */
export function startSchemaSync(
  host: ReshardingHost,
  options: {
    phase: "pre" | "post" | "cutover";
    source: string;
    destination: string;
    publication: string;
  },
): Task {
  const dbs = databasesOf(host, options);
  return reshardingTasks.start({ type: "schema_sync", ...options }, async (task) => {
    task.setStatus(`schema sync (${options.phase})`);
    await schemaSync({
      source: dbs.source,
      destination: dbs.destination,
      publication: options.publication,
      phase: options.phase,
      shared: dbs.shared,
      onStatement: (row) => task.schema.push(row),
    });
  });
}

/** COPY_DATA (copy, then replicate) or REPLICATE (replicate only) src dst pub [slot]. */
export function startDataSync(
  host: ReshardingHost,
  options: {
    source: string;
    destination: string;
    publication: string;
    slot?: string;
    replicateOnly: boolean;
    /** RESHARD: the task already exists. */
    task?: Task;
  },
): Task {
  const dbs = databasesOf(host, options);
  const run = (task: Task): Promise<void> => {
    const g = host.config().general;
    task.slot = options.slot ?? `__pgdog_repl_${randomSuffix()}`;
    task.data = new DataSync({
      source: dbs.source,
      destination: dbs.destination,
      publication: options.publication,
      slot: task.slot,
      replicateOnly: options.replicateOnly,
      shared: dbs.shared,
      plugins: host.plugins(),
      ...dataSyncSettings(g),
      signal: task.abort.signal,
      status: (text) => task.setStatus(text),
    });
    return task.data.run();
  };
  if (options.task) {
    void run(options.task);
    return options.task;
  }
  return reshardingTasks.start(
    { type: options.replicateOnly ? "replicate" : "copy_data", ...options },
    run,
  );
}

/**
 * RESHARD src dst pub: schema (pre), copy and replication, schema (post), then the cutover once
 * the copy is done and the lag is small; replication then runs the other way (a new task).
 */
export function startReshard(
  host: ReshardingHost,
  options: { source: string; destination: string; publication: string },
): Task {
  const dbs = databasesOf(host, options);
  return reshardingTasks.start({ type: "reshard", ...options }, async (task) => {
    task.setStatus("schema sync (pre)");
    await schemaSync({
      source: dbs.source,
      destination: dbs.destination,
      publication: options.publication,
      phase: "pre",
      shared: dbs.shared,
      onStatement: (row) => task.schema.push(row),
    });
    const g = host.config().general;
    task.slot = `__pgdog_repl_${randomSuffix()}`;
    const data = new DataSync({
      source: dbs.source,
      destination: dbs.destination,
      publication: options.publication,
      slot: task.slot,
      replicateOnly: false,
      shared: dbs.shared,
      plugins: host.plugins(),
      ...dataSyncSettings(g),
      signal: task.abort.signal,
      status: (text) => task.setStatus(text),
    });
    task.data = data;
    const running = data.run();
    running.catch(() => {});
    await Promise.race([data.copied, running]);
    task.setStatus("schema sync (post)");
    await schemaSync({
      source: dbs.source,
      destination: dbs.destination,
      publication: options.publication,
      phase: "post",
      shared: dbs.shared,
      onStatement: (row) => task.schema.push(row),
    });
    await cutover(host, { task, running, replicateBack: replicateBack(host, task) });
  });
}

/** CUTOVER [task]: runs in the background as a task of its own. */
export function startCutover(host: ReshardingHost, options: { id?: number }): Task {
  const replicating = reshardingTasks.replicating(options.id);
  return reshardingTasks.start({
    type: "cutover",
    source: replicating.source,
    destination: replicating.destination,
    publication: replicating.publication,
  }, async (task) => {
    const running = replicating.done;
    await cutover(host, {
      task: replicating,
      running,
      status: (t) => task.setStatus(t),
      replicateBack: replicateBack(host, replicating),
    });
  });
}

/** After a cutover of `task`: REPLICATE from its source's name (the new shards) back. */
function replicateBack(host: ReshardingHost, task: Task): (slot: string) => void {
  return (slot) => {
    startDataSync(host, {
      source: task.source,
      destination: task.destination,
      publication: task.publication,
      slot,
      replicateOnly: true,
    });
  };
}
