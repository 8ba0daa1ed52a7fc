import assert from "node:assert/strict";
import { parse as parseToml } from "smol-toml";
import { loadConfig } from "../config/load.ts";
import {
  backupPathOf,
  savedPathsOf,
  saveSwapped,
  swapDatabases,
  swapInToml,
  tempPathOf,
} from "./config_swap.ts";
import { ReshardingError } from "./shards.ts";
import { readGrants, writeGrants } from "../config/read_grants.ts";

/** A pgdog.toml with a source (`prod`, 1 shard) and a destination (`prod_new`, 2 shards). */
const PGDOG_TOML = `# pgdog for the shop
[general]
host = "127.0.0.1"   # listen here
port = 6432
cutover_save_config = true

# the source: one shard
[[databases]]
name = "prod"
host = "127.0.0.1"
port = 5432
database_name = "shop"

[[databases]]
  name   =   'prod_new'     # new cluster, shard 0
  host = "10.0.0.1"
  database_name = "prod"   # the server's database is called prod: not a pgdog name
  shard = 0

[[ databases ]]
"name" = "prod_new"
host = "10.0.0.2"
database_name = "prod"
shard = 1

[[databases]]
name = "other" # untouched
host = "10.0.0.9"

[[sharded_tables]]
database = "prod"
name = "orders"
column = "customer_id"

[[sharded_tables]]
database = "prod_new"
name = "orders"
column = "customer_id"

[[sharded_tables.mapping]]
values = [1, 2, 3]   # "prod" in a comment stays
shard = 0

[[sharded_tables.mapping]]
shard = 1

[[sharded_mappings]]
database = "prod_new"
table = "orders"
column = "customer_id"
kind = "range"
start = 1000
end = 2000
shard = 1

[[sharded_schemas]]
database = "prod_new"
name = "prod"
shard = 0

[[omnisharded_tables]]
database = "prod_new"
tables = ["countries", "prod"]
sticky = true

[[omnisharded_tables]]
database = """prod"""
tables = [
  "currencies", # a comment inside an array
  'prod_new',
]

[[mirroring]]
source_db = "prod"
destination_db = "mirror"

[[plugins]]
name = "prod"
path = "plugins/x/mod.ts"
config = { database = "prod", nested = { name = "prod" } }
`;

const USERS_TOML = `# who may connect
[[users]]
name = "app"
database = "prod"
password = "secret \\"prod\\""

[[users]]
name = "app"
database = "prod_new" # the destination's own user
password = "secret"
schema_admin = true

[[users]]
name = "reader"
database = "\\u0070rod" # prod, escaped
password = "pw"

[admin]
name = "prod"
password = "admin"
`;

Deno.test("swapInToml: only the names change; comments, order, spacing and quotes stay", () => {
  const out = swapInToml(PGDOG_TOML, "prod", "prod_new");
  const expected = PGDOG_TOML
    .replace('\nname = "prod"\nhost = "127.0.0.1"', '\nname = "prod_new"\nhost = "127.0.0.1"')
    .replace("name   =   'prod_new'", "name   =   'prod'")
    .replace('"name" = "prod_new"', '"name" = "prod"')
    .replace('database = "prod"\nname = "orders"', 'database = "@"\nname = "orders"')
    .replace('database = "prod_new"\nname = "orders"', 'database = "prod"\nname = "orders"')
    .replace('database = "@"', 'database = "prod_new"')
    .replace('database = "prod_new"\ntable', 'database = "prod"\ntable')
    .replace('database = "prod_new"\nname = "prod"', 'database = "prod"\nname = "prod"')
    .replace('database = "prod_new"\ntables', 'database = "prod"\ntables')
    .replace('database = """prod"""', 'database = "prod_new"')
    .replace('source_db = "prod"', 'source_db = "prod_new"');
  assert.equal(out, expected);
  // Names elsewhere (server database names, schemas, tables, plugins, comments) stayed.
  assert.ok(out.includes(`database_name = "prod"   # the server's database is called prod`));
  assert.match(out, /tables = \["countries", "prod"\]/);
  assert.match(out, /'prod_new',\n\]/);
  assert.match(out, /config = \{ database = "prod", nested = \{ name = "prod" \} \}/);

  const users = swapInToml(USERS_TOML, "prod", "prod_new");
  assert.equal(
    users,
    USERS_TOML.replace('database = "prod"\n', 'database = "prod_new"\n')
      .replace('database = "prod_new" #', 'database = "prod" #')
      .replace('database = "\\u0070rod"', 'database = "prod_new"'),
  );
  assert.match(users, /\[admin\]\nname = "prod"/);
});

Deno.test("swapInToml: the swap is its own inverse; a name without the other is renamed", () => {
  for (const text of [PGDOG_TOML, USERS_TOML]) {
    const once = swapInToml(text, "prod", "prod_new");
    assert.notEqual(once, text);
    const twice = swapInToml(once, "prod", "prod_new");
    // Spellings the scanner had to re-quote (escapes, multi-line) come back as plain strings;
    // the documents are the same.
    assert.deepEqual(parseToml(twice), parseToml(text));
    assert.equal(swapInToml(twice, "prod_new", "prod"), once);
  }
  const only = '[[databases]]\nname = "a"\nhost = "h"\n';
  assert.equal(swapInToml(only, "a", "b"), '[[databases]]\nname = "b"\nhost = "h"\n');
  assert.equal(swapInToml(only, "x", "y"), only);
  assert.equal(swapInToml(only, "a", "a"), only);
});

Deno.test("swapInToml: inline tables, quotes needing escapes, CRLF, BOM, dates, odd values", () => {
  const inline =
    `databases = [\n  { name = "a", host = "h1" },\n  { name = 'b', host = "h2" },\n]\n` +
    `users = [{ name = "u", database = "a", databases = ["a", "b", "c"] }]\n`;
  assert.equal(
    swapInToml(inline, "a", "b"),
    `databases = [\n  { name = "b", host = "h1" },\n  { name = 'a', host = "h2" },\n]\n` +
      `users = [{ name = "u", database = "b", databases = ["b", "a", "c"] }]\n`,
  );
  // A literal string cannot hold a quote: the new name goes in a basic string.
  const literal = "[[databases]]\r\nname = 'a'\r\nhost = 'h'\r\n";
  assert.equal(
    swapInToml(literal, "a", `it's "q"`),
    `[[databases]]\r\nname = "it's \\"q\\""\r\nhost = 'h'\r\n`,
  );
  const bom = "\uFEFF[general]\nport = 1_000\nwhen = 1979-05-27 07:32:00Z\n" +
    'x = [[1, 2], ["a"]]\ny = """\n[[databases]]\nname = "a"\n"""\n' +
    "z = '''\nname = \"a\"'''\n[[databases]]\nname = \"a\" # [[users]]\nhost = \"h\"\n";
  assert.equal(swapInToml(bom, "a", "b"), bom.replace('name = "a" #', 'name = "b" #'));
  // Dotted keys and quoted header keys.
  const dotted = '[["users"]]\nname = "u"\n"database" = "a"\nx.database = "a"\n';
  assert.equal(
    swapInToml(dotted, "a", "b"),
    '[["users"]]\nname = "u"\n"database" = "b"\nx.database = "a"\n',
  );
  assert.throws(() => swapInToml("[[databases]\nname = 'a'", "a", "b"), ReshardingError);
  assert.throws(() => swapInToml("x = ", "a", "b"), /invalid TOML/);
});

Deno.test("swapDatabases: what loadConfig reads from the swapped files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pgdog-config-swap-" });
  try {
    const paths = { config: `${dir}/pgdog.toml`, users: `${dir}/users.toml` };
    await Deno.writeTextFile(paths.config, PGDOG_TOML);
    await Deno.writeTextFile(paths.users, USERS_TOML);
    const { config } = await loadConfig(paths);
    const swapped = swapDatabases(config, "prod", "prod_new");
    assert.deepEqual(swapDatabases(swapped, "prod", "prod_new"), config);
    assert.deepEqual(
      swapped.databases.map((d) => [d.name, d.host]),
      [["prod_new", "127.0.0.1"], ["prod", "10.0.0.1"], ["prod", "10.0.0.2"], [
        "other",
        "10.0.0.9",
      ]],
    );
    assert.deepEqual(swapped.users.map((u) => u.database), ["prod_new", "prod", "prod_new"]);
    assert.equal(config.databases[0].name, "prod", "the input is not changed");

    await Deno.writeTextFile(paths.config, swapInToml(PGDOG_TOML, "prod", "prod_new"));
    await Deno.writeTextFile(paths.users, swapInToml(USERS_TOML, "prod", "prod_new"));
    const reread = await loadConfig(paths);
    assert.deepEqual(reread.config, swapped);
    // The range rule of [[sharded_mappings]] followed its table to the new name.
    const orders = reread.config.sharded_tables.find((t) => t.database === "prod")!;
    assert.deepEqual(orders.mapping.map((m) => m.kind), ["list", "default", "range"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("saveSwapped: both files swapped, backups of the old ones, modes kept", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pgdog-config-swap-" });
  try {
    const configPath = `${dir}/pgdog.toml`;
    const usersPath = `${dir}/users.toml`;
    await Deno.writeTextFile(configPath, PGDOG_TOML);
    await Deno.writeTextFile(usersPath, USERS_TOML, { mode: 0o600 });
    await Deno.chmod(usersPath, 0o640);
    const saved = await saveSwapped({ configPath, usersPath, a: "prod", b: "prod_new" });
    assert.deepEqual(saved, {
      files: [configPath, usersPath],
      backups: [`${dir}/pgdog.bak.toml`, `${dir}/users.bak.toml`],
    });
    assert.equal(await Deno.readTextFile(configPath), swapInToml(PGDOG_TOML, "prod", "prod_new"));
    assert.equal(await Deno.readTextFile(usersPath), swapInToml(USERS_TOML, "prod", "prod_new"));
    assert.equal(await Deno.readTextFile(`${dir}/pgdog.bak.toml`), PGDOG_TOML);
    assert.equal(await Deno.readTextFile(`${dir}/users.bak.toml`), USERS_TOML);
    assert.equal((await Deno.stat(usersPath)).mode! & 0o777, 0o640);
    assert.equal((await Deno.stat(`${dir}/users.bak.toml`)).mode! & 0o777, 0o640);
    const names = [];
    for await (const entry of Deno.readDir(dir)) names.push(entry.name);
    assert.deepEqual(names.sort(), [
      "pgdog.bak.toml",
      "pgdog.toml",
      "users.bak.toml",
      "users.toml",
    ]);

    // Swapping back: the originals again; the backups hold the swapped texts.
    await saveSwapped({ configPath, usersPath, a: "prod", b: "prod_new" });
    assert.deepEqual(parseToml(await Deno.readTextFile(configPath)), parseToml(PGDOG_TOML));
    assert.equal(
      await Deno.readTextFile(`${dir}/users.bak.toml`),
      swapInToml(USERS_TOML, "prod", "prod_new"),
    );

    // A file naming neither database, or missing, is left alone; nothing is written.
    const untouched = await saveSwapped({
      configPath,
      usersPath: `${dir}/none.toml`,
      a: "x",
      b: "y",
    });
    assert.deepEqual(untouched, { files: [], backups: [] });

    // An invalid file: an error naming it, and neither file changed.
    const before = await Deno.readTextFile(configPath);
    await Deno.writeTextFile(usersPath, "[[users]\n");
    await assert.rejects(
      () => saveSwapped({ configPath, usersPath, a: "prod", b: "prod_new" }),
      (e: Error) => e instanceof ReshardingError && e.message.startsWith(`${usersPath}: invalid`),
    );
    assert.equal(await Deno.readTextFile(configPath), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("saveSwapped: the backup and temporary files' names", () => {
  assert.equal(backupPathOf("/etc/pgdog/pgdog.toml"), "/etc/pgdog/pgdog.bak.toml");
  assert.equal(backupPathOf("users.toml"), "users.bak.toml");
  assert.equal(backupPathOf("/etc/pgdog.d/config"), "/etc/pgdog.d/config.bak.toml");
  assert.equal(backupPathOf("/x/.pgdog"), "/x/.pgdog.bak.toml");
  assert.equal(tempPathOf("/x/pgdog.toml"), "/x/pgdog.toml.tmp");
  assert.deepEqual(savedPathsOf("/x/pgdog.toml"), [
    "/x/pgdog.toml",
    "/x/pgdog.toml.tmp",
    "/x/pgdog.bak.toml",
    "/x/pgdog.bak.toml.tmp",
  ]);
});

Deno.test("saveSwapped: pgdog's own grants (deno task start) allow it, elsewhere nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pgdog-config-swap-files-" });
  const cwd = await Deno.makeTempDir({ prefix: "pgdog-config-swap-cwd-" });
  try {
    const paths = { config: `${dir}/pgdog.toml`, users: `${dir}/users.toml` };
    await Deno.writeTextFile(paths.config, PGDOG_TOML);
    await Deno.writeTextFile(paths.users, USERS_TOML);
    await Deno.writeTextFile(`${dir}/other.toml`, "x = 1\n");
    const module = new URL("./config_swap.ts", import.meta.url).href;
    await Deno.writeTextFile(
      `${cwd}/save.ts`,
      `import { saveSwapped } from ${JSON.stringify(module)};\n` +
        `await saveSwapped({ configPath: Deno.args[0], usersPath: Deno.args[1], a: "prod", ` +
        `b: "prod_new" });\n` +
        `try { await Deno.writeTextFile(Deno.args[2], "y = 2\\n"); console.log("wrote"); }\n` +
        `catch (e) { console.log(e instanceof Deno.errors.NotCapable ? "denied" : String(e)); }\n`,
    );
    // The files are outside the working directory: only the grants for them cover them.
    const grants = { config: paths.config, users: paths.users };
    const read = readGrants(grants, { cwd });
    const write = writeGrants(grants, { cwd });
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-prompt",
        `--config=${new URL("../../deno.json", import.meta.url).pathname}`,
        `--allow-read=${read.join(",")}`,
        `--allow-write=${write.join(",")}`,
        `${cwd}/save.ts`,
        paths.config,
        paths.users,
        `${dir}/other.toml`,
      ],
      cwd,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    assert.equal(out.code, 0, dec.decode(out.stderr));
    assert.equal(dec.decode(out.stdout).trim(), "denied");
    assert.equal(await Deno.readTextFile(paths.config), swapInToml(PGDOG_TOML, "prod", "prod_new"));
    assert.equal(await Deno.readTextFile(`${dir}/users.bak.toml`), USERS_TOML);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cwd, { recursive: true });
  }
});

Deno.test("swapInToml: random spellings of the same files", () => {
  // A small seeded generator: the same cases on every run.
  let seed = 12345;
  const random = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  const pick = <T>(items: readonly T[]): T => items[random(items.length)];
  const names = ["a", "b", "c", "a b", "b'", 'a"', "é"];
  const spell = (name: string): string => {
    const kinds = ["basic", "literal", "multi", "multi_literal", "escaped"];
    const kind = pick(kinds);
    const basic = JSON.stringify(name);
    if (kind === "literal" && !name.includes("'")) return `'${name}'`;
    if (kind === "multi_literal" && !name.includes("'")) return `'''${name}'''`;
    if (kind === "multi") return `"""${basic.slice(1, -1)}"""`;
    if (kind === "escaped") {
      return `"\\u${name.codePointAt(0)!.toString(16).padStart(4, "0")}${basic.slice(2, -1)}"`;
    }
    return basic;
  };
  const sections = [
    ["databases", "name"],
    ["sharded_tables", "database"],
    ["sharded_mappings", "database"],
    ["sharded_schemas", "database"],
    ["omnisharded_tables", "database"],
    ["mirroring", "source_db"],
    ["users", "database"],
  ] as const;
  let changed = 0;
  for (let round = 0; round < 200; round++) {
    const start = pick(["", "# top\n", "\uFEFF"]);
    let roots = "";
    let text = pick(["", "[general]\nport = 6432 # 'a'\n\n"]);
    const inline: string[] = [];
    const headers = new Set<string>();
    for (let i = 0; i < 8; i++) {
      const [section, key] = pick(sections);
      const eq = pick([" = ", "=", "   =\t"]);
      const name = spell(pick(names));
      const other = spell(pick(names));
      if (random(4) === 0 && !inline.includes(section)) {
        // An inline array of tables: its section cannot have headers too.
        if (headers.has(section)) continue;
        inline.push(section);
        roots += `${section} = [ { ${key}${eq}${name}, host = ${other} },\n  # "a"\n` +
          `  {${key}=${spell(pick(names))}} ]\n`;
        continue;
      }
      if (inline.includes(section)) continue;
      headers.add(section);
      text += `${pick(["", "\n", "# a\n"])}[[${pick([section, ` ${section} `, `"${section}"`])}]]` +
        `${pick(["", " # b"])}\n`;
      text += `host${eq}${other}\n${key}${eq}${name}${pick(["", "   # a", "\t#b"])}\n`;
      if (section === "users") text += `databases = [${spell(pick(names))}, ${other}]\n`;
    }
    text = start + roots + text;
    let swapped: string;
    try {
      swapped = swapInToml(text, "a", "b");
    } catch (e) {
      throw new Error(`${(e as Error).message} in:\n${text}`);
    }
    if (swapped !== text) changed++;
    // Lines without a name key are the same; the swap undone is the same document.
    const before = text.split("\n");
    const after = swapped.split("\n");
    assert.equal(after.length, before.length);
    for (const [i, line] of before.entries()) {
      if (!/(name|database|databases|source_db)\s*=/.test(line)) assert.equal(after[i], line);
    }
    assert.deepEqual(
      parseToml(swapInToml(swapped, "a", "b").replace(/^\uFEFF/, "")),
      parseToml(text.replace(/^\uFEFF/, "")),
    );
  }
  assert.ok(changed > 150, `only ${changed} of 200 files had a name to swap`);
});
