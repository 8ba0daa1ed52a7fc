import assert from "node:assert/strict";
import {
  absolutePath,
  commandOf,
  configPathsOf,
  PGDOG_ROOT,
  pgdogArgs,
  readErrorMessage,
  readGrants,
  shellLine,
  writeGrants,
} from "./read_grants.ts";

Deno.test("read grants: the command line's files and command", () => {
  assert.deepEqual(configPathsOf([]), { config: "pgdog.toml", users: "users.toml" });
  assert.deepEqual(configPathsOf(["-c", "/etc/a.toml", "--users=/etc/b.toml"]), {
    config: "/etc/a.toml",
    users: "/etc/b.toml",
  });
  assert.equal(commandOf(["-c", "/etc/a.toml", "-u", "b.toml"]), "run");
  assert.equal(commandOf(["-c", "/etc/a.toml", "configcheck"]), "configcheck");
  assert.equal(commandOf(["route", "-D", "app", "file.sql"]), "route");
  assert.equal(commandOf(["--database_url", "postgres://x/y", "run"]), "run");
  assert.equal(absolutePath("../x/./y", "/a/b"), "/a/x/y");
});

Deno.test("read grants: folders, both files, TLS files and plugin files; nothing more", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pgdog-read-grants-" });
  try {
    await Deno.writeTextFile(
      `${dir}/pgdog.toml`,
      `[general]\ntls_certificate = "certs/server.pem"\ntls_private_key = "/keys/server.key"\n` +
        `tls_server_ca_certificate = "ca.pem"\n\n` +
        `[[plugins]]\nname = "a"\npath = "/opt/plugins/a/mod.ts"\nconfig = "a.toml"\n\n` +
        `[[plugins]]\nname = "b"\npath = "jsr:@x/b"\nisolation = "worker"\n` +
        `permissions = { read = ["/srv/data"] }\n`,
    );
    const grants = readGrants({ config: `${dir}/pgdog.toml`, users: "users.toml" }, { cwd: dir });
    const expected = [
      PGDOG_ROOT!,
      dir, // the working directory holds pgdog.toml, users.toml, certs/, ca.pem and a.toml
      "/keys/server.key",
      "/opt/plugins/a",
      "/opt/plugins/deno.json",
      "/opt/plugins/deno.jsonc",
      "/opt/plugins/deno.lock",
      "/opt/deno.json",
      "/opt/deno.jsonc",
      "/opt/deno.lock",
      "/deno.json",
      "/deno.jsonc",
      "/deno.lock",
      "/srv/data",
    ];
    assert.deepEqual(grants.sort(), [...new Set(expected)].sort());
    // Without a readable pgdog.toml: the folders and the two files.
    const bare = readGrants({ config: "/nowhere/pgdog.toml", users: "/nowhere/users.toml" }, {
      cwd: dir,
    });
    assert.deepEqual(
      bare.sort(),
      [
        PGDOG_ROOT!,
        dir,
        "/nowhere/pgdog.toml",
        "/nowhere/users.toml",
        // A cutover's save of the swapped configuration: backups and temporary files.
        "/nowhere/pgdog.toml.tmp",
        "/nowhere/pgdog.bak.toml",
        "/nowhere/pgdog.bak.toml.tmp",
        "/nowhere/users.toml.tmp",
        "/nowhere/users.bak.toml",
        "/nowhere/users.bak.toml.tmp",
      ].sort(),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("read grants: the command line and the messages", () => {
  const args = pgdogArgs(["-c", "/etc/pgdog/pgdog.toml"], ["/opt/pgdog", "/etc/pgdog/pgdog.toml"]);
  assert.deepEqual(args.slice(-4), [
    "--allow-read=/opt/pgdog,/etc/pgdog/pgdog.toml",
    `${PGDOG_ROOT}/mod.ts`,
    "-c",
    "/etc/pgdog/pgdog.toml",
  ]);
  assert.ok(args.includes("--allow-env=PGDOG_*,NODE_ID"));
  assert.equal(shellLine(["deno", "run", "a b", "it's"]), `deno run 'a b' 'it'\\''s'`);
  assert.equal(
    readErrorMessage(
      new Error('Requires read access to "/x", run again with the --allow-read flag'),
    ),
    'Requires read access to "/x"',
  );
});

Deno.test("write grants: the configuration files, their backups and temporary files; the two-phase commit log's folder, read and written", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pgdog-write-grants-" });
  try {
    await Deno.writeTextFile(
      `${dir}/pgdog.toml`,
      `[general]\ntwo_phase_commit_wal_dir = "/var/lib/pgdog-wal"\n`,
    );
    const paths = { config: `${dir}/pgdog.toml`, users: "users.toml" };
    const saved = [
      `${dir}/pgdog.toml`,
      `${dir}/pgdog.toml.tmp`,
      `${dir}/pgdog.bak.toml`,
      `${dir}/pgdog.bak.toml.tmp`,
      "/srv/users.toml",
      "/srv/users.toml.tmp",
      "/srv/users.bak.toml",
      "/srv/users.bak.toml.tmp",
    ];
    assert.deepEqual(
      writeGrants(paths, { cwd: "/srv" }).sort(),
      [...saved, "/var/lib/pgdog-wal"].sort(),
    );
    const read = readGrants(paths, { cwd: "/srv" });
    assert.ok(read.includes("/var/lib/pgdog-wal"));
    // Renaming needs read access to both names; the working directory covers /srv's files.
    for (const path of saved) {
      assert.ok(read.some((r) => r === path || path.startsWith(`${r}/`)), path);
    }
    const args = pgdogArgs([], ["/opt/pgdog"], { write: ["/srv/wal"] });
    assert.ok(args.includes("--allow-write=/srv/wal"));
    assert.ok(!pgdogArgs([], ["/opt/pgdog"]).some((a) => a.startsWith("--allow-write")));
    await Deno.writeTextFile(`${dir}/pgdog.toml`, `[general]\n`);
    assert.deepEqual(writeGrants(paths, { cwd: "/srv" }).sort(), saved.sort());
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
