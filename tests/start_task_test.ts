/**
 * `deno task start` as users run it, with configuration files outside the repository:
 *
 * - `-c` and `-u` naming files anywhere work, and so do the TLS files the configuration names
 *   (a client connects with `sslmode=require`); pgdog itself may read only its folder, the working
 *   directory and those files, write only the configuration files (with their backups and
 *   temporary files, for a cutover's save), and run deno and pg_dump only;
 * - Ctrl-C (SIGINT to the whole process group) and SIGTERM shut pgdog down gracefully, once;
 *   should the launcher be killed, pgdog does not outlive it;
 * - run by hand without read access to a file, pgdog prints the command line that grants it.
 */

import assert from "node:assert/strict";
import { psql, REPO_ROOT, runCommand, runPgdog, sleep, startPostgres } from "./harness/mod.ts";

const USER = "postgres";
const PASSWORD = "start-task-pw";

/** A directory outside the repository with pgdog.toml, users.toml, a certificate and its key. */
async function configDir(pg: { host: string; port: number }): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "pgdog-start-task-" });
  const made = await runCommand("openssl", [
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    `${dir}/server.key`,
    "-out",
    `${dir}/server.pem`,
    "-days",
    "2",
    "-subj",
    "/CN=127.0.0.1",
  ], { timeoutMs: 30_000 });
  assert.equal(made.code, 0, made.stderr);
  await Deno.writeTextFile(
    `${dir}/pgdog.toml`,
    `[general]\nhost = "127.0.0.1"\nport = 0\nidle_healthcheck_interval = 0\n` +
      `tls_certificate = "${dir}/server.pem"\ntls_private_key = "${dir}/server.key"\n\n` +
      `[[databases]]\nname = "app"\nhost = "${pg.host}"\nport = ${pg.port}\n` +
      `database_name = "postgres"\n`,
  );
  await Deno.writeTextFile(
    `${dir}/users.toml`,
    `[[users]]\nname = "${USER}"\ndatabase = "app"\npassword = "${PASSWORD}"\n`,
  );
  return dir;
}

/** `deno task start` in the repository, in a process group of its own (as a shell starts it). */
function startTask(args: string[]): {
  child: Deno.ChildProcess;
  output: () => string;
  listening: Promise<number>;
} {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "start", ...args],
    cwd: REPO_ROOT,
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    detached: true,
  }).spawn();
  let text = "";
  let found: (port: number) => void = () => {};
  let failed: (e: Error) => void = () => {};
  const listening = new Promise<number>((resolve, reject) => {
    found = resolve;
    failed = reject;
  });
  const decoder = new TextDecoder();
  const read = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      text += decoder.decode(chunk, { stream: true });
      const m = /listening on [\d.]+:(\d+)/.exec(text);
      if (m) found(Number(m[1]));
    }
  };
  Promise.all([read(child.stdout), read(child.stderr)]).then(() =>
    failed(new Error(`the task ended before listening:\n${text}`))
  );
  return { child, output: () => text, listening };
}

/** The pids of processes whose command line contains `needle`. */
async function pidsWith(needle: string): Promise<number[]> {
  const r = await runCommand("ps", ["-eo", "pid=,args="], { timeoutMs: 10_000 });
  return r.stdout.split("\n").filter((l) => l.includes(needle) && !l.includes("ps -eo"))
    .map((l) => Number(l.trim().split(/\s+/)[0]));
}

async function gone(needle: string, timeoutMs = 15_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if ((await pidsWith(needle)).length === 0) return true;
    await sleep(100);
  }
  return false;
}

Deno.test("deno task start: files outside the repository, TLS, signals", async (t) => {
  await using pg = await startPostgres();
  const dir = await configDir(pg);
  const files = ["-c", `${dir}/pgdog.toml`, "-u", `${dir}/users.toml`];
  try {
    await t.step("configcheck through the task", async () => {
      const r = await runCommand(Deno.execPath(), ["task", "start", "configcheck", ...files], {
        cwd: REPO_ROOT,
        env: { NO_COLOR: "1" },
        timeoutMs: 60_000,
      });
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /configuration is valid/);
    });

    for (const [how, signal] of [["Ctrl-C", "SIGINT"], ["SIGTERM", "SIGTERM"]] as const) {
      await t.step(`serves clients over TLS; ${how} stops it once`, async () => {
        const task = startTask(files);
        try {
          const port = await task.listening;
          const target = {
            host: "127.0.0.1",
            port,
            user: USER,
            password: PASSWORD,
            database: "app",
          };
          // Over TLS: pgdog could read the certificate and key its configuration names.
          const r = await psql(target, "SELECT 1", { sslmode: "require" });
          assert.equal(r.code, 0, `${r.stderr}\n${task.output()}`);
          // pgdog itself may read its folder and the configuration's files, nothing else.
          const [pid] = await pidsWith(`mod.ts -c ${dir}/pgdog.toml`);
          assert.ok(pid, task.output());
          const args = await Deno.readTextFile(`/proc/${pid}/cmdline`);
          const read = args.split("\0").find((a) => a.startsWith("--allow-read="));
          // It may run deno (plugin processes) and pg_dump (resharding's schema sync), nothing else.
          assert.deepEqual(
            args.split("\0").filter((a) => a.startsWith("--allow-run")),
            ["--allow-run=deno,pg_dump"],
          );
          // The configuration files, and the backups and temporary files of a cutover's save.
          const saved = ["pgdog", "users"].flatMap((f) =>
            [".toml", ".toml.tmp", ".bak.toml", ".bak.toml.tmp"].map((e) => `${dir}/${f}${e}`)
          );
          assert.deepEqual(
            read?.slice("--allow-read=".length).split(",").sort(),
            [
              ...saved,
              `${dir}/server.key`,
              `${dir}/server.pem`,
              REPO_ROOT.replace(/\/$/, ""),
            ].sort(),
          );
          // It may write those files (a cutover with cutover_save_config), nothing else.
          const write = args.split("\0").find((a) => a.startsWith("--allow-write="));
          assert.deepEqual(write?.slice("--allow-write=".length).split(",").sort(), saved.sort());
          if (signal === "SIGINT") Deno.kill(-task.child.pid, "SIGINT"); // the whole group
          else Deno.kill(task.child.pid, "SIGTERM");
          const status = await task.child.status;
          assert.ok(await gone(`mod.ts -c ${dir}/pgdog.toml`), "pgdog still runs");
          const out = task.output();
          assert.match(out, /shutdown complete/);
          assert.doesNotMatch(out, /second signal/);
          assert.ok(status.code === 0 || status.signal !== null, `exit ${JSON.stringify(status)}`);
        } finally {
          try {
            Deno.kill(-task.child.pid, "SIGKILL");
          } catch {
            // Gone.
          }
          await task.child.status;
        }
      });
    }

    await t.step("pgdog does not outlive a killed launcher", async () => {
      const task = startTask(files);
      try {
        await task.listening;
        const [launcher] = await pidsWith(`src/launch.ts -c ${dir}/pgdog.toml`);
        assert.ok(launcher, task.output());
        Deno.kill(launcher, "SIGKILL");
        assert.ok(await gone(`mod.ts -c ${dir}/pgdog.toml`), "pgdog outlived its launcher");
      } finally {
        try {
          Deno.kill(-task.child.pid, "SIGKILL");
        } catch {
          // Gone.
        }
        await task.child.status;
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("run by hand without read access: the command line that grants it", async () => {
  await using pg = await startPostgres();
  const dir = await configDir(pg);
  try {
    // runPgdog grants its own temporary folder and the repository, not `dir`.
    const r = await runPgdog(["configcheck"], {
      configText: await Deno.readTextFile(`${dir}/pgdog.toml`),
      usersText: await Deno.readTextFile(`${dir}/users.toml`),
    });
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      new RegExp(`tls_certificate: cannot read "${dir}/server.pem": Requires read access`),
    );
    assert.doesNotMatch(r.stderr, /run again with the --allow-read flag/);
    const hint = r.stderr.split("\n").find((l) => l.trim().startsWith("deno run "));
    assert.ok(hint, r.stderr);
    assert.match(r.stderr, /pgdog: no read access .* `deno task start` grants read access/);
    const read = /--allow-read=(\S+)/.exec(hint)![1].split(",");
    for (const file of [`${dir}/server.pem`, `${dir}/server.key`]) {
      assert.ok(read.includes(file), `${file} not in ${hint}`);
    }
    assert.match(hint, /\/mod\.ts -c \S+pgdog\.toml -u \S+users\.toml configcheck$/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
