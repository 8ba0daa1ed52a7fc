/**
 * Large texts are analyzed off the event loop, in a Worker of pgdog's own, so that one client's
 * 4 MB query does not hold every other client for seconds. Parsing costs about a microsecond per
 * byte, and PostgreSQL's parser (WebAssembly) keeps the memory it grew to: the worker is ended
 * shortly after a large text, which gives that memory back.
 *
 * What comes back is the analysis without the tree, and the tree as JSON text when it is small
 * enough to turn into objects on the event loop in a few milliseconds (at most
 * {@linkcode TREE_MAX_CHARS}); the router parses it only when a caller reads `info.ast`.
 *
 * @module
 */

import { errorMessage, log } from "../log.ts";
import type { StatementInfo, TableRef } from "./analyze.ts";
import type { Literal } from "./normalize.ts";
import type { CallSpan } from "./unique_id_calls.ts";

/** Texts up to this long (UTF-16 units) are analyzed on the event loop, and cached. */
export const ANALYZE_ON_LOOP_MAX = 8 * 1024;
/**
 * Texts longer than this are not parsed at all: their analysis is conservative (a write to the
 * primary; a sharded database refuses them). About a second of a core, and 200 MB of the
 * worker's memory while it parses.
 */
export const ANALYZE_MAX = 1024 * 1024;
/** A tree larger than this (JSON text) is not brought back: the analysis says the text is too large. */
export const TREE_MAX_CHARS = 1024 * 1024;
/** After a text at least this long, the worker ends once idle (its parser's memory goes back). */
const RECYCLE_AFTER_CHARS = 128 * 1024;
/** How long an idle worker waits for more work: briefly after a large text, else longer. */
const IDLE_AFTER_LARGE_MS = 500;
const IDLE_MS = 30_000;

/** What the worker sends back for one text. */
export interface OffloadedAnalysis {
  key: string;
  normalized: boolean;
  /** Only when `tree` is there (they fill its parameters). */
  literals: Literal[];
  firstParam: number;
  directives: Array<[string, string]> | null;
  /** The analysis, with `ast` null. */
  info: StatementInfo;
  /** `info.ast` as JSON text, or null when it was larger than TREE_MAX_CHARS. */
  tree: string | null;
  /** The calls of pgdog.unique_id() in the text (asked for only), else empty. */
  uniqueIdCalls: CallSpan[];
  /** The tree of the text as written (asked for only, when it was normalized), as JSON. */
  rawTree: string | null;
}

/** A request to the worker. */
export interface OffloadRequest {
  id: number;
  sql: string;
  /** Also find the calls of pgdog.unique_id(). */
  uniqueIds: boolean;
  /** Also parse the text as written, for plugins (when normalizing changed it). */
  rawTree: boolean;
}

/** An answer from the worker. */
export type OffloadAnswer =
  | { id: number; ok: OffloadedAnalysis }
  | { id: number; error: string };

const WORKER_URL = new URL("./parse_worker.ts", import.meta.url);

/** Tables named in a text, each once (a script may name one table thousands of times). */
export function distinctTables(tables: TableRef[]): TableRef[] {
  const seen = new Set<string>();
  return tables.filter((t) => {
    const key = `${t.schema ?? ""}\0${t.name}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** The parse worker: started when first needed, ended when idle. */
export class ParseWorker {
  #worker: Worker | null = null;
  #ready: Promise<void> | null = null;
  #next = 1;
  readonly #pending = new Map<
    number,
    { resolve: (a: OffloadedAnalysis) => void; reject: (e: Error) => void }
  >();
  #largest = 0;
  #idle: ReturnType<typeof setTimeout> | null = null;
  /** The worker could not start: texts are analyzed on the event loop instead. */
  failed = false;
  /** Texts analyzed here, and workers started (for tests and SHOW output). */
  analyzed = 0;
  started = 0;

  /** Analyzes `sql` in the worker. Rejects when the worker fails (or cannot start). */
  async analyze(
    sql: string,
    options: { uniqueIds: boolean; rawTree?: boolean },
  ): Promise<OffloadedAnalysis> {
    if (this.#idle !== null) {
      clearTimeout(this.#idle);
      this.#idle = null;
    }
    const worker = this.#start();
    await this.#ready;
    if (this.#worker !== worker) throw new Error("the parse worker could not start");
    const id = this.#next++;
    this.#largest = Math.max(this.#largest, sql.length);
    const answer = new Promise<OffloadedAnalysis>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
    });
    const request: OffloadRequest = {
      id,
      sql,
      uniqueIds: options.uniqueIds,
      rawTree: options.rawTree ?? false,
    };
    worker.postMessage(request);
    try {
      return await answer;
    } finally {
      this.analyzed++;
      if (this.#pending.size === 0) this.#idleLater();
    }
  }

  #start(): Worker {
    if (this.#worker !== null) return this.#worker;
    const worker = new Worker(WORKER_URL.href, { type: "module", name: "pgdog parser" });
    this.#worker = worker;
    this.started++;
    this.#largest = 0;
    let loaded: () => void = () => {};
    let up = false;
    this.#ready = new Promise<void>((resolve) => loaded = resolve);
    worker.onmessage = (event: MessageEvent<OffloadAnswer | "ready">) => {
      const data = event.data;
      if (data === "ready") {
        up = true;
        loaded();
        return;
      }
      const pending = this.#pending.get(data.id);
      if (pending === undefined) return;
      this.#pending.delete(data.id);
      if ("ok" in data) pending.resolve(data.ok);
      else pending.reject(new Error(data.error));
    };
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      log.error(`the parse worker failed: ${event.message}`);
      // One that cannot even start (say, no permission to read its module) is not tried again.
      if (!up) this.failed = true;
      this.#end(new Error(`the parse worker failed: ${event.message}`));
      loaded();
    };
    return worker;
  }

  /** Ends the worker once nothing is pending: soon after a large text, later otherwise. */
  #idleLater(): void {
    const wait = this.#largest >= RECYCLE_AFTER_CHARS ? IDLE_AFTER_LARGE_MS : IDLE_MS;
    this.#idle = setTimeout(() => {
      this.#idle = null;
      if (this.#pending.size === 0) this.#end(null);
    }, wait);
    Deno.unrefTimer(this.#idle);
  }

  #end(why: Error | null): void {
    const worker = this.#worker;
    this.#worker = null;
    this.#ready = null;
    if (worker !== null) {
      try {
        worker.terminate();
      } catch (e) {
        log.debug(`parse worker: ${errorMessage(e)}`);
      }
    }
    const error = why ?? new Error("the parse worker was stopped");
    for (const pending of this.#pending.values()) pending.reject(error);
    this.#pending.clear();
  }

  /** Ends the worker (and fails what is pending). */
  close(): void {
    if (this.#idle !== null) clearTimeout(this.#idle);
    this.#idle = null;
    this.#end(null);
  }
}
