/**
 * `deno run -A bench/round_trip.ts [count]`: what one round trip between two Deno processes costs,
 * the floor under a process plugin's call (bench/profile.md). This process writes a 600-byte
 * message and waits for it to come back from a child that echoes it, `count` times (20,000 by
 * default), over TCP loopback and over a Unix socket, and prints the round trip's time and this
 * process's CPU per round trip (user + system, from /proc/self/stat).
 *
 * @module
 */

import { processCpuMs } from "./cpu_time.ts";

const count = Number(Deno.args[0] ?? 20_000);
const MESSAGE_BYTES = 600;

if (Deno.args[0] === "echo") {
  await echo(Deno.args[1], Deno.args[2]);
  Deno.exit(0);
}

/** The child: connects and sends back whatever it reads. */
async function echo(kind: string, address: string): Promise<void> {
  const conn = kind === "unix"
    ? await Deno.connect({ transport: "unix", path: address })
    : await Deno.connect({ hostname: "127.0.0.1", port: Number(address) });
  if ("setNoDelay" in conn) conn.setNoDelay(true);
  const buf = new Uint8Array(64 * 1024);
  for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
    for (let off = 0; off < n;) off += await conn.write(buf.subarray(off, n));
  }
}

async function measure(kind: "tcp" | "unix"): Promise<void> {
  const dir = kind === "unix" ? Deno.makeTempDirSync({ prefix: "pgdog-round-trip-" }) : "";
  const listener = kind === "unix"
    ? Deno.listen({ transport: "unix", path: `${dir}/socket` })
    : Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const address = kind === "unix" ? `${dir}/socket` : String((listener.addr as Deno.NetAddr).port);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).pathname, "echo", kind, address],
  }).spawn();
  const conn = await listener.accept();
  if ("setNoDelay" in conn) conn.setNoDelay(true);
  const message = new Uint8Array(MESSAGE_BYTES);
  const buf = new Uint8Array(64 * 1024);
  const trip = async (): Promise<void> => {
    for (let off = 0; off < message.length;) off += await conn.write(message.subarray(off));
    for (let got = 0; got < message.length;) got += (await conn.read(buf)) ?? message.length;
  };
  for (let i = 0; i < 1000; i++) await trip();
  const cpu = processCpuMs();
  const start = performance.now();
  for (let i = 0; i < count; i++) await trip();
  const wall = performance.now() - start;
  const used = processCpuMs() - cpu;
  console.log(
    `${kind.padEnd(4)}: round trip ${(wall * 1000 / count).toFixed(1)} µs, ` +
      `this process's CPU ${(used * 1000 / count).toFixed(1)} µs per round trip`,
  );
  conn.close();
  listener.close();
  await child.status;
  if (dir) Deno.removeSync(dir, { recursive: true });
}

for (let round = 0; round < 3; round++) {
  await measure("tcp");
  await measure("unix");
}
