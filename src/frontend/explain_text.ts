/**
 * The parts of an EXPLAIN statement's text pgdog needs to run it on the shards of a cross-shard
 * query: its options as written (`(ANALYZE, BUFFERS)` or `ANALYZE VERBOSE`), the output format
 * they ask for, and the explained statement's text.
 *
 * @module
 */

import { skipBlanks } from "../router/lex.ts";

/** An EXPLAIN, cut into its parts. */
export interface ExplainText {
  /** The options as the client wrote them (empty: none), to put before the shards' statement. */
  options: string;
  /** FORMAT asked for, lower-case ("text" when none). */
  format: string;
  /** The explained statement. */
  statement: string;
}

const LEGACY_OPTIONS = /^(analyze|analyse|verbose)\b/i;

/** `sql` cut into its EXPLAIN parts; null when it is not an EXPLAIN. */
export function explainText(sql: string): ExplainText | null {
  let i = skipBlanks(sql, 0);
  if (!/^explain\b/i.test(sql.slice(i, i + 8))) return null;
  i = skipBlanks(sql, i + 7);
  const start = i;
  let format = "text";
  if (sql[i] === "(") {
    // Options in parentheses: up to the matching one (quoted names may hold parentheses).
    let depth = 0;
    let quote = "";
    for (; i < sql.length; i++) {
      const c = sql[i];
      if (quote !== "") {
        if (c === quote) quote = "";
      } else if (c === "'" || c === '"') quote = c;
      else if (c === "(") depth++;
      else if (c === ")" && --depth === 0) {
        i++;
        break;
      }
    }
    const m = /\bformat\s+"?(\w+)"?/i.exec(sql.slice(start, i));
    if (m !== null) format = m[1].toLowerCase();
  } else {
    for (;;) {
      const m = LEGACY_OPTIONS.exec(sql.slice(i));
      if (m === null) break;
      i = skipBlanks(sql, i + m[0].length);
    }
  }
  const options = sql.slice(start, i).trim();
  return { options, format, statement: sql.slice(skipBlanks(sql, i)) };
}
