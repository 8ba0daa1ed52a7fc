/**
 * The parse worker (see ./offload.ts): analyzes the texts the router sends, one at a time, and
 * answers with the analysis and, when small enough, the tree as JSON text.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { loadParser } from "./analyze.ts";
import { analyzeText } from "./analyze_text.ts";
import {
  distinctTables,
  type OffloadAnswer,
  type OffloadRequest,
  TREE_MAX_CHARS,
} from "./offload.ts";
import { findUniqueIdCalls } from "./unique_id_calls.ts";
import { errorMessage } from "../log.ts";
import { parseSync } from "libpg-query";
import { MAX_NESTING, nestingEstimate } from "./depth.ts";

await loadParser();

self.onmessage = (event: MessageEvent<OffloadRequest>) => {
  const { id, sql, uniqueIds, rawTree } = event.data;
  let answer: OffloadAnswer;
  try {
    const a = analyzeText(sql);
    let tree: string | null = a.info.ast === null ? "null" : JSON.stringify(a.info.ast);
    if (tree.length > TREE_MAX_CHARS) tree = null;
    answer = {
      id,
      ok: {
        key: a.key,
        normalized: a.normalized,
        literals: tree === null ? [] : a.literals,
        firstParam: a.firstParam,
        directives: a.directives === null ? null : [...a.directives],
        info: { ...a.info, ast: null, tables: distinctTables(a.info.tables) },
        tree,
        uniqueIdCalls: uniqueIds ? findUniqueIdCalls(sql) : [],
        rawTree: rawTree ? treeOfText(sql, a.normalized ? null : tree) : null,
      },
    };
  } catch (e) {
    answer = { id, error: errorMessage(e) };
  }
  self.postMessage(answer);
};

/** The tree of `sql` as written, as JSON (null when it does not parse or is too large). */
function treeOfText(sql: string, known: string | null): string | null {
  if (known !== null) return known;
  // Too deep for the parser (see depth.ts): it would break the parser for every later text.
  if (nestingEstimate(sql) > MAX_NESTING) return "null";
  try {
    const json = JSON.stringify(parseSync(sql));
    return json.length > TREE_MAX_CHARS ? null : json;
  } catch {
    return "null";
  }
}

self.postMessage("ready");
