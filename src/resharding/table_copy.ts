/**
 * The copy step of resharding: the tables a publication holds, and one table's rows copied from
 * a source shard (as of a snapshot) to the destination shards their keys map to, with
 * `COPY ... TO STDOUT` on the source streamed, row by row re-placed, into `COPY ... FROM STDIN`
 * on each destination shard (one transaction per shard, committed when every part succeeded).
 *
 * @module
 */

import { CopyInSplitter, type CopyRows } from "../cross_shard/copy_in.ts";
import { type CopyFormat, TEXT_COPY_FORMAT } from "../cross_shard/copy_format.ts";
import { PgConn, PgError, type ServerLogin } from "./pg_conn.ts";
import { type RowPlacer, type TablePlacement, tablePlacement } from "./placement.ts";
import { type ReshardingDatabase, ReshardingError } from "./shards.ts";

/** A column a publication carries. */
export interface PublicationColumn {
  name: string;
  /** Its type as `format_type` spells it (e.g. `character varying(20)`). */
  type: string;
  /** Its type's OID (a domain's own OID for a domain). */
  typeOid: number;
}

/** A table a publication holds, with the columns it publishes in table order. */
export interface PublicationTable {
  schema: string;
  name: string;
  /** No dropped or generated columns; only the listed ones for a column list (PostgreSQL 15+). */
  columns: PublicationColumn[];
}

/** Quotes an identifier for SQL. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** A string as an SQL literal. */
function quoteLiteral(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

/** `"schema"."name"`. */
function qualified(table: { schema: string; name: string }): string {
  return `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
}

/**
 * A login whose text values read back the same anywhere, as pg_dump sets them: UTF-8 (COPY data
 * and keys are UTF-8 whatever the databases use), ISO dates (a `SQL, DMY` source read by an `MDY`
 * destination would swap days and months), floats with every digit, PostgreSQL's intervals; and
 * no statement, lock or idle timeout a role or database may set (a copy takes as long as it takes).
 */
function sessionLogin(login: ServerLogin): ServerLogin {
  return {
    ...login,
    params: {
      ...login.params,
      client_encoding: "UTF8",
      DateStyle: "ISO",
      IntervalStyle: "postgres",
      extra_float_digits: "3",
      statement_timeout: "0",
      lock_timeout: "0",
      idle_in_transaction_session_timeout: "0",
    },
  };
}

/**
 * The tables publication `publication` holds on the source (FOR ALL TABLES, FOR TABLE, FOR
 * TABLES IN SCHEMA), sorted by schema and name. Throws ReshardingError when it does not exist.
 */
export async function publicationTables(
  login: ServerLogin,
  publication: string,
): Promise<PublicationTable[]> {
  const conn = await PgConn.connect(sessionLogin(login));
  try {
    const exists = await conn.execute("SELECT 1 FROM pg_publication WHERE pubname = $1", [
      publication,
    ]);
    if (exists.rows.length === 0) {
      throw new ReshardingError(
        `there is no publication "${publication}" on ${conn.label}: create it on the source ` +
          `(CREATE PUBLICATION ${quoteIdent(publication)} FOR ALL TABLES)`,
      );
    }
    const version = Number(conn.reported.get("server_version_num") ?? 0) ||
      Number((await conn.query("SHOW server_version_num")).rows[0][0]);
    // PostgreSQL 15 publishes column lists (pg_publication_tables.attnames).
    const columnList = version >= 150000
      ? "AND (pt.attnames IS NULL OR a.attname = ANY (pt.attnames))"
      : "";
    const r = await conn.execute(
      `SELECT pt.schemaname, pt.tablename, a.attname, format_type(a.atttypid, a.atttypmod),
              a.atttypid::int8
         FROM pg_publication_tables pt
         JOIN pg_namespace n ON n.nspname = pt.schemaname
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
         JOIN pg_attribute a ON a.attrelid = c.oid
        WHERE pt.pubname = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
              ${columnList}
        ORDER BY pt.schemaname, pt.tablename, a.attnum`,
      [publication],
    );
    const tables: PublicationTable[] = [];
    for (const [schema, name, column, type, oid] of r.rows) {
      let last = tables.at(-1);
      if (last === undefined || last.schema !== schema || last.name !== name) {
        last = { schema: schema!, name: name!, columns: [] };
        tables.push(last);
      }
      last.columns.push({ name: column!, type: type!, typeOid: Number(oid) });
    }
    return tables;
  } finally {
    conn.close();
  }
}

/** Options of {@linkcode copyTable}. */
export interface CopyTableOptions {
  /** The source shard's primary or replica to read from. */
  source: ServerLogin;
  /** A snapshot exported on `source` (the slot's), imported by the copy; null: a fresh one. */
  snapshot: string | null;
  table: PublicationTable;
  destination: ReshardingDatabase;
  /** Places the destination's keys (its sharding, its plugins). */
  placer: RowPlacer;
  /** For each destination shard, the source shard that is the same database, or -1 (sharedShards). */
  shared: number[];
  /** The source shard the rows come from. */
  sourceShard: number;
  /**
   * COPY format asked for; binary falls back to text for a table whose types binary COPY cannot
   * carry between databases, or whose key type the splitter cannot decode.
   */
  format: "binary" | "text";
  /** Called as the copy goes: rows and bytes of COPY data read from the source so far. */
  onProgress?: (rows: number, bytes: number) => void;
  /** Abandons the copy (its connections are closed; nothing is committed). */
  signal?: AbortSignal;
}

/** What a table copy did. */
export interface TableCopyResult {
  /** Rows read from the source (copied, or already on their destination shard). */
  rows: number;
  /** Bytes of COPY data read from the source. */
  bytes: number;
  /** Rows left where they are (growing in place: their shard is their own source shard). */
  kept: number;
  /** The COPY format used. */
  format: "binary" | "text";
}

/**
 * A failed table copy: the message starts with where it failed (`destination shard 1
 * (host:port/db): ...`); `committed` names destination shards where a COMMIT was sent.
 */
export class TableCopyError extends Error {
  /** Destination shards that may hold this attempt's rows (a COMMIT was sent there). */
  readonly committed: number[];
  /** Where it failed (`source shard 0 (host:port/db)`, `destination shard 1 (...)`), if known. */
  readonly where: string | null;
  constructor(cause: unknown, options: { committed: number[]; where: string | null }) {
    const message = cause instanceof Error ? cause.message : String(cause);
    super(options.where === null ? message : `${options.where}: ${message}`, { cause });
    this.name = "TableCopyError";
    this.committed = options.committed;
    this.where = options.where;
  }
}

/** Where each failure of a copy happened (the first place that saw it). */
const failedAt = new WeakMap<object, string>();

/** `work`, its failure marked as having happened at `where` (unless marked already). */
async function at<T>(where: string, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (e) {
    if (e instanceof Object && !failedAt.has(e)) failedAt.set(e, where);
    throw e;
  }
}

function labelOf(login: ServerLogin): string {
  return `${login.host}:${login.port}/${login.database}`;
}

const TEXT_FORMAT: CopyFormat = TEXT_COPY_FORMAT;
const BINARY_FORMAT: CopyFormat = { ...TEXT_FORMAT, format: "binary", delimiter: "", null: "" };

/** Binary COPY's header (signature, no flags, no extension) and trailer. */
const BINARY_HEADER = Uint8Array.of(
  0x50,
  0x47,
  0x43,
  0x4f,
  0x50,
  0x59,
  0x0a,
  0xff,
  0x0d,
  0x0a,
  0x00,
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  0,
);
const BINARY_TRAILER = Uint8Array.of(0xff, 0xff);

/** Source COPY data taken into one split (bigger: fewer pushes and placement calls). */
const SPLIT_BYTES = 256 << 10;
/** A destination's pending bytes sent once beyond this. */
const SEND_BYTES = 64 << 10;

/** Key types binary COPY's splitter decodes, by the base type's OID. */
const BINARY_KEY_TYPES = new Map<number, "bigint" | "varchar" | "uuid">([
  [20, "bigint"],
  [21, "bigint"],
  [23, "bigint"],
  [25, "varchar"],
  [1042, "varchar"],
  [1043, "varchar"],
  [2950, "uuid"],
]);
/**
 * OIDs below this are built-in (the same in every database). Binary COPY of a composite value or
 * an array writes its members' type OIDs, which differ between databases for user types: such
 * columns go as text, as do types without binary I/O functions (aclitem...).
 */
const FIRST_NORMAL_OID = 16384;

/** A growable byte buffer. */
class Bytes {
  buf = new Uint8Array(SEND_BYTES * 2);
  length = 0;
  add(data: Uint8Array, start = 0, end = data.length): void {
    const n = end - start;
    if (this.length + n > this.buf.length) {
      const grown = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
      grown.set(this.buf.subarray(0, this.length));
      this.buf = grown;
    }
    this.buf.set(data.subarray(start, end), this.length);
    this.length += n;
  }
  get view(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}

/** One destination shard's COPY. */
interface Leg {
  shard: number;
  conn: PgConn;
  out: Bytes;
}

/** What the source's catalog says about the table, for the COPY statements and the format. */
interface SourceTable {
  partitioned: boolean;
  /** Binary COPY carries every column between databases. */
  binaryOk: boolean;
  /** The key column's base type OID (0 when none). */
  keyBaseType: number;
}

async function describeSource(
  conn: PgConn,
  table: PublicationTable,
  keyColumn: string | null,
): Promise<SourceTable> {
  const r = await conn.execute(
    `WITH RECURSIVE base (attname, oid) AS (
       SELECT attname, atttypid FROM pg_attribute
        WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped
       UNION ALL
       SELECT b.attname, t.typbasetype FROM base b JOIN pg_type t ON t.oid = b.oid
        WHERE t.typtype = 'd'
     )
     SELECT b.attname, t.oid::int8,
            t.typtype <> 'c' AND t.typsend::oid <> 0 AND t.typreceive::oid <> 0 AND
            (e.oid IS NULL OR (e.oid < ${FIRST_NORMAL_OID} AND e.typtype <> 'c' AND
                               e.typsend::oid <> 0 AND e.typreceive::oid <> 0)),
            (SELECT relkind FROM pg_class WHERE oid = $1::regclass)
       FROM base b JOIN pg_type t ON t.oid = b.oid AND t.typtype <> 'd'
       LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'`,
    [qualified(table)],
  );
  const wanted = new Set(table.columns.map((c) => c.name));
  let binaryOk = true;
  let keyBaseType = 0;
  let partitioned = false;
  for (const [name, oid, ok, relkind] of r.rows) {
    partitioned = relkind === "p";
    if (!wanted.has(name!)) continue;
    if (ok !== "t") binaryOk = false;
    if (name === keyColumn) keyBaseType = Number(oid);
  }
  return { partitioned, binaryOk, keyBaseType };
}

/**
 * The one shard `[[sharded_schemas]]` puts every table of the table's schema on (as the router
 * routes a query naming it: the schema's shard, or the default shard when no table is sharded by
 * key), or null when the table is placed by key or on every shard.
 */
export function schemaShard(
  db: ReshardingDatabase,
  table: { schema: string; name: string },
): number | null {
  const sharding = db.sharding;
  const shard = sharding.schemas.get(table.schema);
  if (shard !== undefined) return shard;
  if (sharding.defaultSchemaShard !== undefined && sharding.tables.length === 0) {
    return sharding.defaultSchemaShard;
  }
  return null;
}

function aborted(signal: AbortSignal | undefined): unknown {
  return signal?.reason ?? new DOMException("the table copy was stopped", "AbortError");
}

/**
 * Copies `table` from one source shard to the destination shards its rows belong on, as of
 * `snapshot`: `COPY ... TO STDOUT` in a REPEATABLE READ, READ ONLY transaction on the source,
 * each row placed by the destination's sharding rules and streamed into `COPY ... FROM STDIN` on
 * its shard, one transaction per destination shard (`session_replication_role = replica`: no
 * triggers, no foreign key checks), committed once the whole table went through.
 *
 * Growing in place (`shared[d]` is a source shard): a row whose shard is its own source shard is
 * already there (kept, not copied; so is a row with a NULL key, found by queries on every shard);
 * a row that would land on another shared shard is a ReshardingError. A table on every shard is
 * copied from source shard 0 only, to the destination shards that are not shared. A table of a
 * `[[sharded_schemas]]` schema goes to that schema's shard (not read when that shard is its own
 * source shard).
 *
 * Throws TableCopyError (its `committed` says which shards may hold rows), or ReshardingError
 * for what no retry fixes.
 */
export async function copyTable(options: CopyTableOptions): Promise<TableCopyResult> {
  const { table, destination, shared, sourceShard, signal } = options;
  const names = table.columns.map((c) => c.name);
  const pinned = schemaShard(destination, table);
  const placement = pinned === null
    ? tablePlacement(destination, { table, columns: names })
    : { kind: "all" as const };
  const sharded = placement.kind === "sharded" ? placement : null;
  const newShards = destination.shards.map((s) => s.shard).filter((d) =>
    shared[d] === -1 && (pinned === null || d === pinned)
  );
  const keepsOwn = shared.includes(sourceShard);
  const result: TableCopyResult = { rows: 0, bytes: 0, kept: 0, format: options.format };
  if (
    pinned === null && placement.kind === "all" && (sourceShard !== 0 || newShards.length === 0)
  ) {
    return result;
  }
  if (pinned !== null && shared[pinned] === sourceShard) return result;
  if (signal?.aborted) throw aborted(signal);

  const legs: Leg[] = [];
  const legOf: (Leg | undefined)[] = [];
  let source: PgConn | null = null;
  const committed: number[] = [];
  const closeAll = (): void => {
    source?.close();
    for (const leg of legs) leg.conn.close();
  };
  signal?.addEventListener("abort", closeAll);
  const fromSource = `source shard ${sourceShard} (${labelOf(options.source)})`;
  const toShard = (shard: number): string =>
    `destination shard ${shard} (${labelOf(destination.shards[shard].primary)})`;
  try {
    source = await at(fromSource, PgConn.connect(sessionLogin(options.source)));
    await at(
      fromSource,
      source.query(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY" +
          (options.snapshot === null
            ? ""
            : `; SET TRANSACTION SNAPSHOT ${quoteLiteral(options.snapshot)}`),
      ),
    );
    const described = await at(
      fromSource,
      describeSource(source, table, sharded ? sharded.spec.column : null),
    );
    let format = options.format;
    const binaryKey = sharded ? BINARY_KEY_TYPES.get(described.keyBaseType) : undefined;
    if (format === "binary" && (!described.binaryOk || (sharded && binaryKey === undefined))) {
      format = "text";
    }
    result.format = format;
    const columnList = names.map(quoteIdent).join(", ");
    const formatOption = format === "binary" ? " (FORMAT binary)" : "";
    const copyOut = described.partitioned
      ? `COPY (SELECT ${columnList} FROM ${qualified(table)}) TO STDOUT${formatOption}`
      : `COPY ${qualified(table)} (${columnList}) TO STDOUT${formatOption}`;
    const copyIn = `COPY ${qualified(table)} (${columnList}) FROM STDIN${formatOption}`;

    for (const shard of newShards) {
      const conn = await at(
        toShard(shard),
        PgConn.connect(sessionLogin(destination.shards[shard].primary)),
      );
      const leg: Leg = { shard, conn, out: new Bytes() };
      legs.push(leg);
      legOf[shard] = leg;
      // synchronous_commit: the copied rows are on disk before the stream starts after them.
      await at(
        toShard(shard),
        conn.query(
          "BEGIN; SET LOCAL session_replication_role = replica; SET LOCAL synchronous_commit = on",
        ),
      );
      await at(toShard(shard), conn.copyIn(copyIn));
      if (format === "binary") leg.out.add(BINARY_HEADER);
    }

    const splitter = new CopyInSplitter(format === "binary" ? BINARY_FORMAT : TEXT_FORMAT, {
      keyColumn: sharded ? sharded.column : null,
      columns: names.length,
      keyType: binaryKey,
      columnNames: names,
    });
    const pending = new Bytes();
    pending.buf = new Uint8Array(SPLIT_BYTES + (64 << 10));

    const moved = (d: number, key: string | null): ReshardingError =>
      new ReshardingError(
        `a row of ${table.schema}.${table.name} on source shard ${sourceShard}` +
          (key === null ? "" : ` (${key})`) + ` belongs on destination shard ${d}, which is ` +
          `source shard ${shared[d]}: growing in place, rows may only move to new shards`,
      );
    const route = async (rows: CopyRows): Promise<void> => {
      const n = rows.starts.length;
      if (n === 0) return;
      const { data, starts, ends } = rows;
      result.rows += n;
      if (!sharded) {
        if (pinned !== null && legOf[pinned] === undefined) throw moved(pinned, null);
        for (const leg of legs) leg.out.add(data, starts[0], ends[n - 1]);
        return;
      }
      const shards = await options.placer.shardsOf(sharded.spec, rows.keys);
      for (let i = 0; i < n; i++) {
        const d = shards[i];
        const leg = legOf[d];
        if (leg !== undefined) {
          leg.out.add(data, starts[i], ends[i]);
          continue;
        }
        if (shared[d] === sourceShard || (keepsOwn && rows.keys[i] === null)) {
          result.kept++;
          continue;
        }
        throw moved(d, `${sharded.spec.column} = ${JSON.stringify(rows.keys[i])}`);
      }
    };
    const send = async (all: boolean): Promise<void> => {
      const sends: Promise<void>[] = [];
      for (const leg of legs) {
        if (leg.out.length === 0 || (!all && leg.out.length < SEND_BYTES)) continue;
        const data = leg.out.view;
        sends.push(
          at(toShard(leg.shard), leg.conn.copyData(data)).then(() => {
            leg.out.length = 0;
          }),
        );
      }
      await Promise.all(sends);
      // A shard that refused the data (a constraint, a bad value) fails the copy now, not at the end.
      for (const leg of legs) {
        const refused = leg.conn.copyInError();
        if (refused !== null) {
          failedAt.set(refused, toShard(leg.shard));
          throw refused;
        }
      }
    };
    const split = async (): Promise<void> => {
      if (pending.length === 0) return;
      result.bytes += pending.length;
      await route(splitter.push(pending.view));
      pending.length = 0;
      await send(false);
      options.onProgress?.(result.rows, result.bytes);
    };

    await at(
      fromSource,
      source.copyOut(copyOut, (payload) => {
        pending.add(payload);
        if (pending.length >= SPLIT_BYTES) return split();
      }),
    );
    await split();
    await route(splitter.finish());
    if (format === "binary") { for (const leg of legs) leg.out.add(BINARY_TRAILER); }
    await send(true);
    await Promise.all(legs.map((leg) => at(toShard(leg.shard), leg.conn.copyDone())));
    await at(fromSource, source.query("COMMIT"));
    options.onProgress?.(result.rows, result.bytes);
    if (signal?.aborted) throw aborted(signal);
    // Every shard has its rows: commit them (a failure here leaves the others committed).
    for (const leg of legs) {
      committed.push(leg.shard);
      await at(toShard(leg.shard), leg.conn.query("COMMIT"));
    }
    return result;
  } catch (e) {
    if (signal?.aborted) throw aborted(signal);
    if (e instanceof ReshardingError) throw e;
    const where = e instanceof Object ? failedAt.get(e) ?? null : null;
    const prefix = where === null ? "" : `${where}: `;
    if (e instanceof PgError && e.code === "42501" && /session_replication_role/.test(e.message)) {
      throw new ReshardingError(
        `${prefix}${e.message}: the resharding user of "${destination.name}" must be a ` +
          "superuser, or be granted SET ON PARAMETER session_replication_role (PostgreSQL 15+), " +
          "to copy with session_replication_role = replica (no triggers, no foreign key checks)",
      );
    }
    // A table or column missing does not come back by retrying.
    if (e instanceof PgError && (e.code === "42P01" || e.code === "42703")) {
      const hint = where?.startsWith("destination")
        ? ": create the destination's schema first (SCHEMA_SYNC pre)"
        : "";
      throw new ReshardingError(`${prefix}${e.message}${hint}`);
    }
    throw new TableCopyError(e, { committed, where });
  } finally {
    signal?.removeEventListener("abort", closeAll);
    closeAll();
  }
}

/** Options of {@linkcode copyTableWithRetry}. */
export interface CopyTableRetryOptions extends CopyTableOptions {
  /** Attempts in all (at least one). */
  attempts: number;
  /** The wait before the first retry; it doubles per retry, up to 32 times this. */
  minDelayMs: number;
  /** Told about each failed attempt that will be retried. */
  onRetry?: (attempt: number, error: unknown) => void | Promise<void>;
  /**
   * The whole source: with several source shards, a failed attempt's rows are removed by key
   * (those this source shard holds), not by emptying the table other shards copy into too.
   */
  sourceDatabase?: ReshardingDatabase;
}

/**
 * {@linkcode copyTable}, retried from scratch up to `attempts` times with a doubling wait.
 * Before a retry, the table is truncated on the destination shards that are not shared when the
 * failed attempt may have committed there (a copy that committed nothing left nothing behind:
 * other source shards' rows of the same table stay). ReshardingError and an abort are not
 * retried; the last failure is thrown.
 */
export async function copyTableWithRetry(
  options: CopyTableRetryOptions,
): Promise<TableCopyResult> {
  const attempts = Math.max(1, options.attempts);
  // A failed attempt that may have committed somewhere leaves rows to remove first.
  let leftovers = false;
  for (let attempt = 1;; attempt++) {
    try {
      if (leftovers) {
        await removeAttempt(options);
        leftovers = false;
      }
      return await copyTable(options);
    } catch (e) {
      if (e instanceof ReshardingError || options.signal?.aborted || attempt >= attempts) throw e;
      if (e instanceof TableCopyError && e.committed.length > 0) leftovers = true;
      await options.onRetry?.(attempt, e);
      const delay = options.minDelayMs * Math.min(2 ** (attempt - 1), 32);
      await sleep(delay, options.signal);
    }
  }
}

/** Rows scanned per statement when rows are deleted by their key's shard. */
const DELETE_BATCH = 10_000;

/**
 * Deletes, in batches, the rows of `table` (on `conn`'s database) whose key `placer` places on a
 * shard `drop` names (`drop` gets the shard and whether the key is NULL), without firing
 * triggers. Both a failed copy's cleanup and an in-place cutover use it.
 */
export async function deleteRowsByKey(
  conn: PgConn,
  options: {
    table: PublicationTable;
    placement: Extract<TablePlacement, { kind: "sharded" }>;
    placer: RowPlacer;
    drop: (shard: number, nullKey: boolean) => boolean;
  },
): Promise<void> {
  const { table, placement, placer } = options;
  const key = quoteIdent(table.columns[placement.column].name);
  const name = qualified(table);
  await conn.query("SET session_replication_role = replica");
  let after = "(0,0)";
  for (;;) {
    const r = await conn.execute(
      `SELECT ctid::text, ${key}::text FROM ${name} WHERE ctid > $1::tid ORDER BY ctid ` +
        `LIMIT ${DELETE_BATCH}`,
      [after],
    );
    if (r.rows.length === 0) break;
    after = r.rows[r.rows.length - 1][0]!;
    const shards = await placer.shardsOf(placement.spec, r.rows.map((row) => row[1]));
    const doomed = r.rows.filter((row, i) => options.drop(shards[i], row[1] === null))
      .map((row) => `"${row[0]}"`);
    if (doomed.length > 0) {
      await conn.execute(`DELETE FROM ${name} WHERE ctid = ANY($1::tid[])`, [
        `{${doomed.join(",")}}`,
      ]);
    }
  }
}

/**
 * Removes what a failed attempt may have committed on the new destination shards: the whole
 * table when this source shard is the only one copying it, else the rows whose key the source's
 * layout places on this source shard (other source shards' rows stay).
 */
async function removeAttempt(options: CopyTableRetryOptions): Promise<void> {
  const source = options.sourceDatabase;
  const placement = source && source.shards.length > 1
    ? tablePlacement(source, {
      table: options.table,
      columns: options.table.columns.map((c) => c.name),
    })
    : null;
  if (placement === null || placement.kind !== "sharded") return await truncateNew(options);
  const placer = options.placer.forDatabase(source!);
  for (const host of options.destination.shards) {
    if (options.shared[host.shard] !== -1) continue;
    const conn = await PgConn.connect(sessionLogin(host.primary));
    try {
      await deleteRowsByKey(conn, {
        table: options.table,
        placement,
        placer,
        drop: (shard) => shard === options.sourceShard,
      });
    } finally {
      conn.close();
    }
  }
}

/** Empties the table on the destination shards that are not shared. */
async function truncateNew(options: CopyTableOptions): Promise<void> {
  const { destination, shared, table } = options;
  for (const host of destination.shards) {
    if (shared[host.shard] !== -1) continue;
    const conn = await PgConn.connect(sessionLogin(host.primary));
    try {
      await conn.query(`TRUNCATE ${qualified(table)}`);
    } catch (e) {
      // Referenced by a foreign key: delete instead, without firing the key's triggers.
      if (!(e instanceof PgError) || e.code !== "0A000") throw e;
      await conn.query(
        `BEGIN; SET LOCAL session_replication_role = replica; DELETE FROM ${
          qualified(table)
        }; COMMIT`,
      );
    } finally {
      conn.close();
    }
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(aborted(signal));
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", stop);
      resolve();
    }, ms);
    const stop = (): void => {
      clearTimeout(timer);
      reject(aborted(signal));
    };
    signal?.addEventListener("abort", stop, { once: true });
  });
}
