/**
 * Applies the changes one source shard's logical replication stream delivers to the shards of the
 * destination database: one destination transaction per source transaction on each destination
 * shard it touches, rows placed by the destination's sharding rules, and a progress row
 * (`pgdog_resharding.progress`) committed in the same transaction, so a replay after a crash
 * skips what a shard already has and never applies a change twice.
 *
 * @module
 */

import {
  formatLsn,
  type Lsn,
  parseLsn,
  type Relation,
  type StreamedChange,
  type TupleValue,
  UNCHANGED,
} from "./changes.ts";
import { PgConn, PgError, type PgResult } from "./pg_conn.ts";
import { type RowPlacer, type TablePlacement, tablePlacement } from "./placement.ts";
import type { ShardedTable } from "../router/shard_keys.ts";
import { type ReshardingDatabase, ReshardingError } from "./shards.ts";

/** The schema of pgdog's bookkeeping on destination shards (never replicated by pgdog). */
export const PROGRESS_SCHEMA = "pgdog_resharding";

const CREATE_PROGRESS =
  "BEGIN; SELECT pg_advisory_xact_lock(hashtext('pgdog_resharding.progress')); " +
  `CREATE SCHEMA IF NOT EXISTS ${PROGRESS_SCHEMA}; ` +
  `CREATE TABLE IF NOT EXISTS ${PROGRESS_SCHEMA}.progress (slot text NOT NULL, ` +
  "source_shard int NOT NULL, lsn pg_lsn NOT NULL, PRIMARY KEY (slot, source_shard)); " +
  // Versions of a row waiting for their source shard to delete them (see ChangeApplier).
  `CREATE TABLE IF NOT EXISTS ${PROGRESS_SCHEMA}.displaced (slot text NOT NULL, ` +
  '"table" text NOT NULL, identity text NOT NULL, owner int NOT NULL, "row" jsonb NOT NULL, ' +
  'PRIMARY KEY (slot, "table", identity, owner)); COMMIT';

// synchronous_commit: a commit is confirmed to the source (which then forgets the change) only
// once it is on disk, whatever the destination's own setting.
const BEGIN =
  "BEGIN; SET LOCAL session_replication_role = replica; SET LOCAL synchronous_commit = on";

/** Options of {@linkcode ChangeApplier}. */
export interface ChangeApplierOptions {
  /** Where the changes go. */
  destination: ReshardingDatabase;
  /** Places rows on the destination's shards. */
  placer: RowPlacer;
  /** Per destination shard, the source shard that is the same database, or -1 (sharedShards). */
  shared: number[];
  /** The source shard whose stream this applier applies. */
  sourceShard: number;
  /** The replication slot (names the progress rows). */
  slot: string;
  /**
   * The source database. With several shards, a row whose key changes may move between source
   * shards, whose streams arrive in no common order: each applier then changes only the rows its
   * source shard owns (see {@linkcode ChangeApplier}). Absent: one source shard.
   */
  source?: ReshardingDatabase;
  /** Connect timeout per shard (10 s by default). */
  connectTimeoutMs?: number;
  /**
   * Commit source transactions that move rows between destination shards with two-phase commit
   * (all or none of the shards have it after a crash). Default: when every new destination shard
   * allows prepared transactions (`max_prepared_transactions` > 0).
   */
  twoPhase?: boolean;
}

/** A replicated table as the applier uses it. */
interface Table {
  relation: Relation;
  /** `"schema"."name"`. */
  qualified: string;
  /** Quoted column names, in tuple order. */
  names: string[];
  placement: TablePlacement;
  /** Indexes of the replica identity's columns (every column for REPLICA IDENTITY FULL). */
  identity: number[];
  full: boolean;
  /** pgdog's own bookkeeping (not applied). */
  ignored: boolean;
  /**
   * How the source places the table's rows, when versions of a row from several source shards
   * can meet on the destination (a sharded source whose key is not in the replica identity):
   * then a change applies only to a row whose key the source places on this applier's shard.
   */
  owner: { spec: ShardedTable; column: number } | null;
  /** `"schema"."name"` for messages. */
  label: string;
}

/** The source transaction being applied. */
interface Transaction {
  /** Its commit LSN: shards whose progress is at or past it already have it. */
  finalLsn: Lsn;
  /** Destination shards with an open transaction for it, in the order they were opened. */
  open: Set<number>;
  /** Shards rows were moved away from (committed last: the rows' new copies commit first). */
  movedFrom: Set<number>;
  /**
   * By shard: statements whose answers are not needed, not sent yet (they go in one request with
   * the next statement there that needs its answer, or with the commit).
   */
  pending: Map<number, Queue>;
}

/** Statements waiting to be sent to a shard, as SQL text with the values as literals. */
interface Queue {
  statements: string[];
  /** Rows being gathered into one multi-row INSERT (one table), not in `statements` yet. */
  insert: { table: Table; rows: (string | null)[][] } | null;
  /** About the size of the SQL text. */
  bytes: number;
}

/** Rows of one multi-row INSERT, and bytes of queued SQL, at most. */
const BATCH_ROWS = 1000;
const BATCH_BYTES = 4 << 20;

/**
 * Applies a source shard's changes (in stream order) to the destination shards. After apply()
 * throws, close it: a new applier and a stream restarted from the slot carry on (transactions a
 * shard already committed are skipped there).
 *
 * With a sharded source, a row whose key changes moves between source shards (a DELETE in one
 * stream, an INSERT in another), and the two streams are applied in no common order, so versions
 * of one row (one replica identity) from several source shards can meet, and which is newer is
 * unknown. Each is kept until its own source shard deletes it (the source holds one at a time, so
 * all but one are deleted in the end): one in the table, the others in
 * `pgdog_resharding.displaced` on the destination. A change from source shard s applies to s's
 * version wherever it is; when s deletes the one in the table, a displaced one takes its place.
 * Changes of one identity are serialized among the appliers by an advisory lock on the first new
 * destination shard, held until the source transaction ended everywhere.
 */
export class ChangeApplier {
  readonly #options: ChangeApplierOptions;
  /** By destination shard: null for shards this applier never writes or reads. */
  readonly #conns: (PgConn | null)[];
  /** By destination shard: the commit LSN of the last source transaction it committed. */
  readonly #progress: Lsn[];
  readonly #tables = new Map<number, Table>();
  #txn: Transaction | null = null;
  #applied: Lsn = 0n;
  #lastTransactionAt = 0;
  #twoPhase = false;
  /** Places keys on the source's shards; null with one source shard (rows never move there). */
  readonly #sourcePlacer: RowPlacer | null;
  /** The shard whose advisory locks serialize changes of one identity (the first new one). */
  readonly #lockShard: number;
  /** Whether this applier holds advisory locks there (released after the transaction). */
  #locked = false;

  constructor(options: ChangeApplierOptions) {
    if (options.shared.length !== options.destination.shards.length) {
      throw new ReshardingError(
        `shared has ${options.shared.length} entries for ${options.destination.shards.length} ` +
          "destination shards",
      );
    }
    this.#options = options;
    this.#conns = options.destination.shards.map(() => null);
    this.#progress = options.destination.shards.map(() => 0n);
    const source = options.source;
    this.#sourcePlacer = source && source.shards.length > 1
      ? options.placer.forDatabase(source)
      : null;
    this.#lockShard = options.shared.findIndex((s) => s < 0);
  }

  /**
   * Connects to the destination shards (the new ones, and the source shard's own database when
   * growing in place), creates the progress table where missing and reads this slot's progress.
   */
  async start(): Promise<void> {
    const { destination, shared, sourceShard, slot } = this.#options;
    const timeoutMs = this.#options.connectTimeoutMs ?? 10_000;
    try {
      // Settled, all of them: a connection still opening when one failed is closed too.
      await this.#each(destination.shards.map((_, d) => d), async (d) => {
        const host = destination.shards[d];
        if (shared[d] >= 0 && shared[d] !== sourceShard) return;
        const conn = await PgConn.connect(host.primary, { timeoutMs });
        this.#conns[d] = conn;
        if (shared[d] >= 0) return;
        await conn.query(CREATE_PROGRESS);
        const r = await conn.execute(
          `SELECT lsn::text FROM ${PROGRESS_SCHEMA}.progress WHERE slot = $1 AND source_shard = $2`,
          [slot, String(sourceShard)],
        );
        const text = r.rows[0]?.[0];
        this.#progress[d] = text ? parseLsn(text) : 0n;
      });
      const fresh = this.#conns.flatMap((c, d) => c && shared[d] < 0 ? [c] : []);
      const allowed = await Promise.all(
        fresh.map(async (c) =>
          Number((await c.query("SHOW max_prepared_transactions")).rows[0][0]) > 0
        ),
      );
      this.#twoPhase = this.#options.twoPhase ?? allowed.every((a) => a);
      if (this.#twoPhase && !allowed.every((a) => a)) {
        throw new ReshardingError(
          "two-phase commit needs max_prepared_transactions > 0 on every new destination shard",
        );
      }
      await this.#recover();
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** Whether transactions that move rows between shards commit in two phases. */
  get twoPhase(): boolean {
    return this.#twoPhase;
  }

  /**
   * Ends the transactions a crash left prepared: committed where one of its shards already
   * committed it (every shard had prepared it), rolled back everywhere otherwise (the replay
   * applies it again).
   */
  async #recover(): Promise<void> {
    const prepared = new Map<Lsn, number[]>();
    for (let d = 0; d < this.#conns.length; d++) {
      const conn = this.#conns[d];
      if (!conn || this.#options.shared[d] >= 0) continue;
      const prefix = this.#gidPrefix(d);
      const r = await conn.execute(
        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND " +
          "left(gid, length($1)) = $1",
        [prefix],
      );
      for (const [gid] of r.rows) {
        const lsn = parseLsn(gid!.slice(prefix.length));
        prepared.set(lsn, [...prepared.get(lsn) ?? [], d]);
      }
    }
    for (const [lsn, shards] of prepared) {
      const committed = this.#progress.some((p, d) => this.#options.shared[d] < 0 && p >= lsn);
      for (const d of shards) {
        const gid = quoteLiteral(`${this.#gidPrefix(d)}${formatLsn(lsn)}`);
        await this.#conns[d]!.query(`${committed ? "COMMIT" : "ROLLBACK"} PREPARED ${gid}`);
        if (committed) this.#progress[d] = lsn;
      }
    }
  }

  /**
   * Names this applier's prepared transactions on shard `d` (followed by the commit LSN; names
   * are per cluster, and shards may share one).
   */
  #gidPrefix(d: number): string {
    return `pgdog_resharding:${this.#options.slot}:${this.#options.sourceShard}:${d}:`;
  }

  /**
   * The end LSN of the last source transaction committed on every destination shard it touched
   * (what the stream may confirm); 0 before the first one.
   */
  applied(): Lsn {
    return this.#applied;
  }

  /** When the last source transaction was applied (ms since the epoch; 0 before the first). */
  lastTransactionAt(): number {
    return this.#lastTransactionAt;
  }

  /** The commit LSN each destination shard has applied up to (0 for shards it does not write). */
  progress(): readonly Lsn[] {
    return this.#progress;
  }

  /** Closes the connections (an open destination transaction is rolled back by the server). */
  close(): void {
    for (const c of this.#conns) c?.close();
    this.#txn = null;
  }

  /** Applies one change. Throws PgError (a destination failed) or ReshardingError. */
  async apply(streamed: StreamedChange): Promise<void> {
    try {
      await this.#apply(streamed);
    } catch (e) {
      await this.#rollback();
      throw e;
    }
  }

  async #apply(streamed: StreamedChange): Promise<void> {
    const change = streamed.change;
    switch (change.kind) {
      case "begin":
        if (this.#txn) await this.#rollback();
        this.#txn = {
          finalLsn: change.finalLsn,
          open: new Set(),
          movedFrom: new Set(),
          pending: new Map(),
        };
        return;
      case "commit":
        await this.#commit(change.commitLsn, change.endLsn);
        return;
      case "relation":
        this.#tables.set(change.oid, {
          ...this.#table(change),
          ...await this.#placement(change),
        });
        return;
      case "other":
        return;
      case "insert": {
        const t = this.#tableOf(change.relation);
        if (t.ignored) return;
        await this.#insert(t, change.tuple);
        return;
      }
      case "update": {
        const t = this.#tableOf(change.relation);
        if (t.ignored) return;
        await this.#update(t, change.old, change.tuple);
        return;
      }
      case "delete": {
        const t = this.#tableOf(change.relation);
        if (t.ignored) return;
        await this.#delete(t, change.old);
        return;
      }
      case "truncate": {
        const tables = change.relations.map((oid) => this.#tableOf(oid)).filter((t) => !t.ignored);
        if (tables.length === 0) return;
        let sql = `TRUNCATE ${tables.map((t) => t.qualified).join(", ")}`;
        if (change.restartIdentity) sql += " RESTART IDENTITY";
        if (change.cascade) sql += " CASCADE";
        for (const d of this.#writable()) await this.#queue(d, sql);
        const owned = tables.filter((t) => t.owner);
        if (owned.length === 0) return;
        const displaced = `DELETE FROM ${PROGRESS_SCHEMA}.displaced WHERE slot = ${
          quoteLiteral(this.#options.slot)
        } AND "table" IN (${owned.map((t) => quoteLiteral(t.qualified)).join(", ")})`;
        for (const d of this.#writable()) await this.#queue(d, displaced);
        return;
      }
    }
  }

  #table(relation: Relation): Table {
    const qualified = `${quoteIdent(relation.schema)}.${quoteIdent(relation.name)}`;
    const ignored = relation.schema === PROGRESS_SCHEMA;
    const full = relation.replicaIdentity === "f";
    const identity: number[] = [];
    relation.columns.forEach((c, i) => {
      if (full || c.key) identity.push(i);
    });
    return {
      relation,
      qualified,
      names: relation.columns.map((c) => quoteIdent(c.name)),
      placement: { kind: "all" },
      identity,
      full,
      ignored,
      label: `${relation.schema}.${relation.name}`,
      owner: null,
    };
  }

  /**
   * How the table's rows are placed: as configured for it, or for the partitioned table it is a
   * partition of (the stream names the partition a row is in; `[[sharded_tables]]` names the
   * table clients query), found in the destination's catalog.
   */
  async #placement(
    relation: Relation,
  ): Promise<{ placement: TablePlacement; owner: Table["owner"] }> {
    if (relation.schema === PROGRESS_SCHEMA) return { placement: { kind: "all" }, owner: null };
    const columns = relation.columns.map((c) => c.name);
    const placed = (table: { schema: string; name: string }) => {
      const placement = tablePlacement(this.#options.destination, { table, columns });
      return { placement, owner: this.#owner(relation, { table, placement }) };
    };
    const own = placed({ schema: relation.schema, name: relation.name });
    if (own.placement.kind === "sharded") return own;
    const conn = this.#conns.find((c, d) => c && this.#options.shared[d] < 0) ??
      this.#conns.find((c) => c);
    if (!conn) return own;
    const r = await conn.execute(
      "SELECT n.nspname, c.relname FROM pg_partition_ancestors(to_regclass($1)) a " +
        "JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace " +
        "WHERE a.relid <> to_regclass($1)",
      [`${quoteIdent(relation.schema)}.${quoteIdent(relation.name)}`],
    );
    for (const [schema, name] of r.rows) {
      const ancestor = placed({ schema: schema!, name: name! });
      if (ancestor.placement.kind === "sharded") return ancestor;
    }
    return own;
  }

  /**
   * How the source places a table sharded on the destination, when versions of one row from
   * several source shards can meet: the source is sharded by a column outside the replica
   * identity (a key change keeps the identity; with the key in it, or FULL, versions differ).
   */
  #owner(
    relation: Relation,
    options: { table: { schema: string; name: string }; placement: TablePlacement },
  ): Table["owner"] {
    const source = this.#options.source;
    if (!this.#sourcePlacer || !source || options.placement.kind !== "sharded") return null;
    if (relation.replicaIdentity === "f") return null;
    const columns = relation.columns.map((c) => c.name);
    const placement = tablePlacement(source, { table: options.table, columns });
    if (placement.kind !== "sharded" || relation.columns[placement.column].key) return null;
    return { spec: placement.spec, column: placement.column };
  }

  #tableOf(oid: number): Table {
    if (!this.#txn) {
      throw new ReshardingError("a replicated change arrived outside a transaction");
    }
    const t = this.#tables.get(oid);
    if (!t) {
      throw new ReshardingError(
        `a change names relation ${oid}, which no Relation message described`,
      );
    }
    return t;
  }

  // ---- where rows go -------------------------------------------------------------------------

  /** The shard is the source shard's own database: the source already made the change there. */
  #own(d: number): boolean {
    return this.#options.shared[d] === this.#options.sourceShard;
  }

  /** The shard is another source shard's database (growing in place). */
  #otherShared(d: number): boolean {
    const s = this.#options.shared[d];
    return s >= 0 && s !== this.#options.sourceShard;
  }

  /** The shard already committed the current source transaction (a replay). */
  #done(d: number): boolean {
    return this.#progress[d] >= this.#txn!.finalLsn;
  }

  /** New shards that still need the current transaction. */
  #writable(): number[] {
    const out: number[] = [];
    for (let d = 0; d < this.#conns.length; d++) {
      if (this.#options.shared[d] < 0 && !this.#done(d)) out.push(d);
    }
    return out;
  }

  /** Refuses a row that would land on another source shard's database. */
  #landing(t: Table, d: number): void {
    if (!this.#otherShared(d)) return;
    throw new ReshardingError(
      `a row of ${t.label} from source shard ${this.#options.sourceShard} belongs on destination ` +
        `shard ${d}, which is source shard ${this.#options.shared[d]}'s database: growing in ` +
        "place, rows may only move to new shards",
    );
  }

  /** The shard of a whole row of a sharded table. */
  async #shardOfRow(t: Table, values: readonly (string | null)[]): Promise<number> {
    if (t.placement.kind !== "sharded") throw new Error("not a sharded table");
    return await this.#shardOf(t, values[t.placement.column]);
  }

  async #shardOf(t: Table, key: string | null): Promise<number> {
    if (t.placement.kind !== "sharded") throw new Error("not a sharded table");
    return (await this.#options.placer.shardsOf(t.placement.spec, [key]))[0];
  }

  // ---- changes -------------------------------------------------------------------------------

  async #insert(t: Table, tuple: TupleValue[]): Promise<void> {
    const values = known(t, tuple, "an inserted row");
    if (t.placement.kind === "all") {
      if (t.full) {
        // No key to conflict on: a row equal in every column is the same row.
        const exists = `SELECT 1 FROM ${t.qualified} WHERE ${
          this.#matchSql(t, t.identity, 1)
        } LIMIT 1`;
        const insert = this.#insertSql(t);
        for (const d of this.#writable()) {
          if ((await this.#run(d, exists, values)).rows.length === 0) {
            await this.#run(d, insert, values);
          }
        }
        return;
      }
      const sql = this.#upsertSql(t, values);
      for (const d of this.#writable()) await this.#queue(d, sql);
      return;
    }
    if (t.owner) {
      const where = this.#identity(t, values);
      await this.#lock(t, where);
      await this.#place(t, values, await this.#versions(t, where));
      return;
    }
    const d = await this.#shardOfRow(t, values);
    if (this.#own(d)) return;
    this.#landing(t, d);
    if (this.#done(d)) return;
    await this.#queueInsert(d, t, values);
  }

  // ---- versions of a row from several source shards -------------------------------------------

  /**
   * Serializes the changes of `where`'s identity among the appliers of every source shard: an
   * advisory lock on the first new destination shard, held by the session until the source
   * transaction ended on every shard (released by {@linkcode #unlock}).
   */
  async #lock(t: Table, where: Where): Promise<void> {
    const conn = this.#conns[this.#lockShard];
    if (!conn) return;
    this.#locked = true;
    await conn.execute("SELECT pg_advisory_lock(hashtext($1), hashtext($2))", [
      this.#options.slot,
      `${t.qualified} ${JSON.stringify(where.values)}`,
    ]);
  }

  /** Releases the advisory locks {@linkcode #lock} took. */
  async #unlock(): Promise<void> {
    if (!this.#locked) return;
    this.#locked = false;
    const conn = this.#conns[this.#lockShard];
    if (!conn || conn.closed) return;
    await conn.query("SELECT pg_advisory_unlock_all()").catch(() => conn.close());
  }

  /**
   * The versions of `where`'s identity on the new shards that still need the transaction: the
   * table's rows (locked) and the displaced ones, with their source shard.
   */
  async #versions(t: Table, where: Where): Promise<Version[]> {
    const shards = this.#writable();
    // One statement per shard: the table's row (its values as text, the output form) and the
    // displaced ones.
    const n = where.values.length;
    const sql =
      `WITH v AS (SELECT ARRAY[${
        t.names.map((c) => `${c}::text`).join(", ")
      }] AS r FROM ${t.qualified} ${this.#whereSql(t, where, 1)} FOR UPDATE), ` +
      `x AS (SELECT owner, "row" FROM ${PROGRESS_SCHEMA}.displaced WHERE slot = $${n + 1} AND ` +
      `"table" = $${n + 2} AND identity = $${n + 3} FOR UPDATE) ` +
      'SELECT -1, array_to_json(r)::text FROM v UNION ALL SELECT owner, "row"::text FROM x';
    const params = [...where.values, this.#options.slot, t.qualified, JSON.stringify(where.values)];
    const found: Version[][] = shards.map(() => []);
    await this.#each(shards.map((_, i) => i), async (i) => {
      const d = shards[i];
      for (const [owner, json] of (await this.#run(d, sql, params)).rows) {
        if (owner === "-1") {
          const row = JSON.parse(json!) as (string | null)[];
          found[i].push({ d, owner: -1, row, displaced: false });
          continue;
        }
        const byName = JSON.parse(json!) as Record<string, string | null>;
        const row = t.relation.columns.map((c) => byName[c.name] ?? null);
        found[i].push({ d, owner: Number(owner), row, displaced: true });
      }
    });
    const versions = found.flat();
    const inTable = versions.filter((v) => !v.displaced);
    // Placed after the reads, in one call (the placer is not reentrant).
    const owners = await this.#sourcePlacer!.shardsOf(
      t.owner!.spec,
      inTable.map((v) => v.row[t.owner!.column]),
    );
    inTable.forEach((v, i) => v.owner = owners[i]);
    return versions;
  }

  /** The row as `"row"` of the side table: a JSON object of its columns' text values. */
  #rowJson(t: Table, values: readonly (string | null)[]): string {
    return JSON.stringify(
      Object.fromEntries(t.relation.columns.map((c, i) => [c.name, values[i]])),
    );
  }

  /** Stores this source shard's version `values` of a row as displaced on shard `d`. */
  async #displace(d: number, t: Table, values: readonly (string | null)[]): Promise<void> {
    const where = this.#identity(t, values as TupleValue[]);
    await this.#queue(
      d,
      `INSERT INTO ${PROGRESS_SCHEMA}.displaced (slot, "table", identity, owner, "row") VALUES (${
        quoteLiteral(this.#options.slot)
      }, ${quoteLiteral(t.qualified)}, ${
        quoteLiteral(JSON.stringify(where.values))
      }, ${this.#options.sourceShard}, ${quoteLiteral(this.#rowJson(t, values))}::jsonb)`,
    );
  }

  /** Deletes a version (from the table or the side table). */
  async #drop(t: Table, v: Version, where: Where): Promise<void> {
    if (v.displaced) {
      await this.#queue(
        v.d,
        `DELETE FROM ${PROGRESS_SCHEMA}.displaced WHERE slot = ${
          quoteLiteral(this.#options.slot)
        } AND "table" = ${quoteLiteral(t.qualified)} AND identity = ${
          quoteLiteral(JSON.stringify(where.values))
        } AND owner = ${v.owner}`,
      );
    } else {
      await this.#queue(
        v.d,
        `DELETE FROM ${t.qualified} ${this.#whereSql(t, where, where.values)}`,
      );
    }
  }

  /**
   * A version leaves shard `d` for another one in this transaction: `d` commits last (or the
   * transaction commits in two phases), so a crash between commits cannot lose it.
   */
  #leaving(d: number): void {
    this.#txn!.movedFrom.add(d);
  }

  /**
   * Deletes this source shard's version `v` of a row; when it was the table's, a displaced
   * version of another source shard takes its place. Resolves with the versions left.
   */
  async #remove(t: Table, v: Version, versions: Version[]): Promise<Version[]> {
    const where = this.#identity(t, v.row);
    await this.#drop(t, v, where);
    const left = versions.filter((other) => other !== v);
    if (v.displaced) return left;
    const next = left.find((other) => other.displaced);
    if (!next) return left;
    await this.#drop(t, next, where);
    if (next.d !== v.d) this.#leaving(v.d);
    await this.#queueInsert(next.d, t, next.row);
    return left.map((other) => other === next ? { ...next, displaced: false } : other);
  }

  /**
   * Places this source shard's version `values` of a row, given the versions there are: in the
   * table, or displaced when another source shard's version is there. A version of its own
   * elsewhere (an older one) is replaced; on the row's own shard, the INSERT fails on it.
   */
  async #place(t: Table, values: (string | null)[], versions: Version[]): Promise<void> {
    const d = await this.#shardOfRow(t, values);
    if (this.#own(d)) return;
    this.#landing(t, d);
    if (this.#done(d)) return;
    const there = versions.find((v) => !v.displaced);
    if (there && there.owner !== this.#options.sourceShard) {
      await this.#displace(d, t, values);
      return;
    }
    if (there && there.d !== d) {
      await this.#drop(t, there, this.#identity(t, values));
      this.#leaving(there.d);
    }
    await this.#queueInsert(d, t, values);
  }

  /** Whether the source places `key` on this applier's source shard. */
  async #owns(t: Table, key: string | null): Promise<boolean> {
    const shard = (await this.#sourcePlacer!.shardsOf(t.owner!.spec, [key]))[0];
    return shard === this.#options.sourceShard;
  }

  /**
   * An UPDATE of this source shard's version of a row, wherever it is (the table or the side
   * table), moved when its shard or identity changes.
   */
  async #updateOwned(
    t: Table,
    u: { row: TupleValue[]; set: number[]; where: Where },
  ): Promise<void> {
    const versions = await this.#versions(t, u.where);
    const mine = versions.find((v) => v.owner === this.#options.sourceShard);
    const row = u.row.slice();
    if (mine) {
      for (let i = 0; i < row.length; i++) if (row[i] === UNCHANGED) row[i] = mine.row[i];
    } else if (row.includes(UNCHANGED)) {
      // Growing in place, the source shard (the same database) has the row as it is now.
      const own = this.#conns.findIndex((_, d) => this.#own(d));
      if (own < 0) return; // Not here (a replay): the shard that had it is done.
      const now = await this.#select(own, t, u.where);
      if (!now) return; // Gone or re-keyed since: the later changes carry it.
      for (let i = 0; i < row.length; i++) if (row[i] === UNCHANGED) row[i] = now[i];
    }
    const values = known(t, row, "an updated row");
    const where = this.#identity(t, values);
    const same = JSON.stringify(where.values) === JSON.stringify(u.where.values);
    if (mine) {
      const d = await this.#shardOfRow(t, values);
      if (d !== mine.d) this.#leaving(mine.d);
      if (same && d === mine.d) {
        if (!mine.displaced) {
          await this.#queue(d, this.#updateSql(t, { ...u, row }));
          return;
        }
        await this.#queue(
          d,
          `UPDATE ${PROGRESS_SCHEMA}.displaced SET "row" = ${
            quoteLiteral(this.#rowJson(t, values))
          }::jsonb WHERE slot = ${quoteLiteral(this.#options.slot)} AND "table" = ${
            quoteLiteral(t.qualified)
          } AND identity = ${quoteLiteral(JSON.stringify(where.values))} AND owner = ${mine.owner}`,
        );
        return;
      }
    }
    const left = mine ? await this.#remove(t, mine, versions) : versions;
    if (same) {
      await this.#place(t, values, left);
      return;
    }
    await this.#lock(t, where);
    await this.#place(t, values, await this.#versions(t, where));
  }

  /** A DELETE of this source shard's version of a row, wherever it is. */
  async #deleteOwned(t: Table, where: Where): Promise<void> {
    await this.#lock(t, where);
    const versions = await this.#versions(t, where);
    const mine = versions.find((v) => v.owner === this.#options.sourceShard);
    if (mine) await this.#remove(t, mine, versions);
  }

  async #update(t: Table, old: TupleValue[] | null, tuple: TupleValue[]): Promise<void> {
    // With REPLICA IDENTITY FULL the old row is whole: it fills unchanged TOAST values.
    const row = tuple.slice();
    if (old && t.full) {
      for (let i = 0; i < row.length; i++) if (row[i] === UNCHANGED) row[i] = old[i];
    }
    const where = this.#identity(t, old ?? tuple);
    // Without an old key, the identity did not change: leave its columns out of SET (an
    // identity column GENERATED ALWAYS cannot be set).
    const set = row.map((_, i) => i).filter((i) =>
      row[i] !== UNCHANGED && (old !== null || t.full || !t.identity.includes(i))
    );
    const update = { row, set, where };
    if (t.placement.kind === "all") {
      for (const d of this.#writable()) await this.#queue(d, this.#updateSql(t, update));
      return;
    }
    if (t.owner) {
      // Locked first, even for the one statement below: a row lock taken without the identity's
      // lock could close a cycle of waits across connections that PostgreSQL cannot see.
      await this.#lock(t, where);
      // Mostly the row keeps its identity and key, which this source shard owns: one statement.
      const key = row[t.owner.column];
      const destKey = row[t.placement.column];
      if (old === null && key !== UNCHANGED && destKey !== UNCHANGED && await this.#owns(t, key)) {
        const to = await this.#shardOf(t, destKey);
        if (
          this.#options.shared[to] < 0 && !this.#done(to) &&
          await this.#updateOn(to, t, update, { key }) > 0
        ) return;
      }
      await this.#updateOwned(t, update);
      return;
    }
    const column = t.placement.column;
    const keyed = t.relation.columns[column].key || t.full;
    // The old key: in the old tuple when it carries the key column; the new one when the key is
    // part of an identity that did not change; else unknown.
    let oldKey: TupleValue | undefined = old
      ? (keyed ? old[column] : undefined)
      : (keyed ? row[column] : undefined);
    if (oldKey === UNCHANGED) oldKey = undefined;
    let newKey: TupleValue | undefined = row[column];
    if (newKey === UNCHANGED) newKey = oldKey;
    if (newKey === undefined) {
      // An unchanged TOASTed key the stream does not carry: the row is wherever it is.
      const sql = this.#updateSql(t, update);
      for (const d of this.#writable()) await this.#queue(d, sql);
      return;
    }
    const to = await this.#shardOf(t, newKey);
    const from = oldKey === undefined ? -1 : await this.#shardOf(t, oldKey);
    if (from === to && !this.#own(to)) {
      // Where its key says (and the key identifies it: no need to look further).
      this.#landing(t, to);
      if (!this.#done(to)) await this.#queue(to, this.#updateSql(t, update));
      return;
    }
    if (from === -1 && !this.#own(to)) {
      // Most likely on the new key's shard: update it there.
      this.#landing(t, to);
      if (!this.#done(to) && await this.#updateOn(to, t, update) > 0) return;
      // Not there (or, in a replay, its shard is done): look for it elsewhere (an old copy a
      // crash left behind is deleted).
    } else if (from === to) return; // The source shard's own database has it.
    await this.#move(t, { row, where, from, to });
  }

  /**
   * Moves a row to shard `to`: deletes it where it is (shard `from`, or wherever it is found when
   * -1), filling the new row's unchanged TOAST values from the old one, and inserts it on `to`.
   */
  async #move(
    t: Table,
    move: { row: TupleValue[]; where: Where; from: number; to: number },
  ): Promise<void> {
    const { row, where, to } = move;
    let found: (string | null)[] | null = null;
    let searchedOwn = false;
    const candidates = move.from >= 0
      ? [move.from]
      : this.#conns.map((_, d) => d).filter((d) => d !== to);
    for (const d of candidates) {
      if (this.#otherShared(d)) continue;
      if (this.#own(d)) {
        searchedOwn = true;
        continue; // The source already moved it; its values are read below if needed.
      }
      if (this.#done(d)) continue;
      const r = await this.#take(d, t, where);
      if (r.length > 0) {
        this.#txn!.movedFrom.add(d);
        found = r[0];
        if (move.from < 0) break;
      }
    }
    if (this.#own(to)) return;
    this.#landing(t, to);
    if (this.#done(to)) return;
    if (found) {
      for (let i = 0; i < row.length; i++) if (row[i] === UNCHANGED) row[i] = found[i];
    }
    if (row.includes(UNCHANGED) && (searchedOwn || move.from < 0)) {
      // Growing in place, the source shard (the same database) has the row as it is now.
      const own = this.#conns.findIndex((_, d) => this.#own(d));
      if (own >= 0) {
        const now = await this.#select(own, t, this.#identity(t, row, { skipUnchanged: true }));
        if (!now) return; // Gone or re-keyed since: the later changes carry it.
        for (let i = 0; i < row.length; i++) if (row[i] === UNCHANGED) row[i] = now[i];
      }
    }
    const values = known(t, row, "a moved row (its old row was not found on any shard)");
    await this.#queueInsert(to, t, values);
  }

  async #delete(t: Table, old: TupleValue[]): Promise<void> {
    const where = this.#identity(t, old);
    const sql = `DELETE FROM ${t.qualified} ${this.#whereSql(t, where, where.values)}`;
    if (t.placement.kind === "all") {
      for (const d of this.#writable()) await this.#queue(d, sql);
      return;
    }
    if (t.owner) {
      await this.#deleteOwned(t, where);
      return;
    }
    const column = t.placement.column;
    const key = t.full || t.relation.columns[column].key ? old[column] : UNCHANGED;
    if (key === UNCHANGED) {
      for (const d of this.#writable()) await this.#queue(d, sql);
      return;
    }
    const d = await this.#shardOf(t, key);
    if (this.#options.shared[d] >= 0 || this.#done(d)) return;
    await this.#queue(d, sql);
  }

  // ---- statements ----------------------------------------------------------------------------

  /** How a row is found: its identity's values, matched by key or (FULL) by every column. */
  #identity(t: Table, tuple: TupleValue[], options: { skipUnchanged?: boolean } = {}): Where {
    const columns: number[] = [];
    const values: (string | null)[] = [];
    for (const i of t.identity) {
      const v = tuple[i];
      if (v === UNCHANGED) {
        if (options.skipUnchanged || t.full) continue;
        throw new ReshardingError(`a change of ${t.label} lacks its replica identity's values`);
      }
      columns.push(i);
      values.push(v);
    }
    if (columns.length === 0) {
      throw new ReshardingError(
        `${t.label} has no replica identity: its updates and deletes cannot be replicated ` +
          "(add a primary key or set REPLICA IDENTITY FULL on the source)",
      );
    }
    return { columns, values };
  }

  /**
   * The tests that find a row by `columns`: with parameters from `$values` (a number), or with
   * the values as literals.
   */
  #matchSql(
    t: Table,
    columns: readonly number[],
    values: number | readonly (string | null)[],
  ): string {
    return columns.map((i, n) => {
      const p = typeof values === "number" ? `$${values + n}` : literal(values[n]);
      const c = t.names[i];
      if (!t.full) return `${c} = ${p}`;
      const oid = t.relation.columns[i].typeOid;
      if (oid === JSON_OID) return `${c}::jsonb IS NOT DISTINCT FROM ${p}::jsonb`;
      if (NO_EQUALITY.has(oid)) return `${c}::text IS NOT DISTINCT FROM ${p}::text`;
      return `${c} IS NOT DISTINCT FROM ${p}`;
    }).join(" AND ");
  }

  /** `WHERE ...` finding one row, with parameters from `$values` or literal values. */
  #whereSql(t: Table, where: Where, values: number | readonly (string | null)[]): string {
    const tests = this.#matchSql(t, where.columns, values);
    if (!t.full) return `WHERE ${tests}`;
    // Without a key, rows may be duplicates: change one of them.
    return `WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM ${t.qualified} WHERE ${tests} ` +
      "LIMIT 1)";
  }

  #insertSql(t: Table): string {
    const params = t.names.map((_, i) => `$${i + 1}`).join(", ");
    return `INSERT INTO ${t.qualified} (${t.names.join(", ")}) OVERRIDING SYSTEM VALUE ` +
      `VALUES (${params})`;
  }

  /** The statements waiting for shard `d`. */
  #queueOf(d: number): Queue {
    const pending = this.#txn!.pending;
    let q = pending.get(d);
    if (!q) pending.set(d, q = { statements: [], insert: null, bytes: 0 });
    return q;
  }

  /** Queues a statement whose answer is not needed for shard `d`. */
  async #queue(d: number, sql: string): Promise<void> {
    const q = this.#queueOf(d);
    closeInsert(q);
    q.statements.push(sql);
    q.bytes += sql.length;
    if (q.bytes >= BATCH_BYTES) await this.#flush(d);
  }

  /** Adds a row to shard `d`'s multi-row INSERT (one statement for a run of inserted rows). */
  async #queueInsert(d: number, t: Table, values: (string | null)[]): Promise<void> {
    const q = this.#queueOf(d);
    if (q.insert && q.insert.table !== t) closeInsert(q);
    q.insert ??= { table: t, rows: [] };
    q.insert.rows.push(values);
    for (const v of values) q.bytes += v === null ? 6 : v.length + 6;
    if (q.insert.rows.length >= BATCH_ROWS) closeInsert(q);
    if (q.bytes >= BATCH_BYTES) await this.#flush(d);
  }

  /** Sends shard `d`'s queued statements. */
  async #flush(d: number): Promise<void> {
    const sql = this.#pendingSql(d);
    if (sql) await this.#conns[d]!.query(this.#opening(d) + sql);
  }

  /** `BEGIN; ...; ` when shard `d` has no transaction open yet (then counted as open). */
  #opening(d: number): string {
    const open = this.#txn!.open;
    if (open.has(d)) return "";
    open.add(d);
    return `${BEGIN}; `;
  }

  /** Shard `d`'s queued statements as one SQL text (taken off the queue), or "". */
  #pendingSql(d: number): string {
    const pending = this.#txn!.pending;
    const q = pending.get(d);
    if (!q) return "";
    pending.delete(d);
    closeInsert(q);
    return q.statements.map((sql) => `${sql}; `).join("");
  }

  /**
   * An INSERT that every source shard's stream may send (tables on every shard get each write
   * once per source shard): it updates the row its identity finds instead of adding a second.
   */
  #upsertSql(t: Table, values: readonly (string | null)[]): string {
    const insert = `INSERT INTO ${t.qualified} (${t.names.join(", ")}) OVERRIDING SYSTEM VALUE ` +
      `VALUES (${values.map(literal).join(", ")})`;
    if (t.identity.length === 0) return insert;
    const rest = t.names.filter((_, i) => !t.identity.includes(i));
    const target = t.identity.map((i) => t.names[i]).join(", ");
    if (rest.length === 0) return `${insert} ON CONFLICT (${target}) DO NOTHING`;
    return `${insert} ON CONFLICT (${target}) DO UPDATE SET ${
      rest.map((c) => `${c} = EXCLUDED.${c}`).join(", ")
    }`;
  }

  /** An UPDATE of the row, with the values as literals. */
  #updateSql(t: Table, u: { row: TupleValue[]; set: number[]; where: Where }): string {
    // Nothing this stream carries changed: a statement that changes nothing.
    if (u.set.length === 0) return "SELECT";
    const assignments = u.set.map((i) => `${t.names[i]} = ${literal(u.row[i] as string | null)}`);
    return `UPDATE ${t.qualified} SET ${assignments.join(", ")} ${
      this.#whereSql(t, u.where, u.where.values)
    }`;
  }

  /**
   * Updates the row on shard `d` (only when its source key is `only.key`, with `only`); resolves
   * with the number of rows changed.
   */
  async #updateOn(
    d: number,
    t: Table,
    u: { row: TupleValue[]; set: number[]; where: Where },
    only?: { key: string | null },
  ): Promise<number> {
    if (u.set.length === 0) return 1; // Nothing this stream carries changed.
    const assignments = u.set.map((i, n) => `${t.names[i]} = $${n + 1}`).join(", ");
    let sql = `UPDATE ${t.qualified} SET ${assignments} ${
      this.#whereSql(t, u.where, u.set.length + 1)
    }`;
    const params = [...u.set.map((i) => u.row[i] as string | null), ...u.where.values];
    if (only && t.owner) {
      params.push(only.key);
      sql += ` AND ${t.names[t.owner.column]} IS NOT DISTINCT FROM $${params.length}`;
    }
    const r = await this.#run(d, sql, params);
    return rowCount(r.tags.at(-1));
  }

  /** Deletes the row on shard `d`; resolves with what was deleted. */
  async #take(d: number, t: Table, where: Where): Promise<(string | null)[][]> {
    const sql = `DELETE FROM ${t.qualified} ${this.#whereSql(t, where, 1)} ` +
      `RETURNING ${t.names.join(", ")}`;
    return (await this.#run(d, sql, where.values)).rows;
  }

  /** The row as shard `d` has it now (outside the transaction), or null. */
  async #select(d: number, t: Table, where: Where): Promise<(string | null)[] | null> {
    const conn = this.#conns[d]!;
    const sql = `SELECT ${t.names.join(", ")} FROM ${t.qualified} ${this.#whereSql(t, where, 1)}`;
    const r = await conn.execute(t.full ? sql : `${sql} LIMIT 1`, where.values);
    return r.rows[0] ?? null;
  }

  /** Runs a statement on shard `d` inside the current transaction there (opened on first use). */
  async #run(d: number, sql: string, params: (string | null)[]): Promise<PgResult> {
    const conn = this.#conns[d];
    if (!conn) throw new Error(`destination shard ${d} is not connected`);
    // BEGIN and the queued statements first, in one request.
    const before = this.#opening(d) + this.#pendingSql(d);
    if (before) await conn.query(before);
    return await conn.execute(sql, params);
  }

  // ---- transactions --------------------------------------------------------------------------

  async #commit(commitLsn: Lsn, endLsn: Lsn): Promise<void> {
    const txn = this.#txn;
    if (!txn) throw new ReshardingError("a Commit arrived outside a transaction");
    const { slot, sourceShard } = this.#options;
    const lsn = formatLsn(commitLsn);
    const record = `INSERT INTO ${PROGRESS_SCHEMA}.progress (slot, source_shard, lsn) VALUES (` +
      `${quoteLiteral(slot)}, ${sourceShard}, '${lsn}') ON CONFLICT (slot, source_shard) DO ` +
      "UPDATE SET lsn = EXCLUDED.lsn";
    const shards = [...new Set([...txn.open, ...txn.pending.keys()])];
    if (shards.length === 1) await this.#commitOne(shards[0], { record, commitLsn });
    else if (shards.length > 1) await this.#commitMany(txn, { shards, record, commitLsn });
    this.#txn = null;
    await this.#unlock();
    this.#applied = endLsn;
    this.#lastTransactionAt = Date.now();
  }

  /** Commits on one shard: the queued statements, progress and COMMIT in one request. */
  async #commitOne(d: number, commit: { record: string; commitLsn: Lsn }): Promise<void> {
    const conn = this.#conns[d]!;
    const sql = `${this.#opening(d)}${this.#pendingSql(d)}${commit.record}; COMMIT`;
    const r = await conn.query(sql);
    if (r.tags.at(-1) !== "COMMIT") throw rolledBack(conn, formatLsn(commit.commitLsn));
    this.#txn!.open.delete(d);
    this.#progress[d] = commit.commitLsn;
  }

  /**
   * Commits on several shards: everything but the commit on all at once (a failure there rolls
   * back everywhere), then two-phase commit, or commits in an order that keeps moved rows.
   */
  async #commitMany(
    txn: Transaction,
    commit: { shards: number[]; record: string; commitLsn: Lsn },
  ): Promise<void> {
    const { shards, record, commitLsn } = commit;
    await this.#each(shards, async (d) => {
      await this.#conns[d]!.query(`${this.#opening(d)}${this.#pendingSql(d)}${record}`);
    });
    if (this.#twoPhase && txn.movedFrom.size > 0) {
      await this.#commitTwoPhase(txn, { shards, commitLsn });
      return;
    }
    // Shards that received moved rows first: a crash between commits then leaves the old copy,
    // which the replay deletes again, rather than losing the row.
    const groups = [
      shards.filter((d) => !txn.movedFrom.has(d)),
      shards.filter((d) => txn.movedFrom.has(d)),
    ];
    for (const group of groups) {
      await this.#each(group, async (d) => {
        const conn = this.#conns[d]!;
        const r = await conn.query("COMMIT");
        if (r.tags.at(-1) !== "COMMIT") throw rolledBack(conn, formatLsn(commitLsn));
        txn.open.delete(d);
        this.#progress[d] = commitLsn;
      });
    }
  }

  /** Prepares the transaction on every shard, then commits it on each. */
  async #commitTwoPhase(
    txn: Transaction,
    commit: { shards: number[]; commitLsn: Lsn },
  ): Promise<void> {
    const lsn = formatLsn(commit.commitLsn);
    const gid = (d: number) => quoteLiteral(`${this.#gidPrefix(d)}${lsn}`);
    const prepared: number[] = [];
    try {
      await this.#each(commit.shards, async (d) => {
        const conn = this.#conns[d]!;
        const r = await conn.query(`PREPARE TRANSACTION ${gid(d)}`);
        txn.open.delete(d); // Prepared or rolled back: nothing open on the connection.
        if (r.tags.at(-1) !== "PREPARE TRANSACTION") throw rolledBack(conn, lsn);
        prepared.push(d);
      });
    } catch (e) {
      // None committed: undo the prepared ones (a crash here leaves them to start()).
      await this.#each(prepared, async (d) => {
        await this.#conns[d]!.query(`ROLLBACK PREPARED ${gid(d)}`);
      }).catch(() => {});
      throw e;
    }
    await this.#each(prepared, async (d) => {
      await this.#conns[d]!.query(`COMMIT PREPARED ${gid(d)}`);
      this.#progress[d] = commit.commitLsn;
    });
  }

  /**
   * Runs `work` for each shard at once (each on its own connection), waits for all, and throws
   * the first failure.
   */
  async #each(shards: readonly number[], work: (d: number) => Promise<void>): Promise<void> {
    const results = await Promise.allSettled(shards.map(work));
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  /** Rolls back what the current transaction opened (best effort: a lost connection did it). */
  async #rollback(): Promise<void> {
    const txn = this.#txn;
    this.#txn = null;
    if (txn) {
      for (const d of txn.open) {
        const conn = this.#conns[d];
        if (!conn || conn.closed) continue;
        await conn.query("ROLLBACK").catch(() => conn.close());
      }
    }
    await this.#unlock();
  }
}

/** A version of a row on a destination shard: in the table, or displaced (the side table). */
interface Version {
  d: number;
  /** The source shard whose version it is. */
  owner: number;
  row: (string | null)[];
  displaced: boolean;
}

/** A row's identity: column indexes and their values. */
interface Where {
  columns: number[];
  values: (string | null)[];
}

const JSON_OID = 114;
/** Built-in types without an equality operator (compared as text). */
const NO_EQUALITY = new Set([142, /* xml */ 600, 601, 602, 603, 604, 628, 718 /* geometric */]);

/** The tuple's values; throws when one is an unchanged TOAST value nobody supplied. */
function known(t: Table, tuple: TupleValue[], what: string): (string | null)[] {
  return tuple.map((v, i) => {
    if (v === UNCHANGED) {
      throw new ReshardingError(
        `${what} of ${t.label} lacks the value of column ${t.relation.columns[i].name} ` +
          "(an unchanged TOASTed value)",
      );
    }
    return v;
  });
}

/** A value as an SQL literal (NULL, or a string the server converts to the column's type). */
function literal(value: string | null): string {
  return value === null ? "NULL" : quoteLiteral(value);
}

/** Moves the rows being gathered into one INSERT statement. */
function closeInsert(q: Queue): void {
  const batch = q.insert;
  if (!batch) return;
  q.insert = null;
  const t = batch.table;
  const tuples = batch.rows.map((row) => `(${row.map(literal).join(", ")})`);
  q.statements.push(
    `INSERT INTO ${t.qualified} (${t.names.join(", ")}) OVERRIDING SYSTEM VALUE VALUES ${
      tuples.join(", ")
    }`,
  );
}

function rolledBack(conn: PgConn, lsn: string): PgError {
  return new PgError({
    severity: "ERROR",
    code: "40000",
    message: `${conn.label}: the transaction of source LSN ${lsn} was rolled back`,
  });
}

function rowCount(tag: string | undefined): number {
  const n = Number(tag?.split(" ").at(-1));
  return Number.isFinite(n) ? n : 0;
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/**
 * A string literal that reads the same whatever `standard_conforming_strings` says (a setting
 * changed in the same query string comes too late: the whole string is lexed first).
 */
function quoteLiteral(text: string): string {
  return `E'${text.replaceAll("\\", "\\\\").replaceAll("'", "''")}'`;
}
