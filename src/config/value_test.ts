import { deepEqual } from "node:assert/strict";
import { checkValue, formatValue } from "./value.ts";
import type { ValueType } from "./schema.ts";

const PORT: ValueType = { kind: "integer", min: 0, max: 65535 };
const MODE: ValueType = { kind: "enum", values: ["transaction", "session"] };
const LIST: ValueType = { kind: "string_list" };

Deno.test("checkValue: integers from TOML are bigints; numbers there are floats", () => {
  deepEqual(checkValue(PORT, 6432n, { origin: "toml" }), { ok: true, value: 6432 });
  deepEqual(checkValue(PORT, 6432, { origin: "toml" }), {
    ok: false,
    error: "expected an integer from 0 to 65535, got 6432.0",
  });
  deepEqual(checkValue(PORT, 1.5, { origin: "toml" }), {
    ok: false,
    error: "expected an integer from 0 to 65535, got 1.5",
  });
  deepEqual(checkValue(PORT, 65536n, { origin: "toml" }), {
    ok: false,
    error: "expected an integer from 0 to 65535, got 65536",
  });
  deepEqual(checkValue(PORT, "64x", { origin: "toml" }), {
    ok: false,
    error: 'expected an integer from 0 to 65535, got "64x"',
  });
  deepEqual(checkValue({ kind: "integer", min: 0 }, 2n ** 63n, { origin: "toml" }), {
    ok: false,
    error: "9223372036854775808 is too large; expected an integer >= 0",
  });
});

Deno.test("checkValue: integers from programs and URLs", () => {
  deepEqual(checkValue(PORT, 6432, { origin: "object" }), { ok: true, value: 6432 });
  deepEqual(checkValue(PORT, 7n, { origin: "object" }), { ok: true, value: 7 });
  deepEqual(checkValue(PORT, 1.5, { origin: "object" }), {
    ok: false,
    error: "expected an integer from 0 to 65535, got 1.5",
  });
  deepEqual(checkValue(PORT, "6432", { origin: "object" }), {
    ok: false,
    error: 'expected an integer from 0 to 65535, got "6432"',
  });
  deepEqual(checkValue(PORT, "6432", { origin: "text" }), { ok: true, value: 6432 });
  deepEqual(checkValue(PORT, "-1", { origin: "text" }), {
    ok: false,
    error: "expected an integer from 0 to 65535, got -1",
  });
});

Deno.test("checkValue: strings, booleans, enums, string lists", () => {
  deepEqual(checkValue({ kind: "string" }, 5n, { origin: "toml" }), {
    ok: false,
    error: "expected a string, got 5",
  });
  deepEqual(checkValue({ kind: "string", nonEmpty: true }, "", { origin: "toml" }), {
    ok: false,
    error: 'expected a non-empty string, got ""',
  });
  deepEqual(checkValue({ kind: "boolean" }, "yes", { origin: "toml" }), {
    ok: false,
    error: 'expected true or false, got "yes"',
  });
  deepEqual(checkValue({ kind: "boolean" }, "true", { origin: "text" }), { ok: true, value: true });
  deepEqual(checkValue(MODE, "statement", { origin: "toml" }), {
    ok: false,
    error: '"statement" is not allowed; expected one of transaction, session',
  });
  deepEqual(checkValue(MODE, 1n, { origin: "toml" }), {
    ok: false,
    error: "expected one of transaction, session, got 1",
  });
  deepEqual(checkValue(LIST, ["a", "b"], { origin: "toml" }), { ok: true, value: ["a", "b"] });
  deepEqual(checkValue(LIST, ["a", 2n], { origin: "toml" }), {
    ok: false,
    error: "expected a list of strings, got 2 at index 1",
  });
  deepEqual(checkValue(LIST, "a", { origin: "toml" }), {
    ok: false,
    error: 'expected a list of strings, got "a"',
  });
  deepEqual(checkValue(LIST, "a,b", { origin: "text" }), { ok: true, value: ["a", "b"] });
});

Deno.test("formatValue", () => {
  deepEqual(
    [[1], { a: 1 }, true, Infinity, NaN, "x".repeat(100).length].map(formatValue),
    ["an array", "a table", "true", "inf", "nan", "100"],
  );
  deepEqual(formatValue("x".repeat(100)), `"${"x".repeat(75)}..."`);
  deepEqual(formatValue('say "hi"'), '"say \\"hi\\""');
});

Deno.test("checkValue: enums with prefixes and PgDog values this version rejects", () => {
  const hasher: ValueType = {
    kind: "enum",
    values: ["postgres"],
    prefixes: ["plugin:"],
    unsupported: ["sha1"],
  };
  deepEqual(checkValue(hasher, "postgres", { origin: "toml" }), { ok: true, value: "postgres" });
  deepEqual(checkValue(hasher, "plugin:geo", { origin: "toml" }), {
    ok: true,
    value: "plugin:geo",
  });
  deepEqual(checkValue(hasher, "plugin:", { origin: "toml" }), {
    ok: false,
    error: '"plugin:" is not allowed; expected one of postgres, plugin:<name>',
  });
  deepEqual(checkValue(hasher, "sha1", { origin: "toml" }), {
    ok: false,
    error: '"sha1" is a PgDog value this version does not support; expected one of postgres, ' +
      "plugin:<name>",
  });
});

Deno.test("checkValue: sharding key values keep integers as bigints", () => {
  const key: ValueType = { kind: "shard_key" };
  const list: ValueType = { kind: "shard_key_list" };
  deepEqual(checkValue(key, 2n ** 63n, { origin: "toml" }), { ok: true, value: 2n ** 63n });
  deepEqual(checkValue(key, "eu", { origin: "toml" }), { ok: true, value: "eu" });
  deepEqual(checkValue(key, 5, { origin: "toml" }), {
    ok: false,
    error: "expected an integer or a string, got 5.0",
  });
  deepEqual(checkValue(key, 5, { origin: "object" }), { ok: true, value: 5n });
  deepEqual(checkValue(key, 2 ** 60, { origin: "object" }), {
    ok: false,
    error: "expected an integer or a string, got 1152921504606847000 (beyond 2^53: pass a bigint)",
  });
  deepEqual(checkValue(key, 1.5, { origin: "object" }), {
    ok: false,
    error: "expected an integer or a string, got 1.5",
  });
  deepEqual(checkValue(key, true, { origin: "object" }), {
    ok: false,
    error: "expected an integer or a string, got true",
  });
  deepEqual(checkValue(list, [1n, "a", 2], { origin: "object" }), {
    ok: true,
    value: [1n, "a", 2n],
  });
  deepEqual(checkValue(list, [], { origin: "toml" }), {
    ok: false,
    error: "expected a non-empty list of integers or strings, got an empty list",
  });
  deepEqual(checkValue(list, 1n, { origin: "toml" }), {
    ok: false,
    error: "expected a non-empty list of integers or strings, got 1",
  });
  deepEqual(checkValue(list, [1n, 1.5], { origin: "toml" }), {
    ok: false,
    error: "expected integers or strings, got 1.5 at index 1",
  });
});
