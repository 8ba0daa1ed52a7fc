/**
 * Small stand-ins for values.ts / aggregate.ts / expr.ts (int4, int8, text; count, sum, max;
 * comparisons) so the pipeline's tests run before those modules are merged.
 *
 * @module
 */

import type { AggregateSpec, Expr } from "./plan.ts";
import type {
  Accumulator,
  AggregateKind,
  Collation,
  ExprRow,
  TypeOps,
  Value,
  ValueModules,
} from "./value_deps.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function intOps(oid: 20 | 23): TypeOps {
  return {
    oid,
    decode(field, format): Value {
      if (format === 0) return BigInt(dec.decode(field));
      const view = new DataView(field.buffer, field.byteOffset, field.length);
      return oid === 20 ? view.getBigInt64(0) : BigInt(view.getInt32(0));
    },
    encode(value, format): Uint8Array {
      if (format === 0) return enc.encode(String(value));
      const out = new Uint8Array(oid === 20 ? 8 : 4);
      const view = new DataView(out.buffer);
      if (oid === 20) view.setBigInt64(0, value as bigint);
      else view.setInt32(0, Number(value));
      return out;
    },
    compare: (a, b) => (a as bigint) < (b as bigint) ? -1 : (a as bigint) > (b as bigint) ? 1 : 0,
    groupKey: (v) => String(v),
  };
}

function textOps(collation: Collation): TypeOps {
  const collator = collation.kind === "icu" ? new Intl.Collator(collation.locale) : null;
  return {
    oid: 25,
    decode: (field) => dec.decode(field),
    encode: (value) => enc.encode(value as string),
    compare(a, b): number {
      const x = a as string;
      const y = b as string;
      const bytes = x < y ? -1 : x > y ? 1 : 0;
      return collator === null ? bytes : collator.compare(x, y) || bytes;
    },
    groupKey: (v) => v as string,
  };
}

function typeOps(oid: number, options: { collation: Collation }): TypeOps | null {
  if (oid === 20 || oid === 23) return intOps(oid);
  if (oid === 25) return textOps(options.collation);
  return null;
}

function aggregateKind(
  spec: AggregateSpec,
  options: { partialTypes: { oid: number; format: 0 | 1 }[]; collation: Collation },
): AggregateKind {
  const input = typeOps(options.partialTypes[0].oid, options)!;
  const format = options.partialTypes[0].format;
  const resultOid = spec.fn === "max" ? input.oid : 20;
  const ops = typeOps(resultOid, options)!;
  return {
    resultOid,
    ops,
    create(): Accumulator {
      let acc: bigint | null = spec.fn === "count" ? 0n : null;
      return {
        add(partials): void {
          const f = partials[0];
          if (f === null) return;
          const v = input.decode(f, format) as bigint;
          if (spec.fn === "count" && spec.distinct) acc = acc! + 1n;
          else if (spec.fn === "max") acc = acc === null || v > acc ? v : acc;
          else acc = (acc ?? 0n) + v;
        },
        value: () => acc,
      };
    },
  };
}

function evaluate(expr: Expr, row: ExprRow): Value | null {
  if ("column" in expr) return row.value(expr.column);
  if ("constant" in expr) return expr.constant === null ? null : BigInt(expr.constant);
  if ("param" in expr) return row.param(expr.param);
  const args = expr.args.map((a) => evaluate(a, row));
  switch (expr.op) {
    case ">":
      return args[0] === null || args[1] === null
        ? null
        : (args[0] as bigint) > (args[1] as bigint);
    case "=":
      return args[0] === null || args[1] === null ? null : args[0] === args[1];
    case "and":
      return args.every((a) => a === true);
    default:
      throw new Error(`fixture can't evaluate ${expr.op}`);
  }
}

/** The stand-in modules. */
export const TEST_MODULES: ValueModules = {
  typeOps,
  aggregateKind,
  evaluate,
  collationFor: (name) =>
    name === "C"
      ? { kind: "bytes" }
      : /-x-icu$/.test(name)
      ? { kind: "icu", locale: name.slice(0, -6) }
      : null,
};
