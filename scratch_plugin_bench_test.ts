import { pgbench, startPostgres, startProxy } from "./tests/harness/mod.ts";
Deno.test("scratch", async () => {
  await using pg = await startPostgres({ settings: { max_connections: 200 } });
  const direct = { host: pg.host, port: pg.port, user: "postgres", password: "", database: "postgres" };
  await pgbench(direct, ["-i", "-s", "5", "-q"]);
  const mk = (plugins: unknown[], iso = "process") => startProxy({
    config: { general: { idle_healthcheck_interval: 0 }, databases: [{ name: "postgres", host: pg.host, port: pg.port, pool_size: 10 }], plugins: plugins.map((p) => ({ ...(p as object), isolation: iso })) },
    users: { users: [{ name: "postgres", password: "pw", database: "postgres" }] },
    denoFlags: ["--allow-run"],
  });
  await using a = await mk([]);
  await using b = await mk([{ name: "t", path: "/work/main/tests/plugins/trivial.ts" }]);
  await using w = await mk([{ name: "t", path: "/work/main/tests/plugins/trivial.ts" }], "worker");
  for (let round = 0; round < 2; round++) {
    for (const [name, p] of [["none", a], ["process", b], ["worker", w]] as const) {
      for (const mode of ["simple", "extended"]) {
        const r = await pgbench(p.target({ user: "postgres", password: "pw", database: "postgres" }), ["-S", "-M", mode, "-c", "16", "-j", "2", "-T", "4", "-n"]);
        const tps = /tps = ([\d.]+)/.exec(r.stdout)?.[1];
        console.log(name, mode, tps, r.code);
      }
    }
  }
});
