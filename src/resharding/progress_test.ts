import assert from "node:assert/strict";
import { formatBytes, formatCount, formatDuration, ProgressView } from "./progress.ts";

/** An output that keeps what is written. */
function capture(): { writeSync(bytes: Uint8Array): number; text(): string; clear(): void } {
  const decoder = new TextDecoder();
  let text = "";
  return {
    writeSync(bytes: Uint8Array): number {
      text += decoder.decode(bytes);
      return bytes.length;
    },
    text: () => text,
    clear: () => {
      text = "";
    },
  };
}

Deno.test("progress: the formats", () => {
  assert.equal(formatCount(0), "0");
  assert.equal(formatCount(999.6), "1,000");
  assert.equal(formatCount(1234567), "1,234,567");
  assert.equal(formatBytes(512), "512 B");
  assert.equal(formatBytes(12_345), "12.3 kB");
  assert.equal(formatBytes(45_600_000), "45.6 MB");
  assert.equal(formatBytes(1.2e9), "1.2 GB");
  assert.equal(formatDuration(999), "0s");
  assert.equal(formatDuration(42_000), "42s");
  assert.equal(formatDuration(185_000), "3m05s");
  assert.equal(formatDuration(3_720_000), "1h02m");
});

Deno.test("progress: on a terminal, one bar per table redrawn in place; finished tables stay", () => {
  const out = capture();
  let now = 1_000_000;
  const view = new ProgressView({
    output: out,
    terminal: true,
    columns: 120,
    rows: 20,
    timer: false,
    now: () => now,
  });
  view.add("public.orders", { totalRows: 1_000_000 });
  view.add("public.users", { totalRows: 10_000 });
  view.add("public.countries");
  view.update("public.orders", { rows: 0, bytes: 0 });
  now += 10_000;
  view.update("public.orders", { rows: 250_000, bytes: 25_000_000 });
  view.update("public.users", { rows: 0, bytes: 0 });
  now += 2_000;
  view.update("public.users", { rows: 5_000, bytes: 500_000 });

  const lines = view.lines();
  assert.equal(lines.length, 3, lines.join("\n"));
  // The rate is over the last 10 s or more, up to now: 250,000 rows in 12 s.
  assert.match(lines[0], /^public\.orders +\[#{8}\.{22}\] {2}25% 250,000\/1,000,000 rows /);
  assert.match(lines[0], /20,833 rows\/s 2\.1 MB\/s {2}ETA 36s$/);
  assert.match(
    lines[1],
    /^public\.users +\[#{15}\.{15}\] {2}50% 5,000\/10,000 rows {2}2,500 rows\/s/,
  );
  assert.match(lines[1], /ETA 2s$/);
  assert.equal(lines[2], "0/3 tables done, 2 copying, 1 waiting");
  for (const line of lines) assert.ok(line.length < 120);

  view.draw();
  assert.equal(out.text(), lines.map((l) => `${l}\n`).join(""));
  out.clear();

  // The next draw goes back up over the three lines, clears them and draws again.
  now += 1_000;
  view.update("public.users", { rows: 7_000, bytes: 700_000 });
  view.draw();
  assert.ok(out.text().startsWith("\x1b[3A\r\x1b[J"), JSON.stringify(out.text()));
  assert.match(out.text(), /7,000\/10,000 rows/);
  out.clear();

  // A finished table: its final line at once, for good, above the live area (now 2 lines).
  now += 1_000;
  view.done("public.users", { rows: 10_000, bytes: 1_000_000 });
  const drawn = out.text().split("\n");
  assert.ok(drawn[0].startsWith("\x1b[3A\r\x1b[J"));
  assert.match(
    drawn[0],
    /public\.users +\[#{10}\] done: 10,000 rows 1\.0 MB in 4s \(2,500 rows\/s/,
  );
  assert.match(drawn[1], /^public\.orders/);
  assert.equal(drawn[2], "1/3 tables done, 1 copying, 1 waiting");
  out.clear();
  view.draw();
  assert.ok(out.text().startsWith("\x1b[2A\r\x1b[J"), "the finished line is not redrawn");
  assert.doesNotMatch(out.text(), /public\.users/);
  out.clear();

  // A failure shows its reason; a retry brings the table back to the live area.
  view.fail("public.countries", "connection to shard 1 lost");
  assert.match(
    out.text(),
    /public\.countries +failed after 0 rows, 0s: connection to shard 1 lost/,
  );
  view.update("public.countries", { rows: 10, bytes: 100 });
  assert.equal(view.lines().length, 3);
  assert.match(view.lines()[1], /^public\.countries +10 rows 100 B/);
  view.close();
  out.clear();
  view.draw();
  assert.equal(out.text(), "", "nothing after close");
});

Deno.test("progress: more tables than the terminal holds are summed up; long lines are cut", () => {
  const out = capture();
  const view = new ProgressView({
    output: out,
    terminal: true,
    columns: 60,
    rows: 5,
    timer: false,
  });
  for (let i = 0; i < 6; i++) {
    view.update(`public.table_with_a_rather_long_name_${i}`, {
      rows: 123_456_789,
      bytes: 9e12,
      totalRows: 999_999_999,
    });
  }
  const lines = view.lines();
  assert.equal(lines.length, 4);
  assert.match(lines[3], /^0\/6 tables done, 6 copying \(3 not shown\)$/);
  for (const line of lines) assert.ok(line.length <= 59, line);
  assert.match(lines[0], /^public\.table_with_a… \[#\.{9}\] {2}12% 123,456,789\/999,999…$/);
  view.close();
});

Deno.test("progress: elsewhere, plain lines every few seconds, and one per finished table", () => {
  const out = capture();
  let now = 0;
  const view = new ProgressView({
    output: out,
    terminal: false,
    plainIntervalMs: 5_000,
    timer: false,
    now: () => now,
  });
  view.add("public.orders", { totalRows: 100_000 });
  view.add("public.users");
  view.update("public.orders", { rows: 0, bytes: 0 });
  now += 1_000;
  view.update("public.orders", { rows: 10_000, bytes: 1_000_000 });
  view.draw();
  assert.equal(out.text(), "", "not before the interval");
  now += 4_000;
  view.update("public.orders", { rows: 50_000, bytes: 5_000_000 });
  view.draw();
  assert.equal(
    out.text(),
    "public.orders: 50,000/100,000 rows (50%), 5.0 MB, 10,000 rows/s, 1.0 MB/s, ETA 5s\n",
  );
  out.clear();
  // A table that did not move is not printed again; one that finished is, at once.
  now += 5_000;
  view.draw();
  assert.equal(out.text(), "");
  view.update("public.users", { rows: 0, bytes: 0 });
  now += 2_000;
  view.done("public.users", { rows: 3, bytes: 300 });
  assert.equal(out.text(), "public.users: done, 3 rows, 300 B in 2s (2 rows/s, 150 B/s)\n");
  out.clear();
  // No escape sequences in plain output; close prints every table still copying.
  view.update("public.orders", { rows: 60_000, bytes: 6_000_000 });
  now += 5_000;
  view.draw();
  assert.match(out.text(), /^public\.orders: 60,000\/100,000 rows/);
  out.clear();
  // Closing prints it again although it has not moved: the last word on every unfinished table.
  view.close();
  assert.match(out.text(), /^public\.orders: 60,000\/100,000 rows/);
  assert.ok(!out.text().includes("\x1b"), "no escape sequences");
});

Deno.test("progress: the timer draws on its own and never keeps the program alive", async () => {
  const out = capture();
  const view = new ProgressView({ output: out, terminal: true, redrawIntervalMs: 20 });
  view.update("t", { rows: 1, bytes: 1 });
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.ok(out.text().includes("\x1b[1A"), "redrawn in place by the timer");
  view.close();
  // A program that never closes its view still ends.
  const module = new URL("./progress.ts", import.meta.url).href;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { ProgressView } from ${JSON.stringify(module)};\n` +
      `new ProgressView({ terminal: true, columns: 80, rows: 24 }).update("t", { rows: 1, bytes: 1 });`,
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const status = await child.output();
  clearTimeout(killer);
  assert.equal(status.code, 0, new TextDecoder().decode(status.stderr));
});
