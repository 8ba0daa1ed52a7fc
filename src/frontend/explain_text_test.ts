import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { explainText } from "./explain_text.ts";

Deno.test("explainText: not an EXPLAIN", () => {
  assertEquals(explainText("SELECT 1"), null);
  assertEquals(explainText("/* explain */ SELECT 1"), null);
  assertEquals(explainText("explained"), null);
});

Deno.test("explainText: bare, legacy options, parenthesized options", () => {
  assertEquals(explainText("EXPLAIN SELECT 1"), {
    options: "",
    format: "text",
    statement: "SELECT 1",
  });
  assertEquals(explainText(" /* c */ explain analyze  VERBOSE select x from t"), {
    options: "analyze  VERBOSE",
    format: "text",
    statement: "select x from t",
  });
  assertEquals(explainText("EXPLAIN (ANALYZE, FORMAT JSON) SELECT (1)"), {
    options: "(ANALYZE, FORMAT JSON)",
    format: "json",
    statement: "SELECT (1)",
  });
  assertEquals(explainText("EXPLAIN (costs off)\n-- x\nSELECT 1")?.statement, "SELECT 1");
  assertEquals(explainText("EXPLAIN (FORMAT text) SELECT 1")?.format, "text");
});
