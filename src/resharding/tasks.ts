/**
 * Resharding tasks: each command (SCHEMA_SYNC, COPY_DATA, REPLICATE, RESHARD, CUTOVER) runs as a
 * background task with an id that SHOW TASKS lists and STOP_TASK ends. This is their
 * bookkeeping and what they need from the running pgdog; commands.ts starts them.
 *
 * @module
 */

import type { Config } from "../config/types.ts";
import type { ServerTls } from "../backend/connect.ts";
import type { PluginSet } from "../plugin/mod.ts";
import { errorMessage, log } from "../log.ts";
import type { DataSync } from "./data_sync.ts";
import type { SchemaSyncRow } from "./schema_sync.ts";
import {
  type ReshardingDatabase,
  reshardingDatabase,
  ReshardingError,
  sharedShards,
} from "./shards.ts";

/** What resharding needs from the running pgdog. */
export interface ReshardingHost {
  /** The configuration in force now. */
  config(): Config;
  plugins(): PluginSet | null;
  /** TLS toward servers (`[general] tls_verify`). */
  serverTls(): ServerTls | undefined;
  /** MAINTENANCE ON/OFF on every worker. */
  maintenance(on: boolean): Promise<void>;
  /**
   * Server connections in use (running transactions) for `database` on this worker, and clients
   * that passed the gate and wait for one.
   */
  activeServers(database: string): number;
  /**
   * Makes `next` the running configuration on every worker (written to the files first when
   * `save`: both files, with backups).
   */
  swapConfig(options: { a: string; b: string; save: boolean }): Promise<void>;
}

/** Kinds of task. */
export type TaskType = "schema_sync" | "copy_data" | "replicate" | "reshard" | "cutover";

/** A task as SHOW TASKS lists it. */
export class Task {
  readonly id: number;
  readonly type: TaskType;
  /** `source -> destination`. */
  readonly scope: string;
  readonly source: string;
  readonly destination: string;
  readonly publication: string;
  status: "running" | "done" | "failed" | "stopped" = "running";
  innerStatus = "starting";
  readonly startedAt = Date.now();
  updatedAt = Date.now();
  error: string | null = null;
  readonly abort = new AbortController();
  /** STOP_TASK asked for the end (as opposed to a cutover ending the replication it ran). */
  stopRequested = false;
  /** COPY_DATA, REPLICATE and RESHARD: the data moving (SHOW TABLE_COPIES, REPLICATION_SLOTS). */
  data: DataSync | null = null;
  /** SCHEMA_SYNC and RESHARD: the statements run (SHOW SCHEMA_SYNC). */
  readonly schema: SchemaSyncRow[] = [];
  /** Slot name prefix of a task that replicates. */
  slot: string | null = null;
  /** Settles when the task ends. */
  done: Promise<void> = Promise.resolve();

  constructor(
    id: number,
    options: { type: TaskType; source: string; destination: string; publication: string },
  ) {
    this.id = id;
    this.type = options.type;
    this.source = options.source;
    this.destination = options.destination;
    this.publication = options.publication;
    this.scope = `${options.source} -> ${options.destination}`;
  }

  /** Records what it is doing now. */
  setStatus(text: string): void {
    this.innerStatus = text;
    this.updatedAt = Date.now();
  }
}

/** The tasks of this process (of this worker, with several). */
export class Tasks {
  readonly #tasks: Task[] = [];
  #nextId = 1;

  /** Every task, oldest first. */
  list(): readonly Task[] {
    return this.#tasks;
  }

  /** A task by id. */
  get(id: number): Task | undefined {
    return this.#tasks.find((t) => t.id === id);
  }

  /** A new task, running `work` in the background. */
  start(
    options: { type: TaskType; source: string; destination: string; publication: string },
    work: (task: Task) => Promise<void>,
  ): Task {
    const task = new Task(this.#nextId++, options);
    this.#tasks.push(task);
    task.done = (async () => {
      try {
        await work(task);
        if (task.status === "running") task.status = task.stopRequested ? "stopped" : "done";
      } catch (e) {
        if (task.stopRequested) task.status = "stopped";
        else {
          task.status = "failed";
          task.error = errorMessage(e);
          log.error(
            `resharding task ${task.id} (${task.type} ${task.scope}) failed: ${task.error}`,
          );
        }
      } finally {
        task.updatedAt = Date.now();
        if (task.status !== "failed") task.innerStatus = task.status;
        else task.innerStatus = `failed: ${task.error}`;
      }
    })();
    return task;
  }

  /** STOP_TASK: stops a task; a replicating task's slots are dropped. */
  async stop(id: number): Promise<Task> {
    const task = this.get(id);
    if (!task) throw new ReshardingError(`no task ${id} (SHOW TASKS lists them)`);
    task.stopRequested = true;
    task.abort.abort();
    task.data?.stop();
    await task.done;
    if (task.data) await task.data.dropSlots();
    if (task.status === "running") task.status = "stopped";
    return task;
  }

  /** The replicating task CUTOVER uses: `id`, else the only running one. */
  replicating(id?: number): Task {
    const running = this.#tasks.filter((t) =>
      t.status === "running" && t.data !== null &&
      (t.type === "copy_data" || t.type === "replicate")
    );
    if (id !== undefined) {
      const t = running.find((t) => t.id === id);
      if (!t) throw new ReshardingError(`task ${id} is not a running COPY_DATA or REPLICATE task`);
      return t;
    }
    if (running.length !== 1) {
      throw new ReshardingError(
        running.length === 0
          ? "no COPY_DATA or REPLICATE task is running: nothing to cut over"
          : `${running.length} tasks replicate: name one (CUTOVER <task id>)`,
      );
    }
    return running[0];
  }
}

/** The tasks of this process. */
export const reshardingTasks: Tasks = new Tasks();

/** The source and destination of a command, checked. */
export function databasesOf(
  host: ReshardingHost,
  options: { source: string; destination: string },
): { source: ReshardingDatabase; destination: ReshardingDatabase; shared: number[] } {
  if (options.source === options.destination) {
    throw new ReshardingError("the source and the destination are the same database");
  }
  const config = host.config();
  const tls = host.serverTls();
  const source = reshardingDatabase(config, options.source, { tls });
  const destination = reshardingDatabase(config, options.destination, { tls });
  const shared = sharedShards(source, destination);
  return { source, destination, shared };
}

/** A random suffix for slot names. */
export function randomSuffix(): string {
  const b = crypto.getRandomValues(new Uint8Array(4));
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}
