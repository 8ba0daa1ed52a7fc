import { deepEqual, equal } from "node:assert/strict";
import { loadParser } from "../router/mod.ts";
import { Msg } from "../protocol/messages.ts";
import { parseTree, queryMessageOf, splitPipeline, statementRanges } from "./request_units.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function msg(type: number, body: number[] = []): number[] {
  const len = body.length + 4;
  return [type, len >>> 24, (len >>> 16) & 255, (len >>> 8) & 255, len & 255, ...body];
}

Deno.test("statementRanges: byte ranges of each statement, multibyte text and comments", async () => {
  await loadParser();
  const sql =
    "INSERT INTO t VALUES ('é;'); /* c; */ SELECT $$a;b$$ ;\n -- x;\n select 2;;  select 3";
  const bytes = enc.encode(sql);
  const tree = parseTree(sql)!;
  const texts = statementRanges(tree, bytes.length).map((r) =>
    dec.decode(bytes.subarray(r.start, r.end)).trim()
  );
  deepEqual(texts, ["INSERT INTO t VALUES ('é;')", "SELECT $$a;b$$", "select 2", "select 3"]);
  equal(parseTree("SELEC 1"), null);
});

Deno.test("queryMessageOf frames a Query", () => {
  deepEqual(
    [...queryMessageOf(enc.encode("SELECT 1"))],
    msg(Msg.Query, [...enc.encode("SELECT 1"), 0]),
  );
});

Deno.test("splitPipeline: one segment per Execute, the rest before Sync, or null", () => {
  const parse = msg(Msg.Parse, [0, ...enc.encode("SELECT $1"), 0, 0, 0]);
  const bind = msg(Msg.Bind, [0, 0, 0, 0, 0, 0, 0, 0]);
  const exec = msg(Msg.Execute, [0, 0, 0, 0, 0]);
  const describe = msg(Msg.Describe, [0x53, 0]);
  const sync = msg(Msg.Sync);
  const buf = Uint8Array.from([...parse, ...bind, ...exec, ...bind, ...exec, ...describe, ...sync]);
  const split = splitPipeline(buf, 0, buf.length)!;
  const b1 = parse.length;
  const e1 = b1 + bind.length;
  const b2 = e1 + exec.length;
  const e2 = b2 + bind.length;
  const d = e2 + exec.length;
  deepEqual(split.segments, [
    { start: 0, end: b2, execute: e1, bind: b1 },
    { start: b2, end: d, execute: e2, bind: b2 },
    { start: d, end: d + describe.length, execute: -1, bind: -1 },
  ]);
  equal(split.syncAt, d + describe.length);
  // A single execution, no Sync yet, or something else in the request: nothing to split.
  equal(splitPipeline(Uint8Array.from([...parse, ...bind, ...exec, ...sync]), 0, 1000), null);
  equal(splitPipeline(Uint8Array.from([...bind, ...exec, ...bind, ...exec]), 0, 1000), null);
  const flush = msg(Msg.Flush);
  equal(
    splitPipeline(
      Uint8Array.from([...bind, ...exec, ...flush, ...bind, ...exec, ...sync]),
      0,
      1000,
    ),
    null,
  );
});
