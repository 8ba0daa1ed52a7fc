/**
 * Where a request goes: the primary or a replica. Precedence: a `pgdog_role` comment, then
 * `SET pgdog.role` / the startup parameter, then what the statement is.
 *
 * @module
 */

import type { Analysis } from "./mod.ts";

/** Which kind of host a request needs. */
export type Role = "primary" | "replica";

/** How transactions are routed. */
export type ReadWriteStrategy = "conservative" | "aggressive";

/** Parses a role name as given in comments, SET or startup parameters. */
export function parseRole(value: string | undefined | null): Role | null {
  const v = value?.toLowerCase();
  return v === "primary" ? "primary" : v === "replica" ? "replica" : null;
}

/**
 * The role for the first request of a transaction (or of a request outside one).
 * `deferredBegin` says a plain BEGIN was held back and this request is the transaction's first
 * statement.
 */
export function chooseRole(
  analysis: Analysis | null,
  options: { override: Role | null; strategy: ReadWriteStrategy; deferredBegin: boolean },
): Role {
  const directive = parseRole(analysis?.directives?.get("role"));
  if (directive) return directive;
  if (options.override) return options.override;
  if (analysis === null) return "primary";
  const info = analysis.info;
  if (info.readOnlyTransaction || info.transaction === "set_read_only") return "replica";
  if (info.write) return "primary";
  // A BEGIN that was not held back: what follows is unknown, so the primary.
  if (info.transaction === "begin" && info.statements === 1) return "primary";
  const conservative = options.strategy === "conservative";
  // An explicit read-write transaction, or several statements in one request.
  if (
    conservative && (options.deferredBegin || info.transaction === "begin" || info.statements > 1)
  ) {
    return "primary";
  }
  return "replica";
}
