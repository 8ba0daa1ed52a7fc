/**
 * What the merge pipeline needs from the typed-value modules (`values.ts`, `aggregate.ts`,
 * `expr.ts`), written here so the pipeline builds and is tested while those are written in
 * parallel. The pipeline takes them as one injected object, {@linkcode ValueModules}.
 *
 * @module
 */

import type { AggregateSpec, Expr } from "./plan.ts";

/** A decoded value (its representation is the type's own, see `values.ts`). */
export type Value = unknown;

/** How text compares: byte order (the "C" collation) or an ICU locale's. */
export type Collation = { kind: "bytes" } | { kind: "icu"; locale: string };

/** PostgreSQL's behaviour for one type. */
export interface TypeOps {
  readonly oid: number;
  decode(field: Uint8Array, format: 0 | 1): Value;
  encode(value: Value, format: 0 | 1): Uint8Array;
  compare(a: Value, b: Value): number;
  /** Equal keys exactly for values PostgreSQL's GROUP BY/DISTINCT treats as equal. */
  groupKey(value: Value): string;
}

/** One group's running aggregate. */
export interface Accumulator {
  add(partials: (Uint8Array | null)[]): void;
  value(): Value | null;
}

/** An aggregate of a given spec and partial types. */
export interface AggregateKind {
  readonly resultOid: number;
  readonly ops: TypeOps;
  create(): Accumulator;
}

/** What an expression (HAVING) reads of a working row. */
export interface ExprRow {
  value(i: number): Value | null;
  ops(i: number): TypeOps;
  param(n: number): string | null;
}

/** The functions of `values.ts`, `aggregate.ts` and `expr.ts` the pipeline calls. */
export interface ValueModules {
  /**
   * Null: a type the merge can't decode (the pipeline refuses with 0A000 when it must);
   * `ordering`: null also for a type without an order (json), asked for sort keys.
   */
  typeOps(oid: number, options: { collation: Collation; ordering?: boolean }): TypeOps | null;
  aggregateKind(
    spec: AggregateSpec,
    options: { partialTypes: { oid: number; format: 0 | 1 }[]; collation: Collation },
  ): AggregateKind;
  evaluate(expr: Expr, row: ExprRow): Value | null;
  /** The collation a `COLLATE "name"` means; null when pgdog can't compare text that way. */
  collationFor(name: string): Collation | null;
}
