/**
 * The analysis of one text as the parse cache stores it: normalized (constants replaced by
 * parameters, comments taken out), parsed and analyzed; the text as written when normalizing
 * broke its syntax. Shared by the router's synchronous path and its parse worker.
 *
 * @module
 */

import { analyzeSql, type StatementInfo } from "./analyze.ts";
import { type Literal, normalize } from "./normalize.ts";

/** A text, analyzed. */
export interface AnalyzedText {
  /** The text that was parsed: the normalized one, or the text as written. */
  key: string;
  info: StatementInfo;
  /** Constants were replaced by parameters in `key` (`literals` fill them). */
  normalized: boolean;
  /** The text's constants; `literals[i]` is parameter `firstParam + i` of `key`. */
  literals: Literal[];
  firstParam: number;
  /** pgdog directives from comments. */
  directives: Map<string, string> | null;
}

/** Normalizes, parses and analyzes `sql` (never throws: a syntax error is in `info.error`). */
export function analyzeText(sql: string): AnalyzedText {
  const n = normalize(sql);
  let info = analyzeSql(n.key);
  if (info.error !== null && n.key !== sql) {
    // Replacing a literal broke the syntax somewhere: analyze the text as written.
    info = analyzeSql(sql);
    return { key: sql, info, normalized: false, literals: [], ...rest(n) };
  }
  const normalized = n.literals.length > 0;
  return { key: n.key, info, normalized, literals: normalized ? n.literals : [], ...rest(n) };
}

function rest(n: { firstParam: number; directives: Map<string, string> | null }) {
  return { firstParam: n.firstParam, directives: n.directives };
}
