/**
 * `deno task start`: starts pgdog with read access to exactly what its configuration names.
 *
 * A task cannot take `deno run` flags from its user, and pgdog's own `--allow-read` must stay
 * narrow (see ./config/read_grants.ts): so this small launcher, which may read anything but runs
 * no plugin and serves no client, reads the command line and the configuration, and runs pgdog
 * (`deno run ... mod.ts <the same arguments>`) granted its folder, the working directory and the
 * files the configuration names (`-c`, `-u`, TLS files, plugin files). It passes SIGINT, SIGTERM
 * and SIGHUP on to pgdog and exits with its exit code; pgdog shuts down should the launcher go
 * away.
 *
 * @module
 */

import {
  commandOf,
  configPathsOf,
  pgdogArgs,
  readGrants,
  writeGrants,
} from "./config/read_grants.ts";

/** The environment variable that tells pgdog a launcher started it (and watches its stdin). */
export const LAUNCHED_ENV = "PGDOG_LAUNCHED";

/** The Deno to run pgdog with: this one when it may be run by path, else `deno` from PATH. */
function denoCommand(): string {
  const path = Deno.execPath();
  return Deno.permissions.querySync({ name: "run", command: path }).state === "granted"
    ? path
    : "deno";
}

const SIGNALS: Deno.Signal[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** A signal repeated within this many milliseconds is one delivery seen twice. */
const REPEAT_MS = 300;

/** Runs pgdog with `args`; resolves with its exit code. */
export async function launch(args: string[]): Promise<number> {
  const read = readGrants(configPathsOf(args));
  const write = writeGrants(configPathsOf(args));
  // The proxy itself: its own session, so that signals reach it once (from here); its stdin
  // stays open while this process lives. Other commands (configcheck, route) run in the
  // foreground as they are.
  const serving = commandOf(args) === "run";
  const child = new Deno.Command(denoCommand(), {
    args: pgdogArgs(args, read, { write }),
    stdin: serving ? "piped" : "inherit",
    stdout: "inherit",
    stderr: "inherit",
    detached: serving,
    env: serving ? { [LAUNCHED_ENV]: "1" } : {},
  }).spawn();
  const forward = new Map<Deno.Signal, () => void>();
  if (serving) {
    // One Ctrl-C can arrive twice: from the terminal to the whole group and again from
    // `deno task`, which forwards it. A repeat within REPEAT_MS is that same press.
    const last = new Map<Deno.Signal, number>();
    for (const signal of SIGNALS) {
      const pass = (): void => {
        const now = performance.now();
        const before = last.get(signal);
        last.set(signal, now);
        if (before !== undefined && now - before < REPEAT_MS) return;
        try {
          child.kill(signal);
        } catch {
          // Already gone.
        }
      };
      forward.set(signal, pass);
      Deno.addSignalListener(signal, pass);
    }
  }
  const status = await child.status;
  for (const [signal, pass] of forward) Deno.removeSignalListener(signal, pass);
  if (status.signal !== null) {
    const numbers: Partial<Record<Deno.Signal, number>> = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };
    return 128 + (numbers[status.signal] ?? 1);
  }
  return status.code;
}

if (import.meta.main) {
  Deno.exit(await launch(Deno.args));
}
