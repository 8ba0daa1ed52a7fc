/**
 * The admin database's resharding commands (PgDog's names and columns): RESHARD, SCHEMA_SYNC,
 * COPY_DATA, REPLICATE, CUTOVER, STOP_TASK, and SHOW TASKS, TABLE_COPIES, REPLICATION_SLOTS,
 * SCHEMA_SYNC. The work runs as background tasks (src/resharding/); these answer at once.
 *
 * @module
 */

import { SqlState } from "../protocol/sqlstate.ts";
import { errorMessage } from "../log.ts";
import {
  startCutover,
  startDataSync,
  startReshard,
  startSchemaSync,
} from "../resharding/commands.ts";
import { slotLagBytes } from "../resharding/data_sync.ts";
import { formatLsn } from "../resharding/changes.ts";
import { formatBytes, formatCount, formatDuration } from "../resharding/progress.ts";
import { ReshardingError } from "../resharding/shards.ts";
import { type ReshardingHost, reshardingTasks, type Task } from "../resharding/tasks.ts";

/** A command's answer (the shape of admin/mod.ts's AdminAnswer). */
type Answer =
  | {
    columns: string[];
    rows: (string | number | boolean | null)[][];
    tag: string;
    types?: number[];
  }
  | { error: { severity: string; code: string; message: string; hint?: string } };

/** The commands, for the admin database's list. */
export const RESHARDING_COMMANDS: string[] = [
  "RESHARD <source> <destination> <publication>",
  "SCHEMA_SYNC pre|post|cutover <source> <destination> <publication>",
  "COPY_DATA <source> <destination> <publication> [slot]",
  "REPLICATE <source> <destination> <publication> [slot]",
  "CUTOVER [task]",
  "STOP_TASK <task>",
  "SHOW TASKS",
  "SHOW TABLE_COPIES",
  "SHOW REPLICATION_SLOTS",
  "SHOW SCHEMA_SYNC",
];

const FIRST_WORDS = new Set([
  "reshard",
  "schema_sync",
  "copy_data",
  "replicate",
  "cutover",
  "stop_task",
]);
const SHOWS = new Set(["tasks", "table_copies", "replication_slots", "schema_sync"]);

/** Whether `words` (lower case) is a resharding command. */
export function isReshardingCommand(words: string[]): boolean {
  return FIRST_WORDS.has(words[0]) || (words[0] === "show" && SHOWS.has(words[1] ?? ""));
}

/** Runs a resharding command (`args`: the words as typed, case kept). */
export async function reshardingCommand(
  args: string[],
  host: ReshardingHost | undefined,
): Promise<Answer> {
  const word = args[0].toLowerCase();
  if (word === "show") return await show(args[1].toLowerCase());
  if (!host) return refuse("resharding is not available in this process");
  try {
    switch (word) {
      case "reshard": {
        const [source, destination, publication] = need(
          args,
          3,
          "RESHARD <source> <destination> <publication>",
        );
        const task = startReshard(host, { source, destination, publication });
        return taskAnswer(task, "RESHARD");
      }
      case "schema_sync": {
        const [phase, source, destination, publication] = need(
          args,
          4,
          "SCHEMA_SYNC pre|post|cutover <source> <destination> <publication>",
        );
        const p = phase.toLowerCase();
        if (p !== "pre" && p !== "post" && p !== "cutover") {
          throw new ReshardingError(`SCHEMA_SYNC phase is pre, post or cutover, not "${phase}"`);
        }
        const task = startSchemaSync(host, { phase: p, source, destination, publication });
        return taskAnswer(task, "SCHEMA_SYNC");
      }
      case "copy_data":
      case "replicate": {
        const usage = `${word.toUpperCase()} <source> <destination> <publication> [slot]`;
        const [source, destination, publication] = need(args, 3, usage, 4);
        const task = startDataSync(host, {
          source,
          destination,
          publication,
          slot: args[4],
          replicateOnly: word === "replicate",
        });
        return {
          columns: ["task_id", "replication_slot"],
          rows: [[task.id, task.slot]],
          tag: word.toUpperCase(),
          types: [20, 25],
        };
      }
      case "cutover": {
        if (args.length > 2) throw new ReshardingError("usage: CUTOVER [task]");
        const task = startCutover(host, {
          id: args[1] === undefined ? undefined : taskId(args[1]),
        });
        return taskAnswer(task, "CUTOVER");
      }
      case "stop_task": {
        const [id] = need(args, 1, "STOP_TASK <task>");
        const task = await reshardingTasks.stop(taskId(id));
        return taskAnswer(task, "STOP_TASK");
      }
    }
  } catch (e) {
    if (e instanceof ReshardingError) return refuse(e.message);
    return {
      error: { severity: "ERROR", code: SqlState.SystemError, message: errorMessage(e) },
    };
  }
  return refuse(`unknown resharding command ${args[0]}`);
}

function need(args: string[], n: number, usage: string, max = n): string[] {
  if (args.length - 1 < n || args.length - 1 > max) throw new ReshardingError(`usage: ${usage}`);
  return args.slice(1, 1 + n);
}

function taskId(text: string): number {
  const id = Number(text);
  if (!Number.isInteger(id) || id <= 0) throw new ReshardingError(`not a task id: ${text}`);
  return id;
}

function refuse(message: string): Answer {
  return { error: { severity: "ERROR", code: SqlState.ObjectNotInPrerequisiteState, message } };
}

function taskAnswer(task: Task, tag: string): Answer {
  return { columns: ["task_id"], rows: [[task.id]], tag, types: [20] };
}

async function show(what: string): Promise<Answer> {
  const tasks = reshardingTasks.list();
  const now = Date.now();
  switch (what) {
    case "tasks":
      return {
        columns: [
          "id",
          "scope",
          "type",
          "status",
          "inner_status",
          "started_at",
          "updated_at",
          "elapsed",
          "elapsed_ms",
        ],
        types: [20, 25, 25, 25, 25, 25, 25, 25, 20],
        rows: tasks.map((t) => {
          const end = t.status === "running" ? now : t.updatedAt;
          return [
            t.id,
            t.scope,
            t.type,
            t.status,
            t.innerStatus,
            iso(t.startedAt),
            iso(t.updatedAt),
            formatDuration(end - t.startedAt),
            end - t.startedAt,
          ];
        }),
        tag: "SHOW",
      };
    case "table_copies": {
      const rows = [];
      for (const t of tasks) {
        for (const c of t.data?.tables ?? []) {
          const end = c.endedAt || now;
          const ms = c.startedAt ? end - c.startedAt : 0;
          const rate = ms > 0 ? Math.round(c.bytes / (ms / 1000)) : 0;
          rows.push([
            c.schema,
            c.table,
            c.status,
            c.rows,
            formatCount(c.rows),
            c.bytes,
            formatBytes(c.bytes),
            rate,
            `${formatBytes(rate)}/s`,
            formatDuration(ms),
            ms,
            c.sql,
          ]);
        }
      }
      return {
        columns: [
          "schema",
          "table",
          "status",
          "rows",
          "rows_human",
          "bytes",
          "bytes_human",
          "bytes_per_sec",
          "bytes_per_sec_human",
          "elapsed",
          "elapsed_ms",
          "sql",
        ],
        types: [25, 25, 25, 20, 25, 20, 25, 20, 25, 25, 20, 25],
        rows,
        tag: "SHOW",
      };
    }
    case "replication_slots": {
      const live = tasks.filter((t) => t.status === "running" && t.data !== null);
      await Promise.all(live.map((t) => t.data!.refreshPositions().catch(() => {})));
      const rows = [];
      for (const t of live) {
        for (const s of t.data!.slots) {
          const last = s.lastTransactionAt ? now - s.lastTransactionAt : null;
          const lag = slotLagBytes(s);
          rows.push([
            s.host,
            s.port,
            s.database,
            s.name,
            formatLsn(s.applied),
            formatBytes(Number(lag)),
            Number(lag),
            s.copying,
            last === null ? null : formatDuration(last),
            last,
          ]);
        }
      }
      return {
        columns: [
          "host",
          "port",
          "database_name",
          "name",
          "lsn",
          "lag",
          "lag_bytes",
          "copy_data",
          "last_transaction",
          "last_transaction_ms",
        ],
        types: [25, 20, 25, 25, 25, 25, 20, 16, 25, 20],
        rows,
        tag: "SHOW",
      };
    }
    default: {
      const rows = [];
      for (const t of tasks) {
        for (const r of t.schema) {
          rows.push([
            r.database,
            r.user,
            r.shard,
            r.kind,
            r.sync_state,
            r.started_at === null ? null : r.started_at.toISOString(),
            formatDuration(r.elapsed_ms),
            r.elapsed_ms,
            r.table_schema,
            r.table_name,
            r.sql,
          ]);
        }
      }
      return {
        columns: [
          "database",
          "user",
          "shard",
          "kind",
          "sync_state",
          "started_at",
          "elapsed",
          "elapsed_ms",
          "table_schema",
          "table_name",
          "sql",
        ],
        types: [25, 25, 20, 25, 25, 25, 25, 20, 25, 25, 25],
        rows,
        tag: "SHOW",
      };
    }
  }
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
