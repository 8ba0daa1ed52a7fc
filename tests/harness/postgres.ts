/**
 * Throwaway PostgreSQL clusters for tests.
 *
 * `initdb` runs once per PostgreSQL version and user into a template that is
 * cached across processes; each cluster is a copy of it (`cp -a`) with its
 * own configuration, pg_hba.conf, port and roles.
 *
 * Layout of a cluster:
 * - a config directory under TMPDIR (readable by tests): postgresql.conf
 *   (the template's plus the harness's settings), pg_hba.conf and the server
 *   log `postgres.log`;
 * - the data directory, on /dev/shm when it is a big enough tmpfs (copying
 *   the template there is several times faster than to disk). Deno refuses
 *   /dev paths without --allow-all, so the harness touches the data directory
 *   only through subprocesses (cp, rm, pg_ctl); tests should too.
 *
 * ```ts
 * await using pg = await startPostgres({
 *   roles: [{ name: "alice", password: "secret", auth: "scram" }],
 *   databases: [{ name: "app", owner: "alice" }],
 * });
 * const rows = await pg.sql("SELECT 1");
 * ```
 *
 * @module
 */

import {
  asPostgresUser,
  isRoot,
  NO_PGPASS,
  pgTool,
  postgresUserIds,
  requirePgBinDir,
  runCommand,
} from "./command.ts";
import { freePort, sleep } from "./net.ts";

/** A postgresql.conf value. Strings are quoted, numbers and booleans are not. */
export type SettingValue = string | number | boolean;

/** A login role to create in a cluster, and how pg_hba.conf authenticates it. */
export interface RoleSpec {
  /** Role name. */
  name: string;
  /** Password; stored as SCRAM for "scram" and "password", as md5 for "md5". */
  password?: string;
  /** Authentication method of its pg_hba.conf line. */
  auth: "scram" | "md5" | "password" | "trust";
  /** Create the role as SUPERUSER. */
  superuser?: boolean;
}

/** A database to create; owned by `owner`, else by postgres. */
export interface DatabaseSpec {
  /** Database name. */
  name: string;
  /** Owning role (created from `roles` first). */
  owner?: string;
  /**
   * An ICU locale (e.g. "en-US") for the database's default collation (PostgreSQL 15+:
   * `LOCALE_PROVIDER icu`, from template0); the cluster's own default is the C locale.
   */
  icuLocale?: string;
}

/** Options for {@linkcode startPostgres}. */
export interface PostgresOptions {
  /**
   * postgresql.conf settings appended after the harness defaults, so they
   * override them. Setting `port` pins the port (no retry on another port).
   */
  settings?: Record<string, SettingValue>;
  /** Login roles to create, each with a pg_hba.conf line for its method. */
  roles?: RoleSpec[];
  /**
   * Raw pg_hba.conf lines placed before the generated ones (but after the
   * `postgres` trust lines the harness needs to administer the cluster).
   */
  hba?: string[];
  /** Databases to create. Everyone may create objects in their public schema. */
  databases?: (string | DatabaseSpec)[];
  /**
   * Turn TLS on (`ssl = on`) with this certificate chain and key (PEM text), written to
   * `server.crt` and `server.key` in the config directory (the key readable by the server's user
   * only, as PostgreSQL demands; rewrite them and {@linkcode PgCluster.reload} to switch).
   */
  tls?: { cert: string; key: string };
}

/** Options for {@linkcode PgCluster.url}. */
export interface PgUrlOptions {
  /** User; "postgres" by default. */
  user?: string;
  /** Password; none by default. */
  password?: string;
  /** Database; "postgres" by default. */
  database?: string;
}

/** Options for {@linkcode PgCluster.sql}. */
export interface PgSqlOptions {
  /** Database; "postgres" by default. */
  database?: string;
  /** User; the "postgres" superuser by default. */
  user?: string;
  /** Password for `user`, when its pg_hba.conf method needs one. */
  password?: string;
  /** Kill psql after this many milliseconds; 60 000 by default. */
  timeoutMs?: number;
}

/** A running throwaway PostgreSQL cluster. */
export interface PgCluster extends AsyncDisposable {
  /** Always "127.0.0.1". */
  readonly host: string;
  /** TCP port it listens on (kept across {@linkcode PgCluster.start} after a stop or kill). */
  readonly port: number;
  /** Data directory (possibly under /dev/shm: use subprocesses to touch it). */
  readonly dataDir: string;
  /** Directory of postgresql.conf, pg_hba.conf and the log (under TMPDIR). */
  readonly configDir: string;
  /** The postgresql.conf the server runs with. */
  readonly configFile: string;
  /** The pg_hba.conf the server runs with. */
  readonly hbaFile: string;
  /** Server log file. */
  readonly logFile: string;
  /** Postmaster process id while running. */
  readonly pid: number | undefined;
  /** Whether the harness believes the server is running. */
  readonly running: boolean;
  /** A postgres:// URL for this cluster. */
  url(options?: PgUrlOptions): string;
  /**
   * Run SQL with psql as the postgres superuser (or `options.user`) over TCP,
   * returning the result rows split by tab. Throws with psql's stderr on failure.
   */
  sql(query: string, options?: PgSqlOptions): Promise<string[][]>;
  /** Start the server again (same port), after {@linkcode PgCluster.stop} or {@linkcode PgCluster.kill}. */
  start(): Promise<void>;
  /** Fast shutdown; does nothing when already stopped. */
  stop(): Promise<void>;
  /**
   * SIGKILL the postmaster and wait until it is gone (a crash: with the
   * default synchronous_commit=off the last commits may be lost).
   */
  kill(): Promise<void>;
  /** SIGHUP the postmaster: re-read postgresql.conf and pg_hba.conf. */
  reload(): Promise<void>;
  /** Read the server log. */
  log(): Promise<string>;
  /** Whether the server is a standby (`SELECT pg_is_in_recovery()`). */
  isInRecovery(): Promise<boolean>;
  /** Stop the server and remove its directories. Idempotent. */
  destroy(): Promise<void>;
}

/** Bump when the template's contents change, so stale cached templates are not used. */
const TEMPLATE_FORMAT = 1;
const MAX_PORT_TRIES = 8;
const STARTUP_TIMEOUT_MS = 60_000;
/** A primary logs "...accept connections", a hot standby "...accept read-only connections". */
const READY_LINE = /database system is ready to accept (read-only )?connections/;
const SHUT_DOWN_LINE = "database system is shut down";
/** FATAL errors that concern one client connection, not the server. */
const CLIENT_FATAL =
  /the database system is (starting up|shutting down|not yet accepting connections|in recovery mode)|authentication failed|no pg_hba\.conf entry|(role|database) ".*" does not exist|too many clients|terminating connection/;

function configRoot(): string {
  return Deno.env.get("TMPDIR") || "/tmp";
}

let dataRootPromise: Promise<string> | undefined;

/**
 * Where templates and data directories live: env `PGDOG_TEST_PGDATA_ROOT`,
 * else /dev/shm when it is a tmpfs with at least 2 GiB free, else TMPDIR.
 */
function dataRoot(): Promise<string> {
  dataRootPromise ??= (async () => {
    const fromEnv = Deno.env.get("PGDOG_TEST_PGDATA_ROOT");
    if (fromEnv) return fromEnv;
    try {
      const df = await runCommand("df", ["-Pk", "/dev/shm"], { timeoutMs: 10_000 });
      const availKb = Number(df.stdout.trim().split("\n").at(-1)?.split(/\s+/)[3]);
      if (df.code === 0 && availKb >= 2 * 1024 * 1024) return "/dev/shm";
    } catch {
      // No df: use the fallback.
    }
    return configRoot();
  })();
  return dataRootPromise;
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function quoteLiteral(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

function confValue(value: SettingValue): string {
  if (typeof value === "number") return String(value);
  if (typeof value === "boolean") return value ? "on" : "off";
  return quoteLiteral(value);
}

function tail(text: string, chars = 4000): string {
  return text.length > chars ? `...${text.slice(-chars)}` : text;
}

/** Run a shell script (as the invoking user); `$1`... are `args`. */
async function sh(script: string, args: string[] = [], timeoutMs = 120_000) {
  return await runCommand("sh", ["-c", script, "sh", ...args], { timeoutMs });
}

async function runAsPostgres(
  program: string,
  args: string[],
  options: { stdin?: string; timeoutMs?: number } = {},
) {
  const [cmd, cmdArgs] = asPostgresUser(program, args);
  return await runCommand(cmd, cmdArgs, { ...options, env: { LC_ALL: "C" } });
}

/** Signal a process; false when it does not exist. */
function signalProcess(pid: number, signal: Deno.Signal): boolean {
  try {
    Deno.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether a process exists. Deno cannot read /proc without --allow-all and
 * has no signal 0, so probe with SIGCONT, which does nothing to a running
 * process (a zombie also counts as existing).
 */
function processExists(pid: number): boolean {
  return signalProcess(pid, "SIGCONT");
}

/**
 * Whether a process is gone or a zombie (dead, but not yet reaped: its
 * parent, often PID 1 for a postmaster, may reap it only much later).
 */
async function processGone(pid: number): Promise<boolean> {
  if (!processExists(pid)) return true;
  const stat = await runCommand("cat", [`/proc/${pid}/stat`], { timeoutMs: 10_000 });
  if (stat.code !== 0) return true;
  const state = stat.stdout.slice(
    stat.stdout.lastIndexOf(")") + 2,
    stat.stdout.lastIndexOf(")") + 3,
  );
  return state === "Z" || state === "X";
}

/** Poll until {@linkcode processGone}; false on timeout. */
async function waitGone(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await processGone(pid)) return true;
    await sleep(5);
  }
  return false;
}

// ---------------------------------------------------------------------------
// Template

interface Template {
  dir: string;
  conf: string;
  major: number;
}

let templatePromise: Promise<Template> | undefined;

async function buildTemplate(): Promise<Template> {
  const bin = requirePgBinDir();
  const versionOut = await runCommand(`${bin}/postgres`, ["--version"]);
  const version = versionOut.stdout.match(/(\d+(?:\.\d+)*)/)?.[1];
  if (versionOut.code !== 0 || !version) {
    throw new Error(`cannot run ${bin}/postgres --version: ${versionOut.stderr}`);
  }
  const owner = isRoot() ? "postgres" : `uid${Deno.uid()}`;
  const root = await dataRoot();
  const dir = `${root}/pgdog-test-pgtemplate-${version}-${owner}-v${TEMPLATE_FORMAT}`;
  const valid = async () =>
    (await sh(
      'test -f "$1/PG_VERSION" && test -f "$1/global/pg_control" && ' +
        'test -f "$1/postgresql.conf" && test ! -e "$1/postmaster.pid"',
      [dir],
    )).code === 0;

  if (!(await valid())) {
    await sh('rm -rf "$1"', [dir]);
    const mk = await sh('mktemp -d -p "$1" pgdog-test-pgtemplate-build-XXXXXX', [root]);
    const build = mk.stdout.trim();
    if (mk.code !== 0 || !build) throw new Error(`mktemp in ${root} failed: ${mk.stderr}`);
    try {
      if (isRoot()) {
        const chown = await sh('chown postgres:postgres "$1"', [build]);
        if (chown.code !== 0) throw new Error(`chown failed: ${chown.stderr}`);
      }
      const data = `${build}/data`;
      const init = await runAsPostgres(`${bin}/initdb`, [
        "-D",
        data,
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
        "--no-instructions",
        "--wal-segsize=1",
      ]);
      if (init.code !== 0) throw new Error(`initdb failed:\n${init.stdout}\n${init.stderr}`);
      // PostgreSQL 15 no longer lets everyone create objects in the public
      // schema; test roles need to, in every database created from template1.
      for (const db of ["template1", "postgres"]) {
        const single = await runAsPostgres(
          `${bin}/postgres`,
          ["--single", "-D", data, "-F", "-c", "exit_on_error=true", db],
          { stdin: "GRANT ALL ON SCHEMA public TO PUBLIC;\n" },
        );
        if (single.code !== 0) {
          throw new Error(`single-user setup of ${db} failed:\n${single.stdout}\n${single.stderr}`);
        }
      }
      // Atomic publish; when another process won the race, use its template.
      const mv = await sh('mv -T "$1" "$2"', [data, dir]);
      if (mv.code !== 0 && !(await valid())) {
        throw new Error(`publishing the template failed: ${mv.stderr}`);
      }
    } finally {
      await sh('rm -rf "$1"', [build]);
    }
  }
  const cat = await sh('cat "$1/postgresql.conf"', [dir]);
  if (cat.code !== 0) throw new Error(`reading the template's postgresql.conf: ${cat.stderr}`);
  return { dir, conf: cat.stdout, major: Number(version.split(".")[0]) };
}

function template(): Promise<Template> {
  templatePromise ??= buildTemplate().catch((err) => {
    templatePromise = undefined;
    throw err;
  });
  return templatePromise;
}

// ---------------------------------------------------------------------------
// Live cluster registry (safety net for clusters a test forgot to destroy)

const liveClusters = new Set<Cluster>();
let unloadHandlerInstalled = false;

function installUnloadHandler(): void {
  if (unloadHandlerInstalled) return;
  unloadHandlerInstalled = true;
  globalThis.addEventListener("unload", () => {
    for (const cluster of liveClusters) cluster.destroySync();
  });
}

// ---------------------------------------------------------------------------
// Clusters abandoned by killed test processes

const OWNER_FILE = "harness-owner.json";
let janitorPromise: Promise<void> | undefined;

interface OwnerRecord {
  pid: number;
  dataRoot: string;
  dataDir: string;
  bin: string;
}

/**
 * Once per process: stop and remove clusters whose test process died without
 * cleaning up (killed, interrupted), found by their owner file.
 */
function reapAbandoned(): Promise<void> {
  janitorPromise ??= (async () => {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(configRoot())];
    } catch {
      return;
    }
    for (const entry of entries) {
      if (!entry.isDirectory || !entry.name.startsWith("pgdog-test-pgconf-")) continue;
      const dir = `${configRoot()}/${entry.name}`;
      let owner: OwnerRecord;
      try {
        owner = JSON.parse(Deno.readTextFileSync(`${dir}/${OWNER_FILE}`));
      } catch {
        continue;
      }
      if (owner.pid === Deno.pid || processExists(owner.pid)) continue;
      const [cmd, args] = asPostgresUser(`${owner.bin}/pg_ctl`, [
        "-D",
        owner.dataDir,
        "-m",
        "immediate",
        "-w",
        "stop",
      ]);
      await runCommand(cmd, args, { timeoutMs: 30_000 }).catch(() => {});
      await sh('rm -rf "$1"', [owner.dataRoot]);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  })();
  return janitorPromise;
}

// ---------------------------------------------------------------------------
// Cluster

class Cluster implements PgCluster {
  readonly host = "127.0.0.1";
  port: number;
  readonly dataRoot: string;
  readonly dataDir: string;
  readonly configDir: string;
  readonly configFile: string;
  readonly hbaFile: string;
  readonly logFile: string;
  pid: number | undefined;
  running = false;
  #destroyed = false;
  readonly #bin: string;
  readonly #baseConf: string;
  readonly #settings: Record<string, SettingValue>;
  readonly #portPinned: boolean;

  constructor(
    dirs: { dataRoot: string; configDir: string },
    bin: string,
    baseConf: string,
    port: number,
    settings: Record<string, SettingValue>,
  ) {
    this.dataRoot = dirs.dataRoot;
    this.dataDir = `${dirs.dataRoot}/data`;
    this.configDir = dirs.configDir;
    this.configFile = `${dirs.configDir}/postgresql.conf`;
    this.hbaFile = `${dirs.configDir}/pg_hba.conf`;
    this.logFile = `${dirs.configDir}/postgres.log`;
    this.#bin = bin;
    this.#baseConf = baseConf;
    this.#settings = settings;
    this.#portPinned = settings.port !== undefined;
    this.port = this.#portPinned ? Number(settings.port) : port;
  }

  url(options: PgUrlOptions = {}): string {
    const user = encodeURIComponent(options.user ?? "postgres");
    const auth = options.password === undefined
      ? user
      : `${user}:${encodeURIComponent(options.password)}`;
    const db = encodeURIComponent(options.database ?? "postgres");
    return `postgres://${auth}@${this.host}:${this.port}/${db}`;
  }

  async sql(query: string, options: PgSqlOptions = {}): Promise<string[][]> {
    const out = await this.#psql(["-c", query], options);
    return out.split("\n").filter((line) => line !== "").map((line) => line.split("\t"));
  }

  /** Run psql with a script on stdin (statements run one by one, `\c` works). */
  async script(text: string, options: PgSqlOptions = {}): Promise<string> {
    return await this.#psql(["-f", "-"], options, text);
  }

  async #psql(args: string[], options: PgSqlOptions, stdin?: string): Promise<string> {
    const env: Record<string, string> = {
      PGCONNECT_TIMEOUT: "10",
      PGSSLMODE: "disable",
      PGPASSFILE: NO_PGPASS,
      PGPASSWORD: options.password ?? "",
    };
    const result = await runCommand(
      pgTool("psql"),
      [
        "-X",
        "-q",
        "-A",
        "-t",
        "-w",
        "-F",
        "\t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        this.host,
        "-p",
        String(this.port),
        "-U",
        options.user ?? "postgres",
        "-d",
        options.database ?? "postgres",
        ...args,
      ],
      { env, stdin, timeoutMs: options.timeoutMs ?? 60_000 },
    );
    if (result.code !== 0) {
      const why = result.timedOut ? " (timed out)" : "";
      throw new Error(`psql failed${why} (exit ${result.code}): ${result.stderr.trim()}`);
    }
    return result.stdout;
  }

  #writeConf(): void {
    const defaults: Record<string, SettingValue> = {
      listen_addresses: "127.0.0.1",
      port: this.port,
      unix_socket_directories: "",
      fsync: false,
      synchronous_commit: false,
      full_page_writes: false,
      max_connections: 1000,
      superuser_reserved_connections: 3,
      shared_buffers: "32MB",
      password_encryption: "scram-sha-256",
      logging_collector: false,
      log_line_prefix: "%m [%p] %q%u@%d ",
      log_timezone: "UTC",
      timezone: "UTC",
      autovacuum: false,
      max_wal_size: "1GB",
      huge_pages: "off",
      // Segments live in the data directory, so a killed server leaks none in /dev/shm.
      dynamic_shared_memory_type: "mmap",
    };
    const lines = ["", "# --- pgdog test harness ---"];
    for (const [key, value] of Object.entries({ ...defaults, ...this.#settings })) {
      lines.push(`${key} = ${key === "port" ? this.port : confValue(value)}`);
    }
    lines.push(`hba_file = ${quoteLiteral(this.hbaFile)}`);
    Deno.writeTextFileSync(this.configFile, this.#baseConf + lines.join("\n") + "\n");
  }

  #logSize(): number {
    try {
      return Deno.statSync(this.logFile).size;
    } catch {
      return 0;
    }
  }

  async #logFrom(offset: number): Promise<string> {
    let file: Deno.FsFile | undefined;
    try {
      file = await Deno.open(this.logFile);
      await file.seek(offset, Deno.SeekMode.Start);
      return await new Response(file.readable).text();
    } catch {
      file?.close();
      return "";
    }
  }

  async log(): Promise<string> {
    return await this.#logFrom(0);
  }

  async isInRecovery(): Promise<boolean> {
    const rows = await this.sql("SELECT pg_is_in_recovery()");
    return rows[0]?.[0] === "t";
  }

  /** The settings a clone of this cluster inherits (all but the port). */
  settingsForClone(): Record<string, SettingValue> {
    const { port: _port, ...rest } = this.#settings;
    return rest;
  }

  /**
   * First start: moves to another port when the chosen one is taken, unless
   * the port was pinned by the settings (then a taken port is an error).
   */
  async startFresh(): Promise<void> {
    await this.#start(this.#portPinned ? "fail" : "move");
  }

  async start(): Promise<void> {
    if (this.#destroyed) throw new Error("cluster was destroyed");
    if (this.running) return;
    await this.#start("wait");
  }

  async #pgCtl(args: string[], timeoutMs = 90_000) {
    return await runAsPostgres(`${this.#bin}/pg_ctl`, ["-D", this.dataDir, ...args], {
      timeoutMs,
    });
  }

  /** `onPortTaken`: try another port, wait for it to be free (restarts), or fail. */
  async #start(onPortTaken: "move" | "wait" | "fail"): Promise<void> {
    let lastError = "";
    for (let attempt = 0; attempt < 40; attempt++) {
      this.#writeConf();
      const offset = this.#logSize();
      // -W: do not wait (pg_ctl polls only every 100 ms); we watch the log.
      const result = await this.#pgCtl([
        "-l",
        this.logFile,
        "-o",
        `-c config_file=${shellQuote(this.configFile)}`,
        "-W",
        "start",
      ]);
      const outcome = result.code === 0 ? await this.#waitReady(offset) : "failed";
      if (outcome === "ready") {
        this.running = true;
        return;
      }
      const serverLog = await this.#logFrom(offset);
      lastError =
        `PostgreSQL failed to start on port ${this.port} (pg_ctl exit ${result.code}):\n` +
        `${result.stdout}${result.stderr}\n--- server log ---\n${tail(serverLog)}`;
      if (outcome === "timeout") {
        this.running = true;
        this.pid = await this.#statusPid();
        await this.kill();
        break;
      }
      if (
        /could not bind|Address already in use|could not create any TCP\/IP sockets/.test(serverLog)
      ) {
        if (onPortTaken === "fail" || attempt + 1 >= MAX_PORT_TRIES) break;
        if (onPortTaken === "move") this.port = await freePort();
        else await sleep(250);
        continue;
      }
      if (/pre-existing shared memory block|lock file .* already exists/.test(serverLog)) {
        // Children of a killed postmaster are still exiting.
        await sleep(150);
        continue;
      }
      break;
    }
    throw new Error(lastError);
  }

  /** Pid of the running postmaster according to `pg_ctl status`. */
  async #statusPid(): Promise<number | undefined> {
    const status = await this.#pgCtl(["status"], 30_000);
    const pid = status.stdout.match(/PID: (\d+)/)?.[1];
    return status.code === 0 && pid ? Number(pid) : undefined;
  }

  /**
   * Watch the log for the ready line, or for a FATAL/PANIC error after which
   * `pg_ctl status` finds no server running.
   */
  async #waitReady(offset: number): Promise<"ready" | "failed" | "timeout"> {
    const deadline = Date.now() + STARTUP_TIMEOUT_MS;
    let suspicious = false;
    let lastStatusCheck = Date.now();
    while (Date.now() < deadline) {
      const text = await this.#logFrom(offset);
      if (READY_LINE.test(text)) {
        const pid = [...text.matchAll(/\[(\d+)\] LOG:\s+starting PostgreSQL/g)].at(-1)?.[1];
        this.pid = pid ? Number(pid) : await this.#statusPid();
        return "ready";
      }
      suspicious ||= text.split("\n").some((line) =>
        /\b(FATAL|PANIC):/.test(line) && !CLIENT_FATAL.test(line)
      );
      // After a FATAL error check often; otherwise now and then, in case the
      // postmaster died without a recognizable message.
      if (Date.now() - lastStatusCheck > (suspicious ? 50 : 1000)) {
        lastStatusCheck = Date.now();
        const status = await this.#pgCtl(["status"], 30_000);
        if (status.code !== 0) {
          // Not running: it failed (unless it became ready meanwhile).
          return READY_LINE.test(await this.#logFrom(offset)) ? "ready" : "failed";
        }
      }
      await sleep(5);
    }
    return "timeout";
  }

  async reload(): Promise<void> {
    if (!this.running || this.pid === undefined) throw new Error("server is not running");
    signalProcess(this.pid, "SIGHUP");
    await sleep(50);
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    const pid = this.pid ?? await this.#statusPid();
    if (pid === undefined || await processGone(pid)) {
      this.running = false;
      this.pid = undefined;
      return;
    }
    // SIGINT = fast shutdown (what `pg_ctl stop -m fast` sends); we poll
    // faster than pg_ctl's 100 ms: the log first (cheap), then the process.
    const offset = this.#logSize();
    signalProcess(pid, "SIGINT");
    const deadline = Date.now() + 60_000;
    while (processExists(pid) && Date.now() < deadline) {
      if ((await this.#logFrom(offset)).includes(SHUT_DOWN_LINE)) break;
      await sleep(5);
    }
    if (!(await waitGone(pid, Math.max(1000, deadline - Date.now())))) {
      await this.kill();
      return;
    }
    this.running = false;
    this.pid = undefined;
  }

  async kill(): Promise<void> {
    const pid = this.pid ?? (this.running ? await this.#statusPid() : undefined);
    if (pid === undefined || await processGone(pid)) {
      this.running = false;
      this.pid = undefined;
      return;
    }
    signalProcess(pid, "SIGKILL");
    await waitGone(pid, 15_000);
    if (processExists(pid)) {
      // A zombie still "exists" for the next postmaster's lock file check.
      await sh('rm -f "$1/postmaster.pid"', [this.dataDir]);
    }
    this.running = false;
    this.pid = undefined;
  }

  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    try {
      await this.stop();
    } finally {
      this.#destroyed = true;
      liveClusters.delete(this);
      await sh('rm -rf "$1"', [this.dataRoot]);
      await Deno.remove(this.configDir, { recursive: true }).catch(() => {});
    }
  }

  /** Synchronous best-effort destroy for the unload handler. */
  destroySync(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    liveClusters.delete(this);
    const run = (program: string, args: string[]) => {
      try {
        new Deno.Command(program, { args, stdin: "null", stdout: "null", stderr: "null" })
          .outputSync();
      } catch {
        // Best effort.
      }
    };
    if (this.running) {
      const [cmd, args] = asPostgresUser(`${this.#bin}/pg_ctl`, [
        "-D",
        this.dataDir,
        "-m",
        "immediate",
        "-w",
        "stop",
      ]);
      run(cmd, args);
    }
    run("rm", ["-rf", this.dataRoot, this.configDir]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }
}

function hbaMethod(auth: RoleSpec["auth"]): string {
  return auth === "scram" ? "scram-sha-256" : auth;
}

function setupScript(options: PostgresOptions, major: number): string {
  const lines: string[] = [];
  for (const role of options.roles ?? []) {
    lines.push(
      `SET password_encryption = ${role.auth === "md5" ? "'md5'" : "'scram-sha-256'"};`,
    );
    const attrs = ["LOGIN", role.superuser ? "SUPERUSER" : "NOSUPERUSER"];
    if (role.password !== undefined) attrs.push(`PASSWORD ${quoteLiteral(role.password)}`);
    lines.push(`CREATE ROLE ${quoteIdent(role.name)} ${attrs.join(" ")};`);
  }
  for (const db of options.databases ?? []) {
    const spec = typeof db === "string" ? { name: db } : db;
    const owner = spec.owner ? ` OWNER ${quoteIdent(spec.owner)}` : "";
    // FILE_COPY (PostgreSQL 15+) is about twice as fast as WAL-logging every block.
    const strategy = major >= 15 ? " STRATEGY FILE_COPY" : "";
    const locale = spec.icuLocale === undefined
      ? ""
      : ` LOCALE_PROVIDER icu ICU_LOCALE ${quoteLiteral(spec.icuLocale)} TEMPLATE template0`;
    lines.push(`CREATE DATABASE ${quoteIdent(spec.name)}${owner}${strategy}${locale};`);
    lines.push(`GRANT ALL ON DATABASE ${quoteIdent(spec.name)} TO PUBLIC;`);
  }
  return lines.join("\n");
}

function hbaConf(options: PostgresOptions): string {
  const lines = [
    "# generated by the pgdog test harness",
    "host all postgres 127.0.0.1/32 trust",
    "host replication postgres 127.0.0.1/32 trust",
    ...(options.hba ?? []),
  ];
  for (const role of options.roles ?? []) {
    lines.push(`host all ${quoteIdent(role.name)} 127.0.0.1/32 ${hbaMethod(role.auth)}`);
  }
  lines.push("host all all 127.0.0.1/32 scram-sha-256");
  return lines.join("\n") + "\n";
}

/**
 * Start a throwaway PostgreSQL cluster on 127.0.0.1 and a free port, with the
 * given roles, databases and settings. Destroy it with `await using`,
 * {@linkcode PgCluster.destroy}, or (best effort) at process exit.
 */
export async function startPostgres(options: PostgresOptions = {}): Promise<PgCluster> {
  const bin = requirePgBinDir();
  const [tpl] = await Promise.all([template(), reapAbandoned()]);
  const root = await dataRoot();
  const configDir = await Deno.makeTempDir({ dir: configRoot(), prefix: "pgdog-test-pgconf-" });
  let dataRootDir: string | undefined;
  let cluster: Cluster | undefined;
  try {
    // One subprocess: make the data root, hand it to postgres, copy the template.
    const copy = await sh(
      'set -e; d=$(mktemp -d -p "$1" pgdog-test-pgdata-XXXXXX); echo "$d"; ' +
        'if [ "$3" = root ]; then chown postgres:postgres "$d"; fi; cp -a "$2" "$d/data"',
      [root, tpl.dir, isRoot() ? "root" : "user"],
    );
    dataRootDir = copy.stdout.trim().split("\n")[0] || undefined;
    if (copy.code !== 0 || !dataRootDir) {
      throw new Error(`copying the template cluster failed: ${copy.stderr}`);
    }
    if (isRoot()) {
      const ids = postgresUserIds();
      await Deno.chown(configDir, ids.uid, ids.gid);
    }
    await Deno.writeTextFile(`${configDir}/pg_hba.conf`, hbaConf(options));
    const settings = { ...options.settings };
    if (options.tls) {
      const cert = `${configDir}/server.crt`;
      const key = `${configDir}/server.key`;
      await Deno.writeTextFile(cert, options.tls.cert);
      await Deno.writeTextFile(key, options.tls.key, { mode: 0o600 });
      await Deno.chmod(key, 0o600);
      if (isRoot()) {
        const ids = postgresUserIds();
        await Deno.chown(cert, ids.uid, ids.gid);
        await Deno.chown(key, ids.uid, ids.gid);
      }
      Object.assign(
        settings,
        { ssl: true, ssl_cert_file: cert, ssl_key_file: key },
        options.settings,
      );
    }
    const owner: OwnerRecord = {
      pid: Deno.pid,
      dataRoot: dataRootDir,
      dataDir: `${dataRootDir}/data`,
      bin,
    };
    await Deno.writeTextFile(`${configDir}/${OWNER_FILE}`, JSON.stringify(owner));
    cluster = new Cluster(
      { dataRoot: dataRootDir, configDir },
      bin,
      tpl.conf,
      await freePort(),
      settings,
    );
    liveClusters.add(cluster);
    installUnloadHandler();
    await cluster.startFresh();
    const script = setupScript(options, tpl.major);
    if (script) await cluster.script(script);
    return cluster;
  } catch (err) {
    if (cluster) {
      await cluster.destroy().catch(() => {});
    } else {
      if (dataRootDir) await sh('rm -rf "$1"', [dataRootDir]);
      await Deno.remove(configDir, { recursive: true }).catch(() => {});
    }
    throw err;
  }
}

/** Options for {@linkcode startPostgresFrom}. */
export interface StartPostgresFromOptions {
  /** postgresql.conf settings applied on top of the ones inherited from the source. */
  settings?: Record<string, SettingValue>;
}

/**
 * Low-level building block of `startReplica`: start a cluster whose data
 * directory `populate(dataDir)` creates (for instance with pg_basebackup, as
 * the postgres user when root; the parent directory exists and is owned by
 * postgres) instead of copying the template. The new cluster gets its own
 * port, config directory and log, the pg_hba.conf of `source` and the
 * settings `source` was started with (except the port), then
 * `options.settings`. It is cleaned up like clusters from
 * {@linkcode startPostgres}.
 */
export async function startPostgresFrom(
  source: PgCluster,
  populate: (dataDir: string) => Promise<void>,
  options: StartPostgresFromOptions = {},
): Promise<PgCluster> {
  const bin = requirePgBinDir();
  const [tpl] = await Promise.all([template(), reapAbandoned()]);
  const root = await dataRoot();
  const hba = await Deno.readTextFile(source.hbaFile);
  const configDir = await Deno.makeTempDir({ dir: configRoot(), prefix: "pgdog-test-pgconf-" });
  let dataRootDir: string | undefined;
  let cluster: Cluster | undefined;
  try {
    const mk = await sh(
      'set -e; d=$(mktemp -d -p "$1" pgdog-test-pgdata-XXXXXX); echo "$d"; ' +
        'if [ "$2" = root ]; then chown postgres:postgres "$d"; fi',
      [root, isRoot() ? "root" : "user"],
    );
    dataRootDir = mk.stdout.trim().split("\n")[0] || undefined;
    if (mk.code !== 0 || !dataRootDir) {
      throw new Error(`creating a data directory in ${root} failed: ${mk.stderr}`);
    }
    if (isRoot()) {
      const ids = postgresUserIds();
      await Deno.chown(configDir, ids.uid, ids.gid);
    }
    await Deno.writeTextFile(`${configDir}/pg_hba.conf`, hba);
    const owner: OwnerRecord = {
      pid: Deno.pid,
      dataRoot: dataRootDir,
      dataDir: `${dataRootDir}/data`,
      bin,
    };
    // Written before populating, so an interrupted run's leftovers are reaped.
    await Deno.writeTextFile(`${configDir}/${OWNER_FILE}`, JSON.stringify(owner));
    await populate(owner.dataDir);
    const inherited = source instanceof Cluster ? source.settingsForClone() : {};
    cluster = new Cluster(
      { dataRoot: dataRootDir, configDir },
      bin,
      tpl.conf,
      await freePort(),
      { ...inherited, ...options.settings },
    );
    liveClusters.add(cluster);
    installUnloadHandler();
    await cluster.startFresh();
    return cluster;
  } catch (err) {
    if (cluster) {
      await cluster.destroy().catch(() => {});
    } else {
      if (dataRootDir) await sh('rm -rf "$1"', [dataRootDir]);
      await Deno.remove(configDir, { recursive: true }).catch(() => {});
    }
    throw err;
  }
}
