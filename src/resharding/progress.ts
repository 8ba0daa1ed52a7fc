/**
 * The progress of a resharding copy as the command line shows it: one line per table being
 * copied, with a bar (when the table's size is known), rows copied, rate and time left. On a
 * terminal the lines are redrawn in place a few times a second, and each finished table leaves
 * one line above them; elsewhere (a log file, a pipe) plain lines are printed every few seconds
 * for the tables that moved, and one line when a table is done or failed.
 *
 * @example
 * ```ts
 * import { ProgressView } from "./src/resharding/progress.ts";
 * const view = new ProgressView();
 * view.add("public.orders", { totalRows: 1_000_000 });
 * view.update("public.orders", { rows: 250_000, bytes: 30_000_000 });
 * view.done("public.orders", { rows: 1_000_000, bytes: 120_000_000 });
 * view.close();
 * ```
 *
 * @module
 */

/** Where the view writes: a terminal or a file (`Deno.stderr` by default). */
export interface ProgressOutput {
  /** Writes bytes; returns how many were written. */
  writeSync(bytes: Uint8Array): number;
  /** Whether it is a terminal (the view redraws in place) or not (plain lines). */
  isTerminal?(): boolean;
}

/** Options of {@linkcode ProgressView}. */
export interface ProgressViewOptions {
  /** Where to write (default `Deno.stderr`). */
  output?: ProgressOutput;
  /** Redraw in place (default: whether `output` is a terminal). */
  terminal?: boolean;
  /** Width of a line (default: the terminal's, else 100). */
  columns?: number;
  /** Lines the terminal shows (default: the terminal's, else 24); more tables are summed up. */
  rows?: number;
  /** Plain output: a progress line per moving table this often (default 5000 ms). */
  plainIntervalMs?: number;
  /** Terminal: redraws this often (default 250 ms). */
  redrawIntervalMs?: number;
  /** Draw on a timer of its own (default true; tests call {@linkcode ProgressView.draw}). */
  timer?: boolean;
  /** The clock, in ms (default `Date.now`). */
  now?: () => number;
}

/** How far one table's copy is. */
export interface TableProgress {
  /** Rows copied so far. */
  rows: number;
  /** Bytes copied so far (as read from the source). */
  bytes: number;
  /** The table's rows, when known (an estimate such as `pg_class.reltuples` will do). */
  totalRows?: number | null;
}

type TableState = "waiting" | "copying" | "done" | "failed";

interface Table {
  name: string;
  state: TableState;
  rows: number;
  bytes: number;
  totalRows: number | null;
  startedAt: number | null;
  endedAt: number | null;
  error: string | null;
  /** Recent (time, rows, bytes) samples, for the current rate. */
  samples: Array<[number, number, number]>;
  /** Rows when the last plain line was printed. */
  printedRows: number;
}

/** The rate is taken over this much recent time. */
const RATE_WINDOW_MS = 10_000;

const encoder = new TextEncoder();

/** A progress display of a copy's tables, for the command line. */
export class ProgressView {
  #tables = new Map<string, Table>();
  #output: ProgressOutput;
  #terminal: boolean;
  #fixedSize: { columns?: number; rows?: number };
  #columns = 100;
  #rows = 24;
  #plainIntervalMs: number;
  #now: () => number;
  #timer: ReturnType<typeof setInterval> | null = null;
  /** Terminal: lines of the live area drawn last time (the cursor is below them). */
  #drawn = 0;
  /** Finished tables not yet written as their final line. */
  #finished: Table[] = [];
  #lastPlain: number;
  #closed = false;

  /** A view writing to `options.output` (default stderr). */
  constructor(options: ProgressViewOptions = {}) {
    this.#output = options.output ?? Deno.stderr;
    this.#terminal = options.terminal ?? this.#output.isTerminal?.() ?? false;
    this.#fixedSize = { columns: options.columns, rows: options.rows };
    this.#measure();
    this.#plainIntervalMs = options.plainIntervalMs ?? 5000;
    this.#now = options.now ?? Date.now;
    this.#lastPlain = this.#now();
    if (options.timer ?? true) {
      const every = this.#terminal ? options.redrawIntervalMs ?? 250 : 1000;
      const timer = setInterval(() => this.draw(), every);
      // The view never keeps the program alive.
      Deno.unrefTimer(timer);
      this.#timer = timer;
    }
  }

  /** Adds a table, waiting to be copied (it is shown once it starts). */
  add(table: string, options: { totalRows?: number | null } = {}): void {
    if (this.#tables.has(table)) return;
    this.#tables.set(table, {
      name: table,
      state: "waiting",
      rows: 0,
      bytes: 0,
      totalRows: options.totalRows ?? null,
      startedAt: null,
      endedAt: null,
      error: null,
      samples: [],
      printedRows: -1,
    });
  }

  /** The table's copy has got this far (adds it when new; starts it when waiting). */
  update(table: string, progress: TableProgress): void {
    const t = this.#table(table);
    const now = this.#now();
    if (t.state === "done" || t.state === "failed") {
      // A retried copy starts over.
      t.error = null;
      t.endedAt = null;
      t.startedAt = null;
    }
    if (t.startedAt === null) {
      t.startedAt = now;
      t.samples = [[now, 0, 0]];
    }
    t.state = "copying";
    t.rows = progress.rows;
    t.bytes = progress.bytes;
    if (progress.totalRows !== undefined) t.totalRows = progress.totalRows;
    t.samples.push([now, t.rows, t.bytes]);
    while (t.samples.length > 2 && now - t.samples[1][0] >= RATE_WINDOW_MS) t.samples.shift();
  }

  /** The table is copied; `result` gives the final counts. */
  done(table: string, result?: { rows: number; bytes: number }): void {
    this.#end(table, "done", null, result);
  }

  /** The table's copy failed (a retry may {@linkcode update} it again). */
  fail(table: string, reason: string): void {
    this.#end(table, "failed", reason);
  }

  /**
   * Shows what changed: on a terminal, the finished tables' lines and the live area redrawn in
   * place; otherwise the finished tables' lines, and every `plainIntervalMs` a line for each
   * table that moved. The timer calls it; so may a caller that wants it now.
   */
  draw(): void {
    if (this.#closed) return;
    if (this.#terminal) this.#drawTerminal();
    else this.#drawPlain(false);
  }

  /** Draws one last time (when not on a terminal, a line for every table still copying). */
  close(): void {
    if (this.#closed) return;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    if (this.#terminal) this.#drawTerminal();
    else this.#drawPlain(true);
    this.#closed = true;
  }

  /** The live lines as they would be drawn now (the tables being copied, and a summary). */
  lines(): string[] {
    const now = this.#now();
    const copying = [...this.#tables.values()].filter((t) => t.state === "copying");
    const width = this.#nameWidth();
    const room = this.#rows - 2;
    const shown = copying.slice(0, room);
    const lines = shown.map((t) => this.#fit(this.#liveLine(t, width, now)));
    const summary = this.#summary(copying.length - shown.length);
    if (summary !== null) lines.push(this.#fit(summary));
    return lines;
  }

  /** The final line of a finished table. */
  finalLine(table: string): string {
    return this.#fit(this.#finalLine(this.#table(table), this.#nameWidth()));
  }

  #table(name: string): Table {
    if (!this.#tables.has(name)) this.add(name);
    return this.#tables.get(name)!;
  }

  #end(
    table: string,
    state: "done" | "failed",
    error: string | null,
    result?: { rows: number; bytes: number },
  ): void {
    const t = this.#table(table);
    const now = this.#now();
    t.startedAt ??= now;
    t.state = state;
    t.endedAt = now;
    t.error = error;
    if (result) {
      t.rows = result.rows;
      t.bytes = result.bytes;
    }
    this.#finished.push(t);
    // A finished table's line shows at once.
    this.draw();
  }

  #write(text: string): void {
    const bytes = encoder.encode(text);
    let off = 0;
    while (off < bytes.length) off += this.#output.writeSync(bytes.subarray(off));
  }

  /** The terminal's size (again at each redraw: it may have been resized), else the options'. */
  #measure(): void {
    let size: { columns: number; rows: number } | null = null;
    const fixed = this.#fixedSize;
    if (this.#terminal && (fixed.columns === undefined || fixed.rows === undefined)) {
      try {
        size = Deno.consoleSize();
      } catch {
        // Not a console after all: the defaults.
      }
    }
    this.#columns = Math.max(40, fixed.columns ?? size?.columns ?? 100);
    this.#rows = Math.max(3, fixed.rows ?? size?.rows ?? 24);
  }

  #drawTerminal(): void {
    this.#measure();
    // Back to the top of the live area, cleared; the finished tables' lines go there for
    // good, then the live area again below them.
    let out = this.#drawn > 0 ? `\x1b[${this.#drawn}A\r\x1b[J` : "";
    for (const t of this.#finished.splice(0)) {
      out += `${this.#fit(this.#finalLine(t, this.#nameWidth()))}\n`;
    }
    const lines = this.#closed ? [] : this.lines();
    for (const line of lines) out += `${line}\n`;
    this.#drawn = lines.length;
    if (out !== "") this.#write(out);
  }

  #drawPlain(all: boolean): void {
    const now = this.#now();
    let out = "";
    for (const t of this.#finished.splice(0)) out += `${this.#plainFinal(t)}\n`;
    if (all || now - this.#lastPlain >= this.#plainIntervalMs) {
      this.#lastPlain = now;
      for (const t of this.#tables.values()) {
        if (t.state !== "copying" || (!all && t.rows === t.printedRows)) continue;
        t.printedRows = t.rows;
        out += `${this.#plainLine(t, now)}\n`;
      }
    }
    if (out !== "") this.#write(out);
  }

  /** Width of the name column: the longest name being shown, within limits. */
  #nameWidth(): number {
    let width = 8;
    for (const t of this.#tables.values()) width = Math.max(width, t.name.length);
    return Math.min(width, Math.floor(this.#columns / 3));
  }

  /** `line` cut to the terminal's width (a wrapped line would break the redraw). */
  #fit(line: string): string {
    const max = this.#columns - 1;
    return line.length <= max ? line : `${line.slice(0, max - 1)}…`;
  }

  #liveLine(t: Table, nameWidth: number, now: number): string {
    const name = padName(t.name, nameWidth);
    const { rowsPerSec, bytesPerSec } = rates(t, now);
    const rate = `${formatCount(rowsPerSec)} rows/s ${formatBytes(bytesPerSec)}/s`;
    if (t.totalRows !== null && t.totalRows > 0) {
      const fraction = t.rows / t.totalRows;
      const left = t.totalRows - t.rows;
      const eta = rowsPerSec > 0 && left > 0 ? formatDuration((left / rowsPerSec) * 1000) : "?";
      const counts = `${formatCount(t.rows)}/${formatCount(t.totalRows)} rows`;
      const tail = ` ${pct(fraction)} ${counts}  ${rate}  ETA ${eta}`;
      const barWidth = Math.max(
        10,
        Math.min(30, this.#columns - 1 - name.length - tail.length - 3),
      );
      return `${name} ${bar(fraction, barWidth)}${tail}`;
    }
    return `${name} ${formatCount(t.rows)} rows ${formatBytes(t.bytes)}  ${rate}`;
  }

  #finalLine(t: Table, nameWidth: number): string {
    const name = padName(t.name, nameWidth);
    const took = formatDuration((t.endedAt ?? 0) - (t.startedAt ?? 0));
    if (t.state === "failed") {
      return `${name} failed after ${formatCount(t.rows)} rows, ${took}: ${t.error}`;
    }
    return `${name} ${bar(1, 10)} done: ${formatCount(t.rows)} rows ${formatBytes(t.bytes)} ` +
      `in ${took} (${average(t)})`;
  }

  #plainLine(t: Table, now: number): string {
    const { rowsPerSec, bytesPerSec } = rates(t, now);
    let line = `${t.name}: ${formatCount(t.rows)}`;
    if (t.totalRows !== null && t.totalRows > 0) {
      line += `/${formatCount(t.totalRows)} rows (${pct(t.rows / t.totalRows).trim()})`;
    } else line += " rows";
    line += `, ${formatBytes(t.bytes)}, ${formatCount(rowsPerSec)} rows/s, ` +
      `${formatBytes(bytesPerSec)}/s`;
    const left = t.totalRows === null ? 0 : t.totalRows - t.rows;
    if (left > 0 && rowsPerSec > 0) line += `, ETA ${formatDuration((left / rowsPerSec) * 1000)}`;
    return line;
  }

  #plainFinal(t: Table): string {
    const took = formatDuration((t.endedAt ?? 0) - (t.startedAt ?? 0));
    if (t.state === "failed") {
      return `${t.name}: failed after ${formatCount(t.rows)} rows, ${took}: ${t.error}`;
    }
    return `${t.name}: done, ${formatCount(t.rows)} rows, ${formatBytes(t.bytes)} in ${took} ` +
      `(${average(t)})`;
  }

  /** `3/12 tables done, 2 copying, 7 waiting` (and tables not shown), or null with one table. */
  #summary(hidden: number): string | null {
    const count: Record<TableState, number> = { waiting: 0, copying: 0, done: 0, failed: 0 };
    for (const t of this.#tables.values()) count[t.state]++;
    if (this.#tables.size <= 1) return null;
    let line = `${count.done}/${this.#tables.size} tables done, ${count.copying} copying`;
    if (count.waiting > 0) line += `, ${count.waiting} waiting`;
    if (count.failed > 0) line += `, ${count.failed} failed`;
    if (hidden > 0) line += ` (${hidden} not shown)`;
    return line;
  }
}

/** Rows and bytes per second over the recent samples (since the start when they are few). */
function rates(t: Table, now: number): { rowsPerSec: number; bytesPerSec: number } {
  const first = t.samples[0];
  if (!first) return { rowsPerSec: 0, bytesPerSec: 0 };
  const seconds = (now - first[0]) / 1000;
  if (seconds <= 0) return { rowsPerSec: 0, bytesPerSec: 0 };
  return { rowsPerSec: (t.rows - first[1]) / seconds, bytesPerSec: (t.bytes - first[2]) / seconds };
}

function average(t: Table): string {
  const seconds = ((t.endedAt ?? 0) - (t.startedAt ?? 0)) / 1000;
  if (seconds <= 0) return "-";
  return `${formatCount(t.rows / seconds)} rows/s, ${formatBytes(t.bytes / seconds)}/s`;
}

function padName(name: string, width: number): string {
  return name.length > width ? `${name.slice(0, width - 1)}…` : name.padEnd(width);
}

function bar(fraction: number, width: number): string {
  const full = Math.round(Math.min(fraction, 1) * width);
  return `[${"#".repeat(full)}${".".repeat(width - full)}]`;
}

/** `  7%`, ` 99%`: an estimate of the total can be below the rows copied: 99% until done. */
function pct(fraction: number): string {
  return `${Math.floor(Math.min(fraction, 0.99) * 100)}%`.padStart(4);
}

/** `1,234,567` (rounded to an integer). */
export function formatCount(n: number): string {
  return Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** `512 B`, `12.3 kB`, `45.6 MB`, `1.2 GB` (powers of 1000). */
export function formatBytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[i]}`;
}

/** `42s`, `3m05s`, `1h02m` (rounded down to the second). */
export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}
