import { deepEqual, equal, match } from "node:assert/strict";
import { buildRowDescription } from "./rows.ts";
import type { MergePlan } from "./plan.ts";
import { columnKey, textAggregateRefusal, withColumnCollations } from "./column_collations.ts";

function rowDescription(fields: Array<[string, number, number]>, typeOid = 25): Uint8Array {
  return buildRowDescription(
    fields.map(([name, tableOid, attnum]) => ({
      name,
      tableOid,
      attnum,
      typeOid,
      size: -1,
      typmod: -1,
      format: 0,
    })),
  );
}

const base: MergePlan = {
  shardSql: null,
  shardColumns: 2,
  aggregate: null,
  having: null,
  setOperation: null,
  distinct: null,
  orderBy: [
    { column: 0, descending: false, nullsFirst: false, collation: null },
    { column: 1, descending: true, nullsFirst: true, collation: null },
  ],
  shardsSorted: true,
  limit: null,
  offset: null,
  visible: 2,
};

Deno.test("sort keys on a column declared with a collation take it; others keep the default", () => {
  const columns = new Map([[columnKey(16400, 2), "C"]]);
  const shardDescription = rowDescription([["name", 16400, 1], ["code", 16400, 2]]);
  const plan = withColumnCollations(base, { shardDescription, columns });
  deepEqual(plan.orderBy.map((k) => k.collation), [null, "C"]);
  equal(base.orderBy[1].collation, null, "the shared plan is not changed");
  // An explicit COLLATE wins; expressions (no table) keep the default.
  const explicit: MergePlan = {
    ...base,
    orderBy: [{ ...base.orderBy[0] }, { ...base.orderBy[1], collation: "en-x-icu" }],
  };
  deepEqual(
    withColumnCollations(explicit, { shardDescription, columns }).orderBy.map((k) => k.collation),
    [null, "en-x-icu"],
  );
  const expressions = rowDescription([["lower", 0, 0], ["code", 0, 0]]);
  equal(withColumnCollations(base, { shardDescription: expressions, columns }), base);
});

Deno.test("after GROUP BY, a sort key on a group column finds the column it groups by", () => {
  const grouped: MergePlan = {
    ...base,
    aggregate: {
      groupBy: [1],
      aggregates: [{ fn: "count", partials: [0], distinct: false, star: true, orderBy: [] }],
      output: [{ group: 0 }, { aggregate: 0 }],
    },
    orderBy: [
      { column: 0, descending: false, nullsFirst: false, collation: null },
      { column: 1, descending: false, nullsFirst: false, collation: null },
    ],
    shardsSorted: false,
  };
  const columns = new Map([[columnKey(16400, 7), "C"]]);
  const shardDescription = rowDescription([["count", 0, 0], ["code", 16400, 7]]);
  deepEqual(
    withColumnCollations(grouped, { shardDescription, columns }).orderBy.map((k) => k.collation),
    ["C", null],
  );
});

Deno.test("min/max of text are refused where columns have their own collation; others merge", () => {
  const plan: MergePlan = {
    ...base,
    orderBy: [],
    shardsSorted: false,
    aggregate: {
      groupBy: [],
      aggregates: [
        { fn: "max", partials: [0], distinct: false, star: false, orderBy: [] },
        { fn: "count", partials: [1], distinct: false, star: true, orderBy: [] },
      ],
      output: [{ aggregate: 0 }, { aggregate: 1 }],
    },
  };
  const text = buildRowDescription([
    { name: "max", tableOid: 0, attnum: 0, typeOid: 25, size: -1, typmod: -1, format: 0 },
    { name: "count", tableOid: 0, attnum: 0, typeOid: 20, size: 8, typmod: -1, format: 0 },
  ]);
  const columns = new Map([[columnKey(16400, 2), "C"]]);
  match(textAggregateRefusal(plan, { shardDescription: text, columns }) ?? "", /max\(\) of text/);
  equal(textAggregateRefusal(plan, { shardDescription: text, columns: new Map() }), null);
  const numbers = buildRowDescription([
    { name: "max", tableOid: 0, attnum: 0, typeOid: 23, size: 4, typmod: -1, format: 0 },
    { name: "count", tableOid: 0, attnum: 0, typeOid: 20, size: 8, typmod: -1, format: 0 },
  ]);
  equal(textAggregateRefusal(plan, { shardDescription: numbers, columns }), null);
});

Deno.test("ORDER BY a text expression without COLLATE is refused where columns have their own", () => {
  const columns = new Map([[columnKey(16400, 2), "C"]]);
  const expression = rowDescription([["lower", 0, 0], ["code", 16400, 2]]);
  match(
    textAggregateRefusal(base, { shardDescription: expression, columns }) ?? "",
    /text expression/,
  );
  equal(textAggregateRefusal(base, { shardDescription: expression, columns: new Map() }), null);
  const collated: MergePlan = {
    ...base,
    orderBy: [{ ...base.orderBy[0], collation: "C" }, base.orderBy[1]],
  };
  equal(textAggregateRefusal(collated, { shardDescription: expression, columns }), null);
});
