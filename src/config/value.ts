/**
 * Checking one value against its schema type, and showing values in error messages.
 *
 * @module
 */

import { describeType, enumChoices, type ValueType } from "./schema.ts";

/** Where a value came from, which decides how integers are recognised. */
export type ValueOrigin =
  /** Parsed by smol-toml with `integersAsBigInt`: integers are bigints, numbers are floats. */
  | "toml"
  /** Given by a program: integral numbers and bigints are integers. */
  | "object"
  /** A query parameter of a database URL: every value is a string. */
  | "text";

/** The outcome of checking a value: the accepted value, or what is wrong with it. */
export type CheckResult =
  | {
    ok: true;
    value:
      | string
      | number
      | boolean
      | bigint
      | string[]
      | Array<bigint | string>
      | Record<string, unknown>;
  }
  | { ok: false; error: string };

const MAX_SHOWN = 80;

/** Shows a value the way it is written in TOML, for "got ..." in error messages. */
export function formatValue(value: unknown): string {
  if (typeof value === "string") {
    const shown = JSON.stringify(value);
    return shown.length > MAX_SHOWN ? `${shown.slice(0, MAX_SHOWN - 4)}..."` : shown;
  }
  if (typeof value === "bigint") return String(value);
  if (typeof value === "number") {
    if (Number.isNaN(value)) return "nan";
    if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
    return String(value);
  }
  if (typeof value === "boolean") return String(value);
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? "a date" : value.toISOString();
  if (Array.isArray(value)) return "an array";
  if (value === null) return "null";
  if (value === undefined) return "nothing";
  if (typeof value === "object") return "a table";
  return typeof value;
}

function formatFloat(value: number): string {
  const shown = formatValue(value);
  return Number.isInteger(value) && !shown.includes("e") ? `${shown}.0` : shown;
}

function checkInteger(
  type: Extract<ValueType, { kind: "integer" }>,
  value: unknown,
  origin: ValueOrigin,
): CheckResult {
  const wrong = (shown: string): CheckResult => ({
    ok: false,
    error: `expected ${describeType(type)}, got ${shown}`,
  });
  let integer: bigint;
  if (typeof value === "bigint") {
    integer = value;
  } else if (typeof value === "number") {
    if (origin === "toml") return wrong(formatFloat(value));
    if (!Number.isInteger(value)) return wrong(formatValue(value));
    integer = BigInt(value);
  } else if (origin === "text" && typeof value === "string" && /^[+-]?\d+$/.test(value)) {
    integer = BigInt(value);
  } else {
    return wrong(formatValue(value));
  }
  if (type.min !== undefined && integer < BigInt(type.min)) return wrong(String(integer));
  if (type.max !== undefined && integer > BigInt(type.max)) return wrong(String(integer));
  if (integer > BigInt(Number.MAX_SAFE_INTEGER) || integer < BigInt(Number.MIN_SAFE_INTEGER)) {
    return { ok: false, error: `${integer} is too large; expected ${describeType(type)}` };
  }
  return { ok: true, value: Number(integer) };
}

/** Options of {@link checkValue}. */
export interface CheckValueOptions {
  /** Where the value came from. */
  origin: ValueOrigin;
}

/**
 * A sharding key value: integers (TOML's are bigints; a program's may also be integral numbers)
 * come back as bigints, strings as they are. Its data type is checked later, against the table.
 */
function checkShardKey(
  value: unknown,
  origin: ValueOrigin,
): { value: bigint | string } | { got: string } {
  if (typeof value === "bigint" || typeof value === "string") return { value };
  if (typeof value !== "number") return { got: formatValue(value) };
  if (origin === "toml" || !Number.isInteger(value)) return { got: formatFloat(value) };
  if (!Number.isSafeInteger(value)) return { got: `${value} (beyond 2^53: pass a bigint)` };
  return { value: BigInt(value) };
}

/** Checks `value` against `type`; integers come back as numbers (bigints for sharding keys). */
export function checkValue(
  type: ValueType,
  value: unknown,
  options: CheckValueOptions,
): CheckResult {
  const origin = options.origin;
  switch (type.kind) {
    case "integer":
      return checkInteger(type, value, origin);
    case "string":
      if (typeof value !== "string" || (type.nonEmpty && value === "")) {
        return { ok: false, error: `expected ${describeType(type)}, got ${formatValue(value)}` };
      }
      return { ok: true, value };
    case "boolean":
      if (typeof value === "boolean") return { ok: true, value };
      if (origin === "text" && (value === "true" || value === "false")) {
        return { ok: true, value: value === "true" };
      }
      return { ok: false, error: `expected true or false, got ${formatValue(value)}` };
    case "enum": {
      if (typeof value !== "string") {
        return { ok: false, error: `expected ${describeType(type)}, got ${formatValue(value)}` };
      }
      const prefixed = type.prefixes?.some((prefix) =>
        value.startsWith(prefix) && value.length > prefix.length
      );
      if (type.values.includes(value) || prefixed) return { ok: true, value };
      const choices = enumChoices(type).join(", ");
      const reason = type.unsupported?.includes(value)
        ? "is a PgDog value this version does not support"
        : "is not allowed";
      return { ok: false, error: `${formatValue(value)} ${reason}; expected one of ${choices}` };
    }
    case "shard_key": {
      const key = checkShardKey(value, origin);
      if ("got" in key) {
        return { ok: false, error: `expected an integer or a string, got ${key.got}` };
      }
      return { ok: true, value: key.value };
    }
    case "shard_key_list": {
      if (!Array.isArray(value) || value.length === 0) {
        const shown = Array.isArray(value) ? "an empty list" : formatValue(value);
        return { ok: false, error: `expected ${describeType(type)}, got ${shown}` };
      }
      const keys: Array<bigint | string> = [];
      for (const [i, item] of value.entries()) {
        const key = checkShardKey(item, origin);
        if ("got" in key) {
          return { ok: false, error: `expected integers or strings, got ${key.got} at index ${i}` };
        }
        keys.push(key.value);
      }
      return { ok: true, value: keys };
    }
    case "table_or_path":
      if (typeof value === "string" && value !== "") return { ok: true, value };
      if (isPlainTable(value)) return { ok: true, value: jsonTable(value) };
      return { ok: false, error: `expected a table or a file path, got ${formatValue(value)}` };
    case "permissions":
      return checkPermissions(value);
    case "string_list":
      if (origin === "text" && typeof value === "string") {
        return { ok: true, value: value === "" ? [] : value.split(",") };
      }
      if (!Array.isArray(value)) {
        return { ok: false, error: `expected a list of strings, got ${formatValue(value)}` };
      }
      for (const [i, item] of value.entries()) {
        if (typeof item !== "string") {
          return {
            ok: false,
            error: `expected a list of strings, got ${formatValue(item)} at index ${i}`,
          };
        }
      }
      return { ok: true, value: [...value] };
  }
}

function isPlainTable(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) &&
    !(value instanceof Date);
}

const PERMISSION_LISTS = ["read", "write", "net", "env", "import"];

/** A plugin's permissions table: known keys only, lists of non-empty strings, `sys` a boolean. */
function checkPermissions(value: unknown): CheckResult {
  if (!isPlainTable(value)) {
    return {
      ok: false,
      error: `expected a table (e.g. { read = ["./data"] }), got ${formatValue(value)}`,
    };
  }
  const out: Record<string, unknown> = {
    read: [],
    write: [],
    net: [],
    env: [],
    import: [],
    sys: false,
  };
  for (const [key, item] of Object.entries(value)) {
    if (key === "sys") {
      if (typeof item !== "boolean") {
        return {
          ok: false,
          error: `permissions.sys: expected true or false, got ${formatValue(item)}`,
        };
      }
      out.sys = item;
    } else if (PERMISSION_LISTS.includes(key)) {
      if (
        !Array.isArray(item) ||
        item.some((x) => typeof x !== "string" || x === "" || x.includes(","))
      ) {
        return {
          ok: false,
          error: `permissions.${key}: expected a list of non-empty strings without commas, got ${
            formatValue(item)
          }`,
        };
      }
      out[key] = [...item];
    } else {
      return {
        ok: false,
        error:
          `permissions.${key} is not a permission; allowed: read, write, net, env, import, sys ` +
          "(subprocesses and FFI are never allowed)",
      };
    }
  }
  return { ok: true, value: out };
}

/**
 * A TOML table as plain JSON data for a plugin: integers as numbers (as strings beyond 2^53),
 * dates as ISO strings.
 */
function jsonTable(value: Record<string, unknown>): Record<string, unknown> {
  const convert = (v: unknown): unknown => {
    if (typeof v === "bigint") {
      return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
        ? Number(v)
        : v.toString();
    }
    if (v instanceof Date) return v.toISOString();
    if (Array.isArray(v)) return v.map(convert);
    if (typeof v === "object" && v !== null) {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, convert(x)]));
    }
    return v;
  };
  return convert(value) as Record<string, unknown>;
}
