/**
 * The query router's front door: one call answers every question about a statement (read or
 * write, transaction control, tables, literal values and comment directives for sharding, later
 * plugins). Parse results are cached by normalized text, so queries that differ only in their
 * literals share an entry, and a cache hit costs a lexical scan and a map lookup.
 *
 * @module
 */

import { parseSync } from "libpg-query";
import { analyzeSql, type StatementInfo } from "./analyze.ts";
import { type Literal, normalize } from "./normalize.ts";
import { LruMap } from "../lru.ts";
import { MAX_NESTING, nestingEstimate } from "./depth.ts";

export {
  analyzeSql,
  loadParser,
  parserLoaded,
  type StatementInfo,
  type TableRef,
  type TxControl,
} from "./analyze.ts";
export type { Literal } from "./normalize.ts";

/** One cached parse, with the counters SHOW QUERY_CACHE reports. */
export interface CacheEntry {
  /** The normalized query (the cache key). */
  readonly query: string;
  readonly info: StatementInfo;
  /** Literals were replaced by parameters in the parsed text. */
  readonly normalized: boolean;
  hits: number;
  /** Times routed to one shard / to several (sharding). */
  direct: number;
  multi: number;
  /** The parse tree as JSON text, for plugins (kept once asked for, when it has the literals). */
  treeJson?: string;
  /** The tables as JSON text, for plugins (kept once asked for). */
  tablesJson?: string;
}

/** A statement, analyzed: the cached facts plus this query's own literals and directives. */
export interface Analysis {
  entry: CacheEntry;
  info: StatementInfo;
  /** This query's literal values; `literals[i]` is parameter `firstParam + i` in the parse tree. */
  literals: Literal[];
  firstParam: number;
  /** pgdog directives from comments (`role`, `shard`, `sharding_key`). */
  directives: Map<string, string> | null;
}

/** Parse trees of texts with literals kept for plugins (a few: literals vary). */
const TREE_CACHE = 256;

/** Parses, analyzes and caches statements. */
export class QueryRouter {
  readonly #cache: LruMap<string, CacheEntry>;
  /** Cache hits and misses since start. */
  hits = 0;
  misses = 0;

  constructor(options: { cacheLimit: number }) {
    this.#cache = new LruMap(options.cacheLimit);
  }

  /** Analyzes `sql` (a simple query, or the text of a Parse). */
  analyze(sql: string): Analysis {
    const n = normalize(sql);
    let entry = this.#cache.get(n.key);
    if (entry !== undefined) {
      this.hits++;
      entry.hits++;
      // The entry may have come from a text with these very parameters ($n written by the
      // client): this query's literals still fill them.
      return {
        entry,
        info: entry.info,
        literals: n.literals,
        firstParam: n.firstParam,
        directives: n.directives,
      };
    }
    this.misses++;
    let info = analyzeSql(n.key);
    let normalized = n.literals.length > 0;
    let key = n.key;
    if (info.error !== null && n.key !== sql) {
      // Replacing a literal broke the syntax somewhere: analyze (and cache) the text as written.
      info = analyzeSql(sql);
      normalized = false;
      key = sql;
    }
    entry = { query: key, info, normalized, hits: 1, direct: 0, multi: 0 };
    this.#cache.set(key, entry);
    return normalized
      ? { entry, info, literals: n.literals, firstParam: n.firstParam, directives: n.directives }
      : { entry, info, literals: [], firstParam: n.firstParam, directives: n.directives };
  }

  /**
   * PostgreSQL's parse tree of `sql` (the text `analysis` came from) as JSON text, with its
   * literals: the cached tree when normalizing changed nothing, else a parse of the text itself
   * (the last few are kept). "null" when it does not parse.
   */
  treeJson(analysis: Analysis, sql: string): string {
    const entry = analysis.entry;
    if (!entry.normalized && entry.query === sql) {
      return entry.treeJson ??= treeText(entry.info.ast);
    }
    let json = this.#trees.get(sql);
    if (json === undefined) {
      // A text too deep for the parser (see depth.ts) has no tree: never hand it to the parser.
      json = analysis.info.tooDeep || nestingEstimate(sql) > MAX_NESTING ? "null" : treeText(sql);
      this.#trees.set(sql, json);
    }
    return json;
  }

  readonly #trees = new LruMap<string, string>(TREE_CACHE);

  /** Cached entries, least recently used first (SHOW QUERY_CACHE). */
  entries(): IterableIterator<CacheEntry> {
    return this.#cache.values();
  }

  /** Number of cached entries. */
  get size(): number {
    return this.#cache.size;
  }

  /** Changes the limit (RELOAD, SET); evicts down to it. */
  setLimit(limit: number): void {
    this.#cache.limit = limit;
  }

  /** Empties the cache (RESET QUERY_CACHE). */
  clear(): void {
    this.#cache.clear();
  }
}

/** A parse tree (or the tree of a text) as JSON text; "null" when there is none. */
function treeText(tree: unknown): string {
  try {
    return JSON.stringify(typeof tree === "string" ? parseSync(tree) : tree);
  } catch {
    return "null"; // a syntax error, or a tree too deep for JSON.stringify
  }
}
