/**
 * `deno task check` (format, lint, type-check of everything including plugins and test fixtures,
 * and `deno doc --lint` of the plugin API) as part of `deno task test`, so CI holds main to it:
 * plugin fixtures are only type-checked here, since plugin processes run them without a check.
 */

import assert from "node:assert/strict";

Deno.test("deno task check: formatted, linted, type-checked, documented", async () => {
  const root = new URL("../", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "check"],
    cwd: root,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
  const problems = text.split("\n").filter((l) => !/^(Check|Download|Task) /.test(l)).join("\n");
  assert.equal(out.code, 0, problems.slice(-4000));
});
