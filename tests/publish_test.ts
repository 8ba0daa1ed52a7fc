/**
 * `deno publish --dry-run` of pgdog's package and of each example plugin: JSR's own checks (slow
 * types in the public API, imports a published package can resolve, a license, its files). Every
 * package must pass whole: the project is MIT-licensed (LICENSE), and each deno.json says so.
 */

import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url).pathname;

/** pgdog's package and the example plugins, as folders of the repository. */
function packages(): string[] {
  const plugins = [...Deno.readDirSync(`${ROOT}plugins`)]
    .filter((e) => e.isDirectory)
    .map((e) => `plugins/${e.name}`)
    .sort();
  return [".", ...plugins];
}

/** `deno publish --dry-run` in `cwd`: its exit code and everything it printed. */
async function dryRun(cwd: string): Promise<{ code: number; text: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["publish", "--dry-run", "--allow-dirty"],
    cwd,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: out.code, text: decoder.decode(out.stdout) + decoder.decode(out.stderr) };
}

Deno.test("deno publish --dry-run: clean for pgdog and every example plugin", async (t) => {
  for (const dir of packages()) {
    await t.step(dir === "." ? "@pgdog/pgdog" : dir, async () => {
      const config = JSON.parse(await Deno.readTextFile(`${ROOT}${dir}/deno.json`));
      assert.equal(config.license, "MIT", `${dir}/deno.json names no license`);
      const { code, text } = await dryRun(`${ROOT}${dir}`);
      const errors = [...text.matchAll(/^error\[([a-z-]+)\]/gm)].map((m) => m[1]);
      assert.deepEqual(errors, [], text.slice(-4000));
      // The one warning: the runner imports a plugin by the specifier its configuration names,
      // which no publish-time analysis can know (deno has no way to mark it intended).
      const warnings = [...text.matchAll(/^warning\[([a-z-]+)\][^\n]*\n\s*--> (\S+?):\d+/gm)]
        .map((m) => `${m[1]} ${m[2].slice(ROOT.length)}`);
      assert.deepEqual(
        warnings,
        dir === "." ? ["unanalyzable-dynamic-import src/plugin/guest.ts"] : [],
        text.slice(-4000),
      );
      assert.equal(code, 0, text.slice(-4000));
      assert.match(text, /Dry run complete/);
    });
  }
});

Deno.test("pgdog's published files: its code, with what it loads by URL; no tests or configs", async () => {
  // A copy, so that files a checkout has and a package must not (tests, configs) are there.
  const dir = await Deno.makeTempDir({ prefix: "pgdog-publish-" });
  try {
    const copy = [
      "mod.ts",
      "src",
      "tests",
      "plugins",
      "README.md",
      "LICENSE",
      "deno.json",
      "deno.lock",
      "users.toml",
    ];
    const cp = await new Deno.Command("cp", { args: ["-r", ...copy, dir], cwd: ROOT }).output();
    assert.equal(cp.code, 0, new TextDecoder().decode(cp.stderr));
    await Deno.symlink(`${ROOT}node_modules`, `${dir}/node_modules`);
    const { code, text } = await dryRun(dir);
    assert.equal(code, 0, text.slice(-4000));
    const listed = text.slice(text.indexOf("Simulating publish of @pgdog/pgdog@"));
    const files = [...listed.matchAll(/file:\/\/(\S+)/g)]
      .map((m) => m[1].slice(dir.length + 1))
      .filter((f) => !f.startsWith("plugins/"));
    const loadedByUrl = [
      "mod.ts",
      "src/plugin/runner.ts",
      "src/plugin/worker.ts",
      "src/router/parse_worker.ts",
    ];
    for (const loaded of loadedByUrl) {
      assert.ok(files.includes(loaded), `${loaded} not published: ${files.join(" ")}`);
    }
    assert.ok(files.includes("src/workers/worker.ts"), files.join(" "));
    assert.ok(files.includes("LICENSE"), files.join(" "));
    const stray = files.filter((f) =>
      f.endsWith("_test.ts") || !/^(mod\.ts|README\.md|LICENSE|deno\.json|src\/.*)$/.test(f)
    );
    assert.deepEqual(stray, []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
