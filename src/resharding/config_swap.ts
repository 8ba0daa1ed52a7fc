/**
 * The cutover's configuration swap: source and destination exchange their database names, so
 * clients of the source name reach the destination's shards (and a second cutover swaps back).
 *
 * - {@linkcode swapDatabases}: the swap in a loaded {@linkcode Config} (the running
 *   configuration after cutover);
 * - {@linkcode swapInToml}: the same swap in the text of `pgdog.toml` or `users.toml`, changing
 *   only the names' string values, so comments, order and formatting stay as the operator wrote
 *   them;
 * - {@linkcode saveSwapped}: both files rewritten that way (`cutover_save_config`), each kept
 *   first as a `.bak.toml` backup, each written to a temporary file and renamed over the old one.
 *
 * @module
 */

import { parse as parseToml } from "smol-toml";
import { isDeepStrictEqual } from "node:util";
import type { Config } from "../config/types.ts";
import { backupPathOf, tempPathOf } from "../config/read_grants.ts";
import { TOML_ESCAPES } from "../config/locate.ts";
import { ReshardingError } from "./shards.ts";

export { backupPathOf, savedPathsOf, tempPathOf } from "../config/read_grants.ts";

/** `name` when it is `a` or `b`, the other one; else `name`. */
function swapName(name: string, a: string, b: string): string {
  return name === a ? b : name === b ? a : name;
}

/**
 * `config` with databases `a` and `b` swapped: every `[[databases]] name`, the `database` of
 * `[[sharded_tables]]` (and so of their mapping rules, `[[sharded_mappings]]` included),
 * `[[sharded_schemas]]`, `[[omnisharded_tables]]` and `[[users]]`. Other names stay; `config` is
 * not changed. The swap is its own inverse. (`[[mirroring]]`, which this version ignores, is not
 * in a {@linkcode Config}; {@linkcode swapInToml} swaps it in the files.)
 */
export function swapDatabases(config: Config, a: string, b: string): Config {
  const swap = (name: string): string => swapName(name, a, b);
  return {
    ...config,
    databases: config.databases.map((d) => ({ ...d, name: swap(d.name) })),
    users: config.users.map((u) => ({ ...u, database: swap(u.database) })),
    sharded_tables: config.sharded_tables.map((t) => ({ ...t, database: swap(t.database) })),
    sharded_schemas: config.sharded_schemas.map((s) => ({ ...s, database: swap(s.database) })),
    omnisharded_tables: config.omnisharded_tables.map((o) => ({
      ...o,
      database: swap(o.database),
    })),
  };
}

/**
 * The string values that name a database, as paths in the document: `[]` stands for any element
 * of an array (of tables, or a value's array).
 */
const NAME_PATHS: readonly (readonly string[])[] = [
  ["databases", "[]", "name"],
  ["sharded_tables", "[]", "database"],
  ["sharded_mappings", "[]", "database"],
  ["sharded_mapping", "[]", "database"],
  ["sharded_schemas", "[]", "database"],
  ["omnisharded_tables", "[]", "database"],
  ["mirroring", "[]", "source_db"],
  ["mirroring", "[]", "destination_db"],
  ["users", "[]", "database"],
  // PgDog's list form of a user's databases (this version warns and ignores it).
  ["users", "[]", "databases", "[]"],
];

const NAME_PATH_KEYS = new Set(NAME_PATHS.map((p) => p.join("\0")));

/** The same swap on a parsed document (a plain object), for checking the text's. */
function swapInDocument(doc: unknown, a: string, b: string): unknown {
  const walk = (value: unknown, path: string[]): unknown => {
    if (typeof value === "string") {
      return NAME_PATH_KEYS.has(path.join("\0")) ? swapName(value, a, b) : value;
    }
    if (Array.isArray(value)) return value.map((v) => walk(v, [...path, "[]"]));
    if (value !== null && typeof value === "object" && !(value instanceof Date)) {
      // The same prototype as the parser's objects (null), for the deep comparison.
      const out: Record<string, unknown> = Object.create(Object.getPrototypeOf(value));
      for (const [k, v] of Object.entries(value)) out[k] = walk(v, [...path, k]);
      return out;
    }
    return value;
  };
  return walk(doc, []);
}

/** A string value found in the text: where its token is and what it says. */
interface StringToken {
  start: number;
  end: number;
  /** Its value, or null when an escape could not be decoded. */
  value: string | null;
  literal: boolean;
  multiline: boolean;
}

const BARE_KEY = /[A-Za-z0-9_-]/;

/**
 * A small TOML scanner: walks the whole document (headers, keys, every value kind, comments,
 * multi-line strings) and calls `onString` with each string value and its path. It only needs
 * to be right about where strings are and what they are under; the result is checked against a
 * real parser afterwards.
 */
class TomlScanner {
  #text: string;
  #pos = 0;
  /** Paths (joined) defined by `[[...]]` headers: their later mentions mean the last element. */
  #arrays = new Set<string>();
  #onString: (token: StringToken, path: string[]) => void;

  constructor(text: string, onString: (token: StringToken, path: string[]) => void) {
    this.#text = text;
    this.#onString = onString;
  }

  scan(): void {
    const t = this.#text;
    if (t.startsWith("\uFEFF")) this.#pos = 1;
    let table: string[] = [];
    for (;;) {
      this.#skipSpaceAndNewlines();
      if (this.#pos >= t.length) return;
      if (t[this.#pos] === "[") {
        const array = t[this.#pos + 1] === "[";
        this.#pos += array ? 2 : 1;
        const keys = this.#key();
        this.#expect(array ? "]]" : "]");
        table = this.#tablePath(keys, array);
      } else {
        const keys = this.#key();
        this.#skipSpace();
        this.#expect("=");
        this.#value([...table, ...keys]);
      }
      this.#endOfLine();
    }
  }

  /** The abstract path of a header: `[]` after every segment that is an array of tables. */
  #tablePath(keys: string[], array: boolean): string[] {
    const path: string[] = [];
    for (const key of keys) {
      path.push(key);
      if (this.#arrays.has(path.join("\0"))) path.push("[]");
    }
    if (array && path[path.length - 1] !== "[]") {
      this.#arrays.add(path.join("\0"));
      path.push("[]");
    }
    return path;
  }

  #fail(what: string): never {
    const line = this.#text.slice(0, this.#pos).split("\n").length;
    throw new ReshardingError(`line ${line}: ${what}`);
  }

  #expect(token: string): void {
    this.#skipSpace();
    if (!this.#text.startsWith(token, this.#pos)) this.#fail(`expected ${token}`);
    this.#pos += token.length;
  }

  #skipSpace(): void {
    const t = this.#text;
    while (this.#pos < t.length && (t[this.#pos] === " " || t[this.#pos] === "\t")) this.#pos++;
  }

  /** Spaces, newlines and comments. */
  #skipSpaceAndNewlines(): void {
    const t = this.#text;
    while (this.#pos < t.length) {
      const c = t[this.#pos];
      if (c === " " || c === "\t" || c === "\r" || c === "\n") this.#pos++;
      else if (c === "#") this.#skipComment();
      else return;
    }
  }

  #skipComment(): void {
    const end = this.#text.indexOf("\n", this.#pos);
    this.#pos = end < 0 ? this.#text.length : end;
  }

  /** After a header or a key/value: spaces, a comment, then the end of the line. */
  #endOfLine(): void {
    this.#skipSpace();
    if (this.#text[this.#pos] === "#") this.#skipComment();
    if (this.#text[this.#pos] === "\r") this.#pos++;
    if (this.#pos < this.#text.length && this.#text[this.#pos] !== "\n") {
      this.#fail("expected the end of the line");
    }
  }

  /** A dotted key: bare, `"basic"` or `'literal'` parts. */
  #key(): string[] {
    const keys: string[] = [];
    for (;;) {
      this.#skipSpace();
      const c = this.#text[this.#pos];
      if (c === '"' || c === "'") {
        const token = this.#string();
        if (token.value === null || token.multiline) this.#fail("unreadable key");
        keys.push(token.value);
      } else {
        const start = this.#pos;
        while (this.#pos < this.#text.length && BARE_KEY.test(this.#text[this.#pos])) {
          this.#pos++;
        }
        if (this.#pos === start) this.#fail("expected a key");
        keys.push(this.#text.slice(start, this.#pos));
      }
      this.#skipSpace();
      if (this.#text[this.#pos] !== ".") return keys;
      this.#pos++;
    }
  }

  #value(path: string[]): void {
    this.#skipSpace();
    const t = this.#text;
    const c = t[this.#pos];
    if (c === '"' || c === "'") {
      this.#onString(this.#string(), path);
    } else if (c === "[") {
      this.#pos++;
      for (;;) {
        this.#skipSpaceAndNewlines();
        if (t[this.#pos] === "]") break;
        this.#value([...path, "[]"]);
        this.#skipSpaceAndNewlines();
        if (t[this.#pos] === ",") this.#pos++;
        else if (t[this.#pos] !== "]") this.#fail("expected , or ] in an array");
      }
      this.#pos++;
    } else if (c === "{") {
      this.#pos++;
      this.#skipSpaceAndNewlines();
      while (t[this.#pos] !== "}") {
        const keys = this.#key();
        this.#expect("=");
        this.#value([...path, ...keys]);
        this.#skipSpaceAndNewlines();
        if (t[this.#pos] === ",") this.#pos++;
        else if (t[this.#pos] !== "}") this.#fail("expected , or } in an inline table");
        this.#skipSpaceAndNewlines();
      }
      this.#pos++;
    } else {
      // A number, boolean or date (a date may hold one space: `1979-05-27 07:32:00Z`).
      const start = this.#pos;
      while (this.#pos < t.length && !/[\s,\]}#]/.test(t[this.#pos])) this.#pos++;
      if (t[this.#pos] === " " && /^\d{4}-\d\d-\d\d$/.test(t.slice(start, this.#pos))) {
        this.#pos++;
        while (this.#pos < t.length && !/[\s,\]}#]/.test(t[this.#pos])) this.#pos++;
      }
      if (this.#pos === start) this.#fail("expected a value");
    }
  }

  /** A string of any of the four kinds, at the current position. */
  #string(): StringToken {
    const t = this.#text;
    const start = this.#pos;
    const quote = t[start];
    const literal = quote === "'";
    const multiline = t.startsWith(quote.repeat(3), start);
    if (multiline) {
      const delimiter = quote.repeat(3);
      let i = start + 3;
      for (;;) {
        const j = t.indexOf(delimiter, i);
        if (j < 0) this.#fail("unterminated string");
        if (!literal && isEscaped(t, j)) {
          i = j + 1;
          continue;
        }
        // Up to two quotes right before the closing delimiter belong to the string.
        let end = j + 3;
        while (end < t.length && t[end] === quote && end - j < 5) end++;
        this.#pos = end;
        // A newline right after the opening delimiter is not part of the string.
        const body = t.slice(start + 3, end - 3).replace(/^\r?\n/, "");
        return { start, end, value: literal ? body : unescapeBasic(body), literal, multiline };
      }
    }
    let i = start + 1;
    for (;;) {
      if (i >= t.length || t[i] === "\n") this.#fail("unterminated string");
      if (!literal && t[i] === "\\") i += 2;
      else if (t[i] === quote) break;
      else i++;
    }
    const body = t.slice(start + 1, i);
    this.#pos = i + 1;
    return { start, end: i + 1, value: literal ? body : unescapeBasic(body), literal, multiline };
  }
}

/** Whether the character at `i` follows an odd number of backslashes. */
function isEscaped(text: string, i: number): boolean {
  let n = 0;
  while (i - 1 - n >= 0 && text[i - 1 - n] === "\\") n++;
  return n % 2 === 1;
}

/** A basic string's body decoded, or null for an escape this does not know. */
function unescapeBasic(body: string): string | null {
  let out = "";
  for (let i = 0; i < body.length; i++) {
    if (body[i] !== "\\") {
      out += body[i];
      continue;
    }
    const c = body[++i];
    const trim = /^[ \t]*\r?\n[ \t\r\n]*/.exec(body.slice(i));
    if (trim) {
      // A line-ending backslash: the newline and the whitespace after it are dropped.
      i += trim[0].length - 1;
      continue;
    }
    if (c in TOML_ESCAPES) {
      out += TOML_ESCAPES[c];
      continue;
    }
    const digits = c === "u" ? 4 : c === "U" ? 8 : c === "x" ? 2 : 0;
    const hex = body.slice(i + 1, i + 1 + digits);
    if (digits === 0 || !/^[0-9A-Fa-f]+$/.test(hex) || hex.length !== digits) return null;
    const code = parseInt(hex, 16);
    if (code > 0x10ffff) return null;
    out += String.fromCodePoint(code);
    i += digits;
  }
  return out;
}

/** `value` as a TOML string token, in the quotes of `like` when they can hold it. */
function quoteLike(value: string, like: StringToken): string {
  // deno-lint-ignore no-control-regex
  const plain = !/[\x00-\x1f\x7f]/.test(value);
  if (like.literal && !like.multiline && plain && !value.includes("'")) return `'${value}'`;
  let out = '"';
  for (const ch of value) {
    const code = ch.codePointAt(0)!;
    if (ch === '"' || ch === "\\") out += `\\${ch}`;
    else if (code < 0x20 || code === 0x7f) out += `\\u${code.toString(16).padStart(4, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}

/**
 * `text` (a `pgdog.toml` or `users.toml`) with databases `a` and `b` swapped: the same names as
 * {@linkcode swapDatabases} (and `[[mirroring]] source_db`/`destination_db`), in headers' tables
 * or inline tables alike. Only those strings change: comments, blank lines, order, spacing and
 * quoting stay. The result is checked by parsing both texts.
 *
 * @throws {ReshardingError} when `text` is not valid TOML or the swap cannot be made exactly.
 */
export function swapInToml(text: string, a: string, b: string): string {
  let before: unknown;
  try {
    before = parseToml(text.startsWith("\uFEFF") ? text.slice(1) : text, {
      integersAsBigInt: true,
    });
  } catch (e) {
    throw new ReshardingError(`invalid TOML: ${(e as Error).message.split("\n")[0]}`);
  }
  if (a === b) return text;
  const edits: Array<{ start: number; end: number; text: string }> = [];
  new TomlScanner(text, (token, path) => {
    if (!NAME_PATH_KEYS.has(path.join("\0"))) return;
    const value = token.value;
    if (value === null) return; // an escape not decoded here: the check below catches a name
    const swapped = swapName(value, a, b);
    if (swapped !== value) {
      edits.push({ start: token.start, end: token.end, text: quoteLike(swapped, token) });
    }
  }).scan();
  let out = "";
  let at = 0;
  for (const edit of edits) {
    out += text.slice(at, edit.start) + edit.text;
    at = edit.end;
  }
  out += text.slice(at);
  const after = parseToml(out.startsWith("\uFEFF") ? out.slice(1) : out, {
    integersAsBigInt: true,
  });
  if (!isDeepStrictEqual(after, swapInDocument(before, a, b))) {
    throw new ReshardingError(
      `could not swap "${a}" and "${b}" in the text exactly (an unusual spelling of a name?)`,
    );
  }
  return out;
}

/** Options of {@linkcode saveSwapped}. */
export interface SaveSwappedOptions {
  /** pgdog.toml's path. */
  configPath: string;
  /** users.toml's path. */
  usersPath: string;
  /** One database name. */
  a: string;
  /** The other. */
  b: string;
}

/** What {@linkcode saveSwapped} wrote. */
export interface SavedSwap {
  /** The configuration files rewritten (a file without either name is left alone). */
  files: string[];
  /** Their backups (their contents before). */
  backups: string[];
}

/** Writes `text` to `<path>.tmp` (with permission bits `mode`), flushed to disk. */
async function writeTemp(path: string, text: string, mode: number | null): Promise<string> {
  const temp = tempPathOf(path);
  try {
    await Deno.writeTextFile(temp, text, { mode: mode ?? 0o600 });
    if (mode !== null) await Deno.chmod(temp, mode);
    const file = await Deno.open(temp, { read: true });
    try {
      await file.sync();
    } finally {
      file.close();
    }
  } catch (e) {
    await Deno.remove(temp).catch(() => {});
    throw e;
  }
  return temp;
}

/**
 * Swaps databases `a` and `b` in pgdog.toml and users.toml on disk (see
 * {@linkcode swapInToml}). Both new texts are made before anything is written; each file's old
 * text is saved first as its backup (`pgdog.toml` → `pgdog.bak.toml`, replacing an older
 * backup); then each file is written to `<file>.tmp` and renamed over itself, so a reader sees
 * the old file or the new one, never part of one. A missing file, or one that names neither
 * database, is left alone. The files keep their permission bits.
 *
 * @throws {ReshardingError} (naming the file) when a file cannot be read, parsed or written.
 */
export async function saveSwapped(options: SaveSwappedOptions): Promise<SavedSwap> {
  const { a, b } = options;
  const plans: Array<{ path: string; before: string; after: string; mode: number | null }> = [];
  for (const path of new Set([options.configPath, options.usersPath])) {
    let before: string;
    let mode: number | null;
    try {
      before = await Deno.readTextFile(path);
      const mask = (await Deno.stat(path)).mode;
      mode = mask === null ? null : mask & 0o7777;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue;
      throw new ReshardingError(`${path}: cannot read the file: ${(e as Error).message}`);
    }
    let after: string;
    try {
      after = swapInToml(before, a, b);
    } catch (e) {
      throw new ReshardingError(`${path}: ${(e as Error).message}`);
    }
    if (after !== before) plans.push({ path, before, after, mode });
  }
  const saved: SavedSwap = { files: [], backups: [] };
  const temps: string[] = [];
  let step = "";
  try {
    for (const plan of plans) {
      const backup = backupPathOf(plan.path);
      step = `cannot write the backup ${backup}`;
      await Deno.rename(await writeTemp(backup, plan.before, plan.mode), backup);
      saved.backups.push(backup);
    }
    // Both new files wait on disk before either replaces its file: the two renames are all
    // that is left to fail between the first file swapped and the second.
    for (const plan of plans) {
      step = `${plan.path}: cannot write the file`;
      temps.push(await writeTemp(plan.path, plan.after, plan.mode));
    }
    for (const [i, plan] of plans.entries()) {
      step = `${plan.path}: cannot write the file`;
      await Deno.rename(temps[i], plan.path);
      saved.files.push(plan.path);
    }
  } catch (e) {
    for (const temp of temps) await Deno.remove(temp).catch(() => {});
    const done = saved.files.length > 0 ? ` (already written: ${saved.files.join(", ")})` : "";
    throw new ReshardingError(`${step}: ${(e as Error).message}${done}`);
  }
  return saved;
}
