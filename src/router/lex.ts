/**
 * The lexical pieces of SQL text every scanner here needs (normalize, the nesting estimate):
 * where a comment ends, dollar-quote tags, what makes a word. PostgreSQL's rules.
 *
 * @module
 */

/** End (exclusive) of the comment starting at `i` (`--` to end of line, nested `/* *\/`). */
export function commentEnd(sql: string, i: number): number {
  const n = sql.length;
  if (sql.charCodeAt(i) === 0x2d) {
    const end = sql.indexOf("\n", i);
    return end < 0 ? n : end;
  }
  let depth = 1;
  let j = i + 2;
  while (j < n && depth > 0) {
    if (sql.charCodeAt(j) === 0x2f && sql.charCodeAt(j + 1) === 0x2a) {
      depth++;
      j += 2;
    } else if (sql.charCodeAt(j) === 0x2a && sql.charCodeAt(j + 1) === 0x2f) {
      depth--;
      j += 2;
    } else {
      j++;
    }
  }
  return j;
}

/** Index of the closing `$` of a dollar-quote tag starting at `i`, or -1. */
export function dollarTagEnd(sql: string, i: number): number {
  if (isWordPart(sql.charCodeAt(i - 1))) return -1;
  let j = i + 1;
  if (sql.charCodeAt(j) === 0x24) return j;
  if (!isWordStart(sql.charCodeAt(j))) return -1;
  while (j < sql.length && isWordPart(sql.charCodeAt(j)) && sql.charCodeAt(j) !== 0x24) j++;
  return sql.charCodeAt(j) === 0x24 ? j : -1;
}

/** An ASCII digit. */
export function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

/** A character that may start an identifier or keyword. */
export function isWordStart(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x5f || c >= 0x80;
}

/** A character that may continue an identifier or keyword. */
export function isWordPart(c: number): boolean {
  return isWordStart(c) || isDigit(c) || c === 0x24;
}

/** The first index at or after `i` of `sql` that is not white space or part of a comment. */
export function skipBlanks(sql: string, i: number): number {
  for (;;) {
    while (i < sql.length && /\s/.test(sql[i])) i++;
    if (!sql.startsWith("--", i) && !sql.startsWith("/*", i)) return i;
    i = commentEnd(sql, i);
  }
}
