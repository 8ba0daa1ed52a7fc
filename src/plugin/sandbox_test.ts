import { deepEqual, equal } from "node:assert/strict";
import { acceptChannel, startProcess } from "./sandbox.ts";

const encoder = new TextEncoder();

async function dial(port: number, first: string): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(encoder.encode(first));
  return conn;
}

Deno.test("a plugin channel takes only the connection that sends the token first", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const token = crypto.randomUUID();
  const accepted = acceptChannel(listener, token);
  // Another local process, with a wrong token: pgdog closes it.
  const stranger = await dial(port, `${crypto.randomUUID()}\n`);
  equal(await stranger.read(new Uint8Array(8)), null);
  stranger.close();
  const plugin = await dial(port, `${token}\n{"id":0}`);
  const { conn, rest } = await accepted;
  deepEqual(new TextDecoder().decode(rest), '{"id":0}');
  await plugin.write(encoder.encode("more"));
  const buf = new Uint8Array(8);
  equal(new TextDecoder().decode(buf.subarray(0, (await conn.read(buf))!)), "more");
  plugin.close();
  conn.close();
  listener.close();
});

Deno.test("a plugin process answers over loopback, and over pipes where it must", async () => {
  for (const pipes of [false, true]) {
    const sandbox = await startProcess({
      name: "trivial",
      specifier: new URL("../../tests/plugins/directives.ts", import.meta.url).href,
      folder: new URL("../../tests/plugins", import.meta.url).pathname,
      grants: { read: [], write: [], net: [], env: [], sys: false },
      memoryMb: 64,
      onOutput: () => {},
      pipes,
    });
    equal(sandbox.channel, pipes ? "pipes" : "loopback");
    // Frames larger than one read, and many in flight at once, each get their own answer.
    const padding = "x".repeat(300_000);
    const answers = await Promise.all(
      [0, 1, 2, 3].map((shard) =>
        sandbox.call(
          "route",
          JSON.stringify([{ query: `/* plugin: shard=${shard} */ select '${padding}'` }]),
          10_000,
        )
      ),
    );
    deepEqual(answers, [{ shard: 0 }, { shard: 1 }, { shard: 2 }, { shard: 3 }]);
    sandbox.kill();
    await sandbox.ended;
  }
});
