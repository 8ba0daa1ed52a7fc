/**
 * pgdog: a PostgreSQL connection pooler, load balancer and sharder for Deno.
 *
 * Run it as a program (`deno task start`, or `deno run ... mod.ts --help`), or start a proxy from
 * another Deno program:
 *
 * ```ts
 * import { startProxy } from "./mod.ts";
 *
 * const proxy = await startProxy({
 *   general: { port: 6432 },
 *   databases: [{ name: "app", host: "127.0.0.1" }],
 *   users: [{ name: "app", database: "app", password: "secret" }],
 * });
 * // ...
 * await proxy.shutdown();
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ConfigError, loadConfig, resolveConfig } from "./src/config/mod.ts";
import type { Config, PartialConfig } from "./src/config/types.ts";
import { Proxy } from "./src/proxy.ts";
import { applyLogLevelFromEnv, log } from "./src/log.ts";
import { VERSION } from "./src/version.ts";
import { loadParser } from "./src/router/mod.ts";
import { explainRoutes } from "./src/router/explain.ts";
import { smallPoolWarnings, WorkerGroup } from "./src/workers/mod.ts";
import { READ_DENIED, readAccessHint } from "./src/config/read_grants.ts";
import { LAUNCHED_ENV } from "./src/launch.ts";
import { reshardingCli } from "./src/resharding/cli.ts";

export type {
  AdminConfig,
  AuthType,
  Config,
  DatabaseConfig,
  DatabaseRole,
  GeneralConfig,
  OmniTableConfig,
  PartialConfig,
  PartialShardMapping,
  PoolerMode,
  ShardedSchemaConfig,
  ShardedTableConfig,
  ShardingDataType,
  ShardingHasher,
  ShardKeyValue,
  ShardMapping,
  ShardMappingDefault,
  ShardMappingList,
  ShardMappingRange,
  UserConfig,
} from "./src/config/types.ts";
export { ConfigError, loadConfig, resolveConfig } from "./src/config/mod.ts";
export { Proxy } from "./src/proxy.ts";
export { VERSION } from "./src/version.ts";
// The plugin API, for plugins that import their types from this package.
export * from "./src/plugin/api.ts";

/**
 * Validates `config` (filling in defaults exactly as for the TOML files), starts a proxy and
 * resolves once it listens. Throws {@linkcode ConfigError} for an invalid configuration.
 */
export async function startProxy(config: PartialConfig): Promise<Proxy> {
  const { config: resolved, warnings } = resolveConfig(config);
  for (const w of warnings) log.warn(w);
  return await start(resolved);
}

async function start(config: Config): Promise<Proxy> {
  const proxy = new Proxy(config);
  await proxy.start();
  return proxy;
}

/**
 * The program's proxy: with `[general] workers` > 1, this thread is worker 0 and the others are
 * started next to it; the "listening" line is logged once all of them accept connections.
 */
async function startWorkers(config: Config): Promise<{ proxy: Proxy; group: WorkerGroup | null }> {
  const count = config.general.workers;
  if (count <= 1) return { proxy: await start(config), group: null };
  for (const w of smallPoolWarnings(config)) log.warn(w);
  const proxy = new Proxy(config, { worker: { index: 0, count } });
  await proxy.start();
  let group: WorkerGroup;
  try {
    group = await WorkerGroup.start(proxy, { count });
  } catch (e) {
    await proxy.shutdown();
    throw e;
  }
  const addr = proxy.addr;
  log.always(`listening on ${addr.hostname}:${addr.port} (${count} workers)`);
  return { proxy, group };
}

const USAGE = `pgdog ${VERSION}: PostgreSQL pooler, load balancer and sharder

Usage:
  pgdog [run] [options]        start the proxy (the default)
  pgdog configcheck [options]  validate the configuration and exit (0 valid, 1 invalid)
  pgdog route [file] [options] print where each SQL statement of the file (or stdin) would
                               go, and why, without connecting to anything
  pgdog schema-sync --from-database A --to-database B --publication P [--data-sync-complete |
                    --cutover] [--dry-run] [--ignore-errors]
                               resharding: copy the schema of A to B's shards (pre phase; post
                               with --data-sync-complete; sequences with --cutover)
  pgdog data-sync --from-database A --to-database B --publication P [--sync-only |
                  --replicate-only] [--replication-slot S] [--skip-schema-sync]
                               resharding: copy A's rows onto B's shards, then stream changes
                               until Ctrl-C

Options:
  -c, --config <path>          pgdog.toml (default: pgdog.toml)
  -u, --users <path>           users.toml (default: users.toml)
  -d, --database_url <url>     postgres://user:password@host:port/database; repeatable;
                               replaces [[databases]] and adds that user
  -D, --database <name>        route: the database to route for (default: the first sharded
                               one, else the first)
  -h, --help                   show this help
  -V, --version                show the version
`;

/** A refused reload: the same messages as at startup; the running configuration stays. */
function logReloadFailure(e: unknown, args: string[]): void {
  if (e instanceof ConfigError) {
    for (const problem of e.problems) log.error(problem);
    log.error(
      `reload refused: configuration is invalid (${e.problems.length} problems); ` +
        "the running configuration stays",
    );
    if (e.problems.some((p) => READ_DENIED.test(p))) log.error(readAccessHint(args));
  } else {
    const why = e instanceof Error ? e.message : String(e);
    log.error(`reload failed: ${why}`);
    if (READ_DENIED.test(why)) log.error(readAccessHint(args));
  }
}

/**
 * Started by `deno task start` (src/launch.ts): its stdin stays open while the launcher runs.
 * Resolves when it closes (the launcher is gone), so that pgdog does not outlive it.
 */
async function launcherGone(): Promise<boolean> {
  let launched = false;
  try {
    launched = Deno.env.get(LAUNCHED_ENV) === "1";
  } catch {
    // No permission to read it: not started by the launcher.
  }
  if (!launched) return await new Promise<boolean>(() => {});
  try {
    for await (const _ of Deno.stdin.readable) {
      // Nothing is sent; only the end matters.
    }
  } catch {
    // Closed either way.
  }
  return true;
}

/** `pgdog route`: prints each statement's route; 1 when the database is unknown. */
async function routeCommand(
  config: Config,
  file: string | undefined,
  database: string | undefined,
): Promise<number> {
  const names = [...new Set(config.databases.map((d) => d.name))];
  const sharded = names.find((n) =>
    new Set(config.databases.filter((d) => d.name === n).map((d) => d.shard)).size > 1
  );
  const name = database ?? sharded ?? names[0];
  if (name === undefined || !names.includes(name)) {
    console.error(`pgdog route: no database "${name ?? ""}" in the configuration`);
    return 1;
  }
  const sql = file === undefined || file === "-"
    ? await new Response(Deno.stdin.readable).text()
    : await Deno.readTextFile(file);
  await loadParser();
  for (const r of explainRoutes(sql, { config, database: name })) {
    const where = r.role === null
      ? r.target
      : r.target === null
      ? r.role
      : `${r.target} (${r.role})`;
    console.log(`${where}: ${r.reason}\n  ${r.sql.replaceAll("\n", "\n  ")}`);
    if (r.merge) {
      console.log(`  ${r.merge.steps}\n  each shard runs: ${r.merge.shardSql}`);
    }
    for (const part of r.split ?? []) console.log(`  shard ${part.shard} runs: ${part.sql}`);
  }
  return 0;
}

/** Runs the command line; resolves with the exit code (the proxy's run never resolves). */
export async function main(args: string[]): Promise<number> {
  applyLogLevelFromEnv();
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        config: { type: "string", short: "c", default: "pgdog.toml" },
        users: { type: "string", short: "u", default: "users.toml" },
        database_url: { type: "string", short: "d", multiple: true },
        "database-url": { type: "string", multiple: true },
        database: { type: "string", short: "D" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
        "from-database": { type: "string" },
        "to-database": { type: "string" },
        publication: { type: "string" },
        "replication-slot": { type: "string" },
        "dry-run": { type: "boolean" },
        "ignore-errors": { type: "boolean" },
        "data-sync-complete": { type: "boolean" },
        cutover: { type: "boolean" },
        "replicate-only": { type: "boolean" },
        "sync-only": { type: "boolean" },
        "skip-schema-sync": { type: "boolean" },
      },
    });
  } catch (e) {
    console.error(`pgdog: ${e instanceof Error ? e.message : e}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.version) {
    console.log(`pgdog ${VERSION}`);
    return 0;
  }
  const command = positionals[0] ?? "run";
  const maxArgs = command === "route" ? 2 : 1;
  if (
    positionals.length > maxArgs ||
    (command !== "run" && command !== "configcheck" && command !== "route" &&
      command !== "schema-sync" && command !== "data-sync")
  ) {
    console.error(`pgdog: unknown command "${positionals.join(" ")}"\n\n${USAGE}`);
    return 2;
  }
  const databaseUrls = [...(values.database_url ?? []), ...(values["database-url"] ?? [])];
  let loaded;
  try {
    loaded = await loadConfig({ config: values.config!, users: values.users! }, { databaseUrls });
  } catch (e) {
    if (e instanceof ConfigError) {
      for (const problem of e.problems) console.error(problem);
      console.error(
        `pgdog: configuration is invalid (${e.problems.length} problem${
          e.problems.length === 1 ? "" : "s"
        })`,
      );
      if (e.problems.some((p) => READ_DENIED.test(p))) {
        console.error(`pgdog: ${readAccessHint(args)}`);
      }
      return 1;
    }
    throw e;
  }
  for (const w of loaded.warnings) log.warn(w);
  if (command === "configcheck") {
    console.log(`configuration is valid (${values.config}, ${values.users})`);
    return 0;
  }
  if (command === "route") {
    return await routeCommand(loaded.config, positionals[1], values.database);
  }
  if (command === "schema-sync" || command === "data-sync") {
    return await reshardingCli(command, {
      config: loaded.config,
      args: {
        from: values["from-database"] ?? "",
        to: values["to-database"] ?? "",
        publication: values.publication ?? "",
        dryRun: values["dry-run"],
        ignoreErrors: values["ignore-errors"],
        dataSyncComplete: values["data-sync-complete"],
        cutover: values.cutover,
        replicateOnly: values["replicate-only"],
        syncOnly: values["sync-only"],
        slot: values["replication-slot"],
        skipSchemaSync: values["skip-schema-sync"],
      },
    });
  }
  // SIGHUP is handled from before "listening on" is printed (its default action would end the
  // process); one that arrives while starting reloads once the proxy runs.
  let started: Proxy | null = null;
  let hupWhileStarting = false;
  const onHangup = (): void => {
    if (started === null) hupWhileStarting = true;
    else started.reload().catch((e) => logReloadFailure(e, args));
  };
  Deno.addSignalListener("SIGHUP", onHangup);
  let proxy: Proxy;
  let group: WorkerGroup | null;
  try {
    ({ proxy, group } = await startWorkers(loaded.config));
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    log.error(`cannot start: ${why}`);
    if (READ_DENIED.test(why)) log.error(readAccessHint(args));
    Deno.removeSignalListener("SIGHUP", onHangup);
    return 1;
  }
  proxy.reloader = async () => {
    const next = await loadConfig({ config: values.config!, users: values.users! }, {
      databaseUrls,
    });
    for (const w of next.warnings) log.warn(w);
    return next.config;
  };
  proxy.configFiles = { configPath: values.config!, usersPath: values.users! };
  started = proxy;
  if (hupWhileStarting) onHangup();
  let signals = 0;
  const onSignal = (): void => {
    if (++signals > 1) {
      log.warn("second signal: exiting now");
      Deno.exit(1);
    }
    proxy.shutdown();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  launcherGone().then(() => {
    log.warn("the launcher (deno task start) is gone: shutting down");
    proxy.shutdown();
  });
  await proxy.finished;
  // Every worker had the same shutdown_timeout; the extra second covers their last cleanup.
  if (group !== null) {
    const wait = proxy.config.general.shutdown_timeout + 2000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      group.finished,
      new Promise((r) => timer = setTimeout(r, wait)),
    ]);
    clearTimeout(timer);
  }
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
