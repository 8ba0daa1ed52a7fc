/**
 * What the merge pipeline takes from the typed-value modules (`values.ts`, `aggregate.ts`,
 * `expr.ts`), as one object: {@linkcode VALUE_MODULES} by default, another in tests that need
 * to see or change what the pipeline asks of them.
 *
 * @module
 */

import { type AggregateKind, aggregateKind, type AggregateOptions } from "./aggregate.ts";
import { type EvalContext, evaluate } from "./expr.ts";
import type { AggregateSpec, Expr } from "./plan.ts";
import { type Collation, collationFor, type TypeOps, typeOps, type Value } from "./values.ts";

export type { Accumulator, AggregateKind } from "./aggregate.ts";
export type { Collation, TypeOps, Value } from "./values.ts";

/** What an expression (HAVING) reads of a working row. */
export type ExprRow = EvalContext;

/** The functions of `values.ts`, `aggregate.ts` and `expr.ts` the pipeline calls. */
export interface ValueModules {
  /**
   * Null: a type the merge can't decode (the pipeline refuses with 0A000 when it must);
   * `ordering`: null also for a type without an order (json), asked for sort keys.
   */
  typeOps(oid: number, options: { collation: Collation; ordering?: boolean }): TypeOps | null;
  aggregateKind(spec: AggregateSpec, options: AggregateOptions): AggregateKind;
  evaluate(expr: Expr, row: ExprRow): Value | null;
  /** The collation a `COLLATE "name"` means; null when pgdog can't compare text that way. */
  collationFor(name: string): Collation | null;
}

/** The real ones. */
export const VALUE_MODULES: ValueModules = {
  typeOps,
  aggregateKind,
  evaluate,
  collationFor: (name) => collationFor(name),
};
