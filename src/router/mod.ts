/**
 * The query router's front door: one call answers every question about a statement (read or
 * write, transaction control, tables, literal values and comment directives for sharding, later
 * plugins). Parse results are cached by normalized text, so queries that differ only in their
 * literals share an entry, and a cache hit costs a lexical scan and a map lookup.
 *
 * @module
 */

import { parseSync } from "libpg-query";
import { analyzeSql, type StatementInfo, unparsedInfo } from "./analyze.ts";
import { type Literal, normalize } from "./normalize.ts";
import { LruMap } from "../lru.ts";
import { errorMessage, log } from "../log.ts";
import { mayCallUniqueId, replaceCalls, rewriteUniqueIdCalls } from "./unique_id_calls.ts";
import { analyzeText } from "./analyze_text.ts";
import {
  ANALYZE_MAX,
  ANALYZE_ON_LOOP_MAX,
  type OffloadedAnalysis,
  ParseWorker,
  TREE_MAX_CHARS,
} from "./offload.ts";
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
export { ANALYZE_MAX, ANALYZE_ON_LOOP_MAX, TREE_MAX_CHARS } from "./offload.ts";

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
/** How long a text analyzed ahead of time (see QueryRouter.prepare) is kept for its callers. */
const KEPT_MS = 5_000;
/** At most this many such texts are kept at once. */
const KEPT_MAX = 32;

/** A large text analyzed ahead of its synchronous use (see {@linkcode QueryRouter.prepare}). */
interface Kept {
  at: number;
  analysis?: Analysis;
  /** The text with its pgdog.unique_id() calls replaced (null: it has none), used once. */
  uniqueIds?: string | null;
  /** The parse tree of the text as written (with its constants) as JSON, for plugins. */
  rawTree?: string;
}

/**
 * Parses, analyzes and caches statements. Texts up to {@linkcode ANALYZE_ON_LOOP_MAX} long are
 * analyzed on the event loop and cached; longer ones are analyzed in a worker by
 * {@linkcode QueryRouter.prepare} (awaited before the synchronous calls, which then find its
 * answer), never cached, and not parsed at all beyond {@linkcode ANALYZE_MAX}.
 */
export class QueryRouter {
  readonly #cache: LruMap<string, CacheEntry>;
  readonly #offload = new ParseWorker();
  readonly #kept = new Map<string, Kept>();
  #sweep: ReturnType<typeof setInterval> | null = null;
  /** Cache hits and misses since start. */
  hits = 0;
  misses = 0;
  /** Texts analyzed in the worker, and texts too large to analyze whole. */
  offloaded = 0;
  tooLarge = 0;

  constructor(options: { cacheLimit: number }) {
    this.#cache = new LruMap(options.cacheLimit);
  }

  /** Analyzes `sql` (a simple query, or the text of a Parse). */
  analyze(sql: string): Analysis {
    const kept = this.#kept.get(sql)?.analysis;
    if (kept !== undefined) return kept;
    // Large texts are never cached; without prepare() first, they are analyzed here.
    if (sql.length > ANALYZE_ON_LOOP_MAX) return this.#analyzeLarge(sql);
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

  /** True when {@linkcode prepare} would analyze `sql` off the event loop. */
  needsPreparing(sql: string): boolean {
    return sql.length > ANALYZE_ON_LOOP_MAX && !this.#offload.failed &&
      this.#kept.get(sql)?.analysis === undefined;
  }

  /**
   * Analyzes a large text off the event loop (in the parse worker), so that the synchronous
   * calls that follow ({@linkcode analyze}, {@linkcode rewriteUniqueIds}, {@linkcode treeJson})
   * find the answer instead of parsing. Does nothing for a short text. With `uniqueIds`, the
   * text's calls of pgdog.unique_id() are replaced by its ids, and the new text analyzed.
   * With `rawTree`, the tree of the text as written (its constants in it) is kept for plugins.
   * Never rejects: should the worker fail, the synchronous calls parse on the event loop.
   */
  async prepare(
    sql: string,
    options: { uniqueIds?: () => string; rawTree?: boolean } = {},
  ): Promise<void> {
    if (!this.needsPreparing(sql)) return;
    if (sql.length > ANALYZE_MAX) {
      this.#keep(sql, { analysis: this.#notParsed(sql), uniqueIds: null });
      return;
    }
    const findIds = options.uniqueIds !== undefined && mayCallUniqueId(sql);
    let answer: OffloadedAnalysis;
    try {
      answer = await this.#offload.analyze(sql, { uniqueIds: findIds, rawTree: options.rawTree });
    } catch (e) {
      log.warn(
        `a ${sql.length}-character statement is analyzed on the event loop: ${errorMessage(e)}`,
      );
      return;
    }
    this.offloaded++;
    if (answer.uniqueIdCalls.length > 0) {
      const rewritten = replaceCalls(sql, answer.uniqueIdCalls, options.uniqueIds!);
      this.#keep(sql, { uniqueIds: rewritten });
      await this.prepare(rewritten, { rawTree: options.rawTree });
      return;
    }
    const kept: Omit<Kept, "at"> = { analysis: this.#offloaded(sql, answer) };
    if (findIds) kept.uniqueIds = null;
    if (answer.rawTree !== null) kept.rawTree = answer.rawTree;
    this.#keep(sql, kept);
  }

  /**
   * `sql` with each call of `pgdog.unique_id()` (as PostgreSQL's parser sees calls: not inside
   * strings, quoted names or comments) replaced by `next()`; null when it calls none. A large
   * text's replacement was made by {@linkcode prepare} (each replacement is used once).
   */
  rewriteUniqueIds(sql: string, next: () => string): string | null {
    const kept = this.#kept.get(sql);
    if (kept?.uniqueIds !== undefined) {
      const rewritten = kept.uniqueIds;
      if (rewritten !== null) this.#kept.delete(sql);
      return rewritten;
    }
    // Not parsed at all: PostgreSQL reports that the schema pgdog does not exist.
    if (sql.length > ANALYZE_MAX) return null;
    return rewriteUniqueIdCalls(sql, next);
  }

  /** A large text analyzed without prepare(): on the event loop, uncached. */
  #analyzeLarge(sql: string): Analysis {
    if (sql.length > ANALYZE_MAX) return this.#notParsed(sql);
    const a = analyzeText(sql);
    const entry: CacheEntry = {
      query: a.key,
      info: a.info,
      normalized: a.normalized,
      hits: 1,
      direct: 0,
      multi: 0,
    };
    return {
      entry,
      info: a.info,
      literals: a.literals,
      firstParam: a.firstParam,
      directives: a.directives,
    };
  }

  /** The analysis the worker sent: its tree parsed when first read, or none when too large. */
  #offloaded(sql: string, a: OffloadedAnalysis): Analysis {
    const info = a.info;
    const tree = a.tree;
    if (tree === null) {
      this.tooLarge++;
      info.tooLarge = `the statement is too large to route by its parse tree (${sql.length} ` +
        `characters; its tree would be over ${TREE_MAX_CHARS / 1024 / 1024} MiB)`;
    } else {
      let ast: StatementInfo["ast"] | undefined;
      Object.defineProperty(info, "ast", {
        get: () => ast ??= JSON.parse(tree),
        enumerable: true,
        configurable: true,
      });
    }
    const entry: CacheEntry = {
      query: a.key,
      info,
      normalized: a.normalized,
      hits: 1,
      direct: 0,
      multi: 0,
    };
    if (!a.normalized && tree !== null) entry.treeJson = tree;
    return {
      entry,
      info,
      literals: a.literals,
      firstParam: a.firstParam,
      directives: a.directives === null ? null : new Map(a.directives),
    };
  }

  /**
   * A text too large to parse: conservative facts (a write; no tables), and the directives of a
   * comment at its start.
   */
  #notParsed(sql: string): Analysis {
    this.tooLarge++;
    const info = unparsedInfo({
      error: null,
      tooLarge: `the statement is too large to analyze (${sql.length} characters; pgdog parses ` +
        `at most ${ANALYZE_MAX / 1024 / 1024} MiB)`,
    });
    const head = normalize(sql.slice(0, 4096));
    const entry: CacheEntry = { query: sql, info, normalized: false, hits: 1, direct: 0, multi: 0 };
    return { entry, info, literals: [], firstParam: 1, directives: head.directives };
  }

  /** Keeps what prepare() found for `sql` for KEPT_MS (for the synchronous calls after it). */
  #keep(sql: string, found: Omit<Kept, "at">): void {
    const kept: Kept = { ...found, at: Date.now() };
    this.#kept.delete(sql);
    this.#kept.set(sql, kept);
    if (this.#kept.size > KEPT_MAX) this.#kept.delete(this.#kept.keys().next().value!);
    if (this.#sweep === null) {
      this.#sweep = setInterval(() => this.#expire(), 1_000);
      Deno.unrefTimer(this.#sweep);
    }
  }

  #expire(): void {
    const old = Date.now() - KEPT_MS;
    for (const [sql, kept] of this.#kept) {
      if (kept.at < old) this.#kept.delete(sql);
    }
    if (this.#kept.size === 0 && this.#sweep !== null) {
      clearInterval(this.#sweep);
      this.#sweep = null;
    }
  }

  /** Stops the parse worker and forgets what prepare() kept (the proxy is shutting down). */
  close(): void {
    this.#offload.close();
    this.#kept.clear();
    if (this.#sweep !== null) clearInterval(this.#sweep);
    this.#sweep = null;
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
    if (sql.length > ANALYZE_ON_LOOP_MAX) {
      // Parsed (or not) by prepare(); never here, and never kept among the trees.
      return this.#kept.get(sql)?.rawTree ?? "null";
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
