/**
 * Summarizes a V8 `.cpuprofile` (from `deno run --cpu-prof`): the functions with the most self
 * time, and the most inclusive time of pgdog's own functions.
 *
 * ```sh
 * deno run --allow-read bench/cpuprofile.ts /tmp/pgdog-prof/CPU.*.cpuprofile [--top 30] \
 *   [--exclude op_write]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { top: { type: "string", default: "30" }, exclude: { type: "string", multiple: true } },
});
const top = Number(values.top);
/** Samples whose leaf is one of these (e.g. op_write: the kernel's send) are left out. */
const excluded = new Set(values.exclude ?? []);

for (const file of positionals) {
  const profile = JSON.parse(await Deno.readTextFile(file)) as Profile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of profile.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const selfUs = new Map<number, number>();
  let total = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i] ?? 0;
    if (excluded.has(byId.get(profile.samples[i])!.callFrame.functionName)) continue;
    selfUs.set(profile.samples[i], (selfUs.get(profile.samples[i]) ?? 0) + dt);
    total += dt;
  }
  const label = (n: ProfileNode): string => {
    const f = n.callFrame;
    const where = f.url === ""
      ? ""
      : ` ${f.url.replace(/^.*\/(src|ext:)/, "$1")}:${f.lineNumber + 1}`;
    return `${f.functionName || "(anonymous)"}${where}`;
  };
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const node = byId.get(id)!;
    self.set(label(node), (self.get(label(node)) ?? 0) + us);
    // Inclusive: every distinct function on the stack once.
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const l = label(byId.get(cur)!);
      if (seen.has(l)) continue;
      seen.add(l);
      inclusive.set(l, (inclusive.get(l) ?? 0) + us);
    }
  }
  const idle = self.get("(idle)") ?? 0;
  const busy = total - idle;
  const pct = (us: number): string => `${(100 * us / busy).toFixed(1).padStart(5)}%`;
  console.log(
    `${file}: ${(total / 1e6).toFixed(1)} s sampled, ${(busy / 1e6).toFixed(1)} s busy ` +
      `(${(100 * busy / total).toFixed(0)}%); percentages are of busy time`,
  );
  console.log(`\nTop ${top} by self time:`);
  for (
    const [name, us] of [...self].filter(([n]) => n !== "(idle)").sort((a, b) => b[1] - a[1])
      .slice(0, top)
  ) {
    console.log(`${pct(us)}  ${name}`);
  }
  console.log(`\nTop ${top} of pgdog's functions by inclusive time:`);
  for (
    const [name, us] of [...inclusive].filter(([n]) => n.includes(" src/"))
      .sort((a, b) => b[1] - a[1]).slice(0, top)
  ) {
    console.log(`${pct(us)}  ${name}`);
  }
}
