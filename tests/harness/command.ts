/**
 * Running external programs from tests without leaking resources, and finding
 * the PostgreSQL binaries.
 *
 * @module
 */

/**
 * A PGPASSFILE that does not exist, so ~/.pgpass never supplies a password
 * (/dev/null would make libpq warn that it is not a plain file).
 */
export const NO_PGPASS = "/nonexistent/pgdog-test-pgpass";

/** Result of {@linkcode runCommand}. */
export interface CommandResult {
  /** Exit code; 128 + signal number when killed by a signal. */
  code: number;
  /** Standard output, decoded as UTF-8. */
  stdout: string;
  /** Standard error, decoded as UTF-8. */
  stderr: string;
  /** True when the process was killed because `timeoutMs` passed. */
  timedOut: boolean;
}

/** Options for {@linkcode runCommand}. */
export interface RunCommandOptions {
  /** Extra environment variables (the parent's environment is inherited). */
  env?: Record<string, string>;
  /** Text written to standard input, which is closed afterwards. */
  stdin?: string;
  /** Working directory. */
  cwd?: string;
  /** Kill the process with SIGKILL after this many milliseconds; 120 000 by default. */
  timeoutMs?: number;
}

const SIGNAL_NUMBERS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGABRT: 6,
  SIGKILL: 9,
  SIGSEGV: 11,
  SIGPIPE: 13,
  SIGTERM: 15,
};

/** Exit code of a finished process, with the shell's 128 + signal convention. */
export function exitCode(status: Deno.CommandStatus): number {
  if (status.signal !== null) return 128 + (SIGNAL_NUMBERS[status.signal] ?? 0);
  return status.code;
}

/**
 * Run a program to completion, collecting its output. Never throws because of
 * a non-zero exit; throws only when the program cannot be started.
 */
export async function runCommand(
  program: string,
  args: string[],
  options: RunCommandOptions = {},
): Promise<CommandResult> {
  const child = new Deno.Command(program, {
    args,
    env: options.env,
    cwd: options.cwd,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }, options.timeoutMs ?? 120_000);
  try {
    if (options.stdin !== undefined) {
      const writer = child.stdin.getWriter();
      try {
        await writer.write(new TextEncoder().encode(options.stdin));
        await writer.close();
      } catch {
        // The program exited without reading all of its input.
        writer.releaseLock();
        await child.stdin.close().catch(() => {});
      }
    }
    const out = await child.output();
    const decoder = new TextDecoder();
    return {
      code: exitCode(out),
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
      timedOut,
    };
  } finally {
    clearTimeout(timer);
  }
}

/** True when this process runs as root (PostgreSQL then runs as user `postgres`). */
export function isRoot(): boolean {
  return Deno.uid() === 0;
}

/**
 * Program and arguments that run `program args` as the `postgres` user when
 * this process is root, unchanged otherwise.
 */
export function asPostgresUser(program: string, args: string[]): [string, string[]] {
  if (!isRoot()) return [program, args];
  return ["runuser", ["-u", "postgres", "--", program, ...args]];
}

/** Uid and gid of the `postgres` user, read from /etc/passwd. */
export function postgresUserIds(): { uid: number; gid: number } {
  const passwd = Deno.readTextFileSync("/etc/passwd");
  for (const line of passwd.split("\n")) {
    const fields = line.split(":");
    if (fields[0] === "postgres" && fields.length >= 4) {
      return { uid: Number(fields[2]), gid: Number(fields[3]) };
    }
  }
  throw new Error("running as root but there is no `postgres` user to run PostgreSQL as");
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

let cachedBinDir: string | null | undefined;

/**
 * Directory of the PostgreSQL server binaries (initdb, pg_ctl, postgres): env
 * `PG_BIN`, else the real directory of `initdb` on PATH, else the highest
 * `/usr/lib/postgresql/<version>/bin`. Returns undefined when none is found.
 */
export function findPgBinDir(): string | undefined {
  if (cachedBinDir !== undefined) return cachedBinDir ?? undefined;
  let found: string | undefined;
  const fromEnv = Deno.env.get("PG_BIN");
  if (fromEnv && isFile(`${fromEnv}/initdb`)) found = fromEnv;
  if (!found) {
    for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
      if (!dir || !isFile(`${dir}/initdb`)) continue;
      const real = Deno.realPathSync(`${dir}/initdb`);
      found = real.slice(0, real.lastIndexOf("/"));
      break;
    }
  }
  if (!found) {
    try {
      const versions = [...Deno.readDirSync("/usr/lib/postgresql")]
        .map((e) => e.name)
        .filter((name) =>
          /^\d+(\.\d+)*$/.test(name) && isFile(`/usr/lib/postgresql/${name}/bin/initdb`)
        )
        .sort(compareVersions);
      if (versions.length > 0) found = `/usr/lib/postgresql/${versions[versions.length - 1]}/bin`;
    } catch {
      // No /usr/lib/postgresql.
    }
  }
  cachedBinDir = found ?? null;
  return found;
}

/** Like {@linkcode findPgBinDir} but throws a clear error when nothing is found. */
export function requirePgBinDir(): string {
  const dir = findPgBinDir();
  if (!dir) {
    throw new Error("PostgreSQL server binaries not found: install postgresql or set PG_BIN");
  }
  return dir;
}

/**
 * Path of a PostgreSQL client program (psql, pgbench, ...): the one next to
 * the server binaries when present (skips Debian's wrapper), else the bare
 * name, looked up on PATH.
 */
export function pgTool(name: string): string {
  const dir = findPgBinDir();
  if (dir && isFile(`${dir}/${name}`)) return `${dir}/${name}`;
  return name;
}
