import { equal } from "node:assert/strict";
import { parse } from "smol-toml";
import { locateToml } from "./locate.ts";

/** Numbers lines from 1 so tests read like the file. */
function toml(lines: string[]): string {
  return lines.join("\n");
}

Deno.test("locate: tables, array tables and keys", () => {
  const text = toml([
    "# pgdog.toml", //                      1
    "[general]", //                         2
    "port = 6432 # the port", //            3
    "", //                                  4
    "[[databases]]", //                     5
    'name = "a"', //                        6
    "", //                                  7
    "[[databases]]", //                     8
    '  name = "b"', //                      9
    "  host = 'x'", //                      10
  ]);
  const at = locateToml(text);
  equal(at.lineOf(["general"]), 2);
  equal(at.lineOf(["general", "port"]), 3);
  equal(at.lineOf(["databases", 0]), 5);
  equal(at.lineOf(["databases", 0, "name"]), 6);
  equal(at.lineOf(["databases", 1]), 8);
  equal(at.lineOf(["databases", 1, "name"]), 9);
  equal(at.lineOf(["databases", 1, "host"]), 10);
  // A missing key falls back to its table's header.
  equal(at.lineOf(["databases", 0, "host"]), 5);
  equal(at.exactLineOf(["databases", 0, "host"]), undefined);
  equal(at.lineOf(["general", "host"]), 2);
  equal(at.lineOf(["nothing"]), undefined);
});

Deno.test("locate: multi-line strings and arrays do not shift later lines", () => {
  const text = toml([
    "[general]", //                          1
    'a = """', //                            2
    "[databases]", //                        3  (inside the string)
    'port = 1 \\""" still in', //            4
    '"""', //                                5
    "b = '''", //                            6
    "x = [ # '' \\", //                      7  (still inside; literal strings have no escapes)
    "'''", //                                8
    "c = [", //                              9
    "  1, # comment ]", //                   10
    '  "]",', //                             11
    "  [2, 3],", //                          12
    "]", //                                  13
    "port = 5", //                           14
    '"quoted.key" = 1', //                   15
    "'lit' = 2", //                          16
    "dotted.inner = 3", //                   17
  ]);
  parse(text); // the fixture is valid TOML
  const at = locateToml(text);
  equal(at.lineOf(["general", "a"]), 2);
  equal(at.exactLineOf(["databases"]), undefined);
  equal(at.lineOf(["general", "b"]), 6);
  equal(at.exactLineOf(["general", "x"]), undefined);
  equal(at.lineOf(["general", "c"]), 9);
  equal(at.lineOf(["general", "c", 0]), 10);
  equal(at.lineOf(["general", "c", 1]), 11);
  equal(at.lineOf(["general", "c", 2, 1]), 12);
  equal(at.lineOf(["general", "port"]), 14);
  equal(at.lineOf(["general", "quoted.key"]), 15);
  equal(at.lineOf(["general", "lit"]), 16);
  equal(at.lineOf(["general", "dotted"]), 17);
  equal(at.lineOf(["general", "dotted", "inner"]), 17);
});

Deno.test("locate: inline tables and arrays of inline tables", () => {
  const text = toml([
    "databases = [", //                                         1
    '  { name = "a", host = "h" },', //                         2
    "  {", //                                                   3
    '    name = "b",', //                                       4 (TOML 1.1 multi-line)
    "  },", //                                                  5
    "]", //                                                     6
    'admin = { name = "x", user = "y" }', //                    7
    "general.port = 1", //                                      8
  ]);
  const at = locateToml(text);
  equal(at.lineOf(["databases", 0]), 2);
  equal(at.lineOf(["databases", 0, "host"]), 2);
  equal(at.lineOf(["databases", 1]), 3);
  equal(at.lineOf(["databases", 1, "name"]), 4);
  equal(at.lineOf(["databases", 1, "host"]), 3);
  equal(at.lineOf(["admin", "user"]), 7);
  equal(at.lineOf(["general", "port"]), 8);
});

Deno.test("locate: quoted headers, sub-tables of array elements, CRLF, dates", () => {
  const text = [
    '[ "general" ] # spaces and quotes', //      1
    "when = 1979-05-27 07:32:00", //             2
    "port = 1", //                               3
    "[[databases]]", //                          4
    "[databases.extra]", //                      5
    "x = 1", //                                  6
    "[[databases]]", //                          7
    "[databases.extra]", //                      8
    "x = 2", //                                  9
    "[[ databases . shards ]]", //               10
    "n = 1", //                                  11
  ].join("\r\n");
  parse(text);
  const at = locateToml(text);
  equal(at.lineOf(["general"]), 1);
  equal(at.lineOf(["general", "port"]), 3);
  equal(at.lineOf(["databases", 0, "extra", "x"]), 6);
  equal(at.lineOf(["databases", 1]), 7);
  equal(at.lineOf(["databases", 1, "extra", "x"]), 9);
  equal(at.lineOf(["databases", 1, "shards", 0, "n"]), 11);
});

Deno.test("locate: tolerates text that is not valid TOML", () => {
  const at = locateToml('= 1\n[general\nport = \n"unterminated = 2\n[[x]]\ny = 1\n"""never closed');
  equal(at.lineOf(["general", "port"]), 3);
  equal(at.lineOf(["x", 0, "y"]), 6);
});
