import assert from "node:assert/strict";
import { startPostgres } from "../../tests/harness/mod.ts";
import type { PgCluster } from "../../tests/harness/postgres.ts";
import { ChangeApplier } from "./apply.ts";
import {
  type Change,
  formatLsn,
  type Lsn,
  parseLsn,
  type Relation,
  type StreamedChange,
  type TupleValue,
  UNCHANGED,
} from "./changes.ts";
import { PgConn, PgError } from "./pg_conn.ts";
import { RowPlacer } from "./placement.ts";
import { type ReshardingDatabase, ReshardingError } from "./shards.ts";
import type { ShardedTable } from "../router/shard_keys.ts";

const SPEC: ShardedTable = { name: "t", column: "id", type: "bigint", mapping: [] };
const ORDERS: ShardedTable = { name: "orders", column: "customer_id", type: "bigint", mapping: [] };

/** A destination database whose shards are databases `names` of the cluster. */
function destination(pg: PgCluster, names: string[]): ReshardingDatabase {
  return {
    name: "dest",
    user: "app",
    shards: names.map((database, shard) => ({
      shard,
      primary: { host: pg.host, port: pg.port, user: "app", password: "pw", database },
      replicas: [],
    })),
    sharding: {
      shards: names.length,
      tables: [SPEC, ORDERS, { name: "ev", column: "id", type: "bigint", mapping: [] }],
      schemas: new Map(),
      omni: new Set(["o", "of"]),
    },
  };
}

const SCHEMA = `
  CREATE TABLE t (id bigint PRIMARY KEY, v text, big text);
  CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, note text);
  CREATE TABLE f (id bigint, v text, j json);
  CREATE TABLE o (id int PRIMARY KEY, v text);
  CREATE TABLE "of" (a int, b text);
  CREATE TABLE trips (id bigint PRIMARY KEY);
  CREATE TABLE ev (id bigint, at int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
  CREATE TABLE ev_1 PARTITION OF ev FOR VALUES FROM (0) TO (100);
  CREATE TABLE ev_2 PARTITION OF ev FOR VALUES FROM (100) TO (200);
  CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'a trigger fired'; END $$;
  CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON trips
    FOR EACH ROW EXECUTE FUNCTION refuse();
`;

const T: Relation = relation(16401, "t", [["id", 20, true], ["v", 25, false], ["big", 25, false]]);
const ORDERS_REL: Relation = relation(16402, "orders", [
  ["id", 20, true],
  ["customer_id", 20, false],
  ["note", 25, false],
]);
const F: Relation = relation(
  16403,
  "f",
  [["id", 20, true], ["v", 25, true], ["j", 114, true]],
  "f",
);
const O: Relation = relation(16404, "o", [["id", 23, true], ["v", 25, false]]);
const OF: Relation = relation(16405, "of", [["a", 23, true], ["b", 25, true]], "f");
const TRIPS: Relation = relation(16406, "trips", [["id", 20, true]]);

function relation(
  oid: number,
  name: string,
  columns: [string, number, boolean][],
  replicaIdentity: Relation["replicaIdentity"] = "d",
): Relation {
  return {
    kind: "relation",
    oid,
    schema: "public",
    name,
    replicaIdentity,
    columns: columns.map(([name, typeOid, key]) => ({ name, typeOid, typmod: -1, key })),
  };
}

/** Builds source transactions the way pgoutput delivers them, at increasing LSNs. */
class Source {
  lsn: Lsn = 0x1_0000_0000n;
  last: { commit: Lsn; end: Lsn } = { commit: 0n, end: 0n };
  txn(changes: Change[]): StreamedChange[] {
    const begin = this.lsn;
    const commit = begin + 0x80n;
    const end = commit + 0x30n;
    this.lsn = end + 0x100n;
    this.last = { commit, end };
    return [
      { lsn: begin, change: { kind: "begin", finalLsn: commit, commitTime: 0n, xid: 700 } },
      ...changes.map((change, i) => ({ lsn: begin + BigInt(i + 1), change })),
      { lsn: commit, change: { kind: "commit", commitLsn: commit, endLsn: end, commitTime: 0n } },
    ];
  }
}

const ins = (rel: Relation, tuple: TupleValue[]): Change => ({
  kind: "insert",
  relation: rel.oid,
  tuple,
});
const upd = (
  rel: Relation,
  tuple: TupleValue[],
  old: TupleValue[] | null = null,
  oldKind: "K" | "O" | null = old ? (rel.replicaIdentity === "f" ? "O" : "K") : null,
): Change => ({ kind: "update", relation: rel.oid, tuple, old, oldKind });
const del = (rel: Relation, old: TupleValue[]): Change => ({
  kind: "delete",
  relation: rel.oid,
  old,
  oldKind: rel.replicaIdentity === "f" ? "O" : "K",
});

async function applyAll(applier: ChangeApplier, changes: StreamedChange[]): Promise<void> {
  for (const c of changes) await applier.apply(c);
}

/** Reads the shards directly. */
class Shards {
  readonly conns: PgConn[];
  constructor(conns: PgConn[]) {
    this.conns = conns;
  }
  static async open(pg: PgCluster, names: string[]): Promise<Shards> {
    return new Shards(
      await Promise.all(
        names.map((database) =>
          PgConn.connect({ host: pg.host, port: pg.port, user: "app", password: "pw", database })
        ),
      ),
    );
  }
  async rows(d: number, sql: string): Promise<(string | null)[][]> {
    return (await this.conns[d].query(sql)).rows;
  }
  /** `sql`'s rows on every shard, as `shard:row` strings. */
  async everywhere(sql: string): Promise<string[]> {
    const out: string[] = [];
    for (let d = 0; d < this.conns.length; d++) {
      for (const r of await this.rows(d, sql)) {
        out.push(`${d}:${r.map((v) => v ?? "NULL").join("|")}`);
      }
    }
    return out;
  }
  close(): void {
    for (const c of this.conns) c.close();
  }
}

/** Keys (1, 2, ...) and the shard each goes to. */
async function keysByShard(
  placer: RowPlacer,
  spec: ShardedTable,
  count: number,
): Promise<number[][]> {
  const keys = Array.from({ length: 200 }, (_, i) => String(i + 1));
  const shards = await placer.shardsOf(spec, keys);
  const out: number[][] = Array.from({ length: count }, () => []);
  shards.forEach((s, i) => out[s].push(i + 1));
  return out;
}

Deno.test("ChangeApplier: replicated changes land on the destination shards", async (t) => {
  await using pg = await startPostgres({
    settings: { max_prepared_transactions: 10 },
    roles: [{ name: "app", password: "pw", auth: "scram", superuser: true }],
  });
  let n = 0;
  /** Fresh shard databases with the schema. */
  const fresh = async (count: number): Promise<string[]> => {
    const names = Array.from({ length: count }, (_, i) => `d${n}_${i}`);
    n++;
    for (const name of names) {
      await pg.sql(`CREATE DATABASE ${name}`);
      await pg.sql(SCHEMA, { database: name });
    }
    return names;
  };

  await t.step(
    "inserts, updates and deletes by key; one transaction per shard; progress",
    async () => {
      const names = await fresh(3);
      const dest = destination(pg, names);
      const placer = new RowPlacer(dest, { plugins: null });
      const by = await keysByShard(placer, SPEC, 3);
      const applier = new ChangeApplier({
        destination: dest,
        placer,
        shared: [-1, -1, -1],
        sourceShard: 0,
        slot: "s'1",
      });
      await applier.start();
      const db = await Shards.open(pg, names);
      try {
        const src = new Source();
        const [a, b, c] = [by[0][0], by[1][0], by[2][0]];
        assert.equal(applier.applied(), 0n);
        await applyAll(applier, [
          { lsn: 1n, change: T },
          ...src.txn([
            T,
            TRIPS,
            ins(T, [String(a), "a", null]),
            ins(T, [String(b), "b\ttab", "x"]),
            ins(T, [String(c), null, null]),
            ins(TRIPS, [String(a)]),
          ]),
        ]);
        assert.equal(applier.applied(), src.last.end);
        assert.ok(applier.lastTransactionAt() > Date.now() - 60_000);
        assert.deepEqual(await db.everywhere("SELECT id, v, big FROM t ORDER BY id"), [
          `0:${a}|a|NULL`,
          `1:${b}|b\ttab|x`,
          `2:${c}|NULL|NULL`,
        ]);
        // session_replication_role = replica: the destination's trigger did not fire (trips is
        // not sharded: every shard has it).
        assert.deepEqual(await db.everywhere("SELECT id FROM trips"), [
          `0:${a}`,
          `1:${a}`,
          `2:${a}`,
        ]);
        // Each touched shard recorded the commit LSN; shard 2 too.
        for (let d = 0; d < 3; d++) {
          assert.deepEqual(
            await db.rows(d, "SELECT slot, source_shard, lsn::text FROM pgdog_resharding.progress"),
            [["s'1", "0", formatLsn(src.last.commit)]],
          );
        }
        const first = src.last;
        // Only the shard a transaction touches gets a transaction (and a progress update).
        await applyAll(
          applier,
          src.txn([upd(T, [String(b), "b2", UNCHANGED]), del(T, [String(c), null, null])]),
        );
        assert.deepEqual(await db.everywhere("SELECT id, v, big FROM t ORDER BY id"), [
          `0:${a}|a|NULL`,
          `1:${b}|b2|x`,
        ]);
        assert.deepEqual(await db.rows(0, "SELECT lsn::text FROM pgdog_resharding.progress"), [[
          formatLsn(first.commit),
        ]]);
        assert.deepEqual(await db.rows(1, "SELECT lsn::text FROM pgdog_resharding.progress"), [[
          formatLsn(src.last.commit),
        ]]);
        assert.deepEqual(applier.progress(), [first.commit, src.last.commit, src.last.commit]);
      } finally {
        applier.close();
        db.close();
      }
    },
  );

  await t.step(
    "a key change moves the row; unchanged TOAST values come from the old row",
    async () => {
      const names = await fresh(3);
      const dest = destination(pg, names);
      const placer = new RowPlacer(dest, { plugins: null });
      const by = await keysByShard(placer, SPEC, 3);
      const applier = new ChangeApplier({
        destination: dest,
        placer,
        shared: [-1, -1, -1],
        sourceShard: 1,
        slot: "s",
      });
      await applier.start();
      const db = await Shards.open(pg, names);
      try {
        const src = new Source();
        const big = "x".repeat(100_000);
        const [a, b] = [by[0][0], by[2][0]];
        await applyAll(applier, src.txn([T, ins(T, [String(a), "v", big])]));
        // The primary key (the sharding key) changes: old key tuple K, big not carried.
        await applyAll(
          applier,
          src.txn([upd(T, [String(b), "w", UNCHANGED], [String(a), null, null])]),
        );
        assert.deepEqual(
          await db.everywhere("SELECT id, v, length(big), big = repeat('x', 100000) FROM t"),
          [`2:${b}|w|100000|t`],
        );
      } finally {
        applier.close();
        db.close();
      }
    },
  );

  await t.step(
    "a sharding key outside the replica identity: the row is found and moved",
    async () => {
      const names = await fresh(3);
      const dest = destination(pg, names);
      const placer = new RowPlacer(dest, { plugins: null });
      const by = await keysByShard(placer, ORDERS, 3);
      const applier = new ChangeApplier({
        destination: dest,
        placer,
        shared: [-1, -1, -1],
        sourceShard: 0,
        slot: "s",
      });
      await applier.start();
      const db = await Shards.open(pg, names);
      try {
        const src = new Source();
        const note = "n".repeat(50_000);
        await applyAll(
          applier,
          src.txn([
            ORDERS_REL,
            ins(ORDERS_REL, ["1", String(by[0][0]), note]),
            ins(ORDERS_REL, ["2", String(by[1][0]), "b"]),
          ]),
        );
        // customer_id changes, the identity (id) does not: no old tuple; note unchanged TOAST.
        await applyAll(applier, src.txn([upd(ORDERS_REL, ["1", String(by[2][0]), UNCHANGED])]));
        // A non-key update on its shard.
        await applyAll(applier, src.txn([upd(ORDERS_REL, ["2", String(by[1][1]), "b2"])]));
        assert.deepEqual(
          await db.everywhere(
            "SELECT id, customer_id, note = repeat('n', 50000) FROM orders ORDER BY id",
          ),
          [`1:2|${by[1][1]}|f`, `2:1|${by[2][0]}|t`].sort(),
        );
        // A delete without the key finds the row wherever it is.
        await applyAll(applier, src.txn([del(ORDERS_REL, ["1", null, null])]));
        assert.deepEqual(await db.everywhere("SELECT id FROM orders"), ["1:2"]);
      } finally {
        applier.close();
        db.close();
      }
    },
  );

  await t.step("many rows in one transaction, in order, odd values kept", async () => {
    const names = await fresh(2);
    // Literals must not depend on the destination's settings.
    for (const name of names) {
      await pg.sql(`ALTER DATABASE ${name} SET standard_conforming_strings = off`);
    }
    const dest = destination(pg, names);
    const placer = new RowPlacer(dest, { plugins: null });
    const applier = new ChangeApplier({
      destination: dest,
      placer,
      shared: [-1, -1],
      sourceShard: 0,
      slot: "s",
    });
    await applier.start();
    const db = await Shards.open(pg, names);
    try {
      const odd = ["it's", "back\\slash", "", "ünï ☃", "line\nbreak", "$1", "'); DROP TABLE t; --"];
      const changes: Change[] = [T];
      for (let i = 1; i <= 2500; i++) {
        changes.push(ins(T, [String(i), odd[i % odd.length], null]));
        // An update of a row inserted in the same transaction: after its insert.
        if (i % 700 === 0) changes.push(upd(T, [String(i), "updated", null]));
        if (i % 900 === 0) changes.push(del(T, [String(i - 1), null, null]));
      }
      await applyAll(applier, new Source().txn(changes));
      const rows = (await db.everywhere("SELECT id, v FROM t")).map((r) => r.slice(2));
      assert.equal(rows.length, 2500 - 2);
      const got = new Map(rows.map((r) => [r.split("|")[0], r.slice(r.indexOf("|") + 1)]));
      for (let i = 1; i <= 2500; i++) {
        const want = i % 900 === 899 ? undefined : i % 700 === 0 ? "updated" : odd[i % odd.length];
        assert.equal(got.get(String(i)), want, `row ${i}`);
      }
    } finally {
      applier.close();
      db.close();
    }
  });

  await t.step("REPLICA IDENTITY FULL: one of duplicate rows, NULLs, json", async () => {
    const names = await fresh(2);
    const dest = destination(pg, names);
    dest.sharding.tables = [{ name: "f", column: "id", type: "bigint", mapping: [] }];
    const placer = new RowPlacer(dest, { plugins: null });
    const applier = new ChangeApplier({
      destination: dest,
      placer,
      shared: [-1, -1],
      sourceShard: 0,
      slot: "s",
    });
    await applier.start();
    const db = await Shards.open(pg, names);
    try {
      const src = new Source();
      const row: TupleValue[] = ["5", null, '{"a": 1}'];
      await applyAll(applier, src.txn([F, ins(F, row), ins(F, row), ins(F, ["5", "other", null])]));
      await applyAll(applier, src.txn([upd(F, ["5", "changed", '{"a": 1}'], row)]));
      const d = (await placer.shardsOf(dest.sharding.tables[0], ["5"]))[0];
      assert.deepEqual(await db.rows(d, "SELECT v, j::text FROM f ORDER BY v NULLS FIRST"), [
        [null, '{"a": 1}'],
        ["changed", '{"a": 1}'],
        ["other", null],
      ]);
      await applyAll(applier, src.txn([del(F, ["5", "other", null]), del(F, row)]));
      assert.deepEqual(await db.rows(d, "SELECT v FROM f"), [["changed"]]);
    } finally {
      applier.close();
      db.close();
    }
  });

  await t.step(
    "tables on every shard: every change, once, from every source shard's stream",
    async () => {
      const names = await fresh(3);
      const dest = destination(pg, names);
      const placer = new RowPlacer(dest, { plugins: null });
      const appliers = [0, 1].map((s) =>
        new ChangeApplier({
          destination: dest,
          placer,
          shared: [-1, -1, -1],
          sourceShard: s,
          slot: `s${s}`,
        })
      );
      for (const a of appliers) await a.start();
      const db = await Shards.open(pg, names);
      try {
        // pgdog writes a table on every shard to each source shard: each stream carries the write.
        for (const applier of appliers) {
          const src = new Source();
          await applyAll(applier, src.txn([O, OF, ins(O, ["1", "a"]), ins(OF, ["1", "x"])]));
          await applyAll(applier, src.txn([upd(O, ["1", "b"]), ins(O, ["2", "c"])]));
        }
        const all = (rows: string[]) => [0, 1, 2].flatMap((d) => rows.map((r) => `${d}:${r}`));
        assert.deepEqual(
          await db.everywhere("SELECT id, v FROM o ORDER BY id"),
          all(["1|b", "2|c"]),
        );
        assert.deepEqual(await db.everywhere("SELECT a, b FROM of"), all(["1|x"]));
        for (const applier of appliers) {
          const src = new Source();
          src.lsn = 0x2_0000_0000n;
          await applyAll(applier, src.txn([del(O, ["1", null]), del(OF, ["1", "x"])]));
        }
        assert.deepEqual(await db.everywhere("SELECT id, v FROM o ORDER BY id"), all(["2|c"]));
        assert.deepEqual(await db.everywhere("SELECT a FROM of"), []);
        // Both streams' progress is kept, side by side.
        assert.deepEqual(
          await db.rows(
            2,
            "SELECT slot, source_shard FROM pgdog_resharding.progress ORDER BY slot",
          ),
          [["s0", "0"], ["s1", "1"]],
        );
      } finally {
        for (const a of appliers) a.close();
        db.close();
      }
    },
  );

  await t.step("TRUNCATE empties the table on every shard", async () => {
    const names = await fresh(2);
    const dest = destination(pg, names);
    const placer = new RowPlacer(dest, { plugins: null });
    const by = await keysByShard(placer, SPEC, 2);
    const applier = new ChangeApplier({
      destination: dest,
      placer,
      shared: [-1, -1],
      sourceShard: 0,
      slot: "s",
    });
    await applier.start();
    const db = await Shards.open(pg, names);
    try {
      const src = new Source();
      await applyAll(
        applier,
        src.txn([
          T,
          O,
          ins(T, [String(by[0][0]), "a", null]),
          ins(T, [String(by[1][0]), "b", null]),
          ins(O, ["1", "o"]),
        ]),
      );
      await applyAll(
        applier,
        src.txn([{
          kind: "truncate",
          relations: [T.oid, O.oid],
          cascade: false,
          restartIdentity: true,
        }]),
      );
      assert.deepEqual(await db.everywhere("SELECT id FROM t UNION ALL SELECT id FROM o"), []);
    } finally {
      applier.close();
      db.close();
    }
  });

  await t.step("a replay skips what each shard committed and applies the rest", async () => {
    const names = await fresh(2);
    const dest = destination(pg, names);
    const placer = new RowPlacer(dest, { plugins: null });
    const by = await keysByShard(placer, SPEC, 2);
    const options = { destination: dest, placer, shared: [-1, -1], sourceShard: 0, slot: "s" };
    const db = await Shards.open(pg, names);
    const src = new Source();
    const t1 = src.txn([
      T,
      ins(T, [String(by[0][0]), "a", null]),
      ins(T, [String(by[1][0]), "b", null]),
    ]);
    const t2 = src.txn([
      ins(T, [String(by[0][1]), "c", null]),
      ins(T, [String(by[1][1]), "d", null]),
    ]);
    try {
      let applier = new ChangeApplier(options);
      await applier.start();
      await applyAll(applier, [...t1, ...t2]);
      applier.close();
      // As if t2 had committed on shard 1 only: shard 0 lost it (its progress is t1's).
      await db.rows(0, `DELETE FROM t WHERE id = ${by[0][1]}`);
      await db.rows(0, `UPDATE pgdog_resharding.progress SET lsn = '${formatLsn(t1.at(-1)!.lsn)}'`);
      const before = await db.everywhere("SELECT id, v FROM t ORDER BY id");
      // The stream resumes from the slot's confirmed position: both transactions again.
      applier = new ChangeApplier(options);
      await applier.start();
      assert.deepEqual(applier.progress(), [t1.at(-1)!.lsn, t2.at(-1)!.lsn]);
      await applyAll(applier, [...t1, ...t2]);
      assert.equal(applier.applied(), src.last.end);
      applier.close();
      const after = await db.everywhere("SELECT id, v FROM t ORDER BY id");
      assert.equal(before.length, 3);
      assert.deepEqual(after, [
        `0:${by[0][0]}|a`,
        `0:${by[0][1]}|c`,
        `1:${by[1][0]}|b`,
        `1:${by[1][1]}|d`,
      ]);
    } finally {
      db.close();
    }
  });

  await t.step("a failed change rolls back the source transaction on every shard", async () => {
    const names = await fresh(2);
    const dest = destination(pg, names);
    const placer = new RowPlacer(dest, { plugins: null });
    const by = await keysByShard(placer, SPEC, 2);
    const options = { destination: dest, placer, shared: [-1, -1], sourceShard: 0, slot: "s" };
    const db = await Shards.open(pg, names);
    const applier = new ChangeApplier(options);
    await applier.start();
    try {
      const src = new Source();
      const txn = src.txn([
        T,
        ins(T, [String(by[0][0]), "a", null]),
        ins(T, [String(by[1][0]), "b", null]),
        ins(T, ["x", null, null]),
      ]);
      await assert.rejects(applyAll(applier, txn), ReshardingError);
      assert.deepEqual(await db.everywhere("SELECT id FROM t"), []);
      assert.equal(applier.applied(), 0n);
      await db.rows(1, `INSERT INTO t VALUES (${by[1][0]})`);
      const txn2 = src.txn([
        ins(T, [String(by[0][0]), "a", null]),
        ins(T, [String(by[1][0]), "b", null]),
      ]);
      await assert.rejects(
        applyAll(applier, txn2),
        (e) => e instanceof PgError && e.code === "23505",
      );
      assert.deepEqual(await db.everywhere("SELECT id FROM t"), [`1:${by[1][0]}`]);
    } finally {
      applier.close();
      db.close();
    }
  });

  await t.step(
    "a destination connection killed mid-transaction: rolled back, replayed",
    async () => {
      const names = await fresh(2);
      const dest = destination(pg, names);
      const placer = new RowPlacer(dest, { plugins: null });
      const by = await keysByShard(placer, SPEC, 2);
      const options = { destination: dest, placer, shared: [-1, -1], sourceShard: 0, slot: "s" };
      const db = await Shards.open(pg, names);
      let applier = new ChangeApplier(options);
      await applier.start();
      try {
        const src = new Source();
        const [a, b] = [by[0][0], by[1][0]];
        const t1 = src.txn([T, ins(T, [String(a), "a", null]), ins(T, [String(b), "b", null])]);
        const t1End = src.last.end;
        const t2 = src.txn([
          upd(T, [String(a), "a2", null]),
          upd(T, [String(b), "b2", null]),
          ins(T, [String(by[0][1]), "c", null]),
        ]);
        await applyAll(applier, t1);
        await applyAll(applier, t2.slice(0, 3));
        // Shard 1's connection dies with its transaction open (a destination restart would too).
        await db.rows(
          1,
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() " +
            `AND pid <> pg_backend_pid() AND usename = 'app'`,
        );
        await assert.rejects(applyAll(applier, t2.slice(3)), PgError);
        applier.close();
        assert.deepEqual(await db.everywhere("SELECT id, v FROM t ORDER BY id"), [
          `0:${a}|a`,
          `1:${b}|b`,
        ]);
        // The stream resumes from the confirmed position (t1's end): t2 lands once.
        assert.equal(applier.applied(), t1End);
        applier = new ChangeApplier(options);
        await applier.start();
        await applyAll(applier, [...t1, ...t2]);
        assert.deepEqual(await db.everywhere("SELECT id, v FROM t ORDER BY id"), [
          `0:${a}|a2`,
          `0:${by[0][1]}|c`,
          `1:${b}|b2`,
        ]);
      } finally {
        applier.close();
        db.close();
      }
    },
  );

  await t.step(
    "start() fails when a shard cannot be reached, leaving no connection open",
    async () => {
      const [name] = await fresh(1);
      const dest = destination(pg, [name, "no_such_database"]);
      const placer = new RowPlacer(dest, { plugins: null });
      const applier = new ChangeApplier({
        destination: dest,
        placer,
        shared: [-1, -1],
        sourceShard: 0,
        slot: "s",
      });
      await assert.rejects(applier.start(), /no_such_database/);
      const db = await Shards.open(pg, [name]);
      try {
        // The connection to the reachable shard is closed (the server notices within moments).
        let others = -1;
        for (let i = 0; i < 50 && others !== 0; i++) {
          others = Number(
            (await db.rows(
              0,
              "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() " +
                "AND pid <> pg_backend_pid()",
            ))[0][0],
          );
          if (others !== 0) await new Promise((r) => setTimeout(r, 100));
        }
        assert.equal(others, 0);
      } finally {
        db.close();
      }
    },
  );

  await t.step(
    "growing in place: the source's own shard is skipped, rows move to new shards only",
    async () => {
      const names = await fresh(4);
      // Source: shards d_0 and d_1 (2 shards); destination: the same two plus d_2 and d_3.
      const dest = destination(pg, names);
      const placer = new RowPlacer(dest, { plugins: null });
      const by = await keysByShard(placer, SPEC, 4);
      const options = {
        destination: dest,
        placer,
        shared: [0, 1, -1, -1],
        sourceShard: 0,
        slot: "s",
      };
      const db = await Shards.open(pg, names);
      const applier = new ChangeApplier(options);
      await applier.start();
      try {
        // The source shard 0 (d_0) holds keys for destination shards 0 and 2.
        const [stay, moves, next] = [by[0][0], by[2][0], by[2][1]];
        const big = "y".repeat(20_000);
        await db.rows(
          0,
          `INSERT INTO t VALUES (${stay}, 's', NULL), (${moves}, 'm', repeat('y', 20000))`,
        );
        const src = new Source();
        await applyAll(
          applier,
          src.txn([T, ins(T, [String(stay), "s", null]), ins(T, [String(moves), "m", big])]),
        );
        // Only the new shard got a row (and the progress table).
        assert.deepEqual(await db.everywhere("SELECT id FROM t ORDER BY id"), [
          `0:${Math.min(stay, moves)}`,
          `0:${Math.max(stay, moves)}`,
          `2:${moves}`,
        ]);
        assert.deepEqual(
          await db.rows(0, "SELECT to_regclass('pgdog_resharding.progress')::text"),
          [[null]],
        );
        // The source re-keys a row of its own into a new shard's range (it stays in d_0 at the
        // source: the old hash put it there); the new copy needs its unchanged TOAST value, read
        // from the source shard as it is now.
        await db.rows(
          0,
          `UPDATE t SET id = ${next}, v = 'n', big = repeat('z', 20000) WHERE id = ${stay}`,
        );
        await applyAll(
          applier,
          src.txn([upd(T, [String(next), "n", UNCHANGED], [String(stay), null, null])]),
        );
        assert.deepEqual(
          await db.rows(2, "SELECT id, v, big = repeat('z', 20000) FROM t ORDER BY id"),
          [[String(moves), "m", "f"], [String(next), "n", "t"]],
        );
        // A row of source shard 0 cannot belong to destination shard 1 (source shard 1's database).
        await assert.rejects(
          applyAll(applier, src.txn([ins(T, [String(by[1][0]), "wrong", null])])),
          (e) => e instanceof ReshardingError && /may only move to new shards/.test(e.message),
        );
      } finally {
        applier.close();
        db.close();
      }
    },
  );

  /**
   * A trigger that fails the commit of source LSN `lsn` on a shard, at COMMIT or PREPARE (as a
   * crash there would): a deferred constraint trigger, enabled even for replicated rows.
   */
  const failCommit = (lsn: Lsn) =>
    `CREATE FUNCTION fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
       IF NEW.lsn = '${formatLsn(lsn)}' THEN RAISE EXCEPTION 'commit refused'; END IF;
       RETURN NEW; END $$;
     CREATE CONSTRAINT TRIGGER fail_commit AFTER INSERT OR UPDATE ON pgdog_resharding.progress
       DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_commit();
     ALTER TABLE pgdog_resharding.progress ENABLE ALWAYS TRIGGER fail_commit`;
  const noFail = "DROP TRIGGER fail_commit ON pgdog_resharding.progress";

  await t.step("without two-phase commit, the shard a row moves to commits first", async () => {
    const names = await fresh(2);
    const dest = destination(pg, names);
    const placer = new RowPlacer(dest, { plugins: null });
    const by = await keysByShard(placer, SPEC, 2);
    const options = {
      destination: dest,
      placer,
      shared: [-1, -1],
      sourceShard: 0,
      slot: "s",
      twoPhase: false,
    };
    const db = await Shards.open(pg, names);
    let applier = new ChangeApplier(options);
    await applier.start();
    assert.equal(applier.twoPhase, false);
    try {
      const src = new Source();
      const [a, b] = [by[0][0], by[1][0]];
      const t1 = src.txn([T, ins(T, [String(a), "v", "toast"])]);
      const t2 = src.txn([upd(T, [String(b), "w", UNCHANGED], [String(a), null, null])]);
      await applyAll(applier, t1);
      // The shard the row moves to fails its commit: the shard it leaves must not have
      // committed the delete (the replay could not rebuild the row).
      await db.conns[1].query(failCommit(src.last.commit));
      await assert.rejects(
        applyAll(applier, t2),
        (e) => e instanceof PgError && /refused/.test(e.message),
      );
      applier.close();
      await db.conns[1].query(noFail);
      assert.deepEqual(await db.everywhere("SELECT id, big FROM t"), [`0:${a}|toast`]);
      applier = new ChangeApplier(options);
      await applier.start();
      await applyAll(applier, [...t1, ...t2]);
      assert.deepEqual(await db.everywhere("SELECT id, v, big FROM t"), [`1:${b}|w|toast`]);
    } finally {
      applier.close();
      db.close();
    }
  });

  await t.step(
    "a replayed move of a row found by search deletes the copy left behind",
    async () => {
      const names = await fresh(2);
      const dest = destination(pg, names);
      const placer = new RowPlacer(dest, { plugins: null });
      const by = await keysByShard(placer, ORDERS, 2);
      const options = {
        destination: dest,
        placer,
        shared: [-1, -1],
        sourceShard: 0,
        slot: "s",
        twoPhase: false,
      };
      const db = await Shards.open(pg, names);
      let applier = new ChangeApplier(options);
      await applier.start();
      try {
        const src = new Source();
        const t1 = src.txn([ORDERS_REL, ins(ORDERS_REL, ["7", String(by[0][0]), "n"])]);
        // customer_id changes, id (the identity) does not: no old tuple, the old shard unknown.
        const t2 = src.txn([upd(ORDERS_REL, ["7", String(by[1][0]), UNCHANGED])]);
        await applyAll(applier, t1);
        // The shard the row leaves fails its commit after the other committed (a crash there).
        await db.conns[0].query(failCommit(src.last.commit));
        await assert.rejects(applyAll(applier, t2), (e) => e instanceof PgError);
        applier.close();
        await db.conns[0].query(noFail);
        assert.deepEqual(await db.everywhere("SELECT id FROM orders"), ["0:7", "1:7"]);
        applier = new ChangeApplier(options);
        await applier.start();
        await applyAll(applier, [...t1, ...t2]);
        assert.deepEqual(await db.everywhere("SELECT id, customer_id, note FROM orders"), [
          `1:7|${by[1][0]}|n`,
        ]);
      } finally {
        applier.close();
        db.close();
      }
    },
  );

  await t.step("two-phase commit: rows swapping shards commit on all shards or none", async () => {
    const names = await fresh(2);
    const dest = destination(pg, names);
    const placer = new RowPlacer(dest, { plugins: null });
    const by = await keysByShard(placer, SPEC, 2);
    const options = { destination: dest, placer, shared: [-1, -1], sourceShard: 3, slot: "s" };
    const db = await Shards.open(pg, names);
    let applier = new ChangeApplier(options);
    await applier.start();
    assert.equal(applier.twoPhase, true);
    const prepared = async () =>
      (await db.everywhere("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"))
        .length;
    try {
      const src = new Source();
      const [a0, a1, b0, b1] = [by[0][0], by[0][1], by[1][0], by[1][1]];
      const t1 = src.txn([
        T,
        ins(T, [String(a0), "x", "big a"]),
        ins(T, [String(b0), "y", "big b"]),
      ]);
      // One row moves 0 -> 1, the other 1 -> 0: no commit order keeps both.
      const t2 = src.txn([
        upd(T, [String(b1), "x2", UNCHANGED], [String(a0), null, null]),
        upd(T, [String(a1), "y2", UNCHANGED], [String(b0), null, null]),
      ]);
      await applyAll(applier, t1);
      await db.conns[1].query(failCommit(src.last.commit));
      await assert.rejects(
        applyAll(applier, t2),
        (e) => e instanceof PgError && /refused/.test(e.message),
      );
      applier.close();
      await db.conns[1].query(noFail);
      assert.equal(await prepared(), 0);
      assert.deepEqual(await db.everywhere("SELECT id, big FROM t"), [
        `0:${a0}|big a`,
        `1:${b0}|big b`,
      ]);
      applier = new ChangeApplier(options);
      await applier.start();
      await applyAll(applier, [...t1, ...t2]);
      const swapped = [`0:${a1}|y2|big b`, `1:${b1}|x2|big a`];
      assert.deepEqual(await db.everywhere("SELECT id, v, big FROM t"), swapped);
      applier.close();

      // A crash after both shards prepared t3: committed on shard 0 only, or on none.
      for (const committedOnZero of [true, false]) {
        const before = src.last.commit;
        const t3 = src.txn([
          T,
          ins(T, [String(by[0][2]), "z", null]),
          ins(T, [String(by[1][2]), "z", null]),
        ]);
        const gid = (d: number) => `pgdog_resharding:s:3:${d}:${formatLsn(src.last.commit)}`;
        for (const d of [0, 1]) {
          await db.conns[d].query(
            `BEGIN; INSERT INTO t VALUES (${by[d][2]}, 'z', NULL); ` +
              `UPDATE pgdog_resharding.progress SET lsn = '${formatLsn(src.last.commit)}'; ` +
              `PREPARE TRANSACTION '${gid(d)}'`,
          );
        }
        if (committedOnZero) await db.conns[0].query(`COMMIT PREPARED '${gid(0)}'`);
        applier = new ChangeApplier(options);
        await applier.start();
        assert.equal(await prepared(), 0);
        assert.deepEqual(
          applier.progress(),
          committedOnZero ? [src.last.commit, src.last.commit] : [before, before],
        );
        // The stream resumes before t3: committed or not, it lands once.
        await applyAll(applier, t3);
        applier.close();
        assert.deepEqual(
          await db.everywhere(`SELECT id FROM t WHERE id IN (${by[0][2]}, ${by[1][2]})`),
          [`0:${by[0][2]}`, `1:${by[1][2]}`],
        );
        await db.conns[0].query(`DELETE FROM t WHERE id = ${by[0][2]}`);
        await db.conns[1].query(`DELETE FROM t WHERE id = ${by[1][2]}`);
        by[0].splice(2, 1);
        by[1].splice(2, 1);
      }
    } finally {
      applier.close();
      db.close();
    }
  });

  await t.step(
    "a row moving between source shards: its streams in any order leave the newest version once",
    async () => {
      // The source: two shards, orders sharded by customer_id (not in the primary key).
      const source: ReshardingDatabase = { ...destination(pg, ["s0", "s1"]), name: "src" };
      const sourceOwners = await keysByShard(new RowPlacer(source, { plugins: null }), ORDERS, 2);
      for (const count of [1, 3]) {
        const probe = new RowPlacer(destination(pg, Array(count).fill("x")), { plugins: null });
        const shardOf = async (key: number) => (await probe.shardsOf(ORDERS, [String(key)]))[0];
        // Pairs of keys (one per source shard) on different destination shards, and on one.
        const pairs: [number, number][] = [];
        for (const same of count === 1 ? [true] : [false, true]) {
          for (const a of sourceOwners[0]) {
            const b = await (async () => {
              for (const b of sourceOwners[1]) {
                if ((await shardOf(a) === await shardOf(b)) === same) return b;
              }
            })();
            if (b !== undefined) {
              pairs.push([a, b]);
              break;
            }
          }
        }
        assert.equal(pairs.length, count === 1 ? 1 : 2);
        // Source shard 0: order 1 inserted, updated, then moved away (deleted); order 2 stays.
        // Source shard 1: order 1 arrives (inserted) and is updated again.
        const orders: [string, number[]][] = [
          ["the DELETE first", [0, 0, 0, 1, 1]],
          ["the INSERT first, the stale UPDATE and the DELETE last", [0, 1, 1, 0, 0]],
          ["the INSERT first, interleaved", [0, 1, 0, 1, 0]],
        ];
        for (const [a, b] of pairs) {
          for (const [label, order] of orders) {
            const names = await fresh(count);
            const dest = destination(pg, names);
            const placer = new RowPlacer(dest, { plugins: null });
            const appliers = [0, 1].map((s) =>
              new ChangeApplier({
                destination: dest,
                placer,
                shared: names.map(() => -1),
                sourceShard: s,
                slot: "m",
                source,
              })
            );
            const [src0, src1] = [new Source(), new Source()];
            const streams = [
              [
                src0.txn([
                  ORDERS_REL,
                  ins(ORDERS_REL, ["1", String(a), "first"]),
                  ins(ORDERS_REL, ["2", String(a), "kept"]),
                ]),
                src0.txn([upd(ORDERS_REL, ["1", String(a), "stale"])]),
                src0.txn([del(ORDERS_REL, ["1", null, null])]),
              ],
              [
                src1.txn([ORDERS_REL, ins(ORDERS_REL, ["1", String(b), "moved"])]),
                src1.txn([upd(ORDERS_REL, ["1", String(b), "newest"])]),
              ],
            ];
            const db = await Shards.open(pg, names);
            try {
              for (const applier of appliers) await applier.start();
              for (const s of order) await applyAll(appliers[s], streams[s].shift()!);
              assert.deepEqual(
                await db.everywhere("SELECT id, customer_id, note FROM orders ORDER BY id"),
                [`${await shardOf(b)}:1|${b}|newest`, `${await shardOf(a)}:2|${a}|kept`],
                `${count} destination shards, keys ${a} and ${b}, ${label}`,
              );
              // A row of the same key from the same source shard is still a duplicate.
              await assert.rejects(
                applyAll(appliers[0], src0.txn([ins(ORDERS_REL, ["2", String(a), "again"])])),
                (e) => e instanceof PgError && e.code === "23505",
              );
            } finally {
              for (const applier of appliers) applier.close();
              db.close();
            }
          }
        }
      }
    },
  );

  await t.step(
    "a row moving between source shards, growing in place: only the new shards are written",
    async () => {
      // Source: shards d_0 and d_1; destination: the same two plus d_2 and d_3 (keys are placed
      // by the shard count: the databases' names do not matter here).
      const source: ReshardingDatabase = { ...destination(pg, ["s0", "s1"]), name: "src" };
      const placer = new RowPlacer(destination(pg, ["d0", "d1", "d2", "d3"]), { plugins: null });
      const sourceOwners = await keysByShard(new RowPlacer(source, { plugins: null }), ORDERS, 2);
      const destShards = await keysByShard(placer, ORDERS, 4);
      // A key of source shard 0 placed on new shard 2, one of source shard 1 on new shard 3.
      const a = sourceOwners[0].find((k) => destShards[2].includes(k))!;
      const b = sourceOwners[1].find((k) => destShards[3].includes(k))!;
      for (const order of [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0], [0, 1, 0, 1, 0]]) {
        const names = await fresh(4);
        const dest = destination(pg, names);
        const appliers = [0, 1].map((s) =>
          new ChangeApplier({
            destination: dest,
            placer,
            shared: [0, 1, -1, -1],
            sourceShard: s,
            slot: "m",
            source,
          })
        );
        const [src0, src1] = [new Source(), new Source()];
        const streams = [
          [
            src0.txn([
              ORDERS_REL,
              ins(ORDERS_REL, ["1", String(a), "first"]),
              ins(ORDERS_REL, ["2", String(a), "kept"]),
            ]),
            src0.txn([upd(ORDERS_REL, ["1", String(a), "stale"])]),
            src0.txn([del(ORDERS_REL, ["1", null, null])]),
          ],
          [
            src1.txn([ORDERS_REL, ins(ORDERS_REL, ["1", String(b), "moved"])]),
            src1.txn([upd(ORDERS_REL, ["1", String(b), "newest"])]),
          ],
        ];
        const db = await Shards.open(pg, names);
        try {
          for (const applier of appliers) await applier.start();
          for (const s of order) await applyAll(appliers[s], streams[s].shift()!);
          assert.deepEqual(
            await db.everywhere("SELECT id, customer_id, note FROM orders ORDER BY id"),
            [`2:2|${a}|kept`, `3:1|${b}|newest`],
            `order ${order}`,
          );
        } finally {
          for (const applier of appliers) applier.close();
          db.close();
        }
      }
    },
  );
});

/** Every merge of two sequences of `a` and `b` steps: per step, 0 (from a) or 1 (from b). */
function interleavings(a: number, b: number): number[][] {
  if (a === 0) return [Array(b).fill(1)];
  if (b === 0) return [Array(a).fill(0)];
  return [
    ...interleavings(a - 1, b).map((rest) => [0, ...rest]),
    ...interleavings(a, b - 1).map((rest) => [1, ...rest]),
  ];
}

Deno.test("ChangeApplier: a row moving between source shards survives every interleaving of the two streams", async (t) => {
  await using pg = await startPostgres({
    settings: { max_prepared_transactions: 10 },
    roles: [{ name: "app", password: "pw", auth: "scram", superuser: true }],
  });
  const create = async (names: string[]): Promise<void> => {
    for (const name of names) {
      await pg.sql(`CREATE DATABASE ${name}`);
      await pg.sql(SCHEMA, { database: name });
    }
  };
  const source: ReshardingDatabase = { ...destination(pg, ["s0", "s1"]), name: "src" };
  const sourceOwners = await keysByShard(new RowPlacer(source, { plugins: null }), ORDERS, 2);
  const layouts: { label: string; names: string[]; shared: number[] }[] = [
    { label: "onto 1 shard", names: ["one_0"], shared: [-1] },
    { label: "onto 3 shards", names: ["three_0", "three_1", "three_2"], shared: [-1, -1, -1] },
    {
      label: "growing in place",
      names: ["grow_0", "grow_1", "grow_2", "grow_3"],
      shared: [0, 1, -1, -1],
    },
  ];
  let id = 0;
  for (const layout of layouts) {
    await create(layout.names);
    const dest = destination(pg, layout.names);
    const placer = new RowPlacer(dest, { plugins: null });
    const newShards = layout.shared.flatMap((s, d) => s < 0 ? [d] : []);
    const destShards = await keysByShard(placer, ORDERS, layout.names.length);
    const db = await Shards.open(pg, layout.names);
    try {
      await t.step(layout.label, async () => {
        // s: the shard the row leaves, t: the shard it moves to (both ways).
        for (const [s, to] of [[0, 1], [1, 0]]) {
          // Keys owned by s and t, placed on new destination shards: different ones, and one.
          const pairs: [number, number][] = [];
          for (const same of newShards.length === 1 ? [true] : [false, true]) {
            for (
              const a of sourceOwners[s].filter((k) =>
                newShards.some((d) => destShards[d].includes(k))
              )
            ) {
              const da = destShards.findIndex((keys) => keys.includes(a));
              const b = sourceOwners[to].find((k) =>
                newShards.some((d) => destShards[d].includes(k)) &&
                (destShards.findIndex((keys) => keys.includes(k)) === da) === same
              );
              if (b !== undefined) {
                pairs.push([a, b]);
                break;
              }
            }
          }
          assert.ok(pairs.length > 0);
          for (const [a, b] of pairs) {
            for (const sUpdates of [false, true]) {
              for (const tUpdates of [false, true]) {
                const sSteps = sUpdates ? 3 : 2;
                const tSteps = tUpdates ? 2 : 1;
                for (const order of interleavings(sSteps, tSteps)) {
                  id++;
                  const row = String(id);
                  const slot = `m${id}`;
                  const appliers = [s, to].map((sourceShard) =>
                    new ChangeApplier({
                      destination: dest,
                      placer,
                      shared: layout.shared,
                      sourceShard,
                      slot,
                      source,
                    })
                  );
                  const [srcS, srcT] = [new Source(), new Source()];
                  const streams = [
                    [
                      srcS.txn([ORDERS_REL, ins(ORDERS_REL, [row, String(a), "old"])]),
                      ...(sUpdates ? [srcS.txn([upd(ORDERS_REL, [row, String(a), "old2"])])] : []),
                      srcS.txn([del(ORDERS_REL, [row, null, null])]),
                    ],
                    [
                      srcT.txn([ORDERS_REL, ins(ORDERS_REL, [row, String(b), "moved"])]),
                      ...(tUpdates
                        ? [srcT.txn([upd(ORDERS_REL, [row, String(b), "newest"])])]
                        : []),
                    ],
                  ];
                  const label = `source shard ${s} -> ${to}, keys ${a} -> ${b}, order ${order}`;
                  try {
                    for (const applier of appliers) await applier.start();
                    for (const i of order) await applyAll(appliers[i], streams[i].shift()!);
                  } finally {
                    for (const applier of appliers) applier.close();
                  }
                  const shardOfB = destShards.findIndex((keys) => keys.includes(b));
                  const rows = (await db.everywhere(
                    `SELECT id, customer_id, note FROM orders WHERE id = ${row}`,
                  )).filter((r) => newShards.includes(Number(r.split(":")[0])));
                  assert.deepEqual(
                    rows,
                    [`${shardOfB}:${row}|${b}|${tUpdates ? "newest" : "moved"}`],
                    label,
                  );
                  for (const d of newShards) {
                    assert.deepEqual(
                      await db.rows(
                        d,
                        `SELECT count(*) FROM pgdog_resharding.displaced WHERE slot = '${slot}'`,
                      ),
                      [["0"]],
                      `${label}: displaced versions left on shard ${d}`,
                    );
                  }
                }
              }
            }
          }
        }
      });
    } finally {
      db.close();
    }
  }

  await t.step(
    "a displaced version is updated where it waits, unchanged TOAST values kept",
    async () => {
      const names = ["toast_0", "toast_1", "toast_2"];
      await create(names);
      const dest = destination(pg, names);
      const placer = new RowPlacer(dest, { plugins: null });
      const destShards = await keysByShard(placer, ORDERS, 3);
      const shardOf = (k: number) => destShards.findIndex((keys) => keys.includes(k));
      const a = sourceOwners[0][0];
      const a2 = sourceOwners[0].find((k) => shardOf(k) !== shardOf(a))!;
      const b = sourceOwners[1].find((k) =>
        shardOf(k) !== shardOf(a) && shardOf(k) !== shardOf(a2)
      )!;
      const appliers = [0, 1].map((sourceShard) =>
        new ChangeApplier({
          destination: dest,
          placer,
          shared: [-1, -1, -1],
          sourceShard,
          slot: "toast",
          source,
        })
      );
      const [src0, src1] = [new Source(), new Source()];
      const db = await Shards.open(pg, names);
      const displaced = () =>
        db.everywhere(
          `SELECT owner, "row"->>'customer_id', "row"->>'note' FROM pgdog_resharding.displaced`,
        );
      try {
        for (const applier of appliers) await applier.start();
        await applyAll(
          appliers[1],
          src1.txn([ORDERS_REL, ins(ORDERS_REL, ["1", String(b), "moved"])]),
        );
        await applyAll(
          appliers[0],
          src0.txn([ORDERS_REL, ins(ORDERS_REL, ["1", String(a), "old"])]),
        );
        assert.deepEqual(await displaced(), [`${shardOf(a)}:0|${a}|old`]);
        await applyAll(appliers[0], src0.txn([upd(ORDERS_REL, ["1", String(a), "old2"])]));
        assert.deepEqual(await displaced(), [`${shardOf(a)}:0|${a}|old2`]);
        await applyAll(appliers[0], src0.txn([upd(ORDERS_REL, ["1", String(a2), UNCHANGED])]));
        assert.deepEqual(await displaced(), [`${shardOf(a2)}:0|${a2}|old2`]);
        assert.deepEqual(await db.everywhere("SELECT id, customer_id, note FROM orders"), [
          `${shardOf(b)}:1|${b}|moved`,
        ]);
        // The version in the table is deleted by its source shard: the displaced one takes its place.
        await applyAll(appliers[1], src1.txn([del(ORDERS_REL, ["1", null, null])]));
        assert.deepEqual(await displaced(), []);
        assert.deepEqual(await db.everywhere("SELECT id, customer_id, note FROM orders"), [
          `${shardOf(a2)}:1|${a2}|old2`,
        ]);
        await applyAll(appliers[0], src0.txn([upd(ORDERS_REL, ["1", String(a2), UNCHANGED])]));
        await applyAll(appliers[0], src0.txn([upd(ORDERS_REL, ["1", String(a), UNCHANGED])]));
        assert.deepEqual(await db.everywhere("SELECT id, customer_id, note FROM orders"), [
          `${shardOf(a)}:1|${a}|old2`,
        ]);
        // TRUNCATE empties the side table too.
        await applyAll(
          appliers[1],
          src1.txn([ORDERS_REL, ins(ORDERS_REL, ["1", String(b), "again"])]),
        );
        assert.equal((await displaced()).length, 1);
        await applyAll(
          appliers[1],
          src1.txn([{
            kind: "truncate",
            relations: [ORDERS_REL.oid],
            cascade: false,
            restartIdentity: false,
          }]),
        );
        assert.deepEqual(await displaced(), []);
      } finally {
        for (const applier of appliers) applier.close();
        db.close();
      }
    },
  );

  await t.step(
    "an INSERT waits for another source shard's open transaction on the row",
    async () => {
      const names = ["wait_0", "wait_1", "wait_2"];
      await create(names);
      const dest = destination(pg, names);
      const placer = new RowPlacer(dest, { plugins: null });
      const destShards = await keysByShard(placer, ORDERS, 3);
      const shardOf = (k: number) => destShards.findIndex((keys) => keys.includes(k));
      const a = sourceOwners[0][0];
      const b = sourceOwners[1].find((k) => shardOf(k) !== shardOf(a))!;
      const appliers = [0, 1].map((sourceShard) =>
        new ChangeApplier({
          destination: dest,
          placer,
          shared: [-1, -1, -1],
          sourceShard,
          slot: "wait",
          source,
        })
      );
      const [src0, src1] = [new Source(), new Source()];
      const db = await Shards.open(pg, names);
      try {
        for (const applier of appliers) await applier.start();
        const moved = src1.txn([ORDERS_REL, ins(ORDERS_REL, ["1", String(b), "moved"])]);
        // Source shard 1's transaction is open (its row not committed) when shard 0's arrives.
        await applyAll(appliers[1], moved.slice(0, -1));
        const old = applyAll(
          appliers[0],
          src0.txn([ORDERS_REL, ins(ORDERS_REL, ["1", String(a), "old"])]),
        );
        await applyAll(appliers[1], moved.slice(-1));
        await old;
        // One version in the table, the other displaced (not both in the table).
        assert.deepEqual(await db.everywhere("SELECT id, customer_id, note FROM orders"), [
          `${shardOf(b)}:1|${b}|moved`,
        ]);
        assert.deepEqual(
          await db.everywhere(`SELECT owner, "row"->>'note' FROM pgdog_resharding.displaced`),
          [`${shardOf(a)}:0|old`],
        );
        await applyAll(appliers[0], src0.txn([del(ORDERS_REL, ["1", null, null])]));
        assert.deepEqual(await db.everywhere("SELECT id, customer_id, note FROM orders"), [
          `${shardOf(b)}:1|${b}|moved`,
        ]);
      } finally {
        for (const applier of appliers) applier.close();
        db.close();
      }
    },
  );

  await t.step("both streams applied at once: every moved row kept once, newest", async () => {
    const names = ["conc_0", "conc_1", "conc_2"];
    await create(names);
    const dest = destination(pg, names);
    const placer = new RowPlacer(dest, { plugins: null });
    const destShards = await keysByShard(placer, ORDERS, 3);
    const shardOf = (k: number) => destShards.findIndex((keys) => keys.includes(k));
    const appliers = [0, 1].map((sourceShard) =>
      new ChangeApplier({
        destination: dest,
        placer,
        shared: [-1, -1, -1],
        sourceShard,
        slot: "conc",
        source,
      })
    );
    const [src0, src1] = [new Source(), new Source()];
    const rows = Array.from({ length: 60 }, (_, i) => ({
      id: String(i + 1),
      a: sourceOwners[0][i % sourceOwners[0].length],
      b: sourceOwners[1][(i * 7) % sourceOwners[1].length],
    }));
    // Source shard 0: each row inserted, then moved away; source shard 1: each row arrives.
    const stream0 = [
      ...src0.txn([ORDERS_REL]),
      ...rows.flatMap((r) => [
        ...src0.txn([ins(ORDERS_REL, [r.id, String(r.a), "old"])]),
        ...src0.txn([del(ORDERS_REL, [r.id, null, null])]),
      ]),
    ];
    const stream1 = [
      ...src1.txn([ORDERS_REL]),
      ...rows.map((r) => src1.txn([ins(ORDERS_REL, [r.id, String(r.b), "moved"])])).flat(),
    ];
    const db = await Shards.open(pg, names);
    try {
      for (const applier of appliers) await applier.start();
      await Promise.all([applyAll(appliers[0], stream0), applyAll(appliers[1], stream1)]);
      assert.deepEqual(
        await db.everywhere("SELECT id, customer_id, note FROM orders ORDER BY id"),
        rows
          .map((r) => `${shardOf(r.b)}:${r.id}|${r.b}|moved`)
          .sort((x, y) => {
            const [dx, ix] = x.split(/[:|]/).map(Number);
            const [dy, iy] = y.split(/[:|]/).map(Number);
            return dx - dy || ix - iy;
          }),
      );
      assert.deepEqual(
        await db.everywhere("SELECT count(*) FROM pgdog_resharding.displaced"),
        ["0:0", "1:0", "2:0"],
      );
    } finally {
      for (const applier of appliers) applier.close();
      db.close();
    }
  });
});

/**
 * A minimal pgoutput (protocol 1) decoder for this test, so the applier meets what PostgreSQL
 * really sends (the stream's own decoder is tested beside it).
 */
function decodeForTest(data: Uint8Array): Change {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let p = 1;
  const u8 = () => data[p++];
  const i16 = () => (p += 2, view.getInt16(p - 2));
  const i32 = () => (p += 4, view.getInt32(p - 4));
  const i64 = () => (p += 8, view.getBigInt64(p - 8));
  const str = () => {
    const end = data.indexOf(0, p);
    const s = new TextDecoder().decode(data.subarray(p, end));
    p = end + 1;
    return s;
  };
  const tuple = (): TupleValue[] => {
    const n = i16();
    const out: TupleValue[] = [];
    for (let i = 0; i < n; i++) {
      const kind = String.fromCharCode(u8());
      if (kind === "n") out.push(null);
      else if (kind === "u") out.push(UNCHANGED);
      else {
        const len = i32();
        out.push(new TextDecoder().decode(data.subarray(p, p + len)));
        p += len;
      }
    }
    return out;
  };
  switch (String.fromCharCode(data[0])) {
    case "B":
      return { kind: "begin", finalLsn: i64(), commitTime: i64(), xid: i32() };
    case "C": {
      u8();
      return { kind: "commit", commitLsn: i64(), endLsn: i64(), commitTime: i64() };
    }
    case "R": {
      const oid = i32();
      const schema = str() || "pg_catalog";
      const name = str();
      const replicaIdentity = String.fromCharCode(u8()) as Relation["replicaIdentity"];
      const n = i16();
      const columns = [];
      for (let i = 0; i < n; i++) {
        const key = u8() === 1;
        columns.push({ key, name: str(), typeOid: i32(), typmod: i32() });
      }
      return { kind: "relation", oid, schema, name, replicaIdentity, columns };
    }
    case "I": {
      const relation = i32();
      u8(); // N
      return { kind: "insert", relation, tuple: tuple() };
    }
    case "U": {
      const relation = i32();
      let kind = String.fromCharCode(u8());
      let old: TupleValue[] | null = null;
      let oldKind: "K" | "O" | null = null;
      if (kind === "K" || kind === "O") {
        oldKind = kind;
        old = tuple();
        kind = String.fromCharCode(u8());
      }
      return { kind: "update", relation, old, oldKind, tuple: tuple() };
    }
    case "D": {
      const relation = i32();
      const oldKind = String.fromCharCode(u8()) as "K" | "O";
      return { kind: "delete", relation, old: tuple(), oldKind };
    }
    case "T": {
      const n = i32();
      const options = u8();
      const relations = Array.from({ length: n }, () => i32());
      return {
        kind: "truncate",
        relations,
        cascade: (options & 1) !== 0,
        restartIdentity: (options & 2) !== 0,
      };
    }
    default:
      return { kind: "other", tag: data[0] };
  }
}

Deno.test("ChangeApplier: what PostgreSQL 15 decodes from a workload lands as on the source", async () => {
  await using pg = await startPostgres({
    settings: { wal_level: "logical", max_replication_slots: 4, max_wal_senders: 4 },
    roles: [{ name: "app", password: "pw", auth: "scram", superuser: true }],
    databases: ["src", "e0", "e1", "e2"],
  });
  const names = ["e0", "e1", "e2"];
  for (const name of ["src", ...names]) await pg.sql(SCHEMA, { database: name });
  await pg.sql(
    'ALTER TABLE f REPLICA IDENTITY FULL; ALTER TABLE "of" REPLICA IDENTITY FULL; ' +
      "DROP TRIGGER refuse ON trips; CREATE PUBLICATION p FOR ALL TABLES; " +
      // Stored out of line even when compressible: UPDATEs leave them out of the stream.
      "ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL; " +
      "ALTER TABLE orders ALTER COLUMN note SET STORAGE EXTERNAL",
    { database: "src" },
  );
  await pg.sql("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", { database: "src" });
  const dest = destination(pg, names);
  dest.sharding.tables.push({ name: "f", column: "id", type: "bigint", mapping: [] });
  const placer = new RowPlacer(dest, { plugins: null });
  const source = await PgConn.connect({
    host: pg.host,
    port: pg.port,
    user: "app",
    password: "pw",
    database: "src",
  });
  const db = await Shards.open(pg, names);
  try {
    // The workload: inserts, updates of non-key and key columns (TOASTed values left alone),
    // deletes, REPLICA IDENTITY FULL, a table on every shard, TRUNCATE, in transactions.
    await source.query(`
      INSERT INTO t SELECT i, 'v' || i, CASE WHEN i % 10 = 0 THEN repeat(md5(i::text), 1000) END
        FROM generate_series(1, 300) i;
      INSERT INTO orders SELECT i, i % 37, repeat(md5(i::text), 500) FROM generate_series(1, 100) i;
      INSERT INTO f VALUES (1, 'a', '{"x": 1}'), (1, 'a', '{"x": 1}'), (2, NULL, NULL);
      INSERT INTO o VALUES (1, 'one'), (2, 'two');
      INSERT INTO trips VALUES (1), (2);
      INSERT INTO ev SELECT i, i % 200 FROM generate_series(1, 100) i;
      UPDATE ev SET at = at + 100 WHERE at < 50;
      UPDATE ev SET id = id + 1000 WHERE id % 4 = 0;
      BEGIN;
      UPDATE t SET v = 'changed' WHERE id % 7 = 0;
      UPDATE t SET id = id + 1000 WHERE id % 10 = 0 AND id <= 150;
      DELETE FROM t WHERE id % 11 = 0;
      COMMIT;
      UPDATE orders SET customer_id = customer_id + 100 WHERE id % 3 = 0;
      UPDATE orders SET customer_id = customer_id + 1 WHERE id % 5 = 0;
      DELETE FROM orders WHERE id % 13 = 0;
      UPDATE f SET v = 'b' WHERE ctid = (SELECT ctid FROM f WHERE id = 1 LIMIT 1);
      UPDATE f SET id = 3 WHERE id = 2;
      UPDATE o SET v = 'uno' WHERE id = 1;
      DELETE FROM o WHERE id = 2;
      TRUNCATE trips;
      INSERT INTO trips VALUES (3);
    `);
    const r = await source.query(
      "SELECT lsn::text, encode(data, 'hex') FROM " +
        "pg_logical_slot_get_binary_changes('s', NULL, NULL, 'proto_version', '1', " +
        "'publication_names', 'p')",
    );
    const changes: StreamedChange[] = r.rows.map(([lsn, hex]) => ({
      lsn: parseLsn(lsn!),
      change: decodeForTest(Uint8Array.from(hex!.match(/../g)!.map((h) => parseInt(h, 16)))),
    }));
    assert.ok(
      changes.some((c) => c.change.kind === "update" && c.change.tuple.includes(UNCHANGED)),
    );
    const options = { destination: dest, placer, shared: [-1, -1, -1], sourceShard: 0, slot: "s" };
    let applier = new ChangeApplier(options);
    await applier.start();
    await applyAll(applier, changes);
    const lastCommit = changes.findLast((c) => c.change.kind === "commit")!.change;
    assert.equal(applier.applied(), lastCommit.kind === "commit" ? lastCommit.endLsn : -1n);
    applier.close();

    const compare = async () => {
      const queries: [string, string][] = [
        ["t", "SELECT id, v, md5(big) FROM t ORDER BY 1, 2, 3"],
        ["orders", "SELECT id, customer_id, md5(note) FROM orders ORDER BY 1, 2, 3"],
        ["f", "SELECT id, v, j::text FROM f ORDER BY 1, 2, 3"],
        // Partitions: the stream names ev_1 and ev_2, placed as ev.
        ["ev", "SELECT id, at FROM ev ORDER BY 1, 2"],
      ];
      for (const [table, sql] of queries) {
        const want = (await source.query(sql)).rows;
        const got: (string | null)[][] = [];
        for (let d = 0; d < 3; d++) {
          const rows = await db.rows(d, sql);
          // Each row on the shard its key maps to.
          const spec = dest.sharding.tables.find((s) => s.name === table)!;
          const column = table === "orders" ? 1 : 0;
          const shards = await placer.shardsOf(spec, rows.map((row) => row[column]));
          assert.ok(shards.every((s) => s === d), `${table} rows on shard ${d}`);
          got.push(...rows);
        }
        got.sort((a, b) => Number(a[0]) - Number(b[0]) || String(a[1]).localeCompare(String(b[1])));
        want.sort((a, b) =>
          Number(a[0]) - Number(b[0]) || String(a[1]).localeCompare(String(b[1]))
        );
        assert.deepEqual(got, want, table);
      }
      for (const sql of ["SELECT id, v FROM o ORDER BY id", "SELECT id FROM trips ORDER BY id"]) {
        const want = (await source.query(sql)).rows;
        for (let d = 0; d < 3; d++) assert.deepEqual(await db.rows(d, sql), want, sql);
      }
    };
    await compare();
    // Replayed from the start (the slot forgot nothing yet): nothing applied twice.
    applier = new ChangeApplier(options);
    await applier.start();
    await applyAll(applier, changes);
    applier.close();
    await compare();
  } finally {
    source.close();
    db.close();
  }
});
