/**
 * CUTOVER: moves traffic from the source to the destination of a replicating task. Waits until
 * the lag is under `cutover_traffic_stop_threshold`, stops traffic (MAINTENANCE ON: new
 * transactions wait in pgdog, running ones finish), waits until every change committed on the
 * source is applied, moves sequences, swaps the two databases' names in the running
 * configuration (and in the files with `cutover_save_config`), and lets traffic go on to the
 * new shards (MAINTENANCE OFF). Replication then runs the other way (a REPLICATE task), so a
 * CUTOVER of that task moves traffic back. Growing in place, the rows that moved are deleted
 * from their old shards instead (the old layout cannot be restored by replaying).
 *
 * @module
 */

import { errorMessage, log } from "../log.ts";
import { formatLsn, type Lsn } from "./changes.ts";
import { PgConn } from "./pg_conn.ts";
import { RowPlacer, tablePlacement } from "./placement.ts";
import { createSlot } from "./replication.ts";
import { schemaSync } from "./schema_sync.ts";
import {
  type ReshardingDatabase,
  reshardingDatabase,
  ReshardingError,
  sharedShards,
} from "./shards.ts";
import { deleteRowsByKey, publicationTables, quoteIdent } from "./table_copy.ts";
import { randomSuffix, type ReshardingHost, type Task } from "./tasks.ts";

/**
 * Cuts over the replicating `task` (its data sync running as `running`). Throws (traffic back
 * on the source, replication still running) when it cannot.
 */
export async function cutover(
  host: ReshardingHost,
  options: {
    task: Task;
    running: Promise<void>;
    status?: (text: string) => void;
    /** Starts replicating back from slots `<slot>_<shard>` (after the swap). */
    replicateBack: (slot: string) => void;
  },
): Promise<void> {
  const { task } = options;
  const data = task.data;
  if (data === null) throw new ReshardingError(`task ${task.id} does not replicate`);
  const status = (text: string): void => {
    task.setStatus(text);
    options.status?.(text);
  };
  let failed: unknown = null;
  options.running.catch((e) => failed = e);
  const check = (): void => {
    if (failed !== null) throw failed;
    if (data.failure) throw data.failure;
    task.abort.signal.throwIfAborted();
  };
  const g = () => host.config().general;

  status("cutover: waiting for the copy");
  await Promise.race([data.copied, options.running]);
  check();
  status("cutover: waiting for the lag to fall under cutover_traffic_stop_threshold");
  for (;;) {
    await data.refreshPositions();
    data.poke();
    await sleep(200);
    check();
    if (data.lag() <= g().cutover_traffic_stop_threshold) break;
    await sleep(800);
  }

  status("cutover: traffic stopped (MAINTENANCE ON), waiting for transactions to finish");
  await host.maintenance(true);
  let resumed = false;
  const resume = async (): Promise<void> => {
    if (resumed) return;
    resumed = true;
    await host.maintenance(false);
  };
  try {
    const deadline = Date.now() + g().cutover_timeout;
    while (host.activeServers(task.source) > 0 && Date.now() < deadline) await sleep(20);
    await data.refreshPositions();
    const targets = new Map<number, Lsn>(data.slots.map((s) => [s.sourceShard, s.current]));
    status("cutover: waiting for the last changes");
    for (;;) {
      check();
      data.poke();
      if (data.caughtUp(targets)) break;
      const lag = Math.max(
        0,
        ...data.slots.map((s) => {
          const done = s.applied > s.idleUpTo ? s.applied : s.idleUpTo;
          const t = targets.get(s.sourceShard) ?? 0n;
          return t > done ? Number(t - done) : 0;
        }),
      );
      const threshold = g().cutover_replication_lag_threshold;
      if (threshold > 0 && lag <= threshold) break;
      if (Date.now() >= deadline) {
        if (g().cutover_timeout_action === "cutover") {
          log.warn(`cutover: timed out with ${lag} bytes of lag; cutting over anyway`);
          break;
        }
        throw new ReshardingError(
          `cutover aborted after cutover_timeout (${g().cutover_timeout} ms): ${lag} bytes of ` +
            "changes not yet applied; traffic is back on the source and replication goes on",
        );
      }
      await sleep(50);
    }

    log.info(
      `cutover: caught up: ${
        data.slots.map((sl) =>
          `shard ${sl.sourceShard} target ${formatLsn(targets.get(sl.sourceShard) ?? 0n)} ` +
          `applied ${formatLsn(sl.applied)} confirmed ${formatLsn(sl.idleUpTo)}`
        ).join("; ")
      }`,
    );
    status("cutover: stopping replication");
    task.abort.abort();
    data.stop();
    await options.running.catch(() => {});
    const config = host.config();
    const tls = host.serverTls();
    const source = reshardingDatabase(config, task.source, { tls });
    const destination = reshardingDatabase(config, task.destination, { tls });
    const shared = sharedShards(source, destination);
    const inPlace = shared.some((s) => s >= 0);

    status("cutover: schema (sequences)");
    await schemaSync({
      source,
      destination,
      publication: task.publication,
      phase: "cutover",
      shared,
      onStatement: (row) => task.schema.push(row),
    });

    let reverseSlot: string | null = null;
    if (!inPlace) {
      status("cutover: reverse replication slots");
      reverseSlot = `__pgdog_repl_${randomSuffix()}`;
      await reverseSlots(destination, { publication: task.publication, slot: reverseSlot });
    }

    status("cutover: swapping the configuration");
    await host.swapConfig({ a: task.source, b: task.destination, save: g().cutover_save_config });

    if (inPlace) {
      status("cutover: deleting moved rows from their old shards");
      await deleteMovedRows(host, { destination, shared, publication: task.publication });
    }
    await data.dropSlots();
    // After the swap the source's name is the new shards: replicate them back to the old ones.
    if (reverseSlot !== null) options.replicateBack(reverseSlot);
    await resume();
    status("cutover: done");
    log.info(
      `cutover: "${task.source}" now runs on the shards that were "${task.destination}"` +
        (inPlace ? " (grown in place)" : "; replication runs back to the old ones"),
    );
  } finally {
    await resume().catch((e) => log.error(`cutover: MAINTENANCE OFF failed: ${errorMessage(e)}`));
  }
}

/** Slots (with the publication, if missing) on each of `db`'s shards, for replicating back. */
async function reverseSlots(
  db: ReshardingDatabase,
  options: { publication: string; slot: string },
): Promise<void> {
  for (const s of db.shards) {
    const conn = await PgConn.connect(s.primary);
    try {
      const r = await conn.execute("SELECT 1 FROM pg_publication WHERE pubname = $1", [
        options.publication,
      ]);
      if (r.rows.length === 0) {
        await conn.query(`CREATE PUBLICATION ${quoteIdent(options.publication)} FOR ALL TABLES`);
      }
    } finally {
      conn.close();
    }
    const created = await createSlot(s.primary, { name: `${options.slot}_${s.shard}` });
    created.conn.close();
  }
}

/**
 * Growing in place: deletes, from each shard that was also a source shard, the rows of sharded
 * tables that now belong to another shard (they were copied there), in batches.
 */
async function deleteMovedRows(
  host: ReshardingHost,
  options: { destination: ReshardingDatabase; shared: number[]; publication: string },
): Promise<void> {
  const { destination, shared } = options;
  const placer = new RowPlacer(destination, { plugins: host.plugins() });
  for (let d = 0; d < destination.shards.length; d++) {
    if (shared[d] < 0) continue;
    const login = destination.shards[d].primary;
    const tables = await publicationTables(login, options.publication);
    const conn = await PgConn.connect(login);
    try {
      for (const t of tables) {
        const placement = tablePlacement(destination, {
          table: t,
          columns: t.columns.map((c) => c.name),
        });
        if (placement.kind !== "sharded") continue;
        // A NULL key has no shard to move to: its row stays where it is (it was not copied).
        await deleteRowsByKey(conn, {
          table: t,
          placement,
          placer,
          drop: (shard, nullKey) => !nullKey && shard !== d,
        });
      }
    } finally {
      conn.close();
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
