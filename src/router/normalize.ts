/**
 * A single lexical pass over a query that (1) replaces literal constants with parameters, so
 * `... WHERE aid = 17` and `... WHERE aid = 42` share one parse-cache entry, (2) keeps the
 * literals' values for the router, and (3) takes pgdog's comment directives
 * (`/* pgdog_role: replica *\/`, `/* pgdog_shard: 2 *\/`, `/* pgdog_sharding_key: 42 *\/`) out of
 * the text, so comments never split the cache (nor the blanks they leave at either end).
 *
 * @module
 */

import { commentEnd, dollarTagEnd, isDigit, isWordPart, isWordStart } from "./lex.ts";

/** A query with its constants replaced. */
export interface Normalized {
  /** The text with literals replaced by `$n` and comments removed: the cache key. */
  key: string;
  /** Literal values, in order: `literals[i]` stands for parameter `$firstParam + i`. */
  literals: Literal[];
  /** The number of the first parameter that replaced a literal. */
  firstParam: number;
  /** pgdog directives found in comments, e.g. `role` → `replica`. */
  directives: Map<string, string> | null;
}

/** A literal taken out of the query. */
export interface Literal {
  /** A string constant (quoted), or a number. */
  kind: "string" | "number";
  value: string;
}

const DIRECTIVE = /pgdog_(role|shard|sharding_key)\s*:\s*("(?:[^"]*)"|'(?:[^']*)'|[^\s*]+)/g;

/**
 * Normalizes `sql`. Typed literals such as `interval '1 day'` or `date '2024-01-01'` stay in the
 * text, because `interval $1` would not parse.
 */
export function normalize(sql: string): Normalized {
  const n = sql.length;
  // New parameters are numbered after any the text already has.
  let maxParam = 0;
  if (sql.includes("$")) {
    for (const m of sql.matchAll(PARAM)) maxParam = Math.max(maxParam, Number(m[1]));
  }
  const firstParam = maxParam + 1;
  const literals: Literal[] = [];
  let directives: Map<string, string> | null = null;
  let key = "";
  let from = 0;
  let prevTypeWord = false;
  let removedComment = false;
  const replace = (start: number, end: number, literal: Literal): void => {
    key += sql.slice(from, start) + "$" + (firstParam + literals.length);
    literals.push(literal);
    from = end;
  };
  let i = 0;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (c <= 0x20) {
      i++;
      continue;
    }
    if (
      (c === 0x2d && sql.charCodeAt(i + 1) === 0x2d) ||
      (c === 0x2f && sql.charCodeAt(i + 1) === 0x2a)
    ) {
      const end = commentEnd(sql, i);
      directives = collectDirectives(sql.slice(i + 2, end), directives);
      removedComment = true;
      key += sql.slice(from, i) + " ";
      from = end;
      i = end;
      continue;
    }
    const typed = prevTypeWord;
    prevTypeWord = false;
    if (
      c === 0x27 ||
      ((c === 0x45 || c === 0x65) && sql.charCodeAt(i + 1) === 0x27 &&
        !isWordPart(sql.charCodeAt(i - 1)))
    ) {
      const [value, end] = c === 0x27 ? readQuoted(sql, i) : readEscape(sql, i + 1);
      if (!typed) replace(i, end, { kind: "string", value });
      i = end;
      continue;
    }
    if (c === 0x22) {
      i = readQuoted(sql, i)[1];
      continue;
    }
    if (c === 0x24) {
      const tagEnd = dollarTagEnd(sql, i);
      if (tagEnd > 0) {
        const tag = sql.slice(i, tagEnd + 1);
        const close = sql.indexOf(tag, tagEnd + 1);
        const end = close < 0 ? n : close + tag.length;
        if (!typed) {
          replace(i, end, { kind: "string", value: sql.slice(tagEnd + 1, close < 0 ? n : close) });
        }
        i = end;
        continue;
      }
      i++;
      while (i < n && isDigit(sql.charCodeAt(i))) i++;
      continue;
    }
    if (isDigit(c) || (c === 0x2e && isDigit(sql.charCodeAt(i + 1)))) {
      let j = i;
      while (
        j < n &&
        (isDigit(sql.charCodeAt(j)) || sql.charCodeAt(j) === 0x2e || sql.charCodeAt(j) === 0x5f)
      ) j++;
      if (j < n && (sql.charCodeAt(j) | 0x20) === 0x65) { // exponent
        let k = j + 1;
        if (sql.charCodeAt(k) === 0x2b || sql.charCodeAt(k) === 0x2d) k++;
        if (isDigit(sql.charCodeAt(k))) {
          j = k;
          while (j < n && isDigit(sql.charCodeAt(j))) j++;
        }
      }
      if (!isWordPart(sql.charCodeAt(j))) replace(i, j, { kind: "number", value: sql.slice(i, j) });
      i = j;
      continue;
    }
    if (isWordStart(c)) {
      let j = i + 1;
      while (j < n && isWordPart(sql.charCodeAt(j))) j++;
      prevTypeWord = TYPE_NAMES.has(sql.slice(i, j).toLowerCase());
      i = j;
      continue;
    }
    i++;
  }
  if (from === 0) return { key: sql, literals, firstParam, directives };
  key += sql.slice(from);
  // Without its comments, `/* app: x */ SELECT 1` is the same statement as `SELECT 1`.
  return { key: removedComment ? key.trim() : key, literals, firstParam, directives };
}

const PARAM = /\$(\d+)/g;

/** Words after which a string literal is a typed constant (`interval '1 day'`). */
const TYPE_NAMES = new Set([
  "interval",
  "date",
  "time",
  "timestamp",
  "timestamptz",
  "timetz",
  "json",
  "jsonb",
  "uuid",
  "inet",
  "cidr",
  "macaddr",
  "bit",
  "varbit",
  "numeric",
  "decimal",
  "real",
  "float",
  "double",
  "precision",
  "integer",
  "int",
  "int2",
  "int4",
  "int8",
  "bigint",
  "smallint",
  "boolean",
  "bool",
  "text",
  "varchar",
  "char",
  "character",
  "bytea",
  "money",
  "point",
  "zone",
]);

function collectDirectives(
  comment: string,
  into: Map<string, string> | null,
): Map<string, string> | null {
  if (!comment.includes("pgdog_")) return into;
  for (const m of comment.matchAll(DIRECTIVE)) {
    into ??= new Map();
    let v = m[2];
    if ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'"))) {
      v = v.slice(1, -1);
    }
    // The first directive of a kind wins (a leading comment beats a trailing one).
    if (!into.has(m[1])) into.set(m[1], v);
  }
  return into;
}

function readQuoted(sql: string, start: number): [string, number] {
  const q = sql[start];
  let value = "";
  let i = start + 1;
  for (;;) {
    const j = sql.indexOf(q, i);
    if (j < 0) return [value + sql.slice(i), sql.length];
    value += sql.slice(i, j);
    if (sql[j + 1] === q) {
      value += q;
      i = j + 2;
    } else {
      return [value, j + 1];
    }
  }
}

function readEscape(sql: string, quote: number): [string, number] {
  let value = "";
  let i = quote + 1;
  while (i < sql.length) {
    const ch = sql[i];
    if (ch === "\\" && i + 1 < sql.length) {
      const e = sql[i + 1];
      value += e === "n"
        ? "\n"
        : e === "t"
        ? "\t"
        : e === "r"
        ? "\r"
        : e === "b"
        ? "\b"
        : e === "f"
        ? "\f"
        : e;
      i += 2;
    } else if (ch === "'" && sql[i + 1] === "'") {
      value += "'";
      i += 2;
    } else if (ch === "'") {
      return [value, i + 1];
    } else {
      value += ch;
      i++;
    }
  }
  return [value, sql.length];
}
