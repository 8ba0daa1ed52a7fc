/**
 * How deeply a SQL text can nest, estimated lexically before it is parsed. PostgreSQL's parser in
 * libpg-query (WebAssembly) recurses once per level of the parse tree when it builds its output,
 * and a tree some 10,000 levels deep exhausts the stack: the call throws, and it leaves the module
 * broken for every later parse (its own stack pointer is never restored, and memory leaks). So a
 * text that could nest that deeply is never handed to it.
 *
 * The estimate bounds the parse tree's depth from above: a tree only gets deeper through brackets
 * (`(`, `[`, `CASE ... END`) or through chains of operators, keywords, `JOIN`s and set operations
 * between them; commas, `AND` and `OR` separate list items (PostgreSQL flattens `AND` and `OR`
 * chains into one list). Each bracket counts {@linkcode BRACKET_WEIGHT} and every other token one,
 * so the estimate overcounts ordinary queries several times and stays far below the limit.
 *
 * @module
 */

import { commentEnd, dollarTagEnd, isWordPart, isWordStart } from "./lex.ts";

/** What one bracket level counts (a parenthesized subquery adds some four tree levels). */
export const BRACKET_WEIGHT = 4;

/**
 * Texts whose estimate is above this are not parsed. At this estimate the parse tree is at most
 * some 1,000 levels deep; what exhausts the parser's stack is at least 6 times more (measured for
 * chains of `NOT`, `-`, `+`, `::`, `JOIN` and `UNION`, nested subqueries, functions, `CASE`,
 * arrays and parentheses).
 */
export const MAX_NESTING = 1000;

/** Words that start a new clause: an expression never continues across them. */
const CLAUSES = new Set([
  "select",
  "from",
  "where",
  "group",
  "having",
  "order",
  "limit",
  "offset",
  "fetch",
  "when",
  "then",
  "else",
  "on",
  "using",
  "set",
  "values",
  "returning",
  "window",
  "into",
  "with",
]);

interface Level {
  /** Opened by CASE (closed by END) rather than a bracket. */
  byCase: boolean;
  /** Depth of the enclosing levels where this one opened. */
  base: number;
  /** Tokens since the last separator. */
  chain: number;
  /** JOINs in the current FROM item. */
  joins: number;
  /** UNION, INTERSECT and EXCEPT so far. */
  setOps: number;
}

/**
 * The nesting estimate of `sql` (see the module documentation), or `Infinity` once it passes
 * `limit` (the scan stops there).
 */
export function nestingEstimate(sql: string, limit = MAX_NESTING): number {
  const n = sql.length;
  const newLevel = (byCase: boolean, base: number): Level => ({
    byCase,
    base,
    chain: 0,
    joins: 0,
    setOps: 0,
  });
  const stack: Level[] = [];
  let level = newLevel(false, 0);
  let max = 0;
  const depth = (): number =>
    level.base + BRACKET_WEIGHT + level.chain + level.joins + level.setOps;
  const open = (byCase: boolean): void => {
    stack.push(level);
    level = newLevel(byCase, depth());
  };
  const close = (byCase: boolean): void => {
    if (stack.length === 0 || level.byCase !== byCase) return;
    level = stack.pop()!;
    level.chain++;
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
    ) { // -- comment, /* nested */ comment
      i = commentEnd(sql, i);
      continue;
    }
    if (c === 0x28 || c === 0x5b) { // ( [
      open(false);
      i++;
    } else if (c === 0x29 || c === 0x5d) { // ) ]
      close(false);
      i++;
    } else if (c === 0x2c) { // ,
      level.chain = 0;
      level.joins = 0;
      i++;
    } else if (c === 0x3b) { // ;
      stack.length = 0;
      level = newLevel(false, 0);
      i++;
    } else if (c === 0x27) { // 'string' ('' escapes a quote)
      i = quotedEnd(sql, i, 0x27);
      level.chain++;
    } else if (c === 0x22) { // "identifier"
      i = quotedEnd(sql, i, 0x22);
      level.chain++;
    } else if (c === 0x24 && dollarTagEnd(sql, i) >= 0) { // $tag$ string $tag$
      const tag = sql.slice(i, dollarTagEnd(sql, i) + 1);
      const close = sql.indexOf(tag, i + tag.length);
      i = close < 0 ? n : close + tag.length;
      level.chain++;
    } else if (isWordStart(c)) {
      let j = i + 1;
      while (j < n && isWordPart(sql.charCodeAt(j))) j++;
      if (sql.charCodeAt(j) === 0x27) {
        // A prefixed string: E'..' (backslash escapes), B'..', X'..', N'..', U&'..'.
        const escapes = j === i + 1 && (c | 0x20) === 0x65;
        i = escapes ? escapeStringEnd(sql, j) : quotedEnd(sql, j, 0x27);
        level.chain++;
        continue;
      }
      const word = j - i <= 9 ? sql.slice(i, j).toLowerCase() : "";
      i = j;
      if (word === "and" || word === "or") level.chain = 0;
      else if (word === "case") open(true);
      else if (word === "end") close(true);
      else if (word === "join") level.joins++;
      else if (word === "union" || word === "intersect" || word === "except") level.setOps++;
      else if (CLAUSES.has(word)) {
        level.chain = 0;
        if (word === "select") level.joins = 0;
      } else level.chain++;
    } else if ((c >= 0x30 && c <= 0x39) || c === 0x24) { // a number or a $n parameter
      i++;
      while (i < n && (isWordPart(sql.charCodeAt(i)) || sql.charCodeAt(i) === 0x2e)) i++;
      level.chain++;
    } else {
      // Operators: every character counts (an operator of several characters may stand for
      // several nested ones, as `- -1` does).
      level.chain++;
      i++;
    }
    const d = depth();
    if (d > max) {
      max = d;
      if (max > limit) return Infinity;
    }
  }
  return max;
}

/** End (exclusive) of a quoted string or identifier starting at `start` (doubled quotes escape). */
function quotedEnd(sql: string, start: number, quote: number): number {
  let i = start + 1;
  for (;;) {
    const j = sql.indexOf(String.fromCharCode(quote), i);
    if (j < 0) return sql.length;
    if (sql.charCodeAt(j + 1) === quote) i = j + 2;
    else return j + 1;
  }
}

/** End (exclusive) of an E'...' string whose quote is at `quote` (backslashes escape). */
function escapeStringEnd(sql: string, quote: number): number {
  let i = quote + 1;
  while (i < sql.length) {
    const c = sql.charCodeAt(i);
    if (c === 0x5c) i += 2;
    else if (c === 0x27 && sql.charCodeAt(i + 1) === 0x27) i += 2;
    else if (c === 0x27) return i + 1;
    else i++;
  }
  return sql.length;
}
