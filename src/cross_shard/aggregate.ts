/**
 * Aggregates across shards: each shard computes partials (see {@linkcode AggregateSpec} for the
 * layouts); an accumulator combines them, row by row, and finishes with the value and the
 * result type one PostgreSQL 15 would give for the whole input.
 *
 * @module
 */

import { MergeError } from "./errors.ts";
import {
  addNumeric,
  compareNumeric,
  divNumeric,
  formatNumeric,
  mulNumeric,
  type Numeric,
  NUMERIC_NAN,
  numericFromBigInt,
  numericToNumber,
  parseNumeric,
  roundNumeric,
  selectDivScale,
  sqrtNumeric,
  subNumeric,
} from "./numeric.ts";
import type { AggregateSpec, SortKey } from "./plan.ts";
import {
  ARRAY_ELEMENT,
  arrayTypeOf,
  type ArrayValue,
  type Collation,
  collationFor,
  formatFloat,
  type Interval,
  OID,
  type TypeOps,
  typeOps,
  type Value,
} from "./values.ts";

/** Combines one aggregate's partials for one group. */
export interface Accumulator {
  /** One shard row's partial fields (in the order of `AggregateSpec.partials`; null = NULL). */
  add(partials: (Uint8Array | null)[]): void;
  /** The aggregate's value; null = SQL NULL. */
  value(): Value | null;
}

/** One aggregate, ready to run: its result type, and accumulators for its groups. */
export interface AggregateKind {
  /** The result's type OID (the RowDescription of the client's column). */
  readonly resultOid: number;
  /** Encodes the result (and compares it, for ORDER BY an aggregate). */
  readonly ops: TypeOps;
  /** A fresh accumulator for one group. */
  create(): Accumulator;
}

/** Options for {@linkcode aggregateKind}. */
export interface AggregateOptions {
  /** The shards' RowDescription type OID and format of each partial column, in the order of
   * `spec.partials`. */
  partialTypes: { oid: number; format: 0 | 1 }[];
  /** The database's text collation (for min/max and ORDER BY inside an aggregate). */
  collation: Collation;
}

const INT8_MAX = 0x7fffffffffffffffn;
const INT8_MIN = -0x8000000000000000n;

function refuse(message: string): never {
  throw new MergeError("0A000", message);
}

function opsOf(oid: number, collation: Collation, what: string): TypeOps {
  const ops = typeOps(oid, { collation });
  if (ops === null) refuse(`pgdog can't combine ${what} over values of type OID ${oid}`);
  return ops;
}

function resultOps(oid: number, collation: Collation): TypeOps {
  return typeOps(oid, { collation })!;
}

/** A decoder for partial column i. */
function decoder(
  options: AggregateOptions,
  i: number,
  what: string,
): { oid: number; ops: TypeOps; decode(field: Uint8Array): Value } {
  const t = options.partialTypes[i];
  if (t === undefined) refuse(`${what}: the shards sent no partial column ${i}`);
  const ops = opsOf(t.oid, options.collation, what);
  return { oid: t.oid, ops, decode: (field) => ops.decode(field, t.format) };
}

function checkedInt8(v: bigint): bigint {
  if (v > INT8_MAX || v < INT8_MIN) throw new MergeError("22003", "bigint out of range");
  return v;
}

const INT_OIDS: ReadonlySet<number> = new Set([OID.int2, OID.int4, OID.int8]);
const FLOAT_OIDS: ReadonlySet<number> = new Set([OID.float4, OID.float8]);

/** An integer-ish partial as a BigInt. */
function asBigInt(v: Value): bigint {
  return typeof v === "bigint" ? v : BigInt(v as number);
}

/** A numeric, integer or float partial as Numeric (exact for integers and numeric). */
function asNumeric(v: Value, oid: number): Numeric {
  if (oid === OID.numeric) return v as Numeric;
  if (INT_OIDS.has(oid)) return numericFromBigInt(asBigInt(v));
  return parseNumeric(String(v));
}

// ---------------------------------------------------------------- intervals

/** interval_pl with its overflow check. */
function addInterval(a: Interval, b: Interval): Interval {
  const months = a.months + b.months;
  const days = a.days + b.days;
  const time = a.time + b.time;
  if (
    months > 0x7fffffff || months < -0x80000000 || days > 0x7fffffff || days < -0x80000000 ||
    time > INT8_MAX || time < INT8_MIN
  ) throw new MergeError("22008", "interval out of range");
  return { months, days, time };
}

/** interval_div (PostgreSQL 15) by a float8 factor. */
function divInterval(span: Interval, factor: number): Interval {
  if (factor === 0) throw new MergeError("22012", "division by zero");
  const tsround = (j: number): number => Math.round(j * 1e6) / 1e6;
  let month = Math.trunc(span.months / factor);
  let day = Math.trunc(span.days / factor);
  let monthRemainderDays = (span.months / factor - month) * 30;
  monthRemainderDays = tsround(monthRemainderDays);
  let secRemainder = (span.days / factor - day + monthRemainderDays -
    Math.trunc(monthRemainderDays)) * 86400;
  secRemainder = tsround(secRemainder);
  if (Math.abs(secRemainder) >= 86400) {
    day += Math.trunc(secRemainder / 86400);
    secRemainder -= Math.trunc(secRemainder / 86400) * 86400;
  }
  day += Math.trunc(monthRemainderDays);
  month = month | 0;
  const time = roundHalfEven(Number(span.time) / factor + secRemainder * 1e6);
  return { months: month, days: day | 0, time: BigInt(time) };
}

/** C's rint (round half to even). */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// ---------------------------------------------------------------- JSON

const JSON_NUMBER = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$/;

/** escape_json. */
function jsonString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.charCodeAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (c < 0x20) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out + '"';
}

const dec = new TextDecoder();

/** A date/time value's text in XSD form, as to_json writes it. */
function xsdDateTime(oid: number, ops: TypeOps, v: Value): string {
  const text = dec.decode(ops.encode(v, 0));
  if (text === "infinity" || text === "-infinity" || oid === OID.date) return text;
  const t = text.replace(" ", "T");
  if (oid === OID.timestamptz) return t.replace(/([+-]\d\d)(?=$| BC)/, "$1:00");
  return t;
}

/** to_json (jsonb: false) or to_jsonb (jsonb: true) of one value, as the aggregate writes it. */
function toJson(oid: number, ops: TypeOps, v: Value | null, jsonb: boolean): string {
  if (v === null) return "null";
  const element = ARRAY_ELEMENT.get(oid);
  if (element !== undefined) {
    const a = v as ArrayValue;
    const elementOps = typeOps(element, { collation: { kind: "bytes" } })!;
    if (a.dims.length === 0) return "[]";
    let k = 0;
    const level = (depth: number): string => {
      const parts: string[] = [];
      for (let i = 0; i < a.dims[depth]; i++) {
        parts.push(
          depth + 1 < a.dims.length
            ? level(depth + 1)
            : toJson(element, elementOps, a.items[k++], jsonb),
        );
      }
      return "[" + parts.join(jsonb ? ", " : ",") + "]";
    };
    return level(0);
  }
  switch (oid) {
    case OID.bool:
      return v ? "true" : "false";
    case OID.int2:
    case OID.int4:
    case OID.int8:
    case OID.float4:
    case OID.float8:
    case OID.numeric: {
      const text = oid === OID.numeric
        ? formatNumeric(v as Numeric)
        : FLOAT_OIDS.has(oid)
        ? formatFloat(v as number, oid === OID.float4)
        : String(v);
      if (!JSON_NUMBER.test(text)) return jsonString(text);
      // to_jsonb stores numbers as numeric: 1e+100 becomes 1 and 100 zeros, -0 becomes 0.
      return jsonb ? formatNumeric(parseNumeric(text)) : text;
    }
    case OID.json:
      if (jsonb) refuse("pgdog can't convert json to jsonb in jsonb_agg");
      return v as string;
    case OID.jsonb:
      return v as string;
    case OID.date:
    case OID.timestamp:
    case OID.timestamptz:
      return jsonString(xsdDateTime(oid, ops, v));
    default:
      return jsonString(dec.decode(ops.encode(v, 0)));
  }
}

// ---------------------------------------------------------------- helpers for collected values

interface Collected {
  value: Value | null;
  keys: (Value | null)[];
  /** string_agg's delimiter. */
  delimiter?: Value | null;
}

/** Sort collected rows by an aggregate's ORDER BY (keys over positions in `partials`). */
function sorter(
  orderBy: SortKey[],
  keyOps: TypeOps[],
): (a: Collected, b: Collected) => number {
  return (a, b) => {
    for (let i = 0; i < orderBy.length; i++) {
      const k = orderBy[i];
      const x = a.keys[i];
      const y = b.keys[i];
      if (x === null || y === null) {
        if (x === null && y === null) continue;
        return (x === null) === k.nullsFirst ? -1 : 1;
      }
      const c = keyOps[i].compare(x, y);
      if (c !== 0) return k.descending ? -c : c;
    }
    return 0;
  };
}

/** Keeps a row's partials decoded for aggregates that see every input value. */
function collector(
  spec: AggregateSpec,
  options: AggregateOptions,
  what: string,
  hasDelimiter: boolean,
): {
  valueType: { oid: number; ops: TypeOps };
  create(): { add(p: (Uint8Array | null)[]): void; rows(): Collected[] };
} {
  const value = decoder(options, 0, what);
  const delimiter = hasDelimiter ? decoder(options, 1, what) : null;
  let orderBy = spec.orderBy;
  // DISTINCT aggregates see their input sorted (PostgreSQL sorts to deduplicate).
  if (spec.distinct && orderBy.length === 0) {
    orderBy = [{ column: 0, descending: false, nullsFirst: false, collation: null }];
  }
  const keyOps = orderBy.map((k) => {
    const collation = k.collation === null ? options.collation : collationFor(k.collation);
    if (collation === null) refuse(`pgdog can't sort by collation "${k.collation}"`);
    const t = options.partialTypes[k.column];
    if (t === undefined) refuse(`${what}: no partial column ${k.column} to sort by`);
    const ops = typeOps(t.oid, { collation, ordering: true });
    if (ops === null) refuse(`pgdog can't sort ${what}'s input by a value of type OID ${t.oid}`);
    return { ops, format: t.format };
  });
  const compare = sorter(orderBy, keyOps.map((k) => k.ops));
  return {
    valueType: value,
    create() {
      const rows: Collected[] = [];
      const seen = new Set<string>();
      return {
        add(p) {
          const v = p[0] === null ? null : value.decode(p[0]);
          const d = delimiter === null || p[1] === null ? null : delimiter.decode(p[1]);
          if (spec.distinct) {
            const key = v === null ? "\0null" : value.ops.groupKey(v) +
              (delimiter === null ? "" : "\0" + (d === null ? "" : delimiter.ops.groupKey(d)));
            if (seen.has(key)) return;
            seen.add(key);
          }
          const keys = orderBy.map((k, i) => {
            const f = p[k.column];
            return f === null || f === undefined ? null : keyOps[i].ops.decode(f, keyOps[i].format);
          });
          rows.push({ value: v, keys, delimiter: d });
        },
        rows() {
          return orderBy.length > 0 ? rows.slice().sort(compare) : rows;
        },
      };
    },
  };
}

// ---------------------------------------------------------------- the aggregates

/**
 * How to combine and finish `spec` given the partial columns' types. Throws MergeError 0A000
 * for what pgdog can't do (an input type it can't decode or compute with).
 */
export function aggregateKind(spec: AggregateSpec, options: AggregateOptions): AggregateKind {
  const what = spec.fn + (spec.distinct ? "(DISTINCT ...)" : "");
  if (spec.distinct) return distinctKind(spec, options, what);
  switch (spec.fn) {
    case "count":
      return countKind(options, what);
    case "sum":
      return sumKind(options, what);
    case "min":
    case "max":
      return extremeKind(spec.fn, options, what);
    case "avg":
      return avgKind(options, what);
    case "stddev":
    case "stddev_samp":
    case "stddev_pop":
    case "variance":
    case "var_samp":
    case "var_pop":
      return varianceKind(spec.fn, options, what);
    case "bool_and":
    case "every":
    case "bool_or":
      return boolKind(spec.fn !== "bool_or", options, what);
    case "bit_and":
    case "bit_or":
      return bitKind(spec.fn === "bit_and", options, what);
    case "array_agg":
    case "json_agg":
    case "jsonb_agg":
    case "string_agg":
      return collectingKind(spec, options, what);
  }
}

function countKind(options: AggregateOptions, what: string): AggregateKind {
  const count = decoder(options, 0, what);
  return {
    resultOid: OID.int8,
    ops: resultOps(OID.int8, options.collation),
    create() {
      let total = 0n;
      return {
        add(p) {
          if (p[0] !== null) total += asBigInt(count.decode(p[0]));
        },
        value: () => total,
      };
    },
  };
}

/** A running sum in the result type of sum() over `oid` partials. */
interface Summer {
  resultOid: number;
  add(total: Value | null, v: Value): Value;
}

/** Sums of partials already of the result type (sum(int4) arrives as int8, etc.). */
function partialSummer(oid: number, what: string): Summer {
  switch (oid) {
    case OID.int8:
      return {
        resultOid: OID.int8,
        add: (t, v) => checkedInt8((t === null ? 0n : t as bigint) + (v as bigint)),
      };
    case OID.numeric:
      return {
        resultOid: OID.numeric,
        add: (t, v) => t === null ? v : addNumeric(t as Numeric, v as Numeric),
      };
    case OID.float4:
      return {
        resultOid: OID.float4,
        add: (t, v) =>
          t === null ? v : floatResult(Math.fround((t as number) + (v as number)), [
            t as number,
            v as number,
          ]),
      };
    case OID.float8:
      return {
        resultOid: OID.float8,
        add: (t, v) =>
          t === null ? v : floatResult((t as number) + (v as number), [
            t as number,
            v as number,
          ]),
      };
    case OID.interval:
      return {
        resultOid: OID.interval,
        add: (t, v) => t === null ? v : addInterval(t as Interval, v as Interval),
      };
    default:
      return refuse(`pgdog can't add partial ${what} results of type OID ${oid}`);
  }
}

/** float8pl's overflow check: an infinite result from finite inputs. */
function floatResult(r: number, inputs: number[]): number {
  if (!Number.isFinite(r) && !Number.isNaN(r) && inputs.every(Number.isFinite)) {
    throw new MergeError("22003", "value out of range: overflow");
  }
  return r;
}

/** Sums of the input values themselves (DISTINCT): sum()'s own result types. */
function inputSummer(oid: number, what: string): Summer {
  if (oid === OID.int2 || oid === OID.int4) {
    return {
      resultOid: OID.int8,
      add: (t, v) => checkedInt8((t === null ? 0n : t as bigint) + BigInt(v as number)),
    };
  }
  if (oid === OID.int8) {
    return {
      resultOid: OID.numeric,
      add: (t, v) =>
        t === null
          ? numericFromBigInt(v as bigint)
          : addNumeric(t as Numeric, numericFromBigInt(v as bigint)),
    };
  }
  return partialSummer(oid, what);
}

function sumKind(options: AggregateOptions, what: string): AggregateKind {
  const partial = decoder(options, 0, what);
  const summer = partialSummer(partial.oid, what);
  return {
    resultOid: summer.resultOid,
    ops: resultOps(summer.resultOid, options.collation),
    create() {
      let total: Value | null = null;
      return {
        add(p) {
          if (p[0] !== null) total = summer.add(total, partial.decode(p[0]));
        },
        value: () => total,
      };
    },
  };
}

function extremeKind(fn: "min" | "max", options: AggregateOptions, what: string): AggregateKind {
  const t = options.partialTypes[0];
  if (t === undefined) refuse(`${what}: the shards sent no partial column`);
  const ops = typeOps(t.oid, { collation: options.collation, ordering: true });
  if (ops === null) refuse(`pgdog can't compare values of type OID ${t.oid} for ${fn}()`);
  const sign = fn === "min" ? -1 : 1;
  return {
    resultOid: t.oid,
    ops,
    create() {
      let best: Value | null = null;
      return {
        add(p) {
          if (p[0] === null) return;
          const v = ops.decode(p[0], t.format);
          if (best === null || sign * ops.compare(v, best) > 0) best = v;
        },
        value: () => best,
      };
    },
  };
}

/**
 * A shard's sum of float input as PostgreSQL's avg and variance accumulate it (float8): the sum
 * partial, or for float4 (whose sum is float4) its avg partial (at `avg`, float8) × its count.
 */
function float8Sum(
  options: AggregateOptions,
  partials: {
    sum: ReturnType<typeof decoder>;
    count: ReturnType<typeof decoder>;
    /** The avg partial's index. */
    avg: number;
    /** The count partial's index (`sum`'s is the other of 0 and 1). */
    countAt?: number;
  },
  what: string,
): (p: (Uint8Array | null)[]) => number | null {
  const { sum, count } = partials;
  const countAt = partials.countAt ?? 1;
  const sumAt = countAt === 1 ? 0 : 1;
  if (sum.oid !== OID.float4 || options.partialTypes[partials.avg] === undefined) {
    return (p) => p[sumAt] === null ? null : Number(sum.decode(p[sumAt]!));
  }
  const avg = decoder(options, partials.avg, what);
  return (p) => {
    const a = p[partials.avg];
    const n = p[countAt];
    if (a === null || a === undefined || n === null) return null;
    return (avg.decode(a) as number) * Number(asBigInt(count.decode(n)));
  };
}

function avgKind(options: AggregateOptions, what: string): AggregateKind {
  const sum = decoder(options, 0, what);
  const count = decoder(options, 1, what);
  if (sum.oid === OID.int8 || sum.oid === OID.numeric || INT_OIDS.has(sum.oid)) {
    return {
      resultOid: OID.numeric,
      ops: resultOps(OID.numeric, options.collation),
      create() {
        let total: Numeric | null = null;
        let n = 0n;
        return {
          add(p) {
            if (p[1] !== null) n += asBigInt(count.decode(p[1]));
            if (p[0] !== null) {
              const v = asNumeric(sum.decode(p[0]), sum.oid);
              total = total === null ? v : addNumeric(total, v);
            }
          },
          value:
            () => (n === 0n || total === null ? null : divNumeric(total, numericFromBigInt(n))),
        };
      },
    };
  }
  if (FLOAT_OIDS.has(sum.oid)) {
    const shardSum = float8Sum(options, { sum, count, avg: 2 }, what);
    return {
      resultOid: OID.float8,
      ops: resultOps(OID.float8, options.collation),
      create() {
        let total = 0;
        let n = 0n;
        return {
          add(p) {
            if (p[1] !== null) n += asBigInt(count.decode(p[1]));
            const s = shardSum(p);
            if (s !== null) total += s;
          },
          value: () => (n === 0n ? null : total / Number(n)),
        };
      },
    };
  }
  if (sum.oid === OID.interval) {
    return {
      resultOid: OID.interval,
      ops: resultOps(OID.interval, options.collation),
      create() {
        let total: Interval = { months: 0, days: 0, time: 0n };
        let n = 0n;
        return {
          add(p) {
            if (p[1] !== null) n += asBigInt(count.decode(p[1]));
            if (p[0] !== null) total = addInterval(total, sum.decode(p[0]) as Interval);
          },
          value: () => (n === 0n ? null : divInterval(total, Number(n))),
        };
      },
    };
  }
  return refuse(`pgdog can't compute avg() over partial sums of type OID ${sum.oid}`);
}

type VarianceFn = "stddev" | "stddev_samp" | "stddev_pop" | "variance" | "var_samp" | "var_pop";

/** numeric_stddev_internal: N, Σx, Σx² → variance or stddev, PostgreSQL's scales. */
export function numericVariance(
  n: bigint,
  sumX: Numeric,
  sumX2: Numeric,
  options: { variance: boolean; sample: boolean },
): Numeric | null {
  if (n === 0n || (options.sample && n <= 1n)) return null;
  if (sumX.special !== null || sumX2.special !== null) return NUMERIC_NAN;
  const vN = numericFromBigInt(n);
  const rscale = sumX.scale * 2;
  const sq = roundNumeric(mulNumeric(sumX, sumX), rscale);
  const nsq = roundNumeric(mulNumeric(vN, sumX2), rscale);
  const num = subNumeric(nsq, sq);
  if (compareNumeric(num, numericFromBigInt(0n)) <= 0) return numericFromBigInt(0n);
  const den = numericFromBigInt(options.sample ? n * (n - 1n) : n * n);
  const scale = selectDivScale(num, den);
  const variance = divNumeric(num, den, scale);
  return options.variance ? variance : sqrtNumeric(variance, scale);
}

function varianceKind(fn: VarianceFn, options: AggregateOptions, what: string): AggregateKind {
  const count = decoder(options, 0, what);
  const sum = decoder(options, 1, what);
  const sumSq = decoder(options, 2, what);
  const variance = fn === "variance" || fn === "var_samp" || fn === "var_pop";
  const sample = !fn.endsWith("_pop");
  const exact = !FLOAT_OIDS.has(sum.oid);
  if (exact && !(INT_OIDS.has(sum.oid) || sum.oid === OID.numeric)) {
    refuse(`pgdog can't compute ${fn}() over partial sums of type OID ${sum.oid}`);
  }
  const resultOid = exact ? OID.numeric : OID.float8;
  const shardSum = exact ? null : float8Sum(options, { sum, count, avg: 3, countAt: 0 }, what);
  return {
    resultOid,
    ops: resultOps(resultOid, options.collation),
    create() {
      let n = 0n;
      let sx: Numeric | null = null;
      let sxx: Numeric | null = null;
      let fx = 0;
      let fxx = 0;
      return {
        add(p) {
          if (p[0] !== null) n += asBigInt(count.decode(p[0]));
          if (exact) {
            if (p[1] !== null) {
              const v = asNumeric(sum.decode(p[1]), sum.oid);
              sx = sx === null ? v : addNumeric(sx, v);
            }
            if (p[2] !== null) {
              const v = asNumeric(sumSq.decode(p[2]), sumSq.oid);
              sxx = sxx === null ? v : addNumeric(sxx, v);
            }
          } else {
            const s = shardSum!(p);
            if (s !== null) fx += s;
            if (p[2] !== null) fxx += numberOf(sumSq.decode(p[2]), sumSq.oid);
          }
        },
        value() {
          if (exact) {
            const zero = numericFromBigInt(0n);
            return numericVariance(n, sx ?? zero, sxx ?? zero, { variance, sample });
          }
          return floatVariance(n, fx, fxx, { variance, sample });
        },
      };
    },
  };
}

function numberOf(v: Value, oid: number): number {
  if (oid === OID.numeric) return numericToNumber(v as Numeric);
  return Number(v);
}

/** float8_var_samp & co. from N, Σx, Σx² (Sxx = Σx² - (Σx)²/N, never below 0). */
function floatVariance(
  n: bigint,
  sumX: number,
  sumX2: number,
  options: { variance: boolean; sample: boolean },
): number | null {
  if (n === 0n || (options.sample && n <= 1n)) return null;
  const N = Number(n);
  let sxx = sumX2 - (sumX * sumX) / N;
  if (sxx < 0) sxx = 0;
  if (!Number.isFinite(sumX) || !Number.isFinite(sumX2)) sxx = NaN;
  const v = sxx / (options.sample ? N - 1 : N);
  return options.variance ? v : Math.sqrt(v);
}

function boolKind(and: boolean, options: AggregateOptions, what: string): AggregateKind {
  const partial = decoder(options, 0, what);
  if (partial.oid !== OID.bool) refuse(`${what} over type OID ${partial.oid}`);
  return {
    resultOid: OID.bool,
    ops: resultOps(OID.bool, options.collation),
    create() {
      let result: boolean | null = null;
      return {
        add(p) {
          if (p[0] === null) return;
          const v = partial.decode(p[0]) as boolean;
          result = result === null ? v : and ? result && v : result || v;
        },
        value: () => result,
      };
    },
  };
}

function bitKind(and: boolean, options: AggregateOptions, what: string): AggregateKind {
  const partial = decoder(options, 0, what);
  if (!INT_OIDS.has(partial.oid)) {
    refuse(`pgdog can't compute ${what} over type OID ${partial.oid}`);
  }
  const big = partial.oid === OID.int8;
  return {
    resultOid: partial.oid,
    ops: partial.ops,
    create() {
      let result: number | bigint | null = null;
      return {
        add(p) {
          if (p[0] === null) return;
          const v = partial.decode(p[0]) as number | bigint;
          if (result === null) result = v;
          else if (big) {
            result = and ? (result as bigint) & (v as bigint) : (result as bigint) | (v as bigint);
          } else {result = and
              ? (result as number) & (v as number)
              : (result as number) | (v as number);}
        },
        value: () => result,
      };
    },
  };
}

function collectingKind(
  spec: AggregateSpec,
  options: AggregateOptions,
  what: string,
): AggregateKind {
  const stringAgg = spec.fn === "string_agg";
  const c = collector(spec, options, what, stringAgg);
  const input = c.valueType;
  let resultOid: number;
  let finish: (rows: Collected[]) => Value | null;
  if (spec.fn === "array_agg") {
    const element = ARRAY_ELEMENT.get(input.oid);
    if (element !== undefined) {
      // array_agg(anyarray): one more dimension.
      resultOid = input.oid;
      finish = (rows) => {
        if (rows.length === 0) return null;
        let inner: ArrayValue | null = null;
        const items: (Value | null)[] = [];
        for (const r of rows) {
          if (r.value === null) throw new MergeError("22004", "cannot accumulate null arrays");
          const a = r.value as ArrayValue;
          if (a.dims.length === 0) {
            throw new MergeError("2202E", "cannot accumulate empty arrays");
          }
          if (
            inner !== null &&
            (inner.dims.join() !== a.dims.join() || inner.lbounds.join() !== a.lbounds.join())
          ) {
            throw new MergeError("2202E", "cannot accumulate arrays of different dimensionality");
          }
          inner = a;
          items.push(...a.items);
        }
        return {
          dims: [rows.length, ...inner!.dims],
          lbounds: [1, ...inner!.lbounds],
          items,
        } satisfies ArrayValue;
      };
    } else {
      const arrayOid = arrayTypeOf(input.oid);
      if (arrayOid === null) refuse(`pgdog can't build an array of type OID ${input.oid}`);
      resultOid = arrayOid;
      finish = (rows) =>
        rows.length === 0 ? null : ({
          dims: [rows.length],
          lbounds: [1],
          items: rows.map((r) => r.value),
        } satisfies ArrayValue);
    }
  } else if (stringAgg) {
    const bytea = input.oid === OID.bytea;
    if (!bytea && ![OID.text, OID.varchar, OID.bpchar, OID.name].includes(input.oid as 25)) {
      refuse(`pgdog can't compute string_agg over type OID ${input.oid}`);
    }
    resultOid = bytea ? OID.bytea : OID.text;
    finish = (rows) => {
      const present = rows.filter((r) => r.value !== null);
      if (present.length === 0) return null;
      if (bytea) {
        const parts: Uint8Array[] = [];
        present.forEach((r, i) => {
          if (i > 0 && r.delimiter != null) parts.push(r.delimiter as Uint8Array);
          parts.push(r.value as Uint8Array);
        });
        const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
        let off = 0;
        for (const p of parts) {
          out.set(p, off);
          off += p.length;
        }
        return out;
      }
      let s = "";
      present.forEach((r, i) => {
        if (i > 0 && r.delimiter != null) s += r.delimiter as string;
        s += r.value as string;
      });
      return s;
    };
  } else {
    const jsonb = spec.fn === "jsonb_agg";
    resultOid = jsonb ? OID.jsonb : OID.json;
    const structured = ARRAY_ELEMENT.has(input.oid);
    finish = (rows) => {
      if (rows.length === 0) return null;
      let s = "[";
      rows.forEach((r, i) => {
        if (i > 0) s += ", ";
        // json_agg puts a newline before each array element after the first.
        if (!jsonb && structured && i > 0 && r.value !== null) s += "\n ";
        s += toJson(input.oid, input.ops, r.value, jsonb);
      });
      return s + "]";
    };
  }
  const ops = typeOps(resultOid, { collation: options.collation });
  if (ops === null) refuse(`pgdog can't encode type OID ${resultOid}`);
  return {
    resultOid,
    ops,
    create() {
      const rows = c.create();
      return { add: (p) => rows.add(p), value: () => finish(rows.rows()) };
    },
  };
}

/** DISTINCT aggregates: shards send each distinct input value; pgdog dedupes and aggregates. */
function distinctKind(spec: AggregateSpec, options: AggregateOptions, what: string): AggregateKind {
  if (["array_agg", "json_agg", "jsonb_agg", "string_agg"].includes(spec.fn)) {
    return collectingKind(spec, options, what);
  }
  const input = decoder(options, 0, what);
  const inputs = (): {
    add(p: (Uint8Array | null)[]): void;
    values(): Value[];
  } => {
    const seen = new Map<string, Value>();
    return {
      add(p) {
        if (p[0] === null) return;
        const v = input.decode(p[0]);
        const key = input.ops.groupKey(v);
        if (!seen.has(key)) seen.set(key, v);
      },
      values: () => [...seen.values()],
    };
  };
  const kind = (resultOid: number, finish: (values: Value[]) => Value | null): AggregateKind => ({
    resultOid,
    ops: resultOid === input.oid ? input.ops : resultOps(resultOid, options.collation),
    create() {
      const acc = inputs();
      return { add: (p) => acc.add(p), value: () => finish(acc.values()) };
    },
  });
  switch (spec.fn) {
    case "count":
      return kind(OID.int8, (vs) => BigInt(vs.length));
    case "sum": {
      const summer = inputSummer(input.oid, what);
      return kind(summer.resultOid, (vs) => vs.reduce<Value | null>(summer.add, null));
    }
    case "min":
    case "max": {
      if (typeOps(input.oid, { collation: options.collation, ordering: true }) === null) {
        refuse(`pgdog can't compare values of type OID ${input.oid}`);
      }
      const sign = spec.fn === "min" ? -1 : 1;
      return kind(input.oid, (vs) =>
        vs.reduce<Value | null>(
          (best, v) => (best === null || sign * input.ops.compare(v, best) > 0 ? v : best),
          null,
        ));
    }
    case "avg": {
      if (INT_OIDS.has(input.oid) || input.oid === OID.numeric) {
        return kind(OID.numeric, (vs) => {
          if (vs.length === 0) return null;
          const total = vs.map((v) => asNumeric(v, input.oid)).reduce(addNumeric);
          return divNumeric(total, numericFromBigInt(BigInt(vs.length)));
        });
      }
      if (FLOAT_OIDS.has(input.oid)) {
        return kind(
          OID.float8,
          (vs) =>
            vs.length === 0 ? null : vs.reduce<number>((a, v) => a + (v as number), 0) / vs.length,
        );
      }
      if (input.oid === OID.interval) {
        return kind(OID.interval, (vs) =>
          vs.length === 0 ? null : divInterval(
            vs.reduce<Interval>((a, v) => addInterval(a, v as Interval), {
              months: 0,
              days: 0,
              time: 0n,
            }),
            vs.length,
          ));
      }
      return refuse(`pgdog can't compute avg(DISTINCT ...) over type OID ${input.oid}`);
    }
    case "stddev":
    case "stddev_samp":
    case "stddev_pop":
    case "variance":
    case "var_samp":
    case "var_pop": {
      const variance = spec.fn === "variance" || spec.fn === "var_samp" || spec.fn === "var_pop";
      const sample = !spec.fn.endsWith("_pop");
      if (INT_OIDS.has(input.oid) || input.oid === OID.numeric) {
        return kind(OID.numeric, (vs) => {
          const xs = vs.map((v) => asNumeric(v, input.oid));
          const zero = numericFromBigInt(0n);
          const sx = xs.reduce(addNumeric, zero);
          // PostgreSQL squares each value at twice its scale and sums.
          const sxx = xs.reduce((a, x) => addNumeric(a, mulNumeric(x, x)), zero);
          return numericVariance(BigInt(xs.length), sx, sxx, { variance, sample });
        });
      }
      if (FLOAT_OIDS.has(input.oid)) {
        return kind(OID.float8, (vs) => {
          const xs = vs as number[];
          return floatVariance(
            BigInt(xs.length),
            xs.reduce((a, x) => a + x, 0),
            xs.reduce((a, x) => a + x * x, 0),
            { variance, sample },
          );
        });
      }
      return refuse(`pgdog can't compute ${spec.fn}(DISTINCT ...) over type OID ${input.oid}`);
    }
    case "bool_and":
    case "every":
    case "bool_or": {
      if (input.oid !== OID.bool) refuse(`${what} over type OID ${input.oid}`);
      const and = spec.fn !== "bool_or";
      return kind(
        OID.bool,
        (vs) =>
          vs.length === 0 ? null : and ? vs.every((v) => v === true) : vs.some((v) => v === true),
      );
    }
    case "bit_and":
    case "bit_or": {
      if (!INT_OIDS.has(input.oid)) refuse(`${what} over type OID ${input.oid}`);
      const and = spec.fn === "bit_and";
      return kind(input.oid, (vs) => {
        if (vs.length === 0) return null;
        if (input.oid === OID.int8) {
          return (vs as bigint[]).reduce((a, v) => (and ? a & v : a | v));
        }
        return (vs as number[]).reduce((a, v) => (and ? a & v : a | v));
      });
    }
  }
  return refuse(`pgdog can't compute ${what}`);
}
