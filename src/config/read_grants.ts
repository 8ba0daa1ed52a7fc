/**
 * What pgdog may read and write, and the command line that grants it. pgdog runs with a narrow
 * `--allow-read`: a plugin in a Worker can `import()` whatever pgdog itself may read (see
 * src/plugin/sandbox.ts), so pgdog is granted its own folder, the working directory, and the
 * files its configuration names (and the backups and temporary files of a cutover's save of
 * them), nothing more. `deno task start` (src/launch.ts) computes that
 * list from the command line and the configuration, and starts pgdog with it; a pgdog started by
 * hand that lacks one prints the command line that grants it.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { parse as parseToml } from "smol-toml";

/** Paths of the two configuration files. */
export interface ConfigPaths {
  config: string;
  users: string;
}

/** pgdog's folder (where mod.ts is), or null when it does not run from files. */
export const PGDOG_ROOT: string | null = (() => {
  const url = new URL("../../", import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname).replace(/\/$/, "") : null;
})();

/**
 * The permission flags pgdog runs with, but for `--allow-read` (see {@linkcode pgdogArgs}):
 * `deno` for plugin processes, `pg_dump` for resharding's schema sync.
 */
export const PGDOG_FLAGS: readonly string[] = [
  "--unstable-net",
  "--unstable-worker-options",
  "--allow-net",
  "--allow-env=PGDOG_*,NODE_ID",
  "--allow-run=deno,pg_dump",
];

/** `path` made absolute against `cwd`, with `.` and `..` resolved. */
export function absolutePath(path: string, cwd: string): string {
  const parts: string[] = [];
  for (const part of (path.startsWith("/") ? path : `${cwd}/${path}`).split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return `/${parts.join("/")}`;
}

/** The options of pgdog's command line that take a value (see mod.ts). */
const VALUE_OPTIONS = {
  config: { type: "string", short: "c" },
  users: { type: "string", short: "u" },
  database_url: { type: "string", short: "d", multiple: true },
  "database-url": { type: "string", multiple: true },
  database: { type: "string", short: "D" },
} as const;

/** The command a pgdog command line runs: `run` (the default), `configcheck`, `route`, ... */
export function commandOf(args: readonly string[]): string {
  try {
    const { positionals } = parseArgs({
      args: [...args],
      allowPositionals: true,
      strict: false,
      options: VALUE_OPTIONS,
    });
    return positionals[0] ?? "run";
  } catch {
    return "run";
  }
}

/** The configuration files a pgdog command line names (its defaults when it names none). */
export function configPathsOf(args: readonly string[]): ConfigPaths {
  try {
    const { values } = parseArgs({
      args: [...args],
      allowPositionals: true,
      strict: false,
      options: VALUE_OPTIONS,
    });
    return {
      config: typeof values.config === "string" ? values.config : "pgdog.toml",
      users: typeof values.users === "string" ? values.users : "users.toml",
    };
  } catch {
    return { config: "pgdog.toml", users: "users.toml" };
  }
}

/** The `[general]` keys that name files pgdog reads at startup. */
const FILE_KEYS = [
  "tls_certificate",
  "tls_private_key",
  "tls_server_ca_certificate",
  "two_phase_commit_wal_dir",
] as const;

interface PluginEntry {
  path?: unknown;
  config?: unknown;
  isolation?: unknown;
  permissions?: { read?: unknown };
}

/**
 * Everything pgdog needs to read for the configuration at `paths`, as absolute paths: its own
 * folder and the working directory, both files, the TLS files `[general]` names, each plugin's
 * `config` file, a local plugin's folder (and the deno.json and deno.lock files above it, where
 * pgdog looks for the plugin's own project), and what a worker plugin may read (a Worker can be
 * granted only what pgdog holds). Reads pgdog.toml when it can; without it, the list has the two
 * files and the folders.
 */
export function readGrants(paths: ConfigPaths, options: { cwd?: string } = {}): string[] {
  const cwd = options.cwd ?? Deno.cwd();
  const grants = new Set<string>();
  const add = (path: string): void => {
    grants.add(absolutePath(path, cwd));
  };
  if (PGDOG_ROOT !== null) add(PGDOG_ROOT);
  add(cwd);
  // The configuration files, and the backups and temporary files of a cutover's save.
  for (const path of [paths.config, paths.users].flatMap(savedPathsOf)) add(path);
  let doc: { general?: Record<string, unknown>; plugins?: PluginEntry[] } = {};
  try {
    doc = parseToml(Deno.readTextFileSync(paths.config)) as typeof doc;
  } catch {
    // Missing, unreadable or invalid: pgdog says which when it loads it.
  }
  for (const key of FILE_KEYS) {
    const value = doc.general?.[key];
    if (typeof value === "string") add(value);
  }
  for (const plugin of Array.isArray(doc.plugins) ? doc.plugins : []) {
    if (typeof plugin.config === "string") add(plugin.config);
    const path = plugin.path;
    const local = typeof path === "string" &&
      (!/^[a-z][a-z0-9+.-]*:/i.test(path) || path.startsWith("file:"));
    if (local) {
      const file = absolutePath(path.startsWith("file:") ? new URL(path).pathname : path, cwd);
      let dir = file.slice(0, file.lastIndexOf("/")) || "/";
      add(dir);
      for (;;) {
        for (const name of ["deno.json", "deno.jsonc", "deno.lock"]) add(`${dir}/${name}`);
        if (dir === "/") break;
        dir = dir.slice(0, dir.lastIndexOf("/")) || "/";
      }
    }
    const read = plugin.permissions?.read;
    if (plugin.isolation === "worker" && Array.isArray(read)) {
      for (const r of read) if (typeof r === "string") add(r);
    }
  }
  return minimal([...grants]);
}

/**
 * What pgdog writes for the configuration at `paths`, as absolute paths: the two-phase commit
 * log's folder (`two_phase_commit_wal_dir`) when one is configured, and what a cutover writes
 * when it saves the swapped configuration (`cutover_save_config`, which a RELOAD may turn on):
 * both files, their backups and the temporary files of each (see {@linkcode savedPathsOf}).
 */
export function writeGrants(paths: ConfigPaths, options: { cwd?: string } = {}): string[] {
  const cwd = options.cwd ?? Deno.cwd();
  const grants = [paths.config, paths.users].flatMap(savedPathsOf)
    .map((path) => absolutePath(path, cwd));
  try {
    const doc = parseToml(Deno.readTextFileSync(paths.config)) as {
      general?: Record<string, unknown>;
    };
    const dir = doc.general?.two_phase_commit_wal_dir;
    if (typeof dir === "string") grants.push(absolutePath(dir, cwd));
  } catch {
    // Missing, unreadable or invalid: pgdog says which when it loads it.
  }
  return minimal(grants);
}

/** Where the backup of configuration file `path` goes: `pgdog.toml` → `pgdog.bak.toml`. */
export function backupPathOf(path: string): string {
  const slash = path.lastIndexOf("/");
  const dot = path.lastIndexOf(".");
  // Like Rust's with_extension (PgDog's): a leading dot starts the name, not an extension.
  const stem = dot > slash + 1 ? path.slice(0, dot) : path;
  return `${stem}.bak.toml`;
}

/** The temporary file `path` is written to before it is renamed over `path`. */
export function tempPathOf(path: string): string {
  return `${path}.tmp`;
}

/**
 * Every file a cutover writes for configuration file `path` when it saves the swapped
 * configuration (src/resharding/config_swap.ts): the file, its backup, and the temporary file
 * of each. pgdog must read them too: renaming a file needs read access to both names.
 */
export function savedPathsOf(path: string): string[] {
  const backup = backupPathOf(path);
  return [path, tempPathOf(path), backup, tempPathOf(backup)];
}

/** Drops paths another one in the list already covers (a file inside a granted folder). */
function minimal(paths: string[]): string[] {
  const sorted = [...new Set(paths)].sort();
  return sorted.filter((p) => !sorted.some((q) => q !== p && (q === "/" || p.startsWith(`${q}/`))));
}

/**
 * The `deno run` arguments that start pgdog with `args`, granted to read `read` (and to write
 * `options.write`, see {@linkcode writeGrants}).
 */
export function pgdogArgs(
  args: readonly string[],
  read: readonly string[],
  options: { write?: readonly string[] } = {},
): string[] {
  const entry = PGDOG_ROOT === null ? "mod.ts" : `${PGDOG_ROOT}/mod.ts`;
  const write = options.write?.length ? [`--allow-write=${options.write.join(",")}`] : [];
  return ["run", ...PGDOG_FLAGS, `--allow-read=${read.join(",")}`, ...write, entry, ...args];
}

/** A command line for a POSIX shell: each argument quoted where it needs to be. */
export function shellLine(argv: readonly string[]): string {
  return argv.map((a) => /^[\w@%+=:,./*-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`)
    .join(" ");
}

/** A problem line that says pgdog was denied reading a file. */
export const READ_DENIED = /Requires read access to/;

/**
 * An error's message without Deno's advice to "run again with the --allow-read flag", which the
 * user of `deno task start` cannot follow ({@linkcode readAccessHint} says what to do instead).
 */
export function readErrorMessage(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  return message.replace(/, run again with the --allow-\w+ flag/, "");
}

/**
 * What to tell the user when pgdog may not read a file its configuration names: that
 * `deno task start` grants it, and the `deno run` command line that does.
 */
export function readAccessHint(args: readonly string[]): string {
  const read = readGrants(configPathsOf(args));
  const write = writeGrants(configPathsOf(args));
  return "no read access to a file the configuration names. `deno task start` grants read " +
    "access to the files the configuration names; to run pgdog by hand, grant it with:\n  " +
    shellLine(["deno", ...pgdogArgs(args, read, { write })]);
}
