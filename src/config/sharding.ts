/**
 * The sharding sections once each entry has been checked against the schema: shard numbers of
 * `[[databases]]`, `[[sharded_tables]]` with their mapping rules (nested
 * `[[sharded_tables.mapping]]` and top-level `[[sharded_mappings]]`), `[[sharded_schemas]]` and
 * `[[omnisharded_tables]]`. Checks what needs more than one entry (the database exists, the shard
 * exists, a value fits the table's data type, duplicates) and builds the model of `types.ts`.
 *
 * @module
 */

import type {
  OmniTableConfig,
  ShardedSchemaConfig,
  ShardedTableConfig,
  ShardingDataType,
  ShardingHasher,
  ShardKeyValue,
  ShardMapping,
} from "./types.ts";
import { type Entry, format, type Report, type Where } from "./report.ts";
import {
  DATABASES,
  OMNISHARDED_TABLES,
  SHARDED_SCHEMAS,
  SHARDED_TABLES,
  withDefaults,
} from "./schema.ts";
import { formatValue } from "./value.ts";

/** The checked entries of the sharding sections and what they are checked against. */
export interface ShardingInput {
  /** Where messages go. */
  report: Report;
  /** The `[[databases]]` entries in force (those of `--database_url` when given). */
  databases: readonly Entry[];
  /** False when the databases could not be read: checks against them are skipped. */
  databasesKnown: boolean;
  /** Where the databases come from, for messages: the file's label or `--database_url`. */
  databasesSource: string;
  /** `[[sharded_tables]]` entries, with their `mapping` children. */
  tables: readonly Entry[];
  /** `[[sharded_mappings]]` / `[[sharded_mapping]]` entries. */
  mappings: readonly Entry[];
  /** `[[sharded_schemas]]` entries. */
  schemas: readonly Entry[];
  /** `[[omnisharded_tables]]` entries. */
  omni: readonly Entry[];
}

/** The sharding part of the configuration model. */
export interface ShardingConfig {
  /** The sharded tables, each with its mapping rules. */
  sharded_tables: ShardedTableConfig[];
  /** Schema-based sharding. */
  sharded_schemas: ShardedSchemaConfig[];
  /** Tables with the same content on every shard. */
  omnisharded_tables: OmniTableConfig[];
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UUID = /^[0-9a-f]{4}(?:-?[0-9a-f]{4}){7}$/i;

/**
 * The canonical form of a UUID as PostgreSQL accepts it (optional braces, a hyphen after any
 * group of four digits): lower-case `8-4-4-4-12`. Undefined when `text` is not a UUID.
 */
export function canonicalUuid(text: string): string | undefined {
  const inner = text.startsWith("{") && text.endsWith("}") ? text.slice(1, -1) : text;
  if (!UUID.test(inner)) return undefined;
  const hex = inner.replaceAll("-", "").toLowerCase();
  return [
    hex.slice(0, 8),
    hex.slice(8, 12),
    hex.slice(12, 16),
    hex.slice(16, 20),
    hex.slice(20),
  ].join("-");
}

/**
 * Orders two sharding key values of the same data type as range rules do: integers as numbers,
 * strings by Unicode code point (the byte order of UTF-8, not a collation). Negative when `a`
 * comes first, 0 when equal, positive otherwise.
 */
export function compareShardKeys(a: ShardKeyValue, b: ShardKeyValue): number {
  if (typeof a === "bigint" && typeof b === "bigint") return a < b ? -1 : a > b ? 1 : 0;
  const x = String(a);
  const y = String(b);
  let i = 0;
  let j = 0;
  while (i < x.length && j < y.length) {
    const cx = x.codePointAt(i)!;
    const cy = y.codePointAt(j)!;
    if (cx !== cy) return cx - cy;
    i += cx > 0xffff ? 2 : 1;
    j += cy > 0xffff ? 2 : 1;
  }
  return (x.length - i) - (y.length - j);
}

/** A value as it is written in TOML, for messages. */
function show(value: ShardKeyValue): string {
  return formatValue(value);
}

/** Checks a mapping value against the table's data type; returns it normalized or a problem. */
function typed(
  value: ShardKeyValue,
  dataType: ShardingDataType,
): { value: ShardKeyValue } | { error: string } {
  switch (dataType) {
    case "bigint":
      if (typeof value !== "bigint") {
        return { error: `expected an integer (data_type "bigint"), got ${show(value)}` };
      }
      if (value < INT64_MIN || value > INT64_MAX) {
        return { error: `${value} is out of range for bigint (64-bit signed integers)` };
      }
      return { value };
    case "varchar":
      if (typeof value !== "string") {
        return { error: `expected a string (data_type "varchar"), got ${show(value)}` };
      }
      return { value };
    case "uuid": {
      const uuid = typeof value === "string" ? canonicalUuid(value) : undefined;
      if (uuid === undefined) {
        return { error: `expected a UUID (data_type "uuid"), got ${show(value)}` };
      }
      return { value: uuid };
    }
  }
}

function describeShards(count: number): string {
  return count === 1 ? "only shard 0" : `shards 0 to ${count - 1}`;
}

/** A sharded table while its rules are gathered. */
interface TableState {
  entry: Entry;
  model: ShardedTableConfig;
  /** Undefined when `data_type` was invalid (value checks are skipped). */
  dataType?: ShardingDataType;
  /** Shards of its database; undefined when unknown. */
  shardCount?: number;
  rules: RuleState[];
  /** Every list value so far, by {@link valueKey}, with the rule that lists it. */
  listed: Map<string, RuleState>;
}

/** One mapping rule of a table. */
interface RuleState {
  rule: ShardMapping;
  /** How its table's nested rules refer to it (`mapping #2`, `[[sharded_mappings]] #1`). */
  ref: string;
  /** How top-level rules refer to it (`[[sharded_tables]] #1 mapping #2`). */
  longRef: string;
}

function valueKey(value: ShardKeyValue): string {
  return `${typeof value}:${value}`;
}

class ShardingChecker {
  readonly #report: Report;
  readonly #seen = new Set<string>();
  readonly input: ShardingInput;
  /** Shard count of each database: its highest shard number + 1. */
  readonly shardCounts = new Map<string, number>();
  /** Every database name. */
  readonly databaseNames = new Set<string>();

  constructor(input: ShardingInput) {
    this.input = input;
    this.#report = input.report;
  }

  /** Adds a problem once (a top-level rule joins several tables and is checked for each). */
  problem(where: Where, text: string, key?: string): void {
    const line = format(where, text, key);
    if (this.#seen.has(line)) return;
    this.#seen.add(line);
    this.#report.problem(line, where);
  }

  /** Adds a warning once. */
  warning(where: Where, text: string, key?: string): void {
    const line = format(where, text, key);
    if (this.#seen.has(line)) return;
    this.#seen.add(line);
    this.#report.warning(line, where);
  }

  /**
   * Counts each database's shards and warns about gaps in their numbers, like PgDog. A database
   * with an invalid shard number is known by name, with no count.
   */
  databases(): void {
    const shards = new Map<string, { numbers: Set<number>; first: Entry; unsure: boolean }>();
    for (const entry of this.input.databases) {
      const { name, shard } = withDefaults(DATABASES, entry.values);
      if (typeof name !== "string") continue;
      const known = shards.get(name) ?? { numbers: new Set(), first: entry, unsure: false };
      if (entry.invalid?.has("shard")) known.unsure = true;
      if (typeof shard === "number") known.numbers.add(shard);
      shards.set(name, known);
    }
    for (const [name, { numbers, first, unsure }] of shards) {
      this.databaseNames.add(name);
      if (unsure) continue;
      const count = Math.max(...numbers) + 1;
      this.shardCounts.set(name, count);
      for (let shard = 0; shard < count; shard++) {
        if (numbers.has(shard)) continue;
        this.warning(
          { ...first.where, label: "" },
          `database "${name}" has a gap in shard numbers: shard ${shard} is not configured; ` +
            "queries routed to it will fail",
        );
        break;
      }
    }
  }

  /** The shard count of the entry's `database`; a problem when there is no such database. */
  database(entry: Entry): { name?: string; shardCount?: number } {
    const name = entry.values.database;
    if (typeof name !== "string") return {};
    if (!this.input.databasesKnown) return { name };
    const shardCount = this.shardCounts.get(name);
    if (!this.databaseNames.has(name)) {
      const where = entry.at("database");
      this.problem(
        where,
        `no database named "${name}" in ${this.input.databasesSource}`,
        "database",
      );
    }
    return { name, shardCount };
  }

  /** A problem when `shard` is past the database's last shard. */
  shardInRange(entry: Entry, options: { shard: number; database: string; count?: number }): void {
    const { shard, database, count } = options;
    if (count === undefined || shard < count) return;
    this.problem(
      entry.at("shard"),
      `no shard ${shard}: database "${database}" has ${describeShards(count)}`,
      "shard",
    );
  }

  tables(): TableState[] {
    const states: TableState[] = [];
    const byKey = new Map<string, Entry>();
    for (const entry of this.input.tables) {
      const values = withDefaults(SHARDED_TABLES, entry.values);
      const { name: database, shardCount } = this.database(entry);
      if (database !== undefined && shardCount === 1) {
        this.warning(
          entry.where,
          `database "${database}" has one shard; this sharded table has no effect`,
        );
      }
      if (entry.ok) {
        const key = JSON.stringify([
          values.database,
          values.schema ?? null,
          values.name ?? null,
          values.column,
        ]);
        const first = byKey.get(key);
        if (first) {
          this.problem(
            entry.where,
            `duplicate of ${first.ref} (same database, schema, name and column)`,
          );
        } else {
          byKey.set(key, entry);
        }
      }
      const model: ShardedTableConfig = {
        database: values.database as string,
        ...(typeof values.name === "string" ? { name: values.name } : {}),
        ...(typeof values.schema === "string" ? { schema: values.schema } : {}),
        column: values.column as string,
        data_type: values.data_type as ShardingDataType,
        hasher: values.hasher as ShardingHasher,
        primary: values.primary as boolean,
        mapping: [],
      };
      const state: TableState = {
        entry,
        model,
        // An invalid data_type is left out of values, and the default would stand in for it.
        dataType: entry.invalid?.has("data_type")
          ? undefined
          : values.data_type as ShardingDataType,
        shardCount,
        rules: [],
        listed: new Map(),
      };
      states.push(state);
      for (const child of entry.children?.get("mapping") ?? []) {
        this.rule(child, {
          table: state,
          ref: child.ref,
          longRef: `${entry.where.label} ${child.ref}`,
          nested: true,
        });
      }
    }
    return states;
  }

  /** Joins each `[[sharded_mappings]]` rule to the sharded tables it names. */
  topLevelRules(tables: readonly TableState[]): void {
    const warned = new Set<string>();
    for (const entry of this.input.mappings) {
      const header = entry.where.label.split(" ")[0];
      if (!warned.has(header)) {
        warned.add(header);
        this.warning(
          { ...entry.where, label: "" },
          `${header} is deprecated in PgDog; [[sharded_tables.mapping]] under the table is the ` +
            "current form",
        );
      }
      if (!entry.ok) continue;
      const { database, column, table, schema } = entry.values;
      const matches = tables.filter((state) =>
        state.model.database === database && state.model.column === column &&
        (table === undefined || state.model.name === table) &&
        (schema === undefined || state.model.schema === schema)
      );
      if (matches.length === 0) {
        const what = [
          `database ${formatValue(database)}`,
          `column ${formatValue(column)}`,
          ...(table === undefined ? [] : [`name ${formatValue(table)}`]),
          ...(schema === undefined ? [] : [`schema ${formatValue(schema)}`]),
        ];
        this.problem(entry.where, `no [[sharded_tables]] entry has ${what.join(", ")}`);
        continue;
      }
      for (const state of matches) {
        this.rule(entry, {
          table: state,
          ref: entry.where.label,
          longRef: entry.where.label,
          nested: false,
        });
      }
    }
  }

  /** Checks one mapping rule for a table and adds it to the table's rules. */
  rule(
    entry: Entry,
    options: { table: TableState; ref: string; longRef: string; nested: boolean },
  ): void {
    const { table } = options;
    if (!entry.ok) return;
    const values = entry.values;
    const shard = values.shard as number;
    if (table.model.database !== undefined) {
      this.shardInRange(entry, { shard, database: table.model.database, count: table.shardCount });
    }
    const kind = this.ruleKind(entry);
    if (kind === undefined || table.dataType === undefined) return;
    const dataType = table.dataType;
    const refTo = (other: RuleState): string => options.nested ? other.ref : other.longRef;
    const state = (rule: ShardMapping): RuleState => ({
      rule,
      ref: options.ref,
      longRef: options.longRef,
    });
    let ok = true;
    switch (kind) {
      case "list": {
        const list: ShardKeyValue[] = [];
        const rule = state({ kind: "list", values: list, shard });
        const own = new Set<string>();
        const duplicates: Array<[number, string]> = [];
        (values.values as ShardKeyValue[]).forEach((raw, i) => {
          const checked = typed(raw, dataType);
          if ("error" in checked) {
            ok = false;
            this.problem(entry.at("values", i), `${checked.error} at index ${i}`, "values");
            return;
          }
          const key = valueKey(checked.value);
          const other = table.listed.get(key);
          if (own.has(key)) {
            duplicates.push([i, `${show(checked.value)} is listed twice`]);
          } else if (other) {
            duplicates.push([i, `${show(checked.value)} is already listed in ${refTo(other)}`]);
          }
          own.add(key);
          list.push(checked.value);
        });
        for (const [i, text] of duplicates) {
          ok = false;
          this.problem(entry.at("values", i), text, "values");
        }
        // Later rules are checked against these values even when this rule is invalid.
        for (const value of list) {
          if (!table.listed.has(valueKey(value))) table.listed.set(valueKey(value), rule);
        }
        if (ok) this.add(table, rule);
        return;
      }
      case "range": {
        const bounds: { start?: ShardKeyValue; end?: ShardKeyValue } = {};
        for (const key of ["start", "end"] as const) {
          if (values[key] === undefined) continue;
          const checked = typed(values[key] as ShardKeyValue, dataType);
          if ("error" in checked) {
            ok = false;
            this.problem(entry.at(key), checked.error, key);
          } else {
            bounds[key] = checked.value;
          }
        }
        if (!ok) return;
        const { start, end } = bounds;
        if (start !== undefined && end !== undefined && compareShardKeys(start, end) >= 0) {
          this.problem(
            entry.at("end"),
            `${show(end)} is not greater than start ${show(start)}; the range is empty`,
            "end",
          );
          return;
        }
        const rule = state({ kind: "range", ...bounds, shard });
        for (const other of table.rules) {
          if (other.rule.kind !== "range" || other.rule.shard === shard) continue;
          if (overlaps(other.rule, bounds)) {
            this.warning(
              entry.where,
              `overlaps ${refTo(other)} (shard ${other.rule.shard}); the first matching range ` +
                "wins",
            );
          }
        }
        this.add(table, rule);
        return;
      }
      case "default": {
        const other = table.rules.find((rule) => rule.rule.kind === "default");
        if (other) {
          this.problem(entry.where, `a second default rule; ${refTo(other)} is the default`);
          return;
        }
        this.add(table, state({ kind: "default", shard }));
        return;
      }
    }
  }

  add(table: TableState, rule: RuleState): void {
    table.rules.push(rule);
    table.model.mapping.push(rule.rule);
  }

  /** The rule's kind: as given and consistent with its keys, or inferred from them. */
  ruleKind(entry: Entry): ShardMapping["kind"] | undefined {
    const values = entry.values;
    const present = (["values", "start", "end"] as const).filter((key) =>
      values[key] !== undefined
    );
    const kind = values.kind as ShardMapping["kind"] | undefined;
    if (kind === undefined) {
      if (present.includes("values") && present.length > 1) {
        this.problem(
          entry.where,
          "a rule has values (a list) or start/end (a range), not both",
        );
        return undefined;
      }
      if (present.includes("values")) return "list";
      return present.length > 0 ? "range" : "default";
    }
    const allowed: Record<ShardMapping["kind"], readonly string[]> = {
      list: ["values"],
      range: ["start", "end"],
      default: [],
    };
    let ok = true;
    for (const key of present) {
      if (allowed[kind].includes(key)) continue;
      ok = false;
      this.problem(entry.at(key), `not allowed with kind = "${kind}"`, key);
    }
    if (kind === "list" && !present.includes("values")) {
      ok = false;
      this.problem(entry.where, 'missing required key "values" (kind = "list")', "values");
    }
    if (kind === "range" && !present.includes("start") && !present.includes("end")) {
      ok = false;
      this.problem(entry.where, 'kind = "range" needs start, end or both');
    }
    return ok ? kind : undefined;
  }

  schemas(): ShardedSchemaConfig[] {
    const out: ShardedSchemaConfig[] = [];
    const byKey = new Map<string, Entry>();
    for (const entry of this.input.schemas) {
      const values = withDefaults(SHARDED_SCHEMAS, entry.values);
      const { name: database, shardCount } = this.database(entry);
      const all = values.all === true;
      if (all && entry.values.shard !== undefined) {
        this.warning(entry.at("shard"), "ignored with all = true", "shard");
      }
      if (!all && database !== undefined && typeof entry.values.shard === "number") {
        this.shardInRange(entry, { shard: entry.values.shard, database, count: shardCount });
      }
      if (entry.ok) {
        const key = JSON.stringify([values.database, values.name ?? null]);
        const first = byKey.get(key);
        if (first) {
          const same = values.name === undefined
            ? "the same database, both without a name"
            : "same database and name";
          this.problem(entry.where, `duplicate of ${first.ref} (${same})`);
        } else {
          byKey.set(key, entry);
        }
      }
      out.push({
        database: values.database as string,
        ...(typeof values.name === "string" ? { name: values.name } : {}),
        shard: all ? 0 : values.shard as number,
        all,
      });
    }
    return out;
  }

  omni(tables: readonly TableState[]): OmniTableConfig[] {
    const out: OmniTableConfig[] = [];
    for (const entry of this.input.omni) {
      this.database(entry);
      const names = (entry.values.tables ?? []) as string[];
      names.forEach((name, i) => {
        const parts = name.split(".");
        if (parts.length > 2 || parts.some((part) => part === "")) {
          this.problem(
            entry.at("tables", i),
            `expected a table name or schema.table, got ${formatValue(name)} at index ${i}`,
            "tables",
          );
          return;
        }
        const [schema, table] = parts.length === 2 ? parts : [undefined, parts[0]];
        const sharded = tables.find((state) =>
          state.model.database === entry.values.database && state.model.name === table &&
          (schema === undefined || state.model.schema === undefined ||
            state.model.schema === schema)
        );
        if (sharded) {
          this.warning(
            entry.at("tables", i),
            `${formatValue(name)} is a sharded table (${sharded.entry.where.label}); this ` +
              "entry has no effect on it",
            "tables",
          );
        }
      });
      const values = withDefaults(OMNISHARDED_TABLES, entry.values);
      out.push({
        database: values.database as string,
        tables: [...names],
        sticky: values.sticky as boolean,
      });
    }
    return out;
  }
}

/** True when the range `a` and the bounds `b` share a value (open bounds are infinite). */
function overlaps(
  a: { start?: ShardKeyValue; end?: ShardKeyValue },
  b: { start?: ShardKeyValue; end?: ShardKeyValue },
): boolean {
  const startsBeforeEnd = (
    start: ShardKeyValue | undefined,
    end: ShardKeyValue | undefined,
  ): boolean => start === undefined || end === undefined || compareShardKeys(start, end) < 0;
  return startsBeforeEnd(a.start, b.end) && startsBeforeEnd(b.start, a.end);
}

/**
 * Checks the sharding sections against each other and against `[[databases]]`, reports to
 * `input.report`, and returns their model (meaningful only when no problem was reported).
 */
export function checkSharding(input: ShardingInput): ShardingConfig {
  const checker = new ShardingChecker(input);
  checker.databases();
  const tables = checker.tables();
  checker.topLevelRules(tables);
  return {
    sharded_tables: tables.map((state) => state.model),
    sharded_schemas: checker.schemas(),
    omnisharded_tables: checker.omni(tables),
  };
}
