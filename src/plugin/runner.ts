/**
 * The entry of a plugin's own Deno process (`isolation = "process"`): reads request frames on
 * stdin, answers on stdout. The process runs with only the permissions the plugin is granted.
 *
 * Usage (by pgdog): `deno run <flags> runner.ts <plugin specifier> <port>|pipes revoke|keep
 * [<host>...]`: with a port, frames go over a loopback connection to it (faster), opened with the
 * token pgdog writes on stdin, after which the permission to reach that port is revoked (`revoke`);
 * with `pipes`, over stdin and stdout. The hosts are import grants given up once the plugin is
 * loaded.
 *
 * @module
 */

import { callHook, describeError, invokeHook, loadGuest } from "./guest.ts";
import { FrameReader, FrameWriter } from "./frames.ts";
import { type ByteStream, writeAll } from "../net/stream.ts";

// stdout carries frames: whatever the plugin prints goes to stderr (pgdog logs it).
const toStderr = (...args: unknown[]): void => console.error(...args);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;

/** The loopback connection pgdog listens for, opened with its token (the first line on stdin). */
async function connect(port: number): Promise<ByteStream> {
  const buf = new Uint8Array(64);
  let got = 0;
  while (!buf.subarray(0, got).includes(10)) {
    const n = await Deno.stdin.read(buf.subarray(got));
    if (n === null || got + n >= buf.length) throw new Error("no channel token on stdin");
    got += n;
  }
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  await writeAll(conn, buf.subarray(0, buf.indexOf(10) + 1));
  // The port was granted for this connection only (unless the plugin's own grants cover it).
  if (Deno.args[2] === "revoke") {
    Deno.permissions.revokeSync({ name: "net", host: `127.0.0.1:${port}` });
  }
  return conn;
}

// Connected before the plugin's module runs: its code never gets the token.
const channel: ByteStream = Deno.args[1] === "pipes"
  ? { read: (b) => Deno.stdin.read(b), write: (b) => Deno.stdout.write(b), close: () => {} }
  : await connect(Number(Deno.args[1]));
const out = new FrameWriter((bytes) => writeAll(channel, bytes));

function reply(json: string): void {
  out.send(json);
}

function answer(id: number, op: string, args: unknown[]): void {
  const ok = (value: unknown): void => reply(`{"id":${id},"ok":${JSON.stringify(value ?? null)}}`);
  const failed = (e: unknown): void => reply(JSON.stringify({ id, error: describeError(e) }));
  try {
    const value = invokeHook(loaded.plugin, op, args);
    if (value instanceof Promise) value.then(ok, failed);
    else ok(value);
  } catch (e) {
    failed(e);
  }
}

const specifier = Deno.args[0];
let loaded: Awaited<ReturnType<typeof loadGuest>>;
try {
  loaded = await loadGuest(specifier, { loadOnly: Deno.args.slice(3) });
} catch (e) {
  reply(JSON.stringify({ id: 0, error: e instanceof Error ? e.message : String(e) }));
  await out.flushed();
  Deno.exit(3);
}
reply(JSON.stringify({ id: 0, ok: loaded.hello }));

const reader = new FrameReader();
const buf = new Uint8Array(64 * 1024);
for (;;) {
  const n = await channel.read(buf);
  if (n === null) break;
  for (const text of reader.push(buf.subarray(0, n))) {
    let request: { id: number; op: string; args: unknown[] };
    try {
      request = JSON.parse(text);
    } catch (e) {
      // (A tree too deep for JSON.parse's stack, say): that call fails, the plugin goes on.
      const id = Number(/^\{"id":(\d+)/.exec(text)?.[1] ?? 0);
      reply(JSON.stringify({ id, error: describeError(e) }));
      continue;
    }
    answer(request.id, request.op, request.args);
  }
}
await callHook(loaded.plugin, "shutdown", []).catch(() => {});
await out.flushed();
Deno.exit(0);
