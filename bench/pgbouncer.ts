/**
 * PgBouncer for the benchmark: the installed binary, in transaction mode, with the pool size pgdog
 * gets, as user `postgres` when the benchmark runs as root.
 *
 * @module
 */

import { freePort, type PgTarget, runCommand, waitForPort } from "../tests/harness/mod.ts";

/** A running PgBouncer. */
export interface Pgbouncer {
  /** Where clients connect. */
  target: PgTarget;
  /** Its version, e.g. "1.18". */
  version: string;
  /** Whether it can serve `pgbench -M prepared` in transaction mode (1.21 and later). */
  preparedStatements: boolean;
  /** Its process id. */
  pid(): Promise<number>;
  /** Stops it and removes its directory. */
  stop(): Promise<void>;
}

/** Options for {@linkcode startPgbouncer}. */
export interface PgbouncerOptions {
  /** PostgreSQL host. */
  host: string;
  /** PostgreSQL port. */
  port: number;
  /** Database, user and password (the same names on both sides). */
  database: string;
  /** User. */
  user: string;
  /** Password. */
  password: string;
  /** Server connections per pool. */
  poolSize: number;
  /** max_client_conn. */
  maxClients: number;
}

/** The pgbouncer binary, or undefined when it is not installed. */
export async function findPgbouncer(): Promise<string | undefined> {
  const which = await runCommand("sh", [
    "-c",
    "command -v pgbouncer || { test -x /usr/sbin/pgbouncer && echo /usr/sbin/pgbouncer; }",
  ]);
  const bin = which.stdout.trim().split("\n")[0];
  return which.code === 0 && bin ? bin : undefined;
}

/**
 * Starts PgBouncer in transaction mode in front of the given PostgreSQL. Returns a reason string
 * instead when it is not installed or does not start.
 */
export async function startPgbouncer(options: PgbouncerOptions): Promise<Pgbouncer | string> {
  const bin = await findPgbouncer();
  if (!bin) return "pgbouncer is not installed (apt-get install -y pgbouncer)";
  const versionOut = await runCommand(bin, ["--version"]);
  const version = versionOut.stdout.match(/PgBouncer (\d+\.\d+)/)?.[1] ?? "unknown";
  const [major, minor] = version.split(".").map(Number);
  const preparedStatements = major > 1 || (major === 1 && minor >= 21);
  const dir = await Deno.makeTempDir({ prefix: "pgdog-bench-pgbouncer-" });
  const listen = await freePort();
  await Deno.writeTextFile(`${dir}/userlist.txt`, `"${options.user}" "${options.password}"\n`);
  const ini = [
    "[databases]",
    `${options.database} = host=${options.host} port=${options.port} dbname=${options.database}`,
    "[pgbouncer]",
    "listen_addr = 127.0.0.1",
    `listen_port = ${listen}`,
    "auth_type = md5",
    `auth_file = ${dir}/userlist.txt`,
    "pool_mode = transaction",
    `default_pool_size = ${options.poolSize}`,
    `max_client_conn = ${options.maxClients}`,
    "log_connections = 0",
    "log_disconnections = 0",
    "unix_socket_dir =",
    `logfile = ${dir}/pgbouncer.log`,
    `pidfile = ${dir}/pgbouncer.pid`,
    ...(preparedStatements ? ["max_prepared_statements = 500"] : []),
  ];
  await Deno.writeTextFile(`${dir}/pgbouncer.ini`, ini.join("\n") + "\n");
  // Raise the soft open files limit to the hard one for it: runuser starts with 1024, which caps
  // PgBouncer at about 1000 clients. It runs in the foreground as our child (no -d), so that an
  // interrupted benchmark does not leave it behind.
  const script = `ulimit -n "$(ulimit -Hn)"; exec "$0" "$1"`;
  const argv = ["sh", "-c", script, bin, `${dir}/pgbouncer.ini`];
  const root = Deno.uid() === 0;
  if (root) await runCommand("chown", ["-R", "postgres", dir]);
  const cmd = root ? ["runuser", "-u", "postgres", "--", ...argv] : argv;
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const log = async (): Promise<string> =>
    await Deno.readTextFile(`${dir}/pgbouncer.log`).catch(() => "");
  try {
    await waitForPort(listen, { timeoutMs: 10_000 });
  } catch {
    const why = await log();
    if (!exited) child.kill("SIGKILL");
    await status;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    return `pgbouncer did not start: ${why.trim()}`;
  }
  const pid = async (): Promise<number> =>
    Number((await Deno.readTextFile(`${dir}/pgbouncer.pid`)).trim());
  return {
    target: {
      host: "127.0.0.1",
      port: listen,
      user: options.user,
      password: options.password,
      database: options.database,
    },
    version,
    preparedStatements,
    pid,
    async stop(): Promise<void> {
      // Signal PgBouncer itself: runuser does not pass signals on.
      const p = await pid().catch(() => 0);
      const kill = (signal: Deno.Signal): void => {
        try {
          if (p > 0) Deno.kill(p, signal);
          else if (!exited) child.kill(signal);
        } catch {
          // Gone.
        }
      };
      if (!exited) kill("SIGINT");
      const timer = setTimeout(() => !exited && kill("SIGKILL"), 10_000);
      await status;
      clearTimeout(timer);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
