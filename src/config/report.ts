/**
 * Collecting configuration problems and warnings, and the shape of their lines:
 * `<file>:<line>: <entry label> <key>: <text>`. Shared by the checks of `validate.ts` and
 * `sharding.ts`.
 *
 * @module
 */

import type { TomlPath } from "./locate.ts";

/** Where a message sorts: by group (source, then URLs, then checks across sources), then line. */
export interface MessagePosition {
  /** The source's index; higher groups come later. */
  group: number;
  /** Line in the source; messages without one come last in their group. */
  line?: number;
}

/** Where a message points: a source (with a line when known) and an entry label. */
export interface Where {
  /** Sort group: the source's index, then database URLs, then checks across sources. */
  group: number;
  /** The source's label (a path or `<config object>`); unset for URLs and cross checks. */
  file?: string;
  /** Line in the source, when known. */
  line?: number;
  /** `[general]`, `[[databases]] #2 (name "x")`, `--database_url #1`, or empty. */
  label: string;
}

interface Message {
  group: number;
  line: number;
  seq: number;
  text: string;
}

/** Collects problems and warnings and hands them back in file and line order. */
export class Report {
  #problems: Message[] = [];
  #warnings: Message[] = [];
  #seq = 0;

  /** Adds a problem (something invalid); `at` places it in the sort order. */
  problem(text: string, at: MessagePosition): void {
    this.#problems.push({ group: at.group, line: at.line ?? Infinity, seq: this.#seq++, text });
  }

  /** Adds a warning; `at` places it in the sort order. */
  warning(text: string, at: MessagePosition): void {
    this.#warnings.push({ group: at.group, line: at.line ?? Infinity, seq: this.#seq++, text });
  }

  /** The problems, sorted. */
  problems(): string[] {
    return Report.#sorted(this.#problems);
  }

  /** The warnings, sorted. */
  warnings(): string[] {
    return Report.#sorted(this.#warnings);
  }

  static #sorted(messages: Message[]): string[] {
    return [...messages]
      .sort((a, b) => a.group - b.group || a.line - b.line || a.seq - b.seq)
      .map((message) => message.text);
  }
}

/** One message line: `<file>:<line>: <label> <key>: <text>`, leaving out what is unknown. */
export function format(where: Where, text: string, key?: string): string {
  const file = where.file === undefined
    ? ""
    : `${where.file}${where.line === undefined ? "" : `:${where.line}`}: `;
  const subject = [where.label, key].filter((part) => part).join(" ");
  return subject === "" ? `${file}${text}` : `${file}${subject}: ${text}`;
}

/** The checked keys of one table (a section entry), and where it is. */
export interface Entry {
  /** The valid keys' values, under their canonical names (aliases resolved). */
  values: Record<string, unknown>;
  /** The entry's own position and label. */
  where: Where;
  /** True when every key was valid. */
  ok: boolean;
  /** The keys that were set but invalid. */
  invalid?: ReadonlySet<string>;
  /** How other messages refer to the entry: `#2`, `--database_url #1`. */
  ref: string;
  /** The checked entries of its nested arrays of tables, by key (`mapping`). */
  children?: Map<string, Entry[]>;
  /**
   * Where one of its keys (or an element of a key's array) is; the entry itself when the line
   * is unknown.
   */
  at(key: string, ...rest: TomlPath): Where;
}
