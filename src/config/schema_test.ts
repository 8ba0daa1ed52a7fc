import { deepEqual, equal, match, ok } from "node:assert/strict";
import {
  ADMIN,
  DATABASES,
  describeType,
  findKey,
  GENERAL,
  renderReference,
  sectionHeader,
  SECTIONS,
  UNSUPPORTED_SECTIONS,
  USERS,
  withDefaults,
} from "./schema.ts";

const README = new URL("../../README.md", import.meta.url);
const START = "<!-- config-reference:start -->\n";
const END = "<!-- config-reference:end -->";

Deno.test("README's configuration reference is the rendered schema (UPDATE_REFERENCE=1 rewrites it)", async () => {
  // deno fmt keeps a blank line after the start marker and before the end marker.
  const rendered = "\n" + renderReference({ headingLevel: 2 }) + "\n";
  const readme = await Deno.readTextFile(README);
  const from = readme.indexOf(START);
  const to = readme.indexOf(END);
  ok(from >= 0 && to > from, "README.md lacks the config-reference markers");
  const section = readme.slice(from + START.length, to);
  const envAllowed = Deno.permissions.querySync({ name: "env", variable: "UPDATE_REFERENCE" });
  if (envAllowed.state === "granted" && Deno.env.get("UPDATE_REFERENCE") === "1") {
    await Deno.writeTextFile(
      README,
      readme.slice(0, from + START.length) + rendered + readme.slice(to),
    );
    return;
  }
  equal(
    section,
    rendered,
    "README.md's configuration reference is stale: run UPDATE_REFERENCE=1 deno test --allow-read " +
      "--allow-write --allow-env src/config/schema_test.ts",
  );
});

Deno.test("the reference lists every key, alias and PgDog-only name", () => {
  const rendered = renderReference();
  for (const section of SECTIONS.flatMap((spec) => [spec, ...(spec.subsections ?? [])])) {
    ok(rendered.includes(`\`${sectionHeader(section)}\``), section.name);
    for (const key of section.keys) {
      ok(rendered.includes(`\`${key.name}\``), key.name);
      for (const alias of key.aliases ?? []) ok(rendered.includes(`\`${alias}\``), alias);
    }
    for (const name of section.unsupported) ok(rendered.includes(`\`${name}\``), name);
  }
  match(rendered, /\| `port` +\| integer 0\.\.65535 +\| `6432` +\|/);
  match(rendered, /\| `database_name` +\| string +\| same as `name` +\|/);
  match(rendered, /\| `pooler_mode` +\| `transaction` \\\| `session` +\|/);
  ok(rendered.includes("`[[sharded_tables.mapping]]`"));
  ok(rendered.includes("`[[sharded_mappings]]` or `[[sharded_mapping]]`"));
  match(rendered, /\| `shard` +\| integer >= 0 +\| required unless `all = true` +\|/);
  match(rendered, /\| `hasher` +\| `postgres` \\\| `plugin:<name>` +\| `"postgres"` +\|/);
  ok(rendered.includes("```toml\n[[sharded_tables]]\n"));
  ok(rendered.endsWith("\n"));
});

Deno.test("schema tables are consistent", () => {
  for (const section of SECTIONS.flatMap((spec) => [spec, ...(spec.subsections ?? [])])) {
    const names = new Set<string>();
    for (const key of section.keys) {
      for (const name of [key.name, ...(key.aliases ?? [])]) {
        ok(!names.has(name), `${section.name}.${name} is listed twice`);
        names.add(name);
      }
      ok(key.description.length > 0 && !key.description.includes("\n"), key.name);
      ok(!(key.required && key.default !== undefined), `${key.name}: required with default`);
    }
    for (const name of section.unsupported) {
      ok(!names.has(name), `${section.name}.${name} is both supported and unsupported`);
    }
    equal(new Set(section.unsupported).size, section.unsupported.length);
  }
  const sectionNames = SECTIONS.flatMap((section) => [section.name, ...(section.aliases ?? [])]);
  equal(new Set(sectionNames).size, sectionNames.length);
  for (const section of UNSUPPORTED_SECTIONS) ok(!sectionNames.includes(section.name));
});

Deno.test("findKey resolves aliases", () => {
  equal(findKey(GENERAL, "max_pool_size")?.name, "default_pool_size");
  equal(findKey(DATABASES, "max_pool_size")?.name, "pool_size");
  equal(findKey(USERS, "max_pool_size")?.name, "pool_size");
  equal(findKey(ADMIN, "max_pool_size"), undefined);
});

Deno.test("withDefaults fills defaults and defaultFrom, and leaves optional keys unset", () => {
  deepEqual(withDefaults(DATABASES, { name: "shop", host: "db" }), {
    name: "shop",
    host: "db",
    port: 5432,
    database_name: "shop",
    role: "primary",
    shard: 0,
    lb_weight: 255,
  });
  deepEqual(withDefaults(ADMIN, {}), { name: "admin", user: "admin" });
  equal(withDefaults(GENERAL, {}).server_lifetime, 86_400_000);
});

Deno.test("describeType", () => {
  equal(describeType({ kind: "integer", min: 0, max: 65535 }), "an integer from 0 to 65535");
  equal(describeType({ kind: "integer", min: 1 }), "an integer >= 1");
  equal(describeType({ kind: "integer", max: 9 }), "an integer <= 9");
  equal(describeType({ kind: "integer" }), "an integer");
  equal(describeType({ kind: "enum", values: ["a", "b"] }), "one of a, b");
  equal(describeType({ kind: "string_list" }), "a list of strings");
  equal(describeType({ kind: "boolean" }), "true or false");
});
