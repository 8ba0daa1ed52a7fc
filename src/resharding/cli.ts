/**
 * The resharding commands of the command line (PgDog's): `schema-sync` (the pre phase, or post
 * with `--data-sync-complete`, or cutover with `--cutover`) and `data-sync` (copy, then stream
 * changes until Ctrl-C; `--sync-only` stops after the copy, `--replicate-only` only streams), run
 * in the foreground against the databases of pgdog.toml, with a progress bar per table.
 *
 * @module
 */

import type { Config } from "../config/types.ts";
import { errorMessage, log } from "../log.ts";
import { startPlugins } from "../plugin/mod.ts";
import { DataSync, dataSyncSettings, type TableCopyState } from "./data_sync.ts";
import { ProgressView } from "./progress.ts";
import { schemaSync } from "./schema_sync.ts";
import { databasesOf, randomSuffix, type ReshardingHost } from "./tasks.ts";
import { ReshardingError } from "./shards.ts";

/** Options of the two commands. */
export interface ReshardingCliOptions {
  from: string;
  to: string;
  publication: string;
  /** schema-sync */
  dryRun?: boolean;
  ignoreErrors?: boolean;
  dataSyncComplete?: boolean;
  cutover?: boolean;
  /** data-sync */
  replicateOnly?: boolean;
  syncOnly?: boolean;
  slot?: string;
  skipSchemaSync?: boolean;
}

/** Runs `schema-sync` or `data-sync`; resolves with the exit code. */
export async function reshardingCli(
  command: "schema-sync" | "data-sync",
  options: { config: Config; args: ReshardingCliOptions },
): Promise<number> {
  const { config, args } = options;
  if (!args.from || !args.to || !args.publication) {
    console.error(`pgdog ${command}: --from-database, --to-database and --publication are needed`);
    return 2;
  }
  const plugins = config.plugins.length > 0 ? await startPlugins(config) : null;
  const host: ReshardingHost = {
    config: () => config,
    plugins: () => plugins,
    serverTls: () => undefined,
    maintenance: () => Promise.reject(new ReshardingError("the command line cannot cut over")),
    activeServers: () => 0,
    swapConfig: () => Promise.reject(new ReshardingError("the command line cannot cut over")),
  };
  try {
    const dbs = databasesOf(host, { source: args.from, destination: args.to });
    const sync = async (phase: "pre" | "post" | "cutover"): Promise<void> => {
      const rows = await schemaSync({
        source: dbs.source,
        destination: dbs.destination,
        publication: args.publication,
        phase,
        shared: dbs.shared,
        dryRun: args.dryRun,
        ignoreErrors: args.ignoreErrors,
        onStatement: (row) => {
          const where = row.shard === null ? "" : ` shard ${row.shard}`;
          console.log(`${row.sync_state}${where}: ${row.sql.split("\n")[0]}`);
        },
      });
      console.log(`schema sync (${phase}): ${rows.length} statements`);
    };
    if (command === "schema-sync") {
      await sync(args.cutover ? "cutover" : args.dataSyncComplete ? "post" : "pre");
      return 0;
    }
    if (!args.skipSchemaSync && !args.replicateOnly) await sync("pre");
    const abort = new AbortController();
    const stop = (): void => abort.abort();
    Deno.addSignalListener("SIGINT", stop);
    Deno.addSignalListener("SIGTERM", stop);
    const g = config.general;
    const slot = args.slot ?? `__pgdog_repl_${randomSuffix()}`;
    const data = new DataSync({
      source: dbs.source,
      destination: dbs.destination,
      publication: args.publication,
      slot,
      replicateOnly: args.replicateOnly === true,
      shared: dbs.shared,
      plugins,
      ...dataSyncSettings(g),
      signal: abort.signal,
      status: (text) => log.info(`data-sync: ${text}`),
    });
    const view = new ProgressView({ timer: false });
    const shown = new Map<TableCopyState, string>();
    const timer = setInterval(() => showCopies(view, { tables: data.tables, shown }), 250);
    const running = data.run();
    running.catch(() => {});
    try {
      await Promise.race([data.copied, running]);
      showCopies(view, { tables: data.tables, shown });
      view.close();
      console.log(
        `data-sync: copy done; replication slot ${slot} (resume with --replicate-only ` +
          `--replication-slot ${slot})`,
      );
      if (args.syncOnly) {
        abort.abort();
        data.stop();
        await running.catch(() => {});
        await data.dropSlots();
        return 0;
      }
      console.log("data-sync: streaming changes; Ctrl-C stops (the slot stays for a later run)");
      await running;
      return 0;
    } finally {
      clearInterval(timer);
      Deno.removeSignalListener("SIGINT", stop);
      Deno.removeSignalListener("SIGTERM", stop);
    }
  } catch (e) {
    console.error(`pgdog ${command}: ${errorMessage(e)}`);
    return 1;
  } finally {
    plugins?.close();
  }
}

/** Brings the progress view up to date with the table copies. */
function showCopies(
  view: ProgressView,
  options: { tables: readonly TableCopyState[]; shown: Map<TableCopyState, string> },
): void {
  for (const t of options.tables) {
    let name = options.shown.get(t);
    if (name === undefined) {
      if (t.status === "waiting") continue;
      name = `${t.schema}.${t.table} (shard ${t.sourceShard})`;
      options.shown.set(t, name);
      view.add(name);
    }
    if (t.status === "copying") view.update(name, { rows: t.rows, bytes: t.bytes });
    else if (t.status === "done" && !t.shownDone) {
      view.done(name, { rows: t.rows, bytes: t.bytes });
      t.shownDone = true;
    } else if (t.status === "failed" && !t.shownDone) {
      view.fail(name, t.error ?? "failed");
      t.shownDone = true;
    }
  }
  view.draw();
}
