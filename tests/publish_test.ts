/**
 * `deno publish --dry-run` of pgdog's package and of each example plugin: JSR's own checks (slow
 * types in the public API, imports a published package can resolve, its files). The one problem
 * tolerated is `missing-license` where a package names no license yet: choosing one is the
 * owners' decision. Once a package has a license, the dry run must pass whole.
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

function licensed(dir: string): boolean {
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}${dir}/deno.json`));
  if (typeof config.license === "string") return true;
  return [...Deno.readDirSync(`${ROOT}${dir}`)].some((e) => /^licen[cs]e(\.|$)/i.test(e.name));
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

Deno.test("deno publish --dry-run: no problem but a license not chosen yet", async (t) => {
  for (const dir of packages()) {
    await t.step(dir === "." ? "@pgdog/pgdog" : dir, async () => {
      const out = await dryRun(`${ROOT}${dir}`);
      const text = out.text;
      const problems = [...text.matchAll(/^error\[([a-z-]+)\]/gm)].map((m) => m[1]);
      if (licensed(dir)) {
        assert.equal(out.code, 0, text.slice(-4000));
        assert.match(text, /Dry run complete/);
      } else {
        assert.deepEqual(problems, ["missing-license"], text.slice(-4000));
      }
    });
  }
});

Deno.test("pgdog's published files: its code, with what it loads by URL; no tests or configs", async () => {
  // A copy with a license field, so the dry run gets as far as listing the files.
  const dir = await Deno.makeTempDir({ prefix: "pgdog-publish-" });
  try {
    const copy = ["mod.ts", "src", "tests", "plugins", "README.md", "deno.lock", "users.toml"];
    const cp = await new Deno.Command("cp", { args: ["-r", ...copy, dir], cwd: ROOT }).output();
    assert.equal(cp.code, 0, new TextDecoder().decode(cp.stderr));
    await Deno.symlink(`${ROOT}node_modules`, `${dir}/node_modules`);
    const config = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
    await Deno.writeTextFile(`${dir}/deno.json`, JSON.stringify({ ...config, license: "MIT" }));
    const { code, text } = await dryRun(dir);
    assert.equal(code, 0, text.slice(-4000));
    const listed = text.slice(text.indexOf("Simulating publish of @pgdog/pgdog@"));
    const files = [...listed.matchAll(/file:\/\/(\S+)/g)]
      .map((m) => m[1].slice(dir.length + 1))
      .filter((f) => !f.startsWith("plugins/"));
    for (const loaded of ["mod.ts", "src/plugin/runner.ts", "src/plugin/worker.ts"]) {
      assert.ok(files.includes(loaded), `${loaded} not published: ${files.join(" ")}`);
    }
    assert.ok(files.includes("src/workers/worker.ts"), files.join(" "));
    const stray = files.filter((f) =>
      f.endsWith("_test.ts") || !/^(mod\.ts|README\.md|deno\.json|src\/.*)$/.test(f)
    );
    assert.deepEqual(stray, []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
