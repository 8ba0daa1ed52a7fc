/**
 * `pgdog.unique_id()` in prepared statements (the extended protocol). PostgreSQL has no `pgdog`
 * schema, and a prepared statement runs many times, each time with a fresh id; so:
 *
 * - the server prepares the client's statement with a stand-in literal where each call was
 *   ({@linkcode PLACEHOLDER_ID}, a bigint as every id), so Describe reports the same parameter
 *   and column types and names the call would;
 * - each Bind of it runs a statement of pgdog's own instead: the text with fresh ids written in,
 *   parsed just before the Bind (under {@linkcode EXECUTION_STATEMENT}, closed first), and the
 *   client's Bind retargeted to it, with the client's parameters unchanged.
 *
 * The text an execution runs is decided when its request is routed, so routing sees its ids (an
 * id may be the sharding key), and the same text goes to every shard a request runs on.
 *
 * @module
 */

import { MessageBuilder, Msg } from "../protocol/messages.ts";
import type { UniqueIdGenerator } from "../sharding/unique_id.ts";
import {
  type CallSpan,
  findUniqueIdCalls,
  mayCallUniqueId,
  PLACEHOLDER_ID,
  replaceCalls,
} from "../router/unique_id_calls.ts";
import { rewriteBind, statementMessage } from "./prepared.ts";

/** The server-side statement an execution runs under (closed and parsed again for each Bind). */
export const EXECUTION_STATEMENT = "__pgdog_unique_id";

/** A client statement that calls `pgdog.unique_id()`. */
interface Template {
  sql: string;
  spans: CallSpan[];
  /** The Parse message's parameter types, as sent (count, then the type oids). */
  types: Uint8Array;
  /** The text its next execution runs, when a Parse's routing already chose its ids. */
  queued: string | null;
}

/** What a Parse that calls `pgdog.unique_id()` becomes. */
export interface UniqueIdParse {
  /** The Parse to send instead: the same name and types, with stand-ins for the calls. */
  parse: Uint8Array;
  /** The text the statement's next execution runs, with its ids (for routing). */
  next: string;
}

/** The messages that stand for one Bind of a statement that calls `pgdog.unique_id()`. */
export interface UniqueIdExecution {
  /** Close of the execution statement (its CloseComplete is pgdog's, not the client's). */
  close: Uint8Array;
  /** Parse of the execution statement (its ParseComplete is pgdog's; an error is the client's). */
  parse: Uint8Array;
  /** The client's Bind, retargeted to the execution statement. */
  bind: Uint8Array;
}

const utf8 = new TextDecoder();

/** One client's statements that call `pgdog.unique_id()`, by statement name ("" unnamed). */
export class UniqueIdStatements {
  readonly #ids: UniqueIdGenerator;
  readonly #templates = new Map<string, Template>();
  /** The execution decided for the Bind at this offset of the client's read buffer. */
  #current: { name: string; at: number; text: string } | null = null;
  /**
   * Texts Binds at these offsets run instead of their statement's (a write for several shards
   * with its non-deterministic calls computed, see non_deterministic_run.ts).
   */
  readonly #instead = new Map<number, { name: string; text: string; types: Uint8Array }>();

  constructor(ids: UniqueIdGenerator) {
    this.#ids = ids;
  }

  /** No statement of the client calls `pgdog.unique_id()`. */
  get empty(): boolean {
    return this.#templates.size === 0 && this.#instead.size === 0;
  }

  /**
   * The Bind at offset `at` of the read buffer (statement `name`, whose Parse had these parameter
   * `types`) runs `text` instead, as an execution statement (this batch only).
   */
  runInstead(name: string, at: number, run: { text: string; types: Uint8Array }): void {
    this.#instead.set(at, { name, ...run });
  }

  /**
   * A Parse message at [p, end) of `buf`: remembers (or forgets) its statement, and when it calls
   * `pgdog.unique_id()`, what to send instead and the text of its next execution.
   */
  parse(buf: Uint8Array, p: number, end: number): UniqueIdParse | null {
    const nameEnd = buf.indexOf(0, p + 5);
    const queryEnd = buf.indexOf(0, nameEnd + 1);
    const name = utf8.decode(buf.subarray(p + 5, nameEnd));
    const sql = utf8.decode(buf.subarray(nameEnd + 1, queryEnd));
    const spans = mayCallUniqueId(sql) ? findUniqueIdCalls(sql) : [];
    if (spans.length === 0) {
      this.#templates.delete(name);
      return null;
    }
    const types = buf.slice(queryEnd + 1, end);
    const next = this.#fill(sql, spans);
    this.#templates.set(name, { sql, spans, types, queued: next });
    const described = replaceCalls(sql, spans, () => PLACEHOLDER_ID);
    return { parse: parseMessage(name, described, types), next };
  }

  /** Forgets statement `name` (Close). */
  forget(name: string): void {
    this.#templates.delete(name);
  }

  /** Forgets every statement (DISCARD ALL, DEALLOCATE ALL). */
  clear(): void {
    this.#templates.clear();
    this.#current = null;
    this.#instead.clear();
  }

  /**
   * The read buffer's offsets start over (a new batch of messages): an execution decided for an
   * offset before belongs to an earlier Bind.
   */
  newBatch(): void {
    this.#current = null;
    this.#instead.clear();
  }

  /**
   * The text the Bind at offset `at` of statement `name` runs, with its ids; null when the
   * statement calls no `pgdog.unique_id()`. Asked again for the same Bind (routing, then each
   * shard it goes to), it answers the same.
   */
  execution(name: string, at: number): string | null {
    const instead = this.#instead.get(at);
    if (instead !== undefined && instead.name === name) return instead.text;
    const template = this.#templates.get(name);
    if (template === undefined) return null;
    const current = this.#current;
    if (current !== null && current.at === at && current.name === name) return current.text;
    const text = template.queued ?? this.#fill(template.sql, template.spans);
    template.queued = null;
    this.#current = { name, at, text };
    return text;
  }

  /** What to send for the Bind at [p, end) of `buf`, which runs `text` (see {@linkcode execution}). */
  messages(buf: Uint8Array, p: number, end: number, name: string, text: string): UniqueIdExecution {
    const instead = this.#instead.get(p);
    const types = instead !== undefined && instead.name === name
      ? instead.types
      : this.#templates.get(name)!.types;
    return {
      close: statementMessage(Msg.Close, EXECUTION_STATEMENT),
      parse: parseMessage(EXECUTION_STATEMENT, text, types),
      bind: rewriteBind(buf, p, end, EXECUTION_STATEMENT),
    };
  }

  #fill(sql: string, spans: readonly CallSpan[]): string {
    return replaceCalls(sql, spans, () => this.#ids.nextText());
  }
}

/** A Parse message: statement `name`, `sql`, and the parameter types as sent by the client. */
function parseMessage(name: string, sql: string, types: Uint8Array): Uint8Array {
  return new MessageBuilder(name.length + sql.length * 3 + types.length + 16)
    .begin(Msg.Parse)
    .cstring(name)
    .cstring(sql)
    .bytes(types)
    .end()
    .build();
}
