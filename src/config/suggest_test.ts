import { equal } from "node:assert/strict";
import { closest, editDistance } from "./suggest.ts";

Deno.test("editDistance counts swaps as one edit", () => {
  equal(editDistance("prot", "port"), 1);
  equal(editDistance("genral", "general"), 1);
  equal(editDistance("", "abc"), 3);
  equal(editDistance("kitten", "sitting"), 3);
});

Deno.test("closest suggests only likely typos", () => {
  const keys = ["host", "port", "pooler_mode", "pool_size"];
  equal(closest("prot", keys), "port");
  equal(closest("Port", keys), "port");
  equal(closest("pool_sise", keys), "pool_size");
  equal(closest("polermode", keys), "pooler_mode");
  equal(closest("xyz", keys), undefined);
  equal(closest("a", ["ab"]), undefined); // one edit, but half of a two-letter word
});
