/**
 * HAVING after the merge: evaluates a plan {@linkcode Expr} over a working row with PostgreSQL's
 * semantics: comparisons in the type's order (an untyped literal or parameter takes the other
 * side's type), the numeric tower int2 < int4 < int8 < numeric < float8 for mixed operands,
 * integer overflow (22003) and division by zero (22012), three-valued AND/OR/NOT, IS [NOT] NULL,
 * [NOT] BETWEEN and [NOT] IN.
 *
 * @module
 */

import { MergeError } from "./errors.ts";
import {
  addNumeric,
  compareNumeric,
  divNumeric,
  modNumeric,
  mulNumeric,
  type Numeric,
  numericFromBigInt,
  numericToNumber,
  parseNumeric,
  subNumeric,
} from "./numeric.ts";
import type { Expr } from "./plan.ts";
import { type Collation, compareFloat, OID, type TypeOps, typeOps, type Value } from "./values.ts";

/** What an expression reads: the working row's values and types, and the client's parameters. */
export interface EvalContext {
  /** Working-row column i (null = SQL NULL). */
  value(i: number): Value | null;
  /** The type of working-row column i. */
  ops(i: number): TypeOps;
  /** Parameter $n (1-based) as text, null for NULL. */
  param(n: number): string | null;
  /** The database collation, for comparing two untyped literals (byte order when absent). */
  collation?: Collation;
}

type Kind =
  | "int2"
  | "int4"
  | "int8"
  | "numeric"
  | "float4"
  | "float8"
  | "bool"
  | "unknown"
  | "other";

/** A typed intermediate: ints as BigInt, numeric as Numeric, floats as number. */
interface Typed {
  kind: Kind;
  /** The value (null = SQL NULL). */
  v: Value | null;
  /** For "other" (text, dates, ...): the type's operations. */
  ops?: TypeOps;
}

const RANK: Record<string, number> = {
  int2: 0,
  int4: 1,
  int8: 2,
  numeric: 3,
  float4: 4,
  float8: 5,
};

const INT_LIMITS: Record<string, [bigint, bigint, string]> = {
  int2: [-32768n, 32767n, "smallint out of range"],
  int4: [-2147483648n, 2147483647n, "integer out of range"],
  int8: [-9223372036854775808n, 9223372036854775807n, "bigint out of range"],
};

const enc = new TextEncoder();

function unsupported(message: string): never {
  throw new MergeError("0A000", message);
}

/** A column's value as a typed intermediate. */
function column(i: number, ctx: EvalContext): Typed {
  const ops = ctx.ops(i);
  const v = ctx.value(i);
  switch (ops.oid) {
    case OID.int2:
      return { kind: "int2", v: v === null ? null : BigInt(v as number) };
    case OID.int4:
      return { kind: "int4", v: v === null ? null : BigInt(v as number) };
    case OID.int8:
      return { kind: "int8", v };
    case OID.numeric:
      return { kind: "numeric", v };
    case OID.float4:
      return { kind: "float4", v };
    case OID.float8:
      return { kind: "float8", v };
    case OID.bool:
      return { kind: "bool", v };
    default:
      return { kind: "other", v, ops };
  }
}

/** An integer literal: int4 if it fits, else int8, else numeric (as PostgreSQL types it). */
function intConstant(text: string): Typed {
  const v = BigInt(text);
  if (v >= INT_LIMITS.int4[0] && v <= INT_LIMITS.int4[1]) return { kind: "int4", v };
  if (v >= INT_LIMITS.int8[0] && v <= INT_LIMITS.int8[1]) return { kind: "int8", v };
  return { kind: "numeric", v: numericFromBigInt(v) };
}

/** boolin's spellings. */
function parseBool(text: string): boolean {
  const s = text.trim().toLowerCase();
  if (["t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"].includes(s)) return true;
  if (["f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"].includes(s)) return false;
  throw new MergeError("22P02", `invalid input syntax for type boolean: "${text}"`);
}

/** An untyped literal/parameter read as `kind` (the other operand's type). */
function coerce(text: string, to: Typed): Typed {
  switch (to.kind) {
    case "int2":
    case "int4":
    case "int8": {
      const t = text.trim();
      if (!/^[+-]?\d+$/.test(t)) {
        throw new MergeError(
          "22P02",
          `invalid input syntax for type ${kindName(to.kind)}: "${text}"`,
        );
      }
      return checkInt(to.kind, BigInt(t));
    }
    case "numeric":
      return { kind: "numeric", v: parseNumeric(text) };
    case "float4":
    case "float8": {
      const v = Number(text.trim().replace(/^([+-]?)inf(inity)?$/i, "$1Infinity"));
      if (Number.isNaN(v) && text.trim().toLowerCase() !== "nan") {
        throw new MergeError("22P02", `invalid input syntax for type double precision: "${text}"`);
      }
      return { kind: to.kind, v: to.kind === "float4" ? Math.fround(v) : v };
    }
    case "bool":
      return { kind: "bool", v: parseBool(text) };
    case "other":
      return { kind: "other", v: to.ops!.decode(enc.encode(text), 0), ops: to.ops };
    case "unknown":
      return { kind: "unknown", v: text };
  }
}

function kindName(kind: Kind): string {
  return kind === "int2"
    ? "smallint"
    : kind === "int4"
    ? "integer"
    : kind === "int8"
    ? "bigint"
    : kind === "float8"
    ? "double precision"
    : kind === "float4"
    ? "real"
    : kind;
}

function checkInt(kind: "int2" | "int4" | "int8", v: bigint): Typed {
  const [min, max, message] = INT_LIMITS[kind];
  if (v < min || v > max) throw new MergeError("22003", message);
  return { kind, v };
}

function toNumeric(t: Typed): Numeric {
  return t.kind === "numeric" ? t.v as Numeric : numericFromBigInt(t.v as bigint);
}

function toFloat(t: Typed): number {
  if (t.kind === "float4" || t.kind === "float8") return t.v as number;
  if (t.kind === "numeric") return numericToNumber(t.v as Numeric);
  return Number(t.v as bigint);
}

/** Bring two non-null operands to one type. */
function unify(a: Typed, b: Typed, collation: Collation | undefined): [Typed, Typed] {
  if (a.kind === "unknown" && b.kind === "unknown") {
    // Two untyped literals compare as text in the database's collation.
    const ops = typeOps(OID.text, { collation: collation ?? { kind: "bytes" } })!;
    return [{ kind: "other", v: a.v, ops }, { kind: "other", v: b.v, ops }];
  }
  if (a.kind === "unknown") return [coerce(a.v as string, b), b];
  if (b.kind === "unknown") return [a, coerce(b.v as string, a)];
  return [a, b];
}

function numericKind(k: Kind): boolean {
  return k in RANK;
}

/** Compare two non-null operands (negative, 0, positive). */
function compareTyped(x: Typed, y: Typed, collation: Collation | undefined): number {
  const [a, b] = unify(x, y, collation);
  if (numericKind(a.kind) && numericKind(b.kind)) {
    const top = Math.max(RANK[a.kind], RANK[b.kind]);
    if (top <= RANK.int8) {
      const p = a.v as bigint;
      const q = b.v as bigint;
      return p < q ? -1 : p > q ? 1 : 0;
    }
    if (top === RANK.numeric) return compareNumeric(toNumeric(a), toNumeric(b));
    return compareFloat(toFloat(a), toFloat(b));
  }
  if (a.kind === "bool" && b.kind === "bool") return Number(a.v) - Number(b.v);
  if (a.kind === "other" && b.kind === "other") {
    const same = a.ops!.oid === b.ops!.oid;
    const texts = TEXT_OIDS.has(a.ops!.oid) && TEXT_OIDS.has(b.ops!.oid);
    if (!same && !texts) {
      unsupported(`pgdog can't compare types with OIDs ${a.ops!.oid} and ${b.ops!.oid} in HAVING`);
    }
    // A literal coerced to the column's type uses the column's order (and collation).
    return a.ops!.compare(a.v, b.v);
  }
  return unsupported(`pgdog can't compare ${kindName(a.kind)} with ${kindName(b.kind)} in HAVING`);
}

const TEXT_OIDS: ReadonlySet<number> = new Set([OID.text, OID.varchar, OID.bpchar, OID.name, 705]);

/** Arithmetic on two non-null operands. */
function arithmetic(op: string, x: Typed, y: Typed): Typed {
  const [a, b] = unify(x, y, undefined);
  if (!numericKind(a.kind) || !numericKind(b.kind)) {
    unsupported(`pgdog can't compute ${kindName(a.kind)} ${op} ${kindName(b.kind)} in HAVING`);
  }
  const top = Math.max(RANK[a.kind], RANK[b.kind]);
  if (top <= RANK.int8) {
    const kind = top === 0 ? "int2" : top === 1 ? "int4" : "int8";
    const p = a.v as bigint;
    const q = b.v as bigint;
    switch (op) {
      case "+":
        return checkInt(kind, p + q);
      case "-":
        return checkInt(kind, p - q);
      case "*":
        return checkInt(kind, p * q);
      case "/":
        if (q === 0n) throw new MergeError("22012", "division by zero");
        return checkInt(kind, p / q);
      default:
        if (q === 0n) throw new MergeError("22012", "division by zero");
        return checkInt(kind, p % q);
    }
  }
  if (top === RANK.numeric) {
    const p = toNumeric(a);
    const q = toNumeric(b);
    const v = op === "+"
      ? addNumeric(p, q)
      : op === "-"
      ? subNumeric(p, q)
      : op === "*"
      ? mulNumeric(p, q)
      : op === "/"
      ? divNumeric(p, q)
      : modNumeric(p, q);
    return { kind: "numeric", v };
  }
  if (op === "%") unsupported("operator does not exist: double precision % double precision");
  const single = a.kind === "float4" && b.kind === "float4";
  const p = toFloat(a);
  const q = toFloat(b);
  if (op === "/" && q === 0) throw new MergeError("22012", "division by zero");
  let r = op === "+" ? p + q : op === "-" ? p - q : op === "*" ? p * q : p / q;
  if (single) r = Math.fround(r);
  if (!Number.isFinite(r) && !Number.isNaN(r) && Number.isFinite(p) && Number.isFinite(q)) {
    throw new MergeError("22003", "value out of range: overflow");
  }
  // float8_mul/float8_div: a zero result from non-zero operands is an underflow.
  if (r === 0 && p !== 0 && ((op === "*" && q !== 0) || (op === "/" && Number.isFinite(q)))) {
    throw new MergeError("22003", "value out of range: underflow");
  }
  return { kind: single ? "float4" : "float8", v: r };
}

function typed(expr: Expr, ctx: EvalContext): Typed {
  if ("folded" in expr) return (expr as unknown as Folded).folded;
  if ("column" in expr) return column(expr.column, ctx);
  if ("constant" in expr) {
    if (expr.constant === null) return { kind: "unknown", v: null };
    switch (expr.type) {
      case "int":
        return intConstant(expr.constant);
      case "numeric":
        return { kind: "numeric", v: parseNumeric(expr.constant) };
      case "bool":
        return { kind: "bool", v: parseBool(expr.constant) };
      default:
        return { kind: "unknown", v: expr.constant };
    }
  }
  if ("param" in expr) return { kind: "unknown", v: ctx.param(expr.param) };
  return { kind: "bool", v: logic(expr, ctx) };
}

/** A boolean-valued operand (null = unknown). */
function truth(expr: Expr, ctx: EvalContext): boolean | null {
  const t = typedValue(expr, ctx);
  if (t.v === null) return null;
  if (t.kind === "bool") return t.v as boolean;
  if (t.kind === "unknown") return parseBool(t.v as string);
  return unsupported(`argument of HAVING must be type boolean, not ${kindName(t.kind)}`);
}

function compareOp(
  op: string,
  a: Typed,
  b: Typed,
  collation: Collation | undefined,
): boolean | null {
  if (a.v === null || b.v === null) return null;
  const c = compareTyped(a, b, collation);
  switch (op) {
    case "=":
      return c === 0;
    case "<>":
      return c !== 0;
    case "<":
      return c < 0;
    case "<=":
      return c <= 0;
    case ">":
      return c > 0;
    default:
      return c >= 0;
  }
}

function or3(values: (boolean | null)[]): boolean | null {
  // (IN lists: every comparison is made, as PostgreSQL's ScalarArrayOp does.)
  if (values.includes(true)) return true;
  return values.includes(null) ? null : false;
}

function not3(v: boolean | null): boolean | null {
  return v === null ? null : !v;
}

/** Boolean-valued operators (everything but column/constant/param and arithmetic). */
function logic(expr: Expr, ctx: EvalContext): boolean | null {
  if (!("op" in expr)) return truth(expr, ctx);
  switch (expr.op) {
    case "=":
    case "<>":
    case "<":
    case "<=":
    case ">":
    case ">=":
      return compareOp(
        expr.op,
        typedValue(expr.args[0], ctx),
        typedValue(expr.args[1], ctx),
        ctx.collation,
      );
    case "and":
    case "or": {
      // Left to right, stopping at the first deciding value, as PostgreSQL's executor does.
      const decides = expr.op === "or";
      let unknown = false;
      for (const a of expr.args) {
        const v = truth(a, ctx);
        if (v === decides) return decides;
        if (v === null) unknown = true;
      }
      return unknown ? null : !decides;
    }
    case "not":
      return not3(truth(expr.args[0], ctx));
    case "isnull":
      return typedValue(expr.args[0], ctx).v === null;
    case "notnull":
      return typedValue(expr.args[0], ctx).v !== null;
    case "between": {
      // PostgreSQL rewrites it: x >= lo AND x <= hi; NOT BETWEEN: x < lo OR x > hi.
      const [x, lo, hi] = expr.args;
      return logic(
        expr.not
          ? { op: "or", args: [{ op: "<", args: [x, lo] }, { op: ">", args: [x, hi] }] }
          : { op: "and", args: [{ op: ">=", args: [x, lo] }, { op: "<=", args: [x, hi] }] },
        ctx,
      );
    }
    case "in": {
      const x = typedValue(expr.args[0], ctx);
      const r = or3(
        expr.args.slice(1).map((e) => compareOp("=", x, typedValue(e, ctx), ctx.collation)),
      );
      return expr.not ? not3(r) : r;
    }
    default:
      // Arithmetic is handled by typedValue before it gets here.
      return unsupported(`pgdog can't evaluate ${expr.op} in HAVING`);
  }
}

/** Any operand, arithmetic included. */
function typedValue(expr: Expr, ctx: EvalContext): Typed {
  if ("op" in expr && ["+", "-", "*", "/", "%"].includes(expr.op)) {
    const [l, r] = expr.args as [Expr, Expr];
    const a = typedValue(l, ctx);
    const b = typedValue(r, ctx);
    if (a.v === null || b.v === null) {
      return { kind: a.kind === "unknown" ? b.kind : a.kind, v: null, ops: a.ops ?? b.ops };
    }
    return arithmetic(expr.op, a, b);
  }
  return typed(expr, ctx);
}

/** The value as callers see it: int2/int4 as number, int8 as BigInt, the rest as decoded. */
function external(t: Typed): Value | null {
  if (t.v === null) return null;
  if (t.kind === "int2" || t.kind === "int4") return Number(t.v as bigint);
  return t.v;
}

/**
 * Evaluate `expr` over a working row. A HAVING keeps the group only when the result is `true`
 * (null and false drop it). Throws MergeError: 22003 on integer overflow, 22012 on division by
 * zero, 0A000 for what pgdog can't evaluate.
 */
export function evaluate(expr: Expr, ctx: EvalContext): Value | null {
  return external(typedValue(fold(expr, ctx), ctx));
}

/** A subexpression PostgreSQL's planner computed before execution. */
interface Folded {
  folded: Typed;
}

function folded(t: Typed): Expr {
  return { folded: t } as unknown as Expr;
}

function isFolded(e: Expr): boolean {
  return "folded" in e;
}

/**
 * PostgreSQL folds constant subexpressions (literals and parameters) while planning, in
 * argument order: an error there is raised even on a path execution would skip, and an AND/OR
 * argument that folds to its deciding value ends the folding of the rest (`true OR 1/0 > 0` is
 * true, `1/0 > 0 OR true` fails). Mirror that, then evaluate what is left.
 */
function fold(expr: Expr, ctx: EvalContext): Expr {
  if ("column" in expr || isFolded(expr)) return expr;
  if ("constant" in expr || "param" in expr) return folded(typed(expr, ctx));
  if (expr.op === "between") {
    const [x, lo, hi] = expr.args;
    return fold(
      expr.not
        ? { op: "or", args: [{ op: "<", args: [x, lo] }, { op: ">", args: [x, hi] }] }
        : { op: "and", args: [{ op: ">=", args: [x, lo] }, { op: "<=", args: [x, hi] }] },
      ctx,
    );
  }
  if (expr.op === "and" || expr.op === "or") {
    const decides = expr.op === "or";
    const kept: Expr[] = [];
    for (const a of expr.args) {
      const f = fold(a, ctx);
      if (isFolded(f)) {
        const v = truth(f, ctx);
        if (v === decides) return folded({ kind: "bool", v: decides });
        if (v === !decides) continue;
      }
      kept.push(f);
    }
    if (kept.length === 0) return folded({ kind: "bool", v: !decides });
    return kept.length === 1 ? kept[0] : { op: expr.op, args: kept };
  }
  const args = expr.args.map((a) => fold(a, ctx));
  const node = { ...expr, args } as Expr;
  return args.every(isFolded) ? folded(typedValue(node, ctx)) : node;
}
