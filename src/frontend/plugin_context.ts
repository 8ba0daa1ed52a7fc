/**
 * The JSON a `route` plugin hook receives for one statement, built as text in one pass (the parse
 * tree is already JSON text, cached by the router), and the messages a rewrite answer becomes.
 *
 * @module
 */

import { MessageBuilder, Msg } from "../protocol/messages.ts";
import type { BindValues } from "../router/shard.ts";
import type { Role } from "../router/route.ts";

const utf8 = new TextDecoder();

/** What the client side knows about a statement when it asks the plugins. */
export interface PluginStatement {
  sql: string;
  /** The parse tree as JSON text ("null" when it does not parse). */
  treeJson: string;
  bind: BindValues | null;
  /** The tables as JSON text. */
  tablesJson: string;
  keys: ReadonlyArray<{ table?: string; column: string; value: string }>;
  write: boolean;
  inTransaction: boolean;
  shards: number;
  replicas: boolean;
  role: Role;
  shard: number | "all" | null;
  user: string;
  database: string;
  applicationName: string;
}

/** The RouteContext JSON text for `s`. */
export function routeContextJson(s: PluginStatement): string {
  return `{"query":${JSON.stringify(s.sql)},"statement":${s.treeJson},"params":${
    JSON.stringify(bindText(s.bind))
  },"tables":${s.tablesJson},"shardingKeys":${JSON.stringify(s.keys)},"write":${s.write},` +
    `"inTransaction":${s.inTransaction},"cluster":{"shards":${s.shards},"replicas":${s.replicas}},` +
    `"decision":{"role":"${s.role}","shard":${JSON.stringify(s.shard)}},"user":${
      JSON.stringify(s.user)
    },"database":${JSON.stringify(s.database)},"applicationName":${
      JSON.stringify(s.applicationName)
    }}`;
}

/** Bind values as text: text-format values as they are, binary ones as `\x` hex (bytea style). */
export function bindText(bind: BindValues | null): Array<string | null> {
  if (bind === null) return [];
  return bind.values.map((value, i) => {
    if (value === null) return null;
    const format = bind.formats.length === 1 ? bind.formats[0] : bind.formats[i] ?? 0;
    if (format === 0) return utf8.decode(value);
    let hex = "\\x";
    for (const b of value) hex += b.toString(16).padStart(2, "0");
    return hex;
  });
}

/**
 * A Parse message like the one at [p, end) of `buf` (same statement name and parameter types)
 * with `sql` as its text.
 */
export function rewrittenParse(buf: Uint8Array, p: number, end: number, sql: string): Uint8Array {
  const nameEnd = buf.indexOf(0, p + 5);
  const queryEnd = buf.indexOf(0, nameEnd + 1);
  const name = buf.subarray(p + 5, nameEnd);
  const types = buf.subarray(queryEnd + 1, end);
  const b = new MessageBuilder(name.length + sql.length * 3 + types.length + 16).begin(Msg.Parse);
  b.bytes(name);
  b.byte(0);
  b.cstring(sql);
  b.bytes(types);
  return b.end().build();
}
