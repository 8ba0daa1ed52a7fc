/**
 * Line numbers for TOML values. smol-toml returns plain objects without positions, so this module
 * scans the raw text once and records the line where each table, array element and key starts.
 * A path is the same as a path into the parsed object: `["databases", 1, "host"]` is the `host`
 * key of the second `[[databases]]` entry.
 *
 * The scanner is tolerant: it is meant for text smol-toml has accepted, and on anything else it
 * skips ahead rather than failing. It understands comments, quoted and dotted keys, all four
 * string forms (including multi-line strings), multi-line arrays and inline tables.
 *
 * @module
 */

/** TOML's one-letter string escapes (`\n`, `\"`, ...) and what they stand for. */
export const TOML_ESCAPES: Readonly<Record<string, string>> = {
  b: "\b",
  t: "\t",
  n: "\n",
  f: "\f",
  r: "\r",
  e: "\x1b",
  '"': '"',
  "\\": "\\",
};

/** A path into a parsed TOML document: table keys and array indexes. */
export type TomlPath = ReadonlyArray<string | number>;

/** Line lookups into one TOML text. */
export interface TomlLocations {
  /**
   * The 1-based line of `path`, or of its longest prefix that was found: for a key that is
   * missing from a table this is the table's header line. Undefined when nothing matches.
   */
  lineOf(path: TomlPath): number | undefined;
  /** The 1-based line where exactly `path` is defined, if it is. */
  exactLineOf(path: TomlPath): number | undefined;
}

const BARE_KEY = /[A-Za-z0-9_-]/;
const SCALAR_END = new Set([" ", "\t", "\r", "\n", ",", "]", "}", "#"]);
const LOCAL_DATE = /^\d{4}-\d{2}-\d{2}$/;

function pathKey(path: TomlPath): string {
  return JSON.stringify(path);
}

class Scanner {
  pos = 0;
  line = 1;
  readonly lines = new Map<string, number>();
  readonly arrayCounts = new Map<string, number>();

  constructor(readonly text: string) {}

  eof(): boolean {
    return this.pos >= this.text.length;
  }

  peek(offset = 0): string {
    return this.text[this.pos + offset] ?? "";
  }

  at(s: string): boolean {
    return this.text.startsWith(s, this.pos);
  }

  advance(count = 1): void {
    for (let i = 0; i < count && this.pos < this.text.length; i++) {
      if (this.text[this.pos] === "\n") this.line++;
      this.pos++;
    }
  }

  record(path: TomlPath, line: number): void {
    const key = pathKey(path);
    if (!this.lines.has(key)) this.lines.set(key, line);
  }

  /** Records every prefix of `path` longer than `from` elements (first definition wins). */
  recordPrefixes(path: TomlPath, from: number, line: number): void {
    for (let length = from + 1; length <= path.length; length++) {
      this.record(path.slice(0, length), line);
    }
  }

  /** Spaces, tabs, carriage returns and a comment, but not the newline. */
  skipInline(): void {
    while (!this.eof()) {
      const c = this.peek();
      if (c === " " || c === "\t" || c === "\r") {
        this.advance();
      } else if (c === "#") {
        while (!this.eof() && this.peek() !== "\n") this.advance();
      } else {
        return;
      }
    }
  }

  /** Whitespace, comments and newlines. */
  skipAll(): void {
    while (!this.eof()) {
      this.skipInline();
      if (this.peek() !== "\n") return;
      this.advance();
    }
  }

  skipRestOfLine(): void {
    while (!this.eof() && this.peek() !== "\n") this.advance();
  }

  document(): void {
    let table: TomlPath = [];
    while (!this.eof()) {
      this.skipInline();
      if (this.eof()) break;
      if (this.peek() === "\n") {
        this.advance();
        continue;
      }
      if (this.peek() === "[") {
        table = this.header();
      } else {
        this.keyValue(table);
      }
      this.skipRestOfLine();
    }
  }

  header(): TomlPath {
    const line = this.line;
    const isArray = this.at("[[");
    this.advance(isArray ? 2 : 1);
    const keys = this.key();
    const path: Array<string | number> = [];
    keys.forEach((key, i) => {
      path.push(key);
      const counted = pathKey(path);
      if (isArray && i === keys.length - 1) {
        const count = this.arrayCounts.get(counted) ?? 0;
        this.arrayCounts.set(counted, count + 1);
        path.push(count);
      } else {
        const count = this.arrayCounts.get(counted);
        if (count !== undefined) path.push(count - 1);
      }
    });
    this.recordPrefixes(path, 0, line);
    return path;
  }

  /** A dotted key; returns its segments (empty when there is no key here). */
  key(): string[] {
    const segments: string[] = [];
    while (!this.eof()) {
      this.skipInline();
      const c = this.peek();
      if (c === '"') {
        segments.push(this.basicString());
      } else if (c === "'") {
        segments.push(this.literalString());
      } else if (BARE_KEY.test(c)) {
        const start = this.pos;
        while (!this.eof() && BARE_KEY.test(this.peek())) this.advance();
        segments.push(this.text.slice(start, this.pos));
      } else {
        break;
      }
      this.skipInline();
      if (this.peek() !== ".") break;
      this.advance();
    }
    return segments;
  }

  keyValue(base: TomlPath): void {
    const line = this.line;
    const keys = this.key();
    if (keys.length === 0) return;
    this.skipInline();
    if (this.peek() !== "=") return;
    this.advance();
    const path = [...base, ...keys];
    this.recordPrefixes(path, base.length, line);
    this.value(path);
  }

  value(path: TomlPath): void {
    this.skipInline();
    if (this.at('"""')) {
      this.multiLineString('"""', true);
    } else if (this.at("'''")) {
      this.multiLineString("'''", false);
    } else if (this.peek() === '"') {
      this.basicString();
    } else if (this.peek() === "'") {
      this.literalString();
    } else if (this.peek() === "[") {
      this.array(path);
    } else if (this.peek() === "{") {
      this.inlineTable(path);
    } else {
      this.scalar();
    }
  }

  scalar(): void {
    const start = this.pos;
    while (!this.eof() && !SCALAR_END.has(this.peek())) this.advance();
    // A date and a time may be separated by a space: 1979-05-27 07:32:00.
    if (
      LOCAL_DATE.test(this.text.slice(start, this.pos)) && this.peek() === " " &&
      /\d/.test(this.peek(1))
    ) {
      this.advance();
      while (!this.eof() && !SCALAR_END.has(this.peek())) this.advance();
    }
  }

  array(path: TomlPath): void {
    this.advance(); // [
    let index = 0;
    while (!this.eof()) {
      this.skipAll();
      const c = this.peek();
      if (c === "]") {
        this.advance();
        return;
      }
      if (c === ",") {
        this.advance();
        continue;
      }
      const element = [...path, index];
      this.record(element, this.line);
      const before = this.pos;
      this.value(element);
      if (this.pos === before) this.advance();
      index++;
      this.skipAll();
      if (this.peek() === ",") this.advance();
    }
  }

  inlineTable(path: TomlPath): void {
    this.advance(); // {
    while (!this.eof()) {
      this.skipAll();
      const c = this.peek();
      if (c === "}") {
        this.advance();
        return;
      }
      if (c === ",") {
        this.advance();
        continue;
      }
      const before = this.pos;
      this.keyValue(path);
      if (this.pos === before) this.advance();
    }
  }

  basicString(): string {
    this.advance(); // "
    let out = "";
    while (!this.eof() && this.peek() !== '"' && this.peek() !== "\n") {
      if (this.peek() === "\\") {
        out += this.escape();
      } else {
        out += this.peek();
        this.advance();
      }
    }
    if (this.peek() === '"') this.advance();
    return out;
  }

  escape(): string {
    const c = this.peek(1);
    const simple = TOML_ESCAPES;
    if (c in simple) {
      this.advance(2);
      return simple[c];
    }
    const width = c === "u" ? 4 : c === "U" ? 8 : c === "x" ? 2 : 0;
    const hex = this.text.slice(this.pos + 2, this.pos + 2 + width);
    if (width > 0 && /^[0-9A-Fa-f]+$/.test(hex) && hex.length === width) {
      this.advance(2 + width);
      const code = parseInt(hex, 16);
      return code <= 0x10ffff ? String.fromCodePoint(code) : "";
    }
    this.advance(2);
    return c;
  }

  literalString(): string {
    this.advance(); // '
    const start = this.pos;
    while (!this.eof() && this.peek() !== "'" && this.peek() !== "\n") this.advance();
    const out = this.text.slice(start, this.pos);
    if (this.peek() === "'") this.advance();
    return out;
  }

  multiLineString(delimiter: string, escapes: boolean): void {
    this.advance(3);
    while (!this.eof()) {
      if (escapes && this.peek() === "\\") {
        this.advance(2);
      } else if (this.at(delimiter)) {
        this.advance(3);
        // Up to two quotes may end the content right before the delimiter: """a"""" is `a"`.
        for (let extra = 0; extra < 2 && this.peek() === delimiter[0]; extra++) this.advance();
        return;
      } else {
        this.advance();
      }
    }
  }
}

/** Scans a TOML text and returns line lookups for its tables, array elements and keys. */
export function locateToml(text: string): TomlLocations {
  const scanner = new Scanner(text);
  scanner.document();
  const lines = scanner.lines;
  return {
    lineOf(path: TomlPath): number | undefined {
      for (let length = path.length; length > 0; length--) {
        const line = lines.get(pathKey(path.slice(0, length)));
        if (line !== undefined) return line;
      }
      return undefined;
    },
    exactLineOf(path: TomlPath): number | undefined {
      return lines.get(pathKey(path));
    },
  };
}
